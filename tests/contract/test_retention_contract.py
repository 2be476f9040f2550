"""The retention purge, run against every adapter (PostgreSQL skipped with the reason when
absent): payloads of finished work dropped after the cutoff, rows and metadata kept, nothing
still needed touched."""

from __future__ import annotations

import time
from dataclasses import replace

from connector.store import (
    InboundStatus,
    OutboxKind,
    OutboxState,
    PurgeCounts,
    ReceiptStatus,
    RetentionStore,
    ReturnedMail,
)
from tests.contract.conftest import Store, StoreFactory
from tests.contract.test_intake_outbox_contract import LARGE, mail
from tests.contract.test_store_contract import inbound

DAY = 86400.0
SMTP = (OutboxKind.SMTP,)


def message(n: int, *, at: float, status: InboundStatus = InboundStatus.ACCEPTED,
            raw: bytes | None = None):  # type: ignore[no-untyped-def]
    body = raw if raw is not None else f"MSH|^~\\&|A|B|C|D|1||ORU^R01|R{n}|P|2.5\r".encode()
    return inbound(body, control_id=f"R{n}", at=at, status=status)


async def deliver_all(store: Store, ids: list[int]) -> None:
    leases = await store.lease(tenant_id="t1", kinds=SMTP, limit=100, lease_seconds=60)
    for lease in leases:
        if lease.id in ids:
            await store.mark_sent(lease.id, lease.token, "250")
            assert await store.settle(lease.id, delivered=True)
        else:
            await store.schedule_retry(lease.id, lease.token, time.time() + 3600, "451",
                                       "4.2.1 mailbox busy")


async def test_payloads_of_finished_work_are_dropped_and_the_rest_kept(
        make_store: StoreFactory) -> None:
    store = make_store()
    purger: RetentionStore = store  # both adapters implement the port
    assert purger is store
    now = time.time()
    old, recent = now - 10 * DAY, now - 60.0
    rejected_old = await store.record_inbound(
        message(1, at=old, status=InboundStatus.REJECTED, raw=b"MSH|^~\\&|A|B|C|D|1||ORU^R01|R1"
                b"|P|2.5\rOBX|1|ED|" + LARGE + b"\r"))
    finished_old = await store.record_inbound(replace(message(2, at=old),
                                                      outbox=(mail(1, LARGE),)))
    waiting_old = await store.record_inbound(replace(message(3, at=old),
                                                     outbox=(mail(2), mail(3))))
    rejected_recent = await store.record_inbound(
        message(4, at=recent, status=InboundStatus.REJECTED))
    rows = {r.message_id: r.id for r in await store.list_outbox()}
    delivered, half_done, retrying = rows["<m1@connector.example>"], rows[
        "<m2@connector.example>"], rows["<m3@connector.example>"]
    await deliver_all(store, [delivered, half_done])
    # They finished long ago: their last activity is what counts, not when they were queued.
    for row in (delivered, half_done):
        make_store.execute("UPDATE outbox SET updated_at = ? WHERE id = ?", (old + 3600, row))
    await store.record_returned_mail(ReturnedMail(
        tenant_id="t1", key="old", received_at=old, raw=b"DSN about DUPONT Jeanne",
        status=ReceiptStatus.UNMATCHED, detail="not ours"))
    await store.record_returned_mail(ReturnedMail(
        tenant_id="t1", key="recent", received_at=recent, raw=b"recent DSN",
        status=ReceiptStatus.UNMATCHED, detail="not ours"))

    counts = await store.purge_payloads(before=now - DAY, now=now)

    assert (counts.inbound, counts.outbox, counts.receipts) == (2, 2, 1)
    for purged in (rejected_old.inbound_id, finished_old.inbound_id):
        detail = await store.get_inbound(purged)
        assert detail is not None
        assert (detail.raw, detail.report, detail.purged_at) == (b"", None, now)
        assert detail.summary.control_id in ("R1", "R2")  # the metadata stays
        assert detail.ack.startswith(b"MSH|ack-for-")  # retransmissions still get their ACK
    for kept, raw_start in ((waiting_old.inbound_id, b"MSH"), (rejected_recent.inbound_id, b"MSH")):
        detail = await store.get_inbound(kept)
        assert detail is not None
        assert detail.purged_at is None
        assert detail.raw.startswith(raw_start)
    for purged in (delivered, half_done):
        outbox = await store.get_outbox(purged)
        assert outbox is not None
        assert (outbox.payload, outbox.error_detail, outbox.purged_at) == (b"", None, now)
        assert outbox.summary.state is OutboxState.DELIVERED
    waiting = await store.get_outbox(retrying)
    assert waiting is not None
    assert (waiting.payload, waiting.purged_at) == (b"mail 3", None)
    assert waiting.error_detail == "4.2.1 mailbox busy"
    assert len(await store.list_returned_mails()) == 2  # the rows stay

    again = await store.purge_payloads(before=now - DAY, now=now)
    assert (again.inbound, again.outbox, again.receipts) == (0, 0, 0)


