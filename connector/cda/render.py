"""The PDF/A-1 a CDA gets when it carries none (Référentiel #2 ECO.2.1.5).

Every CDA of an MSSanté mail travels with its PDF/A-1 (ECO.2.1.1). `extract_pdf` (pdf.py) finds
the one a document embeds (level 1 `nonXMLBody` PDF, level 3 section FR-Document-PDF-copie);
this module renders one for the others: "for a CDA R2 N3, the header data (title, type, date,
author, organisation) plus a faithful transcription of the narrative", and, for a level-1
`text/plain` body, that text.

* **header**: the title (else the type's display name), the document type (`code`), its date
  (`effectiveTime`) and the date of the act (`serviceEvent`), the patient (birth name and used
  name, given names, birth date, sex, INS), each author with their organisation, the legal
  authenticator, the custodian organisation;
* **body, level 3**: each section of `structuredBody` in document order, nested sections under
  their parent, its `title` (else its `code/@displayName`) and its narrative block (`text`),
  transcribed element by element: `paragraph`, `content` (`styleCode` Bold, Italics,
  Underline, Emphasis), `br`, `list`/`item` (ordered or not), `table` with `caption`, `thead`,
  `tbody`, `tfoot`, `tr`, `th`, `td` (`colspan`, `rowspan`), `sub`, `sup`, `caption`,
  `linkHtml` (its text), `footnote`, `footnoteRef`; `renderMultiMedia` (an image the PDF does
  not hold) becomes a bracketed mention with its caption. Any other element keeps its text.
  Entries (the coded part) are not rendered: the narrative is the attested content;
* **body, level 1 text/plain**: the decoded text (UTF-8, else Windows-1252), lines and spaces
  kept. Characters XML cannot hold (control characters) become U+FFFD everywhere.

A narrative of more than `MAX_NARRATIVE_ELEMENTS` elements is not rendered: layout time grows
with table cells, and the rendering runs in the document stage, before the ACK (0.2-0.6 s for
the ANS level-3 examples; 0.6 s more for WeasyPrint's first import in a process).

The page is built as XHTML with lxml (every value escaped), then rendered by WeasyPrint as
PDF/A-1b (`pdf/a-1b`: fonts embedded and subset, XMP metadata, sRGB output intent), fetching
nothing (no resource is referenced; the fetcher refuses any URL). Its dates come from the CDA
(`effectiveTime`), so the same document always gives the same bytes. WeasyPrint needs Pango
(Debian: libpango-1.0-0, libpangoft2-1.0-0) and a font (fonts-dejavu-core); without them, or if
it fails, `render_pdf` raises `PdfRenditionError` (not the message's fault: its mails go
without that PDF, with a warning), and `renderer_problem()` says why, for the start-up warning.
"""

from __future__ import annotations

import binascii
import ctypes.util
import functools
import os
import re
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from lxml import etree

from connector.cda.header import CdaHeader, Organization, PersonName
from connector.cda.paths import HL7_NS, select
from connector.cda.pdf import base64_text
from connector.errors import PdfRendererUnavailable, PdfRenditionError

PDF_VARIANT = "pdf/a-1b"
#: Narratives with more elements are not rendered: layout time grows with the table cells (a
#: 2,000-row table takes 7 s here) and the rendering runs before the ACK.
MAX_NARRATIVE_ELEMENTS = 15_000

# Where HarfBuzz's subsetter is missing (Debian: libharfbuzz-subset0), WeasyPrint subsets the
# embedded fonts with fontTools, which dates them (`head.modified`) from this reproducible-builds
# variable, else from the clock: without it the same CDA would give PDFs whose font bytes
# differ. Any value does; one the site set is kept. Set when this module is imported (at
# start-up, before any worker thread), never while other threads may read the environment.
if not os.environ.get("SOURCE_DATE_EPOCH"):
    os.environ["SOURCE_DATE_EPOCH"] = "315532800"  # 1980-01-01, the ZIP format's first day

_H = f"{{{HL7_NS}}}"
# One layout at a time per process: WeasyPrint does not say it is thread-safe (Pango and
# fontconfig underneath), and the document stage may run several messages in threads. Layout
# holds the GIL most of the time anyway, so this costs little.
_RENDERING = threading.Lock()

