"""The legacy flow's pieces not covered by the golden cases: a text report, the encounter date,
missing data answered with a located error."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from connector.cda.header import read_cda_header
from connector.cda.safe_xml import parse_xml
from connector.errors import MessageError
from connector.hl7.header import MessageHeader
from connector.hl7.message import parse_message
from connector.legacy.flow import Establishment, LegacyFlows
from connector.legacy.mapping import load_mapping

SHIPPED = Path(__file__).resolve().parents[3] / "mappings"
CASE = (SHIPPED / "labo-cr-bio" / "cases" / "cr-bio-pdf.hl7").read_text("utf-8")
NOW = datetime(2026, 11, 23, 10, 30, tzinfo=timezone(timedelta(hours=1)))


def flows(tmp_path: Path, body: str = "obx-pdf") -> LegacyFlows:
    text = (SHIPPED / "labo-cr-bio" / "mapping.yaml").read_text("utf-8")
    text = text.replace("  from: obx-pdf", f"  from: {body}").replace(
        "  rules: [ordering-provider, copies]", '  rules: [{fixed: ["a@b.mssante.fr"]}]')
    path = tmp_path / "labo" / "mapping.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(text, "utf-8")
    return LegacyFlows([load_mapping(path)],
                       Establishment("CHU X", "1.2.250.1.71.4.2.2.1120456789", "120456789"),
                       clock=lambda: NOW)


def run(flow: LegacyFlows, text: str) -> bytes:
    message = parse_message(text)
    outcome = flow.request(MessageHeader.from_segment(message.msh), message)
    return outcome.request.documents[0].content


def test_a_text_report_becomes_a_text_plain_body(tmp_path: Path) -> None:
    segments = [s for s in CASE.split("\r") if s and not s.startswith("OBX")]
    segments += ["OBX|1|TX|11502-2^CR^LN||Hémoglobine : 13,2 g/dL||||||F",
                 "OBX|2|TX|11502-2^CR^LN||Conclusion : normal||||||F"]
    cda = run(flows(tmp_path, "obx-text"), "\r".join(segments) + "\r")
    header = read_cda_header(parse_xml(cda))
    assert header.body_media_type == "text/plain"
    encoded = parse_xml(cda).findtext(".//{urn:hl7-org:v3}nonXMLBody/{urn:hl7-org:v3}text")
    assert encoded is not None
    assert base64.b64decode(encoded).decode() == ("Hémoglobine : 13,2 g/dL\n"
                                                  "Conclusion : normal\n")


def test_the_encounter_starts_at_the_admission_when_pv1_gives_it(tmp_path: Path) -> None:
    fields = ["PV1", "1", "I"] + [""] * 41 + ["20261120083000"]
    text = CASE.replace("PV1|1|O", "|".join(fields))
    cda = parse_xml(run(flows(tmp_path), text))
    low = cda.find(".//{urn:hl7-org:v3}encompassingEncounter/{urn:hl7-org:v3}effectiveTime/"
                   "{urn:hl7-org:v3}low")
    assert low is not None
    assert low.get("value") == "20261120083000+0100"


@pytest.mark.parametrize(("change", "location"), [
    (lambda t: t.replace("^application^pdf^Base64^", "^text^plain^Base64^"), "OBX^1^2"),
    (lambda t: t.replace("^PI~", "^XX~"), "PID^1^3"),
    (lambda t: t.replace("10303030303&BIOLOGISTE&Anne", "").replace(
        "10101010101^MARTIN^Paul", "^MARTIN^Paul"), "OBR^1^32"),
])
def test_missing_data_is_a_located_error(tmp_path: Path, change: object,
                                         location: str) -> None:
    assert callable(change)
    with pytest.raises(MessageError) as caught:  # LegacyMappingError or ProfileError: AE
        run(flows(tmp_path), change(CASE))
    assert caught.value.location is not None
    assert caught.value.location.to_hl7() == location
