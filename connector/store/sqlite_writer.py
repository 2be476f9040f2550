"""The SQLite store's writer: jobs share transactions, transactions share WAL flushes.

Every write of the store is a job, a function run on the one writer connection. A job runs as
soon as it is submitted, on the caller's event loop, in the transaction that loop has open (a
SAVEPOINT each, so that a failing job takes back only its own statements). While the disk is
flushing, that transaction stays open and takes every job that comes; when the flush returns,
the loop commits it and asks for the next flush. One transaction and one flush serve every job
of the moment (group commit), and the next group's statements run while the disk flushes.

Durability. The writer connection runs `synchronous=NORMAL`: its COMMIT writes the frames to
the WAL and returns without waiting for the disk. The flusher (store.flusher, a process of its
own) then fdatasyncs the WAL file, and a job's future is resolved only after a flush that began
after its COMMIT returned: what `synchronous=FULL` does inside COMMIT, done after it, so that
the write lock is not held while the disk flushes. SQLite itself still syncs the WAL header
when it starts the file over and the WAL before every checkpoint, as it does in FULL.

The loop waits for the flusher's reply in the `epoll` it waits in anyway: no thread of this
process wakes up per flush, so none takes the GIL from the loop in the middle of an intake.

Payload-log records. Before a transaction that reserved records commits, the loop writes them
and the flusher syncs their segment; the transaction takes no more jobs meanwhile. WAL frames
may reach the disk any time after COMMIT (writeback, a checkpoint), so a row must never be
committed before the payload it points to is durable. When the WAL flush of the transaction
before is still under way, that happens as soon as a job has reserved a record: the flusher,
which answers in order, syncs the segment right after the WAL, and the reply commits the
transaction, instead of the loop asking for it once the WAL's reply has reached it
(docs/perf-oru.md: the 70 KB ORU at 4 connections 8-9% faster).

Transactions and the flusher's replies belong to one event loop, the first to submit (the
server's loop, in production); if it closes, the next loop to submit or wait takes over what it
left. The commit thread runs whole the jobs that loop cannot run: the write lock is held
elsewhere (BEGIN retried up to the busy timeout), the jobs come from another event loop (a
command's, a test's) or from a loop that has closed; and the checkpoint that starts the WAL over
(`restart_wal`), between two transactions.

A failed WAL flush leaves the state of the page cache unknown (the kernel may have dropped the
pages it could not write): the writer fails those jobs and every later one as unavailable (the
senders get AR) until the process restarts, as PostgreSQL does on a failed fsync. So does the
flusher's death: whether the flush it was making happened is unknown.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import errno
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
from connector.store.flusher import Flusher, WalFile
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
    THREAD = "thread"  # the commit thread: a batch of its own, or the WAL-restart checkpoint


@dataclass(slots=True)
class _Transaction:
    """The transaction a loop has open, and the outcomes of the jobs it ran."""

    loop: asyncio.AbstractEventLoop
    outcomes: list[Outcome] = field(default_factory=list)
    sealed: bool = False  # its payload records are being flushed: new jobs wait for the next;
    # the flush's reply commits it


@dataclass(slots=True)
class _Request:
    """The flusher's request under way: a payload segment before `transaction` commits, or
    the WAL after the COMMIT of the jobs `committed`."""

    loop: asyncio.AbstractEventLoop  # reads the reply
    started: float  # perf_counter, for the commit times
    transaction: _Transaction | None = None
    committed: list[Outcome] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _RunHere:
    """Jobs no loop can run: the commit thread runs them in a transaction of its own."""

    jobs: list[_Job]


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    """Between two transactions, the slot held: checkpoint what is left of a large WAL."""


_STOP = object()
_CHECKPOINT = _Checkpoint()
_WATCH_SECONDS = 0.5  # a loop waiting for the slot looks this often whether its owner closed


class SQLiteWriter:
    """Runs the store's jobs on `conn` (opened by the store, `synchronous=NORMAL` set here) and
    makes them durable before their callers are woken."""

    def __init__(self, conn: sqlite3.Connection, wal_path: Path, payloads: PayloadLog, *,
                 busy_timeout_ms: int,
                 flusher: Callable[[Path, Path], Flusher] = Flusher.process) -> None:
        self._conn = conn
        self._wal_path = wal_path
        self._payloads = payloads
        self._busy_timeout_ms = busy_timeout_ms
        self._new_flusher = flusher
        self._flusher: Flusher | None = None
        self._owner: asyncio.AbstractEventLoop | None = None  # runs the transactions
        self._reader_loop: asyncio.AbstractEventLoop | None = None  # reads the flusher's replies
        self._lock = threading.Lock()  # guards the fields below, read by loops and the thread
        self._slot = _Slot.FREE
        self._transaction: _Transaction | None = None  # open on a loop (slot LOOP)
        self._pending: list[_Job] = []  # waiting for the slot
        self._flushing = False  # a flush is asked or under way, its callers not yet woken
        self._thread_flushing = False  # the commit thread syncs its own batch, callers waiting
        self._stopping = False  # stop() found the writer idle: nothing more is taken
        # The flusher's requests under way, answered in this order: at most the WAL's and then
        # the segment's of the transaction open meanwhile.
        self._requests: collections.deque[_Request] = collections.deque()
        self._failure: StoreUnavailable | None = None
        self._restart_wal = False  # asked by the checkpointer, done between two transactions
        self._idle = threading.Event()  # nothing pending, open, committed or flushing
        self._idle.set()
        self._work: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._wal = WalFile(str(wal_path))  # the commit thread's, for the batches it commits
        self._thread: threading.Thread | None = None
        self.commits = CommitRecorder()  # the WAL flushes that made jobs durable

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._conn.execute("PRAGMA synchronous = NORMAL")  # the flusher flushes the WAL
        self._flusher = self._new_flusher(self._wal_path, self._payloads.directory)
        try:
            self._wal.descriptor()
            self._thread = threading.Thread(target=self._run, name="sqlite-commit",
                                            daemon=True)
            self._thread.start()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Undo `start()` when the store's start-up fails after it (nothing submitted)."""
        if self._thread is not None and self._thread.ident is not None:  # it started
            self._work.put(_STOP)
            self._thread.join()
        self._thread = None
        if self._flusher is not None:
            self._flusher.close()
            self._flusher = None
        self._wal.close()

    def restart_wal(self) -> None:
        """From the checkpointer, which just copied most of a large WAL: after the next
        COMMIT, with the slot still held (no transaction in between), checkpoint the rest, so
        that the next BEGIN starts the WAL over from its beginning. SQLite only starts over
        when every frame is in the database, which never happens by itself under steady writes."""
        with self._lock:
            self._restart_wal = True

    @property
    def failure(self) -> StoreUnavailable | None:
        """Set once a WAL flush failed: nothing is written until the process restarts."""
        return self._failure

    async def stop(self) -> None:
        """Wait for every job submitted so far to be durable, then stop the commit thread and
        the flusher."""
        loop = asyncio.get_running_loop()
        self._take_over_if_closed(loop)
        while True:  # idle, and still idle once nothing more is taken
            await asyncio.to_thread(self._idle.wait)
            with self._lock:
                if self._idle.is_set():
                    self._stopping = True
                    break
        reader_loop, self._reader_loop = self._reader_loop, None
        if reader_loop is not None and self._flusher is not None:  # before its pipe closes
            if reader_loop is loop:
                loop.remove_reader(self._flusher.reply_fd)
            elif not reader_loop.is_closed():  # on its own thread, and waited for
                removed = threading.Event()

                def remove(fd: int = self._flusher.reply_fd) -> None:
                    reader_loop.remove_reader(fd)
                    removed.set()

                with contextlib.suppress(RuntimeError):  # closed meanwhile
                    reader_loop.call_soon_threadsafe(remove)
                    # Until done (the descriptor is closed next: a number the loop may give
                    # to another file) or that loop closed, which lets go of it too.
                    while not (removed.is_set() or reader_loop.is_closed()):
                        await asyncio.to_thread(removed.wait, _WATCH_SECONDS)
        self._work.put(_STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        if self._flusher is not None:
            await asyncio.to_thread(self._flusher.close)
        self._wal.close()

    # -- the loop's side ----------------------------------------------------------------------

    async def submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(fn, loop, future)
        self._take_over_if_closed(loop)
        begin = join = False
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._stopping:
                raise StoreUnavailable("the store is closed")
            self._idle.clear()
            transaction = self._transaction
            if self._owner is not loop:  # another loop's writer: the commit thread runs it
                self._pending.append(job)
                self._kick_pending()
            elif self._slot is _Slot.FREE and not self._pending:
                self._slot = _Slot.LOOP
                begin = True
            else:
                join = (self._slot is _Slot.LOOP and transaction is not None
                        and transaction.loop is loop and not transaction.sealed)
                if not join:
                    self._pending.append(job)  # the slot's next holder runs it
        if begin:
            self._begin([job], loop)
        elif join:
            assert transaction is not None
            transaction.outcomes.append(self._run_job(job))
            self._commit_if_disk_idle(loop)
        elif self._owner is not loop:  # waiting: if the owner closes meanwhile, take over
            loop.call_later(_WATCH_SECONDS, self._watch_owner, loop, future)
        return await future

    def _take_over_if_closed(self, loop: asyncio.AbstractEventLoop) -> None:
        """The transactions and the flusher's replies belong to one event loop, the first to
        submit (the server's, in production). If that loop has closed, `loop` takes over what
        it left: the flush under way, a transaction, the jobs of the closed loop."""
        if self._owner is loop:  # the usual case, without the lock
            return
        with self._lock:
            owner = self._owner
            if owner is loop or not (owner is None or owner.is_closed()):
                return
            self._owner = loop
            requests = list(self._requests)
            # What the closed loop left open: a hand-off lost with it, or a transaction no
            # flush will commit.
            dropped = (owner is not None and not requests
                       and (self._flushing or self._transaction is not None))
            if dropped:
                self._flushing = True
        if requests:  # their replies come here
            for request in requests:
                request.loop = loop
            self._listen(loop)
        elif dropped:
            self._finish_transaction(loop)
        with self._lock:
            waiting = self._kick_pending(loop)
        if waiting:
            self._begin(waiting, loop)

    def _watch_owner(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
                     ) -> None:
        if future.done():
            return
        self._take_over_if_closed(loop)
        loop.call_later(_WATCH_SECONDS, self._watch_owner, loop, future)

    def _begin(self, jobs: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        """With the slot taken for this loop: open its transaction and run `jobs` in it."""
        if self._failure is not None:  # every job that comes fails: none is left waiting
            with self._lock:
                jobs += self._pending
                self._pending = []
                self._slot = _Slot.FREE
                self._settle()
            resolve_here([(job, None, self._failure) for job in jobs], loop)
            return
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
        self._commit_if_disk_idle(loop)

    def _run_job(self, job: _Job) -> Outcome:
        """One job in its own savepoint of the open transaction; whatever happens, an outcome.

        Not run when the transaction is gone (SQLite rolls it back by itself on a full disk or
        an I/O error): its SAVEPOINT would open a transaction of its own, which RELEASE would
        commit at once, before its payload records are synced and with no flush after it."""
        conn = self._conn
        if not conn.in_transaction:
            return job, None, StoreUnavailable("SQLite rolled the transaction back")
        try:
            conn.execute("SAVEPOINT job")
        except Exception as exc:  # noqa: BLE001
            return job, None, _job_error(exc)
        try:
            result = job.fn(conn)
        except Exception as exc:  # noqa: BLE001 (the job fails; the others stand)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            return job, None, _job_error(exc)
        try:
            conn.execute("RELEASE job")
        except Exception as exc:  # noqa: BLE001 (a job that released or ended it itself)
            return job, None, _job_error(exc)
        return job, result, None

    def _commit_if_disk_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit the open transaction now if no flush is under way; else the end of that
        flush commits it, with whatever jobs arrive meanwhile, unless a job reserved payload
        records: then they are written and their flush asked at once, behind the WAL's, and
        the transaction takes no more jobs."""
        with self._lock:
            if self._flushing:
                transaction = self._transaction
                if (transaction is None or transaction.sealed
                        or not self._payloads.unwritten):
                    return
            else:
                self._flushing = True
                transaction = None
        if transaction is None:
            self._finish_transaction(loop)
        elif not self._abandoned_if_lost(transaction, loop):
            self._flush_payloads(transaction, loop, time.perf_counter())

    def _finish_transaction(self, loop: asyncio.AbstractEventLoop) -> None:
        """On `loop`, with `_flushing` set: commit the open transaction (its payload records
        flushed first) and ask for the WAL flush; with none open, the disk goes idle."""
        with self._lock:
            transaction = self._transaction
            if transaction is None:
                self._flushing = False
                self._settle()
                return
        if transaction.sealed:  # its payload records' flush is asked: its reply settles it
            return
        # Only the owner opens transactions; one of another loop was left by an owner that
        # closed (`_take_over_if_closed`), which runs nothing any more: committed here.
        if self._abandoned_if_lost(transaction, loop):
            return
        started = time.perf_counter()
        if not self._flush_payloads(transaction, loop, started):
            self._commit(transaction, loop, started)

    def _abandoned_if_lost(self, transaction: _Transaction,
                           loop: asyncio.AbstractEventLoop) -> bool:
        """Abandon the open transaction if it can no longer be committed: the store failed,
        or SQLite rolled it back itself (disk full, I/O error). Whether it was."""
        if self._failure is not None:
            self._abandon(transaction, self._failure, loop)
        elif not self._conn.in_transaction:
            self._abandon(transaction, StoreUnavailable("SQLite rolled the transaction back"),
                          loop)
        else:
            return False
        return True

    def _flush_payloads(self, transaction: _Transaction, loop: asyncio.AbstractEventLoop,
                        started: float) -> bool:
        """Write the payload records the open transaction reserved and ask for their flush,
        whose reply commits it; False when none waits for a flush."""
        try:
            segment = self._payloads.write()
        except Exception as exc:  # noqa: BLE001 (whatever it is, nothing is committed)
            self._abandon(transaction, _payload_error(exc), loop)
            return True
        if segment is None:
            return False
        transaction.sealed = True  # the jobs that come now go to the next transaction
        self._ask(_Request(loop, started, transaction=transaction),
                  lambda flusher: flusher.request_segment(segment))
        return True

    def _commit(self, transaction: _Transaction, loop: asyncio.AbstractEventLoop,
                started: float) -> None:
        """COMMIT the open transaction, ask for the WAL flush and free the slot (the waiting
        jobs start the next transaction while the disk flushes)."""
        try:
            self._conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 (whatever it is, the transaction is lost)
            if not isinstance(exc, sqlite3.Error):
                log.error("store_commit_failed", error=type(exc).__name__,
                          where=exception_frames(exc))
            self._abandon(transaction, StoreUnavailable(f"SQLite write failed: {exc}"), loop)
            return
        with self._lock:
            restart, self._restart_wal = self._restart_wal, False
            self._transaction = None
            self._slot = _Slot.THREAD if restart else _Slot.FREE
        self._ask(_Request(loop, started, committed=transaction.outcomes),
                  lambda flusher: flusher.request_wal())
        if restart:
            self._work.put(_CHECKPOINT)  # the commit thread frees the slot after it
            return
        with self._lock:
            waiting = self._kick_pending(loop)
        if waiting:
            self._begin(waiting, loop)

    def _ask(self, request: _Request, send: Callable[[Flusher], None]) -> None:
        """Send a request to the flusher; its reply comes to `_on_reply` on `request.loop`."""
        assert self._flusher is not None
        with self._lock:
            self._requests.append(request)
        try:
            self._listen(request.loop)
            send(self._flusher)
        except OSError as exc:  # the flusher is gone
            self._flusher_gone(exc.errno or errno.EPIPE, str(exc))

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have `loop` read the flusher's replies. The reader stays registered from one
        request to the next (two `epoll_ctl` calls a flush saved); a loop that read them
        before lets go of it at its next turn (`_on_reply`)."""
        assert self._flusher is not None
        if self._reader_loop is loop:
            return
        loop.add_reader(self._flusher.reply_fd, self._on_reply, loop)
        self._reader_loop = loop

    def _on_reply(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._flusher is not None
        if loop is not self._reader_loop:  # another loop reads the replies now
            loop.remove_reader(self._flusher.reply_fd)
            return
        request = self._requests[0] if self._requests else None
        try:
            code, gone = self._flusher.read_reply(), ""
        except OSError as exc:  # end of file (it stays readable): stop listening
            loop.remove_reader(self._flusher.reply_fd)
            self._reader_loop = None
            code, gone = exc.errno or errno.EPIPE, str(exc)
        if request is None:  # nothing asked: the flusher exited while idle
            why = gone or "a reply to no request"
            self._fail(StoreUnavailable(f"the store's flushes stopped ({why}); restart the "
                                        "connector"))
            return
        if gone:
            self._flusher_gone(code, gone)
        else:
            self._replied(request, code, gone)

    def _flusher_gone(self, code: int, gone: str) -> None:
        """The flusher exited: every request under way is answered as failed, in order."""
        while True:
            with self._lock:
                request = self._requests[0] if self._requests else None
            if request is None:
                return
            self._replied(request, code, gone)

    def _replied(self, request: _Request, code: int, gone: str) -> None:
        """The flusher answered `request` (`code` 0: flushed; `gone`: it exited)."""
        loop = request.loop
        with self._lock:
            if not self._requests or self._requests[0] is not request:  # answered already
                return
            self._requests.popleft()
        if gone:
            self._fail(StoreUnavailable(f"the store's flushes stopped ({gone}); restart the "
                                        "connector"))
        transaction = request.transaction
        if transaction is not None:  # its payload records
            if code or self._failure is not None:  # (the WAL flush before it may have failed)
                self._abandon(transaction, self._failure or StoreUnavailable(
                    f"the payload log could not be flushed: {os.strerror(code)}"), loop)
                return
            self._payloads.flushed()
            self._commit(transaction, loop, request.started)
            return
        committed = request.committed
        if code and self._failure is None:
            self._fail(StoreUnavailable(f"the WAL could not be flushed ({os.strerror(code)});"
                                        " restart the connector"))
        if self._failure is not None:
            committed = [(job, None, self._failure) for job, _, _ in committed]
        else:
            self.commits.record(time.perf_counter() - request.started, len(committed))
        self._finish_transaction(loop)  # the jobs that came meanwhile: commit, flush again
        resolve_here(committed, loop)

    def _fail(self, failure: StoreUnavailable) -> None:
        if self._failure is None:
            self._failure = failure
            log.critical("store_flush_failed", error=str(failure))

    def _abandon(self, transaction: _Transaction, error: StoreError,
                 loop: asyncio.AbstractEventLoop) -> None:
        """The open transaction is lost: rolled back, its callers answered `error`."""
        _rollback(self._conn)
        with self._lock:
            if self._transaction is transaction:
                self._transaction = None
            self._slot = _Slot.FREE
            # A transaction lost before its early payload flush was asked leaves the WAL
            # flush before it under way: its reply ends the flushing.
            self._flushing = bool(self._requests)
            waiting = self._kick_pending(loop)
            self._settle()
        resolve_here([(job, None, error) for job, _, _ in transaction.outcomes], loop)
        if waiting:
            self._begin(waiting, loop)

    def _kick_pending(self, here: asyncio.AbstractEventLoop | None = None) -> list[_Job]:
        """Under `_lock`, the slot just freed: start the waiting jobs, the owner's on its loop
        and the others on the commit thread. When the owner is `here`, the loop running this,
        the slot is taken for it and its jobs are returned: the caller begins them once it has
        released the lock."""
        if not self._pending or self._slot is not _Slot.FREE:
            return []
        loop = self._pending[0].loop
        if loop is here and loop is self._owner and not loop.is_closed():
            self._slot = _Slot.LOOP
            return self._take_pending(loop)
        if loop is self._owner and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._start_pending, loop)
                return []
            except RuntimeError:  # closed meanwhile
                pass
        # Another loop's jobs, or a closed loop's: no transaction of its own.
        self._slot = _Slot.THREAD
        self._work.put(_RunHere(self._take_pending(loop)))
        return []

    def _take_pending(self, loop: asyncio.AbstractEventLoop) -> list[_Job]:
        """Under `_lock`: the waiting jobs of `loop`, taken out of `_pending`."""
        jobs = [job for job in self._pending if job.loop is loop]
        self._pending = [job for job in self._pending if job.loop is not loop]
        return jobs

    def _start_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._slot is not _Slot.FREE:
                return  # taken meanwhile; whoever frees it kicks again
            jobs = self._take_pending(loop)
            if not jobs:
                self._kick_pending()
                return
            self._slot = _Slot.LOOP
        self._begin(jobs, loop)

    def _settle(self) -> None:
        """Under `_lock`: the store is idle when nothing waits, runs or flushes."""
        if (self._slot is _Slot.FREE and not self._pending and not self._flushing
                and not self._thread_flushing and self._transaction is None):
            self._idle.set()

    # -- the commit thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            work = self._work.get()
            if work is _STOP:
                break
            if isinstance(work, _RunHere):
                try:
                    self._run_here(work.jobs)
                except Exception as exc:  # noqa: BLE001 (a bug: the thread and the store go on)
                    log.error("store_batch_failed", error=type(exc).__name__,
                              where=exception_frames(exc))
                    _rollback(self._conn)
                    resolve([(job, None, StoreError(f"store batch failed: {type(exc).__name__}"))
                             for job in work.jobs])
                    with self._lock:
                        self._thread_flushing = False
                    self._free_slot()
            elif isinstance(work, _Checkpoint):
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the WAL goes on growing until the next try
                    log.warning("store_checkpoint_failed", error=str(exc))
                self._free_slot()

    def _run_here(self, jobs: list[_Job]) -> None:
        """A transaction of the commit thread's own: jobs, payload records, COMMIT, WAL flush."""
        started = time.perf_counter()
        conn = self._conn
        try:
            if self._failure is not None:
                raise self._failure
            self._begin_waiting(conn)
        except (sqlite3.Error, StoreUnavailable) as exc:
            error = (exc if isinstance(exc, StoreUnavailable)
                     else StoreUnavailable(f"SQLite write failed: {exc}"))
            resolve([(job, None, error) for job in jobs])
            self._free_slot()
            return
        outcomes = [self._run_job(job) for job in jobs]
        try:
            if self._failure is not None:  # a flush of the loop's failed meanwhile
                raise self._failure
            self._payloads.sync()  # nothing to do when its jobs reserved no record
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 (whatever it is, nothing is committed)
            _rollback(conn)
            error = (exc if isinstance(exc, StoreUnavailable)
                     else StoreUnavailable(f"SQLite write failed: {exc}")
                     if isinstance(exc, sqlite3.Error) else _payload_error(exc))
            resolve([(job, None, error) for job, _, _ in outcomes])
            self._free_slot()
            return
        with self._lock:
            self._thread_flushing = True  # not idle until its callers are answered
        self._free_slot()
        try:
            os.fdatasync(self._wal.descriptor())
        except OSError as exc:
            self._fail(StoreUnavailable(f"the WAL could not be flushed ({exc}); restart the"
                                        " connector"))
        if self._failure is not None:
            outcomes = [(job, None, self._failure) for job, _, _ in outcomes]
        else:
            self.commits.record(time.perf_counter() - started, len(outcomes))
        resolve(outcomes)
        with self._lock:
            self._thread_flushing = False
            self._settle()

    def _free_slot(self) -> None:
        with self._lock:
            self._slot = _Slot.FREE
            self._kick_pending()
            self._settle()

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


def resolve_here(outcomes: list[Outcome], loop: asyncio.AbstractEventLoop) -> None:
    """Wake the callers of `outcomes`: at once those of `loop` (running this), the others on
    their own loop."""
    if all(outcome[0].loop is loop for outcome in outcomes):
        set_results(outcomes)
        return
    set_results([outcome for outcome in outcomes if outcome[0].loop is loop])
    resolve([outcome for outcome in outcomes if outcome[0].loop is not loop])


def _payload_error(exc: Exception) -> StoreUnavailable:
    if not isinstance(exc, OSError):
        log.error("store_commit_failed", error=type(exc).__name__, where=exception_frames(exc))
    return StoreUnavailable(f"the payload log could not be written: {exc}")


def _job_error(exc: Exception) -> StoreError:
    if isinstance(exc, sqlite3.Error | OSError):
        return StoreUnavailable(f"SQLite write failed: {exc}")
    log.error("store_job_failed", error=type(exc).__name__, where=exception_frames(exc))
    return StoreError(f"store job failed: {type(exc).__name__}")


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")
