"""One tenant's running parts: its MLLP listeners and intake, its delivery worker, its receipts
poller and its ZAM return worker. Built from settings, started and stopped as a unit, so that a
reload can add, replace or remove one tenant without touching the others."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from connector.cda.header import InstanceId
from connector.cda.policy import SchematronPolicy
from connector.delivery.factory import build_delivery
from connector.delivery.worker import TenantDelivery
from connector.directory.annuaire import DirectoryLookup
from connector.directory.whitelist import Whitelist
from connector.errors import ConfigError
from connector.hl7.ack import AckIdentity, ControlIdGenerator
from connector.legacy.flow import Establishment, LegacyFlows
from connector.legacy.mapping import load_mappings
from connector.legacy.resolver import DirectoryResolver
from connector.mllp.server import MLLPServer, server_ssl_context
from connector.observability.gauges import Certificate, RevocationLists
from connector.observability.metrics import ConnectorMetrics
from connector.pipeline.documents import CdaChecker, CisisIntake
from connector.pipeline.intake import IntakeConfig, IntakeHandler
from connector.pipeline.outgoing import MailPlanner
from connector.pipeline.serial import KeyedLocks
from connector.receipts.factory import build_receipts
from connector.receipts.poller import ReceiptPoller
from connector.settings import Settings, TenantSettings

if TYPE_CHECKING:
    from collections.abc import Callable

    from connector.pipeline.offload import DocumentProcesses
    from connector.store.postgres import PostgresStore
    from connector.store.sqlite import SQLiteStore

log = structlog.get_logger(__name__)


@dataclass
class SharedParts:
    """What tenants share: the settings they came from, the store, MSH-10 generator, the
    trust-space list, the CDA validators (one per schematron policy), metrics."""

    settings: Settings
    store: SQLiteStore | PostgresStore
    control_ids: ControlIdGenerator
    whitelist: Whitelist | None
    checker: Callable[[SchematronPolicy], CdaChecker]
    metrics: ConnectorMetrics
    wake: Callable[[str], None]
    directory: DirectoryLookup | None = None  # the imported Annuaire Santé extraction
    # The worker processes of `[intake] document_processes` running now (None: threads);
    # a getter, as a reload replaces them under tenants it leaves running.
    documents: Callable[[], DocumentProcesses | None] | None = None
    # The legacy report sets being read and stored now (`IntakeHandler`): one per process, so
    # that the listeners of a tenant, and its handlers before and after a reload, share it.
    report_sets: KeyedLocks[tuple[str, InstanceId]] | None = None


@dataclass
class TenantRuntime:
    settings: TenantSettings
    handlers: list[IntakeHandler]
    servers: list[MLLPServer]
    delivery: TenantDelivery
    returns: TenantDelivery | None = None
    poller: ReceiptPoller | None = None
    certificates: list[Certificate] = field(default_factory=list)
    crls: tuple[FileStamp, ...] = ()  # the CRL files its TLS contexts were built from
    revocation_lists: list[RevocationLists] = field(default_factory=list)  # their nextUpdate

    @property
    def id(self) -> str:
        return self.settings.id

    def crls_changed(self) -> bool:
        """A CRL file was replaced since this runtime read it: a reload rebuilds it then,
        its settings being the same."""
        return any(stamp != FileStamp.of(stamp.path) for stamp in self.crls)

    async def start(self) -> None:
        started: list[MLLPServer] = []
        try:
            for server in self.servers:
                try:
                    await server.start()
                except OSError as exc:  # say which listener of the file, not only the address
                    listener = server.settings
                    raise OSError(exc.errno, f"tenant {self.id!r} listener {listener.name!r} "
                                             f"({listener.host}:{listener.port}): "
                                             f"{exc.strerror or exc}") from exc
                started.append(server)
        except BaseException:
            await asyncio.gather(*(server.stop(1.0) for server in started))
            raise
        self.delivery.start()
        if self.returns is not None:
            self.returns.start()
        if self.poller is not None:
            self.poller.start()

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting (queued messages get AR), finish what is in flight, stop sending."""
        for handler in self.handlers:
            handler.draining = True
        await asyncio.gather(*(server.stop(grace_seconds) for server in self.servers))
        if self.poller is not None:
            await self.poller.stop()
        await self.delivery.stop(grace_seconds)
        if self.returns is not None:
            await self.returns.stop(grace_seconds)


def _planner(tenant: TenantSettings, prefix: str, source: str | None) -> MailPlanner:
    try:
        return MailPlanner(tenant)
    except ConfigError as exc:  # names tenants[<id>]: say it with the index, as the file does
        _, _, key = exc.key.partition("].")
        raise ConfigError(f"{prefix}.{key}", exc.problem, source=source) from exc


