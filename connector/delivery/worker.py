"""The delivery worker: leases a tenant's SMTP outbox rows and hands them to its transport.

One `TenantDelivery` per tenant, each with its own sessions, rate and pause, so that one
tenant's backlog or broken operator never holds up another. Per tenant:

* `limits.concurrency` session tasks each lease up to `limits.batch_size` rows and send them over
  one transport session (one SMTP connection for the batch). Leases are renewed while the batch
  is being sent; a row whose lease was lost (cancelled by an operator, or taken over after a
  stall) is skipped, and its transition refused by the store's fencing.
* Outcomes (`SendResult.outcome`) become transitions, each with an audit entry:
  * SENT → `sent`;
  * TRANSIENT (4xx, time-out, disconnection) → `ready` again after the retry policy's backoff,
    or `dead` once its budget is spent;
  * PERMANENT (5xx about the message or its recipient) → `failed`, never retried;
  * CONFIG_ERROR (certificate, TLS, authentication, STARTTLS not offered, the tenant's sender
    refused at MAIL FROM) → the tenant pauses for `limits.config_error_pause_seconds` with one
    error log saying what to fix, and its rows wait, untouched by a retry storm (the budget
    still applies).
* A failure to open the session (the operator is down) pauses the tenant too, with the retry
  backoff of consecutive failures: a backlog is not churned through, row after row, while the
  operator is away.
* `limits.rate_per_second` caps sends per second (0: no cap).

A worker that dies mid-batch leaves its rows leased: they are taken again once their lease
expires, so a mail may be sent twice, always with the same Message-ID (at least once delivery).
A worker that was only stalled (a paused process, a host under pressure) does not send a row
whose lease it may have lost (less than a third of the lease left by its own clock: another
worker may have it); if a send it made turns out to have outlived its lease, the submission is
still audited, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import structlog

from connector.delivery.retry import RetryPolicy
from connector.delivery.smtp import SESSION_STAGES, Outcome, SendResult, Stage
from connector.delivery.transports import Transport, TransportSession
from connector.errors import ConfigError, LeaseLost, StoreError
from connector.hl7.codes import SmtpErrorCode
from connector.observability.logs import exception_frames
from connector.observability.metrics import ConnectorMetrics
from connector.store import (
    AuditAction,
    AuditEntry,
    OutboxItem,
    OutboxKind,
    OutboxLease,
    OutboxStore,
)
from connector.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

#: Rows to enqueue with a final refusal of `lease` (e.g. the negative ZAM^Z02).
FollowUp = Callable[[OutboxLease, SendResult], Awaitable[Sequence[OutboxItem]]]


_STORE_BACKOFF_MAX = 30.0  # seconds between two leases while the store is unreachable


@dataclass(frozen=True, slots=True)
class DeliveryLimits:
    concurrency: int = 2  # sessions (SMTP connections) in parallel for the tenant
    batch_size: int = 20  # rows leased at once by a session: sent over one connection
    rate_per_second: float = 0.0  # 0: no cap
    lease_seconds: float = 120.0
    poll_seconds: float = 2.0  # how often to look for due rows when nothing wakes the worker
    config_error_pause_seconds: float = 300.0

    def __post_init__(self) -> None:
        checks = (("concurrency", self.concurrency >= 1), ("batch_size", self.batch_size >= 1),
                  ("rate_per_second", self.rate_per_second >= 0),
                  ("lease_seconds", self.lease_seconds > 0),
                  ("poll_seconds", self.poll_seconds > 0),
                  ("config_error_pause_seconds", self.config_error_pause_seconds > 0))
        for key, ok in checks:
            if not ok:
                raise ConfigError(f"delivery.{key}", "is out of range")


class _RateLimiter:
    """Token bucket: at most `rate` sends per second, bursts of at most one second's worth."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._rate = rate
        self._clock = clock
        self._sleep = sleep
        self._tokens = max(1.0, rate)
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self._rate <= 0:
            return
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(max(1.0, self._rate),
                                   self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                # A hair under 1 after sleeping exactly the time one token takes is float
                # rounding: waiting again for ~1e-17 s could repeat without end.
                if self._tokens >= 1 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1)
                    return
                await self._sleep((1 - self._tokens) / self._rate)