async def test_a_purged_outbox_row_cannot_be_retried(make_store: StoreFactory) -> None:
    store = make_store()
    now = time.time()
    receipt = await store.record_inbound(replace(message(1, at=now - 5 * DAY),
                                                 outbox=(mail(1), mail(2))))
    purged, kept = sorted(r.id for r in await store.list_outbox())
    leases = {x.id: x for x in await store.lease(tenant_id="t1", kinds=SMTP, limit=10,
                                                 lease_seconds=60)}
    for row in (purged, kept):
        await store.mark_dead(row, leases[row].token, "451", "budget spent")
    # One died days ago; the other just now: it keeps its payload for an operator's retry.
    make_store.execute("UPDATE outbox SET updated_at = ? WHERE id = ?", (now - 4 * DAY, purged))
    counts = await store.purge_payloads(before=now - DAY, now=now)
    # The old row goes; the message goes too (no mail of it waits or is leased: a retry needs
    # the mail's payload only).
    assert (counts.outbox, counts.inbound) == (1, 1)
    assert not await store.retry_now(purged)  # nothing left to send
    assert await store.retry_now(kept)
    detail = await store.get_inbound(receipt.inbound_id)
    assert detail is not None
    assert detail.purged_at == now
    lease = await store.lease(tenant_id="t1", kinds=SMTP, limit=10, lease_seconds=60)
    assert [(x.id, x.payload) for x in lease] == [(kept, b"mail 2")]


async def test_the_purge_runs_in_batches(make_store: StoreFactory) -> None:
    store = make_store()
    now = time.time()
    for n in range(7):
        await store.record_inbound(message(n, at=now - 3 * DAY + n,
                                           status=InboundStatus.REJECTED))
    counts = await store.purge_payloads(before=now - DAY, now=now, batch=3)
    assert counts == PurgeCounts(inbound=7, segments=counts.segments)
    assert all(s.status is InboundStatus.REJECTED for s in await store.list_inbound())
    for summary in await store.list_inbound():
        detail = await store.get_inbound(summary.id)
        assert detail is not None
        assert detail.purged_at == now


async def test_work_still_owed_keeps_its_payload(make_store: StoreFactory) -> None:
    """What decides an outbox row's age is its last activity: a mail queued long ago and sent
    today, and a mail whose read receipt came today, keep their payloads; a mail waiting for its
    delivery report goes once it was sent before the cutoff, and the final-report sweep no
    longer returns it (the retention is longer than that wait: `settings`)."""
    store = make_store()
    now = time.time()
    old = now - 10 * DAY
    await store.record_inbound(replace(message(1, at=old), outbox=(mail(1), mail(2), mail(3))))
    rows = sorted(r.id for r in await store.list_outbox())
    sent_today, read_today, awaiting = rows
    leases = {x.id: x for x in await store.lease(tenant_id="t1", kinds=SMTP, limit=10,
                                                 lease_seconds=60)}
    for row in rows:
        await store.mark_sent(row, leases[row].token, "250", delivery_status="awaiting-report")
    assert await store.settle(read_today, delivered=True)
    make_store.execute("UPDATE outbox SET updated_at = ?, receipt_at = ? WHERE id = ?",
                       (old, now, read_today))
    make_store.execute("UPDATE outbox SET updated_at = ?, sent_at = ? WHERE id = ?",
                       (old + 60, old + 60, awaiting))
    assert await store.list_unconfirmed("t1", sent_before=now) == [awaiting]

    counts = await store.purge_payloads(before=now - DAY, now=now)

    assert counts.outbox == 1
    for row, purged in ((sent_today, False), (read_today, False), (awaiting, True)):
        detail = await store.get_outbox(row)
        assert detail is not None
        assert (detail.purged_at is not None) is purged, row
    assert await store.list_unconfirmed("t1", sent_before=now) == []


async def test_the_summary_reads_no_payload_purged_or_not(make_store: StoreFactory) -> None:
    store = make_store()
    now = time.time()
    first = await store.record_inbound(message(1, at=now - 5 * DAY, status=InboundStatus.REJECTED))
    second = await store.record_inbound(message(2, at=now))
    await store.purge_payloads(before=now - DAY, now=now)
    for receipt in (first, second):
        detail = await store.get_inbound(receipt.inbound_id)
        assert detail is not None
        assert await store.get_inbound_summary(receipt.inbound_id) == detail.summary
    assert await store.get_inbound_summary(999_999) is None
