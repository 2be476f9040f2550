"""What intake decides about one payload, before anything is stored: shared by `serve` (the
MLLP handler) and `render` (offline), so the two can never disagree.

Two stages: `first_pass` (charset, MSH, segments, route: microseconds, fine on the event loop)
and `check_documents` (CI-SIS checks, CDA validation, the mails and any PDF rendered for them:
milliseconds to seconds, run in a worker thread or process).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from connector.cda.header import InstanceId
from connector.errors import MessageError, PdfRequiredError
from connector.hl7.ack import AckError, Outcome
from connector.hl7.codes import ApplicationError, ErrorCondition
from connector.hl7.header import (
    MessageHeader,
    decode_message,
    resolve_codec,
    salvage_header,
)
from connector.hl7.message import Message, parse_message
from connector.legacy.flow import LegacyFlows, PatientTraits, ReportVersion
from connector.patients import PatientUpdate, plan_adt
from connector.pipeline.documents import CisisIntake, DocumentVerdict, is_cisis
from connector.pipeline.outgoing import MailPlanner, new_request_key
from connector.pipeline.routing import Flow, route
from connector.store import DocumentChange, OutboxItem

DOCUMENT_FLOWS = (Flow.DOCUMENT_ORU, Flow.DOCUMENT_MDM)
NO_LEGACY_MAPPING = AckError(
    ErrorCondition.APPLICATION_ERROR, application_error=ApplicationError.OTHER,
    detail="ORU without the CI-SIS profile in MSH-21 and no legacy mapping configured")


@dataclass(frozen=True, slots=True)
class IntakeDecision:
    """`outcome`: ACCEPTED and ERROR are stored (AA / AE); REJECTED is not taken (AR, nothing
    stored: the sender sends the message again later)."""

    header: MessageHeader | None
    codec: str
    outcome: Outcome
    errors: tuple[AckError, ...]  # ERR segments: errors for AE, warnings (W) for AA
    message: Message | None = None
    flow: Flow | None = None
    verdict: DocumentVerdict | None = None  # a checked CI-SIS request
    report: bytes | None = field(default=None, repr=False)
    outbox: tuple[OutboxItem, ...] = ()  # its mails, stored with it when it is accepted
    legacy: bool = False  # an ORU without the CI-SIS profile, for the legacy mappings
    traits: PatientTraits | None = None  # the ADT context of its patient (legacy flows)
    previous: ReportVersion | None = None  # the latest report of its order (legacy, replace)
    patient_update: PatientUpdate | None = None  # an ADT: stored with it when it is accepted
    # What intake needs of `verdict` (which a worker process does not send back, see
    # pipeline.offload): the version changes to store, and whether the request asked for the DMP.
    changes: tuple[DocumentChange, ...] = ()
    asks_dmp: bool = False
    documents_without_pdf: int = 0  # CDAs its mails carry without a PDF (none could be rendered)
    mail_key: str | None = None  # what its mails' Message-IDs hash (`outgoing.new_request_key`)
    documents_checked: bool = False  # by check_documents (`verdict` may not come back with it)

    @property
    def needs_document_checks(self) -> bool:
        return (self.outcome is Outcome.ACCEPTED and self.flow in DOCUMENT_FLOWS
                and not self.documents_checked)


def planning_outcome(exc: MessageError) -> Outcome:
    """What a request whose mails could not be planned gets: REJECTED (AR, not taken) for a PDF
    this host cannot render yet, which the sender sends again; ERROR (AE) otherwise."""
    if isinstance(exc, PdfRequiredError) and exc.retry_later:
        return Outcome.REJECTED
    return Outcome.ERROR


class IntakeDecider:
    """`planner`: builds the mails of accepted requests (serve); None only checks (render)."""

    def __init__(self, cisis: CisisIntake, *, planner: MailPlanner | None = None,
                 legacy: LegacyFlows | None = None, forced_charset: str | None = None,
                 default_charset: str = "utf-8") -> None:
        self.cisis = cisis
        self.planner = planner
        self.legacy = legacy
        self.forced_charset = forced_charset
        self.default_charset = default_charset

    def decide(self, payload: bytes) -> IntakeDecision:
        """Both stages, synchronously (offline use)."""
        decision = self.first_pass(payload)
        return self.check_documents(decision) if decision.needs_document_checks else decision

    def first_pass(self, payload: bytes) -> IntakeDecision:
        codec = self.forced_charset or self.default_charset
        header: MessageHeader | None = None
        try:
            codec = resolve_codec(payload, forced=self.forced_charset,
                                  default=self.default_charset)
            message = parse_message(decode_message(payload, codec))
            header = MessageHeader.from_segment(message.msh)
            flow = route(header)
        except MessageError as exc:
            return IntakeDecision(header or salvage_header(payload, codec), codec, Outcome.ERROR,
                                  (AckError.from_exception(exc),))
        if flow is Flow.PATIENT_ADT:
            try:
                update = plan_adt(message, header)
            except MessageError as exc:
                return IntakeDecision(header, codec, Outcome.ERROR,
                                      (AckError.from_exception(exc),), message, flow)
            return IntakeDecision(header, codec, Outcome.ACCEPTED, (), message, flow,
                                  patient_update=update)
        if flow is Flow.DOCUMENT_ORU and not is_cisis(message):
            if self.legacy is None:  # no worker thread needed
                return IntakeDecision(header, codec, Outcome.ERROR, (NO_LEGACY_MAPPING,),
                                      message, flow)
            return IntakeDecision(header, codec, Outcome.ACCEPTED, (), message, flow,
                                  legacy=True)
        return IntakeDecision(header, codec, Outcome.ACCEPTED, (), message, flow)

    def report_set(self, decision: IntakeDecision) -> InstanceId | None:
        """The document set of a legacy report whose mapping links an order's reports
        (`results.corrected: replace`), else None: what the caller reads the latest version of
        (`IntakeDecision.previous`) before `check_documents`."""
        if (not decision.legacy or self.legacy is None or decision.header is None
                or decision.message is None):
            return None
        return self.legacy.report_set_id(decision.header, decision.message)

    def check_documents(self, decision: IntakeDecision) -> IntakeDecision:
        """CI-SIS checks and CDA validation (slow: call from a worker thread)."""
        assert decision.message is not None
        try:
            if decision.legacy and self.legacy is not None and decision.header is not None:
                built = self.legacy.request(decision.header, decision.message, decision.traits,
                                            decision.previous)
                verdict = self.cisis.verify(built.request)
            else:
                verdict = self.cisis.check(decision.message)
        except MessageError as exc:
            report = getattr(exc, "report", None)
            return replace(decision, outcome=Outcome.ERROR, errors=(AckError.from_exception(exc),),
                           report=report.encode() if isinstance(report, str) else None)
        outbox: tuple[OutboxItem, ...] = ()
        without_pdf = 0
        mail_key = None
        withheld: tuple[AckError, ...] = ()  # W: mails the planner did not send
        if self.planner is not None:
            mail_key = new_request_key()
            try:
                planned = self.planner.plan(verdict.request, mail_key)
            except MessageError as exc:
                return replace(decision, outcome=planning_outcome(exc),
                               errors=(AckError.from_exception(exc),), report=verdict.report)
            outbox, without_pdf = planned.items, len(planned.documents_without_pdf)
            withheld = planned.warnings
        return replace(decision, errors=verdict.warnings + withheld, verdict=verdict,
                       report=verdict.report,
                       outbox=outbox, documents_without_pdf=without_pdf, changes=verdict.changes,
                       asks_dmp=verdict.request.metadata.destdmp, documents_checked=True,
                       mail_key=mail_key)
