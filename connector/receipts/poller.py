"""The receipts poller: one per tenant mailbox. Fetch, understand, commit, then move.

For each mail of the watched folder, oldest first:

1. fetch it (`BODY.PEEK[]`);
2. read it (`mail.receipts.parse_receipt`) and find the mail it is about: by its DSN envelope id,
   else by the original Message-ID (MDN Original-Message-ID, the returned headers, In-Reply-To /
   References);
3. record it in the store with what it does (row status, settlement, the ZAM rows), in one
   transaction, once per (tenant, receipt Message-ID): a mail fetched again after a crash
   between this commit and the move changes nothing the second time;
4. only then move it to the processed folder, or to the unmatched one (not a receipt,
   unreadable, or about no mail of ours), counted by `mssconnector_receipts_total`.

Nothing is deleted before its outcome is committed. The IMAP session reconnects with a backoff
after any failure (server restart, network), and waits with IDLE when offered, else polls.
With several replicas, `claim` (an advisory lock on PostgreSQL) keeps one poller per mailbox.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import TYPE_CHECKING

import structlog

from connector.delivery.job import MailJob, MalformedJob
from connector.errors import PayloadUnreadable, ReceiptError, StoreError
from connector.mail.receipts import Receipt, normalize_message_id, parse_receipt
from connector.observability.logs import exception_frames
from connector.observability.metrics import ConnectorMetrics
from connector.receipts.imap import ImapError, ImapMailbox, MoveMethod
from connector.receipts.plan import ReceiptPlanner, SentMail
from connector.store import (
    AuditAction,
    AuditEntry,
    OutboxItem,
    OutboxKind,
    OutboxSummary,
    ReceiptStatus,
    ReceiptUpdate,
    ReturnedMail,
)
from connector.tasks import cancel_and_wait

if TYPE_CHECKING:
    from connector.store.postgres import PostgresStore
    from connector.store.sqlite import SQLiteStore

    Store = SQLiteStore | PostgresStore

log = structlog.get_logger(__name__)


class _Purged(enum.Enum):
    """A mail the retention purge dropped."""

    PURGED = "purged"


_PURGED = _Purged.PURGED


@dataclass(frozen=True, slots=True)
class PollerSettings:
    idle_seconds: float = 60.0  # one IDLE (or poll interval without IDLE)
    poll_seconds: float = 10.0
    final_report_timeout_seconds: float = 72 * 3600.0
    sweep_seconds: float = 60.0  # how often to look for mails whose report never came
    reconnect_initial_seconds: float = 1.0
    reconnect_maximum_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class Handled:
    status: ReceiptStatus
    duplicate: bool
    zams: int
    receipt_id: int | None = None  # its `receipts` row
    outbox_id: int | None = None  # the mail it is about, when it matched one


def receipt_key(raw: bytes) -> str:
    """The mail's Message-ID, else a digest of its bytes: what makes a second fetch a no-op."""
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:65536])
        message_id = normalize_message_id(str(headers.get("Message-ID", "")))
    except (ValueError, TypeError, LookupError):  # a header it chokes on: the digest will do
        message_id = None
    return message_id or f"sha256:{hashlib.sha256(raw).hexdigest()}"


