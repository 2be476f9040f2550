"""PDF rendition of a CDA (level 1 body, level 3 FR-Document-PDF-copie) and the PDF file name."""

from __future__ import annotations

import base64
import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from connector.cda.header import HL7_NS, CdaHeader, read_cda_header
from connector.cda.pdf import (
    MAX_FILE_NAME_LENGTH,
    PDF_COPY_SECTION_TEMPLATE_ID,
    extract_pdf,
    pdf_attachment_name,
)
from connector.cda.safe_xml import parse_xml
from connector.errors import DocumentError
from tests.conftest import CDA_FIXTURES, CISIS_FIXTURES

H = f"{{{HL7_NS}}}"
NS = {"h": HL7_NS}

LEVEL1_PDF_SIZES = {
    CDA_FIXTURES / "bio-cr-bio-n1.xml": 326650,
    CDA_FIXTURES / "doc-non-structure-n1.xml": 326650,
    CDA_FIXTURES / "img-cr-img-n1.xml": 61736,
    CISIS_FIXTURES / "mdm-t02-initial" / "document.xml": 179764,
    CISIS_FIXTURES / "mdm-t10-replace" / "document.xml": 179764,
    CISIS_FIXTURES / "mdm-t04-delete" / "document.xml": 179764,
    CISIS_FIXTURES / "oru-r01-initial" / "document-n1.xml": 326650,
}
LEVEL3_WITHOUT_PDF = [
    CDA_FIXTURES / "bio-cr-bio-microbiologie-n3.xml",
    CDA_FIXTURES / "ldl-ses-n3.xml",
    CISIS_FIXTURES / "oru-r01-initial" / "document-n3.xml",  # has an image/png observationMedia
]


def _ids(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _root(path: Path) -> etree._Element:
    return parse_xml(path.read_bytes())


def _body_text(root: etree._Element) -> etree._Element:
    found = root.xpath("h:component/h:nonXMLBody/h:text", namespaces=NS)
    assert isinstance(found, list)
    el = found[0]
    assert isinstance(el, etree._Element)
    return el


@pytest.mark.parametrize("path", sorted(LEVEL1_PDF_SIZES), ids=_ids)
def test_level1_pdf_is_the_decoded_body(path: Path) -> None:
    root = _root(path)
    independent = base64.b64decode("".join(str(_body_text(root).text).split()))

    pdf = extract_pdf(root)

    assert pdf is not None
    assert pdf.startswith(b"%PDF-")
    assert pdf == independent
    assert len(pdf) == LEVEL1_PDF_SIZES[path]
    assert pdf.rstrip().endswith(b"%%EOF")


@pytest.mark.parametrize("path", LEVEL3_WITHOUT_PDF, ids=_ids)
def test_level3_without_pdf_copy_section_has_no_pdf(path: Path) -> None:
    assert extract_pdf(_root(path)) is None


def _add_pdf_copy_section(root: etree._Element, payload: str, media_type: str) -> None:
    body = root.find(f"{H}component/{H}structuredBody")
    assert body is not None
    component = etree.SubElement(body, f"{H}component")
    section = etree.SubElement(component, f"{H}section")
    etree.SubElement(section, f"{H}templateId", root=PDF_COPY_SECTION_TEMPLATE_ID)
    etree.SubElement(section, f"{H}code", code="55108-5", codeSystem="2.16.840.1.113883.6.1")
    etree.SubElement(section, f"{H}title").text = "Copie PDF du document"
    entry = etree.SubElement(section, f"{H}entry")
    media = etree.SubElement(entry, f"{H}observationMedia", classCode="OBS", moodCode="EVN")
    etree.SubElement(media, f"{H}templateId", root="1.2.250.1.213.1.1.3.18")
    value = etree.SubElement(media, f"{H}value", mediaType=media_type, representation="B64")
    value.text = payload


@pytest.mark.parametrize("path", LEVEL3_WITHOUT_PDF, ids=_ids)
def test_level3_pdf_comes_from_the_pdf_copy_section(path: Path) -> None:
    pdf_source = _root(CDA_FIXTURES / "img-cr-img-n1.xml")
    expected = extract_pdf(pdf_source)
    assert expected is not None
    root = _root(path)
    # Wrapped at 76 columns and without its padding, as senders sometimes do.
    encoded = base64.b64encode(expected).decode().rstrip("=")
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    _add_pdf_copy_section(root, wrapped, "application/pdf")

    assert extract_pdf(root) == expected


def test_pdf_copy_section_with_another_media_type_is_refused() -> None:
    root = _root(CDA_FIXTURES / "ldl-ses-n3.xml")
    _add_pdf_copy_section(root, base64.b64encode(b"\x89PNG...").decode(), "image/png")
    with pytest.raises(DocumentError, match="mediaType application/pdf"):
        extract_pdf(root)


def test_text_plain_level1_body_is_not_a_pdf() -> None:
    root = _root(CDA_FIXTURES / "doc-non-structure-n1.xml")
    text = _body_text(root)
    text.set("mediaType", "text/plain")
    text.text = base64.b64encode(b"Compte rendu en texte brut").decode()
    assert extract_pdf(root) is None


@pytest.mark.parametrize(
    ("payload", "representation", "message"),
    [
        ("!!!not base64!!!", "B64", "not valid base64"),
        (base64.b64encode(b"SECRET CONTENT, not a pdf").decode(), "B64", "no %PDF- header"),
        ("JVBERi0xLjU=", "TXT", "representation B64"),
        ("   ", "B64", "no PDF content"),
    ],
)
def test_bad_level1_pdf_is_refused(payload: str, representation: str, message: str) -> None:
    root = _root(CDA_FIXTURES / "bio-cr-bio-n1.xml")
    text = _body_text(root)
    text.text = payload
    text.set("representation", representation)
    with pytest.raises(DocumentError, match=re.escape(message)) as info:
        extract_pdf(root)
    assert "SECRET" not in str(info.value)
    assert "PAT-TROIS" not in str(info.value)


# -- file name -------------------------------------------------------------------------------------


def _header(path: Path) -> CdaHeader:
    return read_cda_header(_root(path))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            CDA_FIXTURES / "bio-cr-bio-n1.xml",
            "20210104_CR d'examens biologiques_PAT-TROIS_DOMINIQUE.pdf",
        ),
        (
            CDA_FIXTURES / "img-cr-img-n1.xml",  # typographic apostrophe, accents
            "20210108_CR d'imagerie médicale_PAT-TROIS_DOMINIQUE.pdf",
        ),
        (
            CDA_FIXTURES / "ldl-ses-n3.xml",  # type cut to 40 characters
            "20191029_Lettre de liaison à la sortie d'un établ_PAT-TROIS_DOMINIQUE.pdf",
        ),
        (
            CISIS_FIXTURES / "mdm-t02-initial" / "document.xml",
            "20230227_CR d'imagerie médicale_PAT-TROIS_DOMINIQUE.pdf",
        ),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else "",
)
def test_attachment_name_of_fixtures_without_dossier(path: Path, expected: str) -> None:
    assert pdf_attachment_name(_header(path)) == expected


