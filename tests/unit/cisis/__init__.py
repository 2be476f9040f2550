"""Helpers shared by the CI-SIS tests: fixture loading, ER7 text mutation, small CDA documents.

Mutations work on the ER7 text (LF-separated, like the ANS fixtures) so that every test states
the exact wire change it makes. Field numbers follow HL7 (MSH-n included).
"""

from __future__ import annotations

import base64
from functools import cache
from pathlib import Path

from connector.cisis import MetadataFlag
from connector.errors import MessageError
from connector.hl7.message import Message, parse_message
from tests.conftest import CISIS_FIXTURES

FIXTURES = CISIS_FIXTURES

#: Patient data found in the fixtures: no error detail or warning may contain any of these.
PATIENT_DATA = (
    "279035121518989",
    "277076322082910",
    "1234567890121",
    "PAT-TROIS",
    "DOMINIQUE",
    "Breteuil",
    "19790328",
    "Dupont",
    "@patient.mssante.fr",
    "adam.hoda",
)

INS_TEST_OID = "1.2.250.1.213.1.4.10"
INS_NIR_OID = "1.2.250.1.213.1.4.8"
PATIENT_INS = "279035121518989"


@cache
def fixture_text(relative: str) -> str:
    return (FIXTURES / relative).read_text(encoding="utf-8")


def fixture_paths() -> list[Path]:
    return sorted(p for p in FIXTURES.glob("*/message*") if p.suffix in (".er7", ".hl7"))


def parse(text: str) -> Message:
    return parse_message(text)


# -- ER7 text mutation -----------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]


def _join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _index(lines: list[str], name: str, occurrence: int) -> int:
    seen = 0
    for i, line in enumerate(lines):
        if line.split("|", 1)[0] == name:
            seen += 1
            if seen == occurrence:
                return i
    raise LookupError(f"no {name} #{occurrence}")


def _field_index(name: str, field: int) -> int:
    # "MSH|^~\&|A" splits to ["MSH", "^~\&", "A"]: MSH-n is at index n - 1.
    return field - 1 if name == "MSH" else field


def get_field(text: str, name: str, field: int, occurrence: int = 1) -> str:
    lines = _lines(text)
    parts = lines[_index(lines, name, occurrence)].split("|")
    index = _field_index(name, field)
    return parts[index] if index < len(parts) else ""


def set_field(text: str, name: str, field: int, value: str, occurrence: int = 1) -> str:
    lines = _lines(text)
    i = _index(lines, name, occurrence)
    parts = lines[i].split("|")
    index = _field_index(name, field)
    parts.extend([""] * (index + 1 - len(parts)))
    parts[index] = value
    lines[i] = "|".join(parts)
    return _join(lines)


def set_component(
    text: str, name: str, field: int, component: int, value: str, occurrence: int = 1
) -> str:
    comps = get_field(text, name, field, occurrence).split("^")
    comps.extend([""] * (component - len(comps)))
    comps[component - 1] = value
    return set_field(text, name, field, "^".join(comps), occurrence)


def drop_segment(text: str, name: str, occurrence: int = 1) -> str:
    lines = _lines(text)
    del lines[_index(lines, name, occurrence)]
    return _join(lines)


def drop_segments(text: str, name: str) -> str:
    return _join([line for line in _lines(text) if line.split("|", 1)[0] != name])


def insert_after(text: str, name: str, occurrence: int, new_line: str) -> str:
    lines = _lines(text)
    lines.insert(_index(lines, name, occurrence) + 1, new_line)
    return _join(lines)


def replace_segment(text: str, name: str, occurrence: int, new_line: str) -> str:
    lines = _lines(text)
    lines[_index(lines, name, occurrence)] = new_line
    return _join(lines)


def _metadata_occurrence(text: str, code: str) -> int:
    occurrence = 0
    for line in _lines(text):
        if line.startswith("OBX|"):
            occurrence += 1
            if line.split("|")[3].split("^")[0].strip().upper() == code:
                return occurrence
    raise LookupError(code)


def metadata_obx(text: str, flag: MetadataFlag | str) -> int:
    """The OBX occurrence carrying metadata `flag`."""
    return _metadata_occurrence(text, str(flag))


def set_flag(text: str, flag: MetadataFlag, value: str) -> str:
    occurrence = metadata_obx(text, flag)
    return set_field(text, "OBX", 5, f"{value}^^expandedYes-NoIndicator", occurrence)


def set_flags(text: str, **values: str) -> str:
    for name, value in values.items():
        text = set_flag(text, MetadataFlag(name.upper()), value)
    return text


def drop_metadata(text: str, flag: MetadataFlag | str) -> str:
    return drop_segment(text, "OBX", _metadata_occurrence(text, str(flag)))


