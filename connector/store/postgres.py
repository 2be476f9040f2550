"""PostgreSQL adapter of the store: for several connector replicas sharing one database.

Writing
    A few writer threads (``writers``, 2 by default) each own one connection and pull jobs from a
    shared queue. A writer takes everything queued (up to ``_MAX_BATCH``) and records it in one
    transaction, in pipeline mode, so concurrent callers share round trips and one COMMIT (one WAL
    flush): the batch is cut into segments of jobs whose lock keys (below) do not overlap; for
    each segment one query fetches every inbound row and document row its jobs read, the decisions
    are taken in Python (`plan_versions` included), and all the INSERT/UPDATEs are queued without
    waiting (rows that point at a new inbound row use ``currval`` of its identity sequence). A
    batch of independent messages thus costs about four round trips whatever its size, instead
    of two per message. Each caller's future is resolved only after the COMMIT holding its row
    returned; ``synchronous_commit`` is raised to ``on`` if the server runs with ``off`` or
    ``local``, so that COMMIT means flushed to disk. While one writer waits for its flush, the
    other one is already filling the next transaction; PostgreSQL groups their WAL flushes too.
    Writer sessions ask for lz4 TOAST compression when the server has it (a third of pglz's CPU on
    clear payloads; sealed payloads do not compress either way).

Race-freedom (between the writer threads of one process and between processes)
    Every job names, before it runs, the keys it will read: ``(tenant, sender, MSH-10)`` for the
    retransmission check, ``(tenant, document id)`` for each document the version plan reads and
    ``(tenant, identifier)`` for each patient identifier an ADT looks up (the patient rows read
    are also locked ``FOR UPDATE``: another identifier may reach the same patient).
    The transaction starts by taking ``pg_advisory_xact_lock`` on the hashes of all the keys of its
    batch, in ascending order, in one statement. Then, in READ COMMITTED, every later statement
    sees what the previous holder of a key committed, so:

    * two copies of one message cannot both be stored as new: the second one waits for the first
      COMMIT and then finds its row (retransmission);
    * two replaces of one version cannot both win: the second plan reads the row the first one
      marked ``replaced``.

    Advisory locks were chosen over ``SELECT ... FOR UPDATE`` because the rows that matter are
    often absent (first copy of a message, new document, unknown original): row locks cannot lock
    a row that does not exist yet, advisory locks on the key can. They were chosen over
    SERIALIZABLE because a serialization failure would abort a whole batch of unrelated messages
    and force a retry of all of them; the locks make conflicting jobs wait instead. Taking all the
    keys of a batch at once and in a global order means writers cannot deadlock on them (the
    rows they then write are only ever written under the same keys). Should PostgreSQL still
    report a deadlock or a serialization failure, the batch is retried a few times. A hash
    collision between two keys only makes unrelated jobs wait for each other. The keys are seeded
    with the schema name, so deployments in separate schemas of one database do not contend.

    A lock wait longer than ``lock_timeout_ms`` fails the batch with StoreUnavailable (answered AR,
    the sender retries), like SQLite's busy timeout.

Reading
    Operator reads run in worker threads on a small pool of autocommit connections (at most
    ``readers``), never on the writers' connections.

Migrations run once, in one transaction, under a session ``pg_advisory_lock`` (seeded with the
schema), and are recorded in ``schema_migrations`` with the same versions as SQLite. Payloads and
validation reports are sealed by the cipher and stored in ``bytea``; PostgreSQL TOASTs large
values, so there is no payload log.

Errors from psycopg are translated here: connection, lock and timeout failures become
StoreUnavailable, anything else StoreError. Their messages carry the SQLSTATE and PostgreSQL's
primary message only, never its DETAIL (which can quote row values).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import secrets
import select
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import psycopg
import psycopg.errors
import structlog
from psycopg.conninfo import conninfo_to_dict

from connector.errors import LeaseLost, PayloadUnreadable, StoreError, StoreUnavailable
from connector.hosts import is_loopback
from connector.observability.logs import exception_frames
from connector.store._shared import (
    AUDIT_SQL,
    LEASABLE,
    MAILBOX_AUDIT_SQL,
    OUTBOX_ERROR_KIND,
    OUTBOX_KIND,
    OUTBOX_SUMMARY_COLUMNS,
    OUTBOX_SUMMARY_WIDTH,
    RECEIPT_KIND,
    SUMMARY_COLUMNS,
    SUMMARY_WIDTH,
    Claim,
    CommitRecorder,
    ConnectionPool,
    audit_params,
    check_item,
    check_lease,
    document_row,
    find_ids,
    mailbox_audit_params,
    outbox_summary_from_row,
    purge_statements,
    receipt_statements,
    resolve,
    seal_mail_key,
    summary_from_row,
    take_batch,
)
from connector.store.adapter import StoreAdapter
from connector.store.cipher import PayloadCipher, SealedPayload
from connector.store.migrations import MIGRATIONS
from connector.store.model import (
    AuditEntry,
    CommitStats,
    DiskUsage,
    DocumentAction,
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
    Expr,
    PatientReads,
    apply_change,
    find_patient_query,
    patient_from_rows,
)
from connector.store.versions import DocumentRow, VersionPlan, plan_versions

log = structlog.get_logger(__name__)

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]

_MAX_BATCH = 512
_ROLLBACK_RETRIES = 3  # deadlock / serialization failure: not expected, retried if seen
_INBOUND_KIND = "inbound"
_REPORT_KIND = "validation-report"
_APPLICATION_NAME = "mssante-connector"
_MIGRATION_LOCK_TIMEOUT = "300s"  # another replica may be migrating: wait for it
_IDLE = psycopg.pq.TransactionStatus.IDLE


@dataclass(slots=True)
class _Job:
    message: InboundMessage
    keys: frozenset[int]  # advisory lock keys of what recording the message reads
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[InboundReceipt]


class _UndeclaredRead(Exception):
    """The version plan read a document outside `_document_ids`: a bug, never committed."""


_STOP = object()


class PostgresStore(StoreAdapter):
    """The IntakeStore port on PostgreSQL."""

    def __init__(self, dsn: str, *, cipher: PayloadCipher | None = None,
                 retransmission_window_seconds: float = 86400.0,
                 lock_timeout_ms: int = 5000, statement_timeout_ms: int = 30000,
                 connect_timeout_seconds: int = 5, writers: int = 2, readers: int = 4,
                 application_name: str = _APPLICATION_NAME) -> None:
        if writers < 1 or readers < 1:
            raise ValueError("writers and readers must be at least 1")
        self._dsn = dsn
        self._cipher = cipher or PayloadCipher()
        self._window = retransmission_window_seconds
        self._lock_timeout_ms = lock_timeout_ms
        self._statement_timeout_ms = statement_timeout_ms
        self._connect_timeout = connect_timeout_seconds
        self._application_name = application_name  # shown in pg_stat_activity
        self._writer_count = writers
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._closed = True
        self._threads: list[threading.Thread] = []
        self._readers = self._pool(readers)
        self._outbox = self._pool(readers)  # outbox transactions
        self._seed = b""
        self._commits = CommitRecorder()

    def _pool(self, size: int) -> ConnectionPool[Connection]:
        """Autocommit connections for reads or outbox transactions; broken ones are dropped."""
        return ConnectionPool(self._connect, size, usable=lambda conn: not _stale(conn),
                              reusable=lambda conn, failed: not (conn.closed or conn.broken))

    async def disk_usage(self) -> DiskUsage:
        """The database's size on the server; its free space is the server's to watch."""
        rows = await self._query("SELECT pg_database_size(current_database())")
        return DiskUsage(int(rows[0][0]))

    def commit_stats(self) -> CommitStats:
        """The transactions the writer threads committed since `open()`, and their times."""
        return self._commits.snapshot()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True until `open()` succeeds, and after `close()`."""
        return self._closed

    def open(self, *, read_only: bool = False) -> None:
        """Connect, migrate and start the writers. Blocks for a few round trips, like
        SQLiteStore.open(); raises StoreUnavailable when the database cannot be reached.
        `read_only` is accepted for symmetry: PostgreSQL serves readers and writers at once."""
        if not self._closed:
            return
        connections: list[Connection] = []
        try:
            with _translated("cannot open the PostgreSQL store"):
                migration_conn = self._connect(migrating=True)
                try:
                    self._seed = _schema_seed(migration_conn)
                    migrate(migration_conn, self._seed)
                finally:
                    migration_conn.close()
                for _ in range(self._writer_count):
                    connections.append(self._connect())
        except BaseException:
            for conn in connections:
                conn.close()
            raise
        self._queue = queue.SimpleQueue()
        self._readers = self._pool(self._readers.size)
        self._outbox = self._pool(self._outbox.size)
        self._closed = False
        self._threads = []
        for index, conn in enumerate(connections):
            thread = threading.Thread(target=self._run, args=(conn,),
                                      name=f"postgres-writer-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        self._threads = []
        # Anything that raced with close() is refused, never left hanging.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Job):
                resolve([(item, None, StoreUnavailable("the store is closed"))])
        await asyncio.to_thread(self._readers.close)
        await asyncio.to_thread(self._outbox.close)

    def _connect(self, *, migrating: bool = False) -> Connection:
        conn: Connection = psycopg.connect(
            self._dsn, autocommit=True, connect_timeout=self._connect_timeout,
            application_name=self._application_name)
        try:
            row = conn.execute("SELECT current_setting('synchronous_commit')").fetchone()
            durability = row[0] if row else "on"
            if durability in ("off", "local"):  # COMMIT must mean flushed (and replicated)
                durability = "on"
            conn.execute(
                "SELECT set_config('lock_timeout', %s, false),"
                " set_config('statement_timeout', %s, false),"
                " set_config('synchronous_commit', %s, false)",
                (_MIGRATION_LOCK_TIMEOUT if migrating else f"{int(self._lock_timeout_ms)}ms",
                 "0" if migrating else f"{int(self._statement_timeout_ms)}ms", durability))
            # Clear payloads compress; lz4 costs a third of pglz's CPU. Servers built without
            # lz4 (or before PostgreSQL 14) refuse it and keep their default.
            with contextlib.suppress(psycopg.errors.InvalidParameterValue,
                                     psycopg.errors.UndefinedObject):
                conn.execute("SET default_toast_compression = lz4")
        except BaseException:
            conn.close()
            raise
        return conn

    # -- the writers --------------------------------------------------------------------------

    async def record_inbound(self, message: InboundMessage) -> InboundReceipt:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        for item in message.outbox:
            check_item(item)
        message = _storable(message)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[InboundReceipt] = loop.create_future()
        self._queue.put(_Job(message, self._lock_keys(message), loop, future))
        return await future

    def _run(self, conn: Connection) -> None:
        try:
            stop = False
            while not stop:
                batch, stop = take_batch(self._queue, _STOP, _Job, _MAX_BATCH)
                if not batch:
                    break
                conn = self._execute(conn, batch)
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _committed(self, xid: int) -> bool:
        """Whether transaction `xid` committed, asked on a new connection after the one that
        ran it dropped during its COMMIT; False when that cannot be known (the server still
        unreachable: the callers get AR, and a resend finds the row if it was committed)."""
        try:
            with psycopg.connect(self._dsn, autocommit=True,
                                 connect_timeout=self._connect_timeout,
                                 application_name=self._application_name) as probe:
                row = probe.execute("SELECT txid_status(%s)", (xid,)).fetchone()
        except psycopg.Error as exc:
            log.warning("store_commit_in_doubt", error=type(exc).__name__)
            return False
        return row is not None and row[0] == "committed"

    def _execute(self, conn: Connection, batch: list[_Job]) -> Connection:
        """Run `batch` in one transaction and resolve its futures once COMMIT returned; return
        the connection to use next (a new one when this one broke)."""
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        for attempt in range(_ROLLBACK_RETRIES + 1):
            started = time.perf_counter()
            xid: int | None = None  # this transaction's id, known once its statements ran
            receipts: list[InboundReceipt] | None = None
            try:
                if _stale(conn) or conn.info.transaction_status != _IDLE:
                    # Never run a batch in a leftover transaction: transaction() would make it
                    # a savepoint, and its rows would not be committed when it "ends". Nor on a
                    # connection the server closed while it was idle (restart, fail-over).
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                    conn = self._connect()
                keys = sorted({key for job in batch for key in job.keys})
                with conn.pipeline(), conn.transaction():
                    transaction_id = conn.execute("SELECT txid_current()")
                    if keys:  # its errors (lock timeout) surface at the next sync
                        conn.execute(
                            "SELECT pg_advisory_xact_lock(k)"
                            " FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(k, n) ORDER BY n",
                            (keys,))
                    receipts = self._record_batch(conn, batch)
                    row = transaction_id.fetchone()  # came back with the batch's results
                    xid = int(row[0]) if row else None
                # Leaving the pipeline and the transaction sent COMMIT and waited for it.
                outcomes = [(job, receipt, None) for job, receipt in zip(batch, receipts,
                                                                         strict=True)]
                self._commits.record(time.perf_counter() - started, len(batch))
            except psycopg.errors.TransactionRollback as exc:
                if attempt < _ROLLBACK_RETRIES:
                    log.warning("store_batch_retried", sqlstate=exc.sqlstate, jobs=len(batch))
                    continue
                outcomes = _failed(batch, StoreUnavailable(_describe("PostgreSQL write failed",
                                                                     exc)))
            except psycopg.OperationalError as exc:
                if receipts is not None and xid is not None and self._committed(xid):
                    # The connection dropped while COMMIT was under way, and the server did
                    # commit: the callers get their receipts (an AR here would tell a sender
                    # its stored message was refused).
                    log.warning("store_commit_confirmed", jobs=len(batch),
                                error=type(exc).__name__)
                    outcomes = [(job, receipt, None) for job, receipt in zip(batch, receipts,
                                                                             strict=True)]
                    self._commits.record(time.perf_counter() - started, len(batch))
                else:
                    outcomes = _failed(batch, StoreUnavailable(_describe(
                        "PostgreSQL write failed", exc)))
            except psycopg.Error as exc:
                if len(batch) > 1:  # one bad job must not sink the others: run each on its own
                    for job in batch:
                        conn = self._execute(conn, [job])
                    return conn
                outcomes = _failed(batch, StoreError(_describe("PostgreSQL write failed", exc)))
            except Exception as exc:  # noqa: BLE001
                # A bug in a job: fail it loudly, keep the writer.
                if len(batch) > 1:
                    for job in batch:
                        conn = self._execute(conn, [job])
                    return conn
                log.error("store_job_failed", error=type(exc).__name__,
                          where=exception_frames(exc))
                outcomes = _failed(batch, StoreError(f"store job failed: {type(exc).__name__}"))
            break
        resolve(outcomes)
        return conn

    # -- recording, in pipeline mode ----------------------------------------------------------

    def _lock_keys(self, m: InboundMessage) -> frozenset[int]:
        """The keys `m` reads under: its retransmission key, the documents its plan reads and
        the identifiers its patient change looks up."""
        keys = {_key(self._seed, "document", m.tenant_id, document_id)
                for document_id in _document_ids(m)}
        keys |= {_key(self._seed, "set", m.tenant_id, set_id) for set_id in _exclusive_sets(m)}
        if m.patient_update is not None and m.status is InboundStatus.ACCEPTED:
            keys |= {_key(self._seed, "patient", m.tenant_id, k.kind.value, k.authority, k.value)
                     for k in m.patient_update.lookup_keys}
        if m.control_id:
            keys.add(_key(self._seed, "inbound", m.tenant_id, m.sending_application,
                          m.sending_facility, m.control_id))
        return frozenset(keys)

    def _record_batch(self, conn: Connection, batch: list[_Job]) -> list[InboundReceipt]:
        """Record every job of `batch`, in order, sharing round trips.

        The batch is cut into segments of jobs with disjoint keys: within a segment no job reads
        what another one writes, so one query fetches what they all read, then all their writes
        are queued in the pipeline without waiting. The next segment's reads are sent after the
        previous segment's writes, so it sees them.
        """
        results: list[Callable[[], InboundReceipt]] = []
        for segment in _segments(batch):
            messages = [job.message for job in segment]
            patients = self._read_patients(conn, messages)  # comes back with the prefetch
            previous, documents, sets = self._prefetch(conn, messages)
            pending = [self._queue_record(conn, m, previous, documents, patients, sets)
                       for m in messages]
            for finish in pending:  # the first one waits for the segment's results
                finish()
            results.extend(pending)
        return [resolve() for resolve in results]

    def _prefetch(self, conn: Connection, messages: list[InboundMessage]
                  ) -> tuple[list[tuple[Any, ...]], dict[tuple[str, str], DocumentRow],
                             dict[tuple[str, str], DocumentRow]]:
        """What the messages read: inbound rows sharing a control id within the window, the
        document rows their version plans need, and the current version of the document sets
        they must open (`VersionCheck.exclusive_sets`). One round trip."""
        pairs = sorted({(m.tenant_id, m.control_id) for m in messages if m.control_id})
        inbound_cursor = None
        if pairs:
            inbound_cursor = conn.execute(
                "SELECT i.id, i.tenant_id, i.control_id, i.sending_application,"
                " i.sending_facility, i.received_at, i.digest, i.ack FROM inbound i"
                " JOIN unnest(%s::text[], %s::text[]) AS u(tenant_id, control_id)"
                " ON i.tenant_id = u.tenant_id AND i.control_id = u.control_id"
                " WHERE i.received_at >= %s AND i.ack_code NOT IN ('AR', 'CR')"  # not taken
                " ORDER BY i.id",
                ([p[0] for p in pairs], [p[1] for p in pairs],
                 min(m.received_at for m in messages if m.control_id) - self._window))
        wanted = sorted({(m.tenant_id, d) for m in messages for d in _document_ids(m)})
        documents_cursor = None
        if wanted:
            documents_cursor = conn.execute(
                "SELECT d.tenant_id, d.document_id, d.set_id, d.version, d.status,"
                " d.replaced_by FROM documents d"
                " JOIN unnest(%s::text[], %s::text[]) AS u(tenant_id, document_id)"
                " ON d.tenant_id = u.tenant_id AND d.document_id = u.document_id",
                ([w[0] for w in wanted], [w[1] for w in wanted]))
        sets = sorted({(m.tenant_id, s) for m in messages for s in _exclusive_sets(m)})
        sets_cursor = None
        if sets:
            sets_cursor = conn.execute(
                "SELECT DISTINCT ON (d.tenant_id, d.set_id) d.tenant_id, d.document_id,"
                " d.set_id, d.version, d.status, d.replaced_by FROM documents d"
                " JOIN unnest(%s::text[], %s::text[]) AS u(tenant_id, set_id)"
                " ON d.tenant_id = u.tenant_id AND d.set_id = u.set_id"
                " WHERE d.status = 'active'"
                " ORDER BY d.tenant_id, d.set_id, d.version IS NULL, d.version DESC,"
                " d.updated_at DESC",
                ([s[0] for s in sets], [s[1] for s in sets]))
        previous = inbound_cursor.fetchall() if inbound_cursor is not None else []
        # Both read (tenant_id, document_id, set_id, version, status, replaced_by).
        documents = {(r[0], r[1]): document_row(r[1:])
                     for r in (documents_cursor.fetchall() if documents_cursor else [])}
        active = {(r[0], r[2]): document_row(r[1:])
                  for r in (sets_cursor.fetchall() if sets_cursor else [])}
        return previous, documents, active

    def _queue_record(self, conn: Connection, m: InboundMessage,
                      candidates: list[tuple[Any, ...]],
                      documents: dict[tuple[str, str], DocumentRow],
                      patients: PatientReads | None = None,
                      sets: dict[tuple[str, str], DocumentRow] | None = None
                      ) -> Callable[[], InboundReceipt]:
        """Queue the statements recording `m`; return what gives its receipt once they ran."""
        previous: list[tuple[Any, ...]] = []
        if m.control_id:
            since = m.received_at - self._window
            previous = [r for r in candidates
                        if (r[1], r[2], r[3], r[4]) == (m.tenant_id, m.control_id,
                                                        m.sending_application,
                                                        m.sending_facility)
                        and r[5] >= since]
        for row_id, *_, digest, ack in previous:
            if bytes(digest) == m.digest:
                conn.execute("UPDATE inbound SET retransmissions = retransmissions + 1"
                             " WHERE id = %s", (row_id,))
                self._event(conn, m, EventKind.RETRANSMISSION, row_id)
                first = InboundReceipt(int(row_id), bytes(ack), retransmission_of=int(row_id))
                return lambda: first
        status, ack, error_code, error_detail = m.status, m.ack, m.error_code, m.error_detail
        ack_code = m.ack_code
        plan = VersionPlan()
        if m.versions is not None and status is InboundStatus.ACCEPTED:
            def lookup(document_id: str) -> DocumentRow | None:
                if document_id not in _document_ids(m):  # it would be read without its lock
                    raise _UndeclaredRead
                return documents.get((m.tenant_id, document_id))

            def active_in_set(set_id: str) -> DocumentRow | None:
                if set_id not in _exclusive_sets(m):  # it would be read without its lock
                    raise _UndeclaredRead
                return (sets or {}).get((m.tenant_id, set_id))

            plan = plan_versions(lookup, m.versions.changes, m.versions.unknown_original,
                                 active_in_set=active_in_set if m.versions.exclusive_sets
                                 else None)
            if plan.conflict is not None:
                status, ack = InboundStatus.REJECTED, m.versions.conflict_ack
                error_code, error_detail = "207", plan.conflict
                ack_code = m.versions.conflict_ack_code
        report = self._cipher.seal(m.report, _REPORT_KIND) if m.report is not None else None
        sealed = self._cipher.seal(m.raw, _INBOUND_KIND)
        inserted = conn.execute(
            "INSERT INTO inbound (tenant_id, listener, peer, received_at, sending_application,"
            " sending_facility, message_type, control_id, version, digest, payload_key, payload,"
            " size, status, ack_code, ack, error_code, error_detail, report_key, report,"
            " control_id_reused, processing_id, mail_key_id, mail_key, receiving_application,"
            " receiving_facility)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %b, %s, %b, %s, %s, %s, %b, %s, %s,"
            " %s, %b, %s, %s, %s, %b, %s, %s) RETURNING id",
            (m.tenant_id, m.listener, m.peer, m.received_at, m.sending_application,
             m.sending_facility, m.message_type, m.control_id, m.version, m.digest,
             sealed.key_id, sealed.blob, len(m.raw), status.value, ack_code, ack, error_code,
             error_detail, report.key_id if report else None, report.blob if report else None,
             bool(previous), m.processing_id, *seal_mail_key(self._cipher, m.mail_key),
             m.receiving_application, m.receiving_facility))
        # The rows below point at the row just inserted by this session (currval of the identity
        # sequence), so they are queued without waiting for its id.
        if previous:
            self._event(conn, m, EventKind.CONTROL_ID_REUSED, None,
                        f"same MSH-10 as inbound {previous[-1][0]} with different content")
        self._apply_versions(conn, m, plan)
        queued = 0
        if status is InboundStatus.ACCEPTED:
            for item in m.outbox:
                self._queue_outbox(conn, item, m.received_at)
                queued += 1
            if m.patient_update is not None and patients is not None:
                self._apply_patient(conn, m.tenant_id, m.patient_update, patients)
        receipt: list[InboundReceipt] = []

        def resolve() -> InboundReceipt:
            if not receipt:
                row = inserted.fetchone()
                assert row is not None
                receipt.append(InboundReceipt(
                    int(row[0]), ack, control_id_reused=bool(previous),
                    version_conflict=plan.conflict, unknown_originals=plan.unknown_originals,
                    queued=queued))
            return receipt[0]

        return resolve

    def _insert_outbox(self, conn: Connection, item: OutboxItem, now: float, *,
                       inbound_id: int | None) -> None:
        payload = self._cipher.seal(item.payload, OUTBOX_KIND)
        conn.execute(
            "INSERT INTO outbox (tenant_id, kind, inbound_id, state, payload_key, payload, size,"
            " message_id, envid, recipient_domain, created_at, updated_at, available_at)"
            " VALUES (%s, %s, %s, 'ready', %s, %b, %s, %s, %s, %s, %s, %s, %s)",
            (item.tenant_id, OutboxKind(item.kind).value, inbound_id, payload.key_id,
             payload.blob, len(item.payload), item.message_id, item.envid,
             item.recipient_domain, now, now,
             now if item.not_before is None else item.not_before))

    def _queue_outbox(self, conn: Connection, item: OutboxItem, now: float) -> None:
        """Queue the insert of an outbox row belonging to the inbound row just inserted."""
        payload = self._cipher.seal(item.payload, OUTBOX_KIND)
        conn.execute(
            "INSERT INTO outbox (tenant_id, kind, inbound_id, state, payload_key, payload, size,"
            " message_id, envid, recipient_domain, created_at, updated_at, available_at)"
            " VALUES (%s, %s, currval(pg_get_serial_sequence('inbound', 'id')), 'ready', %s,"
            " %b, %s, %s, %s, %s, %s, %s, %s)",
            (item.tenant_id, OutboxKind(item.kind).value, payload.key_id, payload.blob,
             len(item.payload), item.message_id, item.envid, item.recipient_domain, now, now,
             now if item.not_before is None else item.not_before))

    def _apply_versions(self, conn: Connection, m: InboundMessage, plan: VersionPlan) -> None:
        now = time.time()
        if plan.conflict is not None:
            self._event(conn, m, EventKind.VERSION_CONFLICT, None, plan.conflict)
            return
        for row in plan.writes:
            conn.execute(
                "INSERT INTO documents (tenant_id, document_id, set_id, version, status,"
                " replaced_by, inbound_id, updated_at) VALUES (%s, %s, %s, %s, %s, %s,"
                " currval(pg_get_serial_sequence('inbound', 'id')), %s)"
                " ON CONFLICT (tenant_id, document_id) DO UPDATE SET status = excluded.status,"
                " replaced_by = excluded.replaced_by, updated_at = excluded.updated_at",
                (m.tenant_id, row.document_id, row.set_id, row.version, row.status.value,
                 row.replaced_by, now))
        for _ in plan.unknown_originals:
            self._event(conn, m, EventKind.UNKNOWN_ORIGINAL, None,
                        "replace/delete of a document never received, accepted by policy")
        for _ in plan.resent:
            self._event(conn, m, EventKind.DOCUMENT_RESENT, None,
                        "request already applied to this document")

    @staticmethod
    def _event(conn: Connection, m: InboundMessage, kind: EventKind, inbound_id: int | None,
               detail: str | None = None) -> None:
        """Queue an event about `inbound_id`, or (None) about the row this session inserted
        last."""
        if inbound_id is None:
            conn.execute("INSERT INTO events (at, tenant_id, kind, inbound_id, detail)"
                         " VALUES (%s, %s, %s, currval(pg_get_serial_sequence('inbound', 'id')),"
                         " %s)",
                         (time.time(), m.tenant_id, kind.value, detail))
        else:
            conn.execute("INSERT INTO events (at, tenant_id, kind, inbound_id, detail)"
                         " VALUES (%s, %s, %s, %s, %s)",
                         (time.time(), m.tenant_id, kind.value, inbound_id, detail))

    # -- reads (operators) ----------------------------------------------------------------------

    async def _query(self, sql: str, params: Sequence[Any] = ()
                     ) -> Sequence[Sequence[Any]]:
        statement = _pg(sql)
        return await self._read(lambda c: c.execute(statement, params).fetchall())

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        if self._closed:
            raise StoreUnavailable("the store is closed")

        def run() -> T:
            with _translated("PostgreSQL read failed"), self._readers.connection() as conn:
                return fn(conn)

        return await asyncio.to_thread(run)


    async def get_inbound(self, inbound_id: int) -> InboundDetail | None:
        sql = (f"SELECT {SUMMARY_COLUMNS}, payload_key, payload, ack,"  # noqa: S608
               " report_key, report, purged_at FROM inbound WHERE id = %s")

        def fetch(conn: Connection) -> tuple[Any, ...] | None:
            with conn.cursor(binary=True) as cursor:  # bytea without hex decoding
                return cursor.execute(sql, (inbound_id,)).fetchone()

        row = await self._read(fetch)
        if row is None:
            return None
        key_id, payload, ack, report_key, report, purged_at = row[SUMMARY_WIDTH:]
        raw = (self._cipher.open(SealedPayload(key_id, bytes(payload)), _INBOUND_KIND)
               if purged_at is None else b"")
        opened_report = (self._cipher.open(SealedPayload(report_key, bytes(report)), _REPORT_KIND)
                         if report is not None else None)
        return InboundDetail(summary_from_row(row[:SUMMARY_WIDTH]), raw, bytes(ack), opened_report,
                             purged_at)

    # -- the outbox ---------------------------------------------------------------------------
    # Outbox writes are short transactions of their own, each on a connection of `_outbox` (in
    # a worker thread), committed before the call returns, with the same `synchronous_commit` as
    # the writers. Leasing selects with FOR UPDATE SKIP LOCKED: two sessions (threads of one
    # instance or replicas) never lock the same row, and a row whose lease one of them committed
    # no longer matches the other's re-checked WHERE clause.

    async def _transact(self, fn: Callable[[Connection], T]) -> T:
        if self._closed:
            raise StoreUnavailable("the store is closed")

        def run() -> T:
            with (_translated("PostgreSQL outbox write failed"),
                  self._outbox.connection() as conn, conn.transaction()):
                return fn(conn)

        return await asyncio.to_thread(run)

    async def enqueue(self, items: Sequence[OutboxItem], *, now: float | None = None
                      ) -> list[int]:
        """Store `items` as READY rows, all or none; return their ids in order."""
        for item in items:
            check_item(item)
        if not items:
            return []
        at = time.time() if now is None else now
        sealed = [self._cipher.seal(item.payload, OUTBOX_KIND) for item in items]

        def run(conn: Connection) -> list[int]:
            ids: list[int] = []
            for item, payload in zip(items, sealed, strict=True):
                row = conn.execute(
                    "INSERT INTO outbox (tenant_id, kind, inbound_id, state, payload_key,"
                    " payload, size, message_id, envid, recipient_domain, created_at,"
                    " updated_at, available_at) VALUES (%s, %s, %s, 'ready', %s, %b, %s, %s,"
                    " %s, %s, %s, %s, %s) RETURNING id",
                    (item.tenant_id, OutboxKind(item.kind).value, item.inbound_id,
                     payload.key_id, payload.blob, len(item.payload), item.message_id,
                     item.envid, item.recipient_domain, at, at,
                     at if item.not_before is None else item.not_before)).fetchone()
                assert row is not None
                ids.append(int(row[0]))
            return ids

        return await self._transact(run)

    async def lease(self, *, tenant_id: str, kinds: Sequence[OutboxKind], limit: int,
                    lease_seconds: float, now: float | None = None) -> list[OutboxLease]:
        check_lease(kinds, limit, lease_seconds)
        at = time.time() if now is None else now
        token = secrets.token_hex(16)  # per call; each row's token adds its id
        # Only a constant condition is interpolated.
        sql = ("WITH picked AS (SELECT id FROM outbox WHERE tenant_id = %s"  # noqa: S608
               f" AND kind = ANY(%s) AND {_pg(LEASABLE)} ORDER BY available_at, id LIMIT %s"
               " FOR UPDATE SKIP LOCKED)"
               " UPDATE outbox o SET state = 'leased', lease_token = %s || '.' || o.id,"
               " lease_expires_at = %s, attempts = o.attempts + 1, updated_at = %s"
               " FROM picked WHERE o.id = picked.id"
               " RETURNING o.id, o.lease_token, o.lease_expires_at, o.attempts, o.tenant_id,"
               " o.kind, o.inbound_id, o.message_id, o.envid, o.recipient_domain,"
               " o.available_at, o.payload_key, o.payload,"
               " COALESCE(o.retried_at, o.created_at)")  # where the retry budget counts from

        def run(conn: Connection) -> list[tuple[Any, ...]]:
            with conn.cursor(binary=True) as cursor:  # bytea without hex decoding
                return cursor.execute(sql, (
                    tenant_id, [OutboxKind(k).value for k in kinds], at, at, limit, token,
                    at + lease_seconds, at)).fetchall()

        rows = sorted(await self._transact(run), key=lambda r: (r[10], r[0]))
        leases: list[OutboxLease] = []
        for r in rows:
            unreadable: str | None = None
            try:  # one damaged row must not hold up the batch (OutboxLease.unreadable)
                payload = self._cipher.open(SealedPayload(r[11], bytes(r[12])), OUTBOX_KIND)
            except PayloadUnreadable as exc:
                payload, unreadable = b"", str(exc)
            leases.append(OutboxLease(int(r[0]), r[1], r[2], int(r[3]), r[4], OutboxKind(r[5]),
                                      None if r[6] is None else int(r[6]), r[7], r[8], r[9],
                                      payload, r[13], unreadable))
        return leases

    async def _fenced(self, sql: str, params: tuple[Any, ...], row_id: int, token: str,
                      audit: AuditEntry | None = None, then: Sequence[OutboxItem] = ()
                      ) -> None:
        statement = _pg(sql)
        for item in then:
            check_item(item)

        def run(conn: Connection) -> int:
            changed = conn.execute(statement, (*params, row_id, token)).rowcount
            if changed == 1 and audit is not None:
                conn.execute(_AUDIT_SQL, audit_params(audit, time.time(), row_id))
            if changed == 1:
                now = time.time()
                for item in then:
                    self._insert_outbox(conn, item, now, inbound_id=item.inbound_id)
            return changed

        if await self._transact(run) != 1:
            raise LeaseLost(f"outbox {row_id}: lease lost")

    async def _unfenced(self, sql: str, params: tuple[Any, ...], row_id: int,
                        audit: AuditEntry | None) -> bool:
        statement = _pg(sql)

        def run(conn: Connection) -> bool:
            if conn.execute(statement, params).rowcount != 1:
                return False
            if audit is not None:
                conn.execute(_AUDIT_SQL, audit_params(audit, time.time(), row_id))
            return True

        return await self._transact(run)

    # -- receipts -----------------------------------------------------------------------------

    async def claim(self, name: str) -> Claim | None:
        """A session advisory lock on a connection of its own: None when another process holds
        it. Released by `release()`, or by the server when this process dies."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        key = _key(self._seed, "claim", name)

        def take() -> Claim | None:
            with _translated("PostgreSQL claim failed"):
                conn = self._connect()
                try:
                    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                except BaseException:
                    conn.close()
                    raise
            if not (row and row[0]):
                conn.close()
                return None
            return Claim(conn.close)  # closing the session releases its advisory locks

        return await asyncio.to_thread(take)

    async def find_outbox_ids(self, tenant_id: str, *, envid: str | None = None,
                              message_ids: Sequence[str] = ()) -> list[int]:
        def run(conn: Connection) -> list[int]:
            return find_ids(lambda sql, params: conn.execute(_pg(sql), params).fetchall(),
                            tenant_id, envid, message_ids)

        return await self._read(run)

    async def record_returned_mail(self, mail: ReturnedMail) -> RecordedMail:
        for item in mail.zams:
            check_item(item)
        sealed = self._cipher.seal(mail.raw, RECEIPT_KIND)

        def run(conn: Connection) -> RecordedMail:
            row = conn.execute(
                "INSERT INTO receipts (tenant_id, receipt_key, received_at, kind, status,"
                " outcome, outbox_id, detail, payload_key, payload, size)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %b, %s)"
                " ON CONFLICT (tenant_id, receipt_key) DO NOTHING RETURNING id",
                (mail.tenant_id, mail.key, mail.received_at, mail.kind, mail.status.value,
                 mail.outcome, mail.outbox_id, mail.detail, sealed.key_id, sealed.blob,
                 len(mail.raw))).fetchone()
            if row is None:
                existing = conn.execute(
                    "SELECT id FROM receipts WHERE tenant_id = %s AND receipt_key = %s",
                    (mail.tenant_id, mail.key)).fetchone()
                assert existing is not None
                return RecordedMail(int(existing[0]), duplicate=True)
            now = time.time()
            for update in mail.updates:
                for sql, params in receipt_statements(update, now):
                    conn.execute(_pg(sql), params)
            for item in mail.zams:
                self._insert_outbox(conn, item, now, inbound_id=item.inbound_id)
            return RecordedMail(int(row[0]), duplicate=False)

        return await self._transact(run)

    async def record_mailbox_audit(self, tenant_id: str, entry: AuditEntry, *,
                                   outbox_id: int | None = None) -> None:
        params = mailbox_audit_params(tenant_id, entry, time.time(), outbox_id)
        await self._transact(lambda conn: conn.execute(_pg(MAILBOX_AUDIT_SQL), params))

    async def get_outbox(self, row_id: int) -> OutboxDetail | None:
        sql = (f"SELECT {OUTBOX_SUMMARY_COLUMNS}, payload_key, payload,"  # noqa: S608
               " error_key, error_detail, purged_at FROM outbox WHERE id = %s")

        def fetch(conn: Connection) -> tuple[Any, ...] | None:
            with conn.cursor(binary=True) as cursor:
                return cursor.execute(sql, (row_id,)).fetchone()

        row = await self._read(fetch)
        if row is None:
            return None
        key_id, payload, error_key, error, purged_at = row[OUTBOX_SUMMARY_WIDTH:]
        opened = (self._cipher.open(SealedPayload(key_id, bytes(payload)), OUTBOX_KIND)
                  if purged_at is None else b"")
        detail = (self._cipher.open(SealedPayload(error_key, bytes(error)),
                                    OUTBOX_ERROR_KIND).decode()
                  if error is not None else None)
        return OutboxDetail(outbox_summary_from_row(row[:OUTBOX_SUMMARY_WIDTH]), opened, detail,
                            purged_at)

    # -- retention ----------------------------------------------------------------------------

    _PURGE_SQL = purge_statements(payload_log=False, lock=" FOR UPDATE SKIP LOCKED")

    async def _purge_batch(self, sql: str, params: tuple[Any, ...]) -> int:
        statement = _pg(sql)
        return await self._transact(lambda conn: conn.execute(statement, params).rowcount)

    async def _purge_statements(self, statements: Sequence[str], params: tuple[Any, ...]
                                ) -> int:
        converted = [_pg(sql) for sql in statements]

        def run(conn: Connection) -> int:
            return [conn.execute(sql, params).rowcount for sql in converted][-1]

        return await self._transact(run)

    # -- patient context (ADT) ------------------------------------------------------------------

    def _read_patients(self, conn: Connection, messages: list[InboundMessage]
                       ) -> PatientReads | None:
        """Queue the read of the patients the segment's ADT changes find, locked FOR UPDATE
        (the advisory keys cover their identifiers, not a patient reached through another
        one); their rows come back with the prefetch's round trip."""
        reads = PatientReads(self._cipher, [
            (m.tenant_id, m.patient_update) for m in messages
            if m.patient_update is not None and m.status is InboundStatus.ACCEPTED])
        query = reads.query(" FOR UPDATE OF p")
        if query is None:
            return None
        cursor = conn.execute(_pg(query[0]), query[1])
        reads.load_later(cursor.fetchall)
        return reads

    @staticmethod
    def _apply_patient(conn: Connection, tenant_id: str, change: PatientChange,
                       patients: PatientReads) -> None:
        """Queue the writes of `change`, for the inbound row just queued."""
        apply_change(_PgDb(conn), patients, tenant_id, change, _CURRENT_INBOUND, time.time())

    async def get_patient(self, tenant_id: str, *, ipp: str | None = None,
                          authority: str | None = None, ins: str | None = None
                          ) -> StoredPatient | None:
        sql, params = find_patient_query(self._cipher, tenant_id, ipp=ipp, authority=authority,
                                         ins=ins)
        statement = _pg(sql)

        def fetch(conn: Connection) -> list[tuple[Any, ...]]:
            with conn.cursor(binary=True) as cursor:  # bytea without hex decoding
                return cursor.execute(statement, params).fetchall()

        return patient_from_rows(self._cipher, await self._read(fetch))


_CURRENT_INBOUND = Expr("currval(pg_get_serial_sequence('inbound', 'id'))")


@dataclass(slots=True)
class _PgDb:
    """Statements queued in the pipeline; an `Expr` parameter is written into the SQL."""

    conn: Connection

    def execute(self, sql: str, params: Sequence[Any]) -> None:
        parts = sql.split("?")
        text, values = [parts[0]], []
        for param, part in zip(params, parts[1:], strict=True):
            if isinstance(param, Expr):
                text.append(param.sql)
            else:
                text.append("%s")
                values.append(param)
            text.append(part)
        self.conn.execute("".join(text), values)

    def insert(self, sql: str, params: Sequence[Any], table: str) -> Expr:
        self.execute(sql, params)
        return Expr(f"currval(pg_get_serial_sequence('{table}', 'id'))")


# -- migrations ---------------------------------------------------------------------------------


def migrate(conn: Connection, seed: bytes = b"") -> int:
    """Apply pending migrations under a session advisory lock; return the schema version.

    `conn` must be in autocommit mode: the lock is held across the migration transaction, so
    replicas starting together apply each migration exactly once."""
    lock = _key(seed, "migrations")
    conn.execute("SELECT pg_advisory_lock(%s)", (lock,))
    try:
        with conn.transaction():
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            known = {m.version for m in MIGRATIONS}
            if done - known:
                raise StoreError(
                    f"database schema version {max(done)} is newer than this connector knows")
            for migration in MIGRATIONS:
                if migration.version in done:
                    continue
                conn.execute(migration.postgres.encode())  # several statements, no parameters
                conn.execute("INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                             (migration.version, migration.name, time.time()))
                log.info("store_migrated", version=migration.version, migration=migration.name)
    finally:
        if not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock,))
    return max(m.version for m in MIGRATIONS)


