"""Receipts that come back to the application mailbox, read into values (pure functions).

`parse_receipt(raw)` takes the bytes of one mail (as fetched over IMAP) and returns a `Receipt`, or
None when the mail is not a receipt. It tries, in this order:

1. **DSN** (RFC 3464 `message/delivery-status`, normally the second part of an RFC 6522
   `multipart/report; report-type=delivery-status`): one `RecipientOutcome` per per-recipient
   block (Action, Status, Diagnostic-Code, Original-Recipient, Final-Recipient, Remote-MTA,
   Last-Attempt-Date, Will-Retry-Until), the per-message Original-Envelope-Id / Reporting-MTA /
   Arrival-Date, and the Message-ID of the returned original (`text/rfc822-headers`,
   `message/rfc822-headers` or `message/rfc822`). Feeds ZAM^Z02.
2. **MDN** (RFC 8098 `message/disposition-notification`): the Disposition (action mode, sending
   mode, type, modifiers), Original-Message-ID, Original-Recipient, Final-Recipient, and the
   application error of the LPS volet in both its syntaxes (`processed/Error: code^libellé` in the
   Disposition, or an `Error:` field such as the spec example's
   `902^Identifiant de patient inconnu^messageErrorCondition| E^Error^errorSeverity`): the first
   `code^label` pair is taken, the coding system and the severity after `|` are kept when present.
   An `Error:` field reporting acceptance (code 0 "Message accepted", or severity W or I) does not
   by itself make the MDN negative; the `error` modifier or a KO subject does. Feeds ZAM^Z03.
3. **KO mail** (the LPS volet's "courriel standard"): a plain mail whose subject starts with
   `[KO Intégration système !][code]` (or `[Erreur d'intégration !]`), with the original attached as
   `message/rfc822`: the code from the subject (else the body), the label from the body.
4. **Heuristic bounce**: no machine-readable report, but a bounce sender (MAILER-DAEMON,
   postmaster, a null Return-Path), an `X-Failed-Recipients` header or a bounce subject. The
   status comes from the text (`550 5.1.1`, `#5.1.1`, keywords in English and French); results
   are marked `heuristic=True`. A heuristic result is never POSITIVE: a non-standard notice that
   looks like a success is INCONCLUSIVE. A `multipart/report` whose report part is unusable (no
   per-recipient block) is read this way too.

Robustness: whatever the bytes, `parse_receipt` returns a `Receipt` or None, or raises
`ReceiptError` (a `ConnectorError`); the standard `email` parser runs with the `compat32` policy
(which records defects instead of raising), header values are decoded here (8-bit as UTF-8, else
cp1252; RFC 2047 encoded-words), text parts are read up to `MAX_TEXT` characters, and a last
`except Exception` turns whatever the `email` package might still raise into `ReceiptError`.

Patient data: a receipt's subject names the patient and the returned original holds health data.
Nothing of either is kept, except the original's Message-ID and To address. Addresses (a patient's
is their INS), error labels and diagnostics are kept out of `repr()`, and exception messages name
no value from the mail.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import quopri
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from enum import StrEnum
from functools import cached_property
from typing import Final, TypeVar

from connector.errors import ReceiptError
from connector.hl7.codes import Severity, SmtpErrorCode

MAX_TEXT: Final = 65_536  # characters of one text part looked at
_MAX_PARTS: Final = 64  # MIME parts of the receipt looked at (the returned original excluded)
_MAX_DEPTH: Final = 6
_MAX_LABEL: Final = 200
_MAX_CODE: Final = 32
_MAX_DIAGNOSTIC: Final = 500
_MAX_ADDRESS: Final = 254
_MAX_MESSAGE_ID: Final = 998
_MAX_IDS: Final = 16

_E = TypeVar("_E", bound=StrEnum)




class ReceiptKind(StrEnum):
    DSN = "dsn"
    MDN = "mdn"
    KO_MAIL = "ko-mail"
    HEURISTIC = "heuristic"


class Outcome(StrEnum):
    """What a receipt says about one recipient.

    * POSITIVE: delivered (DSN `delivered` / `expanded`), read or processed (MDN `displayed` /
      `processed` without error).
    * NEGATIVE: failed (DSN `failed`), an error (MDN `error` modifier, an `Error` field, a KO
      mail), or a bounce read heuristically.
    * PENDING: delayed; another report should follow (DSN `delayed`, a 4.x.x status).
    * INCONCLUSIVE: says nothing settled: DSN `relayed` (the next hop does not do DSN), MDN
      `dispatched` / `deleted`, an unknown action or type.
    """

    POSITIVE = "positive"
    NEGATIVE = "negative"
    PENDING = "pending"
    INCONCLUSIVE = "inconclusive"


class DeliveryAction(StrEnum):
    """RFC 3464 §2.3.3."""

    DELIVERED = "delivered"
    FAILED = "failed"
    DELAYED = "delayed"
    RELAYED = "relayed"
    EXPANDED = "expanded"


class DispositionType(StrEnum):
    """RFC 8098 §3.2.6.2."""

    DISPLAYED = "displayed"
    DELETED = "deleted"
    DISPATCHED = "dispatched"
    PROCESSED = "processed"


@dataclass(frozen=True, slots=True)
class ReportedError:
    """An application error reported by the recipient side (MDN, KO mail).

    `coding_system` is the third component when one was given (`messageErrorCondition`,
    `applicationErrorCondition`...); `severity` the one after `|` (`E^Error^errorSeverity`).
    Either `code` or `label` is non-empty.
    """

    code: str
    label: str = field(repr=False)
    coding_system: str = ""
    severity: Severity | None = None


@dataclass(frozen=True, slots=True)
class Disposition:
    """The MDN Disposition field. `type` is None when the type is not one of RFC 8098's."""

    action_mode: str  # "automatic-action" / "manual-action", lower case
    sending_mode: str  # "mdn-sent-automatically" / "mdn-sent-manually", lower case
    type: DispositionType | None
    type_text: str  # the type as sent, lower case
    modifiers: tuple[str, ...] = ()  # lower case, e.g. ("error",)

    @property
    def is_error(self) -> bool:
        return "error" in self.modifiers


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    """One recipient of the original mail and what became of it.

    DSN fields (`action`...`will_retry_until`) are empty for an MDN; `disposition` is None for a
    DSN. Addresses are `local@domain` with the domain in lower case (address type removed).
    `smtp_reply_code` is the three-digit code at the start of an `smtp`-type Diagnostic-Code (or
    found in the text, heuristically).
    """

    outcome: Outcome
    final_recipient: str = field(default="", repr=False)
    original_recipient: str = field(default="", repr=False)
    action: DeliveryAction | None = None
    action_text: str = ""
    status: str = ""  # RFC 3463 enhanced status, e.g. "5.1.1"
    diagnostic_type: str = ""  # e.g. "smtp", "x-postfix"
    diagnostic: str = field(default="", repr=False)
    smtp_reply_code: str = ""
    remote_mta: str = ""
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None
    disposition: Disposition | None = None
    error: ReportedError | None = None


