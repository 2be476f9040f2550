"""Returned mails (receipts) and the ZAMs they trigger, on every adapter: recorded once, applied
to their outbox row atomically, and a negative ZAM enqueued with a permanent failure."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from connector.errors import LeaseLost
from connector.store import (
    AuditAction,
    AuditEntry,
    OutboxItem,
    OutboxKind,
    OutboxState,
    ReceiptStatus,
    ReceiptUpdate,
    ReturnedMail,
)
from tests.contract.conftest import Store, StoreFactory, only_on
from tests.contract.test_intake_outbox_contract import mail
from tests.contract.test_store_contract import inbound

SMTP = (OutboxKind.SMTP,)
DSN = b"From: MAILER-DAEMON\r\nSubject: Delivery report\r\n\r\n" + b"x" * 20_000


def zam(n: int, inbound_id: int) -> OutboxItem:
    return OutboxItem(tenant_id="t1", kind=OutboxKind.HL7, payload=f"MSH|ZAM {n}".encode(),
                      message_id=f"ZAM{n}", inbound_id=inbound_id,
                      recipient_domain="medecin.mssante.fr")


async def sent_row(store: Store) -> tuple[int, int]:
    """A message with one mail, leased and marked sent: (inbound id, outbox id)."""
    receipt = await store.record_inbound(replace(inbound(), outbox=(mail(1),)))
    (leased,) = await store.lease(tenant_id="t1", kinds=SMTP, limit=1, lease_seconds=30)
    await store.mark_sent(leased.id, leased.token, "250")
    return receipt.inbound_id, leased.id


async def test_rows_are_found_by_envelope_id_then_message_id(make_store: StoreFactory) -> None:
    store = make_store()
    _, row_id = await sent_row(store)
    assert await store.find_outbox_ids("t1", envid="env-1") == [row_id]
    assert await store.find_outbox_ids("t1", envid="nope",
                                       message_ids=["<x@y>", "<m1@connector.example>"]) == [row_id]
    assert await store.find_outbox_ids("t2", envid="env-1") == []
    assert await store.find_outbox_ids("t1", message_ids=["<x@y>"]) == []


async def test_a_final_dsn_settles_the_row_and_enqueues_its_zam(make_store: StoreFactory) -> None:
    store = make_store()
    inbound_id, row_id = await sent_row(store)
    returned = ReturnedMail(
        tenant_id="t1", key="<dsn-1@mx>", received_at=time.time(), raw=DSN,
        status=ReceiptStatus.MATCHED, kind="dsn", outcome="positive", outbox_id=row_id,
        updates=(ReceiptUpdate(row_id, delivery_status="delivered", settle=True,
                               audit=AuditEntry("imap poller", AuditAction.DELIVERED)),),
        zams=(zam(1, inbound_id),))
    recorded = await store.record_returned_mail(returned)
    assert not recorded.duplicate
    detail = await store.get_outbox(row_id)
    assert detail is not None
    assert detail.summary.state is OutboxState.DELIVERED
    assert detail.summary.delivery_status == "delivered"
    assert detail.summary.receipt_at is not None
    (leased,) = await store.lease(tenant_id="t1", kinds=(OutboxKind.HL7,), limit=5,
                                  lease_seconds=30)
    assert (leased.payload, leased.message_id, leased.inbound_id) == (
        b"MSH|ZAM 1", "ZAM1", inbound_id)
    assert [a.action for a in await store.list_audit(outbox_id=row_id)] == [
        AuditAction.DELIVERED]
    (summary,) = await store.list_returned_mails()
    assert (summary.id, summary.status, summary.outbox_id, summary.size) == (
        recorded.id, ReceiptStatus.MATCHED, row_id, len(DSN))


async def test_the_same_mail_twice_is_applied_once(make_store: StoreFactory) -> None:
    store = make_store()
    inbound_id, row_id = await sent_row(store)
    returned = ReturnedMail(
        tenant_id="t1", key="<mdn-1@reader>", received_at=time.time(), raw=b"MDN",
        status=ReceiptStatus.MATCHED, kind="mdn", outcome="negative", outbox_id=row_id,
        updates=(ReceiptUpdate(row_id, read_status="error", error_code="902"),),
        zams=(zam(1, inbound_id),))
    first, second = await asyncio.gather(store.record_returned_mail(returned),
                                          store.record_returned_mail(returned))
    assert sorted([first.duplicate, second.duplicate]) == [False, True]
    assert first.id == second.id
    hl7 = await store.list_outbox()
    assert sum(1 for r in hl7 if r.kind is OutboxKind.HL7) == 1
    row = next(r for r in hl7 if r.id == row_id)
    assert (row.read_status, row.error_code, row.state) == ("error", "902", OutboxState.SENT)


async def test_unmatched_mails_are_kept_aside(make_store: StoreFactory) -> None:
    store = make_store()
    await store.record_returned_mail(ReturnedMail(
        tenant_id="t1", key="sha256:abc", received_at=time.time(), raw=b"spam",
        status=ReceiptStatus.UNMATCHED, detail="not a receipt"))
    (summary,) = await store.list_returned_mails(status=ReceiptStatus.UNMATCHED)
    assert (summary.kind, summary.outbox_id, summary.detail) == (None, None, "not a receipt")
    assert await store.list_returned_mails(status=ReceiptStatus.MATCHED) == []


async def test_a_permanent_failure_enqueues_its_negative_zam_atomically(
        make_store: StoreFactory) -> None:
    store = make_store()
    receipt = await store.record_inbound(replace(inbound(), outbox=(mail(1), mail(2))))
    first, second = await store.lease(tenant_id="t1", kinds=SMTP, limit=2, lease_seconds=30)
    await store.mark_failed(first.id, first.token, "550", "5.1.1 unknown",
                            then=(zam(1, receipt.inbound_id),))
    with pytest.raises(LeaseLost):  # nothing of a refused transition is committed
        await store.mark_dead(second.id, "stale-token", "451", then=(zam(2, receipt.inbound_id),))
    hl7 = [r for r in await store.list_outbox() if r.kind is OutboxKind.HL7]
    assert [(r.message_id, r.inbound_id) for r in hl7] == [("ZAM1", receipt.inbound_id)]


async def test_one_poller_per_mailbox_across_replicas(make_store: StoreFactory) -> None:
    only_on(make_store, "postgres", "SQLite is embedded: one process owns the store, so the "
            "claim is always granted")
    first, second = make_store(), make_store()
    held = await first.claim("receipts:t1")
    assert held is not None
    assert await second.claim("receipts:t1") is None  # the other replica waits
    other = await second.claim("receipts:t2")  # another mailbox is free
    assert other is not None
    await held.release()
    taken = await second.claim("receipts:t1")
    assert taken is not None
    await taken.release()
    await other.release()


async def test_sqlite_grants_the_claim(make_store: StoreFactory) -> None:
    only_on(make_store, "sqlite", "PostgreSQL arbitrates between replicas (previous test)")
    store = make_store()
    claim = await store.claim("receipts:t1")
    assert claim is not None
    await claim.release()


async def test_a_dsn_before_the_submission_is_recorded_keeps_its_status(
        make_store: StoreFactory) -> None:
    """The operator's DSN can be applied while the row is still leased (it answered within the
    same second): recording the submission afterwards keeps the final status, so the sweep of
    mails without a final report never sends a second, negative Z02 for it."""
    store = make_store()
    await store.record_inbound(replace(inbound(), outbox=(mail(1),)))
    (leased,) = await store.lease(tenant_id="t1", kinds=SMTP, limit=1, lease_seconds=30)
    await store.record_returned_mail(ReturnedMail(
        tenant_id="t1", key="<dsn-early@mx>", received_at=time.time(), raw=DSN,
        status=ReceiptStatus.MATCHED, kind="dsn", outcome="positive", outbox_id=leased.id,
        updates=(ReceiptUpdate(leased.id, delivery_status="delivered",
                               audit=AuditEntry("imap poller", AuditAction.DELIVERED)),)))
    await store.mark_sent(leased.id, leased.token, "250", delivery_status="awaiting-report")
    detail = await store.get_outbox(leased.id)
    assert detail is not None
    assert detail.summary.state is OutboxState.SENT
    assert detail.summary.delivery_status == "delivered"
    assert await store.list_unconfirmed("t1", sent_before=time.time() + 3600) == []


@pytest.mark.parametrize(("status", "listed"), [
    ("awaiting-report", True), ("not-offered", True), ("not-requested", False),
    ("delivered", False)])
async def test_mails_whose_asked_report_cannot_come_are_unconfirmed(
        make_store: StoreFactory, status: str, listed: bool) -> None:
    """The sweep's rows: a report was asked for and none final came; `not-offered` (the
    operator does not do DSN) is one of them, `not-requested` (none was asked) is not."""
    store = make_store()
    await store.record_inbound(replace(inbound(), outbox=(mail(1),)))
    (leased,) = await store.lease(tenant_id="t1", kinds=SMTP, limit=1, lease_seconds=30)
    await store.mark_sent(leased.id, leased.token, "250", delivery_status=status)
    found = await store.list_unconfirmed("t1", sent_before=time.time() + 3600)
    assert found == ([leased.id] if listed else [])


async def test_mailbox_operations_are_audited_with_or_without_a_row(
        make_store: StoreFactory) -> None:
    """ECO.4.1.1: a mail fetched or filed is traced; about the row it matched (and that row's
    inbound message), or about no row."""
    store = make_store()
    inbound_id, row_id = await sent_row(store)
    await store.record_mailbox_audit(
        "t1", AuditEntry("host:1 receipts", AuditAction.FETCHED, "OK",
                         "imap://op:993/INBOX UID FETCH 7 BODY.PEEK[]: receipt 1 matched"),
        outbox_id=row_id)
    await store.record_mailbox_audit(
        "t1", AuditEntry("host:1 receipts", AuditAction.FILED, "OK",
                         "imap://op:993/INBOX UID MOVE 8 to unmatched"))
    fetched, filed = [r for r in await store.list_audit(tenant_id="t1")
                      if r.action in (AuditAction.FETCHED, AuditAction.FILED)]
    assert (fetched.outbox_id, fetched.inbound_id, fetched.result) == (row_id, inbound_id, "OK")
    assert fetched.actor == "host:1 receipts"
    assert (filed.outbox_id, filed.inbound_id, filed.tenant_id) == (None, None, "t1")
    assert filed.detail == "imap://op:993/INBOX UID MOVE 8 to unmatched"
    assert [r.action for r in await store.list_audit(outbox_id=row_id)
            if r.action is AuditAction.FETCHED] == [AuditAction.FETCHED]


async def test_a_retried_mail_starts_its_delivery_status_over(make_store: StoreFactory) -> None:
    """Failed by a DSN, retried by an operator, sent again: the report about the new submission
    must settle it and make its ZAM, so the old 'failed' is not kept over it."""
    store = make_store()
    _, row_id = await sent_row(store)
    await store.record_returned_mail(ReturnedMail(
        tenant_id="t1", key="<dsn-f@mx>", received_at=time.time(), raw=DSN,
        status=ReceiptStatus.MATCHED, kind="dsn", outcome="negative", outbox_id=row_id,
        updates=(ReceiptUpdate(row_id, delivery_status="failed", settle=False),)))
    detail = await store.get_outbox(row_id)
    assert detail is not None
    assert (detail.summary.state, detail.summary.delivery_status) == (OutboxState.FAILED, "failed")
    assert await store.retry_now(row_id)
    detail = await store.get_outbox(row_id)
    assert detail is not None
    assert detail.summary.delivery_status is None
    (leased,) = await store.lease(tenant_id="t1", kinds=SMTP, limit=1, lease_seconds=30)
    await store.mark_sent(leased.id, leased.token, "250", delivery_status="awaiting-report")
    detail = await store.get_outbox(row_id)
    assert detail is not None
    assert detail.summary.delivery_status == "awaiting-report"  # the sweep and the DSN see it
