"""Client TLS for the MSSanté operator: trust anchors, the application mailbox certificate.

`build_client_tls` turns settings into a ready `ssl.SSLContext` (TLS 1.2 minimum, peer verification
and host name check always on) plus descriptions of what it trusts and presents, so that a failed
handshake can be reported with the CA bundle and the certificate involved.

Trust: the CA bundle is passed explicitly (the IGC-Santé roots are not in public trust stores, and
Ref#2 ECO.1.1.10 makes IGC-Santé the only accepted authority). The system store is used only when
`use_system_trust_store` says so. The bundle may be PEM, or PKCS#7 (`.p7b`, PEM or DER) as the ANS
publishes the IGC-Santé chain.

Client certificate: PEM (certificate chain + private key, the key optionally encrypted) or PKCS#12.
Both are parsed with `cryptography` first, for precise error messages and a key/certificate match
check, then handed to `ssl` from memory. `ssl` only loads key material from a path, so:

- the key is re-encrypted (PKCS#8, best available encryption) under a random one-time password
  that exists only in this process's memory, and the password is passed to `load_cert_chain`;
- the encrypted PEM goes to an anonymous in-memory file (`memfd_create`, read back through
  `/proc/self/fd`): it has no name in any file system and is gone when the descriptor closes;
- where memfd is not available, a 0600 file in a fresh 0700 directory, removed right after the
  load.

So the clear private key is never written anywhere, and whatever is written is useless without a
password that never leaves memory.

Revocation (ECO.1.1.6: the operator's certificate "n'est pas révoqué au moyen des CRL ou du
répondeur OCSP"): with `crls`, the revocation lists of the CAs that sign the operator (PEM or DER,
as the IGC-Santé publishes them) are loaded and OpenSSL refuses a server certificate they revoke,
or one whose issuer has no CRL among them, or when the CRL is past its nextUpdate. The files are
read when the context is built (start-up, reload): whoever downloads them keeps the last valid one
in place (ECO.1.1.7) and reloads the connector. OCSP is not used.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from connector.errors import ConfigError

# TLS 1.2 suites: forward secrecy and AEAD only. The Ref#2 list (ECO.1.1.3) was not available; this
# is the ANSSI-style subset a third party calls conformant. TLS 1.3 suites are OpenSSL's defaults.
DEFAULT_TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
_PEM_CERTIFICATE: Final = b"-----BEGIN CERTIFICATE-----"
_PEM_PKCS7: Final = b"-----BEGIN PKCS7-----"


@dataclass(frozen=True, slots=True)
class PemClientCertificate:
    """`certificate`: the leaf first, intermediates may follow; `private_key`: PEM, may be
    encrypted (then `password` is needed)."""

    certificate: Path
    private_key: Path
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Pkcs12ClientCertificate:
    path: Path
    password: str | None = field(default=None, repr=False)


ClientCertificateSource = PemClientCertificate | Pkcs12ClientCertificate


@dataclass(frozen=True, slots=True)
class ClientTlsSettings:
    ca_bundle: Path | None
    client_certificate: ClientCertificateSource | None = None
    use_system_trust_store: bool = False  # in addition to ca_bundle; off unless configured
    ciphers: str = DEFAULT_TLS12_CIPHERS
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    crls: tuple[Path, ...] = ()  # the revocation lists the operator's certificate is checked on

    def __post_init__(self) -> None:
        if self.ca_bundle is None and not self.use_system_trust_store:
            raise ConfigError("tls.ca_bundle", "is required (the operator's IGC-Santé roots)")
        if self.minimum_version not in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            raise ConfigError("tls.minimum_version", "must be TLS 1.2 or TLS 1.3")


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What an operator needs to recognise a certificate. No secret, no patient data."""

    subject: str
    issuer: str
    serial: str
    not_after: dt.datetime
    source: str

    def days_to_expiry(self, now: dt.datetime | None = None) -> float:
        """Days until notAfter (negative once expired): for an expiry metric and alerts."""
        now = now or dt.datetime.now(dt.UTC)
        return (self.not_after - now).total_seconds() / 86400

    def describe(self, now: dt.datetime | None = None) -> str:
        expired = ", EXPIRED" if self.days_to_expiry(now) < 0 else ""
        return (f"'{self.subject}' issued by '{self.issuer}' (serial {self.serial}, valid until "
                f"{self.not_after:%Y-%m-%d}{expired}) from {self.source}")


