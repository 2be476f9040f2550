"""METADATA.XML of an IHE_XDM archive: an ebRIM 3.0 `lcm:SubmitObjectsRequest`.

One `rim:RegistryPackage` (the SubmissionSet, classified by the SubmissionSet node), one
`rim:ExtrinsicObject` (DocumentEntry) per CDA, one `HasMember` association per document.

Sources, in order of precedence:

1. CI-SIS "Transmission d'un document CDA-R2 en HL7v2", `mapping.md` §"Lien entre l'en-tête CDA
   et les métadonnées XDS" (reference `cisis-hl7v2-to-mssante.md` §4.7, `mssante-transport.md`
   §3.7.2): which CDA element or HL7 field feeds which metadata;
2. ANS terminology tables: ASS_A11 (templateId → formatCode), ASS_A12 (nonXMLBody mediaType →
   formatCode), ASS_X04 (typeCode → classCode), JDV_J08 (confidentiality), JDV_J59/TRE_R209
   (contentTypeCode), and the ANS stylesheet `CDAHeaderToXDM.xsl` (TestContenuCDA) for the
   XCN/XON layouts used by French XDS (`...^D^^^IDNPS`, `...^IDNST^^^<id>`);
3. where the French référentiel is silent (the CI-SIS "Volet Echange de documents de santé" is
   not public as text: reference §10 gap 1) this module follows **IHE ITI TF-3 §4.2 / §4.3
   (XDS metadata, XDM)**: classification schemes and identification schemes UUIDs, UTC DTM
   times, `HasMember` + `SubmissionSetStatus=Original`, XON|XCN|XTN intendedRecipient.

Nothing here does I/O. Determinism: every id is a name-based UUID (uuid5) derived from the
submission's and the documents' unique ids, so the same input gives the same bytes.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TypeVar

from lxml import etree

from connector import __version__
from connector.cda.header import (
    INS_ROOTS,
    Author,
    CdaHeader,
    Coded,
    InstanceId,
    LegalAuthenticator,
    Organization,
    PersonName,
)
from connector.errors import DocumentError

LCM_NS = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
RIM_NS = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
_NSMAP = {"lcm": LCM_NS, "rim": RIM_NS}

# -- IHE ITI TF-3 §4.2.5 UUIDs ---------------------------------------------------------------------
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
DOCUMENT_ENTRY_OBJECT_TYPE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"

DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS_CODE = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY_CODE = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_FORMAT_CODE = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_HEALTHCARE_FACILITY_TYPE_CODE = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE_SETTING_CODE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"

SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE_CODE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"

HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
STATUS_APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
_OT_CLASSIFICATION = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification"
_OT_EXTERNAL_ID = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:ExternalIdentifier"
_OT_ASSOCIATION = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Association"
_OT_REGISTRY_PACKAGE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:RegistryPackage"

#: Extra metadata slot carrying the action (CI-SIS [TRANS] `exemples.md`, ORU examples 2-4: "une
#: extra-metadata « action » dont la valeur est « D »" / « C »). The ANS text names it `action`
#: and places it on "le document présent dans l'archive": the slot is therefore called exactly
#: `action` and put on each DocumentEntry. IHE ITI TF-3 §4.2.3.1.9 would want a URN-named slot;
#: the ANS name wins because the receiving LPS looks for it.
ACTION_SLOT = "action"

MIME_TYPE_CDA = "text/xml"
_RPPS_ROOT = "1.2.250.1.71.4.2.1"  # national ids of professionals (IDNPS)


# -- request-side inputs ---------------------------------------------------------------------------


class XdmAction(Enum):
    """What the archive asks the receiver to do with its documents."""

    NEW = "NEW"  # MDM^T02 / ORU OBX-11=F
    REPLACE = "REPLACE"  # MDM^T10 / ORU OBX-11=C: extra metadata action=C
    DELETE = "DELETE"  # MDM^T04 / ORU OBX-11=D: extra metadata action=D

    @property
    def slot_value(self) -> str | None:
        return {XdmAction.NEW: None, XdmAction.REPLACE: "C", XdmAction.DELETE: "D"}[self]


CONFIDENTIALITY_EXTRA_SYSTEM = "1.2.250.1.213.1.1.4.13"


class ExtraConfidentiality(Enum):
    """JDV_J08 codes of code system 1.2.250.1.213.1.1.4.13, from the MetaDMPMSS OBX (§1.10)."""

    MASQUE_PS = "MASQUE_PS"
    INVISIBLE_PATIENT = "INVISIBLE_PATIENT"
    INVISIBLE_REPRESENTANTS_LEGAUX = "INVISIBLE_REPRESENTANTS_LEGAUX"

    @property
    def coded(self) -> Coded:
        return Coded(self.value, CONFIDENTIALITY_EXTRA_SYSTEM, _EXTRA_CONF_DISPLAY[self])


_EXTRA_CONF_DISPLAY = {
    ExtraConfidentiality.MASQUE_PS: "Masqué aux professionnels de santé",
    ExtraConfidentiality.INVISIBLE_PATIENT: "Non visible par le patient",
    ExtraConfidentiality.INVISIBLE_REPRESENTANTS_LEGAUX: (
        "Non visible par les représentants légaux du patient"
    ),
}

#: TRE_R209-TypeActivite (OID 1.2.250.1.213.2.2), the code system of JDV_J59-ContentTypeCode-DMP.
CONTENT_TYPE_SYSTEM = "1.2.250.1.213.2.2"
_CONTENT_TYPE_DISPLAY = {
    "03": "Hospitalisation complète (non compris hospitalisation de semaine)",
    "07": "Consultation Soins Externes",
    "19": "Traitement et Cure Ambulatoire",
    "97": "Type d'activité indifférencié",
}
#: [TRANS] mapping.md, "Proposition de mapping sur le PV1-2": I→03, O→07, R→19, N→97, E→07.
_PATIENT_CLASS_TO_CONTENT_TYPE = {"I": "03", "O": "07", "R": "19", "N": "97", "E": "07"}


def content_type_for_patient_class(pv1_2: str) -> Coded:
    """SubmissionSet contentTypeCode from PV1-2 (patient class); unknown classes give 97."""
    code = _PATIENT_CLASS_TO_CONTENT_TYPE.get(pv1_2.strip().upper(), "97")
    return Coded(code, CONTENT_TYPE_SYSTEM, _CONTENT_TYPE_DISPLAY[code])


@dataclass(frozen=True, slots=True)
class Person:
    """A person of the request side (PRT-5 XCN): id with its OID, names, XCN.13 type."""

    id: InstanceId
    family: str | None = None
    given: str | None = None
    id_type: str | None = None  # XCN.13; default IDNPS for RPPS-rooted ids, EI otherwise


@dataclass(frozen=True, slots=True)
class Institution:
    """An organisation of the request side (PRT-8 XON): name, id with its OID, XON.7 type."""

    name: str
    id: InstanceId | None = None
    id_type: str = "IDNST"  # XON.7: FINEJ / FINEG / IDNST (PRT-8.7)


@dataclass(frozen=True, slots=True)
class SubmissionAuthor:
    """SubmissionSet author: the PRT whose PRT-4 is SB (person PRT-5, organisation PRT-8), else
    the first CDA's author."""

    person: Person | None = None
    institution: Institution | None = None


