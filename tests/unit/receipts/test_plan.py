"""The receipt planner: what each kind of report does to its row, and which ZAM it returns."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from connector.delivery.job import MailJob
from connector.hl7.message import parse_message
from connector.mail.receipts import Receipt, parse_receipt
from connector.receipts.plan import ReceiptPlanner, SentMail, ZamIdentity
from connector.store import AuditAction, InboundStatus, InboundSummary, OutboxKind

SENDER = "pfi@chu.mssante.fr"
DOCTOR = "dr.hoda@medecin.mssante.fr"
OTHER = "dr.martin@medecin.mssante.fr"
WHEN = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def inbound() -> InboundSummary:
    return InboundSummary(
        id=7, tenant_id="chu", listener="dpi", peer="10.0.0.1:5000", received_at=0.0,
        sending_application="DPI^1.2.3^ISO", sending_facility="CHU", message_type="MDM^T02",
        control_id="REQ-42", version="2.6", status=InboundStatus.ACCEPTED, ack_code="AA",
        error_code=None, error_detail=None, retransmissions=0, control_id_reused=False, size=1)


def sent(*, dsn: bool = True, mdn: bool = True, rcpt: str = DOCTOR) -> SentMail:
    return SentMail(11, "chu", inbound(), MailJob(SENDER, rcpt, b"mail", request_dsn=dsn,
                                                  request_mdn=mdn))


def planner(*, emit: bool = True) -> ReceiptPlanner:
    counter = itertools.count(1)
    return ReceiptPlanner(ZamIdentity("PFI", "CHU-X"), lambda: f"Z{next(counter)}",
                          actor="test receipts", emit_zams=emit)


def dsn(*blocks: tuple[str, str, str]) -> Receipt:
    per_recipient = "\r\n".join(
        f"Final-Recipient: rfc822; {rcpt}\r\nOriginal-Recipient: rfc822;{rcpt}\r\n"
        f"Action: {action}\r\nStatus: {status}\r\n"
        + (f"Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: unknown\r\n"
           if status.startswith("5") else "")
        for rcpt, action, status in blocks)
    raw = (f"From: MAILER-DAEMON@mx.operator.test\r\nTo: {SENDER}\r\nSubject: report\r\n"
           f"Message-ID: <dsn-1@mx>\r\nMIME-Version: 1.0\r\n"
           f"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n"
           f"--b\r\nContent-Type: text/plain\r\n\r\nreport\r\n"
           f"--b\r\nContent-Type: message/delivery-status\r\n\r\n"
           f"Reporting-MTA: dns; mx.operator.test\r\nOriginal-Envelope-Id: env1\r\n\r\n"
           f"{per_recipient}\r\n--b--\r\n").encode()
    receipt = parse_receipt(raw)
    assert receipt is not None
    return receipt


def mdn(disposition: str) -> Receipt:
    raw = (f"From: {DOCTOR}\r\nTo: {SENDER}\r\nSubject: lu\r\nMessage-ID: <mdn-1@reader>\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: multipart/report; "
           f"report-type=disposition-notification; boundary=\"b\"\r\n\r\n"
           f"--b\r\nContent-Type: text/plain\r\n\r\nlu\r\n"
           f"--b\r\nContent-Type: message/disposition-notification\r\n\r\n"
           f"Final-Recipient: rfc822;{DOCTOR}\r\nOriginal-Message-ID: <m1@chu>\r\n"
           f"Disposition: {disposition}\r\n\r\n--b--\r\n").encode()
    receipt = parse_receipt(raw)
    assert receipt is not None
    return receipt


def zam(text: bytes) -> dict[str, str]:
    message = parse_message(text.decode())
    msh, obx1, obx2 = message.first("MSH"), *message.all("OBX")[:2]
    assert msh is not None
    err = message.first("ERR")
    return {"type": msh.raw(9), "to": msh.raw(5), "status": obx1.component(5, 1),
            "original": obx1.value(4), "address": obx2.component(5, 4),
            "error": err.raw(5) if err is not None else "",
            "severity": err.value(4) if err is not None else ""}


def test_delivered_settles_and_returns_z02_yes() -> None:
    effect = planner().effect(dsn((DOCTOR, "delivered", "2.0.0")), sent(), now=WHEN)
    assert effect is not None
    assert (effect.update.settle, effect.update.delivery_status) == (True, "delivered")
    assert effect.update.audit is not None
    assert effect.update.audit.action is AuditAction.DELIVERED
    assert effect.zam is not None
    assert effect.zam.kind is OutboxKind.HL7
    assert (effect.zam.inbound_id, effect.zam.message_id) == (7, "Z1")
    assert zam(effect.zam.payload) == {
        "type": "ZAM^Z02^ZAM_Z01", "to": "DPI^1.2.3^ISO", "status": "Y", "original": "REQ-42",
        "address": DOCTOR, "error": "", "severity": ""}


@pytest.mark.parametrize(("request_msh11", "zam_msh11"), [("T", "T"), ("D", "D"), (None, "P")])
def test_a_zam_repeats_the_requests_msh11(request_msh11: str | None, zam_msh11: str) -> None:
    """A request sent as a test (MSH-11 T) is answered by test ZAMs, as its ACK was; rows
    stored before migration 7 have none and keep P."""
    mail = replace(sent(), inbound=replace(inbound(), processing_id=request_msh11))
    effect = planner().effect(dsn((DOCTOR, "delivered", "2.0.0")), mail, now=WHEN)
    assert effect is not None
    assert effect.zam is not None
    msh = parse_message(effect.zam.payload.decode()).msh
    assert msh.value(11) == zam_msh11


@pytest.mark.parametrize(("msh5", "msh6", "zam_msh3", "zam_msh4"), [
    ("PFI-X", "Organisation-X", "PFI-X", "Organisation-X"),  # the CI-SIS examples
    ("PFI^1.2.250.1.9^ISO", "CHU^1.2.3^ISO", "PFI^1.2.250.1.9^ISO", "CHU^1.2.3^ISO"),
    (None, None, "PFI", "CHU-X"),  # none named, or a row stored before migration 9
])
def test_a_zam_comes_from_the_application_the_request_was_sent_to(
        msh5: str | None, msh6: str | None, zam_msh3: str, zam_msh4: str) -> None:
    """MSH-3/4 of a ZAM are MSH-5/6 of the request, as in its ACK (CI-SIS example ZAM^Z02 from
    PFI-X/Organisation-X to SIL-Y/labo); the tenant's application and facility otherwise."""
    mail = replace(sent(), inbound=replace(inbound(), receiving_application=msh5,
                                           receiving_facility=msh6))
    effect = planner().effect(dsn((DOCTOR, "delivered", "2.0.0")), mail, now=WHEN)
    assert effect is not None
    assert effect.zam is not None
    msh = parse_message(effect.zam.payload.decode()).msh
    assert (msh.raw(3), msh.raw(4)) == (zam_msh3, zam_msh4)
    assert (msh.raw(5), msh.raw(6)) == ("DPI^1.2.3^ISO", "CHU")  # back to the sender


