"""Plumbing both store adapters share: waking callers from a writer or commit thread, counting
their group commits, pools of reusable connections, reading summaries, and the outbox statements
both dialects run alike (written with `?` placeholders; the PostgreSQL adapter turns them into
`%s`)."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from connector.store.cipher import PayloadCipher, SealedPayload
from connector.store.model import (
    COMMIT_BUCKETS,
    FINAL_DELIVERY_STATUSES,
    AuditAction,
    AuditEntry,
    AuditRecord,
    CommitStats,
    DocumentStatus,
    InboundStatus,
    InboundSummary,
    OutboxItem,
    OutboxKind,
    OutboxStat,
    OutboxState,
    OutboxSummary,
    ReceiptStatus,
    ReceiptUpdate,
    ReturnedMailSummary,
    SentRequest,
)
from connector.store.versions import DocumentRow


def placeholders(count: int) -> str:
    """`?, ?, ...`: `count` parameter marks for an `IN (...)` list."""
    return ", ".join("?" * count)


# Column order `summary_from_row` expects (the same in both schemas).
SUMMARY_COLUMNS = (
    "id, tenant_id, listener, peer, received_at, sending_application, sending_facility,"
    " message_type, control_id, version, status, ack_code, error_code, error_detail,"
    " retransmissions, control_id_reused, size, processing_id, receiving_application,"
    " receiving_facility")
SUMMARY_WIDTH = 20


class Waiter(Protocol):
    """A queued job: the caller's event loop and the future it awaits."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def future(self) -> asyncio.Future[Any]: ...


Outcome = tuple[Waiter, Any, BaseException | None]
J = TypeVar("J")


def take_batch(jobs: queue.SimpleQueue[Any], stop: object, kind: type[J], limit: int
               ) -> tuple[list[J], bool]:
    """Block for one job, then take whatever else is queued, up to `limit`: the group of a group
    commit. Returns the jobs and whether `stop` was seen (the writer ends after this batch)."""
    first = jobs.get()
    if first is stop:
        return [], True
    assert isinstance(first, kind)
    batch = [first]
    while len(batch) < limit:
        try:
            item = jobs.get_nowait()
        except queue.Empty:
            break
        if item is stop:
            return batch, True
        assert isinstance(item, kind)
        batch.append(item)
    return batch, False


def resolve(outcomes: Sequence[Outcome]) -> None:
    """Hand results back to each caller's event loop: one wake-up per loop per batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: its callers are gone
            loop.call_soon_threadsafe(set_results, items)


def set_results(items: Sequence[Outcome]) -> None:
    """Wake the callers of `items` (on their event loop's thread)."""
    for job, result, error in items:
        if job.future.cancelled():
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)


