"""The store port: every state change is a committed row before anything is acknowledged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from connector.store.model import (
    COMMIT_BUCKETS,
    FINAL_DELIVERY_STATUSES,
    AuditAction,
    AuditEntry,
    AuditRecord,
    CommitStats,
    DiskUsage,
    DocumentAction,
    DocumentChange,
    DocumentStatus,
    DocumentVersion,
    EventKind,
    IdentifierKind,
    InboundDetail,
    InboundMessage,
    InboundReceipt,
    InboundStatus,
    InboundSummary,
    OutboxDetail,
    OutboxItem,
    OutboxKind,
    OutboxLease,
    OutboxStat,
    OutboxState,
    OutboxSummary,
    PatientAction,
    PatientChange,
    PatientHistoryEntry,
    PatientKey,
    PurgeCounts,
    ReceiptStatus,
    ReceiptUpdate,
    RecordedMail,
    ReturnedMail,
    ReturnedMailSummary,
    SentRequest,
    StoredPatient,
    UnknownOriginalPolicy,
    VersionCheck,
)

__all__ = [
    "COMMIT_BUCKETS",
    "FINAL_DELIVERY_STATUSES",
    "AuditAction",
    "AuditEntry",
    "AuditRecord",
    "CommitStats",
    "DiskUsage",
    "DocumentAction",
    "DocumentChange",
    "DocumentStatus",
    "DocumentVersion",
    "EventKind",
    "IdentifierKind",
    "InboundDetail",
    "InboundMessage",
    "InboundReceipt",
    "InboundStatus",
    "InboundSummary",
    "IntakeStore",
    "OutboxDetail",
    "OutboxItem",
    "OutboxKind",
    "OutboxLease",
    "OutboxStat",
    "OutboxState",
    "OutboxStore",
    "OutboxSummary",
    "PatientAction",
    "PatientChange",
    "PatientHistoryEntry",
    "PatientKey",
    "PatientStore",
    "PurgeCounts",
    "ReceiptStatus",
    "ReceiptUpdate",
    "RecordedMail",
    "RetentionStore",
    "ReturnedMail",
    "ReturnedMailSummary",
    "SentRequest",
    "StoredPatient",
    "UnknownOriginalPolicy",
    "VersionCheck",
]


class IntakeStore(Protocol):
    """What intake and operators need from persistence."""

    def open(self, *, read_only: bool = False) -> None:
        """Connect (and migrate) before use; `read_only` for operators' commands."""
        ...

    async def record_inbound(self, message: InboundMessage) -> InboundReceipt:
        """Store `message` durably (on disk when this returns) unless it is a retransmission
        of a message received within the window, in which case return that one's ACK.
        Raises StoreUnavailable when the store cannot take it."""
        ...

    async def list_inbound(
        self, *, tenant_id: str | None = None, status: InboundStatus | None = None,
        limit: int = 100, since: float | None = None, until: float | None = None,
        control_id: str | None = None,
    ) -> list[InboundSummary]:
        """Newest first; `since` <= received_at < `until`."""
        ...

    async def get_inbound(self, inbound_id: int) -> InboundDetail | None: ...

    async def get_inbound_summary(self, inbound_id: int) -> InboundSummary | None:
        """The metadata only: no payload read, none decrypted (what receipts and ZAMs need)."""
        ...

    async def get_documents(self, tenant_id: str) -> list[DocumentVersion]: ...

    async def latest_version(self, tenant_id: str, set_id: str) -> DocumentVersion | None:
        """The document set's current version (active, the highest version number), if the
        store knows one."""
        ...

    async def sent_requests(self, tenant_id: str, document_ids: Sequence[str]
                            ) -> dict[str, SentRequest]:
        """The request that carried each of `document_ids` (those it finds, with their mail
        key and their mails' Message-IDs): the mails of a replacement or a deletion refer to
        them."""
        ...

    async def close(self) -> None: ...


