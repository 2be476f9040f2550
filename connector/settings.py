"""Configuration: one TOML file, validated at start-up; secrets come from files or the environment.

Every problem raises ConfigError naming the key (dotted path, with tenant and listener indexes)
and the file. Unknown keys are errors too: a typo must not silently fall back to a default.
With no file at all, `embedded_default()` gives the pilot set-up: SQLite under ./var, one
listener on 127.0.0.1:2575 and mails written to a local Maildir (dry run).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from connector.cda.policy import MissingPdfPolicy, SchematronPolicy
from connector.errors import ConfigError
from connector.store.model import UnknownOriginalPolicy

DEFAULT_PORT = 2575
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
_TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}\Z")
_FINESS = re.compile(r"(\d{9}|2[AB]\d{7})\Z")
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,32}\Z")
#: The embedded dry run's establishment OID: a UUID-based OID (ITU-T X.667, `2.25.<uuid>`) that
#: belongs to no establishment, so that the archives a pilot inspects are complete. A real tenant
#: sets its own `oid`.
DRY_RUN_OID = "2.25.146357245062853604420394627113962385681"


class StoreBackend(StrEnum):
    SQLITE = "sqlite"
    POSTGRES = "postgres"


class TransportKind(StrEnum):
    MAILDIR = "maildir"  # dry run: mails written to a local Maildir
    SMTP = "smtp"


class SendingMatrixProfile(StrEnum):
    """Which MSSanté sending matrix a tenant applies."""

    STRICT = "strict"  # the volet's table as published (2026-04-21), nothing else
    # plus "PS only" for a document visible to the patient, which the ANS MDM examples use
    ANS_EXAMPLES = "ans-examples"


class EnhancedAck(StrEnum):
    """What a listener answers a message that asks for enhanced acknowledgement (MSH-15/16)."""

    # The HL7 commit ACK on the connection (CA/CE/CR), when MSH-15 asks for one (none for NE).
    COMMIT = "commit"
    # One application ACK (AA/AE/AR) whatever MSH-15/16 say: the ANS notes' reading of the
    # CI-SIS volets, whose ACKs only know AA/AE/AR, for senders that wait for it.
    APPLICATION = "application"


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


@dataclass(frozen=True, slots=True)
class ListenerTLS:
    certificate: Path
    private_key: Path
    private_key_password: str | None = field(default=None, repr=False)
    client_ca: Path | None = None  # set: mutual TLS, a client certificate is required


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    name: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    charset: str | None = None  # forces decoding, whatever MSH-18 says
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    idle_timeout_seconds: float = 300.0
    max_connections: int = 64
    allow_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    tls: ListenerTLS | None = None
    enhanced_ack: EnhancedAck = EnhancedAck.COMMIT

    @property
    def application_ack(self) -> bool:
        """AA/AE/AR whatever MSH-15/16 ask (`enhanced_ack = "application"`)."""
        return self.enhanced_ack is EnhancedAck.APPLICATION


class SmtpTlsMode(StrEnum):
    STARTTLS = "starttls"  # port 587, the MSSanté default
    IMPLICIT_TLS = "implicit-tls"  # port 465


class SmtpSasl(StrEnum):
    NONE = "none"
    PLAIN = "plain"
    EXTERNAL = "external"
    XOAUTH2 = "xoauth2"


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """The tenant's MSSanté operator: where to submit, whom to trust, what to present."""

    host: str
    ca_bundle: Path  # the IGC-Santé roots: always explicit
    port: int = 587
    tls: SmtpTlsMode = SmtpTlsMode.STARTTLS
    client_certificate: Path | None = None  # PEM chain, with client_private_key
    client_private_key: Path | None = None
    client_private_key_password: str | None = field(default=None, repr=False)
    client_pkcs12: Path | None = None  # or one PKCS#12 file
    client_pkcs12_password: str | None = field(default=None, repr=False)
    sasl: SmtpSasl = SmtpSasl.NONE
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    oauth_token: str | None = field(default=None, repr=False)
    local_hostname: str | None = None
    # The revocation lists the operator's certificate is checked against (ECO.1.1.6)
    crl_files: tuple[Path, ...] = ()
    connect_timeout_seconds: float = 30.0
    command_timeout_seconds: float = 60.0
    data_timeout_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class TransportSettings:
    kind: TransportKind = TransportKind.MAILDIR
    maildir: Path = Path("var/maildir")
    smtp: SmtpSettings | None = None  # set when kind is smtp


@dataclass(frozen=True, slots=True)
class ReceiptsSettings:
    """The application mailbox over IMAP, where DSNs and MDNs come back. TLS material defaults to
    the SMTP transport's (the same application mailbox certificate)."""

    host: str
    port: int = 993
    tls: SmtpTlsMode = SmtpTlsMode.IMPLICIT_TLS
    ca_bundle: Path | None = None
    client_certificate: Path | None = None
    client_private_key: Path | None = None
    client_private_key_password: str | None = field(default=None, repr=False)
    client_pkcs12: Path | None = None
    client_pkcs12_password: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    mailbox: str = "INBOX"
    processed_folder: str = "processed"
    unmatched_folder: str = "unmatched"
    idle_seconds: float = 60.0
    poll_seconds: float = 10.0
    timeout_seconds: float = 30.0
    final_report_timeout_hours: float = 72.0  # then Z02 N (W) for a DSN that never came
    crl_files: tuple[Path, ...] | None = None  # None: [tenants.transport]'s