_STYLE = """
@page { size: A4; margin: 18mm 16mm 20mm 16mm;
        @bottom-right { content: counter(page) " / " counter(pages); font-size: 8pt; } }
body { font-family: "DejaVu Sans", sans-serif; font-size: 9.5pt; line-height: 1.35; }
h1 { font-size: 15pt; margin: 0 0 6pt 0; }
h2 { font-size: 12pt; margin: 12pt 0 4pt 0; border-bottom: 0.5pt solid #444; }
h3 { font-size: 10.5pt; margin: 9pt 0 3pt 0; }
h4, h5, h6 { font-size: 9.5pt; margin: 7pt 0 2pt 0; }
table { border-collapse: collapse; margin: 3pt 0; }
th, td { border: 0.5pt solid #777; padding: 1.5pt 3pt; vertical-align: top; text-align: left; }
th { background: #eee; }
table.header th { width: 38mm; }
caption { font-weight: bold; text-align: left; }
pre { font-family: "DejaVu Sans Mono", monospace; font-size: 9pt; white-space: pre-wrap; }
.media { font-style: italic; }
"""

_SEX = {"M": "Masculin", "F": "Féminin", "U": "Inconnu"}
_STYLE_CODES = {"bold": "font-weight: bold", "italics": "font-style: italic",
                "underline": "text-decoration: underline", "emphasis": "font-style: italic"}
_TABLE_PARTS = frozenset({"table", "caption", "thead", "tbody", "tfoot", "tr", "th", "td",
                          "colgroup", "col"})
_SPAN_ATTRIBUTES = ("colspan", "rowspan")
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_TS = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")


# -- the PDF -------------------------------------------------------------------------------------


def render_pdf(root: etree._Element, header: CdaHeader) -> bytes:
    """The PDF/A-1b rendition of the parsed CDA `root` (its header read as `header`).

    Whatever goes wrong is `PdfRenditionError`, never a fault of the message's syntax (the CDA
    was checked before): the renderer missing on this host (`PdfRendererUnavailable`), a body it
    cannot render (a level-1 body neither PDF nor
    text), a narrative over `MAX_NARRATIVE_ELEMENTS`, a failure while building the page or
    laying it out. Its text names the cause, never the content."""
    weasyprint = _weasyprint()
    try:
        html = etree.tostring(rendition_html(root, header), encoding="unicode", method="html")
        with _RENDERING:
            document = weasyprint.HTML(string=html, url_fetcher=_refuse_fetch)
            pdf = document.write_pdf(pdf_variant=PDF_VARIANT)
    except PdfRenditionError:
        raise
    except Exception as exc:  # noqa: BLE001 (a renderer bug is not the message's fault)
        raise PdfRenditionError(f"the PDF rendition of the CDA failed ({type(exc).__name__})"
                                ) from None
    assert isinstance(pdf, bytes)
    return pdf


@functools.cache
def renderer_problem() -> str | None:
    """Why PDFs cannot be rendered on this host (a missing library), or None. Looked up once
    (`find_library` runs ldconfig), without loading WeasyPrint."""
    missing = [name for name in ("pango-1.0", "pangoft2-1.0")
               if ctypes.util.find_library(name) is None]
    if missing:
        return (f"the Pango libraries WeasyPrint loads are missing ({', '.join(missing)}): "
                "install Debian's libpango-1.0-0 and libpangoft2-1.0-0")
    return None


@functools.cache
def _weasyprint() -> Any:
    try:
        import weasyprint
    except (ImportError, OSError) as exc:
        raise PdfRendererUnavailable(
            f"no PDF renderer: {renderer_problem() or type(exc).__name__}") from None
    return weasyprint


def _refuse_fetch(url: str, *args: object, **kwargs: object) -> dict[str, Any]:
    raise ValueError("the PDF rendition fetches nothing")


# -- the page ------------------------------------------------------------------------------------


