"""The tolerant readers of connector.cisis.parse, on the variants real senders produce (§9)."""

from __future__ import annotations

import base64

import pytest

from connector.cda.header import InstanceId
from connector.cisis import (
    BodyKind,
    InsKind,
    MetadataFlag,
    ParticipationRole,
    RecipientKind,
)
from connector.cisis.model import EntityIdentifier
from connector.cisis.parse import (
    classify_recipient,
    decode_base64,
    find_address,
    is_plausible_address,
    metadata_name,
    participation_role,
    read_bodies,
    read_entity_identifier,
    read_participant,
    read_participants,
    read_patient,
    split_observations,
    yes_no,
)
from connector.hl7.codes import ErrorCondition, Severity
from connector.hl7.message import Segment, parse_message
from tests.unit.cisis import (
    INS_TEST_OID,
    PATIENT_INS,
    assert_clean_text,
    fixture_text,
    insert_after,
    metadata_obx,
    parse,
    set_component,
    set_field,
)

MSH = ("MSH|^~\\&|A|B|C|D|20240101||ORU^R01^ORU_R01|1|P|2.5|||||FRA|UNICODE UTF-8|||"
       "2.1^CISIS_CDA_HL7_V2")


def segment(line: str) -> Segment:
    """Parse one non-MSH segment line."""
    return parse_message(f"{MSH}\n{line}\n").segments[1]


# -- base64 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SGVsbG8=", b"Hello"),
        ("SGVsbG8", b"Hello"),  # '=' padding missing
        ("SGVs\nbG8 =", b"Hello"),  # broken by white space
        ("RG9jdW1lbnQgbcOpZGljYWwgYXUgZm9ybWF0IENEQQ", "Document médical au format CDA".encode()),
        ("SGVsbA==", b"Hell"),
        ("SGVsbA", b"Hell"),
    ],
)
def test_decode_base64_is_lenient_about_padding_and_whitespace(text: str, expected: bytes) -> None:
    assert decode_base64(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "SGVsbG8*",  # not a base64 character
        "SGVsb",  # 5 characters: a length no padding can repair
        "Q2hlciBjb25mcsOocmUsIHZvdXMgdHJvdXZlcmV6IGNpLWpvaW50IGxlIENSIGTigJlpbWFnZXJpZSBkZSBNLkR1cG9ud",
        "SG=VsbG8",  # padding in the middle
        "SGVsbG8===",
        "SGVsbG8-_",  # URL-safe alphabet is not what the volet uses
    ],
)
def test_decode_base64_refuses_what_is_not_base64(text: str) -> None:
    assert decode_base64(text) is None


# -- Y/N -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Y", True), ("N", False), ("y", True), (" n ", False), ("", None), ("O", None),
     ("YES", None), ("1", None)],
)
def test_yes_no(value: str, expected: bool | None) -> None:
    assert yes_no(value) is expected


# -- PRT -------------------------------------------------------------------------------------------

SPEC_PRT = {
    # §1.9: the spec example lines (the Hoda one with its address shifted into PRT-16)
    "sender": "PRT||UC||SB^Send By^participation|801234567866^Dupont^Jean^^^^^^ASIP-SANTE- PS&"
              "1.2.250.1.71.4.2.1&ISO^D^^^RPPS |||Organisation-X^^^^^ASIP-SANTE-ST&"
              "1.2.250.1.71.4.2.2&ISO^FINEG^^^300017985",
    "patient_by_domain": "PRT||UC||RCT^results Copies To^participation|||||||||||"
                         "^^X.400^146026322000196@patient.mssante.fr",
    "ps_shifted": "PRT||UC||RCT^results Copies To^participation|101234567897^Hoda^Adam^^^^^^"
                  "ASIP-SANTE- PS&1.2.250.1.71.4.2.1&ISO^D^^^RPPS|||||||||||"
                  "^^X.400^adam.hoda@test-ci-sis.mssante.fr",
    "uf": "PRT||UC||RCT^results Copies To^participation||||Radiologie^^^^^120456789^UF^^^3435"
          "|||||||^^X.400^radiologie@hopitalA.mssante.fr",
    "application": "PRT||UC||RCT^results Copies To^participation||||||12|||||"
                   "^^X.400^appliExemple@hopitalB.mssante.fr",
    "reply": "PRT||UC||REPLY^Reply to^participation|||||||||||"
             "^^X.400^adam.hoda@test-ci-sis.mssante.fr",
    # [EX] ORU V2.1: the patient's INS OID bare in XCN-9.1
    "patient_by_ins": "PRT||UC||RCT^^participation|279035121518989^PAT-TROIS^DOMINIQUE^^^^^^"
                      "1.2.250.1.213.1.4.10^L^^^INS||||||||||"
                      "^^X.400^279035121518989@patient.mssante.fr",
}


