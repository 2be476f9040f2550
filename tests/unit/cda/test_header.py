"""CDA header reading, against every fixture CDA (ANS level 1 / level 3 and the HL7 examples)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree

from connector.cda.header import (
    BirthPlace,
    Coded,
    InstanceId,
    Patient,
    PersonName,
    read_cda_header,
)
from connector.cda.safe_xml import parse_xml
from connector.errors import DocumentError
from tests.conftest import CDA_FIXTURES, CISIS_FIXTURES

LOINC = "2.16.840.1.113883.6.1"
INS_TEST = InstanceId("1.2.250.1.213.1.4.10", "279035121518989")
IPP = InstanceId("1.2.3.4.567.8.9.10", "1234567890121")
BIO_TITLE = "Compte rendu d'examens biologiques"


@dataclass(frozen=True)
class Expected:
    document_id: InstanceId
    set_id: InstanceId | None
    version: int
    parents: tuple[InstanceId, ...]
    related_type: str | None
    type_code: str
    title: str
    effective_time: str
    patient_ids: tuple[InstanceId, ...]
    structured: bool
    facility: str
    practice: str
    legal_id: str
    author_id: str
    service_low: str
    service_high: str


_BIO = {
    "type_code": "11502-2",
    "title": BIO_TITLE,
    "effective_time": "20210104160527+0100",
    "patient_ids": (INS_TEST, IPP),
    "facility": "SA25",
    "practice": "AMBULATOIRE",
    "legal_id": "801234534765",
    "author_id": "801234534765",
    "service_low": "20210104092200+0100",
    "service_high": "20210104160500+0100",
}
_MDM = {
    "type_code": "18748-4",
    "title": "Radio de hanche",
    "effective_time": "20050411103328",
    "patient_ids": (INS_TEST,),
    "structured": False,
    "set_id": None,
    "facility": "SA07",
    "practice": "ETABLISSEMENT",
    "legal_id": "801234564895",
    "author_id": "801234564895",
    "service_low": "20230227102827+0200",
    "service_high": "20230227102827+0200",
}
_V1 = InstanceId("1.2.250.1.71.4.2.2.120456789.71024000081")
_V2 = InstanceId("1.2.250.1.71.4.2.2.120456789.71024000082")

EXPECTED: dict[Path, Expected] = {
    CDA_FIXTURES / "bio-cr-bio-microbiologie-n3.xml": Expected(
        document_id=InstanceId("1.2.250.1.213.1.1.1.55.2021.6.1"),
        set_id=InstanceId("1.2.250.1.213.1.1.1.55.2021.6"),
        version=1,
        parents=(),
        related_type=None,
        structured=True,
        **_BIO,
    ),
    CDA_FIXTURES / "bio-cr-bio-n1.xml": Expected(
        document_id=InstanceId("1.2.250.1.213.1.1.1.55.2021.3.1"),
        set_id=InstanceId("1.2.250.1.213.1.1.1.55.2021.3"),
        version=1,
        parents=(),
        related_type=None,
        structured=False,
        **_BIO,
    ),
    CDA_FIXTURES / "doc-non-structure-n1.xml": Expected(
        document_id=InstanceId("1.3.6.1.4.1.19376.1.2.20.12345.1.1"),
        set_id=InstanceId("1.3.6.1.4.1.19376.1.2.20.12345.1"),
        version=1,
        parents=(),
        related_type=None,
        type_code="11502-2",
        title=BIO_TITLE,
        effective_time="20210401134745+0100",
        patient_ids=(INS_TEST, IPP),
        structured=False,
        facility="SA07",
        practice="AMBULATOIRE",
        legal_id="807505123456",
        author_id="801234534765",
        service_low="20210104134700+0100",
        service_high="20210104135500+0100",
    ),
    CDA_FIXTURES / "img-cr-img-n1.xml": Expected(
        document_id=InstanceId("1.2.250.1.213.1.1.1.45.2024.2.1"),
        set_id=InstanceId("1.2.250.1.213.1.1.1.45.2024.2"),
        version=2,
        parents=(InstanceId("90E1C8EC-F951-4B26-A305-A34848818DD6"),),
        related_type="RPLC",
        type_code="18748-4",
        title="CR d’imagerie médicale - Scanner Tête + Cou + Thorax avec injection",
        effective_time="20210108111700+0100",
        patient_ids=(INS_TEST, IPP),
        structured=False,
        facility="SA08",
        practice="AMBULATOIRE",
        legal_id="801234560801",
        author_id="801234560801",
        service_low="20210108102500+0100",
        service_high="20210108111700+0100",
    ),
    CDA_FIXTURES / "ldl-ses-n3.xml": Expected(
        document_id=InstanceId("1.2.250.1.213.1.1.1.29.2022.1.1"),
        set_id=InstanceId("1.2.250.1.213.1.1.1.29.2022.1"),
        version=1,
        parents=(),
        related_type=None,
        type_code="11490-0",
        title="Lettre de liaison à la sortie de l'établissement de santé",
        effective_time="20191203133000+0100",
        patient_ids=(INS_TEST, IPP),
        structured=True,
        facility="SA01",
        practice="ETABLISSEMENT",
        legal_id="801234567897",
        author_id="801234567897",
        service_low="20191029111700+0100",
        service_high="20191203133000+0100",
    ),
    CISIS_FIXTURES / "mdm-t02-initial" / "document.xml": Expected(
        document_id=_V1, version=1, parents=(), related_type=None, **_MDM
    ),
    CISIS_FIXTURES / "mdm-t10-replace" / "document.xml": Expected(
        document_id=_V2, version=2, parents=(_V1,), related_type="RPLC", **_MDM
    ),
    CISIS_FIXTURES / "mdm-t04-delete" / "document.xml": Expected(
        document_id=_V2, version=2, parents=(_V1,), related_type="RPLC", **_MDM
    ),
    CISIS_FIXTURES / "oru-r01-initial" / "document-n1.xml": Expected(
        document_id=InstanceId("1.2.250.1.213.1.1.9"),
        set_id=InstanceId("1.2.250.1.213.1.1.9"),
        version=1,
        parents=(),
        related_type=None,
        structured=False,
        **_BIO,
    ),
    CISIS_FIXTURES / "oru-r01-initial" / "document-n3.xml": Expected(
        document_id=InstanceId("1.3.6.1.4.1.19376.1.3.3.4"),
        set_id=InstanceId("17940492-E5FF-41ED-B232-18E84FFE7A36"),
        version=1,
        parents=(),
        related_type=None,
        structured=True,
        **_BIO,
    ),
}


def _root(path: Path) -> etree._Element:
    return parse_xml(path.read_bytes())


def test_every_fixture_cda_has_an_expectation() -> None:
    found = set(CDA_FIXTURES.glob("*.xml")) | set(CISIS_FIXTURES.glob("*/document*.xml"))
    assert found == set(EXPECTED)


@pytest.mark.parametrize("path", sorted(EXPECTED), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_key_fields_of_every_fixture(path: Path) -> None:
    exp = EXPECTED[path]
    header = read_cda_header(_root(path))

    assert header.document_id == exp.document_id
    assert header.set_id == exp.set_id
    assert header.version_number == exp.version
    assert header.parent_document_ids == exp.parents
    assert header.related_document_type == exp.related_type
    assert header.code is not None
    assert (header.code.code, header.code.code_system) == (exp.type_code, LOINC)
    assert header.title == exp.title
    assert header.effective_time == exp.effective_time
    assert header.confidentiality == Coded("N", "2.16.840.1.113883.5.25", "Normal")
    assert header.language_code == "fr-FR"
    assert header.patient_ids == exp.patient_ids
    assert header.ins == INS_TEST
    assert header.is_structured is exp.structured
    assert header.healthcare_facility_type_code is not None
    assert header.healthcare_facility_type_code.code == exp.facility
    assert header.healthcare_facility_type_code.code_system == "1.2.250.1.71.4.2.4"
    assert header.service_event is not None
    practice = header.service_event.practice_setting_code
    assert practice is not None
    assert (practice.code, practice.code_system) == (exp.practice, "1.2.250.1.213.1.1.4.9")
    assert header.service_event.low == exp.service_low
    assert header.service_event.high == exp.service_high
    assert header.legal_authenticator is not None
    assert header.legal_authenticator.signature_code == "S"
    assert header.legal_authenticator.entity.id == InstanceId("1.2.250.1.71.4.2.1", exp.legal_id)
    assert [a.id for a in header.authors] == [InstanceId("1.2.250.1.71.4.2.1", exp.author_id)]
    roots = header.template_roots
    assert roots[:2] == ("2.16.840.1.113883.2.8.2.1", "1.2.250.1.213.1.1.1.1")
    assert ("1.3.6.1.4.1.19376.1.2.20" in roots) is (not exp.structured)
    assert header.body_media_type == (None if exp.structured else "application/pdf")


def test_level1_biology_header_in_detail() -> None:
    header = read_cda_header(_root(CDA_FIXTURES / "bio-cr-bio-n1.xml"))

    assert header.code == Coded("11502-2", LOINC, "CR d'examens biologiques")
    assert header.patient == Patient(
        birth_family_name="PAT-TROIS",
        used_family_name="PAT-TROIS",
        birth_given_names="DOMINIQUE MARIE-LOUISE",
        first_birth_given_name="DOMINIQUE",
        used_given_name="DOMINIQUE",
        birth_time="19790328",
        sex=Coded("F", "2.16.840.1.113883.5.1", "Féminin"),
        birth_place=BirthPlace(county="51215", city="DOMPREMY"),
    )
    (author,) = header.authors
    assert author.time == "20210104160527+0100"
    assert author.person_name == PersonName("CAMPARINI", ("Marcel",), "M", "DR")
    assert author.specialty == Coded(
        "G15_10/SM03", "1.2.250.1.213.1.1.4.5", "Médecin - Biologie médicale (SM)"
    )
    assert author.function_code is None
    assert author.organization is not None
    assert author.organization.id == InstanceId("1.2.250.1.71.4.2.2", "1120459876")
    assert author.organization.name == "Laboratoire des charmes"
    assert header.custodian is not None
    assert header.custodian.id == InstanceId("1.2.250.1.71.4.2.2", "1120459876")
    assert header.custodian.name == "Laboratoire des charmes"
    assert header.legal_authenticator is not None
    assert header.legal_authenticator.time == "20210104160527+0100"
    event = header.service_event
    assert event is not None
    assert event.code == Coded("18723-7", LOINC, "Hématologie")
    assert event.performer is not None
    assert event.performer.person_name == PersonName("CAMPARINI", ("Marcel",), "M", "DR")
    assert header.encounter_code == Coded(
        "AMB", "2.16.840.1.113883.5.4", "Ambulatoire (hors établissement)"
    )
    assert header.local_patient_ids == (IPP,)


def test_author_function_code_is_read_from_author_not_from_participants() -> None:
    img = read_cda_header(_root(CDA_FIXTURES / "img-cr-img-n1.xml"))
    assert img.authors[0].function_code == Coded(
        "ATTPHYS",
        "2.16.840.1.113883.5.88",
        "Référent - Responsable du patient dans la structure de soins",
    )
    # bio-cr-bio-n1 has a functionCode on a participant (PRELV) only.
    bio = read_cda_header(_root(CDA_FIXTURES / "bio-cr-bio-n1.xml"))
    assert bio.authors[0].function_code is None


def test_authors_inside_the_body_are_not_header_authors() -> None:
    path = CDA_FIXTURES / "ldl-ses-n3.xml"
    assert path.read_text(encoding="utf-8").count("<author>") == 3
    header = read_cda_header(_root(path))
    assert len(header.authors) == 1
    assert header.template_ids[2] == InstanceId("1.2.250.1.213.1.1.1.29", "2022.01")


def test_hl7_example_without_used_given_name_and_with_sp_family() -> None:
    header = read_cda_header(_root(CISIS_FIXTURES / "mdm-t10-replace" / "document.xml"))
    assert header.patient is not None
    assert header.patient.birth_family_name == "PAT-TROIS"
    assert header.patient.used_family_name == "PAT-TROIS"  # qualifier CL preferred over SP
    assert header.patient.first_birth_given_name == "DOMINIQUE"
    assert header.patient.used_given_name is None
    assert header.patient.birth_place == BirthPlace(county="63220", city="MAZOIRES")
    assert header.authors[0].specialty is None
    assert header.authors[0].person_name == PersonName("Eric", ("Thomas",))


# -- refusals -----------------------------------------------------------------------------------

_MINIMAL = (
    '<ClinicalDocument xmlns="urn:hl7-org:v3">{id}<versionNumber value="{version}"/>'
    "<recordTarget><patientRole>"
    '<id root="1.2.250.1.213.1.4.10" extension="279035121518989"/>'
    "<patient><name><family qualifier='BR'>SECRETNAME</family></name>"
    '<birthTime value="19790328"/></patient></patientRole></recordTarget>'
    "</ClinicalDocument>"
)


def _minimal(*, doc_id: str = '<id root="1.2.3"/>', version: str = "1") -> etree._Element:
    return parse_xml(_MINIMAL.format(id=doc_id, version=version).encode())


def _assert_no_patient_data(exc: DocumentError) -> None:
    text = str(exc)
    for secret in ("279035121518989", "SECRETNAME", "19790328"):
        assert secret not in text


def test_minimal_document_reads_with_optional_parts_absent() -> None:
    header = read_cda_header(_minimal())
    assert header.document_id == InstanceId("1.2.3")
    assert header.set_id is None
    assert header.code is None
    assert header.authors == ()
    assert header.legal_authenticator is None
    assert header.service_event is None
    assert header.patient is not None
    assert header.patient.birth_family_name == "SECRETNAME"


def test_root_other_than_clinical_document_is_refused() -> None:
    with pytest.raises(DocumentError, match="ClinicalDocument") as info:
        read_cda_header(parse_xml(b'<Other xmlns="urn:hl7-org:v3"/>'))
    _assert_no_patient_data(info.value)


def test_clinical_document_outside_the_hl7_namespace_is_refused() -> None:
    with pytest.raises(DocumentError, match="urn:hl7-org:v3"):
        read_cda_header(parse_xml(b"<ClinicalDocument/>"))


@pytest.mark.parametrize("doc_id", ["", "<id/>", '<id nullFlavor="UNK"/>', '<id root=" "/>'])
def test_document_without_id_root_is_refused(doc_id: str) -> None:
    with pytest.raises(DocumentError, match=r"ClinicalDocument/id/@root") as info:
        read_cda_header(_minimal(doc_id=doc_id))
    _assert_no_patient_data(info.value)


@pytest.mark.parametrize("version", ["x", "0", "-1"])
def test_bad_version_number_is_refused(version: str) -> None:
    with pytest.raises(DocumentError, match="versionNumber") as info:
        read_cda_header(_minimal(version=version))
    _assert_no_patient_data(info.value)


def test_null_flavoured_codes_read_as_none() -> None:
    xml = (
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.3"/>'
        '<code nullFlavor="UNK"/><confidentialityCode code="N"/>'
        '<author><functionCode nullFlavor="UNK"/><assignedAuthor><id root="1.2.250.1.71.4.2.1"'
        ' extension="1"/><assignedAuthoringDevice><manufacturerModelName>M</manufacturerModelName>'
        "<softwareName>S</softwareName></assignedAuthoringDevice></assignedAuthor></author>"
        "</ClinicalDocument>"
    )
    header = read_cda_header(parse_xml(xml.encode()))
    assert header.code is None
    assert header.confidentiality is None  # no codeSystem
    assert header.authors[0].function_code is None
    assert header.authors[0].person_name is None
    assert header.authors[0].device is not None
    assert header.authors[0].device.software_name == "S"


def test_headers_read_in_several_threads_at_once_agree() -> None:
    """Compiled element paths are kept per thread (`connector.cda.paths`): intake reads headers
    in a pool of worker threads."""
    from concurrent.futures import ThreadPoolExecutor

    paths = sorted(EXPECTED)
    expected = [read_cda_header(_root(path)) for path in paths]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            found = list(pool.map(lambda p: read_cda_header(_root(p)), paths))
            assert found == expected
