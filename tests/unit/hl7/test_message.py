"""The lean ER7 parser: every ANS fixture, separators, escapes, delimiters and what is refused."""

from __future__ import annotations

import base64
import string
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import ErrorLocation, HL7ParseError
from connector.hl7.codes import ErrorCondition
from connector.hl7.message import (
    DEFAULT_DELIMITERS,
    Delimiters,
    Message,
    Segment,
    component_of,
    escape,
    parse_message,
    split_on,
    split_segments,
    unescape,
)
from tests.conftest import HL7_FIXTURES

FIXTURE_FILES = sorted(p for p in HL7_FIXTURES.rglob("*") if p.suffix in (".er7", ".hl7"))

INS = "279035121518989"
INS_TEST_OID = "1.2.250.1.213.1.4.10"
# OBX-5 of the ten DMP/MSSanté Y/N metadata OBX: `N^^expandedYes-NoIndicator` or the `Y` one.
META = [26] * 10


@dataclass(frozen=True)
class Expected:
    segments: int
    msh9: str
    msh10: str
    obx5_sizes: list[int]
    ins_repetition: int | None = None  # which PID-3 repetition carries the INS, None: no PID


# Counted independently of the parser (awk over the files, split on '|').
EXPECTED: dict[str, Expected] = {
    "cisis-trans-cda-2.1/mdm-t02-initial/message-placeholder-cda.er7":
        Expected(21, "MDM^T02^MDM_T02", "015", [69, *META, 110], 1),
    "cisis-trans-cda-2.1/mdm-t02-initial/message.er7":
        Expected(21, "MDM^T02^MDM_T02", "015", [328173, *META, 110], 1),
    "cisis-trans-cda-2.1/mdm-t04-delete/ack.er7": Expected(2, "ACK^T04^ACK", "016", []),
    "cisis-trans-cda-2.1/mdm-t04-delete/message.er7":
        Expected(21, "MDM^T04^MDM_T02", "015", [328452, *META, 110], 1),
    "cisis-trans-cda-2.1/mdm-t10-replace/ack.er7": Expected(2, "ACK^T10^ACK", "016", []),
    "cisis-trans-cda-2.1/mdm-t10-replace/message.er7":
        Expected(21, "MDM^T10^MDM_T02", "015", [328449, *META, 110], 1),
    "cisis-trans-cda-2.1/oru-r01-delete/ack.er7": Expected(2, "ACK^R01^ACK", "016", []),
    "cisis-trans-cda-2.1/oru-r01-delete/message.er7":
        Expected(22, "ORU^R01^ORU_R01", "015", [608949, 208317, *META, 107], 1),
    "cisis-trans-cda-2.1/oru-r01-initial/ack.hl7": Expected(2, "ACK^R01^ACK", "016", []),
    "cisis-trans-cda-2.1/oru-r01-initial/message.hl7":
        Expected(22, "ORU^R01^ORU_R01", "015", [69, 69, *META, 107], 1),
    "cisis-trans-cda-2.1/oru-r01-initial/zam-z01-reception-dmp.hl7":
        Expected(4, "ZAM^Z01^ZAM_Z01", "017", [26]),
    "cisis-trans-cda-2.1/oru-r01-initial/zam-z02-reception-mss.hl7":
        Expected(4, "ZAM^Z02^ZAM_Z01", "018", [26, 40]),
    "cisis-trans-cda-2.1/oru-r01-initial/zam-z03-lecture-mss.hl7":
        Expected(4, "ZAM^Z03^ZAM_Z01", "019", [26, 40]),
    "cisis-trans-cda-2.1/oru-r01-replace/ack.er7": Expected(2, "ACK^R01^ACK", "016", []),
    "cisis-trans-cda-2.1/oru-r01-replace/message-placeholder-cda.er7":
        Expected(22, "ORU^R01^ORU_R01", "015", [69, 69, *META, 107], 1),
    "cisis-trans-cda-2.1/oru-r01-replace/message.er7":
        Expected(22, "ORU^R01^ORU_R01", "015", [608949, 208317, *META, 107], 1),
    "pam-fr-2.11/adt-a01-admission.er7": Expected(6, "ADT^A01^ADT_A01", "3975", [], 2),
    "pam-fr-2.11/adt-a03-discharge.er7": Expected(5, "ADT^A03^ADT_A03", "3995", [], 2),
    "pam-fr-2.11/consent/ConsentementConsultation_NonOppositionAlimentation.er7":
        Expected(11, "ADT^A01^ADT_A01", "3975", [], 2),
    "pam-fr-2.11/consent/NonConsentementConsultation_NonOppositionAlimentation.er7":
        Expected(11, "ADT^A01^ADT_A01", "3976", [], 2),
    "pam-fr-2.11/consent/NonConsentementConsultation_OppositionAlimentation.er7":
        Expected(11, "ADT^A01^ADT_A01", "3977", [], 2),
    "pam-fr-2.11/consent/NonRecueillieConsentementConsultation_NonOppositionAlimentation.er7":
        Expected(11, "ADT^A01^ADT_A01", "3978", [], 2),
}

