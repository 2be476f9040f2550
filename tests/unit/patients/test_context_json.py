"""The JSON form of a patient context: written field by field by hand (for speed), it must stay
what a walk of the dataclasses gives, and read back what older writers left."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.cisis.model import INS_OIDS
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
from connector.patients.model import _WrittenContexts

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


# -- the contexts this process wrote, read back without decoding ------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_OPTIONAL_TEXT = st.none() | _TEXT
_IPPS = st.builds(Ipp, _TEXT, _TEXT)
_UNITS = st.none() | st.builds(Unit, _TEXT, _TEXT)
_NAMES = st.none() | st.builds(PersonName, _TEXT, _TEXT, _TEXT)
CONTEXTS = st.builds(
    PatientContext,
    identity=st.builds(Identity, _IPPS, st.none() | st.builds(Ins, _TEXT,
                                                            st.sampled_from(sorted(INS_OIDS))),
                       st.none() | st.sampled_from(IdentityStatus),
                       st.lists(_TEXT, max_size=3).map(tuple)),
    traits=st.builds(Traits, _NAMES, _NAMES, _OPTIONAL_TEXT, st.none() | st.sampled_from(Sex),
                     st.none() | st.builds(BirthPlace, _OPTIONAL_TEXT, _OPTIONAL_TEXT)),
    medecin_traitant=st.none() | st.builds(MedecinTraitant, _TEXT, _TEXT, _TEXT, _TEXT,
                                           _OPTIONAL_TEXT),
    encounter=st.none() | st.builds(
        Encounter, _OPTIONAL_TEXT, _OPTIONAL_TEXT, st.sampled_from(EncounterStatus),
        _OPTIONAL_TEXT, _OPTIONAL_TEXT,
        st.lists(st.builds(Movement, _TEXT, _TEXT, _OPTIONAL_TEXT, _UNITS, _UNITS,
                           st.sampled_from(MovementAction), st.booleans()),
                 max_size=3).map(tuple)),
    dmp=st.none() | st.builds(
        DmpInfo, st.none() | st.sampled_from(DmpStatus), _OPTIONAL_TEXT,
        st.none() | st.sampled_from(DmpFeeding), _OPTIONAL_TEXT,
        st.none() | st.sampled_from(DmpConsultation), _OPTIONAL_TEXT),
    former_ipps=st.lists(_IPPS, max_size=2).map(tuple),
    last_event=_TEXT,
)


@settings(max_examples=300)
@given(CONTEXTS)
def test_every_context_reads_back_from_its_json_as_itself(context: PatientContext) -> None:
    """What `_WrittenContexts` relies on: the context it keeps for the bytes `to_json` wrote is
    the one `from_json` would read from them."""
    read_back = PatientContext.from_json(context.to_json())
    assert read_back == context
    # And field by field of the same types: a StrEnum member equals its plain string, which
    # `==` would not tell apart (`identity.status is IdentityStatus.VALI` would).
    assert repr(read_back) == repr(context)


def test_a_context_written_here_is_read_back_without_decoding() -> None:
    written = _WrittenContexts(8)
    data = FULL.to_json()
    assert written.read(data) == FULL
    assert written.read(data) is not FULL  # not kept: decoded
    written.wrote(data, FULL)
    assert written.read(bytes(data)) is FULL  # the same bytes, read back from the store


def test_the_oldest_context_written_goes_first() -> None:
    written = _WrittenContexts(2)
    contexts = [PatientContext(Identity(Ipp(str(n), "X")), Traits()) for n in range(3)]
    for context in contexts:
        written.wrote(context.to_json(), context)
    assert written.read(contexts[0].to_json()) is not contexts[0]  # evicted: decoded again
    assert written.read(contexts[0].to_json()) == contexts[0]
    assert all(written.read(c.to_json()) is c for c in contexts[1:])
