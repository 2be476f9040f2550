"""The PostgreSQL store under the real connector: replicas sharing one database, and the database
restarted under load.

* Two `serve` processes on one schema lease from the same outbox (FOR UPDATE SKIP LOCKED): when
  nothing fails, every row is sent exactly once, by one of them, and both take a share.
* PostgreSQL restarted (`pg_ctlcluster ... restart`) while MLLP senders stream: what is answered
  AR during the outage is sent again, as a real sender would; afterwards every message answered
  AA is stored, once, and every accepted request's mail is `sent` and reached the SMTP server (at
  least once: a resend after a lost `mark_sent` carries the same Message-ID and bytes).
* PostgreSQL restarted while the connector is idle: the connections the store kept open are dead
  once it is back; the next operator read, message (AA at once) and mail (leased and marked sent
  the first time, so sent once) must not trip over them.

The SMTP server is aiosmtpd in the test's event loop (STARTTLS, client certificate from the test
PKI), so the test only ever waits with `await`. PostgreSQL is the server of
MSSCONNECTOR_TEST_PG_DSN (skipped without it), one private schema per test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import IO

import pytest
import structlog

from connector.app import Application
from connector.cli.send_cmd import split_messages
from connector.delivery.job import MailJob
from connector.errors import ProtocolError, StoreError
from connector.mllp.client import MLLPClient
from connector.settings import parse_settings
from connector.store import (
    AuditAction,
    InboundStatus,
    OutboxItem,
    OutboxKind,
    OutboxState,
    OutboxSummary,
)
from connector.store.postgres import PostgresStore
from tests.conftest import CISIS_FIXTURES
from tests.integration.conftest import ack_fields
from tests.integration.test_intake_bad_input import adt
from tests.support.pg import PgSchema, local_cluster, pg_dsn, pg_schema
from tests.support.safeguards import sending_safeguards
from tests.support.smtp_server import SENDER, Pki, RunningServer, ServerFactory, pki, smtp_server

__all__ = ["pg_dsn", "pg_schema", "pki", "smtp_server"]  # fixtures

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TENANT = "chu"
DSN_ENV = "MSSC_E2E_STORE_DSN"  # the connector reads its DSN from this variable (store.dsn_env)
DOCTOR = "adam.hoda@test-ci-sis.mssante.fr"
MDM = split_messages((CISIS_FIXTURES / "mdm-t02-initial/message.er7").read_bytes())[0]


# -- helpers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connector_config(data_dir: Path, *, port: int, smtp: RunningServer, pki: Pki,
                     delivery: str) -> str:
    """One tenant, one listener on `port`, the PostgreSQL store from $DSN_ENV, SMTP to `smtp`
    (the whitelist written next to `data_dir`)."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return f"""
data_dir = "{data_dir}"
{sending_safeguards(data_dir.parent, DOCTOR.partition("@")[2])}
[logging]
level = "warning"
[store]
backend = "postgres"
dsn_env = "{DSN_ENV}"
[[tenants]]
id = "{TENANT}"
oid = "1.2.3"
[tenants.mailbox]
address = "{SENDER}"
nil = "DEV935997"
[tenants.cisis]
sending_matrix = "ans-examples"
schematron_policy = "off"
[[tenants.listeners]]
host = "127.0.0.1"
port = {port}
[tenants.transport]
kind = "smtp"
host = "{smtp.host}"
port = {smtp.port}
tls = "starttls"
ca_bundle = "{pki.ca.certificate}"
client_certificate = "{pki.client.certificate}"
client_private_key = "{pki.client.private_key}"
[tenants.delivery]
{delivery}
"""


def message_id_of(raw: bytes) -> str:
    header = BytesHeaderParser().parsebytes(raw)["Message-ID"]
    assert header is not None
    return str(header).strip()


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float,
                     what: Callable[[], Awaitable[str]]) -> None:
    """Poll `condition` without blocking the loop (the SMTP server runs in it)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {await what()}")
        await asyncio.sleep(0.1)


async def outbox(store: PostgresStore) -> list[OutboxSummary]:
    return await store.list_outbox(tenant_id=TENANT, limit=100_000)


async def outbox_states(store: PostgresStore) -> str:
    return str(Counter(row.state.value for row in await outbox(store)))


# -- two replicas -------------------------------------------------------------------------------


ROWS = 200


@dataclass
class Replica:
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start_replica(directory: Path, *, smtp: RunningServer, pki: Pki, dsn: str) -> Replica:
    directory.mkdir()
    port = free_port()
    config = directory / "connector.toml"
    config.write_text(connector_config(
        directory / "var", port=port, smtp=smtp, pki=pki,
        delivery="concurrency = 2\nbatch_size = 5\npoll_seconds = 0.05\nlease_seconds = 60"),
        encoding="utf-8")
    log = directory / "stderr.log"
    log_file = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "serve", "--config", str(config)],
        stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, DSN_ENV: dsn})
    return Replica(port, process, log, log_file)