def test_attachment_name_with_dossier_is_sanitised() -> None:
    header = _header(CDA_FIXTURES / "bio-cr-bio-n1.xml")
    name = pdf_attachment_name(header, dossier=" ../2021/ 1234_56 ")
    assert name == "20210104_CR d'examens biologiques_PAT-TROIS_DOMINIQUE_2021-1234-56.pdf"


def test_attachment_name_date_falls_back_to_effective_time() -> None:
    header = _header(CDA_FIXTURES / "bio-cr-bio-n1.xml")
    no_event = dataclasses.replace(header, service_event=None)
    assert pdf_attachment_name(no_event).startswith("20210104_")


def test_attachment_name_needs_a_patient_family_name() -> None:
    header = _header(CDA_FIXTURES / "bio-cr-bio-n1.xml")
    assert header.patient is not None
    nameless = dataclasses.replace(
        header,
        patient=dataclasses.replace(header.patient, birth_family_name=None, used_family_name=None),
    )
    with pytest.raises(DocumentError, match="family") as info:
        pdf_attachment_name(nameless)
    assert "DOMINIQUE" not in str(info.value)


_BASE = _header(CDA_FIXTURES / "bio-cr-bio-n1.xml")
_letters = st.text(min_size=1, max_size=80).filter(
    lambda s: any(c.isascii() and c.isalnum() for c in s)
)


@settings(max_examples=200, deadline=None)
@given(family=_letters, first=_letters, kind=st.text(max_size=200), dossier=st.none() | st.text())
def test_attachment_name_is_always_safe_and_bounded(
    family: str, first: str, kind: str, dossier: str | None
) -> None:
    assert _BASE.patient is not None
    assert _BASE.code is not None
    header = dataclasses.replace(
        _BASE,
        patient=dataclasses.replace(
            _BASE.patient, birth_family_name=family, first_birth_given_name=first
        ),
        code=dataclasses.replace(_BASE.code, display_name=kind or None),
    )
    name = pdf_attachment_name(header, dossier=dossier)
    assert len(name) <= MAX_FILE_NAME_LENGTH
    assert name.endswith(".pdf")
    assert name.isprintable()
    for forbidden in ("/", "\\", "..", "  ", '"', "\u2019"):
        assert forbidden not in name
    date, *labels = name.removesuffix(".pdf").split("_")
    assert re.fullmatch(r"\d{8}", date)
    assert len(labels) in (3, 4)  # type, NOM, prénom[, dossier]
    for label in labels:
        assert label
        assert label == label.strip(" '-")
    assert labels[1] == labels[1].upper()
    if len(labels) == 4:
        assert re.fullmatch(r"[A-Za-z0-9-]+", labels[3])
