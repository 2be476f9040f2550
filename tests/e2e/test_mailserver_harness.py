"""The Postfix/Dovecot harness behaves like an MSSanté operator: mutual TLS submission,
virtual mailboxes, RCPT-time refusals, real RFC 3464 DSNs, restart, IMAP over the same Maildirs."""

from __future__ import annotations

import email
import email.policy
import imaplib
import os
import smtplib
import ssl
import time
from email.message import EmailMessage, Message
from pathlib import Path

import aiosmtplib
import pytest

from tests.support.mailserver import (
    BOUNCE_DOMAIN,
    SENDER,
    DovecotServer,
    MailServer,
    port_open,
)
from tests.support.pki import TestCA

DOCTOR = "dr.hoda@medecin.mssante.fr"
OTHER_DOCTOR = "dr.martin@medecin.mssante.fr"
PATIENT = "146026322000196@patient.mssante.fr"

pytestmark = pytest.mark.slow  # spawns Postfix and Dovecot


def _message(recipient: str, subject: str, attachment: bytes = b"") -> EmailMessage:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = recipient
    message["Subject"] = subject
    message["Message-ID"] = f"<{os.urandom(8).hex()}@chu-test.mssante.fr>"
    message.set_content("Compte rendu en pièce jointe.\n")
    if attachment:
        message.add_attachment(attachment, maintype="application", subtype="zip",
                               filename="IHE_XDM.zip")
    return message


def _parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _submit(server: MailServer, message: EmailMessage, context: ssl.SSLContext) -> None:
    with smtplib.SMTP(server.host, server.submission_port, timeout=10) as smtp:
        smtp.starttls(context=context)
        smtp.send_message(message)


def _delivery_status(report: Message) -> str:
    """The text of the message/delivery-status part of a DSN."""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
    assert len(parts) == 1, [p.get_content_type() for p in report.walk()]
    # The stdlib parses delivery-status as a list of header blocks.
    blocks = parts[0].get_payload()
    assert isinstance(blocks, list)
    return "\n".join(str(block) for block in blocks)


def test_mutual_tls_submission_is_delivered_byte_for_byte(mailserver: MailServer) -> None:
    mailserver.clear()
    attachment = os.urandom(50_000) + b"\r\n.\r\n\x00" + os.urandom(1000)
    _submit(mailserver, _message(DOCTOR, "CR de biologie", attachment),
            mailserver.client_context())
    _submit(mailserver, _message(PATIENT, "Votre compte rendu"), mailserver.client_context())

    (raw,) = mailserver.wait_for_messages(DOCTOR, 1)
    delivered = _parse(raw)
    assert delivered["Subject"] == "CR de biologie"
    assert delivered["Delivered-To"] == DOCTOR
    assert delivered["Return-Path"] == f"<{SENDER}>"
    # Postfix recorded that the submission came over TLS.
    assert "TLS" in str(delivered["Received"])
    (part,) = [p for p in delivered.iter_attachments() if p.get_filename() == "IHE_XDM.zip"]
    assert part.get_payload(decode=True) == attachment
    assert mailserver.mailbox_dir(DOCTOR) == mailserver.mail_base / "medecin.mssante.fr/dr.hoda"

    (patient_raw,) = mailserver.wait_for_messages(PATIENT, 1)
    assert _parse(patient_raw)["Subject"] == "Votre compte rendu"
    assert mailserver.messages(OTHER_DOCTOR) == []


async def test_submission_without_client_certificate_is_refused(
        mailserver: MailServer) -> None:
    mailserver.clear()
    raw = _message(DOCTOR, "no cert").as_bytes()
    # The TLS handshake completes; Postfix then answers the EHLO with 421 and hangs up.
    with pytest.raises(aiosmtplib.SMTPHeloError) as refused:
        async with aiosmtplib.SMTP(hostname=mailserver.host, port=mailserver.submission_port,
                                   start_tls=True, timeout=10,
                                   tls_context=mailserver.client_context(
                                       with_certificate=False)) as smtp:
            await smtp.sendmail(SENDER, [DOCTOR], raw)
    assert refused.value.code == 421
    assert "No client certificate presented" in refused.value.message
    # Without STARTTLS at all: 530 at MAIL FROM.
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as plain:
        async with aiosmtplib.SMTP(hostname=mailserver.host, port=mailserver.submission_port,
                                   start_tls=False, timeout=10) as smtp:
            await smtp.sendmail(SENDER, [DOCTOR], raw)
    assert plain.value.code == 530
    assert "Must issue a STARTTLS command first" in plain.value.message
    # The stdlib client sees the 421 as a dropped connection.
    with pytest.raises(smtplib.SMTPServerDisconnected):
        _submit(mailserver, _message(DOCTOR, "no cert"),
                mailserver.client_context(with_certificate=False))
    time.sleep(0.3)
    assert mailserver.messages(DOCTOR) == []
    assert "No client certificate presented" in mailserver.log_tail(200)


def test_client_rejects_a_server_it_does_not_trust(mailserver: MailServer,
                                                   tmp_path: Path) -> None:
    stranger = TestCA(tmp_path / "other", name="Some Other Root")
    with pytest.raises(ssl.SSLCertVerificationError) as failed:
        _submit(mailserver, _message(DOCTOR, "wrong CA"),
                mailserver.client_context(ca=stranger.certificate))
    assert "certificate verify failed" in str(failed.value)


