"""Receipts end to end: a real Postfix writes real DSNs into the application mailbox, a real
Dovecot serves it over IMAP (client certificate from the test CA, then a login), and the ZAMs
reach a test HIS listener run with python-hl7's own MLLP server."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import aiosmtplib
import hl7
import hl7.mllp
import pytest
import structlog

from connector.app import Application
from connector.cda.policy import SchematronPolicy
from connector.cli.send_cmd import split_messages
from connector.hl7.message import parse_message
from connector.mllp.client import MLLPClient
from connector.settings import (
    CisisSettings,
    DeliverySettings,
    HisSettings,
    MailboxSettings,
    ReceiptsSettings,
    SendingMatrixProfile,
    Settings,
    SmtpSettings,
    SmtpTlsMode,
    TransportKind,
    TransportSettings,
)
from connector.store import OutboxKind, OutboxState, ReceiptStatus
from tests.conftest import CISIS_FIXTURES
from tests.e2e.conftest import Apps
from tests.integration.conftest import make_settings
from tests.support.mailserver import (
    BOUNCE_DOMAIN,
    DEFAULT_MAILBOXES,
    SENDER,
    DovecotServer,
    MailServer,
    dovecot_unavailable,
    postfix_unavailable,
)

pytestmark = pytest.mark.slow

RECIPIENT = "adam.hoda@test-ci-sis.mssante.fr"
BOUNCING = f"adam.hoda@{BOUNCE_DOMAIN}"
MDM_T02 = CISIS_FIXTURES / "mdm-t02-initial/message.er7"


@dataclass
class Operator:
    smtp: MailServer
    imap: DovecotServer


@pytest.fixture(scope="module")
def operator() -> Iterator[Operator]:
    for reason in (postfix_unavailable(), dovecot_unavailable()):
        if reason is not None:
            pytest.skip(reason)
    smtp = MailServer(mailboxes=(*DEFAULT_MAILBOXES, RECIPIENT))
    imap = DovecotServer(smtp)
    try:
        smtp.start()
        imap.start()
        yield Operator(smtp, imap)
    finally:
        imap.close()
        smtp.close()


@pytest.fixture(autouse=True)
def fresh_mailboxes(operator: Operator) -> None:
    if not operator.smtp.running:
        operator.smtp.start()
    if not operator.imap.running:
        operator.imap.start()
    for folder in operator.smtp.mail_base.rglob("*"):  # processed / unmatched folders too
        if folder.is_file() and folder.parent.name in ("new", "cur"):
            folder.unlink()


@dataclass
class His:
    """The hospital's MLLP listener: answers AA (or `answer`) and keeps what it got."""

    port: int = 0
    received: list[str] = field(default_factory=list)
    answer: str = "AA"
    server: asyncio.Server | None = None

    async def start(self) -> None:
        async def connected(reader: hl7.mllp.HL7StreamReader,
                            writer: hl7.mllp.HL7StreamWriter) -> None:
            try:
                while True:
                    message = await reader.readmessage()
                    self.received.append(str(message))
                    writer.writemessage(message.create_ack(ack_code=self.answer))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        self.server = await hl7.mllp.start_hl7_server(connected, "127.0.0.1", self.port,
                                                      encoding="utf-8")
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


@pytest.fixture
async def his() -> AsyncIterator[His]:
    listener = His()
    await listener.start()
    yield listener
    await listener.stop()