@dataclass(frozen=True, slots=True)
class IntendedRecipient:
    """An MSSanté recipient (PRT RCT): address PRT-15.4, optional person and organisation."""

    address: str
    person: Person | None = None
    institution: Institution | None = None


@dataclass(frozen=True, slots=True)
class XdmProducer:
    """Who built the archive, for README.TXT / INDEX.HTM (no patient data)."""

    organization: str
    application: str = "mssante-connector"
    version: str = __version__
    vendor: str = "mssante-connector project"
    contact: str | None = None


@dataclass(frozen=True, slots=True)
class XdmDocument:
    """One CDA of the archive: its bytes as received (stored unchanged) and its header.

    `class_code` / `format_code` override the derived values (see `class_code_for` and
    `format_code_for`) when a site knows better.
    """

    content: bytes
    header: CdaHeader
    class_code: Coded | None = None
    format_code: Coded | None = None


@dataclass(frozen=True, slots=True)
class XdmSubmission:
    """Everything METADATA.XML and the archive need besides the CDA headers.

    * `patient_id`: the INS with its OID when known, else the local id with the tenant's OID;
      it must be one of `recordTarget/patientRole/id` of every document (one patient per mail,
      Référentiel #2 ECO.2.1.1);
    * `source_id`: the tenant's OID (XDSSubmissionSet.sourceId);
    * `unique_id`: the SubmissionSet uniqueId (an OID generated by the caller);
    * `submission_time`: timezone-aware; also dates the zip entries;
    * `content_type`: see `content_type_for_patient_class` (PV1-2).
    """

    documents: tuple[XdmDocument, ...]
    patient_id: InstanceId
    source_id: str
    unique_id: str
    submission_time: datetime
    content_type: Coded
    producer: XdmProducer
    action: XdmAction = XdmAction.NEW
    extra_confidentiality: tuple[ExtraConfidentiality, ...] = ()
    author: SubmissionAuthor | None = None
    intended_recipients: tuple[IntendedRecipient, ...] = ()
    title: str | None = None

    def __post_init__(self) -> None:
        if not self.documents:
            raise ValueError("an XDM submission needs at least one document")
        if len(self.documents) > MAX_DOCUMENTS:
            raise ValueError(f"an XDM subset holds at most {MAX_DOCUMENTS} documents")
        if self.submission_time.tzinfo is None or self.submission_time.utcoffset() is None:
            raise ValueError("submission_time must be timezone-aware")


