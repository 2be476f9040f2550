"""Property tests: whatever the input, only the connector's own errors come out.

The tolerant readers (PRT, OBX, metadata, bodies, layout) must not raise at all; the checks and
`parse_document_request` may refuse a message, but only with a `ConnectorError` subclass (the
MessageError family, answered AE), never an IndexError, a binascii.Error or an lxml exception.
"""

from __future__ import annotations

import base64
import contextlib

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from connector.cisis import Audience, BodyKind, MetadataFlag, parse_document_request
from connector.cisis.checks import check_metadata
from connector.cisis.parse import (
    MetadataObx,
    ObxRef,
    classify_recipient,
    decode_base64,
    find_address,
    metadata_name,
    read_bodies,
    read_body,
    read_participant,
    read_participants,
    read_patient,
    split_observations,
    yes_no,
)
from connector.errors import ConnectorError, MessageError, ProfileError
from connector.hl7.message import Message, parse_message
from tests.unit.cisis import fixture_text, small_mdm, small_oru

MSH = ("MSH|^~\\&|A|B|C|D|20240101||ORU^R01^ORU_R01|1|P|2.5|||||FRA|UNICODE UTF-8|||"
       "2.1^CISIS_CDA_HL7_V2")

# Text that is likely to hit the parsers' edges: delimiters, escapes, codes, spaces, non-ASCII.
TOKENS = st.sampled_from([
    "", "^", "~", "&", "\\", "\\F\\", "\\X0D\\", " ", "\xa0", "Y", "N", "y", "X.400", "x.400",
    "Internet", "NET", "RCT", "SB", "REPLY", "rct", "INS", "1.2.250.1.213.1.4.10",
    "1.2.250.1.213.1.4.8", "@", "a@b.fr", "x@patient.mssante.fr", "ED", "CE", "CWE", "TEXT",
    "XML", "Base64", "MetaDMPMSS", "FIN", "ç", "é", "=", "==", "SGVsbG8", "\x00",
    *[flag.value for flag in MetadataFlag], "CORPSMAIL_PS", "CORPSMAIL_PATIENT", "ACK_LECTURE",
])
FIELD = st.lists(st.one_of(TOKENS, st.text(max_size=12)), max_size=8).map("".join)
FIELDS = st.lists(FIELD, max_size=20)


def _message(lines: list[str]) -> Message | None:
    try:
        return parse_message("\r".join([MSH, *lines]))
    except ConnectorError:
        return None  # e.g. a field holding a segment separator followed by junk


# -- the tolerant readers never raise --------------------------------------------------------------


@given(FIELDS, st.integers(min_value=1, max_value=50))
def test_prt_readers_never_raise(fields: list[str], sequence: int) -> None:
    message = _message(["|".join(["PRT", *fields])])
    if message is None:
        return
    for prt in message.all("PRT"):
        participant, warnings = read_participant(prt, sequence)
        find_address(prt)
        if participant is not None:
            classify_recipient(participant)
        assert all(w.detail for w in warnings)


@given(st.lists(st.tuples(st.sampled_from(["OBX", "PRT", "NTE", "ORC", "PID"]), FIELDS),
                max_size=25))
def test_layout_metadata_and_bodies_never_raise(segments: list[tuple[str, list[str]]]) -> None:
    message = _message(["|".join([name, *fields]) for name, fields in segments])
    if message is None:
        return
    layout = split_observations(message)
    read_participants(layout)
    read_bodies(layout)
    for obx in message.all("OBX"):
        metadata_name(obx)
        yes_no(obx.component(5, 1))
    for pid in message.all("PID"):
        read_patient(pid)
    with contextlib.suppress(ProfileError):
        check_metadata(layout, [])


@given(FIELDS, st.sampled_from(list(BodyKind)))
def test_metadata_and_body_readers_on_one_obx(fields: list[str], body: BodyKind) -> None:
    message = _message(["|".join(["OBX", *fields])])
    if message is None or not message.all("OBX"):
        return
    obx = message.all("OBX")[0]
    name = metadata_name(obx)
    layout = split_observations(message)
    assert [m.name for m in layout.metadata] == ([name] if name is not None else [])
    text, warnings = read_body(MetadataObx(body, ObxRef(obx, 1)))
    assert text is None or not warnings
    assert all(body.value in w.detail for w in warnings)