async def wait_listening(replica: Replica, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            raise AssertionError(f"connector exited ({replica.process.returncode}):\n"
                                 f"{replica.log_tail()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", replica.port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"connector did not listen within {timeout}s:\n{replica.log_tail()}")


async def stop_replica(replica: Replica) -> int | None:
    """SIGTERM, then the exit code (None if it had to be killed)."""
    process = replica.process
    code: int | None = None
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        code = process.poll()
        if code is None:
            process.kill()
            process.wait()
    finally:
        replica.log_file.close()
    return code


def mail_item(n: int, token: str) -> OutboxItem:
    message_id = f"<m{n}.{token}@connector.test>"
    message = (f"From: {SENDER}\r\nTo: {DOCTOR}\r\nMessage-ID: {message_id}\r\n"
               f"Subject: replica test {n}\r\nMIME-Version: 1.0\r\n\r\nbody {n}\r\n").encode()
    return OutboxItem(tenant_id=TENANT, kind=OutboxKind.SMTP,
                      payload=MailJob(SENDER, DOCTOR, message).encode(), message_id=message_id,
                      envid=f"env{n}", recipient_domain=DOCTOR.partition("@")[2])


async def test_two_replicas_sharing_the_database_send_every_row_once(
        tmp_path: Path, pki: Pki, smtp_server: ServerFactory, pg_schema: PgSchema) -> None:
    server = await smtp_server()
    store = PostgresStore(pg_schema.dsn)
    store.open()  # migrated before the replicas start: they find the schema ready
    replicas: list[Replica] = []
    codes: list[int | None] = []
    try:
        for n in range(2):
            replicas.append(start_replica(tmp_path / f"replica{n}", smtp=server, pki=pki,
                                          dsn=pg_schema.dsn))
        for replica in replicas:
            await wait_listening(replica)
        # Both are polling the outbox when the rows appear: they compete for every batch.
        token = secrets.token_hex(4)
        ids = await store.enqueue([mail_item(n, token) for n in range(ROWS)])

        async def all_sent() -> bool:
            return len(await store.list_outbox(state=OutboxState.SENT, limit=1000)) == ROWS

        async def progress() -> str:
            return (f"outbox {await outbox_states(store)}, server got "
                    f"{len(server.recorder.messages)}\n"
                    + "\n".join(r.log_tail() for r in replicas))

        started = time.monotonic()
        await eventually(all_sent, 45, progress)
        elapsed = time.monotonic() - started
        rows = await outbox(store)
        audit = await store.list_audit(tenant_id=TENANT)
    finally:
        for replica in replicas:
            codes.append(await stop_replica(replica))
        await store.close()
    assert codes == [0, 0], "\n".join(r.log_tail() for r in replicas)

    # The server got each Message-ID exactly once.
    received = Counter(message_id_of(raw) for raw in server.recorder.messages)
    assert sorted(m for m, count in received.items() if count > 1) == []  # no mail twice
    assert sorted(received) == sorted(row.message_id for row in rows)  # none missing
    total = len(server.recorder.messages)
    assert total == ROWS
    # Each row was leased once (no lease expired or was taken twice) and submitted once.
    assert sorted(row.id for row in rows) == sorted(ids)
    assert {row.attempts for row in rows} == {1}
    submitted = [a for a in audit if a.action is AuditAction.SUBMITTED]
    assert [a.action for a in audit] == [AuditAction.SUBMITTED] * ROWS
    assert sorted(a.outbox_id for a in submitted) == sorted(ids)
    # Both replicas took a share; the actor is "host:pid smtp://host:port".
    by_pid = Counter(int(a.actor.split()[0].rpartition(":")[2]) for a in submitted)
    assert set(by_pid) == {r.process.pid for r in replicas}, by_pid
    print(f"{ROWS} rows sent in {elapsed:.1f}s, shares by pid: {dict(by_pid)}")


# -- PostgreSQL restarted under load ------------------------------------------------------------


def mdm(control_id: str) -> bytes:
    msh, sep, rest = MDM.partition(b"\r")
    assert msh.count(b"|015|") == 1
    return msh.replace(b"|015|", f"|{control_id}|".encode()) + sep + rest


@dataclass
class Traffic:
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    acked: list[str] = field(default_factory=list)  # control ids answered AA
    refused: int = 0  # AR answers (the store was unavailable): sent again
    broken: int = 0  # connection failures: sent again on a new connection
    restarted_at: int | None = None  # len(acked) when the restart command returned

    def acked_after_restart(self, prefix: str) -> int:
        if self.restarted_at is None:
            return 0
        return sum(1 for c in self.acked[self.restarted_at:] if c.startswith(prefix))


async def sender(port: int, prefix: str, build: Callable[[str], bytes], traffic: Traffic
                 ) -> None:
    """Send messages one after the other; each one again and again until it is answered AA."""
    client: MLLPClient | None = None
    n = 0
    try:
        while not traffic.stop.is_set():
            control_id = f"{prefix}{n}"
            payload = build(control_id)
            while True:
                try:
                    if client is None:
                        client = MLLPClient("127.0.0.1", port, timeout=10)
                        await client.connect()
                    ack = await client.send(payload)
                except (ProtocolError, OSError):
                    traffic.broken += 1
                    if client is not None:
                        await client.close()
                    client = None
                    await asyncio.sleep(0.1)
                    continue
                fields = ack_fields(ack)
                assert fields["acked"] == control_id
                if fields["code"] == "AA":
                    traffic.acked.append(control_id)
                    break
                assert fields["code"] == "AR", fields  # nothing else is expected here
                traffic.refused += 1
                await asyncio.sleep(0.05)
            n += 1
    finally:
        if client is not None:
            await client.close()


async def test_postgres_restart_under_load_loses_nothing(
        tmp_path: Path, pki: Pki, smtp_server: ServerFactory, pg_schema: PgSchema) -> None:
    cluster = local_cluster(pg_schema.server_dsn)
    if isinstance(cluster, str):
        pytest.skip(cluster)
    server = await smtp_server()
    text = connector_config(
        tmp_path / "var", port=free_port(), smtp=server, pki=pki,
        delivery="concurrency = 2\nbatch_size = 5\npoll_seconds = 0.1\nlease_seconds = 3\n"
                 "retry_initial_seconds = 0.5\nretry_maximum_seconds = 2")
    settings = parse_settings(tomllib.loads(text), env={DSN_ENV: pg_schema.dsn})
    app = Application.build(settings)
    store = app.store
    assert isinstance(store, PostgresStore)
    traffic = Traffic()
    senders: list[asyncio.Task[None]] = []
    try:
        await app.start()
        port = app.servers[0].address[1]
        senders = [asyncio.create_task(sender(port, f"A{w}-", adt, traffic)) for w in range(3)]
        senders += [asyncio.create_task(sender(port, f"M{w}-", mdm, traffic)) for w in range(2)]

        def failed() -> None:  # a sender that met an unexpected answer fails the test now
            for task in senders:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    task.result()

        async def stream_before() -> bool:
            failed()
            return len(traffic.acked) >= 150 and sum(c.startswith("M") for c in traffic.acked) >= 5

        async def stream_after() -> bool:
            failed()
            return (traffic.acked_after_restart("A") >= 150
                    and traffic.acked_after_restart("M") >= 5)

        async def progress() -> str:
            return (f"acked {len(traffic.acked)} (restart at {traffic.restarted_at}), "
                    f"refused {traffic.refused}, broken {traffic.broken}")

        await eventually(stream_before, 20, progress)
        started = time.monotonic()
        restart = await asyncio.create_subprocess_exec(
            *cluster.restart_command(), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(restart.communicate(), 60)
        assert restart.returncode == 0, err.decode(errors="replace")
        restart_seconds = time.monotonic() - started
        traffic.restarted_at = len(traffic.acked)
        await eventually(stream_after, 30, progress)
        traffic.stop.set()
        await asyncio.wait_for(asyncio.gather(*senders), 20)

        # Every message answered AA is stored, accepted, once (a resend after an AR whose
        # COMMIT had in fact happened is answered as a retransmission, not stored again).
        inbound = await store.list_inbound(tenant_id=TENANT, limit=100_000)
        stored = Counter(row.control_id for row in inbound)
        accepted = {row.control_id: row for row in inbound
                    if row.status is InboundStatus.ACCEPTED}
        assert [c for c in traffic.acked if c not in accepted] == []
        assert [c for c, count in stored.items() if count > 1] == []
        assert len(traffic.acked) == len(set(traffic.acked))
        assert traffic.refused > 0, "the restart was not felt: nothing was answered AR"

        # Every accepted request's mail ends sent and reached the server, with its Message-ID.
        requests = {row.id for c, row in accepted.items() if c is not None and c.startswith("M")}

        async def mails_sent() -> bool:
            rows = await outbox(store)
            return len(rows) == len(requests) and all(r.state is OutboxState.SENT for r in rows)

        async def mail_progress() -> str:
            return f"{len(requests)} requests, outbox {await outbox_states(store)}"

        await eventually(mails_sent, 30, mail_progress)
        rows = await outbox(store)
        audit = await store.list_audit(tenant_id=TENANT)
    finally:
        traffic.stop.set()
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        try:
            await asyncio.to_thread(cluster.ensure_running)  # whatever happened above
        finally:
            await app.stop(grace_seconds=5)

    assert sorted(row.inbound_id for row in rows) == sorted(requests)
    copies: dict[str, list[bytes]] = defaultdict(list)
    for raw in server.recorder.messages:
        copies[message_id_of(raw)].append(raw)
    assert sorted(copies) == sorted(row.message_id for row in rows)
    # A mail sent twice (its `sent` lost with the connection) is the same mail, byte for byte.
    assert [m for m, raws in copies.items() if len(set(raws)) != 1] == []
    assert sorted({a.outbox_id for a in audit if a.action is AuditAction.SUBMITTED}) == \
        sorted(row.id for row in rows)
    resent = sum(len(raws) - 1 for raws in copies.values())
    print(f"restart took {restart_seconds:.1f}s; {len(traffic.acked)} messages acked "
          f"({len(requests)} requests), {traffic.refused} AR, {traffic.broken} broken "
          f"connections, {resent} mails sent twice")


async def test_postgres_restart_while_idle_costs_no_refusal_and_no_second_mail(
        tmp_path: Path, pki: Pki, smtp_server: ServerFactory, pg_schema: PgSchema) -> None:
    """The server restarted while the connector had nothing to do (maintenance, a fail-over):
    the connections the store keeps open were closed by it. Once it is back, the next operator
    read, the next message and its mail must not fail on those dead connections: an AR would make
    the sender wait, a failed lease delays the mail by a poll period, and a failed `mark_sent`
    after the operator took the mail would send it a second time."""
    cluster = local_cluster(pg_schema.server_dsn)
    if isinstance(cluster, str):
        pytest.skip(cluster)
    server = await smtp_server()
    # One session that polls rarely: after the restart, only intake's wake-up gets the mail out
    # in time, through a lease that must work the first time.
    text = connector_config(
        tmp_path / "var", port=free_port(), smtp=server, pki=pki,
        delivery="concurrency = 1\nbatch_size = 5\npoll_seconds = 20\nlease_seconds = 30")
    app = Application.build(parse_settings(tomllib.loads(text), env={DSN_ENV: pg_schema.dsn}))
    store = app.store
    assert isinstance(store, PostgresStore)

    async def first_answer(control_id: str) -> str:
        async with MLLPClient("127.0.0.1", app.servers[0].address[1], timeout=10) as client:
            return ack_fields(await client.send(mdm(control_id)))["code"]

    async def sent(count: int) -> bool:
        rows = await outbox(store)
        return len(rows) == count and all(r.state is OutboxState.SENT for r in rows)

    async def mail_progress() -> str:
        return f"outbox {await outbox_states(store)}"

    problems: list[str] = []
    try:
        await app.start()
        assert await first_answer("I0") == "AA"
        await eventually(lambda: sent(1), 10, mail_progress)  # every pool has used connections
        restart = await asyncio.create_subprocess_exec(
            *cluster.restart_command(), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(restart.communicate(), 60)
        assert restart.returncode == 0, err.decode(errors="replace")
        await asyncio.to_thread(cluster.ensure_running)  # accepting connections again
        with structlog.testing.capture_logs() as logs:
            try:
                await store.list_outbox()
            except StoreError as exc:
                problems.append(f"first operator read failed: {exc}")
            code = await first_answer("I1")
            if code != "AA":
                problems.append(f"first message answered {code}")
                while code != "AA":  # as the sender would, to see what delivery does next
                    await asyncio.sleep(0.1)
                    code = await first_answer("I1")
            started = time.monotonic()
            await eventually(lambda: sent(2), 30, mail_progress)
            if time.monotonic() - started > 10:
                problems.append("the mail waited for the next poll: its lease failed")
        problems += [f"{e['event']}: {e.get('error')}" for e in logs
                     if e["event"] in ("store_failed", "delivery_store_unavailable",
                                       "delivery_renew_failed")]
        rows = await outbox(store)
    finally:
        try:
            await asyncio.to_thread(cluster.ensure_running)
        finally:
            await app.stop(grace_seconds=5)

    received = Counter(message_id_of(raw) for raw in server.recorder.messages)
    assert received == Counter({row.message_id: 1 for row in rows})
    assert {row.attempts for row in rows} == {1}
    assert problems == [], "\n".join(problems)