def settings(tmp_path: Path, operator: Operator, his_port: int) -> Settings:
    mail = operator.smtp
    client = mail.client_cert
    base = make_settings(tmp_path)
    tenant = replace(
        base.tenants[0],
        mailbox=MailboxSettings(SENDER, "CHU Test"),
        cisis=CisisSettings(schematron_policy=SchematronPolicy.OFF,
                            sending_matrix=SendingMatrixProfile.ANS_EXAMPLES),
        transport=TransportSettings(TransportKind.SMTP, tmp_path / "unused", SmtpSettings(
            host=mail.host, port=mail.submission_port, ca_bundle=mail.ca.certificate,
            client_certificate=client.certificate, client_private_key=client.private_key,
            local_hostname="connector.test")),
        receipts=ReceiptsSettings(
            host=operator.imap.host, port=operator.imap.imaps_port,
            tls=SmtpTlsMode.IMPLICIT_TLS, username=SENDER,
            password=operator.imap.password(SENDER), idle_seconds=1.0, poll_seconds=0.2),
        his=HisSettings("127.0.0.1", his_port, timeout_seconds=2.0),
        delivery=DeliverySettings(poll_seconds=0.05, retry_initial_seconds=0.3,
                                  retry_maximum_seconds=1.0, retry_jitter=0.0))
    return replace(base, tenants=(tenant,))


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if await outcome if not isinstance(outcome, bool) else outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def request(control_id: str, *, reception: bool = True, reading: bool = False,
            recipient: str = RECIPIENT) -> bytes:
    raw = split_messages(MDM_T02.read_bytes())[0]
    raw = re.sub(rb"(MSH(\|[^|\r]*){8}\|)015\|", rb"\g<1>" + control_id.encode() + rb"|", raw,
                 count=1)
    for name, wanted in ((b"ACK_RECEPTION", reception), (b"ACK_LECTURE_MSS", reading)):
        raw = re.sub(rb"(\|" + name + rb"\^[^|]*\|\|)[YN]\^",
                     rb"\g<1>" + (b"Y" if wanted else b"N") + rb"^", raw, count=1)
    return raw.replace(RECIPIENT.encode(), recipient.encode())


async def send(app: Application, payload: bytes) -> None:
    host, port = app.servers[0].address
    async with MLLPClient(host, port, timeout=30) as client:
        ack = await client.send(payload)
    assert b"MSA|AA" in ack, ack


def zam_fields(text: str) -> dict[str, str]:
    message = parse_message(text)
    msh, obx1, obx2 = message.first("MSH"), *message.all("OBX")[:2]
    assert msh is not None
    err = message.first("ERR")
    return {"type": msh.raw(9), "status": obx1.component(5, 1), "original": obx1.value(4),
            "address": obx2.component(5, 4),
            "error": err.component(5, 1) if err is not None else "",
            "error_table": err.component(5, 3) if err is not None else ""}


def folder_count(operator: Operator, folder: str) -> int:
    box = operator.smtp.mailbox_dir(SENDER) / f".{folder}"
    return sum(1 for sub in ("new", "cur") if (box / sub).exists()
               for _ in (box / sub).iterdir())


# -- DSN → ZAM^Z02 ---------------------------------------------------------------------------------


async def test_a_real_success_dsn_becomes_zam_z02_yes(
        tmp_path: Path, operator: Operator, his: His, apps: Apps) -> None:
    app = await apps(settings(tmp_path, operator, his.port))
    await send(app, request("REQ-OK-1"))
    await eventually(lambda: bool(his.received))
    (zam,) = [zam_fields(m) for m in his.received]
    assert zam == {"type": "ZAM^Z02^ZAM_Z01", "status": "Y", "original": "REQ-OK-1",
                   "address": RECIPIENT, "error": "", "error_table": ""}
    rows = {r.kind: r for r in await app.store.list_outbox()}
    assert rows[OutboxKind.SMTP].state is OutboxState.DELIVERED
    assert rows[OutboxKind.SMTP].delivery_status == "delivered"
    await eventually(lambda: _state(app, OutboxKind.HL7, OutboxState.SENT))
    await eventually(lambda: folder_count(operator, "processed") == 1)
    (receipt,) = await app.store.list_returned_mails()
    assert (receipt.status, receipt.kind) == (ReceiptStatus.MATCHED, "dsn")


async def _state(app: Application, kind: OutboxKind, state: OutboxState) -> bool:
    return any(r.kind is kind and r.state is state for r in await app.store.list_outbox())


async def test_a_real_failure_dsn_becomes_zam_z02_no_with_the_smtp_code(
        tmp_path: Path, operator: Operator, his: His, apps: Apps) -> None:
    app = await apps(settings(tmp_path, operator, his.port))
    await send(app, request("REQ-KO-1", recipient=BOUNCING))
    await eventually(lambda: bool(his.received))
    (zam,) = [zam_fields(m) for m in his.received]
    assert (zam["type"], zam["status"], zam["original"], zam["address"]) == (
        "ZAM^Z02^ZAM_Z01", "N", "REQ-KO-1", BOUNCING)
    assert zam["error_table"] == "SMTPERRORCODE"
    assert zam["error"].startswith("5")
    smtp = next(r for r in await app.store.list_outbox() if r.kind is OutboxKind.SMTP)
    assert (smtp.state, smtp.error_code) == (OutboxState.FAILED, zam["error"])