def build_legacy(tenant: TenantSettings, prefix: str, source: str | None,
                 directory: DirectoryLookup | None = None) -> LegacyFlows | None:
    """The tenant's legacy mappings; their own file:line errors, or `tenants[i].mappings`."""
    if tenant.mappings is None:
        return None
    mappings = load_mappings(tenant.mappings)
    if not mappings:
        raise ConfigError(f"{prefix}.mappings", f"no <flow>/mapping.yaml in {tenant.mappings}",
                          source=source)
    assert tenant.oid is not None  # required by the settings
    resolver = (DirectoryResolver(directory, f"1{tenant.finess}" if tenant.finess else None)
                if directory is not None else None)
    return LegacyFlows(mappings, Establishment(tenant.name, tenant.oid, tenant.finess),
                       resolver=resolver)


@dataclass(frozen=True, slots=True)
class FileStamp:
    """A file's content as read (its SHA-256; None when it cannot be read): a replaced file is
    told apart whatever the file system's timestamp resolution."""

    path: Path
    digest: bytes | None

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        try:
            return cls(path, hashlib.sha256(path.read_bytes()).digest())
        except OSError:
            return cls(path, None)


def crl_files(tenant: TenantSettings) -> tuple[Path, ...]:
    """Every CRL file the tenant's operator connections (SMTP, IMAP) are checked against."""
    smtp = tenant.transport.smtp
    imap = tenant.imap_crl_files if tenant.receipts is not None else ()
    return tuple(dict.fromkeys((*(smtp.crl_files if smtp else ()), *imap)))


@dataclass(frozen=True, slots=True)
class IntakeParts:
    """What decides about a tenant's messages: built alike by the server and by each worker
    process of `[intake] document_processes`."""

    cisis: CisisIntake
    planner: MailPlanner
    legacy: LegacyFlows | None


def build_intake_parts(index: int, tenant: TenantSettings, settings: Settings,
                       checker: Callable[[SchematronPolicy], CdaChecker],
                       whitelist: Whitelist | None,
                       directory: DirectoryLookup | None) -> IntakeParts:
    prefix = f"tenants[{index}]"
    return IntakeParts(
        CisisIntake(tenant.cisis, checker(tenant.cisis.schematron_policy), whitelist,
                    returns_zams=tenant.returns_zams),
        _planner(tenant, prefix, settings.source),
        build_legacy(tenant, prefix, settings.source, directory))


def _frame_counter(metrics: ConnectorMetrics | None, tenant_id: str
                   ) -> Callable[[str], None] | None:
    """`mssconnector_mllp_frames_refused_total{tenant, reason}`, for the tenant's listeners."""
    if metrics is None:
        return None
    counter = metrics.frames_refused

    def count(reason: str) -> None:
        counter.labels(tenant_id, reason).inc()

    return count


def build_tenant(index: int, tenant: TenantSettings, shared: SharedParts) -> TenantRuntime:
    """Everything `tenant` runs; `ConfigError` naming `tenants[index]...` when it cannot."""
    settings, store, metrics = shared.settings, shared.store, shared.metrics
    prefix = f"tenants[{index}]"
    intake = build_intake_parts(index, tenant, settings, shared.checker, shared.whitelist,
                                shared.directory)
    cisis, planner, legacy = intake.cisis, intake.planner, intake.legacy
    if (tenant.receipts is None) != (tenant.his is None):  # one without the other: a slip?
        log.warning("zams_not_returned", tenant=tenant.id,
                    missing="his" if tenant.his is None else "receipts",
                    hint="ZAM^Z02/Z03 need both [tenants.receipts] (to read the DSNs and MDNs) "
                         "and [tenants.his] (to return them); requests asking for them get a W")
    receipts = build_receipts(tenant, store, prefix=prefix, source=settings.source,
                              control_ids=shared.control_ids, metrics=metrics)
    delivery = build_delivery(tenant, store, prefix=prefix, source=settings.source,
                              metrics=metrics, follow_up=receipts.follow_up)
    certificates, crls = [], []
    for use, tls in (("smtp", getattr(delivery.transport, "tls", None)),
                     ("imap", receipts.imap_tls)):
        if tls is None:
            continue
        if tls.client_certificate is not None:
            certificates.append(Certificate(tenant.id, use, tls.client_certificate))
        if tls.crl_next_update is not None:
            crls.append(RevocationLists(tenant.id, use, tls.crl_next_update))
    handlers, servers = [], []
    for listener in tenant.listeners:
        handler = IntakeHandler(
            IntakeConfig(tenant.id, listener.name,
                         AckIdentity(tenant.application, tenant.facility),
                         listener.charset, settings.default_charset,
                         application_ack=listener.application_ack),
            store, shared.control_ids, cisis, metrics, planner=planner, legacy=legacy,
            patients=store if legacy is not None else None, on_queued=shared.wake,
            documents=shared.documents, report_sets=shared.report_sets,
            reports=store if legacy is not None else None)
        ssl_context = (server_ssl_context(
            listener.tls, f"{prefix}.listeners[{tenant.listeners.index(listener)}].tls")
            if listener.tls else None)
        handlers.append(handler)
        servers.append(MLLPServer(listener, handler, ssl_context=ssl_context,
                                  on_frame_refused=_frame_counter(metrics, tenant.id)))
    return TenantRuntime(tenant, handlers, servers, delivery, receipts.returns,
                         receipts.poller, certificates,
                         tuple(FileStamp.of(path) for path in crl_files(tenant)), crls)
