"""The patient context learnt from ADT (IHE PAM France 2.11), as values.

`PatientContext` is what the connector knows of one patient of one tenant: identity (IPP, INS
and its status), birth and used traits, médecin traitant, current encounter, DMP status.
`PatientUpdate` is what one ADT message does (`adt.plan_adt` reads it from the message alone);
`PatientUpdate.apply` turns the stored context into the next one, and `PatientUpdate.change`
gives the store what it needs to apply it in the transaction of the inbound row.

A PAM message always carries the whole PID: identity and traits are replaced by each message.
The médecin traitant (ROL/PD1), the encounter (PV1/ZBE) and the DMP status (ZFA) are replaced
only by a message that carries them.

Dates are kept as sent (HL7 TS text, e.g. `20240306110000`). The JSON form (`to_json`) is what
the store seals; `from_json` ignores keys it does not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cache
from typing import Any, TypeVar

from connector.cisis.model import INS_OIDS, InsKind
from connector.recent import Recent
from connector.store.model import IdentifierKind, PatientChange, PatientKey

_FORMAT = 1
MAX_MOVEMENTS = 100  # movements kept per encounter (the oldest are dropped)

E = TypeVar("E", bound=StrEnum)


class IdentityStatus(StrEnum):
    """PID-32 identity reliability: the status repetition (French table 0445 and INS annex)."""

    VIDE = "VIDE"  # no identity collected yet
    PROV = "PROV"  # provisional
    RECUP = "RECUP"  # retrieved (INSi) but not checked against an identity document
    VALI = "VALI"  # validated
    QUAL = "QUAL"  # qualified


class Sex(StrEnum):
    """PID-8 (HL7 table 0001)."""

    FEMALE = "F"
    MALE = "M"
    UNKNOWN = "U"
    OTHER = "O"
    AMBIGUOUS = "A"
    NOT_APPLICABLE = "N"


class EncounterStatus(StrEnum):
    PLANNED = "planned"  # pre-admission (A05)
    IN_PROGRESS = "in-progress"
    ON_LEAVE = "on-leave"  # leave of absence (A21, until A22)
    FINISHED = "finished"  # discharged (A03)
    CANCELLED = "cancelled"  # admission or pre-admission cancelled (A11, A38)


class MovementAction(StrEnum):
    """ZBE-4."""

    INSERT = "INSERT"
    UPDATE = "UPDATE"
    CANCEL = "CANCEL"


class DmpStatus(StrEnum):
    """ZFA-1."""

    ACTIVE = "ACTIF"
    CLOSED = "FERME"
    ARCHIVED = "ARCHIVE"
    NONEXISTENT = "INEXISTANT"


class DmpFeeding(StrEnum):
    """ZFA-9: the patient, informed, opposes feeding the DMP or not."""

    NOT_OPPOSED = "INO"
    OPPOSED = "IO"


class DmpConsultation(StrEnum):
    """ZFA-11: consent to the DMP being consulted."""

    CONSENTED = "IC"
    REFUSED = "INC"
    NOT_COLLECTED = "NA"


@dataclass(frozen=True, slots=True)
class Ipp:
    """PID-3 with CX-5 = PI. `authority`: CX-4's OID when it has one, else its namespace."""

    value: str
    authority: str

    def key(self) -> PatientKey:
        return PatientKey(IdentifierKind.IPP, self.authority, self.value)


@dataclass(frozen=True, slots=True)
class Ins:
    value: str  # the matricule (15 characters for a NIR)
    oid: str  # one of `INS_OIDS`

    @property
    def kind(self) -> InsKind:
        return INS_OIDS[self.oid]

    def key(self) -> PatientKey:
        return PatientKey(IdentifierKind.INS, self.oid, self.value)


@dataclass(frozen=True, slots=True)
class Identity:
    ipp: Ipp
    ins: Ins | None = None
    status: IdentityStatus | None = None  # the first PID-32 repetition that is a status
    reliability: tuple[str, ...] = ()  # every PID-32 code, as sent (DOUB, HOMO...)

    @property
    def ins_usable(self) -> bool:
        """Documents carry the INS only for a validated identity (PID-32 VALI)."""
        return self.ins is not None and self.status is IdentityStatus.VALI


@dataclass(frozen=True, slots=True)
class PersonName:
    """XPN: family name, first given name (XPN-2), every given name (XPN-3, PAM.FR: the list
    of birth given names)."""

    family: str
    given: str = ""
    given_names: str = ""


