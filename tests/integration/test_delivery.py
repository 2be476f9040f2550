"""The delivery worker against a real SMTP server (aiosmtpd on loopback, test IGC-Santé PKI) and a
real SQLite store: outcomes, retries, pauses, fencing, tenant isolation, and the whole path from
MLLP to the dry-run Maildir."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from connector.cda.policy import SchematronPolicy
from connector.cli.send_cmd import split_messages
from connector.delivery.job import MailJob
from connector.delivery.retry import RetryPolicy
from connector.delivery.smtp import SmtpEndpoint
from connector.delivery.transports import MaildirTransport, SmtpTransport
from connector.delivery.worker import DeliveryLimits, TenantDelivery, _RateLimiter
from connector.observability.metrics import ConnectorMetrics
from connector.settings import CisisSettings, SendingMatrixProfile
from connector.store import AuditAction, OutboxItem, OutboxKind, OutboxState
from connector.store.sqlite import SQLiteStore
from tests.conftest import CISIS_FIXTURES
from tests.integration.conftest import RunningApp, make_settings
from tests.support.fake_time import FakeTime
from tests.support.smtp_server import (
    SENDER,
    Pki,
    RunningServer,
    ServerFactory,
    client_tls,
    pki,
    smtp_server,
)

__all__ = ["pki", "smtp_server"]  # fixtures

DOCTOR = "dr.hoda@medecin.mssante.fr"
OTHER = "dr.martin@medecin.mssante.fr"
FAST_RETRY = RetryPolicy(initial_seconds=0.3, maximum_seconds=1.0, jitter=0.0,
                         budget_seconds=3600)
FAST = DeliveryLimits(concurrency=1, batch_size=10, lease_seconds=5, poll_seconds=0.05,
                      config_error_pause_seconds=0.5)


def message(n: int, rcpt: str = DOCTOR) -> bytes:
    return (f"From: {SENDER}\r\nTo: {rcpt}\r\nMessage-ID: <m{n}@connector.test>\r\n"
            f"Subject: test {n}\r\nMIME-Version: 1.0\r\n\r\nbody {n}\r\n.leading dot\r\n"
            ).encode("ascii")


def item(n: int, *, rcpt: str = DOCTOR, tenant: str = "chu", dsn: bool = False) -> OutboxItem:
    return OutboxItem(tenant_id=tenant, kind=OutboxKind.SMTP,
                      payload=MailJob(SENDER, rcpt, message(n, rcpt), request_dsn=dsn).encode(),
                      message_id=f"<m{n}@connector.test>", envid=f"env{n}",
                      recipient_domain=rcpt.partition("@")[2])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "connector.db")
    opened.open()
    yield opened
    await opened.close()


Workers = Callable[..., TenantDelivery]


@pytest.fixture
async def workers(store: SQLiteStore, pki: Pki) -> AsyncIterator[Workers]:
    started: list[TenantDelivery] = []

    def start(port: int, *, tenant: str = "chu", limits: DeliveryLimits = FAST,
              retry: RetryPolicy = FAST_RETRY, tls: object = None,
              metrics: ConnectorMetrics | None = None, rate_limiter: _RateLimiter | None = None,
              **endpoint: object) -> TenantDelivery:
        options: dict[str, object] = {"local_hostname": "connector.test", "connect_timeout": 5,
                                      "command_timeout": 5, "data_timeout": 5, **endpoint}
        transport = SmtpTransport(
            SmtpEndpoint("127.0.0.1", port, **options),  # type: ignore[arg-type]
            tls or client_tls(pki))  # type: ignore[arg-type]
        worker = TenantDelivery(tenant, store, transport, limits=limits, retry=retry,
                                metrics=metrics)
        if rate_limiter is not None:
            worker._rate = rate_limiter
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.stop(grace_seconds=2)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def states(store: SQLiteStore, tenant: str | None = None) -> list[OutboxState]:
    return [r.state for r in sorted(await store.list_outbox(tenant_id=tenant, limit=1000),
                                    key=lambda r: r.id)]


def all_in(store: SQLiteStore, state: OutboxState, count: int,
           tenant: str | None = None) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await states(store, tenant) == [state] * count
    return check


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- outcomes -------------------------------------------------------------------------------------


async def test_mails_are_submitted_over_one_connection_and_audited(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers) -> None:
    server = await smtp_server()
    ids = await store.enqueue([item(n) for n in range(5)])
    metrics = ConnectorMetrics()
    workers(server.port, metrics=metrics)
    await eventually(all_in(store, OutboxState.SENT, 5))
    assert sorted(server.recorder.messages) == sorted(message(n) for n in range(5))
    assert server.recorder.connections == 1  # one batch, one session
    audit = await store.list_audit()
    assert sorted(r.outbox_id for r in audit) == sorted(ids)
    assert {(r.action, r.result) for r in audit} == {(AuditAction.SUBMITTED, "250")}
    assert all("smtp://127.0.0.1:" in r.actor for r in audit)
    assert (await store.list_outbox())[0].smtp_code == "250"
    assert metrics.smtp_sends.labels("chu", "smtp", "sent")._value.get() == 5


async def two_sent(store: SQLiteStore, smtp_server: ServerFactory, workers: Workers, *,
                   advertise_dsn: bool) -> RunningServer:
    """Two mails sent, the first with ACK_RECEPTION, to a server that offers DSN or not."""
    server = await smtp_server(advertise_dsn=advertise_dsn)
    await store.enqueue([item(1, dsn=True), item(2, dsn=False)])
    workers(server.port)
    await eventually(all_in(store, OutboxState.SENT, 2))
    return server


async def test_dsn_is_requested_when_the_hospital_asked(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers) -> None:
    server = await two_sent(store, smtp_server, workers, advertise_dsn=True)
    options = {params.get("ENVID"): params for _, params in server.recorder.mail}
    assert options["env1"]["RET"] == "HDRS"
    assert None in options  # the mail without ACK_RECEPTION asks nothing
    rcpt = [params for _, params in server.recorder.rcpt]
    assert {"NOTIFY": "SUCCESS,FAILURE,DELAY", "ORCPT": f"rfc822;{DOCTOR}"} in rcpt
    # no delivery report asked: no NOTIFY, but ORCPT all the same (an MDN's Original-Recipient)
    assert {"ORCPT": f"rfc822;{DOCTOR}"} in rcpt
    assert len(rcpt) == 2


async def test_no_dsn_parameter_to_a_server_without_the_extension(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers) -> None:
    server = await two_sent(store, smtp_server, workers, advertise_dsn=False)
    assert [params for _, params in server.recorder.rcpt] == [{}, {}]
    assert all("ENVID" not in params for _, params in server.recorder.mail)


async def test_operator_down_at_start_mails_wait_then_go(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers) -> None:
    port = free_port()
    await store.enqueue([item(n) for n in range(3)])
    worker = workers(port)
    await eventually(all_in(store, OutboxState.READY, 3))
    await eventually(lambda: _has_audit(store, AuditAction.DEFERRED))
    assert worker.paused
    rows = await store.list_outbox()
    # The first mail met the refusal (SMTPERRORCODE 111); the tenant paused, and the rest of
    # the batch went back to the queue untried and unblamed.
    assert sorted(r.error_code or "" for r in rows) == ["", "", "111"]
    assert len({r.available_at for r in rows}) == 1  # all due when the pause ends
    server = await smtp_server(port=port)
    await eventually(all_in(store, OutboxState.SENT, 3))
    assert len(server.recorder.messages) == 3


async def _has_audit(store: SQLiteStore, action: AuditAction) -> bool:
    return any(r.action is action for r in await store.list_audit())


async def test_a_temporary_failure_is_retried_on_schedule(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers) -> None:
    server = await smtp_server(rcpt_replies={DOCTOR: "451 4.3.0 Try again later"})
    (row_id,) = await store.enqueue([item(1)])
    workers(server.port)
    await eventually(lambda: _has_audit(store, AuditAction.DEFERRED))
    detail = await store.get_outbox(row_id)
    assert detail is not None
    deferred = (await store.list_audit())[0]
    assert detail.summary.state is OutboxState.READY
    assert detail.summary.error_code == "451"
    assert detail.summary.available_at == pytest.approx(deferred.at + 0.3, abs=0.1)
    server.behaviour.rcpt_replies.clear()
    await eventually(all_in(store, OutboxState.SENT, 1))
    audit = await store.list_audit()
    assert [(r.action, r.result) for r in audit] == [(AuditAction.DEFERRED, "451"),
                                                     (AuditAction.SUBMITTED, "250")]
    assert audit[1].at >= detail.summary.available_at  # not before its schedule
    final = await store.get_outbox(row_id)
    assert final is not None
    assert final.summary.attempts == 2


async def test_a_permanent_refusal_fails_and_is_not_retried(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers) -> None:
    server = await smtp_server(rcpt_replies={OTHER: "550 5.1.1 No such user"})
    await store.enqueue([item(1, rcpt=OTHER), item(2)])
    workers(server.port)
    await eventually(lambda: _states_are(store, [OutboxState.FAILED, OutboxState.SENT]))
    await asyncio.sleep(0.5)  # longer than the retry delay: nothing more happens
    failed = (await store.list_outbox(state=OutboxState.FAILED))[0]
    assert (failed.error_code, failed.error_class, failed.attempts) == ("550", "permanent", 1)
    assert [a for a, _ in server.recorder.rcpt].count(OTHER) == 1
    refused = [r for r in await store.list_audit() if r.action is AuditAction.REFUSED]
    assert [(r.outbox_id, r.result) for r in refused] == [(failed.id, "550")]
    detail = await store.get_outbox(failed.id)
    assert detail is not None
    assert detail.error_detail is not None
    assert "No such user" in detail.error_detail


async def _states_are(store: SQLiteStore, expected: list[OutboxState]) -> bool:
    return await states(store) == expected


async def test_the_retry_budget_ends_in_dead(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers) -> None:
    server = await smtp_server(rcpt_replies={DOCTOR: "452 4.2.2 Mailbox full"})
    await store.enqueue([item(1)])
    workers(server.port, retry=replace(FAST_RETRY, initial_seconds=0.1, budget_seconds=0.5))
    await eventually(all_in(store, OutboxState.DEAD, 1))
    dead = (await store.list_outbox())[0]
    assert dead.error_code == "452"
    assert dead.attempts >= 2
    actions = [r.action for r in await store.list_audit()]
    assert actions[-1] is AuditAction.EXPIRED
    assert set(actions[:-1]) == {AuditAction.DEFERRED}


# -- configuration errors fail fast ---------------------------------------------------------------


async def test_an_untrusted_operator_pauses_the_tenant_with_an_actionable_error(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers, pki: Pki) -> None:
    server = await smtp_server()
    await store.enqueue([item(n) for n in range(4)])
    with structlog.testing.capture_logs() as logs:
        worker = workers(server.port, tls=client_tls(pki, trust=pki.other_ca),
                         limits=replace(FAST, config_error_pause_seconds=30))
        await eventually(lambda: _has_audit(store, AuditAction.DEFERRED))
        await asyncio.sleep(0.3)
    assert worker.paused
    assert worker.pause_reason is not None
    assert "certificate" in worker.pause_reason
    assert str(pki.other_ca.certificate) in worker.pause_reason
    rows = await store.list_outbox()
    assert {r.state for r in rows} == {OutboxState.READY}  # waiting, not failed
    assert min(r.available_at for r in rows) > time.time() + 20  # after the pause
    assert server.recorder.messages == []
    assert server.recorder.connections == 1  # no retry storm
    paused = [e for e in logs if e["event"] == "delivery_paused"]
    assert [e["reason"] for e in paused] == ["configuration"]


async def test_a_sender_refused_at_mail_pauses_the_tenant_instead_of_failing_every_mail(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers) -> None:
    # Postfix with reject_sender_login_mismatch, when the certificate is not the BAL's own
    server = await smtp_server(
        mail_reply="553 5.7.1 <bal@chu.mssante.fr>: Sender address rejected: not owned by user")
    await store.enqueue([item(n) for n in range(4)])
    with structlog.testing.capture_logs() as logs:
        worker = workers(server.port, limits=replace(FAST, config_error_pause_seconds=30))
        await eventually(lambda: _has_audit(store, AuditAction.DEFERRED))
        await asyncio.sleep(0.3)
    assert worker.paused
    assert worker.pause_reason is not None
    assert "553 5.7.1" in worker.pause_reason
    assert "[tenants.mailbox] address" in worker.pause_reason
    rows = await store.list_outbox()
    assert {r.state for r in rows} == {OutboxState.READY}  # waiting, none failed
    assert min(r.available_at for r in rows) > time.time() + 20  # after the pause
    assert len(server.recorder.mail) == 1  # one refusal, not one per mail
    assert not [r for r in await store.list_audit() if r.action is AuditAction.REFUSED]
    paused = [e for e in logs if e["event"] == "delivery_paused"]
    assert [e["reason"] for e in paused] == ["configuration"]
    assert "bal@" not in str(paused)  # the server's text, with its address, stays out of logs


async def test_a_message_refused_at_mail_for_its_size_fails_alone(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers) -> None:
    server = await smtp_server(mail_reply="552 5.3.4 Message size exceeds fixed limit")
    await store.enqueue([item(1), item(2)])
    workers(server.port)
    await eventually(all_in(store, OutboxState.FAILED, 2))
    failed = await store.list_outbox()
    assert {(r.error_code, r.error_class) for r in failed} == {("552", "permanent")}
    assert len(server.recorder.mail) == 2


async def test_no_client_certificate_is_a_configuration_error(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers, pki: Pki) -> None:
    server = await smtp_server()
    await store.enqueue([item(1)])
    worker = workers(server.port, tls=client_tls(pki, certificate=None),
                     limits=replace(FAST, config_error_pause_seconds=30))
    await eventually(lambda: _has_audit(store, AuditAction.DEFERRED))
    assert worker.paused
    assert worker.pause_reason is not None
    assert "client certificate" in worker.pause_reason
    assert server.recorder.messages == []


# -- leases, limits, tenants ----------------------------------------------------------------------


async def test_a_row_being_sent_cannot_be_cancelled_until_the_attempt_ends(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers) -> None:
    """While leased, the mail may be going out (here: stalled in DATA): a cancel then would
    say 'cancelled' of a mail the operator's server may have taken. Refused until the attempt
    ends; the time-out puts it back to wait, and then it is cancelled."""
    server = await smtp_server(stall_at_data=True)
    (row_id,) = await store.enqueue([item(1)])
    workers(server.port, data_timeout=1.0)
    await eventually(lambda: _states_are(store, [OutboxState.LEASED]))
    await eventually(lambda: _received_data(server))
    assert not await store.cancel(row_id)
    await eventually(lambda: _states_are(store, [OutboxState.READY]))
    assert await store.cancel(row_id)
    assert await states(store) == [OutboxState.CANCELLED]


async def _received_data(server: RunningServer) -> bool:
    return bool(server.recorder.rcpt)


class _RecordingLimiter(_RateLimiter):
    """The worker's rate cap on a fake clock (it moves only when the cap makes a send wait):
    when each send was let through, computed, never measured."""

    def __init__(self, rate: float) -> None:
        self.fake = FakeTime()
        super().__init__(rate, self.fake.clock, self.fake.sleep)
        self.released: list[float] = []

    async def acquire(self) -> None:
        await super().acquire()
        self.released.append(round(self.fake.now, 9))


async def test_the_rate_cap_spaces_sends(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers) -> None:
    server = await smtp_server()
    await store.enqueue([item(n) for n in range(30)])
    limiter = _RecordingLimiter(20)
    workers(server.port, limits=replace(FAST, rate_per_second=20, batch_size=30),
            rate_limiter=limiter)
    await eventually(all_in(store, OutboxState.SENT, 30))
    assert len(server.recorder.messages) == 30
    # Every send went through the cap: a burst of one second's worth (20), then one every
    # 50 ms for the last ten.
    assert limiter.released[:20] == [0.0] * 20
    assert limiter.released[20:] == [pytest.approx(0.05 * n) for n in range(1, 11)]


async def test_one_tenants_dead_operator_does_not_hold_up_another(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers) -> None:
    server = await smtp_server()
    await store.enqueue([item(n, tenant="a") for n in range(20)])
    await store.enqueue([item(100 + n, tenant="b") for n in range(20)])
    workers(free_port(), tenant="a")
    workers(server.port, tenant="b")
    await eventually(all_in(store, OutboxState.SENT, 20, tenant="b"))
    assert OutboxState.SENT not in await states(store, "a")
    assert len(server.recorder.messages) == 20


async def test_stop_releases_the_rows_not_yet_sent(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers, pki: Pki) -> None:
    server = await smtp_server()
    await store.enqueue([item(n) for n in range(30)])
    worker = workers(server.port, limits=replace(FAST, rate_per_second=20, batch_size=30))
    await eventually(lambda: _sent_some(server))
    await worker.stop(grace_seconds=5)
    left = await states(store)
    assert OutboxState.LEASED not in left  # released, not left to expire
    assert left.count(OutboxState.SENT) == len(server.recorder.messages) < 30


async def _sent_some(server: RunningServer) -> bool:
    return len(server.recorder.messages) >= 3


# -- MLLP to the dry-run Maildir ------------------------------------------------------------------


async def test_an_accepted_request_lands_in_the_dry_run_maildir(
        tmp_path: Path, app_factory: Callable[..., Awaitable[RunningApp]]) -> None:
    base = make_settings(tmp_path)
    tenant = replace(base.tenants[0], cisis=CisisSettings(
        schematron_policy=SchematronPolicy.OFF,
        sending_matrix=SendingMatrixProfile.ANS_EXAMPLES))
    running = await app_factory(replace(base, tenants=(tenant,)))
    payload = split_messages((CISIS_FIXTURES / "mdm-t02-initial/message.er7").read_bytes())[0]
    ack = await running.send(payload)
    assert b"MSA|AA" in ack
    store = running.app.store
    await eventually(all_in(store, OutboxState.SENT, 1))  # type: ignore[arg-type]
    (row,) = await store.list_outbox()
    detail = await store.get_outbox(row.id)
    assert detail is not None
    job = MailJob.decode(detail.payload)
    delivered = list((tenant.transport.maildir / "new").iterdir())
    assert [path.read_bytes() for path in delivered] == [job.message]
    assert delivered[0].stat().st_mode & 0o077 == 0  # health data: owner only
    assert job.rcpt_to == "adam.hoda@test-ci-sis.mssante.fr"
    assert row.inbound_id == (await running.rows())[0].id
    assert row.recipient_domain == "test-ci-sis.mssante.fr"
    audit = await store.list_audit()
    assert [(a.action, a.outbox_id) for a in audit] == [(AuditAction.SUBMITTED, row.id)]
    assert audit[0].actor.endswith("maildir")
    assert isinstance(running.app.delivery.tenants["chu-test"].transport, MaildirTransport)


async def test_a_stop_past_its_grace_releases_the_untried_rows_not_the_one_in_flight(
        store: SQLiteStore, smtp_server: ServerFactory, workers: Workers) -> None:
    """The mail in DATA may have been taken: it stays leased (sent again after its lease, as
    after a crash, which the README says); the rest of the batch is ready again at once."""
    server = await smtp_server(stall_at_data=True)
    ids = await store.enqueue([item(n) for n in range(3)])
    worker = workers(server.port, data_timeout=30.0)
    await eventually(lambda: _received_data(server))
    await worker.stop(grace_seconds=0.2)
    states_by_id = {row.id: row.state for row in await store.list_outbox()}
    assert sorted(states_by_id.values()) == sorted(
        [OutboxState.LEASED, OutboxState.READY, OutboxState.READY])
    assert states_by_id[ids[0]] is OutboxState.LEASED  # the first of the batch was in DATA


class _StallingTransport:
    """Sends instantly, except the first send: the process stalls (the event loop blocked, as
    under SIGSTOP, renewals included) past the lease, and meanwhile another worker takes the
    row whose lease expired (`take_over`)."""

    name, kind, dead_on_refusal, actor = "stall", OutboxKind.SMTP, False, "stall-test"

    def __init__(self, store: SQLiteStore, stall_seconds: float) -> None:
        self.store, self.stall_seconds, self.sent = store, stall_seconds, []

    def session(self) -> _StallingTransport:
        return self

    async def send(self, lease: object) -> object:
        from connector.delivery.smtp import Outcome, SendResult, Stage

        self.sent.append(lease.id)  # type: ignore[attr-defined]
        if len(self.sent) == 1:
            time.sleep(self.stall_seconds)  # the stall this test is about: the loop blocked
            (taken,) = await self.store.lease(tenant_id="chu", kinds=[OutboxKind.SMTP],
                                              limit=1, lease_seconds=60)
            assert taken.id == lease.id  # type: ignore[attr-defined]
        return SendResult(Outcome.SENT, Stage.DONE, "<m@x>", 250, "2.0.0", None, "ok", "sent",
                          dsn_requested=False)

    async def close(self) -> None:
        return None


async def test_a_stalled_worker_sends_no_row_whose_lease_it_may_have_lost(
        store: SQLiteStore) -> None:
    """From a PostgreSQL multi-replica audit: a replica stopped (SIGSTOP) past its leases sent
    its remaining rows on waking, after another replica had taken and sent them, and the first
    send had no audit row. Now the rows left are not sent by the stalled worker, and a send
    that outlived its lease is audited, saying so."""
    ids = await store.enqueue([item(n) for n in range(2)])
    transport = _StallingTransport(store, stall_seconds=1.2)
    limits = replace(FAST, lease_seconds=1.0)
    worker = TenantDelivery("chu", store, transport, limits=limits,  # type: ignore[arg-type]
                            retry=FAST_RETRY)
    with structlog.testing.capture_logs() as logs:
        (first, second) = await store.lease(tenant_id="chu", kinds=[OutboxKind.SMTP], limit=2,
                                            lease_seconds=1.0)
        await worker.deliver([first, second])
    assert transport.sent == [ids[0]]  # the second was not sent by the stalled worker
    lost = [(e["outbox_id"], e["transition"]) for e in logs if e["event"] == "delivery_lease_lost"]
    assert (ids[1], "send") in lost
    assert (ids[0], "sent") in lost  # the first was taken over while it was being sent
    audit = await store.list_audit(outbox_id=ids[0])
    assert [a.action for a in audit] == [AuditAction.SUBMITTED]
    assert "after its lease expired" in (audit[0].detail or "")


async def test_an_unreachable_store_is_said_once_backed_off_and_its_return_said(
        store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PostgreSQL audit saw two warnings a second per replica during an outage."""
    from connector.errors import StoreUnavailable

    real_lease = store.lease
    calls = 0

    async def failing_lease(**kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls <= 5:
            raise StoreUnavailable("connection refused")
        return await real_lease(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "lease", failing_lease)
    limits = replace(FAST, poll_seconds=0.01)
    with structlog.testing.capture_logs() as logs:
        worker = TenantDelivery("chu", store, MaildirTransport(tmp_path / "md"), limits=limits,
                                retry=FAST_RETRY)
        worker.start()
        await eventually(lambda: _async_true(calls > 6))
        await worker.stop(grace_seconds=1)
    events = [e["event"] for e in logs]
    assert events.count("delivery_store_unavailable") == 1
    assert events.count("delivery_store_available") == 1


async def _async_true(value: bool) -> bool:
    return value
