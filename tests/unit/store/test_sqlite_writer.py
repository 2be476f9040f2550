"""The SQLite writer: jobs run on the caller's event loop in a shared transaction, which that
loop commits; the flusher (a process of its own) flushes the WAL before any caller is woken,
payload-log records are synced before the COMMIT that points at them, and the commit thread runs
what a loop cannot (write lock held elsewhere, a loop that closed). What every adapter must do is
in tests/contract; this is how SQLite does it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from connector.errors import StoreError, StoreUnavailable
from connector.store import InboundMessage, InboundStatus
from connector.store import sqlite_writer as sqlite_writer_module
from connector.store.flusher import Flusher
from connector.store.sqlite import SQLiteStore


def inbound(n: int) -> InboundMessage:
    raw = f"MSH|^~\\&|A|B|C|D|1||ADT^A01|W{n}|P|2.5\rPID|1||{n}\r".encode()
    return InboundMessage(
        tenant_id="t1", listener="l1", peer="127.0.0.1:1", received_at=time.time(), raw=raw,
        digest=hashlib.sha256(raw).digest(), sending_application="A", sending_facility="B",
        message_type="ADT^A01", control_id=f"W{n}", version="2.5",
        status=InboundStatus.ACCEPTED, ack_code="AA", ack=b"ack", error_code=None,
        error_detail=None)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "store.db", busy_timeout_ms=5000)
    opened.open()
    yield opened
    await opened.close()


def open_with_sync(path: Path, sync: Callable[[int], None]) -> SQLiteStore:
    """A store whose flushes run `serve` in a thread with `sync` as fdatasync."""
    opened = SQLiteStore(path, busy_timeout_ms=5000,
                         flusher=lambda wal, payloads: Flusher.thread(wal, payloads, sync))
    opened.open()
    return opened


def file_of(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def count_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM inbound").fetchone()[0])


async def test_statements_and_commit_run_on_the_loop_and_flushes_elsewhere(
        store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    flushed_here: list[int] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        flushed_here.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)

    def job(conn: sqlite3.Connection) -> int:
        threads.append(threading.get_ident())
        conn.execute("INSERT INTO events (at, tenant_id, kind) VALUES (0, 't1', 'probe')")
        return 7

    assert await store._submit(job) == 7
    assert await store.record_inbound(inbound(1))
    assert threads == [threading.get_ident()]
    assert store.batches == 2  # two WAL flushes, each answered before its caller woke...
    assert flushed_here == []  # ...made by the flusher process, not by a thread of this one


async def test_a_held_write_lock_never_blocks_the_loop(store: SQLiteStore, tmp_path: Path
                                                       ) -> None:
    # The loop's BEGIN gives up at once on a held lock (the commit thread does the waiting).
    assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    writing = asyncio.create_task(store.record_inbound(inbound(1)))
    # Turns of the loop while the lock is held: a writer that waited for it on the loop would
    # hold the loop until its busy timeout, then fail, and the write would be done here.
    for _ in range(100):
        await asyncio.sleep(0)
    assert not writing.done()  # waiting for the lock, on the commit thread
    holder.execute("ROLLBACK")
    receipt = await asyncio.wait_for(writing, 5)
    holder.close()
    assert receipt.inbound_id > 0
    assert count_rows(tmp_path / "store.db") == 1


async def test_a_lock_held_past_the_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db", busy_timeout_ms=100)
    store.open()
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable, match="database is locked"):
        await store.record_inbound(inbound(1))
    holder.execute("ROLLBACK")
    holder.close()
    assert (await store.record_inbound(inbound(2))).inbound_id > 0
    await store.close()


async def test_a_failing_job_does_not_sink_its_batch(store: SQLiteStore, tmp_path: Path
                                                      ) -> None:
    def failing(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO events (at, tenant_id, kind) VALUES (0, 't1', 'probe')")
        raise sqlite3.IntegrityError("a constraint this job broke")

    # The first call finds the store idle and runs alone; the rest queue behind its commit and
    # make one batch, which holds the failing job.
    results = await asyncio.gather(
        store.record_inbound(inbound(0)),
        *(store.record_inbound(inbound(n)) for n in range(1, 20)),
        store._submit(failing),
        *(store.record_inbound(inbound(n)) for n in range(20, 40)),
        return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert isinstance(failures[0], StoreUnavailable)
    assert count_rows(tmp_path / "store.db") == 40
    with sqlite3.connect(tmp_path / "store.db") as conn:  # the failing job left nothing
        assert conn.execute("SELECT count(*) FROM events WHERE kind = 'probe'").fetchone()[0] == 0


async def test_close_finishes_what_was_submitted(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    store.open()
    writes = [asyncio.create_task(store.record_inbound(inbound(n))) for n in range(200)]
    await asyncio.sleep(0)  # every task has submitted its job
    await store.close()
    receipts = await asyncio.gather(*writes)
    assert len({r.inbound_id for r in receipts}) == 200
    assert count_rows(tmp_path / "store.db") == 200
    assert store.batches < 200


def big_inbound(n: int) -> InboundMessage:
    """A message over the inline limit: its payload goes to the payload log."""
    message = inbound(n)
    raw = message.raw + b"OBX|1|ED|||" + b"A" * 40_000 + b"\r"
    return dataclasses.replace(message, raw=raw, digest=hashlib.sha256(raw).digest())


async def stored_raw(store: SQLiteStore, inbound_id: int) -> bytes:
    detail = await store.get_inbound(inbound_id)
    assert detail is not None
    return detail.raw


def max_inbound_id(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM inbound").fetchone()[0])


async def test_no_caller_is_woken_before_the_flush_that_covers_its_commit(
        tmp_path: Path) -> None:
    durable = 0

    def sync(fd: int) -> None:
        nonlocal durable
        committed = max_inbound_id(tmp_path / "store.db")  # every COMMIT before the flush
        os.fdatasync(fd)
        durable = committed

    store = open_with_sync(tmp_path / "store.db", sync)

    async def write(n: int) -> None:
        receipt = await store.record_inbound(inbound(n))
        assert receipt.inbound_id <= durable  # its row was committed before a finished flush

    await asyncio.gather(*(write(n) for n in range(300)))
    assert 1 < store.batches < 300  # flushes were shared
    await store.close()


def slow_flushes(seconds: float) -> Callable[[int], None]:
    def slow_sync(fd: int) -> None:
        time.sleep(seconds)
        os.fdatasync(fd)

    return slow_sync


async def test_the_next_statements_run_while_the_disk_flushes(tmp_path: Path) -> None:
    store = open_with_sync(tmp_path / "store.db", slow_flushes(0.2))
    first = asyncio.create_task(store.record_inbound(inbound(1)))
    await asyncio.sleep(0.05)  # its flush has begun
    ran: list[bool] = []

    def second(conn: sqlite3.Connection) -> int:
        ran.append(first.done())
        conn.execute("INSERT INTO events (at, tenant_id, kind) VALUES (0, 't1', 'probe')")
        return store.batches

    flushes_when_run = await store._submit(second)
    assert ran == [False]  # at once, while the first transaction was still flushing
    assert first.done()
    assert flushes_when_run == 0
    assert store.batches == 2  # then a flush of its own after its COMMIT
    await store.close()


async def test_payload_records_are_synced_before_the_commit_that_points_at_them(
        tmp_path: Path) -> None:
    flushed: list[tuple[str, int]] = []

    def sync(fd: int) -> None:
        flushed.append((Path(file_of(fd)).name, max_inbound_id(tmp_path / "store.db")))
        os.fdatasync(fd)

    store = open_with_sync(tmp_path / "store.db", sync)
    receipt = await store.record_inbound(big_inbound(1))
    # The segment first, while the row was not committed yet; then the WAL, with it.
    assert flushed == [("segment-000001.log", 0), ("store.db-wal", receipt.inbound_id)]
    assert await stored_raw(store, receipt.inbound_id) == big_inbound(1).raw
    await store.close()


class HeldWalFlushes:
    """`open_with_sync`'s sync for a transaction that comes while the WAL flush before it runs:
    once `armed`, each WAL flush waits for `release`, and each flush is recorded (the file's
    name, the highest inbound id committed when it went ahead)."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.armed, self.release = threading.Event(), threading.Event()
        self.flushed: list[tuple[str, int]] = []

    def __call__(self, fd: int) -> None:
        name = Path(file_of(fd)).name
        if self.armed.is_set():
            if name.endswith("-wal"):
                self.release.wait(5)
            self.flushed.append((name, max_inbound_id(self.database)))
        os.fdatasync(fd)


