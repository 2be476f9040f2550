"""MSH as a value, and how the bytes of a message are turned into text.

`read_header` is the hot path of intake: it looks only at the first segment, so that a 800 KB ORU
costs the same as an 800-byte ADT until someone needs its body.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from functools import lru_cache
from typing import AnyStr

from connector.errors import ErrorLocation, HL7ParseError
from connector.hl7.codes import AcknowledgmentCondition, ErrorCondition
from connector.hl7.message import Delimiters, Segment, component_of, parse_segment

# MSH-18 (HL7 table 0211) values we decode, mapped to Python codecs.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "iso-8859-1",
    **{f"8859/{n}": f"iso-8859-{n}" for n in range(2, 10)},  # table 0211: 8859/2 to 8859/9
    "8859/15": "iso-8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",  # not in table 0211, seen in the field
}
CODEC_TO_MSH18: dict[str, str] = {
    "ascii": "ASCII",
    "iso8859-1": "8859/1",
    "latin-1": "8859/1",
    **{f"iso8859-{n}": f"8859/{n}" for n in range(2, 10)},
    "iso8859-15": "8859/15",
    "utf-8": "UNICODE UTF-8",
    # Windows-1252, which table 0211 does not name: what senders that write 8859/1 on Windows
    # often send (€, œ, ’ in 0x80-0x9F); a listener may force it, and its ACKs say 8859/1.
    "cp1252": "8859/1",
}


@lru_cache(maxsize=64)
def msh18_for_codec(codec_name: str) -> str:
    return CODEC_TO_MSH18.get(codecs.lookup(codec_name).name, "")


@dataclass(frozen=True, slots=True)
class MessageType:
    """MSH-9: message code, trigger event, message structure."""

    code: str
    event: str
    structure: str

    def __str__(self) -> str:
        return f"{self.code}^{self.event}" if self.event else self.code


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """The MSH fields intake, routing and acknowledgement need. Holds no patient data."""

    delimiters: Delimiters
    sending_application: str  # MSH-3, raw HD
    sending_facility: str  # MSH-4, raw HD
    receiving_application: str  # MSH-5
    receiving_facility: str  # MSH-6
    timestamp: str  # MSH-7
    message_type: MessageType  # MSH-9
    control_id: str  # MSH-10
    processing_id: str  # MSH-11
    version_id: str  # MSH-12.1
    version_raw: str  # MSH-12 as sent (PAM.FR: `2.5^FRA^2.11`), echoed in the ACK
    accept_ack_type: str  # MSH-15
    application_ack_type: str  # MSH-16
    country: str  # MSH-17
    charset: str  # MSH-18
    profile: str  # MSH-21, raw EI (may repeat)

    @property
    def enhanced_mode(self) -> bool:
        """Enhanced acknowledgement mode is asked for by a value in MSH-15 or MSH-16."""
        return bool(self.accept_ack_type or self.application_ack_type)

    @property
    def accept_ack_condition(self) -> AcknowledgmentCondition:
        try:
            return AcknowledgmentCondition(self.accept_ack_type)
        except ValueError:
            return AcknowledgmentCondition.ALWAYS

    @property
    def application_ack_condition(self) -> AcknowledgmentCondition:
        """MSH-16: NEVER when empty (the sender asked for none), ALWAYS when unknown."""
        if not self.application_ack_type:
            return AcknowledgmentCondition.NEVER
        try:
            return AcknowledgmentCondition(self.application_ack_type)
        except ValueError:
            return AcknowledgmentCondition.ALWAYS

    @classmethod
    def from_segment(cls, msh: Segment) -> MessageHeader:
        raw9 = msh.raw(9)
        comps = [c.strip() for c in raw9.split(msh.delimiters.component)] + ["", "", ""]
        return cls(
            delimiters=msh.delimiters,
            sending_application=msh.raw(3),
            sending_facility=msh.raw(4),
            receiving_application=msh.raw(5),
            receiving_facility=msh.raw(6),
            timestamp=msh.value(7),
            message_type=MessageType(comps[0].upper(), comps[1].upper(), comps[2].upper()),
            control_id=msh.value(10),
            processing_id=msh.value(11),
            version_id=msh.value(12),
            version_raw=msh.raw(12).strip(),
            accept_ack_type=msh.value(15).upper(),
            application_ack_type=msh.value(16).upper(),
            country=msh.value(17),
            charset=msh.value(18),
            profile=msh.raw(21),
        )


def _first_segment(raw: bytes) -> bytes:
    start = raw.find(b"MSH")
    if start < 0:
        raise HL7ParseError("no MSH segment", location=ErrorLocation("MSH", 1))
    return raw[start:_line_end(raw, start, b"\r", b"\n")]


def _line_end(text: AnyStr, start: int, cr: AnyStr, lf: AnyStr) -> int:
    """Where the line starting at `start` ends: its first CR or LF, else the end of `text`.
    LF is looked for only before the first CR: a long CR-separated message is not scanned."""
    end = text.find(cr, start)
    if end < 0:
        end = len(text)
    pos = text.find(lf, start, end)
    return end if pos < 0 else pos


def resolve_codec(raw: bytes, *, forced: str | None, default: str) -> str:
    """The codec to decode `raw` with: the listener's, else MSH-18, else `default`.

    An MSH-18 outside the values we know is answered AE (table value not found) rather than
    guessed, since a wrong guess corrupts names silently.
    """
    if forced:
        return forced
    first = _first_segment(raw).decode("latin-1")
    d = Delimiters.from_msh(first)
    # MSH-18 only: "MSH|^~\\&|..." splits with MSH-1 missing, so MSH-18 is the 18th part.
    parts = first.split(d.field, 18)
    msh18 = parts[17].split(d.repetition)[0] if len(parts) > 17 else ""
    declared = component_of(msh18, 1, None, d).upper()
    if not declared:
        return default
    codec = CHARSETS.get(" ".join(declared.split()))
    if codec is None:
        raise HL7ParseError(
            "MSH-18 character set is not supported",
            condition=ErrorCondition.TABLE_VALUE_NOT_FOUND,
            location=ErrorLocation("MSH", 1, 18),
        )
    return codec


def codec_or_default(raw: bytes, *, forced: str | None, default: str) -> str:
    """`resolve_codec`'s codec, else `default`: the one an answer to a message whose MSH-18 is
    not supported is written in (and what reads such a message back)."""
    try:
        return resolve_codec(raw, forced=forced, default=default)
    except HL7ParseError:
        return default


def decode_message(raw: bytes, codec: str) -> str:
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise HL7ParseError(
            f"bytes at offset {exc.start} are not valid {codec}",
            condition=ErrorCondition.DATA_TYPE_ERROR,
            location=ErrorLocation("MSH", 1, 18),
        ) from exc


def read_header(text: str) -> MessageHeader:
    """Parse only the MSH of decoded message text."""
    start = text.find("MSH")
    if start < 0:
        raise HL7ParseError("no MSH segment", location=ErrorLocation("MSH", 1))
    if text[:start].strip("\ufeff\r\n\t "):
        raise HL7ParseError(
            "data before the MSH segment", location=ErrorLocation("MSH", 1)
        )
    first = text[start:_line_end(text, start, "\r", "\n")]
    d = Delimiters.from_msh(first)
    return MessageHeader.from_segment(parse_segment(first, d, is_msh=True))


def salvage_header(raw: bytes, codec: str = "latin-1") -> MessageHeader | None:
    """Best-effort MSH from bytes that failed to parse, so an AE can still echo MSH-10.

    `codec`: the one the answer will be encoded with. Bytes it cannot decode are kept as
    surrogates (`surrogateescape`), so that the answer, encoded the same way, gives the sender
    its own MSH-3/MSH-4 back byte for byte in MSH-5/MSH-6.

    None when not even MSH-1 is usable: an ACK written with it could not be read back.
    """
    try:
        first = _first_segment(raw).decode(codec, "surrogateescape")
    except (HL7ParseError, LookupError):
        return None
    try:
        d = Delimiters.from_msh(first)
    except HL7ParseError:
        # MSH-2 is unusable: read the fields with MSH-1 and the default encoding characters,
        # provided that combination is itself valid.
        d = Delimiters(field=first[3:4] or "|")
        try:
            Delimiters.from_msh(f"MSH{d.field}{d.encoding_characters}")
        except HL7ParseError:
            return None
    return MessageHeader.from_segment(parse_segment(first, d, is_msh=True))
