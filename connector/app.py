"""Composition root: build the store and the listeners from settings, run, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from connector.admin.api import AdminApi
from connector.cda.policy import SchematronPolicy
from connector.cda.validation import CdaValidator
from connector.delivery.factory import build_delivery
from connector.delivery.worker import DeliveryService
from connector.directory.whitelist import load_whitelist
from connector.errors import ConfigError
from connector.hl7.ack import AckIdentity, ControlIdGenerator
from connector.mllp.server import MLLPServer, server_ssl_context
from connector.observability.gauges import Certificate, GaugeRefresher
from connector.observability.http import AdminServer
from connector.observability.metrics import ConnectorMetrics
from connector.pipeline.documents import (
    CdaChecker,
    CisisIntake,
    UnconfiguredCdaChecker,
    ValidatingCdaChecker,
)
from connector.pipeline.intake import IntakeConfig, IntakeHandler
from connector.pipeline.outgoing import MailPlanner
from connector.receipts.factory import build_receipts
from connector.receipts.poller import ReceiptPoller
from connector.settings import Settings, StoreBackend, TenantSettings
from connector.store.cipher import PayloadCipher
from connector.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from connector.store.postgres import PostgresStore

log = structlog.get_logger(__name__)


def build_cipher(settings: Settings) -> PayloadCipher:
    enc = settings.store.encryption
    return PayloadCipher(enc.keys, enc.current_key_id) if enc else PayloadCipher()


def build_store(settings: Settings) -> SQLiteStore | PostgresStore:
    if settings.store.backend is StoreBackend.POSTGRES:
        from connector.store.postgres import PostgresStore  # psycopg loaded only when used

        if not settings.store.dsn:
            raise ConfigError("store.dsn_env", "is required for the postgres backend",
                              source=settings.source)
        return PostgresStore(
            settings.store.dsn, cipher=build_cipher(settings),
            retransmission_window_seconds=settings.store.retransmission_window_seconds)
    return SQLiteStore(settings.store.path, cipher=build_cipher(settings),
                       retransmission_window_seconds=settings.store.retransmission_window_seconds)


def build_cda_checker(settings: Settings, policy: SchematronPolicy) -> CdaChecker:
    """The CDA validator for a schematron policy (XSD always rejects)."""
    validation = settings.validation
    if validation.cda_xsd is None:
        log.warning("cda_validation_not_configured",
                    hint="set [validation] cda_xsd and schematron to the ANS files")
        return UnconfiguredCdaChecker()
    return ValidatingCdaChecker(CdaValidator.from_paths(
        validation.cda_xsd, validation.schematron, policy=policy,
        phase=validation.schematron_phase))


def _planner(tenant: TenantSettings, prefix: str, source: str | None) -> MailPlanner:
    try:
        return MailPlanner(tenant)
    except ConfigError as exc:  # names tenants[<id>]: say it with the index, as the file does
        _, _, key = exc.key.partition("].")
        raise ConfigError(f"{prefix}.{key}", exc.problem, source=source) from exc


@dataclass
class Application:
    settings: Settings
    store: SQLiteStore | PostgresStore
    servers: list[MLLPServer] = field(default_factory=list)
    handlers: list[IntakeHandler] = field(default_factory=list)
    metrics: ConnectorMetrics = field(default_factory=ConnectorMetrics)
    admin: AdminServer | None = None
    delivery: DeliveryService = field(default_factory=lambda: DeliveryService(()))
    pollers: list[ReceiptPoller] = field(default_factory=list)
    gauges: GaugeRefresher | None = None

    @classmethod
    def build(cls, settings: Settings) -> Application:
        store = build_store(settings)
        app = cls(settings, store)
        control_ids = ControlIdGenerator()
        whitelist = load_whitelist(settings.whitelist) if settings.whitelist else None
        if whitelist is None:
            log.warning("trust_space_not_configured",
                        hint="set [directory] whitelist to the MSSante liste blanche")
        checkers: dict[SchematronPolicy, CdaChecker] = {}
        deliveries = []
        certificates: list[Certificate] = []
        for index, tenant in enumerate(settings.tenants):
            prefix = f"tenants[{index}]"
            policy = tenant.cisis.schematron_policy
            if policy not in checkers:
                checkers[policy] = build_cda_checker(settings, policy)
            cisis = CisisIntake(tenant.cisis, checkers[policy], whitelist)
            planner = _planner(tenant, prefix, settings.source)
            receipts = build_receipts(tenant, store, prefix=prefix, source=settings.source,
                                      control_ids=control_ids, metrics=app.metrics)
            deliveries.append(build_delivery(tenant, store, prefix=prefix,
                                             source=settings.source, metrics=app.metrics,
                                             follow_up=receipts.follow_up))
            if receipts.returns is not None:
                app.delivery.returns[tenant.id] = receipts.returns
            if receipts.poller is not None:
                app.pollers.append(receipts.poller)
            smtp_tls = getattr(deliveries[-1].transport, "tls", None)
            if smtp_tls is not None and smtp_tls.client_certificate is not None:
                certificates.append(Certificate(tenant.id, "smtp", smtp_tls.client_certificate))
            if receipts.imap_certificate is not None:
                certificates.append(Certificate(tenant.id, "imap", receipts.imap_certificate))
            for listener in tenant.listeners:
                handler = IntakeHandler(
                    IntakeConfig(tenant.id, listener.name,
                                 AckIdentity(tenant.application, tenant.facility),
                                 listener.charset, settings.default_charset),
                    store, control_ids, cisis, app.metrics, planner=planner,
                    on_queued=app.delivery.wake)
                ssl_context = server_ssl_context(listener.tls) if listener.tls else None
                app.handlers.append(handler)
                app.servers.append(MLLPServer(listener, handler, ssl_context=ssl_context))
        app.delivery.tenants.update((d.tenant_id, d) for d in deliveries)
        app.gauges = GaugeRefresher(
            app.metrics, store.outbox_stats, [t.id for t in settings.tenants],
            certificates=certificates,
            whitelist_generated_at=whitelist.generated_at if whitelist else None,
            mailboxes=app.mailboxes)
        return app

    def mailboxes(self) -> dict[str, bool]:
        """Each polled mailbox's tenant and whether its IMAP session is up."""
        return {poller.tenant_id: poller.connected for poller in self.pollers}

    async def start(self) -> None:
        self.store.open()
        try:
            for server in self.servers:
                await server.start()
            self.delivery.start()
            for poller in self.pollers:
                poller.start()
            if self.gauges is not None:
                self.gauges.start()
            if self.settings.admin is not None:
                admin = self.settings.admin
                api = AdminApi(self.store, admin.token) if admin.token else None
                context = server_ssl_context(admin.tls) if admin.tls else None
                self.admin = AdminServer(admin.host, admin.port, self.metrics, self.readiness,
                                         api=api, ssl_context=context)
                await self.admin.start()
        except BaseException:
            await self.stop()
            raise

    def readiness(self) -> tuple[bool, str]:
        """Ready when the store accepts work and every listener is bound. A mailbox that is
        not connected is reported (`ready; mailbox down: <tenants>`) without making the
        instance unready: intake must keep taking messages while an operator's IMAP is away
        (receipts wait in the mailbox). `[admin] ready_requires_mailboxes = true` makes it
        count."""
        if self.store.closed:
            return False, "store closed"
        if not all(server.bound for server in self.servers):
            return False, "a listener is not bound"
        if any(handler.draining for handler in self.handlers):
            return False, "draining"
        down = sorted(tenant for tenant, up in self.mailboxes().items() if not up)
        if down:
            reason = f"mailbox not connected: {', '.join(down)}"
            admin = self.settings.admin
            if admin is not None and admin.ready_requires_mailboxes:
                return False, reason
            return True, f"ready; {reason}"
        return True, "ready"

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, answer AR to what is queued, finish what is in flight, close."""
        for handler in self.handlers:
            handler.draining = True
        await asyncio.gather(*(s.stop(grace_seconds) for s in self.servers))
        if self.gauges is not None:
            await self.gauges.stop()
        await asyncio.gather(*(poller.stop() for poller in self.pollers))
        await self.delivery.stop(grace_seconds)
        if self.admin is not None:
            await self.admin.stop()
        await self.store.close()
        log.info("stopped")

    async def run_until_signalled(self) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        store = self.settings.store
        log.info("serving", tenants=len(self.settings.tenants), listeners=len(self.servers),
                 store=store.backend.value,
                 path=str(store.path) if store.backend is StoreBackend.SQLITE else None)
        await stop.wait()
        log.info("draining")
        await self.stop()