@pytest.mark.parametrize(
    ("prt4", "role"),
    [
        ("SB^Send by^participation", ParticipationRole.SENDER),
        ("SB^^HL70912", ParticipationRole.SENDER),
        ("sb", ParticipationRole.SENDER),
        ("RCT^^participation", ParticipationRole.RECIPIENT),
        ("RCT^Results Copies Toç participation", ParticipationRole.RECIPIENT),
        ("rct^results copies to^participation", ParticipationRole.RECIPIENT),
        (" RCT ^x", ParticipationRole.RECIPIENT),
        ("REPLY^Reply To^participation", ParticipationRole.REPLY_TO),
        ("Reply", ParticipationRole.REPLY_TO),
        ("AUT^Author^participation", None),
        ("", None),
    ],
)
def test_participation_role_matches_the_code_prefix_case_insensitively(
    prt4: str, role: ParticipationRole | None
) -> None:
    assert participation_role(segment(f"PRT||UC||{prt4}|")) is role


def test_address_is_read_from_prt15() -> None:
    address, position = find_address(segment(SPEC_PRT["uf"]))
    assert (address, position) == ("radiologie@hopitalA.mssante.fr", 15)


def test_address_shifted_into_prt16_is_found_with_a_warning() -> None:
    participant, warnings = read_participant(segment(SPEC_PRT["ps_shifted"]), 3)
    assert participant is not None
    assert participant.address == "adam.hoda@test-ci-sis.mssante.fr"
    assert [(w.condition, w.location.to_hl7() if w.location else None) for w in warnings] == [
        (ErrorCondition.SEGMENT_SEQUENCE_ERROR, "PRT^3^16")
    ]
    assert warnings[0].severity is Severity.WARNING
    assert_clean_text(warnings[0].detail)


@pytest.mark.parametrize(
    ("prt15", "expected"),
    [
        ("^NET^X.400^a@b.fr", "a@b.fr"),
        ("^^x.400^a@b.fr", "a@b.fr"),
        ("^NET^Internet^a@b.fr", "a@b.fr"),
        ("^PRN^PH^0102030405~^NET^X.400^a@b.fr", "a@b.fr"),  # second repetition
        ("^PRN^PH^0102030405", None),
        ("^^X.400^", None),
        ("", None),
    ],
)
def test_address_needs_an_email_equipment_type(prt15: str, expected: str | None) -> None:
    prt = segment(f"PRT||UC||RCT^^participation|||||||||||{prt15}")
    assert find_address(prt)[0] == expected


def test_sender_prt_reads_person_and_organisation() -> None:
    participant, warnings = read_participant(segment(SPEC_PRT["sender"]), 1)
    assert warnings == []
    assert participant is not None
    assert participant.role is ParticipationRole.SENDER
    assert participant.person is not None
    assert participant.person.id == "801234567866"
    assert participant.person.authority_oid == "1.2.250.1.71.4.2.1"
    assert participant.person.id_type == "RPPS"  # trailing space stripped
    assert participant.organisation is not None
    assert participant.organisation.id == "300017985"
    assert participant.organisation.id_type == "FINEG"
    assert participant.address is None


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("patient_by_domain", RecipientKind.PATIENT),
        ("patient_by_ins", RecipientKind.PATIENT),
        ("ps_shifted", RecipientKind.PROFESSIONAL),
        ("uf", RecipientKind.ORGANISATION),
        ("application", RecipientKind.APPLICATION),
    ],
)
def test_recipient_kind_of_the_spec_examples(name: str, kind: RecipientKind) -> None:
    participant, _ = read_participant(segment(SPEC_PRT[name]), 1)
    assert participant is not None
    assert classify_recipient(participant) is kind


