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

import structlog

from connector.cda.header import InstanceId
from connector.cisis.parse import is_oid
from connector.delivery.job import MailJob
from connector.errors import ConnectorError, PayloadUnreadable
from connector.hl7.message import Message
from connector.legacy.flow import PatientTraits, ReportVersion
from connector.patients import PatientContext, load_patient
from connector.store.model import DocumentStatus, OutboxKind
from connector.xdm.archive import read_xdm_documents

if TYPE_CHECKING:
    from connector.store import DocumentVersion, OutboxDetail, OutboxSummary, PatientStore


log = structlog.get_logger(__name__)

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
    """The order's latest report (the set's highest version: current, or withdrawn), if the
    store knows one; with `with_document`, the CDA and the recipients of its mails while the
    payload retention keeps them all."""
    latest = await store.latest_version(tenant_id, set_id.key)
    if latest is None or latest.version is None:
        return None
    withdrawn = latest.status is DocumentStatus.DELETED
    sent = (await sent_report(store, latest.inbound_id)
            if with_document and not withdrawn else None)
    return ReportVersion(InstanceId.from_key(latest.document_id), set_id, latest.version,
                         sent[0] if sent else None, sent[1] if sent else (), withdrawn)


async def sent_report(store: ReportStore, inbound_id: int
                      ) -> tuple[bytes, tuple[str, ...]] | None:
    """The CDA that request `inbound_id` sent (read back from one of its mails' IHE_XDM
    archive) and every address its mails went to; None when a mail of it can no longer be read
    (its payload purged or unreadable): a withdrawal must reach all of them, or none."""
    cda: bytes | None = None
    recipients: list[str] = []
    for row in await store.list_outbox(inbound_id=inbound_id, limit=1000):
        if row.kind is not OutboxKind.SMTP:  # a ZAM to the HIS
            continue
        try:
            detail = await store.get_outbox(row.id)
            if detail is None or detail.purged_at is not None or not detail.payload:
                raise PayloadUnreadable("purged")
            job = MailJob.decode(detail.payload)
        except ConnectorError as exc:
            log.warning("report_mail_unreadable", outbox_id=row.id, error=type(exc).__name__)
            return None
        recipients.append(job.rcpt_to)
        if cda is None:
            cda = _first_document(job.message)
    if cda is None or not recipients:
        return None
    return cda, tuple(dict.fromkeys(recipients))


def _first_document(message: bytes) -> bytes | None:
    mail = message_from_bytes(message, policy=policy.default)
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
