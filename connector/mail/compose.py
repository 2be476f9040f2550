"""One MSSanté e-mail for one recipient, as a pure function of a `MailSpec`.

Structure (Référentiel #2 ECO.2.1.1, ECO.2.2.3; CI-SIS volet §mapping-mss):

```
multipart/mixed
├── text/plain; charset="utf-8"   (quoted-printable) the CORPSMAIL_* text or a default body
├── application/zip  IHE_XDM.zip  (base64)          when the mail carries documents
└── application/pdf  <name>.pdf   (base64)          one per document, in the order given
```

Headers: Date, From, To, Reply-To (optional), Message-ID, Subject, X-MSS-CODECDA and X-MSS-INS (only
when the mail carries CDA documents), X-MSS-NIL (when configured), X-MSS-MES (see `MailSpec`),
Disposition-Notification-To (read receipt asked), MIME-Version, Content-Type.

Header safety: addresses are validated `MailAddress` values; free text (subject parts, display
names, file names) goes through `single_line`, so it cannot contain a line break, a control
character, or an RFC 2047 encoded-word that would smuggle one (CVE-2024-6923, present in the
Python 3.11 this project runs on). `SMTP_POLICY` is `email.policy.SMTP` except that it folds the
Subject and the From / To / Reply-To mailboxes itself (see "folding" below: Python 3.11 loses
spaces when it folds long non-ASCII headers): plain words as they are, the rest as RFC 2047
base64 encoded-words, lines of at most 76 characters. File names are RFC 2231-encoded by the
standard policy. As a last line of defence every header of every part is checked to fold into
exactly one header (`HeaderSafetyError` otherwise: a bug, never an input problem).

The output is deterministic: the same `MailSpec` gives the same bytes (the MIME boundary is
derived from the Message-ID).

Two ways to build it, giving the same bytes (tests compare them on arbitrary specs):
`compose_mail` builds an `EmailMessage` (to inspect or parse) that `as_bytes` writes;
`render_mail` writes the bytes directly, for sending. It uses `email` for every header (the same
header objects, folded by `SMTP_POLICY` and checked one by one), and writes the bulk itself as
`email`'s generator does: the MIME framing, the quoted-printable text (`email.quoprimime`, as
`set_content` does), and the base64 attachments in lines of 76 characters. That avoids parsing
each attachment's header again per mail, folding every header twice, and the generator's
line-by-line copy of about 1,300 lines of base64 per mail.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import errors as email_errors
from email import quoprimime
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime
from enum import Enum
from functools import cache, lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from connector.directory.whitelist import MailAddress
from connector.errors import ConnectorError, MessageError
from connector.hl7.codes import ErrorCondition
from connector.mail.subject import SubjectInput, build_subject, single_line

XDM_FILENAME: Final = "IHE_XDM.zip"
_MAX_LINE: Final = 998  # RFC 5322 §2.1.1, without the CRLF
_MAX_FOLDED_LINE: Final = 76  # RFC 2047 §2: a line holding encoded-words
_MAX_PLAIN_WORD: Final = 60  # longer words are encoded, so that they can be split
_MAX_ENCODED_WORD: Final = 75  # RFC 2047 §2
_EW_START: Final = "=?utf-8?b?"
_EW_END: Final = "?="
_POLICY_LINE: Final = 78  # SMTP_POLICY.max_line_length (email.policy.SMTP's)
_BASE64_LINE: Final = _POLICY_LINE // 4 * 4  # 76, RFC 2045 §6.8: set_content's base64 lines
_VCHARS: Final = re.compile(r"[!-~]+")
_ATOM: Final = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_CDA_CODE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
_NIL: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MESSAGE_ID_CONTEXT: Final = b"mssante-connector/message-id/v1\x00"
_MSG_ID: Final = re.compile(r"<[0-9a-f]{32}@[A-Za-z0-9.-]+>")


class MailAction(Enum):
    """What the mail does with the document, from the HL7 event (T02/F, T10/C, T04/D)."""

    NEW = "new"
    REPLACEMENT = "replacement"
    DELETION = "deletion"


_CLOSING: Final = (
    "Ce message a été envoyé automatiquement par la plateforme d'échange de l'établissement.\n"
)
_FORMATS: Final = (
    "Le document est joint sous deux formes : l'archive IHE_XDM.zip, destinée aux logiciels de "
    "santé, et un fichier PDF à consulter directement.\n"
)

#: Bodies used when the request carries no CORPSMAIL_PS / CORPSMAIL_PATIENT text. They contain no
#: patient data, and suit a professional as well as a patient.
# The replacement or deletion said first in the body when the sender wrote the body (CI-SIS:
# the GESTIONNAIRE sends a mail "indiquant dans le corps du courriel le remplacement" / "que le
# document doit être supprimé"; it keeps the CREATEUR's CORPSMAIL text, after this line).
BODY_NOTICES: Final[Mapping[MailAction, str]] = MappingProxyType(
    {
        MailAction.REPLACEMENT: (
            "Ce message annule et remplace un document qui vous a été adressé précédemment "
            "par la messagerie sécurisée de santé (MSSanté) : merci de ne plus utiliser la "
            "version précédente.\n\n"
        ),
        MailAction.DELETION: (
            "Le document identifié dans ce message, qui vous a été adressé précédemment par la "
            "messagerie sécurisée de santé (MSSanté), doit être supprimé : merci de le supprimer "
            "de votre logiciel et de ne plus l'utiliser.\n\n"
        ),
    }
)

DEFAULT_BODIES: Final[Mapping[MailAction, str]] = MappingProxyType(
    {
        MailAction.NEW: (
            "Bonjour,\n\n"
            "Vous trouverez ci-joint un document de santé qui vous est adressé par la messagerie "
            "sécurisée de santé (MSSanté).\n\n" + _FORMATS + "\n" + _CLOSING
        ),
        MailAction.REPLACEMENT: (
            "Bonjour,\n\n"
            "Le document ci-joint annule et remplace un document qui vous a été adressé "
            "précédemment par la messagerie sécurisée de santé (MSSanté). Merci de ne plus "
            "utiliser la version précédente.\n\n" + _FORMATS + "\n" + _CLOSING
        ),
        MailAction.DELETION: (
            "Bonjour,\n\n"
            "Le document identifié dans ce message, qui vous a été adressé précédemment par la "
            "messagerie sécurisée de santé (MSSanté), doit être supprimé : il a été retiré par "
            "l'établissement qui l'a produit. Merci de le supprimer de votre logiciel et de ne "
            "plus l'utiliser.\n\n" + _CLOSING
        ),
    }
)


class HeaderSafetyError(ConnectorError):
    """A generated header would not fold into exactly one well-formed header: a bug of ours."""


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file to attach: its name (may contain accents and spaces) and its bytes."""

    filename: str
    content: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not clean_filename(self.filename):
            raise ValueError("an attachment needs a file name")

    def __repr__(self) -> str:  # the file name of a PDF carries the patient's name
        return f"Attachment(<redacted>, {len(self.content)} bytes)"


