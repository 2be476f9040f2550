"""ADT (IHE PAM France 2.11) read into patient updates, and updates folded into contexts: the ANS
fixtures (admission, discharge, the four DMP consent variants) and messages derived from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.errors import ErrorLocation, MessageError, ProfileError
from connector.hl7.codes import ErrorCondition
from connector.hl7.header import MessageHeader
from connector.hl7.message import parse_message
from connector.patients import (
    BirthPlace,
    DmpConsultation,
    DmpFeeding,
    DmpStatus,
    EncounterStatus,
    IdentityStatus,
    Ipp,
    MovementAction,
    PatientContext,
    PersonName,
    Sex,
    Unit,
)
from connector.pipeline.routing import Flow, route
from connector.store import IdentifierKind, PatientKey
from tests.support.pam import (
    ADMISSION,
    AUTHORITY,
    CONSENTS,
    DISCHARGE,
    FAMILY,
    INS,
    INS_TEST_OID,
    IPP,
    PV1_NONE,
    adt,
    pid,
    plan,
    zbe,
)

CHIR_V = Unit("6268", "Chir V")


def fold(*messages: bytes | Path) -> PatientContext:
    """The context after these messages, in order, each through its JSON form (as stored)."""
    context: PatientContext | None = None
    for data in messages:
        stored = None if context is None else context.to_json()
        context = PatientContext.from_json(plan(data).change().apply(stored))
    assert context is not None
    return context


def test_admission_fixture() -> None:
    update = plan(ADMISSION)
    assert update.event == "A01"
    identity = update.identity
    assert identity.ipp == Ipp(IPP, AUTHORITY)
    assert identity.ins is not None
    assert (identity.ins.value, identity.ins.oid, identity.ins.kind.value) == (
        INS, INS_TEST_OID, "test")
    assert identity.status is IdentityStatus.VALI
    assert identity.ins_usable
    traits = update.traits
    assert traits.birth_name == PersonName(FAMILY, "DOMINIQUE", "DOMINIQUE")
    assert traits.used_name is None
    assert (traits.birth_date, traits.sex) == ("19790328", Sex.FEMALE)
    assert traits.birth_place == BirthPlace(insee_code="63220")
    assert update.medecin_traitant is None
    context = update.apply(None)
    encounter = context.encounter
    assert encounter is not None
    assert (encounter.visit_number, encounter.patient_class, encounter.status) == (
        "000897406", "I", EncounterStatus.IN_PROGRESS)
    assert encounter.admitted_at == "20240306110000"  # PV1-44 empty: the movement's date
    assert (encounter.medical_unit, encounter.care_unit) == (CHIR_V, CHIR_V)
    assert context.dmp is not None
    assert (context.dmp.status, context.dmp.feeding, context.dmp.consultation) == (
        DmpStatus.ACTIVE, DmpFeeding.NOT_OPPOSED, DmpConsultation.CONSENTED)
    assert context.ins_usable
    assert update.sections == ("identity", "traits", "encounter", "dmp")


def test_change_for_the_store() -> None:
    change = plan(ADMISSION).change()
    assert change.event == "A01"
    assert change.key == PatientKey(IdentifierKind.IPP, AUTHORITY, IPP)
    assert change.ins == PatientKey(IdentifierKind.INS, INS_TEST_OID, INS)
    assert change.absorbed == ()
    assert not change.identifier_change
    created = PatientContext.from_json(change.apply(None))
    assert created == plan(ADMISSION).apply(None)
    assert INS not in repr(change)
    assert FAMILY not in repr(change)


def test_discharge_after_admission() -> None:
    context = fold(ADMISSION, DISCHARGE)
    encounter = context.encounter
    assert encounter is not None
    assert encounter.status is EncounterStatus.FINISHED
    assert encounter.visit_number == "000897406"
    assert encounter.discharged_at == "20240306110000"  # PV1-45 empty: the movement's date
    # The ANS discharge example's ZBE is shifted by one field: its only UF lands in ZBE-8.
    assert encounter.care_unit == Unit("8782", "Urgences")
    assert encounter.medical_unit is None
    assert [m.id for m in encounter.movements] == ["001", "002"]
    assert context.dmp is not None
    assert context.dmp.status is DmpStatus.ACTIVE
    assert context.last_event == "A03"


@pytest.mark.parametrize(("name", "feeding", "consultation", "allowed"), [
    ("ConsentementConsultation_NonOppositionAlimentation.er7",
     DmpFeeding.NOT_OPPOSED, DmpConsultation.CONSENTED, True),
    ("NonConsentementConsultation_NonOppositionAlimentation.er7",
     DmpFeeding.NOT_OPPOSED, DmpConsultation.REFUSED, True),
    ("NonConsentementConsultation_OppositionAlimentation.er7",
     DmpFeeding.OPPOSED, DmpConsultation.REFUSED, False),
    ("NonRecueillieConsentementConsultation_NonOppositionAlimentation.er7",
     DmpFeeding.NOT_OPPOSED, DmpConsultation.NOT_COLLECTED, True),
])
def test_consent_variants(name: str, feeding: DmpFeeding, consultation: DmpConsultation,
                          allowed: bool) -> None:
    assert len(CONSENTS) == 4
    update = plan(next(p for p in CONSENTS if p.name == name))
    dmp = update.dmp
    assert dmp is not None
    assert (dmp.status, dmp.feeding, dmp.consultation) == (DmpStatus.ACTIVE, feeding,
                                                            consultation)
    assert dmp.status_at is not None
    assert dmp.feeding_at is not None
    assert dmp.feeding_allowed is allowed
    assert (dmp.consultation_at is None) is (consultation is DmpConsultation.NOT_COLLECTED)
    doctor = update.medecin_traitant  # ROL ODRP
    assert doctor is not None
    assert (doctor.rpps, doctor.national_id, doctor.family, doctor.given) == (
        "10000023084", "810000023084", "AGNES", "Isabelle")
    assert update.apply(None).medecin_traitant == doctor


def test_update_a08_replaces_traits_keeps_the_rest() -> None:
    names = "PAT-TROIS^DOMINIQUE^DOMINIQUE MARIE^^^^L~MARTIN^DOMI^^^^^D"
    update = adt("A08", "U1", patient=pid(names=names, status="QUAL"), pv1=PV1_NONE)
    context = fold(ADMISSION, adt("A31", "C1", rol=True, pv1=PV1_NONE), update)
    assert context.traits.birth_name == PersonName(FAMILY, "DOMINIQUE", "DOMINIQUE MARIE")
    assert context.traits.used_name == PersonName("MARTIN", "DOMI")
    assert context.identity.status is IdentityStatus.QUAL
    assert not context.ins_usable  # only VALI lets documents carry the INS
    assert context.medecin_traitant is not None  # from the A31's ROL, not repeated
    assert context.encounter == fold(ADMISSION).encounter  # PV1-2 = N: no encounter
    assert context.dmp == fold(ADMISSION).dmp
    assert plan(update).sections == ("identity", "traits")


def test_a08_with_a_visit_updates_the_encounter() -> None:
    pv1 = "PV1|1|O|||||||||||||||||000897406^^^CHU-X&000897406&M^VN"
    context = fold(ADMISSION, adt("A08", "U2", pv1=pv1))
    assert context.encounter is not None
    assert context.encounter.patient_class == "O"
    assert context.encounter.status is EncounterStatus.IN_PROGRESS
    assert context.encounter.movements == fold(ADMISSION).encounter.movements  # type: ignore[union-attr]


def test_transfer_then_its_cancellation() -> None:
    transfer = adt("A02", "T1", movement=zbe("002", at="20240307090000", unit="Cardio",
                                              code="7001"))
    moved = fold(ADMISSION, transfer)
    assert moved.encounter is not None
    assert moved.encounter.medical_unit == Unit("7001", "Cardio")
    cancel = adt("A12", "T2", movement=zbe("002", action="CANCEL", original="A02"))
    back = fold(ADMISSION, transfer, cancel)
    assert back.encounter is not None
    assert back.encounter.medical_unit == CHIR_V
    assert [(m.id, m.cancelled) for m in back.encounter.movements] == [("001", False),
                                                                       ("002", True)]
    assert back.encounter.status is EncounterStatus.IN_PROGRESS


def test_replayed_movement_is_not_duplicated() -> None:
    transfer = adt("A02", "T1", movement=zbe("002", unit="Cardio", code="7001"))
    again = adt("A02", "T1-bis", movement=zbe("002", unit="Cardio", code="7001"))
    context = fold(ADMISSION, transfer, again)
    assert context.encounter is not None
    assert [m.id for m in context.encounter.movements] == ["001", "002"]


def test_cancelled_admission_and_cancelled_discharge() -> None:
    cancelled = fold(ADMISSION, adt("A11", "X1", movement=zbe("001", action="CANCEL")))
    assert cancelled.encounter is not None
    assert cancelled.encounter.status is EncounterStatus.CANCELLED
    assert cancelled.encounter.current_movement is None
    undone = fold(ADMISSION, DISCHARGE, adt("A13", "X2", movement=zbe("002", action="CANCEL")))
    assert undone.encounter is not None
    assert undone.encounter.status is EncounterStatus.IN_PROGRESS
    assert undone.encounter.discharged_at is None
    assert undone.encounter.medical_unit == CHIR_V


def test_cancellation_of_another_visit_changes_nothing() -> None:
    other = "PV1|1|I|||||||||||||||||999999^^^CHU-X&000897406&M^VN"
    context = fold(ADMISSION, adt("A11", "X3", pv1=other))
    assert context.encounter == fold(ADMISSION).encounter


def test_new_admission_starts_a_new_encounter() -> None:
    pv1 = "PV1|1|E|||||||||||||||||555555^^^CHU-X&000897406&M^VN"
    context = fold(ADMISSION, DISCHARGE, adt("A04", "N1", pv1=pv1,
                                             movement=zbe("010", unit="Urg", code="9000")))
    assert context.encounter is not None
    assert (context.encounter.visit_number, context.encounter.patient_class) == ("555555", "E")
    assert context.encounter.status is EncounterStatus.IN_PROGRESS
    assert [m.id for m in context.encounter.movements] == ["010"]
    leave = fold(ADMISSION, adt("A21", "L1", movement=zbe("003")))
    assert leave.encounter is not None
    assert leave.encounter.status is EncounterStatus.ON_LEAVE


def test_merge_a40() -> None:
    update = plan(adt("A40", "M1", pv1=PV1_NONE, mrg="000099"))
    assert update.absorbed == (Ipp("000099", AUTHORITY),)
    change = update.change()
    assert change.absorbed == (PatientKey(IdentifierKind.IPP, AUTHORITY, "000099"),)
    assert change.lookup_keys == (change.key, *change.absorbed)
    assert not change.identifier_change
    assert update.sections[-1] == "merge"
    merged = fold(ADMISSION, adt("A40", "M1", pv1=PV1_NONE, mrg="000099"))
    assert merged.identity.ipp == Ipp(IPP, AUTHORITY)
    assert merged.former_ipps == (Ipp("000099", AUTHORITY),)
    assert merged.encounter == fold(ADMISSION).encounter


def test_merge_onto_the_absorbed_patients_context() -> None:
    """A40 whose survivor the store does not know: the absorbed patient's context is folded."""
    absorbed = fold(adt("A01", "A1", patient=pid(ipp="000099")))
    update = plan(adt("A40", "M2", pv1=PV1_NONE, mrg="000099"))
    merged = update.apply(absorbed)
    assert merged.identity.ipp == Ipp(IPP, AUTHORITY)
    assert merged.former_ipps == (Ipp("000099", AUTHORITY),)
    assert merged.encounter == absorbed.encounter


