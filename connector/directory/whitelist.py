"""The MSSanté trust-space whitelist ("liste blanche") and the recipient address rules.

The whitelist is the ANS file `listeblanchemssante.xml` (namespace
`https://listeblanche.mssante.fr/schema`): `ListeBlancheMSSante/DateDeGeneration` and
`ListeBlancheMSSante/ListeDomaines/Domaine/Nom`. A recipient is in the trust space when the domain
of its address is *exactly* one of the listed names, compared case-insensitively. A sub-domain of a
listed domain is not in the trust space (the ANS lists sub-domains explicitly), and nothing is
inferred from a `*.mssante.fr` shape.

Domain normalisation, the same for whitelist entries and looked-up domains (`normalize_domain`):

* surrounding spaces are removed and one trailing dot (the absolute DNS form `a.mssante.fr.`) is
  dropped by `contains_domain`; an *address* whose domain ends with a dot is refused (RFC 5321 has
  no such form);
* ASCII names are lower-cased, then checked label by label (letters, digits, hyphens; 1-63
  characters, no leading or trailing hyphen; at least two labels; at most 253 characters);
* a non-ASCII name (U-labels) is converted to its A-label (`xn--…`) form with the standard library's
  IDNA 2003 codec, and is accepted only when that conversion is lossless (decoding the A-labels
  gives back the NFC, lower-cased input). Names that IDNA 2003 would silently map to another name
  (`ß` → `ss`, final sigma, joiners…) are refused rather than guessed, so a look-up never lands on a
  different listed domain than the one written.

Messages of the exceptions raised here never contain an address: a patient address carries the INS.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from lxml import etree

from connector.cda.safe_xml import parse_xml
from connector.errors import ConfigError, DocumentError, MessageError
from connector.hl7.codes import ErrorCondition

NAMESPACE: Final = "https://listeblanche.mssante.fr/schema"
_NS: Final = {"n": NAMESPACE}
_ROOT_TAG: Final = f"{{{NAMESPACE}}}ListeBlancheMSSante"

#: Configuration key named in errors about the whitelist file (callers may pass their own).
WHITELIST_CONFIG_KEY: Final = "directory.whitelist"
#: The domain of the patients' mailboxes (Mon espace santé): `<INS matricule>@patient.mssante.fr`.
PATIENT_DOMAIN: Final = "patient.mssante.fr"
#: A whitelist larger than this is refused unread (the 2025 file is about 3 MB).
MAX_WHITELIST_BYTES: Final = 64 * 1024 * 1024

_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_DOMAIN_LENGTH: Final = 253
# RFC 5321 Dot-string: atext runs separated by single dots (quoted local parts are not accepted).
_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_STRING: Final = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_MAX_LOCAL_PART: Final = 64
_MAX_MAILBOX: Final = 254  # RFC 5321 path (256) minus the angle brackets
# INS matricule (NIR or NIA): 13 characters, Corsican departments 2A/2B, then a 2-digit key.
_INS_MATRICULE: Final = re.compile(r"[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{8}")


# -- errors ---------------------------------------------------------------------------------------


class WhitelistError(ConfigError):
    """The whitelist file is unreadable, malformed, empty or cannot be installed; names the file."""


class InvalidAddressError(MessageError):
    """A recipient or sender address is not an acceptable RFC 5321 mailbox (answered AE, ERR-3 102).

    The detail names the rule that failed, never the address itself.
    """

    condition = ErrorCondition.DATA_TYPE_ERROR


# -- domains and addresses ------------------------------------------------------------------------


def normalize_domain(domain: str) -> str | None:
    """The lower-case A-label form of a host name, or None when it is not a valid one.

    Strips surrounding spaces and one trailing dot; see the module docstring for the IDNA rule.
    """
    text = domain.strip(" ")
    if text.endswith("."):
        text = text[:-1]
    ascii_form = _to_ascii(text)
    if ascii_form is None or len(ascii_form) > _MAX_DOMAIN_LENGTH:
        return None
    labels = ascii_form.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return ascii_form


def _to_ascii(text: str) -> str | None:
    if text.isascii():
        return text.lower()
    try:
        ace = text.encode("idna").decode("ascii")
        back = ace.encode("ascii").decode("idna")
    except UnicodeError:
        return None
    if back != unicodedata.normalize("NFC", text).lower():
        return None  # IDNA 2003 would map this name onto another one: refuse, don't guess
    return ace.lower()


@dataclass(frozen=True, slots=True)
class MailAddress:
    """An RFC 5321 mailbox: ASCII Dot-string local part (case kept), lower-case A-label domain.

    Build it with `parse_address`. `str()` gives the addr-spec to put in headers and SMTP commands.
    """

    local_part: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local_part}@{self.domain}"

    def __repr__(self) -> str:
        # A patient address is `<INS>@patient.mssante.fr`: never let it reach a log through repr().
        return f"MailAddress(<redacted>@{self.domain})"

    @property
    def is_patient(self) -> bool:
        """True for a patient mailbox (Mon espace santé), whatever its local part."""
        return self.domain == PATIENT_DOMAIN


def parse_address(text: str) -> MailAddress:
    """Check `text` is a bare RFC 5321 mailbox and return it normalised.

    Accepted: `local@domain` where the local part is an ASCII Dot-string (at most 64 characters)
    and the domain a host name (see `normalize_domain`; a U-label domain is returned as its A-label
    form). Surrounding spaces are ignored. Refused, with `InvalidAddressError`: CR, LF or any other
    control or format character anywhere, a display name or angle brackets, quoted local parts,
    address literals (`[192.0.2.1]`), a trailing dot after the domain, non-ASCII local parts, more
    than 254 characters.
    """
    candidate = text.strip(" ")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in candidate):
        raise InvalidAddressError("address contains a control or format character (CR, LF, …)")
    local, at, domain_text = candidate.rpartition("@")
    if not at or not local:
        raise InvalidAddressError("address is not of the form local-part@domain")
    if not local.isascii() or not _DOT_STRING.fullmatch(local):
        raise InvalidAddressError("address local part is not an ASCII RFC 5321 Dot-string")
    if len(local) > _MAX_LOCAL_PART:
        raise InvalidAddressError("address local part is longer than 64 characters")
    if domain_text.startswith("["):
        raise InvalidAddressError("address literals ([ip]) are not accepted")
    if domain_text.endswith("."):
        raise InvalidAddressError("address domain ends with a dot")
    domain = normalize_domain(domain_text)
    if domain is None:
        raise InvalidAddressError("address domain is not a valid host name")
    address = MailAddress(local, domain)
    if len(str(address)) > _MAX_MAILBOX:
        raise InvalidAddressError("address is longer than 254 characters")
    return address


def is_valid_address(text: str) -> bool:
    """True when `parse_address(text)` would succeed."""
    try:
        parse_address(text)
    except InvalidAddressError:
        return False
    return True


def is_patient_address_for(address: str, ins_matricule: str) -> bool:
    """The rule for patient mailboxes: the address must be `<INS matricule>@patient.mssante.fr`.

    True only when `address` is a valid mailbox on `patient.mssante.fr` whose local part is exactly
    the 15-character INS matricule (NIR or NIA, key included; `2A`/`2B` compared case-insensitively)
    of *this* patient. A malformed INS, a malformed address, another domain or another patient's INS
    give False. Whether the INS is qualified (ECO.2.2.6) is for the caller to check.
    """
    ins = ins_matricule.strip(" ").upper()
    if not _INS_MATRICULE.fullmatch(ins):
        return False
    try:
        mailbox = parse_address(address)
    except InvalidAddressError:
        return False
    return mailbox.is_patient and mailbox.local_part.upper() == ins


# -- the whitelist --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Whitelist:
    """One loaded whitelist: its distinct normalised domains, generation date and source file."""

    domains: frozenset[str] = field(repr=False)
    generated_at: datetime
    source: Path
    entry_count: int  # <Domaine> entries: a domain is listed once per operator certificate
    sha256: str  # of the file's bytes, to compare with the checksum ANS publishes

    @property
    def domain_count(self) -> int:
        return len(self.domains)

    def contains_domain(self, domain: str) -> bool:
        """Exact, case-insensitive match of a host name (one trailing dot allowed), no suffixes."""
        normalized = normalize_domain(domain)
        return normalized is not None and normalized in self.domains

    def contains_address(self, address: str) -> bool:
        """True when `address` is a valid mailbox whose domain is listed exactly."""
        try:
            mailbox = parse_address(address)
        except InvalidAddressError:
            return False
        return mailbox.domain in self.domains


def load_whitelist(path: Path, *, config_key: str = WHITELIST_CONFIG_KEY) -> Whitelist:
    """Read and check the whitelist at `path`; `WhitelistError`, naming the file, if unusable."""
    return parse_whitelist(_read(path, config_key), source=path, config_key=config_key)


def parse_whitelist(
    data: bytes, *, source: Path, config_key: str = WHITELIST_CONFIG_KEY
) -> Whitelist:
    """Check the bytes of a whitelist file read from `source`.

    Refused: XML that is not well-formed (a truncated download included) or carries a DOCTYPE,
    another root element, a missing or unreadable `DateDeGeneration`, a `Domaine` without `Nom` or
    whose `Nom` is not a valid host name, and a file that lists no domain at all.
    """

    def refuse(problem: str) -> WhitelistError:
        return WhitelistError(config_key, problem, source=str(source))

    try:
        root = parse_xml(data, what="whitelist")
    except DocumentError as exc:
        raise refuse(f"malformed whitelist: {exc.detail}") from exc
    if root.tag != _ROOT_TAG:
        raise refuse(f"root element is not ListeBlancheMSSante in namespace {NAMESPACE}")
    generated_at = _generation_date(root)
    if generated_at is None:
        raise refuse("DateDeGeneration is missing or not an ISO 8601 date-time")
    domains: set[str] = set()
    entries = root.findall("n:ListeDomaines/n:Domaine", _NS)
    for number, entry in enumerate(entries, start=1):
        name = entry.findtext("n:Nom", default="", namespaces=_NS).strip()
        if not name:
            raise refuse(f"Domaine #{number} has no Nom")
        domain = normalize_domain(name)
        if domain is None:
            raise refuse(f"Domaine #{number}: Nom {name!r} is not a valid domain name")
        domains.add(domain)
    if not domains:
        raise refuse("no domain listed (ListeDomaines/Domaine/Nom): empty whitelist")
    return Whitelist(
        domains=frozenset(domains),
        generated_at=generated_at,
        source=source,
        entry_count=len(entries),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _generation_date(root: etree._Element) -> datetime | None:
    text = root.findtext("n:DateDeGeneration", default="", namespaces=_NS).strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    # The ANS writes UTC with a Z; a date-time without an offset is read as UTC.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _read(path: Path, config_key: str) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_WHITELIST_BYTES + 1)
    except OSError as exc:
        raise WhitelistError(
            config_key, f"whitelist cannot be read ({exc.strerror})", source=str(path)
        ) from exc
    if len(data) > MAX_WHITELIST_BYTES:
        raise WhitelistError(
            config_key, f"whitelist is larger than {MAX_WHITELIST_BYTES} bytes", source=str(path)
        )
    return data


# -- installing a new file ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WhitelistChange:
    """What `install_whitelist` did. Domain names are public data: safe to log."""

    whitelist: Whitelist  # the installed whitelist, `source` = the target path
    previous_generated_at: datetime | None  # None when no valid whitelist was installed before
    added: frozenset[str] = field(repr=False)
    removed: frozenset[str] = field(repr=False)

    @property
    def generated_at(self) -> datetime:
        return self.whitelist.generated_at

    @property
    def added_count(self) -> int:
        return len(self.added)

    @property
    def removed_count(self) -> int:
        return len(self.removed)


_FUTURE_TOLERANCE = timedelta(days=1)  # time zones and clock drift


def install_whitelist(
    new_file: Path,
    target: Path,
    *,
    allow_older: bool = False,
    config_key: str = WHITELIST_CONFIG_KEY,
    now: datetime | None = None,
) -> WhitelistChange:
    """Check `new_file` fully, then atomically replace `target` with exactly the bytes checked.

    The bytes are read once, checked, written to a temporary file in `target`'s directory, fsynced,
    moved over `target` with `os.replace`, and the directory is fsynced. When anything fails before
    the move (malformed file, I/O error) `target` is left untouched and the temporary file removed.
    A file generated before the installed one is refused unless `allow_older` (a replayed old list
    would bring back domains the ANS has removed). A file generated more than a day in the future
    is refused (a wrong date, or a wrong clock: once installed, every real list would be "older"
    and refused). A missing or unreadable current file counts as no previous whitelist: every
    domain is reported as added.
    """
    data = _read(new_file, config_key)
    candidate = parse_whitelist(data, source=new_file, config_key=config_key)
    if candidate.generated_at > (now or datetime.now(UTC)) + _FUTURE_TOLERANCE:
        raise WhitelistError(
            config_key,
            f"whitelist generated at {candidate.generated_at.isoformat()}, in the future: a "
            "wrong date or a wrong clock on this host; refused",
            source=str(new_file),
        )
    current = _current(target, config_key)
    if current is not None and candidate.generated_at < current.generated_at and not allow_older:
        raise WhitelistError(
            config_key,
            f"whitelist generated at {candidate.generated_at.isoformat()} is older than the "
            f"installed one ({current.generated_at.isoformat()}); refused",
            source=str(new_file),
        )
    _atomic_write(target, data, config_key)
    previous_domains = current.domains if current is not None else frozenset()
    return WhitelistChange(
        whitelist=replace(candidate, source=target),
        previous_generated_at=current.generated_at if current is not None else None,
        added=candidate.domains - previous_domains,
        removed=previous_domains - candidate.domains,
    )


def _current(target: Path, config_key: str) -> Whitelist | None:
    if not target.exists():
        return None
    try:
        return load_whitelist(target, config_key=config_key)
    except WhitelistError:
        return None  # a broken installed file is replaced by the good one


def _atomic_write(target: Path, data: bytes, config_key: str) -> None:
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise WhitelistError(
            config_key, f"cannot install the whitelist ({exc.strerror})", source=str(target)
        ) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WhitelistError(
            config_key, f"cannot install the whitelist ({exc.strerror})", source=str(target)
        ) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(target.parent)


def fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); a platform that cannot open directories is skipped."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
