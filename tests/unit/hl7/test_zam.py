"""ZAM^Z02 / ZAM^Z03 builders against the CI-SIS volet and its ANS example messages."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.errors import AckStateError
from connector.hl7.ack import hl7_timestamp
from connector.hl7.codes import ApplicationError, Severity
from connector.hl7.header import read_header
from connector.hl7.message import Delimiters, Message, Segment, parse_message
from connector.hl7.zam import (
    HierarchicDesignator,
    SmtpErrorCode,
    ZamError,
    ZamEvent,
    ZamRequest,
    build_zam,
)
from connector.mail.receipts import Outcome, parse_receipt, smtp_error_for
from tests.conftest import CISIS_FIXTURES

ORU_DIR = CISIS_FIXTURES / "oru-r01-initial"
PARIS = timezone(timedelta(hours=2))
EVENT_TIME = datetime(2021, 10, 5, 15, 29, 8, tzinfo=PARIS)
NOW = datetime(2021, 6, 6, 9, 34, tzinfo=PARIS)


def fixture(name: str) -> Message:
    return parse_message((ORU_DIR / name).read_bytes().decode("utf-8"))


def request_for_the_ans_example(event: ZamEvent, control_id: str) -> ZamRequest:
    """What the wiring would have stored for the ORU of the example (message.hl7)."""
    header = read_header((ORU_DIR / "message.hl7").read_bytes().decode("utf-8"))
    d = header.delimiters
    return ZamRequest(
        event=event,
        control_id=control_id,
        original_control_id=header.control_id,
        receiving_application=HierarchicDesignator.from_raw(header.sending_application, d),
        receiving_facility=HierarchicDesignator.from_raw(header.sending_facility, d),
        sending_application=HierarchicDesignator.from_raw(header.receiving_application, d),
        sending_facility=HierarchicDesignator.from_raw(header.receiving_facility, d),
        recipient_address="adam.hoda@test-ci-sis.mssante.fr",  # PRT RCT of message.hl7
        recipient_id="801234567897",
        positive=True,
        event_time=EVENT_TIME,
        charset=header.charset,
        processing_id=header.processing_id,
    )


def built(request: ZamRequest) -> Message:
    text = build_zam(request, timestamp=NOW)
    assert text.endswith("\r")
    assert not {"\n", "\x0b", "\x1c"} & set(text)
    return parse_message(text)


def fields_of(segment: Segment, length: int) -> list[str]:
    return [segment.raw(i) for i in range(length)]


@pytest.mark.parametrize(("event", "name"), [
    (ZamEvent.RECEPTION_MSS, "zam-z02-reception-mss.hl7"),
    (ZamEvent.LECTURE_MSS, "zam-z03-lecture-mss.hl7"),
])
def test_matches_the_ans_example_field_by_field(event: ZamEvent, name: str) -> None:
    expected = fixture(name)
    control_id = expected.msh.value(10)
    message = built(request_for_the_ans_example(event, control_id))

    assert [s.name for s in message] == [s.name for s in expected] == ["MSH", "EVN", "OBX", "OBX"]
    for ours, theirs in zip(message, expected, strict=True):
        length = max(len(ours.fields), len(theirs.fields))
        ignored = {"MSH": {7}, "EVN": {2}}.get(ours.name, set())
        for position in range(length):
            if position in ignored:
                continue
            assert ours.raw(position) == theirs.raw(position), f"{ours.name}-{position}"
    assert message.msh.raw(7) == hl7_timestamp(NOW)
    assert message.all("EVN")[0].raw(2) == hl7_timestamp(EVENT_TIME)  # local time, with offset
    # The ANS examples end every OBX with an empty field ("F|"); we write no trailing separator.
    text = build_zam(request_for_the_ans_example(event, control_id), timestamp=NOW)
    for line, example in zip(text.split("\r")[2:4],
                             (ORU_DIR / name).read_text("utf-8").splitlines()[2:4], strict=True):
        assert line == example.removesuffix("|")


def test_z01_fixture_is_not_ours_but_shares_the_header() -> None:
    """ZAM^Z01 (DMP) is out of scope; its MSH only differs in MSH-9 from what Z02 writes."""
    z01 = fixture("zam-z01-reception-dmp.hl7")
    z02 = built(request_for_the_ans_example(ZamEvent.RECEPTION_MSS, "017"))
    for position in range(1, 22):
        if position not in (7, 9):
            assert z02.msh.raw(position) == z01.msh.raw(position), f"MSH-{position}"


def test_negative_z02_with_an_smtp_error_code() -> None:
    request = dataclasses.replace(
        request_for_the_ans_example(ZamEvent.RECEPTION_MSS, "Z2N"), positive=False,
        error=ZamError.smtp(SmtpErrorCode.MAILBOX_UNAVAILABLE))
    message = built(request)
    obx1, _ = message.all("OBX")
    assert obx1.raw(5) == "N^^expandedYes-NoIndicator"
    (err,) = message.all("ERR")
    assert err.fields == (
        "ERR", "", "", "207^Application error^messageErrorCondition", "E",
        "550^Action non effectuée : boîte aux lettres non disponible (ex. : boîte-aux-lettres "
        "non trouvée, pas d'accès).^SMTPERRORCODE",
    )
    assert [s.name for s in message] == ["MSH", "EVN", "OBX", "OBX", "ERR"]


DSN = b"""\
From: MAILER-DAEMON@mx.ch-exemple.mssante.fr
Subject: Undelivered Mail Returned to Sender
Content-Type: multipart/report; report-type=delivery-status; boundary=B

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.ch-exemple.mssante.fr