MSH = "MSH|^~\\&|SIL-Y|labo|PFI-X|Organisation-X|202106060931||ORU^R01^ORU_R01|015|P|2.5"


def fixture_id(path: Path) -> str:
    return path.relative_to(HL7_FIXTURES).as_posix()


def read_fixture(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def condition_of(excinfo: pytest.ExceptionInfo[HL7ParseError]) -> str:
    return excinfo.value.condition.code


# -- fixtures -------------------------------------------------------------------------------------


def test_every_fixture_has_expectations() -> None:
    assert {fixture_id(p) for p in FIXTURE_FILES} == set(EXPECTED)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=fixture_id)
def test_fixture_parses_with_expected_values(path: Path) -> None:
    expected = EXPECTED[fixture_id(path)]
    message = parse_message(read_fixture(path))

    assert len(message.segments) == expected.segments
    assert message.msh.name == "MSH"
    assert message.delimiters == DEFAULT_DELIMITERS
    assert message.msh.raw(1) == "|"
    assert message.msh.raw(2) == "^~\\&"
    assert message.msh.raw(9) == expected.msh9
    assert message.msh.value(9) == expected.msh9.split("^")[0]
    assert message.msh.component(9, 2) == expected.msh9.split("^")[1]
    assert message.msh.value(10) == expected.msh10
    assert [len(obx.raw(5)) for obx in message.all("OBX")] == expected.obx5_sizes

    pid = message.first("PID")
    if expected.ins_repetition is None:
        assert pid is None
        return
    assert pid is not None
    rep = expected.ins_repetition
    assert len(pid.repetitions(3)) == rep
    assert pid.component(3, 1, repetition=rep) == INS
    assert pid.component(3, 4, 1, repetition=rep) == "ASIP-SANTE-INS-NIR"
    assert pid.component(3, 4, 2, repetition=rep) == INS_TEST_OID
    assert pid.component(3, 4, 3, repetition=rep) == "ISO"
    assert pid.component(3, 5, repetition=rep) == "INS"
    assert pid.component(3, 7, repetition=rep) == "20101207"
    assert pid.component(5, 1) == "PAT-TROIS"
    if rep == 2:  # PAM.FR: the IPP comes first
        assert pid.value(3) == "000003"
        assert pid.component(3, 4, 2) == "000897406"
        assert pid.component(3, 5) == "PI"


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=fixture_id)
def test_cr_lf_and_crlf_give_the_same_message(path: Path) -> None:
    text = read_fixture(path)
    assert "\r" not in text  # the ANS files use LF: the variants below are exact
    as_lf = parse_message(text)
    as_cr = parse_message(text.replace("\n", "\r"))
    as_crlf = parse_message(text.replace("\n", "\r\n"))
    padded = parse_message("\r\n\n" + text.replace("\n", "\n\r\n  \n") + "\n\n")
    assert as_cr == as_lf
    assert as_crlf == as_lf
    assert padded == as_lf