async def test_no_zam_when_the_request_did_not_ask(
        tmp_path: Path, operator: Operator, his: His, apps: Apps) -> None:
    app = await apps(settings(tmp_path, operator, his.port))
    await send(app, request("REQ-SILENT", reception=False))
    await eventually(lambda: _state(app, OutboxKind.SMTP, OutboxState.SENT))
    await asyncio.sleep(1.5)  # a DSN was not even requested: nothing comes back
    assert his.received == []


# -- MDN → ZAM^Z03 ---------------------------------------------------------------------------------


def mdn(original_id: str, disposition: str, *, error_field: str | None = None) -> bytes:
    """An MDN as the LPS annex describes it, sent by the recipient's software."""
    message = EmailMessage()
    message["From"] = RECIPIENT
    message["To"] = SENDER
    message["Subject"] = "Accusé de lecture"
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="test-ci-sis.mssante.fr")
    message.set_content("Le message ci-dessous a été traité.")
    fields = (f"Reporting-UA: dpi.test-ci-sis.mssante.fr; DPI\r\n"
              f"Original-Recipient: rfc822;{RECIPIENT}\r\n"
              f"Final-Recipient: rfc822;{RECIPIENT}\r\n"
              f"Original-Message-ID: {original_id}\r\n"
              f"Disposition: {disposition}\r\n"
              + (f"Error: {error_field}\r\n" if error_field else ""))
    message.add_attachment(fields.encode(), maintype="message",
                           subtype="disposition-notification", cte="7bit")
    message.replace_header("Content-Type",
                           message["Content-Type"].replace("multipart/mixed", "multipart/report")
                           + "; report-type=disposition-notification")
    return bytes(message)


async def test_mdns_of_the_lps_annex_become_zam_z03(
        tmp_path: Path, operator: Operator, his: His, apps: Apps) -> None:
    app = await apps(settings(tmp_path, operator, his.port))
    message_id = await _sent_asking_a_read_receipt(app, "REQ-MDN-1")
    for n, (disposition, error) in enumerate((
            ("automatic-action/MDN-sent-automatically; processed", None),
            ("automatic-action/MDN-sent-automatically; processed/Error: 902^Identifiant de "
             "patient inconnu", None),
            ("automatic-action/MDN-sent-automatically; processed/error",
             "905^INS incomplet^messageErrorCondition| E^Error^errorSeverity"))):
        await _submit(operator, mdn(message_id, disposition, error_field=error))
        await eventually(lambda n=n: len(his.received) == n + 1)
    zams = [zam_fields(m) for m in his.received]
    assert [(z["type"], z["status"], z["error"]) for z in zams] == [
        ("ZAM^Z03^ZAM_Z01", "Y", ""), ("ZAM^Z03^ZAM_Z01", "N", "902"),
        ("ZAM^Z03^ZAM_Z01", "N", "905")]
    assert {z["original"] for z in zams} == {"REQ-MDN-1"}
    assert {z["error_table"] for z in zams[1:]} == {"applicationErrorCode"}
    final = next(r for r in await app.store.list_outbox() if r.kind is OutboxKind.SMTP)
    assert final.read_status == "error"


async def test_an_mdn_after_the_retention_purge_is_kept_aside_with_why(
        tmp_path: Path, operator: Operator, his: His, apps: Apps) -> None:
    app = await apps(settings(tmp_path, operator, his.port))
    message_id = await _sent_asking_a_read_receipt(app, "REQ-LATE-1")
    counts = await app.store.purge_payloads(before=time.time() + 1)  # as if months went by
    assert (counts.outbox, counts.inbound) == (1, 1)
    await _submit(operator, mdn(message_id, "automatic-action/MDN-sent-automatically; processed"))
    await eventually(lambda: folder_count(operator, "unmatched") == 1)
    (late,) = await app.store.list_returned_mails()
    assert (late.status, late.kind) == (ReceiptStatus.UNMATCHED, "mdn")
    assert late.detail == "about a mail whose payload the retention purge dropped"
    assert his.received == []  # no ZAM can be built without the mail


