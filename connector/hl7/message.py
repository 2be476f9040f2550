"""A lean, tolerant HL7 v2 (ER7) parser: segments, fields, repetitions, components, escapes.

Pure functions of their input. The parser keeps values raw (escaped) and unescapes on access, so
parsing a 800 KB ORU costs one split per segment, not a tree of objects. It tolerates what real
senders produce: CR, LF or CRLF segment separators, trailing separators, blank lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from connector.errors import ErrorLocation, HL7ParseError
from connector.hl7.codes import ErrorCondition

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}\Z")


@dataclass(frozen=True, slots=True)
class Delimiters:
    """MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def encoding_characters(self) -> str:
        return f"{self.component}{self.repetition}{self.escape}{self.subcomponent}"

    @classmethod
    def from_msh(cls, msh_segment: str) -> Delimiters:
        """Read MSH-1/MSH-2 from the raw MSH segment text, checking they are usable."""
        if not msh_segment.startswith("MSH"):
            raise HL7ParseError(
                "message does not start with an MSH segment",
                condition=ErrorCondition.SEGMENT_SEQUENCE_ERROR,
                location=ErrorLocation("MSH", 1),
            )
        field_sep = msh_segment[3:4]
        end = msh_segment.find(field_sep, 4) if field_sep else -1
        encoding = msh_segment[4:] if end < 0 else msh_segment[4:end]
        known = _CHECKED.get(field_sep + encoding)
        if known is not None:
            return known
        # v2.7 adds a fifth (truncation) character; it carries no meaning for parsing here, but
        # it must still be distinct from the other delimiters.
        chars = [field_sep, *encoding]
        if (
            not field_sep
            or len(encoding) not in (4, 5)
            or len(set(chars)) != len(chars)
            or any(c.isalnum() or c in "\r\n " for c in chars)
        ):
            raise HL7ParseError(
                "MSH-1/MSH-2 encoding characters are invalid",
                condition=ErrorCondition.DATA_TYPE_ERROR,
                location=ErrorLocation("MSH", 1, 2),
            )
        delimiters = cls(field_sep, encoding[0], encoding[1], encoding[2], encoding[3])
        if len(_CHECKED) < _CHECKED_MAX:
            _CHECKED[field_sep + encoding] = delimiters
        return delimiters


DEFAULT_DELIMITERS = Delimiters()
# MSH-1 + MSH-2 values already checked, and their delimiters: every message of every sender
# has one, usually `|^~\&`.
_CHECKED: dict[str, Delimiters] = {}
_CHECKED_MAX = 64


def unescape(value: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Resolve HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\)."""
    esc = d.escape
    if esc not in value:
        return value
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = value.find(esc, i + 1)
        if end < 0:  # lone escape character: keep it literally
            out.append(value[i:])
            break
        seq = value[i + 1 : end]
        simple = {"F": d.field, "S": d.component, "T": d.subcomponent, "R": d.repetition,
                  "E": esc, ".br": "\n"}
        if seq in simple:
            out.append(simple[seq])
        elif seq[:1] == "X" and len(seq) > 1 and len(seq) % 2 == 1:
            try:
                out.append(bytes.fromhex(seq[1:]).decode("latin-1"))
            except ValueError:
                out.append(value[i : end + 1])
        else:  # formatting (\H\, \N\, \.sp\ ...) and unknown sequences are dropped or kept
            if seq in ("H", "N") or seq.startswith((".sp", ".in", ".ti", ".sk", ".ce", ".fi",
                                                     ".nf")):
                pass
            else:
                out.append(value[i : end + 1])
        i = end + 1
    return "".join(out)


def escape(value: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Escape delimiters and line breaks so `value` can never split a field or a segment."""
    if value.isalnum():  # no delimiter is alphanumeric (`Delimiters.from_msh`), nor CR, LF...
        return value
    esc = d.escape
    out = value.replace(esc, f"{esc}E{esc}")
    out = out.replace(d.field, f"{esc}F{esc}").replace(d.component, f"{esc}S{esc}")
    out = out.replace(d.subcomponent, f"{esc}T{esc}").replace(d.repetition, f"{esc}R{esc}")
    # Hex escapes, not `\.br\`: they round-trip CR and LF exactly, are allowed in every text
    # type (formatting commands are for FT only), and hold no character a delimiter can be.
    # The MLLP block characters (VT, FS) are escaped too: they must never reach the wire raw.
    for char in "\r\n\x0b\x1c":
        if char in out:
            out = out.replace(char, f"{esc}X{ord(char):02X}{esc}")
    return out