def test_failed_settles_and_returns_z02_no_with_the_smtp_code() -> None:
    effect = planner().effect(dsn((DOCTOR, "failed", "5.1.1")), sent())
    assert effect is not None
    assert (effect.update.settle, effect.update.error_code) == (False, "550")
    assert effect.zam is not None
    fields = zam(effect.zam.payload)
    assert (fields["status"], fields["severity"]) == ("N", "E")
    assert fields["error"].startswith("550^")
    assert fields["error"].endswith("^SMTPERRORCODE")


@pytest.mark.parametrize(("action", "status"), [("delayed", "4.4.7"), ("relayed", "2.0.0")])
def test_delayed_and_relayed_are_not_final(action: str, status: str) -> None:
    effect = planner().effect(dsn((DOCTOR, action, status)), sent())
    assert effect is not None
    assert (effect.update.settle, effect.update.delivery_status, effect.zam) == (
        None, action, None)


def test_the_block_about_our_recipient_is_the_one_read() -> None:
    receipt = dsn((OTHER, "failed", "5.1.1"), (DOCTOR, "delivered", "2.0.0"))
    effect = planner().effect(receipt, sent())
    assert effect is not None
    assert effect.update.settle is True
    assert planner().effect(receipt, sent(rcpt="someone@else.mssante.fr")) is None


def test_no_zam_unless_the_request_asked() -> None:
    effect = planner().effect(dsn((DOCTOR, "delivered", "2.0.0")), sent(dsn=False))
    assert effect is not None
    assert effect.update.settle is True  # the row is still settled
    assert effect.zam is None
    silent = planner(emit=False).effect(dsn((DOCTOR, "delivered", "2.0.0")), sent())
    assert silent is not None
    assert silent.zam is None


