"""Intake: one MLLP payload in, one acknowledgement out, with a durable row in between.

    decide (pipeline.decide: charset, parse, route; CI-SIS checks and the mails in a worker
    thread) → store (the message and its mails in one group commit, fsync) → ACK

The ACK is returned only after the store committed the row: AA means the connector took
responsibility. A message that is wrong is stored as `rejected` and answered AE with ERR. When the
store fails, the process drains, or this host cannot render a PDF the message needs
(`[tenants.cisis] missing_pdf = "refuse"`), the answer is AR with ERR and nothing is stored: the
sender retries.
A retransmission (same sender, MSH-10 and bytes within the window) gets its first ACK again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import structlog

from connector.cda.header import InstanceId
from connector.errors import StoreError
from connector.hl7.ack import (
    AckError,
    AckIdentity,
    ControlIdGenerator,
    Outcome,
    build_ack,
    choose_ack_code,
)
from connector.hl7.codes import AckCode, ApplicationError, ErrorCondition
from connector.hl7.header import MessageHeader, codec_or_default, msh18_for_codec, salvage_header
from connector.legacy.context import ReportStore, context_traits, latest_report
from connector.legacy.flow import LegacyFlows
from connector.observability.logs import exception_frames
from connector.observability.metrics import ConnectorMetrics
from connector.pipeline.decide import IntakeDecider, IntakeDecision
from connector.pipeline.documents import CisisIntake
from connector.pipeline.offload import DocumentProcesses
from connector.pipeline.outgoing import MailPlanner, follow_up
from connector.pipeline.serial import KeyedLocks
from connector.store import (
    InboundMessage,
    InboundStatus,
    IntakeStore,
    PatientStore,
    UnknownOriginalPolicy,
    VersionCheck,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class IntakeConfig:
    tenant_id: str
    listener: str
    identity: AckIdentity
    forced_charset: str | None = None
    default_charset: str = "utf-8"
    application_ack: bool = False  # `EnhancedAck.APPLICATION`: AA/AE/AR even in enhanced mode


_VERSION_CONFLICT = AckError(
    ErrorCondition.APPLICATION_ERROR, application_error=ApplicationError.WRONG_DOCUMENT_VERSION,
    detail="replace/delete does not target the latest known version of the document")
# A legacy report whose version the connector chose (`corrected: replace`), beaten by another
# report of the order stored by another replica meanwhile: AR, the sender sends it again and it
# becomes the next version (an AE would lose it: senders do not resend what was refused).
_REPORT_RACE = AckError(
    ErrorCondition.APPLICATION_ERROR, application_error=ApplicationError.WRONG_DOCUMENT_VERSION,
    detail="another report of this order was stored at the same moment; send again later")


class IntakeHandler:
    """The MLLP server's MessageHandler for one listener of one tenant."""

    def __init__(self, config: IntakeConfig, store: IntakeStore,
                 control_ids: ControlIdGenerator, cisis: CisisIntake,
                 metrics: ConnectorMetrics | None = None, *,
                 planner: MailPlanner | None = None, legacy: LegacyFlows | None = None,
                 patients: PatientStore | None = None,
                 on_queued: Callable[[str], None] | None = None,
                 documents: Callable[[], DocumentProcesses | None] | None = None,
                 report_sets: KeyedLocks[tuple[str, InstanceId]] | None = None,
                 reports: ReportStore | None = None) -> None:
        """`report_sets`: the locks of the legacy report sets being handled, shared by every
        handler of the process (a new set of locks when not given); `reports`: the store, for
        the legacy mappings that link an order's reports (none: they are not linked)."""
        self.config = config
        self.metrics = metrics
        self._store = store
        self._control_ids = control_ids
        self._on_queued = on_queued
        self._documents = documents  # the worker processes of the document stage, if any
        self._patients = patients  # the ADT context, for legacy messages
        self._reports = reports  # an order's latest report, for legacy messages
        self.decider = IntakeDecider(cisis, planner=planner, legacy=legacy,
                                     forced_charset=config.forced_charset,
                                     default_charset=config.default_charset)
        self.draining = False
        self._report_sets = report_sets if report_sets is not None else KeyedLocks()

    async def handle(self, payload: bytes, peer: str) -> bytes | None:
        # Every log line of this message carries its tenant, listener and connection (this
        # runs in the connection's own task; the values before are restored after it: what
        # `bound_contextvars` does, without copying the whole context twice a message).
        tokens = structlog.contextvars.bind_contextvars(
            tenant=self.config.tenant_id, listener=self.config.listener, connection=peer,
            control_id=None)
        started = time.perf_counter()
        try:
            return await self._handle(payload, peer, started)
        except Exception as exc:  # noqa: BLE001 (a bug: the sender still gets an answer)
            # AR: the sender sends the message again. If the store had committed it before
            # the failure, that retransmission gets the stored ACK and is not processed twice.
            log.error("intake_failed", error=type(exc).__name__, where=exception_frames(exc))
            return self._answered(started, None, self._transient(
                payload, "internal error; send again later"), "AR")
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _handle(self, payload: bytes, peer: str, started: float) -> bytes | None:
        received_at = time.time()
        if self.draining:
            return self._answered(started, None, self._transient(
                payload, "the connector is shutting down; send again later"), "AR")
        decision = self.decider.first_pass(payload)
        if decision.header is not None:
            structlog.contextvars.bind_contextvars(control_id=decision.header.control_id)
        if decision.legacy and decision.message is not None and self._patients is not None:
            try:  # the ADT context completes a legacy message's patient
                decision = replace(decision, traits=await context_traits(
                    self._patients, self.config.tenant_id, decision.message))
            except (StoreError, ValueError) as exc:  # unreachable, or an ambiguous IPP
                log.warning("patient_context_unavailable", error=type(exc).__name__)
        report_set = self.decider.report_set(decision)
        if report_set is None or self._reports is None or decision.message is None:
            return await self._decide_and_store(decision, payload, peer, started, received_at)
        # Legacy `corrected: replace`: from reading the order's latest report to storing this
        # one, no other report of the order is handled in this process (two at once would both
        # build on the same version; another replica's is refused by the store: AR, resent).
        async with self._report_sets.hold((self.config.tenant_id, report_set)):
            try:  # the order's latest report, which this one replaces (or withdraws)
                decision = replace(decision, previous=await latest_report(
                    self._reports, self.config.tenant_id, report_set,
                    with_document=self._withdraws(decision)))
            except StoreError as exc:  # not knowing it, the report would go as a second v1
                log.error("report_versions_unavailable", error=type(exc).__name__)
                return self._answered(started, decision, self._transient(
                    payload, "the earlier versions of this report could not be read; send "
                    "again later"), "AR")
            return await self._decide_and_store(decision, payload, peer, started, received_at,
                                                exclusive_sets=True)

    async def _decide_and_store(self, decision: IntakeDecision, payload: bytes, peer: str,
                                started: float, received_at: float, *,
                                exclusive_sets: bool = False) -> bytes | None:
        """The document stage if the message needs it, then the row and its ACK.
        `exclusive_sets`: its new documents must open their set (`store.versions`)."""
        if decision.needs_document_checks:
            decision = await self._follow_up(await self._check_documents(decision, payload))
        header = decision.header
        code = self._ack_code(header, decision.outcome)
        ack = self._ack(decision, code, decision.errors)
        if decision.outcome is Outcome.REJECTED:  # not taken: the sender sends it again later
            log.error("message_not_taken", detail=decision.errors[0].detail if decision.errors
                      else None, control_id=header.control_id if header else None)
            return self._answered(started, decision, ack or None, code.value if code else "")
        versions = None
        if decision.outcome is Outcome.ACCEPTED and decision.changes:
            conflict_code = self._ack_code(
                header, Outcome.REJECTED if exclusive_sets else Outcome.ERROR)
            versions = VersionCheck(
                decision.changes,
                conflict_ack=self._ack(decision, conflict_code, (
                    _REPORT_RACE if exclusive_sets else _VERSION_CONFLICT,)),
                conflict_ack_code=conflict_code.value if conflict_code else "",
                unknown_original=self.decider.cisis.settings.unknown_original,
                exclusive_sets=exclusive_sets)
        first_error = (decision.errors[0] if decision.errors
                       and decision.outcome is not Outcome.ACCEPTED else None)
        record = InboundMessage(
            tenant_id=self.config.tenant_id,
            listener=self.config.listener,
            peer=peer,
            received_at=received_at,
            raw=payload,
            digest=hashlib.sha256(payload).digest(),
            sending_application=header.sending_application if header else None,
            sending_facility=header.sending_facility if header else None,
            message_type=str(header.message_type) if header else None,
            control_id=header.control_id if header else None,
            version=header.version_id if header else None,
            processing_id=(header.processing_id or None) if header else None,
            receiving_application=(header.receiving_application or None) if header else None,
            receiving_facility=(header.receiving_facility or None) if header else None,
            mail_key=decision.mail_key if decision.outcome is Outcome.ACCEPTED else None,
            status=(InboundStatus.ACCEPTED if decision.outcome is Outcome.ACCEPTED
                    else InboundStatus.REJECTED),
            ack_code=code.value if code else "",
            ack=ack,
            error_code=first_error.condition.code if first_error else None,
            error_detail=first_error.detail if first_error else None,
            report=decision.report,
            versions=versions,
            outbox=decision.outbox if decision.outcome is Outcome.ACCEPTED else (),
            patient_update=(decision.patient_update.change()
                            if decision.patient_update is not None
                            and decision.outcome is Outcome.ACCEPTED else None),
        )
        try:
            receipt = await self._store.record_inbound(record)
        except StoreError as exc:
            log.error("store_failed", error=str(exc), control_id=record.control_id)
            return self._answered(started, decision, self._transient(
                payload, "the message could not be stored; send again later"), "AR")
        if receipt.queued and self._on_queued is not None:
            self._on_queued(self.config.tenant_id)
        if receipt.retransmission_of is not None:
            log.info("retransmission_answered", inbound_id=receipt.retransmission_of,
                     control_id=record.control_id)
        elif receipt.control_id_reused:
            log.warning("control_id_reused", inbound_id=receipt.inbound_id,
                        control_id=record.control_id)
        if receipt.version_conflict is not None:
            log.info("version_conflict", inbound_id=receipt.inbound_id,
                     control_id=record.control_id, detail=receipt.version_conflict)
        for _ in receipt.unknown_originals:
            log.warning("unknown_original_accepted", inbound_id=receipt.inbound_id,
                        control_id=record.control_id,
                        policy=UnknownOriginalPolicy.ACCEPT.value)
        self._count(receipt.retransmission_of is not None, receipt.version_conflict is not None,
                    decision)
        if decision.outcome is not Outcome.ACCEPTED and receipt.retransmission_of is None:
            log.info("message_rejected", inbound_id=receipt.inbound_id, ack=record.ack_code,
                     error=record.error_code, detail=record.error_detail,
                     control_id=record.control_id, message_type=record.message_type)
        ack_code = record.ack_code
        if receipt.version_conflict is not None and versions is not None:
            ack_code = versions.conflict_ack_code
        return self._answered(started, decision, receipt.ack or None, ack_code)

    def _withdraws(self, decision: IntakeDecision) -> bool:
        legacy = self.decider.legacy
        return (legacy is not None and decision.header is not None
                and decision.message is not None
                and legacy.withdraws(decision.header, decision.message))

    async def _check_documents(self, decision: IntakeDecision, payload: bytes
                               ) -> IntakeDecision:
        """The document stage: in a worker process when `[intake] document_processes` runs
        some, else in a thread (never on the event loop: milliseconds of CPU, up to seconds when a
        PDF is rendered)."""
        processes = self._documents() if self._documents is not None else None
        if processes is None:
            return await asyncio.to_thread(self.decider.check_documents, decision)
        return await processes.check(self.config.tenant_id, decision, payload, self.decider)

    def _ack_code(self, header: MessageHeader | None, outcome: Outcome) -> AckCode | None:
        return choose_ack_code(header, outcome, application_ack=self.config.application_ack)

    async def _follow_up(self, decision: IntakeDecision) -> IntakeDecision:
        """A replacement's or a deletion's mails refer (In-Reply-To, References: ECO.2.2.2) to
        the mails of the requests that carried the documents it acts on, when the store knows
        them; without them (a document sent before, by another system) they go as they are."""
        targets = list(dict.fromkeys(c.target_id for c in decision.changes if c.target_id))
        if decision.outcome is not Outcome.ACCEPTED or not decision.outbox or not targets:
            return decision
        try:
            sent = await self._store.sent_requests(self.config.tenant_id, targets)
        except StoreError as exc:  # unreachable, or a key that is not configured any more
            log.warning("follow_up_unavailable", error=type(exc).__name__)
            return decision
        found = [sent[target] for target in targets if target in sent]
        if not found:
            return decision
        # Off the loop: each mail is copied once more (up to a megabyte and its checks).
        return replace(decision, outbox=await asyncio.to_thread(follow_up, decision.outbox,
                                                                found))

    def _answered(self, started: float, decision: IntakeDecision | None, ack: bytes | None,
                  ack_code: str) -> bytes | None:
        if self.metrics is not None:
            routed = (str(decision.header.message_type)
                      if decision is not None and decision.flow is not None
                      and decision.header is not None else None)
            self.metrics.message_answered(self.config.tenant_id, routed,
                                          ack_code if ack else "",
                                          time.perf_counter() - started)
        return ack

    def _count(self, retransmission: bool, conflict: bool, decision: IntakeDecision) -> None:
        if self.metrics is None:
            return
        tenant = self.config.tenant_id
        if retransmission:
            self.metrics.retransmissions.labels(tenant).inc()
            return
        if conflict:
            self.metrics.version_conflicts.labels(tenant).inc()
            return
        if decision.asks_dmp:
            self.metrics.dmp_not_fed.labels(tenant).inc()
        if decision.documents_without_pdf:
            self.metrics.documents_without_pdf.labels(tenant).inc(decision.documents_without_pdf)

    def _ack(self, decision: IntakeDecision, code: AckCode | None,
             errors: tuple[AckError, ...]) -> bytes:
        if code is None:
            return b""
        return self._encode(build_ack(
            decision.header, code, control_id=self._control_ids(), errors=errors,
            identity=self.config.identity, charset_msh18=msh18_for_codec(decision.codec),
        ), decision.codec)

    def _transient(self, payload: bytes, reason: str) -> bytes:
        # The request's own character set, as the decider would have read it.
        codec = codec_or_default(payload, forced=self.config.forced_charset,
                                 default=self.config.default_charset)
        header = salvage_header(payload, codec)
        code = self._ack_code(header, Outcome.REJECTED) or AckCode.APPLICATION_REJECT
        text = build_ack(header, code, control_id=self._control_ids(),
                         errors=(AckError(ErrorCondition.APPLICATION_ERROR, detail=reason),),
                         identity=self.config.identity, charset_msh18=msh18_for_codec(codec))
        return self._encode(text, codec)

    @staticmethod
    def _encode(text: str, codec: str) -> bytes:
        """`text` in `codec`; the sender's undecodable bytes that a salvaged header kept as
        surrogates go back as they came, and what `codec` cannot write becomes `?`."""
        try:
            return text.encode(codec, errors="surrogateescape")
        except UnicodeEncodeError:
            return text.encode(codec, errors="replace")