@dataclass(frozen=True, slots=True)
class HisSettings:
    """Where ZAM^Z02/Z03 go: the hospital's MLLP listener (optional TLS)."""

    host: str
    port: int
    timeout_seconds: float = 30.0
    ca_bundle: Path | None = None  # set: TLS, the HIS certificate verified against it
    client_certificate: Path | None = None
    client_private_key: Path | None = None


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """How a tenant's mails are sent: parallelism, rate and retries."""

    concurrency: int = 2
    batch_size: int = 20
    rate_per_second: float = 0.0  # 0: no cap
    lease_seconds: float = 120.0
    poll_seconds: float = 2.0
    config_error_pause_seconds: float = 300.0
    retry_initial_seconds: float = 60.0
    retry_maximum_seconds: float = 3600.0
    retry_factor: float = 2.0
    retry_jitter: float = 0.2
    retry_budget_hours: float = 48.0


@dataclass(frozen=True, slots=True)
class CisisSettings:
    schematron_policy: SchematronPolicy = SchematronPolicy.REJECT
    unknown_original: UnknownOriginalPolicy = UnknownOriginalPolicy.ACCEPT
    sending_matrix: SendingMatrixProfile = SendingMatrixProfile.STRICT
    # A recipient outside the MSSanté trust space refuses the whole request (AE), unless the
    # tenant explicitly allows sending to the others.
    partial_sending: bool = False
    # ECO.2.1.1: a CDA whose PDF/A-1 cannot be had refuses the request unless the tenant
    # explicitly sends such mails without it.
    missing_pdf: MissingPdfPolicy = MissingPdfPolicy.REFUSE


@dataclass(frozen=True, slots=True)
class MailboxSettings:
    """The tenant's application mailbox (BAL applicative) and what its mails say of it."""

    address: str = "dry-run@connector.invalid"  # From, Disposition-Notification-To
    display_name: str | None = None
    nil: str | None = None  # X-MSS-NIL
    # Whom a recipient reaches about an archive (README.TXT, INDEX.HTM): a service and its
    # telephone, say; default the mailbox address
    contact: str | None = None


@dataclass(frozen=True, slots=True)
class ValidationSettings:
    """The ANS files the site installs (never bundled: users bring the current ones)."""

    cda_xsd: Path | None = None
    schematron: Path | None = None
    schematron_phase: str | None = None


@dataclass(frozen=True, slots=True)
class TenantSettings:
    id: str
    name: str
    finess: str | None
    application: str  # our MSH-3 (ACK, ZAM) when the sender left MSH-5 empty
    facility: str  # our MSH-4 (ACK, ZAM) when the sender left MSH-6 empty
    listeners: tuple[ListenerSettings, ...]
    transport: TransportSettings
    cisis: CisisSettings = CisisSettings()
    mailbox: MailboxSettings = MailboxSettings()
    oid: str | None = None  # the establishment's OID: XDM sourceId, local ids without an OID
    delivery: DeliverySettings = DeliverySettings()
    receipts: ReceiptsSettings | None = None  # no IMAP polling unless configured
    mappings: Path | None = None  # legacy flow mappings (<dir>/<flow>/mapping.yaml)
    his: HisSettings | None = None  # no ZAM unless configured

    @property
    def returns_zams(self) -> bool:
        """Reads its receipts (DSN, MDN) and returns them to the HIS as ZAM^Z02/Z03."""
        return self.receipts is not None and self.his is not None

    @property
    def imap_crl_files(self) -> tuple[Path, ...]:
        """The CRLs the receipts' IMAP connection checks the operator against: its own, else
        the SMTP transport's."""
        if self.receipts is not None and self.receipts.crl_files is not None:
            return self.receipts.crl_files
        return self.transport.smtp.crl_files if self.transport.smtp else ()


@dataclass(frozen=True, slots=True)
class EncryptionSettings:
    current_key_id: str
    keys: Mapping[str, bytes] = field(repr=False)


@dataclass(frozen=True, slots=True)
class StoreSettings:
    backend: StoreBackend = StoreBackend.SQLITE
    path: Path = Path("var/connector.db")
    dsn: str | None = field(default=None, repr=False)
    retransmission_window_seconds: float = 24 * 3600.0
    encryption: EncryptionSettings | None = None
    # Payloads (messages, reports, mails, returned mails) are dropped this long after they were
    # received (a mail: after its last activity), once nothing still needs them; the rows stay
    # for the audit (`store._shared.purge_statements`).
    payload_retention_days: float = 90.0
    # A patient's ADT context (identity, INS, traits, médecin traitant, encounter) is deleted
    # this long after the last ADT about them; 0 keeps it.
    patient_context_retention_days: float = 400.0


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    format: LogFormat = LogFormat.CONSOLE
    level: str = "info"


