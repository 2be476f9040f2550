"""Values the store records and returns. They hold metadata in clear but no patient data: the
raw message, payloads and patient contexts are the patient-bearing fields, and the adapter seals
them (identifiers it finds patients by are kept as keyed digests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class InboundStatus(StrEnum):
    ACCEPTED = "accepted"  # answered AA/CA: the connector took responsibility
    REJECTED = "rejected"  # answered AE/CE: kept for operators, never processed


class EventKind(StrEnum):
    CONTROL_ID_REUSED = "control_id_reused"  # same sender + MSH-10, different content
    RETRANSMISSION = "retransmission"  # same sender + MSH-10 + content: answered again
    UNKNOWN_ORIGINAL = "unknown_original"  # replace/delete of a document never seen, accepted
    DOCUMENT_RESENT = "document_resent"  # a new-document request for a known document id
    VERSION_CONFLICT = "version_conflict"  # replace/delete refused: not the latest version


class DocumentAction(StrEnum):
    NEW = "new"
    REPLACE = "replace"
    DELETE = "delete"


class DocumentStatus(StrEnum):
    ACTIVE = "active"
    REPLACED = "replaced"
    DELETED = "deleted"


class UnknownOriginalPolicy(StrEnum):
    """What to do with a replace/delete whose original the connector never saw."""

    ACCEPT = "accept"  # with an `unknown_original` event
    REFUSE = "refuse"  # AE with application error 900


@dataclass(frozen=True, slots=True)
class DocumentChange:
    """The effect of a document request on the version table, checked atomically on commit.

    `target_id` is the document the request acts on: the parent (relatedDocument) for a replace,
    the document itself for a delete, None for a new document.
    """

    action: DocumentAction
    document_id: str
    set_id: str | None = None
    version: int | None = None
    target_id: str | None = None


@dataclass(frozen=True, slots=True)
class VersionCheck:
    """How intake wants version conflicts handled: the policy, and the AE to store and send
    instead of the prepared ACK when the check fails (built beforehand: the store does not build
    HL7)."""

    changes: tuple[DocumentChange, ...]
    conflict_ack: bytes = field(repr=False)
    conflict_ack_code: str = "AE"
    unknown_original: UnknownOriginalPolicy = UnknownOriginalPolicy.ACCEPT
    # A new document must open its set (`store.versions`): legacy `results.corrected: replace`.
    exclusive_sets: bool = False


class IdentifierKind(StrEnum):
    IPP = "ipp"  # PID-3 with CX-5 = PI, under its assigning authority
    INS = "ins"  # PID-3 with an INS OID (the authority is the OID)


@dataclass(frozen=True, slots=True)
class PatientKey:
    """An identifier the store finds a patient by. The value is patient data: the store keeps
    only a keyed digest of it (`PayloadCipher.index`); the authority stays in clear."""

    kind: IdentifierKind
    authority: str
    value: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class PatientChange:
    """What one accepted ADT message does to its patient, applied atomically with its inbound row.

    The store finds the patient by `key` (creating it when unknown), merges into it the patients
    found by `absorbed` (A40: MRG-1; A47: the identifier being replaced; when `key` is unknown the
    first of them is the patient and takes `key`), and replaces its context by `apply(current)`:
    `current` is the stored context (JSON, opened; None for a new patient), the result is sealed.
    Every identifier given keeps finding the patient; `ins` becomes its only INS (None: none).
    """

    event: str  # the trigger event (A01...), recorded in the history
    key: PatientKey
    apply: Callable[[bytes | None], bytes] = field(repr=False, compare=False)
    ins: PatientKey | None = None
    absorbed: tuple[PatientKey, ...] = ()
    identifier_change: bool = False  # A47: the history says identifier_changed, not updated
    sections: tuple[str, ...] = ()  # what the message sets (no values), for the history

    @property
    def lookup_keys(self) -> tuple[PatientKey, ...]:
        """The identifiers the store reads under: `key`, then `absorbed`."""
        return (self.key, *self.absorbed)


class PatientAction(StrEnum):
    """A line of a patient's history: what a message did to it."""

    CREATED = "created"
    UPDATED = "updated"
    IDENTIFIER_CHANGED = "identifier_changed"  # A47 (or A40 onto an unknown IPP): new key
    MERGED = "merged"  # it absorbed `other_patient_id`
    ABSORBED = "absorbed"  # merged into `other_patient_id`: its identifiers find that one now