def test_mixed_separators_in_one_message() -> None:
    text = f"{MSH}\rPID|1||X\nPV1|1|I\r\nORC|NW\r\r\nOBR|1"
    message = parse_message(text)
    assert [s.name for s in message] == ["MSH", "PID", "PV1", "ORC", "OBR"]
    assert message.first("ORC") is not None
    assert message.first("ORC").value(1) == "NW"  # type: ignore[union-attr]


def test_split_segments_drops_blank_lines_only() -> None:
    assert split_segments("A|1\r\n\r\n   \nB|2 \r\t\rC") == ["A|1", "B|2 ", "C"]
    assert split_segments("") == []
    assert split_segments("\r\n\n\r") == []


def test_cda_obx_carries_base64_xml() -> None:
    path = HL7_FIXTURES / "cisis-trans-cda-2.1" / "oru-r01-delete" / "message.er7"
    obx = parse_message(read_fixture(path)).all("OBX")
    assert [obx[0].component(5, i) for i in (2, 3, 4)] == ["TEXT", "XML", "Base64"]
    data = obx[0].component(5, 5)
    assert len(data) == 608949 - len("^TEXT^XML^Base64^")
    assert base64.b64decode(data[:4000]).startswith(b"<?xml")
    assert obx[0].raw(11) == "D"  # deletion


def test_trailing_spaces_and_inner_spaces() -> None:
    """Known ANS defects: trailing no-break spaces after PRT, a space in `ASIP-SANTE- PS`."""
    path = HL7_FIXTURES / "cisis-trans-cda-2.1" / "mdm-t02-initial" / "message.er7"
    sender = parse_message(read_fixture(path)).all("PRT")[0]
    assert sender.raw(8).endswith("300017985" + "\u00a0" * 18)
    assert sender.component(8, 10) == "300017985"
    assert sender.component(5, 9, 1) == "ASIP-SANTE- PS"
    assert sender.component(5, 9, 2) == "1.2.250.1.71.4.2.1"


# -- segment access -------------------------------------------------------------------------------


def test_msh_positions_match_the_standard() -> None:
    message = parse_message(MSH + "|||||FRA|UNICODE UTF-8")
    msh = message.msh
    assert msh.fields[:4] == ("MSH", "|", "^~\\&", "SIL-Y")
    assert msh.repetitions(1) == ["|"]
    assert msh.repetitions(2) == ["^~\\&"]
    assert msh.value(3) == "SIL-Y"
    assert msh.value(12) == "2.5"
    assert msh.value(17) == "FRA"
    assert msh.value(18) == "UNICODE UTF-8"


def test_absent_positions_are_empty() -> None:
    message = parse_message(MSH + "\rPID|1||A^^^B&C&D~E")
    pid = message.first("PID")
    assert pid is not None
    assert pid.raw(0) == "PID"
    assert pid.raw(99) == ""
    assert pid.raw(-1) == ""
    assert pid.repetitions(2) == []
    assert pid.repetitions(3) == ["A^^^B&C&D", "E"]
    assert pid.component(3, 4, 3) == "D"
    assert pid.component(3, 4, 4) == ""
    assert pid.component(3, 9) == ""
    assert pid.component(3, 1, repetition=2) == "E"
    assert pid.component(3, 1, repetition=3) == ""
    assert message.first("ZZZ") is None
    assert message.all("ZZZ") == []


def test_values_are_unescaped_and_stripped() -> None:
    message = parse_message(MSH + "\rNTE|1||  a\\F\\b\\S\\c  ^x\\T\\y")
    nte = message.first("NTE")
    assert nte is not None
    assert nte.raw(3) == "  a\\F\\b\\S\\c  ^x\\T\\y"
    assert nte.value(3) == "a|b^c"
    assert nte.component(3, 2) == "x&y"


def test_segment_id_is_trimmed() -> None:
    message = parse_message(MSH + "\rPID |1\r ZBE|2")
    assert [s.name for s in message] == ["MSH", "PID", "ZBE"]