async def test_payload_records_are_flushed_right_behind_the_wal_flush_under_way(
        tmp_path: Path) -> None:
    """A job reserves a payload record while the WAL flush of the transaction before runs:
    its record is written and its flush asked at once, queued behind the WAL's, not once the
    loop has read the WAL's reply; still before the COMMIT that points at it."""
    flushes = HeldWalFlushes(tmp_path / "store.db")
    store = open_with_sync(tmp_path / "store.db", flushes)
    flushes.armed.set()
    first = asyncio.create_task(store.record_inbound(inbound(1)))
    await asyncio.sleep(0.05)  # committed; its WAL flush waits for `release`
    second = asyncio.create_task(store.record_inbound(big_inbound(2)))
    await asyncio.sleep(0.05)  # run in the next transaction, its record reserved
    flushes.release.set()
    time.sleep(0.3)  # the loop blocked: it reads no reply meanwhile
    flushed_while_blocked = list(flushes.flushed)
    first_receipt, second_receipt = await asyncio.gather(first, second)
    assert flushed_while_blocked == [("store.db-wal", first_receipt.inbound_id),
                                     ("segment-000001.log", first_receipt.inbound_id)]
    assert flushes.flushed[2:] == [("store.db-wal", second_receipt.inbound_id)]
    assert await stored_raw(store, second_receipt.inbound_id) == big_inbound(2).raw
    await store.close()


