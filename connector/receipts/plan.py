"""What a receipt does to the mail it is about, and which ZAM it returns to the hospital (pure).

One outbox row is one mail to one recipient, so a receipt matched to a row speaks of that
recipient: the DSN block whose Original-Recipient / Final-Recipient is the row's recipient (else
the only block), or the MDN / KO mail as a whole.

| receipt | row | ZAM (only when the request asked for it) |
|---|---|---|
| DSN `delivered` / `expanded` | sent → delivered | Z02 Y (ACK_RECEPTION = Y) |
| DSN `failed`, heuristic bounce | sent → failed, SMTPERRORCODE | Z02 N, ERR-5 SMTPERRORCODE |
| DSN `delayed`, `relayed` | status noted, not final | none now (see below) |
| MDN `processed` / `displayed` | read status noted | Z03 Y (ACK_LECTURE_MSS = Y) |
| MDN with an error, KO mail | read status `error`, code | Z03 N, ERR-5 code^libellé |
| MDN `deleted` / `dispatched` | read status noted | none: it says nothing of integration |

A permanent submission failure (5xx, or the retry budget spent) also returns Z02 N with its
SMTPERRORCODE, from the delivery worker (`negative_submission_zam`).

Not final: `delayed` (the operator keeps trying) and `relayed` (the next hop does not do DSN, so
no final report will come). Nothing is returned for them at once; the row keeps `sent` with its
`delivery_status`, visible in `outbox show`. When no final report has come
`final_report_timeout_hours` after submission (72 h by default: past the operators' own retry
window), the poller decides (`silence_effect`): ZAM^Z02 **N with severity W** and SMTPERRORCODE
251 (relayed: "l'envoi sera relayé") or 441 ("le serveur du destinataire ne répond pas"), so the
hospital learns that delivery could not be confirmed; the row stays `sent` (`no-final-report`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final

from connector.delivery.job import MailJob
from connector.hl7.codes import Severity, SmtpErrorCode
from connector.hl7.zam import (
    HierarchicDesignator,
    ZamError,
    ZamEvent,
    ZamRequest,
    build_zam,
)
from connector.mail.receipts import (
    DeliveryAction,
    Outcome,
    Receipt,
    ReceiptKind,
    RecipientOutcome,
    smtp_error_for,
)
from connector.store import (
    FINAL_DELIVERY_STATUSES,
    AuditAction,
    AuditEntry,
    InboundSummary,
    OutboxItem,
    OutboxKind,
    ReceiptUpdate,
)

FINAL_DELIVERED: Final = frozenset({DeliveryAction.DELIVERED, DeliveryAction.EXPANDED})


@dataclass(frozen=True, slots=True)
class ZamIdentity:
    """Who the ZAMs come from (our MSH-3/4) and how they are encoded."""

    application: str
    facility: str
    charset: str = "UNICODE UTF-8"
    codec: str = "utf-8"


@dataclass(frozen=True, slots=True)
class SentMail:
    """What is known of one sent mail: its row, its request and its envelope."""

    outbox_id: int
    tenant_id: str
    inbound: InboundSummary
    job: MailJob


@dataclass(frozen=True, slots=True)
class ReceiptEffect:
    update: ReceiptUpdate
    zam: OutboxItem | None
    outcome: Outcome


def recipient_block(receipt: Receipt, address: str) -> RecipientOutcome | None:
    """The block about `address` (case-insensitive domain, exact local part), else the only
    block, else None."""
    wanted = _normal(address)
    for block in receipt.recipients:
        if wanted in (_normal(block.original_recipient), _normal(block.final_recipient)):
            return block
    return receipt.recipients[0] if len(receipt.recipients) == 1 else None


def _normal(address: str) -> str:
    local, _, domain = address.strip().partition("@")
    return f"{local}@{domain.lower()}" if domain else ""


class ReceiptPlanner:
    """`emit_zams=False` (a tenant without an HIS endpoint): statuses only, no ZAM rows."""

    def __init__(self, identity: ZamIdentity, control_ids: Callable[[], str], *,
                 actor: str, emit_zams: bool = True) -> None:
        self.identity = identity
        self.control_ids = control_ids
        self.actor = actor
        self.emit_zams = emit_zams

    def effect(self, receipt: Receipt, mail: SentMail, *, now: datetime | None = None,
               delivery_status: str | None = None, read_status: str | None = None,
               error_code: str | None = None) -> ReceiptEffect | None:
        """The update and ZAM for `mail`; None when the receipt says nothing of its recipient.
        `delivery_status`, `read_status`, `error_code`: the row's, as the receipts before this
        one left them. Once a DSN settled delivery (delivered or failed: a Z02 answered it), a
        later DSN is only recorded. An MDN that says exactly what the last one said (the same
        disposition, the same error code) is only recorded; one that says something new (an
        integration error after a success, another error, a success after an error, displayed
        then processed) gets its Z03, as the recipient's system sent it."""
        block = recipient_block(receipt, mail.job.rcpt_to)
        if block is None:
            return None
        when = receipt.date or now or datetime.now(UTC)
        if receipt.kind in (ReceiptKind.DSN, ReceiptKind.HEURISTIC):  # delivery (Z02)
            if delivery_status in FINAL_DELIVERY_STATUSES:  # a Z02 answered: settled once
                return self._already(mail, receipt.kind.value, block, delivery_status)
            effect = self._delivery(receipt, block, mail, when)
        else:  # MDN, KO mail: integration (Z03)
            effect = self._reading(block, mail, when)
            said = effect.update.read_status
            if (read_status is not None and said == read_status
                    and (said != "error" or effect.update.error_code == error_code)):
                return self._already(mail, "mdn", block, read_status)
        return effect if self.emit_zams else replace(effect, zam=None)

    def _already(self, mail: SentMail, kind: str, block: RecipientOutcome,
                 answered: str | None) -> ReceiptEffect:
        """A receipt about a mail a ZAM already answered: in the audit trail, nothing else."""
        said = (block.action.value if block.action else block.action_text) or block.outcome.value
        return ReceiptEffect(
            ReceiptUpdate(mail.outbox_id,
                          audit=self._reported(kind, f"{said} (already {answered})")),
            None, block.outcome)

    def _delivery(self, receipt: Receipt, block: RecipientOutcome, mail: SentMail,
                  when: datetime) -> ReceiptEffect:
        action = block.action.value if block.action else (block.action_text or None)
        status = action or ("failed" if block.outcome is Outcome.NEGATIVE else None)
        if block.outcome is Outcome.POSITIVE and block.action in FINAL_DELIVERED:
            zam = self._zam(ZamEvent.RECEPTION_MSS, mail, True, when) \
                if mail.job.request_dsn else None
            return ReceiptEffect(
                ReceiptUpdate(mail.outbox_id, delivery_status="delivered", settle=True,
                              audit=AuditEntry(self.actor, AuditAction.DELIVERED,
                                               block.status or None, receipt.kind.value)),
                zam, block.outcome)
        if block.outcome is Outcome.NEGATIVE:
            error = smtp_error_for(block) or SmtpErrorCode.TRANSACTION_FAILED
            zam = self._zam(ZamEvent.RECEPTION_MSS, mail, False, when,
                            ZamError.smtp(error)) if mail.job.request_dsn else None
            return ReceiptEffect(
                ReceiptUpdate(mail.outbox_id, delivery_status=status or "failed", settle=False,
                              error_code=error.code,
                              audit=AuditEntry(self.actor, AuditAction.UNDELIVERED, error.code,
                                               f"{receipt.kind.value} {block.status}".strip())),
                zam, block.outcome)
        return ReceiptEffect(
            ReceiptUpdate(mail.outbox_id, delivery_status=status,
                          audit=self._reported(receipt.kind.value, status)),
            None, block.outcome)

    def _reading(self, block: RecipientOutcome, mail: SentMail,
                 when: datetime) -> ReceiptEffect:
        reader = block.final_recipient or mail.job.rcpt_to
        if block.outcome is Outcome.NEGATIVE:
            reported = block.error
            code = reported.code if reported else ""
            label = reported.label if reported else "Erreur d'intégration"
            severity = reported.severity if reported and reported.severity else Severity.ERROR
            zam = self._zam(ZamEvent.LECTURE_MSS, mail, False, when,
                            ZamError(code or "906", label, severity), reader=reader) \
                if mail.job.request_mdn else None
            return ReceiptEffect(ReceiptUpdate(mail.outbox_id, read_status="error",
                                               error_code=code or None,
                                               audit=self._reported("mdn", "error", code)),
                                 zam, block.outcome)
        kind = block.disposition.type_text if block.disposition else None
        if block.outcome is Outcome.POSITIVE:
            zam = self._zam(ZamEvent.LECTURE_MSS, mail, True, when, reader=reader) \
                if mail.job.request_mdn else None
            return ReceiptEffect(ReceiptUpdate(mail.outbox_id, read_status=kind or "read",
                                               audit=self._reported("mdn", kind or "read")),
                                 zam, block.outcome)
        return ReceiptEffect(ReceiptUpdate(mail.outbox_id, read_status=kind,
                                           audit=self._reported("mdn", kind)),
                             None, block.outcome)

    def _reported(self, kind: str, what: str | None, code: str | None = None) -> AuditEntry:
        """The audit entry of a receipt that settles nothing: which report, saying what."""
        return AuditEntry(self.actor, AuditAction.REPORTED, code, f"{kind} {what or '-'}")

    def silence_effect(self, mail: SentMail, last_status: str | None,
                       when: datetime | None = None) -> ReceiptEffect:
        """No final DSN came in time: Z02 N with a W severity, SMTPERRORCODE 251 when the last
        report said `relayed` (the next hop does not do DSN), else 441 (no answer from the
        recipient's server). The row stays `sent`: nothing proves it was not delivered."""
        error = SmtpErrorCode.RELAYED if last_status == "relayed" else SmtpErrorCode.NO_ANSWER
        zam = (self._zam(ZamEvent.RECEPTION_MSS, mail, False, when or datetime.now(UTC),
                         ZamError.smtp(error, Severity.WARNING))
               if mail.job.request_dsn and self.emit_zams else None)
        return ReceiptEffect(
            ReceiptUpdate(mail.outbox_id, delivery_status="no-final-report",
                          error_code=error.code,
                          audit=AuditEntry(self.actor, AuditAction.UNCONFIRMED, error.code,
                                           f"last report: {last_status or 'none'}")),
            zam, Outcome.INCONCLUSIVE)

    def negative_submission_zam(self, mail: SentMail, error: SmtpErrorCode,
                                when: datetime | None = None) -> OutboxItem | None:
        """Z02 N for a mail the operator refused for good (or that ran out of retries)."""
        if not (mail.job.request_dsn and self.emit_zams):
            return None
        return self._zam(ZamEvent.RECEPTION_MSS, mail, False, when or datetime.now(UTC),
                         ZamError.smtp(error))

    def _zam(self, event: ZamEvent, mail: SentMail, positive: bool, when: datetime,
             error: ZamError | None = None, *, reader: str | None = None) -> OutboxItem:
        control_id = self.control_ids()
        inbound = mail.inbound
        text = build_zam(ZamRequest(
            event=event, control_id=control_id,
            original_control_id=inbound.control_id or "",
            receiving_application=HierarchicDesignator.from_raw(
                inbound.sending_application or ""),
            receiving_facility=HierarchicDesignator.from_raw(inbound.sending_facility or ""),
            recipient_address=reader or mail.job.rcpt_to, positive=positive, event_time=when,
            # from the application the request was sent to, as its ACK was (CI-SIS examples);
            # the tenant's when the request named none
            sending_application=HierarchicDesignator.from_raw(inbound.receiving_application)
            if inbound.receiving_application else HierarchicDesignator(self.identity.application),
            sending_facility=HierarchicDesignator.from_raw(inbound.receiving_facility)
            if inbound.receiving_facility else HierarchicDesignator(self.identity.facility),
            error=error, charset=self.identity.charset,
            processing_id=inbound.processing_id or "P"))
        return OutboxItem(tenant_id=mail.tenant_id, kind=OutboxKind.HL7,
                          payload=text.encode(self.identity.codec, errors="replace"),
                          inbound_id=inbound.id, message_id=control_id,
                          recipient_domain=mail.job.rcpt_to.partition("@")[2].lower() or None)