@dataclass(frozen=True, slots=True)
class ClientTls:
    """A client context and what it trusts and presents (for operator-facing messages)."""

    context: ssl.SSLContext
    trust: str
    client_certificate: CertificateInfo | None
    crls: int = 0  # revocation lists the server certificate is checked against
    crl_next_update: dt.datetime | None = None  # the soonest nextUpdate among them


def build_client_tls(settings: ClientTlsSettings) -> ClientTls:
    """Raises ConfigError naming the file and what is wrong with it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = settings.minimum_version
    try:
        context.set_ciphers(settings.ciphers)
    except ssl.SSLError as exc:
        raise ConfigError("tls.ciphers", "no usable cipher in this list") from exc
    trust = []
    if settings.ca_bundle is not None:
        trust.append(_load_trust_anchors(context, settings.ca_bundle))
    if settings.use_system_trust_store:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        trust.append("the system trust store")
    next_update = None
    if settings.crls:
        next_update = _load_crls(context, settings.crls)
        trust.append(f"revocation checked against {len(settings.crls)} CRL(s)")
    info = None
    if settings.client_certificate is not None:
        key, chain = _read_client_certificate(settings.client_certificate)
        _load_key_and_chain(context, key, chain, settings.client_certificate)
        info = _info(chain[0], _source(settings.client_certificate))
        context.post_handshake_auth = True  # TLS 1.3 servers may ask for it after the handshake
    return ClientTls(context, " and ".join(trust), info, len(settings.crls), next_update)


def client_certificate_info(source: ClientCertificateSource) -> CertificateInfo:
    """The client certificate's subject, issuer and notAfter (see `days_to_expiry`)."""
    _, chain = _read_client_certificate(source)
    return _info(chain[0], _source(source))


# -- trust anchors -------------------------------------------------------------------------------


def _load_crls(context: ssl.SSLContext, paths: Sequence[Path]) -> dt.datetime | None:
    """Load the CRLs into `context` and check the server certificate against them; the soonest
    nextUpdate among them (None when none gives one)."""
    crls = [_read_crl(path) for path in paths]
    pem = b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls)
    with _transient_file(pem) as path:
        try:
            context.load_verify_locations(cafile=path)
        except ssl.SSLError as exc:
            raise ConfigError("tls.crl_files", f"rejected by OpenSSL ({openssl_reason(exc)})"
                              ) from exc
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return min((crl.next_update_utc for crl in crls if crl.next_update_utc is not None),
               default=None)


def _read_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError("tls.crl_files", f"{path}: cannot be read ({exc.strerror})") from exc
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise ConfigError("tls.crl_files", f"{path}: not a certificate revocation list (PEM "
                                           "or DER)") from exc


def _load_trust_anchors(context: ssl.SSLContext, bundle: Path) -> str:
    certificates = _read_ca_bundle(bundle)
    pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certificates)
    try:
        context.load_verify_locations(cadata=pem)
    except ssl.SSLError as exc:
        raise ConfigError("tls.ca_bundle",
                          f"{bundle}: rejected by OpenSSL ({openssl_reason(exc)})") from exc
    names = ", ".join(c.subject.rfc4514_string() for c in certificates[:4])
    more = f" and {len(certificates) - 4} more" if len(certificates) > 4 else ""
    return f"CA bundle {bundle} ({names}{more})"


def _read_ca_bundle(bundle: Path) -> list[x509.Certificate]:
    data = _read(bundle, "tls.ca_bundle")
    try:
        if _PEM_CERTIFICATE in data:
            certificates = x509.load_pem_x509_certificates(data)
        elif _PEM_PKCS7 in data:
            certificates = pkcs7.load_pem_pkcs7_certificates(data)
        else:
            certificates = _load_der_bundle(data)
    except ValueError as exc:
        raise ConfigError("tls.ca_bundle", f"{bundle}: not a PEM, PKCS#7 or DER certificate file"
                          ) from exc
    if not certificates:
        raise ConfigError("tls.ca_bundle", f"{bundle}: holds no certificate")
    return certificates