async def test_a_payload_write_failing_behind_a_wal_flush_leaves_that_flush_waited_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The early payload write fails while the WAL flush before it runs: its transaction is
    lost, and the store is not idle until that flush is answered (stop() waits for it)."""
    flushes = HeldWalFlushes(tmp_path / "store.db")
    store = open_with_sync(tmp_path / "store.db", flushes)
    real_write = store._payloads.write

    def write_failing_with_records() -> int | None:
        if store._payloads.unwritten:
            raise OSError(28, "No space left on device")
        return real_write()

    monkeypatch.setattr(store._payloads, "write", write_failing_with_records)
    flushes.armed.set()
    first = asyncio.create_task(store.record_inbound(inbound(1)))
    await asyncio.sleep(0.05)  # committed; its WAL flush waits for `release`
    with pytest.raises(StoreUnavailable, match="payload log could not be written"):
        await store.record_inbound(big_inbound(2))
    assert store._writer is not None
    assert not store._writer._idle.is_set()  # the first's flush is still under way
    threading.Timer(0.2, flushes.release.set).start()
    await asyncio.wait_for(store.close(), 5)
    assert (await asyncio.wait_for(first, 1)).inbound_id > 0


async def test_a_transaction_sqlite_rolled_back_behind_a_wal_flush_is_lost_unflushed(
        tmp_path: Path) -> None:
    """A job reserves a payload record, then SQLite rolls the shared transaction back (a full
    disk), while the WAL flush before it runs: the transaction is lost at once, no segment
    flush is asked for it, and the first caller is answered once its flush returns."""
    flushes = HeldWalFlushes(tmp_path / "store.db")
    store = open_with_sync(tmp_path / "store.db", flushes)
    flushes.armed.set()
    first = asyncio.create_task(store.record_inbound(inbound(1)))
    await asyncio.sleep(0.05)  # committed; its WAL flush waits for `release`
    second = asyncio.create_task(store.record_inbound(inbound(2)))  # the next transaction

    def reserves_then_rolled_back(conn: sqlite3.Connection) -> None:
        store._payloads.append(b"x" * 40_000)
        conn.execute("ROLLBACK")  # what SQLite does itself on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")

    third = asyncio.create_task(store._submit(reserves_then_rolled_back))
    await asyncio.sleep(0.05)
    flushes.release.set()
    results = await asyncio.wait_for(asyncio.gather(first, second, third,
                                                    return_exceptions=True), 5)
    assert not isinstance(results[0], BaseException)
    assert isinstance(results[1], StoreUnavailable)
    assert "rolled the transaction back" in str(results[1])
    assert isinstance(results[2], StoreUnavailable)
    # No segment flush for the lost transaction.
    assert [name for name, _ in flushes.flushed] == ["store.db-wal"]
    assert count_rows(tmp_path / "store.db") == 1
    assert (await store.record_inbound(big_inbound(3))).inbound_id > 0
    await store.close()


async def written_once_with_its_flusher(tmp_path: Path) -> tuple[SQLiteStore, int]:
    """A store whose flusher is a process (its pid), one write answered."""
    store = SQLiteStore(tmp_path / "store.db")
    store.open()
    assert (await store.record_inbound(inbound(1))).inbound_id > 0
    assert store._writer is not None
    assert store._writer._flusher is not None
    pid = store._writer._flusher.pid
    assert pid is not None
    assert pid != os.getpid()
    return store, pid


async def test_a_flusher_that_dies_with_two_flushes_asked_answers_both(
        tmp_path: Path) -> None:
    """The WAL's flush and, behind it, a payload segment's: the flusher killed before either
    is answered; both callers are answered unavailable, none is left waiting."""
    store, pid = await written_once_with_its_flusher(tmp_path)
    os.kill(pid, signal.SIGSTOP)
    try:
        first = asyncio.create_task(store.record_inbound(inbound(2)))
        await asyncio.sleep(0.05)  # committed, its WAL flush asked
        second = asyncio.create_task(store.record_inbound(big_inbound(3)))
        await asyncio.sleep(0.05)  # its record's flush asked behind it
        assert len(store._writer._requests) == 2
    finally:
        os.kill(pid, signal.SIGKILL)
    results = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 5)
    assert [type(result) for result in results] == [StoreUnavailable, StoreUnavailable]
    assert store.closed
    await store.close()


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"),
                                     RuntimeError("a bug in the write")],
                         ids=["disk-full", "bug"])
async def test_a_failed_payload_write_is_unavailable_and_the_writer_goes_on(
        store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        failure: Exception) -> None:
    real_write = store._payloads.write
    calls = 0

    def write_once_failing() -> int | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise failure
        return real_write()

    monkeypatch.setattr(store._payloads, "write", write_once_failing)
    with pytest.raises(StoreUnavailable):
        await store.record_inbound(big_inbound(1))
    assert count_rows(tmp_path / "store.db") == 0  # rolled back: nothing half-recorded
    assert (await store.record_inbound(big_inbound(2))).inbound_id > 0
    assert count_rows(tmp_path / "store.db") == 1
    assert not store.closed


async def test_a_failed_payload_flush_is_unavailable_and_the_writer_goes_on(
        tmp_path: Path) -> None:
    failures = 1

    def sync(fd: int) -> None:
        nonlocal failures
        if Path(file_of(fd)).name.startswith("segment-") and failures:
            failures -= 1
            raise OSError(5, "Input/output error")
        os.fdatasync(fd)

    store = open_with_sync(tmp_path / "store.db", sync)
    with pytest.raises(StoreUnavailable, match="payload log could not be flushed"):
        await store.record_inbound(big_inbound(1))
    assert count_rows(tmp_path / "store.db") == 0
    receipt = await store.record_inbound(big_inbound(2))
    assert count_rows(tmp_path / "store.db") == 1
    assert await stored_raw(store, receipt.inbound_id) == big_inbound(2).raw
    assert not store.closed
    await store.close()


async def test_a_failed_commit_is_unavailable_and_the_writer_goes_on(
        store: SQLiteStore, tmp_path: Path) -> None:
    """A COMMIT SQLite refuses (here a deferred foreign key): that transaction's callers are
    answered unavailable, nothing of it stays, and the next write goes through."""
    def breaks_the_commit(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO events (at, tenant_id, kind) VALUES (0, 't1', 'probe')")
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY)")
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS child (parent_id REFERENCES parent (id)"
                     " DEFERRABLE INITIALLY DEFERRED)")
        conn.execute("INSERT INTO child VALUES (42)")

    with pytest.raises(StoreUnavailable, match="FOREIGN KEY"):
        await store._submit(breaks_the_commit)
    assert (await store.record_inbound(inbound(2))).inbound_id > 0
    assert count_rows(tmp_path / "store.db") == 1
    with sqlite3.connect(tmp_path / "store.db") as conn:  # the failed transaction left nothing
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    assert not store.closed


async def test_after_sqlite_rolled_the_transaction_back_no_later_job_commits_alone(
        store: SQLiteStore, tmp_path: Path) -> None:
    """SQLite rolls a transaction back by itself on a full disk or an I/O error. A job after
    that must not run: its SAVEPOINT would open a transaction of its own and its RELEASE
    commit it at once, before its payload record is synced and with no flush after it."""
    def rolled_back_by_sqlite(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")  # what SQLite does itself on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")

    results = await asyncio.gather(
        store.record_inbound(inbound(0)),  # runs alone; the next two share a transaction
        store._submit(rolled_back_by_sqlite), store.record_inbound(big_inbound(1)),
        return_exceptions=True)
    assert not isinstance(results[0], BaseException)
    assert isinstance(results[1], StoreUnavailable)
    assert isinstance(results[2], StoreUnavailable)
    assert count_rows(tmp_path / "store.db") == 1  # the big one was not committed alone
    assert (await store.record_inbound(big_inbound(2))).inbound_id > 0
    assert count_rows(tmp_path / "store.db") == 2


async def test_a_job_that_ends_its_savepoint_itself_fails_alone(store: SQLiteStore) -> None:
    """A bug in a job (it releases its savepoint, or commits) fails that job; the commit
    thread, which runs other loops' jobs, goes on."""
    def releases_itself(conn: sqlite3.Connection) -> None:
        conn.execute("RELEASE job")

    assert (await store.record_inbound(inbound(1))).inbound_id > 0  # this loop owns it

    async def other_loop() -> None:
        with pytest.raises(StoreError):
            await store._submit(releases_itself)
        assert (await store.record_inbound(inbound(2))).inbound_id > 0

    await asyncio.wait_for(asyncio.to_thread(asyncio.run, other_loop()), 5)
    with pytest.raises(StoreError):
        await store._submit(releases_itself)
    assert (await asyncio.wait_for(store.record_inbound(inbound(3)), 5)).inbound_id > 0


