"""CI-SIS request → MSSanté e-mails, on every ANS example that can pass intake.

The requests come from the real intake (`CisisIntake.check`, ANS-examples sending matrix, no CDA
validator, a trust space with the example domains). Examples that intake refuses for their
content are corrected in memory, never copied: the placeholder CDAs are replaced by the CDA files
next to them (or, for the ORU replacement, by the CDAs of the base64 variant), and the ORU
replacement / deletion get a PID-3 and a patient PRT naming the patient of their CDAs.
"""

from __future__ import annotations

import base64
import email.policy
import hashlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.parser import BytesParser
from functools import cache
from io import BytesIO
from pathlib import Path

import pytest
import structlog
from lxml import etree

from connector.cda.header import HL7_NS, InstanceId, read_cda_header
from connector.cda.policy import MissingPdfPolicy
from connector.cda.safe_xml import parse_xml
from connector.cisis.model import Action, DocumentRequest, PatientIdentifier, RecipientKind
from connector.cli.send_cmd import split_messages
from connector.directory.whitelist import InvalidAddressError, parse_address, parse_whitelist
from connector.errors import (
    ConfigError,
    DocumentError,
    ErrorLocation,
    MessageError,
    PdfRendererUnavailable,
    PdfRenditionError,
    PdfRequiredError,
    ProfileError,
)
from connector.hl7.codes import ApplicationError, ErrorCondition, Severity
from connector.hl7.message import parse_message
from connector.mail.compose import BODY_NOTICES, DEFAULT_BODIES, MailAction, make_message_id
from connector.pipeline import mails as mails_module
from connector.pipeline.documents import CisisIntake, UnconfiguredCdaChecker
from connector.pipeline.mails import (
    MailContext,
    MissingPdf,
    OutgoingMail,
    build_mails,
    ins_qualified,
    patient_id,
)
from connector.pipeline.outgoing import MailPlanner
from connector.settings import (
    CisisSettings,
    MailboxSettings,
    SendingMatrixProfile,
    TenantSettings,
    TransportSettings,
)
from connector.xdm import metadata as md
from connector.xdm.archive import METADATA_PATH, SUBSET_DIR
from tests.conftest import CISIS_FIXTURES, skip_without_pdf_renderer
from tests.unit.xdm import coded, external_id, one, slot, xpath

MAILBOX = "pfi-auto@ch-exemple.mssante.fr"
DISPLAY_NAME = "CH Exemple - PFI"
NIL = "DEV935997"
TENANT_OID = "1.2.250.1.999.1"
KEY = "9b0f4f7e-2a7c-4c1e-8d2f-5f3e6a7b8c9d"
SUBMITTED_AT = datetime(2024, 5, 6, 10, 11, 12, tzinfo=timezone(timedelta(hours=2)))
TENANT = TenantSettings(
    id="chu-test", name="CH Exemple", finess=None, application="PFI", facility="CHX",
    listeners=(), transport=TransportSettings(),
    mailbox=MailboxSettings(MAILBOX, DISPLAY_NAME, NIL), oid=TENANT_OID,
)
CONTEXT = MailContext.for_tenant(TENANT, request_key=KEY, submitted_at=SUBMITTED_AT)
WHITELIST = parse_whitelist(
    b'<ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema">'
    b"<DateDeGeneration>2025-03-13T00:00:00Z</DateDeGeneration><ListeDomaines>"
    b"<Domaine><Nom>test-ci-sis.mssante.fr</Nom></Domaine>"
    b"<Domaine><Nom>patient.mssante.fr</Nom></Domaine></ListeDomaines></ListeBlancheMSSante>",
    source=Path("whitelist-for-tests.xml"),
)
INTAKE = CisisIntake(CisisSettings(sending_matrix=SendingMatrixProfile.ANS_EXAMPLES),
                     UnconfiguredCdaChecker(), WHITELIST)

DOCTOR = "adam.hoda@test-ci-sis.mssante.fr"
PAT_TROIS = "279035121518989"  # INS-NIR de test (OID .10) of the ANS examples
NESSI = "277076322082910"  # production-OID INS (.8) of the ORU replacement / deletion CDAs
IMAGING_BODY = "Cher confrère, vous trouverez ci-joint le CR d’imagerie de M.Dupont"
PS_TEXT = "Cher confrère,\nveuillez trouver ci-joint les résultats de Mme X.\n"
PATIENT_TEXT = "Bonjour,\nvos résultats d'analyses sont disponibles ci-joint.\n"


# -- building the messages -------------------------------------------------------------------------


def segments(relative: str) -> list[str]:
    (payload,) = split_messages((CISIS_FIXTURES / relative).read_bytes())
    return payload.decode("utf-8").rstrip("\r").split("\r")


def field(segment: str, position: int) -> str:
    fields = segment.split("|")
    return fields[position] if position < len(fields) else ""


def with_field(segment: str, position: int, value: str) -> str:
    fields = segment.split("|")
    fields += [""] * (position + 1 - len(fields))
    fields[position] = value
    return "|".join(fields)


def is_document_obx(segment: str) -> bool:
    return segment.startswith("OBX|") and "^XML^Base64^" in field(segment, 5)


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def carried_documents(segs: list[str]) -> list[bytes]:
    return [unb64(field(s, 5).split("^")[4]) for s in segs if is_document_obx(s)]