@dataclass(frozen=True, slots=True, repr=False)
class MailSpec:
    """Everything one e-mail to one recipient is made of.

    * `from_address`: the tenant's application mailbox (From, and Disposition-Notification-To).
    * `to_address`: the one recipient. `request_key` + `to_address` give the Message-ID (see
      `make_message_id`): use a key unique to the inbound request *and* not guessable from outside,
      such as the stored request's UUID rather than the bare MSH-10.
    * `cda_codes`: the CDA `code/@code` of each document in `xdm_zip`, in order. Non-empty exactly
      when `xdm_zip` is given. Gives `X-MSS-CODECDA` (comma-separated when several, ECO.2.4.1; the
      separator is the one implementers use, the référentiel text was not available) and
      `X-MSS-INS`.
    * `ins_qualified`: X-MSS-INS (ECO.2.4.2) is `O` when the archive's `patientId` is a qualified
      INS (matricule, its OID 1.2.250.1.213.1.4.8/9, and the identity traits of a qualified
      identity), `N` otherwise (the derogation that tolerates PS-to-PS mail without a qualified
      INS). A mail concerns one patient: one value for all its documents. Absent with no document.
    * `nil`: X-MSS-NIL, the software's NIL (ECO.2.4.3 wants it on every mail: the configuration
      should make it mandatory); the header is left out when None.
    * `no_reply`: the NTE-4 `FIN` note under DESTMSSANTEPAT. `X-MSS-MES: FIN` is written only when
      it is set *and* the recipient is a patient mailbox (`patient.mssante.fr`); the same request's
      mails to professionals do not get it.
    * `read_receipt`: ACK_LECTURE_MSS = Y: `Disposition-Notification-To: <from_address>`.
    * `body_text`: the decoded CORPSMAIL_PS or CORPSMAIL_PATIENT text for this recipient; when None
      or blank, `DEFAULT_BODIES[action]`; for a replacement or a deletion the text comes after
      `BODY_NOTICES[action]`, which says it (CI-SIS: "indiquant dans le corps du courriel").
    """

    from_address: MailAddress
    to_address: MailAddress
    subject: SubjectInput
    date: datetime
    request_key: str
    action: MailAction = MailAction.NEW
    from_display_name: str | None = None
    to_display_name: str | None = None
    reply_to: MailAddress | None = None
    cda_codes: tuple[str, ...] = ()
    ins_qualified: bool = False
    nil: str | None = None
    no_reply: bool = False
    read_receipt: bool = False
    body_text: str | None = None
    xdm_zip: bytes | None = None
    pdfs: tuple[Attachment, ...] = ()

    def __post_init__(self) -> None:
        if self.date.tzinfo is None or self.date.utcoffset() is None:
            raise ValueError("the mail date must carry a time zone")
        if not self.request_key:
            raise ValueError("the request key is empty")
        if bool(self.cda_codes) != (self.xdm_zip is not None):
            raise ValueError("CDA codes are given exactly when an IHE_XDM archive is attached")
        for number, code in enumerate(self.cda_codes, start=1):
            if not _CDA_CODE.fullmatch(code):
                raise MessageError(
                    f"X-MSS-CODECDA: the code of document #{number} is not a valid code",
                    condition=ErrorCondition.DATA_TYPE_ERROR,
                )
        if self.nil is not None and not _NIL.fullmatch(self.nil):
            raise MessageError(
                "X-MSS-NIL: the configured NIL is not a valid identifier",
                condition=ErrorCondition.DATA_TYPE_ERROR,
            )

    def __repr__(self) -> str:
        return (
            f"MailSpec(action={self.action.value}, documents={len(self.cda_codes)}, "
            f"message_id={self.message_id})"
        )

    @property
    def message_id(self) -> str:
        return make_message_id(self.request_key, self.to_address, self.from_address)


