"""A CDA R2 level 1 document (structuration minimale, IHE XDS-SD) from values (pure).

The skeleton follows the ANS level-1 example (reference `cisis-hl7v2-to-mssante.md` §4.6):
realmCode FR, typeId, templateIds HL7 France / CI-SIS / XDS-SD, id, code, title, effectiveTime,
confidentialityCode, languageCode, setId, versionNumber, recordTarget, author, custodian,
legalAuthenticator, documentationOf/serviceEvent, relatedDocument RPLC (a version that replaces
another), componentOf/encompassingEncounter, and a nonXMLBody carrying the PDF or the text,
base64.

Names: the birth name is written with qualifier `BR` and the used name (when different) with
`CL`; `SP` is not used (structuration minimale 1.16 forbids it). The INS goes in
`patientRole/id` only when the identity is qualified (the caller decides: `Patient.ins`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from lxml import etree

from connector.cda.header import InstanceId
from connector.cda.safe_xml import parse_xml

NS = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
LOINC = "2.16.840.1.113883.6.1"
CONFIDENTIALITY = "2.16.840.1.113883.5.25"
GENDER = "2.16.840.1.113883.5.1"
RPPS_ROOT = "1.2.250.1.71.4.2.1"  # national PS identifiers (8 + RPPS)
STRUCTURE_ROOT = "1.2.250.1.71.4.2.2"  # national structure identifiers
PROFESSION_SYSTEM = "1.2.250.1.213.1.1.4.5"
ENCOUNTER_FACILITY_SYSTEM = "1.2.250.1.71.4.2.4"
_CONFIDENTIALITY_LABELS = {"N": "Normal", "R": "Restreint", "V": "Très restreint"}
_GENDERS = {"M": "Masculin", "F": "Féminin", "U": "Inconnu"}
_ROOT = f'<ClinicalDocument xmlns="{NS}" xmlns:xsi="{XSI}"/>'.encode()


@dataclass(frozen=True, slots=True)
class CodedConcept:
    code: str
    display: str
    system: str
    system_name: str | None = None


@dataclass(frozen=True, slots=True)
class Patient:
    """`ids`: the INS first (only for a qualified identity with all its traits), then the IPP.
    `given`: the first given name of the birth certificate; `given_names`: all of them (the INS
    traits); `birth_place_code`: the INSEE (COG) code of the birth place."""

    ids: tuple[InstanceId, ...]
    birth_family: str
    given: str
    birth_time: str  # YYYYMMDD
    gender: str  # M / F / U
    used_family: str | None = None
    given_names: str | None = None
    birth_place_code: str | None = None


@dataclass(frozen=True, slots=True)
class Person:
    national_id: str  # 8 + RPPS (or another national PS id)
    family: str
    given: str
    profession: CodedConcept | None = None


@dataclass(frozen=True, slots=True)
class Organisation:
    id: InstanceId
    name: str


@dataclass(frozen=True, slots=True)
class LevelOneDocument:
    id: InstanceId
    set_id: InstanceId
    version: int
    effective_time: str  # HL7 TS with offset, e.g. 20261123101500+0100
    type: CodedConcept
    title: str
    confidentiality: str
    patient: Patient
    author: Person
    author_time: str
    custodian: Organisation
    legal_authenticator: Person
    legal_time: str
    service_event: CodedConcept
    service_start: str
    service_end: str | None
    practice_setting: CodedConcept
    healthcare_facility: CodedConcept
    encounter_start: str
    media_type: str  # application/pdf or text/plain
    content: bytes
    replaces: InstanceId | None = None  # the version this one replaces (relatedDocument RPLC)


def _e(parent: etree._Element, tag: str, **attributes: str) -> etree._Element:
    return etree.SubElement(parent, f"{{{NS}}}{tag}", {k: v for k, v in attributes.items()})


def _text(parent: etree._Element, tag: str, text: str) -> etree._Element:
    element = _e(parent, tag)
    element.text = text
    return element


def _id(parent: etree._Element, identifier: InstanceId) -> None:
    if identifier.extension:
        _e(parent, "id", root=identifier.root, extension=identifier.extension)
    else:
        _e(parent, "id", root=identifier.root)


def _code(parent: etree._Element, tag: str, concept: CodedConcept) -> etree._Element:
    attributes = {"code": concept.code, "displayName": concept.display,
                  "codeSystem": concept.system}
    if concept.system_name:
        attributes["codeSystemName"] = concept.system_name
    return _e(parent, tag, **attributes)


def _person_name(parent: etree._Element, person: Person) -> None:
    name = _e(_e(parent, "assignedPerson"), "name")
    _text(name, "family", person.family)
    _text(name, "given", person.given)


def _organisation(parent: etree._Element, tag: str, organisation: Organisation) -> None:
    element = _e(parent, tag)
    _id(element, organisation.id)
    _text(element, "name", organisation.name)


def build_level_one(doc: LevelOneDocument) -> bytes:
    """The document as UTF-8 XML bytes, with its XML declaration."""
    root = parse_xml(_ROOT)  # the default namespace declared on the root, as CDA readers expect
    _e(root, "realmCode", code="FR")
    _e(root, "typeId", root="2.16.840.1.113883.1.3", extension="POCD_HD000040")
    for template in ("2.16.840.1.113883.2.8.2.1", "1.2.250.1.213.1.1.1.1",
                     "1.3.6.1.4.1.19376.1.2.20"):
        _e(root, "templateId", root=template)
    _id(root, doc.id)
    _code(root, "code", doc.type)
    _text(root, "title", doc.title)
    _e(root, "effectiveTime", value=doc.effective_time)
    _e(root, "confidentialityCode", code=doc.confidentiality,
       displayName=_CONFIDENTIALITY_LABELS.get(doc.confidentiality, doc.confidentiality),
       codeSystem=CONFIDENTIALITY, codeSystemName="Confidentiality")
    _e(root, "languageCode", code="fr-FR")
    _id_element = _e(root, "setId", root=doc.set_id.root)
    if doc.set_id.extension:
        _id_element.set("extension", doc.set_id.extension)
    _e(root, "versionNumber", value=str(doc.version))
    _record_target(root, doc.patient)
    author = _e(root, "author")
    _e(author, "time", value=doc.author_time)
    assigned = _e(author, "assignedAuthor")
    _e(assigned, "id", root=RPPS_ROOT, extension=doc.author.national_id)
    if doc.author.profession is not None:
        _code(assigned, "code", doc.author.profession)
    _person_name(assigned, doc.author)
    _organisation(assigned, "representedOrganization", doc.custodian)
    custodian = _e(_e(root, "custodian"), "assignedCustodian")
    _organisation(custodian, "representedCustodianOrganization", doc.custodian)
    legal = _e(root, "legalAuthenticator")
    _e(legal, "time", value=doc.legal_time)
    _e(legal, "signatureCode", code="S")
    entity = _e(legal, "assignedEntity")
    _e(entity, "id", root=RPPS_ROOT, extension=doc.legal_authenticator.national_id)
    _person_name(entity, doc.legal_authenticator)
    event = _e(_e(root, "documentationOf"), "serviceEvent")
    _code(event, "code", doc.service_event)
    period = _e(event, "effectiveTime")
    _e(period, "low", value=doc.service_start)
    if doc.service_end:
        _e(period, "high", value=doc.service_end)
    performer = _e(_e(event, "performer", typeCode="PRF"), "assignedEntity")
    _e(performer, "id", root=RPPS_ROOT, extension=doc.legal_authenticator.national_id)
    organisation = _e(performer, "representedOrganization")
    _id(organisation, doc.custodian.id)
    _text(organisation, "name", doc.custodian.name)
    _code(organisation, "standardIndustryClassCode", doc.practice_setting)
    if doc.replaces is not None:
        parent = _e(_e(root, "relatedDocument", typeCode="RPLC"), "parentDocument")
        _id(parent, doc.replaces)
    encounter = _e(_e(root, "componentOf"), "encompassingEncounter")
    _e(_e(encounter, "effectiveTime"), "low", value=doc.encounter_start)
    facility = _e(_e(encounter, "location"), "healthCareFacility")
    _code(facility, "code", doc.healthcare_facility)
    body = _e(_e(root, "component"), "nonXMLBody")
    text = _e(body, "text", mediaType=doc.media_type, representation="B64")
    text.text = base64.b64encode(doc.content).decode("ascii")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _record_target(root: etree._Element, patient: Patient) -> None:
    role = _e(_e(root, "recordTarget"), "patientRole")
    for identifier in patient.ids:
        _id(role, identifier)
    person = _e(role, "patient")
    name = _e(person, "name")
    _text(name, "given", patient.given).set("qualifier", "BR")
    if patient.given_names:
        _text(name, "given", patient.given_names)
    _text(name, "family", patient.birth_family).set("qualifier", "BR")
    if patient.used_family and patient.used_family != patient.birth_family:
        _text(name, "family", patient.used_family).set("qualifier", "CL")
    _e(person, "administrativeGenderCode", code=patient.gender,
       displayName=_GENDERS.get(patient.gender, "Inconnu"), codeSystem=GENDER)
    _e(person, "birthTime", value=patient.birth_time)
    if patient.birth_place_code:
        address = _e(_e(_e(person, "birthplace"), "place"), "addr")
        _text(address, "county", patient.birth_place_code)