@dataclass(frozen=True, slots=True)
class Correlation:
    """The keys that link a receipt to the mail we sent. Message-IDs are `<...>`, normalised.

    * `envelope_id`: DSN Original-Envelope-Id (our ENVID).
    * `message_ids`: the original's Message-ID, best first: MDN Original-Message-ID, then the
      Message-ID of the returned headers / original, then (heuristic) Message-ID lines in the text.
    * `in_reply_to` / `references`: of the receipt mail itself (some bounce generators set them).
    * `original_recipients`: Original-Recipient fields (our ORCPT), then the returned original's
      To when it names exactly one address.
    """

    envelope_id: str = ""
    message_ids: tuple[str, ...] = ()
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    original_recipients: tuple[str, ...] = field(default=(), repr=False)

    @property
    def candidate_message_ids(self) -> tuple[str, ...]:
        """Every Message-ID that may be ours, best first, without duplicates. References run
        oldest first (RFC 5322 §3.6.4): read newest first, so that a notice about a replacement
        mail, which refers to the mail it follows up too, finds the replacement."""
        return tuple(dict.fromkeys((*self.message_ids, *self.in_reply_to,
                                    *reversed(self.references))))


@dataclass(frozen=True, slots=True)
class Receipt:
    """One parsed receipt.

    `heuristic` is True when the result was inferred from free text rather than read from fields
    a specification defines (kind HEURISTIC). `receipt_message_id` is the receipt's own
    Message-ID (to process each receipt once); `date` its Date header; `reporting_agent` the
    Reporting-MTA or Reporting-UA. `notes` list what was odd about the mail (no patient data).
    """

    kind: ReceiptKind
    heuristic: bool
    recipients: tuple[RecipientOutcome, ...]
    correlation: Correlation
    receipt_message_id: str = ""
    date: datetime | None = None
    arrival_date: datetime | None = None
    reporting_agent: str = ""
    notes: tuple[str, ...] = ()


# -- entry point ----------------------------------------------------------------------------------


def parse_receipt(raw: bytes) -> Receipt | None:
    """Read one mail. None when it is not a receipt; `ReceiptError` when it cannot be read."""
    try:
        return _parse(raw)
    except ReceiptError:
        raise
    except Exception as exc:  # the email package on hostile input; see the module docstring
        raise ReceiptError(f"mail could not be parsed ({type(exc).__name__})") from exc


def _parse(raw: bytes) -> Receipt | None:
    msg = BytesParser(policy=compat32).parsebytes(bytes(raw))
    mail = _Mail(msg)
    ds = mail.first_part(_DSN_TYPES)
    if ds is not None:
        receipt = _dsn(mail, ds)
        if receipt is not None:
            return receipt
        return _heuristic(mail, forced=True, note="delivery-status without per-recipient fields")
    mdn = mail.first_part(_MDN_TYPES)
    if mdn is not None:
        return _mdn(mail, mdn)
    if mail.ko_subject is not None:
        return _ko(mail)
    report_type = _report_type(msg)
    if report_type in ("delivery-status", "disposition-notification"):
        return _heuristic(mail, forced=True, note=f"{report_type} report without its report part")
    return _heuristic(mail, forced=False, note="")


# -- SMTPERRORCODE ------------------------------------------------------------------------------

# RFC 3463 (subject, detail) → (code for a 4.x.x status, code for a 5.x.x status).
_BY_STATUS: Final[dict[tuple[int, int], tuple[str, str]]] = {
    (1, 0): ("450", "550"),
    (1, 1): ("450", "550"),  # bad destination mailbox address
    (1, 2): ("512", "512"),  # bad destination system address
    (1, 3): ("553", "553"),  # bad destination mailbox address syntax
    (1, 6): ("551", "551"),  # mailbox has moved
    (1, 10): ("512", "512"),  # null MX (RFC 7505)
    (2, 0): ("450", "550"),
    (2, 1): ("450", "550"),  # mailbox disabled
    (2, 2): ("422", "552"),  # mailbox full
    (2, 3): ("523", "523"),  # message length exceeds administrative limit
    (3, 1): ("431", "552"),  # mail system full
    (3, 2): ("421", "554"),  # system not accepting network messages
    (3, 4): ("523", "523"),  # message too big for system
    (4, 1): ("441", "554"),  # no answer from host
    (4, 2): ("442", "442"),  # bad connection
    (4, 4): ("512", "512"),  # unable to route
    (4, 7): ("420", "420"),  # delivery time expired
    (5, 1): ("500", "500"),  # invalid command
    (5, 2): ("500", "500"),  # syntax error
    (5, 3): ("452", "552"),  # too many recipients
    (5, 4): ("501", "501"),  # invalid command arguments
    (7, 1): ("451", "541"),  # delivery not authorized, message refused
    (7, 8): ("530", "530"),  # authentication credentials invalid
}
_CLASS_DEFAULT: Final = {"4": "451", "5": "554"}
_STATUS: Final = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\d)")