@dataclass(frozen=True, slots=True)
class IntakeSettings:
    """How intake uses the machine's cores."""

    # The CI-SIS checks, CDA validation and mail building of document messages (milliseconds of
    # CPU each) run in this many worker processes; 0: in threads of the server process, which
    # the GIL keeps to one core for all intake and delivery work.
    document_processes: int = 0


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """The admin HTTP listener (/metrics, /healthz, /readyz): keep it on a private address."""

    host: str = "127.0.0.1"
    port: int = 9610
    ready_requires_mailboxes: bool = False  # /readyz fails while a receipts mailbox is down
    token: str | None = field(default=None, repr=False)  # set: the JSON API under /api/
    tls: ListenerTLS | None = None


@dataclass(frozen=True, slots=True)
class SecretFile:
    """A file the configuration reads a secret from, by the key that names it."""

    key: str  # e.g. "tenants[0].transport.client_private_key"
    path: Path


@dataclass(frozen=True, slots=True)
class Settings:
    store: StoreSettings
    tenants: tuple[TenantSettings, ...]
    logging: LoggingSettings = LoggingSettings()
    default_charset: str = "utf-8"  # when neither the listener nor MSH-18 says
    validation: ValidationSettings = ValidationSettings()
    whitelist: Path | None = None  # the MSSanté trust-space list (liste blanche) the site installs
    admin: AdminSettings | None = None  # no admin listener unless configured
    source: str | None = None  # the file it came from, for messages
    intake: IntakeSettings = IntakeSettings()
    secret_files: tuple[SecretFile, ...] = ()  # private keys and `*_file` secrets, for checks

    def tenant(self, tenant_id: str) -> TenantSettings:
        for t in self.tenants:
            if t.id == tenant_id:
                return t
        raise KeyError(tenant_id)


def embedded_default(base: Path = Path("var")) -> Settings:
    """The configuration `serve` uses when given none: a pilot site's dry run."""
    tenant = TenantSettings(
        id="default",
        name="Default establishment",
        finess=None,
        application="MSSANTE-CONNECTOR",
        facility="",
        listeners=(ListenerSettings(name="default"),),
        transport=TransportSettings(TransportKind.MAILDIR, base / "maildir"),
        oid=DRY_RUN_OID,
    )
    return Settings(store=StoreSettings(path=base / "connector.db"), tenants=(tenant,),
                    admin=AdminSettings())


# --------------------------------------------------------------------------------------------------


class _Reader:
    """Typed access to one TOML table that reports problems with the full key path."""

    def __init__(self, table: Mapping[str, Any], prefix: str, source: str | None,
                 env: Mapping[str, str], secret_files: list[SecretFile]) -> None:
        self.table, self.prefix, self.source, self.env = table, prefix, source, env
        self.secret_files = secret_files  # every file a secret came from, whole configuration
        self._seen: set[str] = set()

    def sub(self, table: Mapping[str, Any], name: str) -> _Reader:
        """A reader of the table `name` inside this one."""
        return _Reader(table, self.key(name), self.source, self.env, self.secret_files)

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.key(name), problem, source=self.source)

    def _get(self, name: str, kinds: tuple[type, ...], what: str) -> Any:
        self._seen.add(name)
        if name not in self.table:
            return None
        value = self.table[name]
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(name, f"must be {what}")
        if not isinstance(value, kinds):
            raise self.fail(name, f"must be {what}, not {type(value).__name__}")
        return value

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self._get(name, (str,), "a string")
        return default if value is None else str(value)

    def req_str(self, name: str) -> str:
        value = self.text(name)
        if not value:
            raise self.fail(name, "is required")
        return value

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        value = self._get(name, (int,), "an integer")
        if value is None:
            return default
        if not lo <= value <= hi:
            raise self.fail(name, f"must be between {lo} and {hi}")
        return int(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name, (bool,), "true or false")
        return default if value is None else bool(value)

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        value = self._get(name, (int, float), "a number")
        if value is None:
            return default
        if not lo <= value <= hi:
            raise self.fail(name, f"must be between {lo} and {hi}")
        return float(value)

    def array(self, name: str) -> list[Any]:
        value = self._get(name, (list,), "an array")
        return [] if value is None else list(value)

    def paths(self, name: str) -> tuple[Path, ...] | None:
        """An array of paths to files that must exist; None when the key is absent."""
        if name not in self.table:
            self._seen.add(name)
            return None
        found = []
        for index, raw in enumerate(self.array(name)):
            if not isinstance(raw, str) or not raw:
                raise self.fail(f"{name}[{index}]", "must be a file path")
            if not Path(raw).is_file():
                raise self.fail(f"{name}[{index}]", f"file not found: {raw}")
            found.append(Path(raw))
        return tuple(found)

    def subtable(self, name: str) -> Mapping[str, Any] | None:
        value = self._get(name, (dict,), "a table")
        return None if value is None else dict(value)

    def path(self, name: str, *, must_exist: bool = False, default: Path | None = None,
             secret: bool = False) -> Path | None:
        """`secret`: the file holds a secret (a private key), for `Settings.secret_files`."""
        raw = self.text(name)
        if raw is None:
            return default
        p = Path(raw)
        if must_exist and not p.is_file():
            raise self.fail(name, f"file not found: {p}")
        if secret:
            self.secret_files.append(SecretFile(self.key(name), p))
        return p

    def secret(self, name: str) -> str | None:
        """`name_env` (variable name) or `name_file` (path); never the secret inline."""
        if name in self.table:
            self._seen.add(name)
            raise self.fail(name, f"secrets are not read inline: use {name}_env or {name}_file")
        env_name, file_name = self.text(f"{name}_env"), self.text(f"{name}_file")
        if env_name and file_name:
            raise self.fail(f"{name}_env", f"give {name}_env or {name}_file, not both")
        if env_name:
            if env_name not in self.env:
                raise self.fail(f"{name}_env", f"environment variable {env_name} is not set")
            return self.env[env_name]
        if file_name:
            self.secret_files.append(SecretFile(self.key(f"{name}_file"), Path(file_name)))
            try:
                return Path(file_name).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise self.fail(f"{name}_file", f"cannot read {file_name}: {exc.strerror}"
                                ) from exc
            except UnicodeDecodeError as exc:
                raise self.fail(f"{name}_file", f"{file_name} is not UTF-8 text") from exc
        return None

    def close(self) -> None:
        unknown = sorted(set(self.table) - self._seen)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


