"""A checked CI-SIS request becomes outbox rows: its mails (`pipeline.mails`), each sealed with
its envelope (`delivery.job`), ready to be stored with the inbound message in one transaction.

Each request gets a fresh random request key (the Message-IDs hash it: unguessable, and distinct
for two requests with the same MSH-10) and each mail a random DSN envelope id (ENVID), which
comes back in the operator's delivery reports as Original-Envelope-Id and finds its row.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from connector.cisis.model import DocumentRequest
from connector.delivery.job import MailJob
from connector.pipeline.mails import MailContext, OutgoingMail, build_mails
from connector.settings import TenantSettings
from connector.store import OutboxItem, OutboxKind


def _now() -> datetime:
    return datetime.now().astimezone()


@dataclass(frozen=True, slots=True)
class MailPlanner:
    """Builds one tenant's outbox rows. Construction checks the tenant can send (its mailbox
    address and OID): `ConfigError` at start-up rather than an AE per message."""

    tenant: TenantSettings
    clock: Callable[[], datetime] = _now

    def __post_init__(self) -> None:
        MailContext.for_tenant(self.tenant, request_key="check", submitted_at=self.clock())

    def mails(self, request: DocumentRequest) -> tuple[OutgoingMail, ...]:
        """The mails of `request` (`MessageError` when they cannot be built: answered AE)."""
        context = MailContext.for_tenant(self.tenant, request_key=uuid.uuid4().hex,
                                         submitted_at=self.clock())
        return build_mails(request, context)

    def outbox_items(self, request: DocumentRequest) -> tuple[OutboxItem, ...]:
        metadata = request.metadata
        sender = self.tenant.mailbox.address
        return tuple(
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
            for mail in self.mails(request))
