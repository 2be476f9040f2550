"""The patient context contract: how each store adapter applies `InboundMessage.patient_update`
(in the transaction of the inbound row, only for a message finally accepted and not a
retransmission), finds patients by IPP or INS through merges and identifier changes, keeps their
history, and keeps contexts and identifiers unreadable at rest when a key is set."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from connector.patients import EncounterStatus, Ipp, PatientContext, load_patient
from connector.store import InboundMessage, InboundStatus, PatientAction, StoredPatient
from connector.store.cipher import PayloadCipher
from tests.contract.conftest import Store, StoreFactory
from tests.support.pam import (
    ADMISSION,
    AUTHORITY,
    FAMILY,
    INS,
    IPP,
    PV1_NONE,
    adt,
    fixture,
    pid,
    plan,
    zbe,
)

TENANT = "t1"
KEY_A = b"A" * 32
KEY_B = b"B" * 32


def inbound(raw: bytes, *, status: InboundStatus = InboundStatus.ACCEPTED,
            tenant: str = TENANT) -> InboundMessage:
    """`raw` as intake records it: its patient change with it (whatever its status: the store
    applies it only to an accepted message)."""
    control_id = raw.split(b"|")[9].decode()
    return InboundMessage(
        tenant_id=tenant, listener="l1", peer="127.0.0.1:1", received_at=time.time(), raw=raw,
        digest=hashlib.sha256(raw).digest(), sending_application="GAM", sending_facility="CHU-X",
        message_type="ADT", control_id=control_id, version="2.5", status=status,
        ack_code="AA" if status is InboundStatus.ACCEPTED else "AE", ack=b"MSH|ack",
        patient_update=plan(raw).change())


async def record(store: Store, raw: bytes, *,
                 status: InboundStatus = InboundStatus.ACCEPTED) -> int:
    return (await store.record_inbound(inbound(raw, status=status))).inbound_id


async def found(store: Store, **lookup: str) -> StoredPatient:
    patient = await store.get_patient(TENANT, **lookup)
    assert patient is not None
    return patient


async def actions(store: Store, patient_id: int) -> list[tuple[str, str, int | None]]:
    return [(h.event, h.action.value, h.other_patient_id)
            for h in await store.get_patient_history(TENANT, patient_id)]


async def test_create_then_find_by_ipp_and_ins(make_store: StoreFactory) -> None:
    store = make_store()
    inbound_id = await record(store, fixture(ADMISSION))
    patient = await found(store, ipp=IPP)
    assert patient.inbound_id == inbound_id
    assert patient.tenant_id == TENANT
    assert (await found(store, ipp=IPP, authority=AUTHORITY)).id == patient.id
    assert (await found(store, ins=INS)).id == patient.id
    assert await store.get_patient(TENANT, ipp=IPP, authority="OTHER") is None
    assert await store.get_patient(TENANT, ipp="000004") is None
    assert await store.get_patient("t2", ipp=IPP) is None  # per tenant
    context = PatientContext.from_json(patient.context)
    assert context == plan(fixture(ADMISSION)).apply(None)
    assert await load_patient(store, TENANT, ipp=IPP) == context
    history = await store.get_patient_history(TENANT, patient.id)
    assert [(h.event, h.action, h.inbound_id) for h in history] == [
        ("A01", PatientAction.CREATED, inbound_id)]
    assert history[0].detail == "identity,traits,encounter,dmp"
    with pytest.raises(ValueError, match="IPP or by its INS"):
        await store.get_patient(TENANT)


async def test_updates_fold_into_one_patient(make_store: StoreFactory) -> None:
    store = make_store()
    await record(store, fixture(ADMISSION))
    await record(store, adt("A02", "T1", movement=zbe("002", unit="Cardio", code="7001")))
    update = adt("A08", "U1", patient=pid(names="MARTIN^DOMI^^^^^D~PAT-TROIS^D^D^^^^L"),
                 pv1=PV1_NONE)
    last = await record(store, update)
    patient = await found(store, ipp=IPP)
    context = PatientContext.from_json(patient.context)
    assert context.traits.used_name is not None
    assert context.traits.used_name.family == "MARTIN"
    assert context.encounter is not None
    assert context.encounter.medical_unit is not None
    assert context.encounter.medical_unit.code == "7001"
    assert context.encounter.status is EncounterStatus.IN_PROGRESS
    assert patient.inbound_id == last
    assert await actions(store, patient.id) == [
        ("A01", "created", None), ("A02", "updated", None), ("A08", "updated", None)]
    assert make_store.query("SELECT count(*) FROM patients") == [(1,)]


async def test_merge_a40_then_lookup_by_the_absorbed_ipp(make_store: StoreFactory) -> None:
    store = make_store()
    await record(store, fixture(ADMISSION))
    await record(store, adt("A28", "B1", patient=pid(ipp="000099", ins=False), pv1=PV1_NONE))
    survivor = await found(store, ipp=IPP)
    absorbed = await found(store, ipp="000099")
    assert survivor.id != absorbed.id
    merge = await record(store, adt("A40", "M1", pv1=PV1_NONE, mrg="000099"))
    assert (await found(store, ipp="000099")).id == survivor.id
    assert (await found(store, ipp=IPP)).id == survivor.id
    context = PatientContext.from_json((await found(store, ipp="000099")).context)
    assert context.identity.ipp == Ipp(IPP, AUTHORITY)
    assert context.former_ipps == (Ipp("000099", AUTHORITY),)
    assert await actions(store, survivor.id) == [
        ("A01", "created", None), ("A40", "updated", None), ("A40", "merged", absorbed.id)]
    assert await actions(store, absorbed.id) == [
        ("A28", "created", None), ("A40", "absorbed", survivor.id)]
    assert make_store.query("SELECT id, merged_into, inbound_id FROM patients ORDER BY id") == [
        (survivor.id, None, merge), (absorbed.id, survivor.id, merge)]
    # The survivor carries the INS; a message about it now finds one patient.
    assert (await found(store, ins=INS)).id == survivor.id
    await record(store, adt("A08", "U9", pv1=PV1_NONE))
    assert make_store.query("SELECT count(*) FROM patient_history WHERE patient_id = ?",
                            (absorbed.id,)) == [(2,)]


async def test_merge_onto_an_unknown_ipp_keeps_the_patient(make_store: StoreFactory) -> None:
    store = make_store()
    await record(store, fixture(ADMISSION))
    before = await found(store, ipp=IPP)
    await record(store, adt("A40", "M2", patient=pid(ipp="000777"), pv1=PV1_NONE, mrg=IPP))
    after = await found(store, ipp="000777")
    assert after.id == before.id
    assert (await found(store, ipp=IPP)).id == before.id
    assert (await actions(store, before.id))[-1] == ("A40", "identifier_changed", None)
    context = PatientContext.from_json(after.context)
    assert context.identity.ipp == Ipp("000777", AUTHORITY)
    assert context.encounter == PatientContext.from_json(before.context).encounter


async def test_identifier_change_a47(make_store: StoreFactory) -> None:
    store = make_store()
    await record(store, fixture(ADMISSION))
    before = await found(store, ipp=IPP)
    await record(store, adt("A47", "C1", patient=pid(ipp="000555"), pv1=PV1_NONE, mrg=IPP))
    renamed = await found(store, ipp="000555")
    assert renamed.id == before.id
    assert (await found(store, ipp=IPP)).id == before.id  # the former IPP still finds it
    context = PatientContext.from_json(renamed.context)
    assert context.identity.ipp == Ipp("000555", AUTHORITY)
    assert context.former_ipps == (Ipp(IPP, AUTHORITY),)
    assert await actions(store, before.id) == [("A01", "created", None),
                                                ("A47", "identifier_changed", None)]
    history = await store.get_patient_history(TENANT, before.id)
    assert history[-1].detail == "identity,traits,identifier_change"
    # A47 onto an IPP another patient has: a merge, under the identifier change.
    await record(store, adt("A28", "B2", patient=pid(ipp="000666", ins=False), pv1=PV1_NONE))
    other = await found(store, ipp="000666")
    await record(store, adt("A47", "C2", patient=pid(ipp="000666"), pv1=PV1_NONE, mrg="000555"))
    assert {(await found(store, ipp=i)).id for i in (IPP, "000555", "000666")} == {other.id}
    assert (await actions(store, before.id))[-1] == ("A47", "absorbed", other.id)


async def test_retransmission_applies_nothing_twice(make_store: StoreFactory) -> None:
    store = make_store()
    message = inbound(adt("A02", "T1", movement=zbe("002", unit="Cardio", code="7001")))
    await record(store, fixture(ADMISSION))
    first = await store.record_inbound(message)
    again = await store.record_inbound(message)
    assert again.retransmission_of == first.inbound_id
    patient = await found(store, ipp=IPP)
    assert patient.inbound_id == first.inbound_id
    assert await actions(store, patient.id) == [("A01", "created", None),
                                                ("A02", "updated", None)]


async def test_rejected_message_applies_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    await record(store, fixture(ADMISSION), status=InboundStatus.REJECTED)
    assert await store.get_patient(TENANT, ipp=IPP) is None
    assert make_store.query("SELECT count(*) FROM patient_identifiers") == [(0,)]


async def test_same_ipp_under_two_authorities(make_store: StoreFactory) -> None:
    store = make_store()
    await record(store, fixture(ADMISSION))
    other = adt("A28", "O1", pv1=PV1_NONE, patient=pid(ins=False).replace(
        "000003^^^CHU-X&000897406&N^PI", "000003^^^CHU-Y^PI"))
    await record(store, other)
    with pytest.raises(ValueError, match="authority"):
        await store.get_patient(TENANT, ipp=IPP)
    x = await found(store, ipp=IPP, authority="CHU-X")
    y = await found(store, ipp=IPP, authority="CHU-Y")
    assert x.id != y.id


async def test_ins_follows_the_patient_carrying_it(make_store: StoreFactory) -> None:
    store = make_store()
    await record(store, fixture(ADMISSION))
    first = await found(store, ins=INS)
    await record(store, adt("A28", "D1", patient=pid(ipp="000042"), pv1=PV1_NONE))
    assert (await found(store, ins=INS)).id != first.id  # the last patient that carried it
    await record(store, adt("A31", "D2", patient=pid(ipp="000042", ins=False), pv1=PV1_NONE))
    assert await store.get_patient(TENANT, ins=INS) is None  # no patient carries it now


async def test_context_and_identifiers_encrypted_at_rest(make_store: StoreFactory) -> None:
    store = make_store(cipher=PayloadCipher({"a": KEY_A}, "a"))
    await record(store, fixture(ADMISSION))
    patient = await found(store, ins=INS)
    await store.close()
    on_disk = make_store.stored_bytes("store.db*")
    for value in (FAMILY.encode(), b"DOMINIQUE", INS.encode(), b"19790328"):
        assert value not in on_disk
    assert make_store.query("SELECT DISTINCT context_key FROM patients") == [("a",)]
    # After a key rotation, the patient is still found and its context still opens.
    rotated = make_store(cipher=PayloadCipher({"a": KEY_A, "b": KEY_B}, "b"))
    assert (await found(rotated, ipp=IPP)).context == patient.context
    await record(rotated, adt("A08", "R1", pv1=PV1_NONE))
    assert (await found(rotated, ins=INS)).id == patient.id
    assert make_store.query("SELECT DISTINCT context_key FROM patients") == [("b",)]


async def test_concurrent_messages_about_one_patient_lose_nothing(
        make_store: StoreFactory) -> None:
    """Each transfer adds a movement: a writer that read a stale context would drop one."""
    store = make_store()
    await record(store, fixture(ADMISSION))
    transfers = [adt("A02", f"T{n}", movement=zbe(f"1{n:02d}", unit=f"U{n}", code=str(n)))
                 for n in range(30)]
    receipts = await asyncio.gather(*(store.record_inbound(inbound(t)) for t in transfers))
    assert all(r.retransmission_of is None for r in receipts)
    context = PatientContext.from_json((await found(store, ipp=IPP)).context)
    assert context.encounter is not None
    assert len(context.encounter.movements) == 31
    assert make_store.query("SELECT count(*) FROM patient_history") == [(31,)]



async def test_messages_reaching_one_patient_by_two_ipps_lose_nothing(
        make_store: StoreFactory) -> None:
    """After a merge, a late message under the absorbed IPP and one under the survivor's take
    different locks (PostgreSQL may record them in one group): both apply to the survivor."""
    store = make_store()
    await record(store, fixture(ADMISSION))
    await record(store, adt("A28", "B1", patient=pid(ipp="000099", ins=False), pv1=PV1_NONE))
    await record(store, adt("A40", "M1", pv1=PV1_NONE, mrg="000099"))
    for round_ in range(5):
        late = adt("A02", f"L{round_}", patient=pid(ipp="000099"),
                   movement=zbe(f"L{round_}", unit="Late", code="1"))
        current = adt("A02", f"C{round_}", movement=zbe(f"C{round_}", unit="Now", code="2"))
        await asyncio.gather(store.record_inbound(inbound(late)),
                             store.record_inbound(inbound(current)))
    context = PatientContext.from_json((await found(store, ipp=IPP)).context)
    assert context.encounter is not None
    assert len(context.encounter.movements) == 11
    assert context.identity.ipp == Ipp(IPP, AUTHORITY)  # the late IPP does not take it back


async def test_contexts_no_adt_updated_since_the_cutoff_are_deleted_whole(
        make_store: StoreFactory) -> None:
    """The retention of the patient context: a merged pair and a lone patient, all stale,
    leave nothing behind (history, identifiers, the merge's references: the foreign keys hold on
    PostgreSQL); a cutoff before their last ADT deletes nothing."""
    store = make_store()
    await record(store, fixture(ADMISSION))
    await record(store, adt("A28", "B1", patient=pid(ipp="000099", ins=False), pv1=PV1_NONE))
    await record(store, adt("A40", "M1", pv1=PV1_NONE, mrg="000099"))
    await record(store, adt("A28", "C1", patient=pid(ipp="000123", ins=False), pv1=PV1_NONE))
    assert await store.purge_patient_contexts(before=time.time() - 3600) == 0
    assert make_store.query("SELECT count(*) FROM patients") == [(3,)]
    assert await store.purge_patient_contexts(before=time.time() + 1) == 3
    for table in ("patients", "patient_identifiers", "patient_history"):
        assert make_store.query(f"SELECT count(*) FROM {table}") == [(0,)]  # noqa: S608
    assert await store.get_patient(TENANT, ipp=IPP) is None
    await record(store, adt("A08", "U2", pv1=PV1_NONE))  # a later ADT starts a context again
    assert (await found(store, ipp=IPP)).tenant_id == TENANT


async def test_a_survivor_whose_absorbed_patient_is_recent_stays(
        make_store: StoreFactory) -> None:
    store = make_store()
    await record(store, fixture(ADMISSION))
    await record(store, adt("A28", "B1", patient=pid(ipp="000099", ins=False), pv1=PV1_NONE))
    survivor = await found(store, ipp=IPP)
    cutoff = time.time() + 0.5
    make_store.execute("UPDATE patients SET updated_at = ? WHERE id = ?",
                       (cutoff - 10, survivor.id))
    absorbed = await found(store, ipp="000099")
    make_store.execute("UPDATE patients SET merged_into = ?, updated_at = ? WHERE id = ?",
                       (survivor.id, cutoff + 10, absorbed.id))
    assert await store.purge_patient_contexts(before=cutoff) == 0
    assert make_store.query("SELECT count(*) FROM patients") == [(2,)]
