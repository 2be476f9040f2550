"""SQLite adapter of the store: the embedded default.

Writes go through `SQLiteWriter` (sqlite_writer.py): each job runs at once on its caller's event
loop, in the transaction that loop has open; when the disk has finished flushing the one
before, the loop commits that transaction and the flusher (a process of its own,
store.flusher) fdatasyncs the WAL before any caller is woken. So the row is on disk before its
ACK is written, the statements of the next group run while the disk flushes, and one flush
serves every job of the moment.

WAL checkpoints (copying committed pages into the database file) run in a third thread on
their own connection, so a 4 MB checkpoint never stalls the commits that ACKs wait for. It
checkpoints passively every half second, every tenth of a second while the WAL holds more than
`_WAL_RESTART_BYTES`; then the writer's commit thread also finishes the checkpoint between two
transactions, so that the WAL starts over in place instead of growing (see `_WAL_RESTART_BYTES`).
If the WAL still outgrows `_WAL_HARD_LIMIT` the checkpointer truncates it as soon as no reader
holds an older snapshot: it tries without waiting (a truncating checkpoint that waits for
readers blocks every writer meanwhile, and a long reader, `store backup` or `store verify`,
would then turn messages away with AR), and tries again at the next round; while a reader holds
it, the WAL grows by what is written, and `store_wal_held` says so once per reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from connector.errors import (
    LeaseLost,
    PayloadUnreadable,
    StoreError,
    StoreInUse,
    StoreUnavailable,
)
from connector.store._shared import (
    ACTIVE_IN_SET_SQL,
    AUDIT_SQL,
    LEASABLE,
    MAILBOX_AUDIT_SQL,
    OUTBOX_ERROR_KIND,
    OUTBOX_KIND,
    OUTBOX_SUMMARY_COLUMNS,
    OUTBOX_SUMMARY_WIDTH,
    RECEIPT_KIND,
    REFERENCED_SEGMENTS_SQL,
    SUMMARY_COLUMNS,
    SUMMARY_WIDTH,
    Claim,
    ConnectionPool,
    audit_params,
    check_item,
    check_lease,
    document_row,
    find_ids,
    mailbox_audit_params,
    outbox_summary_from_row,
    placeholders,
    purge_statements,
    receipt_statements,
    seal_mail_key,
    summary_from_row,
)
from connector.store.adapter import StoreAdapter
from connector.store.cipher import PayloadCipher, SealedPayload
from connector.store.flusher import Flusher
from connector.store.migrations import MIGRATIONS
from connector.store.model import (
    AuditEntry,
    CommitStats,
    DiskUsage,
    EventKind,
    InboundDetail,
    InboundMessage,
    InboundReceipt,
    InboundStatus,
    OutboxDetail,
    OutboxItem,
    OutboxKind,
    OutboxLease,
    PatientChange,
    RecordedMail,
    ReturnedMail,
    StoredPatient,
)
from connector.store.patients import (
    PatientReads,
    apply_change,
    find_patient_query,
    patient_from_rows,
)
from connector.store.payload_log import (
    DEFAULT_SEGMENT_BYTES,
    PayloadLog,
    PayloadRef,
    payloads_directory,
)
from connector.store.sqlite_writer import SQLiteWriter
from connector.store.versions import DocumentRow, VersionPlan, plan_versions

log = structlog.get_logger(__name__)

T = TypeVar("T")
_INLINE_PAYLOAD_MAX = 16 * 1024  # larger payloads go to the payload log
_READERS = 8  # reads at once (worker threads of asyncio.to_thread), each on its connection
_CHECKPOINT_EVERY_SECONDS = 0.5
_CHECKPOINT_BUSY_SECONDS = 0.1
# Under `_JOURNAL_SIZE_LIMIT`: a WAL started over within the space the file already has is
# overwritten in place, and a flush then writes data only; an appending WAL makes every flush
# commit the file system's journal too (measured: WAL flushes 2-3x slower).
_WAL_RESTART_BYTES = 16 * 1024 * 1024
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
_WAL_HARD_LIMIT = 256 * 1024 * 1024
_INBOUND_KIND = "inbound"
_REPORT_KIND = "validation-report"


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it
    conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
    return conn


def _connect_read_only(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    return conn


def _lock_exclusively(lock_path: Path) -> int:
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreInUse(
            f"the store {lock_path.with_suffix('')} is in use by another connector process "
            "(SQLite has one writer; use PostgreSQL for several replicas)") from None
    return fd


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; return the schema version."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        known = {m.version for m in MIGRATIONS}
        if done - known:
            raise StoreError(
                f"database schema version {max(done)} is newer than this connector knows")
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            for statement in migration.sqlite.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                         (migration.version, migration.name, time.time()))
            log.info("store_migrated", version=migration.version, migration=migration.name)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return max(m.version for m in MIGRATIONS)


class SQLiteStore(StoreAdapter):
    """The IntakeStore port on SQLite."""

    def __init__(self, path: Path, *, cipher: PayloadCipher | None = None,
                 retransmission_window_seconds: float = 86400.0,
                 busy_timeout_ms: int = 5000,
                 payload_segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 flusher: Callable[[Path, Path], Flusher] = Flusher.process) -> None:
        """`flusher`: what makes the writer's fdatasync calls (a process of its own; tests
        give `Flusher.thread` with a sync of their own)."""
        self.path = path
        self._flusher = flusher
        self._cipher = cipher or PayloadCipher()
        self._window = retransmission_window_seconds
        self._busy_timeout_ms = busy_timeout_ms
        self._closed = True
        self._writer: SQLiteWriter | None = None
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self._payloads = PayloadLog(payloads_directory(path),
                                    segment_bytes=payload_segment_bytes)
        # Read connections kept open between reads (opening one and parsing the schema cost
        # about 0.3 ms a read); none holds a read transaction between reads, so none holds back
        # a checkpoint, and one whose read failed is dropped.
        self._readers: ConnectionPool[sqlite3.Connection] = ConnectionPool(
            lambda: _connect_read_only(path, busy_timeout_ms), _READERS,
            reusable=lambda conn, failed: not (failed or conn.in_transaction))
        self._lock_fd: int | None = None
        self._read_only = False

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True until `open()` succeeds, after `close()`, and once a WAL flush failed (the
        writer then refuses every write until the process restarts)."""
        return self._closed or (self._writer is not None and self._writer.failure is not None)

    def open(self, *, read_only: bool = False) -> None:
        """Start the writer, or only allow reads (operators' commands beside a running serve).

        One process owns a SQLite store for writing (an exclusive lock on `<path>.lock`): its
        payload log has a single appender. Several replicas need the PostgreSQL backend."""
        if read_only:
            if not self.path.exists():
                raise StoreUnavailable(f"no store at {self.path}")
            self._read_only, self._closed = True, False
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():  # patient data: readable by the service account only
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._lock_fd = _lock_exclusively(self.path.with_name(self.path.name + ".lock"))
        try:
            self._conn = _connect(self.path, self._busy_timeout_ms)
            migrate(self._conn)
            # The loop must never wait for the write lock: a busy BEGIN sends the jobs to the
            # commit thread, which waits for it.
            self._conn.execute("PRAGMA busy_timeout = 0")
            self._payloads.open()
            self._writer = SQLiteWriter(self._conn, Path(f"{self.path}-wal"), self._payloads,
                                        busy_timeout_ms=self._busy_timeout_ms,
                                        flusher=self._flusher)
            self._writer.start()
            self._stop_checkpoints = threading.Event()
            self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                                  name="sqlite-checkpointer", daemon=True)
            self._checkpointer.start()
        except (sqlite3.Error, OSError, RuntimeError) as exc:  # RuntimeError: no thread
            self._abandon_open()
            raise StoreUnavailable(f"cannot open the SQLite store: {exc}") from exc
        self._read_only, self._closed = False, False

    def _abandon_open(self) -> None:
        """`open()` failed half-way: what it started is stopped, nothing was written."""
        self._checkpointer = None
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        with contextlib.suppress(OSError):
            self._payloads.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._readers.close()  # before the last checkpoint: SQLite then removes the WAL
        if self._read_only:
            return
        if self._writer is not None:
            await self._writer.stop()  # durable: every job submitted before close()
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.join)
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
        self._payloads.close()
        self._release_lock()

    # -- the writer ---------------------------------------------------------------------------

    async def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed or self._read_only or self._writer is None:
            raise StoreUnavailable("the store is closed" if self._closed
                                   else "the store is open read-only")
        return await self._writer.submit(fn)

    async def disk_usage(self) -> DiskUsage:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        return await asyncio.to_thread(self._disk_usage)

    def _disk_usage(self) -> DiskUsage:
        database = sum(_size(self.path.with_name(self.path.name + suffix))
                       for suffix in ("", "-wal", "-shm"))
        payloads = sum(_size(p) for p in self._payloads.directory.glob("segment-*.log"))
        try:
            stats = os.statvfs(self.path.parent)
        except OSError:
            return DiskUsage(database, payloads)
        return DiskUsage(database, payloads, stats.f_bavail * stats.f_frsize)

    def commit_stats(self) -> CommitStats:
        """The WAL flushes that made jobs durable since `open()`, and their times."""
        return self._writer.commits.snapshot() if self._writer is not None else CommitStats()

    # -- retention ----------------------------------------------------------------------------

    _PURGE_SQL = purge_statements(payload_log=True)

    async def _purge_batch(self, sql: str, params: tuple[Any, ...]) -> int:
        return await self._submit(lambda conn: conn.execute(sql, params).rowcount)

    async def _purge_statements(self, statements: Sequence[str], params: tuple[Any, ...]
                                ) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return [conn.execute(sql, params).rowcount for sql in statements][-1]

        return await self._submit(run)

    async def _purge_payload_files(self) -> int:
        """Delete the payload-log segments no row points at. Appends only ever go to the
        current segment, so a segment under the one current now can gain no reference once
        the records reserved in it so far are committed (or dropped with their job): the
        empty job waits for that, and the read that follows sees every reference left."""
        below = self._payloads.current_segment
        await self._submit(lambda conn: None)
        rows = await self._read(lambda c: c.execute(REFERENCED_SEGMENTS_SQL).fetchall())
        keep = {int(row[0]) for row in rows}
        return await asyncio.to_thread(self._payloads.remove_segments, below, keep)

    def _checkpoint_loop(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        wal = Path(f"{self.path}-wal")
        wait = _CHECKPOINT_EVERY_SECONDS
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            held = False  # a reader keeps the WAL past its hard limit (said once)
            while not self._stop_checkpoints.wait(wait):
                mode = "PASSIVE"
                with contextlib.suppress(OSError):
                    if wal.stat().st_size > _WAL_HARD_LIMIT:
                        mode = "TRUNCATE"
                try:
                    if mode == "TRUNCATE":  # never wait: writers would wait behind it
                        conn.execute("PRAGMA busy_timeout = 0")
                    busy, frames, _ = conn.execute(
                        f"PRAGMA wal_checkpoint({mode})").fetchone()
                except sqlite3.Error as exc:  # the next round tries again
                    log.warning("store_checkpoint_failed", error=str(exc))
                    continue
                finally:
                    if mode == "TRUNCATE":
                        conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
                if mode == "TRUNCATE" and busy and not held:
                    log.warning("store_wal_held", wal_bytes=_size(wal),
                                hint="a long read (store backup, store verify, a reporting "
                                     "query) holds the WAL: it is truncated once it ends")
                held = mode == "TRUNCATE" and bool(busy)
                # Past `_WAL_RESTART_BYTES` the commit thread finishes the checkpoint between
                # two transactions, so that the next one starts the WAL over (`SQLiteWriter.
                # restart_wal`), and the rounds come faster while the WAL fills that fast.
                large = frames * page_size >= _WAL_RESTART_BYTES
                if large and self._writer is not None:
                    self._writer.restart_wal()
                wait = _CHECKPOINT_BUSY_SECONDS if large else _CHECKPOINT_EVERY_SECONDS
        finally:
            conn.close()

    # -- the port -----------------------------------------------------------------------------

    async def record_inbound(self, message: InboundMessage) -> InboundReceipt:
        for item in message.outbox:
            check_item(item)
        return await self._submit(lambda conn: self._record_inbound(conn, message))

    def _record_inbound(self, conn: sqlite3.Connection, m: InboundMessage) -> InboundReceipt:
        previous: list[tuple[int, bytes, bytes]] = []
        if m.control_id:
            previous = conn.execute(
                "SELECT id, digest, ack FROM inbound WHERE tenant_id = ? AND control_id = ?"
                " AND sending_application IS ? AND sending_facility IS ? AND received_at >= ?"
                " AND ack_code NOT IN ('AR', 'CR') ORDER BY id",  # answered AR: not taken
                (m.tenant_id, m.control_id, m.sending_application, m.sending_facility,
                 m.received_at - self._window),
            ).fetchall()
        for row_id, digest, ack in previous:
            if digest == m.digest:
                conn.execute("UPDATE inbound SET retransmissions = retransmissions + 1"
                             " WHERE id = ?", (row_id,))
                self._event(conn, m, EventKind.RETRANSMISSION, row_id)
                return InboundReceipt(row_id, bytes(ack), retransmission_of=row_id)
        status, ack, error_code, error_detail = m.status, m.ack, m.error_code, m.error_detail
        plan = VersionPlan()
        if m.versions is not None and status is InboundStatus.ACCEPTED:
            plan = plan_versions(
                lambda doc_id: self._document(conn, m.tenant_id, doc_id),
                m.versions.changes, m.versions.unknown_original,
                active_in_set=((lambda set_id: self._active_in_set(conn, m.tenant_id, set_id))
                               if m.versions.exclusive_sets else None))
            if plan.conflict is not None:
                status, ack = InboundStatus.REJECTED, m.versions.conflict_ack
                error_code, error_detail = "207", plan.conflict
        report = (self._cipher.seal(m.report, _REPORT_KIND) if m.report is not None
                  else SealedPayload(None, b""))
        sealed = self._cipher.seal(m.raw, _INBOUND_KIND)
        cursor = conn.execute(
            "INSERT INTO inbound (tenant_id, listener, peer, received_at, sending_application,"
            " sending_facility, message_type, control_id, version, digest, payload_key, payload,"
            " payload_segment, payload_offset, payload_length, size, status, ack_code, ack,"
            " error_code, error_detail, report_key, report, control_id_reused, processing_id,"
            " mail_key_id, mail_key, receiving_application, receiving_facility)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " ?, ?, ?)",
            (m.tenant_id, m.listener, m.peer, m.received_at, m.sending_application,
             m.sending_facility, m.message_type, m.control_id, m.version, m.digest,
             sealed.key_id, *self._place(sealed.blob), len(m.raw), status.value,
             m.versions.conflict_ack_code if plan.conflict and m.versions else m.ack_code,
             ack, error_code, error_detail, report.key_id,
             report.blob if m.report is not None else None, 1 if previous else 0,
             m.processing_id, *seal_mail_key(self._cipher, m.mail_key),
             m.receiving_application, m.receiving_facility),
        )
        row_id = int(cursor.lastrowid or 0)
        if previous:
            self._event(conn, m, EventKind.CONTROL_ID_REUSED, row_id,
                        f"same MSH-10 as inbound {previous[-1][0]} with different content")
        self._apply_versions(conn, m, row_id, plan)
        queued = 0
        if status is InboundStatus.ACCEPTED and m.outbox:
            sealed_items = [self._cipher.seal(item.payload, OUTBOX_KIND) for item in m.outbox]
            queued = len(self._enqueue(conn, m.outbox, sealed_items, m.received_at,
                                       inbound_id=row_id))
        if status is InboundStatus.ACCEPTED and m.patient_update is not None:
            self._apply_patient(conn, m.tenant_id, m.patient_update, row_id)
        return InboundReceipt(row_id, ack, control_id_reused=bool(previous),
                              version_conflict=plan.conflict,
                              unknown_originals=plan.unknown_originals, queued=queued)

    def _apply_versions(self, conn: sqlite3.Connection, m: InboundMessage, row_id: int,
                        plan: VersionPlan) -> None:
        now = time.time()
        if plan.conflict is not None:
            self._event(conn, m, EventKind.VERSION_CONFLICT, row_id, plan.conflict)
            return
        for row in plan.writes:
            conn.execute(
                "INSERT INTO documents (tenant_id, document_id, set_id, version, status,"
                " replaced_by, inbound_id, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant_id, document_id) DO UPDATE SET status = excluded.status,"
                " replaced_by = excluded.replaced_by, updated_at = excluded.updated_at",
                (m.tenant_id, row.document_id, row.set_id, row.version, row.status.value,
                 row.replaced_by, row_id, now))
        for _ in plan.unknown_originals:
            self._event(conn, m, EventKind.UNKNOWN_ORIGINAL, row_id,
                        "replace/delete of a document never received, accepted by policy")
        for _ in plan.resent:
            self._event(conn, m, EventKind.DOCUMENT_RESENT, row_id,
                        "request already applied to this document")

    @staticmethod
    def _active_in_set(conn: sqlite3.Connection, tenant_id: str, set_id: str
                       ) -> DocumentRow | None:
        row = conn.execute(ACTIVE_IN_SET_SQL, (tenant_id, set_id)).fetchone()
        return None if row is None else document_row(row[1:])  # after its tenant_id

    @staticmethod
    def _document(conn: sqlite3.Connection, tenant_id: str, document_id: str
                  ) -> DocumentRow | None:
        row = conn.execute(
            "SELECT document_id, set_id, version, status, replaced_by FROM documents"
            " WHERE tenant_id = ? AND document_id = ?", (tenant_id, document_id)).fetchone()
        return None if row is None else document_row(row)

    @staticmethod
    def _event(conn: sqlite3.Connection, m: InboundMessage, kind: EventKind, inbound_id: int,
               detail: str | None = None) -> None:
        conn.execute("INSERT INTO events (at, tenant_id, kind, inbound_id, detail)"
                     " VALUES (?, ?, ?, ?, ?)",
                     (time.time(), m.tenant_id, kind.value, inbound_id, detail))

    # -- payload placement ------------------------------------------------------------------

    def _place(self, blob: bytes) -> tuple[bytes | None, int | None, int | None, int | None]:
        """The four payload columns of a sealed payload: inline when small, else a record of
        the payload log (appended now, synced before the batch commits)."""
        if len(blob) <= _INLINE_PAYLOAD_MAX:
            return blob, None, None, None
        ref = self._payloads.append(blob)
        return None, ref.segment, ref.offset, ref.length

    async def _load(self, inline: bytes | None, segment: int | None, offset: int | None,
                    length: int | None) -> bytes:
        """A sealed payload back from its four columns."""
        if inline is not None:
            return bytes(inline)
        assert segment is not None  # a row without inline bytes points at a log record
        assert offset is not None
        assert length is not None
        return await asyncio.to_thread(self._payloads.read, PayloadRef(segment, offset, length))

    # -- reads (operators) ----------------------------------------------------------------------

    async def _query(self, sql: str, params: Sequence[Any] = ()
                     ) -> Sequence[Sequence[Any]]:
        return await self._read(lambda c: c.execute(sql, params).fetchall())

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreUnavailable("the store is closed")

        def run() -> T:
            try:
                with self._readers.connection() as conn:
                    return fn(conn)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"SQLite read failed: {exc}") from exc

        return await asyncio.to_thread(run)


    async def get_inbound(self, inbound_id: int) -> InboundDetail | None:
        sql = (f"SELECT {SUMMARY_COLUMNS}, payload_key, payload, payload_segment,"  # noqa: S608
               " payload_offset, payload_length, ack, report_key, report, purged_at FROM inbound"
               " WHERE id = ?")
        row = await self._read(lambda c: c.execute(sql, (inbound_id,)).fetchone())
        if row is None:
            return None
        (key_id, inline, segment, offset, length, ack, report_key, report,
         purged_at) = row[SUMMARY_WIDTH:]
        raw = b""
        if purged_at is None:
            blob = await self._load(inline, segment, offset, length)
            raw = self._cipher.open(SealedPayload(key_id, blob), _INBOUND_KIND)
        opened_report = (self._cipher.open(SealedPayload(report_key, bytes(report)), _REPORT_KIND)
                         if report is not None else None)
        return InboundDetail(summary_from_row(row[:SUMMARY_WIDTH]), raw, bytes(ack), opened_report,
                             purged_at)


    # -- the outbox ---------------------------------------------------------------------------
    # Every write runs in the writer thread, so it is committed (and fsynced) with its group
    # before the call returns, and leases never race: one writer hands rows out one job at a
    # time. A fenced transition that finds its token gone returns LeaseLost instead of raising
    # it, so that it does not roll back the other jobs of its group; the caller raises it.

    async def enqueue(self, items: Sequence[OutboxItem], *, now: float | None = None
                      ) -> list[int]:
        """Store `items` as READY rows, all or none; return their ids in order."""
        for item in items:
            check_item(item)
        if not items:
            return []
        at = time.time() if now is None else now
        sealed = [self._cipher.seal(item.payload, OUTBOX_KIND) for item in items]
        return await self._submit(lambda conn: self._enqueue(conn, items, sealed, at))

    def _enqueue(self, conn: sqlite3.Connection, items: Sequence[OutboxItem],
                 sealed: list[SealedPayload], now: float, *, inbound_id: int | None = None
                 ) -> list[int]:
        ids: list[int] = []
        for item, payload in zip(items, sealed, strict=True):
            cursor = conn.execute(
                "INSERT INTO outbox (tenant_id, kind, inbound_id, state, payload_key, payload,"
                " payload_segment, payload_offset, payload_length, size, message_id, envid,"
                " recipient_domain, created_at, updated_at, available_at)"
                " VALUES (?, ?, ?, 'ready', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (item.tenant_id, OutboxKind(item.kind).value,
                 item.inbound_id if inbound_id is None else inbound_id, payload.key_id,
                 *self._place(payload.blob),
                 len(item.payload), item.message_id, item.envid, item.recipient_domain, now, now,
                 now if item.not_before is None else item.not_before))
            ids.append(int(cursor.lastrowid or 0))
        return ids

    async def lease(self, *, tenant_id: str, kinds: Sequence[OutboxKind], limit: int,
                    lease_seconds: float, now: float | None = None) -> list[OutboxLease]:
        check_lease(kinds, limit, lease_seconds)
        at = time.time() if now is None else now
        rows = await self._submit(
            lambda conn: self._lease(conn, tenant_id, kinds, limit, at + lease_seconds, at))
        leases: list[OutboxLease] = []
        for row in rows:
            (row_id, token, expires, attempts, tenant, kind, inbound_id, message_id, envid,
             domain, key_id, inline, segment, offset, length, created_at) = row
            unreadable: str | None = None
            try:  # one damaged row must not hold up the batch (OutboxLease.unreadable)
                blob = await self._load(inline, segment, offset, length)
                payload = self._cipher.open(SealedPayload(key_id, blob), OUTBOX_KIND)
            except PayloadUnreadable as exc:
                payload, unreadable = b"", str(exc)
            leases.append(OutboxLease(int(row_id), token, expires, int(attempts), tenant,
                                      OutboxKind(kind), inbound_id, message_id, envid, domain,
                                      payload, created_at, unreadable))
        return leases

    @staticmethod
    def _lease(conn: sqlite3.Connection, tenant_id: str, kinds: Sequence[OutboxKind],
               limit: int, expires: float, now: float) -> list[tuple[Any, ...]]:
        marks = placeholders(len(kinds))
        # Only placeholders are interpolated.
        ids = [r[0] for r in conn.execute(
            f"SELECT id FROM outbox WHERE tenant_id = ? AND kind IN ({marks})"  # noqa: S608
            f" AND {LEASABLE} ORDER BY available_at, id LIMIT ?",
            (tenant_id, *(OutboxKind(k).value for k in kinds), now, now, limit))]
        rows: list[tuple[Any, ...]] = []
        for row_id in ids:
            row = conn.execute(
                "UPDATE outbox SET state = 'leased', lease_token = ?, lease_expires_at = ?,"
                " attempts = attempts + 1, updated_at = ? WHERE id = ?"
                " RETURNING id, lease_token, lease_expires_at, attempts, tenant_id, kind,"
                " inbound_id, message_id, envid, recipient_domain, payload_key, payload,"
                " payload_segment, payload_offset, payload_length,"
                " COALESCE(retried_at, created_at)",  # where the retry budget counts from
                (secrets.token_hex(16), expires, now, row_id)).fetchone()
            rows.append(row)
        return rows

    async def _fenced(self, sql: str, params: tuple[Any, ...], row_id: int, token: str,
                      audit: AuditEntry | None = None, then: Sequence[OutboxItem] = ()
                      ) -> None:
        for item in then:
            check_item(item)
        sealed_then = [self._cipher.seal(item.payload, OUTBOX_KIND) for item in then]

        def run(conn: sqlite3.Connection) -> LeaseLost | None:
            changed = conn.execute(sql, (*params, row_id, token)).rowcount
            if changed != 1:
                return LeaseLost(f"outbox {row_id}: lease lost")
            if audit is not None:
                conn.execute(AUDIT_SQL, audit_params(audit, time.time(), row_id))
            if then:
                self._enqueue(conn, then, sealed_then, time.time())
            return None

        lost = await self._submit(run)
        if lost is not None:
            raise lost

    async def _unfenced(self, sql: str, params: tuple[Any, ...], row_id: int,
                        audit: AuditEntry | None) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            if conn.execute(sql, params).rowcount != 1:
                return False
            if audit is not None:
                conn.execute(AUDIT_SQL, audit_params(audit, time.time(), row_id))
            return True

        return await self._submit(run)

    # -- receipts -----------------------------------------------------------------------------

    async def claim(self, name: str) -> Claim | None:
        """Always granted: one process owns a SQLite store (its lock file says so)."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        return Claim()

    async def find_outbox_ids(self, tenant_id: str, *, envid: str | None = None,
                              message_ids: Sequence[str] = ()) -> list[int]:
        def run(conn: sqlite3.Connection) -> list[int]:
            return find_ids(lambda sql, params: conn.execute(sql, params).fetchall(),
                            tenant_id, envid, message_ids)

        return await self._read(run)

    async def record_returned_mail(self, mail: ReturnedMail) -> RecordedMail:
        for item in mail.zams:
            check_item(item)
        sealed = self._cipher.seal(mail.raw, RECEIPT_KIND)
        sealed_zams = [self._cipher.seal(item.payload, OUTBOX_KIND) for item in mail.zams]
        return await self._submit(lambda conn: self._record_mail(conn, mail, sealed, sealed_zams))

    def _record_mail(self, conn: sqlite3.Connection, mail: ReturnedMail, sealed: SealedPayload,
                     sealed_zams: list[SealedPayload]) -> RecordedMail:
        existing = conn.execute("SELECT id FROM receipts WHERE tenant_id = ? AND receipt_key = ?",
                                (mail.tenant_id, mail.key)).fetchone()
        if existing is not None:
            return RecordedMail(int(existing[0]), duplicate=True)
        cursor = conn.execute(
            "INSERT INTO receipts (tenant_id, receipt_key, received_at, kind, status, outcome,"
            " outbox_id, detail, payload_key, payload, payload_segment, payload_offset,"
            " payload_length, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (mail.tenant_id, mail.key, mail.received_at, mail.kind, mail.status.value,
             mail.outcome, mail.outbox_id, mail.detail, sealed.key_id,
             *self._place(sealed.blob), len(mail.raw)))
        now = time.time()
        for update in mail.updates:
            for sql, params in receipt_statements(update, now):
                conn.execute(sql, params)
        if mail.zams:
            self._enqueue(conn, mail.zams, sealed_zams, now)
        return RecordedMail(int(cursor.lastrowid or 0), duplicate=False)

    async def record_mailbox_audit(self, tenant_id: str, entry: AuditEntry, *,
                                   outbox_id: int | None = None) -> None:
        params = mailbox_audit_params(tenant_id, entry, time.time(), outbox_id)
        await self._submit(lambda conn: conn.execute(MAILBOX_AUDIT_SQL, params))

    async def get_outbox(self, row_id: int) -> OutboxDetail | None:
        sql = (f"SELECT {OUTBOX_SUMMARY_COLUMNS}, payload_key, payload,"  # noqa: S608
               " payload_segment, payload_offset, payload_length, error_key, error_detail,"
               " purged_at FROM outbox WHERE id = ?")
        row = await self._read(lambda c: c.execute(sql, (row_id,)).fetchone())
        if row is None:
            return None
        (key_id, inline, segment, offset, length, error_key, error,
         purged_at) = row[OUTBOX_SUMMARY_WIDTH:]
        payload = b""
        if purged_at is None:
            blob = await self._load(inline, segment, offset, length)
            payload = self._cipher.open(SealedPayload(key_id, blob), OUTBOX_KIND)
        detail = (self._cipher.open(SealedPayload(error_key, bytes(error)),
                                    OUTBOX_ERROR_KIND).decode()
                  if error is not None else None)
        return OutboxDetail(outbox_summary_from_row(row[:OUTBOX_SUMMARY_WIDTH]), payload, detail,
                            purged_at)

    # -- patient context (ADT) ------------------------------------------------------------------

    def _apply_patient(self, conn: sqlite3.Connection, tenant_id: str, change: PatientChange,
                       inbound_id: int) -> None:
        """In the transaction of the inbound row: the one writer needs no lock."""
        reads = PatientReads(self._cipher, [(tenant_id, change)])
        query = reads.query()
        assert query is not None  # a change always has its key to look up
        reads.load(conn.execute(*query).fetchall())
        apply_change(_SQLiteDb(conn), reads, tenant_id, change, inbound_id, time.time())

    async def get_patient(self, tenant_id: str, *, ipp: str | None = None,
                          authority: str | None = None, ins: str | None = None
                          ) -> StoredPatient | None:
        sql, params = find_patient_query(self._cipher, tenant_id, ipp=ipp, authority=authority,
                                         ins=ins)
        rows = await self._read(lambda c: c.execute(sql, params).fetchall())
        return patient_from_rows(self._cipher, rows)


@dataclass(slots=True)
class _SQLiteDb:
    conn: sqlite3.Connection

    def execute(self, sql: str, params: Sequence[Any]) -> None:
        self.conn.execute(sql, tuple(params))

    def insert(self, sql: str, params: Sequence[Any], table: str) -> int:
        return int(self.conn.execute(sql, tuple(params)).lastrowid or 0)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