@dataclass(frozen=True, slots=True)
class BirthPlace:
    insee_code: str | None = None  # the COG code of the commune (or country, born abroad)
    city: str | None = None


@dataclass(frozen=True, slots=True)
class Traits:
    birth_name: PersonName | None = None  # PID-5 with name type L
    used_name: PersonName | None = None  # PID-5 with name type D
    birth_date: str | None = None  # PID-7
    sex: Sex | None = None  # PID-8
    birth_place: BirthPlace | None = None  # PID-11 type BDL (its county code), else PID-23


@dataclass(frozen=True, slots=True)
class MedecinTraitant:
    """ROL with ROL-3 ODRP (else PD1-4): an XCN."""

    id: str  # XCN-1 as sent
    id_type: str  # XCN-13 (RPPS, IDNPS, ADELI...)
    family: str = ""
    given: str = ""
    rpps: str | None = None  # the RPPS number (11 digits)

    @property
    def national_id(self) -> str | None:
        """The national PS identifier the directory knows: `8` + RPPS."""
        return f"8{self.rpps}" if self.rpps else None


@dataclass(frozen=True, slots=True)
class Unit:
    """A functional unit (UF) of ZBE-7/ZBE-8: an XON."""

    code: str  # XON-10
    name: str = ""  # XON-1


@dataclass(frozen=True, slots=True)
class Movement:
    """A ZBE movement. A cancelled one stays, marked, until the encounter ends."""

    id: str  # ZBE-1.1
    event: str  # the event that made it (ZBE-6 for an update or a cancellation, when given)
    at: str | None = None  # ZBE-2
    medical_unit: Unit | None = None  # ZBE-7: UF de responsabilité médicale
    care_unit: Unit | None = None  # ZBE-8: UF de responsabilité de soins
    action: MovementAction = MovementAction.INSERT
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class Visit:
    """What PV1 says of the encounter."""

    number: str | None = None  # PV1-19.1
    patient_class: str | None = None  # PV1-2 (I, O, E, R, N...)
    admitted_at: str | None = None  # PV1-44
    discharged_at: str | None = None  # PV1-45


@dataclass(frozen=True, slots=True)
class Encounter:
    visit_number: str | None
    patient_class: str | None
    status: EncounterStatus
    admitted_at: str | None = None
    discharged_at: str | None = None
    movements: tuple[Movement, ...] = ()  # in the order received

    @property
    def current_movement(self) -> Movement | None:
        return next((m for m in reversed(self.movements) if not m.cancelled), None)

    @property
    def medical_unit(self) -> Unit | None:
        movement = self.current_movement
        return movement.medical_unit if movement else None

    @property
    def care_unit(self) -> Unit | None:
        movement = self.current_movement
        return movement.care_unit if movement else None


@dataclass(frozen=True, slots=True)
class DmpInfo:
    """ZFA: the DMP status and the patient's choices about it."""

    status: DmpStatus | None = None  # ZFA-1
    status_at: str | None = None  # ZFA-2
    feeding: DmpFeeding | None = None  # ZFA-9
    feeding_at: str | None = None  # ZFA-10
    consultation: DmpConsultation | None = None  # ZFA-11
    consultation_at: str | None = None  # ZFA-12

    @property
    def feeding_allowed(self) -> bool:
        """An active DMP the patient did not oppose feeding."""
        return self.status is DmpStatus.ACTIVE and self.feeding is not DmpFeeding.OPPOSED


