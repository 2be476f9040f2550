"""The PDF rendition of a CDA R2 document, and the name of the PDF attached to the mail.

Where the PDF comes from (reference `cisis-hl7v2-to-mssante.md` §3.2 and §4.5):

* level 1: `component/nonXMLBody/text` with `@mediaType="application/pdf"` and
  `@representation="B64"`. A `text/plain` body (the other media type allowed by the CI-SIS) is
  not a PDF: `extract_pdf` returns None and the caller has to render one;
* level 3: the section "FR-Document-PDF-copie" (section templateId `1.2.250.1.213.1.1.2.243`),
  whose entry `observationMedia/value` carries the PDF (`mediaType="application/pdf"`, B64).
  Other `observationMedia` (images in a results section...) are not the PDF rendition.

The decoded bytes must start with the PDF magic `%PDF-`; anything else is refused with
`DocumentError`, as is undecodable base64. Error messages name elements and rules only.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

from lxml import etree

from connector.cda.header import CdaHeader
from connector.cda.paths import select
from connector.errors import DocumentError

PDF_MAGIC = b"%PDF-"
PDF_MEDIA_TYPE = "application/pdf"
#: templateId of the level-3 section FR-Document-PDF-copie (LOINC 55108-5).
PDF_COPY_SECTION_TEMPLATE_ID = "1.2.250.1.213.1.1.2.243"

_LEVEL1_TEXT = "h:component/h:nonXMLBody/h:text"
_LEVEL3_PDF_VALUE = (
    "h:component/h:structuredBody//h:section"
    f"[h:templateId/@root='{PDF_COPY_SECTION_TEMPLATE_ID}']"
    "//h:observationMedia/h:value"
)


def _first(root: etree._Element, path: str) -> etree._Element | None:
    found = select(root, path)
    return found[0] if found else None


def base64_text(el: etree._Element) -> bytes:
    """The base64 text of `el`, decoded (whitespace ignored, missing padding tolerated; b""
    when there is none); `binascii.Error` when it is not base64."""
    raw = "".join(t for t in el.itertext() if isinstance(t, str))
    # str.split() drops the characters `\s` matches (both are Py_UNICODE_ISSPACE), ~8x faster
    # than re.sub on the ~50 KB of base64 of a PDF.
    compact = "".join(raw.split())
    return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)


def _decode_b64_pdf(el: etree._Element, where: str) -> bytes:
    """Decode the base64 text of `el`, which must be a PDF."""
    representation = (el.get("representation") or "TXT").strip().upper()
    if representation != "B64":
        raise DocumentError(f"{where} with mediaType {PDF_MEDIA_TYPE} must have representation B64")
    try:
        data = base64_text(el)
    except (binascii.Error, ValueError) as exc:
        raise DocumentError(f"{where} is not valid base64") from exc
    if not data:
        raise DocumentError(f"{where} carries no PDF content")
    if not data.startswith(PDF_MAGIC):
        raise DocumentError(f"{where} does not decode to a PDF (no %PDF- header)")
    return data


def extract_pdf(root: etree._Element) -> bytes | None:
    """The PDF rendition of a parsed CDA (see the module docstring), or None when it has none."""
    text = _first(root, _LEVEL1_TEXT)
    if text is not None:
        media_type = (text.get("mediaType") or "").strip().lower()
        if media_type != PDF_MEDIA_TYPE:
            return None
        return _decode_b64_pdf(text, "nonXMLBody/text")
    value = _first(root, _LEVEL3_PDF_VALUE)
    if value is None:
        return None
    media_type = (value.get("mediaType") or "").strip().lower()
    if media_type != PDF_MEDIA_TYPE:
        raise DocumentError(
            "FR-Document-PDF-copie observationMedia/value must have mediaType application/pdf"
        )
    return _decode_b64_pdf(value, "FR-Document-PDF-copie observationMedia/value")


# -- attachment file name --------------------------------------------------------------------------

#: Whole file name bound, extension included: well below every file system and MUA limit.
MAX_FILE_NAME_LENGTH = 120
_MAX_TYPE_LENGTH = 40  # "<type document>" truncated to 40 characters (S10 rule, §3.5)
_MAX_PART_LENGTH = 30
_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def _ascii_part(value: str, limit: int) -> str:
    """Accents stripped, ASCII letters/digits/hyphens only; other runs become one hyphen."""
    decomposed = unicodedata.normalize("NFKD", value)
    ascii_only = "".join(
        c if c.isascii() else " " for c in decomposed if not unicodedata.combining(c)
    )
    cleaned = _UNSAFE.sub("-", ascii_only).strip("-")
    return cleaned[:limit].rstrip("-")


def _label_part(value: str, limit: int) -> str:
    """A label as the ANS example writes it (`CR d'imagerie médicale`): letters (accents
    kept), digits, spaces, apostrophes and hyphens; every other run (`_`, `/`, `\\`, `.`,
    quotes, control characters...) becomes one space."""
    text = unicodedata.normalize("NFC", value).translate(_APOSTROPHES)
    kept = "".join(c if c.isalnum() or c in "'-" else " " for c in text)
    return " ".join(kept.split())[:limit].strip(" '-")


def _act_date(header: CdaHeader) -> str:
    """AAAAMMJJ of the act: serviceEvent low, else the document effectiveTime."""
    for candidate in (
        header.service_event.low if header.service_event else None,
        header.effective_time,
    ):
        if candidate and re.fullmatch(r"\d{8}", candidate[:8]):
            return candidate[:8]
    raise DocumentError(
        "no documentationOf/serviceEvent/effectiveTime/low nor effectiveTime to date the PDF name"
    )


def _document_type(header: CdaHeader) -> str:
    if header.code is not None:
        return header.code.display_name or header.code.code
    if header.title:
        return header.title
    raise DocumentError("CDA code is missing: no document type for the PDF name")


def _patient_parts(header: CdaHeader) -> tuple[str, str]:
    patient = header.patient
    family = None
    given = None
    if patient is not None:
        family = patient.birth_family_name or patient.used_family_name
        first_of_list = patient.birth_given_names.split()[0] if patient.birth_given_names else None
        given = patient.first_birth_given_name or first_of_list or patient.used_given_name
    if not family:
        raise DocumentError("recordTarget patient name/family is missing for the PDF name")
    if not given:
        raise DocumentError("recordTarget patient name/given is missing for the PDF name")
    return family, given


def pdf_attachment_name(header: CdaHeader, *, dossier: str | None = None) -> str:
    """`<date>_<type>_<NOM>_<prénom>_<dossier>.pdf` (Référentiel #2 ECO.2.1.6), sanitised.

    * `<date>`: AAAAMMJJ of `documentationOf/serviceEvent/effectiveTime/low` (the act), else of
      the document `effectiveTime`;
    * `<type>`: `code/@displayName` (else the code, else the title), cut to 40 characters;
    * `<NOM>`: birth family name (`family@qualifier='BR'`, else the used name), upper case;
    * `<prénom>`: first birth given name (`given@qualifier='BR'`, else the first of the given
      names list, else the used given name);
    * `<dossier>`: the caller's file number (e.g. the biology registration number). The
      référentiel makes it optional; **when absent the segment and its separator are left
      out** (`<date>_<type>_<NOM>_<prénom>.pdf`), as in the ANS example
      `20220531_CR d'imagerie médicale_CORSE_FIGATELLIX.pdf`.

    Sanitising: `_` is kept as the field separator. The type and the names keep their
    letters, accents, spaces, apostrophes (a typographic one written `'`) and hyphens, as in
    the ANS example: the mail writes such a name RFC 2231-encoded (`filename*=UTF-8''...`).
    Every other run of characters (`_`, `/`, `\\`, `.`, quotes, control characters...) becomes
    one space. The dossier, an identifier, is kept to ASCII letters, digits and `-`. Each
    field is bounded (type 40, others 30) and the whole name to `MAX_FILE_NAME_LENGTH`
    characters, the type being shortened first.
    """
    family, given = _patient_parts(header)
    date = _act_date(header)
    kind = _label_part(_document_type(header), _MAX_TYPE_LENGTH) or "document"
    fixed = [
        _label_part(family, _MAX_PART_LENGTH).upper(),
        _label_part(given, _MAX_PART_LENGTH),
    ]
    if dossier is not None and _ascii_part(dossier, _MAX_PART_LENGTH):
        fixed.append(_ascii_part(dossier, _MAX_PART_LENGTH))
    if not fixed[0] or not fixed[1]:
        raise DocumentError("recordTarget patient name has no letters")
    suffix = ".pdf"
    budget = MAX_FILE_NAME_LENGTH - len(suffix) - len(date) - sum(len(p) + 1 for p in fixed) - 1
    kind = kind[: max(budget, 1)].rstrip(" '-") or "d"
    return "_".join([date, kind, *fixed]) + suffix
