"""Shared helpers of the XDM tests: fixture documents, a submission factory, ebRIM readers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from lxml import etree

from connector.cda.header import CdaHeader, InstanceId, read_cda_header
from connector.cda.safe_xml import parse_xml
from connector.xdm.metadata import (
    RIM_NS,
    Institution,
    IntendedRecipient,
    Person,
    SubmissionAuthor,
    XdmDocument,
    XdmProducer,
    XdmSubmission,
    content_type_for_patient_class,
)
from tests.conftest import CDA_FIXTURES, CISIS_FIXTURES

RIM = {"rim": RIM_NS, "h": "urn:hl7-org:v3"}
INS_TEST = InstanceId("1.2.250.1.213.1.4.10", "279035121518989")
TENANT_OID = "1.2.250.1.999.1"
SUBMISSION_UID = "1.2.250.1.999.1.2.20240506.1"
PARIS_SUMMER = timezone(timedelta(hours=2))
SUBMITTED_AT = datetime(2024, 5, 6, 10, 11, 12, tzinfo=PARIS_SUMMER)

FIXTURE_DOCUMENTS: list[Path] = sorted(
    [*CDA_FIXTURES.glob("*.xml"), *CISIS_FIXTURES.glob("*/document*.xml")]
)
SENDER = SubmissionAuthor(
    person=Person(InstanceId("1.2.250.1.71.4.2.1", "801234567866"), "Dupont", "Jean"),
    institution=Institution(
        "Organisation-X", InstanceId("1.2.250.1.71.4.2.2", "300017985"), "FINEG"
    ),
)
RECIPIENT = IntendedRecipient(
    "adam.hoda@test-ci-sis.mssante.fr",
    person=Person(InstanceId("1.2.250.1.71.4.2.1", "101234567897"), "Hoda", "Adam"),
)
PRODUCER = XdmProducer("CH Exemple", contact="support-dsi@ch-exemple.fr")


def fixture_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def load(path: Path) -> tuple[bytes, CdaHeader]:
    data = path.read_bytes()
    return data, read_cda_header(parse_xml(data))


def document(path: Path) -> XdmDocument:
    data, header = load(path)
    return XdmDocument(content=data, header=header)


def submission(*paths: Path, **overrides: Any) -> XdmSubmission:
    values: dict[str, Any] = {
        "documents": tuple(document(p) for p in paths),
        "patient_id": INS_TEST,
        "source_id": TENANT_OID,
        "unique_id": SUBMISSION_UID,
        "submission_time": SUBMITTED_AT,
        "content_type": content_type_for_patient_class("O"),
        "producer": PRODUCER,
        "author": SENDER,
        "intended_recipients": (RECIPIENT,),
    }
    values.update(overrides)
    return XdmSubmission(**values)


def xpath(node: etree._Element, path: str) -> list[etree._Element]:
    found = node.xpath(path, namespaces=RIM)
    assert isinstance(found, list)
    return [el for el in found if isinstance(el, etree._Element)]


def one(node: etree._Element, path: str) -> etree._Element:
    found = xpath(node, path)
    assert len(found) == 1, f"{path}: {len(found)} matches"
    return found[0]


def slot(node: etree._Element, name: str) -> list[str]:
    """Values of the slot `name` directly under `node` (empty list when absent)."""
    return [str(v.text) for v in xpath(node, f"rim:Slot[@name='{name}']/rim:ValueList/rim:Value")]


def classifications(node: etree._Element, scheme: str) -> list[etree._Element]:
    return xpath(node, f"rim:Classification[@classificationScheme='{scheme}']")


def coded(node: etree._Element, scheme: str) -> list[tuple[str, str, str]]:
    """(code, codingScheme, display) of every classification of `scheme` under `node`."""
    result = []
    for cl in classifications(node, scheme):
        (system,) = slot(cl, "codingScheme")
        display = one(cl, "rim:Name/rim:LocalizedString").get("value") or ""
        result.append((cl.get("nodeRepresentation") or "", system, display))
    return result


def external_id(node: etree._Element, scheme: str) -> str:
    return one(node, f"rim:ExternalIdentifier[@identificationScheme='{scheme}']").get("value") or ""


def cda_value(cda: etree._Element, path: str) -> str:
    """Whitespace-normalised string value of an XPath over the CDA (prefix h:)."""
    value = cda.xpath(f"normalize-space({path})", namespaces=RIM)
    assert isinstance(value, str)
    return value
