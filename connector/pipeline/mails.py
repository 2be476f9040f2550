"""A checked CI-SIS document request becomes its MSSanté e-mails: one per recipient.

`build_mails(request, context)` is a pure function: the same request and context give the same
bytes. For each entry of `request.sending.recipients` (the recipients the sending matrix and the
trust space kept), in that order, it composes (reference `cisis-hl7v2-to-mssante.md` §3,
`mssante-transport.md` §3):

* **IHE_XDM.zip** with every CDA of the request, byte for byte (`connector.xdm`):
  * action: NEW, or the extra metadata `action` = C (REPLACE) / D (DELETE);
  * confidentialityCode: the CDA's, then MASQUE_PS / INVISIBLE_PATIENT /
    INVISIBLE_REPRESENTANTS_LEGAUX for each metadata flag at Y (§1.10, §4.7);
  * SubmissionSet author: the PRT SB (PRT-5 person, PRT-8 organisation), else the first CDA's
    author (person, organisation); intendedRecipient: this
    mail's recipient only (its address, with its PRT-5 person or PRT-8 organisation);
  * patientId: the INS of PID-3 when there is one, else the IPP (PID-3 with CX-5 = PI) under its
    own OID or, without one, the establishment OID (`MailContext.establishment_oid`);
  * sourceId: the establishment OID; contentTypeCode from PV1-2; submissionTime and the zip
    entry dates: `MailContext.submitted_at`; SubmissionSet uniqueId: `2.25.<uuid>` (ITU-T X.667)
    of a name-based UUID over the request key and the recipient, so each mail's archive is a
    distinct, stable submission.
* **one PDF per CDA** (ECO.2.1.1, ECO.2.1.5), named by `pdf_attachment_name`, in document order;
  two identical names get `_2`, `_3`... before `.pdf`: the PDF the CDA embeds (`extract_pdf`:
  level-1 nonXMLBody PDF, or the level-3 section FR-Document-PDF-copie), else a PDF/A-1 rendered
  from it (`connector.cda.render`: a level-3 document without the PDF copy section, a level-1
  `text/plain` body). When no PDF can be rendered (the renderer's libraries are missing, or it
  fails) the mail is built with the other attachments and `OutgoingMail.missing_pdfs` says which
  documents and why: the caller applies the tenant's `MissingPdfPolicy` (`pipeline.outgoing`).
* **headers**: From = the tenant's application mailbox (and its display name); To = the
  recipient; Reply-To = PRT REPLY PRT-15.4; Subject `XDM/1.0/DDM+<libellé> <NOM> <prénom>
  <JJ/MM/AAAA>` from the CDA code display names (OBX-3.2 when a CDA code has none) and, from the
  first CDA's recordTarget, the birth name, first birth given name and birth date;
  X-MSS-CODECDA = the CDA `code/@code` values; X-MSS-INS (rule below); X-MSS-NIL = the tenant's
  NIL; `X-MSS-MES: FIN` on a patient mailbox when the NTE FIN note is present
  (`not request.patient_may_reply`); Disposition-Notification-To = From when ACK_LECTURE_MSS = Y.
* **body**: CORPSMAIL_PATIENT for the patient's mailbox, CORPSMAIL_PS for every other recipient
  (professional, organisation, application, unidentified); when that text is absent, the
  composer's default body for the action (new / replacement / deletion).

**X-MSS-INS = O** ("qualified INS", `ins_qualified`) when all of these hold, else N:

1. PID-3 carries an INS whose OID is the production NIR or NIA one (1.2.250.1.213.1.4.8 / .9).
   The test and demonstration OIDs (.10 / .11, used by every ANS example) are *not* qualified:
   such mails say N, which the MSSanté derogation tolerates between professionals;
2. PID-32 (identity reliability) is VALI;
3. every CDA of the archive carries that INS in recordTarget/patientRole/id together with the four
   traits of a qualified identity: birth name, first given name, birth date and sex.

INSi verification itself is not visible in the message: a VALI identity with a production INS is
taken as qualified.

Errors are `MessageError` subclasses carrying ERR data and no patient data (`DocumentError` for a
CDA that cannot be packaged, `ProfileError` for a missing name or patient identifier,
`InvalidAddressError` for an unusable PRT-15 address), located on the OBX or PRT at fault when
known. A tenant without an establishment OID is a `ConfigError` (see `MailContext.for_tenant`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final

from connector.cda.header import CdaHeader, InstanceId
from connector.cda.pdf import extract_pdf, pdf_attachment_name
from connector.cda.render import render_pdf
from connector.cisis.model import (
    Action,
    CdaDocument,
    DocumentRequest,
    InsKind,
    MailBodies,
    OrganisationRef,
    Participant,
    PersonRef,
    Recipient,
    RecipientKind,
)
from connector.directory.whitelist import InvalidAddressError, MailAddress, parse_address
from connector.errors import (
    ConfigError,
    DocumentError,
    ErrorLocation,
    MessageError,
    PdfRendererUnavailable,
    PdfRenditionError,
    ProfileError,
)
from connector.mail.compose import Attachment, MailAction, MailSpec, render_mail
from connector.mail.subject import SubjectInput, build_subject
from connector.settings import TenantSettings
from connector.xdm import (
    ExtraConfidentiality,
    Institution,
    IntendedRecipient,
    Person,
    SubmissionAuthor,
    XdmAction,
    XdmDocument,
    XdmProducer,
    XdmSubmission,
    build_xdm_zip,
    content_type_for_patient_class,
)

#: INS kinds that can be qualified (production NIR and NIA); test and demo OIDs cannot.
QUALIFIED_INS_KINDS: Final = frozenset({InsKind.NIR, InsKind.NIA})
#: Identity reliability code (PID-32) of a validated identity.
VALIDATED_IDENTITY: Final = "VALI"

_OID: Final = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_SUBMISSION_NAMESPACE: Final = uuid.UUID("6f1d3c52-8a0e-5b1f-9c47-2d5e8b3a9f10")

_MAIL_ACTIONS: Final = {
    Action.NEW: MailAction.NEW,
    Action.REPLACE: MailAction.REPLACEMENT,
    Action.DELETE: MailAction.DELETION,
}
_XDM_ACTIONS: Final = {
    Action.NEW: XdmAction.NEW,
    Action.REPLACE: XdmAction.REPLACE,
    Action.DELETE: XdmAction.DELETE,
}


# -- inputs and outputs ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class MailContext:
    """What the mails need besides the request: who sends, and this request's identity.

    * `mailbox`: the tenant's application mailbox (From, Disposition-Notification-To);
    * `establishment_oid`: XDSSubmissionSet.sourceId, and the authority of an IPP without OID;
    * `request_key`: unique to the stored inbound request **and not guessable** (the caller's
      UUID of that row, never the bare MSH-10): the Message-IDs hash it with the recipient
      address, which for a patient is their INS;
    * `submitted_at`: timezone-aware; the mails' Date, the XDS submissionTime, the zip dates.
    """

    mailbox: MailAddress
    establishment_oid: str
    request_key: str
    submitted_at: datetime
    producer: XdmProducer
    mailbox_display_name: str | None = None
    nil: str | None = None

    def __post_init__(self) -> None:
        if not self.request_key:
            raise ValueError("the request key is empty")
        if self.submitted_at.tzinfo is None or self.submitted_at.utcoffset() is None:
            raise ValueError("the submission time must carry a time zone")
        if not _OID.fullmatch(self.establishment_oid):
            raise ValueError("the establishment OID is not an OID")

    def __repr__(self) -> str:  # the request key stays out of logs
        return f"MailContext(mailbox={self.mailbox!r}, oid={self.establishment_oid})"

    @classmethod
    def for_tenant(
        cls,
        tenant: TenantSettings,
        *,
        request_key: str,
        submitted_at: datetime,
        producer: XdmProducer | None = None,
    ) -> MailContext:
        """The context of `tenant`; `ConfigError` when its mailbox or OID cannot be used."""
        key = f"tenants[{tenant.id}]"
        if tenant.oid is None:
            raise ConfigError(f"{key}.oid", "is required to build IHE_XDM archives "
                                            "(XDSSubmissionSet.sourceId)")
        try:
            mailbox = parse_address(tenant.mailbox.address)
        except InvalidAddressError as exc:
            raise ConfigError(f"{key}.mailbox.address", exc.detail) from exc
        return cls(
            mailbox=mailbox,
            establishment_oid=tenant.oid,
            request_key=request_key,
            submitted_at=submitted_at,
            producer=producer or XdmProducer(
                organization=tenant.name, contact=tenant.mailbox.contact or tenant.mailbox.address),
            mailbox_display_name=tenant.mailbox.display_name,
            nil=tenant.mailbox.nil,
        )


@dataclass(frozen=True, slots=True)
class MissingPdf:
    """A CDA that embeds no PDF and for which none could be rendered. `problem`: why (a
    `PdfRenditionError` text: the cause, never the content); `renderer_unavailable`: because this
    host cannot render PDFs at all, not because of this CDA."""

    obx_sequence: int
    problem: str
    renderer_unavailable: bool = False


@dataclass(frozen=True, slots=True, repr=False)
class OutgoingMail:
    """One e-mail to one recipient, ready to hand to SMTP, with its parts kept for inspection.

    `index`: 1-based position in `request.sending.recipients`. `content`: the RFC 5322 message,
    CRLF line endings. `missing_pdfs`: the CDAs this mail carries without a PDF rendition (see
    the module docstring), in document order.
    """

    index: int
    recipient: MailAddress
    kind: RecipientKind
    prt_sequence: int
    message_id: str
    content: bytes
    xdm_zip: bytes
    pdfs: tuple[Attachment, ...] = ()
    missing_pdfs: tuple[MissingPdf, ...] = ()

    @property
    def documents_without_pdf(self) -> tuple[int, ...]:
        """The OBX sequences (OBX-1 order of the message) of the CDAs sent without a PDF."""
        return tuple(missing.obx_sequence for missing in self.missing_pdfs)

    def __repr__(self) -> str:  # no address (a patient's carries the INS), no content
        return (
            f"OutgoingMail(index={self.index}, kind={self.kind.value}, "
            f"message_id={self.message_id}, size={len(self.content)}, "
            f"pdfs={len(self.pdfs)}, without_pdf={self.documents_without_pdf})"
        )


# -- the request-wide parts ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Common:
    """What every mail of a request shares."""

    xdm_documents: tuple[XdmDocument, ...]
    cda_codes: tuple[str, ...]
    subject: SubjectInput
    pdfs: tuple[Attachment, ...]
    missing_pdfs: tuple[MissingPdf, ...]
    patient_id: InstanceId
    author: SubmissionAuthor | None
    extra_confidentiality: tuple[ExtraConfidentiality, ...]
    ins_qualified: bool
    reply_to: MailAddress | None


def build_mails(request: DocumentRequest, context: MailContext) -> tuple[OutgoingMail, ...]:
    """The e-mails of `request`, one per `request.sending.recipients` entry, in that order."""
    recipients = request.sending.recipients
    if not recipients:
        return ()
    common = _common(request, context)
    return tuple(
        _mail(request, context, common, index, recipient)
        for index, recipient in enumerate(recipients, start=1)
    )


def _common(request: DocumentRequest, context: MailContext) -> _Common:
    subject = _subject(request.documents)
    cda_codes = tuple(_cda_code(d) for d in request.documents)
    pdfs, missing = _renditions(request.documents)
    return _Common(
        xdm_documents=tuple(XdmDocument(d.content, d.header) for d in request.documents),
        cda_codes=cda_codes,
        subject=subject,
        pdfs=pdfs,
        missing_pdfs=missing,
        patient_id=patient_id(request, context.establishment_oid),
        author=_submission_author(request.sender) or _document_author(request.documents[0]),
        extra_confidentiality=extra_confidentiality(request),
        ins_qualified=ins_qualified(request),
        reply_to=_reply_to(request.reply_to),
    )


def _mail(
    request: DocumentRequest,
    context: MailContext,
    common: _Common,
    index: int,
    recipient: Recipient,
) -> OutgoingMail:
    to_address = _recipient_address(recipient)
    xdm_zip = build_xdm_zip(_submission(request, context, common, recipient, to_address))
    spec = _mail_spec(request, context, common, recipient, to_address, xdm_zip)
    return OutgoingMail(
        index=index,
        recipient=to_address,
        kind=recipient.kind,
        prt_sequence=recipient.participant.prt_sequence,
        message_id=spec.message_id,
        content=render_mail(spec),
        xdm_zip=xdm_zip,
        pdfs=common.pdfs,
        missing_pdfs=common.missing_pdfs,
    )


def _mail_spec(
    request: DocumentRequest,
    context: MailContext,
    common: _Common,
    recipient: Recipient,
    to_address: MailAddress,
    xdm_zip: bytes,
) -> MailSpec:
    return MailSpec(
        from_address=context.mailbox,
        to_address=to_address,
        subject=common.subject,
        date=context.submitted_at,
        request_key=context.request_key,
        action=_MAIL_ACTIONS[request.action],
        from_display_name=context.mailbox_display_name,
        reply_to=common.reply_to,
        cda_codes=common.cda_codes,
        ins_qualified=common.ins_qualified,
        nil=context.nil,
        no_reply=not request.patient_may_reply,
        read_receipt=request.metadata.ack_lecture_mss,
        body_text=body_for(recipient.kind, request.bodies),
        xdm_zip=xdm_zip,
        pdfs=common.pdfs,
    )


def _submission(
    request: DocumentRequest,
    context: MailContext,
    common: _Common,
    recipient: Recipient,
    to_address: MailAddress,
) -> XdmSubmission:
    return XdmSubmission(
        documents=common.xdm_documents,
        patient_id=common.patient_id,
        source_id=context.establishment_oid,
        unique_id=submission_unique_id(context.request_key, to_address),
        submission_time=context.submitted_at,
        content_type=content_type_for_patient_class(request.patient_class),
        producer=context.producer,
        action=_XDM_ACTIONS[request.action],
        extra_confidentiality=common.extra_confidentiality,
        author=common.author,
        intended_recipients=(_intended_recipient(recipient, to_address),),
    )


# -- rules -----------------------------------------------------------------------------------------


def body_for(kind: RecipientKind, bodies: MailBodies) -> str | None:
    """CORPSMAIL_PATIENT for the patient, CORPSMAIL_PS for everyone else; None: default body."""
    return bodies.patient if kind is RecipientKind.PATIENT else bodies.ps


def ins_qualified(request: DocumentRequest) -> bool:
    """X-MSS-INS: the rule in the module docstring (production INS, VALI, traits in every CDA)."""
    ins = request.patient.ins
    if ins is None or ins.oid is None or ins.ins_kind not in QUALIFIED_INS_KINDS:
        return False
    if request.patient.identity_status.strip().upper() != VALIDATED_IDENTITY:
        return False
    wanted = InstanceId(ins.oid, ins.value)
    return all(_has_qualified_traits(d.header, wanted) for d in request.documents)


def _has_qualified_traits(header: CdaHeader, ins: InstanceId) -> bool:
    patient = header.patient
    if ins not in header.patient_ids or patient is None:
        return False
    return all((
        patient.birth_family_name,
        patient.first_birth_given_name or patient.birth_given_names,
        patient.birth_time,
        patient.sex,
    ))


def patient_id(request: DocumentRequest, establishment_oid: str) -> InstanceId:
    """XDS patientId: the INS of PID-3, else the IPP under its OID or the establishment's."""
    ins = request.patient.ins
    if ins is not None and ins.oid:
        return InstanceId(ins.oid, ins.value)
    ipp = request.patient.ipp
    if ipp is not None and ipp.value:  # CX-4.2 may hold a local code rather than an OID
        root = ipp.oid if ipp.oid and _OID.fullmatch(ipp.oid) else establishment_oid
        return InstanceId(root, ipp.value)
    raise ProfileError(
        "PID-3 has neither an INS nor an IPP (CX-5 = PI) for the XDS patientId",
        location=ErrorLocation("PID", 1, 3),
    )