class TenantDelivery:
    def __init__(self, tenant_id: str, store: OutboxStore, transport: Transport, *,
                 limits: DeliveryLimits | None = None, retry: RetryPolicy | None = None,
                 metrics: ConnectorMetrics | None = None,
                 rng: random.Random | None = None, follow_up: FollowUp | None = None) -> None:
        self.tenant_id = tenant_id
        self.follow_up = follow_up
        self.store = store
        self.transport = transport
        self.limits = limits or DeliveryLimits()
        self.retry = retry or RetryPolicy()
        self.metrics = metrics
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self._pause_result: SendResult | None = None  # what paused the tenant last
        self._rate = _RateLimiter(self.limits.rate_per_second)
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.paused_until = 0.0  # epoch seconds
        self._session_failures = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._tasks = [asyncio.create_task(self._session_loop(n),
                                           name=f"delivery-{self.tenant_id}-{n}")
                       for n in range(self.limits.concurrency)]

    def wake(self) -> None:
        """New rows are due (intake just committed some): look now rather than at the poll."""
        self._wake.set()

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Finish the mail in hand (up to `grace_seconds`), release the rest of the batch."""
        self._stopping = True
        self._wake.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    @property
    def paused(self) -> bool:
        return time.time() < self.paused_until

    @property
    def pause_reason(self) -> str | None:
        """Why the tenant was last paused (the detail of the result that paused it)."""
        return self._pause_result.detail if self._pause_result is not None else None

    # -- the loop ----------------------------------------------------------------------------

    async def _session_loop(self, number: int) -> None:
        outage = 0  # store errors in a row: said at the first and every 30th, then backed off
        while not self._stopping:
            try:
                if self.paused:
                    await self._sleep(self.paused_until - time.time())
                    continue
                leases = await self.store.lease(
                    tenant_id=self.tenant_id, kinds=(self.transport.kind,),
                    limit=self.limits.batch_size,
                    lease_seconds=self.limits.lease_seconds)
                if outage:
                    log.info("delivery_store_available", tenant=self.tenant_id, errors=outage)
                    outage = 0
                if not leases:
                    await self._sleep(self.limits.poll_seconds)
                    continue
                await self.deliver(leases)
            except StoreError as exc:  # the store is down: leases expire, rows are kept
                outage += 1
                if outage % 30 == 1:
                    log.warning("delivery_store_unavailable", tenant=self.tenant_id,
                                error=str(exc), errors=outage)
                await self._sleep(min(_STORE_BACKOFF_MAX,
                                      self.limits.poll_seconds * 2 ** min(outage, 6)))
            except Exception as exc:  # noqa: BLE001
                # A bug must not end the tenant's delivery for good.
                log.error("delivery_loop_failed", tenant=self.tenant_id, session=number,
                          error=type(exc).__name__, where=exception_frames(exc))
                await self._sleep(self.limits.poll_seconds)

    async def _sleep(self, seconds: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, seconds))
        self._wake.clear()

    async def deliver(self, leases: Sequence[OutboxLease]) -> None:
        """Send `leases` over one transport session, renewing them meanwhile."""
        lost: set[int] = set()
        settling: set[int] = set()  # transitions under way: a renewal racing them is no loss
        remaining = {lease.id: lease for lease in leases}
        in_flight: int | None = None  # the row being sent: its outcome unknown if cut off
        # When each lease ends by this process's clock (monotonic: a stall counts), renewed.
        now, wall = time.monotonic(), time.time()
        deadlines = {lease.id: now + lease.expires_at - wall for lease in leases}
        renewer = asyncio.create_task(self._renew(remaining, lost, settling, deadlines))
        session = self.transport.session()
        try:
            for lease in leases:
                if lease.id in lost:
                    remaining.pop(lease.id, None)
                    continue
                if self._stopping or self.paused:
                    break
                with structlog.contextvars.bound_contextvars(tenant=self.tenant_id,
                                                             outbox_id=lease.id):
                    if lease.unreadable is not None:
                        settling.add(lease.id)
                        await self._settle(lease, _unreadable_result(lease))
                    else:
                        await self._rate.acquire()
                        if time.monotonic() > deadlines[lease.id] - self.limits.lease_seconds / 3:
                            lost.add(lease.id)  # stalled: another worker may have it now
                            self._lease_lost(lease, "send")
                            remaining.pop(lease.id, None)
                            continue
                        in_flight = lease.id
                        await self._deliver_one(session, lease, settling)
                        in_flight = None
                remaining.pop(lease.id, None)
        except asyncio.CancelledError:
            # Stopped past the grace period: the rows not tried yet are released now rather
            # than when their leases expire; the one in flight stays leased (the server may
            # have taken it: whoever leases it next sends it again, as after a crash).
            untried = [lease for lease in remaining.values() if lease.id != in_flight]
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release(untried, lost))
            raise
        finally:
            await cancel_and_wait(renewer)
            with contextlib.suppress(Exception):
                await session.close()
        await self._release(remaining.values(), lost)

    async def _renew(self, leases: dict[int, OutboxLease], lost: set[int],
                     settling: set[int], deadlines: dict[int, float]) -> None:
        interval = self.limits.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            for lease in list(leases.values()):
                if lease.id in lost or lease.id in settling:
                    continue
                try:
                    asked = time.monotonic()
                    await self.store.renew(lease.id, lease.token, self.limits.lease_seconds)
                    deadlines[lease.id] = asked + self.limits.lease_seconds
                except LeaseLost:
                    if lease.id in settling or lease.id not in leases:
                        continue  # it was just sent (or released): not a loss
                    lost.add(lease.id)
                    self._lease_lost(lease)
                except StoreError as exc:
                    log.warning("delivery_renew_failed", tenant=self.tenant_id,
                                outbox_id=lease.id, error=str(exc))

    async def _release(self, leases: Iterable[OutboxLease], lost: set[int]) -> None:
        """Rows leased but not attempted (stopping, or the tenant paused): ready again, due
        when the pause ends (now when stopping), without an error of their own; while the
        tenant is paused, a row whose retry budget is spent ends dead with the error that
        paused it, as it would have had it been tried (not one row per pause)."""
        now = time.time()
        for lease in list(leases):
            if lease.id in lost:
                continue
            with contextlib.suppress(LeaseLost, StoreError):
                if (self.paused and self._pause_result is not None and not self._stopping
                        and now - lease.created_at >= self.retry.budget_seconds):
                    await self._expire(lease, replace(self._pause_result, attempted=False))
                    continue
                await self.store.schedule_retry(lease.id, lease.token,
                                                max(now, self.paused_until))

    async def _deliver_one(self, session: TransportSession, lease: OutboxLease,
                           settling: set[int]) -> None:
        started = time.perf_counter()
        result = await session.send(lease)
        settling.add(lease.id)
        if self.metrics is not None:
            self.metrics.delivery_attempted(self.tenant_id, self.transport.name,
                                            result.outcome.value,
                                            time.perf_counter() - started)
        await self._settle(lease, result)

    async def _settle(self, lease: OutboxLease, result: SendResult) -> None:
        actor = self.transport.actor
        code, said, error, detail = (result.reply_code, result.answer, result.error_value,
                                     result.full_detail)
        if result.outcome is Outcome.SENT:
            self._session_failures = 0
            submitted = AuditEntry(actor, AuditAction.SUBMITTED, code, said)
            await self._transition(lease, "sent", lambda: self.store.mark_sent(
                lease.id, lease.token, code,
                audit=submitted,
                delivery_status=None if self.transport.kind is not OutboxKind.SMTP
                else "awaiting-report" if result.dsn_requested
                else "not-offered" if result.dsn_unsupported else "not-requested"),
                audit_if_lost=submitted)
            log.info("mail_submitted", tenant=self.tenant_id, outbox_id=lease.id,
                     transport=self.transport.name, smtp_code=code, attempt=lease.attempt,
                     dsn_requested=result.dsn_requested)
            return
        if result.outcome is Outcome.PERMANENT:
            then = await self._follow_up(lease, result)
            mark = (self.store.mark_dead
                    if self.transport.dead_on_refusal or lease.unreadable is not None
                    else self.store.mark_failed)
            await self._transition(lease, "failed", lambda: mark(
                lease.id, lease.token, error, detail, error_class=result.outcome.value,
                audit=AuditEntry(actor, AuditAction.REFUSED, code, said), then=then))
            if self.metrics is not None and self.transport.dead_on_refusal:
                self.metrics.refused_for_good.labels(self.tenant_id, self.transport.name).inc()
            log.warning("mail_refused", tenant=self.tenant_id, outbox_id=lease.id,
                        smtp_code=code, smtp_error=error, stage=result.stage.value,
                        detail=result.detail)
            return
        now = time.time()
        if result.outcome is Outcome.CONFIG_ERROR:
            self._pause(now + self.limits.config_error_pause_seconds, result, config=True)
            due: float | None = self.paused_until
            if now - lease.created_at >= self.retry.budget_seconds:
                due = None
        else:
            if result.stage in SESSION_STAGES:
                self._session_failures += 1
                self._pause(now + self.retry.delay(self._session_failures, self._rng), result,
                            config=False)
            due = self.retry.next_attempt_at(attempt=lease.attempt, created_at=lease.created_at,
                                             now=now, rng=self._rng)
            if due is not None:
                due = max(due, self.paused_until)
        if due is None:
            await self._expire(lease, result)
            return
        retry_at = due
        await self._transition(lease, "ready", lambda: self.store.schedule_retry(
            lease.id, lease.token, retry_at, error, detail, error_class=result.outcome.value,
            audit=AuditEntry(actor, AuditAction.DEFERRED, code, said)))
        if result.attempted:
            log.info("mail_deferred", tenant=self.tenant_id, outbox_id=lease.id,
                     smtp_code=code, smtp_error=error, attempt=lease.attempt,
                     retry_in_seconds=round(retry_at - now, 1), detail=result.detail)

    async def _expire(self, lease: OutboxLease, result: SendResult) -> None:
        """The retry budget is spent: dead, with its follow-up (the negative ZAM^Z02)."""
        then = await self._follow_up(lease, result)
        await self._transition(lease, "dead", lambda: self.store.mark_dead(
            lease.id, lease.token, result.error_value, result.full_detail,
            error_class=result.outcome.value,
            audit=AuditEntry(self.transport.actor, AuditAction.EXPIRED, result.reply_code,
                             result.answer), then=then))
        log.error("mail_dead", tenant=self.tenant_id, outbox_id=lease.id,
                  smtp_error=result.error_value, attempts=lease.attempt,
                  budget_hours=self.retry.budget_seconds / 3600, detail=result.detail)

    async def _follow_up(self, lease: OutboxLease, result: SendResult
                         ) -> Sequence[OutboxItem]:
        """Rows to enqueue with a final refusal (the negative ZAM^Z02), from `follow_up`."""
        if self.follow_up is None:
            return ()
        try:
            return await self.follow_up(lease, result)
        except StoreError:
            # The store is down: nothing is settled without its ZAM. The error ends this batch
            # like any store error; the lease expires and the row is tried again, ZAM included.
            raise
        except Exception as exc:  # noqa: BLE001
            # A bug: the refusal is recorded anyway; the ZAM is missing (logged).
            log.error("delivery_follow_up_failed", tenant=self.tenant_id, outbox_id=lease.id,
                      error=type(exc).__name__, where=exception_frames(exc))
            return ()

    def _pause(self, until: float, result: SendResult, *, config: bool) -> None:
        first = not self.paused
        self.paused_until = max(self.paused_until, until)
        self._pause_result = result
        if self.metrics is not None:
            self.metrics.delivery_paused.labels(self.tenant_id).set(1)
        if first and result.attempted:
            event = log.error if config else log.warning
            event("delivery_paused", tenant=self.tenant_id, transport=self.transport.name,
                  seconds=round(self.paused_until - time.time(), 1),
                  reason="configuration" if config else "operator unreachable",
                  detail=result.detail)

    async def _transition(self, lease: OutboxLease, target: str,
                          call: Callable[[], Awaitable[object]], *,
                          audit_if_lost: AuditEntry | None = None) -> None:
        """`audit_if_lost`: what happened (a submission) is audited even when the lease was
        lost meanwhile (the row is another worker's now, which may send it too)."""
        try:
            await call()
        except LeaseLost:
            self._lease_lost(lease, target)
            if audit_if_lost is not None:
                with contextlib.suppress(StoreError):
                    await self.store.record_mailbox_audit(
                        self.tenant_id, replace(audit_if_lost, detail=(
                            f"{audit_if_lost.detail or ''} (after its lease expired: another "
                            "worker may send it too)").strip()), outbox_id=lease.id)
        if self.metrics is not None and not self.paused:
            self.metrics.delivery_paused.labels(self.tenant_id).set(0)

    def _lease_lost(self, lease: OutboxLease, target: str | None = None) -> None:
        log.warning("delivery_lease_lost", tenant=self.tenant_id, outbox_id=lease.id,
                    transition=target)
        if self.metrics is not None:
            self.metrics.lease_lost.labels(self.tenant_id).inc()


class DeliveryService:
    """Every tenant's delivery (and return path), started and stopped together."""

    def __init__(self, tenants: Sequence[TenantDelivery]) -> None:
        self.tenants = {t.tenant_id: t for t in tenants}
        self.returns: dict[str, TenantDelivery] = {}  # ZAMs back to each tenant's HIS

    def _all(self) -> list[TenantDelivery]:
        return [*self.tenants.values(), *self.returns.values()]

    def start(self) -> None:
        for worker in self._all():
            worker.start()

    def wake(self, tenant_id: str) -> None:
        tenant = self.tenants.get(tenant_id)
        if tenant is not None:
            tenant.wake()

    def wake_return(self, tenant_id: str) -> None:
        worker = self.returns.get(tenant_id)
        if worker is not None:
            worker.wake()

    async def stop(self, grace_seconds: float = 10.0) -> None:
        await asyncio.gather(*(w.stop(grace_seconds) for w in self._all()))


def _unreadable_result(lease: OutboxLease) -> SendResult:
    """A row whose stored mail cannot be read back (`OutboxLease.unreadable`): nothing is sent,
    and it ends like a permanent refusal (dead, with its negative ZAM^Z02 when one was asked
    for), so that the batch goes on and the hospital hears of it."""
    return SendResult(
        outcome=Outcome.PERMANENT, stage=Stage.MAIL, message_id=lease.message_id or "",
        smtp_code=None, enhanced_status=None, error_code=SmtpErrorCode.PROCESSING_ERROR,
        server_message="", detail=f"the stored mail cannot be read: {lease.unreadable}",
        dsn_requested=False, attempted=False)
