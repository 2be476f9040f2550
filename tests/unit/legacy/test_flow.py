"""The legacy flow's pieces not covered by the golden cases: a text report, the encounter date,
missing data answered with a located error."""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from connector.cda.header import InstanceId, read_cda_header
from connector.cda.policy import SchematronPolicy
from connector.cda.safe_xml import parse_xml
from connector.cda.validation import CdaValidator
from connector.cisis.model import Action, MailRoute
from connector.errors import MessageError
from connector.hl7.codes import Severity
from connector.hl7.header import MessageHeader
from connector.hl7.message import Message, parse_message
from connector.legacy.flow import Establishment, LegacyFlows, ReportVersion
from connector.legacy.mapping import load_mapping
from tests.conftest import SCHEMAS

SHIPPED = Path(__file__).resolve().parents[3] / "mappings"
CASE = (SHIPPED / "labo-cr-bio" / "cases" / "cr-bio-pdf.hl7").read_text("utf-8")
NOW = datetime(2026, 11, 23, 10, 30, tzinfo=timezone(timedelta(hours=1)))


def flows(tmp_path: Path, body: str = "obx-pdf", *, extra: str = "") -> LegacyFlows:
    text = (SHIPPED / "labo-cr-bio" / "mapping.yaml").read_text("utf-8")
    text = text.replace("  from: obx-pdf", f"  from: {body}").replace(
        "  rules: [ordering-provider, copies]", '  rules: [{fixed: ["a@b.mssante.fr"]}]') + extra
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


def with_status(text: str, *, obx11: str = "F", obr25: str = "F", orc1: str = "RE") -> str:
    separator = "\r" if "\r" in text else "\n"  # read_text gives the case's CRs as LFs
    lines = text.split(separator)
    for i, line in enumerate(lines):
        fields = line.split("|")
        if fields[0] == "OBX":
            fields[11] = obx11
        elif fields[0] == "OBR":
            fields[25] = obr25
        elif fields[0] == "ORC":
            fields[1] = orc1
        lines[i] = "|".join(fields)
    return separator.join(lines)


def test_the_case_is_a_final_result() -> None:
    assert with_status(CASE) == CASE  # F, F, RE: what the status tests change


@pytest.mark.parametrize(("status", "location", "said"), [
    ({"obx11": "D"}, "OBX^1^11", "OBX-11 = D"),
    ({"obx11": "W"}, "OBX^1^11", "OBX-11 = W"),
    ({"obx11": "X"}, "OBX^1^11", "OBX-11 = X"),
    ({"obr25": "X"}, "OBR^1^25", "OBR-25 = X"),
    ({"orc1": "CA"}, "ORC^1^1", "ORC-1 = CA"),
    ({"orc1": "OC"}, "ORC^1^1", "ORC-1 = OC"),
    ({"orc1": "CR"}, "ORC^1^1", "ORC-1 = CR"),
])
def test_a_cancelled_result_is_refused_whatever_the_mapping(
        tmp_path: Path, status: dict[str, str], location: str, said: str) -> None:
    """Sent as a new document it would reach the recipients as a valid report."""
    flow = flows(tmp_path, extra="results:\n  corrected: new\n")
    with pytest.raises(MessageError) as caught:
        run(flow, with_status(CASE, **status))
    assert caught.value.location is not None
    assert caught.value.location.to_hl7() == location
    assert f"a cancelled result ({said}) is not sent" in caught.value.detail
    assert "PAT-TROIS" not in caught.value.detail


@pytest.mark.parametrize(("status", "location"), [
    ({"obx11": "C"}, "OBX^1^11"),
    ({"obr25": "C"}, "OBR^1^25"),
])
def test_a_corrected_result_is_refused_by_default(tmp_path: Path, status: dict[str, str],
                                                  location: str) -> None:
    with pytest.raises(MessageError) as caught:
        run(flows(tmp_path), with_status(CASE, **status))
    assert caught.value.location is not None
    assert caught.value.location.to_hl7() == location
    assert "results.corrected = refuse" in caught.value.detail


