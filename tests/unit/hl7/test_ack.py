"""The acknowledgement builder against the CI-SIS rules and the ANS example ACKs."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import ErrorLocation, HL7ParseError, MessageError, ProfileError
from connector.hl7 import ack as ack_module
from connector.hl7.ack import (
    AckError,
    AckIdentity,
    ControlIdGenerator,
    Outcome,
    build_ack,
    choose_ack_code,
    hl7_timestamp,
)
from connector.hl7.codes import AckCode, ApplicationError, ErrorCondition, Severity
from connector.hl7.header import MessageHeader, read_header
from connector.hl7.message import Delimiters, Message, escape, parse_message
from tests.conftest import CISIS_FIXTURES

# (directory, original message, the ANS example ACK for it)
PAIRS = [
    ("mdm-t04-delete", "message.er7", "ack.er7"),
    ("mdm-t10-replace", "message.er7", "ack.er7"),
    ("oru-r01-delete", "message.er7", "ack.er7"),
    ("oru-r01-initial", "message.hl7", "ack.hl7"),
    ("oru-r01-replace", "message.er7", "ack.er7"),
]
COMPARED_MSH = (3, 4, 5, 6, 9, 11, 12, 17, 18)
SWAPPED = {3: 5, 4: 6, 5: 3, 6: 4}
# Where the ANS example ACKs contradict the volet's own rules (and their sibling examples), the
# connector follows the rules. Listed so that the test notices if the fixtures change.
FIXTURE_DEFECTS = {
    ("mdm-t04-delete", 3): "PFI-X",  # the original's MSH-5 is PFI-Y (as in mdm-t10-replace)
    ("oru-r01-delete", 18): "8859/15",  # the original's MSH-18 is UNICODE UTF-8: echoed
    ("oru-r01-replace", 18): "8859/15",
}

BASE_MSH = "MSH|^~\\&|SIL-Y|labo|PFI-X|Organisation-X|202106060931||ORU^R01^ORU_R01|015|P|2.5"


def header_with(msh15: str = "", msh16: str = "") -> MessageHeader:
    return read_header(f"{BASE_MSH}|||{msh15}|{msh16}|FRA|8859/15")


def ack_of(header: MessageHeader | None, code: AckCode = AckCode.APPLICATION_ACCEPT,
           **kwargs: object) -> Message:
    text = build_ack(header, code, control_id=str(kwargs.pop("control_id", "ACK42")),
                     timestamp="20240102030405", **kwargs)  # type: ignore[arg-type]
    assert text.endswith("\r")
    assert "\n" not in text
    return parse_message(text)


# -- against the ANS examples ---------------------------------------------------------------------


@pytest.mark.parametrize(("directory", "message", "ack"), PAIRS, ids=[p[0] for p in PAIRS])
def test_ack_matches_the_ans_example(directory: str, message: str, ack: str) -> None:
    original_text = (CISIS_FIXTURES / directory / message).read_bytes().decode("utf-8")
    original = parse_message(original_text).msh
    expected = parse_message((CISIS_FIXTURES / directory / ack).read_bytes().decode("utf-8"))

    built_text = build_ack(read_header(original_text), AckCode.APPLICATION_ACCEPT,
                           control_id="NEW-ID-1")
    built = parse_message(built_text)

    assert [s.name for s in built] == [s.name for s in expected] == ["MSH", "MSA"]
    for position in COMPARED_MSH:
        defect = FIXTURE_DEFECTS.get((directory, position))
        if defect is None:
            assert built.msh.raw(position) == expected.msh.raw(position), f"MSH-{position}"
        else:
            assert expected.msh.raw(position) == defect
            assert built.msh.raw(position) == original.raw(SWAPPED.get(position, position))
    for position, source in SWAPPED.items():
        assert built.msh.raw(position) == original.raw(source)
    assert built.msh.raw(10) == "NEW-ID-1"
    assert re.fullmatch(r"\d{14}[+-]\d{4}", built.msh.raw(7))
    assert original.raw(21) == "2.1^CISIS_CDA_HL7_V2"
    assert len(built.msh.fields) == 19  # stops at MSH-18: no MSH-21
    assert built.msh.raw(21) == ""
    assert built.segments[1].fields == expected.segments[1].fields == ("MSA", "AA", "015")


def test_ack_for_pam_fr_echoes_the_full_version() -> None:
    h = read_header("MSH|^~\\&|GAM|CHU-X|DPI|CHU-X|20240306111154||ADT^A01^ADT_A01|3975|D|"
                    "2.5^FRA^2.11|||||FRA|UNICODE UTF-8|FR||2.11^IHE_FRANCE-2.11-PAM")
    ack = ack_of(h)
    assert ack.msh.raw(9) == "ACK^A01^ACK"
    assert ack.msh.raw(11) == "D"
    assert ack.msh.raw(12) == "2.5^FRA^2.11"
    assert ack.msh.raw(18) == "UNICODE UTF-8"
    assert ack.msh.raw(19) == ""


# -- MSH and MSA ----------------------------------------------------------------------------------


def test_exact_ack_text() -> None:
    h = header_with()
    text = build_ack(h, AckCode.APPLICATION_ACCEPT, control_id="016", timestamp="202106060931")
    assert text == ("MSH|^~\\&|PFI-X|Organisation-X|SIL-Y|labo|202106060931||ACK^R01^ACK|016|P|2.5"
                    "|||||FRA|8859/15\rMSA|AA|015\r")


def test_identity_fills_empty_msh5_msh6() -> None:
    h = read_header("MSH|^~\\&|SIL|LAB|||2024||ORU^R01^ORU_R01|9|T|2.5")
    ack = ack_of(h, identity=AckIdentity("PFI|ONE", "CHU&X"), charset_msh18="UNICODE UTF-8")
    assert ack.msh.raw(3) == "PFI\\F\\ONE"
    assert ack.msh.value(3) == "PFI|ONE"
    assert ack.msh.value(4) == "CHU&X"
    assert (ack.msh.raw(5), ack.msh.raw(6)) == ("SIL", "LAB")
    assert ack.msh.raw(11) == "T"
    assert ack.msh.raw(17) == "FRA"  # default when the original has none
    assert ack.msh.raw(18) == "UNICODE UTF-8"  # charset_msh18 when the original has none


def test_msh18_names_the_charset_the_ack_is_written_in() -> None:
    """The caller's `charset_msh18` (the codec it encodes the ACK with) wins over the
    original's MSH-18: they differ when a listener forces its charset or MSH-18 is unsupported.
    Without it, the original's is echoed."""
    assert ack_of(header_with(), charset_msh18="UNICODE UTF-8").msh.raw(18) == "UNICODE UTF-8"
    assert ack_of(header_with()).msh.raw(18) == "8859/15"
    # A codec table 0211 does not name (a listener forcing cp850): MSH-18 empty, never the
    # request's own (which would name a charset the ACK is not written in).
    assert ack_of(header_with(), charset_msh18="").msh.raw(18) == ""


