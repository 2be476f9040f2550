"""The retention purge, run by `serve`: every hour, the payloads of what finished more than
`[store] payload_retention_days` ago are dropped (`RetentionStore.purge_payloads`): the
messages, validation reports, mails and returned mails, which hold patient data and which the
connector no longer needs once the work they were kept for is done. The rows stay, for the audit
trail and the listings. The ADT patient contexts no ADT updated for
`[store] patient_context_retention_days` are deleted whole (`purge_patient_contexts`). Counted
in `mssconnector_store_purged_total{part}`; logged with counts only."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import structlog

from connector.errors import StoreError
from connector.observability.metrics import ConnectorMetrics
from connector.store import PurgeCounts, RetentionStore
from connector.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

DAY_SECONDS = 86400.0


class RetentionPurger:
    def __init__(self, store: RetentionStore, retention_days: float,
                 metrics: ConnectorMetrics | None = None, *, interval: float = 3600.0,
                 first_delay: float = 60.0, patient_context_days: float = 0.0) -> None:
        """`patient_context_days`: the patient contexts no ADT updated for that long are
        deleted too (0: kept)."""
        if retention_days <= 0:
            raise ValueError("retention_days must be positive")
        self.store = store
        self.retention_seconds = retention_days * DAY_SECONDS
        self.patient_context_seconds = patient_context_days * DAY_SECONDS
        self.metrics = metrics
        self.interval = interval
        self.first_delay = first_delay  # let intake and delivery settle in after a start
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        log.info("retention_started", payload_retention_days=self.retention_seconds / DAY_SECONDS,
                 first_round_in_seconds=self.first_delay, every_seconds=self.interval)
        self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        await asyncio.sleep(self.first_delay)
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval)

    async def run_once(self, now: float | None = None) -> PurgeCounts | None:
        """One round; None when the store failed (logged, counted, tried again next round)."""
        at = time.time() if now is None else now
        try:
            counts = await self.store.purge_payloads(before=at - self.retention_seconds, now=at)
            if self.patient_context_seconds:
                patients = await self.store.purge_patient_contexts(
                    before=at - self.patient_context_seconds)
                counts = dataclasses.replace(counts, patients=patients)
        except (StoreError, OSError) as exc:  # OSError: a payload segment not deleted
            log.warning("store_purge_failed", error=str(exc))
            if self.metrics is not None:
                self.metrics.store_purge_failures.inc()
            return None
        if self.metrics is not None:
            for part, count in dataclasses.asdict(counts).items():
                self.metrics.store_purged.labels(part).inc(count)
        if counts.total:
            log.info("store_purged", inbound=counts.inbound, outbox=counts.outbox,
                     receipts=counts.receipts, segments=counts.segments,
                     patients=counts.patients,
                     retention_days=self.retention_seconds / DAY_SECONDS)
        return counts