def test_identifier_change_a47() -> None:
    old = fold(adt("A01", "A1", patient=pid(ipp="000099")))
    update = plan(adt("A47", "C1", patient=pid(ipp="000555"), pv1=PV1_NONE, mrg="000099"))
    assert update.change().identifier_change
    assert update.sections[-1] == "identifier_change"
    renamed = update.apply(old)
    assert renamed.identity.ipp == Ipp("000555", AUTHORITY)
    assert renamed.former_ipps == (Ipp("000099", AUTHORITY),)
    # A late message under the former IPP does not take it back.
    late = plan(adt("A08", "L1", patient=pid(ipp="000099"), pv1=PV1_NONE)).apply(renamed)
    assert late.identity.ipp == Ipp("000555", AUTHORITY)


def test_identity_not_validated() -> None:
    update = plan(adt("A28", "P1", patient=pid(status="PROV"), pv1=PV1_NONE))
    assert update.identity.ins is not None
    assert update.identity.status is IdentityStatus.PROV
    assert not update.identity.ins_usable
    assert update.apply(None).encounter is None
    several = plan(adt("A31", "P2", patient=pid(status="VALI~DOUT"), pv1=PV1_NONE))
    assert several.identity.reliability == ("VALI", "DOUT")
    assert several.identity.ins_usable
    unknown = plan(adt("A31", "P3", patient=pid(status="XYZ"), pv1=PV1_NONE))
    assert unknown.identity.status is None
    assert not unknown.identity.ins_usable
    no_ins = plan(adt("A31", "P4", patient=pid(ins=False), pv1=PV1_NONE))
    assert no_ins.identity.ins is None
    assert not no_ins.identity.ins_usable
    assert no_ins.change().ins is None


