"""The PDF/A-1 rendered for a CDA that embeds none (ECO.2.1.5): the page (header data and the
narrative, transcribed element by element), the PDF/A-1b file WeasyPrint makes of it (checked
in its bytes, and read back with poppler's pdftotext where installed), and what happens
without a renderer."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lxml import etree

from connector.cda import render
from connector.cda.header import HL7_NS, read_cda_header
from connector.cda.render import render_pdf, renderer_problem, rendition_html
from connector.errors import DocumentError, PdfRenditionError
from tests.conftest import CDA_FIXTURES, CISIS_FIXTURES, ROOT, needs_pdf_renderer

ORU_N3 = CISIS_FIXTURES / "oru-r01-initial" / "document-n3.xml"
LEVEL3 = [ORU_N3, CDA_FIXTURES / "bio-cr-bio-microbiologie-n3.xml",
          CDA_FIXTURES / "ldl-ses-n3.xml"]

HEADER = f"""<ClinicalDocument xmlns="{HL7_NS}">
  <id root="1.2.3" extension="doc-1"/>
  <code code="11488-4" codeSystem="2.16.840.1.113883.6.1" displayName="Note de consultation"/>
  <title>Consultation de cardiologie</title>
  <effectiveTime value="20240305143000+0100"/>
  <languageCode code="fr-FR"/>
  <recordTarget><patientRole>
    <id root="1.2.250.1.213.1.4.8" extension="279035121518989"/>
    <patient>
      <name><family qualifier="BR">DURAND</family><family qualifier="CL">MARTIN</family>
        <given>Zoé Anne</given></name>
      <administrativeGenderCode code="F" codeSystem="2.16.840.1.113883.5.1"/>
      <birthTime value="19790328"/>
    </patient></patientRole></recordTarget>
  <author><time value="20240305"/><assignedAuthor><id root="1.2.250.1.71.4.2.1" extension="8"/>
    <assignedPerson><name><prefix>Dr</prefix><given>Jean</given><family>COEUR</family></name>
    </assignedPerson>
    <representedOrganization><name>CHU de Nulle-Part</name></representedOrganization>
  </assignedAuthor></author>
  <custodian><assignedCustodian><representedCustodianOrganization>
    <id root="1.2.250.1.71.4.2.2" extension="1"/><name>CHU de Nulle-Part</name>
  </representedCustodianOrganization></assignedCustodian></custodian>
  <component>{{body}}</component>
</ClinicalDocument>"""

NARRATIVE = """<structuredBody>
  <component><section>
    <code code="10164-2" codeSystem="2.16.840.1.113883.6.1" displayName="Histoire"/>
    <text>
      <paragraph styleCode="Bold">Motif : <content styleCode="Italics">douleur</content>
        thoracique<br/>depuis 2 jours</paragraph>
      <list listType="ordered"><caption>Traitements</caption>
        <item>Aspirine 100 mg</item><item>Bisoprolol<sup>*</sup></item></list>
      <table border="1"><caption>Constantes</caption>
        <thead><tr><th colspan="2">Mesure</th></tr></thead>
        <tbody><tr><td rowspan="1">TA</td><td>12/8 &lt;normale&gt;</td></tr></tbody></table>
      <renderMultiMedia referencedObject="img1"><caption>ECG du jour</caption></renderMultiMedia>
      <linkHtml href="http://example.invalid/x">compte rendu joint</linkHtml>
      <unknownThing>texte gardé</unknownThing>
    </text>
    <component><section><title>Examen clinique</title>
      <text><paragraph>Auscultation normale.</paragraph></text></section></component>
  </section></component>
