"""An ADT message (IHE PAM France 2.11) read into a `PatientUpdate`: pure, before anything is
stored.

What is read:

* PID-3: the IPP (CX-5 = PI; its authority is CX-4's OID, else its namespace) and the INS (an
  INS OID in CX-4.2); PID-32: the identity status (first repetition that is one) and every code;
* PID-5: the birth name (XPN-7 = L; an untyped name when there is none) and the used name (D);
  PID-7, PID-8; the birth place from PID-11 with XAD-7 = BDL (XAD-9: INSEE code, XAD-3: city),
  else PID-23 (an INSEE-shaped value is taken as the code);
* the médecin traitant: ROL with ROL-3 = ODRP (ROL-2 = DE removes it), else PD1-4; the RPPS from
  XCN-1 when XCN-13 is RPPS or IDNPS (`8` + RPPS) or XCN-9 is the national PS OID;
* PV1-2, PV1-19, PV1-44, PV1-45 (a PV1 with neither a visit number nor a class other than N,
  as in A28/A31/A40/A47, describes no encounter); ZBE-1/2/4/6/7/8 (the movement); ZFA-1/2/9-12
  (the DMP status and the patient's choices: the positions 9 to 12 are read as in the ANS
  consent examples);
* A40/A47: MRG-1's IPP (merged into PID-3's patient, or replaced by PID-3's IPP).

A missing PID, a PID-3 without an IPP, an A40/A47 without an MRG-1 IPP, and an A40 about several
patients are `ProfileError`s (AE) located at the field. Messages name fields, never values.
"""

from __future__ import annotations

import re
from typing import Final

from connector.cisis.model import PatientIdentifier, PersonRef
from connector.cisis.parse import read_identifiers, read_xcn
from connector.errors import ErrorLocation, ProfileError
from connector.hl7.codes import ErrorCondition
from connector.hl7.header import MessageHeader
from connector.hl7.message import Delimiters, Message, Segment
from connector.patients.model import (
    CANCELLATIONS,
    MERGES,
    BirthPlace,
    DmpConsultation,
    DmpFeeding,
    DmpInfo,
    DmpStatus,
    Identity,
    IdentityStatus,
    Ins,
    Ipp,
    MedecinTraitant,
    Movement,
    MovementAction,
    PatientUpdate,
    PersonName,
    Sex,
    Traits,
    Unit,
    Visit,
    enum_or_none,
)
from connector.recent import Recent

PS_NATIONAL_ID_OID: Final = "1.2.250.1.71.4.2.1"  # ASIP-SANTE-PS: RPPS / IDNPS
MEDECIN_TRAITANT_ROLE: Final = "ODRP"
_RPPS: Final = re.compile(r"8?([0-9]{11})")
_INSEE: Final = re.compile(r"[0-9][0-9AB][0-9]{3}")


def plan_adt(message: Message, header: MessageHeader) -> PatientUpdate:
    """What `message` (routed to the ADT flow) does to its patient."""
    event = header.message_type.event
    pids = message.all("PID")
    if not pids:
        raise ProfileError(f"ADT^{event} has no PID segment",
                           condition=ErrorCondition.SEGMENT_SEQUENCE_ERROR,
                           location=ErrorLocation("PID", 1))
    pid = pids[0]
    identity, traits = _patient(pid)
    for sequence, other in enumerate(pids[1:], start=2):
        if _ipp(read_identifiers(other, 3)) != identity.ipp:
            raise ProfileError(f"ADT^{event} names several patients: one per message is taken",
                               condition=ErrorCondition.NON_CONFORMANT_CARDINALITY,
                               location=ErrorLocation("PID", sequence, 3))
    medecin, removed = _medecin_traitant(message)
    evn = message.first("EVN")
    return PatientUpdate(
        event=event, identity=identity, traits=traits,
        event_at=(evn.component(6, 1) or evn.component(2, 1) or None) if evn else None,
        medecin_traitant=medecin, removes_medecin_traitant=removed, visit=_visit(message),
        movement=_movement(message, event), dmp=_dmp(message),
        absorbed=_absorbed(message, event, identity.ipp) if event in MERGES else ())


def _ipp(identifiers: tuple[PatientIdentifier, ...]) -> Ipp | None:
    found = next((i for i in identifiers if i.is_ipp), None)
    return Ipp(found.value, found.oid or found.namespace) if found else None


def _patient(pid: Segment) -> tuple[Identity, Traits]:
    """PID read into the patient's identity and traits: a pure function of the segment, whose
    text comes back unchanged in most of a stay's messages (A01, A02, A08, A03...), so the
    last ones read are kept (`_PIDS`): a repeated PID costs a lookup instead of some forty
    component reads."""
    key = (pid.fields, pid.delimiters)
    known = _PIDS.get(key)
    if known is None:
        known = (_identity(pid), _traits(pid))
        _PIDS.put(key, known)
    return known


_PIDS: Recent[tuple[tuple[str, ...], Delimiters], tuple[Identity, Traits]] = Recent(1024)