def with_documents(segs: list[str], documents: list[bytes]) -> list[str]:
    remaining = iter(documents)
    result = []
    for segment in segs:
        if is_document_obx(segment):
            parts = field(segment, 5).split("^")
            parts[4] = base64.b64encode(next(remaining)).decode("ascii")
            segment = with_field(segment, 5, "^".join(parts))
        result.append(segment)
    return result


def to_cda_patient(segs: list[str], cda: bytes) -> list[str]:
    """PID-3/PID-5 and the patient PRT (PRT-5, PRT-15) rewritten to the CDA's patient."""
    header = read_cda_header(parse_xml(cda))
    ins, patient = header.ins, header.patient
    assert ins is not None
    assert ins.extension
    assert patient is not None
    names = f"{patient.birth_family_name}^{patient.first_birth_given_name}"
    result = []
    for segment in segs:
        if segment.startswith("PID|"):
            segment = with_field(segment, 3, f"{ins.extension}^^^&{ins.root}&ISO^INS")
            segment = with_field(segment, 5, names)
        elif segment.startswith("PRT|") and "@patient.mssante.fr" in segment:
            xcn = f"{ins.extension}^{names}^^^^^^&{ins.root}&ISO^L^^^INS"
            segment = with_field(segment, 5, xcn)
            segment = with_field(segment, 15, f"^^X.400^{ins.extension}@patient.mssante.fr")
        result.append(segment)
    return result


def oru_corrected(relative: str, cdas_from: str | None = None) -> list[str]:
    documents = carried_documents(segments(cdas_from or relative))
    return to_cda_patient(with_documents(segments(relative), documents), documents[0])


def oru_initial() -> list[str]:
    folder = CISIS_FIXTURES / "oru-r01-initial"
    documents = [(folder / "document-n1.xml").read_bytes(),
                 (folder / "document-n3.xml").read_bytes()]
    return with_documents(segments("oru-r01-initial/message.hl7"), documents)


def mdm_t02_placeholder() -> list[str]:
    document = (CISIS_FIXTURES / "mdm-t02-initial" / "document.xml").read_bytes()
    return with_documents(segments("mdm-t02-initial/message-placeholder-cda.er7"), [document])


def checked(segs: list[str]) -> DocumentRequest:
    return INTAKE.check(parse_message("\r".join(segs) + "\r")).request


# -- the golden cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    message: Callable[[], list[str]]
    recipients: tuple[tuple[RecipientKind, str], ...]
    action: Action
    codes: str
    ins: str
    subject: str
    reply_to: str | None
    read_receipt: bool
    ps_body: str | None  # None: the default body of the action
    extra_confidentiality: tuple[str, ...]
    pdf_names: tuple[str, ...]
    without_pdf: tuple[int, ...]
    patient_cx: str
    author: tuple[str, str]


def _mdm(message: Callable[[], list[str]], action: Action, extra: tuple[str, ...] = ()) -> Case:
    return Case(
        message=message,
        recipients=((RecipientKind.PROFESSIONAL, DOCTOR),),
        action=action,
        codes="18748-4",
        ins="N",
        subject="XDM/1.0/DDM+CR d'imagerie médicale PAT-TROIS DOMINIQUE 28/03/1979",
        reply_to=None,
        read_receipt=False,
        ps_body=IMAGING_BODY,
        extra_confidentiality=extra,
        pdf_names=("20230227_CR d'imagerie médicale_PAT-TROIS_DOMINIQUE.pdf",),
        without_pdf=(),
        patient_cx=f"{PAT_TROIS}^^^&1.2.250.1.213.1.4.10&ISO^NH",
        author=("801234564895^Eric^Thomas^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
                "Organisation-Y^^^^^&1.2.250.1.71.4.2.2&ISO^FINEG^^^300017985"),
    )


_ORU_AUTHOR = ("801234567866^DIAZ^Thierry^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
               "labo^^^^^&1.2.250.1.71.4.2.2&ISO^FINEG^^^1120459876")


def _oru_nessi(message: Callable[[], list[str]], action: Action) -> Case:
    return Case(
        message=message,
        recipients=((RecipientKind.PROFESSIONAL, DOCTOR),
                    (RecipientKind.PATIENT, f"{NESSI}@patient.mssante.fr")),
        action=action,
        codes="11502-2,11502-2",
        ins="O",
        subject="XDM/1.0/DDM+2 documents NESSI RUTH 14/07/1977",
        reply_to=DOCTOR,
        read_receipt=False,
        ps_body=None,  # the examples' CORPSMAIL_PS base64 is cut short: default body
        extra_confidentiality=(),
        # the level-3 CDA has no FR-Document-PDF-copie section: its PDF is rendered
        pdf_names=("20210104_CR d'examens biologiques_NESSI_RUTH.pdf",
                   "20210104_CR d'examens biologiques_NESSI_RUTH_2.pdf"),
        without_pdf=(),
        patient_cx=f"{NESSI}^^^&1.2.250.1.213.1.4.8&ISO^NH",
        author=_ORU_AUTHOR,
    )


