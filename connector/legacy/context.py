"""The ADT patient context, as a legacy document needs it (`PatientTraits`).

Legacy messages carry a PID, often incomplete; the ADT context (the same IPP) completes it: birth
traits, INS and identity status, birth place, médecin traitant. The INS reaches the document only
when the context (or PID-32) says VALI and the traits are complete (see `legacy.flow`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector.cisis.parse import is_oid
from connector.hl7.message import Message
from connector.legacy.flow import PatientTraits
from connector.patients import PatientContext, load_patient

if TYPE_CHECKING:
    from connector.store import PatientStore


def patient_ipp(message: Message) -> tuple[str, str | None] | None:
    """PID-3's IPP (CX-5 `PI`) and its authority (CX-4.2 when it is an OID, else CX-4.1)."""
    pid = message.first("PID")
    if pid is None:
        return None
    for rep in range(1, len(pid.repetitions(3)) + 1):
        if pid.component(3, 5, repetition=rep) == "PI":
            value = pid.component(3, 1, repetition=rep)
            oid = pid.component(3, 4, 2, repetition=rep)
            # As the ADT context keys it: CX-4's OID when it is one, else its namespace.
            authority = (oid if is_oid(oid) else
                         pid.component(3, 4, 1, repetition=rep)) or None
            return (value, authority) if value else None
    return None


def traits_of(context: PatientContext) -> PatientTraits:
    traits, identity = context.traits, context.identity
    birth = traits.birth_name
    return PatientTraits(
        birth_family=birth.family if birth else None,
        used_family=traits.used_name.family if traits.used_name else None,
        given=birth.given or None if birth else None,
        given_names=birth.given_names or None if birth else None,
        birth_time=traits.birth_date[:8] if traits.birth_date else None,
        gender=traits.sex.value if traits.sex else None,
        birth_place_code=traits.birth_place.insee_code if traits.birth_place else None,
        ins=identity.ins.value if identity.ins else None,
        ins_oid=identity.ins.oid if identity.ins else None,
        identity_status=identity.status.value if identity.status else None,
        medecin_traitant=(context.medecin_traitant.national_id
                          if context.medecin_traitant else None))


async def context_traits(store: PatientStore, tenant_id: str, message: Message
                         ) -> PatientTraits | None:
    """The traits the tenant's ADT context knows for the message's IPP, if any."""
    found = patient_ipp(message)
    if found is None:
        return None
    ipp, authority = found
    context = await load_patient(store, tenant_id, ipp=ipp, authority=authority)
    return traits_of(context) if context is not None else None