_ASCII_PROBE = "MSH|^~\\&\r" + "".join(map(chr, range(0x20, 0x7F)))


def _codec(reader: _Reader, name: str, default: str | None) -> str | None:
    raw = reader.text(name)
    if raw is None:
        return default
    from connector.hl7.header import CHARSETS

    candidate = CHARSETS.get(raw.upper(), raw)
    try:
        codec = codecs.lookup(candidate).name
    except LookupError as exc:
        raise reader.fail(name, f"unknown character set {raw!r}") from exc
    # HL7 over MLLP needs a text codec that writes ASCII as ASCII (MSH, delimiters, 0x0B).
    try:
        ascii_compatible = _ASCII_PROBE.encode(codec) == _ASCII_PROBE.encode("ascii")
    except (LookupError, UnicodeError):  # not a text encoding (base64, rot13), or idna...
        ascii_compatible = False
    if not ascii_compatible:
        raise reader.fail(name, f"character set {raw!r} is not ASCII-compatible")
    return codec


_LOOKS_NUMERIC = re.compile(r"[0-9.]+\Z|.*:.*")  # dotted digits (IPv4), or a colon (IPv6)


def _listener(reader: _Reader, index_name: str) -> ListenerSettings:
    host = reader.text("host", "127.0.0.1") or "127.0.0.1"
    if _LOOKS_NUMERIC.match(host):  # meant as an address: one, not a host name to look up
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise reader.fail("host", f"{host!r} is not an IP address") from None
    port = reader.integer("port", DEFAULT_PORT, 1, 65535)
    allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for i, cidr in enumerate(reader.array("allow_from")):
        try:
            allow.append(ipaddress.ip_network(str(cidr), strict=False))
        except ValueError as exc:
            raise reader.fail(f"allow_from[{i}]", f"not an address or network: {cidr!r}"
                              ) from exc
    tls_table = reader.subtable("tls")
    tls = None
    if tls_table is not None:
        t = reader.sub(tls_table, "tls")
        cert = t.path("certificate", must_exist=True)
        key = t.path("private_key", must_exist=True, secret=True)
        if cert is None:
            raise t.fail("certificate", "is required when [tls] is present")
        if key is None:
            raise t.fail("private_key", "is required when [tls] is present")
        tls = ListenerTLS(cert, key, t.secret("private_key_password"),
                          t.path("client_ca", must_exist=True))
        t.close()
    settings = ListenerSettings(
        name=reader.text("name", index_name) or index_name,
        host=host,
        port=port,
        charset=_codec(reader, "charset", None),
        max_frame_bytes=reader.integer("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES, 1024, 1 << 30),
        idle_timeout_seconds=reader.number("idle_timeout_seconds", 300.0, 0.1, 86400.0),
        max_connections=reader.integer("max_connections", 64, 1, 100_000),
        allow_from=tuple(allow),
        tls=tls,
        enhanced_ack=_choice(reader, "enhanced_ack", EnhancedAck, EnhancedAck.COMMIT),
    )
    reader.close()
    return settings


def _encryption(reader: _Reader) -> EncryptionSettings | None:
    table = reader.subtable("encryption")
    if table is None:
        return None
    r = reader.sub(table, "encryption")
    current = r.req_str("current_key_id")
    text = r.secret("keys")
    origin = "keys_file" if "keys_file" in table and "keys_env" not in table else "keys_env"
    if not text:
        raise r.fail(origin, "is required: the keys as `id:base64key` lines")
    keys: dict[str, bytes] = {}
    for n, item in enumerate(re.split(r"[\s,]+", text.strip())):
        key_id, sep, b64 = item.partition(":")
        if not sep or not _KEY_ID.match(key_id):
            raise r.fail(origin, f"entry {n + 1} is not `id:base64key`")
        try:
            key = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise r.fail(origin, f"key {key_id!r} is not valid base64") from exc
        if len(key) != 32:
            raise r.fail(origin, f"key {key_id!r} must be 32 bytes (AES-256)")
        if key_id in keys:  # the second would win: rows sealed with the first stop opening
            raise r.fail(origin, f"key {key_id!r} is given twice")
        keys[key_id] = key
    if current not in keys:
        raise r.fail("current_key_id", f"key {current!r} is not among the keys given")
    r.close()
    return EncryptionSettings(current, keys)


def _store(reader: _Reader, base: Path) -> StoreSettings:
    backend_raw = reader.text("backend", "sqlite") or "sqlite"
    try:
        backend = StoreBackend(backend_raw)
    except ValueError as exc:
        raise reader.fail("backend", "must be 'sqlite' or 'postgres'") from exc
    path = reader.path("path", default=base / "connector.db")
    dsn = reader.secret("dsn")
    given = "dsn_file" if "dsn_file" in reader.table else "dsn_env"  # where it was looked for
    if backend is StoreBackend.POSTGRES and not dsn:
        raise reader.fail(given, "is required for the postgres backend" if given not in
                          reader.table else "gives an empty connection string")
    if backend is StoreBackend.POSTGRES and dsn:
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(dsn)
        except Exception:  # noqa: BLE001 (libpq's own text would quote the DSN: a password)
            raise reader.fail(given, "not a valid libpq connection string (key=value "
                                     "pairs or a postgresql:// URI)") from None
    settings = StoreSettings(
        backend=backend,
        path=path or base / "connector.db",
        dsn=dsn,
        retransmission_window_seconds=reader.number(
            "retransmission_window_seconds", 86400.0, 0.0, 90 * 86400.0),
        encryption=_encryption(reader),
        payload_retention_days=reader.number("payload_retention_days", 90.0, 1.0, 36500.0),
        patient_context_retention_days=reader.number("patient_context_retention_days", 400.0,
                                                     0.0, 36500.0),
    )
    reader.close()
    return settings


def _choice(reader: _Reader, name: str, enum: type[Any], default: Any) -> Any:
    raw = reader.text(name)
    if raw is None:
        return default
    try:
        return enum(raw)
    except ValueError as exc:
        allowed = ", ".join(repr(m.value) for m in enum)
        raise reader.fail(name, f"must be one of {allowed}") from exc


def _cisis(reader: _Reader) -> CisisSettings:
    table = reader.subtable("cisis")
    if table is None:
        return CisisSettings()
    r = reader.sub(table, "cisis")
    settings = CisisSettings(
        schematron_policy=_choice(r, "schematron_policy", SchematronPolicy,
                                  SchematronPolicy.REJECT),
        unknown_original=_choice(r, "unknown_original", UnknownOriginalPolicy,
                                 UnknownOriginalPolicy.ACCEPT),
        sending_matrix=_choice(r, "sending_matrix", SendingMatrixProfile,
                               SendingMatrixProfile.STRICT),
        partial_sending=r.flag("partial_sending", False),
        missing_pdf=_choice(r, "missing_pdf", MissingPdfPolicy, MissingPdfPolicy.REFUSE),
    )
    r.close()
    return settings


_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+\Z")
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+\Z")


def _mailbox(reader: _Reader) -> MailboxSettings:
    table = reader.subtable("mailbox")
    if table is None:
        return MailboxSettings()
    r = reader.sub(table, "mailbox")
    address = r.req_str("address")
    if not _ADDRESS.match(address):
        raise r.fail("address", "is not an e-mail address")
    settings = MailboxSettings(address, r.text("display_name"), r.text("nil"), r.text("contact"))
    r.close()
    return settings


def _validation(reader: _Reader) -> ValidationSettings:
    table = reader.subtable("validation")
    if table is None:
        return ValidationSettings()
    r = reader.sub(table, "validation")
    settings = ValidationSettings(
        cda_xsd=r.path("cda_xsd", must_exist=True),
        schematron=r.path("schematron", must_exist=True),
        schematron_phase=r.text("schematron_phase"),
    )
    r.close()
    return settings


def _tenant(reader: _Reader, index: int, base: Path) -> TenantSettings:
    tenant_id = reader.req_str("id")
    if not _TENANT_ID.match(tenant_id):
        raise reader.fail("id", "must be 1-32 lower-case letters, digits or '-'")
    finess = reader.text("finess")
    if finess is not None and not _FINESS.match(finess):
        raise reader.fail("finess", "must be a 9-character FINESS number")
    listeners: list[ListenerSettings] = []
    for i, item in enumerate(reader.array("listeners")):
        if not isinstance(item, dict):
            raise reader.fail(f"listeners[{i}]", "must be a table")
        sub = reader.sub(item, f"listeners[{i}]")
        listener = _listener(sub, f"{tenant_id}-{i}")
        if any(other.name == listener.name for other in listeners):
            # Logs, metrics, `messages` and `render --listener` tell listeners by name.
            raise reader.fail(f"listeners[{i}].name",
                              f"{listener.name!r} is the name of another listener of the tenant")
        listeners.append(listener)
    transport = _transport(reader, tenant_id, base)
    tenant = TenantSettings(
        id=tenant_id,
        name=reader.text("name", tenant_id) or tenant_id,
        finess=finess,
        application=reader.text("application", "MSSANTE-CONNECTOR") or "MSSANTE-CONNECTOR",
        facility=reader.text("facility", "") or "",
        listeners=tuple(listeners),
        transport=transport,
        cisis=_cisis(reader),
        mailbox=_mailbox(reader),
        oid=_oid(reader, "oid"),
        delivery=_delivery(reader),
        receipts=_receipts(reader),
        his=_his(reader),
        mappings=_directory_path(reader, "mappings"),
    )
    reader.close()
    if tenant.oid is None:
        raise reader.fail("oid", "is required: the establishment's OID (IHE_XDM sourceId)")
    if transport.kind is TransportKind.SMTP and not tenant.mailbox.nil:
        # X-MSS-NIL is required on every mail sent into the trust space (ANS transport notes
        # §3.2, §8: fail closed); the dry-run Maildir may go without it.
        raise reader.fail("mailbox.nil", "is required to send over SMTP: the X-MSS-NIL "
                                         "header every MSSante mail carries")
    return tenant


def _transport(reader: _Reader, tenant_id: str, base: Path) -> TransportSettings:
    tr = reader.sub(reader.subtable("transport") or {}, "transport")
    kind = _choice(tr, "kind", TransportKind, TransportKind.MAILDIR)
    maildir = tr.path("maildir", default=base / "maildir" / tenant_id) or base
    smtp = None
    if kind is TransportKind.SMTP:
        smtp = _smtp(tr)
    transport = TransportSettings(kind, maildir, smtp)
    tr.close()
    return transport


def _smtp(tr: _Reader) -> SmtpSettings:
    ca_bundle = tr.path("ca_bundle", must_exist=True)
    if ca_bundle is None:
        raise tr.fail("ca_bundle", "is required: the IGC-Santé roots that sign the operator")
    client = _client_certificate_keys(tr, pkcs12=True)
    certificate, pkcs12 = client["client_certificate"], client["client_pkcs12"]
    sasl = _choice(tr, "sasl", SmtpSasl, SmtpSasl.NONE)
    settings = SmtpSettings(
        host=tr.req_str("host"),
        ca_bundle=ca_bundle,
        port=tr.integer("port", 587, 1, 65535),
        tls=_choice(tr, "tls", SmtpTlsMode, SmtpTlsMode.STARTTLS),
        **client,
        client_private_key_password=tr.secret("client_private_key_password"),
        client_pkcs12_password=tr.secret("client_pkcs12_password"),
        sasl=sasl,
        username=tr.text("username"),
        password=tr.secret("password"),
        oauth_token=tr.secret("oauth_token"),
        local_hostname=tr.text("local_hostname"),
        crl_files=tr.paths("crl_files") or (),
        connect_timeout_seconds=tr.number("connect_timeout_seconds", 30.0, 0.1, 3600.0),
        command_timeout_seconds=tr.number("command_timeout_seconds", 60.0, 0.1, 3600.0),
        data_timeout_seconds=tr.number("data_timeout_seconds", 600.0, 0.1, 7200.0),
    )
    if certificate is None and pkcs12 is None and sasl in (SmtpSasl.NONE, SmtpSasl.EXTERNAL):
        raise tr.fail("client_certificate", "is required: the application mailbox's "
                                            "IGC-Santé certificate (or client_pkcs12)")
    needs = {SmtpSasl.PLAIN: ("username", "password_env"),
             SmtpSasl.XOAUTH2: ("username", "oauth_token_env")}.get(sasl, ())
    for key in needs:
        if getattr(settings, key.removesuffix("_env")) is None:
            raise tr.fail(key, f"is required for sasl = {sasl.value!r}")
    return settings


def _client_certificate_keys(r: _Reader, *, pkcs12: bool = False) -> dict[str, Path | None]:
    """The client certificate a table names: `client_certificate` with `client_private_key`,
    or (where `pkcs12` is accepted) `client_pkcs12`, not both."""
    certificate = r.path("client_certificate", must_exist=True)
    private_key = r.path("client_private_key", must_exist=True, secret=True)
    keys = {"client_certificate": certificate, "client_private_key": private_key}
    if pkcs12:
        bundle = keys["client_pkcs12"] = r.path("client_pkcs12", must_exist=True, secret=True)
        if bundle is not None and (certificate or private_key):
            raise r.fail("client_pkcs12", "give client_pkcs12 or client_certificate and "
                                          "client_private_key, not both")
    if (certificate is None) != (private_key is None):
        raise r.fail("client_private_key" if certificate else "client_certificate",
                     "client_certificate and client_private_key go together")
    return keys


def _receipts(reader: _Reader) -> ReceiptsSettings | None:
    table = reader.subtable("receipts")
    if table is None:
        return None
    r = reader.sub(table, "receipts")
    tls = _choice(r, "tls", SmtpTlsMode, SmtpTlsMode.IMPLICIT_TLS)
    settings = ReceiptsSettings(
        host=r.req_str("host"),
        port=r.integer("port", 993 if tls is SmtpTlsMode.IMPLICIT_TLS else 143, 1, 65535),
        tls=tls,
        **_client_certificate_keys(r, pkcs12=True),
        ca_bundle=r.path("ca_bundle", must_exist=True),
        client_private_key_password=r.secret("client_private_key_password"),
        client_pkcs12_password=r.secret("client_pkcs12_password"),
        username=r.text("username"),
        password=r.secret("password"),
        mailbox=r.text("mailbox", "INBOX") or "INBOX",
        processed_folder=r.text("processed_folder", "processed") or "processed",
        unmatched_folder=r.text("unmatched_folder", "unmatched") or "unmatched",
        idle_seconds=r.number("idle_seconds", 60.0, 0.1, 1740.0),  # RFC 2177: under 29 min
        poll_seconds=r.number("poll_seconds", 10.0, 0.05, 3600.0),
        timeout_seconds=r.number("timeout_seconds", 30.0, 0.1, 600.0),
        final_report_timeout_hours=r.number("final_report_timeout_hours", 72.0, 0.0001,
                                            30 * 24.0),
        crl_files=r.paths("crl_files"),
    )
    r.close()
    return settings


def _his(reader: _Reader) -> HisSettings | None:
    table = reader.subtable("his")
    if table is None:
        return None
    r = reader.sub(table, "his")
    host = r.req_str("host")
    port = r.integer("port", 0, 1, 65535)
    if "port" not in table:
        raise r.fail("port", "is required")
    settings = HisSettings(host, port, r.number("timeout_seconds", 30.0, 0.1, 600.0),
                           **_client_certificate_keys(r),
                           ca_bundle=r.path("ca_bundle", must_exist=True))
    if settings.ca_bundle is None and settings.client_certificate is not None:
        raise r.fail("ca_bundle", "is required with client_certificate: TLS to the HIS needs "
                                  "the CA that signs it (without both, ZAMs go in clear)")
    r.close()
    return settings


def _delivery(reader: _Reader) -> DeliverySettings:
    table = reader.subtable("delivery")
    if table is None:
        return DeliverySettings()
    r = reader.sub(table, "delivery")
    initial = r.number("retry_initial_seconds", 60.0, 0.01, 86400.0)
    settings = DeliverySettings(
        concurrency=r.integer("concurrency", 2, 1, 64),
        batch_size=r.integer("batch_size", 20, 1, 1000),
        rate_per_second=r.number("rate_per_second", 0.0, 0.0, 10_000.0),
        lease_seconds=r.number("lease_seconds", 120.0, 1.0, 3600.0),
        poll_seconds=r.number("poll_seconds", 2.0, 0.01, 600.0),
        config_error_pause_seconds=r.number("config_error_pause_seconds", 300.0, 0.01, 86400.0),
        retry_initial_seconds=initial,
        retry_maximum_seconds=r.number("retry_maximum_seconds", max(3600.0, initial), initial,
                                       7 * 86400.0),
        retry_factor=r.number("retry_factor", 2.0, 1.0, 10.0),
        retry_jitter=r.number("retry_jitter", 0.2, 0.0, 0.9),
        retry_budget_hours=r.number("retry_budget_hours", 48.0, 0.0001, 30 * 24.0),
    )
    r.close()
    return settings


def _directory_path(reader: _Reader, name: str) -> Path | None:
    path = reader.path(name)
    if path is not None and not path.is_dir():
        raise reader.fail(name, f"not a directory: {path}")
    return path


def _oid(reader: _Reader, name: str) -> str | None:
    value = reader.text(name)
    if value is not None and not _OID.match(value):
        raise reader.fail(name, "is not an OID (digits separated by dots)")
    return value


def parse_settings(data: Mapping[str, Any], *, source: str | None = None,
                   env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    root = _Reader(data, "", source, env, [])
    base = root.path("data_dir", default=Path("var")) or Path("var")
    store = _store(root.sub(root.subtable("store") or {}, "store"), base)
    log_table = root.sub(root.subtable("logging") or {}, "logging")
    try:
        log_format = LogFormat(log_table.text("format", "console") or "console")
    except ValueError as exc:
        raise log_table.fail("format", "must be 'json' or 'console'") from exc
    level = (log_table.text("level", "info") or "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        raise log_table.fail("level", "must be debug, info, warning or error")
    log_table.close()
    default_charset = _codec(root, "default_charset", "utf-8") or "utf-8"
    validation = _validation(root)
    directory = root.sub(root.subtable("directory") or {}, "directory")
    # May not exist yet: `whitelist import` installs the first one; `serve` refuses to start
    # without a valid list when the key is set.
    whitelist = directory.path("whitelist")
    directory.close()
    intake_table = root.sub(root.subtable("intake") or {}, "intake")
    intake = IntakeSettings(intake_table.integer("document_processes", 0, 0, 64))
    intake_table.close()
    admin_table = root.subtable("admin")
    admin = None
    if admin_table is not None:
        a = root.sub(admin_table, "admin")
        token = a.secret("token")
        if token is not None and len(token) < 16:
            raise a.fail("token_env" if "token_env" in admin_table else "token_file",
                         "the admin API token must be at least 16 characters")
        tls_table = a.subtable("tls")
        admin_tls = None
        if tls_table is not None:
            t = a.sub(tls_table, "tls")
            cert = t.path("certificate", must_exist=True)
            key = t.path("private_key", must_exist=True, secret=True)
            if cert is None or key is None:
                raise t.fail("certificate" if cert is None else "private_key", "is required")
            admin_tls = ListenerTLS(cert, key, t.secret("private_key_password"))
            t.close()
        admin = AdminSettings(a.text("host", "127.0.0.1") or "127.0.0.1",
                              a.integer("port", 9610, 0, 65535),
                              a.flag("ready_requires_mailboxes", False), token, admin_tls)
        a.close()
    tenants = []
    raw_tenants = root.array("tenants")
    if not raw_tenants:
        raise root.fail("tenants", "at least one [[tenants]] table is required")
    for i, item in enumerate(raw_tenants):
        if not isinstance(item, dict):
            raise root.fail(f"tenants[{i}]", "must be a table")
        tenants.append(_tenant(root.sub(item, f"tenants[{i}]"), i, base))
    root.close()
    _check_unique(tenants, admin, source)
    _check_retention(store, tenants, source)
    _check_sending_safeguards(validation, whitelist, tenants, source)
    return Settings(store, tuple(tenants), LoggingSettings(log_format, level), default_charset,
                    validation, whitelist, admin, source, intake,
                    tuple(dict.fromkeys(root.secret_files)))


def _check_sending_safeguards(validation: ValidationSettings, whitelist: Path | None,
                              tenants: list[TenantSettings], source: str | None) -> None:
    """A tenant that sends for real (`transport.kind = "smtp"`) never skips the checks that the
    dry run may: the trust space (only domains of the MSSanté whitelist) and the CDA XSD."""
    sending = [i for i, t in enumerate(tenants) if t.transport.kind is TransportKind.SMTP]
    if not sending:
        return
    why = (f'tenants[{sending[0]}].transport.kind = "smtp" sends to MSSanté: it cannot skip '
           "this check (a dry-run tenant may)")
    if whitelist is None:
        raise ConfigError("directory.whitelist", f"is required: {why}; install the MSSanté "
                          "liste blanche with `mssante-connector whitelist import`",
                          source=source)
    if validation.cda_xsd is None:
        raise ConfigError("validation.cda_xsd", f"is required: {why}; point it at the ANS "
                          "CDA_extended.xsd", source=source)


def _check_retention(store: StoreSettings, tenants: list[TenantSettings],
                     source: str | None) -> None:
    """A mail's payload must outlive the wait for its final delivery report: the ZAM that the
    wait ends with is built from it."""
    for i, tenant in enumerate(tenants):
        receipts = tenant.receipts
        if receipts is not None and (receipts.final_report_timeout_hours
                                     >= store.payload_retention_days * 24):
            raise ConfigError(
                "store.payload_retention_days",
                f"must be longer than tenants[{i}].receipts.final_report_timeout_hours"
                f" ({receipts.final_report_timeout_hours:g} h)", source=source)


_WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 (recognised, not bound)


def _check_unique(tenants: list[TenantSettings], admin: AdminSettings | None,
                  source: str | None) -> None:
    """Tenant ids, and the ports listeners and the admin API bind: the same port on the same
    address, or on a wildcard address and any other, cannot both be bound (port 0: any free)."""
    ids: set[str] = set()
    bound: list[tuple[str, int, str]] = []  # host, port, whose
    if admin is not None:
        bound.append((admin.host, admin.port, "the admin API ([admin] port)"))
    for i, tenant in enumerate(tenants):
        if tenant.id in ids:
            raise ConfigError(f"tenants[{i}].id", f"duplicate tenant id {tenant.id!r}",
                              source=source)
        ids.add(tenant.id)
        for j, listener in enumerate(tenant.listeners):
            host, port = listener.host, listener.port
            clash = next((whose for other, taken, whose in bound if port and taken == port
                          and (other == host or {other, host} & _WILDCARDS)), None)
            if clash is not None:
                raise ConfigError(f"tenants[{i}].listeners[{j}].port",
                                  f"{host}:{port} is already used by {clash}", source=source)
            bound.append((host, port, f"tenant {tenant.id!r}"))


def load_settings(path: Path, *, env: Mapping[str, str] | None = None) -> Settings:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError("(file)", "configuration file not found", source=str(path)) from exc
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read the configuration file: {exc.strerror}",
                          source=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("(file)", f"not UTF-8 (byte {exc.start})", source=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(syntax)", str(exc), source=str(path)) from exc
    return parse_settings(data, source=str(path), env=env)
