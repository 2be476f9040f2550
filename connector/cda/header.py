"""The CDA R2 header ("Structuration minimale des documents de santé", CI-SIS) read into a value.

`read_cda_header(root)` takes the root element returned by `connector.cda.safe_xml.parse_xml`
and returns a frozen `CdaHeader`. It reads; it does not validate: the XSD/schematron check is
done elsewhere. The only things it refuses (with `DocumentError`) are a root that is not an HL7 v3
`ClinicalDocument` and a document without `id/@root`, because nothing downstream (XDS uniqueId,
correlation) can work without them. Every other element is optional here and comes back as
`None` or an empty tuple when absent or carried as a bare `nullFlavor`.

Element paths follow the CI-SIS header table (reference `cisis-hl7v2-to-mssante.md` §4.2–§4.4)
and the CDA → XDS mapping (§4.7). Timestamps are kept as the HL7 TS strings found in the document
(e.g. ``20210104160527+0100``); conversion to XDS UTC DTM is the metadata builder's job.
Only the document header is read: `author`, `documentationOf`, ... inside the body are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from connector.cda.paths import HL7_NS, select
from connector.errors import DocumentError

_CLINICAL_DOCUMENT = f"{{{HL7_NS}}}ClinicalDocument"

#: OIDs of the INS (NIR, NIA, and their test counterparts) in `patientRole/id/@root` (§4.3).
INS_ROOTS: frozenset[str] = frozenset(
    {"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"}
)
#: IHE XDS-SD templateId carried by a level-1 (nonXMLBody) CI-SIS document (§4.2).
XDS_SD_TEMPLATE_ID = "1.3.6.1.4.1.19376.1.2.20"


# -- value types -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceId:
    """HL7 II: `root` (OID or UUID) and an optional `extension`."""

    root: str
    extension: str | None = None

    @property
    def key(self) -> str:
        """`root^extension`, or `root` alone: how the store names a document or its set."""
        return f"{self.root}^{self.extension}" if self.extension else self.root

    @classmethod
    def from_key(cls, key: str) -> InstanceId:
        root, _, extension = key.partition("^")
        return cls(root, extension or None)


@dataclass(frozen=True, slots=True)
class Coded:
    """HL7 CD/CE/CS: `code`, `codeSystem`, optional `displayName`."""

    code: str
    code_system: str
    display_name: str | None = None


@dataclass(frozen=True, slots=True)
class PersonName:
    """HL7 PN of a professional: first `family`, every `given` in order, `prefix`, `suffix`."""

    family: str | None
    given: tuple[str, ...] = ()
    prefix: str | None = None
    suffix: str | None = None


@dataclass(frozen=True, slots=True)
class Organization:
    """`representedOrganization` / `representedCustodianOrganization` / `scopingOrganization`."""

    ids: tuple[InstanceId, ...]
    name: str | None
    standard_industry_class_code: Coded | None = None

    @property
    def id(self) -> InstanceId | None:
        """The first identifier (the FINESS/SIRET one in the CI-SIS examples)."""
        return self.ids[0] if self.ids else None


@dataclass(frozen=True, slots=True)
class AuthoringDevice:
    """`assignedAuthoringDevice`: software authoring the document instead of a person."""

    manufacturer_model_name: str | None
    software_name: str | None


@dataclass(frozen=True, slots=True)
class Author:
    """One header `author` (§4.2): `time`, `functionCode`, and the `assignedAuthor` content."""

    time: str | None
    ids: tuple[InstanceId, ...]
    person_name: PersonName | None
    specialty: Coded | None  # assignedAuthor/code (JDV_J01 XdsAuthorSpecialty)
    function_code: Coded | None  # author/functionCode (XDS authorRole)
    organization: Organization | None
    device: AuthoringDevice | None = None

    @property
    def id(self) -> InstanceId | None:
        return self.ids[0] if self.ids else None


@dataclass(frozen=True, slots=True)
class AssignedEntity:
    """An `assignedEntity` (legal authenticator, service event performer)."""

    ids: tuple[InstanceId, ...]
    person_name: PersonName | None
    code: Coded | None
    organization: Organization | None

    @property
    def id(self) -> InstanceId | None:
        return self.ids[0] if self.ids else None


@dataclass(frozen=True, slots=True)
class LegalAuthenticator:
    time: str | None
    signature_code: str | None
    entity: AssignedEntity


@dataclass(frozen=True, slots=True)
class ServiceEvent:
    """First `documentationOf/serviceEvent` (the main act, §4.2)."""

    code: Coded | None
    low: str | None
    high: str | None
    performer: AssignedEntity | None

    @property
    def practice_setting_code(self) -> Coded | None:
        """performer/assignedEntity/representedOrganization/standardIndustryClassCode (§4.7)."""
        if self.performer is None or self.performer.organization is None:
            return None
        return self.performer.organization.standard_industry_class_code


@dataclass(frozen=True, slots=True)
class BirthPlace:
    """`birthplace/place/addr`: `county` holds the INSEE COG code of the birth place (§4.3)."""

    county: str | None
    city: str | None


@dataclass(frozen=True, slots=True)
class Patient:
    """Patient traits of `recordTarget/patientRole/patient` (§4.3 name qualifiers).

    `birth_given_names` is the `given` without qualifier (the full list of birth given names),
    `first_birth_given_name` is `given@qualifier='BR'`, `used_given_name` `given@qualifier='CL'`.
    `used_family_name` is `family@qualifier='CL'` (some older examples carry `SP`, HL7's
    "spouse" name, as the used name: it is taken when there is no `CL`).
    """

    birth_family_name: str | None
    used_family_name: str | None
    birth_given_names: str | None
    first_birth_given_name: str | None
    used_given_name: str | None
    birth_time: str | None
    sex: Coded | None
    birth_place: BirthPlace | None


@dataclass(frozen=True, slots=True)
class CdaHeader:
    document_id: InstanceId
    set_id: InstanceId | None
    version_number: int | None
    parent_document_ids: tuple[InstanceId, ...]  # relatedDocument/parentDocument/id
    related_document_type: str | None  # relatedDocument/@typeCode (RPLC, XFRM, APND)
    code: Coded | None
    title: str | None
    effective_time: str | None
    confidentiality: Coded | None
    language_code: str | None
    patient_ids: tuple[InstanceId, ...]  # recordTarget/patientRole/id
    patient: Patient | None
    authors: tuple[Author, ...]
    legal_authenticator: LegalAuthenticator | None
    custodian: Organization | None
    service_event: ServiceEvent | None
    healthcare_facility_type_code: Coded | None
    encounter_code: Coded | None  # componentOf/encompassingEncounter/code (JDV_J142)
    template_ids: tuple[InstanceId, ...]
    is_structured: bool  # component/structuredBody (level 3) rather than nonXMLBody (level 1)
    body_media_type: str | None = None  # component/nonXMLBody/text/@mediaType (level 1 only)

    @property
    def ins(self) -> InstanceId | None:
        """The first patient id whose root is an INS OID, if any."""
        return next((pid for pid in self.patient_ids if pid.root in INS_ROOTS), None)

    @property
    def local_patient_ids(self) -> tuple[InstanceId, ...]:
        """Patient ids that are not INS (IPP, root = the establishment's OID)."""
        return tuple(pid for pid in self.patient_ids if pid.root not in INS_ROOTS)

    @property
    def template_roots(self) -> tuple[str, ...]:
        return tuple(t.root for t in self.template_ids)


# -- element helpers -------------------------------------------------------------------------------


def _children(parent: etree._Element | None, path: str) -> list[etree._Element]:
    return [] if parent is None else select(parent, path)


def _child(parent: etree._Element | None, path: str) -> etree._Element | None:
    found = _children(parent, path)
    return found[0] if found else None


def _attr(el: etree._Element | None, name: str) -> str | None:
    if el is None:
        return None
    value = el.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _text(el: etree._Element | None) -> str | None:
    """Text content with whitespace collapsed; None when empty or absent."""
    if el is None:
        return None
    text = " ".join("".join(t for t in el.itertext() if isinstance(t, str)).split())
    return text or None


def _instance_id(el: etree._Element | None) -> InstanceId | None:
    root = _attr(el, "root")
    if root is None:
        return None
    return InstanceId(root=root, extension=_attr(el, "extension"))


def _ids(parent: etree._Element | None, path: str = "h:id") -> tuple[InstanceId, ...]:
    return tuple(i for i in (_instance_id(el) for el in _children(parent, path)) if i is not None)


def _coded(el: etree._Element | None) -> Coded | None:
    """A coded value; None when absent, nullFlavored, or missing code or codeSystem."""
    code = _attr(el, "code")
    system = _attr(el, "codeSystem")
    if code is None or system is None:
        return None
    return Coded(code=code, code_system=system, display_name=_attr(el, "displayName"))


def _value(parent: etree._Element | None, path: str) -> str | None:
    return _attr(_child(parent, path), "value")


def _person_name(person: etree._Element | None) -> PersonName | None:
    name = _child(person, "h:name")
    if name is None:
        return None
    given = tuple(t for t in (_text(g) for g in _children(name, "h:given")) if t)
    family = _text(_child(name, "h:family"))
    if family is None and not given:
        return None
    return PersonName(
        family=family,
        given=given,
        prefix=_text(_child(name, "h:prefix")),
        suffix=_text(_child(name, "h:suffix")),
    )


def _organization(el: etree._Element | None) -> Organization | None:
    if el is None:
        return None
    ids = _ids(el)
    name = _text(_child(el, "h:name"))
    if not ids and name is None:
        return None
    return Organization(
        ids=ids,
        name=name,
        standard_industry_class_code=_coded(_child(el, "h:standardIndustryClassCode")),
    )


def _assigned_entity(el: etree._Element | None) -> AssignedEntity | None:
    if el is None:
        return None
    return AssignedEntity(
        ids=_ids(el),
        person_name=_person_name(_child(el, "h:assignedPerson")),
        code=_coded(_child(el, "h:code")),
        organization=_organization(_child(el, "h:representedOrganization")),
    )


# -- header parts ----------------------------------------------------------------------------------


def _author(el: etree._Element) -> Author:
    assigned = _child(el, "h:assignedAuthor")
    device_el = _child(assigned, "h:assignedAuthoringDevice")
    device = None
    if device_el is not None:
        device = AuthoringDevice(
            manufacturer_model_name=_text(_child(device_el, "h:manufacturerModelName")),
            software_name=_text(_child(device_el, "h:softwareName")),
        )
    return Author(
        time=_value(el, "h:time"),
        ids=_ids(assigned),
        person_name=_person_name(_child(assigned, "h:assignedPerson")),
        specialty=_coded(_child(assigned, "h:code")),
        function_code=_coded(_child(el, "h:functionCode")),
        organization=_organization(_child(assigned, "h:representedOrganization")),
        device=device,
    )


def _qualified(name: etree._Element | None, part: str, qualifier: str | None) -> str | None:
    for el in _children(name, f"h:{part}"):
        if _attr(el, "qualifier") == qualifier:
            return _text(el)
    return None


def _patient(patient: etree._Element | None) -> Patient | None:
    if patient is None:
        return None
    name = _child(patient, "h:name")
    addr = _child(patient, "h:birthplace/h:place/h:addr")
    birth_place = None
    if addr is not None:
        birth_place = BirthPlace(
            county=_text(_child(addr, "h:county")), city=_text(_child(addr, "h:city"))
        )
    return Patient(
        birth_family_name=_qualified(name, "family", "BR") or _qualified(name, "family", None),
        used_family_name=_qualified(name, "family", "CL") or _qualified(name, "family", "SP"),
        birth_given_names=_qualified(name, "given", None),
        first_birth_given_name=_qualified(name, "given", "BR"),
        used_given_name=_qualified(name, "given", "CL"),
        birth_time=_value(patient, "h:birthTime"),
        sex=_coded(_child(patient, "h:administrativeGenderCode")),
        birth_place=birth_place,
    )


def _legal_authenticator(el: etree._Element | None) -> LegalAuthenticator | None:
    entity = _assigned_entity(_child(el, "h:assignedEntity"))
    if el is None or entity is None:
        return None
    return LegalAuthenticator(
        time=_value(el, "h:time"),
        signature_code=_attr(_child(el, "h:signatureCode"), "code"),
        entity=entity,
    )


def _service_event(el: etree._Element | None) -> ServiceEvent | None:
    if el is None:
        return None
    performer = _child(el, "h:performer[@typeCode='PRF']")
    if performer is None:
        performer = _child(el, "h:performer")
    return ServiceEvent(
        code=_coded(_child(el, "h:code")),
        low=_value(el, "h:effectiveTime/h:low"),
        high=_value(el, "h:effectiveTime/h:high"),
        performer=_assigned_entity(_child(performer, "h:assignedEntity")),
    )


def _version_number(root: etree._Element) -> int | None:
    raw = _value(root, "h:versionNumber")
    if raw is None:
        return None
    try:
        number = int(raw)
    except ValueError:
        raise DocumentError("CDA versionNumber/@value is not an integer") from None
    if number < 1:
        raise DocumentError("CDA versionNumber/@value must be a positive integer")
    return number


def read_cda_header(root: etree._Element) -> CdaHeader:
    """Read the header of a parsed CDA R2 document (the module docstring says what is refused)."""
    if root.tag != _CLINICAL_DOCUMENT:
        raise DocumentError("root element is not ClinicalDocument in namespace urn:hl7-org:v3")
    document_id = _instance_id(_child(root, "h:id"))
    if document_id is None:
        raise DocumentError("CDA ClinicalDocument/id/@root is missing")
    related = _child(root, "h:relatedDocument")
    encounter = _child(root, "h:componentOf/h:encompassingEncounter")
    return CdaHeader(
        document_id=document_id,
        set_id=_instance_id(_child(root, "h:setId")),
        version_number=_version_number(root),
        parent_document_ids=_ids(related, "h:parentDocument/h:id"),
        related_document_type=_attr(related, "typeCode"),
        code=_coded(_child(root, "h:code")),
        title=_text(_child(root, "h:title")),
        effective_time=_value(root, "h:effectiveTime"),
        confidentiality=_coded(_child(root, "h:confidentialityCode")),
        language_code=_attr(_child(root, "h:languageCode"), "code"),
        patient_ids=_ids(root, "h:recordTarget/h:patientRole/h:id"),
        patient=_patient(_child(root, "h:recordTarget/h:patientRole/h:patient")),
        authors=tuple(_author(el) for el in _children(root, "h:author")),
        legal_authenticator=_legal_authenticator(_child(root, "h:legalAuthenticator")),
        custodian=_organization(
            _child(
                root,
                "h:custodian/h:assignedCustodian/h:representedCustodianOrganization",
            )
        ),
        service_event=_service_event(_child(root, "h:documentationOf/h:serviceEvent")),
        healthcare_facility_type_code=_coded(
            _child(encounter, "h:location/h:healthCareFacility/h:code")
        ),
        encounter_code=_coded(_child(encounter, "h:code")),
        template_ids=_ids(root, "h:templateId"),
        is_structured=_child(root, "h:component/h:structuredBody") is not None,
        body_media_type=_attr(_child(root, "h:component/h:nonXMLBody/h:text"), "mediaType"),
    )
