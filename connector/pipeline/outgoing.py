"""A checked CI-SIS request becomes outbox rows: its mails (`pipeline.mails`), each sealed with
its envelope (`delivery.job`), ready to be stored with the inbound message in one transaction.

Each request gets a fresh random request key (the Message-IDs hash it: unguessable, and distinct
for two requests with the same MSH-10; the store keeps it, sealed, with the inbound row) and
each mail a random DSN envelope id (ENVID), which comes back in the operator's delivery reports
as Original-Envelope-Id and finds its row. A replacement's or a deletion's mails refer to the
mails of the requests that carried the documents they act on (`follow_up`): the same recipient's
Message-ID among those stored with those requests, found by the part their key decides.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final

import structlog

from connector.cda.policy import MissingPdfPolicy
from connector.cisis.model import DocumentRequest, RecipientKind
from connector.delivery.job import MailJob
from connector.errors import ErrorLocation, MessageError, PdfRequiredError
from connector.hl7.ack import AckError
from connector.hl7.codes import ApplicationError, ErrorCondition, Severity
from connector.mail.compose import message_id_local_part, with_references
from connector.pipeline.mails import MailContext, MissingPdf, OutgoingMail, build_mails
from connector.settings import TenantSettings
from connector.store import OutboxItem, OutboxKind, SentRequest

log = structlog.get_logger(__name__)


def _now() -> datetime:
    return datetime.now().astimezone()


@dataclass(frozen=True, slots=True)
class PlannedMails:
    items: tuple[OutboxItem, ...]  # one SMTP row per mail
    documents_without_pdf: tuple[int, ...]  # OBX sequences of CDAs sent without their PDF
    # (`missing_pdf = "send"`)
    warnings: tuple[AckError, ...] = ()  # W for the ACK: mails withheld (`partial_sending`)


@dataclass(frozen=True, slots=True)
class MailPlanner:
    """Builds one tenant's outbox rows. Construction checks the tenant can send (its mailbox
    address and OID): `ConfigError` at start-up rather than an AE per message."""

    tenant: TenantSettings
    clock: Callable[[], datetime] = _now

    def __post_init__(self) -> None:
        MailContext.for_tenant(self.tenant, request_key="check", submitted_at=self.clock())

    def mails(self, request: DocumentRequest, request_key: str | None = None
              ) -> tuple[OutgoingMail, ...]:
        """The mails of `request` (`MessageError` when they cannot be built: answered AE);
        `request_key`: the one its Message-IDs hash (`new_request_key`), else a fresh one."""
        context = MailContext.for_tenant(self.tenant,
                                         request_key=request_key or new_request_key(),
                                         submitted_at=self.clock())
        return build_mails(request, context)

    def plan(self, request: DocumentRequest, request_key: str | None = None) -> PlannedMails:
        """The outbox rows of `request`'s mails, and the CDAs they carry without a PDF.

        A CDA without a PDF (none embedded, none could be rendered) is what the tenant's
        `[tenants.cisis] missing_pdf` says: `PdfRequiredError` (refuse, the default: ECO.2.1.1
        asks the PDF/A-1 of every document), or the mails go without it, with a warning."""
        metadata = request.metadata
        sender = self.tenant.mailbox.address
        mails = self.mails(request, request_key)
        without_pdf = missing_pdf_policy(self.tenant, mails)
        mails, warnings = patient_mailbox_limit(self.tenant, mails)
        return PlannedMails(tuple(
            OutboxItem(
                tenant_id=self.tenant.id,
                kind=OutboxKind.SMTP,
                payload=MailJob.of(sender, str(mail.recipient), mail.content,
                                   request_dsn=metadata.ack_reception,
                                   request_mdn=metadata.ack_lecture_mss).encode(),
                message_id=mail.message_id,
                envid=uuid.uuid4().hex,
                recipient_domain=mail.recipient.domain,
            )
            for mail in mails), without_pdf, warnings)


# Mon espace santé bounces a mail over 25 MB in all (ENS MES v1.3 §6, in the transport
# reference): counted in bytes as sent, decimal megabytes, so as to stay under it either way.
PATIENT_MAILBOX_MAX_BYTES: Final = 25_000_000


def patient_mailbox_limit(tenant: TenantSettings, mails: Sequence[OutgoingMail]
                          ) -> tuple[tuple[OutgoingMail, ...], tuple[AckError, ...]]:
    """A mail to the patient's mailbox over `PATIENT_MAILBOX_MAX_BYTES` would come back as a
    bounce after the AA: refused before, AE at its PRT-15, or, for a tenant with
    `partial_sending`, withheld with a W while the other mails go. The mails kept, and the
    warnings."""
    over = [m for m in mails if m.kind is RecipientKind.PATIENT
            and len(m.content) > PATIENT_MAILBOX_MAX_BYTES]
    if not over:
        return tuple(mails), ()
    kept = tuple(m for m in mails if not any(m is o for o in over))  # by identity: no bytes

    def said(mail: OutgoingMail) -> tuple[str, ErrorLocation]:
        return (f"PRT {mail.prt_sequence}: the mail to the patient's mailbox (Mon espace santé) "
                f"would be {len(mail.content)} bytes, over its limit of "
                f"{PATIENT_MAILBOX_MAX_BYTES}", ErrorLocation("PRT", mail.prt_sequence, 15))

    if not tenant.cisis.partial_sending or not kept:
        detail, location = said(over[0])
        raise MessageError(detail, condition=ErrorCondition.APPLICATION_ERROR,
                           location=location, application_error=ApplicationError.OTHER)
    warnings = []
    for mail in over:
        detail, location = said(mail)
        warnings.append(AckError(ErrorCondition.APPLICATION_ERROR, Severity.WARNING, location,
                                 None, f"not sent: {detail}"))
    return kept, tuple(warnings)


def missing_pdf_policy(tenant: TenantSettings, mails: Sequence[OutgoingMail]) -> tuple[int, ...]:
    """`tenant`'s `missing_pdf` applied to a request's `mails`: `PdfRequiredError` when a CDA
    has no PDF and the tenant refuses such requests, else the OBX sequences of the CDAs they
    carry without one (warned)."""
    missing = mails[0].missing_pdfs if mails else ()  # the same for every mail of a request
    if not missing:
        return ()
    problems = list(dict.fromkeys(m.problem for m in missing))
    obx = [m.obx_sequence for m in missing]
    if tenant.cisis.missing_pdf is MissingPdfPolicy.REFUSE:
        log.warning("pdf_required", obx=obx, problems=problems)
        raise _pdf_required(missing)
    log.warning("mail_without_pdf", obx=obx, problems=problems)  # the CDA is in the archive
    return tuple(obx)


def _pdf_required(missing: Sequence[MissingPdf]) -> PdfRequiredError:
    """The refusal of a request whose `missing` PDFs ECO.2.1.1 requires, located on the first
    such CDA's OBX-5."""
    unavailable = any(m.renderer_unavailable for m in missing)
    first = next(m for m in missing if m.renderer_unavailable or not unavailable)
    if unavailable:
        detail = (f"ECO.2.1.1: the PDF/A-1 of the CDA in OBX {first.obx_sequence} cannot be "
                  f"rendered on this host ({first.problem}); send the message again later")
    else:
        detail = (f"ECO.2.1.1: the CDA in OBX {first.obx_sequence} embeds no PDF and its PDF/A-1 "
                  f"could not be rendered ({first.problem})")
    return PdfRequiredError(detail, retry_later=unavailable,
                            location=ErrorLocation("OBX", first.obx_sequence, 5))


