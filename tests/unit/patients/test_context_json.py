"""The JSON form of a patient context: written field by field by hand (for speed), it must stay
what a walk of the dataclasses gives, and read back what older writers left."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from connector.patients import (
    BirthPlace,
    DmpConsultation,
    DmpFeeding,
    DmpInfo,
    DmpStatus,
    Encounter,
    EncounterStatus,
    Identity,
    IdentityStatus,
    Ins,
    Ipp,
    MedecinTraitant,
    Movement,
    MovementAction,
    PatientContext,
    PersonName,
    Sex,
    Traits,
    Unit,
)

INS_TEST_OID = "1.2.250.1.213.1.4.10"

FULL = PatientContext(
    identity=Identity(Ipp("000003", "CHU-X"), Ins("279035121518989", INS_TEST_OID),
                      IdentityStatus.VALI, ("VALI", "DOUB")),
    traits=Traits(PersonName("PAT-TROIS", "DOMINIQUE", "DOMINIQUE ÉLODIE"),
                  PersonName("DUPONT", "DOMI"), "19790328", Sex.FEMALE,
                  BirthPlace("63220", "RIOM")),
    medecin_traitant=MedecinTraitant("810002909371", "RPPS", "DOC", "ADAM", "10002909371"),
    encounter=Encounter(
        "000897406", "I", EncounterStatus.ON_LEAVE, "20240306110000", "20240307110000",
        (Movement("001", "A01", "20240306110000", Unit("6268", "Chir V"), Unit("6269"),
                  MovementAction.INSERT),
         Movement("002", "A02", None, None, None, MovementAction.UPDATE, cancelled=True))),
    dmp=DmpInfo(DmpStatus.ACTIVE, "20240306111154", DmpFeeding.OPPOSED, "20240306111155",
                DmpConsultation.NOT_COLLECTED, "20240306111156"),
    former_ipps=(Ipp("000099", "CHU-X"), Ipp("000098", "1.2.3")),
    last_event="A21",
)
SPARSE = PatientContext(Identity(Ipp("1", "X")), Traits())


def reference(value: object) -> Any:
    """The generic encoding: dataclasses as objects in field order, tuples as arrays."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, tuple):
        return [reference(v) for v in value]
    assert dataclasses.is_dataclass(value)
    return {f.name: reference(getattr(value, f.name)) for f in dataclasses.fields(value)}


def test_to_json_is_the_walk_of_the_dataclasses() -> None:
    for context in (FULL, SPARSE):
        expected = json.dumps({"format": 1, **reference(context)}, ensure_ascii=False,
                              separators=(",", ":")).encode()
        assert context.to_json() == expected
        assert PatientContext.from_json(context.to_json()) == context


def test_from_json_ignores_unknown_keys_and_defaults_missing_ones() -> None:
    raw = json.loads(FULL.to_json())
    raw["extra"] = 1
    raw["identity"]["ins"]["oid"] = "1.2.3"  # not an INS authority: no INS
    raw["traits"]["birth_name"] = {"family": "X", "other": 1}
    raw["traits"]["sex"] = "Z"
    raw["medecin_traitant"] = {"id": "1", "id_type": "ADELI", "zz": 2}
    raw["encounter"]["status"] = "unknown"
    raw["encounter"]["movements"][0].update(action="??", medical_unit={"code": "1"})
    raw["dmp"] = {"feeding": "IO", "unknown": 3}
    context = PatientContext.from_json(json.dumps(raw).encode())
    assert context.identity.ins is None
    assert context.traits.birth_name == PersonName("X")
    assert context.traits.sex is None
    assert context.medecin_traitant == MedecinTraitant("1", "ADELI")
    assert context.encounter is not None
    assert context.encounter.status is EncounterStatus.IN_PROGRESS
    assert context.encounter.movements[0].action is MovementAction.INSERT
    assert context.encounter.movements[0].medical_unit == Unit("1")
    assert context.dmp == DmpInfo(feeding=DmpFeeding.OPPOSED)
