"""What the store knows that a legacy message needs: the ADT patient context (`PatientTraits`)
and, for a mapping that links an order's reports, the order's latest report (`ReportVersion`).

Legacy messages carry a PID, often incomplete; the ADT context (the same IPP) completes it: birth
traits, INS and identity status, birth place, médecin traitant. The INS reaches the document only
when the context (or PID-32) says VALI and the traits are complete (see `legacy.flow`).

A withdrawn result (a cancelled one, `results.corrected: replace`) sends the report it
withdraws again, as a deletion: its CDA is read back, byte for byte, from the IHE_XDM archive of
a mail that carried it, while the payload retention keeps that mail."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import TYPE_CHECKING, Protocol

from connector.cda.header import InstanceId
from connector.cisis.parse import is_oid
from connector.delivery.job import MailJob
from connector.errors import ConnectorError, PayloadUnreadable
from connector.hl7.message import Message
from connector.legacy.flow import PatientTraits, ReportVersion
from connector.patients import PatientContext, load_patient
from connector.xdm.archive import read_xdm_documents

if TYPE_CHECKING:
    from connector.store import DocumentVersion, OutboxDetail, OutboxSummary, PatientStore


class ReportStore(Protocol):
    """The store, as a legacy report's versions need it."""

    async def latest_version(self, tenant_id: str, set_id: str) -> DocumentVersion | None: ...

    async def list_outbox(self, *, inbound_id: int | None = None, limit: int = 100
                          ) -> list[OutboxSummary]: ...

    async def get_outbox(self, row_id: int) -> OutboxDetail | None: ...


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


async def latest_report(store: ReportStore, tenant_id: str, set_id: InstanceId, *,
                        with_document: bool = False) -> ReportVersion | None:
    """The order's latest report (the set's current version), if the store knows one; with its
    CDA when `with_document` and a mail that carried it still holds its payload."""
    key = f"{set_id.root}^{set_id.extension}" if set_id.extension else set_id.root
    latest = await store.latest_version(tenant_id, key)
    if latest is None or latest.version is None:
        return None
    root, _, extension = latest.document_id.partition("^")
    cda = await sent_document(store, latest.inbound_id) if with_document else None
    return ReportVersion(InstanceId(root, extension or None), set_id, latest.version, cda)


async def sent_document(store: ReportStore, inbound_id: int) -> bytes | None:
    """The first CDA of the first mail of request `inbound_id` whose payload is still held."""
    for row in await store.list_outbox(inbound_id=inbound_id, limit=1000):
        try:
            detail = await store.get_outbox(row.id)
        except PayloadUnreadable:  # a damaged record, a key no longer configured: the next
            continue
        if detail is None or detail.purged_at is not None or not detail.payload:
            continue
        try:
            mail = message_from_bytes(MailJob.decode(detail.payload).message,
                                      policy=policy.default)
        except ConnectorError:  # a ZAM (an HL7 row): not a mail
            continue
        assert isinstance(mail, EmailMessage)
        for part in mail.iter_attachments():
            if (part.get_filename() or "").upper() != "IHE_XDM.ZIP":
                continue
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                try:
                    return read_xdm_documents(payload)[0]
                except ValueError:
                    continue
    return None
