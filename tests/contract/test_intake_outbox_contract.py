"""Inbound messages and their mails in one transaction, and the audit trail of outbox
transitions: run against every adapter (PostgreSQL skipped with the reason when absent)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from connector.errors import LeaseLost
from connector.store import (
    AuditAction,
    AuditEntry,
    InboundStatus,
    OutboxItem,
    OutboxKind,
    OutboxState,
)
from tests.contract.conftest import StoreFactory
from tests.contract.test_store_contract import (
    NEW_V1,
    REPLACE_V1_BY_V2,
    REPLACE_V1_BY_V3,
    doc_request,
    inbound,
)

SMTP = (OutboxKind.SMTP,)
LARGE = b"X" * 70_000  # goes to SQLite's payload log


def mail(n: int, payload: bytes = b"") -> OutboxItem:
    return OutboxItem(tenant_id="t1", kind=OutboxKind.SMTP,
                      payload=payload or f"mail {n}".encode(),
                      message_id=f"<m{n}@connector.example>", envid=f"env-{n}",
                      recipient_domain="medecin.mssante.fr")


async def test_accepted_message_enqueues_its_mails_with_it(make_store: StoreFactory) -> None:
    store = make_store()
    receipt = await store.record_inbound(replace(inbound(), outbox=(mail(1), mail(2, LARGE))))
    assert receipt.queued == 2
    rows = sorted(await store.list_outbox(), key=lambda r: r.id)
    assert [r.inbound_id for r in rows] == [receipt.inbound_id] * 2
    assert [r.state for r in rows] == [OutboxState.READY] * 2
    assert [r.envid for r in rows] == ["env-1", "env-2"]
    leases = await store.lease(tenant_id="t1", kinds=SMTP, limit=10, lease_seconds=30)
    assert sorted(x.payload for x in leases) == sorted([b"mail 1", LARGE])


async def test_retransmission_enqueues_nothing_again(make_store: StoreFactory) -> None:
    store = make_store()
    message = replace(inbound(), outbox=(mail(1),))
    await store.record_inbound(message)
    again = await store.record_inbound(message)
    assert again.retransmission_of is not None
    assert again.queued == 0
    assert len(await store.list_outbox()) == 1


async def test_rejected_message_enqueues_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    receipt = await store.record_inbound(
        replace(inbound(status=InboundStatus.REJECTED), outbox=(mail(1),)))
    assert receipt.queued == 0
    assert await store.list_outbox() == []


async def test_version_conflict_enqueues_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    await store.record_inbound(doc_request(1, NEW_V1))
    await store.record_inbound(doc_request(2, REPLACE_V1_BY_V2))
    stale = await store.record_inbound(replace(doc_request(3, REPLACE_V1_BY_V3),
                                               outbox=(mail(3),)))
    assert stale.version_conflict is not None
    assert stale.queued == 0
    assert await store.list_outbox() == []


async def test_concurrent_messages_each_get_their_own_mails(make_store: StoreFactory) -> None:
    store = make_store()
    messages = [replace(inbound(raw=f"MSH|{n}".encode(), control_id=f"C{n}"),
                        outbox=(mail(2 * n), mail(2 * n + 1)))
                for n in range(40)]
    receipts = await asyncio.gather(*(store.record_inbound(m) for m in messages))
    rows = await store.list_outbox(limit=1000)
    by_inbound: dict[int | None, set[str | None]] = {}
    for row in rows:
        by_inbound.setdefault(row.inbound_id, set()).add(row.envid)
    for n, receipt in enumerate(receipts):
        assert by_inbound[receipt.inbound_id] == {f"env-{2 * n}", f"env-{2 * n + 1}"}


async def test_transitions_write_their_audit_entry(make_store: StoreFactory) -> None:
    store = make_store()
    receipt = await store.record_inbound(replace(inbound(), outbox=(mail(1), mail(2))))
    first, second = await store.lease(tenant_id="t1", kinds=SMTP, limit=2, lease_seconds=30)
    before = time.time()
    await store.schedule_retry(first.id, first.token, time.time(), "451", "try later",
                               audit=AuditEntry("worker host:1", AuditAction.DEFERRED, "451",
                                                "4.3.0 try later"))
    await store.mark_sent(second.id, second.token, "250",
                          audit=AuditEntry("worker host:1", AuditAction.SUBMITTED, "250", "ok"))
    assert await store.cancel(first.id, audit=AuditEntry("operator", AuditAction.CANCELLED))
    records = await store.list_audit()
    assert [(r.outbox_id, r.action, r.result) for r in records] == [
        (first.id, AuditAction.DEFERRED, "451"),
        (second.id, AuditAction.SUBMITTED, "250"),
        (first.id, AuditAction.CANCELLED, None)]
    assert {r.tenant_id for r in records} == {"t1"}
    assert {r.inbound_id for r in records} == {receipt.inbound_id}
    assert all(r.at >= before - 1 for r in records)
    assert [r.actor for r in await store.list_audit(outbox_id=second.id)] == ["worker host:1"]
    assert await store.list_audit(since=time.time() + 60) == []


async def test_a_refused_transition_writes_no_audit_entry(make_store: StoreFactory) -> None:
    store = make_store()
    await store.record_inbound(replace(inbound(), outbox=(mail(1),)))
    (leased,) = await store.lease(tenant_id="t1", kinds=SMTP, limit=1, lease_seconds=30)
    try:
        await store.mark_sent(leased.id, "not-the-token",
                              audit=AuditEntry("worker", AuditAction.SUBMITTED, "250"))
    except LeaseLost:
        pass
    else:
        raise AssertionError("a wrong token must lose the lease")
    assert not await store.retry_now(leased.id,
                                     audit=AuditEntry("operator", AuditAction.RETRIED))
    assert await store.list_audit() == []


async def test_outbox_stats_count_rows_per_tenant_kind_and_state(
        make_store: StoreFactory) -> None:
    store = make_store()
    await store.enqueue([mail(1), mail(2), replace(mail(3), tenant_id="t2")], now=1000.0)
    await store.enqueue([mail(4)], now=2000.0)
    (leased,) = await store.lease(tenant_id="t1", kinds=SMTP, limit=1, lease_seconds=30)
    await store.mark_sent(leased.id, leased.token, "250")
    stats = {(s.tenant_id, s.kind, s.state): (s.count, s.oldest_created_at)
             for s in await store.outbox_stats()}
    assert stats == {
        ("t1", OutboxKind.SMTP, OutboxState.READY): (2, 1000.0),
        ("t1", OutboxKind.SMTP, OutboxState.SENT): (1, 1000.0),
        ("t2", OutboxKind.SMTP, OutboxState.READY): (1, 1000.0)}


async def test_the_audit_trail_pages_in_its_order(make_store: StoreFactory) -> None:
    """`after_id`: the rows after that one, by time then id, whatever the page size; rows
    written at the same moment keep their id order."""
    store = make_store()
    for n in range(7):
        await store.record_mailbox_audit("t1", AuditEntry(f"poller {n}", AuditAction.FETCHED))
    whole = await store.list_audit()
    assert [r.actor for r in whole] == [f"poller {n}" for n in range(7)]
    for size in (1, 2, 3, 7, 8):
        pages: list[list[str]] = []
        after: int | None = None
        while True:
            page = await store.list_audit(limit=size, after_id=after)
            if not page:
                break
            pages.append([r.actor for r in page])
            after = page[-1].id
        assert [actor for page in pages for actor in page] == [r.actor for r in whole]
        assert all(len(page) == size for page in pages[:-1])
    assert await store.list_audit(after_id=whole[-1].id) == []
    assert await store.list_audit(after_id=10**12) == []  # not a row: nothing after it
    make_store.query("UPDATE audit SET at = 1000.0 RETURNING id")  # one moment: the ids decide
    page = await store.list_audit(limit=3, after_id=whole[2].id)
    assert [r.id for r in page] == [r.id for r in whole[3:6]]
