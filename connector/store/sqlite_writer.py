"""The SQLite store's writer: jobs share transactions, transactions share WAL flushes.

Every write of the store is a job, a function run on the one writer connection. A job runs as
soon as it is submitted, on the caller's event loop, in the transaction that loop has open (a
SAVEPOINT each, so that a failing job takes back only its own statements). While the disk is
flushing, that transaction stays open and takes every job that comes; when the flush returns,
the commit thread commits it and flushes again. One transaction and one flush serve every job
of the moment (group commit), and the next group's statements run while the disk flushes.

The loop never commits: a COMMIT writes the transaction's pages to the WAL, tens of write calls
that would cost the loop's CPU, which is what intake runs short of; the commit thread makes them
without the GIL. Between that COMMIT and the next BEGIN the loop's new jobs wait (`_pending`).

Durability. The writer connection runs `synchronous=NORMAL`: its COMMIT writes the frames to
the WAL and returns without waiting for the disk. The commit thread then fdatasyncs the WAL
file, and a job's future is resolved only after a flush that began after its COMMIT returned:
what `synchronous=FULL` does inside COMMIT, done after it, so that the write lock is not held
while the disk flushes. SQLite itself still syncs the WAL header when it starts the file over
and the WAL before every checkpoint, as it does in FULL.

Payload-log records. The commit thread writes and syncs a transaction's records in the payload
log before its COMMIT: WAL frames may reach the disk any time after COMMIT (writeback, a
checkpoint), so a row must never be committed before the payload it points to is durable.

The commit thread also runs whole the jobs a loop cannot run: the write lock is held elsewhere
(BEGIN retried up to the busy timeout), or the loop has closed with jobs waiting.

A failed WAL flush leaves the state of the page cache unknown (the kernel may have dropped the
pages it could not write): the writer fails those jobs and every later one as unavailable (the
senders get AR) until the process restarts, as PostgreSQL does on a failed fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from connector.errors import StoreError, StoreUnavailable
from connector.observability.logs import exception_frames
from connector.store._shared import CommitRecorder, Outcome, resolve, set_results
from connector.store.payload_log import PayloadLog

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class _Slot(enum.Enum):
    """Who holds the writer connection."""

    FREE = "free"  # no transaction open
    LOOP = "loop"  # a transaction open on an event loop, taking that loop's jobs as they come
    THREAD = "thread"  # the commit thread: payload sync and COMMIT, or a whole batch


@dataclass(slots=True)
class _Transaction:
    """The transaction a loop has open, and the outcomes of the jobs it ran."""

    loop: asyncio.AbstractEventLoop
    outcomes: list[Outcome] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Flush:
    """Transactions were committed: flush the WAL, then wake their callers."""


@dataclass(frozen=True, slots=True)
class _CommitHere:
    """A loop's transaction: sync its payload-log records, COMMIT, free the slot, flush."""

    transaction: _Transaction


@dataclass(frozen=True, slots=True)
class _RunHere:
    """Jobs no loop can run: the commit thread runs them in a transaction of its own."""

    jobs: list[_Job]


_STOP = object()
_WAL_CHECK_SECONDS = 1.0
_FLUSH = _Flush()


