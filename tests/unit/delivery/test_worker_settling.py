"""TenantDelivery with a real SQLite store and a scripted transport: a row whose stored mail
cannot be read ends dead with its follow-up while the rest of its batch is sent; a refusal is
not settled without its follow-up while the store is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from connector.delivery.retry import RetryPolicy
from connector.delivery.smtp import Outcome, SendResult, Stage
from connector.delivery.worker import DeliveryLimits, TenantDelivery
from connector.errors import StoreUnavailable
from connector.hl7.codes import SmtpErrorCode
from connector.store import OutboxItem, OutboxKind, OutboxLease, OutboxState
from connector.store.cipher import PayloadCipher
from connector.store.sqlite import SQLiteStore

FAST = DeliveryLimits(concurrency=1, batch_size=5, lease_seconds=0.6, poll_seconds=0.05)


class ScriptedSession:
    def __init__(self, transport: ScriptedTransport) -> None:
        self.transport = transport

    async def send(self, lease: OutboxLease) -> SendResult:
        self.transport.sent.append(lease.id)
        if self.transport.unreachable:
            return SendResult(Outcome.TRANSIENT, Stage.CONNECT, lease.message_id or "", None,
                              None, SmtpErrorCode.CANNOT_CONNECT, "",
                              "connection refused", dsn_requested=False)
        if self.transport.refuse:
            return SendResult(Outcome.PERMANENT, Stage.RCPT, lease.message_id or "", 550,
                              "5.1.1", SmtpErrorCode.BAD_ADDRESS, "5.1.1 unknown",
                              "RCPT refused with 550 5.1.1", dsn_requested=False)
        return SendResult(Outcome.SENT, Stage.DONE, lease.message_id or "", 250, None, None,
                          "", "accepted", dsn_requested=False,
                          dsn_unsupported=self.transport.dsn_unsupported)

    async def close(self) -> None:
        return None


class ScriptedTransport:
    name = "scripted"
    kind = OutboxKind.SMTP
    dead_on_refusal = False
    actor = "test"

    def __init__(self, *, refuse: bool = False, dsn_unsupported: bool = False,
                 unreachable: bool = False) -> None:
        self.refuse = refuse
        self.unreachable = unreachable
        self.dsn_unsupported = dsn_unsupported
        self.sent: list[int] = []

    def session(self) -> ScriptedSession:
        return ScriptedSession(self)


def item(n: int) -> OutboxItem:
    return OutboxItem("chu", OutboxKind.SMTP, f"mail {n}".encode(), message_id=f"<m{n}@x>",
                      envid=f"e{n}", recipient_domain="medecin.mssante.fr")


async def run_until(worker: TenantDelivery, store: SQLiteStore,
                    done: Callable[[dict[int, OutboxState]], bool]) -> None:
    """Run `worker` until the rows' states satisfy `done` (10 s at most), then stop it."""
    worker.start()
    try:
        deadline = time.monotonic() + 10.0
        while not done(await states(store)):
            assert time.monotonic() < deadline, "condition not reached in time"
            await asyncio.sleep(0.02)
    finally:
        await worker.stop(grace_seconds=2)


async def states(store: SQLiteStore) -> dict[int, OutboxState]:
    return {row.id: row.state for row in await store.list_outbox()}


async def test_an_unreadable_row_ends_dead_with_its_follow_up_and_the_batch_is_sent(
        tmp_path: Path) -> None:
    old = SQLiteStore(tmp_path / "c.db", cipher=PayloadCipher({"a": b"A" * 32}, "a"))
    old.open()
    (lost_id,) = await old.enqueue([item(0)], now=time.time() - 10)
    await old.close()
    store = SQLiteStore(tmp_path / "c.db", cipher=PayloadCipher({"b": b"B" * 32}, "b"))
    store.open()
    good = await store.enqueue([item(n) for n in (1, 2)])
    followed: list[tuple[int, SendResult]] = []

    async def follow_up(lease: OutboxLease, result: SendResult) -> Sequence[OutboxItem]:
        followed.append((lease.id, result))
        return ()

    transport = ScriptedTransport()
    worker = TenantDelivery("chu", store, transport, limits=FAST,  # type: ignore[arg-type]
                            follow_up=follow_up)
    expected = {lost_id: OutboxState.DEAD, **dict.fromkeys(good, OutboxState.SENT)}
    await run_until(worker, store, lambda rows: rows == expected)
    assert sorted(transport.sent) == sorted(good)  # nothing sent for the unreadable row
    ((row_id, result),) = followed
    assert row_id == lost_id
    assert result.error_code is SmtpErrorCode.PROCESSING_ERROR
    assert "cannot be read" in result.detail
    await store.close()


async def test_a_refusal_is_not_settled_without_its_follow_up(tmp_path: Path) -> None:
    """The follow-up (the negative ZAM) fails once on the store: the row is not settled
    without it; it is tried again and settled with it."""
    store = SQLiteStore(tmp_path / "c.db")
    store.open()
    (row_id,) = await store.enqueue([item(1)])
    calls: list[int] = []

    async def follow_up(lease: OutboxLease, result: SendResult) -> Sequence[OutboxItem]:
        calls.append(lease.id)
        if len(calls) == 1:
            raise StoreUnavailable("SQLite read failed: database is locked")
        return (OutboxItem("chu", OutboxKind.HL7, b"MSH|ZAM", message_id=f"Z{lease.id}"),)

    transport = ScriptedTransport(refuse=True)
    worker = TenantDelivery("chu", store, transport, limits=FAST,  # type: ignore[arg-type]
                            follow_up=follow_up)
    await run_until(worker, store, lambda rows: rows.get(row_id) is OutboxState.FAILED)
    assert calls == [row_id, row_id]  # the first follow-up failed: tried again with the send
    zams = [row for row in await store.list_outbox() if row.kind is OutboxKind.HL7]
    assert len(zams) == 1
    await store.close()


async def test_a_report_asked_for_and_not_offered_is_marked_for_the_sweep(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c.db")
    store.open()
    (row_id,) = await store.enqueue([item(1)])
    worker = TenantDelivery("chu", store, ScriptedTransport(dsn_unsupported=True),  # type: ignore[arg-type]
                            limits=FAST)
    await run_until(worker, store, lambda rows: rows.get(row_id) is OutboxState.SENT)
    (row,) = await store.list_outbox()
    assert row.delivery_status == "not-offered"
    assert await store.list_unconfirmed("chu", sent_before=time.time() + 3600) == [row_id]
    await store.close()


async def test_rows_past_their_budget_end_dead_while_the_operator_is_unreachable(
        tmp_path: Path) -> None:
    """The operator cannot be reached (the tenant pauses after the first try): every row of the
    batch whose retry budget is spent ends dead with its follow-up at once, not one per pause."""
    store = SQLiteStore(tmp_path / "c.db")
    store.open()
    ids = await store.enqueue([item(n) for n in range(5)], now=time.time() - 1000)
    followed: list[int] = []

    async def follow_up(lease: OutboxLease, result: SendResult) -> Sequence[OutboxItem]:
        followed.append(lease.id)
        assert result.error_code is SmtpErrorCode.CANNOT_CONNECT
        return ()

    transport = ScriptedTransport(unreachable=True)
    worker = TenantDelivery("chu", store, transport,  # type: ignore[arg-type]
                            limits=FAST, retry=RetryPolicy(budget_seconds=100),
                            follow_up=follow_up)
    await run_until(worker, store, lambda rows: set(rows.values()) == {OutboxState.DEAD})
    assert len(transport.sent) == 1  # tried once: the others were released while paused
    assert sorted(followed) == sorted(ids)
    await store.close()
