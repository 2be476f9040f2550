"""The MSSanté directory: the public extraction file, its SQLite copy, and RPPS → mailbox look-ups.

Source: the ANS file "Extraction_Correspondance_MSSante" (mssante-transport.md §5.4), published
daily as a ZIP holding one `.txt` (or uncompressed on data.gouv.fr). One line per mailbox (BAL), `|`
separated, one header line, 31 columns (`Type de BAL`, `Adresse BAL`, `Type Identifiant PP`,
`Identifiant PP`, `Identification nationale PP`, `Type identifiant structure`, `Identification
Structure`, `Service de rattachement`, `Civilité d'exercice`, `Nom d'exercice`, `Prénom d'exercice`,
the profession and savoir-faire codes and labels, `Dématérialisation`, then the structure's name and
postal address). Reading rules:

* Columns are found by their header name (accents, case and the " structure BAL" suffix of
  columns 19-31 do not matter); a file whose first line is already a data line is read with the
  documented 31-column order. Extra columns are ignored, except a liste rouge column
  (`Liste rouge`, `Indicateur liste rouge`) when a variant of the file carries one: the public file
  does not (red-listed mailboxes are simply not published, §5.3), but a holder flagged there is
  treated exactly like one flagged `listeRouge` in the FHIR API.
* The older layout ends every line with a `|` (`vals[:-1]` in the 2018 readers): a line with one
  more field than the header whose last field is empty is read the same way.
* Encoding: UTF-8 (the documented one, BOM tolerated) unless the first 64 KiB are not UTF-8, in
  which case CP1252. A line that is not UTF-8 in a UTF-8 file is read as CP1252 and counted.
* A ZIP (the direct ANS download) is read through its single `.txt` member, still streaming.
* A line that cannot be read (wrong field count, unknown BAL type, address that `parse_address`
  refuses, RPPS that is not 11 digits, national id that does not match it, PER without holder,
  control characters, longer than 64 KiB) is skipped and counted with its line number and a fixed
  reason. Reasons and logs never carry a value from the file: no name, no address.

Identifiers: `Identifiant PP` with `Type Identifiant PP` `8` is the RPPS (11 digits) and
`Identification nationale PP` is `8` + RPPS; type `0` is ADELI (9 characters, national id `0` +
ADELI); other types are kept as the file gives them. `by_rpps` and `by_national_id` accept the
11-digit RPPS and `8` + RPPS interchangeably.

The imported directory is its own SQLite file (`directory.db` beside the store, see
`directory_path`), never the connector's store: built in a temporary file in the same directory,
indexed by RPPS, national id and structure id, fsynced, then moved over the previous one with
`os.replace`. A reader that has the old file open keeps reading it; a new `Directory` sees the new
one. A file without a single valid entry replaces nothing.

Red list: a holder with any red-listed mailbox has *none* of its mailboxes stored (their lines are
counted, then every row of that holder is deleted before the file is installed), so no look-up can
return them. Look-ups also keep only addresses inside the trust space when given a `Whitelist`.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import functools
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Final, Protocol, runtime_checkable

import structlog

from connector.directory.whitelist import (
    InvalidAddressError,
    MailAddress,
    Whitelist,
    fsync_directory,
    normalize_domain,
    parse_address,
)
from connector.errors import ConnectorError
from connector.files import fsync_path

if TYPE_CHECKING:
    from connector.settings import Settings

log = structlog.get_logger(__name__)

#: File name of the imported directory, in the data directory (see `directory_path`).
DIRECTORY_FILENAME: Final = "directory.db"
SCHEMA_VERSION: Final = 1
#: A physical line longer than this is refused without being held in memory.
MAX_LINE_BYTES: Final = 64 * 1024
#: How many malformed lines an `ImportReport` lists (all are counted) and how many are logged.
MAX_REPORTED_LINES: Final = 100
MAX_LOGGED_LINES: Final = 20
_SAMPLE_BYTES: Final = 64 * 1024
_BATCH: Final = 5000


# -- errors ---------------------------------------------------------------------------------------


class DirectoryError(ConnectorError):
    """The directory cannot answer: missing or unreadable database, bad source file, API failure.

    Messages name files, HTTP statuses and line numbers, never a name or an address.
    """


class InvalidIdentifierError(DirectoryError):
    """A look-up was asked with something that is not an RPPS, national id or structure id."""


class DirectoryUnavailable(DirectoryError):
    """A remote directory did not answer in time or failed on its side (time-out, 5xx)."""


class ExtractionFormatError(DirectoryError):
    """The file is not an MSSanté extraction at all (unrecognised header, bad ZIP)."""


class NoValidEntryError(DirectoryError):
    """The file was read but gave no usable entry; the installed directory was left untouched."""

    def __init__(self, message: str, report: ImportReport) -> None:
        super().__init__(message)
        self.report = report


class MalformedLineError(DirectoryError):
    """One extraction line cannot be read; `reason` is a fixed text (no value from the line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- values ---------------------------------------------------------------------------------------


class MailboxType(StrEnum):
    """TRE_R257-TypeBAL."""

    PER = "PER"  # personal, linked to a health professional (RPPS)
    CAB = "CAB"  # a practice (cabinet)
    ORG = "ORG"  # organisational: a service or team of a legal entity
    APP = "APP"  # applicative: software or machine of a legal entity


@dataclass(frozen=True, slots=True)
class Holder:
    """The professional a mailbox belongs to. Names are kept out of `repr`."""

    id_type: str  # `Type Identifiant PP`: 8 = RPPS, 0 = ADELI, others as published
    identifier: str  # `Identifiant PP`
    national_id: str  # `Identification nationale PP` (8 + RPPS, 0 + ADELI…)
    rpps: str | None = None
    civility: str = field(default="", repr=False)
    family: str = field(default="", repr=False)
    given: str = field(default="", repr=False)
    category_code: str = ""
    category_label: str = ""
    profession_code: str = ""
    profession_label: str = ""
    skill_code: str = ""
    skill_label: str = ""


@dataclass(frozen=True, slots=True)
class Structure:
    """The organisation a mailbox is attached to (FINESS, SIRET or another structure id)."""

    id_type: str  # `Type identifiant structure`, as published
    identifier: str  # `Identification Structure`
    name: str = ""
    trade_name: str = ""
    postal_code: str = ""
    city: str = ""  # L6 ligne d'acheminement
    department: str = ""
    country: str = ""

    def matches(self, structure_id: str) -> bool:
        """True for this structure's id, bare or prefixed with its type (`1` + FINESS…)."""
        wanted = structure_id.strip()
        return bool(wanted) and (wanted == self.identifier
                                 or wanted == f"{self.id_type}{self.identifier}")


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One MSSanté mailbox (BAL) found in a directory. `repr` shows the domain, not the address."""

    address: MailAddress
    mailbox_type: MailboxType
    holder: Holder | None = None
    structure: Structure | None = None
    service: str = ""  # `Service de rattachement`
    digitization: bool | None = None  # `Dématérialisation`
    red_listed: bool = False
    source: str = "extraction"  # or "fhir"

    def __repr__(self) -> str:
        structure = f", structure={self.structure.identifier}" if self.structure else ""
        return (f"Mailbox({self.mailbox_type.value}, <redacted>@{self.address.domain}"
                f"{structure}, source={self.source})")

    def at(self, structure_id: str | None) -> bool:
        return (structure_id is not None and self.structure is not None
                and self.structure.matches(structure_id))


# -- identifiers ----------------------------------------------------------------------------------

_RPPS: Final = re.compile(r"[0-9]{11}")
_IDNPS_RPPS: Final = re.compile(r"8[0-9]{11}")
_ADELI: Final = re.compile(r"[0-9A-Za-z]{9}")
_NATIONAL_ID: Final = re.compile(r"[0-9A-Za-z]{2,30}")
_STRUCTURE_ID: Final = re.compile(r"[0-9A-Za-z/-]{1,40}")


def normalize_rpps(identifier: str) -> str:
    """The 11-digit RPPS from `identifier`: the RPPS itself or `8` + RPPS (IDNPS)."""
    text = identifier.strip()
    if _RPPS.fullmatch(text):
        return text
    if _IDNPS_RPPS.fullmatch(text):
        return text[1:]
    raise InvalidIdentifierError("not an RPPS (11 digits) nor 8 + RPPS")


def normalize_national_id(identifier: str) -> str:
    """The national id (IDNPS) form: an 11-digit RPPS becomes `8` + RPPS; others are kept."""
    text = identifier.strip()
    if _RPPS.fullmatch(text):
        return f"8{text}"
    if _NATIONAL_ID.fullmatch(text):
        return text
    raise InvalidIdentifierError("not a national professional identifier (letters and digits)")


def normalize_structure_id(identifier: str) -> str:
    """A structure id as given (FINESS, SIRET, `1` + FINESS…), checked for its characters."""
    text = identifier.strip()
    if not _STRUCTURE_ID.fullmatch(text):
        raise InvalidIdentifierError("not a structure identifier (FINESS, SIRET…)")
    return text


# -- the choice between mailboxes -----------------------------------------------------------------


class MailboxPreference(StrEnum):
    PERSONAL = "personal"  # PER, else CAB, else ORG, else APP
    PERSONAL_ONLY = "personal-only"  # PER or nothing
    ORGANISATION = "organisation"  # ORG (of the given structure when one is given), else personal
    ANY = "any"  # every candidate, PER first


_ORDER: Final[Mapping[MailboxPreference, tuple[MailboxType, ...]]] = {
    MailboxPreference.PERSONAL: (MailboxType.PER, MailboxType.CAB, MailboxType.ORG,
                                 MailboxType.APP),
    MailboxPreference.PERSONAL_ONLY: (MailboxType.PER,),
    MailboxPreference.ORGANISATION: (MailboxType.ORG, MailboxType.PER, MailboxType.CAB,
                                     MailboxType.APP),
    MailboxPreference.ANY: (MailboxType.PER, MailboxType.CAB, MailboxType.ORG, MailboxType.APP),
}


@dataclass(frozen=True, slots=True)
class MailboxRule:
    """How to choose among a holder's mailboxes.

    The candidates are taken type by type in the preference's order (`_ORDER`); the first type that
    has any gives the answer. Within that type, when `structure_id` is given and some of them are
    attached to that structure, only those are kept. `ORGANISATION` with a structure first looks
    for ORG mailboxes *of that structure* (`resolve` adds the structure's own ORG mailboxes to the
    holder's), and otherwise falls back to the personal order: an ORG mailbox of some other
    structure never wins over the holder's personal one. `ANY` keeps everything, PER first and the
    structure's mailboxes first within a type. Red-listed candidates are always dropped and an
    address appears once.
    """

    preference: MailboxPreference = MailboxPreference.PERSONAL
    structure_id: str | None = None

    def choose(self, candidates: Iterable[Mailbox]) -> tuple[Mailbox, ...]:
        unique: dict[str, Mailbox] = {}
        for mailbox in candidates:
            if not mailbox.red_listed:
                unique.setdefault(str(mailbox.address), mailbox)
        pool = list(unique.values())
        structure = self.structure_id.strip() if self.structure_id else None
        if self.preference is MailboxPreference.ANY:
            order = _ORDER[MailboxPreference.ANY]
            return tuple(sorted(pool, key=lambda m: (order.index(m.mailbox_type),
                                                     not m.at(structure))))
        if self.preference is MailboxPreference.ORGANISATION:
            if structure:
                here = [m for m in pool if m.mailbox_type is MailboxType.ORG and m.at(structure)]
                if here:
                    return tuple(here)
            elif orgs := [m for m in pool if m.mailbox_type is MailboxType.ORG]:
                return tuple(orgs)
            pool = [m for m in pool if m.mailbox_type is not MailboxType.ORG or m.at(structure)]
        for mailbox_type in _ORDER[self.preference]:
            of_type = [m for m in pool if m.mailbox_type is mailbox_type]
            if of_type:
                here = [m for m in of_type if m.at(structure)]
                return tuple(here or of_type)
        return ()


# -- the look-up interface ------------------------------------------------------------------------


@runtime_checkable
class DirectoryLookup(Protocol):
    """What a directory answers: candidate mailboxes, red list and trust space already applied.

    Blocking calls (SQLite or HTTP): async callers run them with `asyncio.to_thread`.
    `InvalidIdentifierError` for an identifier of the wrong shape, `DirectoryError` when the
    directory itself cannot answer; an unknown holder is an empty tuple.
    """

    def by_rpps(self, rpps: str) -> tuple[Mailbox, ...]: ...

    def by_national_id(self, national_id: str) -> tuple[Mailbox, ...]: ...

    def by_structure(self, structure_id: str) -> tuple[Mailbox, ...]: ...


def resolve(lookup: DirectoryLookup, identifier: str,
            rule: MailboxRule | None = None) -> tuple[Mailbox, ...]:
    """The mailboxes `rule` picks for the holder `identifier` (RPPS, 8 + RPPS or other national id).

    With `ORGANISATION` and a structure, that structure's ORG mailboxes are candidates too.
    """
    rule = rule or MailboxRule()
    candidates = list(lookup.by_national_id(identifier))
    if rule.preference is MailboxPreference.ORGANISATION and rule.structure_id:
        candidates.extend(m for m in lookup.by_structure(rule.structure_id)
                          if m.mailbox_type is MailboxType.ORG)
    return rule.choose(candidates)


def in_trust_space(mailboxes: Iterable[Mailbox],
                   whitelist: Whitelist | None) -> tuple[Mailbox, ...]:
    """Drop red-listed mailboxes and, given a whitelist, those whose domain is not listed."""
    return tuple(m for m in mailboxes if not m.red_listed
                 and (whitelist is None or m.address.domain in whitelist.domains))


# -- reading the extraction file ------------------------------------------------------------------

#: (key, header name) in the documented order (§5.4).
COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("mailbox_type", "Type de BAL"),
    ("address", "Adresse BAL"),
    ("pp_id_type", "Type Identifiant PP"),
    ("pp_id", "Identifiant PP"),
    ("national_id", "Identification nationale PP"),
    ("structure_id_type", "Type identifiant structure"),
    ("structure_id", "Identification Structure"),
    ("service", "Service de rattachement"),
    ("civility", "Civilité d'exercice"),
    ("family", "Nom d'exercice"),
    ("given", "Prénom d'exercice"),
    ("category_code", "Catégorie profession"),
    ("category_label", "Libellé de catégorie profession"),
    ("profession_code", "Code Profession"),
    ("profession_label", "Libellé Profession"),
    ("skill_code", "Code savoir-faire"),
    ("skill_label", "Libellé savoir-faire"),
    ("digitization", "Dématérialisation"),
    ("structure_name", "Raison Sociale structure BAL"),
    ("trade_name", "Enseigne commerciale structure BAL"),
    ("l2", "L2COMPLEMENTLOCALISATION structure BAL"),
    ("l3", "L3COMPLEMENTDISTRIBUTION structure BAL"),
    ("l4_number", "L4NUMEROVOIE structure BAL"),
    ("l4_complement", "L4COMPLEMENTNUMEROVOIE structure BAL"),
    ("l4_type", "NL4TYPEVOIE structure BAL"),
    ("l4_street", "L4LIBELLEVOIE structure BAL"),
    ("l5", "L5LIEUDITMENTION structure BAL"),
    ("city", "L6LIGNEACHEMINEMENT structure BAL"),
    ("postal_code", "Code postal structure BAL"),
    ("department", "Département structure BAL"),
    ("country", "Pays structure BAL"),
)
HEADER: Final = "|".join(name for _, name in COLUMNS)
_RED_LIST_HEADERS: Final = ("liste rouge", "listerouge", "indicateur liste rouge")
_TRUE: Final = frozenset({"1", "o", "oui", "y", "yes", "true", "vrai", "t"})
_FALSE: Final = frozenset({"0", "n", "non", "no", "false", "faux", "f"})
_TYPE_VALUES: Final = frozenset(t.value for t in MailboxType)
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _fold(name: str) -> str:
    text = unicodedata.normalize("NFKD", name.replace("\u2019", "'").replace("\ufeff", ""))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(text.casefold().split())


_KNOWN: Final[dict[str, str]] = {}
for _key, _name in COLUMNS:
    _KNOWN[_fold(_name)] = _key
    if _name.endswith(" structure BAL"):
        _KNOWN.setdefault(_fold(_name.removesuffix(" structure BAL")), _key)
for _name in _RED_LIST_HEADERS:
    _KNOWN[_name] = "red_list"


#: The values a line gives (street lines L2-L5 are not kept: nothing routes on them).
_KEYS: Final = (
    "mailbox_type", "address", "pp_id_type", "pp_id", "national_id", "structure_id_type",
    "structure_id", "service", "civility", "family", "given", "category_code", "category_label",
    "profession_code", "profession_label", "skill_code", "skill_label", "digitization",
    "structure_name", "trade_name", "city", "postal_code", "department", "country", "red_list")


@dataclass(frozen=True, slots=True)
class ExtractionLayout:
    """Where each known column is, and how many fields a line has (trailing `|` excluded)."""

    width: int
    positions: Mapping[str, int]
    trailing_separator: bool = False  # the header itself ended with `|` (older layout)
    #: position of each of `_KEYS` (-1: column absent), computed from `positions`
    indices: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", tuple(self.positions.get(k, -1) for k in _KEYS))

    @classmethod
    def documented(cls) -> ExtractionLayout:
        return cls(len(COLUMNS), {key: i for i, (key, _) in enumerate(COLUMNS)})


def parse_header(text: str) -> ExtractionLayout | None:
    """The layout a header line describes, or None when the line is not a header."""
    names = text.split("|")
    trailing = len(names) > 1 and names[-1].strip() == ""
    if trailing:
        names.pop()
    positions: dict[str, int] = {}
    for index, name in enumerate(names):
        key = _KNOWN.get(_fold(name))
        if key is not None:
            positions.setdefault(key, index)
    if "mailbox_type" not in positions or "address" not in positions:
        return None
    return ExtractionLayout(len(names), positions, trailing)


def split_fields(layout: ExtractionLayout, text: str) -> tuple[list[str], bool]:
    """The fields of a data line, and whether it used the older trailing-`|` layout."""
    if _CONTROL.search(text):
        raise MalformedLineError("control character in the line")
    fields = text.split("|")
    if len(fields) == layout.width + 1 and fields[-1] == "":
        fields.pop()
        return fields, True
    if len(fields) != layout.width:
        raise MalformedLineError(f"expected {layout.width} fields, found {len(fields)}")
    return fields, False


def parse_line(layout: ExtractionLayout, text: str) -> Mailbox:
    """One data line → `Mailbox`; `MalformedLineError` (and nothing else) when unreadable."""
    return parse_fields(layout, split_fields(layout, text)[0])


def parse_fields(layout: ExtractionLayout, fields: Sequence[str]) -> Mailbox:
    """The fields `split_fields` gave → `Mailbox`; `MalformedLineError` when unreadable."""
    return _mailbox_from(check_fields(layout, fields))


def check_fields(layout: ExtractionLayout, fields: Sequence[str]) -> dict[str, str]:
    """The checked, normalised values of a line, by key (`_KEYS` plus `rpps` and `domain`).

    `address` is the normalised addr-spec, `mailbox_type` upper case, `national_id` completed
    (`8` + RPPS…), `digitization` and `red_list` `"1"`, `"0"` or `""`. The import stores these
    values as they are, without building a `Mailbox` for each of the 500,000 lines.
    """
    if len(fields) != layout.width:
        raise MalformedLineError(f"expected {layout.width} fields, found {len(fields)}")
    if _CONTROL.search("|".join(fields)):
        raise MalformedLineError("control character in the line")
    v = dict(zip(_KEYS, [fields[i].strip(" \t") if i >= 0 else "" for i in layout.indices],
                 strict=True))
    mailbox_type = v["mailbox_type"].upper()
    if mailbox_type not in _TYPE_VALUES:
        raise MalformedLineError("unknown mailbox type (Type de BAL)")
    v["mailbox_type"] = mailbox_type
    address = _address(v["address"])
    v["address"], v["domain"] = str(address), address.domain
    _check_holder(v)
    if mailbox_type == MailboxType.PER.value and not (v["pp_id"] or v["national_id"]):
        raise MalformedLineError("personal mailbox (PER) without a holder identifier")
    v["digitization"] = _flag_text(v["digitization"])
    v["red_list"] = _flag_text(v["red_list"])
    return v


def _mailbox_from(v: Mapping[str, str]) -> Mailbox:
    holder = None
    if v["pp_id"] or v["national_id"]:
        holder = Holder(
            id_type=v["pp_id_type"], identifier=v["pp_id"], national_id=v["national_id"],
            rpps=v["rpps"] or None, civility=v["civility"], family=v["family"], given=v["given"],
            category_code=v["category_code"], category_label=v["category_label"],
            profession_code=v["profession_code"], profession_label=v["profession_label"],
            skill_code=v["skill_code"], skill_label=v["skill_label"])
    structure = None
    if v["structure_id"] or v["structure_name"]:
        structure = Structure(
            id_type=v["structure_id_type"], identifier=v["structure_id"],
            name=v["structure_name"], trade_name=v["trade_name"], postal_code=v["postal_code"],
            city=v["city"], department=v["department"], country=v["country"])
    local, _, domain = v["address"].rpartition("@")
    digitization = v["digitization"]
    return Mailbox(address=MailAddress(local, domain), mailbox_type=MailboxType(v["mailbox_type"]),
                   holder=holder, structure=structure, service=v["service"],
                   digitization=None if not digitization else digitization == "1",
                   red_listed=v.get("red_list") == "1")


# RFC 5321 Dot-string, as `parse_address` checks it; used only on the ASCII fast path below.
_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_STRING: Final = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")


@functools.lru_cache(maxsize=16384)
def _domain(text: str) -> str | None:
    return normalize_domain(text)


def _address(text: str) -> MailAddress:
    """`parse_address(text)`, with the domain check cached (a few thousand domains, 500k lines).

    The fast path takes only plain ASCII without spaces, where it accepts exactly what
    `parse_address` accepts; anything else goes through `parse_address` itself.
    """
    local, at, domain_text = text.rpartition("@")
    if (at and text.isascii() and 0 < len(local) <= 64 and len(text) <= 254
            and " " not in text and not domain_text.endswith(".")
            and _DOT_STRING.fullmatch(local)):
        domain = _domain(domain_text)
        if domain is not None:
            return MailAddress(local, domain)
    try:
        return parse_address(text)
    except InvalidAddressError as exc:
        raise MalformedLineError(f"Adresse BAL: {exc.detail}") from None


def _check_holder(v: dict[str, str]) -> None:
    """Check the PP identifiers in `v`, complete `national_id` and set `rpps` ("" if none)."""
    id_type, identifier, national_id = v["pp_id_type"], v["pp_id"], v["national_id"]
    rpps = ""
    if identifier or national_id:
        if id_type == "8" or (not id_type and _RPPS.fullmatch(identifier)):
            if not _RPPS.fullmatch(identifier):
                raise MalformedLineError("RPPS (Identifiant PP, type 8) is not 11 digits")
            if national_id and national_id != f"8{identifier}":
                raise MalformedLineError("Identification nationale PP is not 8 + RPPS")
            rpps, national_id = identifier, f"8{identifier}"
        elif id_type == "0":
            if not _ADELI.fullmatch(identifier):
                raise MalformedLineError("ADELI (Identifiant PP, type 0) is not 9 characters")
            if national_id and national_id != f"0{identifier}":
                raise MalformedLineError("Identification nationale PP is not 0 + ADELI")
            national_id = f"0{identifier}"
        if national_id:
            if not _NATIONAL_ID.fullmatch(national_id):
                raise MalformedLineError("Identification nationale PP has unexpected characters")
            if not rpps and _IDNPS_RPPS.fullmatch(national_id):
                if identifier and identifier != national_id[1:]:
                    raise MalformedLineError("Identification nationale PP is not 8 + RPPS")
                rpps = national_id[1:]
    v["national_id"], v["rpps"] = national_id, rpps


def _flag_text(text: str) -> str:
    flag = _flag(text)
    return "" if flag is None else "1" if flag else "0"


def _flag(text: str) -> bool | None:
    value = text.strip().casefold()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def detect_encoding(sample: bytes) -> str:
    """`utf-8-sig` (BOM), `utf-8` when `sample` (maybe cut mid-character) is UTF-8, else cp1252."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8"


@dataclass(frozen=True, slots=True)
class MalformedLine:
    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class ExtractionLine:
    """One data line read: its checked values (`check_fields`), or why it was refused."""

    line: int
    values: Mapping[str, str] | None = field(default=None, repr=False)
    problem: MalformedLine | None = None
    trailing_separator: bool = False
    recoded: bool = False  # read as CP1252 in a file detected as UTF-8

    @property
    def mailbox(self) -> Mailbox | None:
        return None if self.values is None else _mailbox_from(self.values)


class ExtractionReader:
    """Streams an extraction file, line by line, from a binary stream positioned at its start.

    `encoding` and `layout` are known once the header has been read (on the first iteration
    step); `ExtractionFormatError` when the first non-blank line is neither a header nor a data
    line of the documented 31 columns.
    """

    def __init__(self, stream: IO[bytes], *, encoding: str | None = None) -> None:
        self._stream = stream
        if encoding is None:
            sample = stream.read(_SAMPLE_BYTES)
            stream.seek(0)
            encoding = detect_encoding(sample)
        self.encoding = encoding
        self._codec = "utf-8" if encoding == "utf-8-sig" else encoding
        self.layout: ExtractionLayout | None = None
        self.header_line: int | None = None

    def __iter__(self) -> Iterator[ExtractionLine]:
        for number, raw in _physical_lines(self._stream):
            if raw is None:
                yield ExtractionLine(number, None, MalformedLine(number, "line too long"))
                continue
            try:
                text, recoded = self._decode(raw)
            except UnicodeDecodeError:
                yield ExtractionLine(number, None, MalformedLine(number, "undecodable bytes"))
                continue
            if number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            if self.layout is None:
                layout = parse_header(text)
                if layout is not None:
                    self.layout, self.header_line = layout, number
                    continue
                self.layout = ExtractionLayout.documented()
                try:
                    split_fields(self.layout, text)
                    first = text.split("|", 1)[0].strip().upper()
                    looks_like_data = first in _TYPE_VALUES
                except MalformedLineError:
                    looks_like_data = False
                if not looks_like_data:
                    raise ExtractionFormatError(
                        f"line {number} is not an MSSanté extraction header (no 'Type de BAL' "
                        "and 'Adresse BAL' columns) nor a 31-column data line")
            yield self._parse(number, text, recoded)

    def _decode(self, raw: bytes) -> tuple[str, bool]:
        try:
            return raw.decode(self._codec), False
        except UnicodeDecodeError:
            if self._codec != "utf-8":
                raise
        return raw.decode("cp1252"), True

    def _parse(self, number: int, text: str, recoded: bool) -> ExtractionLine:
        assert self.layout is not None
        try:
            fields, trailing = split_fields(self.layout, text)
            values = check_fields(self.layout, fields)
        except MalformedLineError as exc:
            return ExtractionLine(number, None, MalformedLine(number, exc.reason), recoded=recoded)
        return ExtractionLine(number, values, None, trailing, recoded)


def _physical_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the end of line), None for a line over `MAX_LINE_BYTES`."""
    number = 0
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = stream.readline(MAX_LINE_BYTES)
            yield number, None
            continue
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        yield number, raw


@contextlib.contextmanager
def open_extraction(path: Path) -> Iterator[IO[bytes]]:
    """The extraction's bytes: the file itself, or the single `.txt` member of a ZIP."""
    with path.open("rb") as fh:
        if not zipfile.is_zipfile(fh):
            fh.seek(0)
            yield fh
            return
        fh.seek(0)
        try:
            archive = zipfile.ZipFile(fh)
        except zipfile.BadZipFile as exc:
            raise ExtractionFormatError(f"{path}: damaged ZIP archive") from exc
        with archive:
            members = [i for i in archive.infolist()
                       if not i.is_dir() and i.filename.lower().endswith(".txt")]
            if len(members) != 1:
                raise ExtractionFormatError(
                    f"{path}: a ZIP must hold exactly one .txt extraction, found {len(members)}")
            try:
                with archive.open(members[0]) as member:
                    yield member
            except (zipfile.BadZipFile, EOFError) as exc:
                raise ExtractionFormatError(f"{path}: damaged ZIP archive") from exc


# -- importing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What `import_extraction` read and stored. Counts and line numbers only: safe to log."""

    target: Path
    encoding: str
    header: bool  # False when the file started directly with data lines
    lines: int  # data lines read (header and blank lines excluded)
    entries: int  # mailboxes stored
    by_type: Mapping[str, int]  # stored, per BAL type
    red_listed: int  # lines flagged liste rouge (never stored)
    red_listed_removed: int  # other lines of red-listed holders, removed
    malformed: int
    outside_trust_space: int  # skipped: domain not in the whitelist given
    duplicate_addresses: int  # stored rows whose address another stored row has too
    trailing_separator_lines: int  # lines in the older trailing-`|` layout
    recoded_lines: int  # non-UTF-8 lines read as CP1252
    malformed_lines: tuple[MalformedLine, ...] = ()  # the first MAX_REPORTED_LINES
    malformed_reasons: Mapping[str, int] = field(default_factory=dict)
    whitelist_checked: bool = False
    elapsed_seconds: float = 0.0

    @property
    def personal(self) -> int:
        return self.by_type.get(MailboxType.PER.value, 0)

    @property
    def organisational(self) -> int:
        return self.by_type.get(MailboxType.ORG.value, 0)


_SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE mailbox (
    id INTEGER PRIMARY KEY,
    line INTEGER NOT NULL,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    mailbox_type TEXT NOT NULL,
    pp_id_type TEXT, pp_id TEXT, national_id TEXT, rpps TEXT,
    civility TEXT, family TEXT, given TEXT,
    category_code TEXT, category_label TEXT, profession_code TEXT, profession_label TEXT,
    skill_code TEXT, skill_label TEXT,
    service TEXT,
    digitization TEXT,
    structure_id_type TEXT, structure_id TEXT, structure_name TEXT, trade_name TEXT,
    postal_code TEXT, city TEXT, department TEXT, country TEXT
);
CREATE TEMP TABLE red_listed (kind TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, value));
"""
_INDEXES: Final = (
    "CREATE INDEX mailbox_rpps ON mailbox (rpps) WHERE rpps IS NOT NULL",
    "CREATE INDEX mailbox_national_id ON mailbox (national_id) WHERE national_id IS NOT NULL",
    "CREATE INDEX mailbox_structure ON mailbox (structure_id) WHERE structure_id IS NOT NULL",
)
_COLUMN_NAMES: Final = (
    "line", "address", "domain", "mailbox_type", "pp_id_type", "pp_id", "national_id", "rpps",
    "civility", "family", "given", "category_code", "category_label", "profession_code",
    "profession_label", "skill_code", "skill_label", "service", "digitization",
    "structure_id_type", "structure_id", "structure_name", "trade_name", "postal_code", "city",
    "department", "country")
# Built from the constant column names above, never from input.
_INSERT: Final = (f"INSERT INTO mailbox ({', '.join(_COLUMN_NAMES)}) "  # noqa: S608
                  f"VALUES ({', '.join('?' * len(_COLUMN_NAMES))})")
_Row = tuple[object, ...]


def _row(line: int, v: Mapping[str, str]) -> _Row:
    return (line, *[v[k] or None for k in _COLUMN_NAMES[1:]])


def directory_path(settings: Settings) -> Path:
    """Where the imported directory lives: `directory.db` in the data directory.

    `Settings` has no data directory of its own; the SQLite store's file sits in it (`data_dir`,
    default `var/`), so its parent is used. With `[store] path` moved elsewhere, the directory
    follows the store file.
    """
    return settings.store.path.parent / DIRECTORY_FILENAME


def import_extraction(source: Path, target: Path, *,
                      whitelist: Whitelist | None = None) -> ImportReport:
    """Read `source` (extraction `.txt` or its ZIP) into a new SQLite directory at `target`.

    `OSError` when `source` cannot be read, `ExtractionFormatError` when it is not an extraction,
    `NoValidEntryError` (report attached) when no line gave an entry; in every failure `target`
    is left as it was. With `whitelist`, entries outside the trust space are skipped and counted.
    """
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        report = _build(source, tmp, target, whitelist, started)
        if report.entries == 0:
            raise NoValidEntryError(
                f"{source}: no valid directory entry ({report.lines} data lines, "
                f"{report.malformed} malformed, {report.outside_trust_space} outside the trust "
                f"space, {report.red_listed} red-listed); the installed directory is unchanged",
                report)
        os.chmod(tmp, 0o644)  # public data
        fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(target.parent)
    report = dataclasses.replace(report, elapsed_seconds=time.perf_counter() - started)
    log.info("directory_imported", entries=report.entries, by_type=dict(report.by_type),
             red_listed=report.red_listed, malformed=report.malformed,
             outside_trust_space=report.outside_trust_space,
             seconds=round(report.elapsed_seconds, 3))
    return report


def _build(source: Path, tmp: Path, target: Path, whitelist: Whitelist | None,
           started: float) -> ImportReport:
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN")
        lines = red = outside = trailing = recoded = malformed = 0
        reasons: Counter[str] = Counter()
        listed: list[MalformedLine] = []
        batch: list[_Row] = []
        with open_extraction(source) as stream:
            reader = ExtractionReader(stream)
            for item in reader:
                lines += 1
                recoded += item.recoded
                if item.problem is not None:
                    malformed += 1
                    reasons[item.problem.reason] += 1
                    if len(listed) < MAX_REPORTED_LINES:
                        listed.append(item.problem)
                    if malformed <= MAX_LOGGED_LINES:
                        log.warning("directory_line_malformed", line=item.line,
                                    reason=item.problem.reason)
                    continue
                values = item.values
                assert values is not None
                trailing += item.trailing_separator
                if values["red_list"] == "1":
                    red += 1
                    _remember_red_listed(conn, values)
                    continue
                if whitelist is not None and values["domain"] not in whitelist.domains:
                    outside += 1
                    continue
                batch.append(_row(item.line, values))
                if len(batch) >= _BATCH:
                    conn.executemany(_INSERT, batch)
                    batch.clear()
        if batch:
            conn.executemany(_INSERT, batch)
        removed = 0
        if red:  # a red-listed holder keeps no mailbox at all
            removed = conn.execute(
                "DELETE FROM mailbox WHERE national_id IN "
                "(SELECT value FROM red_listed WHERE kind = 'national_id') "
                "OR (coalesce(pp_id_type, '') || '|' || pp_id) IN "
                "(SELECT value FROM red_listed WHERE kind = 'pp')").rowcount
        conn.execute("DROP TABLE red_listed")
        for statement in _INDEXES:  # after the rows: faster than maintaining them row by row
            conn.execute(statement)
        by_type = dict(conn.execute(
            "SELECT mailbox_type, count(*) FROM mailbox GROUP BY mailbox_type ORDER BY 1"
        ).fetchall())
        entries, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT address) FROM mailbox").fetchone()
        report = ImportReport(
            target=target, encoding=reader.encoding, header=reader.header_line is not None,
            lines=lines, entries=entries, by_type=by_type, red_listed=red,
            red_listed_removed=removed, malformed=malformed, outside_trust_space=outside,
            duplicate_addresses=entries - distinct, trailing_separator_lines=trailing,
            recoded_lines=recoded, malformed_lines=tuple(listed),
            malformed_reasons=dict(reasons), whitelist_checked=whitelist is not None,
            elapsed_seconds=time.perf_counter() - started)
        meta = {
            "schema_version": str(SCHEMA_VERSION),
            "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": source.name,
            "encoding": reader.encoding,
            "entries": str(entries),
            "trust_space_checked": "yes" if whitelist is not None else "no",
            "whitelist_generated_at": (whitelist.generated_at.isoformat()
                                       if whitelist is not None else ""),
            "counts": json.dumps({"by_type": by_type, "red_listed": red, "malformed": malformed,
                                  "outside_trust_space": outside}),
        }
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        conn.execute("COMMIT")
        return report
    finally:
        conn.close()


def _remember_red_listed(conn: sqlite3.Connection, v: Mapping[str, str]) -> None:
    if v["national_id"]:
        conn.execute("INSERT OR IGNORE INTO red_listed VALUES ('national_id', ?)",
                     (v["national_id"],))
    if v["pp_id"]:
        conn.execute("INSERT OR IGNORE INTO red_listed VALUES ('pp', ?)",
                     (f"{v['pp_id_type']}|{v['pp_id']}",))




# -- the imported directory -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DirectoryInfo:
    path: Path
    imported_at: datetime | None
    source: str
    entries: int
    trust_space_checked: bool


_SELECT: Final = f"SELECT {', '.join(_COLUMN_NAMES)} FROM mailbox"  # noqa: S608 (constants)


class Directory:
    """Read-only look-ups in an imported directory file (`import_extraction`).

    Safe to share between threads (one connection behind a lock). Red-listed holders are not in
    the file; with `whitelist`, addresses outside the trust space are not returned either.
    """

    def __init__(self, path: Path, *, whitelist: Whitelist | None = None) -> None:
        self.path = path
        self.whitelist = whitelist
        self._lock = threading.Lock()
        if not path.is_file():
            raise DirectoryError(f"{path}: no imported directory (run `directory import`)")
        try:
            self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                         check_same_thread=False)
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            with contextlib.suppress(AttributeError, sqlite3.Error):
                self._conn.close()
            raise DirectoryError(f"{path}: not a readable directory database ({exc})") from exc
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            self._conn.close()
            raise DirectoryError(f"{path}: directory schema version "
                                 f"{meta.get('schema_version')!r} is not {SCHEMA_VERSION}; "
                                 "import the extraction again")
        self._meta = meta

    @property
    def info(self) -> DirectoryInfo:
        imported = self._meta.get("imported_at")
        return DirectoryInfo(
            path=self.path,
            imported_at=datetime.fromisoformat(imported) if imported else None,
            source=self._meta.get("source", ""),
            entries=int(self._meta.get("entries", "0")),
            trust_space_checked=self._meta.get("trust_space_checked") == "yes")

    def by_rpps(self, rpps: str) -> tuple[Mailbox, ...]:
        return self._query("rpps", normalize_rpps(rpps))

    def by_national_id(self, national_id: str) -> tuple[Mailbox, ...]:
        return self._query("national_id", normalize_national_id(national_id))

    def by_structure(self, structure_id: str) -> tuple[Mailbox, ...]:
        return self._query("structure_id", normalize_structure_id(structure_id))

    def _query(self, column: str, value: str) -> tuple[Mailbox, ...]:
        sql = f"{_SELECT} WHERE {column} = ? ORDER BY id"  # column is one of ours, not input
        try:
            with self._lock:
                rows = self._conn.execute(sql, (value,)).fetchall()
        except sqlite3.Error as exc:
            raise DirectoryError(f"{self.path}: directory look-up failed ({exc})") from exc
        return in_trust_space((_mailbox(row) for row in rows), self.whitelist)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _mailbox(row: Sequence[object]) -> Mailbox:
    return _mailbox_from({k: v if isinstance(v, str) else "" for k, v in
                          zip(_COLUMN_NAMES, row, strict=True)})