class CommitRecorder:
    """Counts group commits from the thread that makes them durable; any thread reads them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._commits = 0
        self._jobs = 0
        self._seconds = 0.0
        self._counts = [0] * (len(COMMIT_BUCKETS) + 1)  # per bucket, not cumulative

    def record(self, seconds: float, jobs: int) -> None:
        index = bisect.bisect_left(COMMIT_BUCKETS, seconds)
        with self._lock:
            self._commits += 1
            self._jobs += jobs
            self._seconds += seconds
            self._counts[index] += 1

    def snapshot(self) -> CommitStats:
        with self._lock:
            counts, commits, jobs, seconds = (list(self._counts), self._commits, self._jobs,
                                              self._seconds)
        return CommitStats(commits, jobs, seconds, tuple(itertools.accumulate(counts[:-1])))


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


class ConnectionPool(Generic[C]):
    """At most `size` connections in use at once, reused from one use to the next (each by one
    thread at a time). `usable(conn)` says whether an idle one can still serve (a server may
    have closed it meanwhile); `reusable(conn, failed)` whether one goes back to the pool after
    a use, `failed` when that use raised. `close()` closes the idle ones and every one in use
    when its use ends."""

    def __init__(self, connect: Callable[[], C], size: int, *,
                 usable: Callable[[C], bool] = lambda conn: True,
                 reusable: Callable[[C, bool], bool] = lambda conn, failed: True) -> None:
        self._connect = connect
        self.size = size
        self._usable = usable
        self._reusable = reusable
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[C] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[C]:
        with self._slots:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is not None and not self._usable(conn):
                conn.close()
                conn = None
            if conn is None:
                conn = self._connect()
            failed = True
            try:
                yield conn
                failed = False
            finally:
                with self._lock:
                    keep = not self._closed and self._reusable(conn, failed)
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def summary_from_row(row: Sequence[Any]) -> InboundSummary:
    return InboundSummary(
        id=int(row[0]), tenant_id=row[1], listener=row[2], peer=row[3], received_at=row[4],
        sending_application=row[5], sending_facility=row[6], message_type=row[7],
        control_id=row[8], version=row[9], status=InboundStatus(row[10]), ack_code=row[11],
        error_code=row[12], error_detail=row[13], retransmissions=int(row[14]),
        control_id_reused=bool(row[15]), size=int(row[16]), processing_id=row[17],
        receiving_application=row[18], receiving_facility=row[19])


MAIL_KEY_KIND = "mail-key"  # cipher associated data of inbound.mail_key


# -- outbox -----------------------------------------------------------------------------------

OUTBOX_KIND = "outbox"  # cipher associated data of outbox payloads
OUTBOX_ERROR_KIND = "outbox-error"  # ... and of the servers' error texts

OUTBOX_SUMMARY_COLUMNS = (
    "id, tenant_id, kind, state, inbound_id, message_id, envid, recipient_domain, attempts,"
    " created_at, updated_at, available_at, lease_expires_at, sent_at, smtp_code, error_code,"
    " error_class, size, delivery_status, read_status, receipt_at")
OUTBOX_SUMMARY_WIDTH = 21

# Leasable now (two `?`: now, now): ready and due, or leased by someone whose lease expired.
LEASABLE = ("((state = 'ready' AND available_at <= ?)"
            " OR (state = 'leased' AND lease_expires_at <= ?))")

# Fenced transitions: the SET values, `updated_at`, then the row id and its lease token. A row
# is released (token and expiry cleared) when it leaves LEASED.
RENEW_SQL = ("UPDATE outbox SET lease_expires_at = ?, updated_at = ?"
             " WHERE id = ? AND state = 'leased' AND lease_token = ?")
# A DSN can come back before the submission is recorded (an operator that answers within the
# same second): the final status it set is kept, not reset to "awaiting-report".
# Only constant status names are interpolated.
MARK_SENT_SQL = ("UPDATE outbox SET state = 'sent', sent_at = ?, smtp_code = ?,"  # noqa: S608
                 " delivery_status = CASE WHEN delivery_status IN ("
                 + ", ".join(f"'{status}'" for status in sorted(FINAL_DELIVERY_STATUSES))
                 + ") THEN delivery_status ELSE ? END,"
                 " lease_token = NULL, lease_expires_at = NULL, updated_at = ?"
                 " WHERE id = ? AND state = 'leased' AND lease_token = ?")
MARK_FAILED_SQL = ("UPDATE outbox SET state = 'failed', error_code = ?, error_class = ?,"
                   " error_key = ?, error_detail = ?, lease_token = NULL,"
                   " lease_expires_at = NULL, updated_at = ?"
                   " WHERE id = ? AND state = 'leased' AND lease_token = ?")
MARK_DEAD_SQL = ("UPDATE outbox SET state = 'dead', error_code = ?, error_class = ?,"
                 " error_key = ?, error_detail = ?, lease_token = NULL,"
                 " lease_expires_at = NULL, updated_at = ?"
                 " WHERE id = ? AND state = 'leased' AND lease_token = ?")
RETRY_SQL = ("UPDATE outbox SET state = 'ready', available_at = ?, error_code = ?,"
             " error_class = ?, error_key = ?, error_detail = ?, lease_token = NULL,"
             " lease_expires_at = NULL, updated_at = ?"
             " WHERE id = ? AND state = 'leased' AND lease_token = ?")
# Operators' actions and receipts carry no token: they act on rows no worker holds (cancel of a
# LEASED row takes it from its worker, whose next transition gets LeaseLost).
# A retried mail is a new submission: its delivery status starts over, so that the report about
# the new submission settles it (and makes its ZAM) as for a first one.
RETRY_NOW_SQL = ("UPDATE outbox SET state = 'ready', available_at = ?, lease_token = NULL,"
                 " lease_expires_at = NULL, delivery_status = NULL, retried_at = ?,"
                 " updated_at = ?"
                 " WHERE id = ? AND state IN ('failed', 'dead', 'ready') AND purged_at IS NULL")
CANCEL_SQL = ("UPDATE outbox SET state = 'cancelled', lease_token = NULL,"
              " lease_expires_at = NULL, updated_at = ?"
              " WHERE id = ? AND state IN ('ready', 'failed', 'dead')")
SETTLE_SQL = ("UPDATE outbox SET state = ?, error_code = ?, error_class = ?, error_key = ?,"
              " error_detail = ?, updated_at = ? WHERE id = ? AND state = 'sent'")


@dataclass(frozen=True, slots=True)
class PurgeStatement:
    """One statement of the retention purge: `?` placeholders for the purge time, the cutoff
    `cutoffs` times, then the batch size."""

    part: str  # inbound, outbox, receipts
    sql: str
    cutoffs: int = 1

    def params(self, now: float, before: float, batch: int) -> tuple[float | int, ...]:
        return (now, *(before,) * self.cutoffs, batch)


def purge_statements(*, payload_log: bool, lock: str = "") -> tuple[PurgeStatement, ...]:
    """The retention purge, one batch per statement. It drops the payloads (and what else may
    hold patient data: validation reports, servers' error texts) of what finished before the
    cutoff and that nothing still needs:

    * an outbox row neither waiting nor leased whose last activity (its last state change, or
      the last receipt about it) is older than the cutoff: a mail waiting for its delivery
      report keeps its payload until the report or the final-report timeout (shorter than the
      retention: `settings`) decides it, since either builds a ZAM from it; a dead row keeps
      it for the retention period after it died, for an operator's retry;
    * a message received before the cutoff once none of its outbox rows waits or is leased
      (delivery and receipts read only its metadata);
    * a returned mail received before the cutoff.

    The rows stay, with their metadata, for the audit and the listings. `payload_log`: the
    SQLite schema's payload-log columns too. `lock` ends the inner select (PostgreSQL:
    ` FOR UPDATE SKIP LOCKED`, so that replicas purging at once take different rows). An outbox
    row's `created_at` is never later than its last activity: it narrows the index range."""
    log_columns = (", payload_segment = NULL, payload_offset = NULL, payload_length = NULL"
                   if payload_log else "")
    # Only constant fragments are interpolated.
    return (
        PurgeStatement(
            "outbox",
            f"UPDATE outbox SET payload = NULL{log_columns}, error_key = NULL,"  # noqa: S608
            " error_detail = NULL, purged_at = ? WHERE id IN (SELECT id FROM outbox"
            " WHERE purged_at IS NULL AND created_at < ? AND state NOT IN ('ready', 'leased')"
            " AND (CASE WHEN receipt_at > updated_at THEN receipt_at ELSE updated_at END) < ?"
            f" ORDER BY created_at LIMIT ?{lock})", cutoffs=2),
        PurgeStatement(
            "inbound",
            f"UPDATE inbound SET payload = NULL{log_columns}, report_key = NULL,"  # noqa: S608
            " report = NULL, mail_key_id = NULL, mail_key = NULL, purged_at = ?"
            " WHERE id IN (SELECT i.id FROM inbound i"
            " WHERE i.purged_at IS NULL AND i.received_at < ? AND NOT EXISTS"
            " (SELECT 1 FROM outbox o WHERE o.inbound_id = i.id"
            " AND o.state IN ('ready', 'leased'))"
            f" ORDER BY i.received_at LIMIT ?{lock})"),
        PurgeStatement(
            "receipts",
            f"UPDATE receipts SET payload = NULL{log_columns}, purged_at = ?"  # noqa: S608
            " WHERE id IN (SELECT id FROM receipts WHERE purged_at IS NULL"
            f" AND received_at < ? ORDER BY received_at LIMIT ?{lock})"),
    )


