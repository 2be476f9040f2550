"""Multi-tenant hosting: a reload (SIGHUP) adds, replaces and removes tenants without a restart,
leaves the others alone, and a bad new configuration changes nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from connector.app import Application
from connector.errors import ConfigError
from connector.mllp.client import MLLPClient
from connector.settings import ListenerSettings, Settings, TransportKind, TransportSettings
from tests.integration.conftest import make_settings
from tests.integration.test_intake_bad_input import adt


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def two_tenants(tmp_path: Path) -> Settings:
    base = make_settings(tmp_path)
    first = replace(base.tenants[0], id="chu-a",
                    listeners=(ListenerSettings("a", port=free_port()),))
    second = replace(base.tenants[0], id="chu-b", name="CHU B",
                     listeners=(ListenerSettings("b", port=free_port()),),
                     transport=TransportSettings(maildir=tmp_path / "maildir-b"))
    return replace(base, tenants=(first, second))


async def answer(port: int, control_id: str) -> bytes:
    async with MLLPClient("127.0.0.1", port, timeout=5) as client:
        return await client.send(adt(control_id))


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_reload_adds_replaces_and_removes_tenants(tmp_path: Path) -> None:
    full = two_tenants(tmp_path)
    app = Application.build(replace(full, tenants=full.tenants[:1]))
    await app.start()
    try:
        a_port = full.tenants[0].listeners[0].port
        b_port = full.tenants[1].listeners[0].port
        a_server = app.tenants["chu-a"].servers[0]
        assert await refused(b_port)
        report = await app.reload(full)
        assert (report.added, report.replaced, report.removed) == (("chu-b",), (), ())
        assert b"MSA|AA" in await answer(b_port, "B1")
        assert app.tenants["chu-a"].servers[0] is a_server  # untouched
        assert b"MSA|AA" in await answer(a_port, "A1")
        renamed = replace(full, tenants=(full.tenants[0],
                                         replace(full.tenants[1], name="CHU B (nouveau)")))
        report = await app.reload(renamed)
        assert report.replaced == ("chu-b",)
        assert app.tenants["chu-a"].servers[0] is a_server
        app.metrics.delivery_paused.labels("chu-a").set(1)  # paused when it is removed
        report = await app.reload(replace(renamed, tenants=renamed.tenants[1:]))
        assert report.removed == ("chu-a",)
        assert app.metrics.registry.get_sample_value(  # no alert left firing for it
            "mssconnector_delivery_paused", {"tenant": "chu-a"}) is None
        assert await refused(a_port)
        assert b"MSA|AA" in await answer(b_port, "B2")
        assert sorted(app.delivery.tenants) == ["chu-b"]
        rows = await app.store.list_inbound()
        assert sorted(r.tenant_id for r in rows) == ["chu-a", "chu-b", "chu-b"]
    finally:
        await app.stop(grace_seconds=1)


async def test_a_bad_reload_changes_nothing(tmp_path: Path) -> None:
    full = two_tenants(tmp_path)
    app = Application.build(replace(full, tenants=full.tenants[:1]))
    await app.start()
    try:
        broken_ca = tmp_path / "broken.pem"
        broken_ca.write_text("not a certificate")
        from connector.settings import SmtpSettings

        bad_b = replace(full.tenants[1], transport=TransportSettings(
            TransportKind.SMTP, tmp_path, SmtpSettings(host="smtp.test", ca_bundle=broken_ca)))
        with pytest.raises(ConfigError) as caught:
            await app.reload(replace(full, tenants=(full.tenants[0], bad_b)))
        assert caught.value.key == "tenants[1].transport.ca_bundle"
        assert list(app.tenants) == ["chu-a"]
        assert app.settings.tenants == full.tenants[:1]
        assert b"MSA|AA" in await answer(full.tenants[0].listeners[0].port, "A1")
    finally:
        await app.stop(grace_seconds=1)


def _config(tmp_path: Path, ports: list[int]) -> str:
    text = f'data_dir = "{tmp_path / "var"}"\n[logging]\nlevel = "warning"\n'
    for n, port in enumerate(ports):
        text += (f'[[tenants]]\nid = "chu-{n}"\noid = "1.2.3"\n'
                 f"[[tenants.listeners]]\nport = {port}\n")
    return text


@pytest.mark.slow
async def test_sighup_adds_a_tenant_to_a_running_serve(tmp_path: Path) -> None:
    config = tmp_path / "connector.toml"
    first, second = free_port(), free_port()
    config.write_text(_config(tmp_path, [first]))
    process = subprocess.Popen([sys.executable, "-m", "connector", "serve", "--config",
                                str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 20
        while await refused(first):
            assert process.poll() is None
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await refused(second)
        config.write_text(_config(tmp_path, [first, second]))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while await refused(second):
            assert process.poll() is None, "serve exited on SIGHUP"
            assert time.monotonic() < deadline, "the new tenant's listener never came up"
            await asyncio.sleep(0.05)
        assert b"MSA|AA" in await answer(second, "NEW1")
        assert b"MSA|AA" in await answer(first, "OLD1")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


async def test_a_reload_rereads_crl_files_that_were_replaced(tmp_path: Path) -> None:
    """The job that downloads the IGC-Santé CRLs replaces the files and sends SIGHUP: the
    tenant whose settings did not change is rebuilt all the same, with the new lists."""
    from connector.delivery.transports import SmtpTransport
    from connector.settings import SmtpSettings
    from tests.support.pki import TestCA

    ca = TestCA(tmp_path / "igc")
    client = ca.issue("BAL applicative", server=False)
    crl = ca.crl("operator.crl", next_update_days=3)
    base = two_tenants(tmp_path)
    tenant = replace(base.tenants[0], transport=TransportSettings(
        TransportKind.SMTP, tmp_path, SmtpSettings(
            host="smtp.operator.test", ca_bundle=ca.certificate,
            client_certificate=client.certificate, client_private_key=client.private_key,
            crl_files=(crl,))))
    settings = replace(base, tenants=(tenant,))

    def next_update() -> object:
        transport = app.delivery.tenants["chu-a"].transport
        assert isinstance(transport, SmtpTransport)
        return transport.tls.crl_next_update

    app = Application.build(settings)
    await app.start()
    try:
        first = next_update()
        report = await app.reload(settings)
        assert report.replaced == ()  # nothing changed
        ca.crl("operator.crl", next_update_days=9)  # the same path, a newer list
        report = await app.reload(settings)
        assert report.replaced == ("chu-a",)
        second = next_update()
        assert first is not None
        assert second is not None
        assert second > first  # type: ignore[operator]
        assert (await app.reload(settings)).replaced == ()
    finally:
        await app.stop(grace_seconds=1)


async def test_a_tenant_a_reload_could_not_start_makes_the_instance_unready_until_it_runs(
        tmp_path: Path) -> None:
    """Its new port taken: the old runtime is stopped, the new one cannot bind. Readiness says
    so (before, it stayed 'ready' with the tenant's intake, delivery and receipts all stopped),
    and the next reload starts it once the port is free, its settings being the same."""
    full = two_tenants(tmp_path)
    first = replace(full, tenants=full.tenants[:1])
    app = Application.build(first)
    await app.start()
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        moved = replace(first, tenants=(replace(first.tenants[0], listeners=(
            ListenerSettings("a", port=taken),)),))
        with structlog.testing.capture_logs() as logs:
            reports = await asyncio.gather(app.reload(moved), app.reload(moved))  # two SIGHUPs
        assert reports[0].replaced == ()  # not said replaced: it is not running
        assert reports[0].not_started == ("chu-a",)
        said = [e for e in logs if e["event"] == "configuration_reloaded"]
        assert said[0]["log_level"] == "warning"
        assert said[0]["not_started"] == ["chu-a"]
        assert said[0]["replaced"] == []
        assert list(app.tenants) == []
        assert app.readiness() == (False, "tenant not running: chu-a")
        blocker.close()
        report = await app.reload(moved)
        assert report.added == ("chu-a",)
        assert app.readiness()[0]
        assert b"MSA|AA" in await answer(taken, "A9")
    finally:
        blocker.close()
        await app.stop(grace_seconds=1)