def _identity(pid: Segment) -> Identity:
    identifiers = read_identifiers(pid, 3)
    ipp = _ipp(identifiers)
    if ipp is None:
        raise ProfileError("PID-3 has no IPP (an identifier with CX-5 = PI)",
                           location=ErrorLocation("PID", 1, 3))
    ins = next((Ins(i.value, i.oid) for i in identifiers if i.is_ins and i.oid), None)
    codes = tuple(code for cwe in pid.composites(32) if (code := cwe.component(1).upper()))
    status = next((s for code in codes if (s := enum_or_none(IdentityStatus, code))), None)
    return Identity(ipp, ins, status, codes)


def _traits(pid: Segment) -> Traits:
    names: dict[str, PersonName] = {}
    for xpn in pid.composites(5):
        name = PersonName(xpn.component(1, 1), xpn.component(2), xpn.component(3))
        if name.family or name.given:
            names.setdefault(xpn.component(7).upper(), name)
    return Traits(birth_name=names.get("L") or names.get(""), used_name=names.get("D"),
                  birth_date=pid.component(7, 1) or None,
                  sex=enum_or_none(Sex, pid.value(8).upper()), birth_place=_birth_place(pid))


def _birth_place(pid: Segment) -> BirthPlace | None:
    for xad in pid.composites(11):
        if xad.component(7).upper() == "BDL":
            code, city = xad.component(9), xad.component(3)
            if code or city:
                return BirthPlace(code or None, city or None)
    place = pid.value(23)
    if not place:
        return None
    return BirthPlace(insee_code=place) if _INSEE.fullmatch(place) else BirthPlace(city=place)


def _medecin_traitant(message: Message) -> tuple[MedecinTraitant | None, bool]:
    """The médecin traitant the message gives, and whether it removes the one known."""
    for rol in message.all("ROL"):
        if rol.component(3, 1).upper() != MEDECIN_TRAITANT_ROLE:
            continue
        if rol.value(2).upper() == "DE":
            return None, True
        person = read_xcn(rol, 4)
        if person is not None:
            return _doctor(person), False
    pd1 = message.first("PD1")
    person = read_xcn(pd1, 4) if pd1 is not None else None
    return (_doctor(person) if person is not None else None), False


def _doctor(person: PersonRef) -> MedecinTraitant:
    match = _RPPS.fullmatch(person.id)
    national = person.id_type in ("RPPS", "IDNPS") or person.authority_oid == PS_NATIONAL_ID_OID
    return MedecinTraitant(person.id, person.id_type, person.family_name, person.given_name,
                           match.group(1) if match and national else None)


def _visit(message: Message) -> Visit | None:
    pv1 = message.first("PV1")
    if pv1 is None:
        return None
    number, patient_class = pv1.value(19), pv1.value(2).upper()
    if not number and patient_class in ("", "N"):
        return None
    return Visit(number or None, patient_class or None, pv1.component(44, 1) or None,
                 pv1.component(45, 1) or None)


def _movement(message: Message, event: str) -> Movement | None:
    zbe = message.first("ZBE")
    if zbe is None or not zbe.value(1):
        return None
    action = enum_or_none(MovementAction, zbe.value(4).upper()) or (
        MovementAction.CANCEL if event in CANCELLATIONS else MovementAction.INSERT)
    original = zbe.value(6).upper() if action is not MovementAction.INSERT else ""
    return Movement(zbe.value(1), original or event, zbe.component(2, 1) or None,
                    _unit(zbe, 7), _unit(zbe, 8), action)


def _unit(segment: Segment, position: int) -> Unit | None:
    unit = segment.composite(position)
    code, name = unit.component(10), unit.component(1)
    return Unit(code, name) if code or name else None


def _dmp(message: Message) -> DmpInfo | None:
    zfa = message.first("ZFA")
    if zfa is None:
        return None
    return DmpInfo(
        status=enum_or_none(DmpStatus, zfa.value(1).upper()),
        status_at=zfa.component(2, 1) or None,
        feeding=enum_or_none(DmpFeeding, zfa.value(9).upper()),
        feeding_at=zfa.component(10, 1) or None,
        consultation=enum_or_none(DmpConsultation, zfa.value(11).upper()),
        consultation_at=zfa.component(12, 1) or None)


def _absorbed(message: Message, event: str, survivor: Ipp) -> tuple[Ipp, ...]:
    mrgs = message.all("MRG")
    if not mrgs:
        raise ProfileError(f"ADT^{event} has no MRG segment",
                           condition=ErrorCondition.SEGMENT_SEQUENCE_ERROR,
                           location=ErrorLocation("MRG", 1))
    absorbed: list[Ipp] = []
    for sequence, mrg in enumerate(mrgs, start=1):
        ipp = _ipp(read_identifiers(mrg, 1))
        if ipp is None:
            raise ProfileError("MRG-1 has no IPP (an identifier with CX-5 = PI)",
                               location=ErrorLocation("MRG", sequence, 1))
        if ipp != survivor and ipp not in absorbed:
            absorbed.append(ipp)
    return tuple(absorbed)
