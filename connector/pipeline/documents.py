"""The CI-SIS stage of intake: a parsed ORU/MDM becomes a checked document request, its CDA
documents are validated, and the version changes it makes are prepared for the store.

CPU-heavy (base64, XML, XSD, schematron): intake runs it in a worker thread, never on the event
loop. Everything raised is a `MessageError` carrying its ERR data; everything tolerated comes back
as W warnings for the AA.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from connector.cda.validation import CdaValidator
from connector.cisis import (
    ANS_EXAMPLES_MATRIX,
    CISIS_MATRIX,
    Action,
    DocumentRequest,
    SendingMatrix,
    parse_document_request,
)
from connector.cisis.model import MailRoute, Recipient, RecipientKind
from connector.directory.whitelist import Whitelist, is_patient_address_for
from connector.errors import DocumentError, ErrorLocation, MessageError
from connector.hl7.ack import AckError
from connector.hl7.codes import ApplicationError, ErrorCondition, Severity
from connector.hl7.message import Message
from connector.pipeline.mails import QUALIFIED_INS_KINDS, ins_qualified
from connector.settings import CisisSettings, SendingMatrixProfile
from connector.store import DocumentAction, DocumentChange

log = structlog.get_logger(__name__)

CISIS_NAMESPACE = "CISIS_CDA_HL7"


@dataclass(frozen=True, slots=True)
class CdaCheck:
    """What validating one CDA found that does not refuse it."""

    warnings: tuple[AckError, ...] = ()
    report: str | None = None  # the full report, for operators (may quote document values)


class CdaChecker(Protocol):
    def check(self, content: bytes) -> CdaCheck:
        """Validate one CDA; raise DocumentError when it must be refused."""
        ...


class UnconfiguredCdaChecker:
    """Used when `[validation]` names no XSD: the request goes through, and says so."""

    def check(self, content: bytes) -> CdaCheck:
        return CdaCheck(warnings=(AckError(
            ErrorCondition.APPLICATION_ERROR, Severity.WARNING,
            detail="CDA not validated: validation.cda_xsd is not configured"),))


class ValidatingCdaChecker:
    """The XSD + schematron validator behind the CdaChecker protocol."""

    def __init__(self, validator: CdaValidator) -> None:
        self.validator = validator

    def check(self, content: bytes) -> CdaCheck:
        validation = self.validator.validate(content)  # DocumentError, report attached
        return CdaCheck(tuple(w.to_ack_error() for w in validation.warnings),
                        validation.report())


@dataclass(frozen=True, slots=True)
class DocumentVerdict:
    request: DocumentRequest
    warnings: tuple[AckError, ...]
    changes: tuple[DocumentChange, ...]
    report: bytes | None


def is_cisis(message: Message) -> bool:
    """An ORU is a CI-SIS request when MSH-21 names the volet's profile; else it is legacy."""
    return CISIS_NAMESPACE in message.msh.raw(21).upper().replace(" ", "")


def matrix_for(profile: SendingMatrixProfile) -> SendingMatrix:
    return ANS_EXAMPLES_MATRIX if profile is SendingMatrixProfile.ANS_EXAMPLES else CISIS_MATRIX


def document_changes(request: DocumentRequest) -> tuple[DocumentChange, ...]:
    changes = []
    for document in request.documents:
        header = document.header
        doc_id = header.document_id.key
        set_id = header.set_id.key if header.set_id else None
        if request.action is Action.DELETE:
            changes.append(DocumentChange(DocumentAction.DELETE, doc_id, set_id,
                                          header.version_number, doc_id))
        elif request.action is Action.REPLACE and header.parent_document_ids:
            changes.append(DocumentChange(DocumentAction.REPLACE, doc_id, set_id,
                                          header.version_number,
                                          header.parent_document_ids[0].key))
        else:  # new, or a replacement whose CDA names no parent (already warned about)
            changes.append(DocumentChange(DocumentAction.NEW, doc_id, set_id,
                                          header.version_number))
    return tuple(changes)


def _prt_location(recipient: Recipient) -> ErrorLocation:
    return ErrorLocation("PRT", recipient.participant.prt_sequence, 15)