def test_patient_ins_oid_written_bare_in_xcn_9_1_is_read_as_the_oid() -> None:
    participant, _ = read_participant(segment(SPEC_PRT["patient_by_ins"]), 1)
    assert participant is not None
    assert participant.person is not None
    assert participant.person.authority_oid == INS_TEST_OID
    assert participant.person.is_patient


def test_patient_domain_wins_over_a_professional_prt5() -> None:
    """An address in "Mon espace santé" is the patient's, whatever PRT-5 says."""
    line = SPEC_PRT["ps_shifted"].replace("adam.hoda@test-ci-sis.mssante.fr",
                                          "x@Patient.MSSante.fr")
    participant, _ = read_participant(segment(line), 1)
    assert participant is not None
    assert classify_recipient(participant) is RecipientKind.PATIENT


def test_address_only_recipient_is_unidentified_and_in_the_ps_group() -> None:
    participant, _ = read_participant(
        segment("PRT||UC||RCT^^participation|||||||||||^^X.400^secretariat@hopital.mssante.fr"), 1
    )
    assert participant is not None
    kind = classify_recipient(participant)
    assert kind is RecipientKind.UNIDENTIFIED
    assert kind.audience.value == "ps"


def test_unknown_prt4_is_ignored_with_a_warning() -> None:
    participant, warnings = read_participant(segment("PRT||UC||AUT^Author^participation|"), 4)
    assert participant is None
    assert warnings[0].condition is ErrorCondition.TABLE_VALUE_NOT_FOUND
    assert warnings[0].location is not None
    assert warnings[0].location.to_hl7() == "PRT^4^4"


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("adam.hoda@test-ci-sis.mssante.fr", True),
        ("279035121518989@patient.mssante.fr", True),
        ("a@b", False),
        ("a b@c.fr", False),
        ("a@b.fr>\r\nBcc: x@y.fr", False),
        ("<a@b.fr>", False),
        ("a@@b.fr", False),
        ("", False),
    ],
)
def test_plausible_address(address: str, ok: bool) -> None:
    assert is_plausible_address(address) is ok


# -- PID -------------------------------------------------------------------------------------------


def test_read_patient_ins_ipp_and_identity_status() -> None:
    fields = [""] * 33
    fields[0] = "PID"
    fields[3] = ("000003^^^CHU-X&000897406&N^PI~279035121518989^^^ASIP-SANTE-INS-NIR&"
                 "1.2.250.1.213.1.4.10&ISO^INS^^20101207")
    fields[5] = "X^Y"
    fields[31] = "N"
    fields[32] = "vali"
    pid = segment("|".join(fields))
    patient = read_patient(pid)
    assert patient.identity_status == "VALI"
    assert patient.identity_validated
    assert patient.ipp is not None
    assert patient.ipp.value == "000003"
    assert patient.ipp.oid is None  # "000897406" with type N is not an OID
    assert patient.ipp.namespace == "CHU-X"
    assert patient.ins is not None
    assert patient.ins.value == PATIENT_INS
    assert patient.ins.ins_kind is InsKind.TEST
    assert patient.ins.instance_id == InstanceId(INS_TEST_OID, PATIENT_INS)


@pytest.mark.parametrize(
    ("oid", "kind"),
    [("1.2.250.1.213.1.4.8", InsKind.NIR), ("1.2.250.1.213.1.4.9", InsKind.NIA),
     ("1.2.250.1.213.1.4.10", InsKind.TEST), ("1.2.250.1.213.1.4.11", InsKind.DEMO),
     ("1.2.250.1.213.1.4.12", None)],
)
def test_ins_kind_by_oid(oid: str, kind: InsKind | None) -> None:
    patient = read_patient(segment(f"PID|||123^^^NS&{oid}&ISO^INS"))
    assert patient.identifiers[0].ins_kind is kind


def test_pid3_oid_written_bare_in_cx_4_1() -> None:
    patient = read_patient(segment("PID|||123^^^1.2.3.4^PI"))
    assert patient.identifiers[0].oid == "1.2.3.4"