DOCUMENT_COLUMNS = "tenant_id, document_id, set_id, version, status, replaced_by, inbound_id"


def document_row(row: Sequence[Any]) -> DocumentRow:
    """A version row from its (document_id, set_id, version, status, replaced_by) columns."""
    return DocumentRow(row[0], row[1], row[2], DocumentStatus(row[3]), row[4])


# A document set's current version: active (neither replaced nor deleted), the highest version
# number (a row without one last, on both databases).
ACTIVE_IN_SET_SQL = (f"SELECT {DOCUMENT_COLUMNS} FROM documents"  # noqa: S608
                     " WHERE tenant_id = ? AND set_id = ? AND status = 'active'"
                     " ORDER BY version IS NULL, version DESC, updated_at DESC LIMIT 1")
# Its latest version: the current one, or the one a deletion withdrew (a replaced version is
# never the latest).
LATEST_IN_SET_SQL = (f"SELECT {DOCUMENT_COLUMNS} FROM documents"  # noqa: S608
                     " WHERE tenant_id = ? AND set_id = ? AND status IN ('active', 'deleted')"
                     " ORDER BY version IS NULL, version DESC, updated_at DESC LIMIT 1")

# The payload-log segments that rows not purged still point at (SQLite).
REFERENCED_SEGMENTS_SQL = (
    "SELECT payload_segment FROM inbound WHERE payload_segment IS NOT NULL"
    " UNION SELECT payload_segment FROM outbox WHERE payload_segment IS NOT NULL"
    " UNION SELECT payload_segment FROM receipts WHERE payload_segment IS NOT NULL")