def test_medecin_traitant_removed_or_from_pd1() -> None:
    removal = adt("A31", "R1", pv1=PV1_NONE, others=("ROL||DE|ODRP|10000023084^AGNES",))
    context = fold(adt("A31", "R0", rol=True, pv1=PV1_NONE), removal)
    assert context.medecin_traitant is None
    pd1 = ("PD1||||801234567897^REAULT^Pierre^^^^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",)
    doctor = plan(adt("A31", "R2", pv1=PV1_NONE, others=pd1)).medecin_traitant
    assert doctor is not None
    assert (doctor.rpps, doctor.national_id, doctor.id_type) == (
        "01234567897", "801234567897", "IDNPS")
    other = ("ROL||UC|ODRP|123456789^DOC^Jean^^^^^^LOCAL&1.2.3.4&ISO^L^^^ADELI",)
    local = plan(adt("A31", "R3", pv1=PV1_NONE, others=other)).medecin_traitant
    assert local is not None
    assert local.rpps is None
    assert local.national_id is None


def test_birth_place_from_pid23() -> None:
    names = pid().replace("~^^^^^^BDL^^63220", "")
    fields = names.split("|")
    fields[23] = "2A004"
    update = plan(adt("A28", "B1", patient="|".join(fields), pv1=PV1_NONE))
    assert update.traits.birth_place == BirthPlace(insee_code="2A004")
    fields[23] = "AJACCIO"
    update = plan(adt("A28", "B2", patient="|".join(fields), pv1=PV1_NONE))
    assert update.traits.birth_place == BirthPlace(city="AJACCIO")