CASES: dict[str, Case] = {
    "mdm-t02-initial": _mdm(lambda: segments("mdm-t02-initial/message.er7"), Action.NEW,
                            ("INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX")),
    "mdm-t02-initial-placeholder-corrected": _mdm(
        mdm_t02_placeholder, Action.NEW, ("INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX")),
    "mdm-t10-replace": _mdm(lambda: segments("mdm-t10-replace/message.er7"), Action.REPLACE),
    "mdm-t04-delete": _mdm(lambda: segments("mdm-t04-delete/message.er7"), Action.DELETE),
    "oru-r01-initial-placeholder-corrected": Case(
        message=oru_initial,
        recipients=((RecipientKind.PROFESSIONAL, DOCTOR),
                    (RecipientKind.PATIENT, f"{PAT_TROIS}@patient.mssante.fr")),
        action=Action.NEW,
        codes="11502-2,11502-2",
        ins="N",
        subject="XDM/1.0/DDM+2 documents PAT-TROIS DOMINIQUE 28/03/1979",
        reply_to=DOCTOR,
        read_receipt=True,
        ps_body=None,
        extra_confidentiality=(),
        pdf_names=("20210104_CR d'examens biologiques_PAT-TROIS_DOMINIQUE.pdf",
                   "20210104_CR d'examens biologiques_PAT-TROIS_DOMINIQUE_2.pdf"),
        without_pdf=(),
        patient_cx=f"{PAT_TROIS}^^^&1.2.250.1.213.1.4.10&ISO^NH",
        author=_ORU_AUTHOR,
    ),
    "oru-r01-replace-patient-corrected": _oru_nessi(
        lambda: oru_corrected("oru-r01-replace/message.er7"), Action.REPLACE),
    "oru-r01-replace-placeholder-corrected": _oru_nessi(
        lambda: oru_corrected("oru-r01-replace/message-placeholder-cda.er7",
                              cdas_from="oru-r01-replace/message.er7"), Action.REPLACE),
    "oru-r01-delete-patient-corrected": _oru_nessi(
        lambda: oru_corrected("oru-r01-delete/message.er7"), Action.DELETE),
}
_MAIL_ACTION = {Action.NEW: MailAction.NEW, Action.REPLACE: MailAction.REPLACEMENT,
                Action.DELETE: MailAction.DELETION}
_SLOT = {Action.NEW: [], Action.REPLACE: ["C"], Action.DELETE: ["D"]}


@cache
def request_for(name: str) -> DocumentRequest:
    return checked(CASES[name].message())


def mails_for(name: str) -> tuple[OutgoingMail, ...]:
    if any(embedded_pdf(source) is None for source in sources_for(name)):
        skip_without_pdf_renderer()
    return _mails_for(name)


@cache
def _mails_for(name: str) -> tuple[OutgoingMail, ...]:
    return build_mails(request_for(name), CONTEXT)


def sources_for(name: str) -> list[bytes]:
    """The CDA bytes the (corrected) message carries, read back from its OBX-5.5."""
    return carried_documents(CASES[name].message())


# -- reading mails back ----------------------------------------------------------------------------