@dataclass(frozen=True, slots=True)
class StoredPatient:
    """A patient as stored: its context JSON (opened), and the last message applied to it."""

    id: int
    tenant_id: str
    context: bytes = field(repr=False)
    created_at: float
    updated_at: float
    inbound_id: int


@dataclass(frozen=True, slots=True)
class PatientHistoryEntry:
    id: int
    patient_id: int
    inbound_id: int
    event: str
    action: PatientAction
    other_patient_id: int | None
    detail: str | None  # the sections the message set, never values
    at: float


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One received HL7 message and the answer decided for it, to be stored atomically."""

    tenant_id: str
    listener: str
    peer: str
    received_at: float  # epoch seconds
    raw: bytes = field(repr=False)
    digest: bytes  # SHA-256 of raw: the retransmission key with sender and control id
    sending_application: str | None
    sending_facility: str | None
    message_type: str | None
    control_id: str | None
    version: str | None
    status: InboundStatus
    ack_code: str
    ack: bytes = field(repr=False)  # the encoded ACK, sent again on a retransmission
    processing_id: str | None = None  # MSH-11 (P, T, D), which the ZAMs answering it repeat
    # MSH-5/6 as sent: the application the ZAMs answering it come from (their MSH-3/4)
    receiving_application: str | None = None
    receiving_facility: str | None = None
    # What its mails' Message-IDs hash (`pipeline.outgoing`): sealed at rest; read back by a
    # later replacement or deletion of its documents (`IntakeStore.sent_requests`).
    mail_key: str | None = field(default=None, repr=False)
    error_code: str | None = None  # ERR-3
    error_detail: str | None = None  # ERR-8 text: rules and fields, never patient data
    report: bytes | None = field(default=None, repr=False)  # validation report (sealed at rest)
    versions: VersionCheck | None = None  # document version changes, for accepted requests
    # Rows to enqueue with it (their `inbound_id` is set by the store), in the same transaction,
    # and only when the message is finally accepted: not for a retransmission, not when the
    # version check turns it into a rejection.
    outbox: tuple[OutboxItem, ...] = ()
    # What an ADT does to its patient's context: applied under the same rule as `outbox`.
    patient_update: PatientChange | None = None


@dataclass(frozen=True, slots=True)
class SentRequest:
    """A stored request whose mails a later one follows up: the key its Message-IDs hash
    (`InboundMessage.mail_key`) and the Message-IDs of its mails, as queued."""

    mail_key: str = field(repr=False)
    message_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class InboundReceipt:
    """What the store did: the row, and the ACK to send (the first one, on a retransmission)."""

    inbound_id: int
    ack: bytes = field(repr=False)
    retransmission_of: int | None = None
    control_id_reused: bool = False
    version_conflict: str | None = None  # why the version check refused it (ack = conflict AE)
    unknown_originals: tuple[str, ...] = ()  # targets accepted under UnknownOriginalPolicy.ACCEPT
    queued: int = 0  # outbox rows enqueued with the message


@dataclass(frozen=True, slots=True)
class InboundSummary:
    """A row for listings: no payload."""

    id: int
    tenant_id: str
    listener: str
    peer: str
    received_at: float
    sending_application: str | None
    sending_facility: str | None
    message_type: str | None
    control_id: str | None
    version: str | None
    status: InboundStatus
    ack_code: str
    error_code: str | None
    error_detail: str | None
    retransmissions: int
    control_id_reused: bool
    size: int
    processing_id: str | None = None  # MSH-11; None for rows stored before migration 7
    receiving_application: str | None = None  # MSH-5; None for rows before migration 9
    receiving_facility: str | None = None  # MSH-6; None for rows before migration 9


@dataclass(frozen=True, slots=True)
class InboundDetail:
    summary: InboundSummary
    raw: bytes = field(repr=False)  # b"" once purged
    ack: bytes = field(repr=False)
    report: bytes | None = field(default=None, repr=False)
    purged_at: float | None = None  # when the retention purge dropped the message and report


@dataclass(frozen=True, slots=True)
class DocumentVersion:
    tenant_id: str
    document_id: str
    set_id: str | None
    version: int | None
    status: DocumentStatus
    replaced_by: str | None
    inbound_id: int


# -- outbox ---------------------------------------------------------------------------------------


class OutboxKind(StrEnum):
    SMTP = "smtp"  # an e-mail to send to the MSSanté operator
    HL7 = "hl7"  # an HL7 message to return to the hospital


class OutboxState(StrEnum):
    """`ready → leased → sent → (delivered | failed)`; `leased → ready` again on a retry,
    `leased → dead` once the retry budget is spent, `leased → failed` on a permanent refusal;
    operators may cancel (not once sent) or retry now (failed, dead, ready)."""

    READY = "ready"
    LEASED = "leased"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One row to enqueue. `payload` (the e-mail bytes, or the HL7 message) is the only
    patient-bearing field and is sealed at rest; `recipient_domain` is the recipient's domain
    only, never the address (patient addresses contain the INS)."""

    tenant_id: str
    kind: OutboxKind
    payload: bytes = field(repr=False)
    inbound_id: int | None = None
    message_id: str | None = None
    envid: str | None = None
    recipient_domain: str | None = None
    not_before: float | None = None  # epoch seconds; None: now


