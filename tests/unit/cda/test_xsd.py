"""CDA XSD validation: the ANS examples are valid, violations are located and value-free in
their summary, the schema is loaded offline only, and one validator serves several threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lxml import etree

from connector.cda.safe_xml import parse_xml
from connector.cda.xsd import XsdValidator
from connector.errors import ConfigError
from tests.unit.cda import (
    CDA_XSD,
    PATIENT_DATA,
    fixture_cdas,
    fixture_id,
    hl7_cdas,
    mutate,
    remove,
    set_attribute,
)

BASE = next(p for p in fixture_cdas() if p.name == "doc-non-structure-n1.xml")


@pytest.fixture(scope="module")
def xsd() -> XsdValidator:
    return XsdValidator(CDA_XSD)


@pytest.mark.parametrize("path", [*fixture_cdas(), *hl7_cdas()], ids=fixture_id)
def test_ans_examples_are_valid(path: Path, xsd: XsdValidator) -> None:
    assert xsd.validate(parse_xml(path.read_bytes())) == ()


def test_bad_value_is_located_and_kept_out_of_the_summary(xsd: XsdValidator) -> None:
    data = mutate(
        BASE, set_attribute("/hl7:ClinicalDocument/hl7:versionNumber", "value", "SECRET-1")
    )
    expected_line = next(
        n for n, line in enumerate(data.decode().splitlines(), 1) if "versionNumber" in line
    )

    [violation] = xsd.validate(parse_xml(data))

    assert violation.code == "SCHEMAV_CVC_DATATYPE_VALID_1_2_1"
    assert violation.path == "/hl7:ClinicalDocument[1]/hl7:versionNumber[1]"
    assert violation.element == "hl7:versionNumber"
    assert violation.attribute == "value"
    assert violation.line == expected_line
    assert "SECRET-1" in violation.message  # libxml2's words, for the operator report
    assert "SECRET-1" not in violation.summary
    assert violation.summary == (
        "hl7:versionNumber/@value: value not valid for its datatype "
        "(SCHEMAV_CVC_DATATYPE_VALID_1_2_1) at /hl7:ClinicalDocument[1]/hl7:versionNumber[1]"
    )


def test_patient_values_never_reach_the_summary(xsd: XsdValidator) -> None:
    patient = "//hl7:recordTarget/hl7:patientRole/hl7:patient"

    def change(root: etree._Element) -> None:
        set_attribute(f"{patient}/hl7:birthTime", "value", "1979-03-28")(root)  # not an HL7 TS
        set_attribute(f"{patient}/hl7:name", "use", "PAT-TROIS DOMINIQUE")(root)  # not codes

    violations = xsd.validate(parse_xml(mutate(BASE, change)))

    assert {v.element for v in violations} == {"hl7:birthTime", "hl7:name"}
    assert any("1979-03-28" in v.message for v in violations)
    for violation in violations:
        for value in (*PATIENT_DATA, "1979-03-28"):
            assert value not in violation.summary


def test_missing_element_is_a_content_model_error(xsd: XsdValidator) -> None:
    data = mutate(BASE, lambda r: remove(r, "/hl7:ClinicalDocument/hl7:typeId"))

    [violation] = xsd.validate(parse_xml(data))

    assert violation.code == "SCHEMAV_ELEMENT_CONTENT"
    assert violation.summary.startswith("hl7:templateId: element not expected here")


def test_schema_imports_must_be_local(tmp_path: Path) -> None:
    remote = tmp_path / "remote.xsd"
    remote.write_text(
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:x">'
        '<xs:import namespace="urn:y" schemaLocation="http://example.invalid/y.xsd"/>'
        "</xs:schema>"
    )
    with pytest.raises(ConfigError, match=r"non-local resource: http://example\.invalid/y\.xsd"):
        XsdValidator(remote)
    with pytest.raises(ConfigError, match=r"validation\.cda_xsd"):
        XsdValidator(tmp_path / "absent.xsd")


def test_one_validator_serves_several_threads(xsd: XsdValidator) -> None:
    good = parse_xml(BASE.read_bytes())
    bad = parse_xml(mutate(BASE, lambda r: remove(r, "/hl7:ClinicalDocument/hl7:typeId")))
    barrier = threading.Barrier(4)

    def work(_: int) -> list[int]:
        barrier.wait()
        return [len(xsd.validate(doc)) for doc in (good, bad) * 10]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(4)))
    assert results == [[0, 1] * 10] * 4