def extra_confidentiality(request: DocumentRequest) -> tuple[ExtraConfidentiality, ...]:
    """The JDV_J08 codes the MetaDMPMSS flags at Y add to the CDA's confidentialityCode."""
    metadata = request.metadata
    flags = (
        (metadata.masque_ps, ExtraConfidentiality.MASQUE_PS),
        (metadata.invisible_patient, ExtraConfidentiality.INVISIBLE_PATIENT),
        (metadata.invisible_rep_legaux, ExtraConfidentiality.INVISIBLE_REPRESENTANTS_LEGAUX),
    )
    return tuple(code for on, code in flags if on)


def submission_unique_id(request_key: str, recipient: MailAddress) -> str:
    """`2.25.<n>`: the UUID-derived OID of this (request, recipient) archive (ITU-T X.667)."""
    name = f"{request_key}\x00{str(recipient).lower()}"
    return f"2.25.{uuid.uuid5(_SUBMISSION_NAMESPACE, name).int}"


# -- documents: codes, subject, PDF renditions -----------------------------------------------------


@contextmanager
def _located(location: ErrorLocation) -> Iterator[None]:
    """Give a MessageError raised inside the block `location` when it has none."""
    try:
        yield
    except MessageError as exc:
        if exc.location is None:
            exc.location = location
        raise


