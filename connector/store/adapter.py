"""What both store adapters do alike above their SQL: the outbox lease life cycle, the audit
trail, the operators' listings and the group-commit counts.

An adapter supplies how a statement runs under a delivery lease (`_fenced`: it raises
`LeaseLost` when the lease is no longer the caller's), without one (`_unfenced`: False when the
row was not in a state the statement changes), how a query reads (`_query`), and its group
commits so far (`commit_stats`). Statements are written with `?` placeholders
(`connector.store._shared`); the PostgreSQL adapter turns them into `%s`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from connector.store._shared import (
    CANCEL_SQL,
    DOCUMENT_COLUMNS,
    LATEST_IN_SET_SQL,
    MARK_DEAD_SQL,
    MARK_FAILED_SQL,
    MARK_SENT_SQL,
    OUTBOX_STATS_SQL,
    PATIENT_PURGE_SQL,
    RENEW_SQL,
    RETRY_NOW_SQL,
    RETRY_SQL,
    SETTLE_SQL,
    SUMMARY_COLUMNS,
    UNCONFIRMED_SQL,
    PurgeStatement,
    audit_from_row,
    audit_query,
    check_lease,
    inbound_query,
    outbox_query,
    outbox_stat_from_row,
    outbox_summary_from_row,
    receipt_summary_from_row,
    receipts_query,
    sealed_error,
    sent_requests_from_rows,
    sent_requests_query,
    settle_state,
    summary_from_row,
)
from connector.store.cipher import PayloadCipher
from connector.store.model import (
    AuditEntry,
    AuditRecord,
    CommitStats,
    DocumentStatus,
    DocumentVersion,
    InboundStatus,
    InboundSummary,
    OutboxItem,
    OutboxKind,
    OutboxStat,
    OutboxState,
    OutboxSummary,
    PatientHistoryEntry,
    PurgeCounts,
    ReceiptStatus,
    ReturnedMailSummary,
    SentRequest,
)
from connector.store.patients import HISTORY_SQL, history_from_row

# Only constant column names are interpolated.
_INBOUND_SUMMARY_SQL = f"SELECT {SUMMARY_COLUMNS} FROM inbound WHERE id = ?"  # noqa: S608
_DOCUMENTS_SQL = (f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE tenant_id = ?"  # noqa: S608
                  " ORDER BY updated_at, document_id")


def _document_version(row: Sequence[Any]) -> DocumentVersion:
    return DocumentVersion(row[0], row[1], row[2], None if row[3] is None else int(row[3]),
                           DocumentStatus(row[4]), row[5], int(row[6]))


class StoreAdapter(ABC):
    """The port methods whose rules do not depend on the database."""

    _cipher: PayloadCipher

    @abstractmethod
    async def _fenced(self, sql: str, params: tuple[Any, ...], row_id: int, token: str,
                      audit: AuditEntry | None = None, then: Sequence[OutboxItem] = ()
                      ) -> None:
        """Run `sql` with `(*params, row_id, token)` in one transaction with `audit` and the
        outbox rows `then` adds, if the row is still leased under `token`; else `LeaseLost`."""

    @abstractmethod
    async def _unfenced(self, sql: str, params: tuple[Any, ...], row_id: int,
                        audit: AuditEntry | None) -> bool:
        """Run `sql` with `params`, and `audit` if it changed the row: whether it did."""

    @abstractmethod
    async def _query(self, sql: str, params: Sequence[Any] = ()
                     ) -> Sequence[Sequence[Any]]:
        """The rows of a read."""

    @abstractmethod
    def commit_stats(self) -> CommitStats:
        """The group commits made durable since `open()`, and their times."""

    @abstractmethod
    async def _purge_batch(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run one statement of `purge_statements` in a transaction of its own: rows changed."""

    @abstractmethod
    async def _purge_statements(self, statements: Sequence[str], params: tuple[Any, ...]
                                ) -> int:
        """Run `statements` (`?` placeholders) in one transaction, each with `params`: the
        last one's row count."""

    async def purge_patient_contexts(self, *, before: float) -> int:
        """Delete the patient contexts (identity, identifiers, history) no ADT updated since
        `before`; how many patients."""
        return await self._purge_statements(PATIENT_PURGE_SQL, (before, before))

    async def _purge_payload_files(self) -> int:
        """After the rows: delete the files no row points at any more (the SQLite payload
        log's segments); how many."""
        return 0

    _PURGE_SQL: tuple[PurgeStatement, ...]  # the adapter's `purge_statements`

    @property
    def batches(self) -> int:
        """Group commits made durable; with `jobs`, shows how well they are shared."""
        return self.commit_stats().commits

    @property
    def jobs(self) -> int:
        return self.commit_stats().jobs

    # -- the outbox lease life cycle ----------------------------------------------------------

    async def renew(self, row_id: int, token: str, lease_seconds: float, *,
                    now: float | None = None) -> float:
        """Extend the lease; return the new expiry."""
        check_lease([OutboxKind.SMTP], 1, lease_seconds)
        at = time.time() if now is None else now
        await self._fenced(RENEW_SQL, (at + lease_seconds, at), row_id, token)
        return at + lease_seconds

    async def mark_sent(self, row_id: int, token: str, smtp_code: str | None = None, *,
                        audit: AuditEntry | None = None,
                        delivery_status: str | None = None) -> None:
        at = time.time()
        await self._fenced(MARK_SENT_SQL, (at, smtp_code, delivery_status, at), row_id, token,
                           audit)

    async def mark_failed(self, row_id: int, token: str, code: str | None = None,
                          detail: str | None = None, *, error_class: str | None = None,
                          audit: AuditEntry | None = None, then: Sequence[OutboxItem] = ()
                          ) -> None:
        errors = sealed_error(self._cipher, code, error_class, detail)
        await self._fenced(MARK_FAILED_SQL, (*errors, time.time()), row_id, token, audit, then)

    async def mark_dead(self, row_id: int, token: str, code: str | None = None,
                        detail: str | None = None, *, error_class: str | None = None,
                        audit: AuditEntry | None = None, then: Sequence[OutboxItem] = ()
                        ) -> None:
        errors = sealed_error(self._cipher, code, error_class, detail)
        await self._fenced(MARK_DEAD_SQL, (*errors, time.time()), row_id, token, audit, then)

    async def schedule_retry(self, row_id: int, token: str, available_at: float,
                             code: str | None = None, detail: str | None = None, *,
                             error_class: str | None = None,
                             audit: AuditEntry | None = None) -> None:
        errors = sealed_error(self._cipher, code, error_class, detail)
        await self._fenced(RETRY_SQL, (available_at, *errors, time.time()), row_id, token, audit)

    async def retry_now(self, row_id: int, *, now: float | None = None,
                        audit: AuditEntry | None = None) -> bool:
        at = time.time() if now is None else now
        return await self._unfenced(RETRY_NOW_SQL, (at, at, at, row_id), row_id, audit)

    async def cancel(self, row_id: int, *, audit: AuditEntry | None = None) -> bool:
        return await self._unfenced(CANCEL_SQL, (time.time(), row_id), row_id, audit)

    async def settle(self, row_id: int, *, delivered: bool, code: str | None = None,
                     detail: str | None = None, error_class: str | None = None,
                     audit: AuditEntry | None = None) -> bool:
        errors = sealed_error(self._cipher, code, error_class, detail)
        return await self._unfenced(SETTLE_SQL, (settle_state(delivered), *errors, time.time(),
                                                 row_id), row_id, audit)

    # -- retention ----------------------------------------------------------------------------

    async def purge_payloads(self, *, before: float, now: float | None = None,
                             batch: int = 500) -> PurgeCounts:
        """Drop the payloads of what finished before `before` (see `purge_statements`), in
        transactions of `batch` rows each, so that intake never waits long behind one; then
        the payload files nothing points at."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        at = time.time() if now is None else now
        counts: dict[str, int] = {}
        for statement in self._PURGE_SQL:
            total = 0
            while True:
                changed = await self._purge_batch(statement.sql,
                                                  statement.params(at, before, batch))
                total += changed
                if changed < batch:
                    break
            counts[statement.part] = total
        return PurgeCounts(**counts, segments=await self._purge_payload_files())

    # -- listings -----------------------------------------------------------------------------

    async def list_inbound(self, *, tenant_id: str | None = None,
                           status: InboundStatus | None = None, limit: int = 100,
                           since: float | None = None, until: float | None = None,
                           control_id: str | None = None) -> list[InboundSummary]:
        sql, params = inbound_query(tenant_id=tenant_id, status=status, since=since,
                                    until=until, control_id=control_id, limit=limit)
        return [summary_from_row(row) for row in await self._query(sql, params)]

    async def get_inbound_summary(self, inbound_id: int) -> InboundSummary | None:
        rows = await self._query(_INBOUND_SUMMARY_SQL, (inbound_id,))
        return summary_from_row(rows[0]) if rows else None

    async def sent_requests(self, tenant_id: str, document_ids: Sequence[str]
                            ) -> dict[str, SentRequest]:
        """The request that carried each of `document_ids` (its version row's inbound), for
        those whose request kept its mail key and queued mails."""
        if not document_ids:
            return {}
        rows = await self._query(*sent_requests_query(tenant_id, document_ids))
        return sent_requests_from_rows(self._cipher, rows)

    async def get_documents(self, tenant_id: str) -> list[DocumentVersion]:
        return [_document_version(r) for r in await self._query(_DOCUMENTS_SQL, (tenant_id,))]

    async def latest_version(self, tenant_id: str, set_id: str) -> DocumentVersion | None:
        rows = await self._query(LATEST_IN_SET_SQL, (tenant_id, set_id))
        return _document_version(rows[0]) if rows else None

    async def list_audit(self, *, tenant_id: str | None = None, outbox_id: int | None = None,
                         since: float | None = None, until: float | None = None,
                         limit: int = 10_000, after_id: int | None = None
                         ) -> list[AuditRecord]:
        sql, params = audit_query(tenant_id=tenant_id, outbox_id=outbox_id, since=since,
                                  until=until, limit=limit, after_id=after_id)
        return [audit_from_row(row) for row in await self._query(sql, params)]

    async def outbox_stats(self) -> list[OutboxStat]:
        return [outbox_stat_from_row(row) for row in await self._query(OUTBOX_STATS_SQL)]

    async def list_unconfirmed(self, tenant_id: str, *, sent_before: float, limit: int = 100
                               ) -> list[int]:
        rows = await self._query(UNCONFIRMED_SQL, (tenant_id, sent_before, limit))
        return [int(r[0]) for r in rows]

    async def list_returned_mails(self, *, tenant_id: str | None = None,
                                  status: ReceiptStatus | None = None, limit: int = 100,
                                  outbox_id: int | None = None) -> list[ReturnedMailSummary]:
        sql, params = receipts_query(tenant_id=tenant_id, status=status, limit=limit,
                                     outbox_id=outbox_id)
        return [receipt_summary_from_row(row) for row in await self._query(sql, params)]

    async def list_outbox(self, *, tenant_id: str | None = None,
                          state: OutboxState | None = None, limit: int = 100,
                          inbound_id: int | None = None) -> list[OutboxSummary]:
        sql, params = outbox_query(tenant_id=tenant_id, state=state, inbound_id=inbound_id,
                                   limit=limit)
        return [outbox_summary_from_row(row) for row in await self._query(sql, params)]

    async def get_patient_history(self, tenant_id: str, patient_id: int
                                  ) -> list[PatientHistoryEntry]:
        return [history_from_row(row)
                for row in await self._query(HISTORY_SQL, (tenant_id, patient_id))]
