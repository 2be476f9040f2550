"""The receipts poller over a scripted mailbox and a real SQLite store: one mail that fails in
an unexpected way is set aside (unmatched) and the mails behind it are still applied; a mail
gets one ZAM per kind of report, whatever number of reports comes back about it."""

from __future__ import annotations

import hashlib
import itertools
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import structlog

from connector.delivery.job import MailJob
from connector.hl7.ack import hl7_timestamp
from connector.receipts.plan import ReceiptPlanner, ZamIdentity
from connector.receipts.poller import ReceiptPoller
from connector.store import AuditAction, InboundStatus, OutboxItem, OutboxKind
from connector.store.model import InboundMessage
from connector.store.sqlite import SQLiteStore

SENDER = "pfi@chu.mssante.fr"
DOCTOR = "dr.hoda@medecin.mssante.fr"


class Endpoint:
    mailbox = "INBOX"
    processed_folder = "Processed"
    unmatched_folder = "Unmatched"


class ScriptedMailbox:
    """The IMAP mailbox's interface, over mails in memory."""

    where = "scripted"
    capabilities: frozenset[str] = frozenset()
    endpoint = Endpoint()

    def __init__(self, mails: dict[int, bytes]) -> None:
        self.mails = dict(mails)
        self.moved: list[tuple[int, str]] = []

    def uids(self) -> list[int]:
        return sorted(self.mails)

    def fetch(self, uid: int) -> bytes | None:
        return self.mails.get(uid)

    def move(self, uid: int, folder: str) -> tuple[str, ...]:
        self.moved.append((uid, folder))
        del self.mails[uid]
        return ("UID MOVE",)


def dsn(n: int, action: str = "delivered", status: str = "2.0.0", key: str = "") -> bytes:
    return (f"From: MAILER-DAEMON@mx.op\r\nTo: {SENDER}\r\nSubject: report\r\n"
            f"Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nMessage-ID: <dsn{n}{key}@mx.op>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
            ' boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nreport\r\n'
            "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
            f"Reporting-MTA: dns; mx.op\r\nOriginal-Envelope-Id: env{n}\r\n\r\n"
            f"Final-Recipient: rfc822; {DOCTOR}\r\nAction: {action}\r\nStatus: {status}\r\n"
            "\r\n--b--\r\n").encode()


async def sent_store(tmp_path: Path, rows: int) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "c.db")
    store.open()
    raw = b"MSH|^~\\&|DPI|CHU|PFI|CHU|20260101||MDM^T02|REQ-42|P|2.6\r"
    items = tuple(OutboxItem("chu", OutboxKind.SMTP, MailJob(
        SENDER, DOCTOR, b"Message-ID: <m%d@chu>\r\n\r\nx\r\n" % n, request_dsn=True).encode(),
        message_id=f"<m{n}@chu>", envid=f"env{n}", recipient_domain="medecin.mssante.fr")
        for n in range(1, rows + 1))
    await store.record_inbound(InboundMessage(
        tenant_id="chu", listener="dpi", peer="x", received_at=time.time(), raw=raw,
        digest=hashlib.sha256(raw).digest(), sending_application="DPI", sending_facility="CHU",
        message_type="MDM^T02", control_id="REQ-42", version="2.6",
        status=InboundStatus.ACCEPTED, ack_code="AA", ack=b"ACK", outbox=items))
    for lease in await store.lease(tenant_id="chu", kinds=(OutboxKind.SMTP,), limit=rows,
                                   lease_seconds=60):
        await store.mark_sent(lease.id, lease.token, "250", delivery_status="awaiting-report")
    return store