Final-Recipient: rfc822; adam.hoda@test-ci-sis.mssante.fr
Action: failed
Status: 5.2.2
Diagnostic-Code: smtp; 552 5.2.2 <adam.hoda@test-ci-sis.mssante.fr>: Mailbox full
--B--
"""


def test_negative_z02_from_a_parsed_dsn() -> None:
    receipt = parse_receipt(DSN)
    assert receipt is not None
    (recipient,) = receipt.recipients
    assert recipient.outcome is Outcome.NEGATIVE
    entry = smtp_error_for(recipient)
    assert entry is SmtpErrorCode.STORAGE_EXCEEDED
    request = dataclasses.replace(
        request_for_the_ans_example(ZamEvent.RECEPTION_MSS, "Z2D"), positive=False,
        recipient_address=recipient.final_recipient, error=ZamError.smtp(entry))
    (err,) = built(request).all("ERR")
    assert err.component(5, 1) == "552"
    assert err.component(5, 2) == SmtpErrorCode.STORAGE_EXCEEDED.label
    assert err.component(5, 3) == "SMTPERRORCODE"


def test_negative_z03_with_an_application_error() -> None:
    request = dataclasses.replace(
        request_for_the_ans_example(ZamEvent.LECTURE_MSS, "Z3N"), positive=False,
        error=ZamError.application(ApplicationError.UNKNOWN_PATIENT))
    message = built(request)
    obx1, obx2 = message.all("OBX")
    assert obx1.raw(3) == "ACK_LECTURE_MSS^Accusé de lecture^AckMetierZAM"
    assert obx1.raw(5) == "N^^expandedYes-NoIndicator"
    assert obx2.raw(3) == "LECTEUR_MSS^Lecteur du courriel MSSanté^AckMetierZAM"
    (err,) = message.all("ERR")
    assert err.raw(3) == "207^Application error^messageErrorCondition"
    assert err.raw(5) == "902^Identifiant patient inconnu^applicationErrorCode"


def test_negative_z03_from_a_parsed_mdn_keeps_the_severity() -> None:
    mdn = b"""\
From: serviceY_auto@chb.mssante.fr
Content-Type: multipart/report; report-type=disposition-notification; boundary=M

--M
Content-Type: message/disposition-notification