def test_a_corrected_result_goes_as_new_with_a_warning_when_the_mapping_says_so(
        tmp_path: Path) -> None:
    flow = flows(tmp_path, extra="results:\n  corrected: new\n")
    message = parse_message(with_status(CASE, obx11="C"))
    request = flow.request(MessageHeader.from_segment(message.msh), message).request
    assert request.action is Action.NEW
    warning = request.warnings[0]
    assert warning.severity is Severity.WARNING
    assert warning.location is not None
    assert warning.location.to_hl7() == "OBX^1^11"
    assert warning.detail == ("corrected result (OBX-11 = C) sent as a new document, not linked "
                              "to the report it corrects")
    final = parse_message(CASE)
    assert flow.request(MessageHeader.from_segment(final.msh), final).request.warnings == ()


# -- results.corrected: replace ---------------------------------------------------------------

REPLACE = "results:\n  corrected: replace\n"


def header_and_message(text: str) -> tuple[MessageHeader, Message]:
    message = parse_message(text)
    return MessageHeader.from_segment(message.msh), message


def test_every_report_of_an_order_names_the_same_document_set(tmp_path: Path) -> None:
    """The set comes from the establishment, MSH-3/4 and the order (OBR-3 first): no lookup,
    and another order or another lab never shares it."""
    flow = flows(tmp_path, extra=REPLACE)
    set_id = flow.report_set_id(*header_and_message(CASE))
    assert set_id is not None
    assert re.fullmatch(r"2\.25\.\d+", set_id.root)
    corrected = with_status(CASE, obx11="C").replace("|LAB0001|", "|LAB0002|")
    assert flow.report_set_id(*header_and_message(corrected)) == set_id
    other_order = CASE.replace("|CMD1|LAB1|", "|CMD1|LAB9|")
    assert flow.report_set_id(*header_and_message(other_order)) not in (None, set_id)
    other_lab = CASE.replace("MSH|^~\\&|SGL|", "MSH|^~\\&|SGL2|")
    assert flow.report_set_id(*header_and_message(other_lab)) not in (None, set_id)
    placer_only = CASE.replace("|CMD1|LAB1|", "|CMD1||").replace("ORC|RE|CMD1|LAB1|",
                                                                  "ORC|RE|CMD1||")
    placer_set = flow.report_set_id(*header_and_message(placer_only))
    assert placer_set not in (None, set_id)


def test_no_document_set_without_the_policy_or_an_order_number(tmp_path: Path) -> None:
    assert flows(tmp_path / "a").report_set_id(*header_and_message(CASE)) is None
    assert flows(tmp_path / "b", extra="results:\n  corrected: new\n").report_set_id(
        *header_and_message(CASE)) is None
    no_order = CASE.replace("|CMD1|LAB1|", "|||").replace("ORC|RE|CMD1|LAB1|", "ORC|RE|||")
    assert flows(tmp_path / "c", extra=REPLACE).report_set_id(
        *header_and_message(no_order)) is None


def test_the_first_report_of_an_order_is_version_1_of_its_set(tmp_path: Path) -> None:
    flow = flows(tmp_path, extra=REPLACE)
    request = flow.request(*header_and_message(CASE)).request
    header = request.documents[0].header
    assert request.action is Action.NEW
    assert request.warnings == ()
    assert header.set_id == flow.report_set_id(*header_and_message(CASE))
    assert header.version_number == 1
    assert header.parent_document_ids == ()


