"""Gauges read from the state of things rather than counted as events: the outbox by tenant,
kind and state, the oldest row still to send, the store's size and free disk, client
certificates' days to expiry, the CRLs' time to their nextUpdate, the whitelist's age, the
mailboxes' connection. Refreshed every
`interval` seconds (and on start) by one task, so a scrape never queries the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog

from connector.delivery.tls import CertificateInfo
from connector.errors import StoreError
from connector.observability.logs import exception_frames
from connector.observability.metrics import ConnectorMetrics
from connector.store import DiskUsage, OutboxKind, OutboxStat, OutboxState
from connector.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

PENDING = frozenset({OutboxState.READY, OutboxState.LEASED})
_STORE_FAILURES_UNREADY = 2  # failed reads in a row that make the instance unready
_STORE_RECHECK_SECONDS = 2.0  # how soon the store is read again after a failure


@dataclass(frozen=True, slots=True)
class Certificate:
    tenant_id: str
    use: str  # smtp, imap
    info: CertificateInfo


@dataclass(frozen=True, slots=True)
class RevocationLists:
    """The CRLs a tenant's TLS context for `use` checks the operator against."""

    tenant_id: str
    use: str  # smtp, imap
    next_update: datetime  # the soonest nextUpdate among them


class GaugeRefresher:
    def __init__(self, metrics: ConnectorMetrics,
                 stats: Callable[[], Awaitable[list[OutboxStat]]],
                 tenants: Callable[[], Sequence[str]], *,
                 certificates: Callable[[], Sequence[Certificate]] = tuple,
                 crls: Callable[[], Sequence[RevocationLists]] = tuple,
                 whitelist_generated_at: Callable[[], datetime | None] = lambda: None,
                 mailboxes: Callable[[], dict[str, bool]] | None = None,
                 disk_usage: Callable[[], Awaitable[DiskUsage]] | None = None,
                 interval: float = 15.0) -> None:
        self.metrics = metrics
        self._stats = stats
        self._tenants = tenants
        self._certificates = certificates
        self._crls = crls
        self._whitelist = whitelist_generated_at
        self._mailboxes = mailboxes
        self._disk_usage = disk_usage
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self.store_reachable = True  # the store answered lately (readiness)
        self._store_failures = 0  # reads of the store that failed in a row

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gauges")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 (a bug must not end the gauges, readiness)
                log.error("gauges_refresh_failed", error=type(exc).__name__,
                          where=exception_frames(exc))
            # While the store does not answer, look again soon: readiness follows it.
            await asyncio.sleep(self.interval if self._store_failures == 0
                                else min(self.interval, _STORE_RECHECK_SECONDS))

    async def refresh(self, now: float | None = None) -> None:
        at = time.time() if now is None else now
        try:
            stats = await self._stats()
        except StoreError as exc:
            self._store_failures += 1
            if self._store_failures == _STORE_FAILURES_UNREADY:
                log.warning("gauges_store_unavailable", error=str(exc))
                self.store_reachable = False  # twice in a row: not one transient error
        else:
            if not self.store_reachable:
                log.info("gauges_store_available", failures=self._store_failures)
            self._store_failures = 0
            self.store_reachable = True
            self._outbox(stats, at)
        if self._disk_usage is not None:
            await self._store_size(self._disk_usage)
        # Series of what runs now only: a tenant removed, or one a reload could not start, must
        # not keep an expired certificate's or CRL's value (and its alert) alive. Set in one go
        # on the loop that also serves /metrics, so a scrape never sees them half done.
        self.metrics.client_certificate_expiry_days.clear()
        for certificate in self._certificates():
            self.metrics.client_certificate_expiry_days.labels(
                certificate.tenant_id, certificate.use).set(
                round(certificate.info.days_to_expiry(), 3))
        self.metrics.crl_next_update_seconds.clear()
        for crl in self._crls():
            self.metrics.crl_next_update_seconds.labels(crl.tenant_id, crl.use).set(
                round(crl.next_update.timestamp() - at, 3))
        generated = self._whitelist()
        if generated is not None:
            self.metrics.whitelist_age_seconds.set(at - generated.timestamp())
        if self._mailboxes is not None:
            for tenant, connected in self._mailboxes().items():
                self.metrics.mailbox_connected.labels(tenant).set(1 if connected else 0)

    async def _store_size(self, disk_usage: Callable[[], Awaitable[DiskUsage]]) -> None:
        try:
            usage = await disk_usage()
        except (StoreError, OSError) as exc:
            log.warning("gauges_store_size_unavailable", error=type(exc).__name__)
            return
        self.metrics.store_bytes.labels("database").set(usage.database)
        self.metrics.store_bytes.labels("payloads").set(usage.payloads)
        if usage.free is not None:
            self.metrics.set_store_free_bytes(usage.free)

    def _outbox(self, stats: list[OutboxStat], at: float) -> None:
        counts = {(t, k, s): 0 for t in self._tenants() for k in OutboxKind
                  for s in OutboxState}
        oldest: dict[tuple[str, OutboxKind], float] = {}
        for stat in stats:
            counts[(stat.tenant_id, stat.kind, stat.state)] = stat.count
            if stat.state in PENDING:
                key = (stat.tenant_id, stat.kind)
                oldest[key] = min(oldest.get(key, stat.oldest_created_at),
                                  stat.oldest_created_at)
        for (tenant, kind, state), count in counts.items():
            self.metrics.outbox_items.labels(tenant, kind.value, state.value).set(count)
        for tenant in {t for t, _, _ in counts}:
            for kind in OutboxKind:
                created = oldest.get((tenant, kind))
                self.metrics.outbox_oldest_pending_seconds.labels(tenant, kind.value).set(
                    max(0.0, at - created) if created is not None else 0.0)