class CisisIntake:
    def __init__(self, settings: CisisSettings, checker: CdaChecker,
                 whitelist: Whitelist | None = None, *, returns_zams: bool = True) -> None:
        """`returns_zams`: the tenant reads its receipts ([tenants.receipts]) and returns
        ZAMs ([tenants.his]); without both, a request asking for them is told (W)."""
        self.settings = settings
        self.matrix = matrix_for(settings.sending_matrix)
        self.checker = checker
        self.whitelist = whitelist
        self.returns_zams = returns_zams

    def check(self, message: Message) -> DocumentVerdict:
        return self.verify(parse_document_request(message, matrix=self.matrix))

    def verify(self, request: DocumentRequest) -> DocumentVerdict:
        """Recipients (patient mailbox rule, trust space) and every CDA (XSD, schematron) of a
        request, parsed from a CI-SIS message or built by a legacy mapping."""
        warnings = [AckError(w.condition, w.severity, w.location, None, w.detail)
                    for w in request.warnings]
        request = self._check_recipients(request, warnings)
        reports: list[str] = []
        for document in request.documents:
            location = ErrorLocation("OBX", document.obx_sequence, 5)
            try:
                result = self.checker.check(document.content)
            except DocumentError as exc:
                if exc.location is None:
                    exc.location = location
                raise
            warnings.extend(replace(w, location=w.location or location) for w in result.warnings)
            if result.report:
                reports.append(f"--- OBX {document.obx_sequence}\n{result.report}")
        if request.metadata.destdmp and request.sending.route is MailRoute.NO_MAIL:
            # AA says the connector took the request in charge: here nothing would be done
            raise MessageError(
                "DESTDMP=Y with DESTMSSANTEPS=N and DESTMSSANTEPAT=N: a DMP-only request, and "
                "this connector does not feed the DMP", condition=ErrorCondition.APPLICATION_ERROR,
                application_error=ApplicationError.OTHER)
        if request.metadata.destdmp:
            log.info("dmp_feeding_skipped", control_id=request.origin.control_id)
            warnings.append(AckError(
                ErrorCondition.APPLICATION_ERROR, Severity.WARNING,
                detail="DESTDMP=Y: this connector does not feed the DMP; MSSante part only"))
        if not self.returns_zams:
            asked = [(name, zam) for name, zam, wanted in (
                ("ACK_RECEPTION", "ZAM^Z02", request.metadata.ack_reception),
                ("ACK_LECTURE_MSS", "ZAM^Z03", request.metadata.ack_lecture_mss)) if wanted]
            warnings.extend(AckError(
                ErrorCondition.APPLICATION_ERROR, Severity.WARNING,
                detail=f"{name}=Y: this tenant returns no {zam} (its [tenants.receipts] and "
                       "[tenants.his] are not both configured); the mails ask for them all the "
                       "same") for name, zam in asked)
        return DocumentVerdict(request, tuple(warnings), document_changes(request),
                               "\n".join(reports).encode() if reports else None)


    def _check_recipients(self, request: DocumentRequest, warnings: list[AckError]
                          ) -> DocumentRequest:
        """Patient mailboxes must be this patient's, built from a qualified INS; every address
        must be in the trust space.

        A production INS (NIR or NIA OID) that is not qualified (PID-32 other than VALI, or the
        identity traits missing from a CDA: `ins_qualified`) gets no patient mail: AE naming the
        PRT (ECO.2.2.6: patient addresses "DOIVENT" be built from qualified INS). The test and
        demo INS OIDs of the ANS examples stay accepted, with X-MSS-INS: N.

        Outside the trust space: AE naming the PRT, unless the tenant allows partial sending, in
        which case that recipient is withheld with a W warning (and AE if nobody is left)."""
        ins = request.patient.ins
        for recipient in request.sending.recipients:
            if recipient.kind is not RecipientKind.PATIENT:
                continue
            if ins is None or not is_patient_address_for(recipient.address, ins.value):
                raise _refused(recipient, "the patient mailbox is not <INS>@patient.mssante.fr"
                               " for the INS of PID-3", ApplicationError.INS_MISMATCH)
            if ins.ins_kind in QUALIFIED_INS_KINDS and not ins_qualified(request):
                raise _refused(recipient, "a patient mailbox needs a qualified INS (PID-32 VALI"
                               " and the identity traits in every CDA)", ApplicationError.OTHER)
        if self.whitelist is None:
            return request
        kept: list[Recipient] = []
        outside: list[Recipient] = []
        for recipient in request.sending.recipients:
            (kept if self.whitelist.contains_address(recipient.address) else outside).append(
                recipient)
        if not outside:
            return request
        detail = "recipient domain is not in the MSSante trust space (whitelist)"
        if not self.settings.partial_sending or not kept:
            first = outside[0]
            raise MessageError(
                f"PRT {first.participant.prt_sequence}: {detail}",
                condition=ErrorCondition.APPLICATION_ERROR, location=_prt_location(first),
                application_error=ApplicationError.OTHER)
        warnings.extend(AckError(ErrorCondition.APPLICATION_ERROR, Severity.WARNING,
                                 _prt_location(r), None, f"not sent: {detail}") for r in outside)
        sending = replace(request.sending, recipients=tuple(kept),
                          withheld=request.sending.withheld + tuple(outside))
        return replace(request, sending=sending)


def _refused(recipient: Recipient, why: str, error: ApplicationError) -> MessageError:
    """AE 207 at `recipient`'s PRT: `why` names the rule, never the address or the INS."""
    return MessageError(f"PRT {recipient.participant.prt_sequence}: {why}",
                        condition=ErrorCondition.APPLICATION_ERROR,
                        location=_prt_location(recipient), application_error=error)