def check_item(item: OutboxItem) -> None:
    """Refuse what must never be stored in clear: a recipient address instead of its domain."""
    if item.recipient_domain is not None and "@" in item.recipient_domain:
        raise ValueError("recipient_domain must be a domain, not an address")
    OutboxKind(item.kind)  # a wrong kind fails here, not as a CHECK violation mid-batch


def check_lease(kinds: Sequence[OutboxKind], limit: int, lease_seconds: float) -> None:
    if not kinds:
        raise ValueError("lease needs at least one kind")
    if limit < 1:
        raise ValueError("lease limit must be at least 1")
    if lease_seconds <= 0:
        raise ValueError("lease_seconds must be positive")


def seal_mail_key(cipher: PayloadCipher, key: str | None) -> tuple[str | None, bytes | None]:
    """The (mail_key_id, mail_key) columns of an inbound row."""
    if key is None:
        return None, None
    sealed = cipher.seal(key.encode("ascii"), MAIL_KEY_KIND)
    return sealed.key_id, sealed.blob


def sent_requests_query(tenant_id: str, document_ids: Sequence[str]
                        ) -> tuple[str, tuple[Any, ...]]:
    """The requests that carried `document_ids`: their mail keys and their mails'
    Message-IDs (`?` placeholders)."""
    # Only placeholders are interpolated.
    return ("SELECT d.document_id, i.mail_key_id, i.mail_key, o.message_id"  # noqa: S608
            " FROM documents d JOIN inbound i ON i.id = d.inbound_id"
            " JOIN outbox o ON o.inbound_id = i.id AND o.kind = 'smtp'"
            f" WHERE d.tenant_id = ? AND d.document_id IN ({placeholders(len(document_ids))})"
            " AND i.mail_key IS NOT NULL"
            " AND o.message_id IS NOT NULL",
            (tenant_id, *document_ids))


