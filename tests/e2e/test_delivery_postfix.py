"""End to end against a real Postfix playing the MSSanté operator (STARTTLS submission, client
certificate from the test CA required, virtual mailboxes): MLLP in, the mail read back from the
recipient's Maildir, and the faults an operator shows in production."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from email.message import EmailMessage
from io import BytesIO
from pathlib import Path

import pytest
import structlog

from connector.app import Application
from connector.cda.policy import SchematronPolicy
from connector.cli.send_cmd import split_messages
from connector.delivery.job import MailJob
from connector.hl7.message import parse_message
from connector.mllp.client import MLLPClient
from connector.settings import (
    CisisSettings,
    DeliverySettings,
    MailboxSettings,
    SendingMatrixProfile,
    Settings,
    SmtpSettings,
    TransportKind,
    TransportSettings,
)
from connector.store import AuditAction, OutboxItem, OutboxKind, OutboxState
from connector.store.sqlite import SQLiteStore
from tests.conftest import CISIS_FIXTURES
from tests.e2e.conftest import Apps
from tests.integration.conftest import make_settings
from tests.support.mailserver import (
    DEFAULT_MAILBOXES,
    SENDER,
    MailServer,
    postfix_unavailable,
)
from tests.support.pki import TestCA
from tests.support.safeguards import sending_safeguards

pytestmark = pytest.mark.slow

RECIPIENT = "adam.hoda@test-ci-sis.mssante.fr"  # the PRT of the ANS MDM examples
DOCTOR = "dr.hoda@medecin.mssante.fr"
UNKNOWN = "nobody@medecin.mssante.fr"
MDM_T02 = CISIS_FIXTURES / "mdm-t02-initial/message.er7"


@pytest.fixture(scope="module")
def operator() -> Iterator[MailServer]:
    reason = postfix_unavailable()
    if reason is not None:
        pytest.skip(reason)
    server = MailServer(mailboxes=(*DEFAULT_MAILBOXES, RECIPIENT))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def empty_mailboxes(operator: MailServer) -> None:
    if not operator.running:
        operator.start()
    operator.clear()


def smtp_settings(operator: MailServer, *, ca: Path | None = None,
                  with_certificate: bool = True) -> SmtpSettings:
    client = operator.client_cert
    return SmtpSettings(
        host=operator.host, port=operator.submission_port, ca_bundle=ca or operator.ca.certificate,
        client_certificate=client.certificate if with_certificate else None,
        client_private_key=client.private_key if with_certificate else None,
        local_hostname="connector.test", connect_timeout_seconds=5, command_timeout_seconds=10,
        data_timeout_seconds=30)


def settings(tmp_path: Path, smtp: SmtpSettings, **delivery: float) -> Settings:
    base = make_settings(tmp_path)
    tenant = replace(
        base.tenants[0],
        mailbox=MailboxSettings(SENDER, "CHU Test"),
        cisis=CisisSettings(schematron_policy=SchematronPolicy.OFF,
                            sending_matrix=SendingMatrixProfile.ANS_EXAMPLES),
        transport=TransportSettings(TransportKind.SMTP, tmp_path / "unused", smtp),
        delivery=replace(DeliverySettings(poll_seconds=0.05, retry_initial_seconds=0.3,
                                          retry_maximum_seconds=1.0, retry_jitter=0.0,
                                          config_error_pause_seconds=30.0), **delivery))
    return replace(base, tenants=(tenant,))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def outbox_states(app: Application) -> list[OutboxState]:
    return [r.state for r in sorted(await app.store.list_outbox(limit=10_000),
                                    key=lambda r: r.id)]


def states_are(app: Application, expected: list[OutboxState]
               ) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await outbox_states(app) == expected
    return check


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def attachments(message: EmailMessage) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for part in message.iter_attachments():
        assert isinstance(part, EmailMessage)
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found[part.get_filename() or ""] = payload
    return found


def cda_of(request: bytes) -> bytes:
    """The CDA the hospital sent: OBX-5 (ED, base64) of the request."""
    message = parse_message(request.decode("utf-8"))
    decoded = [base64.b64decode(obx.component(5, 5)) for obx in message.all("OBX")
               if obx.value(2) == "ED"]
    documents = [d for d in decoded if b"ClinicalDocument" in d[:200]]  # not the mail body
    assert len(documents) == 1
    return documents[0]


def mail(n: int, rcpt: str = DOCTOR) -> OutboxItem:
    content = (f"From: {SENDER}\r\nTo: {rcpt}\r\nMessage-ID: <e2e-{n}@connector.test>\r\n"
               f"Subject: e2e {n}\r\nMIME-Version: 1.0\r\n\r\nbody {n}\r\n").encode()
    return OutboxItem(tenant_id="chu-test", kind=OutboxKind.SMTP,
                      payload=MailJob(SENDER, rcpt, content).encode(),
                      message_id=f"<e2e-{n}@connector.test>", envid=f"e2e{n}",
                      recipient_domain=rcpt.partition("@")[2])


# -- the whole path -------------------------------------------------------------------------------


async def test_a_request_reaches_the_recipients_mailbox_byte_for_byte(
        tmp_path: Path, operator: MailServer, apps: Apps) -> None:
    app = await apps(settings(tmp_path, smtp_settings(operator)))
    request = split_messages(MDM_T02.read_bytes())[0]
    host, port = app.servers[0].address
    async with MLLPClient(host, port, timeout=30) as client:
        ack = await client.send(request)
    assert b"MSA|AA" in ack
    await eventually(states_are(app, [OutboxState.SENT]))
    (delivered,) = await asyncio.to_thread(operator.wait_for_messages, RECIPIENT, 1, 20)
    (row,) = await app.store.list_outbox()
    detail = await app.store.get_outbox(row.id)
    assert detail is not None
    built = parsed(MailJob.decode(detail.payload).message)
    received = parsed(delivered)
    assert received["Message-ID"] == built["Message-ID"] == row.message_id
    assert received["To"] == RECIPIENT
    sent_parts, received_parts = attachments(built), attachments(received)
    assert received_parts == sent_parts  # every attachment, byte for byte
    assert "IHE_XDM.ZIP" in {name.upper() for name in received_parts}
    xdm = next(data for name, data in received_parts.items() if name.upper() == "IHE_XDM.ZIP")
    with zipfile.ZipFile(BytesIO(xdm)) as archive:
        documents = [archive.read(n) for n in archive.namelist()
                     if n.upper().startswith("IHE_XDM/") and n.upper().endswith(".XML")
                     and not n.upper().endswith("METADATA.XML")]
    assert cda_of(request) in documents  # the hospital's CDA, unchanged, inside the archive
    assert "TLS" in received["Received"]  # submitted over TLS
    audit = await app.store.list_audit()
    assert [(a.action, a.result) for a in audit] == [(AuditAction.SUBMITTED, "250")]


async def test_a_success_dsn_is_requested_when_the_hospital_asked(
        tmp_path: Path, operator: MailServer, apps: Apps) -> None:
    app = await apps(settings(tmp_path, smtp_settings(operator)))
    item = replace(mail(1), payload=MailJob(SENDER, DOCTOR, MailJob.decode(
        mail(1).payload).message, request_dsn=True).encode())
    await app.store.enqueue([item])
    app.delivery.wake("chu-test")
    await eventually(states_are(app, [OutboxState.SENT]))
    (report,) = await asyncio.to_thread(operator.wait_for_messages, SENDER, 1, 20)
    dsn = parsed(report)
    assert dsn.get_content_type() == "multipart/report"
    assert "Original-Envelope-Id: e2e1" in report.decode("utf-8", "replace")
    assert "Action: delivered" in report.decode("utf-8", "replace")


# -- faults ---------------------------------------------------------------------------------------


async def test_an_unknown_recipient_fails_and_is_not_retried(
        tmp_path: Path, operator: MailServer, apps: Apps) -> None:
    app = await apps(settings(tmp_path, smtp_settings(operator)))
    await app.store.enqueue([mail(1, UNKNOWN), mail(2)])
    app.delivery.wake("chu-test")
    await eventually(states_are(app, [OutboxState.FAILED, OutboxState.SENT]))
    await asyncio.sleep(0.6)  # twice the retry delay: nothing more happens
    failed = (await app.store.list_outbox(state=OutboxState.FAILED))[0]
    assert (failed.error_code, failed.attempts) == ("550", 1)
    assert await outbox_states(app) == [OutboxState.FAILED, OutboxState.SENT]
    assert len(operator.messages(DOCTOR)) == 1


async def test_the_operator_down_at_start_mails_wait_then_go(
        tmp_path: Path, operator: MailServer, apps: Apps) -> None:
    operator.stop()
    app = await apps(settings(tmp_path, smtp_settings(operator)))
    await app.store.enqueue([mail(n) for n in range(5)])
    app.delivery.wake("chu-test")
    await eventually(lambda: _audited(app, AuditAction.DEFERRED))
    assert app.delivery.tenants["chu-test"].paused
    assert OutboxState.SENT not in await outbox_states(app)
    operator.start()
    await eventually(states_are(app, [OutboxState.SENT] * 5))
    delivered = await asyncio.to_thread(operator.wait_for_messages, DOCTOR, 5, 20)
    assert sorted(parsed(m)["Message-ID"] for m in delivered) == sorted(
        f"<e2e-{n}@connector.test>" for n in range(5))


async def _audited(app: Application, action: AuditAction) -> bool:
    return any(a.action is action for a in await app.store.list_audit())


async def test_a_server_signed_by_another_ca_is_a_clear_configuration_error(
        tmp_path: Path, operator: MailServer, apps: Apps) -> None:
    other = TestCA(tmp_path / "other", name="Some Other Root")
    with structlog.testing.capture_logs() as logs:
        app = await apps(settings(tmp_path, smtp_settings(operator, ca=other.certificate)))
        await app.store.enqueue([mail(1), mail(2)])
        app.delivery.wake("chu-test")
        await eventually(lambda: _audited(app, AuditAction.DEFERRED))
        await asyncio.sleep(0.3)
    worker = app.delivery.tenants["chu-test"]
    assert worker.paused
    assert worker.pause_reason is not None
    assert "failed verification" in worker.pause_reason
    assert str(other.certificate) in worker.pause_reason
    assert await outbox_states(app) == [OutboxState.READY] * 2  # waiting for a fix, not failed
    paused = [e for e in logs if e["event"] == "delivery_paused"]
    assert [e["reason"] for e in paused] == ["configuration"]
    assert operator.messages(DOCTOR) == []


async def test_no_client_certificate_is_a_clear_configuration_error(
        tmp_path: Path, operator: MailServer, apps: Apps) -> None:
    smtp = replace(smtp_settings(operator, with_certificate=False))
    app = await apps(settings(tmp_path, smtp))
    await app.store.enqueue([mail(1)])
    app.delivery.wake("chu-test")
    await eventually(lambda: _audited(app, AuditAction.DEFERRED))
    worker = app.delivery.tenants["chu-test"]
    assert worker.paused
    assert worker.pause_reason is not None
    assert "no client certificate is configured" in worker.pause_reason
    (row,) = await app.store.list_outbox()
    assert (row.state, row.error_class) == (OutboxState.READY, "config_error")
    assert operator.messages(DOCTOR) == []


# -- crash ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve_config(tmp_path: Path, operator: MailServer) -> Path:
    client = operator.client_cert
    config = tmp_path / "connector.toml"
    config.write_text(f"""
