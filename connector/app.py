"""Composition root: build the store and each tenant's parts from settings, run, reload on
SIGHUP (tenants added, replaced or removed without a restart), drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from connector.admin.api import AdminApi
from connector.cda.header import InstanceId
from connector.cda.policy import SchematronPolicy
from connector.cda.render import renderer_problem
from connector.cda.validation import CdaValidator
from connector.delivery.worker import DeliveryService
from connector.directory.annuaire import Directory, DirectoryError, directory_path
from connector.directory.whitelist import Whitelist, load_whitelist
from connector.errors import ConfigError
from connector.hl7.ack import ControlIdGenerator
from connector.hl7.header import msh18_for_codec
from connector.hosts import is_loopback
from connector.mllp.server import MLLPServer, server_ssl_context
from connector.observability.gauges import GaugeRefresher
from connector.observability.http import AdminServer
from connector.observability.logs import loop_exception_handler
from connector.observability.metrics import ConnectorMetrics
from connector.pipeline.decide import IntakeDecider
from connector.pipeline.documents import (
    CdaChecker,
    UnconfiguredCdaChecker,
    ValidatingCdaChecker,
)
from connector.pipeline.intake import IntakeHandler
from connector.pipeline.offload import DocumentProcesses
from connector.pipeline.serial import KeyedLocks
from connector.receipts.poller import ReceiptPoller
from connector.retention import RetentionPurger
from connector.settings import Settings, StoreBackend, TransportKind, load_settings
from connector.store.cipher import PayloadCipher
from connector.store.sqlite import SQLiteStore
from connector.tenants import SharedParts, TenantRuntime, build_intake_parts, build_tenant

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


def open_directory(settings: Settings, whitelist: Whitelist | None) -> Directory | None:
    """The imported Annuaire Santé extraction, when there is one (legacy flows resolve
    recipients with it); opened again at each reload, so a new import is picked up."""
    if not any(t.mappings for t in settings.tenants):
        return None
    path = directory_path(settings)
    if not path.is_file():
        log.warning("directory_not_imported", hint="run `mssante-connector directory import`"
                    " with the Annuaire Santé extraction; legacy recipients by RPPS stay "
                    "unresolved")
        return None
    try:
        return Directory(path, whitelist=whitelist)
    except DirectoryError as exc:
        raise ConfigError("directory", str(exc), source=settings.source) from exc


@dataclass(frozen=True, slots=True)
class IntakeInputs:
    """What every tenant's intake is built from: the trust-space list, the CDA validators (one
    per schematron policy, built when first asked for) and the imported directory."""

    whitelist: Whitelist | None
    checker: Callable[[SchematronPolicy], CdaChecker]
    directory: Directory | None


def intake_inputs(settings: Settings) -> IntakeInputs:
    whitelist = load_whitelist(settings.whitelist) if settings.whitelist else None
    checker = functools.cache(functools.partial(build_cda_checker, settings))
    return IntakeInputs(whitelist, checker, open_directory(settings, whitelist))


def build_intake_deciders(settings: Settings) -> dict[str, IntakeDecider]:
    """Every tenant's document-stage decider, as a worker process of `[intake]
    document_processes` holds them: the same parts `build_tenant` gives the server."""
    inputs = intake_inputs(settings)
    deciders = {}
    for index, tenant in enumerate(settings.tenants):
        parts = build_intake_parts(index, tenant, settings, inputs.checker, inputs.whitelist,
                                   inputs.directory)
        deciders[tenant.id] = IntakeDecider(parts.cisis, planner=parts.planner,
                                            legacy=parts.legacy,
                                            default_charset=settings.default_charset)
    return deciders


@dataclass(frozen=True, slots=True)
class ReloadReport:
    added: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()  # sections a reload cannot change
    not_started: tuple[str, ...] = ()  # built but could not start (a port taken): not running


# Sections a running process cannot swap: the store, the admin listener, logging.
_RESTART_ONLY = ("store", "admin", "logging")
# Sections every tenant is built from: a change rebuilds them all.
_SHARED = ("default_charset", "validation", "whitelist")


@dataclass
class Application:
    settings: Settings
    store: SQLiteStore | PostgresStore
    metrics: ConnectorMetrics = field(default_factory=ConnectorMetrics)
    admin: AdminServer | None = None
    delivery: DeliveryService = field(default_factory=lambda: DeliveryService(()))
    gauges: GaugeRefresher | None = None
    retention: RetentionPurger | None = None
    tenants: dict[str, TenantRuntime] = field(default_factory=dict)
    control_ids: ControlIdGenerator = field(default_factory=ControlIdGenerator)
    report_sets: KeyedLocks[tuple[str, InstanceId]] = field(default_factory=KeyedLocks)
    documents: DocumentProcesses | None = None  # started by `start`, not by `build`
    serving: bool = False  # set once `run_until_signalled` has started everything
    admin_context: ssl.SSLContext | None = None  # [admin.tls], checked by `build`
    _whitelist_date: datetime | None = None
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)  # one reload at a time

    @classmethod
    def build(cls, settings: Settings) -> Application:
        store = build_store(settings)
        app = cls(settings, store)
        if settings.admin is not None and settings.admin.tls is not None:
            app.admin_context = server_ssl_context(settings.admin.tls, "admin.tls")
        app.metrics.watch_store(store.commit_stats)
        shared = app._shared(settings)
        for index, tenant in enumerate(settings.tenants):
            app._adopt(build_tenant(index, tenant, shared))
        app.gauges = GaugeRefresher(
            app.metrics, store.outbox_stats, lambda: list(app.tenants),
            certificates=lambda: [c for t in app.tenants.values() for c in t.certificates],
            crls=lambda: [c for t in app.tenants.values() for c in t.revocation_lists],
            whitelist_generated_at=lambda: app._whitelist_date, mailboxes=app.mailboxes,
            disk_usage=store.disk_usage)
        app.retention = RetentionPurger(
            store, settings.store.payload_retention_days, app.metrics,
            patient_context_days=settings.store.patient_context_retention_days)
        warn_about_exposure(settings)
        problem = renderer_problem()
        if problem is not None:
            log.warning("pdf_renderer_unavailable", problem=problem,
                        hint="a request with a CDA that embeds no PDF is answered AR (ECO.2.1.1; "
                             "a tenant with [tenants.cisis] missing_pdf = \"send\" sends it "
                             "without the PDF)")
        return app

    def _shared(self, settings: Settings) -> SharedParts:
        inputs = intake_inputs(settings)
        if inputs.whitelist is None:
            log.warning("trust_space_not_configured",
                        hint="set [directory] whitelist to the MSSante liste blanche")
        self._whitelist_date = inputs.whitelist.generated_at if inputs.whitelist else None
        return SharedParts(settings, self.store, self.control_ids, inputs.whitelist,
                           inputs.checker, self.metrics, self.delivery.wake, inputs.directory,
                           documents=lambda: self.documents, report_sets=self.report_sets)

    def _adopt(self, runtime: TenantRuntime) -> None:
        self.tenants[runtime.id] = runtime
        self.delivery.tenants[runtime.id] = runtime.delivery
        if runtime.returns is not None:
            self.delivery.returns[runtime.id] = runtime.returns
        else:
            self.delivery.returns.pop(runtime.id, None)

    def _forget(self, tenant_id: str) -> None:
        self.tenants.pop(tenant_id, None)
        self.delivery.tenants.pop(tenant_id, None)
        self.delivery.returns.pop(tenant_id, None)
        # Its state gauges go with it: a paused or disconnected tenant removed by a reload
        # would keep MSSConnectorDeliveryPaused or MailboxDisconnected firing (a runtime that
        # replaces it sets them again).
        for gauge in (self.metrics.delivery_paused, self.metrics.mailbox_connected):
            with contextlib.suppress(KeyError):
                gauge.remove(tenant_id)

    # -- views used by operators and tests ---------------------------------------------------

    @property
    def servers(self) -> list[MLLPServer]:
        return [server for t in self.tenants.values() for server in t.servers]

    @property
    def handlers(self) -> list[IntakeHandler]:
        return [handler for t in self.tenants.values() for handler in t.handlers]

    @property
    def pollers(self) -> list[ReceiptPoller]:
        return [t.poller for t in self.tenants.values() if t.poller is not None]

    def mailboxes(self) -> dict[str, bool]:
        """Each polled mailbox's tenant and whether its IMAP session is up."""
        return {poller.tenant_id: poller.connected for poller in self.pollers}

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.store.open()
        try:
            await self._start_documents(self.settings)
            for runtime in self.tenants.values():
                await runtime.start()
            if self.gauges is not None:
                self.gauges.start()
            if self.retention is not None:
                self.retention.start()
            if self.settings.admin is not None:
                admin = self.settings.admin
                api = AdminApi(self.store, admin.token) if admin.token else None
                self.admin = AdminServer(admin.host, admin.port, self.metrics, self.readiness,
                                         api=api, ssl_context=self.admin_context)
                await self.admin.start()
        except BaseException:
            await self.stop()
            raise

    async def _start_documents(self, settings: Settings) -> None:
        """Start the worker processes of `[intake] document_processes` for `settings` and put
        them in place of the running ones, which finish what they run and exit."""
        processes = settings.intake.document_processes
        fresh = DocumentProcesses(settings, processes) if processes else None
        if fresh is not None:
            try:
                await fresh.start()
            except BaseException:
                fresh.close()
                raise
        previous, self.documents = self.documents, fresh
        if previous is not None:
            previous.close()

    def readiness(self) -> tuple[bool, str]:
        """Ready when the store accepts work and every listener is bound. A mailbox that is
        not connected is reported (`ready; mailbox not connected: <tenants>`) without making
        the instance unready: intake must keep taking messages while an operator's IMAP is
        away (receipts wait in the mailbox). `[admin] ready_requires_mailboxes = true` makes
        it count."""
        if self.store.closed:
            return False, "store closed"
        if self.gauges is not None and not self.gauges.store_reachable:
            # The last read of the store (the gauges', every 15 s) failed: a replica cut off
            # from PostgreSQL answers every message AR; out of the Service until it is back.
            return False, "store unreachable"
        stopped = [t.id for t in self.settings.tenants if t.id not in self.tenants]
        if stopped:  # configured, but a reload could not start it (its port taken...)
            return False, f"tenant not running: {', '.join(stopped)}"
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

    async def reload(self, settings: Settings, grace_seconds: float = 10.0) -> ReloadReport:
        """One reload at a time (two SIGHUPs in a row would otherwise interleave)."""
        async with self._reloading:
            return await self._reload(settings, grace_seconds)

    async def _reload(self, settings: Settings, grace_seconds: float) -> ReloadReport:
        """Apply a new configuration without a restart: tenants added are started, tenants
        removed are drained and stopped, tenants whose settings changed are replaced (the
        others are not touched; a change of `whitelist`, `validation` or `default_charset`
        replaces them all). `[store]`, `[admin]` and `[logging]` need a restart: reported,
        not applied. A tenant whose CRL files were replaced since it read them is rebuilt too.
        Everything new is built before anything is stopped, so a `ConfigError` leaves the
        running configuration as it was."""
        old = self.settings
        needs_restart = tuple(name for name in _RESTART_ONLY
                              if getattr(old, name) != getattr(settings, name))
        rebuild_all = any(getattr(old, name) != getattr(settings, name) for name in _SHARED)
        shared = self._shared(settings)
        current = {t.id: t for t in old.tenants}
        fresh: dict[str, TenantRuntime] = {}
        for index, tenant in enumerate(settings.tenants):
            running = self.tenants.get(tenant.id)
            if (rebuild_all or current.get(tenant.id) != tenant or running is None
                    or running.crls_changed()):  # None: new, or it could not start last time
                fresh[tenant.id] = build_tenant(index, tenant, shared)
        wanted = {t.id for t in settings.tenants}
        removed = tuple(tid for tid in self.tenants if tid not in wanted)
        replaced = tuple(tid for tid in fresh if tid in self.tenants)
        added = tuple(tid for tid in fresh if tid not in self.tenants)
        # What runs from now on: the sections a reload cannot change stay as they were.
        effective = replace(settings, store=old.store, admin=old.admin, logging=old.logging)
        if fresh or removed or settings.intake != old.intake:
            # The workers hold every tenant's decider: new ones for the new settings (built
            # before anything stops; a failure leaves everything as it was).
            await self._start_documents(effective)
        for tenant_id in (*removed, *replaced):
            await self.tenants[tenant_id].stop(grace_seconds)
            self._forget(tenant_id)
        not_started: list[str] = []
        for tenant_id, runtime in fresh.items():
            try:
                await runtime.start()
            except OSError as exc:  # its port is taken: the others keep running
                log.error("tenant_start_failed", tenant=tenant_id, error=str(exc))
                not_started.append(tenant_id)
                continue
            self._adopt(runtime)
        order = [t.id for t in settings.tenants]
        self.tenants = dict(sorted(self.tenants.items(), key=lambda kv: order.index(kv[0])))
        self.settings = effective
        started = [tid for tid in fresh if tid not in not_started]
        report = ReloadReport(tuple(t for t in added if t in started),
                              tuple(t for t in replaced if t in started), removed,
                              needs_restart, tuple(not_started))
        # A tenant that could not start is stopped, not replaced: said apart, as a warning.
        (log.warning if not_started else log.info)(
            "configuration_reloaded", added=list(report.added), replaced=list(report.replaced),
            removed=list(removed), needs_restart=list(needs_restart),
            not_started=list(not_started))
        return report

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, answer AR to what is queued, finish what is in flight, close."""
        for handler in self.handlers:
            handler.draining = True
        if self.gauges is not None:
            await self.gauges.stop()
        if self.retention is not None:
            await self.retention.stop()
        await asyncio.gather(*(t.stop(grace_seconds) for t in self.tenants.values()))
        if self.admin is not None:
            await self.admin.stop()
        if self.documents is not None:
            self.documents.close()
            self.documents = None
        await self.store.close()
        log.info("stopped")

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(loop_exception_handler)
        await self.start()
        self.serving = True
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[None]] = set()

        def on_sighup() -> None:
            task = loop.create_task(self._reload_from_source())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        store = self.settings.store
        log.info("serving", tenants=len(self.settings.tenants), listeners=len(self.servers),
                 store=store.backend.value,
                 path=str(store.path) if store.backend is StoreBackend.SQLITE else None)
        await stop.wait()
        log.info("draining")
        await self.stop()

    async def _reload_from_source(self) -> None:
        source = self.settings.source
        if source is None:
            log.warning("reload_ignored", reason="running the embedded default: no file")
            return
        try:
            settings = await asyncio.to_thread(load_settings, Path(source))
            await self.reload(settings)
        except ConfigError as exc:
            log.error("reload_refused", error=str(exc), kept="the running configuration")


def warn_about_exposure(settings: Settings) -> None:
    """Start-up warnings for what a security review flags, without refusing it (a TLS proxy
    or a private network may stand in front): clear text off the loopback, mails written to the
    dry-run Maildir (in clear, outside the store's encryption and retention), secrets in files
    that other accounts can read or change (a container's own files often are, harmlessly:
    warned, not refused), PostgreSQL reached without verifying its certificate."""
    admin = settings.admin
    if admin is not None and admin.token and admin.tls is None and not is_loopback(admin.host):
        log.warning("admin_api_in_clear", host=admin.host,
                    hint="the API's bearer token crosses the network unencrypted: set "
                         "[admin.tls] or bind [admin] host to 127.0.0.1")
    if not msh18_for_codec(settings.default_charset):
        log.warning("charset_without_hl7_name", setting="default_charset",
                    charset=settings.default_charset,
                    hint="HL7 table 0211 has no name for it: ACKs written in it leave MSH-18 "
                         "empty")
    for tenant in settings.tenants:
        if not tenant.listeners:
            log.warning("tenant_without_listener", tenant=tenant.id,
                        hint="it receives no HL7 message: add [[tenants.listeners]]")
        for listener in tenant.listeners:
            if listener.charset and not msh18_for_codec(listener.charset):
                log.warning("charset_without_hl7_name", tenant=tenant.id,
                            listener=listener.name, charset=listener.charset,
                            hint="HL7 table 0211 has no name for it: this listener's ACKs "
                                 "leave MSH-18 empty")
            if listener.tls is None and not listener.allow_from and not is_loopback(listener.host):
                log.warning("listener_in_clear", tenant=tenant.id, listener=listener.name,
                            host=listener.host,
                            hint="HL7 with patient data, unencrypted, from any address: set "
                                 "tls or allow_from")
        his = tenant.his
        if his is not None and his.ca_bundle is None and not is_loopback(his.host):
            log.warning("his_in_clear", tenant=tenant.id, host=his.host,
                        hint="the ZAMs (recipient addresses, a patient's holds the INS) go to "
                             "the HIS unencrypted: set [tenants.his] ca_bundle")
        if tenant.transport.kind is TransportKind.MAILDIR:
            log.warning("dry_run", tenant=tenant.id, maildir=str(tenant.transport.maildir),
                        hint="mails are written to this Maildir, in clear and never purged, "
                             "not sent: set [tenants.transport] to send")
    for secret in settings.secret_files:
        try:
            mode = secret.path.stat().st_mode
        except OSError:  # read when the configuration was loaded; gone since, or a race
            continue
        if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
            log.warning("secret_file_exposed", key=secret.key, path=str(secret.path),
                        mode=f"{stat.S_IMODE(mode):04o}",
                        hint="other accounts of this host can read or change this secret: "
                             "chmod 600, or 640 for a service group (the Helm chart mounts "
                             "secrets 0440)")
    store = settings.store
    if store.backend is StoreBackend.POSTGRES and store.dsn:
        from connector.store.postgres import unverified_hosts

        hosts = unverified_hosts(store.dsn)
        if hosts:
            log.warning("store_tls_unverified", hosts=hosts,
                        hint="the PostgreSQL server is reached without verifying its "
                             "certificate (libpq's default sslmode is prefer): put "
                             "sslmode=verify-full and sslrootcert in the DSN")