@dataclass(frozen=True, slots=True)
class OutboxLease:
    """A leased row: the worker owns it while `token` does (until `expires_at`, or longer if no
    one leased it again). Every transition must present the token."""

    id: int
    token: str
    expires_at: float
    attempt: int  # 1 for the first lease, +1 at every lease (expired leases included)
    tenant_id: str
    kind: OutboxKind
    inbound_id: int | None
    message_id: str | None
    envid: str | None
    recipient_domain: str | None
    payload: bytes = field(repr=False)
    # When it was enqueued, or retried by an operator since: the retry budget counts from here
    created_at: float = 0.0
    # Why the payload could not be read back (PayloadUnreadable; `payload` is then empty): the
    # worker settles such a row dead, with its follow-up, instead of failing the whole batch.
    unreadable: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxSummary:
    """A row for listings: no payload, no error detail (servers' texts may quote addresses)."""

    id: int
    tenant_id: str
    kind: OutboxKind
    state: OutboxState
    inbound_id: int | None
    message_id: str | None
    envid: str | None
    recipient_domain: str | None
    attempts: int
    created_at: float
    updated_at: float
    available_at: float
    lease_expires_at: float | None
    sent_at: float | None
    smtp_code: str | None
    error_code: str | None
    error_class: str | None
    size: int
    delivery_status: str | None = None  # the last DSN action for its recipient (delivered...)
    read_status: str | None = None  # the last MDN disposition (processed, error...)
    receipt_at: float | None = None


@dataclass(frozen=True, slots=True)
class OutboxStat:
    """How many rows a tenant has in one state of one kind, and the oldest one's age."""

    tenant_id: str
    kind: OutboxKind
    state: OutboxState
    count: int
    oldest_created_at: float


@dataclass(frozen=True, slots=True)
class OutboxDetail:
    summary: OutboxSummary
    payload: bytes = field(repr=False)  # b"" once purged
    error_detail: str | None = field(default=None, repr=False)  # sealed at rest
    purged_at: float | None = None  # when the retention purge dropped the payload and error


@dataclass(frozen=True, slots=True)
class PurgeCounts:
    """What one retention purge did: rows whose payloads it dropped, payload-log segments it
    deleted (SQLite)."""

    inbound: int = 0
    outbox: int = 0
    receipts: int = 0
    segments: int = 0
    patients: int = 0  # patient contexts deleted (`purge_patient_contexts`)

    @property
    def total(self) -> int:
        return self.inbound + self.outbox + self.receipts + self.segments + self.patients


# -- audit ----------------------------------------------------------------------------------------


