"""parse_document_request: every ANS fixture, then one mutation per check and ERR code path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from lxml import etree

from connector.cisis import (
    CISIS_MATRIX,
    Action,
    MailRoute,
    MatrixRow,
    MessageKind,
    MetadataFlag,
    RecipientKind,
    SendingMatrix,
    parse_document_request,
)
from connector.cisis.matrix import ANY, N, Y
from connector.cisis.model import DocumentRequest
from connector.errors import (
    DocumentError,
    MessageError,
    ProfileError,
    SendingMatrixError,
    UnsupportedMessageError,
)
from connector.hl7.codes import ApplicationError, ErrorCondition, Severity
from tests.unit.cisis import (
    INS_NIR_OID,
    INS_TEST_OID,
    MDM_DOC_ID,
    MDM_NEW_ID,
    ORU_N1_ID,
    PATIENT_INS,
    assert_clean_detail,
    assert_clean_text,
    b64,
    drop_metadata,
    drop_segment,
    drop_segments,
    fixture_paths,
    fixture_text,
    get_field,
    insert_after,
    metadata_obx,
    parse,
    replace_segment,
    set_component,
    set_field,
    set_flags,
    small_cda,
    small_mdm,
    small_oru,
    with_document,
)

HODA = "adam.hoda@test-ci-sis.mssante.fr"
PATIENT_MAILBOX = f"{PATIENT_INS}@patient.mssante.fr"


def request(text: str, matrix: SendingMatrix = CISIS_MATRIX) -> DocumentRequest:
    result = parse_document_request(parse(text), matrix=matrix)
    for warning in result.warnings:
        assert_clean_text(warning.detail)
    return result


def refused(
    text: str,
    error: type[MessageError],
    code: str,
    location: str | None,
    application_error: ApplicationError | None = None,
) -> MessageError:
    """Assert the exact refusal (class, ERR-3, ERR-2, ERR-5) and a clean detail."""
    with pytest.raises(error) as caught:
        parse_document_request(parse(text))
    exc = caught.value
    assert exc.condition.code == code, exc.detail
    assert (exc.location.to_hl7() if exc.location else None) == location, exc.detail
    if application_error is not None:
        assert exc.application_error is application_error
    if code == "207":
        assert exc.application_error is not None  # a 207 always carries its ERR-5
    assert_clean_detail(exc)
    return exc


# -- every ANS fixture -----------------------------------------------------------------------------

# What each fixture genuinely gives (see the report): the placeholders are not CDA documents; the
# ORU examples carry a CDA whose recordTarget is another patient (an INS-NIR under .8) than PID-3
# (an INS-NIR test under .10); the MDM examples use flag combinations the 2026-04-21 matrix does
# not list (T02: invisible to the patient *and* to the legal representatives, PS only; T04/T10:
# visible to the patient, PS only).
FIXTURE_OUTCOMES: dict[str, tuple[type[MessageError], str, str, str]] = {
    "mdm-t02-initial/message-placeholder-cda.er7":
        (DocumentError, "207", "OBX^1^5^1^5", "not a CDA document"),
    "mdm-t02-initial/message.er7":
        (SendingMatrixError, "207", "OBX^4^5", "INVISIBLE_REP_LEGAUX = N (got Y)"),
    "mdm-t04-delete/message.er7":
        (SendingMatrixError, "207", "OBX^3^5", "INVISIBLE_PATIENT = Y (got N)"),
    "mdm-t10-replace/message.er7":
        (SendingMatrixError, "207", "OBX^3^5", "INVISIBLE_PATIENT = Y (got N)"),
    "oru-r01-initial/message.hl7":
        (DocumentError, "207", "OBX^1^5^1^5", "not a CDA document"),
    "oru-r01-replace/message-placeholder-cda.er7":
        (DocumentError, "207", "OBX^1^5^1^5", "not a CDA document"),
    "oru-r01-replace/message.er7":
        (DocumentError, "207", "PID^1^3", "INS of PID-3 and of the CDA"),
    "oru-r01-delete/message.er7":
        (DocumentError, "207", "PID^1^3", "INS of PID-3 and of the CDA"),
}


def test_the_table_covers_every_fixture_message() -> None:
    found = {str(p.relative_to(p.parents[1])) for p in fixture_paths()}
    assert found == set(FIXTURE_OUTCOMES)


@pytest.mark.parametrize("name", sorted(FIXTURE_OUTCOMES))
def test_fixture_outcome(name: str) -> None:
    error, code, location, detail = FIXTURE_OUTCOMES[name]
    exc = refused(fixture_text(name), error, code, location)
    assert detail in exc.detail


# The MDM fixtures, with a site matrix that also lists "PS only" for their flags: everything
# before the matrix passes, and the request is what the ANS README files describe.
PS_ONLY_SITE_MATRIX = SendingMatrix(
    "test: CI-SIS rows + PS only whatever the patient visibility",
    (*CISIS_MATRIX.rows,
     MatrixRow(4, MailRoute.PS_ONLY, (N, ANY, ANY, ANY, ANY, ANY, Y, N, ANY, ANY), "PS only")),
)


@pytest.mark.parametrize(
    ("name", "kind", "action", "parent"),
    [
        ("mdm-t02-initial/message.er7", MessageKind.MDM_T02, Action.NEW, None),
        ("mdm-t10-replace/message.er7", MessageKind.MDM_T10, Action.REPLACE, MDM_DOC_ID),
        ("mdm-t04-delete/message.er7", MessageKind.MDM_T04, Action.DELETE, MDM_DOC_ID),
    ],
)
def test_mdm_fixtures_parse_fully_under_a_site_matrix(
    name: str, kind: MessageKind, action: Action, parent: str | None
) -> None:
    result = request(fixture_text(name), PS_ONLY_SITE_MATRIX)
    assert result.origin.kind is kind
    assert result.origin.control_id == "015"
    assert result.origin.sending_application == "RIS-Y"
    assert result.origin.sending_facility == "Organisation-Y"
    assert result.origin.profile_version == "2.1"
    assert result.action is action
    assert result.patient_class == "I"
    assert result.patient.identity_status == "VALI"
    assert result.patient.ins is not None
    assert result.patient.ins.oid == INS_TEST_OID
    (document,) = result.documents
    assert document.type_code.code == "18748-4"
    assert document.level == 1
    assert document.content.startswith(b"<ClinicalDocument")
    assert result.unique_document_id is not None
    assert result.unique_document_id.namespace_id == "Organisation-Y"  # the EI.2 deviation
    if parent is None:  # a new document names no parent, in TXA-13 or in the CDA
        assert result.parent_document_id is None
        assert document.header.parent_document_ids == ()
    else:
        assert result.parent_document_id is not None
        assert result.parent_document_id.entity_id == parent
        assert document.header.parent_document_ids[0].root == parent
    assert result.sender is not None
    assert result.sender.person is not None
    assert result.sender.person.id == "801234564895"
    assert [(r.kind, r.address) for r in result.recipients] == [
        (RecipientKind.PROFESSIONAL, HODA)]
    assert result.reply_to is None
    assert result.metadata.destdmp
    assert result.metadata.destmssanteps
    assert not result.metadata.destmssantepat
    assert not result.metadata.ack_reception
    assert result.metadata.defaulted == frozenset()
    assert result.bodies.ps is not None
    assert result.bodies.ps.startswith("Cher confrère")
    assert result.patient_may_reply
    assert result.sending.route is MailRoute.PS_ONLY
    assert [r.address for r in result.sending.recipients] == [HODA]
    assert result.warnings == ()


def _oru_with_cda_patient(name: str) -> str:
    """An ORU fixture with PID-3 and the patient PRT set to the patient of its real CDA."""
    text = fixture_text(name)
    pid3 = (f"277076322082910^^^ASIP-SANTE-INS-NIR&{INS_NIR_OID}&ISO^INS"
            "~1234567890121^^^ES&1.2.3.4.567.8.9.10&ISO^PI")
    text = set_field(text, "PID", 3, pid3)
    prt5 = f"277076322082910^NESSI^RUTH^^^^^^{INS_NIR_OID}^L^^^INS"
    text = set_field(text, "PRT", 5, prt5, 3)
    return set_field(text, "PRT", 15, "^^X.400^277076322082910@patient.mssante.fr", 3)


@pytest.mark.parametrize(
    ("name", "action"),
    [("oru-r01-replace/message.er7", Action.REPLACE), ("oru-r01-delete/message.er7",
                                                       Action.DELETE)],
)
def test_oru_fixtures_parse_fully_once_pid3_names_the_cda_patient(
    name: str, action: Action
) -> None:
    result = request(_oru_with_cda_patient(name))
    assert result.origin.kind is MessageKind.ORU_R01
    assert result.action is action
    assert [(d.obx_sequence, d.level, d.header.document_id.root) for d in result.documents] == [
        (1, 1, "1.2.250.1.213.1.1.12"), (2, 3, "1.2.250.1.213.1.1.11")]
    assert result.patient.ipp is not None
    assert result.patient.ipp.value == "1234567890121"
    assert [(r.kind, r.address) for r in result.recipients] == [
        (RecipientKind.PROFESSIONAL, HODA),
        (RecipientKind.PATIENT, "277076322082910@patient.mssante.fr")]
    assert result.reply_to is not None
    assert result.reply_to.address == HODA
    assert result.sending.route is MailRoute.PS_AND_PATIENT
    assert result.sending.matrix_row == 1
    assert len(result.sending.recipients) == 2
    assert result.bodies.ps is None  # truncated base64 in the ANS example
    assert result.unique_document_id is None
    locations = [w.location.to_hl7() if w.location else "" for w in result.warnings]
    assert "OBX^13^5^1^5" in locations  # the CORPSMAIL_PS warning
    if action is Action.REPLACE:  # the level-3 document names no parent
        assert "OBX^2^5^1^5" in locations


# -- positive paths on small documents -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text_of", "action", "route"),
    [
        (lambda: small_mdm("T02"), Action.NEW, MailRoute.PS_ONLY),
        (lambda: small_mdm("T10"), Action.REPLACE, MailRoute.PS_ONLY),
        (lambda: small_mdm("T04"), Action.DELETE, MailRoute.PS_ONLY),
        (lambda: small_oru("F"), Action.NEW, MailRoute.PS_AND_PATIENT),
        (lambda: small_oru("C"), Action.REPLACE, MailRoute.PS_AND_PATIENT),
        (lambda: small_oru("D"), Action.DELETE, MailRoute.PS_AND_PATIENT),
    ],
)
def test_small_requests_are_accepted(
    text_of: Callable[[], str], action: Action, route: MailRoute
) -> None:
    result = request(text_of())
    assert result.action is action
    assert result.sending.route is route


def test_nte_fin_is_carried_to_the_request() -> None:
    text = small_oru("F")
    text = insert_after(text, "OBX", metadata_obx(text, "DESTMSSANTEPAT"), "NTE|1|||FIN|")
    assert not request(text).patient_may_reply


def test_ack_lecture_v2_0_name_is_accepted() -> None:
    text = small_oru("F")
    text = set_component(text, "OBX", 3, 1, "ACK_LECTURE", metadata_obx(text, "ACK_LECTURE_MSS"))
    assert request(text).metadata.ack_lecture_mss is False
    text = set_flags(text.replace("ACK_LECTURE^", "ACK_LECTURE_MSS^"), ack_lecture_mss="Y")
    assert request(text).metadata.ack_lecture_mss is True


def test_spaces_and_case_in_components_are_tolerated() -> None:
    text = small_oru("F")
    k = metadata_obx(text, "DESTDMP")
    text = set_field(text, "OBX", 3, " destdmp ^Destinataire DMP^MetaDMPMSS ", k)
    text = set_field(text, "OBX", 5, " y ^^ expandedYes-NoIndicator", k)
    text = set_field(text, "MSH", 21, "2.1^ CISIS_CDA_HL7_V2")
    text = set_component(text, "OBX", 5, 3, "xml", 1)
    text = set_component(text, "OBX", 5, 4, "BASE64", 1)
    text = set_component(text, "OBX", 5, 2, "text", 1)
    result = request(text)
    assert result.metadata.destdmp is True
    assert result.warnings[0].detail.startswith("OBX 13: CORPSMAIL_PS")


def test_cr_separators_are_accepted() -> None:
    result = request(small_mdm("T02").replace("\n", "\r"))
    assert result.action is Action.NEW


# -- 1. message type, event, version ---------------------------------------------------------------


def test_200_unsupported_message_type() -> None:
    text = set_component(small_mdm(), "MSH", 9, 1, "ADT")
    refused(text, UnsupportedMessageError, "200", "MSH^1^9^1^1")


def test_201_unsupported_event() -> None:
    text = set_field(small_oru(), "MSH", 9, "ORU^R30^ORU_R30")
    refused(text, UnsupportedMessageError, "201", "MSH^1^9^1^2")


def test_201_mdm_t11_says_why() -> None:
    text = set_field(small_mdm(), "MSH", 9, "MDM^T11^MDM_T01")
    exc = refused(text, UnsupportedMessageError, "201", "MSH^1^9^1^2")
    assert "T04" in exc.detail


@pytest.mark.parametrize(("text_of", "version"), [(small_mdm, "2.5"), (small_oru, "2.6")])
def test_203_wrong_hl7_version(text_of: Callable[[], str], version: str) -> None:
    refused(set_field(text_of(), "MSH", 12, version), UnsupportedMessageError, "203",
            "MSH^1^12")


def test_101_empty_message_type() -> None:
    refused(set_field(small_mdm(), "MSH", 9, ""), ProfileError, "101", "MSH^1^9")


def test_structure_mismatch_is_a_warning() -> None:
    result = request(set_field(small_mdm(), "MSH", 9, "MDM^T02^MDM_T01"))
    assert result.warnings[0].location is not None
    assert result.warnings[0].location.to_hl7() == "MSH^1^9^1^3"


# -- 2. MSH-21 -------------------------------------------------------------------------------------


def test_101_missing_msh21() -> None:
    refused(set_field(small_mdm(), "MSH", 21, ""), ProfileError, "101", "MSH^1^21")


@pytest.mark.parametrize(
    ("msh21", "location"),
    [
        ("1.2^CISIS_CDA_HL7_V1", "MSH^1^21"),
        ("1.1^CISIS_CDA_HL7_LPS", "MSH^1^21"),
        ("2.1^OTHER", "MSH^1^21"),
        ("3.0^CISIS_CDA_HL7_V2", "MSH^1^21^1^1"),
    ],
)
def test_203_other_profile_or_version(msh21: str, location: str) -> None:
    refused(set_field(small_mdm(), "MSH", 21, msh21), UnsupportedMessageError, "203", location)


def test_volet_v1_refusal_says_which_profile_to_send() -> None:
    exc = refused(set_field(small_mdm(), "MSH", 21, "1.2^CISIS_CDA_HL7_V1"),
                  UnsupportedMessageError, "203", "MSH^1^21")
    assert "2.1^CISIS_CDA_HL7_V2" in exc.detail


@pytest.mark.parametrize("msh21", ["2.0^CISIS_CDA_HL7_V2", "2.2^CISIS_CDA_HL7_V2"])
def test_other_2x_volet_versions_are_processed_with_a_warning(msh21: str) -> None:
    result = request(set_field(small_mdm(), "MSH", 21, msh21))
    assert result.origin.profile_version == msh21.split("^")[0]
    assert [(w.condition, w.location.to_hl7() if w.location else "") for w in result.warnings] \
        == [(ErrorCondition.UNSUPPORTED_VERSION_ID, "MSH^1^21^1^1")]


@pytest.mark.parametrize("msh21", ["2.1.2^CISIS_CDA_HL7_V2", "X^Y~2.1^CISIS_CDA_HL7_V2"])
def test_2_1_patch_versions_and_repeated_profiles_are_accepted(msh21: str) -> None:
    assert request(set_field(small_mdm(), "MSH", 21, msh21)).warnings == ()


# -- 3. required segments and fields ---------------------------------------------------------------


@pytest.mark.parametrize("segment", ["EVN", "PID", "PV1", "ORC", "OBR", "TXA"])
def test_100_mdm_required_segment_missing(segment: str) -> None:
    refused(drop_segment(small_mdm(), segment), ProfileError, "100", f"{segment}^1")


@pytest.mark.parametrize("segment", ["PID", "ORC", "OBR"])
def test_100_oru_required_segment_missing(segment: str) -> None:
    refused(drop_segment(small_oru(), segment), ProfileError, "100", f"{segment}^1")


def test_oru_without_pv1_is_accepted() -> None:
    result = request(drop_segment(small_oru(), "PV1"))
    assert result.patient_class == ""


def test_100_no_document_obx() -> None:
    text = drop_segment(small_mdm(), "OBX", 1)
    refused(text, ProfileError, "100", "OBX^1")


def test_198_mdm_with_two_documents() -> None:
    text = small_mdm()
    first = next(line for line in text.split("\n") if line.startswith("OBX|1|"))
    text = insert_after(text, "OBX", 1, first.replace("OBX|1|", "OBX|2|"))
    refused(text, ProfileError, "198", "OBX^2")


def test_198_oru_with_three_documents() -> None:
    text = small_oru()
    second = next(line for line in text.split("\n") if line.startswith("OBX|2|"))
    text = insert_after(text, "OBX", 2, second)
    refused(text, ProfileError, "198", "OBX^3")


def test_100_no_sender_and_no_recipient_prt() -> None:
    text = drop_segments(small_mdm(), "PRT")
    refused(text, ProfileError, "100", "PRT^1")


def test_only_a_sender_prt_is_enough_for_a_dmp_only_request() -> None:
    text = drop_segment(small_mdm(), "PRT", 2)
    text = set_flags(text, destmssanteps="N")
    result = request(text)
    assert result.sending.route is MailRoute.NO_MAIL
    assert result.recipients == ()


@pytest.mark.parametrize(
    ("text_of", "segment", "field", "location"),
    [
        (small_mdm, "MSH", 3, "MSH^1^3"),
        (small_mdm, "MSH", 4, "MSH^1^4"),
        (small_mdm, "MSH", 5, "MSH^1^5"),
        (small_mdm, "MSH", 6, "MSH^1^6"),
        (small_mdm, "MSH", 7, "MSH^1^7"),
        (small_mdm, "MSH", 10, "MSH^1^10"),
        (small_mdm, "MSH", 11, "MSH^1^11"),
        (small_oru, "MSH", 17, "MSH^1^17"),
        (small_oru, "MSH", 18, "MSH^1^18"),
        (small_mdm, "PID", 3, "PID^1^3"),
        (small_oru, "PID", 5, "PID^1^5"),
        (small_mdm, "TXA", 1, "TXA^1^1"),
        (small_mdm, "TXA", 2, "TXA^1^2"),
        (small_mdm, "TXA", 3, "TXA^1^3"),
        (small_mdm, "TXA", 17, "TXA^1^17"),
        (small_mdm, "PV1", 2, "PV1^1^2"),
        (small_oru, "ORC", 1, "ORC^1^1"),
        (small_mdm, "OBR", 4, "OBR^1^4"),
        (small_mdm, "TXA", 12, "TXA^1^12"),
        (lambda: small_mdm("T10"), "TXA", 13, "TXA^1^13"),
        (small_oru, "OBX", 11, "OBX^1^11"),
        (small_oru, "OBX", 5, "OBX^1^5"),
        (small_oru, "OBX", 2, "OBX^1^2"),
    ],
)
def test_101_required_field_missing(
    text_of: Callable[[], str], segment: str, field: int, location: str
) -> None:
    refused(set_field(text_of(), segment, field, ""), ProfileError, "101", location)


def test_101_second_document_obx_field() -> None:
    refused(set_field(small_oru(), "OBX", 11, "", 2), ProfileError, "101", "OBX^2^11")


def test_pv1_19_missing_for_an_inpatient_is_a_warning() -> None:
    result = request(set_field(small_mdm(), "PV1", 19, ""))
    assert [w.location.to_hl7() for w in result.warnings if w.location] == ["PV1^1^19"]


def test_t04_without_txa13_is_accepted() -> None:
    result = request(set_field(small_mdm("T04"), "TXA", 13, ""))
    assert result.parent_document_id is None


# -- 4. ORC-1 ⇔ OBX-11 ⇔ event ---------------------------------------------------------------------


def test_103_unknown_orc1() -> None:
    refused(set_field(small_mdm(), "ORC", 1, "SC"), ProfileError, "103", "ORC^1^1")


def test_103_unknown_obx11() -> None:
    refused(set_field(small_mdm(), "OBX", 11, "P", 1), ProfileError, "103", "OBX^1^11")


@pytest.mark.parametrize(
    ("text_of", "segment", "field", "value", "occurrence", "location"),
    [
        (lambda: small_mdm("T10"), "ORC", 1, "NW", 1, "ORC^1^1"),  # MDM: the event rules
        (lambda: small_mdm("T04"), "OBX", 11, "F", 1, "OBX^1^11"),
        (small_mdm, "OBX", 11, "C", 1, "OBX^1^11"),
        (small_oru, "ORC", 1, "RO", 1, "ORC^1^1"),  # ORU: OBX-11 rules
        (small_oru, "OBX", 11, "D", 2, "OBX^2^11"),  # the two documents disagree
    ],
)
def test_207_action_inconsistency(
    text_of: Callable[[], str], segment: str, field: int, value: str, occurrence: int,
    location: str,
) -> None:
    exc = refused(set_field(text_of(), segment, field, value, occurrence), ProfileError, "207",
                  location, ApplicationError.OTHER)
    assert "disagrees" in exc.detail


def test_lower_case_action_codes_are_accepted() -> None:
    text = set_field(set_field(small_oru(), "ORC", 1, "nw"), "OBX", 11, "f", 1)
    assert request(text).action is Action.NEW


# -- 5. OBX-2 / OBX-5 encoding ---------------------------------------------------------------------


def test_102_document_obx2_not_ed() -> None:
    refused(set_field(small_mdm(), "OBX", 2, "TX", 1), ProfileError, "102", "OBX^1^2")


@pytest.mark.parametrize(("component", "value"), [(3, "PDF"), (3, ""), (4, "Hex"), (4, "")])
def test_103_document_obx5_subtype_or_encoding(component: int, value: str) -> None:
    refused(set_component(small_mdm(), "OBX", 5, component, value, 1), ProfileError, "103",
            f"OBX^1^5^1^{component}")


def test_obx5_2_other_than_text_is_a_warning() -> None:
    result = request(set_component(small_mdm(), "OBX", 5, 2, "Application", 1))
    assert [w.location.to_hl7() for w in result.warnings if w.location] == ["OBX^1^5^1^2"]


def test_101_empty_base64() -> None:
    refused(set_component(small_mdm(), "OBX", 5, 5, "", 1), ProfileError, "101", "OBX^1^5^1^5")


# -- 6. the CDA decodes and parses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ("RG9jdW1lbnQgbWVkY2lhbCBhdSBmb3JtYXQgQ0RBIG5pdmVhdSAx", "placeholder"),
        ("Not*base64", "not valid base64"),
        (b64(b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id root='1.2'/>"), "not well-formed"),
        (b64(b"<Other xmlns='urn:hl7-org:v3'/>"), "not ClinicalDocument"),
        (b64(b"<ClinicalDocument xmlns='urn:hl7-org:v3'/>"), "id/@root is missing"),
        (b64(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "x">]>'
             b'<ClinicalDocument xmlns="urn:hl7-org:v3">&e;</ClinicalDocument>'), "DOCTYPE"),
    ],
)
def test_207_document_error(payload: str, detail: str) -> None:
    text = set_component(small_mdm(), "OBX", 5, 5, payload, 1)
    exc = refused(text, DocumentError, "207", "OBX^1^5^1^5", ApplicationError.OTHER)
    assert detail in exc.detail
    assert exc.detail.startswith("OBX 1:")


def test_207_second_oru_document_undecodable_points_at_obx_2() -> None:
    refused(set_component(small_oru(), "OBX", 5, 5, "QUJD", 2), DocumentError, "207",
            "OBX^2^5^1^5")


def test_207_two_documents_with_the_same_id() -> None:
    text = with_document(small_oru(), small_cda((ORU_N1_ID, None), structured=True), 2)
    refused(text, DocumentError, "207", "OBX^2^5^1^5")


def test_unpadded_base64_cda_is_accepted() -> None:
    cda = small_cda((MDM_DOC_ID, None)) + b"  "  # a length that needs '=' padding
    text = set_component(small_mdm(), "OBX", 5, 5, b64(cda).rstrip("="), 1)
    assert request(text).documents[0].content == cda


# -- 7. PID-3 ⇔ recordTarget/patientRole/id --------------------------------------------------------


def _mdm_with_cda_patient(*patient_ids: tuple[str, str]) -> str:
    return with_document(small_mdm(), small_cda((MDM_DOC_ID, None), patient_ids))


def test_904_different_ins() -> None:
    text = _mdm_with_cda_patient((INS_TEST_OID, "179035121518989"))
    refused(text, DocumentError, "207", "PID^1^3", ApplicationError.INS_MISMATCH)


def test_904_same_matricule_under_another_ins_oid() -> None:
    text = _mdm_with_cda_patient((INS_NIR_OID, PATIENT_INS))
    refused(text, DocumentError, "207", "PID^1^3", ApplicationError.INS_MISMATCH)


def test_903_cda_without_ins() -> None:
    text = _mdm_with_cda_patient(("1.2.3.4.5", "IPP1"))
    refused(text, DocumentError, "207", "PID^1^3", ApplicationError.INS_MISSING)


def test_904_cda_ins_absent_from_pid3() -> None:
    text = set_field(small_mdm(), "PID", 3, "IPP1^^^ES&1.2.3.4.5&ISO^PI")
    text = with_document(text, small_cda((MDM_DOC_ID, None), (("1.2.3.4.5", "IPP1"),
                                                              (INS_TEST_OID, PATIENT_INS))))
    refused(text, DocumentError, "207", "PID^1^3", ApplicationError.INS_MISMATCH)


def test_906_conflicting_values_under_the_same_oid() -> None:
    text = set_field(small_mdm(), "PID", 3,
                     f"{PATIENT_INS}^^^NS&{INS_TEST_OID}&ISO^INS~IPP1^^^ES&1.2.3.4.5&ISO^PI")
    text = with_document(text, small_cda((MDM_DOC_ID, None), ((INS_TEST_OID, PATIENT_INS),
                                                              ("1.2.3.4.5", "IPP2"))))
    refused(text, DocumentError, "207", "PID^1^3", ApplicationError.OTHER)


def test_906_nothing_in_common_without_ins() -> None:
    text = set_field(small_mdm(), "PID", 3, "IPP1^^^ES&1.2.3.4.5&ISO^PI")
    text = with_document(text, small_cda((MDM_DOC_ID, None), (("1.2.3.4.6", "IPP1"),)))
    refused(text, DocumentError, "207", "PID^1^3", ApplicationError.OTHER)


def test_pid3_may_add_an_ipp_the_cda_does_not_carry() -> None:
    text = set_field(small_mdm(), "PID", 3,
                     f"000003^^^CHU-X&000897406&N^PI~{PATIENT_INS}^^^NS&{INS_TEST_OID}&ISO^INS"
                     "~77^^^ES&1.2.3.4.5&ISO^PI")
    result = request(text)
    assert [i.value for i in result.patient.identifiers] == ["000003", PATIENT_INS, "77"]


def test_local_ids_without_ins_match_by_oid_and_value() -> None:
    text = set_field(small_mdm(), "PID", 3, "IPP1^^^ES&1.2.3.4.5&ISO^PI")
    text = with_document(text, small_cda((MDM_DOC_ID, None), (("1.2.3.4.5", "IPP1"),)))
    assert request(text).patient.ins is None


def test_every_oru_document_is_compared() -> None:
    text = with_document(small_oru(), small_cda((ORU_N1_ID + "9", None),
                                                ((INS_TEST_OID, "1"),), structured=True), 2)
    exc = refused(text, DocumentError, "207", "PID^1^3", ApplicationError.INS_MISMATCH)
    assert exc.detail.startswith("OBX 2:")


# -- 8. TXA-12 ⇔ ClinicalDocument/id ---------------------------------------------------------------


def test_207_txa12_mismatch() -> None:
    text = set_field(small_mdm(), "TXA", 12, MDM_NEW_ID)
    refused(text, DocumentError, "207", "TXA^1^12", ApplicationError.OTHER)


def test_txa12_extension_encoding() -> None:
    text = with_document(small_mdm(), small_cda(("1.2.250.2345.3245.13", "58132")))
    text = set_field(text, "TXA", 12, "58132^^1.2.250.2345.3245.13^ISO")
    assert request(text).documents[0].header.document_id.extension == "58132"


def test_207_txa12_root_only_does_not_match_an_id_with_extension() -> None:
    text = with_document(small_mdm(), small_cda(("1.2.250.2345.3245.13", "58132")))
    text = set_field(text, "TXA", 12, "1.2.250.2345.3245.13")
    refused(text, DocumentError, "207", "TXA^1^12")


def test_txa12_organisation_name_in_ei2_is_tolerated() -> None:
    text = set_field(small_mdm(), "TXA", 12, f"{MDM_DOC_ID}^Organisation-Y")
    assert request(text).unique_document_id is not None


# -- 9. T10: TXA-13 ⇔ relatedDocument/parentDocument/id --------------------------------------------


def test_207_t10_txa13_mismatch() -> None:
    text = set_field(small_mdm("T10"), "TXA", 13, "1.2.3.4")
    refused(text, DocumentError, "207", "TXA^1^13", ApplicationError.OTHER)


def test_207_t10_cda_without_parent() -> None:
    text = with_document(small_mdm("T10"), small_cda((MDM_NEW_ID, None)))
    exc = refused(text, DocumentError, "207", "TXA^1^13")
    assert "relatedDocument" in exc.detail


# -- 10. metadata ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "expected"),
    [(MetadataFlag.MASQUE_PS, "OBX^2"), (MetadataFlag.DESTDMP, "OBX^7"),
     (MetadataFlag.DESTMSSANTEPAT, "OBX^9")],
)
def test_100_required_metadata_missing(flag: MetadataFlag, expected: str) -> None:
    refused(drop_metadata(small_mdm(), flag), ProfileError, "100", expected)


def test_100_missing_metadata_location_counts_the_two_oru_documents() -> None:
    refused(drop_metadata(small_oru(), "MASQUE_PS"), ProfileError, "100", "OBX^3")


@pytest.mark.parametrize("flag", [MetadataFlag.ACK_RECEPTION, MetadataFlag.ACK_LECTURE_MSS])
def test_missing_ack_flags_default_to_n(flag: MetadataFlag) -> None:
    text = set_flags(small_oru(), **{flag.value.lower(): "Y"})
    result = request(drop_metadata(text, flag))
    assert result.metadata[flag] is False
    assert result.metadata.defaulted == frozenset({flag})
    assert any(flag.value in w.detail and w.severity is Severity.WARNING
               for w in result.warnings)


@pytest.mark.parametrize("value", ["X", "", "YES", "1"])
def test_103_metadata_not_yes_or_no(value: str) -> None:
    text = small_mdm()
    k = metadata_obx(text, "CONNEXION_SECRETE")
    refused(set_field(text, "OBX", 5, f"{value}^^expandedYes-NoIndicator", k), ProfileError,
            "103", f"OBX^{k}^5")


def test_198_contradictory_duplicate_metadata() -> None:
    text = small_mdm()
    k = metadata_obx(text, "DESTDMP")
    line = get_field(text, "OBX", 3, k)
    text = insert_after(text, "OBX", 11, f"OBX|12|CWE|{line}||N^^expandedYes-NoIndicator||||||F|")
    refused(text, ProfileError, "198", "OBX^12^3")


def test_identical_duplicate_metadata_is_a_warning() -> None:
    text = small_mdm()
    line = get_field(text, "OBX", 3, metadata_obx(text, "DESTDMP"))
    text = insert_after(text, "OBX", 11, f"OBX|12|CWE|{line}||Y^^expandedYes-NoIndicator||||||F|")
    assert [w.location.to_hl7() for w in request(text).warnings if w.location] == ["OBX^12^3"]


def test_metadata_out_of_order_is_a_warning() -> None:
    text = small_mdm()
    first = next(line for line in text.split("\n") if "|MASQUE_PS^" in line)
    text = insert_after(drop_metadata(text, "MASQUE_PS"), "OBX", 10, first)
    result = request(text)
    assert any("order" in w.detail for w in result.warnings)
    assert result.metadata.masque_ps is False


def test_metadata_obx11_other_than_f_is_a_warning() -> None:
    text = small_mdm()
    k = metadata_obx(text, "DESTDMP")
    result = request(set_field(text, "OBX", 11, "C", k))
    assert [w.location.to_hl7() for w in result.warnings if w.location] == [f"OBX^{k}^11"]


def test_v1_2_metadata_names_are_accepted() -> None:
    text = small_mdm()
    text = set_component(text, "OBX", 3, 1, "INVISIBLE_REPRESENTANTS_LEGAUX",
                         metadata_obx(text, "INVISIBLE_REP_LEGAUX"))
    text = set_component(text, "OBX", 3, 1, "MODIF_CONFIDENTIALITYCODE",
                         metadata_obx(text, "MODIF_CONF_CODE"))
    assert request(text).warnings == ()


def test_unknown_metadata_obx_is_ignored_with_a_warning() -> None:
    text = small_mdm().rstrip("\n") + "\nOBX|13|CE|COMP_LOT^Composition lot^MetaDMPMSS||N||||||F|\n"
    assert [w.location.to_hl7() for w in request(text).warnings if w.location] == ["OBX^13^3"]


# -- 11. recipients --------------------------------------------------------------------------------


def test_100_destmssanteps_without_ps_recipient() -> None:
    text = drop_segment(small_mdm(), "PRT", 2)
    k = metadata_obx(text, "DESTMSSANTEPS")
    refused(text, ProfileError, "100", f"OBX^{k}^5")


def test_100_destmssantepat_without_patient_recipient() -> None:
    text = drop_segment(small_oru(), "PRT", 3)
    k = metadata_obx(text, "DESTMSSANTEPAT")
    refused(text, ProfileError, "100", f"OBX^{k}^5")


def test_101_recipient_without_address_when_its_group_is_asked_for() -> None:
    refused(set_field(small_mdm(), "PRT", 15, "", 2), ProfileError, "101", "PRT^2^15")


def test_102_recipient_address_that_is_not_an_address() -> None:
    refused(set_field(small_mdm(), "PRT", 15, "^^X.400^not an address", 2), ProfileError, "102",
            "PRT^2^15")


def test_recipient_without_address_outside_the_asked_groups_is_a_warning() -> None:
    text = insert_after(small_mdm(), "PRT", 2,
                        f"PRT||UC||RCT^^participation|{PATIENT_INS}^X^Y^^^^^^{INS_TEST_OID}"
                        "^L^^^INS")
    result = request(text)
    assert [r.address for r in result.recipients] == [HODA]
    assert [w.location.to_hl7() for w in result.warnings if w.location] == ["PRT^3^15"]


def test_207_patient_recipient_with_another_ins() -> None:
    text = set_component(small_oru(), "PRT", 5, 1, "179035121518989", 3)
    refused(text, ProfileError, "207", "PRT^3^5", ApplicationError.INS_MISMATCH)


def test_address_shifted_into_prt16_is_used() -> None:
    text = small_mdm()
    value = get_field(text, "PRT", 15, 2)
    text = set_field(set_field(text, "PRT", 15, "", 2), "PRT", 16, value, 2)
    result = request(text)
    assert [r.address for r in result.sending.recipients] == [HODA]
    assert [w.location.to_hl7() for w in result.warnings if w.location] == ["PRT^2^16"]


def test_recipient_kinds_in_one_request() -> None:
    text = small_oru()
    text = insert_after(text, "PRT", 3, "PRT||UC||RCT^Results Copies To^participation||||"
                        "Radiologie^^^^^120456789^UF^^^3435|||||||^^X.400^radio@hopitalA.mssante.fr")
    text = insert_after(text, "PRT", 4, "PRT||UC||RCT^Results Copies Toç participation||||||12"
                        "|||||^^X.400^appli@hopitalB.mssante.fr")
    result = request(text)
    assert [r.kind for r in result.recipients] == [
        RecipientKind.PROFESSIONAL, RecipientKind.PATIENT, RecipientKind.ORGANISATION,
        RecipientKind.APPLICATION]


# -- 12. the sending matrix ------------------------------------------------------------------------


def test_207_invisible_document_is_never_sent_to_the_patient() -> None:
    text = set_flags(small_oru(), invisible_patient="Y")
    k = metadata_obx(text, "INVISIBLE_PATIENT")
    exc = refused(text, SendingMatrixError, "207", f"OBX^{k}^5", ApplicationError.OTHER)
    assert "never sent to the patient" in exc.detail
    assert "2026-04-21" in exc.detail


def test_207_masked_to_ps_is_not_sent_to_ps() -> None:
    text = set_flags(small_mdm(), masque_ps="Y")
    k = metadata_obx(text, "MASQUE_PS")
    exc = refused(text, SendingMatrixError, "207", f"OBX^{k}^5")
    assert "MASQUE_PS = N (got Y)" in exc.detail


def test_patient_only_row_3() -> None:
    text = drop_segment(small_oru(), "PRT", 2)
    text = set_flags(text, destmssanteps="N", destdmp="N", masque_ps="Y")
    result = request(text)
    assert result.sending.route is MailRoute.PATIENT_ONLY
    assert result.sending.matrix_row == 3
    assert [r.address for r in result.sending.recipients] == [PATIENT_MAILBOX]


def test_ps_only_withholds_the_patient_prt() -> None:
    text = set_flags(small_oru(), invisible_patient="Y", destmssantepat="N")
    result = request(text)
    assert result.sending.route is MailRoute.PS_ONLY
    assert [r.address for r in result.sending.recipients] == [HODA]
    assert [r.kind for r in result.sending.withheld] == [RecipientKind.PATIENT]
    assert any(w.location is not None and w.location.to_hl7() == "PRT^3"
               for w in result.warnings)


def test_dmp_only_means_no_mail() -> None:
    text = set_flags(small_oru(), destmssanteps="N", destmssantepat="N")
    result = request(text)
    assert result.sending.route is MailRoute.NO_MAIL
    assert result.sending.matrix_row is None
    assert not result.sending.sends_mail
    assert len(result.sending.withheld) == 2
    assert len(result.recipients) == 2


def test_nothing_requested_at_all_is_a_warning() -> None:
    text = set_flags(small_mdm(), destmssanteps="N", destmssantepat="N", destdmp="N")
    result = request(text)
    assert result.sending.route is MailRoute.NO_MAIL
    assert any("nothing to send" in w.detail for w in result.warnings)


# -- ordering: the first failing check wins --------------------------------------------------------


def test_checks_run_in_the_volet_order() -> None:
    text = set_flags(small_mdm(), masque_ps="X")  # 10. metadata
    text = set_field(text, "TXA", 12, "1.2.3")  # 8. TXA-12
    refused(text, DocumentError, "207", "TXA^1^12")
    text = set_field(text, "ORC", 1, "RO")  # 4. consistency
    refused(text, ProfileError, "207", "ORC^1^1")
    text = drop_segment(text, "EVN")  # 3. segments
    refused(text, ProfileError, "100", "EVN^1")
    text = set_field(text, "MSH", 21, "")  # 2. profile
    refused(text, ProfileError, "101", "MSH^1^21")
    text = set_field(text, "MSH", 12, "2.5")  # 1. version
    refused(text, UnsupportedMessageError, "203", "MSH^1^12")


def test_placeholder_and_matrix_fixture_ordering() -> None:
    """The placeholder message fails on the CDA before the matrix it would also fail."""
    text = fixture_text("mdm-t02-initial/message-placeholder-cda.er7")
    refused(text, DocumentError, "207", "OBX^1^5^1^5")
    text = replace_segment(text, "OBX", 1, next(
        line for line in small_mdm().split("\n") if line.startswith("OBX|1|")))
    refused(text, SendingMatrixError, "207", "OBX^4^5")


def test_fixture_paths_are_files() -> None:
    assert all(isinstance(p, Path) and p.is_file() for p in fixture_paths())


def test_a_decoded_document_keeps_its_parsed_tree_for_the_mail_stage() -> None:
    [document] = request(small_mdm("T02")).documents
    assert document.tree is not None
    assert document.root() is document.tree  # not parsed a second time
    copy = replace(document, tree=None)
    assert copy == document  # the tree is not part of the value
    assert etree.tostring(copy.root()) == etree.tostring(document.tree)  # parsed on demand


def test_an_address_given_twice_gets_one_mail_and_a_warning() -> None:
    text = small_mdm()
    rct = next(line for line in text.splitlines() if line.startswith("PRT||UC||RCT"))
    assert HODA in rct
    text = insert_after(text, "PRT", 2, rct.replace(HODA, HODA.upper()))
    result = request(text)
    assert [r.address for r in result.recipients] == [HODA]
    assert [r.address for r in result.sending.recipients] == [HODA]
    (warning,) = [w for w in result.warnings if w.location is not None]
    assert warning.location is not None
    assert warning.location.to_hl7() == "PRT^3^15"
    assert warning.detail == "PRT 3: the same address as PRT 2: one mail to it"