class ReceiptPoller:
    def __init__(self, tenant_id: str, store: Store, mailbox: Callable[[], ImapMailbox],
                 planner: ReceiptPlanner, *, settings: PollerSettings | None = None,
                 metrics: ConnectorMetrics | None = None,
                 on_zams: Callable[[str], None] | None = None) -> None:
        self.tenant_id = tenant_id
        self.store = store
        self._mailbox_factory = mailbox
        self.planner = planner
        self.settings = settings or PollerSettings()
        self.metrics = metrics
        self._on_zams = on_zams
        self._task: asyncio.Task[None] | None = None
        self._mailbox: ImapMailbox | None = None
        self._next_sweep = 0.0
        self._stopping = False
        self.connected = False
        self.last_error: str | None = None

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"receipts-{self.tenant_id}")

    async def stop(self) -> None:
        """Stop now: the IMAP session is cut (an IDLE in progress ends at once); a mail being
        handled is either committed or left in the folder for next time."""
        self._stopping = True
        mailbox = self._mailbox
        if mailbox is not None:
            await asyncio.to_thread(mailbox.abort)
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        delay = self.settings.reconnect_initial_seconds
        while not self._stopping:
            claim = await self.store.claim(f"receipts:{self.tenant_id}")
            if claim is None:  # another replica polls this mailbox
                await asyncio.sleep(self.settings.poll_seconds)
                continue
            mailbox = self._mailbox = self._mailbox_factory()
            try:
                await asyncio.to_thread(mailbox.connect)
                self.connected, self.last_error = True, None
                log.info("receipts_mailbox_connected", tenant=self.tenant_id,
                         mailbox=mailbox.where, idle="IDLE" in mailbox.capabilities,
                         moves=mailbox.move_method.value)
                if mailbox.move_method is MoveMethod.LEAVE_DELETED:
                    log.warning("receipts_mailbox_cannot_expunge", tenant=self.tenant_id,
                                mailbox=mailbox.where,
                                hint="the server offers neither MOVE nor UIDPLUS: handled mails "
                                     "are copied, and stay in the folder flagged \\Deleted "
                                     "until the server's expunge policy removes them")
                delay = self.settings.reconnect_initial_seconds
                while not self._stopping:
                    handled = await self.drain(mailbox)
                    if time.monotonic() >= self._next_sweep:
                        self._next_sweep = time.monotonic() + self.settings.sweep_seconds
                        await self.sweep()
                    if not handled:
                        await asyncio.to_thread(mailbox.wait, self._wait_seconds(mailbox))
            except Exception as exc:  # noqa: BLE001 (a bug must not end the polling for good)
                if isinstance(exc, ImapError | StoreError):  # the mailbox or the store
                    self.last_error = str(exc)
                    log.warning("receipts_mailbox_unavailable", tenant=self.tenant_id,
                                error=str(exc), retry_in_seconds=delay)
                else:  # a bug: its type and frames, never its message
                    self.last_error = type(exc).__name__
                    log.error("receipts_poller_failed", tenant=self.tenant_id,
                              error=type(exc).__name__, where=exception_frames(exc),
                              retry_in_seconds=delay)
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(self.settings.reconnect_maximum_seconds, delay * 2)
            finally:
                self.connected, self._mailbox = False, None
                await asyncio.to_thread(mailbox.close)
                await claim.release()

    def _wait_seconds(self, mailbox: ImapMailbox) -> float:
        return (self.settings.idle_seconds if "IDLE" in mailbox.capabilities
                else self.settings.poll_seconds)

    async def drain(self, mailbox: ImapMailbox) -> int:
        """Handle every mail of the watched folder once; return how many."""
        count = 0
        for uid in await asyncio.to_thread(mailbox.uids):
            raw = await asyncio.to_thread(mailbox.fetch, uid)
            if raw is None:
                continue
            try:
                handled = await self.handle(raw)
            except PayloadUnreadable as exc:  # a row it names cannot be read: this mail only
                handled = await self._set_aside(
                    raw, exc, "about a mail whose stored copy cannot be read")
            except (ImapError, StoreError):
                raise  # the mailbox or the store: reconnect, and this mail is read again
            except Exception as exc:  # noqa: BLE001 (one mail must not stop the poller)
                handled = await self._set_aside(
                    raw, exc, f"could not be handled ({type(exc).__name__}): see the "
                              "connector's log")
            folder = (mailbox.endpoint.processed_folder if handled.status is
                      ReceiptStatus.MATCHED else mailbox.endpoint.unmatched_folder)
            source = f"{mailbox.where}/{mailbox.endpoint.mailbox}"
            await self._audit(AuditAction.FETCHED, handled,
                              f"{source} UID FETCH {uid} BODY.PEEK[]: receipt "
                              f"{handled.receipt_id} {handled.status.value}"
                              + (", fetched before" if handled.duplicate else ""))
            commands = await asyncio.to_thread(mailbox.move, uid, folder)
            await self._audit(AuditAction.FILED, handled,
                              f"{source} {' + '.join(commands)} {uid} to {folder}")
            count += 1
        return count

    async def _audit(self, action: AuditAction, handled: Handled, detail: str) -> None:
        """ECO.4.1.1: every operation on the application mailbox is traced (who, when, what,
        the request; the server's answer: OK, else the mailbox error reconnects first)."""
        await self.store.record_mailbox_audit(
            self.tenant_id, AuditEntry(self.planner.actor, action, "OK", detail),
            outbox_id=handled.outbox_id)

    async def handle(self, raw: bytes) -> Handled:
        """Read one mail and commit what it does (idempotent per receipt Message-ID)."""
        key = receipt_key(raw)
        received_at = time.time()
        try:
            receipt = parse_receipt(raw)
        except ReceiptError as exc:
            return await self._unmatched(key, raw, received_at, None, f"unreadable: {exc}")
        if receipt is None:
            return await self._unmatched(key, raw, received_at, None, "not a receipt")
        correlation = receipt.correlation
        ids = await self.store.find_outbox_ids(
            self.tenant_id, envid=correlation.envelope_id or None,
            message_ids=correlation.candidate_message_ids)
        updates: list[ReceiptUpdate] = []
        zams: list[OutboxItem] = []
        outcomes: list[str] = []
        purged = 0
        for outbox_id in ids:
            found = await self._sent_mail(outbox_id)
            if found is _PURGED:
                purged += 1
                continue
            if found is None:
                continue
            mail, summary = found
            effect = self.planner.effect(receipt, mail, delivery_status=summary.delivery_status,
                                         read_status=summary.read_status,
                                         error_code=summary.error_code)
            if effect is None:
                continue
            updates.append(effect.update)
            outcomes.append(effect.outcome.value)
            if effect.zam is not None:
                zams.append(effect.zam)
        if not updates:
            why = ("about no mail of ours" if not ids
                   else "about a mail whose payload the retention purge dropped" if purged
                   else "names none of our recipients")
            return await self._unmatched(key, raw, received_at, receipt, why)
        recorded = await self.store.record_returned_mail(ReturnedMail(
            tenant_id=self.tenant_id, key=key, received_at=received_at, raw=raw,
            status=ReceiptStatus.MATCHED, kind=receipt.kind.value, outcome=outcomes[0],
            outbox_id=updates[0].outbox_id, updates=tuple(updates), zams=tuple(zams)))
        self._count(receipt.kind.value, outcomes[0], recorded.duplicate)
        if not recorded.duplicate:
            log.info("receipt_applied", tenant=self.tenant_id, receipt_id=recorded.id,
                     kind=receipt.kind.value, outcome=outcomes[0],
                     outbox_ids=[u.outbox_id for u in updates], zams=len(zams),
                     heuristic=receipt.heuristic)
            if zams and self._on_zams is not None:
                self._on_zams(self.tenant_id)
        return Handled(ReceiptStatus.MATCHED, recorded.duplicate, 0 if recorded.duplicate
                       else len(zams), recorded.id, updates[0].outbox_id)

    async def sweep(self, now: float | None = None) -> int:
        """Decide for mails whose requested DSN said nothing final in time (see
        `ReceiptPlanner.silence_effect`); once per row. Return how many."""
        at = time.time() if now is None else now
        ids = await self.store.list_unconfirmed(
            self.tenant_id, sent_before=at - self.settings.final_report_timeout_seconds)
        decided = 0
        for outbox_id in ids:
            found = await self._sent_mail(outbox_id)
            if found is None or found is _PURGED:
                continue
            sent, row = found
            effect = self.planner.silence_effect(sent, row.delivery_status)
            recorded = await self.store.record_returned_mail(ReturnedMail(
                tenant_id=self.tenant_id, key=f"no-final-report:{outbox_id}", received_at=at,
                raw=b"", status=ReceiptStatus.MATCHED, kind="timeout",
                outcome=effect.outcome.value, outbox_id=outbox_id, updates=(effect.update,),
                zams=(effect.zam,) if effect.zam is not None else ()))
            if not recorded.duplicate:
                decided += 1
                log.info("receipt_not_confirmed", tenant=self.tenant_id, outbox_id=outbox_id,
                         last_status=row.delivery_status,
                         zam=effect.zam is not None)
        if decided and self._on_zams is not None:
            self._on_zams(self.tenant_id)
        return decided

    async def _sent_mail(self, outbox_id: int
                         ) -> tuple[SentMail, OutboxSummary] | _Purged | None:
        """The mail a receipt is about, and its row, read once; `_PURGED` when the retention
        purge dropped the mail (a receipt that came after it: no ZAM can be built)."""
        detail = await self.store.get_outbox(outbox_id)
        if detail is None or detail.summary.kind is not OutboxKind.SMTP \
                or detail.summary.inbound_id is None:
            return None
        if detail.purged_at is not None:
            return _PURGED
        inbound = await self.store.get_inbound_summary(detail.summary.inbound_id)
        if inbound is None:
            return None
        try:
            job = MailJob.decode(detail.payload)
        except MalformedJob:
            return None
        return SentMail(outbox_id, self.tenant_id, inbound, job), detail.summary

    async def _set_aside(self, raw: bytes, exc: Exception, why: str) -> Handled:
        """A mail whose handling failed on it alone: kept unmatched for operators; the log has
        the error's type and frames, never its message."""
        log.error("receipt_failed", tenant=self.tenant_id, error=type(exc).__name__,
                  where=exception_frames(exc))
        return await self._unmatched(receipt_key(raw), raw, time.time(), None, why)

    async def _unmatched(self, key: str, raw: bytes, received_at: float,
                         receipt: Receipt | None, why: str) -> Handled:
        kind = receipt.kind.value if receipt is not None else None
        recorded = await self.store.record_returned_mail(ReturnedMail(
            tenant_id=self.tenant_id, key=key, received_at=received_at, raw=raw,
            status=ReceiptStatus.UNMATCHED, kind=kind, detail=why))
        self._count(kind or "none", "unmatched", recorded.duplicate)
        if not recorded.duplicate:
            log.info("receipt_unmatched", tenant=self.tenant_id, receipt_id=recorded.id,
                     kind=kind, reason=why)
        return Handled(ReceiptStatus.UNMATCHED, recorded.duplicate, 0, recorded.id)

    def _count(self, kind: str, outcome: str, duplicate: bool) -> None:
        if self.metrics is not None and not duplicate:
            self.metrics.receipts.labels(self.tenant_id, kind, outcome).inc()