# -- helpers ------------------------------------------------------------------------------------


def _stale(conn: Connection) -> bool:
    """True when `conn` cannot be used: closed, broken, or closed by the server while it was
    idle. A server that restarts, fails over or terminates the backend sends its FATAL error and
    closes the socket; an idle connection (we never LISTEN) has nothing else to read, so a
    readable socket means it is gone. Checked without a round trip, before each use of an idle
    connection, so that the first call after a restart does not fail on it."""
    if conn.closed or conn.broken:
        return True
    try:
        poller = select.poll()  # not select(): it fails on descriptors above 1023
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))  # POLLIN, or POLLHUP/POLLERR
    except (OSError, ValueError, psycopg.Error):
        return True


def _storable(m: InboundMessage) -> InboundMessage:
    """`m` with NUL characters in its text fields replaced by U+FFFD: PostgreSQL text cannot
    hold them (SQLite can), and a message that cannot be stored would be answered AR forever.
    The raw message is bytea and is kept as received; lookups use the replaced values too."""
    texts = (m.tenant_id, m.listener, m.peer, m.sending_application, m.sending_facility,
             m.message_type, m.control_id, m.version, m.ack_code, m.error_code, m.error_detail,
             m.processing_id, m.receiving_application, m.receiving_facility)
    if not any(text and "\x00" in text for text in texts):
        return m

    def clean(text: str) -> str:
        return text.replace("\x00", "\ufffd")

    def maybe(text: str | None) -> str | None:
        return None if text is None else clean(text)

    return replace(m, tenant_id=clean(m.tenant_id), listener=clean(m.listener),
                   peer=clean(m.peer), sending_application=maybe(m.sending_application),
                   sending_facility=maybe(m.sending_facility),
                   message_type=maybe(m.message_type), control_id=maybe(m.control_id),
                   version=maybe(m.version), ack_code=clean(m.ack_code),
                   error_code=maybe(m.error_code), error_detail=maybe(m.error_detail),
                   processing_id=maybe(m.processing_id),
                   receiving_application=maybe(m.receiving_application),
                   receiving_facility=maybe(m.receiving_facility))