def test_contexts_round_trip_through_json() -> None:
    for context in (fold(ADMISSION), fold(ADMISSION, DISCHARGE),
                    fold(*CONSENTS), fold(ADMISSION, adt("A40", "M", pv1=PV1_NONE,
                                                         mrg="000099"))):
        assert PatientContext.from_json(context.to_json()) == context
    with pytest.raises(ValueError, match="format"):
        PatientContext.from_json(b'{"format": 99}')


@pytest.mark.parametrize(("message", "location", "condition"), [
    (adt("A01", "E1", patient=pid(ipp=None)), ErrorLocation("PID", 1, 3),
     ErrorCondition.REQUIRED_FIELD_MISSING),
    (adt("A01", "E2").replace(pid().encode(), b"NTE|1"), ErrorLocation("PID", 1),
     ErrorCondition.SEGMENT_SEQUENCE_ERROR),
    (adt("A40", "E3", pv1=PV1_NONE), ErrorLocation("MRG", 1),
     ErrorCondition.SEGMENT_SEQUENCE_ERROR),
    (adt("A47", "E4", pv1=PV1_NONE, others=(f"MRG|{INS}^^^X&{INS_TEST_OID}&ISO^INS",)),
     ErrorLocation("MRG", 1, 1), ErrorCondition.REQUIRED_FIELD_MISSING),
    (adt("A40", "E5", pv1=PV1_NONE, mrg="000099",
         others=(pid(ipp="000042"), "MRG|000098^^^CHU-X^PI")),
     ErrorLocation("PID", 2, 3), ErrorCondition.NON_CONFORMANT_CARDINALITY),
], ids=["no-ipp", "no-pid", "a40-no-mrg", "a47-mrg-without-ipp", "a40-two-patients"])
def test_bad_input_is_a_located_profile_error(message: bytes, location: ErrorLocation,
                                              condition: ErrorCondition) -> None:
    with pytest.raises(ProfileError) as caught:
        plan(message)
    error: MessageError = caught.value
    assert error.location == location
    assert error.condition is condition
    for value in (IPP, INS, FAMILY, "DOMINIQUE", "19790328", "000099"):
        assert value not in error.detail