def make_message_id(request_key: str, to_address: MailAddress, from_address: MailAddress) -> str:
    """`<hex@domain-of-from>`, stable for one (request, recipient): a resend has the same ID.

    SHA-256 over a fixed context, the request key and the lower-cased recipient address (the
    recipient contains no NUL, so the encoding is unambiguous), truncated to 128 bits. Message-IDs
    are traceability metadata that get logged, and a patient's address is their INS: the key must
    hold something not guessable (see `MailSpec`) so the INS cannot be brute-forced from the hash.
    """
    return f"<{message_id_local_part(request_key, str(to_address))}@{from_address.domain}>"


def message_id_local_part(request_key: str, to_address: str) -> str:
    """What `make_message_id` puts before the `@`: the part a request key and a recipient
    (a stored mail job's RCPT TO, in any case) decide, whatever the sender's domain."""
    digest = hashlib.sha256(
        _MESSAGE_ID_CONTEXT
        + request_key.encode("utf-8", "surrogatepass")
        + b"\x00"
        + to_address.lower().encode("ascii")
    ).hexdigest()
    return digest[:32]


def with_references(message: bytes, message_ids: Sequence[str]) -> bytes:
    """A composed message (CRLF wire form) with `In-Reply-To` (the first of `message_ids`)
    and `References` (all of them, one per line) added at the top of its header block: the
    threading headers of a replacement or a deletion (ECO.2.2.2), which refer to the mails
    of the requests it follows. Header order carries no meaning (RFC 5322 §3.6)."""
    if not message_ids:
        return message
    for message_id in message_ids:
        if not _MSG_ID.fullmatch(message_id):
            raise ValueError("not a msg-id this composer writes")
    return (f"In-Reply-To: {message_ids[0]}\r\nReferences: "
            + "\r\n ".join(message_ids) + "\r\n").encode("ascii") + message