def smtp_error_for(recipient: RecipientOutcome) -> SmtpErrorCode | None:
    """The SMTPERRORCODE entry for ZAM^Z02 ERR-5, None when there is no error to report.

    1. POSITIVE (delivered / expanded): None. `relayed`: 251.
    2. The SMTP reply code of an `smtp` Diagnostic-Code when the table has it (550, 552, 421...).
    3. Else the enhanced Status, by subject and detail (5.1.1 → 550, 5.2.2 → 552, 4.2.2 → 422,
       5.3.4 → 523, 4.4.1 → 441, 4.4.7 → 420, 5.1.10 → 512, 5.7.1 → 541: see `_BY_STATUS`).
    4. Codes outside the table (a reply code such as 556 or 571, a status such as 5.7.26) are
       never passed through: step 3 is tried, then the class default, 554 "échec permanent" for
       5yz / 5.x.x and 451 "erreur de traitement" for 4yz / 4.x.x.
    5. Nothing usable: 554 for a NEGATIVE outcome, 451 for PENDING, else None.
    """
    if recipient.outcome is Outcome.POSITIVE:
        return None
    if recipient.action is DeliveryAction.RELAYED:
        return SmtpErrorCode.RELAYED
    reply = recipient.smtp_reply_code
    entry = SmtpErrorCode.from_code(reply) if reply[:1] in ("4", "5") else None
    if entry is not None:
        return entry
    status = _STATUS.fullmatch(recipient.status)
    if status is not None and status.group(1) in "45":
        klass = status.group(1)
        pair = _BY_STATUS.get((int(status.group(2)), int(status.group(3))))
        code = (pair[0] if klass == "4" else pair[1]) if pair else _CLASS_DEFAULT[klass]
        return SmtpErrorCode.from_code(code)
    if reply[:1] in ("4", "5"):
        return SmtpErrorCode.from_code(_CLASS_DEFAULT[reply[0]])
    if recipient.outcome is Outcome.NEGATIVE:
        return SmtpErrorCode.TRANSACTION_FAILED
    if recipient.outcome is Outcome.PENDING:
        return SmtpErrorCode.PROCESSING_ERROR
    return None


# -- Message-IDs and addresses --------------------------------------------------------------------

_ANGLE_ID: Final = re.compile(r"<([^<>]{1,998})>")


def normalize_message_id(value: str) -> str | None:
    """`<id>` from a Message-ID-like value, or None.

    The first `<...>` is taken, white space inside it removed (the spec example writes
    `<199509192301.23456 >`); a value without angle brackets is taken whole when it is one token.
    Use the same function on the Message-IDs stored at sending time.
    """
    text = _clean(value, 4 * _MAX_MESSAGE_ID)
    match = _ANGLE_ID.search(text)
    if match is not None:
        inner = "".join(match.group(1).split())
    else:
        tokens = text.split()
        inner = tokens[0] if len(tokens) == 1 and "<" not in text and ">" not in text else ""
    if not inner or len(inner) > _MAX_MESSAGE_ID:
        return None
    return f"<{inner}>"


def _message_ids(value: str) -> list[str]:
    """Every `<...>` of a References / In-Reply-To value, normalised."""
    found = [normalize_message_id(f"<{m.group(1)}>") for m in _ANGLE_ID.finditer(value)]
    if not found:
        found = [normalize_message_id(value)]
    return [i for i in found if i is not None][:_MAX_IDS]


def _address(value: str) -> str:
    """`rfc822; a@B.fr` / `<a@b.fr>` / `a@b.fr` → `a@b.fr` (domain lower-cased)."""
    text = _clean(value, 4 * _MAX_ADDRESS)
    _, sep, rest = text.partition(";")
    addr = (rest if sep else text).strip()
    if "<" in addr and ">" in addr:
        addr = addr[addr.find("<") + 1:addr.find(">", addr.find("<"))]
    addr = addr.strip().strip("<>").strip()
    if " " in addr:
        addr = next((t for t in addr.split() if "@" in t), addr.split()[0]).strip("<>,;")
    # RFC 3461 xtext: only the characters an ORCPT must encode and an address may hold.
    addr = addr.replace("+2B", "+").replace("+3D", "=")
    local, at, domain = addr.rpartition("@")
    if at:
        addr = f"{local}@{domain.lower()}"
    return addr[:_MAX_ADDRESS]


def _mailbox(value: str) -> str:
    """The address of a From / To header value holding one mailbox, else ""."""
    found = [a for _, a in getaddresses([value]) if "@" in a]
    return _address(found[0]) if len(found) == 1 else ""


# -- text helpers ---------------------------------------------------------------------------------

