"""Settings → a tenant's transport and delivery worker. Errors name the tenant's settings keys."""

from __future__ import annotations

import datetime as dt

import structlog

from connector.delivery.retry import RetryPolicy
from connector.delivery.smtp import SaslMechanism, SmtpEndpoint, TlsMode
from connector.delivery.tls import (
    ClientCertificateSource,
    ClientTls,
    ClientTlsSettings,
    PemClientCertificate,
    Pkcs12ClientCertificate,
    build_client_tls,
)
from connector.delivery.transports import MaildirTransport, SmtpTransport, Transport
from connector.delivery.worker import DeliveryLimits, FollowUp, TenantDelivery
from connector.errors import ConfigError
from connector.observability.metrics import ConnectorMetrics
from connector.settings import (
    DeliverySettings,
    ReceiptsSettings,
    SmtpSettings,
    TenantSettings,
    TransportKind,
)
from connector.store import OutboxStore

log = structlog.get_logger(__name__)

# Keys the delivery package names → the key of the tenant's settings table that holds them.
_RENAMED = {
    "tls.client_key": "client_private_key",
    "smtp.connect_timeout": "connect_timeout_seconds",
    "smtp.command_timeout": "command_timeout_seconds",
    "smtp.data_timeout": "data_timeout_seconds",
    "smtp.oauth_token": "oauth_token_env",
    "smtp.password": "password_env",
}


def rekeyed(exc: ConfigError, prefix: str, source: str | None, table: str = "transport"
            ) -> ConfigError:
    """`exc` (keyed `tls.*`, `smtp.*` or `delivery.*` by the delivery package) keyed as the
    file says: `<prefix>.<table>.<key>`, or `<prefix>.delivery.<key>`."""
    head, _, tail = exc.key.partition(".")
    if head == "delivery":
        key = f"delivery.{tail}"
    else:
        key = f"{table}.{_RENAMED.get(exc.key, tail or head)}"
    return ConfigError(f"{prefix}.{key}", exc.problem, source=source)


def build_transport(tenant: TenantSettings, *, prefix: str, source: str | None = None
                    ) -> Transport:
    """The tenant's transport; SMTP loads and checks its certificates now (`ConfigError`)."""
    transport = tenant.transport
    if transport.kind is TransportKind.MAILDIR:
        return MaildirTransport(transport.maildir)
    assert transport.smtp is not None
    try:
        smtp = _smtp_transport(transport.smtp)
    except ConfigError as exc:
        raise rekeyed(exc, prefix, source) from exc
    warn_about_revocation(tenant.id, "smtp", smtp.tls)
    return smtp


def warn_about_revocation(tenant_id: str, use: str, tls: ClientTls) -> None:
    """ECO.1.1.6 asks that the operator's certificate be checked for revocation: say so when
    it is not, or when a CRL is already past its nextUpdate (every handshake fails then)."""
    if not tls.crls:
        log.warning("revocation_not_checked", tenant=tenant_id, use=use,
                    hint="set crl_files to the IGC-Santé CRLs of the CAs that sign the operator "
                         "(ECO.1.1.6) and refresh them")
    elif tls.crl_next_update is not None and tls.crl_next_update < dt.datetime.now(dt.UTC):
        log.warning("crl_expired", tenant=tenant_id, use=use,
                    next_update=tls.crl_next_update.isoformat(),
                    hint="the operator's certificate cannot be checked: TLS fails until a "
                         "current CRL is installed and the connector reloaded")


def client_certificate(table: SmtpSettings | ReceiptsSettings
                       ) -> ClientCertificateSource | None:
    """The application mailbox certificate a settings table names: its PKCS#12 file, else its
    PEM certificate and key, else none."""
    if table.client_pkcs12 is not None:
        return Pkcs12ClientCertificate(table.client_pkcs12, table.client_pkcs12_password)
    if table.client_certificate is not None and table.client_private_key is not None:
        return PemClientCertificate(table.client_certificate, table.client_private_key,
                                    table.client_private_key_password)
    return None


def _smtp_transport(smtp: SmtpSettings) -> SmtpTransport:
    tls = build_client_tls(ClientTlsSettings(smtp.ca_bundle, client_certificate(smtp),
                                             crls=smtp.crl_files))
    endpoint = SmtpEndpoint(
        host=smtp.host, port=smtp.port, mode=TlsMode(smtp.tls.value),
        connect_timeout=smtp.connect_timeout_seconds,
        command_timeout=smtp.command_timeout_seconds, data_timeout=smtp.data_timeout_seconds,
        local_hostname=smtp.local_hostname, sasl=SaslMechanism(smtp.sasl.value),
        username=smtp.username, password=smtp.password, oauth_token=smtp.oauth_token)
    return SmtpTransport(endpoint, tls)


def delivery_limits(settings: DeliverySettings) -> DeliveryLimits:
    return DeliveryLimits(
        concurrency=settings.concurrency, batch_size=settings.batch_size,
        rate_per_second=settings.rate_per_second, lease_seconds=settings.lease_seconds,
        poll_seconds=settings.poll_seconds,
        config_error_pause_seconds=settings.config_error_pause_seconds)


def retry_policy(settings: DeliverySettings) -> RetryPolicy:
    return RetryPolicy(
        initial_seconds=settings.retry_initial_seconds, factor=settings.retry_factor,
        maximum_seconds=settings.retry_maximum_seconds, jitter=settings.retry_jitter,
        budget_seconds=settings.retry_budget_hours * 3600.0)


def build_delivery(tenant: TenantSettings, store: OutboxStore, *, prefix: str,
                   source: str | None = None, metrics: ConnectorMetrics | None = None,
                   follow_up: FollowUp | None = None) -> TenantDelivery:
    transport = build_transport(tenant, prefix=prefix, source=source)
    try:
        limits, retry = delivery_limits(tenant.delivery), retry_policy(tenant.delivery)
    except ConfigError as exc:
        raise rekeyed(exc, prefix, source) from exc
    return TenantDelivery(tenant.id, store, transport, limits=limits, retry=retry,
                          metrics=metrics, follow_up=follow_up)