async def test_a_mail_that_fails_unexpectedly_is_set_aside_and_the_next_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await sent_store(tmp_path, 2)
    counter = itertools.count(1)
    planner = ReceiptPlanner(ZamIdentity("PFI", "CHU"), lambda: f"Z{next(counter)}",
                             actor="test")
    poller = ReceiptPoller("chu", store, lambda: None, planner)  # type: ignore[arg-type,return-value]
    effect = planner.effect

    def fails_on_the_first(receipt, mail, **statuses):  # type: ignore[no-untyped-def]
        if mail.job.rcpt_to == DOCTOR and receipt.correlation.envelope_id == "env1":
            raise RuntimeError("PAT-TROIS 19790328")  # a bug, with data in its message
        return effect(receipt, mail, **statuses)

    monkeypatch.setattr(planner, "effect", fails_on_the_first)
    mailbox = ScriptedMailbox({1: dsn(1), 2: dsn(2)})
    with structlog.testing.capture_logs() as logs:
        assert await poller.drain(mailbox) == 2  # type: ignore[arg-type]
    assert mailbox.moved == [(1, "Unmatched"), (2, "Processed")]
    (failed,) = [e for e in logs if e["event"] == "receipt_failed"]
    assert failed["error"] == "RuntimeError"
    assert "PAT-TROIS" not in repr(logs)
    zams = [row for row in await store.list_outbox() if row.kind is OutboxKind.HL7]
    assert len(zams) == 1  # the second DSN's Z02
    # ECO.4.1.1: each mailbox operation traced, about the mail it matched when it did one
    mailbox_ops = [(r.action, r.outbox_id, r.detail) for r in await store.list_audit(
        tenant_id="chu") if r.action in (AuditAction.FETCHED, AuditAction.FILED)]
    matched = next(r.id for r in await store.list_outbox()
                   if r.kind is OutboxKind.SMTP and r.delivery_status == "delivered")
    assert [(action, outbox) for action, outbox, _ in mailbox_ops] == [
        (AuditAction.FETCHED, None), (AuditAction.FILED, None),
        (AuditAction.FETCHED, matched), (AuditAction.FILED, matched)]
    details = [detail for _, _, detail in mailbox_ops]
    assert details[0].startswith("scripted/INBOX UID FETCH 1 BODY.PEEK[]: receipt ")
    assert details[0].endswith(" unmatched")
    assert details[1] == "scripted/INBOX UID MOVE 1 to Unmatched"
    assert details[3] == "scripted/INBOX UID MOVE 2 to Processed"
    assert DOCTOR not in repr(details)
    await store.close()


def test_a_timestamp_at_the_edge_of_the_calendar_keeps_its_own_offset() -> None:
    """A receipt's Date: of 9999-12-31 -1200 cannot be converted to local time: the ZAM's
    timestamp keeps its offset instead of failing the receipt."""
    edge = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-12)))
    assert hl7_timestamp(edge) == "99991231235959-1200"


async def test_one_z02_per_mail_however_many_reports_come_back(tmp_path: Path) -> None:
    """Two DSNs saying delivered (the operator resent its report) then one saying failed: one
    Z02, positive; the row stays delivered, and the later reports are in the audit trail."""
    store = await sent_store(tmp_path, 1)
    counter = itertools.count(1)
    planner = ReceiptPlanner(ZamIdentity("PFI", "CHU"), lambda: f"Z{next(counter)}",
                             actor="test")
    poller = ReceiptPoller("chu", store, lambda: None, planner)  # type: ignore[arg-type,return-value]
    mailbox = ScriptedMailbox({1: dsn(1, key="a"), 2: dsn(1, key="b"),
                               3: dsn(1, "failed", "5.1.1", key="c")})
    assert await poller.drain(mailbox) == 3  # type: ignore[arg-type]
    rows = await store.list_outbox()
    zams = [row for row in rows if row.kind is OutboxKind.HL7]
    (mail,) = [row for row in rows if row.kind is OutboxKind.SMTP]
    assert len(zams) == 1
    assert mail.delivery_status == "delivered"
    audit = [entry.detail for entry in await store.list_audit(outbox_id=mail.id)]
    assert "dsn delivered (already delivered)" in audit
    assert "dsn failed (already delivered)" in audit
    await store.close()