def test_message_iterates_in_order() -> None:
    message = parse_message(MSH + "\rEVN|1\rPID|2\rOBX|1\rOBX|2")
    assert isinstance(message, Message)
    assert [s.name for s in message] == ["MSH", "EVN", "PID", "OBX", "OBX"]
    assert [s.value(1) for s in message.all("OBX")] == ["1", "2"]


# -- escapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b", "a^b"),
        ("a\\T\\b", "a&b"),
        ("a\\R\\b", "a~b"),
        ("a\\E\\b", "a\\b"),
        ("\\X41\\", "A"),
        ("\\X414243\\", "ABC"),
        ("\\X0D0A\\", "\r\n"),
        ("line1\\.br\\line2", "line1\nline2"),
        ("\\H\\bold\\N\\", "bold"),
        ("a\\.sp2\\b", "ab"),
        ("a\\.in+4\\b", "ab"),
        ("unknown \\Q\\ kept", "unknown \\Q\\ kept"),
        ("bad hex \\XZZ\\ kept", "bad hex \\XZZ\\ kept"),
        ("odd hex \\X414\\ kept", "odd hex \\X414\\ kept"),
        ("lone \\ escape", "lone \\ escape"),
        ("no escape at all", "no escape at all"),
        ("\\E\\F\\E\\", "\\F\\"),
    ],
)
def test_unescape(raw: str, text: str) -> None:
    assert unescape(raw) == text


def test_unescape_with_custom_delimiters() -> None:
    d = Delimiters(field="#", component="$", repetition="*", escape="!", subcomponent="@")
    assert unescape("!F!!S!!R!!T!!E!", d) == "#$*@!"
    assert unescape("a\\F\\b", d) == "a\\F\\b"  # `\` is not the escape character here


def test_escape_known_values() -> None:
    assert escape("a|b^c~d&e\\f") == "a\\F\\b\\S\\c\\R\\d\\T\\e\\E\\f"
    assert escape("a\r\nb") == "a\\X0D\\\\X0A\\b"
    for line_break in ("\r", "\n", "\r\n"):
        escaped = escape(f"x{line_break}y")
        assert "\r" not in escaped
        assert "\n" not in escaped
        assert unescape(escaped) == f"x{line_break}y"


_DELIMITER_CHARS = sorted(set(string.punctuation) | {"§", "¤"})


# Arbitrary text, with delimiters, escape-like sequences and line breaks made frequent.
texts = st.text(
    alphabet=st.one_of(
        st.characters(),
        st.sampled_from(["\r", "\n", "\\", "X", "0", "D", "A", ".", "b", "r", *_DELIMITER_CHARS]),
    ),
)


@st.composite
def delimiters(draw: st.DrawFn) -> Delimiters:
    chars = draw(st.lists(st.sampled_from(_DELIMITER_CHARS), min_size=5, max_size=5, unique=True))
    return Delimiters(*chars)


@given(texts)
def test_escape_round_trip_default_delimiters(text: str) -> None:
    assert unescape(escape(text)) == text


@given(texts, delimiters())
def test_escape_round_trip_and_safety(text: str, d: Delimiters) -> None:
    escaped = escape(text, d)
    assert unescape(escaped, d) == text
    for forbidden in (d.field, d.component, d.repetition, d.subcomponent, "\r", "\n"):
        assert forbidden not in escaped


@given(texts, delimiters())
def test_escaped_value_survives_a_parse(text: str, d: Delimiters) -> None:
    enc = d.encoding_characters
    msh = f"MSH{d.field}{enc}{d.field}APP"
    message = parse_message(f"{msh}\rNTE{d.field}{escape(text, d)}{d.field}end")
    nte = message.segments[1]
    assert message.delimiters == d
    assert len(nte.fields) == 3
    assert unescape(nte.raw(1), d) == text
    assert nte.raw(2) == "end"


