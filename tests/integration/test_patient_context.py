"""ADT through the real intake (MLLP on loopback, SQLite file): the patient context the store
keeps, its history, retransmissions, and the ADT that are refused."""

from __future__ import annotations

from connector.patients import (
    DmpConsultation,
    DmpFeeding,
    EncounterStatus,
    IdentityStatus,
    Ipp,
    PatientContext,
    Unit,
    load_patient,
)
from connector.store import InboundStatus, PatientAction
from tests.integration.conftest import RunningApp, ack_fields
from tests.support.pam import (
    ADMISSION,
    AUTHORITY,
    CONSENTS,
    DISCHARGE,
    INS,
    IPP,
    PV1_NONE,
    adt,
    fixture,
    pid,
    zbe,
)

TENANT = "chu-test"


async def send(running: RunningApp, message: bytes) -> dict[str, str]:
    return ack_fields(await running.send(message.replace(b"\n", b"\r")))


async def context(running: RunningApp, **lookup: str) -> PatientContext:
    found = await load_patient(running.app.store, TENANT, **lookup)
    assert found is not None
    return found


async def test_admission_transfer_discharge(running: RunningApp) -> None:
    assert (await send(running, fixture(ADMISSION)))["code"] == "AA"
    admitted = await context(running, ipp=IPP)
    assert admitted.encounter is not None
    assert admitted.encounter.status is EncounterStatus.IN_PROGRESS
    assert admitted.encounter.medical_unit == Unit("6268", "Chir V")
    assert admitted.ins_usable
    transfer = adt("A02", "T1", movement=zbe("005", at="20240307080000", unit="Cardio",
                                              code="7001"))
    assert (await send(running, transfer))["code"] == "AA"
    moved = await context(running, ins=INS)
    assert moved.encounter is not None
    assert moved.encounter.medical_unit == Unit("7001", "Cardio")
    assert (await send(running, fixture(DISCHARGE)))["code"] == "AA"
    discharged = await context(running, ipp=IPP, authority=AUTHORITY)
    assert discharged.encounter is not None
    assert discharged.encounter.status is EncounterStatus.FINISHED
    assert discharged.encounter.visit_number == "000897406"
    assert [m.id for m in discharged.encounter.movements] == ["001", "005", "002"]
    assert discharged.dmp == admitted.dmp  # the discharge carries no ZFA
    assert discharged.traits == admitted.traits
    patient = await running.app.store.get_patient(TENANT, ipp=IPP)
    assert patient is not None
    history = await running.app.store.get_patient_history(TENANT, patient.id)
    assert [(h.event, h.action) for h in history] == [
        ("A01", PatientAction.CREATED), ("A02", PatientAction.UPDATED),
        ("A03", PatientAction.UPDATED)]
    rows = await running.rows()
    assert [h.inbound_id for h in history] == sorted(r.id for r in rows)


async def test_retransmitted_adt_changes_nothing_twice(running: RunningApp) -> None:
    await send(running, fixture(ADMISSION))
    transfer = adt("A02", "T1", movement=zbe("002", unit="Cardio", code="7001"))
    first = await send(running, transfer)
    second = await send(running, transfer)
    assert first == second
    assert first["code"] == "AA"
    patient = await running.app.store.get_patient(TENANT, ipp=IPP)
    assert patient is not None
    history = await running.app.store.get_patient_history(TENANT, patient.id)
    assert [h.event for h in history] == ["A01", "A02"]
    assert [r.retransmissions for r in await running.rows()] == [1, 0]  # newest first


async def test_identity_not_validated_makes_the_ins_unusable(running: RunningApp) -> None:
    message = adt("A28", "P1", patient=pid(status="PROV"), pv1=PV1_NONE)
    assert (await send(running, message))["code"] == "AA"
    found = await context(running, ins=INS)
    assert found.identity.ins is not None
    assert found.identity.status is IdentityStatus.PROV
    assert not found.ins_usable
    assert found.encounter is None
    await send(running, adt("A31", "P2", pv1=PV1_NONE))  # validated now
    assert (await context(running, ipp=IPP)).ins_usable


async def test_merge_through_intake(running: RunningApp) -> None:
    await send(running, fixture(ADMISSION))
    await send(running, adt("A28", "B1", patient=pid(ipp="000099", ins=False), pv1=PV1_NONE))
    assert (await send(running, adt("A40", "M1", pv1=PV1_NONE, mrg="000099")))["code"] == "AA"
    merged = await context(running, ipp="000099")
    assert merged.identity.ipp == Ipp(IPP, AUTHORITY)
    assert merged.former_ipps == (Ipp("000099", AUTHORITY),)
    await send(running, adt("A47", "C1", patient=pid(ipp="000555"), pv1=PV1_NONE, mrg=IPP))
    assert (await context(running, ipp="000099")).identity.ipp == Ipp("000555", AUTHORITY)


async def test_consent_fixtures(running: RunningApp) -> None:
    seen = []
    for path in CONSENTS:
        assert (await send(running, fixture(path)))["code"] == "AA"
        found = await context(running, ipp=IPP)
        assert found.dmp is not None
        assert found.medecin_traitant is not None
        assert found.medecin_traitant.national_id == "810000023084"
        seen.append((found.dmp.feeding, found.dmp.consultation))
    assert sorted(seen) == sorted([
        (DmpFeeding.NOT_OPPOSED, DmpConsultation.CONSENTED),
        (DmpFeeding.NOT_OPPOSED, DmpConsultation.REFUSED),
        (DmpFeeding.OPPOSED, DmpConsultation.REFUSED),
        (DmpFeeding.NOT_OPPOSED, DmpConsultation.NOT_COLLECTED)])


async def test_adt_without_ipp_is_answered_ae_and_kept(running: RunningApp) -> None:
    fields = await send(running, adt("A01", "E1", patient=pid(ipp=None)))
    assert fields["code"] == "AE"
    assert fields["err2"] == "PID^1^3"
    assert fields["err3"] == "101"
    (row,) = await running.rows()
    assert row.status is InboundStatus.REJECTED
    assert row.error_code == "101"
    assert await running.app.store.get_patient(TENANT, ins=INS) is None