def _obx(document: CdaDocument) -> ErrorLocation:
    return ErrorLocation("OBX", document.obx_sequence, 5)


def _cda_code(document: CdaDocument) -> str:
    code = document.header.code
    if code is None:
        raise DocumentError(
            f"OBX {document.obx_sequence}: CDA code/@code is missing (X-MSS-CODECDA)",
            location=_obx(document),
        )
    return code.code


def _label(document: CdaDocument) -> str:
    code = document.header.code
    return (code.display_name if code else None) or document.type_code.label


def _subject(documents: tuple[CdaDocument, ...]) -> SubjectInput:
    first = documents[0]
    patient = first.header.patient
    with _located(_obx(first)):
        if patient is None:
            raise ProfileError("CDA recordTarget/patientRole/patient is missing (subject)")
        given = patient.first_birth_given_name or (
            patient.birth_given_names.split()[0] if patient.birth_given_names else None
        )
        subject = SubjectInput(
            document_labels=tuple(_label(d) for d in documents),
            birth_name=patient.birth_family_name or "",
            given_name=given or patient.used_given_name or "",
            birth_date=_birth_date(patient.birth_time),
        )
        build_subject(subject)  # a missing name fails here, located on the first CDA
        return subject


def _birth_date(birth_time: str | None) -> date | None:
    """YYYYMMDD of an HL7 TS; None when absent or less precise than a day."""
    if not birth_time or len(birth_time) < 8 or not birth_time[:8].isdigit():
        return None
    try:
        return datetime.strptime(birth_time[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _renditions(
    documents: tuple[CdaDocument, ...],
) -> tuple[tuple[Attachment, ...], tuple[MissingPdf, ...]]:
    """The PDF attachments in document order, and the CDAs without one."""
    pdfs: list[Attachment] = []
    missing: list[MissingPdf] = []
    for document in documents:
        with _located(_obx(document)):
            root = document.root()
            content = extract_pdf(root)
            if content is None:
                try:
                    content = render_pdf(root, document.header)
                except PdfRenditionError as exc:
                    missing.append(MissingPdf(document.obx_sequence, str(exc),
                                              isinstance(exc, PdfRendererUnavailable)))
                    continue
            pdfs.append(Attachment(pdf_attachment_name(document.header), content))
    return _distinct_names(pdfs), tuple(missing)


def _distinct_names(pdfs: list[Attachment]) -> tuple[Attachment, ...]:
    """Rename the 2nd, 3rd... attachment of a same name `<stem>_2.pdf`, `<stem>_3.pdf`..."""
    seen: dict[str, int] = {}
    result = []
    for pdf in pdfs:
        count = seen.get(pdf.filename, 0) + 1
        seen[pdf.filename] = count
        stem = pdf.filename.removesuffix(".pdf")
        result.append(pdf if count == 1 else Attachment(f"{stem}_{count}.pdf", pdf.content))
    return tuple(result)


# -- participants ----------------------------------------------------------------------------------


def _prt_address(text: str, participant: Participant) -> MailAddress:
    sequence = participant.prt_sequence
    try:
        return parse_address(text)
    except InvalidAddressError as exc:
        raise InvalidAddressError(
            f"PRT {sequence}: PRT-15.4 {exc.detail}", location=ErrorLocation("PRT", sequence, 15)
        ) from exc


def _recipient_address(recipient: Recipient) -> MailAddress:
    return _prt_address(recipient.address, recipient.participant)


def _reply_to(participant: Participant | None) -> MailAddress | None:
    if participant is None or not participant.address:
        return None
    return _prt_address(participant.address, participant)


def _person(ref: PersonRef | None) -> Person | None:
    """PRT-5 as an XDS person; the id without its authority when XCN-9 holds no OID."""
    if ref is None or not ref.id:
        return None
    oid = ref.authority_oid
    ident = InstanceId(oid, ref.id) if oid and _OID.fullmatch(oid) else InstanceId(ref.id)
    return Person(
        id=ident,
        family=ref.family_name or None,
        given=ref.given_name or None,
        id_type=ref.id_type or None,
    )


def _institution(ref: OrganisationRef | None) -> Institution | None:
    """PRT-8 as an XDS institution; XON-6 is used as the id's authority when it is an OID."""
    if ref is None or not (ref.name or ref.id):
        return None
    ident = None
    if ref.id:
        authority = ref.authority
        ident = InstanceId(authority, ref.id) if _OID.fullmatch(authority) else InstanceId(ref.id)
    return Institution(name=ref.name, id=ident, id_type=ref.id_type or "IDNST")


def _submission_author(sender: Participant | None) -> SubmissionAuthor | None:
    if sender is None:
        return None
    person, institution = _person(sender.person), _institution(sender.organisation)
    if person is None and institution is None:
        return None
    return SubmissionAuthor(person=person, institution=institution)


def _document_author(document: CdaDocument) -> SubmissionAuthor | None:
    """Without a sender PRT (SB, conditional in the volet), the SubmissionSet author (required
    in the XDM metadata) is the first CDA's first author: its person, its organisation."""
    author = next(iter(document.header.authors), None)
    if author is None:
        return None
    person = None
    if author.id is not None and author.id.extension:
        name = author.person_name
        person = Person(id=author.id, family=name.family if name else None,
                        given=name.given[0] if name and name.given else None)
    organization = author.organization
    institution = None
    if organization is not None and (organization.name or organization.id):
        institution = Institution(name=organization.name or "", id=organization.id)
    if person is None and institution is None:
        return None
    return SubmissionAuthor(person=person, institution=institution)


def _intended_recipient(recipient: Recipient, address: MailAddress) -> IntendedRecipient:
    participant = recipient.participant
    return IntendedRecipient(
        address=str(address),
        person=_person(participant.person),
        institution=_institution(participant.organisation),
    )