def sent_requests_from_rows(cipher: PayloadCipher, rows: Sequence[Sequence[Any]]
                            ) -> dict[str, SentRequest]:
    keys: dict[str, str] = {}
    message_ids: dict[str, set[str]] = {}
    for document_id, key_id, blob, message_id in rows:
        if document_id not in keys:
            keys[document_id] = cipher.open(SealedPayload(key_id, bytes(blob)),
                                            MAIL_KEY_KIND).decode("ascii")
        message_ids.setdefault(document_id, set()).add(message_id)
    return {str(document_id): SentRequest(key, frozenset(message_ids[document_id]))
            for document_id, key in keys.items()}


def sealed_error(cipher: PayloadCipher, code: str | None, error_class: str | None,
                 detail: str | None) -> tuple[str | None, str | None, str | None, bytes | None]:
    """The four error columns: code and class in clear, the server's text sealed."""
    if detail is None:
        return code, error_class, None, None
    sealed = cipher.seal(detail.encode(), OUTBOX_ERROR_KIND)
    return code, error_class, sealed.key_id, sealed.blob


def settle_state(delivered: bool) -> str:
    return OutboxState.DELIVERED.value if delivered else OutboxState.FAILED.value


def outbox_summary_from_row(row: Sequence[Any]) -> OutboxSummary:
    return OutboxSummary(
        id=int(row[0]), tenant_id=row[1], kind=OutboxKind(row[2]), state=OutboxState(row[3]),
        inbound_id=None if row[4] is None else int(row[4]), message_id=row[5], envid=row[6],
        recipient_domain=row[7], attempts=int(row[8]), created_at=row[9], updated_at=row[10],
        available_at=row[11], lease_expires_at=row[12], sent_at=row[13], smtp_code=row[14],
        error_code=row[15], error_class=row[16], size=int(row[17]), delivery_status=row[18],
        read_status=row[19], receipt_at=row[20])


# -- patient contexts ---------------------------------------------------------------------------

# The patients not updated by an ADT since `?` (twice the same cutoff), except a survivor of a
# merge whose absorbed patient is more recent. `?` placeholders.
_STALE_PATIENTS = ("SELECT p.id FROM patients p WHERE p.updated_at < ? AND NOT EXISTS"
                   " (SELECT 1 FROM patients q WHERE q.merged_into = p.id AND q.updated_at >= ?)")
# Run in order, in one transaction, each with (cutoff, cutoff); the last one's row count is the
# number of patients deleted. References from what stays are cleared first (the foreign keys).
# Only the constant subquery above is interpolated.
PATIENT_PURGE_SQL = tuple(statement.format(stale=_STALE_PATIENTS) for statement in (
    "UPDATE patient_history SET other_patient_id = NULL WHERE other_patient_id IN ({stale})",
    "DELETE FROM patient_history WHERE patient_id IN ({stale})",
    "DELETE FROM patient_identifiers WHERE patient_id IN ({stale})",
    "UPDATE patients SET merged_into = NULL WHERE merged_into IN ({stale})",
    "DELETE FROM patients WHERE id IN ({stale})",
))


# -- audit --------------------------------------------------------------------------------------

# An audit row about an outbox row (five `?`: at, actor, action, result, detail; then the row
# id), its tenant and inbound message copied from the row, in the transition's transaction.
AUDIT_SQL = ("INSERT INTO audit (at, tenant_id, actor, action, outbox_id, inbound_id, result,"
             " detail) SELECT ?, tenant_id, ?, ?, id, inbound_id, ?, ? FROM outbox WHERE id = ?")
AUDIT_COLUMNS = "id, at, tenant_id, actor, action, outbox_id, inbound_id, result, detail"
# An audit row of a tenant that may concern no outbox row (a mailbox operation).
MAILBOX_AUDIT_SQL = ("INSERT INTO audit (at, tenant_id, actor, action, outbox_id, inbound_id,"
                     " result, detail) VALUES (?, ?, ?, ?, ?,"
                     " (SELECT inbound_id FROM outbox WHERE id = ?), ?, ?)")