# -- TXA EI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("58132^^1.2.250.2345.3245.13^ISO", InstanceId("1.2.250.2345.3245.13", "58132")),
        ("1.2.250.2345.3245.13.58132", InstanceId("1.2.250.2345.3245.13.58132", None)),
        # [EX] deviation: an organisation name in EI.2
        ("1.2.250.1.71.4.2.2.120456789.71024000081^Organisation-Y",
         InstanceId("1.2.250.1.71.4.2.2.120456789.71024000081", None)),
        (" 1.2.3 ^^^", InstanceId("1.2.3", None)),
    ],
)
def test_txa_entity_identifier_both_encodings(raw: str, expected: InstanceId) -> None:
    ei = read_entity_identifier(segment(f"TXA|1|x|TEXT|||||||||{raw}"), 12)
    assert ei is not None
    assert ei.instance_id == expected


def test_empty_ei_is_none() -> None:
    assert read_entity_identifier(segment("TXA|1|x|TEXT"), 12) is None
    assert EntityIdentifier("", "x", "", "").instance_id is None


# -- metadata names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obx3", "name"),
    [
        ("MASQUE_PS^Masqué aux professionnels de Santé^MetaDMPMSS", MetadataFlag.MASQUE_PS),
        ("ACK_LECTURE^Accusé de lecture^MetaDMPMSS", MetadataFlag.ACK_LECTURE_MSS),
        ("ACK_LECTURE_MSS", MetadataFlag.ACK_LECTURE_MSS),
        ("INVISIBLE_REPRESENTANTS_LEGAUX^x", MetadataFlag.INVISIBLE_REP_LEGAUX),
        ("MODIF_CONFIDENTIALITYCODE^x", MetadataFlag.MODIF_CONF_CODE),
        ("destmssanteps ^Destinataire", MetadataFlag.DESTMSSANTEPS),  # case, trailing space
        ("DESTDMP", MetadataFlag.DESTDMP),  # OBX-3.3 missing
        ("CORPSMAIL_PATIENT^Corps^MetaDMPMSS", BodyKind.CORPSMAIL_PATIENT),
        ("COMP_LOT^x^MetaDMPMSS", None),
        ("REPLY_TO^Adresse mail de ", None),
        ("18748-4^CR d'imagerie^LN", None),
    ],
)
def test_metadata_names_and_their_variants(
    obx3: str, name: MetadataFlag | BodyKind | None
) -> None:
    assert metadata_name(segment(f"OBX|1|CE|{obx3}||Y||||||F")) is name


# -- layout on the fixtures ------------------------------------------------------------------------


def test_layout_of_the_oru_example() -> None:
    text = fixture_text("oru-r01-replace/message-placeholder-cda.er7")
    layout = split_observations(parse(text))
    assert [d.sequence for d in layout.documents] == [1, 2]
    assert [m.name for m in layout.metadata] == [*MetadataFlag, BodyKind.CORPSMAIL_PS]
    assert [p.sequence for p in layout.participants] == [1, 2, 3, 4]
    assert all(p.after_document for p in layout.participants)
    assert not layout.no_reply_note
    assert layout.warnings == ()


def test_layout_of_the_mdm_example() -> None:
    layout = split_observations(parse(fixture_text("mdm-t02-initial/message.er7")))
    assert [d.sequence for d in layout.documents] == [1]
    assert len(layout.metadata) == 11
    assert layout.warnings == ()


def test_nte_fin_under_destmssantepat_forbids_the_patient_reply() -> None:
    text = fixture_text("oru-r01-replace/message-placeholder-cda.er7")
    text = insert_after(text, "OBX", metadata_obx(text, "DESTMSSANTEPAT"), "NTE|1|||FIN|")
    assert split_observations(parse(text)).no_reply_note


def test_nte_fin_elsewhere_is_ignored_with_a_warning() -> None:
    text = fixture_text("oru-r01-replace/message-placeholder-cda.er7")
    text = insert_after(text, "OBX", metadata_obx(text, "DESTMSSANTEPS"), "NTE|1|||fin|")
    layout = split_observations(parse(text))
    assert not layout.no_reply_note
    assert [w.location.to_hl7() for w in layout.warnings if w.location] == ["NTE^1^4"]


def test_other_nte_under_destmssantepat_is_not_a_fin_note() -> None:
    text = fixture_text("oru-r01-replace/message-placeholder-cda.er7")
    text = insert_after(text, "OBX", metadata_obx(text, "DESTMSSANTEPAT"), "NTE|1||FIN|RE|")
    assert not split_observations(parse(text)).no_reply_note


