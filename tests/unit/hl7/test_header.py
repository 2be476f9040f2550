"""MSH as a value, charset resolution, decoding and best-effort salvage of broken headers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import ErrorLocation, HL7ParseError
from connector.hl7.ack import build_ack
from connector.hl7.codes import AckCode, AcknowledgmentCondition
from connector.hl7.header import (
    MessageHeader,
    MessageType,
    decode_message,
    msh18_for_codec,
    read_header,
    resolve_codec,
    salvage_header,
)
from connector.hl7.message import DEFAULT_DELIMITERS, Delimiters, parse_message
from tests.conftest import CISIS_FIXTURES, HL7_FIXTURES

ORU = CISIS_FIXTURES / "oru-r01-delete" / "message.er7"
ADT = HL7_FIXTURES / "pam-fr-2.11" / "adt-a01-admission.er7"


def msh(msh18: str = "", *, msh15: str = "", msh16: str = "") -> str:
    return (f"MSH|^~\\&|SIL-Y|labo|PFI-X|Organisation-X|202106060931||ORU^R01^ORU_R01|015|P|2.5"
            f"|||{msh15}|{msh16}|FRA|{msh18}|||2.1^CISIS_CDA_HL7_V2")


def header(**kwargs: str) -> MessageHeader:
    return read_header(msh(**kwargs))


# -- read_header ----------------------------------------------------------------------------------


def test_read_header_cisis_oru() -> None:
    h = read_header(ORU.read_bytes().decode("utf-8"))
    assert h.delimiters == DEFAULT_DELIMITERS
    assert (h.sending_application, h.sending_facility) == ("SIL-Y", "labo")
    assert (h.receiving_application, h.receiving_facility) == ("PFI-X", "Organisation-X")
    assert h.timestamp == "202106060931"
    assert h.message_type == MessageType("ORU", "R01", "ORU_R01")
    assert str(h.message_type) == "ORU^R01"
    assert h.control_id == "015"
    assert h.processing_id == "P"
    assert (h.version_id, h.version_raw) == ("2.5", "2.5")
    assert (h.accept_ack_type, h.application_ack_type) == ("", "")
    assert not h.enhanced_mode
    assert h.accept_ack_condition is AcknowledgmentCondition.ALWAYS
    assert h.country == "FRA"
    assert h.charset == "UNICODE UTF-8"
    assert h.profile == "2.1^CISIS_CDA_HL7_V2"


def test_read_header_pam_fr_adt() -> None:
    h = read_header(ADT.read_bytes().decode("utf-8"))
    assert h.message_type == MessageType("ADT", "A01", "ADT_A01")
    assert h.control_id == "3975"
    assert h.processing_id == "D"
    assert h.version_id == "2.5"
    assert h.version_raw == "2.5^FRA^2.11"
    assert h.profile == "2.11^IHE_FRANCE-2.11-PAM"


@pytest.mark.parametrize(
    "path",
    sorted(p for p in HL7_FIXTURES.rglob("*") if p.suffix in (".er7", ".hl7")),
    ids=lambda p: p.relative_to(HL7_FIXTURES).as_posix(),
)
def test_read_header_agrees_with_the_full_parse(path: Path) -> None:
    text = path.read_bytes().decode("utf-8")
    h = read_header(text)
    m = parse_message(text).msh
    assert h.control_id == m.value(10)
    assert h.sending_application == m.raw(3)
    assert h.receiving_facility == m.raw(6)
    assert f"{h.message_type.code}^{h.message_type.event}^{h.message_type.structure}" == m.raw(9)
    assert h.charset == m.value(18)


def test_read_header_looks_at_the_first_segment_only() -> None:
    h = read_header(msh() + "\rpid|this segment id is invalid\r\x00garbage")
    assert h.control_id == "015"
    with pytest.raises(HL7ParseError):
        parse_message(msh() + "\rpid|this segment id is invalid")


def test_message_type_is_upper_cased_and_trimmed() -> None:
    h = read_header("MSH|^~\\&|A|B|C|D|2024||oru ^ r01 |1|P|2.5")
    assert h.message_type == MessageType("ORU", "R01", "")
    assert str(MessageType("ACK", "", "")) == "ACK"


@pytest.mark.parametrize(
    ("msh15", "msh16", "enhanced", "condition"),
    [
        ("", "", False, AcknowledgmentCondition.ALWAYS),
        ("AL", "", True, AcknowledgmentCondition.ALWAYS),
        ("ne", "", True, AcknowledgmentCondition.NEVER),
        ("ER", "NE", True, AcknowledgmentCondition.ERROR_ONLY),
        ("SU", "", True, AcknowledgmentCondition.SUCCESS_ONLY),
        ("", "AL", True, AcknowledgmentCondition.ALWAYS),
        ("XX", "", True, AcknowledgmentCondition.ALWAYS),
    ],
)
def test_acknowledgment_mode(
    msh15: str, msh16: str, enhanced: bool, condition: AcknowledgmentCondition
) -> None:
    h = header(msh15=msh15, msh16=msh16)
    assert h.enhanced_mode is enhanced
    assert h.accept_ack_condition is condition


@pytest.mark.parametrize("prefix", ["\ufeff", "\r\n", "\n\n", " \t\ufeff\r"])
def test_bom_and_blank_lines_before_msh_are_tolerated(prefix: str) -> None:
    assert read_header(prefix + msh()) == header()


@pytest.mark.parametrize("prefix", ["X", "EVN|1\r", "junk\n", "\x0b", "0"])
def test_data_before_msh_is_refused(prefix: str) -> None:
    with pytest.raises(HL7ParseError, match="before the MSH") as excinfo:
        read_header(prefix + msh())
    assert excinfo.value.condition.code == "100"
    assert excinfo.value.location == ErrorLocation("MSH", 1)


@pytest.mark.parametrize("text", ["", "PID|1", "\r\n"])
def test_read_header_without_msh(text: str) -> None:
    with pytest.raises(HL7ParseError) as excinfo:
        read_header(text)
    assert excinfo.value.condition.code == "100"


def test_read_header_invalid_delimiters() -> None:
    with pytest.raises(HL7ParseError) as excinfo:
        read_header("MSH|^^\\&|A|B")
    assert excinfo.value.condition.code == "102"


# -- charset --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msh18", "codec"),
    [
        ("UNICODE UTF-8", "utf-8"),
        ("unicode utf-8", "utf-8"),
        ("UNICODE  UTF-8", "utf-8"),
        (" UNICODE UTF-8 ", "utf-8"),
        ("UTF-8", "utf-8"),
        ("8859/1", "iso-8859-1"),
        ("8859/15", "iso-8859-15"),
        ("ASCII", "ascii"),
        ("", "cp1252"),  # not declared: the default
    ],
)
def test_msh18_mapping(msh18: str, codec: str) -> None:
    raw = msh(msh18).encode("ascii")
    assert resolve_codec(raw, forced=None, default="cp1252") == codec


def test_8859_15_euro_sign() -> None:
    raw = msh("8859/15").encode("ascii") + b"\rNTE|1||Prix 10 \xa4\r"
    codec = resolve_codec(raw, forced=None, default="utf-8")
    text = decode_message(raw, codec)
    nte = parse_message(text).first("NTE")
    assert nte is not None
    assert nte.value(3) == "Prix 10 €"  # 0xA4 is `¤` in 8859-1 but `€` in 8859-15


def test_8859_1_keeps_currency_sign() -> None:
    raw = msh("8859/1").encode("ascii") + b"\rNTE|1||\xa4\xe9"
    text = decode_message(raw, resolve_codec(raw, forced=None, default="utf-8"))
    assert text.endswith("¤é")


def test_forced_charset_wins() -> None:
    raw = msh("8859/15").encode("ascii") + "\rNTE|1||é€".encode()
    codec = resolve_codec(raw, forced="utf-8", default="ascii")
    assert codec == "utf-8"
    assert decode_message(raw, codec).endswith("é€")


def test_forced_charset_wins_over_an_unknown_msh18() -> None:
    raw = msh("KLINGON").encode("ascii")
    assert resolve_codec(raw, forced="iso-8859-15", default="utf-8") == "iso-8859-15"


@pytest.mark.parametrize("msh18", ["KLINGON", "UNICODE UTF-16", "8859/10", "ISO IR192"])
def test_unknown_msh18_is_table_value_not_found(msh18: str) -> None:
    with pytest.raises(HL7ParseError) as excinfo:
        resolve_codec(msh(msh18).encode("ascii"), forced=None, default="utf-8")
    assert excinfo.value.condition.code == "103"
    assert excinfo.value.location == ErrorLocation("MSH", 1, 18)


def test_invalid_utf8_is_a_data_type_error() -> None:
    raw = msh("UNICODE UTF-8").encode("ascii") + b"\rPID|1||\xc3\x28"
    codec = resolve_codec(raw, forced=None, default="ascii")
    with pytest.raises(HL7ParseError, match="offset") as excinfo:
        decode_message(raw, codec)
    assert excinfo.value.condition.code == "102"
    assert excinfo.value.location == ErrorLocation("MSH", 1, 18)


def test_non_ascii_byte_in_an_ascii_message() -> None:
    raw = msh("ASCII").encode("ascii") + b"\rPID|1||\xe9"
    with pytest.raises(HL7ParseError) as excinfo:
        decode_message(raw, resolve_codec(raw, forced=None, default="utf-8"))
    assert excinfo.value.condition.code == "102"


def test_utf8_bom_is_tolerated_end_to_end() -> None:
    raw = b"\xef\xbb\xbf" + msh("UNICODE UTF-8").encode("ascii") + "\rPID|1||é".encode()
    codec = resolve_codec(raw, forced=None, default="ascii")
    assert codec == "utf-8"
    text = decode_message(raw, codec)
    assert read_header(text).control_id == "015"
    pid = parse_message(text).first("PID")
    assert pid is not None
    assert pid.value(3) == "é"


@pytest.mark.parametrize(("first_segment", "codec"), [
    ("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5", "cp1252"),  # MSH-18 absent
    ("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5||||||8859/1", "iso-8859-1"),  # the last
    ("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5||||||8859/15~UNICODE UTF-8^x|FR",
     "iso-8859-15"),  # its first repetition, first component
    ("MSH#$*!@#A#B#C#D#20240101##ADT$A01#1#P#2.5######UNICODE UTF-8", "utf-8"),
])
def test_resolve_codec_reads_msh18_alone(first_segment: str, codec: str) -> None:
    for rest in ("\rPID|1||X\r", "\nPID|1||X\n", "\r\nPID|1||X\r\n", ""):
        raw = f"{first_segment}{rest}".encode("ascii")
        assert resolve_codec(raw, forced=None, default="cp1252") == codec


def test_first_segment_ends_at_the_first_line_break() -> None:
    """An LF before the first CR ends the MSH too (an LF after it belongs to another line)."""
    raw = msh("8859/1").encode("ascii") + b"\nPID|1\rNTE|1||UTF-8\n"
    assert resolve_codec(raw, forced=None, default="utf-8") == "iso-8859-1"
    assert read_header(raw.decode("ascii")).charset == "8859/1"
    assert salvage_header(b"MSH|^~\\&|A||||||||||||||KOI8\nPID|1\r") is not None


def test_resolve_codec_without_msh() -> None:
    with pytest.raises(HL7ParseError) as excinfo:
        resolve_codec(b"PID|1||X", forced=None, default="utf-8")
    assert excinfo.value.condition.code == "100"


def test_resolve_codec_reads_the_fixtures() -> None:
    for path in (ORU, ADT):
        assert resolve_codec(path.read_bytes(), forced=None, default="ascii") == "utf-8"


@pytest.mark.parametrize(
    ("codec", "msh18"),
    [("utf-8", "UNICODE UTF-8"), ("UTF8", "UNICODE UTF-8"), ("iso-8859-15", "8859/15"),
     ("latin-1", "8859/1"), ("ascii", "ASCII"), ("cp1252", "8859/1"), ("iso8859-2", "8859/2"),
     ("cp850", "")],
)
def test_msh18_for_codec(codec: str, msh18: str) -> None:
    assert msh18_for_codec(codec) == msh18


# -- salvage --------------------------------------------------------------------------------------


def test_salvage_undecodable_message_keeps_msh10() -> None:
    raw = msh("UNICODE UTF-8").encode("ascii") + b"\rPID|1||\xff\xfe"
    h = salvage_header(raw)
    assert h is not None
    assert h.control_id == "015"
    assert h.sending_application == "SIL-Y"


def test_salvage_with_invalid_msh2_keeps_msh10() -> None:
    h = salvage_header(b"MSH|^~\\|SIL-Y|labo|PFI-X|Org|2024||ORU^R01|CTRL-7|P|2.5")
    assert h is not None
    assert h.control_id == "CTRL-7"
    assert h.delimiters.field == "|"


def test_salvage_after_junk_and_with_unknown_charset() -> None:
    h = salvage_header(b"\x00\xff junk " + msh("KLINGON").encode("ascii"))
    assert h is not None
    assert h.control_id == "015"


def test_salvage_keeps_custom_delimiters() -> None:
    h = salvage_header(b"MSH#$*!@#A#B#C#D#2024##ORU$R01#ID!F!1#P#2.5")
    assert h is not None
    assert h.delimiters == Delimiters("#", "$", "*", "!", "@")
    assert h.control_id == "ID#1"
    assert h.message_type == MessageType("ORU", "R01", "")


def test_salvage_odd_but_valid_delimiters() -> None:
    """`^` as MSH-1 is legal when MSH-2 does not use it; the ACK then uses the same set."""
    raw = b"MSH^~|\\&^APP|X^FAC^R^F^T^^ORU~R01^ID9^P^2.5\rpid^bad"
    h = salvage_header(raw)
    assert h is not None
    assert h.delimiters == Delimiters("^", "~", "|", "\\", "&")
    assert h.control_id == "ID9"
    assert h.sending_application == "APP|X"
    ack = parse_message(build_ack(h, AckCode.APPLICATION_ERROR, control_id="A1", timestamp="1"))
    assert ack.msh.raw(5) == "APP|X"
    assert ack.msh.raw(9) == "ACK~R01~ACK"
    assert ack.segments[1].value(2) == "ID9"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage",
        b"MSX|^~\\&",
        b"MSHA^~\\&A1A2A3A4A5A6A7A8A9A10",  # alphanumeric field separator: unusable
        b"MSH ^~\\& a b c",  # space: unusable
        b"MSH^~\\&^A^B^C^D^2024^^ORU^ID9",  # `^` as MSH-1 and in MSH-2: unusable
    ],
)
def test_salvage_gives_up_on_unusable_input(raw: bytes) -> None:
    assert salvage_header(raw) is None


# Bytes that look like an MSH often: a real prefix, delimiters and separators, then noise.
_salvage_input = st.builds(
    lambda prefix, body: prefix + body,
    st.sampled_from([b"", b"MSH", b"MSH|", b"MSH|^~\\&|", b"junk\rMSH|^~\\|", b"\xef\xbb\xbfMSH"]),
    st.lists(
        st.one_of(st.sampled_from([b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"MSH",
                                   b"\\F\\", b"\\X0D\\", b"A"]),
                  st.binary(max_size=4)),
        max_size=40,
    ).map(b"".join),
)


@given(_salvage_input)
def test_salvage_never_raises_and_its_header_builds_a_well_formed_ack(raw: bytes) -> None:
    h = salvage_header(raw)
    ack = build_ack(h, AckCode.APPLICATION_ERROR, control_id="ACK1", timestamp="20240101")
    parsed = parse_message(ack)
    assert [s.name for s in parsed] == ["MSH", "MSA"]
    assert len(parsed.msh.fields) == 19
    assert parsed.msh.value(10) == "ACK1"
    msa = parsed.segments[1]
    assert len(msa.fields) == 3
    assert msa.value(1) == "AE"
    assert msa.value(2) == (h.control_id if h is not None else "")


def test_codec_or_default_answers_an_unknown_msh18_in_the_default() -> None:
    from connector.hl7.header import codec_or_default

    assert codec_or_default(msh("8859/15").encode("ascii"), forced=None,
                            default="utf-8") == "iso-8859-15"
    assert codec_or_default(msh("KLINGON").encode("ascii"), forced=None,
                            default="utf-8") == "utf-8"
    assert codec_or_default(msh("KLINGON").encode("ascii"), forced="cp1252",
                            default="utf-8") == "cp1252"