def rendition_html(root: etree._Element, header: CdaHeader) -> etree._Element:
    """The page rendered: an XHTML tree (every value an escaped text node)."""
    title = _xml_text(header.title or (header.code.display_name if header.code else None)
                      or "Document médical")
    html = etree.Element("html", lang=(header.language_code or "fr-FR")[:2])
    head = etree.SubElement(html, "head")
    etree.SubElement(head, "meta", charset="utf-8")
    etree.SubElement(head, "title").text = title
    created = _iso(header.effective_time)
    if created:  # the PDF's dates (and so its bytes) come from the document
        etree.SubElement(head, "meta", name="dcterms.created", content=created)
        etree.SubElement(head, "meta", name="dcterms.modified", content=created)
    authors = [_person(a.person_name) for a in header.authors if a.person_name]
    if authors:
        etree.SubElement(head, "meta", name="author", content=_xml_text(", ".join(authors)))
    etree.SubElement(head, "style").text = _STYLE
    body = etree.SubElement(html, "body")
    etree.SubElement(body, "h1").text = title
    body.append(_header_table(header))
    structured = select(root, "h:component/h:structuredBody")
    if structured:
        size = sum(1 for _ in structured[0].iter())
        if size > MAX_NARRATIVE_ELEMENTS:
            raise PdfRenditionError(f"the structured body is too large to render before the "
                                    f"ACK ({size} elements, at most {MAX_NARRATIVE_ELEMENTS})")
        for section in select(structured[0], "h:component/h:section"):
            _section(body, section, 2)
    else:
        body.append(_plain_text(root))
    return html


def _header_table(header: CdaHeader) -> etree._Element:
    rows: list[tuple[str, str]] = []
    if header.code is not None:
        rows.append(("Type de document", header.code.display_name or header.code.code))
    if header.effective_time:
        rows.append(("Date du document", _french_date(header.effective_time)))
    event = header.service_event
    if event is not None and event.low:
        act = _french_date(event.low)
        if event.high and event.high != event.low:
            act += f" – {_french_date(event.high)}"
        rows.append(("Date de l'acte", act))
    rows += _patient_rows(header)
    rows += [("Auteur", who) for who in (_who(a.person_name, a.organization)
                                         for a in header.authors) if who]
    legal = header.legal_authenticator
    if legal is not None:
        who = _who(legal.entity.person_name, legal.entity.organization)
        if who:
            rows.append(("Responsable", who))
    custodian = _organization(header.custodian)
    if custodian:
        rows.append(("Organisation", custodian))
    table = etree.Element("table", {"class": "header"})
    for label, value in rows:
        tr = etree.SubElement(table, "tr")
        etree.SubElement(tr, "th").text = label
        etree.SubElement(tr, "td").text = _xml_text(value)
    return table


def _patient_rows(header: CdaHeader) -> list[tuple[str, str]]:
    patient = header.patient
    if patient is None:
        return []
    rows: list[tuple[str, str]] = []
    given = patient.birth_given_names or patient.first_birth_given_name or patient.used_given_name
    family = patient.birth_family_name or patient.used_family_name
    rows.append(("Patient", " ".join(p for p in (family, given) if p)))
    if patient.used_family_name and patient.used_family_name != family:
        rows.append(("Nom utilisé", patient.used_family_name))
    if patient.birth_time:
        rows.append(("Date de naissance", _french_date(patient.birth_time[:8])))
    if patient.sex is not None:
        rows.append(("Sexe", _SEX.get(patient.sex.code, patient.sex.code)))
    ins = header.ins
    if ins is not None and ins.extension:
        rows.append(("INS", ins.extension))
    return rows


def _plain_text(root: etree._Element) -> etree._Element:
    """A level-1 `text/plain` body (base64 or not), its lines and spaces kept: UTF-8, else
    Windows-1252 (the superset of Latin-1 French systems write)."""
    found = select(root, "h:component/h:nonXMLBody/h:text")
    if not found:
        raise PdfRenditionError("the CDA has neither structuredBody nor nonXMLBody/text")
    element = found[0]
    media_type = (element.get("mediaType") or "text/plain").strip().lower()
    if media_type != "text/plain":
        raise PdfRenditionError(f"a level-1 body of type {media_type[:40]!r} is not rendered")
    if (element.get("representation") or "TXT").strip().upper() == "B64":
        try:
            data = base64_text(element)
        except (binascii.Error, ValueError):
            raise PdfRenditionError("nonXMLBody/text is not valid base64") from None
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError:
            raw = data.decode("cp1252", errors="replace")
    else:
        raw = "".join(t for t in element.itertext() if isinstance(t, str))
    pre = etree.Element("pre")
    pre.text = _xml_text(raw.replace("\r\n", "\n").replace("\f", "\n"))
    return pre


# -- sections and their narrative ----------------------------------------------------------------


def _section(parent: etree._Element, section: etree._Element, depth: int) -> None:
    titles = select(section, "h:title")
    title = _text_of(titles[0]) if titles else ""
    if not title:
        codes = select(section, "h:code")
        title = (codes[0].get("displayName") or "").strip() if codes else ""
    if title:
        etree.SubElement(parent, f"h{min(depth, 6)}").text = _xml_text(title)
    for text in select(section, "h:text"):
        block = etree.SubElement(parent, "div", {"class": "narrative"})
        _children(block, text)
    for child in select(section, "h:component/h:section"):
        _section(parent, child, depth + 1)