def parse(content: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(content)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> list[EmailMessage]:
    return list(message.iter_parts())  # type: ignore[arg-type]


def body_text(message: EmailMessage) -> str:
    text = parts(message)[0].get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n").rstrip("\n")


def attachment(message: EmailMessage, filename: str) -> bytes:
    (part,) = [p for p in parts(message) if p.get_filename() == filename]
    content = part.get_content()
    assert isinstance(content, bytes)
    return content


def embedded_pdf(cda: bytes) -> bytes | None:
    """The level-1 PDF of a CDA, decoded here without `connector.cda.pdf`."""
    root = etree.fromstring(cda, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    texts = root.xpath("h:component/h:nonXMLBody/h:text[@mediaType='application/pdf']",
                       namespaces={"h": HL7_NS})
    assert isinstance(texts, list)
    if not texts:
        return None
    element = texts[0]
    assert isinstance(element, etree._Element)
    text = "".join(t for t in element.itertext() if isinstance(t, str))
    return base64.b64decode("".join(text.split()))


def open_zip(data: bytes) -> zipfile.ZipFile:
    return zipfile.ZipFile(BytesIO(data))


def expected_body(case: Case, kind: RecipientKind) -> str:
    """The sender's CORPSMAIL text after the replacement or deletion notice, else the default
    body of the action."""
    action = _MAIL_ACTION[case.action]
    text = case.ps_body if kind is not RecipientKind.PATIENT else None
    if not text:
        return DEFAULT_BODIES[action].rstrip("\n")
    return (BODY_NOTICES.get(action, "") + text).rstrip("\n")


# -- golden tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_golden_headers_and_mime_tree(name: str) -> None:
    case = CASES[name]
    mails = mails_for(name)
    assert [(m.kind, str(m.recipient)) for m in mails] == list(case.recipients)
    for mail in mails:
        message = parse(mail.content)
        assert message["From"] == f"{DISPLAY_NAME} <{MAILBOX}>"
        assert message["To"] == str(mail.recipient)
        assert message["Message-ID"] == mail.message_id
        assert message["Date"] == "Mon, 06 May 2024 10:11:12 +0200"
        assert message["Subject"] == case.subject
        assert message["X-MSS-CODECDA"] == case.codes
        assert message["X-MSS-INS"] == case.ins
        assert message["X-MSS-NIL"] == NIL
        assert message["X-MSS-MES"] is None  # no ANS example carries the NTE FIN note
        assert message["Reply-To"] == case.reply_to
        assert message["Disposition-Notification-To"] == (MAILBOX if case.read_receipt else None)
        assert message.get_content_type() == "multipart/mixed"
        assert [p.get_content_type() for p in parts(message)] == [
            "text/plain", "application/zip", *["application/pdf"] * len(case.pdf_names)]
        assert [p.get_filename() for p in parts(message)[1:]] == ["IHE_XDM.zip", *case.pdf_names]
        assert body_text(message) == expected_body(case, mail.kind)
        assert mail.documents_without_pdf == case.without_pdf


@pytest.mark.parametrize("name", CASES)
def test_golden_archive_and_metadata_match_the_cdas(name: str) -> None:
    case = CASES[name]
    sources = sources_for(name)
    for mail in mails_for(name):
        archive = open_zip(mail.xdm_zip)
        documents = [f"{SUBSET_DIR}DOC{i:04d}.XML" for i in range(1, len(sources) + 1)]
        assert archive.namelist() == ["IHE_XDM/", SUBSET_DIR, "README.TXT", "INDEX.HTM",
                                      METADATA_PATH, *documents]
        metadata = parse_xml(archive.read(METADATA_PATH))
        entries = xpath(metadata, "rim:RegistryObjectList/rim:ExtrinsicObject")
        assert len(entries) == len(sources)
        for entry, source in zip(entries, sources, strict=True):
            (uri,) = slot(entry, "URI")
            stored = archive.read(SUBSET_DIR + uri)
            assert stored == source
            assert slot(entry, "hash") == [hashlib.sha1(stored, usedforsecurity=False).hexdigest()]
            assert slot(entry, "size") == [str(len(stored))]
            header = read_cda_header(parse_xml(source))
            assert header.code is not None
            assert header.confidentiality is not None
            assert external_id(entry, md.DE_UNIQUE_ID) == header.document_id.root
            assert external_id(entry, md.DE_PATIENT_ID) == case.patient_cx
            assert [c[0] for c in coded(entry, md.DE_TYPE_CODE)] == [header.code.code]
            assert [c[0] for c in coded(entry, md.DE_CONFIDENTIALITY_CODE)] == [
                header.confidentiality.code, *case.extra_confidentiality]
            assert slot(entry, "action") == _SLOT[case.action]
        submission = one(metadata, "rim:RegistryObjectList/rim:RegistryPackage")
        (intended,) = slot(submission, "intendedRecipient")
        assert intended.endswith(f"|^^Internet^{mail.recipient}")
        if mail.kind is RecipientKind.PROFESSIONAL:
            assert intended.startswith("|801234567897^Hoda^Adam^")
        author = one(submission, f"rim:Classification[@classificationScheme='{md.SS_AUTHOR}']")
        assert (slot(author, "authorPerson"), slot(author, "authorInstitution")) == (
            [case.author[0]], [case.author[1]])
        assert external_id(submission, md.SS_SOURCE_ID) == TENANT_OID
        assert external_id(submission, md.SS_PATIENT_ID) == case.patient_cx
        assert external_id(submission, md.SS_UNIQUE_ID).startswith("2.25.")
        assert [c[0] for c in coded(submission, md.SS_CONTENT_TYPE_CODE)] == ["03"]  # PV1-2 = I
        assert slot(submission, "submissionTime") == ["20240506081112"]


@pytest.mark.parametrize("name", CASES)
def test_round_trip_attachments_are_byte_identical_to_the_sources(name: str) -> None:
    sources = sources_for(name)
    for mail in mails_for(name):
        message = parse(mail.content)
        assert all(not part.defects for part in message.walk())
        xdm = attachment(message, "IHE_XDM.zip")
        assert xdm == mail.xdm_zip
        archive = open_zip(xdm)
        assert archive.testzip() is None
        stored = [archive.read(f"{SUBSET_DIR}DOC{i:04d}.XML") for i in range(1, len(sources) + 1)]
        assert stored == sources
        attached = [attachment(message, a.filename) for a in mail.pdfs]
        assert attached == [a.content for a in mail.pdfs]
        assert len(attached) == len(sources)  # one PDF per CDA (ECO.2.1.1)
        for source, pdf in zip(sources, attached, strict=True):
            embedded = embedded_pdf(source)
            if embedded is not None:
                assert pdf == embedded  # the CDA's own, byte for byte
            else:  # rendered (connector.cda.render)
                assert pdf.startswith(b"%PDF-1.4")
                assert b'pdfaid:part="1" pdfaid:conformance="B"' in pdf


# -- one mail per recipient, Message-IDs, determinism ----------------------------------------------


def test_one_mail_per_recipient_with_distinct_stable_message_ids() -> None:
    name = "oru-r01-replace-patient-corrected"
    request, mails = request_for(name), mails_for(name)
    assert len(mails) == len(request.sending.recipients) == 2
    assert [m.index for m in mails] == [1, 2]
    assert [m.prt_sequence for m in mails] == [r.participant.prt_sequence
                                              for r in request.sending.recipients]
    ids = [m.message_id for m in mails]
    assert len(set(ids)) == 2
    assert ids == [make_message_id(KEY, m.recipient, parse_address(MAILBOX)) for m in mails]
    assert all(NESSI not in i and KEY not in i for i in ids)
    again = build_mails(request, CONTEXT)
    assert [m.content for m in again] == [m.content for m in mails]
    assert [m.xdm_zip for m in again] == [m.xdm_zip for m in mails]
    other = build_mails(request, replace(CONTEXT, request_key="another-request"))
    assert not {m.message_id for m in other} & set(ids)
    unique_ids = {external_id(one(parse_xml(open_zip(m.xdm_zip).read(METADATA_PATH)),
                                  "rim:RegistryObjectList/rim:RegistryPackage"), md.SS_UNIQUE_ID)
                  for m in mails}
    assert len(unique_ids) == 2  # each mail's archive is its own submission set


def _with_fin_and_bodies(segs: list[str]) -> list[str]:
    result = []
    for segment in segs:
        if segment.startswith("OBX|") and "|CORPSMAIL_PS^" in segment:
            text = base64.b64encode(PS_TEXT.encode()).decode()
            result.append(with_field(segment, 5, f"^TEXT^^Base64^{text}"))
            text = base64.b64encode(PATIENT_TEXT.encode()).decode()
            result.append(f"OBX|14|ED|CORPSMAIL_PATIENT^Corps du mail pour le patient^MetaDMPMSS"
                          f"||^TEXT^^Base64^{text}||||||F|")
            continue
        result.append(segment)
        if segment.startswith("OBX|") and "|DESTMSSANTEPAT^" in segment:
            result.append("NTE|1|||FIN|")
    return result


def test_patient_mail_gets_the_patient_body_and_fin_the_ps_mail_does_not() -> None:
    request = checked(_with_fin_and_bodies(oru_initial()))
    assert not request.patient_may_reply
    ps, patient = build_mails(request, CONTEXT)
    assert (ps.kind, patient.kind) == (RecipientKind.PROFESSIONAL, RecipientKind.PATIENT)
    ps_message, patient_message = parse(ps.content), parse(patient.content)
    assert body_text(ps_message) == PS_TEXT.rstrip("\n")
    assert body_text(patient_message) == PATIENT_TEXT.rstrip("\n")
    assert ps_message["X-MSS-MES"] is None
    assert patient_message["X-MSS-MES"] == "FIN"
    for message in (ps_message, patient_message):
        assert message["Reply-To"] == DOCTOR
        assert message["Disposition-Notification-To"] == MAILBOX


def test_without_the_fin_note_the_patient_may_reply() -> None:
    name = "oru-r01-replace-patient-corrected"
    assert request_for(name).patient_may_reply
    patient = parse(mails_for(name)[1].content)
    assert patient["X-MSS-MES"] is None
    assert body_text(patient) == DEFAULT_BODIES[MailAction.REPLACEMENT].rstrip("\n")


@pytest.mark.parametrize(("name", "action"), [
    ("mdm-t02-initial", MailAction.NEW),
    ("mdm-t10-replace", MailAction.REPLACEMENT),
    ("mdm-t04-delete", MailAction.DELETION),
])
def test_default_body_by_action_when_no_corpsmail(name: str, action: MailAction) -> None:
    segs = [s for s in CASES[name].message() if "|CORPSMAIL_PS^" not in s]
    (mail,) = build_mails(checked(segs), CONTEXT)
    assert body_text(parse(mail.content)) == DEFAULT_BODIES[action].rstrip("\n")


def test_a_level3_cda_without_pdf_copy_gets_a_rendered_pdf() -> None:
    name = "oru-r01-initial-placeholder-corrected"
    request = request_for(name)
    n3 = request.documents[1]
    assert n3.level == 3
    assert embedded_pdf(n3.content) is None
    for mail in mails_for(name):
        assert mail.documents_without_pdf == ()
        first, rendered = mail.pdfs
        assert first.content == embedded_pdf(request.documents[0].content)
        assert rendered.filename.endswith("_2.pdf")  # the same name as the N1's, made distinct
        assert b'pdfaid:part="1"' in rendered.content
        assert open_zip(mail.xdm_zip).read(f"{SUBSET_DIR}DOC0002.XML") == n3.content
        assert "OBX" not in repr(mail.pdfs)  # the names of the PDFs stay out of reprs


def render_fails(monkeypatch: pytest.MonkeyPatch, *errors: PdfRenditionError) -> None:
    """The PDF renderer raises `errors`, one per call (the last one again after)."""
    remaining = list(errors)

    def render_pdf(root: object, header: object) -> bytes:
        raise remaining.pop(0) if len(remaining) > 1 else remaining[0]

    monkeypatch.setattr(mails_module, "render_pdf", render_pdf)


def test_without_a_renderer_the_cda_travels_in_the_archive_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    render_fails(monkeypatch,
                 PdfRendererUnavailable("no PDF renderer: the Pango libraries are missing"))
    name = "oru-r01-initial-placeholder-corrected"
    request = request_for(name)
    n3 = request.documents[1]
    for mail in build_mails(request, CONTEXT):
        assert mail.documents_without_pdf == (n3.obx_sequence,)
        assert mail.missing_pdfs == (MissingPdf(
            n3.obx_sequence, "no PDF renderer: the Pango libraries are missing",
            renderer_unavailable=True),)
        assert len(mail.pdfs) == 1
        assert open_zip(mail.xdm_zip).read(f"{SUBSET_DIR}DOC0002.XML") == n3.content


def test_a_rendition_failure_is_told_apart_from_a_missing_renderer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    render_fails(monkeypatch, PdfRenditionError("the narrative is too large to render"))
    request = request_for("oru-r01-initial-placeholder-corrected")
    for mail in build_mails(request, CONTEXT):
        assert mail.missing_pdfs == (MissingPdf(
            request.documents[1].obx_sequence, "the narrative is too large to render",
            renderer_unavailable=False),)


SENDS_WITHOUT_PDF = replace(TENANT, cisis=replace(TENANT.cisis,
                                                  missing_pdf=MissingPdfPolicy.SEND))


def test_the_outbox_rows_of_a_mail_without_pdf_are_warned(
        monkeypatch: pytest.MonkeyPatch) -> None:
    render_fails(monkeypatch, PdfRenditionError("no PDF renderer"))
    request = request_for("oru-r01-initial-placeholder-corrected")
    with structlog.testing.capture_logs() as logs:
        planned = MailPlanner(SENDS_WITHOUT_PDF).plan(request, KEY)
    assert len(planned.items) == len(request.sending.recipients)  # sent all the same
    assert planned.documents_without_pdf == (request.documents[1].obx_sequence,)
    (warned,) = [e for e in logs if e["event"] == "mail_without_pdf"]
    assert warned["obx"] == [request.documents[1].obx_sequence]
    assert warned["problems"] == ["no PDF renderer"]  # why, once per request
    assert PAT_TROIS not in repr(logs)


@pytest.mark.parametrize(("error", "retry_later", "detail"), [
    (PdfRendererUnavailable("no PDF renderer: libpango"), True,
     "ECO.2.1.1: the PDF/A-1 of the CDA in OBX 2 cannot be rendered on this host (no PDF "
     "renderer: libpango); send the message again later"),
    (PdfRenditionError("the narrative is too large"), False,
     "ECO.2.1.1: the CDA in OBX 2 embeds no PDF and its PDF/A-1 could not be rendered (the "
     "narrative is too large)"),
])
def test_by_default_a_cda_without_pdf_refuses_the_request(
        monkeypatch: pytest.MonkeyPatch, error: PdfRenditionError, retry_later: bool,
        detail: str) -> None:
    render_fails(monkeypatch, error)
    request = request_for("oru-r01-initial-placeholder-corrected")
    assert request.documents[1].obx_sequence == 2
    assert TENANT.cisis.missing_pdf is MissingPdfPolicy.REFUSE  # the default
    with structlog.testing.capture_logs() as logs, \
            pytest.raises(PdfRequiredError) as raised:
        MailPlanner(TENANT).plan(request, KEY)
    assert raised.value.retry_later is retry_later
    assert raised.value.detail == detail
    assert raised.value.location == ErrorLocation("OBX", 2, 5)
    assert raised.value.condition is ErrorCondition.APPLICATION_ERROR
    assert [e["event"] for e in logs] == ["pdf_required"]
    assert PAT_TROIS not in repr(logs)


def test_a_missing_renderer_decides_the_answer_whatever_the_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two CDAs without a PDF, the first one too large and the second one for want of a
    renderer: the request is not taken (retry later) and the ERR names the second."""
    request = request_for("oru-r01-initial-placeholder-corrected")
    n3 = request.documents[1]
    twice = replace(request, documents=(replace(n3, obx_sequence=7), n3))
    render_fails(monkeypatch, PdfRenditionError("too large"), PdfRendererUnavailable("no renderer"))
    with pytest.raises(PdfRequiredError) as raised:
        MailPlanner(TENANT).plan(twice, KEY)
    assert raised.value.retry_later
    assert raised.value.location == ErrorLocation("OBX", n3.obx_sequence, 5)


def test_same_pdf_names_are_made_distinct() -> None:
    request = request_for("mdm-t02-initial")
    (first,) = request.documents
    twice = replace(request, documents=(first, replace(first, obx_sequence=13)))
    (mail,) = build_mails(twice, CONTEXT)
    stem = "20230227_CR d'imagerie médicale_PAT-TROIS_DOMINIQUE"
    assert [p.filename for p in mail.pdfs] == [f"{stem}.pdf", f"{stem}_2.pdf"]
    assert [p.get_filename() for p in parts(parse(mail.content))][2:] == [
        f"{stem}.pdf", f"{stem}_2.pdf"]


def test_masque_ps_adds_its_confidentiality_code() -> None:
    request = request_for("mdm-t10-replace")
    masked = replace(request, metadata=replace(request.metadata, masque_ps=True))
    (mail,) = build_mails(masked, CONTEXT)
    metadata = parse_xml(open_zip(mail.xdm_zip).read(METADATA_PATH))
    entry = one(metadata, "rim:RegistryObjectList/rim:ExtrinsicObject")
    assert coded(entry, md.DE_CONFIDENTIALITY_CODE)[1] == (
        "MASQUE_PS", md.CONFIDENTIALITY_EXTRA_SYSTEM, "Masqué aux professionnels de santé")


def test_no_recipient_no_mail() -> None:
    request = request_for("mdm-t02-initial")
    assert build_mails(replace(request, sending=replace(request.sending, recipients=())),
                       CONTEXT) == ()


# -- X-MSS-INS and patientId -----------------------------------------------------------------------


def _with_ins_oid(request: DocumentRequest, oid: str) -> DocumentRequest:
    """The request with its INS (PID-3 and every CDA) moved under another INS OID."""
    ins = request.patient.ins
    assert ins is not None
    assert ins.oid is not None
    moved = InstanceId(oid, ins.value)
    documents = tuple(
        replace(d, header=replace(d.header, patient_ids=tuple(
            moved if (p.root, p.extension) == (ins.oid, ins.value) else p
            for p in d.header.patient_ids)))
        for d in request.documents)
    patient = replace(request.patient, identifiers=tuple(
        replace(i, oid=oid) if i is ins else i for i in request.patient.identifiers))
    return replace(request, patient=patient, documents=documents)


def test_x_mss_ins_rule() -> None:
    qualified = request_for("oru-r01-replace-patient-corrected")  # NIR .8, VALI, full traits
    assert ins_qualified(qualified)
    assert ins_qualified(_with_ins_oid(qualified, "1.2.250.1.213.1.4.9"))  # NIA
    assert not ins_qualified(_with_ins_oid(qualified, "1.2.250.1.213.1.4.10"))  # test NIR
    assert not ins_qualified(_with_ins_oid(qualified, "1.2.250.1.213.1.4.11"))  # demo NIR
    assert not ins_qualified(request_for("mdm-t02-initial"))  # the ANS examples' test INS
    provisional = replace(qualified, patient=replace(qualified.patient, identity_status="PROV"))
    assert not ins_qualified(provisional)
    first, second = qualified.documents
    assert second.header.patient is not None
    no_sex = replace(second, header=replace(
        second.header, patient=replace(second.header.patient, sex=None)))
    assert not ins_qualified(replace(qualified, documents=(first, no_sex)))
    (mail, _) = build_mails(provisional, CONTEXT)
    assert parse(mail.content)["X-MSS-INS"] == "N"


def test_patient_id_is_the_ins_else_the_ipp() -> None:
    request = request_for("mdm-t02-initial")
    assert patient_id(request, TENANT_OID) == InstanceId("1.2.250.1.213.1.4.10", PAT_TROIS)

    def with_ids(*identifiers: PatientIdentifier) -> DocumentRequest:
        return replace(request, patient=replace(request.patient, identifiers=identifiers))

    ipp = PatientIdentifier("1234567890121", "1.2.3.4.567.8.9.10", "CHU", "PI")
    assert patient_id(with_ids(ipp), TENANT_OID) == InstanceId("1.2.3.4.567.8.9.10",
                                                               "1234567890121")
    bare = replace(ipp, oid=None)
    assert patient_id(with_ids(bare), TENANT_OID) == InstanceId(TENANT_OID, "1234567890121")
    with pytest.raises(ProfileError) as caught:
        patient_id(with_ids(), TENANT_OID)
    assert caught.value.location == ErrorLocation("PID", 1, 3)


# -- errors name fields, not patients --------------------------------------------------------------


def test_missing_patient_names_are_refused_without_patient_data() -> None:
    request = request_for("mdm-t02-initial")
    (document,) = request.documents
    nameless = replace(document, header=replace(document.header, patient=None))
    with pytest.raises(ProfileError) as caught:
        build_mails(replace(request, documents=(nameless,)), CONTEXT)
    assert caught.value.location == ErrorLocation("OBX", document.obx_sequence, 5)
    assert "PAT-TROIS" not in str(caught.value)
    assert PAT_TROIS not in str(caught.value)


def test_missing_cda_code_is_refused_on_its_obx() -> None:
    request = request_for("mdm-t02-initial")
    (document,) = request.documents
    uncoded = replace(document, header=replace(document.header, code=None))
    with pytest.raises(DocumentError) as caught:
        build_mails(replace(request, documents=(uncoded,)), CONTEXT)
    assert caught.value.location == ErrorLocation("OBX", document.obx_sequence, 5)


def test_unusable_reply_to_is_refused_on_its_prt() -> None:
    request = request_for("oru-r01-initial-placeholder-corrected")
    assert request.reply_to is not None
    broken = replace(request, reply_to=replace(request.reply_to, address="adam hoda@x"))
    with pytest.raises(InvalidAddressError) as caught:
        build_mails(broken, CONTEXT)
    assert caught.value.location == ErrorLocation("PRT", request.reply_to.prt_sequence, 15)
    assert "adam" not in str(caught.value)


# -- the context -----------------------------------------------------------------------------------


def test_context_from_the_tenant() -> None:
    assert str(CONTEXT.mailbox) == MAILBOX
    assert (CONTEXT.establishment_oid, CONTEXT.nil) == (TENANT_OID, NIL)
    assert CONTEXT.producer.organization == "CH Exemple"
    assert KEY not in repr(CONTEXT)
    with pytest.raises(ConfigError) as caught:
        MailContext.for_tenant(replace(TENANT, oid=None), request_key=KEY,
                               submitted_at=SUBMITTED_AT)
    assert caught.value.key == "tenants[chu-test].oid"
    with pytest.raises(ValueError, match="time zone"):
        replace(CONTEXT, submitted_at=datetime(2024, 5, 6, 10, 11, 12))
    with pytest.raises(ValueError, match="request key"):
        replace(CONTEXT, request_key="")


def test_outgoing_mail_repr_hides_the_patient_address() -> None:
    patient_mail = mails_for("oru-r01-replace-patient-corrected")[1]
    assert NESSI in str(patient_mail.recipient)
    assert NESSI not in repr(patient_mail)
    assert patient_mail.message_id in repr(patient_mail)


def test_a_patient_mailbox_needs_a_qualified_production_ins() -> None:
    """ECO.2.2.6: patient addresses are built from qualified INS. A production INS that PID-32
    does not say VALI gets no patient mail: AE at the patient's PRT (the professional's mail
    is not sent either: the request is refused whole). The ANS examples' test INS still go."""
    segs = CASES["oru-r01-replace-patient-corrected"].message()
    provisional = [with_field(s, 32, "PROV") if s.startswith("PID|") else s for s in segs]
    with pytest.raises(MessageError) as caught:
        checked(provisional)
    error = caught.value
    assert error.application_error is ApplicationError.OTHER
    assert error.location is not None
    assert error.location.segment == "PRT"
    assert "qualified INS" in error.detail
    assert NESSI not in error.detail
    # VALI with the traits: the patient's mail goes, X-MSS-INS: O.
    (patient,) = [m for m in mails_for("oru-r01-replace-patient-corrected")
                  if m.kind is RecipientKind.PATIENT]
    assert parse(patient.content)["X-MSS-INS"] == "O"
    # The ANS examples' test INS (OID .10): accepted, X-MSS-INS: N.
    (test_patient,) = [m for m in build_mails(checked(oru_initial()), CONTEXT)
                       if m.kind is RecipientKind.PATIENT]
    assert parse(test_patient.content)["X-MSS-INS"] == "N"


@pytest.mark.parametrize("returns_zams", [True, False])
def test_a_tenant_that_returns_no_zam_says_so_to_a_request_asking_for_them(
        returns_zams: bool) -> None:
    """The ORU example asks for both receipts (ACK_RECEPTION=Y, ACK_LECTURE_MSS=Y)."""
    intake = CisisIntake(CisisSettings(sending_matrix=SendingMatrixProfile.ANS_EXAMPLES),
                         UnconfiguredCdaChecker(), WHITELIST, returns_zams=returns_zams)
    verdict = intake.check(parse_message("\r".join(oru_initial()) + "\r"))
    metadata = verdict.request.metadata
    assert (metadata.ack_reception, metadata.ack_lecture_mss) == (True, True)
    about_zams = [w for w in verdict.warnings if "ZAM" in w.detail]
    if returns_zams:
        assert about_zams == []
        return
    assert [w.detail.split(":")[0] for w in about_zams] == ["ACK_RECEPTION=Y",
                                                            "ACK_LECTURE_MSS=Y"]
    assert "returns no ZAM^Z02" in about_zams[0].detail
    assert "returns no ZAM^Z03" in about_zams[1].detail
    assert {w.severity for w in about_zams} == {Severity.WARNING}


def test_a_dmp_only_request_is_refused_since_nothing_would_be_done() -> None:
    """DESTDMP=Y and no MSSanté recipient asked: an AA would say the connector took in charge
    what it does not do (it does not feed the DMP)."""
    def flag(segs: list[str], name: str, value: str) -> list[str]:
        return [s.replace("||Y^^", f"||{value}^^").replace("||N^^", f"||{value}^^")
                if f"|{name}^" in s else s for s in segs]

    segs = flag(flag(flag(segments("mdm-t02-initial/message.er7"), "DESTDMP", "Y"),
                     "DESTMSSANTEPS", "N"), "DESTMSSANTEPAT", "N")
    with pytest.raises(MessageError) as raised:
        checked(segs)
    assert raised.value.detail.startswith("DESTDMP=Y with DESTMSSANTEPS=N and DESTMSSANTEPAT=N")
    assert raised.value.application_error is ApplicationError.OTHER
    # the same with an MSSanté recipient asked: accepted, the DMP part said in a W
    request = checked(flag(segments("mdm-t02-initial/message.er7"), "DESTDMP", "Y"))
    assert request.sending.recipients


def test_without_a_sender_prt_the_submission_author_is_the_cdas() -> None:
    """The SB PRT is conditional in the volet; the SubmissionSet author is required in the XDM
    metadata: the first CDA's author then (its person and organisation)."""
    segs = [s for s in segments("mdm-t02-initial/message.er7") if "|SB^" not in s]
    request = checked(segs)
    assert request.sender is None
    (mail,) = build_mails(request, CONTEXT)
    metadata = parse_xml(open_zip(mail.xdm_zip).read(METADATA_PATH))
    submission = one(metadata, "rim:RegistryObjectList/rim:RegistryPackage")
    author = one(submission, f"rim:Classification[@classificationScheme='{md.SS_AUTHOR}']")
    cda_author = request.documents[0].header.authors[0]
    assert cda_author.id is not None
    (person,) = slot(author, "authorPerson")
    assert person.startswith(f"{cda_author.id.extension}^")
    (institution,) = slot(author, "authorInstitution")
    assert cda_author.organization is not None
    assert institution.startswith(f"{cda_author.organization.name}^")


@pytest.mark.parametrize(("contact", "shown"), [
    (None, MAILBOX), ("Secrétariat d'imagerie, 01 23 45 67 89", "01 23 45 67 89")])
def test_the_archive_names_whom_to_contact(contact: str | None, shown: str) -> None:
    tenant = replace(TENANT, mailbox=replace(TENANT.mailbox, contact=contact))
    context = MailContext.for_tenant(tenant, request_key=KEY, submitted_at=SUBMITTED_AT)
    (mail,) = build_mails(request_for("mdm-t02-initial"), context)
    archive = open_zip(mail.xdm_zip)
    assert f". Contact : {contact or MAILBOX}" in archive.read("README.TXT").decode("utf-8")
    assert shown in archive.read("INDEX.HTM").decode("utf-8")