def mailbox_audit_params(tenant_id: str, entry: AuditEntry, at: float, outbox_id: int | None
                         ) -> tuple[Any, ...]:
    return (at, tenant_id, entry.actor, AuditAction(entry.action).value, outbox_id, outbox_id,
            entry.result, entry.detail)


def audit_params(entry: AuditEntry, at: float, row_id: int) -> tuple[Any, ...]:
    return (at, entry.actor, AuditAction(entry.action).value, entry.result, entry.detail,
            row_id)


def audit_query(*, tenant_id: str | None, outbox_id: int | None, since: float | None,
                until: float | None, limit: int, after_id: int | None = None
                ) -> tuple[str, tuple[Any, ...]]:
    """The audit listing (`?` placeholders), oldest first (by time, then id); `after_id`: the
    rows that come after that row in this order (the next page; none when it does not exist)."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, op, value in (("tenant_id", "=", tenant_id), ("outbox_id", "=", outbox_id),
                              ("at", ">=", since), ("at", "<", until)):
        if value is not None:
            clauses.append(f"{column} {op} ?")
            params.append(value)
    if after_id is not None:
        clauses.append("(at, id) > (SELECT a.at, a.id FROM audit a WHERE a.id = ?)")
        params.append(after_id)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    # Only constant column names and operators are interpolated.
    sql = f"SELECT {AUDIT_COLUMNS} FROM audit{where} ORDER BY at, id LIMIT ?"  # noqa: S608
    return sql, (*params, limit)


def audit_from_row(row: Sequence[Any]) -> AuditRecord:
    return AuditRecord(int(row[0]), row[1], row[2], row[3], AuditAction(row[4]),
                       None if row[5] is None else int(row[5]),
                       None if row[6] is None else int(row[6]), row[7], row[8])


# -- receipts -----------------------------------------------------------------------------------

RECEIPT_KIND = "receipt"  # cipher associated data of returned mails
RECEIPT_SUMMARY_COLUMNS = ("id, tenant_id, received_at, kind, status, outcome, outbox_id,"
                           " detail, size")

# A receipt's mark on its outbox row (`?`: delivery status, read status, error code, time, id).
RECEIPT_UPDATE_SQL = ("UPDATE outbox SET delivery_status = COALESCE(?, delivery_status),"
                      " read_status = COALESCE(?, read_status),"
                      " error_code = COALESCE(?, error_code), receipt_at = ? WHERE id = ?")
OUTBOX_STATS_SQL = ("SELECT tenant_id, kind, state, count(*), min(created_at) FROM outbox"
                    " GROUP BY tenant_id, kind, state")
UNCONFIRMED_SQL = ("SELECT id FROM outbox WHERE tenant_id = ? AND kind = 'smtp'"
                   " AND state = 'sent' AND sent_at < ?"
                   " AND delivery_status IN ('awaiting-report', 'delayed', 'relayed',"
                   " 'not-offered')"
                   " AND purged_at IS NULL ORDER BY sent_at LIMIT ?")
FIND_BY_ENVID_SQL = "SELECT id FROM outbox WHERE tenant_id = ? AND envid = ? ORDER BY id"
FIND_BY_MESSAGE_ID_SQL = ("SELECT id FROM outbox WHERE tenant_id = ? AND message_id = ?"
                          " ORDER BY id")


def receipt_statements(update: ReceiptUpdate, now: float
                       ) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements (`?` placeholders) applying `update` to its outbox row: its receipt
    columns, the SENT → DELIVERED / FAILED settlement of a final DSN, and its audit entry."""
    statements: list[tuple[str, tuple[Any, ...]]] = [
        (RECEIPT_UPDATE_SQL, (update.delivery_status, update.read_status, update.error_code, now,
                              update.outbox_id))]
    if update.settle is not None:
        statements.append((SETTLE_SQL, (settle_state(update.settle), update.error_code,
                                        "receipt", None, None, now, update.outbox_id)))
    if update.audit is not None:
        statements.append((AUDIT_SQL, audit_params(update.audit, now, update.outbox_id)))
    return statements