@given(delimiters())
def test_delimiters_read_back_from_msh(d: Delimiters) -> None:
    msh = f"MSH{d.field}{d.encoding_characters}{d.field}A{d.field}B"
    assert Delimiters.from_msh(msh) == d
    assert Delimiters.from_msh(f"MSH{d.field}{d.encoding_characters}") == d


def test_v27_truncation_character_is_accepted() -> None:
    assert Delimiters.from_msh("MSH|^~\\&#|A") == DEFAULT_DELIMITERS


# -- what is refused ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "msh",
    [
        "MSH|^^\\&|A|B",  # duplicate component/repetition
        "MSH|^~\\^|A|B",  # duplicate component/subcomponent
        "MSH|^~|&|A|B",  # MSH-2 cut short by the field separator
        "MSH|^~A&|A|B",  # alphanumeric encoding character
        "MSH1^~\\&1A1B",  # alphanumeric field separator
        "MSH ^~\\& A B",  # space as field separator
        "MSH|^ \\&|A|B",  # space as an encoding character
        "MSH|^~\\|A|B",  # MSH-2 too short (3)
        "MSH||A|B|C",  # MSH-2 empty
        "MSH|^~\\&^~|A",  # MSH-2 too long (6)
        "MSH|^~\\&^|A",  # fifth (truncation) character duplicates the component separator
        "MSH|^~",  # segment too short to hold MSH-1 and MSH-2
        "MSH|",
        "MSH",
    ],
)
def test_invalid_msh1_msh2_is_a_data_type_error(msh: str) -> None:
    with pytest.raises(HL7ParseError) as excinfo:
        parse_message(msh + "\rPID|1")
    assert condition_of(excinfo) == ErrorCondition.DATA_TYPE_ERROR.code == "102"
    assert excinfo.value.location is not None
    assert excinfo.value.location.segment == "MSH"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\r\n\r\n",
        "PID|1||X",
        "EVN||2024\r" + MSH,  # MSH not first
        " MSH|^~\\&|A",  # MSH not at the start of its line
        "MSG|^~\\&|A",
    ],
)
def test_missing_msh_is_a_segment_sequence_error(text: str) -> None:
    with pytest.raises(HL7ParseError) as excinfo:
        parse_message(text)
    assert condition_of(excinfo) == ErrorCondition.SEGMENT_SEQUENCE_ERROR.code == "100"
    assert excinfo.value.location == ErrorLocation("MSH", 1)


@pytest.mark.parametrize("segment", ["pid|1", "PI|1", "PIDX|1", "1ID|1", "P-D|1", "|1", "É12|1"])
def test_bad_segment_id(segment: str) -> None:
    with pytest.raises(HL7ParseError, match="segment 3") as excinfo:
        parse_message(f"{MSH}\rEVN|1\r{segment}\rPV1|1")
    assert condition_of(excinfo) == "100"


@pytest.mark.parametrize("segment", ["ZBE|1", "PV1|1", "ZFA|1", "Z01|1", "OBX"])
def test_good_segment_ids(segment: str) -> None:
    message = parse_message(f"{MSH}\r{segment}")
    assert message.segments[1].name == segment.split("|")[0]


def test_bom_is_tolerated() -> None:
    assert parse_message("\ufeff" + MSH) == parse_message(MSH)


def test_escape_keeps_mllp_block_characters_off_the_wire() -> None:
    from connector.hl7.message import escape, unescape

    value = "a\x0bb\x1cc\r\nd"
    escaped = escape(value)
    assert "\x0b" not in escaped
    assert "\x1c" not in escaped
    assert unescape(escaped) == value


# -- component access -----------------------------------------------------------------------------

field_texts = st.text(alphabet=st.sampled_from(["a", " ", "|", "^", "~", "&", "\\", "F", "S"]),
                      max_size=24)


@given(st.lists(field_texts, max_size=6), st.sampled_from(["MSH", "PID"]),
       st.integers(-1, 7), st.integers(1, 4), st.sampled_from([None, 1, 2]), st.integers(1, 3))