@pytest.mark.parametrize(("disposition", "status", "read"), [
    ("automatic-action/MDN-sent-automatically; processed", "Y", "processed"),
    ("manual-action/MDN-sent-manually; displayed", "Y", "displayed"),
    ("automatic-action/MDN-sent-automatically; processed/Error: 902^Identifiant inconnu",
     "N", "error"),
])
def test_mdns_return_z03(disposition: str, status: str, read: str) -> None:
    effect = planner().effect(mdn(disposition), sent())
    assert effect is not None
    assert effect.update.read_status == read
    assert effect.update.settle is None
    assert effect.zam is not None
    fields = zam(effect.zam.payload)
    assert (fields["type"], fields["status"]) == ("ZAM^Z03^ZAM_Z01", status)
    if status == "N":
        assert fields["error"] == "902^Identifiant inconnu^applicationErrorCode"


def test_a_deleted_mdn_says_nothing_of_integration() -> None:
    effect = planner().effect(mdn("manual-action/MDN-sent-manually; deleted"), sent())
    assert effect is not None
    assert (effect.update.read_status, effect.zam) == ("deleted", None)


@pytest.mark.parametrize(("last", "code"), [("relayed", "251"), ("awaiting-report", "441"),
                                            ("delayed", "441")])
def test_silence_returns_z02_no_as_a_warning(last: str, code: str) -> None:
    effect = planner().silence_effect(sent(), last, WHEN)
    assert (effect.update.delivery_status, effect.update.settle) == ("no-final-report", None)
    assert effect.zam is not None
    fields = zam(effect.zam.payload)
    assert (fields["status"], fields["severity"]) == ("N", "W")
    assert fields["error"].startswith(f"{code}^")


def test_a_refused_submission_returns_z02_no_only_when_asked() -> None:
    from connector.hl7.codes import SmtpErrorCode

    item = planner().negative_submission_zam(sent(), SmtpErrorCode.MAILBOX_UNAVAILABLE, WHEN)
    assert item is not None
    assert zam(item.payload)["error"].startswith("550^")
    assert planner().negative_submission_zam(sent(dsn=False),
                                             SmtpErrorCode.MAILBOX_UNAVAILABLE) is None


# -- one answer per mail ----------------------------------------------------------------------


@pytest.mark.parametrize("answered", ["delivered", "failed"])
@pytest.mark.parametrize(("action", "status"), [("delivered", "2.0.0"), ("failed", "5.1.1")])
def test_a_second_delivery_report_sends_no_second_z02(answered: str, action: str,
                                                      status: str) -> None:
    """A DSN about a mail a first DSN already settled (the operator's resend, a contradictory
    report): recorded in the audit trail, no ZAM, no change of the first answer."""
    effect = planner().effect(dsn((DOCTOR, action, status)), sent(), delivery_status=answered)
    assert effect is not None
    assert effect.zam is None
    assert effect.update.delivery_status is None
    assert effect.update.settle is None  # no change of state
    assert effect.update.audit is not None
    assert f"(already {answered})" in (effect.update.audit.detail or "")


@pytest.mark.parametrize("answered", [None, "awaiting-report", "delayed", "relayed",
                                      "no-final-report"])
def test_a_first_final_delivery_report_sends_its_z02(answered: str | None) -> None:
    effect = planner().effect(dsn((DOCTOR, "delivered", "2.0.0")), sent(),
                              delivery_status=answered)
    assert effect is not None
    assert effect.zam is not None
    assert effect.update.delivery_status == "delivered"


def test_a_read_receipt_saying_the_same_again_sends_no_second_z03() -> None:
    effect = planner().effect(mdn("manual-action/MDN-sent-manually; processed"), sent(),
                              read_status="processed")
    assert effect is not None
    assert effect.zam is None
    assert effect.update.read_status is None


@pytest.mark.parametrize(("answered", "code", "new"), [
    (None, None, True),  # the first
    ("deleted", None, True),  # a deletion notice answered nothing
    ("displayed", None, True),  # read by someone, then integrated: news
    ("error", "902", True),  # integrated after an integration error: news
])
def test_a_read_receipt_with_news_sends_its_z03(answered: str | None, code: str | None,
                                                new: bool) -> None:
    effect = planner().effect(mdn("manual-action/MDN-sent-manually; processed"), sent(),
                              read_status=answered, error_code=code)
    assert effect is not None
    assert (effect.zam is not None) is new
    assert effect.update.read_status == "processed"


def test_an_integration_error_is_news_unless_it_is_the_same_error() -> None:
    error = mdn("automatic-action/MDN-sent-automatically; processed/Error: 902^Identifiant de "
                "patient inconnu")
    same = planner().effect(error, sent(), read_status="error", error_code="902")
    other = planner().effect(error, sent(), read_status="error", error_code="905")
    after_success = planner().effect(error, sent(), read_status="processed")
    assert same is not None
    assert other is not None
    assert after_success is not None
    assert same.zam is None
    assert other.zam is not None
    assert after_success.zam is not None