def compose_mail(spec: MailSpec) -> EmailMessage:
    """Build the e-mail described by `spec` (see the module docstring for the structure)."""
    message = EmailMessage(policy=SMTP_POLICY)
    _set_headers(message, spec)
    message.set_content(_body(spec), subtype="plain", charset="utf-8", cte="quoted-printable")
    message.make_mixed()
    if spec.xdm_zip is not None:
        message.attach(_attachment_part(spec.xdm_zip, "zip", XDM_FILENAME))
    for pdf in spec.pdfs:
        message.attach(_attachment_part(pdf.content, "pdf", clean_filename(pdf.filename)))
    message.set_boundary(_boundary(spec))
    _check_headers(message)
    return message


def as_bytes(message: EmailMessage) -> bytes:
    """The message as sent over SMTP: CRLF line endings, 7-bit clean."""
    return message.as_bytes(policy=SMTP_POLICY)


def render_mail(spec: MailSpec) -> bytes:
    """`as_bytes(compose_mail(spec))`, byte for byte, written directly (module docstring).

    Same checks: every header of the message and of each part folds into exactly one header
    (`HeaderSafetyError` otherwise), and the folded text checked is the text written.
    """
    boundary = _boundary(spec).encode("ascii")
    headers = [_folded(name, value) for name, value in _header_values(spec)]
    # Where compose_mail's set_content / make_mixed put them, as email folds them: the boundary
    # is always "=_" and 40 hex digits, quoted (`=` is a tspecial), too long for one line.
    headers.append("MIME-Version: 1.0\r\n")
    headers.append(f'Content-Type: multipart/mixed;\r\n boundary="{boundary.decode("ascii")}"\r\n')
    parts = [_text_part_headers() + _text_body(_body(spec))]
    if spec.xdm_zip is not None:
        parts.append(_xdm_part_headers() + _base64_body(spec.xdm_zip))
    for pdf in spec.pdfs:
        parts.append(_pdf_part_headers(clean_filename(pdf.filename)) + _base64_body(pdf.content))
    # email.generator's multipart layout: no preamble, CRLF before each delimiter, no epilogue.
    return b"".join((
        ("".join(headers) + "\r\n").encode("ascii"),
        b"--" + boundary + b"\r\n",
        (b"\r\n--" + boundary + b"\r\n").join(parts),
        b"\r\n--" + boundary + b"--\r\n",
    ))


def _boundary(spec: MailSpec) -> str:
    return "=_" + hashlib.sha256(spec.message_id.encode("ascii")).hexdigest()[:40]


def _header_block(message: EmailMessage) -> bytes:
    """The headers of one part as the generator writes them, each checked, and the blank line.

    The generator writes `fold_binary(name, value)`; for the header objects `email` stores (the
    only values our messages hold) it is `fold(name, value)` encoded as ASCII, the text checked.
    """
    folded = []
    for name, value in message.raw_items():
        if not hasattr(value, "name"):  # a raw string: only a parsed message holds those
            raise HeaderSafetyError(f"header {name} was not built by the email package")
        folded.append(_checked_fold(name, value))
    return ("".join(folded) + "\r\n").encode("ascii")


