"""`outgoing.follow_up`: a replacement's or a deletion's mails refer to the mails the earlier
requests sent to the same recipient, by the Message-IDs stored with them."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import SMTP

from connector.delivery.job import MailJob
from connector.directory.whitelist import parse_address
from connector.mail.compose import make_message_id
from connector.pipeline.outgoing import follow_up
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