def test_unknown_recipient_in_a_virtual_domain_is_refused_at_rcpt(
        mailserver: MailServer) -> None:
    unknown = "dr.nobody@medecin.mssante.fr"
    with smtplib.SMTP(mailserver.host, mailserver.submission_port, timeout=10) as smtp:
        smtp.starttls(context=mailserver.client_context())
        smtp.ehlo()
        assert smtp.mail(SENDER)[0] == 250
        code, reply = smtp.rcpt(unknown)
        assert code == 550, reply
        assert b"5.1.1" in reply
        assert smtp.rcpt(OTHER_DOCTOR)[0] == 250
        smtp.rset()
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.send_message(_message(unknown, "unknown"))
    assert refused.value.recipients[unknown][0] == 550


async def test_success_dsn_reaches_the_sender(mailserver: MailServer) -> None:
    mailserver.clear()
    message = _message(OTHER_DOCTOR, "DSN please")
    async with aiosmtplib.SMTP(hostname=mailserver.host, port=mailserver.submission_port,
                               start_tls=True, tls_context=mailserver.client_context(),
                               timeout=10) as smtp:
        errors, _ = await smtp.sendmail(SENDER, [OTHER_DOCTOR], message.as_bytes(),
                                        mail_options=["RET=HDRS", "ENVID=xyz"],
                                        rcpt_options=["NOTIFY=SUCCESS,FAILURE,DELAY"])
    assert errors == {}
    mailserver.wait_for_messages(OTHER_DOCTOR, 1)
    (raw,) = mailserver.wait_for_messages(SENDER, 1)
    report = _parse(raw)
    status = _delivery_status(report)
    assert "Original-Envelope-Id: xyz" in status
    assert "Action: delivered" in status
    assert f"Final-Recipient: rfc822; {OTHER_DOCTOR}" in status
    assert "Status: 2.0.0" in status
    # RET=HDRS: the original's headers come back, with its Message-ID to correlate.
    returned = [p for p in report.walk() if p.get_content_type() == "text/rfc822-headers"]
    assert len(returned) == 1
    assert isinstance(returned[0], EmailMessage)
    assert message["Message-ID"] in returned[0].get_content()


async def test_mail_to_the_bounce_domain_gets_a_failure_dsn(mailserver: MailServer) -> None:
    mailserver.clear()
    recipient = f"dr.gone@{BOUNCE_DOMAIN}"
    async with aiosmtplib.SMTP(hostname=mailserver.host, port=mailserver.submission_port,
                               start_tls=True, tls_context=mailserver.client_context(),
                               timeout=10) as smtp:
        # Accepted at submission time: the failure is asynchronous.
        errors, _ = await smtp.sendmail(SENDER, [recipient],
                                        _message(recipient, "will bounce").as_bytes(),
                                        mail_options=["RET=HDRS", "ENVID=bounce-1"])
    assert errors == {}
    (raw,) = mailserver.wait_for_messages(SENDER, 1)
    status = _delivery_status(_parse(raw))
    assert "Action: failed" in status
    assert "Original-Envelope-Id: bounce-1" in status
    assert f"Final-Recipient: rfc822; {recipient}" in status
    assert "Status: 5." in status


def test_stop_then_start_on_the_same_port(mailserver: MailServer) -> None:
    mailserver.clear()
    port = mailserver.submission_port
    mailserver.stop()
    try:
        assert not mailserver.running
        assert not port_open(mailserver.host, port)
        with pytest.raises(ConnectionRefusedError):
            smtplib.SMTP(mailserver.host, port, timeout=5)
    finally:
        mailserver.start()
    assert mailserver.submission_port == port
    assert mailserver.running
    _submit(mailserver, _message(DOCTOR, "after restart"), mailserver.client_context())
    (raw,) = mailserver.wait_for_messages(DOCTOR, 1)
    assert _parse(raw)["Subject"] == "after restart"


def test_imap_starttls_with_client_certificate_sees_delivered_mail(
        mailserver: MailServer, imapserver: DovecotServer) -> None:
    mailserver.clear()
    _submit(mailserver, _message(PATIENT, "lu par IMAP"), mailserver.client_context())
    mailserver.wait_for_messages(PATIENT, 1)

    with imaplib.IMAP4(imapserver.host, imapserver.imap_port, timeout=10) as imap:
        imap.starttls(imapserver.client_context())
        imap.login(PATIENT, imapserver.password(PATIENT))
        status, data = imap.select("INBOX")
        assert status == "OK"
        assert data == [b"1"]
        status, fetched = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert status == "OK"
        assert isinstance(fetched[0], tuple)
        assert b"lu par IMAP" in fetched[0][1]

    with imaplib.IMAP4_SSL(imapserver.host, imapserver.imaps_port,
                           ssl_context=imapserver.client_context(), timeout=10) as imaps:
        imaps.login(PATIENT, imapserver.password(PATIENT))
        assert imaps.select("INBOX", readonly=True) == ("OK", [b"1"])


def test_imap_refuses_a_login_without_client_certificate(imapserver: DovecotServer) -> None:
    # Dovecot asks for the certificate during the handshake; without one, the login is refused.
    with imaplib.IMAP4_SSL(imapserver.host, imapserver.imaps_port,
                           ssl_context=imapserver.client_context(with_certificate=False),
                           timeout=10) as imaps, pytest.raises(imaplib.IMAP4.error) as refused:
        imaps.login(PATIENT, imapserver.password(PATIENT))
    assert "didn't present valid SSL certificate" in str(refused.value)


def test_imap_refuses_a_wrong_password(imapserver: DovecotServer) -> None:
    with imaplib.IMAP4_SSL(imapserver.host, imapserver.imaps_port,
                           ssl_context=imapserver.client_context(),
                           timeout=10) as imaps, pytest.raises(imaplib.IMAP4.error) as refused:
        imaps.login(PATIENT, "not-the-password")
    assert "AUTHENTICATIONFAILED" in str(refused.value)