@cache
def _text_part_headers() -> bytes:
    """Content-Type and Content-Transfer-Encoding of the text part: the same for every text."""
    part = EmailMessage(policy=SMTP_POLICY)
    part.set_content("-", subtype="plain", charset="utf-8", cte="quoted-printable")
    del part["MIME-Version"]
    return _header_block(part)


@cache
def _xdm_part_headers() -> bytes:
    return _header_block(_attachment_part(b"", "zip", XDM_FILENAME))


@lru_cache(maxsize=64)
def _pdf_part_headers(filename: str) -> bytes:
    """A PDF part's headers depend on its file name only (the mails of a request share it)."""
    return _header_block(_attachment_part(b"", "pdf", filename))


_NEWLINES: Final = re.compile(r"\r\n|\r|\n")  # email.generator.NLCRE


def _text_body(text: str) -> bytes:
    """`set_content(text, charset="utf-8", cte="quoted-printable")`'s payload, as written."""
    lines = text.encode("utf-8").splitlines()
    payload = quoprimime.body_encode(
        (b"\n".join(lines) + b"\n").decode("latin-1"), _POLICY_LINE
    )
    return "\r\n".join(_NEWLINES.split(payload)).encode("ascii")


def _base64_body(content: bytes) -> bytes:
    """Base64 in lines of 76 characters, each ended by CRLF (`set_content` and the generator
    write 57 bytes a line: the same lines, as the whole is cut on 4-character boundaries)."""
    if not content:
        return b""
    encoded = binascii.b2a_base64(content, newline=False)
    width = _BASE64_LINE
    return b"\r\n".join([encoded[i : i + width] for i in range(0, len(encoded), width)]) + b"\r\n"


HeaderValue = str | Address


def _header_values(spec: MailSpec) -> list[tuple[str, HeaderValue]]:
    """The top-level headers of the mail, in the order they are written."""
    headers: list[tuple[str, HeaderValue]] = [
        ("Date", format_datetime(spec.date)),
        ("From", _address(spec.from_address, spec.from_display_name)),
        ("To", _address(spec.to_address, spec.to_display_name)),
    ]
    if spec.reply_to is not None:
        headers.append(("Reply-To", _address(spec.reply_to, None)))
    headers += [("Message-ID", spec.message_id), ("Subject", build_subject(spec.subject))]
    if spec.cda_codes:
        headers.append(("X-MSS-CODECDA", ",".join(spec.cda_codes)))
        headers.append(("X-MSS-INS", "O" if spec.ins_qualified else "N"))
    if spec.nil is not None:
        headers.append(("X-MSS-NIL", spec.nil))
    if spec.no_reply and spec.to_address.is_patient:
        headers.append(("X-MSS-MES", "FIN"))
    if spec.read_receipt:
        headers.append(("Disposition-Notification-To", str(spec.from_address)))
    return headers


def _set_headers(message: EmailMessage, spec: MailSpec) -> None:
    for name, value in _header_values(spec):
        message[name] = value


# Headers whose value is the same for every mail of a tenant (its mailbox, its NIL) or takes a
# few values (document codes, flags): their checked folding is kept. Never one that can carry
# patient data (To, Subject), nor one that changes with every mail.
_STABLE_HEADERS: Final = frozenset({
    "From", "Reply-To", "Disposition-Notification-To", "X-MSS-CODECDA", "X-MSS-INS",
    "X-MSS-NIL", "X-MSS-MES"})
# Headers whose value has a form `email` writes back unchanged on one line: format_datetime's
# date, make_message_id's id. Anything else, a bug's or an attack's, goes through `email` and
# `_checked_fold`.
_VERBATIM: Final = MappingProxyType({
    "Date": re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
                       r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
                       r"\d{2}:\d{2}:\d{2} [+-]\d{4}"),
    "Message-ID": re.compile(r"<[A-Za-z0-9._-]{1,64}@[A-Za-z0-9.-]{1,200}>"),
})