data_dir = "{tmp_path / 'var'}"
{sending_safeguards(tmp_path, DOCTOR.partition("@")[2])}
[logging]
level = "warning"
[[tenants]]
id = "chu-test"
oid = "1.2.3"
[tenants.mailbox]
address = "{SENDER}"
nil = "DEV935997"
[[tenants.listeners]]
port = {_free_port()}
[tenants.transport]
kind = "smtp"
host = "{operator.host}"
port = {operator.submission_port}
ca_bundle = "{operator.ca.certificate}"
client_certificate = "{client.certificate}"
client_private_key = "{client.private_key}"
[tenants.delivery]
concurrency = 2
batch_size = 25
lease_seconds = 2
poll_seconds = 0.05
""", encoding="utf-8")
    return config


def _serve(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "connector", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def test_sigkill_mid_batch_every_mail_is_delivered_with_its_message_id(
        tmp_path: Path, operator: MailServer) -> None:
    config = _serve_config(tmp_path, operator)
    store = SQLiteStore(tmp_path / "var" / "connector.db")
    store.open()
    count = 300
    await store.enqueue([mail(n) for n in range(count)])
    await store.close()
    process = _serve(config)
    try:
        deadline = time.monotonic() + 30
        while len(operator.message_files(DOCTOR)) < 40:
            assert process.poll() is None, process.stderr.read() if process.stderr else b""
            assert time.monotonic() < deadline, "no mail delivered before the kill"
            await asyncio.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert len(operator.message_files(DOCTOR)) < count  # killed mid-way
        process = _serve(config)
        deadline = time.monotonic() + 60
        while True:
            ids = [parsed(m)["Message-ID"] for m in operator.messages(DOCTOR)]
            if len(set(ids)) == count:
                break
            assert process.poll() is None, process.stderr.read() if process.stderr else b""
            assert time.monotonic() < deadline, f"{len(set(ids))} of {count} delivered"
            await asyncio.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    assert set(ids) == {f"<e2e-{n}@connector.test>" for n in range(count)}
    # Any duplicate (a mail sent, then killed before its row said so) is the same mail.
    duplicates = len(ids) - count
    assert duplicates <= 2 * 25  # at most what the two leased batches held
    reader = SQLiteStore(tmp_path / "var" / "connector.db")
    reader.open(read_only=True)
    rows = await reader.list_outbox(limit=10_000)
    assert {r.state for r in rows} == {OutboxState.SENT}