async def _sent_asking_a_read_receipt(app: Application, control_id: str) -> str:
    """Send a request asking for a read receipt only, wait until its one mail is sent; the
    mail's Message-ID (what an MDN names)."""
    await send(app, request(control_id, reception=False, reading=True))
    await eventually(lambda: _state(app, OutboxKind.SMTP, OutboxState.SENT))
    (row,) = await app.store.list_outbox()
    assert row.message_id is not None
    return row.message_id


async def _submit(operator: Operator, raw: bytes) -> None:
    mail = operator.smtp
    await aiosmtplib.send(raw, sender=RECIPIENT, recipients=[SENDER], hostname=mail.host,
                          port=mail.submission_port, start_tls=True,
                          tls_context=mail.client_context())


# -- faults ----------------------------------------------------------------------------------------


async def test_the_zam_waits_while_the_his_is_down(
        tmp_path: Path, operator: Operator, apps: Apps) -> None:
    later = His()
    await later.start()
    port = later.port
    await later.stop()  # the HIS is down when the ZAM is due
    app = await apps(settings(tmp_path, operator, port))
    await send(app, request("REQ-HIS-DOWN"))
    await eventually(lambda: _zam_deferred(app))
    again = His(port=port)
    await again.start()
    try:
        await eventually(lambda: bool(again.received))
        await eventually(lambda: _state(app, OutboxKind.HL7, OutboxState.SENT))
        assert zam_fields(again.received[0])["original"] == "REQ-HIS-DOWN"
    finally:
        await again.stop()


async def _zam_deferred(app: Application) -> bool:
    rows = [r for r in await app.store.list_outbox() if r.kind is OutboxKind.HL7]
    return bool(rows) and rows[0].attempts >= 1 and rows[0].state is OutboxState.READY


async def test_an_ae_from_the_his_ends_the_zam_dead_and_counted(
        tmp_path: Path, operator: Operator, his: His, apps: Apps) -> None:
    his.answer = "AE"
    app = await apps(settings(tmp_path, operator, his.port))
    await send(app, request("REQ-HIS-AE"))
    await eventually(lambda: _state(app, OutboxKind.HL7, OutboxState.DEAD))
    assert app.metrics.refused_for_good.labels("chu-test", "hl7")._value.get() == 1
    assert len(his.received) == 1  # not retried


async def test_spam_reports_for_unknown_mails_and_garbage_go_to_unmatched(
        tmp_path: Path, operator: Operator, his: His, apps: Apps) -> None:
    app = await apps(settings(tmp_path, operator, his.port))
    spam = EmailMessage()
    spam["From"], spam["To"], spam["Subject"] = "promo@example.org", SENDER, "Offre"
    spam["Message-ID"] = make_msgid(domain="example.org")
    spam.set_content("Achetez maintenant")
    await _submit(operator, bytes(spam))
    await _submit(operator, mdn("<never-sent@connector.test>", "automatic-action/"
                                "MDN-sent-automatically; processed"))
    await _submit(operator, b"Subject: broken\r\nContent-Type: multipart/report; boundary=\"x\"\r\n"
                            b"Message-ID: <broken@x>\r\n\r\n--x\r\nnot closed")
    await _submit(operator, (  # a well-formed DSN for an envelope id we never used
        f"From: MAILER-DAEMON@mx.operator.test\r\nTo: {SENDER}\r\nSubject: report\r\n"
        "Message-ID: <dsn-unknown@mx>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report;"
        " report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain"
        "\r\n\r\nreport\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.operator.test\r\nOriginal-Envelope-Id: nobody-knows-me\r\n\r\n"
        f"Final-Recipient: rfc822; {RECIPIENT}\r\nAction: delivered\r\nStatus: 2.0.0\r\n"
        "\r\n--b--\r\n").encode())
    await eventually(lambda: folder_count(operator, "unmatched") == 4)
    unmatched = await app.store.list_returned_mails(status=ReceiptStatus.UNMATCHED)
    assert len(unmatched) == 4
    kinds = {u.kind for u in unmatched}
    assert {None, "mdn", "dsn"} <= kinds  # spam, the unknown MDN and the unknown DSN
    assert his.received == []
    assert app.pollers[0].connected