def _document_ids(m: InboundMessage) -> frozenset[str]:
    """The documents the version plan of `m` may read (and write)."""
    if m.versions is None or m.status is not InboundStatus.ACCEPTED:
        return frozenset()
    return frozenset(document_id for change in m.versions.changes
                     for document_id in (change.document_id, change.target_id)
                     if document_id is not None)


def _exclusive_sets(m: InboundMessage) -> frozenset[str]:
    """The document sets the version plan of `m` must find without a current version."""
    if m.versions is None or m.status is not InboundStatus.ACCEPTED \
            or not m.versions.exclusive_sets:
        return frozenset()
    return frozenset(change.set_id for change in m.versions.changes
                     if change.action is DocumentAction.NEW and change.set_id is not None)


def _segments(batch: list[_Job]) -> Iterator[list[_Job]]:
    """Cut `batch`, in order, into runs of jobs whose keys do not overlap."""
    segment: list[_Job] = []
    taken: set[int] = set()
    for job in batch:
        if not taken.isdisjoint(job.keys):
            yield segment
            segment, taken = [], set()
        segment.append(job)
        taken |= job.keys
    if segment:
        yield segment


def _schema_seed(conn: Connection) -> bytes:
    row = conn.execute("SELECT current_database(), current_schema()").fetchone()
    if row is None or row[1] is None:
        raise StoreError("no schema to create the store in: check search_path")
    return f"{row[0]}.{row[1]}".encode()