def test_a_repeated_pid_is_read_once_and_a_changed_one_again() -> None:
    first = plan(adt("A01", "P1"))
    again = plan(adt("A02", "P2"))  # the stay's next message, the same PID text
    assert again.identity is first.identity
    assert again.traits is first.traits
    changed = plan(adt("A08", "P3", patient=pid(family="MARTIN", status="QUAL")))
    assert changed.traits.birth_name is not None
    assert changed.traits.birth_name.family == "MARTIN"
    assert changed.identity.status is IdentityStatus.QUAL
    # The same fields under other encoding characters read otherwise (`^` is no component
    # separator any more: PID-3 holds no IPP): not the same entry.
    other = adt("A01", "P4").replace(b"|^~\\&|", b"|#~\\&|", 1)
    with pytest.raises(ProfileError, match="no IPP"):
        plan(other)


def test_a_leave_or_a_return_cancelled_puts_the_encounter_back() -> None:
    """A52 cancels the leave of absence (A21), A53 the return from it (A22): the encounter's
    status is the one before, the movement named by ZBE-1 is marked cancelled."""
    leave = adt("A21", "L1", movement=zbe("003"))
    back = fold(ADMISSION, leave, adt("A52", "L2", movement=zbe("003", action="CANCEL",
                                                                 original="A21")))
    assert back.encounter is not None
    assert back.encounter.status is EncounterStatus.IN_PROGRESS
    assert [(m.id, m.cancelled) for m in back.encounter.movements][-1] == ("003", True)
    returned = adt("A22", "L3", movement=zbe("004"))
    still_away = fold(ADMISSION, leave, returned,
                      adt("A53", "L4", movement=zbe("004", action="CANCEL", original="A22")))
    assert still_away.encounter is not None
    assert still_away.encounter.status is EncounterStatus.ON_LEAVE


def test_z99_updates_a_movement_in_place() -> None:
    moved = fold(ADMISSION, adt("Z99", "U1", movement=zbe("001", action="UPDATE",
                                                          original="A01", unit="Cardio",
                                                          code="7000")))
    assert moved.encounter is not None
    assert moved.encounter.status is EncounterStatus.IN_PROGRESS
    (movement,) = [m for m in moved.encounter.movements if m.id == "001"]
    assert movement.event == "A01"
    assert movement.action is MovementAction.UPDATE
    assert movement.medical_unit is not None
    assert movement.medical_unit.code == "7000"


@pytest.mark.parametrize("event", ["A52", "A53", "A54", "A55", "Z99"])
def test_the_pam_fr_events_added_are_routed(event: str) -> None:
    message = parse_message(adt(event, "R1", movement=zbe("005")).decode())
    assert route(MessageHeader.from_segment(message.msh)) is Flow.PATIENT_ADT