def find_ids(fetch: Callable[[str, tuple[Any, ...]], Sequence[Sequence[Any]]], tenant_id: str,
             envid: str | None, message_ids: Sequence[str]) -> list[int]:
    """Outbox rows of `tenant_id` with this envelope id, else with one of these Message-IDs
    (the first that matches), through `fetch(sql, params)`."""
    if envid:
        rows = fetch(FIND_BY_ENVID_SQL, (tenant_id, envid))
        if rows:
            return [int(r[0]) for r in rows]
    for message_id in message_ids:
        rows = fetch(FIND_BY_MESSAGE_ID_SQL, (tenant_id, message_id))
        if rows:
            return [int(r[0]) for r in rows]
    return []


def receipts_query(*, tenant_id: str | None, status: ReceiptStatus | None, limit: int,
                   outbox_id: int | None = None) -> tuple[str, tuple[Any, ...]]:
    where, params = _where((("tenant_id =", tenant_id),
                            ("status =", ReceiptStatus(status).value if status is not None
                             else None),
                            ("outbox_id =", outbox_id)))
    # Only constant column names are interpolated.
    sql = (f"SELECT {RECEIPT_SUMMARY_COLUMNS} FROM receipts{where}"  # noqa: S608
           " ORDER BY id DESC LIMIT ?")
    return sql, (*params, limit)


def receipt_summary_from_row(row: Sequence[Any]) -> ReturnedMailSummary:
    return ReturnedMailSummary(int(row[0]), row[1], row[2], row[3], ReceiptStatus(row[4]),
                               row[5], None if row[6] is None else int(row[6]), row[7],
                               int(row[8]))


class Claim:
    """A named claim on work only one process may do at a time (the poller of a mailbox).
    `release()` gives it up; a process that dies releases it with its connection."""

    def __init__(self, release: Callable[[], None] | None = None) -> None:
        self._release = release

    async def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            await asyncio.to_thread(release)


def outbox_stat_from_row(row: Sequence[Any]) -> OutboxStat:
    return OutboxStat(row[0], OutboxKind(row[1]), OutboxState(row[2]), int(row[3]),
                      float(row[4]))


def _where(filters: Sequence[tuple[str, object | None]]) -> tuple[str, list[Any]]:
    """` WHERE a = ? AND ...` for the filters whose value is not None (`column op` given)."""
    clauses = [f"{column} ?" for column, value in filters if value is not None]
    params = [value for _, value in filters if value is not None]
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


def inbound_query(*, tenant_id: str | None, status: InboundStatus | None, since: float | None,
                  until: float | None, control_id: str | None, limit: int
                  ) -> tuple[str, tuple[Any, ...]]:
    """Inbound summaries, newest first (`?` placeholders)."""
    where, params = _where((("tenant_id =", tenant_id),
                            ("status =", status.value if status is not None else None),
                            ("received_at >=", since), ("received_at <", until),
                            ("control_id =", control_id)))
    # Only constant column names and operators are interpolated.
    sql = f"SELECT {SUMMARY_COLUMNS} FROM inbound{where} ORDER BY id DESC LIMIT ?"  # noqa: S608
    return sql, (*params, limit)


def outbox_query(*, tenant_id: str | None, state: OutboxState | None, inbound_id: int | None,
                 limit: int) -> tuple[str, tuple[Any, ...]]:
    """Outbox summaries, newest first (`?` placeholders)."""
    where, params = _where((("tenant_id =", tenant_id),
                            ("state =", OutboxState(state).value if state is not None else None),
                            ("inbound_id =", inbound_id)))
    sql = (f"SELECT {OUTBOX_SUMMARY_COLUMNS} FROM outbox{where}"  # noqa: S608
           " ORDER BY id DESC LIMIT ?")
    return sql, (*params, limit)