MAX_DOCUMENTS = 9999


def document_file_name(index: int) -> str:
    """8.3 upper-case name of the index-th document (1-based) in IHE_XDM/SUBSET01."""
    if not 1 <= index <= MAX_DOCUMENTS:
        raise ValueError("document index out of range")
    return f"DOC{index:04d}.XML"


# -- code derivations ------------------------------------------------------------------------------

CLASS_CODE_SYSTEM = "1.2.250.1.213.1.1.4.1"  # TRE_A03-ClasseDocument (JDV_J57-ClassCode-DMP)
_CLASS_DISPLAY = {"10": "Compte rendu", "11": "Synthèse", "31": "Imagerie médicale"}
#: typeCode → classCode, a deliberately small excerpt of ASS_X04-CorrespondanceType-Classe-CISIS
#: (mos.esante.gouv.fr/NOS/ASS_X04-...) for the document types the connector is known to carry.
#: It is NOT the full table: a type not listed falls back to `DEFAULT_CLASS_CODE` ("10" Compte
#: rendu, the class of the CI-SIS reports), and `XdmDocument.class_code` overrides both.
_TYPE_TO_CLASS: dict[tuple[str, str], str] = {
    ("2.16.840.1.113883.6.1", "11502-2"): "10",  # CR d'examens biologiques
    ("2.16.840.1.113883.6.1", "18748-4"): "10",  # CR d'imagerie médicale
    ("1.2.250.1.213.1.1.4.12", "SYNTH"): "11",  # Synthèse (TRE_A05)
    ("1.2.250.1.213.1.1.4.12", "IMG-KOS"): "31",  # Référence d'objets d'un examen d'imagerie
}
DEFAULT_CLASS_CODE = Coded("10", CLASS_CODE_SYSTEM, _CLASS_DISPLAY["10"])


def class_code_for(type_code: Coded) -> Coded:
    """classCode from the document typeCode (table above, fallback `DEFAULT_CLASS_CODE`)."""
    code = _TYPE_TO_CLASS.get((type_code.code_system, type_code.code))
    if code is None:
        return DEFAULT_CLASS_CODE
    return Coded(code, CLASS_CODE_SYSTEM, _CLASS_DISPLAY[code])


