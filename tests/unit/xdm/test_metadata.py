"""METADATA.XML: every slot checked against the CDA it came from (read independently by XPath)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from connector.cda.header import CdaHeader, Coded, InstanceId, PersonName
from connector.cda.safe_xml import parse_xml
from connector.errors import DocumentError
from connector.xdm import metadata as md
from connector.xdm.metadata import (
    ExtraConfidentiality,
    Institution,
    IntendedRecipient,
    XdmAction,
    XdmDocument,
    build_metadata_xml,
    class_code_for,
    content_type_for_patient_class,
    format_code_for,
    xds_time,
)
from tests.conftest import CDA_FIXTURES, CISIS_FIXTURES
from tests.unit.xdm import (
    FIXTURE_DOCUMENTS,
    INS_TEST,
    SUBMISSION_UID,
    TENANT_OID,
    cda_value,
    classifications,
    coded,
    external_id,
    fixture_id,
    load,
    one,
    slot,
    submission,
    xpath,
)

LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
INS_CX = "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
IPP_CX = "1234567890121^^^&1.2.3.4.567.8.9.10&ISO^PI"
PDF_FORMAT = "urn:ihe:iti:xds-sd:pdf:2008"
EXPECTED_FORMAT = {
    "bio-cr-bio-microbiologie-n3.xml": "urn:ihe:lab:xd-lab:2008",
    "ldl-ses-n3.xml": "urn:asip:ci-sis:ldl-ses:2017",
    "document-n3.xml": "urn:ihe:lab:xd-lab:2008",
}


def _parse(xml: bytes) -> etree._Element:
    return parse_xml(xml, what="METADATA.XML")


def _utc(ts: str) -> str:
    """Independent HL7 TS → UTC conversion for the 14-digit values of the fixtures."""
    if re.fullmatch(r"\d{14}[+-]\d{4}", ts):
        moment = datetime.strptime(ts, "%Y%m%d%H%M%S%z")
        return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S")
    assert re.fullmatch(r"\d{14}", ts), ts
    return ts


def _entry(root: etree._Element) -> etree._Element:
    return one(root, "rim:RegistryObjectList/rim:ExtrinsicObject")


@pytest.mark.parametrize("path", FIXTURE_DOCUMENTS, ids=fixture_id)
def test_document_entry_slots_match_the_cda(path: Path) -> None:
    data, _ = load(path)
    cda = parse_xml(data)
    root = _parse(build_metadata_xml(submission(path)))
    entry = _entry(root)
    doc = "/h:ClinicalDocument"
    legal = f"{doc}/h:legalAuthenticator/h:assignedEntity"
    author = f"{doc}/h:author[1]/h:assignedAuthor"
    event = f"{doc}/h:documentationOf[1]/h:serviceEvent"
    performer_org = f"{event}/h:performer/h:assignedEntity/h:representedOrganization"

    assert entry.get("mimeType") == "text/xml"
    assert entry.get("objectType") == "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
    assert external_id(entry, md.DE_UNIQUE_ID) == cda_value(cda, f"{doc}/h:id/@root")
    assert external_id(entry, md.DE_PATIENT_ID) == INS_CX
    assert slot(entry, "creationTime") == [_utc(cda_value(cda, f"{doc}/h:effectiveTime/@value"))]
    assert slot(entry, "languageCode") == [cda_value(cda, f"{doc}/h:languageCode/@code")]
    assert one(entry, "rim:Name/rim:LocalizedString").get("value") == " ".join(
        cda_value(cda, f"{doc}/h:title").split()
    )
    assert slot(entry, "serviceStartTime") == [
        _utc(cda_value(cda, f"{event}/h:effectiveTime/h:low/@value"))
    ]
    assert slot(entry, "serviceStopTime") == [
        _utc(cda_value(cda, f"{event}/h:effectiveTime/h:high/@value"))
    ]
    assert slot(entry, "hash") == [hashlib.sha1(data, usedforsecurity=False).hexdigest()]
    assert slot(entry, "size") == [str(len(data))]
    assert slot(entry, "URI") == ["DOC0001.XML"]
    assert slot(entry, "action") == []

    (legal_value,) = slot(entry, "legalAuthenticator")
    assert legal_value == (
        f"{cda_value(cda, f'{legal}/h:id/@extension')}"
        f"^{cda_value(cda, f'{legal}/h:assignedPerson/h:name/h:family')}"
        f"^{cda_value(cda, f'{legal}/h:assignedPerson/h:name/h:given[1]')}"
        f"^^^^^^&{cda_value(cda, f'{legal}/h:id/@root')}&ISO^D^^^IDNPS"
    )

    assert coded(entry, md.DE_TYPE_CODE) == [
        (
            cda_value(cda, f"{doc}/h:code/@code"),
            cda_value(cda, f"{doc}/h:code/@codeSystem"),
            cda_value(cda, f"{doc}/h:code/@displayName"),
        )
    ]
    confidentiality = coded(entry, md.DE_CONFIDENTIALITY_CODE)
    assert confidentiality == [
        (
            cda_value(cda, f"{doc}/h:confidentialityCode/@code"),
            cda_value(cda, f"{doc}/h:confidentialityCode/@codeSystem"),
            cda_value(cda, f"{doc}/h:confidentialityCode/@displayName"),
        )
    ]
    facility = f"{doc}/h:componentOf/h:encompassingEncounter/h:location/h:healthCareFacility/h:code"
    assert coded(entry, md.DE_HEALTHCARE_FACILITY_TYPE_CODE) == [
        (
            cda_value(cda, f"{facility}/@code"),
            cda_value(cda, f"{facility}/@codeSystem"),
            cda_value(cda, f"{facility}/@displayName"),
        )
    ]
    practice = f"{performer_org}/h:standardIndustryClassCode"
    assert coded(entry, md.DE_PRACTICE_SETTING_CODE) == [
        (
            cda_value(cda, f"{practice}/@code"),
            cda_value(cda, f"{practice}/@codeSystem"),
            cda_value(cda, f"{practice}/@displayName"),
        )
    ]
    (fmt,) = coded(entry, md.DE_FORMAT_CODE)
    assert fmt[0] == EXPECTED_FORMAT.get(path.name, PDF_FORMAT)
    assert coded(entry, md.DE_CLASS_CODE) == [("10", "1.2.250.1.213.1.1.4.1", "Compte rendu")]

    (author_cl,) = classifications(entry, md.DE_AUTHOR)
    (person,) = slot(author_cl, "authorPerson")
    assert person.startswith(
        f"{cda_value(cda, f'{author}/h:id/@extension')}"
        f"^{cda_value(cda, f'{author}/h:assignedPerson/h:name/h:family')}"
        f"^{cda_value(cda, f'{author}/h:assignedPerson/h:name/h:given[1]')}^"
    )
    (institution,) = slot(author_cl, "authorInstitution")
    org = f"{author}/h:representedOrganization"
    assert institution == (
        f"{cda_value(cda, f'{org}/h:name')}^^^^^&{cda_value(cda, f'{org}/h:id/@root')}&ISO"
        f"^IDNST^^^{cda_value(cda, f'{org}/h:id/@extension')}"
    )
    specialty = cda_value(cda, f"{author}/h:code/@code")
    expected_specialty = (
        [
            f"{specialty}^{cda_value(cda, f'{author}/h:code/@displayName')}"
            f"^{cda_value(cda, f'{author}/h:code/@codeSystem')}"
        ]
        if specialty
        else []
    )
    assert slot(author_cl, "authorSpecialty") == expected_specialty
    role = cda_value(cda, f"{doc}/h:author[1]/h:functionCode/@displayName")
    assert slot(author_cl, "authorRole") == ([role] if role else [])

    has_ipp = IPP_CX.split("^")[0] in [
        cda_value(cda, f"{doc}/h:recordTarget/h:patientRole/h:id[{i}]/@extension") for i in (1, 2)
    ]
    (source_pid,) = slot(entry, "sourcePatientId")
    assert source_pid == (IPP_CX if has_ipp else INS_CX)
    patient = f"{doc}/h:recordTarget/h:patientRole/h:patient"
    birth_family = cda_value(cda, patient + "/h:name/h:family[@qualifier='BR']")
    birth_given = cda_value(cda, patient + "/h:name/h:given[@qualifier='BR']")
    assert slot(entry, "sourcePatientInfo") == [
        f"PID-3|{source_pid}",
        f"PID-5|{birth_family}^{birth_given}^^^^^L",
        f"PID-7|{cda_value(cda, f'{patient}/h:birthTime/@value')}",
        f"PID-8|{cda_value(cda, f'{patient}/h:administrativeGenderCode/@code')}",
    ]


def test_submission_set_and_structure() -> None:
    path = CDA_FIXTURES / "bio-cr-bio-n1.xml"
    xml = build_metadata_xml(submission(path))
    root = _parse(xml)

    assert root.tag == f"{{{LCM}}}SubmitObjectsRequest"
    package = one(root, "rim:RegistryObjectList/rim:RegistryPackage")
    package_id = package.get("id")
    assert package_id is not None
    assert package_id.startswith("urn:uuid:")
    node = one(root, "rim:RegistryObjectList/rim:Classification")
    assert node.get("classifiedObject") == package_id
    assert node.get("classificationNode") == "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"

    assert slot(package, "submissionTime") == ["20240506081112"]  # 10:11:12+02:00 in UTC
    assert external_id(package, md.SS_UNIQUE_ID) == SUBMISSION_UID
    assert external_id(package, md.SS_SOURCE_ID) == TENANT_OID
    assert external_id(package, md.SS_PATIENT_ID) == INS_CX
    assert coded(package, md.SS_CONTENT_TYPE_CODE) == [
        ("07", "1.2.250.1.213.2.2", "Consultation Soins Externes")
    ]
    (author,) = classifications(package, md.SS_AUTHOR)
    assert slot(author, "authorPerson") == [
        "801234567866^Dupont^Jean^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
    ]
    assert slot(author, "authorInstitution") == [
        "Organisation-X^^^^^&1.2.250.1.71.4.2.2&ISO^FINEG^^^300017985"
    ]
    assert slot(package, "intendedRecipient") == [
        "|101234567897^Hoda^Adam^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
        "|^^Internet^adam.hoda@test-ci-sis.mssante.fr"
    ]

    entry = _entry(root)
    association = one(root, "rim:RegistryObjectList/rim:Association")
    assert association.get("associationType") == (
        "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
    )
    assert association.get("sourceObject") == package_id
    assert association.get("targetObject") == entry.get("id")
    assert slot(association, "SubmissionSetStatus") == ["Original"]
    for cl in xpath(entry, "rim:Classification"):
        assert cl.get("classifiedObject") == entry.get("id")
    for ext in xpath(entry, "rim:ExternalIdentifier"):
        assert ext.get("registryObject") == entry.get("id")
    ids = [str(el.get("id")) for el in root.iter() if el.get("id")]
    assert len(ids) == len(set(ids))


def test_two_documents_make_two_entries_and_two_associations() -> None:
    paths = [CISIS_FIXTURES / "oru-r01-initial" / n for n in ("document-n1.xml", "document-n3.xml")]
    root = _parse(build_metadata_xml(submission(*paths)))
    entries = xpath(root, "rim:RegistryObjectList/rim:ExtrinsicObject")
    assert [slot(e, "URI") for e in entries] == [["DOC0001.XML"], ["DOC0002.XML"]]
    assert [external_id(e, md.DE_UNIQUE_ID) for e in entries] == [
        "1.2.250.1.213.1.1.9",
        "1.3.6.1.4.1.19376.1.3.3.4",
    ]
    targets = [a.get("targetObject") for a in xpath(root, "rim:RegistryObjectList/rim:Association")]
    assert targets == [e.get("id") for e in entries]
    assert [coded(e, md.DE_FORMAT_CODE)[0][0] for e in entries] == [
        PDF_FORMAT,
        "urn:ihe:lab:xd-lab:2008",
    ]


@pytest.mark.parametrize(
    ("action", "value"),
    [(XdmAction.NEW, []), (XdmAction.REPLACE, ["C"]), (XdmAction.DELETE, ["D"])],
)
def test_action_extra_metadata(action: XdmAction, value: list[str]) -> None:
    path = CISIS_FIXTURES / "mdm-t10-replace" / "document.xml"
    root = _parse(build_metadata_xml(submission(path, action=action)))
    assert slot(_entry(root), "action") == value
    package = one(root, "rim:RegistryObjectList/rim:RegistryPackage")
    assert slot(package, "action") == []


def test_extra_confidentiality_codes_follow_the_cda_code() -> None:
    path = CDA_FIXTURES / "img-cr-img-n1.xml"
    extra = (
        ExtraConfidentiality.INVISIBLE_REPRESENTANTS_LEGAUX,
        ExtraConfidentiality.MASQUE_PS,
        ExtraConfidentiality.MASQUE_PS,
    )
    root = _parse(build_metadata_xml(submission(path, extra_confidentiality=extra)))
    assert coded(_entry(root), md.DE_CONFIDENTIALITY_CODE) == [
        ("N", "2.16.840.1.113883.5.25", "Normal"),
        ("MASQUE_PS", "1.2.250.1.213.1.1.4.13", "Masqué aux professionnels de santé"),
        (
            "INVISIBLE_REPRESENTANTS_LEGAUX",
            "1.2.250.1.213.1.1.4.13",
            "Non visible par les représentants légaux du patient",
        ),
    ]


def test_local_patient_id_with_tenant_oid() -> None:
    path = CDA_FIXTURES / "bio-cr-bio-n1.xml"
    ipp = InstanceId("1.2.3.4.567.8.9.10", "1234567890121")
    root = _parse(build_metadata_xml(submission(path, patient_id=ipp)))
    assert external_id(_entry(root), md.DE_PATIENT_ID) == IPP_CX
    package = one(root, "rim:RegistryObjectList/rim:RegistryPackage")
    assert external_id(package, md.SS_PATIENT_ID) == IPP_CX


def test_patient_of_another_document_is_refused_without_patient_data() -> None:
    path = CDA_FIXTURES / "bio-cr-bio-n1.xml"
    other = InstanceId("1.2.250.1.213.1.4.10", "180017505600103")
    with pytest.raises(DocumentError, match="recordTarget/patientRole/id") as info:
        build_metadata_xml(submission(path, patient_id=other))
    for secret in ("180017505600103", "279035121518989", "PAT-TROIS"):
        assert secret not in str(info.value)


@pytest.mark.parametrize(
    ("change", "element"),
    [
        ({"healthcare_facility_type_code": None}, "healthCareFacility/code"),
        ({"legal_authenticator": None}, "legalAuthenticator"),
        ({"code": None}, "code"),
        ({"title": None}, "title"),
        ({"authors": ()}, "author"),
        ({"service_event": None}, "standardIndustryClassCode"),
    ],
)
def test_missing_required_header_element_is_refused(
    change: dict[str, object], element: str
) -> None:
    data, header = load(CDA_FIXTURES / "bio-cr-bio-n1.xml")
    broken = dataclasses.replace(header, **change)  # type: ignore[arg-type]
    sub = submission(CDA_FIXTURES / "bio-cr-bio-n1.xml")
    sub = dataclasses.replace(sub, documents=(XdmDocument(data, broken),))
    with pytest.raises(DocumentError, match=re.escape(element)) as info:
        build_metadata_xml(sub)
    assert str(info.value).startswith("DOC0001.XML: ")
    assert "PAT-TROIS" not in str(info.value)


def test_metadata_is_deterministic() -> None:
    path = CDA_FIXTURES / "ldl-ses-n3.xml"
    assert build_metadata_xml(submission(path)) == build_metadata_xml(submission(path))
    other = build_metadata_xml(submission(path, unique_id=SUBMISSION_UID + ".2"))
    assert other != build_metadata_xml(submission(path))


def test_hl7_delimiters_in_names_are_escaped() -> None:
    path = CDA_FIXTURES / "bio-cr-bio-n1.xml"
    recipient = IntendedRecipient(
        "uf@ch.mssante.fr", institution=Institution("Cardio^Pneumo & Co|2", None)
    )
    root = _parse(build_metadata_xml(submission(path, intended_recipients=(recipient,))))
    package = one(root, "rim:RegistryObjectList/rim:RegistryPackage")
    assert slot(package, "intendedRecipient") == [
        "Cardio\\S\\Pneumo \\T\\ Co\\F\\2||^^Internet^uf@ch.mssante.fr"
    ]


def test_overrides_of_class_and_format_codes() -> None:
    path = CDA_FIXTURES / "ldl-ses-n3.xml"
    data, header = load(path)
    synth = Coded("11", "1.2.250.1.213.1.1.4.1", "Synthèse")
    fmt = Coded("urn:x:test", "1.2.3", "Test")
    sub = dataclasses.replace(
        submission(path), documents=(XdmDocument(data, header, class_code=synth, format_code=fmt),)
    )
    entry = _entry(_parse(build_metadata_xml(sub)))
    assert coded(entry, md.DE_CLASS_CODE) == [("11", "1.2.250.1.213.1.1.4.1", "Synthèse")]
    assert coded(entry, md.DE_FORMAT_CODE) == [("urn:x:test", "1.2.3", "Test")]


# -- unit rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pv1_2", "code"),
    [("I", "03"), ("O", "07"), ("R", "19"), ("N", "97"), ("E", "07"), ("Z", "97")],
)
def test_content_type_from_patient_class(pv1_2: str, code: str) -> None:
    coded_value = content_type_for_patient_class(pv1_2)
    assert (coded_value.code, coded_value.code_system) == (code, "1.2.250.1.213.2.2")
    assert coded_value.display_name


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("20210104160527+0100", "20210104150527"),
        ("20210101003000+0200", "20201231223000"),
        ("20210409094914.827+0100", "20210409084914"),
        ("202101041120+0100", "202101041020"),
        ("20050411103328", "20050411103328"),
        ("20210104+0100", "20210104"),
        ("2021", "2021"),
    ],
)
def test_xds_time(ts: str, expected: str) -> None:
    assert xds_time(ts, element="effectiveTime") == expected


@pytest.mark.parametrize(
    "ts", ["", "2021-01-04", "20211304101010+0100", "20211304", "20210230", "20210104T1000"]
)
def test_xds_time_refuses_non_ts(ts: str) -> None:
    with pytest.raises(DocumentError, match="effectiveTime"):
        xds_time(ts, element="effectiveTime")


def test_class_code_table_and_fallback() -> None:
    loinc = "2.16.840.1.113883.6.1"
    assert class_code_for(Coded("18748-4", loinc)).code == "10"
    assert class_code_for(Coded("SYNTH", "1.2.250.1.213.1.1.4.12")).code == "11"
    assert class_code_for(Coded("99999-9", loinc)) == md.DEFAULT_CLASS_CODE


def _with(header: CdaHeader, **changes: object) -> CdaHeader:
    return dataclasses.replace(header, **changes)  # type: ignore[arg-type]


def test_format_code_rules() -> None:
    _, n1 = load(CDA_FIXTURES / "doc-non-structure-n1.xml")
    _, n3 = load(CDA_FIXTURES / "ldl-ses-n3.xml")
    assert format_code_for(n1).code == PDF_FORMAT
    assert format_code_for(_with(n1, body_media_type="text/plain")).code == (
        "urn:ihe:iti:xds-sd:text:2008"
    )
    with pytest.raises(DocumentError, match="mediaType"):
        format_code_for(_with(n1, body_media_type="image/jpeg"))
    unknown_model = _with(n3, template_ids=n3.template_ids[:2])
    assert format_code_for(unknown_model) == md.FORMAT_UNREFERENCED


def test_submission_inputs_are_validated() -> None:
    path = CDA_FIXTURES / "bio-cr-bio-n1.xml"
    with pytest.raises(ValueError, match="timezone-aware"):
        submission(path, submission_time=datetime(2024, 5, 6, 10, 0))
    with pytest.raises(ValueError, match="at least one document"):
        submission(documents=())


def test_patient_id_helpers() -> None:
    assert md.cx(INS_TEST) == INS_CX
    with pytest.raises(DocumentError, match="extension"):
        md.cx(InstanceId("1.2.3"))
    assert md.unique_id(InstanceId("1.2.3", "45")) == "1.2.3^45"


def test_document_file_names_are_8_3_and_bounded() -> None:
    assert md.document_file_name(1) == "DOC0001.XML"
    assert md.document_file_name(9999) == "DOC9999.XML"
    for bad in (0, 10000):
        with pytest.raises(ValueError, match="out of range"):
            md.document_file_name(bad)


def test_person_without_identifier_keeps_its_name_only() -> None:
    assert md.xcn(None, PersonName("Hoda", ("Adam",))) == "^Hoda^Adam"
    local = InstanceId("1.2.250.1.71.4.2.1", "31234567890/abc")
    assert md.xcn(local, None).endswith("^D^^^EI")