def _folded(name: str, value: HeaderValue) -> str:
    """`_checked_fold` of the header `message[name] = value` stores (ValueError for a value with
    a line break, as there), as `_header_block` writes it, at less cost where the result is
    known."""
    if name in _STABLE_HEADERS:
        if isinstance(value, Address):
            return _folded_stable_address(name, value.display_name, value.addr_spec)
        return _folded_stable(name, value)
    verbatim = _VERBATIM.get(name)
    if (verbatim is not None and isinstance(value, str)
            and len(name) + 2 + len(value) <= _POLICY_LINE and verbatim.fullmatch(value)):
        return f"{name}: {value}\r\n"
    return _checked_fold(*SMTP_POLICY.header_store_parse(name, value))


@lru_cache(maxsize=256)
def _folded_stable(name: str, value: str) -> str:
    return _checked_fold(*SMTP_POLICY.header_store_parse(name, value))


@lru_cache(maxsize=256)
def _folded_stable_address(name: str, display_name: str, addr_spec: str) -> str:
    address = Address(display_name=display_name, addr_spec=addr_spec)
    return _checked_fold(*SMTP_POLICY.header_store_parse(name, address))


def _address(address: MailAddress, display_name: str | None) -> Address:
    return Address(display_name=single_line(display_name or ""), addr_spec=str(address))


def _body(spec: MailSpec) -> str:
    text = spec.body_text
    if text is None or not text.strip():
        return DEFAULT_BODIES[spec.action]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Lone surrogates (from a lenient decoder upstream) cannot be written as UTF-8.
    text = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return BODY_NOTICES.get(spec.action, "") + text


_NOT_IN_FILENAMES = str.maketrans({c: "_" for c in '/\\<>:"|?*'})


def clean_filename(name: str) -> str:
    """An attachment's file name as written: `single_line`, the characters Windows refuses in
    a file name (`/ \\ < > : " | ? *`) made `_` (a recipient saves it as named; and a name
    between angle brackets would lose them in readers that unquote it as an address), no edge
    dots or spaces."""
    return single_line(name).translate(_NOT_IN_FILENAMES).strip(" .")


def _attachment_part(content: bytes, subtype: str, filename: str) -> EmailMessage:
    part = EmailMessage(policy=SMTP_POLICY)
    part.set_content(
        content,
        maintype="application",
        subtype=subtype,
        cte="base64",
        disposition="attachment",
        filename=filename,
        params={"name": filename},
    )
    del part["MIME-Version"]  # set_content puts one on every EmailMessage; only the top needs it
    return part


def _is_clean_line(line: str) -> bool:
    return line.isascii() and len(line) <= _MAX_LINE and "\r" not in line and "\n" not in line


def _check_headers(message: EmailMessage) -> None:
    for part in message.walk():
        for name, value in part.items():
            _checked_fold(name, value)


def _checked_fold(name: str, value: str) -> str:
    """`SMTP_POLICY.fold(name, value)`, checked to be exactly one well-formed header."""
    try:
        folded = SMTP_POLICY.fold(name, value)
    except email_errors.MessageError as exc:  # Pythons with the CVE-2024-6923 check
        raise HeaderSafetyError(f"generated header {name} cannot be written") from exc
    lines = folded.split("\r\n")
    well_formed = (
        lines[-1] == ""
        and lines[0].startswith(f"{name}:")
        and all(line[:1] in (" ", "\t") for line in lines[1:-1])
        and all(_is_clean_line(line) for line in lines)
    )
    if not well_formed:
        raise HeaderSafetyError(f"generated header {name} does not fold into one header")
    return folded


# -- folding of the free-text headers -------------------------------------------------------------
#
# Python 3.11's folder loses text when it folds long non-ASCII headers: a space that ends up between
# two encoded-words is dropped by every decoder (RFC 2047 §6.2), so `médecine AAAA…` comes back as
# `médecineAAAA…`; it also leaves a long ASCII display name on one line past 998 characters. The
# Subject and single-mailbox From / To / Reply-To are therefore folded here: plain ASCII words of
# at most 60 characters are written as they are; each run of other words becomes base64
# encoded-words holding the spaces of the run, cut on character boundaries; lines stay within 76
# characters. Decoders rebuild the exact text.