@dataclass(frozen=True, slots=True)
class PatientContext:
    identity: Identity
    traits: Traits
    medecin_traitant: MedecinTraitant | None = None
    encounter: Encounter | None = None
    dmp: DmpInfo | None = None
    former_ipps: tuple[Ipp, ...] = ()  # merged into it (A40) or replaced (A47): still find it
    last_event: str = ""

    @property
    def ins_usable(self) -> bool:
        return self.identity.ins_usable

    def to_json(self) -> bytes:
        return _JSON.encode(_context_json(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PatientContext:
        raw = json.loads(data)
        if raw.get("format") != _FORMAT:
            raise ValueError(f"unknown patient context format {raw.get('format')!r}")
        identity, traits = raw["identity"], raw["traits"]
        return cls(
            identity=Identity(
                _ipp(identity["ipp"]),
                _ins(identity.get("ins")),
                enum_or_none(IdentityStatus, identity.get("status")),
                tuple(identity.get("reliability") or ())),
            traits=Traits(
                _name(traits.get("birth_name")),
                _name(traits.get("used_name")),
                traits.get("birth_date"),
                enum_or_none(Sex, traits.get("sex")),
                _birth_place(traits.get("birth_place"))),
            medecin_traitant=_medecin(raw.get("medecin_traitant")),
            encounter=_encounter(raw.get("encounter")),
            dmp=_dmp(raw.get("dmp")),
            former_ipps=tuple(_ipp(i) for i in raw.get("former_ipps") or ()),
            last_event=raw.get("last_event") or "",
        )


# Trigger events and what they do to the encounter.
ADMISSIONS = frozenset({"A01", "A04", "A05"})  # start an encounter (a new one without PV1-19)
_STATUS_AFTER = {
    "A01": EncounterStatus.IN_PROGRESS, "A04": EncounterStatus.IN_PROGRESS,
    "A05": EncounterStatus.PLANNED, "A06": EncounterStatus.IN_PROGRESS,
    "A07": EncounterStatus.IN_PROGRESS, "A02": EncounterStatus.IN_PROGRESS,
    "A03": EncounterStatus.FINISHED, "A21": EncounterStatus.ON_LEAVE,
    "A22": EncounterStatus.IN_PROGRESS, "A11": EncounterStatus.CANCELLED,
    "A38": EncounterStatus.CANCELLED, "A13": EncounterStatus.IN_PROGRESS,
    "A52": EncounterStatus.IN_PROGRESS,  # the leave (A21) did not happen
    "A53": EncounterStatus.ON_LEAVE,  # the return (A22) did not happen
}
CANCELLATIONS = frozenset({"A11", "A12", "A13", "A38", "A52", "A53", "A55"})  # cancel a movement
MERGES = frozenset({"A40", "A47"})  # MRG-1 names the identifier absorbed or replaced


@dataclass(frozen=True, slots=True)
class PatientUpdate:
    """What one ADT message does to its patient: computed from the message alone."""

    event: str  # MSH-9.2
    identity: Identity
    traits: Traits
    event_at: str | None = None  # EVN-6, else EVN-2
    medecin_traitant: MedecinTraitant | None = None
    removes_medecin_traitant: bool = False  # ROL ODRP with ROL-2 = DE
    visit: Visit | None = None  # PV1, when it describes an encounter
    movement: Movement | None = None  # ZBE
    dmp: DmpInfo | None = None  # ZFA
    absorbed: tuple[Ipp, ...] = ()  # MRG-1 of an A40 (merged) or an A47 (replaced)

    @property
    def sections(self) -> tuple[str, ...]:
        """What the message sets, by name (the history records these, never values)."""
        names = ["identity", "traits"]
        if self.medecin_traitant is not None or self.removes_medecin_traitant:
            names.append("medecin_traitant")
        if self.visit is not None or self.movement is not None or self.event in CANCELLATIONS:
            names.append("encounter")
        if self.dmp is not None:
            names.append("dmp")
        if self.absorbed:
            names.append("identifier_change" if self.event == "A47" else "merge")
        return tuple(names)

    def apply(self, current: PatientContext | None) -> PatientContext:
        """The context after this message, from the one before (None: a new patient)."""
        identity, former = self.identity, current.former_ipps if current else ()
        if current is not None and identity.ipp != current.identity.ipp:
            if identity.ipp in former:  # a late message under an IPP merged into this patient
                identity = replace(identity, ipp=current.identity.ipp)
            else:  # merged (A40) or renamed (A47): the IPP it had still finds it
                former = (*former, current.identity.ipp)
        former = (*former, *(i for i in self.absorbed if i not in former and i != identity.ipp))
        if self.removes_medecin_traitant:
            medecin = None
        else:
            medecin = self.medecin_traitant or (current.medecin_traitant if current else None)
        return PatientContext(
            identity=identity, traits=self.traits, medecin_traitant=medecin,
            encounter=self._encounter(current.encounter if current else None),
            dmp=self.dmp or (current.dmp if current else None), former_ipps=former,
            last_event=self.event)

    def change(self) -> PatientChange:
        """What the store needs to apply this update with its inbound row."""
        return PatientChange(
            event=self.event, key=self.identity.ipp.key(), apply=self._apply_json,
            ins=self.identity.ins.key() if self.identity.ins else None,
            absorbed=tuple(ipp.key() for ipp in self.absorbed),
            identifier_change=self.event == "A47", sections=self.sections)

    def _apply_json(self, current: bytes | None) -> bytes:
        context = self.apply(None if current is None else _WRITTEN.read(current))
        data = context.to_json()
        _WRITTEN.wrote(data, context)
        return data

    def _encounter(self, current: Encounter | None) -> Encounter | None:
        visit, event = self.visit, self.event
        if visit is None and self.movement is None and event not in CANCELLATIONS:
            return current
        if visit is not None and visit.number:
            same = current is not None and visit.number == current.visit_number
        else:
            same = current is not None and event not in ADMISSIONS
        if not same:
            if event in CANCELLATIONS:  # cancels what the connector never saw
                return current
            status = _STATUS_AFTER.get(event) or (
                EncounterStatus.FINISHED if visit and visit.discharged_at
                else EncounterStatus.IN_PROGRESS)
            number, patient_class = (visit.number, visit.patient_class) if visit else (None, None)
            admitted_at: str | None = None
            discharged_at: str | None = None
            movements: tuple[Movement, ...] = ()
        else:
            assert current is not None
            status = _STATUS_AFTER.get(event, current.status)
            number, patient_class = current.visit_number, current.patient_class
            if visit is not None and visit.patient_class:
                patient_class = visit.patient_class
            admitted_at, discharged_at = current.admitted_at, current.discharged_at
            movements = current.movements
        at = self.movement.at if self.movement and self.movement.at else self.event_at
        admitted = visit.admitted_at if visit else None
        if admitted or event in ("A01", "A04"):
            admitted_at = admitted or admitted_at or at
        discharged = visit.discharged_at if visit else None
        if event == "A03":
            discharged_at = discharged or at
        elif event == "A13":
            discharged_at = None
        elif discharged:
            discharged_at = discharged
        if self.movement is not None:
            movements = _moved(movements, self.movement)
        return Encounter(number, patient_class, status, admitted_at, discharged_at, movements)


def _moved(movements: tuple[Movement, ...], movement: Movement) -> tuple[Movement, ...]:
    """`movements` after `movement`: a cancellation marks the movement it names, an insert or
    an update replaces the movement with its id (a replayed message changes nothing)."""
    index = next((n for n, m in enumerate(movements) if m.id == movement.id), None)
    if movement.action is MovementAction.CANCEL:
        if index is None:
            return movements
        return (*movements[:index], replace(movements[index], cancelled=True),
                *movements[index + 1:])
    if index is not None:
        return (*movements[:index], movement, *movements[index + 1:])
    return (*movements, movement)[-MAX_MOVEMENTS:]


# -- JSON ---------------------------------------------------------------------------------------


class _WrittenContexts:
    """The contexts this process wrote last, by their JSON: a patient's next message reads back
    the bytes the one before wrote, and takes the context from here instead of decoding them
    again (the decode was a third of the patient change's CPU). Exact: `from_json` of what
    `to_json` writes is the same context (tests/unit/patients/test_context_json.py), and
    bytes another writer left (another replica, an older format) are simply not found here."""

    def __init__(self, size: int) -> None:
        self._contexts: Recent[bytes, PatientContext] = Recent(size)

    def read(self, data: bytes) -> PatientContext:
        context = self._contexts.get(data)
        return context if context is not None else PatientContext.from_json(data)

    def wrote(self, data: bytes, context: PatientContext) -> None:
        self._contexts.put(data, context)


_WRITTEN = _WrittenContexts(1024)


# Written by hand, field by field in declaration order (a generic walk of the dataclasses cost
# three times as much): tests/unit/patients/test_context_json.py checks them against that walk.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


def _context_json(context: PatientContext) -> dict[str, Any]:
    identity, traits, medecin, encounter = (context.identity, context.traits,
                                            context.medecin_traitant, context.encounter)
    ins, dmp = identity.ins, context.dmp
    return {
        "format": _FORMAT,
        "identity": {
            "ipp": _ipp_json(identity.ipp),
            "ins": {"value": ins.value, "oid": ins.oid} if ins is not None else None,
            "status": identity.status, "reliability": list(identity.reliability)},
        "traits": {
            "birth_name": _name_json(traits.birth_name),
            "used_name": _name_json(traits.used_name),
            "birth_date": traits.birth_date, "sex": traits.sex,
            "birth_place": {"insee_code": traits.birth_place.insee_code,
                            "city": traits.birth_place.city} if traits.birth_place else None},
        "medecin_traitant": {
            "id": medecin.id, "id_type": medecin.id_type, "family": medecin.family,
            "given": medecin.given, "rpps": medecin.rpps} if medecin is not None else None,
        "encounter": {
            "visit_number": encounter.visit_number, "patient_class": encounter.patient_class,
            "status": encounter.status, "admitted_at": encounter.admitted_at,
            "discharged_at": encounter.discharged_at,
            "movements": [_movement_json(m) for m in encounter.movements],
        } if encounter is not None else None,
        "dmp": {
            "status": dmp.status, "status_at": dmp.status_at, "feeding": dmp.feeding,
            "feeding_at": dmp.feeding_at, "consultation": dmp.consultation,
            "consultation_at": dmp.consultation_at} if dmp is not None else None,
        "former_ipps": [_ipp_json(ipp) for ipp in context.former_ipps],
        "last_event": context.last_event,
    }


def _ipp_json(ipp: Ipp) -> dict[str, Any]:
    return {"value": ipp.value, "authority": ipp.authority}


def _name_json(name: PersonName | None) -> dict[str, Any] | None:
    if name is None:
        return None
    return {"family": name.family, "given": name.given, "given_names": name.given_names}


def _unit_json(unit: Unit | None) -> dict[str, Any] | None:
    return {"code": unit.code, "name": unit.name} if unit is not None else None


def _movement_json(movement: Movement) -> dict[str, Any]:
    return {"id": movement.id, "event": movement.event, "at": movement.at,
            "medical_unit": _unit_json(movement.medical_unit),
            "care_unit": _unit_json(movement.care_unit), "action": movement.action,
            "cancelled": movement.cancelled}


def enum_or_none(cls: type[E], value: object) -> E | None:
    """The member of `cls` with this value; None for anything else (unknown codes included)."""
    if not isinstance(value, str) or not value:
        return None
    return _members(cls).get(value)


@cache
def _members(cls: type[E]) -> dict[str, E]:
    """`cls`'s members by value: a lookup that costs no exception when the value is unknown."""
    return {member.value: member for member in cls}


# Read back by hand too: keys a class does not have are ignored, a missing key takes the field's
# default (a field without a default cannot be missing: KeyError, the context is unreadable).


def _ipp(raw: dict[str, Any]) -> Ipp:
    return Ipp(raw["value"], raw["authority"])


def _ins(raw: dict[str, Any] | None) -> Ins | None:
    if raw is None:
        return None
    ins = Ins(raw["value"], raw["oid"])
    return ins if ins.oid in INS_OIDS else None


def _name(raw: dict[str, Any] | None) -> PersonName | None:
    if raw is None:
        return None
    return PersonName(raw["family"], raw.get("given", ""), raw.get("given_names", ""))


def _birth_place(raw: dict[str, Any] | None) -> BirthPlace | None:
    return BirthPlace(raw.get("insee_code"), raw.get("city")) if raw is not None else None


def _medecin(raw: dict[str, Any] | None) -> MedecinTraitant | None:
    if raw is None:
        return None
    return MedecinTraitant(raw["id"], raw["id_type"], raw.get("family", ""),
                           raw.get("given", ""), raw.get("rpps"))


def _dmp(raw: dict[str, Any] | None) -> DmpInfo | None:
    if raw is None:
        return None
    return DmpInfo(enum_or_none(DmpStatus, raw.get("status")), raw.get("status_at"),
                   enum_or_none(DmpFeeding, raw.get("feeding")), raw.get("feeding_at"),
                   enum_or_none(DmpConsultation, raw.get("consultation")),
                   raw.get("consultation_at"))


def _unit(raw: dict[str, Any] | None) -> Unit | None:
    return Unit(raw["code"], raw.get("name", "")) if raw is not None else None


def _encounter(raw: dict[str, Any] | None) -> Encounter | None:
    if raw is None:
        return None
    movements = tuple(
        Movement(m["id"], m["event"], m.get("at"), _unit(m.get("medical_unit")),
                 _unit(m.get("care_unit")),
                 enum_or_none(MovementAction, m.get("action")) or MovementAction.INSERT,
                 bool(m.get("cancelled")))
        for m in raw.get("movements") or ())
    status = enum_or_none(EncounterStatus, raw.get("status")) or EncounterStatus.IN_PROGRESS
    return Encounter(raw.get("visit_number"), raw.get("patient_class"), status,
                     raw.get("admitted_at"), raw.get("discharged_at"), movements)
