"""CdaValidator: safe parsing, XSD always rejecting, the schematron under each tenant policy,
value-free ERR details and logs, the full report kept for operators."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import structlog

from connector.cda.policy import SchematronPolicy as SettingsPolicy
from connector.cda.schematron import Schematron
from connector.cda.validation import CdaValidator, DocumentWarning, SchematronPolicy
from connector.cda.xsd import XsdValidator
from connector.errors import DocumentError
from connector.hl7.codes import ApplicationError, ErrorCondition, Severity
from tests.unit.cda import (
    CDA_XSD,
    PATIENT_DATA,
    STRUCMIN,
    fixture_cdas,
    hl7_cdas,
    mutate,
    overlay_with_typecode_valueset,
    remove,
    set_attribute,
)

SETID_RULE = "d152e10-false-d1610e0#29"
BASE = next(p for p in fixture_cdas() if p.name == "doc-non-structure-n1.xml")
MDM = [p for p in hl7_cdas() if p.parent.name.startswith("mdm-")]


@pytest.fixture(scope="module")
def xsd() -> XsdValidator:
    return XsdValidator(CDA_XSD)


@pytest.fixture(scope="module")
def schematron(tmp_path_factory: pytest.TempPathFactory) -> Schematron:
    return Schematron.load(overlay_with_typecode_valueset(tmp_path_factory.mktemp("strucmin")))


def validator(xsd: XsdValidator, schematron: Schematron, policy: SchematronPolicy) -> CdaValidator:
    return CdaValidator(xsd, schematron, policy)


def no_patient_data(text: str) -> bool:
    return not any(value in text for value in PATIENT_DATA)


def test_policy_is_the_settings_enum_and_defaults_to_reject(
    xsd: XsdValidator, schematron: Schematron
) -> None:
    assert SchematronPolicy is SettingsPolicy
    assert CdaValidator(xsd, schematron).policy is SchematronPolicy.REJECT


@pytest.mark.parametrize("path", MDM, ids=lambda p: p.parent.name)
def test_mdm_examples_without_setid_are_refused_under_reject(
    path: Path, xsd: XsdValidator, schematron: Schematron
) -> None:
    with pytest.raises(DocumentError) as caught:
        validator(xsd, schematron, SchematronPolicy.REJECT).validate(path.read_bytes())

    error = caught.value
    assert SETID_RULE in error.detail
    assert "hl7:setId[not(@nullFlavor)] is mandatory" in error.detail
    assert error.condition is ErrorCondition.APPLICATION_ERROR
    assert error.application_error is ApplicationError.OTHER
    assert no_patient_data(error.detail)
    assert error.report is not None
    assert error.report.startswith("CDA validation (rejected: CDA not conformant")
    assert "test: count(hl7:setId[not(@nullFlavor)]) >= 1" in error.report  # the full report


@pytest.mark.parametrize("path", MDM, ids=lambda p: p.parent.name)
def test_mdm_examples_go_through_under_warn(
    path: Path, xsd: XsdValidator, schematron: Schematron
) -> None:
    result = validator(xsd, schematron, SchematronPolicy.WARN).validate(path.read_bytes())

    assert result.accepted
    assert result.rejection is None
    assert result.schematron is not None
    assert not result.schematron.is_valid
    assert result.warnings[0].rule_reference == SETID_RULE
    for warning in result.warnings:
        assert warning.severity is Severity.WARNING
        assert no_patient_data(warning.detail)
        ack = warning.to_ack_error()
        assert (ack.severity, ack.application_error, ack.detail) == (
            Severity.WARNING,
            ApplicationError.OTHER,
            warning.detail,
        )
    assert SETID_RULE in result.report()


def test_off_does_not_run_the_schematron(xsd: XsdValidator, schematron: Schematron) -> None:
    result = validator(xsd, schematron, SchematronPolicy.OFF).validate(MDM[0].read_bytes())

    assert result.accepted
    assert result.schematron is None
    assert result.warnings == ()
    assert "not run (policy off)" in result.report()
    assert (
        CdaValidator.from_paths(CDA_XSD, STRUCMIN, policy=SchematronPolicy.OFF).schematron is None
    )


@pytest.mark.parametrize("policy", list(SchematronPolicy))
def test_conformant_document_is_accepted(
    policy: SchematronPolicy, xsd: XsdValidator, schematron: Schematron
) -> None:
    result = validator(xsd, schematron, policy).validate(BASE.read_bytes())

    assert result.accepted
    assert result.xsd_violations == ()
    assert result.warnings == ()
    assert result.root.tag == "{urn:hl7-org:v3}ClinicalDocument"


def test_missing_schematron_is_signalled_unless_the_policy_is_off(xsd: XsdValidator) -> None:
    warned = CdaValidator(xsd, None, SchematronPolicy.REJECT).validate(BASE.read_bytes())
    silent = CdaValidator(xsd, None, SchematronPolicy.OFF).validate(BASE.read_bytes())

    assert [w.rule_reference for w in warned.warnings] == ["validation.schematron"]
    assert silent.warnings == ()
    assert "Schematron: not configured" in warned.report()


def test_published_files_accept_with_a_warning_for_the_missing_value_set(xsd: XsdValidator) -> None:
    result = CdaValidator(xsd, Schematron.load(STRUCMIN)).validate(BASE.read_bytes())

    assert result.accepted
    [warning] = result.warnings
    assert "check not run" in warning.detail
    assert warning.severity is Severity.WARNING


@pytest.mark.parametrize("policy", list(SchematronPolicy))
def test_xsd_invalid_document_is_rejected_under_every_policy(
    policy: SchematronPolicy, xsd: XsdValidator, schematron: Schematron
) -> None:
    data = mutate(BASE, set_attribute("/hl7:ClinicalDocument/hl7:versionNumber", "value", "SECRET"))

    with pytest.raises(DocumentError) as caught:
        validator(xsd, schematron, policy).validate(data)

    error = caught.value
    assert error.detail.startswith("CDA not valid against the CDA XSD: hl7:versionNumber/@value")
    assert "SECRET" not in error.detail
    assert error.report is not None
    assert "SECRET" in error.report  # the operator sees it


def test_assess_returns_the_verdict_without_raising(
    xsd: XsdValidator, schematron: Schematron
) -> None:
    data = mutate(BASE, lambda r: remove(r, "/hl7:ClinicalDocument/hl7:setId"))

    result = validator(xsd, schematron, SchematronPolicy.REJECT).assess(data)

    assert not result.accepted
    assert result.rejection is not None
    assert SETID_RULE in result.rejection
    assert result.warnings == ()
    with pytest.raises(DocumentError, match="setId"):
        result.raise_if_rejected()


DOCTYPES = {
    "external entity": b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&x;</title></ClinicalDocument>',
    "entity expansion": b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
    b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
    b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&b;</title></ClinicalDocument>',
    "bare doctype": b'<!DOCTYPE ClinicalDocument SYSTEM "http://example.invalid/cda.dtd">'
    + BASE.read_bytes().split(b"?>", 1)[1],
}


@pytest.mark.parametrize("name", DOCTYPES)
def test_doctype_and_entities_are_refused(
    name: str, xsd: XsdValidator, schematron: Schematron
) -> None:
    checker = validator(xsd, schematron, SchematronPolicy.OFF)
    with pytest.raises(DocumentError) as caught:
        checker.assess(DOCTYPES[name])
    assert caught.value.detail == "CDA carries a DOCTYPE, which is refused"
    assert caught.value.report is None  # refused before any validation ran


def test_not_well_formed_is_refused(xsd: XsdValidator, schematron: Schematron) -> None:
    with pytest.raises(DocumentError, match=r"CDA is not well-formed XML \(line 1\)"):
        validator(xsd, schematron, SchematronPolicy.WARN).assess(b"<ClinicalDocument><title>")


def test_logs_name_rules_not_patient_data(xsd: XsdValidator, schematron: Schematron) -> None:
    with structlog.testing.capture_logs() as logs:
        validator(xsd, schematron, SchematronPolicy.WARN).validate(MDM[0].read_bytes())

    [entry] = [e for e in logs if e["event"] == "cda_validated"]
    assert SETID_RULE in entry["rules"]
    assert entry["accepted"] is True
    assert no_patient_data(repr(entry))


def test_document_warning_defaults() -> None:
    warning = DocumentWarning("schematron x.sch: p r#1: message", "r#1")
    ack = warning.to_ack_error()
    assert ack.condition is ErrorCondition.APPLICATION_ERROR
    assert ack.location is None


def test_one_validator_serves_several_threads(xsd: XsdValidator, schematron: Schematron) -> None:
    checker = validator(xsd, schematron, SchematronPolicy.REJECT)
    documents = [BASE.read_bytes(), MDM[0].read_bytes()]
    barrier = threading.Barrier(3)

    def work(_: int) -> list[bool]:
        barrier.wait()
        return [checker.assess(d).accepted for d in documents * 3]

    with ThreadPoolExecutor(max_workers=3) as pool:
        assert list(pool.map(work, range(3))) == [[True, False] * 3] * 3