def new_request_key() -> str:
    return uuid.uuid4().hex


def follow_up(items: Sequence[OutboxItem], earlier: Sequence[SentRequest]
              ) -> tuple[OutboxItem, ...]:
    """`items` with each mail referring (In-Reply-To, References) to the mails that the
    `earlier` requests (those that carried the documents it replaces or deletes, in order)
    sent to the same recipient: their Message-IDs as stored, found by the part the request key
    and the recipient decide (the sender's address may have changed since). A recipient the
    earlier requests did not write to gets no reference; other rows are returned as they are."""
    by_local_part = [{mid[1:].partition("@")[0]: mid for mid in request.message_ids}
                     for request in earlier]
    followed: list[OutboxItem] = []
    for item in items:
        if item.kind is not OutboxKind.SMTP:
            followed.append(item)
            continue
        job = MailJob.decode(item.payload)
        found = (stored.get(message_id_local_part(request.mail_key, job.rcpt_to))
                 for request, stored in zip(earlier, by_local_part, strict=True))
        ids = list(dict.fromkeys(mid for mid in found if mid is not None))
        if not ids:
            followed.append(item)
            continue
        message = with_references(job.message, ids)
        followed.append(replace(item, payload=MailJob.of(
            job.mail_from, job.rcpt_to, message, request_dsn=job.request_dsn,
            request_mdn=job.request_mdn).encode()))
    return tuple(followed)