def _load_der_bundle(data: bytes) -> list[x509.Certificate]:
    try:
        return pkcs7.load_der_pkcs7_certificates(data)
    except ValueError:
        return [x509.load_der_x509_certificate(data)]


# -- client certificate --------------------------------------------------------------------------


def _read_client_certificate(
        source: ClientCertificateSource) -> tuple[PrivateKeyTypes, list[x509.Certificate]]:
    if isinstance(source, Pkcs12ClientCertificate):
        key, chain = _read_pkcs12(source)
    else:
        key, chain = _read_pem(source)
    _check_key_matches(key, chain[0], _source(source))
    return key, chain


def _read_pkcs12(source: Pkcs12ClientCertificate
                 ) -> tuple[PrivateKeyTypes, list[x509.Certificate]]:
    data = _read(source.path, "tls.client_pkcs12")
    password = source.password.encode("utf-8") if source.password is not None else None
    try:
        key, certificate, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError as exc:
        raise ConfigError("tls.client_pkcs12", f"{source.path}: wrong password or not a PKCS#12 "
                          "file") from exc
    if key is None or certificate is None:
        raise ConfigError("tls.client_pkcs12",
                          f"{source.path}: must hold a private key and its certificate")
    return key, [certificate, *extra]


def _read_pem(source: PemClientCertificate) -> tuple[PrivateKeyTypes, list[x509.Certificate]]:
    try:
        chain = x509.load_pem_x509_certificates(_read(source.certificate, "tls.client_certificate"))
    except ValueError as exc:
        raise ConfigError("tls.client_certificate",
                          f"{source.certificate}: not a PEM certificate") from exc
    password = source.password.encode("utf-8") if source.password is not None else None
    try:
        key = serialization.load_pem_private_key(_read(source.private_key, "tls.client_key"),
                                                 password)
    except TypeError as exc:  # encrypted without a password, or a password for a clear key
        problem = ("is encrypted: a password is needed" if password is None
                   else "is not encrypted: remove the password setting")
        raise ConfigError("tls.client_key", f"{source.private_key}: {problem}") from exc
    except ValueError as exc:
        raise ConfigError("tls.client_key", f"{source.private_key}: wrong password or not a PEM "
                          "private key") from exc
    return key, chain


def _check_key_matches(key: PrivateKeyTypes, certificate: x509.Certificate, source: str) -> None:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(der, spki):
        raise ConfigError("tls.client_certificate",
                          f"{source}: the private key does not belong to the first certificate")


def _load_key_and_chain(context: ssl.SSLContext, key: PrivateKeyTypes,
                        chain: Sequence[x509.Certificate], source: ClientCertificateSource) -> None:
    password = secrets.token_urlsafe(32).encode("ascii")
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    pem += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(password))
    with _transient_file(pem) as path:
        try:
            context.load_cert_chain(path, password=password)
        except ssl.SSLError as exc:
            raise ConfigError("tls.client_certificate",
                              f"{_source(source)}: rejected by OpenSSL "
                              f"({openssl_reason(exc)})") from exc


@contextlib.contextmanager
def _transient_file(data: bytes) -> Iterator[str]:
    """A path readable by OpenSSL for the duration of the block, then gone."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd("mssconnector-client-tls", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="mssconnector-tls-") as directory:  # mode 0700
        path = os.path.join(directory, "client.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        try:
            yield path
        finally:
            os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- helpers -------------------------------------------------------------------------------------


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from exc


def openssl_reason(exc: ssl.SSLError | OSError) -> str:
    """What OpenSSL (or the file system) said, for a configuration error."""
    return str(getattr(exc, "reason", None) or exc)


def _source(source: ClientCertificateSource) -> str:
    if isinstance(source, Pkcs12ClientCertificate):
        return str(source.path)
    return str(source.certificate)


def _info(certificate: x509.Certificate, source: str) -> CertificateInfo:
    return CertificateInfo(subject=certificate.subject.rfc4514_string(),
                           issuer=certificate.issuer.rfc4514_string(),
                           serial=format(certificate.serial_number, "x"),
                           not_after=certificate.not_valid_after_utc, source=source)