async def test_polling_resumes_after_the_imap_server_restarts(
        tmp_path: Path, operator: Operator, his: His, apps: Apps) -> None:
    app = await apps(settings(tmp_path, operator, his.port))
    await eventually(lambda: app.pollers[0].connected)
    operator.imap.stop()
    await eventually(lambda: not app.pollers[0].connected)
    operator.imap.start()
    await send(app, request("REQ-AFTER-RESTART"))
    await eventually(lambda: bool(his.received))
    assert zam_fields(his.received[0])["original"] == "REQ-AFTER-RESTART"


async def test_a_receipt_committed_but_not_moved_is_applied_once(
        tmp_path: Path, operator: Operator, his: His, apps: Apps) -> None:
    """A crash between the commit and the move leaves the mail in INBOX: fetched again after the
    restart, it is recognised and changes nothing."""
    app = await apps(settings(tmp_path, operator, his.port))
    await send(app, request("REQ-ONCE"))
    await eventually(lambda: bool(his.received))
    (raw,) = [p.read_bytes() for p in (operator.smtp.mailbox_dir(SENDER) / ".processed" / "new")
              .iterdir()] or [b""]
    handled = await app.pollers[0].handle(raw)  # as if fetched again from INBOX
    assert handled.duplicate
    await asyncio.sleep(1.0)
    assert len(his.received) == 1
    assert len([r for r in await app.store.list_outbox() if r.kind is OutboxKind.HL7]) == 1


async def test_a_dsn_that_never_comes_ends_in_a_warning_zam(
        tmp_path: Path, operator: Operator, his: His, apps: Apps) -> None:
    """Postfix's success DSN is held back (the connector does not poll it: no [receipts] at
    first), so the row waits in `awaiting-report`; the sweep then decides: Z02 N, severity W,
    441. Done once: a second sweep changes nothing."""
    app = await apps(settings(tmp_path, operator, his.port))
    poller = app.pollers[0]
    await poller.stop()  # nobody reads the mailbox
    await send(app, request("REQ-SILENT-DSN"))
    await eventually(lambda: _state(app, OutboxKind.SMTP, OutboxState.SENT))
    (row,) = [r for r in await app.store.list_outbox() if r.kind is OutboxKind.SMTP]
    assert row.delivery_status == "awaiting-report"
    assert await poller.sweep(now=time.time() + 71 * 3600) == 0  # not yet
    assert await poller.sweep(now=time.time() + 73 * 3600) == 1
    assert await poller.sweep(now=time.time() + 74 * 3600) == 0
    app.delivery.wake_return("chu-test")
    await eventually(lambda: bool(his.received))
    fields = zam_fields(his.received[0])
    assert (fields["status"], fields["error"], fields["original"]) == ("N", "441",
                                                                       "REQ-SILENT-DSN")
    (final,) = [r for r in await app.store.list_outbox() if r.kind is OutboxKind.SMTP]
    assert (final.state, final.delivery_status) == (OutboxState.SENT, "no-final-report")


async def test_receipts_zam_certificate_and_mailbox_metrics_move(
        tmp_path: Path, operator: Operator, his: His, apps: Apps) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    app = await apps(settings(tmp_path, operator, his.port))
    await send(app, request("REQ-METRICS"))
    await eventually(lambda: _state(app, OutboxKind.HL7, OutboxState.SENT))
    assert app.gauges is not None
    await app.gauges.refresh()
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in text_string_to_metric_families(app.metrics.render().decode())
              for s in family.samples}
    tenant = ("tenant", "chu-test")
    assert values[("mssconnector_receipts_total",
                   (("kind", "dsn"), ("outcome", "positive"), tenant))] == 1
    assert values[("mssconnector_zam_sent_total", (tenant, ("type", "Z02")))] == 1
    assert values[("mssconnector_zam_acknowledged_total", (("code", "AA"), tenant))] == 1
    assert values[("mssconnector_receipts_mailbox_connected", (tenant,))] == 1
    for use in ("smtp", "imap"):  # the test CA issues for 10 days
        days = values[("mssconnector_client_certificate_expiry_days", (tenant, ("use", use)))]
        assert 9 < days <= 10


