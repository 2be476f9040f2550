"""The patient context learnt from ADT (IHE PAM France 2.11): `plan_adt` reads what a message
does (pure), the store applies it with the inbound row, `load_patient` reads a context back."""

from __future__ import annotations

from connector.patients.adt import plan_adt
from connector.patients.model import (
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
    PatientUpdate,
    PersonName,
    Sex,
    Traits,
    Unit,
    Visit,
)
from connector.store import PatientStore

__all__ = [
    "BirthPlace",
    "DmpConsultation",
    "DmpFeeding",
    "DmpInfo",
    "DmpStatus",
    "Encounter",
    "EncounterStatus",
    "Identity",
    "IdentityStatus",
    "Ins",
    "Ipp",
    "MedecinTraitant",
    "Movement",
    "MovementAction",
    "PatientContext",
    "PatientUpdate",
    "PersonName",
    "Sex",
    "Traits",
    "Unit",
    "Visit",
    "load_patient",
    "plan_adt",
]


async def load_patient(store: PatientStore, tenant_id: str, *, ipp: str | None = None,
                       authority: str | None = None, ins: str | None = None
                       ) -> PatientContext | None:
    """The context of the patient an IPP (under `authority` when given) or an INS finds,
    following merges and identifier changes; None when the connector never heard of it."""
    stored = await store.get_patient(tenant_id, ipp=ipp, authority=authority, ins=ins)
    return PatientContext.from_json(stored.context) if stored is not None else None