async def test_a_failed_wal_flush_stops_every_write_until_a_restart(tmp_path: Path) -> None:
    failing = True

    def sync(fd: int) -> None:
        if failing:
            raise OSError(5, "Input/output error")
        os.fdatasync(fd)

    store = open_with_sync(tmp_path / "store.db", sync)
    with pytest.raises(StoreUnavailable):
        await store.record_inbound(inbound(1))
    failing = False  # the disk came back: the page cache is still in doubt
    with pytest.raises(StoreUnavailable, match="restart"):
        await store.record_inbound(inbound(2))
    assert store.closed  # what readiness reports
    await store.close()
    reopened = SQLiteStore(tmp_path / "store.db")
    reopened.open()
    assert (await reopened.record_inbound(inbound(3))).inbound_id > 0
    await reopened.close()


async def test_a_flusher_that_dies_stops_every_write_until_a_restart(tmp_path: Path) -> None:
    """Killed (the OOM killer, an operator): whether its flush happened is unknown."""
    store, pid = await written_once_with_its_flusher(tmp_path)
    os.kill(pid, 9)
    with structlog.testing.capture_logs() as logs, pytest.raises(StoreUnavailable,
                                                                  match="restart"):
        await store.record_inbound(inbound(2))
    assert [e["event"] for e in logs if e["log_level"] == "critical"] == ["store_flush_failed"]
    with pytest.raises(StoreUnavailable, match="restart"):
        await store.record_inbound(inbound(3))
    assert store.closed
    await store.close()
    # The acknowledged row, and the second one's: committed before its flush was asked,
    # never acknowledged (its sender sends it again and gets that row's answer).
    assert count_rows(tmp_path / "store.db") == 2
    reopened = SQLiteStore(tmp_path / "store.db")
    reopened.open()
    assert (await reopened.record_inbound(inbound(4))).inbound_id > 0
    await reopened.close()