class AuditAction(StrEnum):
    """What happened to an outbox row or in the application mailbox, as the audit trail tells
    it (never its content)."""

    SUBMITTED = "submitted"  # the operator (or the dry-run Maildir) accepted it
    DEFERRED = "deferred"  # a temporary failure: retry scheduled
    REFUSED = "refused"  # a permanent failure
    EXPIRED = "expired"  # the retry budget is spent: dead
    DELIVERED = "delivered"  # a receipt said delivered
    UNDELIVERED = "undelivered"  # a receipt said failed
    UNCONFIRMED = "unconfirmed"  # no final delivery report came in time
    REPORTED = "reported"  # a receipt that settles nothing (delayed, relayed, read, deleted...)
    RETRIED = "retried"  # an operator asked for a retry now
    CANCELLED = "cancelled"  # an operator cancelled it
    # Operations on the application mailbox over IMAP (ECO.4.1.1), about the row the mail
    # concerns when it matched one:
    FETCHED = "fetched"  # a mail read from the watched folder (UID FETCH BODY.PEEK[])
    FILED = "filed"  # then moved to the processed or unmatched folder


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Who did what to a row, and what the server answered. The store adds when, the tenant,
    the row and its inbound message. `detail` is the server's reply without addresses."""

    actor: str
    action: AuditAction
    result: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: float
    tenant_id: str
    actor: str
    action: AuditAction
    outbox_id: int | None
    inbound_id: int | None
    result: str | None
    detail: str | None


# -- receipts -------------------------------------------------------------------------------------


class ReceiptStatus(StrEnum):
    MATCHED = "matched"  # it was about a mail we sent: applied to that outbox row
    UNMATCHED = "unmatched"  # not a receipt, unreadable, or about no mail of ours: kept aside


@dataclass(frozen=True, slots=True)
class ReceiptUpdate:
    """What one receipt does to one outbox row (the mail to one recipient)."""

    outbox_id: int
    delivery_status: str | None = None  # DSN Action
    read_status: str | None = None  # MDN disposition type, "error" when it reports one
    settle: bool | None = None  # a final DSN: True delivered, False failed; None: no change
    error_code: str | None = None  # SMTPERRORCODE or application error code (negative only)
    audit: AuditEntry | None = None


@dataclass(frozen=True, slots=True)
class ReturnedMail:
    """A mail fetched from the application mailbox, and what it does: stored (sealed) with its
    updates and the ZAMs it triggers (`zams`, kind HL7) in one transaction, once per
    (`tenant_id`, `key`): recording the same mail again changes nothing."""

    tenant_id: str
    key: str  # the mail's Message-ID, else a digest of its bytes
    received_at: float
    raw: bytes = field(repr=False)
    status: ReceiptStatus
    kind: str | None = None
    outcome: str | None = None
    outbox_id: int | None = None
    detail: str | None = None  # why unmatched: no patient data
    updates: tuple[ReceiptUpdate, ...] = ()
    zams: tuple[OutboxItem, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordedMail:
    id: int
    duplicate: bool  # recorded before (e.g. fetched again after a crash): nothing was changed


@dataclass(frozen=True, slots=True)
class ReturnedMailSummary:
    id: int
    tenant_id: str
    received_at: float
    kind: str | None
    status: ReceiptStatus
    outcome: str | None
    outbox_id: int | None
    detail: str | None
    size: int


# An outbox row's delivery statuses that settle its delivery (a Z02 answered them): a later DSN
# about the same mail changes nothing, and recording the submission keeps them (an operator
# can answer before the submission is recorded).
FINAL_DELIVERY_STATUSES = frozenset({"delivered", "expanded", "failed"})

# Upper bounds (seconds) of the commit-time buckets: a sync on a healthy SSD takes 0.1-1 ms.
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True, slots=True)
class CommitStats:
    """The group commits a store made durable since it opened: how many, how many jobs they
    carried (messages, mails, receipts...), and how long each took from its COMMIT to the end
    of its sync: the total, and cumulative counts per bound of `COMMIT_BUCKETS` (the last one,
    `commits`, is +Inf)."""

    commits: int = 0
    jobs: int = 0
    seconds: float = 0.0
    buckets: tuple[int, ...] = (0,) * len(COMMIT_BUCKETS)


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """What a store occupies: its database (SQLite: the file with its WAL; PostgreSQL: the whole
    database), its payload segments (SQLite), and what is left on the file system that holds
    them (SQLite; None when the database is elsewhere). A full disk answers every message AR."""

    database: int
    payloads: int = 0
    free: int | None = None