# `str.split` walks a one-character separator character by character (22 us on the 70 KB OBX of
# an ORU); `str.find` runs at memchr speed (3 us). Below `_LONG` characters plain split is faster.
_LONG = 2048


def split_on(text: str, separator: str) -> list[str]:
    """`text.split(separator)` for a one-character `separator`, at memchr speed on long text.
    The component reads, some 50 a message, test `len(text) < _LONG` themselves and call
    `str.split` directly: a function call each costs more than the split of a short field."""
    if len(text) < _LONG:
        return text.split(separator)
    parts: list[str] = []
    find, append, start = text.find, parts.append, 0
    while (end := find(separator, start)) >= 0:
        append(text[start:end])
        start = end + 1
    append(text[start:])
    return parts


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment. `fields[0]` is the segment id; `fields[n]` is field n (HL7 numbering).

    For MSH, `fields[1]` is the field separator itself (MSH-1) and `fields[2]` MSH-2, so that
    positions match the standard everywhere.
    """

    fields: tuple[str, ...]
    delimiters: Delimiters = field(default=DEFAULT_DELIMITERS, repr=False)

    @property
    def name(self) -> str:
        return self.fields[0]

    def raw(self, position: int) -> str:
        """Field `position` as sent (escaped, with repetitions), '' when absent."""
        return self.fields[position] if 0 <= position < len(self.fields) else ""

    def repetitions(self, position: int) -> list[str]:
        raw = self.raw(position)
        if not raw:
            return []
        if position <= 2 and self.fields[0] == "MSH":
            return [raw]
        return split_on(raw, self.delimiters.repetition)

    def component(
        self, position: int, component: int = 1, subcomponent: int | None = None,
        repetition: int = 1,
    ) -> str:
        """Unescaped component (1-based) of a field repetition (1-based), stripped of spaces."""
        # `repetitions` inlined (intake reads some 50 components a message).
        fields, d = self.fields, self.delimiters
        raw = fields[position] if 0 <= position < len(fields) else ""
        if raw.isalnum():  # no delimiter, escape or space (`Delimiters.from_msh`): as it is
            return raw if component == repetition == 1 and subcomponent in (None, 1) else ""
        if not raw:
            return ""
        if position <= 2 and fields[0] == "MSH":
            reps = [raw]
        else:
            reps = raw.split(d.repetition) if len(raw) < _LONG else split_on(raw, d.repetition)
        if len(reps) < repetition:
            return ""
        return component_of(reps[repetition - 1], component, subcomponent, d)

    def value(self, position: int) -> str:
        """The first component of the first repetition, unescaped: the usual "field value"."""
        return self.component(position, 1)

    def composite(self, position: int) -> Composite:
        """The first repetition of field `position`, split into its components (empty when the
        field is: every component reads "")."""
        composites = self.composites(position)
        return composites[0] if composites else Composite([], self.delimiters)

    def composites(self, position: int) -> list[Composite]:
        """Every repetition of field `position`, each split into its components once: for the
        readers that take several components of a field (an identifier, a name, an address),
        where `component` would split the field again for each one."""
        fields, d = self.fields, self.delimiters
        raw = fields[position] if 0 <= position < len(fields) else ""
        if not raw:
            return []
        if position <= 2 and fields[0] == "MSH":
            reps = [raw]
        else:
            reps = raw.split(d.repetition) if len(raw) < _LONG else split_on(raw, d.repetition)
        return [Composite(rep.split(d.component) if len(rep) < _LONG
                          else split_on(rep, d.component), d) for rep in reps]


@dataclass(frozen=True, slots=True)
class Composite:
    """One field repetition split into its components (as sent: escaped)."""

    parts: list[str]
    delimiters: Delimiters = field(default=DEFAULT_DELIMITERS, repr=False)

    def component(self, component: int, subcomponent: int | None = None) -> str:
        """Unescaped component (1-based), stripped of spaces: `Segment.component`'s reading."""
        parts = self.parts
        if len(parts) < component:
            return ""
        comp = parts[component - 1]
        if subcomponent is not None:
            d = self.delimiters
            subs = (comp.split(d.subcomponent) if len(comp) < _LONG
                    else split_on(comp, d.subcomponent))
            comp = subs[subcomponent - 1] if len(subs) >= subcomponent else ""
        return unescape(comp, self.delimiters).strip()