_ENCODED_WORD: Final = re.compile(r"=\?([^?\s*]{1,40})(?:\*[^?\s]{0,20})?\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS: Final = re.compile(r"(\?=)[ \t\r\n]+(?==\?)")
_FOLD: Final = re.compile(r"\r?\n[ \t]*")
_CONTROLS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _raw_to_text(raw: str) -> str:
    """A value as the compat32 parser stores it (8-bit bytes as surrogates) to text."""
    try:
        data = raw.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = raw.encode("utf-8", "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _decode_bytes(data: bytes, charset: str | None) -> str:
    if charset:
        try:
            codec = codecs.lookup(charset).name
            return data.decode(codec, "replace")
        except (LookupError, ValueError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _decode_words(text: str) -> str:
    """RFC 2047 encoded-words; a malformed one is left as it is."""
    if "=?" not in text:
        return text

    def word(match: re.Match[str]) -> str:
        charset, encoding, payload = match.groups()
        try:
            if encoding in "bB":
                data = base64.b64decode(payload + "=" * (-len(payload) % 4))
            else:
                data = quopri.decodestring(payload.replace("_", " ").encode("ascii"),
                                           header=True)
        except (binascii.Error, ValueError):
            return match.group(0)
        return _decode_bytes(data, charset)

    return _ENCODED_WORD.sub(word, _BETWEEN_WORDS.sub(r"\1", text))


def _header_text(raw: str) -> str:
    """A header or report field value: unfolded, decoded, not yet cleaned."""
    return _decode_words(_FOLD.sub(" ", _raw_to_text(raw)))


def _clean(text: str, limit: int) -> str:
    """One line: control characters as spaces, spaces collapsed, cut at `limit` characters."""
    return " ".join(_CONTROLS.sub(" ", text[: 4 * limit]).split())[:limit]


def _fold_accents(text: str) -> str:
    """Accents removed and typographic apostrophes made ASCII, for keyword matching."""
    decomposed = unicodedata.normalize("NFKD", text.replace("\u2019", "'").replace("\u2018", "'"))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


_COMMENT: Final = re.compile(r"\([^()]{0,200}\)")


def _parse_date(value: str) -> datetime | None:
    """An RFC 5322 date; comments such as `(CET)` are dropped (they hide the offset after them)."""
    text = _clean(_COMMENT.sub(" ", _clean(value, 400)), 200)
    if not text:
        return None
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


# -- the mail, its parts and fields ---------------------------------------------------------------

_DSN_TYPES: Final = ("message/delivery-status", "message/global-delivery-status")
_MDN_TYPES: Final = ("message/disposition-notification",
                     "message/global-disposition-notification")
_HEADERS_TYPES: Final = ("text/rfc822-headers", "message/rfc822-headers",
                         "text/global-headers", "message/global-headers")
_ORIGINAL_TYPES: Final = ("message/rfc822", "message/global")
_MIME_FIELDS: Final = frozenset({
    "content-type", "content-transfer-encoding", "content-disposition", "content-description",
    "content-id", "mime-version",
})

_Fields = dict[str, str]  # lower-case name → decoded value (first occurrence)


def _fields(pairs: Iterable[tuple[str, object]]) -> _Fields:
    out: _Fields = {}
    for name, value in pairs:
        key = str(name).strip().lower()
        if key and key not in out:
            out[key] = _header_text(value if isinstance(value, str) else str(value))
    return out


_FIELD_LINE: Final = re.compile(r"([!-9;-~]{1,80})[ \t]*:(.*)")


def _parse_blocks(text: str) -> list[_Fields]:
    """RFC 822-style field blocks separated by blank lines (a report body read by hand)."""
    blocks: list[_Fields] = []
    current: list[tuple[str, str]] = []
    for line in text[:MAX_TEXT].splitlines():
        if not line.strip():
            if current:
                blocks.append(_fields(current))
                current = []
        elif line[0] in " \t" and current:
            name, value = current[-1]
            current[-1] = (name, f"{value} {line.strip()}")
        else:
            match = _FIELD_LINE.fullmatch(line)
            if match is not None:
                current.append((match.group(1), match.group(2).strip()))
    if current:
        blocks.append(_fields(current))
    return blocks


def _headers_of(msg: Message) -> _Fields:
    return _fields(msg.raw_items())


def _body_text(msg: Message) -> str:
    """A non-multipart body as text. `get_payload()` would turn 8-bit bytes into U+FFFD."""
    data = msg.get_payload(decode=True)
    return _decode_bytes(data[: 4 * MAX_TEXT], "utf-8") if isinstance(data, bytes) else ""


def _serialized(msg: Message) -> str:
    """A parsed sub-message back to text, as far as needed to re-read its fields."""
    lines = [_raw_to_text(f"{name}: {value}") for name, value in msg.raw_items()]
    return "\n".join(lines) + "\n\n" + _body_text(msg)


def _report_blocks(part: Message) -> list[_Fields]:
    """The field blocks of a report part, however Python's parser laid them out.

    `message/delivery-status` comes as one sub-message per block; the `message/global-*` and
    `message/disposition-notification` types as one sub-message whose body holds the other blocks;
    a report part without the blank line after its MIME headers (the LPS volet's MDN example) has
    its fields among those headers; a base64 or quoted-printable report part is decoded here.
    """
    blocks: list[_Fields] = []
    own = {k: v for k, v in _headers_of(part).items() if k not in _MIME_FIELDS}
    if own:
        blocks.append(own)
    payload = part.get_payload()
    subs = [m for m in payload if isinstance(m, Message)] if isinstance(payload, list) else []
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding in ("base64", "quoted-printable"):
        raw = "\n".join(_serialized(m) for m in subs) if subs else _part_text(part)
        data = raw.encode("utf-8", "replace")
        try:
            decoded = (base64.b64decode(b"".join(data.split())) if encoding == "base64"
                       else quopri.decodestring(data))
        except (binascii.Error, ValueError):
            decoded = data
        return blocks + _parse_blocks(_decode_bytes(decoded, "utf-8"))
    for sub in subs[:_MAX_PARTS]:
        head = _headers_of(sub)
        if head:
            blocks.append(head)
        if not sub.is_multipart():
            blocks.extend(_parse_blocks(_body_text(sub)))
    if isinstance(payload, str):
        blocks.extend(_parse_blocks(_part_text(part)))
    return blocks


def _report_type(msg: Message) -> str:
    value = msg.get_param("report-type")
    return value.strip().lower() if isinstance(value, str) else ""


class _Mail:
    """The parsed receipt and what every reader needs from it (computed once)."""

    def __init__(self, msg: Message) -> None:
        self.msg = msg
        self.headers = _headers_of(msg)
        self.parts = list(_walk(msg))
        self.subject = _clean(self.headers.get("subject", ""), 1000)
        self.ko_subject = _ko_subject(self.subject)
        self.notes: list[str] = []
        if msg.defects:
            names = sorted({type(d).__name__ for d in msg.defects})
            self.notes.append("MIME defects: " + ", ".join(names))
        self.original = _returned_original(self.parts)

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    def first_part(self, types: tuple[str, ...]) -> Message | None:
        return next((p for p in self.parts if p.get_content_type() in types), None)

    @cached_property
    def text(self) -> str:
        """Human-readable text of the receipt itself (not of a returned original part)."""
        out: list[str] = []
        for part in self.parts:
            ctype = part.get_content_type()
            if ctype in ("text/plain", "text/html") and not _is_attachment(part):
                text = _part_text(part)
                out.append(_strip_html(text) if ctype == "text/html" else text)
        return "\n".join(out)

    @property
    def message_id(self) -> str:
        return normalize_message_id(self.header("message-id")) or ""

    @property
    def date(self) -> datetime | None:
        return _parse_date(self.header("date"))

    def reply_ids(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (tuple(_message_ids(self.header("in-reply-to"))),
                tuple(_message_ids(self.header("references"))))


def _walk(msg: Message) -> Iterator[Message]:
    """The receipt's parts, depth first, without descending into message/* parts."""
    stack: list[tuple[Message, int]] = [(msg, 0)]
    seen = 0
    while stack and seen < _MAX_PARTS:
        part, depth = stack.pop()
        seen += 1
        yield part
        payload = part.get_payload()
        if (part.get_content_maintype() == "multipart" and isinstance(payload, list)
                and depth < _MAX_DEPTH):
            children = [p for p in payload if isinstance(p, Message)]
            stack.extend((child, depth + 1) for child in reversed(children))


def _is_attachment(part: Message) -> bool:
    return str(part.get("Content-Disposition", "")).strip().lower().startswith("attachment")


def _part_text(part: Message) -> str:
    """A non-multipart part's body, transfer encoding undone, decoded with its charset."""
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    return _decode_bytes(data[: 4 * MAX_TEXT], part.get_content_charset())[:MAX_TEXT]


_TAG: Final = re.compile(r"<[^<>]{0,2000}>")


def _strip_html(text: str) -> str:
    return _TAG.sub(" ", text).replace("&nbsp;", " ").replace("&lt;", "<").replace("&gt;", ">")


@dataclass(frozen=True, slots=True)
class _Original:
    message_id: str = ""
    to: str = ""


def _returned_original(parts: list[Message]) -> _Original:
    """Message-ID and (single) To of the returned original or its returned headers."""
    for part in parts:
        ctype = part.get_content_type()
        headers: _Fields | None = None
        if ctype in _ORIGINAL_TYPES or (ctype in _HEADERS_TYPES and part.is_multipart()):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                headers = _headers_of(payload[0])
        elif ctype in _HEADERS_TYPES:
            blocks = _parse_blocks(_part_text(part))
            headers = blocks[0] if blocks else None
        if headers and ("message-id" in headers or "to" in headers):
            return _Original(normalize_message_id(headers.get("message-id", "")) or "",
                             _mailbox(headers.get("to", "")))
    return _Original()


# -- DSN ------------------------------------------------------------------------------------------

_RECIPIENT_FIELDS: Final = ("final-recipient", "original-recipient", "action", "status")
_REPLY_CODE: Final = re.compile(r"\s*([245]\d\d)(?!\d)")


def _dsn(mail: _Mail, part: Message) -> Receipt | None:
    blocks = _report_blocks(part)
    per_message: _Fields = {}
    recipients: list[RecipientOutcome] = []
    for block in blocks:
        if any(name in block for name in _RECIPIENT_FIELDS):
            recipients.append(_delivery(block))
        else:
            for key, value in block.items():
                per_message.setdefault(key, value)
    if not recipients:
        return None
    in_reply_to, references = mail.reply_ids()
    originals = [r.original_recipient for r in recipients if r.original_recipient]
    correlation = Correlation(
        envelope_id=_clean(per_message.get("original-envelope-id", ""), 200),
        message_ids=tuple(i for i in (mail.original.message_id,) if i),
        in_reply_to=in_reply_to,
        references=references,
        original_recipients=_unique([*originals, mail.original.to]),
    )
    return Receipt(
        kind=ReceiptKind.DSN, heuristic=False, recipients=tuple(recipients),
        correlation=correlation, arrival_date=_parse_date(per_message.get("arrival-date", "")),
        reporting_agent=_agent(per_message.get("reporting-mta", "")),
        notes=tuple(mail.notes),
        receipt_message_id=mail.message_id, date=mail.date,
    )


def _delivery(block: _Fields) -> RecipientOutcome:
    action_text = _clean(block.get("action", ""), 40).lower()
    action_token = action_text.split(" ")[0].split("(")[0] if action_text else ""
    action = _enum(DeliveryAction, action_token)
    status_match = _STATUS.search(_clean(block.get("status", ""), 40))
    status = ".".join(str(int(g)) for g in status_match.groups()) if status_match else ""
    diag_type, sep, diag_text = _clean(block.get("diagnostic-code", ""), _MAX_DIAGNOSTIC) \
        .partition(";")
    if not sep:
        diag_type, diag_text = "", diag_type
    diag_type = diag_type.strip().lower()[:40]
    diag_text = diag_text.strip()
    reply = ""
    if diag_type in ("smtp", ""):
        reply_match = _REPLY_CODE.match(diag_text)
        reply = reply_match.group(1) if reply_match else ""
    return RecipientOutcome(
        outcome=_delivery_outcome(action, status),
        final_recipient=_address(block.get("final-recipient", "")),
        original_recipient=_address(block.get("original-recipient", "")),
        action=action,
        action_text=action_token,
        status=status,
        diagnostic_type=diag_type,
        diagnostic=diag_text,
        smtp_reply_code=reply,
        remote_mta=_agent(block.get("remote-mta", "")),
        last_attempt=_parse_date(block.get("last-attempt-date", "")),
        will_retry_until=_parse_date(block.get("will-retry-until", "")),
    )


def _delivery_outcome(action: DeliveryAction | None, status: str) -> Outcome:
    if action in (DeliveryAction.DELIVERED, DeliveryAction.EXPANDED):
        return Outcome.POSITIVE
    if action is DeliveryAction.FAILED:
        return Outcome.NEGATIVE
    if action is DeliveryAction.DELAYED:
        return Outcome.PENDING
    if action is None and status[:1] == "5":
        return Outcome.NEGATIVE
    if action is None and status[:1] == "4":
        return Outcome.PENDING
    return Outcome.INCONCLUSIVE  # relayed, or an unknown action without a 4/5 status


def _agent(value: str) -> str:
    """`dns; mx.example.fr` → `mx.example.fr`."""
    text = _clean(value, 300)
    _, sep, rest = text.partition(";")
    return (rest if sep else text).strip()


# -- MDN ------------------------------------------------------------------------------------------

_DISPOSITION: Final = re.compile(
    r"\s*(?:([A-Za-z0-9-]+)\s*(?:/\s*([A-Za-z0-9-]+)\s*)?;)?\s*([A-Za-z0-9-]+)\s*(?:/(.*))?",
    re.S,
)


def _mdn(mail: _Mail, part: Message) -> Receipt:
    fields: _Fields = {}
    for block in _report_blocks(part):
        for key, value in block.items():
            fields.setdefault(key, value)
    disposition, payload = _parse_disposition(fields.get("disposition", ""))
    if disposition is None:
        mail.notes.append("disposition-notification without a readable Disposition field")
    elif payload:
        mail.notes.append("error given inside the Disposition field (LPS volet syntax)")
    error = _parse_error(fields.get("error", "")) or _parse_error(fields.get("failure", "")) \
        or _parse_error(payload)
    # An `Error:` field may report success ("0^Message accepted", or a warning or information
    # only): the document was integrated, and only the Disposition modifier or a KO subject
    # says otherwise.
    negative = (error is not None and not _reports_acceptance(error)) \
        or (disposition is not None and disposition.is_error) or mail.ko_subject is not None
    if negative:
        error = _complete_error(error, mail)
    if negative:
        outcome = Outcome.NEGATIVE
    elif disposition is not None and disposition.type in (DispositionType.PROCESSED,
                                                          DispositionType.DISPLAYED):
        outcome = Outcome.POSITIVE
    else:
        outcome = Outcome.INCONCLUSIVE
    recipient = RecipientOutcome(
        outcome=outcome,
        final_recipient=_address(fields.get("final-recipient", "")),
        original_recipient=_address(fields.get("original-recipient", "")),
        disposition=disposition,
        error=error,
    )
    in_reply_to, references = mail.reply_ids()
    original_id = normalize_message_id(fields.get("original-message-id", "")) or ""
    correlation = Correlation(
        message_ids=_unique([original_id, mail.original.message_id]),
        in_reply_to=in_reply_to,
        references=references,
        original_recipients=_unique([recipient.original_recipient, mail.original.to]),
    )
    return Receipt(
        kind=ReceiptKind.MDN, heuristic=False, recipients=(recipient,), correlation=correlation,
        reporting_agent=_clean(fields.get("reporting-ua", ""), 300), notes=tuple(mail.notes),
        receipt_message_id=mail.message_id, date=mail.date,
    )


def _parse_disposition(value: str) -> tuple[Disposition | None, str]:
    """The Disposition and, for the LPS volet's `processed/Error: payload`, that payload."""
    text = _clean(value, 1000)
    match = _DISPOSITION.fullmatch(text) if text else None
    if match is None:
        return None, ""
    action_mode, sending_mode, type_text, modifiers_text = match.groups()
    head, _, payload = (modifiers_text or "").partition(":")
    modifiers = tuple(m.lower() for m in re.split(r"[,;\s]+", head) if m)
    type_text = type_text.lower()
    disposition = Disposition(
        action_mode=(action_mode or "").lower(),
        sending_mode=(sending_mode or "").lower(),
        type=_enum(DispositionType, type_text),
        type_text=type_text,
        modifiers=modifiers[:8],
    )
    return disposition, payload.strip()


_CODE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_LEADING_CODE: Final = re.compile(r"(\d{1,6})\b\s*[-:–—]?\s*(.*)", re.S)


def _parse_error(value: str) -> ReportedError | None:
    """The first `code^label` of an error text, tolerantly.

    `902^Identifiant de patient inconnu^messageErrorCondition| E^Error^errorSeverity`,
    `902^Identifiant patient inconnu`, `902 - Identifiant patient inconnu`, `902`, or a bare label.
    """
    text = _clean(value, 1000)
    if not text:
        return None
    first, bar, rest = text.partition("|")
    if not first.strip() and bar:  # "| 902^label": the pair after the bar
        first, _, rest = rest.partition("|")
    severity = None
    severity_match = re.match(r"\s*([EFIW])(?![A-Za-z0-9])", rest)
    if severity_match is not None:
        severity = Severity(severity_match.group(1))
    components = [c.strip() for c in first.split("^")]
    system = ""
    if len(components) >= 2:
        code, label = components[0], components[1]
        system = components[2] if len(components) > 2 else ""
    else:
        leading = _LEADING_CODE.fullmatch(components[0])
        code, label = (leading.group(1), leading.group(2)) if leading else ("", components[0])
    if not _CODE.fullmatch(code):
        code, label = "", label or code
    label = _clean(label, _MAX_LABEL)
    if not code and not label:
        return None
    system = system if _CODE.fullmatch(system) else ""
    return ReportedError(code, label, system, severity)


def _reports_acceptance(error: ReportedError) -> bool:
    """HL7 table 0357 code 0 ("Message accepted"), or a severity (table 0516) that is not an
    error: W (warning) or I (information)."""
    return error.code == "0" or error.severity in (Severity.WARNING, Severity.INFORMATION)


def _complete_error(error: ReportedError | None, mail: _Mail) -> ReportedError | None:
    """Fill a missing code from the KO subject and a missing label from the text parts."""
    code = error.code if error else ""
    label = error.label if error else ""
    if not code and mail.ko_subject:
        code = mail.ko_subject
    if not label or not code:
        found = _error_in_text(mail.text, code)
        if found is not None:
            code = code or found.code
            label = label or found.label
    if not code and not label:
        return error
    if error is None:
        return ReportedError(code, label)
    return ReportedError(code, label, error.coding_system, error.severity)


_PAIR_IN_TEXT: Final = re.compile(r"(?<![\w^])(\d{1,6})[ \t]*\^[ \t]*([^\^|\r\n]{1,200})")
_REASON: Final = re.compile(
    r"(?:raison suivante|reason|motif|libell[eé](?: de l'erreur| erreur)?)[ \t]*:[ \t]*"
    r"([^\r\n]{1,200})", re.I)


def _error_in_text(text: str, code_hint: str) -> ReportedError | None:
    """A `code^label` pair, a "raison suivante : label" line, or "<code> : label", in free text."""
    pairs = [(m.group(1), m.group(2)) for m in _PAIR_IN_TEXT.finditer(text[:MAX_TEXT])]
    chosen = next((p for p in pairs if p[0] == code_hint), pairs[0] if pairs else None)
    if chosen is not None and (not code_hint or chosen[0] == code_hint):
        return ReportedError(chosen[0], _clean(chosen[1], _MAX_LABEL))
    reason = _REASON.search(text[:MAX_TEXT])
    if reason is not None:
        return ReportedError(code_hint, _clean(reason.group(1), _MAX_LABEL))
    if code_hint.isdigit():
        pattern = rf"(?<!\d){re.escape(code_hint)}(?!\d)[ \t]*[-:–—][ \t]*([^\r\n]{{3,200}})"
        after = re.search(pattern, text[:MAX_TEXT])
        if after is not None:
            return ReportedError(code_hint, _clean(after.group(1), _MAX_LABEL))
    return None


# -- KO mail ("courriel standard") ----------------------------------------------------------------

_KO_SUBJECT: Final = re.compile(
    r"\s*(?:(?:re|tr|fwd?)\s*:\s*)*\[\s*(?:ko\s+integration\s+systeme|erreur\s+d\W{0,3}integration)"
    r"\s*!?\s*\]\s*(?:\[\s*([^\[\]]{0,40}?)\s*\])?",
    re.I,
)


def _ko_subject(subject: str) -> str | None:
    """The code of a `[KO Intégration système !][code] ...` subject ("" without a code), or None."""
    match = _KO_SUBJECT.match(_fold_accents(subject))
    if match is None:
        return None
    code = (match.group(1) or "").strip()
    return code if _CODE.fullmatch(code) else ""


def _ko(mail: _Mail) -> Receipt:
    error = _complete_error(None, mail)
    recipient = RecipientOutcome(
        outcome=Outcome.NEGATIVE,
        final_recipient=_mailbox(mail.header("from")),
        original_recipient=mail.original.to,
        error=error,
    )
    in_reply_to, references = mail.reply_ids()
    correlation = Correlation(
        message_ids=_unique([mail.original.message_id]),
        in_reply_to=in_reply_to,
        references=references,
        original_recipients=_unique([mail.original.to]),
    )
    if error is None or not error.code:
        mail.notes.append("KO mail without an error code")
    return Receipt(
        kind=ReceiptKind.KO_MAIL, heuristic=False, recipients=(recipient,),
        correlation=correlation, notes=tuple(mail.notes),
        receipt_message_id=mail.message_id, date=mail.date,
    )


# -- heuristic bounces ----------------------------------------------------------------------------

_BOUNCE_SENDERS: Final = frozenset({
    "mailer-daemon", "mailer_daemon", "mailerdaemon", "mail-daemon", "maildaemon", "postmaster",
    "mail-delivery-system", "mail.delivery.system", "bounce", "bounces", "no-reply-bounce",
})
_BOUNCE_SUBJECT: Final = re.compile(
    r"undeliver|returned mail|returned to sender|mail delivery (?:failed|failure|delayed|system)"
    r"|delivery (?:status notification|failure|failed|has failed|delayed|incomplete|problem)"
    r"|failure notice|could not (?:be )?deliver|delayed mail|warning: could not send"
    r"|non[- ]?remis|non[- ]?distribu|non[- ]?delivre|echec (?:de |d'|lors de )?(?:la )?"
    r"(?:remise|distribution|livraison|transmission)|impossible de (?:remettre|distribuer|delivrer)"
    r"|avis de non[- ]remise|notification d'etat de remise|message (?:non )?retourne",
    re.I,
)
_NEGATIVE_WORDS: Final = re.compile(
    r"could ?n[o']t be delivered|was not delivered|not be delivered|undeliverable"
    r"|permanent(?:ly)? (?:error|failure|fatal)|fatal error|delivery (?:has )?failed"
    r"|failed permanently|(?:unable|was ?n[o']t able|not able) to deliver|returned to sender"
    r"|address rejected|user unknown"
    r"|no such (?:user|mailbox|recipient)|does ?n[o']t exist|mailbox unavailable"
    r"|n'a pas pu etre (?:remis|delivre|distribue|achemine|transmis)|non remis|echec definitif"
    r"|erreur (?:permanente|definitive|fatale)|rejete|n'existe pas|a ete refuse",
    re.I,
)
_PENDING_WORDS: Final = re.compile(
    r"delayed|will (?:retry|continue|keep) (?:trying|to try)|still (?:trying|being retried)"
    r"|not yet been delivered|no action is required|temporar(?:y|ily) (?:error|failure|deferred)"
    r"|retarde|nouvelles? tentatives?|n'a pas encore ete (?:remis|delivre|distribue)"
    r"|erreur temporaire|en attente de (?:remise|distribution)",
    re.I,
)
# Keywords → RFC 3463 subject.detail, used only when the text has no numeric status.
_KEYWORD_STATUS: Final = (
    (re.compile(r"mailbox (?:is )?full|over ?quota|quota exceeded|boite (?:aux lettres )?pleine"
                r"|bal pleine|espace (?:de stockage )?insuffisant|quota depasse", re.I), "2.2"),
    (re.compile(r"mailbox (?:is )?(?:disabled|closed|inactive|suspended)"
                r"|account (?:is )?(?:disabled|closed|inactive|suspended)"
                r"|(?:boite|bal|compte|messagerie|adresse)\b[^\r\n]{0,30}?\b(?:fermee|desactivee"
                r"|cloturee|inactive|suspendue|supprimee)", re.I), "2.1"),
    (re.compile(r"user unknown|unknown user|no such (?:user|mailbox|recipient)|no mailbox here"
                r"|does ?n[o']t exist"
                r"|recipient (?:address )?rejected|invalid recipient|mailbox unavailable"
                r"|n'existe pas|inconnue?|introuvable|adresse (?:invalide|incorrecte)"
                r"|not found", re.I), "1.1"),
    (re.compile(r"too (?:large|big)|size limit|exceeds[^\r\n]{0,20}size|message size"
                r"|taille (?:maximale|du message|depassee|limite)", re.I), "3.4"),
    (re.compile(r"host (?:or domain name )?not found|domain (?:not found|does ?n[o']t exist)"
                r"|name service error|domaine (?:inconnu|introuvable)", re.I), "4.4"),
    (re.compile(r"timed? ?out|no answer|ne repond pas|connection refused|connexion refusee",
                re.I), "4.1"),
)
_STATUS_WITH_REPLY: Final = re.compile(
    r"(?<!\d)([245]\d\d)[ \t-]+#?([245]\.\d{1,3}\.\d{1,3})(?!\d)")
_REPLY_AFTER_WORD: Final = re.compile(
    r"\b(?:said|error|response|reply|reponse|code)\b[^\r\n\d]{0,40}\b([45][0-5]\d)(?![\d.])",
    re.I,
)
_RECIPIENT_LINE: Final = re.compile(
    r"(?m)^[ \t]*<([\w.!#$%&'*+/=?^`{|}~-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8})>[ \t]*:")
_RCPT_TO: Final = re.compile(
    r"RCPT TO:[ \t]*<([\w.!#$%&'*+/=?^`{|}~-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8})>", re.I)
# Where qmail, Exim, Postfix (non-DSN) and others start the copy of the returned message.
_COPY_MARKER: Final = re.compile(
    r"(?im)^[ \t]*-{2,}[^\r\n]{0,20}(?:below this line|this is a copy|copy of the message"
    r"|original message|message d'origine|message original|copie du message)[^\r\n]*$")
_ID_LINE: Final = re.compile(r"(?im)^[ \t>]*message-id[ \t]*:[ \t]*(<[^<>\r\n]{1,998}>)")


def _heuristic(mail: _Mail, *, forced: bool, note: str) -> Receipt | None:
    """A bounce without a usable report. `forced`: it declared itself a report (no signal test)."""
    failed_header = mail.header("x-failed-recipients")
    text = _fold_accents(mail.text)
    report = _COPY_MARKER.split(text, maxsplit=1)[0]  # the bounce's own words, not the copy
    subject = _fold_accents(mail.subject)
    if not forced and not (
        failed_header or _bounce_sender(mail) or _BOUNCE_SUBJECT.search(subject)
    ):
        return None
    if note:
        mail.notes.append(note)
    status, reply, diagnostic = _status_in(report)
    haystack = " ".join(f"{subject}\n{report}".split())  # keywords may be wrapped over lines
    negative_words = _NEGATIVE_WORDS.search(haystack) is not None
    pending_words = _PENDING_WORDS.search(haystack) is not None
    klass = status[:1] or reply[:1]
    if klass == "5" or (negative_words and not (klass == "4" and pending_words)):
        outcome = Outcome.NEGATIVE
    elif klass == "4" or pending_words:
        outcome = Outcome.PENDING
    else:
        outcome = Outcome.INCONCLUSIVE
    if not status and outcome in (Outcome.NEGATIVE, Outcome.PENDING):
        detail = next((s for pattern, s in _KEYWORD_STATUS if pattern.search(haystack)), "")
        if detail:
            status = f"{'5' if outcome is Outcome.NEGATIVE else '4'}.{detail}"
    addresses = [_address(a) for a in failed_header.split(",") if "@" in a]
    addresses += [_address(m.group(1)) for m in _RECIPIENT_LINE.finditer(report)]
    addresses += [_address(m.group(1)) for m in _RCPT_TO.finditer(report)]
    if not addresses and mail.original.to:
        addresses = [mail.original.to]
    unique = _unique(addresses)
    recipients = tuple(
        RecipientOutcome(outcome=outcome, final_recipient=address, status=status,
                         diagnostic_type="smtp" if reply else "", diagnostic=diagnostic,
                         smtp_reply_code=reply)
        for address in (unique or ("",))
    )
    in_reply_to, references = mail.reply_ids()
    text_ids = [normalize_message_id(m.group(1)) for m in _ID_LINE.finditer(text)]
    correlation = Correlation(
        message_ids=_unique([mail.original.message_id, *(i for i in text_ids if i)]),
        in_reply_to=in_reply_to,
        references=references,
        original_recipients=_unique([mail.original.to]),
    )
    return Receipt(
        kind=ReceiptKind.HEURISTIC, heuristic=True, recipients=recipients,
        correlation=correlation, notes=tuple(mail.notes),
        receipt_message_id=mail.message_id, date=mail.date,
    )


def _bounce_sender(mail: _Mail) -> bool:
    if mail.header("return-path").strip() in ("<>", "< >"):
        return True
    name, address = parseaddr(mail.header("from"))
    local = address.rpartition("@")[0].lower() if "@" in address else address.lower()
    return local in _BOUNCE_SENDERS or "mail delivery" in name.lower()


def _status_in(text: str) -> tuple[str, str, str]:
    """(enhanced status, reply code, the line they were found on) in a bounce's text."""
    pair = _STATUS_WITH_REPLY.search(text)
    if pair is not None:
        status = _STATUS.search(pair.group(2))
        return (status.group(0) if status else "", pair.group(1), _line_at(text, pair.start()))
    status = _STATUS.search(text)
    reply = _REPLY_AFTER_WORD.search(text)
    line = _line_at(text, status.start()) if status else (
        _line_at(text, reply.start()) if reply else "")
    return (status.group(0) if status else "", reply.group(1) if reply else "", line)


def _line_at(text: str, index: int) -> str:
    start = text.rfind("\n", 0, index) + 1
    end = text.find("\n", index)
    return _clean(text[start: end if end >= 0 else len(text)], _MAX_DIAGNOSTIC)


# -- small helpers --------------------------------------------------------------------------------


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))[:_MAX_IDS]


def _enum(kind: type[_E], value: str) -> _E | None:
    try:
        return kind(value)
    except ValueError:
        return None