@given(st.text(max_size=200))
def test_decode_base64_never_raises(text: str) -> None:
    decoded = decode_base64(text)
    if decoded is not None:  # 4 characters carry 3 bytes; unused trailing bits are ignored
        assert len(decoded) == len("".join(text.split()).rstrip("=")) * 3 // 4


@given(st.binary(min_size=1, max_size=120))
def test_decode_base64_round_trips_without_padding(data: bytes) -> None:
    text = base64.b64encode(data).decode()
    assert decode_base64(text.rstrip("=")) == data


# -- parse_document_request on mutated messages ----------------------------------------------------

XML_BITS = st.sampled_from([
    b"<ClinicalDocument xmlns='urn:hl7-org:v3'>", b"</ClinicalDocument>", b"<id root='1.2'/>",
    b"<id/>", b"<versionNumber value='x'/>", b"<versionNumber value='-1'/>",
    b"<recordTarget><patientRole><id root='1.2.250.1.213.1.4.10' extension='1'/>",
    b"</patientRole></recordTarget>", b"<relatedDocument><parentDocument><id root='1'/>",
    b"</parentDocument></relatedDocument>", b"<!DOCTYPE x>", b"&e;", b"<", b"\xff\xfe", b"\x00",
])
CDA_PAYLOADS = st.one_of(
    st.lists(XML_BITS, max_size=12).map(lambda parts: base64.b64encode(b"".join(parts))),
    st.binary(max_size=64).map(base64.b64encode),
).map(lambda encoded: encoded.decode().rstrip("="))


@st.composite
def mutated(draw: st.DrawFn, base: str) -> str:
    lines = [line for line in base.split("\n") if line]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        operation = draw(st.sampled_from(["field", "field", "component", "drop", "duplicate",
                                          "swap", "cda", "truncate"]))
        parts = lines[i].split("|")
        if operation == "field" and len(parts) > 1:
            j = draw(st.integers(min_value=1, max_value=len(parts) + 2))
            parts.extend([""] * (j + 1 - len(parts)))
            parts[j] = draw(FIELD)
            lines[i] = "|".join(parts)
        elif operation == "component" and len(parts) > 1:
            j = draw(st.integers(min_value=1, max_value=len(parts) - 1))
            comps = parts[j].split("^")
            comps[draw(st.integers(min_value=0, max_value=len(comps) - 1))] = draw(FIELD)
            parts[j] = "^".join(comps)
            lines[i] = "|".join(parts)
        elif operation == "drop" and len(lines) > 1:
            del lines[i]
        elif operation == "duplicate":
            lines.insert(i, lines[i])
        elif operation == "swap":
            k = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            lines[i], lines[k] = lines[k], lines[i]
        elif operation == "cda":
            obx = [n for n, line in enumerate(lines) if line.startswith("OBX|") and "|ED|" in line]
            if obx:
                n = draw(st.sampled_from(obx))
                parts = lines[n].split("|")
                parts.extend([""] * (6 - len(parts)))
                parts[5] = f"^TEXT^XML^Base64^{draw(CDA_PAYLOADS)}"
                lines[n] = "|".join(parts)
        elif operation == "truncate":
            lines[i] = lines[i][: draw(st.integers(min_value=0, max_value=len(lines[i])))]
    return "\n".join(lines) + "\n"


def _run(text: str) -> None:
    try:
        message = parse_message(text)
        result = parse_document_request(message)
    except MessageError as exc:
        event(f"{type(exc).__name__} {exc.condition.code}")
        return
    except ConnectorError as exc:
        event(type(exc).__name__)
        return
    event("accepted")
    # Accepted: the invariants still hold.
    sent = {r.audience for r in result.sending.recipients}
    if result.metadata.invisible_patient or not result.metadata.destmssantepat:
        assert Audience.PATIENT not in sent
    if not result.metadata.destmssanteps:
        assert Audience.PS not in sent
    assert result.documents


_FAST = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_FAST
@given(st.data())
def test_mutated_small_mdm_raises_only_connector_errors(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(["T02", "T10", "T04"]))
    _run(data.draw(mutated(small_mdm(base))))


@_FAST
@given(st.data())
def test_mutated_small_oru_raises_only_connector_errors(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(["F", "C", "D"]))
    _run(data.draw(mutated(small_oru(base))))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_mutated_ans_fixtures_raise_only_connector_errors(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from([
        "mdm-t10-replace/message.er7", "oru-r01-initial/message.hl7",
        "mdm-t02-initial/message-placeholder-cda.er7",
    ]))
    _run(data.draw(mutated(fixture_text(name))))