def component_of(
    raw_field: str, component: int = 1, subcomponent: int | None = None,
    d: Delimiters = DEFAULT_DELIMITERS,
) -> str:
    comps = (raw_field.split(d.component) if len(raw_field) < _LONG
             else split_on(raw_field, d.component))
    if len(comps) < component:
        return ""
    comp = comps[component - 1]
    if subcomponent is not None:
        subs = (comp.split(d.subcomponent) if len(comp) < _LONG
                else split_on(comp, d.subcomponent))
        comp = subs[subcomponent - 1] if len(subs) >= subcomponent else ""
    return unescape(comp, d).strip()


@dataclass(frozen=True, slots=True)
class Message:
    """A parsed ER7 message: its delimiters and its segments in order."""

    segments: tuple[Segment, ...]
    delimiters: Delimiters

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.fields[0] == name]

    def first(self, name: str) -> Segment | None:
        for s in self.segments:
            if s.fields[0] == name:
                return s
        return None

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)


def split_segments(text: str) -> list[str]:
    """Split on CR, LF or CRLF and drop blank lines (senders pad with them).

    str.replace and str.find (`split_on`) run at memchr speed; a regular expression costs ~20x
    more on the long base64 lines of ORU/MDM documents.
    """
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [s for s in split_on(text, "\r") if s and not s.isspace()]


def parse_segment(text: str, d: Delimiters, *, is_msh: bool = False) -> Segment:
    parts = split_on(text, d.field)
    if is_msh:
        # "MSH|^~\&|A|B" splits to ["MSH", "^~\&", "A", "B"]: re-insert MSH-1.
        parts.insert(1, d.field)
    seg_id = parts[0].strip()
    if seg_id not in _VALID_IDS and not _valid_id(seg_id):
        raise HL7ParseError(
            "segment id is not three upper-case letters or digits",
            condition=ErrorCondition.SEGMENT_SEQUENCE_ERROR,
        )
    parts[0] = seg_id
    return Segment(tuple(parts), d)


def _valid_id(seg_id: str) -> bool:
    if not _SEGMENT_ID.match(seg_id):
        return False
    _VALID_IDS.add(seg_id)  # at most 26 * 36 * 36 of them
    return True


_VALID_IDS: set[str] = set()


def parse_message(text: str) -> Message:
    """Parse ER7 text. Raises HL7ParseError (answered AE) on what cannot be read at all."""
    raw_segments = split_segments(text.lstrip("\ufeff"))
    if not raw_segments:
        raise HL7ParseError("empty message", location=ErrorLocation("MSH", 1))
    delimiters = Delimiters.from_msh(raw_segments[0])
    segments = [parse_segment(raw_segments[0], delimiters, is_msh=True)]
    for index, raw in enumerate(raw_segments[1:], start=2):
        try:
            segments.append(parse_segment(raw, delimiters))
        except HL7ParseError as exc:
            raise HL7ParseError(
                f"segment {index} has an invalid segment id",
                condition=ErrorCondition.SEGMENT_SEQUENCE_ERROR,
            ) from exc
    return Message(tuple(segments), delimiters)
