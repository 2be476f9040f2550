"""The admin listener: /metrics parsed with prometheus_client's own parser, /healthz, /readyz."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from connector.settings import AdminSettings
from tests.integration.conftest import RunningApp, make_settings
from tests.integration.test_intake_bad_input import adt


async def http_get(host: str, port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def start_with_admin(app_factory: Callable[..., object], tmp_path: Path) -> RunningApp:
    settings = replace(make_settings(tmp_path), admin=AdminSettings("127.0.0.1", 0))
    return await app_factory(settings)  # type: ignore[operator,no-any-return]


async def test_metrics_count_messages_by_tenant_type_and_ack(
        app_factory: Callable[..., object], tmp_path: Path) -> None:
    running = await start_with_admin(app_factory, tmp_path)
    await running.send(adt("M1"))
    await running.send(adt("M1"))  # a retransmission
    await running.send(adt("M2").replace(b"ADT^A01^ADT_A01", b"ZZZ^Z99"))  # unsupported: AE
    await running.send(b"junk without MSH")  # AE 100, no type
    assert running.app.admin is not None
    status, body = await http_get(*running.app.admin.address, "/metrics")
    assert status == 200
    values = samples(body)
    tenant = ("tenant", "chu-test")
    assert values[("mssconnector_mllp_messages_total",
                   (("ack", "AA"), tenant, ("type", "ADT^A01")))] == 2
    assert values[("mssconnector_mllp_messages_total",
                   (("ack", "AE"), tenant, ("type", "other")))] == 2  # never the raw MSH-9
    assert values[("mssconnector_mllp_retransmissions_total", (tenant,))] == 1
    assert values[("mssconnector_mllp_ack_seconds_count", (tenant,))] == 4
    assert "M1" not in body  # no control id, no message content in labels


async def test_health_and_readiness(app_factory: Callable[..., object], tmp_path: Path) -> None:
    running = await start_with_admin(app_factory, tmp_path)
    assert running.app.admin is not None
    address = running.app.admin.address
    assert await http_get(*address, "/healthz") == (200, "ok\n")
    assert await http_get(*address, "/readyz") == (200, "ready\n")
    assert (await http_get(*address, "/nothing"))[0] == 404
    for handler in running.app.handlers:
        handler.draining = True
    assert await http_get(*address, "/readyz") == (503, "draining\n")
    for handler in running.app.handlers:
        handler.draining = False
    await running.app.store.close()
    assert await http_get(*address, "/readyz") == (503, "store closed\n")
    running.app.store.open()


async def test_outbox_and_delivery_metrics_move(app_factory: Callable[..., object],
                                                tmp_path: Path) -> None:
    from connector.cda.policy import SchematronPolicy
    from connector.cli.send_cmd import split_messages
    from connector.settings import CisisSettings, SendingMatrixProfile
    from tests.conftest import CISIS_FIXTURES

    base = replace(make_settings(tmp_path), admin=AdminSettings("127.0.0.1", 0))
    tenant = replace(base.tenants[0], cisis=CisisSettings(
        schematron_policy=SchematronPolicy.OFF, sending_matrix=SendingMatrixProfile.ANS_EXAMPLES))
    running: RunningApp = await app_factory(replace(base, tenants=(tenant,)))  # type: ignore[operator]
    assert running.app.admin is not None
    assert running.app.gauges is not None
    payload = split_messages((CISIS_FIXTURES / "mdm-t02-initial/message.er7").read_bytes())[0]
    await running.app.gauges.refresh()  # the refresher's first round may not have run yet
    before = samples((await http_get(*running.app.admin.address, "/metrics"))[1])
    tenant_label = ("tenant", "chu-test")
    assert before[("mssconnector_outbox_items",
                   (("kind", "smtp"), ("state", "sent"), tenant_label))] == 0
    assert b"MSA|AA" in await running.send(payload)
    for _ in range(200):
        rows = await running.app.store.list_outbox()
        if rows and rows[0].state.value == "sent":
            break
        await asyncio.sleep(0.02)
    await running.app.gauges.refresh()
    values = samples((await http_get(*running.app.admin.address, "/metrics"))[1])
    assert values[("mssconnector_outbox_items",
                   (("kind", "smtp"), ("state", "sent"), tenant_label))] == 1
    assert values[("mssconnector_outbox_items",
                   (("kind", "smtp"), ("state", "ready"), tenant_label))] == 0
    assert values[("mssconnector_outbox_oldest_pending_seconds",
                   (("kind", "smtp"), tenant_label))] == 0
    assert values[("mssconnector_smtp_sends_total",
                   (("result", "sent"), tenant_label, ("transport", "maildir")))] == 1
    assert values[("mssconnector_smtp_send_seconds_count",
                   (tenant_label, ("transport", "maildir")))] == 1


async def test_whitelist_age_is_exported(app_factory: Callable[..., object],
                                         tmp_path: Path) -> None:
    import time
    from datetime import UTC, datetime, timedelta

    from tests.integration.test_whitelist_cli import whitelist

    generated = datetime.now(UTC) - timedelta(days=3)
    path = tmp_path / "listeblanche.xml"
    path.write_bytes(whitelist(generated.strftime("%Y-%m-%dT%H:%M:%SZ"), "medecin.mssante.fr"))
    settings = replace(make_settings(tmp_path), admin=AdminSettings("127.0.0.1", 0),
                       whitelist=path)
    running: RunningApp = await app_factory(settings)  # type: ignore[operator]
    assert running.app.gauges is not None
    await running.app.gauges.refresh(now=time.time())
    assert running.app.admin is not None
    values = samples((await http_get(*running.app.admin.address, "/metrics"))[1])
    age = values[("mssconnector_whitelist_age_seconds", ())]
    assert 3 * 86400 - 5 < age < 3 * 86400 + 60


async def test_store_commits_are_exported(app_factory: Callable[..., object],
                                          tmp_path: Path) -> None:
    running = await start_with_admin(app_factory, tmp_path)
    assert running.app.admin is not None
    before = samples((await http_get(*running.app.admin.address, "/metrics"))[1])
    for n in range(5):
        await running.send(adt(f"S{n}"))
    values = samples((await http_get(*running.app.admin.address, "/metrics"))[1])
    commits = values[("mssconnector_store_commits_total", ())]
    jobs = values[("mssconnector_store_committed_jobs_total", ())]
    # one job per ADT, and the delivery worker's outbox leases (write transactions too)
    assert jobs - before[("mssconnector_store_committed_jobs_total", ())] >= 5
    assert commits - before[("mssconnector_store_commits_total", ())] >= 1
    assert values[("mssconnector_store_commit_seconds_count", ())] == commits
    assert values[("mssconnector_store_commit_seconds_bucket", (("le", "+Inf"),))] == commits
    assert values[("mssconnector_store_commit_seconds_sum", ())] > 0
    bounds = sorted((float(le), count) for (name, labels), count in values.items()
                    if name == "mssconnector_store_commit_seconds_bucket"
                    for _, le in labels)
    counts = [count for _, count in bounds]
    assert counts == sorted(counts)  # cumulative


async def test_store_size_and_free_disk_are_exported(app_factory: Callable[..., object],
                                                     tmp_path: Path) -> None:
    import shutil

    running = await start_with_admin(app_factory, tmp_path)
    big = adt("BIG").replace(b"PV1|", b"NTE|1||" + b"x" * 60_000 + b"\rPV1|")
    await running.send(big)  # over the inline limit: a payload segment record
    assert running.app.gauges is not None
    assert running.app.admin is not None
    await running.app.gauges.refresh()
    values = samples((await http_get(*running.app.admin.address, "/metrics"))[1])
    assert values[("mssconnector_store_bytes", (("part", "database"),))] > 0
    assert values[("mssconnector_store_bytes", (("part", "payloads"),))] >= 60_000
    free = values[("mssconnector_store_free_bytes", ())]
    actual = shutil.disk_usage(tmp_path).free
    assert abs(free - actual) < 0.05 * actual + 50_000_000  # the same file system, read apart


async def test_a_store_that_cannot_be_read_makes_the_instance_unready(
        app_factory: Callable[..., object], tmp_path: Path) -> None:
    running = await start_with_admin(app_factory, tmp_path)
    assert running.app.gauges is not None
    assert running.app.readiness()[0]
    running.app.gauges.store_reachable = False  # its last read failed (PostgreSQL cut off)
    assert running.app.readiness() == (False, "store unreachable")