# Codes and code systems below are those of ASS_A11 / ASS_A12 / TRE_A06 (ansforge
# IG-terminologie-de-sante). The display names of the IHE codes (pdf, text, imaging) are not in
# the material read for this module: they are descriptive labels, to be aligned on TRE_A11.
IHE_FORMAT_SYSTEM = "1.3.6.1.4.1.19376.1.2.3"  # TRE_A11-IheFormatCode
ANS_FORMAT_SYSTEM = "1.2.250.1.213.1.1.4.2.282"  # TRE_A06-FormatCodeComplementaire
FORMAT_PDF = Coded(
    "urn:ihe:iti:xds-sd:pdf:2008", IHE_FORMAT_SYSTEM, "Document à corps non structuré en Pdf/A-1"
)
FORMAT_TEXT = Coded(
    "urn:ihe:iti:xds-sd:text:2008",
    IHE_FORMAT_SYSTEM,
    "Document à corps non structuré en texte brut",
)
#: TRE_A06 "Document non référencé IHE ou CI-SIS": the fallback of ASS_A11 for unknown models.
FORMAT_UNREFERENCED = Coded(
    "urn:asipSante:modelesHorsProfils:2011",
    ANS_FORMAT_SYSTEM,
    "Document non référencé IHE ou CI-SIS",
)
#: ASS_A12-CorresMediaTypeCDANonStructure-XdsFormatCode-CISIS (level 1, by nonXMLBody mediaType).
_MEDIA_TYPE_TO_FORMAT = {"application/pdf": FORMAT_PDF, "text/plain": FORMAT_TEXT}
#: Excerpt of ASS_A11-CorresModeleCDA-XdsFormatCode-CISIS (level 3, by document templateId).
_TEMPLATE_TO_FORMAT = {
    "1.2.250.1.213.1.1.1.55": Coded(
        "urn:ihe:lab:xd-lab:2008",
        IHE_FORMAT_SYSTEM,
        "Compte rendu structuré d'examens de biologie médicale",
    ),
    "1.3.6.1.4.1.19376.1.3.3": Coded(
        "urn:ihe:lab:xd-lab:2008",
        IHE_FORMAT_SYSTEM,
        "Compte rendu structuré d'examens de biologie médicale",
    ),
    "1.2.250.1.213.1.1.1.45": Coded(
        "urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013",
        IHE_FORMAT_SYSTEM,
        "Compte rendu d'imagerie médicale",
    ),
    "1.2.250.1.213.1.1.1.29": Coded(
        "urn:asip:ci-sis:ldl-ses:2017",
        ANS_FORMAT_SYSTEM,
        "Lettre de Liaison à la sortie de l'établissement de santé",
    ),
    "1.2.250.1.213.1.1.1.21": Coded(
        "urn:asip:ci-sis:ldl-ees:2017",
        ANS_FORMAT_SYSTEM,
        "Lettre de Liaison à l'entrée d'un établissement de santé",
    ),
    "1.2.250.1.213.1.1.1.13": Coded(
        "urn:asip:ci-sis:vsm:2012", ANS_FORMAT_SYSTEM, "Synthèse médicale"
    ),
}


def format_code_for(header: CdaHeader) -> Coded:
    """formatCode: level 1 from the nonXMLBody mediaType (ASS_A12), level 3 from the templateIds.

    Level 3 takes the first document templateId found in the ASS_A11 excerpt above; a model
    not in the excerpt falls back to `FORMAT_UNREFERENCED` (urn:asipSante:modelesHorsProfils:2011,
    the TRE_A06 code for documents whose model is not referenced by IHE or the CI-SIS).
    """
    if not header.is_structured:
        media_type = (header.body_media_type or "").lower()
        fmt = _MEDIA_TYPE_TO_FORMAT.get(media_type)
        if fmt is None:
            problem = "is missing" if not media_type else "is not application/pdf or text/plain"
            raise DocumentError(f"nonXMLBody/text/@mediaType {problem} (XDS formatCode)")
        return fmt
    for root in header.template_roots:
        fmt = _TEMPLATE_TO_FORMAT.get(root)
        if fmt is not None:
            return fmt
    return FORMAT_UNREFERENCED


# -- HL7 v2 data types inside slot values (ITI TF-3 §4.2.3.1.7) ------------------------------------

_HL7_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


def _esc(value: str | None) -> str:
    """HL7 v2 escaping of one component, whitespace collapsed."""
    if not value:
        return ""
    text = " ".join(value.split())
    for raw, escaped in _HL7_ESCAPES:
        text = text.replace(raw, escaped)
    return text


def _hd(oid: str) -> str:
    return f"&{_esc(oid)}&ISO"


def _is_ins(pid: InstanceId) -> bool:
    return pid.root in INS_ROOTS


