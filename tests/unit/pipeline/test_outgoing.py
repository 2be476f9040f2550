"""`outgoing.follow_up`: a replacement's or a deletion's mails refer to the mails the earlier
requests sent to the same recipient."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import SMTP

from connector.delivery.job import MailJob
from connector.mail.compose import message_id_for
from connector.pipeline.outgoing import follow_up
from connector.store import OutboxItem, OutboxKind

SENDER = "pfi@chu-x.mssante.fr"
MAIL = (b"From: pfi@chu-x.mssante.fr\r\nTo: dr@medecin.mssante.fr\r\nSubject: x\r\n"
        b"Message-ID: <0123456789abcdef0123456789abcdef@chu-x.mssante.fr>\r\n\r\nbody\r\n")


def mail_item(rcpt: str) -> OutboxItem:
    job = MailJob.of(SENDER, rcpt, MAIL, request_dsn=True, request_mdn=False)
    return OutboxItem(tenant_id="chu-x", kind=OutboxKind.SMTP, payload=job.encode(),
                      message_id="<0123456789abcdef0123456789abcdef@chu-x.mssante.fr>",
                      envid="e1", recipient_domain=rcpt.partition("@")[2])


def test_each_mail_refers_to_its_recipients_earlier_mails() -> None:
    hl7 = OutboxItem(tenant_id="chu-x", kind=OutboxKind.HL7, payload=b"MSH|...")
    doctor, patient = mail_item("dr@medecin.mssante.fr"), mail_item("x@patient.mssante.fr")
    followed = follow_up([doctor, hl7, patient], ["key-of-v1", "key-of-v2", "key-of-v1"])
    assert followed[1] is hl7
    for item, rcpt in ((followed[0], "dr@medecin.mssante.fr"),
                       (followed[2], "x@patient.mssante.fr")):
        job = MailJob.decode(item.payload)
        assert (job.mail_from, job.rcpt_to, job.request_dsn, job.request_mdn) == (
            SENDER, rcpt, True, False)
        assert job.wire_form
        mail = message_from_bytes(job.message, policy=SMTP)
        expected = [message_id_for(key, rcpt, "chu-x.mssante.fr")
                    for key in ("key-of-v1", "key-of-v2")]  # each once, in order
        assert mail["In-Reply-To"] == expected[0]
        assert mail["References"].split() == expected
        assert (item.message_id, item.envid) == (doctor.message_id, "e1")  # row unchanged
    assert follow_up([doctor], []) == (doctor,)