def _children(target: etree._Element, source: etree._Element) -> None:
    """`source`'s text and children, transcribed into `target`."""
    _append_text(target, source.text)
    for child in source:
        if isinstance(child.tag, str):
            _narrative(target, child)
        _append_text(target, child.tail)


def _narrative(target: etree._Element, element: etree._Element) -> None:
    name = etree.QName(element).localname if element.tag.startswith(_H) else ""
    if name == "br":
        etree.SubElement(target, "br")
        return
    if name == "renderMultiMedia":
        media = etree.SubElement(target, "span", {"class": "media"})
        captions = [" ".join(_text_of(c).split()) for c in element
                    if isinstance(c.tag, str) and etree.QName(c).localname == "caption"]
        media.text = _xml_text(f"[image non reproduite{': ' + captions[0] if captions else ''}]")
        return
    if name == "footnoteRef":
        etree.SubElement(target, "sup").text = _xml_text(f"[{element.get('IDREF') or '*'}]")
        return
    out = _element_for(target, name, element)
    _children(out, element)


def _element_for(target: etree._Element, name: str, element: etree._Element) -> etree._Element:
    if name == "caption" and target.tag != "table":  # of a paragraph, a list or an item
        return etree.SubElement(target, "strong")
    if name in _TABLE_PARTS:
        attributes = {a: element.get(a, "") for a in _SPAN_ATTRIBUTES
                      if (element.get(a) or "").isdigit()}
        return etree.SubElement(target, name, attributes)
    if name == "paragraph":
        return etree.SubElement(target, "p", _styled(element))
    if name == "list":
        ordered = (element.get("listType") or "").lower() == "ordered"
        return etree.SubElement(target, "ol" if ordered else "ul")
    if name == "item":
        return etree.SubElement(target, "li", _styled(element))
    if name in ("sub", "sup"):
        return etree.SubElement(target, name)
    if name == "footnote":
        return etree.SubElement(target, "small")
    return etree.SubElement(target, "span", _styled(element))  # content, linkHtml, others


def _styled(element: etree._Element) -> dict[str, str]:
    styles = [_STYLE_CODES[code] for code in (element.get("styleCode") or "").lower().split()
              if code in _STYLE_CODES]
    return {"style": "; ".join(styles)} if styles else {}


def _text_of(element: etree._Element) -> str:
    return "".join(t for t in element.itertext() if isinstance(t, str)).strip()


def _xml_text(text: str) -> str:
    """`text` without the characters XML 1.0 cannot hold (control characters a text body or
    an unescaped HL7 field may carry): each becomes U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


def _append_text(target: etree._Element, text: str | None) -> None:
    if not text:
        return
    text = _xml_text(text)
    if len(target):
        last = target[-1]
        last.tail = (last.tail or "") + text
    else:
        target.text = (target.text or "") + text


# -- values --------------------------------------------------------------------------------------


def _person(name: PersonName) -> str:
    return " ".join(p for p in (name.prefix, *name.given, name.family, name.suffix) if p)


def _who(person: PersonName | None, organization: Organization | None) -> str:
    """`person — organisation`, either alone when the other is missing, "" when both are."""
    return " — ".join(p for p in (_person(person) if person else "",
                                  _organization(organization)) if p)


def _organization(organization: Organization | None) -> str:
    return organization.name or "" if organization is not None else ""


def _parsed(ts: str) -> tuple[datetime, bool] | None:
    """A HL7 TS as a datetime, and whether it had a time of day."""
    match = _TS.match(ts.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, offset = match.groups()
    try:
        tz = None  # no offset: the sender's local time, written as it is
        if offset:
            sign = -1 if offset[0] == "-" else 1
            tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
        value = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0),
                         int(minute or 0), int(second or 0), tzinfo=tz)
    except ValueError:  # 20240230, +2400...
        return None
    return value, hour is not None


def _french_date(ts: str) -> str:
    parsed = _parsed(ts)
    if parsed is None:
        return ts
    value, timed = parsed
    return value.strftime("%d/%m/%Y %H:%M" if timed else "%d/%m/%Y")


def _iso(ts: str | None) -> str | None:
    parsed = _parsed(ts) if ts else None
    return parsed[0].isoformat() if parsed else None