def cx(pid: InstanceId) -> str:
    """CX `id^^^&oid&ISO^type`: type NH for an INS (reference §3.7.2), PI for a local id."""
    if not pid.extension:
        raise DocumentError("a patient identifier needs an extension (CX.1)")
    return f"{_esc(pid.extension)}^^^{_hd(pid.root)}^{'NH' if _is_ins(pid) else 'PI'}"


def _person_id_type(pid: InstanceId) -> str:
    """XCN.13 as in ANS CDAHeaderToXDM.xsl: IDNPS for RPPS-rooted ids without '/', else EI."""
    if pid.root == _RPPS_ROOT and "/" not in (pid.extension or ""):
        return "IDNPS"
    return "EI"


def xcn(pid: InstanceId | None, name: PersonName | None, id_type: str | None = None) -> str:
    """XCN `id^FAMILY^Given^^^^^^&oid&ISO^D^^^type` (ANS CDAHeaderToXDM.xsl authorPerson layout).

    Civility and title (CDA prefix/suffix) are left out, as in the ANS stylesheet. Without an
    identifier only the name components are written.
    """
    family = name.family if name else None
    given = name.given[0] if name and name.given else None
    names = f"{_esc(family)}^{_esc(given)}"
    if pid is None:
        return f"^{names}".rstrip("^")
    ident = _esc(pid.extension or pid.root)
    authority = _hd(pid.root) if pid.extension else ""
    kind = id_type or _person_id_type(pid)
    return f"{ident}^{names}^^^^^^{authority}^D^^^{_esc(kind)}"


def xon(name: str | None, oid_id: InstanceId | None, id_type: str = "IDNST") -> str:
    """XON `Name^^^^^&oid&ISO^IDNST^^^id` (ITI TF-3 authorInstitution, ANS XSL layout)."""
    if oid_id is None or not oid_id.extension:
        if oid_id is not None:  # an OID alone identifies the organisation (XON.10 = the OID)
            return f"{_esc(name)}^^^^^^^^^{_esc(oid_id.root)}"
        return _esc(name)
    return f"{_esc(name)}^^^^^{_hd(oid_id.root)}^{_esc(id_type)}^^^{_esc(oid_id.extension)}"


def _coded_hl7(value: Coded) -> str:
    """authorSpecialty as CE `code^display^system` (ANS CDAHeaderToXDM.xsl layout)."""
    return f"{_esc(value.code)}^{_esc(value.display_name)}^{_esc(value.code_system)}"


_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")


def xds_time(ts: str, *, element: str) -> str:
    """HL7 TS → XDS DTM in UTC, keeping the precision (ITI TF-3 §4.2.3.1.5).

    A value with an offset and at least hour precision is shifted to UTC. A value without an
    offset is kept as written: its time zone is unknown and is not guessed. Fractions of
    seconds are dropped. `element` names the CDA element in the error message.
    """
    match = _TS.match(ts.strip())
    if match is None:
        raise DocumentError(f"CDA {element} is not an HL7 TS value")
    parts = [p for p in match.groups()[:6] if p is not None]
    digits = "".join(parts)
    fields = [int(p) for p in parts] + [1, 1, 0, 0, 0][len(parts) - 1 :]
    try:
        # Naive on purpose: the TS offset, when there is one, is applied just below.
        moment = datetime(fields[0], fields[1], fields[2], fields[3], fields[4], fields[5])
    except ValueError:
        raise DocumentError(f"CDA {element} is not a valid date") from None
    offset = match.group(7)
    if offset is None or len(parts) < 4:
        return digits
    sign = 1 if offset[0] == "+" else -1
    shift = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])) * sign
    return (moment - shift).strftime("%Y%m%d%H%M%S")[: len(digits)]


def submission_time_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S")


# -- XML building ---------------------------------------------------------------------------------


def _rim(tag: str) -> str:
    return f"{{{RIM_NS}}}{tag}"


_SLOT = _rim("Slot")
_VALUE_LIST = _rim("ValueList")
_VALUE = _rim("Value")
_LOCALIZED_STRING = _rim("LocalizedString")
_CLASSIFICATION = _rim("Classification")
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_OID_NAMESPACE = uuid.NAMESPACE_OID.bytes