class _HeaderLines:
    """One header being folded: a token that does not fit on the line starts a new one."""

    def __init__(self, name: str) -> None:
        self._lines = [f"{name}:"]

    def _room(self) -> int:
        return _MAX_FOLDED_LINE - len(self._lines[-1]) - 1

    def add(self, token: str) -> None:
        if len(token) > self._room() and self._lines[-1]:
            self._lines.append("")
        self._lines[-1] += " " + token

    def add_encoded(self, text: str) -> None:
        while text:
            room = min(self._room(), _MAX_ENCODED_WORD) - len(_EW_START) - len(_EW_END)
            if room < 8:
                self._lines.append("")
                continue
            chunk, text = _utf8_prefix(text, room // 4 * 3)
            self.add(_EW_START + base64.b64encode(chunk.encode()).decode("ascii") + _EW_END)

    def add_words(self, text: str, plain: Callable[[str], bool]) -> None:
        run: list[str] = []
        for word in text.split(" "):
            if plain(word):
                if run:
                    self.add_encoded(" ".join(run))
                    run = []
                self.add(word)
            else:
                run.append(word)
        if run:
            self.add_encoded(" ".join(run))

    def render(self, linesep: str) -> str:
        return linesep.join(self._lines) + linesep


def _utf8_prefix(text: str, max_bytes: int) -> tuple[str, str]:
    size = 0
    for index, char in enumerate(text):
        size += len(char.encode())
        if size > max_bytes:
            return text[:index], text[index:]
    return text, ""


def _plain_text_word(word: str) -> bool:
    return len(word) <= _MAX_PLAIN_WORD and bool(_VCHARS.fullmatch(word)) and "=?" not in word


def _plain_phrase_word(word: str) -> bool:
    return len(word) <= _MAX_PLAIN_WORD and bool(_ATOM.fullmatch(word)) and "=?" not in word


def _fold_free_text(name: str, value: str, linesep: str) -> str | None:
    if not hasattr(value, "name"):
        return None  # a raw value from a parsed message: the standard folder keeps it as it is
    key = name.lower()
    lines = _HeaderLines(name)
    if key == "subject":
        lines.add_words(str(value), _plain_text_word)
        return lines.render(linesep)
    addresses = getattr(value, "addresses", None)
    if key not in ("from", "to", "reply-to") or addresses is None or len(addresses) != 1:
        return None
    mailbox = addresses[0]
    if mailbox.display_name:
        lines.add_words(mailbox.display_name, _plain_phrase_word)
        lines.add(f"<{mailbox.addr_spec}>")
    else:
        lines.add(mailbox.addr_spec)
    return lines.render(linesep)


if TYPE_CHECKING:
    _PolicyBase = EmailPolicy[EmailMessage]
else:
    _PolicyBase = EmailPolicy


class _MailPolicy(_PolicyBase):
    """`email.policy.SMTP` (CRLF, RFC 2047/2231, 7-bit headers) with the folding above."""

    def fold(self, name: str, value: str) -> str:
        folded = _fold_free_text(name, value, self.linesep)
        return super().fold(name, value) if folded is None else folded

    def fold_binary(self, name: str, value: str) -> bytes:
        folded = _fold_free_text(name, value, self.linesep)
        return super().fold_binary(name, value) if folded is None else folded.encode("ascii")


class _HeaderClasses(HeaderRegistry):
    """`HeaderRegistry` that makes each header class once. The standard one builds a new class
    (`type(...)`, about 20 µs) every time it parses a header or looks up a header's max count,
    although the class depends only on the registry entry: the same classes, made once."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[object, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = self.registry.get(name.lower(), self.default_class)
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made

    def map_to_type(self, name: str, cls: type[BaseHeader]) -> None:
        super().map_to_type(name, cls)
        self._made.clear()


#: The policy messages are built and written with.
SMTP_POLICY: Final = _MailPolicy(
    linesep="\r\n", max_line_length=_POLICY_LINE, header_factory=_HeaderClasses()
)