@pytest.mark.parametrize("status", [{"obx11": "C"}, {"obr25": "C"}, {}])
def test_a_later_report_replaces_the_latest_known_version(
        tmp_path: Path, status: dict[str, str]) -> None:
    """Corrected, or final again (after a preliminary one): the next version, RPLC."""
    flow = flows(tmp_path, extra=REPLACE)
    header, message = header_and_message(with_status(CASE, **status))
    set_id = flow.report_set_id(header, message)
    assert set_id is not None
    parent = InstanceId("2.25.42")
    request = flow.request(header, message, previous=ReportVersion(parent, set_id, 2)).request
    cda = request.documents[0].header
    assert request.action is Action.REPLACE
    assert request.warnings == ()
    assert cda.set_id == set_id
    assert cda.version_number == 3
    assert cda.parent_document_ids == (parent,)
    assert cda.related_document_type == "RPLC"
    assert cda.document_id != parent


def test_a_replacement_passes_the_xsd_and_the_structuration_minimale(tmp_path: Path) -> None:
    validator = CdaValidator.from_paths(
        SCHEMAS / "cda-xsd" / "CDA_extended.xsd",
        SCHEMAS / "schematron" / "structurationMinimale" / "ASIP-STRUCT-MIN-StrucMin.sch",
        policy=SchematronPolicy.REJECT)
    flow = flows(tmp_path, extra=REPLACE)
    header, message = header_and_message(with_status(CASE, obx11="C"))
    set_id = flow.report_set_id(header, message)
    assert set_id is not None
    request = flow.request(header, message,
                           previous=ReportVersion(InstanceId("2.25.42"), set_id, 1)).request
    replacement = validator.assess(request.documents[0].content)
    assert replacement.accepted, replacement.report()
    assert not replacement.xsd_violations
    first = validator.assess(flow.request(*header_and_message(CASE)).request.documents[0].content)
    assert replacement.warnings == first.warnings  # the RPLC adds no finding


def test_a_previous_version_of_another_set_is_not_replaced(tmp_path: Path) -> None:
    flow = flows(tmp_path, extra=REPLACE)
    request = flow.request(*header_and_message(CASE), previous=ReportVersion(
        InstanceId("2.25.42"), InstanceId("2.25.43"), 1)).request
    assert request.action is Action.NEW
    assert request.documents[0].header.version_number == 1


@pytest.mark.parametrize(("text", "why"), [
    (with_status(CASE, obx11="C"), "the report it corrects is not known here"),
    (with_status(CASE, obx11="C").replace("|CMD1|LAB1|", "|||").replace(
        "ORC|RE|CMD1|LAB1|", "ORC|RE|||"),
     "no order number (OBR-3, ORC-3, OBR-2, ORC-2) to link it by"),
])
def test_a_correction_that_cannot_be_linked_goes_as_new_with_a_warning(
        tmp_path: Path, text: str, why: str) -> None:
    request = flows(tmp_path, extra=REPLACE).request(*header_and_message(text)).request
    assert request.action is Action.NEW
    (warning,) = request.warnings
    assert warning.severity is Severity.WARNING
    assert warning.location is not None
    assert warning.location.to_hl7() == "OBX^1^11"
    assert warning.detail == f"corrected result (OBX-11 = C) sent as a new document: {why}"


def test_the_document_set_does_not_depend_on_the_delimiters(tmp_path: Path) -> None:
    """MSH-3/4 and the order number are read unescaped, component by component: other
    delimiters or empty trailing components name the same set; MSH-4 names another."""
    flow = flows(tmp_path, extra=REPLACE)
    set_id = flow.report_set_id(*header_and_message(CASE))
    hashes = CASE.replace("MSH|^~\\&|", "MSH|#~\\&|").replace("^", "#")
    assert hashes != CASE
    assert flow.report_set_id(*header_and_message(hashes)) == set_id
    trailing = CASE.replace("MSH|^~\\&|SGL|CHU-X|", "MSH|^~\\&|SGL^^|CHU-X^|")
    assert flow.report_set_id(*header_and_message(trailing)) == set_id
    other_facility = CASE.replace("MSH|^~\\&|SGL|CHU-X|", "MSH|^~\\&|SGL|CHU-Y|")
    assert flow.report_set_id(*header_and_message(other_facility)) not in (None, set_id)