def test_ack_without_header() -> None:
    ack = ack_of(None, AckCode.APPLICATION_ERROR, charset_msh18="UNICODE UTF-8",
                 errors=[AckError(ErrorCondition.SEGMENT_SEQUENCE_ERROR)])
    msh = ack.msh
    assert msh.raw(3) == "MSSANTE-CONNECTOR"
    assert (msh.raw(4), msh.raw(5), msh.raw(6)) == ("", "", "")
    assert msh.raw(9) == "ACK"
    assert (msh.raw(11), msh.raw(12), msh.raw(17), msh.raw(18)) == ("P", "2.5", "FRA",
                                                                      "UNICODE UTF-8")
    assert ack.segments[1].fields == ("MSA", "AE", "")
    assert ack.segments[2].raw(3) == "100^Segment sequence error^messageErrorCondition"


def test_hostile_echoed_values_cannot_break_the_msh() -> None:
    """MSH-10/11/17/18 are read unescaped; they must be escaped again on the way out."""
    h = read_header("MSH|^~\\&|A|B|C|D|2024||ORU^R01|ID\\F\\1\\S\\x|P\\F\\X|2.5|||||FR\\F\\A"
                    "|UTF\\F\\8")
    ack = ack_of(h)
    assert len(ack.msh.fields) == 19
    assert ack.msh.value(11) == "P|X"
    assert ack.msh.value(12) == "2.5"
    assert ack.msh.value(17) == "FR|A"
    assert ack.msh.value(18) == "UTF|8"
    assert ack.segments[1].fields == ("MSA", "AA", "ID\\F\\1\\S\\x")
    assert ack.segments[1].value(2) == "ID|1^x"