def test_component_is_component_of_the_repetition(
        fields: list[str], name: str, position: int, component: int, subcomponent: int | None,
        repetition: int) -> None:
    """`Segment.component` (inlined for speed) agrees with its definition: `component_of` of
    the field's repetition, '' when the field or the repetition is absent."""
    segment = Segment((name, *fields))
    reps = segment.repetitions(position)
    expected = (component_of(reps[repetition - 1], component, subcomponent)
                if len(reps) >= repetition else "")
    assert segment.component(position, component, subcomponent, repetition) == expected


@given(st.lists(field_texts, max_size=6), st.sampled_from(["MSH", "PID"]),
       st.integers(-1, 7), st.integers(1, 4), st.sampled_from([None, 1, 2]))
def test_composites_read_what_component_reads(
        fields: list[str], name: str, position: int, component: int,
        subcomponent: int | None) -> None:
    """`Segment.composites` (each repetition split once) reads every component as
    `Segment.component` does, repetition by repetition, and has one composite per repetition."""
    segment = Segment((name, *fields))
    composites = segment.composites(position)
    assert len(composites) == len(segment.repetitions(position))
    for n, composite in enumerate(composites, start=1):
        assert (composite.component(component, subcomponent)
                == segment.component(position, component, subcomponent, n))


def test_composites_use_the_message_delimiters() -> None:
    pid = parse_message("MSH#$*!@#A\rPID#1##1$$$X@Y$PI*2$$$Z$INS#\r").segments[1]
    first, second = pid.composites(3)
    assert (first.component(1), first.component(4, 1), first.component(4, 2),
            first.component(5)) == ("1", "X", "Y", "PI")
    assert (second.component(1), second.component(4), second.component(5)) == ("2", "Z", "INS")
    assert pid.composites(9) == []
    assert pid.composite(3) == first  # the first repetition
    assert pid.composite(9).component(1) == ""  # absent: every component reads ""


def test_msh1_and_msh2_do_not_repeat() -> None:
    msh = parse_message("MSH|^~\\&|A~B|C\r").msh
    assert msh.repetitions(2) == ["^~\\&"]
    assert msh.component(2, 1, repetition=2) == ""
    assert msh.component(3, 1, repetition=2) == "B"


def test_delimiters_checked_once_still_refuse_bad_ones() -> None:
    """`Delimiters.from_msh` remembers the MSH-1/MSH-2 it accepted, not the ones it refused."""
    for _ in range(2):
        assert Delimiters.from_msh("MSH#$*!@#A") == Delimiters("#", "$", "*", "!", "@")
        with pytest.raises(HL7ParseError):
            Delimiters.from_msh("MSH#$*!$#A")
    assert Delimiters.from_msh("MSH|^~\\&") == DEFAULT_DELIMITERS
    assert Delimiters.from_msh("MSH|^~\\&#|A").encoding_characters == "^~\\&"


@pytest.mark.parametrize("value", ["ABC123", "20240306", "P", "é", "", "2.5", "A B"])
def test_escape_leaves_plain_values_as_they_are(value: str) -> None:
    assert escape(value) == value


@given(st.text(alphabet="ab|^~\r\n\u00e9\U0001f600", max_size=6000),
       st.sampled_from(["|", "^", "~", "&", "\r", "\u00e9"]))
def test_split_on_is_str_split(text: str, separator: str) -> None:
    assert split_on(text, separator) == text.split(separator)


def test_long_segments_parse_like_short_ones() -> None:
    obx = "OBX|1|ED|11502-2^CR^LN||^application^pdf^Base64^" + "QUJD" * 20_000 + "||||||F"
    message = parse_message("MSH|^~\\&|A|B|C|D|20240101||ORU^R01|1|P|2.5\r" + obx + "\r")
    segment = message.segments[1]
    assert segment.fields == tuple(obx.split("|"))
    assert segment.component(5, 5) == "QUJD" * 20_000
    assert segment.component(5, 3) == "pdf"