class SQLiteWriter:
    """Runs the store's jobs on `conn` (opened by the store, `synchronous=NORMAL` set here) and
    makes them durable before their callers are woken."""

    def __init__(self, conn: sqlite3.Connection, wal_path: Path, payloads: PayloadLog, *,
                 busy_timeout_ms: int) -> None:
        self._conn = conn
        self._wal_path = wal_path
        self._payloads = payloads
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()  # guards the fields below, read by both threads
        self._slot = _Slot.FREE
        self._transaction: _Transaction | None = None  # open on a loop (slot LOOP)
        self._pending: list[_Job] = []  # waiting for the slot
        self._flushing = False  # a flush is queued or running, its callers not yet woken
        self._committed: list[Outcome] = []  # committed, for the next flush
        self._failure: StoreUnavailable | None = None
        self._restart_wal = False  # asked by the checkpointer, done between two transactions
        self._idle = threading.Event()  # nothing pending, open, committed or flushing
        self._idle.set()
        self._work: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._wal_fd: int | None = None
        self._wal_checked_at = 0.0  # when `_sync_wal` last compared the WAL's inode (monotonic)
        self._thread: threading.Thread | None = None
        self.commits = CommitRecorder()  # the WAL flushes that made jobs durable

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._conn.execute("PRAGMA synchronous = NORMAL")  # the commit thread flushes the WAL
        self._wal_fd = self._open_wal()
        self._thread = threading.Thread(target=self._run, name="sqlite-commit", daemon=True)
        self._thread.start()

    def restart_wal(self) -> None:
        """From the checkpointer, which just copied most of a large WAL: after the next
        COMMIT, with the slot still held (no transaction in between), checkpoint the rest, so
        that the next BEGIN starts the WAL over from its beginning. SQLite only starts over
        when every frame is in the database, which never happens by itself under steady writes."""
        self._restart_wal = True

    @property
    def failure(self) -> StoreUnavailable | None:
        """Set once a WAL flush failed: nothing is written until the process restarts."""
        return self._failure

    async def stop(self) -> None:
        """Wait for every job submitted so far to be durable, then stop the commit thread."""
        await asyncio.to_thread(self._idle.wait)
        self._work.put(_STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None

    # -- the loop's side ----------------------------------------------------------------------

    async def submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(fn, loop, future)
        with self._lock:
            if self._failure is not None:
                raise self._failure
            self._idle.clear()
            transaction = self._transaction
            if self._slot is _Slot.FREE and not self._pending:
                self._slot = _Slot.LOOP
                begin, join = True, False
            else:
                begin = False
                join = (self._slot is _Slot.LOOP and transaction is not None
                        and transaction.loop is loop)
                if not join:
                    self._pending.append(job)  # the slot's next holder runs it
        if begin:
            self._begin([job], loop)
        elif join:
            assert transaction is not None
            transaction.outcomes.append(self._run_job(job))
            self._commit_if_disk_idle()
        return await future

    def _begin(self, jobs: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        """With the slot taken for this loop: open its transaction and run `jobs` in it."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:  # the write lock is held elsewhere: wait for it off the loop
            with self._lock:
                self._slot = _Slot.THREAD
            self._work.put(_RunHere(jobs))
            return
        transaction = _Transaction(loop)
        with self._lock:
            self._transaction = transaction
        for job in jobs:
            transaction.outcomes.append(self._run_job(job))
        self._commit_if_disk_idle()

    def _run_job(self, job: _Job) -> Outcome:
        """One job in its own savepoint of the open transaction."""
        conn = self._conn
        conn.execute("SAVEPOINT job")
        try:
            result = job.fn(conn)
        except Exception as exc:  # noqa: BLE001 (the job fails; the others stand)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            return job, None, _job_error(exc)
        conn.execute("RELEASE job")
        return job, result, None

    def _commit_if_disk_idle(self) -> None:
        """Commit the open transaction now if no flush is under way; else the end of that
        flush commits it, with whatever jobs arrive meanwhile."""
        with self._lock:
            if self._flushing:
                return
            self._flushing = True
        self._finish_transaction()

    def _finish_transaction(self) -> None:
        """On the loop, with `_flushing` set: hand the open transaction to the commit thread,
        which commits it and queues its flush; with none open, the disk goes idle."""
        with self._lock:
            transaction, self._transaction = self._transaction, None
            if transaction is None:
                self._flushing = False
                self._settle()
                return
        if not self._conn.in_transaction:  # SQLite rolled it back itself (disk full, I/O)
            self._abandon(transaction, StoreUnavailable("SQLite rolled the transaction back"))
            return
        with self._lock:
            self._slot = _Slot.THREAD
        self._work.put(_CommitHere(transaction))

    def _abandon(self, transaction: _Transaction, error: StoreUnavailable) -> None:
        """The open transaction is lost: its callers are answered `error`."""
        with self._lock:
            self._slot = _Slot.FREE
            self._kick_pending()
        self._work.put(_FLUSH)  # ends the flushing state, whatever else is committed
        set_results([(job, None, error) for job, _, _ in transaction.outcomes])

    def _on_flushed(self, outcomes: list[Outcome]) -> None:
        """On the loop with the open transaction, after a flush: commit that transaction
        (it queues the next flush at once), then wake the callers just made durable."""
        self._finish_transaction()
        set_results(outcomes)

    def _kick_pending(self) -> None:
        """Under `_lock`, the slot just freed: start the waiting jobs on their loop."""
        if not self._pending:
            return
        loop = self._pending[0].loop
        try:
            loop.call_soon_threadsafe(self._start_pending, loop)
        except RuntimeError:  # that loop is closed: its jobs run on the commit thread
            jobs = [job for job in self._pending if job.loop is loop]
            self._pending = [job for job in self._pending if job.loop is not loop]
            self._slot = _Slot.THREAD
            self._work.put(_RunHere(jobs))

    def _start_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._slot is not _Slot.FREE:
                return  # taken meanwhile; whoever frees it kicks again
            jobs = [job for job in self._pending if job.loop is loop]
            if not jobs:
                self._kick_pending()
                return
            self._pending = [job for job in self._pending if job.loop is not loop]
            self._slot = _Slot.LOOP
        self._begin(jobs, loop)

    def _settle(self) -> None:
        """Under `_lock`: the store is idle when nothing waits, runs or flushes."""
        if self._slot is _Slot.FREE and not self._pending and not self._flushing:
            self._idle.set()

    # -- the commit thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            work = self._work.get()
            if work is _STOP:
                break
            started = time.perf_counter()
            if isinstance(work, _CommitHere):
                self._commit(work.transaction.outcomes)
            elif isinstance(work, _RunHere):
                self._run_here(work.jobs)
            self._flush(started)

    def _run_here(self, jobs: list[_Job]) -> None:
        try:
            self._begin_waiting(self._conn)
        except sqlite3.Error as exc:
            resolve([(job, None, StoreUnavailable(f"SQLite write failed: {exc}"))
                     for job in jobs])
            self._free_slot([])
            return
        self._commit([self._run_job(job) for job in jobs])

    def _commit(self, outcomes: list[Outcome]) -> None:
        """The open transaction, its jobs run: its payload records first, then COMMIT; the
        slot is free after, whether it committed or not."""
        conn = self._conn
        try:
            self._payloads.sync()  # nothing to do when its jobs reserved no record
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001
            # Whatever it is, the transaction is not committed.
            _rollback(conn)
            if not isinstance(exc, sqlite3.Error | OSError):
                log.error("store_commit_failed", error=type(exc).__name__,
                          where=exception_frames(exc))
            error = StoreUnavailable(f"SQLite write failed: {exc}")
            resolve([(job, None, error) for job, _, _ in outcomes])
            self._free_slot([])
            return
        self._free_slot(outcomes)

    def _free_slot(self, committed: list[Outcome]) -> None:
        if committed and self._restart_wal:
            self._restart_wal = False
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # the WAL goes on growing until the next try
                log.warning("store_checkpoint_failed", error=str(exc))
        with self._lock:
            self._committed.extend(committed)
            self._slot = _Slot.FREE
            self._kick_pending()

    def _begin_waiting(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, retried for up to the busy timeout while the write lock is held
        (the connection's own busy timeout is 0, for the loop's sake)."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if (exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY
                        or time.monotonic() >= deadline):
                    raise
            time.sleep(0.002)

    def _flush(self, started: float) -> None:
        """Make everything committed so far durable, then wake its callers; the loop with an
        open transaction commits it when woken. `started`: when this work began (its COMMIT,
        if any), for the commit times."""
        while True:
            with self._lock:
                committed, self._committed = self._committed, []
            if committed and self._failure is None:
                try:
                    self._sync_wal()
                except OSError as exc:
                    self._failure = StoreUnavailable(
                        f"the WAL could not be flushed ({exc}); restart the connector")
                    log.critical("store_flush_failed", error=str(exc))
                if self._failure is None:
                    self.commits.record(time.perf_counter() - started, len(committed))
            if self._failure is not None:
                failure = self._failure
                committed = [(job, None, failure) for job, _, _ in committed]
            with self._lock:
                transaction = self._transaction
                if transaction is None and self._slot is not _Slot.THREAD:
                    self._flushing = False
                    self._settle()
            if transaction is None:
                resolve(committed)
                return
            mine = [outcome for outcome in committed if outcome[0].loop is transaction.loop]
            try:
                transaction.loop.call_soon_threadsafe(self._on_flushed, mine)
            except RuntimeError:  # its loop has closed: commit its transaction here
                resolve(committed)
                self._adopt(transaction)
                continue
            resolve([outcome for outcome in committed
                     if outcome[0].loop is not transaction.loop])
            return

    def _adopt(self, transaction: _Transaction) -> None:
        """The open transaction of a loop that closed: nothing runs on it any more."""
        with self._lock:
            if self._transaction is not transaction:
                return
            self._transaction = None
            self._slot = _Slot.THREAD
        self._commit(transaction.outcomes)

    def _sync_wal(self) -> None:
        """fdatasync the WAL file, reopened first if SQLite replaced it (it deletes the WAL
        when its last connection closes, which the store's own connection prevents).

        Whether it was replaced is looked at once a second, not before every flush: the two
        `stat` calls would each hand the GIL to the event loop and wait to take it back, a
        pair of thread switches per flush for a file that is not replaced while the store
        is open."""
        fd = self._wal_fd
        now = time.monotonic()
        check = now >= self._wal_checked_at + _WAL_CHECK_SECONDS
        if check:
            self._wal_checked_at = now
        if fd is None or (check and os.fstat(fd).st_ino != _inode(self._wal_path)):
            if fd is not None:
                os.close(fd)
            self._wal_fd = fd = self._open_wal()
        os.fdatasync(fd)

    def _open_wal(self) -> int:
        return os.open(self._wal_path, os.O_RDONLY | os.O_CREAT, 0o600)


def _inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return -1


def _job_error(exc: Exception) -> StoreError:
    if isinstance(exc, sqlite3.Error | OSError):
        return StoreUnavailable(f"SQLite write failed: {exc}")
    log.error("store_job_failed", error=type(exc).__name__, where=exception_frames(exc))
    return StoreError(f"store job failed: {type(exc).__name__}")


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")