</structuredBody>"""


def cda(body: str = NARRATIVE) -> etree._Element:
    return etree.fromstring(HEADER.replace("{body}", body).encode())


def page(root: etree._Element) -> etree._Element:
    return rendition_html(root, read_cda_header(root))


def text_of(element: etree._Element) -> str:
    return " ".join("".join(element.itertext()).split())


def test_the_header_says_title_type_date_patient_author_and_organisation() -> None:
    html = page(cda())
    assert html.findtext("head/title") == "Consultation de cardiologie"
    assert html.find("head/meta[@name='dcterms.created']").get("content") == (
        "2024-03-05T14:30:00+01:00")
    assert html.findtext("body/h1") == "Consultation de cardiologie"
    rows = {tr.findtext("th"): tr.findtext("td")
            for tr in html.iterfind("body/table[@class='header']/tr")}
    assert rows == {
        "Type de document": "Note de consultation",
        "Date du document": "05/03/2024 14:30",
        "Patient": "DURAND Zoé Anne",
        "Nom utilisé": "MARTIN",
        "Date de naissance": "28/03/1979",
        "Sexe": "Féminin",
        "INS": "279035121518989",
        "Auteur": "Dr Jean COEUR — CHU de Nulle-Part",
        "Organisation": "CHU de Nulle-Part",
    }


def test_the_narrative_is_transcribed_element_by_element() -> None:
    body = page(cda()).find("body")
    assert body is not None
    assert [h.text for h in body.iter("h2", "h3")] == ["Histoire", "Examen clinique"]
    paragraph = body.find(".//p[@style='font-weight: bold']")
    assert paragraph is not None
    assert paragraph.find("span[@style='font-style: italic']").text == "douleur"
    assert paragraph.find("br").tail.strip() == "depuis 2 jours"  # a line break, then the rest
    assert text_of(paragraph) == "Motif : douleur thoraciquedepuis 2 jours"
    ordered = body.find(".//ol")
    assert [text_of(li) for li in ordered.iter("li")] == ["Aspirine 100 mg", "Bisoprolol*"]
    assert ordered.find("li/sup").text == "*"
    table = body.find(".//table[caption]")
    assert table.findtext("caption") == "Constantes"
    assert table.find("thead/tr/th").get("colspan") == "2"
    assert table.find("tbody/tr/td").get("rowspan") == "1"
    assert table.findall("tbody/tr/td")[1].text == "12/8 <normale>"  # text, not markup
    words = text_of(body)
    assert "[image non reproduite: ECG du jour]" in words
    assert "compte rendu joint" in words
    assert "texte gardé" in words
    assert "Auscultation normale." in words


def test_the_page_references_nothing_to_fetch() -> None:
    html = page(cda())
    tags = {e.tag for e in html.iter() if isinstance(e.tag, str)}
    assert tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "table",
                    "caption", "thead", "tbody", "tr", "th", "td", "p", "span", "br", "ol",
                    "ul", "li", "sup", "strong", "div"}
    assert not [a for e in html.iter() for a in e.attrib if a in ("href", "src")]
    with pytest.raises(ValueError, match="fetches nothing"):
        render._refuse_fetch("http://example.invalid/x")


def text_body(data: bytes, media_type: str = "text/plain") -> str:
    return (f'<nonXMLBody><text mediaType="{media_type}" representation="B64">'
            f"{base64.b64encode(data).decode()}</text></nonXMLBody>")


def test_a_level1_text_body_is_rendered_as_written() -> None:
    pre = page(cda(text_body("Compte rendu\r\n  Ligne indentée — é\r\n".encode()))
               ).find("body/pre")
    assert pre is not None
    assert pre.text == "Compte rendu\n  Ligne indentée — é\n"


def test_a_level1_text_body_in_latin_1_with_a_form_feed_still_renders() -> None:
    # an HL7 TX field's \X0C\ (new page) decodes to a form feed; French systems write 8859-1
    pre = page(cda(text_body("Page 1\fPage 2 élément\x01".encode("latin-1")))).find("body/pre")
    assert pre is not None
    assert pre.text == "Page 1\nPage 2 élément\ufffd"


@pytest.mark.parametrize(("body", "problem"), [
    (text_body(b"\xff\xd8\xff\xe0", "image/jpeg"), "'image/jpeg' is not rendered"),
    ('<nonXMLBody><text mediaType="text/plain" representation="B64">@@@</text></nonXMLBody>',
     "not valid base64"),
    ("", "neither structuredBody nor nonXMLBody"),
])
def test_what_cannot_be_rendered_is_a_rendition_error_not_the_message_s(
        body: str, problem: str) -> None:
    with pytest.raises(PdfRenditionError, match=problem) as raised:
        page(cda(body))
    assert not isinstance(raised.value, DocumentError)  # never answered AE


@pytest.mark.parametrize("value", ["20240305143000+2400", "20240230", "2024030514"])
def test_odd_dates_do_not_break_the_page(value: str) -> None:
    root = cda()
    root.find(f"{{{HL7_NS}}}effectiveTime").set("value", value)
    html = page(root)
    created = html.find("head/meta[@name='dcterms.created']")
    if value == "2024030514":  # no offset: the sender's local time, as written
        assert created.get("content") == "2024-03-05T14:00:00"
    else:  # not a date: none in the PDF, the text as written in the header
        assert created is None
        assert value in text_of(html)


def test_a_caption_outside_a_table_is_bold_text() -> None:
    body = page(cda()).find("body")
    ordered = body.find(".//ol")
    assert ordered.find("caption") is None
    assert ordered.find("strong").text == "Traitements"
    assert body.find(".//table/caption").text == "Constantes"


def test_a_narrative_too_large_to_render_before_the_ack_is_refused() -> None:
    rows = "<tr><td>x</td></tr>" * (render.MAX_NARRATIVE_ELEMENTS // 2)
    big = (f"<structuredBody><component><section><text><table><tbody>{rows}</tbody></table>"
           "</text></section></component></structuredBody>")
    with pytest.raises(PdfRenditionError, match="too large"):
        page(cda(big))


@pytest.fixture(scope="module")
def rendered() -> bytes:
    root = etree.parse(str(ORU_N3)).getroot()
    return render_pdf(root, read_cda_header(root))


@needs_pdf_renderer
def test_the_rendition_is_a_pdf_a_1b(rendered: bytes) -> None:
    assert rendered.startswith(b"%PDF-1.4")
    assert b'pdfaid:part="1" pdfaid:conformance="B"' in rendered  # XMP identification
    assert b"/OutputIntents" in rendered
    assert b"/GTS_PDFA1" in rendered
    assert b"/FontFile2" in rendered  # fonts embedded
    assert b"/ObjStm" not in rendered  # no object streams in PDF 1.4
    # its dates are the document's (effectiveTime 20210104160527+0100)
    assert b"/CreationDate (D:20210104160527+01'00)" in rendered


RENDER_IN_A_PROCESS = """
import hashlib, sys
from lxml import etree
from connector.cda.header import read_cda_header
from connector.cda.render import render_pdf
root = etree.parse(sys.argv[1]).getroot()
print(hashlib.sha256(render_pdf(root, read_cda_header(root))).hexdigest())
"""


@needs_pdf_renderer
@pytest.mark.parametrize("path", LEVEL3, ids=lambda p: p.name)
def test_the_same_cda_gives_the_same_bytes(path: Path) -> None:
    """Here and in another process started later (a clock-dated font or PDF would differ)."""
    root = etree.parse(str(path)).getroot()
    here = hashlib.sha256(render_pdf(root, read_cda_header(root))).hexdigest()
    time.sleep(1.1)  # past the second: what is dated by the clock changes
    there = subprocess.run([sys.executable, "-c", RENDER_IN_A_PROCESS, str(path)], check=True,
                           capture_output=True, text=True, cwd=ROOT).stdout.strip()
    assert here == there


@needs_pdf_renderer
@pytest.mark.skipif(shutil.which("pdftotext") is None,
                    reason="pdftotext is not installed (Debian package poppler-utils; "
                           ".ci/run installs it)")
def test_the_pdf_reads_back_as_the_document(rendered: bytes, tmp_path: Path) -> None:
    path = tmp_path / "n3.pdf"
    path.write_bytes(rendered)
    text = subprocess.run(["pdftotext", "-enc", "UTF-8", str(path), "-"], check=True,
                          capture_output=True).stdout.decode()
    words = " ".join(text.split())
    for expected in ("Compte rendu d'examens biologiques", "Patient PAT-TROIS DOMINIQUE",
                     "Date de naissance 28/03/1979", "INS 279035121518989",
                     "Protéinogramme", "Bisalbuminémie", "Laboratoire des charmes"):
        assert expected in words
    assert re.search(r"Electrophor[eè]se des prot[eé]ines s[eé]riques", words)


def test_without_pango_no_pdf_is_rendered_and_the_reason_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render.ctypes.util, "find_library", lambda name: None)
    renderer_problem.cache_clear()
    monkeypatch.setattr(render, "renderer_problem", renderer_problem)  # cleared again after
    problem = renderer_problem()
    renderer_problem.cache_clear()
    assert problem is not None
    assert "libpango-1.0-0" in problem

    monkeypatch.setitem(sys.modules, "weasyprint", None)  # `import weasyprint` fails
    render._weasyprint.cache_clear()
    try:
        root = cda()
        with pytest.raises(PdfRenditionError, match="libpango"):
            render_pdf(root, read_cda_header(root))
    finally:
        render._weasyprint.cache_clear()


def test_a_renderer_failure_is_not_the_message_s_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def HTML(self, **kwargs: object) -> object:  # noqa: N802 (WeasyPrint's name)
            raise RuntimeError("layout bug")

    monkeypatch.setattr(render, "_weasyprint", Broken)
    root = cda()
    with pytest.raises(PdfRenditionError, match="RuntimeError") as raised:
        render_pdf(root, read_cda_header(root))
    assert not isinstance(raised.value, DocumentError)  # not answered AE