# -- small CDA documents ---------------------------------------------------------------------------


def small_cda(
    document_id: tuple[str, str | None],
    patient_ids: tuple[tuple[str, str], ...] = ((INS_TEST_OID, PATIENT_INS),),
    parent_ids: tuple[tuple[str, str | None], ...] = (),
    *,
    structured: bool = False,
) -> bytes:
    """A minimal CDA R2 header (enough for `read_cda_header`), level 1 or level 3."""

    def ii(tag: str, root: str, extension: str | None) -> str:
        ext = f' extension="{extension}"' if extension is not None else ""
        return f'<{tag} root="{root}"{ext}/>'

    ids = "".join(ii("id", root, ext) for root, ext in patient_ids)
    related = ""
    if parent_ids:
        parents = "".join(ii("id", root, ext) for root, ext in parent_ids)
        related = (
            f'<relatedDocument typeCode="RPLC"><parentDocument>{parents}</parentDocument>'
            "</relatedDocument>"
        )
    body = (
        "<structuredBody><component><section><title>S</title></section></component>"
        "</structuredBody>"
        if structured
        else '<nonXMLBody><text mediaType="application/pdf" representation="B64">JVBERi0='
        "</text></nonXMLBody>"
    )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ClinicalDocument xmlns="urn:hl7-org:v3">'
        f"{ii('id', *document_id)}"
        '<code code="11502-2" codeSystem="2.16.840.1.113883.6.1"/>'
        "<title>Test</title>"
        '<versionNumber value="1"/>'
        f"<recordTarget><patientRole>{ids}</patientRole></recordTarget>"
        f"{related}"
        f"<component>{body}</component>"
        "</ClinicalDocument>"
    )
    return xml.encode("utf-8")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def with_document(text: str, cda: bytes, occurrence: int = 1) -> str:
    """Put `cda` (base64) in OBX-5.5 of the document OBX #occurrence."""
    return set_component(text, "OBX", 5, 5, b64(cda), occurrence)


MDM_DOC_ID = "1.2.250.1.71.4.2.2.120456789.71024000081"
MDM_NEW_ID = "1.2.250.1.71.4.2.2.120456789.71024000082"


@cache
def small_mdm(event: str = "T02") -> str:
    """The ANS MDM example with a small CDA, and flags that match matrix row 2 (PS only).

    T02: INVISIBLE_REP_LEGAUX set to N (the ANS T02 example has Y, which row 2 refuses).
    T10/T04: INVISIBLE_PATIENT set to Y (their ANS examples are visible to the patient and sent
    to the PS only, a combination the matrix does not list).
    """
    base = fixture_text("mdm-t02-initial/message-placeholder-cda.er7")
    if event == "T02":
        text = with_document(base, small_cda((MDM_DOC_ID, None)))
        return set_flags(text, invisible_rep_legaux="N")
    text = fixture_text("mdm-t10-replace/message.er7" if event == "T10"
                        else "mdm-t04-delete/message.er7")
    cda = small_cda((MDM_NEW_ID, None), parent_ids=((MDM_DOC_ID, None),))
    return set_flags(with_document(text, cda), invisible_patient="Y")


ORU_N1_ID = "1.2.250.1.213.1.1.12"
ORU_N3_ID = "1.2.250.1.213.1.1.11"
ORU_N1_PARENT = "1.2.250.1.213.1.1.10"
ORU_N3_PARENT = "1.2.250.1.213.1.1.9"


@cache
def small_oru(action: str = "F") -> str:
    """The ANS ORU example with a small level-1 and level-3 CDA whose patient is PID-3's.

    Flags as in the ANS example: row 1 (PS and patient).
    """
    base = fixture_text("oru-r01-replace/message-placeholder-cda.er7")
    replace = action == "C"
    n1 = small_cda((ORU_N1_ID, None), parent_ids=((ORU_N1_PARENT, None),) if replace else ())
    n3 = small_cda((ORU_N3_ID, None), parent_ids=((ORU_N3_PARENT, None),) if replace else (),
                   structured=True)
    text = with_document(with_document(base, n1, 1), n3, 2)
    text = set_field(text, "ORC", 1, {"F": "NW", "C": "RO", "D": "CA"}[action])
    text = set_field(text, "OBX", 11, action, 1)
    return set_field(text, "OBX", 11, action, 2)


def assert_clean_detail(exc: MessageError) -> None:
    """An error detail names fields, rules and codes, never patient data."""
    for value in PATIENT_DATA:
        assert value not in exc.detail, (value, exc.detail)


def assert_clean_text(text: str) -> None:
    for value in PATIENT_DATA:
        assert value not in text, (value, text)