def _key(seed: bytes, *parts: str | None) -> int:
    """A signed 64-bit advisory lock key for `parts` (None and "" stay distinct)."""
    digest = hashlib.blake2b(seed, digest_size=8)
    for part in parts:
        digest.update(b"\x00" if part is None else b"\x01" + part.encode() + b"\x00")
    return int.from_bytes(digest.digest(), "big", signed=True)


def _describe(context: str, exc: psycopg.Error) -> str:
    """SQLSTATE and primary message only: DETAIL may quote row values (patient data)."""
    primary = exc.diag.message_primary if exc.diag else None
    if not primary and "connection info string" in str(exc):  # it quotes the DSN's pieces
        primary = "not a valid libpq connection string"
    if not primary:  # connection errors have no diagnostics; libpq's text names no row data
        primary = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    return f"{context}: {type(exc).__name__}{state}: {primary}"


@contextlib.contextmanager
def _translated(context: str) -> Iterator[None]:
    try:
        yield
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(_describe(context, exc)) from exc
    except psycopg.Error as exc:
        raise StoreError(_describe(context, exc)) from exc


def _pg(statement: str) -> str:
    """A statement shared with SQLite (`?` placeholders, no literal `?`) for psycopg."""
    return statement.replace("?", "%s")


def _failed(batch: list[_Job], error: BaseException
            ) -> list[tuple[_Job, Any, BaseException | None]]:
    return [(job, None, error) for job in batch]




_AUDIT_SQL = _pg(AUDIT_SQL)


# -- start-up checks --------------------------------------------------------------------------


def unverified_hosts(dsn: str, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The hosts off the loopback that `dsn` reaches without certificate verification (an
    sslmode other than verify-ca or verify-full, in the DSN or PGSSLMODE; `sslrootcert=system`
    without one makes libpq 16+ default to verify-full); a Unix socket or a loopback address
    needs none. Settings from a service file (`service=`) are not read: it may warn for them.
    Never the DSN itself in what it returns: it may hold a password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:  # refused at connection time with its own error
        return []
    system_roots = (params.get("sslrootcert") or environ.get("PGSSLROOTCERT")) == "system"
    sslmode = str(params.get("sslmode") or environ.get("PGSSLMODE")
                  or ("verify-full" if system_roots else "prefer"))
    if sslmode in ("verify-ca", "verify-full"):
        return []
    hosts = str(params.get("host") or params.get("hostaddr") or environ.get("PGHOST") or "")
    return [host for host in hosts.split(",")
            if host and not host.startswith("/") and not is_loopback(host)]