def test_stray_obx_after_the_metadata_is_ignored_with_a_warning() -> None:
    text = fixture_text("mdm-t02-initial/message.er7").rstrip("\n")
    text += "\nOBX|13|XTN|REPLY_TO^Adresse mail de |||||F|\n"
    layout = split_observations(parse(text))
    assert len(layout.documents) == 1
    assert [(w.condition, w.location.to_hl7() if w.location else "") for w in layout.warnings] == [
        (ErrorCondition.TABLE_VALUE_NOT_FOUND, "OBX^13^3")
    ]


def test_prt_outside_the_document_group_is_kept_with_a_warning() -> None:
    text = fixture_text("oru-r01-replace/message-placeholder-cda.er7")
    text = insert_after(text, "OBX", 2, "PRT||UC||RCT^^participation|||||||||||^^X.400^x@y.fr")
    layout = split_observations(parse(text))
    assert [p.after_document for p in layout.participants] == [True, True, True, True, False]
    assert [w.location.to_hl7() for w in layout.warnings if w.location] == ["PRT^5"]
    participants = read_participants(layout)
    assert [p.address for p in participants.recipients][-1] == "x@y.fr"


def test_second_reply_and_sender_keep_the_first_with_warnings() -> None:
    text = fixture_text("oru-r01-replace/message-placeholder-cda.er7")
    text = insert_after(text, "PRT", 4, "PRT||UC||REPLY^^participation|||||||||||^^X.400^r@y.fr")
    text = insert_after(text, "PRT", 1, "PRT||UC||SB^^participation|1^X^Y")
    participants = read_participants(split_observations(parse(text)))
    assert participants.sender is not None
    assert participants.sender.prt_sequence == 1
    assert participants.reply_to is not None
    assert participants.reply_to.address == "adam.hoda@test-ci-sis.mssante.fr"
    assert {w.location.to_hl7() for w in participants.warnings if w.location} == {
        "PRT^2^4", "PRT^6^4"}


def test_reply_without_address_is_dropped_with_a_warning() -> None:
    text = fixture_text("oru-r01-replace/message-placeholder-cda.er7")
    text = set_field(text, "PRT", 15, "", 4)
    participants = read_participants(split_observations(parse(text)))
    assert participants.reply_to is None
    assert [w.location.to_hl7() for w in participants.warnings if w.location] == ["PRT^4^15"]


# -- bodies ----------------------------------------------------------------------------------------


def test_mdm_body_decodes_as_utf8() -> None:
    bodies, warnings = read_bodies(split_observations(parse(
        fixture_text("mdm-t02-initial/message.er7"))))
    assert bodies.ps == "Cher confrère, vous trouverez ci-joint le CR d’imagerie de M.Dupont"
    assert bodies.patient is None
    assert warnings == ()


def test_truncated_oru_body_is_a_warning_and_no_body() -> None:
    text = fixture_text("oru-r01-replace/message-placeholder-cda.er7")
    bodies, warnings = read_bodies(split_observations(parse(text)))
    assert bodies.ps is None
    assert len(warnings) == 1
    warning = warnings[0]
    assert warning.condition is ErrorCondition.DATA_TYPE_ERROR
    assert warning.severity is Severity.WARNING
    assert warning.location is not None
    assert warning.location.to_hl7() == "OBX^13^5^1^5"
    assert "CORPSMAIL_PS" in warning.detail
    assert_clean_text(warning.detail)


def test_body_that_is_not_utf8_is_a_warning() -> None:
    text = fixture_text("mdm-t02-initial/message.er7")
    latin1 = base64.b64encode("Cher confrère".encode("latin-1")).decode()
    text = set_component(text, "OBX", 5, 5, latin1, 12)
    bodies, warnings = read_bodies(split_observations(parse(text)))
    assert bodies.ps is None
    assert "UTF-8" in warnings[0].detail


def test_patient_body_and_lower_case_text_type() -> None:
    text = fixture_text("mdm-t02-initial/message.er7").rstrip("\n")
    body = base64.b64encode(b"Bonjour, ci-joint votre CR.").decode().rstrip("=")
    text += (f"\nOBX|13|ED|CORPSMAIL_PATIENT^Corps du mail pour le patient^MetaDMPMSS||"
             f"^text^^Base64^{body}||||||F|\n")
    bodies, warnings = read_bodies(split_observations(parse(text)))
    assert bodies.patient == "Bonjour, ci-joint votre CR."
    assert warnings == ()
