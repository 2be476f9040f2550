"""Settings → a tenant's receipts poller, its ZAM return worker and the follow-up of refusals."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from connector.delivery.factory import (
    client_certificate,
    rekeyed,
    retry_policy,
    warn_about_revocation,
)
from connector.delivery.job import MailJob
from connector.delivery.smtp import SendResult
from connector.delivery.tls import (
    ClientTls,
    ClientTlsSettings,
    PemClientCertificate,
    build_client_tls,
)
from connector.delivery.worker import DeliveryLimits, FollowUp, TenantDelivery
from connector.errors import ConfigError
from connector.hl7.ack import ControlIdGenerator
from connector.hl7.codes import SmtpErrorCode
from connector.observability.metrics import ConnectorMetrics
from connector.receipts.his import HisEndpoint, HisTransport
from connector.receipts.imap import ImapEndpoint, ImapMailbox, ImapTlsMode
from connector.receipts.plan import ReceiptPlanner, SentMail, ZamIdentity
from connector.receipts.poller import PollerSettings, ReceiptPoller
from connector.settings import HisSettings, ReceiptsSettings, TenantSettings
from connector.store import OutboxItem, OutboxLease

if TYPE_CHECKING:
    from connector.receipts.poller import Store


@dataclass(frozen=True, slots=True)
class TenantReceipts:
    planner: ReceiptPlanner
    poller: ReceiptPoller | None
    returns: TenantDelivery | None
    follow_up: FollowUp
    imap_tls: ClientTls | None = None  # the application mailbox's TLS (certificate, CRLs)


def _process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _imap_tls(tenant: TenantSettings, receipts: ReceiptsSettings) -> ClientTls:
    smtp = tenant.transport.smtp
    ca_bundle = receipts.ca_bundle or (smtp.ca_bundle if smtp else None)
    if ca_bundle is None:
        raise ConfigError("tls.ca_bundle", "is required (the operator's IGC-Santé roots), here "
                                           "or in [tenants.transport]")
    client = client_certificate(receipts) or (client_certificate(smtp) if smtp else None)
    return build_client_tls(ClientTlsSettings(ca_bundle, client, crls=tenant.imap_crl_files))


def _owner(exc: ConfigError, tenant: TenantSettings, receipts: ReceiptsSettings) -> str:
    """The table that set what `exc` (keyed `tls.*`) is about: [tenants.transport] when
    [tenants.receipts] took that setting from it, else [tenants.receipts] (its own value, or
    none anywhere: it is the one that needs it)."""
    key = exc.key.partition(".")[2]
    smtp = tenant.transport.smtp
    if smtp is None:
        return "receipts"
    inherited = (receipts.ca_bundle is None and smtp.ca_bundle is not None
                 if key == "ca_bundle"
                 else receipts.crl_files is None and bool(smtp.crl_files)
                 if key == "crl_files"
                 else client_certificate(receipts) is None and client_certificate(smtp) is not None
                 if key.startswith("client_")
                 else False)
    return "transport" if inherited else "receipts"


def _his_transport(his: HisSettings, metrics: ConnectorMetrics | None) -> HisTransport:
    context = None
    if his.ca_bundle is not None:
        client = (PemClientCertificate(his.client_certificate, his.client_private_key)
                  if his.client_certificate and his.client_private_key else None)
        context = build_client_tls(ClientTlsSettings(his.ca_bundle, client)).context
    return HisTransport(HisEndpoint(his.host, his.port, his.timeout_seconds), context,
                        _process(), metrics)


def build_receipts(tenant: TenantSettings, store: Store, *, prefix: str, source: str | None,
                   control_ids: ControlIdGenerator, metrics: ConnectorMetrics | None = None
                   ) -> TenantReceipts:
    planner = ReceiptPlanner(ZamIdentity(tenant.application, tenant.facility), control_ids,
                             actor=f"{_process()} receipts", emit_zams=tenant.his is not None)
    returns = None
    if tenant.his is not None:
        try:
            transport = _his_transport(tenant.his, metrics)
        except ConfigError as exc:
            raise rekeyed(exc, prefix, source, "his") from exc
        returns = TenantDelivery(
            tenant.id, store, transport, metrics=metrics, retry=retry_policy(tenant.delivery),
            limits=DeliveryLimits(concurrency=1, batch_size=tenant.delivery.batch_size,
                                  lease_seconds=tenant.delivery.lease_seconds,
                                  poll_seconds=tenant.delivery.poll_seconds))
    poller = None
    imap_tls = None
    settings = tenant.receipts
    if settings is not None:
        try:
            tls = _imap_tls(tenant, settings)
        except ConfigError as exc:
            raise rekeyed(exc, prefix, source, _owner(exc, tenant, settings)) from exc
        warn_about_revocation(tenant.id, "imap", tls)
        imap_tls = tls
        endpoint = ImapEndpoint(
            settings.host, settings.port, ImapTlsMode(settings.tls.value), settings.username,
            settings.password, settings.mailbox, settings.processed_folder,
            settings.unmatched_folder, settings.timeout_seconds)
        wake = returns.wake if returns is not None else None
        poller = ReceiptPoller(
            tenant.id, store, lambda: ImapMailbox(endpoint, tls), planner,
            settings=PollerSettings(
                idle_seconds=settings.idle_seconds, poll_seconds=settings.poll_seconds,
                final_report_timeout_seconds=settings.final_report_timeout_hours * 3600.0),
            metrics=metrics, on_zams=(lambda _tenant: wake()) if wake else None)

    async def follow_up(lease: OutboxLease, result: SendResult) -> tuple[OutboxItem, ...]:
        """The negative ZAM^Z02 of a mail refused for good, when the request asked."""
        if not planner.emit_zams or lease.inbound_id is None:
            return ()
        inbound = await store.get_inbound_summary(lease.inbound_id)
        if inbound is None:
            return ()
        job = MailJob.decode(lease.payload)
        zam = planner.negative_submission_zam(
            SentMail(lease.id, lease.tenant_id, inbound, job),
            result.error_code or SmtpErrorCode.TRANSACTION_FAILED)
        return (zam,) if zam is not None else ()

    return TenantReceipts(planner, poller, returns, follow_up, imap_tls)