async def test_a_flusher_that_cannot_start_stops_the_store_opening(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the first write: `open()` fails, says why, and leaves nothing held."""
    monkeypatch.setattr(sys, "executable", "/bin/false")
    store = SQLiteStore(tmp_path / "store.db")
    with pytest.raises(StoreUnavailable,
                       match=r"cannot open the SQLite store: .*the flush process"):
        store.open()
    assert store.closed
    monkeypatch.undo()
    store.open()  # the lock was released
    assert (await store.record_inbound(inbound(1))).inbound_id > 0
    await store.close()


async def test_a_start_up_failed_half_way_stops_the_flusher(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Flusher] = []

    def flusher(wal: Path, payloads: Path) -> Flusher:
        started.append(Flusher.process(wal, payloads))
        return started[-1]

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    store = SQLiteStore(tmp_path / "store.db", flusher=flusher)
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    with pytest.raises(StoreUnavailable, match="can't start new thread"):
        store.open()
    monkeypatch.undo()
    assert len(started) == 1
    assert started[0].pid is not None
    assert not Path(f"/proc/{started[0].pid}").exists()  # stopped and reaped
    store.open()  # the lock and the database were let go
    await store.close()


async def test_a_flusher_that_dies_while_idle_is_noticed_at_once(tmp_path: Path) -> None:
    """Its pipe's end of file is read as it comes, not at the next write, and only once (a
    reader left on a closed pipe would wake the loop at every turn)."""
    store = SQLiteStore(tmp_path / "store.db")
    store.open()
    assert (await store.record_inbound(inbound(1))).inbound_id > 0
    assert store._writer is not None
    assert store._writer._flusher is not None
    assert store._writer._flusher.pid is not None
    os.kill(store._writer._flusher.pid, 9)
    for _ in range(100):
        if store.closed:
            break
        await asyncio.sleep(0.01)
    assert store.closed  # readiness says so before any sender tries
    assert store._writer._reader_loop is None  # no longer listening
    with pytest.raises(StoreUnavailable, match="restart"):
        await store.record_inbound(inbound(2))
    await store.close()
    assert count_rows(tmp_path / "store.db") == 1


async def test_another_loops_jobs_run_on_the_commit_thread(tmp_path: Path) -> None:
    """The loop that submitted first owns the transactions (the server's, in production). A
    caller on another event loop has its job run by the commit thread, so it never depends on
    a transaction or a flush of a loop that may close under it: here it is answered while the
    owner's flush is still under way, and its loop closes."""
    store = open_with_sync(tmp_path / "store.db", slow_flushes(0.3))
    first = asyncio.create_task(store.record_inbound(inbound(1)))  # flushes slowly
    await asyncio.sleep(0.05)
    ran_on: list[int] = []

    def job(conn: sqlite3.Connection) -> None:
        ran_on.append(threading.get_ident())
        conn.execute("INSERT INTO events (at, tenant_id, kind) VALUES (0, 't1', 'late')")

    async def other() -> bool:
        await asyncio.wait_for(store._submit(job), 5)
        return first.done()

    assert not await asyncio.to_thread(asyncio.run, other())  # before the owner's flush ended
    assert (await first).inbound_id > 0
    assert (await asyncio.wait_for(store.record_inbound(inbound(2)), 5)).inbound_id > 0
    await asyncio.wait_for(store.close(), 5)
    assert len(ran_on) == 1
    assert ran_on[0] != threading.get_ident()
    with sqlite3.connect(tmp_path / "store.db") as conn:
        assert conn.execute("SELECT count(*) FROM events WHERE kind = 'late'").fetchone()[0] == 1


async def test_the_commit_thread_commits_nothing_once_a_flush_failed(tmp_path: Path) -> None:
    """A flush of the owning loop fails while the commit thread runs another loop's batch:
    that batch is not committed (nothing is, until a restart)."""
    store = open_with_sync(tmp_path / "store.db", slow_flushes(0.05))
    assert (await store.record_inbound(inbound(1))).inbound_id > 0  # this loop owns it
    writer = store._writer
    assert writer is not None

    def job(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO events (at, tenant_id, kind) VALUES (0, 't1', 'late')")
        writer._fail(StoreUnavailable("the WAL could not be flushed (EIO); restart"))

    async def other() -> None:
        with pytest.raises(StoreUnavailable, match="restart"):
            await asyncio.wait_for(store._submit(job), 5)

    await asyncio.to_thread(asyncio.run, other())
    await store.close()
    with sqlite3.connect(tmp_path / "store.db") as conn:
        assert conn.execute("SELECT count(*) FROM events WHERE kind = 'late'").fetchone()[0] == 0


async def test_a_loop_that_closes_with_its_flush_under_way_is_taken_over(tmp_path: Path
                                                                        ) -> None:
    """The owning loop commits, asks for a flush, and closes before the reply: a caller that
    waits on another loop meanwhile is answered, and takes over the stranded flush."""
    store = open_with_sync(tmp_path / "store.db", slow_flushes(0.3))
    owner = asyncio.new_event_loop()

    async def give_up() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(store.record_inbound(inbound(1)), 0.05)

    await asyncio.to_thread(owner.run_until_complete, give_up())  # owns it, open, idle
    waiting = asyncio.create_task(store.record_inbound(inbound(2)))
    await asyncio.sleep(0.05)
    await asyncio.to_thread(owner.close)  # with its flush under way
    assert (await asyncio.wait_for(waiting, 5)).inbound_id > 0
    assert (await asyncio.wait_for(store.record_inbound(inbound(3)), 5)).inbound_id > 0
    await asyncio.wait_for(store.close(), 5)
    assert count_rows(tmp_path / "store.db") == 3


async def test_a_write_racing_the_stop_is_answered(tmp_path: Path) -> None:
    """A write from another thread that got past the store's own closed check while close()
    was under way: once the writer found itself idle it takes nothing more, and says so,
    rather than queue a job its commit thread will never run."""
    store = SQLiteStore(tmp_path / "store.db")
    store.open()
    assert (await store.record_inbound(inbound(1))).inbound_id > 0
    writer = store._writer
    assert writer is not None
    results: list[object] = []

    class Work:  # the commit thread's queue, with a write arriving just after its stop
        def __init__(self, queue: Any) -> None:
            self.queue = queue

        def get(self) -> object:
            return self.queue.get()

        def put(self, item: object) -> None:
            self.queue.put(item)
            if item is sqlite_writer_module._STOP:
                async def late() -> None:
                    try:
                        results.append(await asyncio.wait_for(writer.submit(lambda conn: 7), 3))
                    except (StoreError, TimeoutError) as exc:
                        results.append(exc)

                thread = threading.Thread(target=asyncio.run, args=(late(),))
                thread.start()
                thread.join(10)

    writer._work = Work(writer._work)  # type: ignore[assignment]
    await asyncio.wait_for(store.close(), 15)
    assert len(results) == 1
    assert isinstance(results[0], StoreUnavailable)  # answered, not left waiting
    assert "closed" in str(results[0])


@pytest.mark.parametrize("restarts", [True, False], ids=["restarted", "control"])
async def test_the_wal_starts_over_in_place_under_steady_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restarts: bool) -> None:
    """Writes that never pause keep SQLite from starting the WAL over by itself (never every
    frame checkpointed when a transaction begins): the commit thread finishes the checkpoint
    between two transactions. The control shows the WAL growing without it."""
    import connector.store.sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "_WAL_RESTART_BYTES", 256 * 1024)
    monkeypatch.setattr(sqlite_module, "_CHECKPOINT_EVERY_SECONDS", 0.02)
    monkeypatch.setattr(sqlite_module, "_CHECKPOINT_BUSY_SECONDS", 0.02)
    store = SQLiteStore(tmp_path / "store.db")
    store.open()
    assert store._writer is not None
    if not restarts:
        monkeypatch.setattr(store._writer, "restart_wal", lambda: None)
    wal = tmp_path / "store.db-wal"
    largest = 0

    async def writer(c: int) -> None:
        nonlocal largest
        for n in range(700):
            message = inbound(c * 1000 + n)
            raw = message.raw + b"NTE|1||" + b"x" * 4000 + b"\r"
            await store.record_inbound(dataclasses.replace(
                message, raw=raw, digest=hashlib.sha256(raw).digest()))
            largest = max(largest, wal.stat().st_size)

    await asyncio.gather(*(writer(c) for c in range(4)))  # some 14 MB of WAL frames
    await store.close()
    if restarts:
        assert largest < 6 * 1024 * 1024
    else:
        assert largest > 10 * 1024 * 1024


async def test_a_job_that_raises_is_logged_without_its_message(store: SQLiteStore) -> None:
    """A bug in a job fails that job (StoreError naming the type) and is logged with its type
    and frames, never its message, which may carry what the job was given."""
    def job(conn: sqlite3.Connection) -> None:
        raise ValueError("PAT-TROIS 19790328")

    with structlog.testing.capture_logs() as logs, pytest.raises(StoreError,
                                                                  match="ValueError"):
        await store._submit(job)
    (failed,) = [e for e in logs if e["event"] == "store_job_failed"]
    assert failed["error"] == "ValueError"
    assert "test_sqlite_writer.py" in failed["where"]
    assert "19790328" not in repr(logs)
    assert await store._submit(lambda conn: 7) == 7  # the writer goes on