def test_another_kind_of_report_of_the_same_order_is_another_set(tmp_path: Path) -> None:
    """Two mappings for one lab (OBR-4 decides): the same order number, two document sets."""
    text = (SHIPPED / "labo-cr-bio" / "mapping.yaml").read_text("utf-8").replace(
        "  rules: [ordering-provider, copies]", '  rules: [{fixed: ["a@b.mssante.fr"]}]') + REPLACE
    first = tmp_path / "bio" / "mapping.yaml"
    first.parent.mkdir()
    first.write_text(text, "utf-8")
    assert text.count('type: {code: "11502-2"') == 1
    second = tmp_path / "other" / "mapping.yaml"
    second.parent.mkdir()
    second.write_text(text.replace('type: {code: "11502-2"', 'type: {code: "11526-1"').replace(
        "name: labo-cr-bio", "name: labo-anapath"), "utf-8")
    establishment = Establishment("CHU X", "1.2.250.1.71.4.2.2.1120456789", "120456789")
    bio = LegacyFlows([load_mapping(first)], establishment, clock=lambda: NOW)
    anapath = LegacyFlows([load_mapping(second)], establishment, clock=lambda: NOW)
    header, message = header_and_message(CASE)
    sets = {bio.report_set_id(header, message), anapath.report_set_id(header, message)}
    assert len(sets) == 2
    assert None not in sets


def test_a_withdrawal_goes_to_those_the_report_went_to(tmp_path: Path) -> None:
    """Not to the cancellation's own recipients: a copy it adds would receive the report it
    withdraws; one it omits would keep it."""
    flow = flows(tmp_path, extra=REPLACE)  # its rule: a@b.mssante.fr
    header, message = header_and_message(with_status(CASE, obx11="D"))
    set_id = flow.report_set_id(header, message)
    assert set_id is not None
    first = flow.request(*header_and_message(CASE)).request.documents[0]
    previous = ReportVersion(first.header.document_id, set_id, 1, first.content,
                             ("dr.who@medecin.mssante.fr", "279035121518989@patient.mssante.fr"))
    request = flow.request(header, message, previous=previous).request
    assert request.action is Action.DELETE
    assert request.documents[0].content == first.content
    assert [r.address for r in request.sending.recipients] == list(previous.recipients)
    assert request.sending.route is MailRoute.PS_AND_PATIENT


def test_an_analyte_that_cannot_be_obtained_is_not_the_report_cancelled(tmp_path: Path) -> None:
    """OBX-11 X on one line of a panel ("cannot be obtained") is routine: only the report's
    own OBX, its OBR and ORC say the report is cancelled."""
    flow = flows(tmp_path, extra=REPLACE)
    separator = "\r" if "\r" in CASE else "\n"
    panel = CASE.rstrip(separator) + separator + "OBX|2|NM|2345-7^Glucose^LN||5.5|mmol/L|||||X"
    request = flow.request(*header_and_message(panel)).request
    assert request.action is Action.NEW
    assert request.warnings == ()


def test_after_a_withdrawal_the_next_report_is_the_next_version_replacing_nothing(
        tmp_path: Path) -> None:
    flow = flows(tmp_path, extra=REPLACE)
    header, message = header_and_message(CASE)
    set_id = flow.report_set_id(header, message)
    assert set_id is not None
    withdrawn = ReportVersion(InstanceId("2.25.42"), set_id, 1, withdrawn=True)
    request = flow.request(header, message, previous=withdrawn).request
    cda = request.documents[0].header
    assert request.action is Action.NEW
    assert (cda.version_number, cda.parent_document_ids) == (2, ())
    cancelled = header_and_message(with_status(CASE, obx11="D"))
    with pytest.raises(MessageError) as caught:
        flow.request(*cancelled, previous=withdrawn)
    assert "already withdrawn" in caught.value.detail
