"""Helpers shared by the CDA validation tests (the ANS files are used in place, read-only)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from lxml import etree

from tests.conftest import CDA_FIXTURES, CISIS_FIXTURES, SCHEMAS

CDA_XSD = SCHEMAS / "cda-xsd" / "CDA_extended.xsd"
STRUCMIN_DIR = SCHEMAS / "schematron" / "structurationMinimale"
STRUCMIN = STRUCMIN_DIR / "ASIP-STRUCT-MIN-StrucMin.sch"
JDV_J07 = SCHEMAS / "value-sets" / "JDV_J07_XdsTypeCode_CISIS.xml"
#: Referenced by the published schematron (typeCode check) but not shipped with it.
MISSING_VOC = "include/voc-1.2.250.1.213.1.1.5.471-DYNAMIC.xml"

HL7 = "urn:hl7-org:v3"
NS = {"hl7": HL7}

#: Patient data of the ANS examples: must never reach an ERR detail or a log line.
PATIENT_DATA = ("PAT-TROIS", "DOMINIQUE", "279035121518989", "19790328", "MAZOIRES", "DOMPREMY")


def fixture_cdas() -> list[Path]:
    return sorted(CDA_FIXTURES.glob("*.xml"))


def hl7_cdas() -> list[Path]:
    return sorted(CISIS_FIXTURES.glob("*/document*.xml"))


def fixture_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def overlay_with_typecode_valueset(target: Path) -> Path:
    """The published structuration-minimale files, linked in place, plus the value-set file
    they reference but do not ship (voc-...5.471, JDV_J07 XdsTypeCode), built from the ANS
    SVS file of the same value set. Returns the main schematron of the overlay.

    Nothing is copied: every ANS file is a symlink to /work/shared; only the missing value set
    (a list of codes) is generated, in `target`.
    """
    include = target / "include"
    include.mkdir(parents=True, exist_ok=True)
    for source in STRUCMIN_DIR.iterdir():
        if source.is_file():
            os.symlink(source, target / source.name)
    for source in (STRUCMIN_DIR / "include").iterdir():
        os.symlink(source, include / source.name)
    svs = etree.parse(str(JDV_J07))
    value_sets = etree.Element("valueSets")
    value_set = etree.SubElement(value_sets, "valueSet", id="1.2.250.1.213.1.1.5.471")
    concepts = etree.SubElement(value_set, "conceptList")
    for concept in svs.iterfind(".//{urn:ihe:iti:svs:2008}Concept"):
        etree.SubElement(concepts, "concept", code=concept.get("code", ""))
    etree.ElementTree(value_sets).write(str(target / MISSING_VOC))
    return target / STRUCMIN.name


def mutate(path: Path, change: Callable[[etree._Element], None]) -> bytes:
    """The fixture `path` with `change` applied to its (trusted, test-side) tree."""
    root = etree.fromstring(path.read_bytes())
    change(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def remove(root: etree._Element, xpath: str) -> None:
    found = root.xpath(xpath, namespaces=NS)
    assert isinstance(found, list)
    assert found, f"fixture has no {xpath}"
    for node in found:
        assert isinstance(node, etree._Element)
        parent = node.getparent()
        assert parent is not None
        parent.remove(node)


def set_attribute(xpath: str, attribute: str, value: str) -> Callable[[etree._Element], None]:
    """A change for `mutate`: set `attribute` on the first node `xpath` selects."""

    def change(root: etree._Element) -> None:
        found = root.xpath(xpath, namespaces=NS)
        assert isinstance(found, list)
        assert found, f"fixture has no {xpath}"
        node = found[0]
        assert isinstance(node, etree._Element)
        node.set(attribute, value)

    return change
