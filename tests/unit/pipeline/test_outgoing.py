"""`outgoing.follow_up`: a replacement's or a deletion's mails refer to the mails the earlier
requests sent to the same recipient, by the Message-IDs stored with them; and the size limit of
the patient's mailbox (Mon espace santé)."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import SMTP

import pytest

from connector.cisis.model import RecipientKind
from connector.delivery.job import MailJob
from connector.directory.whitelist import parse_address
from connector.errors import ErrorLocation, MessageError
from connector.hl7.codes import Severity
from connector.mail.compose import make_message_id
from connector.pipeline import outgoing as outgoing_module
from connector.pipeline.mails import OutgoingMail
from connector.pipeline.outgoing import (
    PATIENT_MAILBOX_MAX_BYTES,
    MailPlanner,
    follow_up,
    patient_mailbox_limit,
)
from connector.settings import CisisSettings, TenantSettings, TransportSettings
from connector.store import OutboxItem, OutboxKind, SentRequest

SENDER = "pfi@chu-x.mssante.fr"
DOCTOR, PATIENT = "dr@medecin.mssante.fr", "279035121518989@patient.mssante.fr"
NEWCOMER = "other@medecin.mssante.fr"
MAIL = (b"From: pfi@chu-x.mssante.fr\r\nTo: x\r\nSubject: x\r\n"
        b"Message-ID: <0123456789abcdef0123456789abcdef@chu-x.mssante.fr>\r\n\r\nbody\r\n")


def mail_item(rcpt: str) -> OutboxItem:
    job = MailJob.of(SENDER, rcpt, MAIL, request_dsn=True, request_mdn=False)
    return OutboxItem(tenant_id="chu-x", kind=OutboxKind.SMTP, payload=job.encode(),
                      message_id="<0123456789abcdef0123456789abcdef@chu-x.mssante.fr>",
                      envid="e1", recipient_domain=rcpt.partition("@")[2])


def mid(key: str, rcpt: str, sender: str) -> str:
    return make_message_id(key, parse_address(rcpt), parse_address(sender))


def test_each_mail_refers_to_the_stored_message_ids_of_its_recipient() -> None:
    old_sender = "pfi@old-domain.mssante.fr"  # the mailbox was renamed since v1 was sent
    hl7 = OutboxItem(tenant_id="chu-x", kind=OutboxKind.HL7, payload=b"MSH|...")
    v1 = SentRequest("key-of-v1", frozenset({mid("key-of-v1", DOCTOR, old_sender),
                                             mid("key-of-v1", PATIENT, old_sender)}))
    v2 = SentRequest("key-of-v2", frozenset({mid("key-of-v2", DOCTOR, SENDER)}))
    doctor, patient, newcomer = mail_item(DOCTOR), mail_item(PATIENT), mail_item(NEWCOMER)
    followed = follow_up([doctor, hl7, patient, newcomer], [v1, v2, v1])
    assert followed[1] is hl7
    assert followed[3] is newcomer  # not written to before: no reference to a mail never sent
    for item, rcpt, expected in (
            (followed[0], DOCTOR, [mid("key-of-v1", DOCTOR, old_sender),
                                   mid("key-of-v2", DOCTOR, SENDER)]),
            (followed[2], PATIENT, [mid("key-of-v1", PATIENT, old_sender)])):
        job = MailJob.decode(item.payload)
        assert (job.mail_from, job.rcpt_to, job.request_dsn, job.request_mdn) == (
            SENDER, rcpt, True, False)
        assert job.wire_form
        mail = message_from_bytes(job.message, policy=SMTP)
        assert mail["In-Reply-To"] == expected[0]
        assert mail["References"].split() == expected  # each once, in the requests' order
        assert (item.message_id, item.envid) == (doctor.message_id, "e1")  # row unchanged
    assert follow_up([doctor], []) == (doctor,)


# -- Mon espace santé's size limit ----------------------------------------------------------------


def outgoing(kind: RecipientKind, size: int, prt: int) -> OutgoingMail:
    address = PATIENT if kind is RecipientKind.PATIENT else DOCTOR
    return OutgoingMail(index=prt, recipient=parse_address(address), kind=kind, prt_sequence=prt,
                        message_id=f"<m{prt}@chu-x.mssante.fr>", content=b"x" * size,
                        xdm_zip=b"")


def tenant(*, partial_sending: bool) -> TenantSettings:
    return TenantSettings(id="chu-x", name="CHU X", finess=None, application="PFI",
                          facility="CHU-X", listeners=(), transport=TransportSettings(),
                          cisis=CisisSettings(partial_sending=partial_sending))


LIMIT = PATIENT_MAILBOX_MAX_BYTES


def test_mails_within_the_limit_all_go() -> None:
    mails = (outgoing(RecipientKind.PROFESSIONAL, LIMIT + 1, 2),  # not a patient mailbox
             outgoing(RecipientKind.PATIENT, LIMIT, 3))
    assert patient_mailbox_limit(tenant(partial_sending=False), mails) == (mails, ())


def test_a_patient_mail_over_the_limit_refuses_the_request() -> None:
    mails = (outgoing(RecipientKind.PROFESSIONAL, 10, 2),
             outgoing(RecipientKind.PATIENT, LIMIT + 1, 3))
    with pytest.raises(MessageError) as raised:
        patient_mailbox_limit(tenant(partial_sending=False), mails)
    assert raised.value.location == ErrorLocation("PRT", 3, 15)
    assert raised.value.detail == (f"PRT 3: the mail to the patient's mailbox (Mon espace santé) "
                                   f"would be {LIMIT + 1} bytes, over its limit of {LIMIT}")


def test_with_partial_sending_it_is_withheld_with_a_warning() -> None:
    doctor = outgoing(RecipientKind.PROFESSIONAL, 10, 2)
    kept, warnings = patient_mailbox_limit(
        tenant(partial_sending=True), (doctor, outgoing(RecipientKind.PATIENT, LIMIT + 1, 3)))
    assert kept == (doctor,)
    (warning,) = warnings
    assert warning.severity is Severity.WARNING
    assert warning.location == ErrorLocation("PRT", 3, 15)
    assert warning.detail.startswith("not sent: PRT 3: the mail to the patient's mailbox")
    with pytest.raises(MessageError):  # nobody left
        patient_mailbox_limit(tenant(partial_sending=True),
                              (outgoing(RecipientKind.PATIENT, LIMIT + 1, 3),))


def test_the_planner_applies_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.pipeline import test_mails

    monkeypatch.setattr(outgoing_module, "PATIENT_MAILBOX_MAX_BYTES", 1000)
    request = test_mails.request_for("oru-r01-initial-placeholder-corrected")
    patient = next(r for r in request.sending.recipients if r.kind is RecipientKind.PATIENT)
    with pytest.raises(MessageError) as raised:
        MailPlanner(test_mails.TENANT).plan(request, test_mails.KEY)
    assert raised.value.location == ErrorLocation("PRT", patient.participant.prt_sequence, 15)