class OutboxStore(Protocol):
    """The durable outbox: one row per e-mail (or HL7 message) to send, leased by workers.

    Every call returns once its change is committed. A lease carries a token; every transition
    of a leased row presents it and raises LeaseLost (changing nothing) when the row is no longer
    LEASED with that token: re-leased after its lease expired, cancelled, or already moved on.
    A token stays valid past its expiry until someone else leases the row. A transition given
    an `audit` entry writes it in the same transaction, only when the transition happened."""

    async def enqueue(self, items: Sequence[OutboxItem], *, now: float | None = None
                      ) -> list[int]:
        """Store `items` as READY rows, all or none; return their ids in order."""
        ...

    async def lease(self, *, tenant_id: str, kinds: Sequence[OutboxKind], limit: int,
                    lease_seconds: float, now: float | None = None) -> list[OutboxLease]:
        """Lease at most `limit` rows of `tenant_id` (the worker asks tenant by tenant, so
        one backlog cannot starve another), oldest `available_at` first: READY rows that are
        due, and LEASED rows whose lease expired. Each gets a new token, and attempt + 1."""
        ...

    async def renew(self, row_id: int, token: str, lease_seconds: float, *,
                    now: float | None = None) -> float:
        """Extend a lease to `now + lease_seconds`; return that expiry."""
        ...

    async def mark_sent(self, row_id: int, token: str, smtp_code: str | None = None, *,
                        audit: AuditEntry | None = None,
                        delivery_status: str | None = None) -> None:
        """LEASED → SENT: the operator (or the hospital) accepted it. `delivery_status`:
        `awaiting-report` when a DSN was requested, `not-requested` otherwise."""
        ...

    async def mark_failed(self, row_id: int, token: str, code: str | None = None,
                          detail: str | None = None, *, error_class: str | None = None,
                          audit: AuditEntry | None = None, then: Sequence[OutboxItem] = ()
                          ) -> None:
        """LEASED → FAILED: permanently refused. `detail` (the server's text) is sealed.
        `then`: rows to enqueue in the same transaction (the negative ZAM^Z02)."""
        ...

    async def schedule_retry(self, row_id: int, token: str, available_at: float,
                             code: str | None = None, detail: str | None = None, *,
                             error_class: str | None = None,
                             audit: AuditEntry | None = None) -> None:
        """LEASED → READY again, leasable from `available_at` (the caller's backoff)."""
        ...

    async def mark_dead(self, row_id: int, token: str, code: str | None = None,
                        detail: str | None = None, *, error_class: str | None = None,
                        audit: AuditEntry | None = None, then: Sequence[OutboxItem] = ()
                        ) -> None:
        """LEASED → DEAD: the retry budget is spent. `then` as for `mark_failed`."""
        ...

    async def settle(self, row_id: int, *, delivered: bool, code: str | None = None,
                     detail: str | None = None, error_class: str | None = None,
                     audit: AuditEntry | None = None) -> bool:
        """SENT → DELIVERED or FAILED, from a receipt; False when the row is not SENT."""
        ...

    async def retry_now(self, row_id: int, *, now: float | None = None,
                        audit: AuditEntry | None = None) -> bool:
        """Operator: FAILED, DEAD or READY → READY, due now; False otherwise. Attempts are
        kept; the delivery status and the retry budget start over (the budget counts from
        now: `OutboxLease.created_at`)."""
        ...

    async def cancel(self, row_id: int, *, audit: AuditEntry | None = None) -> bool:
        """Operator: READY, FAILED or DEAD → CANCELLED; False otherwise: never once SENT, and
        not while LEASED (a worker may be sending it: whether it went is not known until the
        attempt ends, as SENT or back to READY)."""
        ...

    async def list_audit(self, *, tenant_id: str | None = None, outbox_id: int | None = None,
                         since: float | None = None, until: float | None = None,
                         limit: int = 10_000, after_id: int | None = None
                         ) -> list[AuditRecord]:
        """Audit rows, oldest first (by time, then id), `since` <= at < `until`; `after_id`:
        those after that row (the next page of a listing that ended with it)."""
        ...

    async def outbox_stats(self) -> list[OutboxStat]:
        """Rows per tenant, kind and state, with the oldest one's creation time (metrics)."""
        ...

    async def disk_usage(self) -> DiskUsage:
        """Bytes the store occupies, and free on its file system when it is local (metrics)."""
        ...

    async def list_unconfirmed(self, tenant_id: str, *, sent_before: float, limit: int = 100
                               ) -> list[int]:
        """SMTP rows sent before `sent_before` whose requested DSN has not said delivered or
        failed (`awaiting-report`, `delayed`, `relayed`), oldest first."""
        ...

    async def find_outbox_ids(self, tenant_id: str, *, envid: str | None = None,
                              message_ids: Sequence[str] = ()) -> list[int]:
        """Rows of `tenant_id` sent with this DSN envelope id, else with the first of these
        Message-IDs that matches."""
        ...

    async def record_returned_mail(self, mail: ReturnedMail) -> RecordedMail:
        """Store a mail fetched from the application mailbox with its updates and ZAMs, in one
        transaction, once per (tenant, key)."""
        ...

    async def record_mailbox_audit(self, tenant_id: str, entry: AuditEntry, *,
                                   outbox_id: int | None = None) -> None:
        """An audit row for an operation on the tenant's application mailbox, about
        `outbox_id`'s mail when it concerns one (its inbound message is copied from it)."""
        ...

    async def list_returned_mails(self, *, tenant_id: str | None = None,
                                  status: ReceiptStatus | None = None, limit: int = 100,
                                  outbox_id: int | None = None
                                  ) -> list[ReturnedMailSummary]: ...

    async def list_outbox(self, *, tenant_id: str | None = None,
                          state: OutboxState | None = None, limit: int = 100,
                          inbound_id: int | None = None) -> list[OutboxSummary]: ...

    async def get_outbox(self, row_id: int) -> OutboxDetail | None: ...


class PatientStore(Protocol):
    """The patient context learnt from ADT (written by `record_inbound`, `patient_update`)."""

    async def get_patient(self, tenant_id: str, *, ipp: str | None = None,
                          authority: str | None = None, ins: str | None = None
                          ) -> StoredPatient | None:
        """The patient of `tenant_id` with this IPP (under `authority` when given: an IPP found
        under two authorities is ambiguous, ValueError) or this INS, following merges and
        identifier changes; None when unknown."""
        ...

    async def get_patient_history(self, tenant_id: str, patient_id: int
                                  ) -> list[PatientHistoryEntry]:
        """What each message did to the patient, oldest first."""
        ...


class RetentionStore(Protocol):
    """The retention purge: payloads do not outlive what they were kept for."""

    async def purge_payloads(self, *, before: float, now: float | None = None,
                             batch: int = 500) -> PurgeCounts:
        """Drop the payloads (raw messages, validation reports, mails, servers' error texts,
        returned mails) of the rows older than `before` that nothing still needs: an outbox row
        once neither waiting nor leased, a message once none of its outbox rows is. The rows
        stay for the audit and the listings, with `purged_at` set; their details then read
        b"". Runs in transactions of `batch` rows."""
        ...

    async def purge_patient_contexts(self, *, before: float) -> int:
        """Delete the patient contexts (identity, identifiers, history) no ADT updated since
        `before`, in one transaction; how many patients."""
        ...