Final-Recipient: rfc822;serviceY_auto@chb.mssante.fr
Original-Message-ID: <7b1e@cha.mssante.fr>
Disposition: automatic-action/MDN-sent-automatically; processed/error
Error: 905^L'INS transmis n'est pas complet^applicationErrorCondition| W^Warning^errorSeverity
--M--
"""
    receipt = parse_receipt(mdn)
    assert receipt is not None
    (recipient,) = receipt.recipients
    error = recipient.error
    assert error is not None
    request = dataclasses.replace(
        request_for_the_ans_example(ZamEvent.LECTURE_MSS, "Z3M"), positive=False,
        recipient_address=recipient.final_recipient,
        error=ZamError(error.code, error.label, error.severity or Severity.ERROR))
    message = built(request)
    (err,) = message.all("ERR")
    assert err.raw(4) == "W"
    assert err.raw(5) == "905^L'INS transmis n'est pas complet^applicationErrorCode"
    assert message.all("OBX")[1].component(5, 4) == "serviceY_auto@chb.mssante.fr"


def test_values_are_escaped_and_cannot_break_the_message() -> None:
    nasty = "a|b^c~d\\e&f\rOBX|9|ST\nERR|\x0b\x1c\x00\x7f"
    request = ZamRequest(
        event=ZamEvent.LECTURE_MSS,
        control_id="ID|1",
        original_control_id="0^15",
        receiving_application=HierarchicDesignator("SIL|Y", "1.2.3", "ISO"),
        receiving_facility=HierarchicDesignator("lab~o"),
        sending_application=HierarchicDesignator("PFI\\X"),
        recipient_address=f"x{nasty}@test.fr",
        recipient_id=nasty,
        positive=False,
        event_time=EVENT_TIME,
        error=ZamError("9&9", nasty, Severity.FATAL),
        charset="8859/15",
    )
    text = build_zam(request, timestamp=NOW)
    segments = text.split("\r")
    assert segments[-1] == ""
    assert [s[:3] for s in segments[:-1]] == ["MSH", "EVN", "OBX", "OBX", "ERR"]
    message = parse_message(text)
    assert message.msh.value(10) == "ID|1"
    assert message.msh.component(5, 1) == "SIL|Y"
    assert message.msh.component(5, 2) == "1.2.3"
    assert message.msh.component(5, 3) == "ISO"
    assert message.msh.value(6) == "lab~o"
    assert message.msh.value(3) == "PFI\\X"
    assert message.msh.value(4) == ""
    assert message.msh.value(18) == "8859/15"
    obx1, obx2 = message.all("OBX")
    assert obx1.value(4) == "0^15"
    assert obx2.value(4) == nasty
    assert obx2.component(5, 4) == f"x{nasty}@test.fr"
    (err,) = message.all("ERR")
    assert (err.raw(4), err.component(5, 1), err.component(5, 2)) == ("F", "9&9", nasty)
    assert "\\X0B\\" in text
    assert "\\X1C\\" in text


def test_hierarchic_designator_from_a_header_in_other_delimiters() -> None:
    d = Delimiters(field="|", component="$", repetition="~", escape="\\", subcomponent="&")
    hd = HierarchicDesignator.from_raw("LAB\\S\\1$1.2.250.1.71$ISO", d)
    assert hd == HierarchicDesignator("LAB$1", "1.2.250.1.71", "ISO")
    assert hd.to_hl7() == "LAB$1^1.2.250.1.71^ISO"
    assert HierarchicDesignator("APP").to_hl7() == "APP"
    assert HierarchicDesignator("", "1.2.3", "ISO").to_hl7() == "^1.2.3^ISO"


@pytest.mark.parametrize(("changes", "message"), [
    ({"positive": False}, "negative ZAM without an error"),
    ({"positive": False, "error": ZamError("", " ")}, "empty error code and label"),
    ({"error": ZamError("550", "x")}, "positive ZAM with an error"),
    ({"recipient_address": " "}, "without a recipient address"),
    ({"original_control_id": ""}, "without the original control id"),
    ({"control_id": ""}, "without a control id"),
])
def test_requests_that_cannot_make_a_valid_zam(changes: dict[str, object], message: str) -> None:
    request = dataclasses.replace(
        request_for_the_ans_example(ZamEvent.RECEPTION_MSS, "X1"), **changes)  # type: ignore[arg-type]
    with pytest.raises(AckStateError, match=message):
        build_zam(request)


def test_request_is_frozen() -> None:
    request = request_for_the_ans_example(ZamEvent.RECEPTION_MSS, "X1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.positive = False  # type: ignore[misc]


TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(address=TEXT, recipient_id=TEXT, original=TEXT, label=TEXT, code=TEXT, app=TEXT,
       positive=st.booleans(), event=st.sampled_from(list(ZamEvent)))
def test_any_value_round_trips(address: str, recipient_id: str, original: str, label: str,
                               code: str, app: str, positive: bool, event: ZamEvent) -> None:
    if not address.strip() or not original.strip() or (not positive and not
                                                         (code.strip() or label.strip())):
        return
    request = ZamRequest(
        event=event, control_id="C1", original_control_id=original,
        receiving_application=HierarchicDesignator(app), receiving_facility=HierarchicDesignator(),
        recipient_address=address, recipient_id=recipient_id, positive=positive,
        event_time=EVENT_TIME, error=None if positive else ZamError(code, label),
    )
    text = build_zam(request, timestamp=NOW)
    assert text.count("\r") == (4 if positive else 5)
    assert not {"\n", "\x0b", "\x1c"} & set(text)
    message = parse_message(text)
    obx1, obx2 = message.all("OBX")
    assert message.msh.value(5) == app.strip()
    assert obx1.value(4) == original.strip()
    assert obx2.value(4) == recipient_id.strip()
    assert obx2.component(5, 4) == address.strip()
    if not positive:
        (err,) = message.all("ERR")
        assert err.component(5, 1) == code.strip()
        assert err.component(5, 2) == label.strip()
        assert err.component(5, 3) == event.error_table