# -- leaving the watched folder --------------------------------------------------------------------

# Dovecot's post-login CAPABILITY without MOVE and UIDPLUS: an older server's.
WITHOUT_MOVE_OR_UIDPLUS = "IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE IDLE"


def deleted_by_another_client(operator: Operator) -> Path:
    """A mail of the application mailbox that another client flagged \\Deleted and did not
    expunge (Maildir flag T)."""
    cur = operator.smtp.mailbox_dir(SENDER) / "cur"
    path = cur / f"{time.time_ns()}.M1P1.foreign:2,ST"
    path.write_bytes(b"From: secretariat@chu.test\r\nSubject: kept\r\n"
                     b"Message-ID: <foreign-deleted@chu.test>\r\n\r\nnot the connector's\r\n")
    os.chown(path, operator.smtp.mail_uid, operator.smtp.mail_gid)
    return path


def flagged_deleted_in_inbox(operator: Operator, keep: Path) -> list[Path]:
    cur = operator.smtp.mailbox_dir(SENDER) / "cur"
    return [p for p in cur.iterdir() if p != keep and "T" in p.name.rpartition(":2,")[2]]


async def test_handled_mails_are_moved_and_other_clients_deleted_mails_left_alone(
        tmp_path: Path, operator: Operator, his: His, apps: Apps) -> None:
    """Dovecot offers MOVE after the login only: the connector asks again once logged in, moves
    the DSN it handled, and expunges nothing (it used to COPY, flag and EXPUNGE the folder).
    The mail another client flagged is read like the others (a receipt flagged by a webmail
    user still counts): not one of ours, it is moved, flag and all, to `unmatched`."""
    foreign = deleted_by_another_client(operator)
    with structlog.testing.capture_logs() as logs:
        app = await apps(settings(tmp_path, operator, his.port))
        await send(app, request("REQ-MOVE"))
        await eventually(lambda: bool(his.received) and folder_count(operator, "processed") == 1)
        await eventually(lambda: folder_count(operator, "unmatched") == 1)
    assert [e["moves"] for e in logs if e["event"] == "receipts_mailbox_connected"] == ["move"]
    (kept,) = (operator.smtp.mailbox_dir(SENDER) / ".unmatched" / "cur").iterdir()
    assert not foreign.exists()  # moved out of INBOX whole, not expunged
    assert b"<foreign-deleted@chu.test>" in kept.read_bytes()
    assert "T" in kept.name.rpartition(":2,")[2]  # with its flag
    assert flagged_deleted_in_inbox(operator, foreign) == []  # ours moved, not copied and flagged


async def test_without_move_or_uidplus_handled_mails_stay_flagged_and_are_not_read_again(
        tmp_path: Path, operator: Operator, his: His, apps: Apps) -> None:
    older = DovecotServer(operator.smtp, directory=operator.smtp.directory / "dovecot-older",
                          capability=WITHOUT_MOVE_OR_UIDPLUS)
    older.start()
    try:
        foreign = deleted_by_another_client(operator)
        base = settings(tmp_path, operator, his.port)
        (tenant,) = base.tenants
        assert tenant.receipts is not None
        app = await apps(replace(base, tenants=(replace(
            tenant, receipts=replace(tenant.receipts, port=older.imaps_port)),)))
        await send(app, request("REQ-OLD-SERVER"))
        await eventually(lambda: bool(his.received) and folder_count(operator, "processed") == 1)
        # Copied, then flagged (the flag comes right after the copy the count saw).
        await eventually(lambda: len(flagged_deleted_in_inbox(operator, foreign)) == 1)
        (ours,) = flagged_deleted_in_inbox(operator, foreign)
        assert foreign.exists()  # no plain EXPUNGE of the whole folder
        await asyncio.sleep(1.5)  # several polling rounds: the flagged DSN is not read again
        assert len(his.received) == 1
        assert folder_count(operator, "processed") == 1
        assert ours.exists()
    finally:
        older.close()