def test_custom_delimiters_are_kept() -> None:
    h = read_header("MSH#$*!@#APP#FAC#PFI#ORG#2024##MDM$T10$MDM_T02#C!F!1#P#2.6")
    text = build_ack(h, AckCode.APPLICATION_ACCEPT, control_id="X1", timestamp="2024")
    assert text.startswith("MSH#$*!@#PFI#ORG#APP#FAC#2024##ACK$T10$ACK#X1#P#2.6#")
    ack = parse_message(text)
    assert ack.delimiters == Delimiters("#", "$", "*", "!", "@")
    assert ack.segments[1].raw(2) == "C!F!1"
    assert ack.segments[1].value(2) == "C#1"


def test_default_version_is_escaped_when_dot_is_a_delimiter() -> None:
    h = read_header("MSH.^~\\&.A.B.C.D.2024..ORU^R01.ID7.P")  # `.` as field separator, no MSH-12
    ack = ack_of(h)
    assert len(ack.msh.fields) == 19
    assert ack.msh.value(12) == "2.5"
    assert ack.segments[1].value(2) == "ID7"


def test_hl7_timestamp() -> None:
    assert hl7_timestamp(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "20240102030405+0000"
    assert re.fullmatch(r"\d{14}[+-]\d{4}", hl7_timestamp())


def test_hl7_timestamp_of_now_follows_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Now is formatted once a second: the same text within a second, the next one after."""
    clock = [1_709_720_000.25]
    monkeypatch.setattr(ack_module.time, "time", lambda: clock[0])
    first = hl7_timestamp()
    assert first == hl7_timestamp(datetime.fromtimestamp(1_709_720_000))
    clock[0] = 1_709_720_000.99
    assert hl7_timestamp() == first
    clock[0] = 1_709_720_001.0
    assert hl7_timestamp() == hl7_timestamp(datetime.fromtimestamp(1_709_720_001)) != first


# -- ERR ------------------------------------------------------------------------------------------


def test_err_layout_for_an_application_error() -> None:
    error = AckError(ErrorCondition.APPLICATION_ERROR, Severity.ERROR, ErrorLocation("PID", 1, 3),
                     ApplicationError.UNKNOWN_PATIENT, "patient not found in the directory")
    text = build_ack(header_with(), AckCode.APPLICATION_ERROR, control_id="017",
                     errors=[error], timestamp="202310030831")
    segments = text.split("\r")
    assert segments[1] == "MSA|AE|015"
    assert segments[2] == ("ERR||PID^1^3|207^Application internal error^messageErrorCondition|E|"
                           "902^Identifiant patient inconnu^applicationErrorCode|||"
                           "patient not found in the directory")
    assert segments[3:] == [""]
    err = parse_message(text).segments[2]
    assert err.component(2, 1) == "PID"
    assert err.component(3, 3) == "messageErrorCondition"
    assert err.component(5, 3) == "applicationErrorCode"
    assert err.value(8) == "patient not found in the directory"


def test_err_layout_for_a_syntax_error_matches_the_spec_example() -> None:
    """[TRANS] example: `ERR||MSH^1^12|203^Unsupported version^messageErrorCondition| E`."""
    error = AckError(ErrorCondition.UNSUPPORTED_VERSION_ID, location=ErrorLocation("MSH", 1, 12))
    ack = ack_of(header_with(), AckCode.APPLICATION_ERROR, errors=[error])
    err = ack.segments[2]
    assert err.fields == ("ERR", "", "MSH^1^12",
                          "203^Unsupported version id^messageErrorCondition", "E")


def test_err_location_with_component_and_severity() -> None:
    error = AckError(ErrorCondition.REQUIRED_FIELD_MISSING, Severity.WARNING,
                     ErrorLocation("OBX", 2, 5, 4))
    err = ack_of(header_with(), AckCode.APPLICATION_ERROR, errors=[error]).segments[2]
    assert err.raw(2) == "OBX^2^5^1^4"
    assert err.raw(4) == "W"
    assert err.raw(5) == ""


def test_several_errors_give_several_err_segments() -> None:
    errors = [AckError(ErrorCondition.REQUIRED_FIELD_MISSING, detail="one"),
              AckError(ErrorCondition.TABLE_VALUE_NOT_FOUND, detail="two")]
    ack = ack_of(header_with(), AckCode.APPLICATION_ERROR, errors=errors)
    assert [s.name for s in ack] == ["MSH", "MSA", "ERR", "ERR"]
    assert [s.component(3, 1) for s in ack.all("ERR")] == ["101", "103"]
    assert [s.value(8) for s in ack.all("ERR")] == ["one", "two"]


def test_err_from_exception() -> None:
    exc: MessageError = HL7ParseError("bad", location=ErrorLocation("MSH", 1))
    error = AckError.from_exception(exc)
    assert error == AckError(ErrorCondition.SEGMENT_SEQUENCE_ERROR, Severity.ERROR,
                             ErrorLocation("MSH", 1), None, "bad")
    profile = AckError.from_exception(
        ProfileError("INS missing", application_error=ApplicationError.INS_MISSING,
                     condition=ErrorCondition.APPLICATION_ERROR, severity=Severity.FATAL))
    assert profile.condition is ErrorCondition.APPLICATION_ERROR
    assert profile.application_error is ApplicationError.INS_MISSING
    assert profile.severity is Severity.FATAL


@pytest.mark.parametrize(
    "detail",
    ["field|component^rep~esc\\sub&", "line1\rline2\nline3\r\nline4", "\\F\\ already escaped",
     "MSA|AA|999\rERR||x", "|^~\\&\r\n" * 20],
)
def test_detail_cannot_break_the_segment(detail: str) -> None:
    text = build_ack(header_with(), AckCode.APPLICATION_ERROR, control_id="1", timestamp="2",
                     errors=[AckError(ErrorCondition.OTHER_HL7_ERROR, detail=detail)])
    assert text.count("\r") == 3
    assert "\n" not in text
    ack = parse_message(text)
    assert [s.name for s in ack] == ["MSH", "MSA", "ERR"]
    err = ack.segments[2]
    assert len(err.fields) == 9
    assert err.repetitions(8) == [err.raw(8)]
    assert err.raw(8) == escape(detail)
    assert err.component(8, 1).strip() == detail.strip()
    assert err.component(8, 2) == ""


@given(st.text(alphabet=st.sampled_from("|^~\\&\r\nabcXF0. é")))
def test_any_detail_reads_back(detail: str) -> None:
    text = build_ack(header_with(), AckCode.APPLICATION_ERROR, control_id="1", timestamp="2",
                     errors=[AckError(ErrorCondition.OTHER_HL7_ERROR, detail=detail)])
    ack = parse_message(text)
    assert [s.name for s in ack] == ["MSH", "MSA", "ERR"]
    assert ack.segments[2].component(8) == detail.strip()


# -- which code -----------------------------------------------------------------------------------

# MSH-15 → (code for ACCEPTED, ERROR, REJECTED); None: no commit ACK is sent.
ENHANCED = {
    "AL": (AckCode.COMMIT_ACCEPT, AckCode.COMMIT_ERROR, AckCode.COMMIT_REJECT),
    "": (AckCode.COMMIT_ACCEPT, AckCode.COMMIT_ERROR, AckCode.COMMIT_REJECT),  # MSH-16 only
    "NE": (None, None, None),
    "ER": (None, AckCode.COMMIT_ERROR, AckCode.COMMIT_REJECT),
    "SU": (AckCode.COMMIT_ACCEPT, None, None),
    "XX": (AckCode.COMMIT_ACCEPT, AckCode.COMMIT_ERROR, AckCode.COMMIT_REJECT),  # unknown = AL
}
OUTCOMES = (Outcome.ACCEPTED, Outcome.ERROR, Outcome.REJECTED)


# MSH-16 → (application ACK due for ACCEPTED, ERROR, REJECTED)
APPLICATION_DUE = {
    "": (False, False, False),  # not asked
    "NE": (False, False, False),
    "AL": (True, True, True),
    "ER": (False, True, True),
    "SU": (True, False, False),
    "XX": (True, True, True),  # unknown = AL
}
APPLICATION = (AckCode.APPLICATION_ACCEPT, AckCode.APPLICATION_ERROR, AckCode.APPLICATION_REJECT)


@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize(
    ("msh15", "msh16"),
    # Every MSH-15 with every MSH-16, except both empty (original mode, tested below).
    [(m15, m16) for m15 in sorted(ENHANCED) for m16 in sorted(APPLICATION_DUE) if m15 or m16],
)
def test_enhanced_mode_truth_table(msh15: str, msh16: str, outcome: Outcome) -> None:
    """The commit ACK when MSH-15 asks for one; else the application ACK when MSH-16 does
    (HL7: NE/AL is original mode by another name); else nothing."""
    h = header_with(msh15, msh16)
    assert h.enhanced_mode
    n = OUTCOMES.index(outcome)
    commit = ENHANCED[msh15][n]
    expected = commit or (APPLICATION[n] if APPLICATION_DUE[msh16][n] else None)
    assert choose_ack_code(h, outcome) is expected


def test_a_sender_asking_only_for_an_application_ack_gets_it_on_the_connection() -> None:
    assert choose_ack_code(header_with("NE", "AL"), Outcome.ACCEPTED) is AckCode.APPLICATION_ACCEPT
    assert choose_ack_code(header_with("NE", "ER"), Outcome.ERROR) is AckCode.APPLICATION_ERROR
    assert choose_ack_code(header_with("NE", "ER"), Outcome.ACCEPTED) is None
    assert choose_ack_code(header_with("NE", "NE"), Outcome.ERROR) is None
    assert choose_ack_code(header_with("AL", "AL"), Outcome.ACCEPTED) is AckCode.COMMIT_ACCEPT


@pytest.mark.parametrize(
    ("outcome", "code"),
    [(Outcome.ACCEPTED, AckCode.APPLICATION_ACCEPT), (Outcome.ERROR, AckCode.APPLICATION_ERROR),
     (Outcome.REJECTED, AckCode.APPLICATION_REJECT)],
)
def test_original_mode(outcome: Outcome, code: AckCode) -> None:
    assert choose_ack_code(header_with(), outcome) is code
    assert choose_ack_code(None, outcome) is code


@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize(("msh15", "msh16"),
                         [(m15, m16) for m15 in sorted(ENHANCED) for m16 in ("", "AL", "NE")])
def test_a_listener_answering_application_acks_ignores_msh15_and_16(
        msh15: str, msh16: str, outcome: Outcome) -> None:
    """`EnhancedAck.APPLICATION`: one AA/AE/AR, as in original mode, whatever is asked."""
    original = choose_ack_code(header_with(), outcome)
    assert choose_ack_code(header_with(msh15, msh16), outcome, application_ack=True) is original


def test_lower_case_msh15_and_16_count() -> None:
    assert choose_ack_code(header_with("ne"), Outcome.ACCEPTED) is None
    assert choose_ack_code(header_with("ne", "su"), Outcome.ACCEPTED) is (
        AckCode.APPLICATION_ACCEPT)


# -- control ids ----------------------------------------------------------------------------------


def test_control_ids_are_unique_and_short() -> None:
    generate = ControlIdGenerator()
    ids = [generate() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert max(len(i) for i in ids) <= 20
    assert all(re.fullmatch(r"[0-9A-Z]+", i) for i in ids)


def test_two_generators_differ() -> None:
    """Two replicas started in the same second must not hand out the same MSH-10."""
    first, second = ControlIdGenerator(), ControlIdGenerator()
    a = {first() for _ in range(1000)}
    b = {second() for _ in range(1000)}
    assert not a & b


def test_custom_prefix_and_length_cap() -> None:
    generate = ControlIdGenerator(prefix="PFI")
    assert [generate() for _ in range(3)] == ["PFI1", "PFI2", "PFI3"]
    long = ControlIdGenerator(prefix="P" * 40)
    ids = [long() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) <= 20 for i in ids)


def test_control_ids_are_unique_across_threads() -> None:
    generate = ControlIdGenerator()
    results: list[list[str]] = [[] for _ in range(8)]

    def work(out: list[str]) -> None:
        out.extend(generate() for _ in range(5000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for out in results for i in out]
    assert len(ids) == len(set(ids)) == 40_000