def _uuid(*parts: str) -> str:
    """`urn:uuid:` + `uuid.uuid5(uuid.NAMESPACE_OID, "|".join(parts))`, computed directly (the
    same SHA-1 and the same version and variant bits, without building `UUID` objects)."""
    name = "|".join(parts).encode("utf-8")
    digest = bytearray(hashlib.sha1(_OID_NAMESPACE + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _slot(parent: etree._Element, name: str, values: Iterable[str]) -> None:
    values = [v for v in values if v]
    if not values:
        return
    slot = etree.SubElement(parent, _SLOT, name=name)
    value_list = etree.SubElement(slot, _VALUE_LIST)
    for value in values:
        etree.SubElement(value_list, _VALUE).text = value


def _localized(parent: etree._Element, tag: str, text: str | None) -> None:
    if not text:
        return
    holder = etree.SubElement(parent, _rim(tag))
    etree.SubElement(
        holder,
        _LOCALIZED_STRING,
        {_XML_LANG: "fr-FR", "charset": "UTF-8", "value": text},
    )


def _classification_element(
    parent: etree._Element, scheme: str, classified: str, salt: str, node: str
) -> etree._Element:
    return etree.SubElement(
        parent,
        _CLASSIFICATION,
        id=_uuid(classified, scheme, salt),
        objectType=_OT_CLASSIFICATION,
        classificationScheme=scheme,
        classifiedObject=classified,
        nodeRepresentation=node,
    )


def _classification(
    parent: etree._Element, scheme: str, classified: str, coded: Coded, salt: str
) -> None:
    cl = _classification_element(parent, scheme, classified, salt, coded.code)
    _slot(cl, "codingScheme", [coded.code_system])
    _localized(cl, "Name", coded.display_name or coded.code)


def _author_classification(
    parent: etree._Element,
    scheme: str,
    classified: str,
    salt: str,
    slots: Sequence[tuple[str, Sequence[str]]],
) -> None:
    cl = _classification_element(parent, scheme, classified, salt, "")
    for name, values in slots:
        _slot(cl, name, values)


def _external_id(
    parent: etree._Element, scheme: str, registry_object: str, value: str, label: str
) -> None:
    ext = etree.SubElement(
        parent,
        _rim("ExternalIdentifier"),
        id=_uuid(registry_object, scheme),
        objectType=_OT_EXTERNAL_ID,
        registryObject=registry_object,
        identificationScheme=scheme,
        value=value,
    )
    _localized(ext, "Name", label)


def unique_id(ii: InstanceId) -> str:
    """XDS uniqueId of a CDA id: `root`, or `root^extension` (ITI TF-3 §4.2.3.2.26)."""
    return f"{ii.root}^{ii.extension}" if ii.extension else ii.root


_T = TypeVar("_T")


def _need(value: _T | None, element: str, index: int) -> _T:
    """`value`, or DocumentError naming the missing CDA element (never its content)."""
    if value is None or value == "" or value == ():
        raise DocumentError(
            f"{document_file_name(index)}: CDA {element} is missing "
            "(required by the XDS metadata mapping)"
        )
    return value


@dataclass(frozen=True, slots=True)
class _EntryFacts:
    """The header values a DocumentEntry cannot do without (French mapping: R)."""

    type_code: Coded
    creation_time: str
    confidentiality: Coded
    language_code: str
    title: str
    legal_authenticator: LegalAuthenticator
    facility_type: Coded
    practice_setting: Coded
    service_start: str
    service_stop: str | None


def _entry_facts(h: CdaHeader, index: int) -> _EntryFacts:
    _need(h.authors, "author", index)
    event = h.service_event
    return _EntryFacts(
        type_code=_need(h.code, "code", index),
        creation_time=_need(h.effective_time, "effectiveTime/@value", index),
        confidentiality=_need(h.confidentiality, "confidentialityCode", index),
        language_code=_need(h.language_code, "languageCode/@code", index),
        title=_need(h.title, "title", index),
        legal_authenticator=_need(h.legal_authenticator, "legalAuthenticator", index),
        facility_type=_need(h.healthcare_facility_type_code, "healthCareFacility/code", index),
        practice_setting=_need(
            event.practice_setting_code if event else None,
            "serviceEvent/performer/assignedEntity/representedOrganization"
            "/standardIndustryClassCode",
            index,
        ),
        service_start=_need(event.low if event else None, "serviceEvent/effectiveTime/low", index),
        service_stop=event.high if event else None,
    )


def _author_slots(author: Author) -> list[tuple[str, list[str]]]:
    person = author.person_name
    if person is None and author.device is not None:
        person = PersonName(family=author.device.software_name)
    org: Organization | None = author.organization
    return [
        ("authorPerson", [xcn(author.id, person)] if author.id or person else []),
        ("authorInstitution", [xon(org.name, org.id)] if org else []),
        (
            "authorRole",
            [author.function_code.display_name or author.function_code.code]
            if author.function_code
            else [],
        ),
        ("authorSpecialty", [_coded_hl7(author.specialty)] if author.specialty else []),
    ]


def _source_patient(header: CdaHeader, index: int) -> tuple[str, list[str]]:
    """sourcePatientId (IPP, else INS) and sourcePatientInfo (PID-3/5/7/8)."""
    local = [p for p in header.local_patient_ids if p.extension]
    source = local[0] if local else header.ins
    if source is None:
        raise DocumentError(
            f"{document_file_name(index)}: recordTarget/patientRole/id has no usable id"
        )
    info = [f"PID-3|{cx(source)}"]
    patient = header.patient
    if patient is not None:
        family = patient.birth_family_name or patient.used_family_name
        given = patient.first_birth_given_name or patient.used_given_name
        if family:
            info.append(f"PID-5|{_esc(family)}^{_esc(given)}^^^^^L")
        if patient.birth_time:
            info.append(f"PID-7|{patient.birth_time[:8]}")
        if patient.sex:
            info.append(f"PID-8|{_esc(patient.sex.code)}")
    return cx(source), info


def _document_entry(
    parent: etree._Element, sub: XdmSubmission, doc: XdmDocument, index: int
) -> str:
    h = doc.header
    facts = _entry_facts(h, index)
    if sub.patient_id not in h.patient_ids:
        raise DocumentError(
            f"{document_file_name(index)}: the submission patientId is not one of "
            "recordTarget/patientRole/id (one patient per archive)"
        )

    entry_id = _uuid("DocumentEntry", sub.unique_id, unique_id(h.document_id), str(index))
    eo = etree.SubElement(
        parent,
        _rim("ExtrinsicObject"),
        id=entry_id,
        mimeType=MIME_TYPE_CDA,
        objectType=DOCUMENT_ENTRY_OBJECT_TYPE,
        status=STATUS_APPROVED,
    )
    source_pid, source_info = _source_patient(h, index)
    legal = facts.legal_authenticator.entity
    _slot(eo, "creationTime", [xds_time(facts.creation_time, element="effectiveTime")])
    _slot(
        eo, "hash", [hashlib.sha1(doc.content, usedforsecurity=False).hexdigest()]
    )  # XDS mandates SHA-1
    _slot(eo, "languageCode", [facts.language_code])
    _slot(eo, "legalAuthenticator", [xcn(legal.id, legal.person_name)])
    _slot(eo, "serviceStartTime", [xds_time(facts.service_start, element="serviceEvent low")])
    if facts.service_stop:
        _slot(eo, "serviceStopTime", [xds_time(facts.service_stop, element="serviceEvent high")])
    _slot(eo, "size", [str(len(doc.content))])
    _slot(eo, "sourcePatientId", [source_pid])
    _slot(eo, "sourcePatientInfo", source_info)
    _slot(eo, "URI", [document_file_name(index)])
    if sub.action.slot_value is not None:
        _slot(eo, ACTION_SLOT, [sub.action.slot_value])
    _localized(eo, "Name", facts.title)

    for number, author in enumerate(h.authors, start=1):
        _author_classification(eo, DE_AUTHOR, entry_id, f"author{number}", _author_slots(author))
    _classification(
        eo, DE_CLASS_CODE, entry_id, doc.class_code or class_code_for(facts.type_code), "class"
    )
    confidentiality = [
        facts.confidentiality,
        *(c.coded for c in _ordered(sub.extra_confidentiality)),
    ]
    for number, coded in enumerate(confidentiality, start=1):
        _classification(eo, DE_CONFIDENTIALITY_CODE, entry_id, coded, f"conf{number}")
    _classification(eo, DE_FORMAT_CODE, entry_id, doc.format_code or format_code_for(h), "format")
    _classification(eo, DE_HEALTHCARE_FACILITY_TYPE_CODE, entry_id, facts.facility_type, "hcft")
    _classification(eo, DE_PRACTICE_SETTING_CODE, entry_id, facts.practice_setting, "practice")
    _classification(eo, DE_TYPE_CODE, entry_id, facts.type_code, "type")
    _external_id(eo, DE_PATIENT_ID, entry_id, cx(sub.patient_id), "XDSDocumentEntry.patientId")
    _external_id(eo, DE_UNIQUE_ID, entry_id, unique_id(h.document_id), "XDSDocumentEntry.uniqueId")
    return entry_id


def _ordered(codes: Iterable[ExtraConfidentiality]) -> list[ExtraConfidentiality]:
    """Distinct codes in the enum's declaration order (deterministic output)."""
    wanted = set(codes)
    return [c for c in ExtraConfidentiality if c in wanted]


def _person_xcn(person: Person) -> str:
    return xcn(
        person.id,
        PersonName(family=person.family, given=(person.given,) if person.given else ()),
        person.id_type,
    )


def _recipient(recipient: IntendedRecipient) -> str:
    """intendedRecipient `XON|XCN|XTN` (ITI TF-3 §4.2.3.3.10), XTN `^^Internet^address`."""
    org = recipient.institution
    xon_part = xon(org.name, org.id, org.id_type) if org else ""
    xcn_part = _person_xcn(recipient.person) if recipient.person else ""
    return f"{xon_part}|{xcn_part}|^^Internet^{_esc(recipient.address)}"


def _submission_set(parent: etree._Element, sub: XdmSubmission) -> str:
    ss_id = _uuid("SubmissionSet", sub.unique_id)
    rp = etree.SubElement(
        parent, _rim("RegistryPackage"), id=ss_id, objectType=_OT_REGISTRY_PACKAGE
    )
    _slot(rp, "submissionTime", [submission_time_utc(sub.submission_time)])
    _slot(rp, "intendedRecipient", [_recipient(r) for r in sub.intended_recipients])
    _localized(rp, "Name", sub.title)
    if sub.author is not None:
        person, org = sub.author.person, sub.author.institution
        _author_classification(
            rp,
            SS_AUTHOR,
            ss_id,
            "author",
            [
                ("authorPerson", [_person_xcn(person)] if person else []),
                ("authorInstitution", [xon(org.name, org.id, org.id_type)] if org else []),
            ],
        )
    _classification(rp, SS_CONTENT_TYPE_CODE, ss_id, sub.content_type, "contentType")
    _external_id(rp, SS_UNIQUE_ID, ss_id, sub.unique_id, "XDSSubmissionSet.uniqueId")
    _external_id(rp, SS_SOURCE_ID, ss_id, sub.source_id, "XDSSubmissionSet.sourceId")
    _external_id(rp, SS_PATIENT_ID, ss_id, cx(sub.patient_id), "XDSSubmissionSet.patientId")
    return ss_id


def build_metadata_xml(submission: XdmSubmission) -> bytes:
    """METADATA.XML for `submission` (documents named DOC0001.XML... in the subset)."""
    request = etree.Element(f"{{{LCM_NS}}}SubmitObjectsRequest", nsmap=_NSMAP)
    objects = etree.SubElement(request, _rim("RegistryObjectList"))
    ss_id = _submission_set(objects, submission)
    etree.SubElement(
        objects,
        _rim("Classification"),
        id=_uuid(ss_id, SUBMISSION_SET_NODE),
        objectType=_OT_CLASSIFICATION,
        classifiedObject=ss_id,
        classificationNode=SUBMISSION_SET_NODE,
    )
    for index, doc in enumerate(submission.documents, start=1):
        entry_id = _document_entry(objects, submission, doc, index)
        association = etree.SubElement(
            objects,
            _rim("Association"),
            id=_uuid(ss_id, entry_id, HAS_MEMBER),
            objectType=_OT_ASSOCIATION,
            associationType=HAS_MEMBER,
            sourceObject=ss_id,
            targetObject=entry_id,
        )
        _slot(association, "SubmissionSetStatus", ["Original"])
    return bytes(etree.tostring(request, xml_declaration=True, encoding="UTF-8", pretty_print=True))
