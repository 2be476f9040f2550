"""The admin JSON API (bearer token) and `audit export`, on a running connector."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from connector.cda.policy import SchematronPolicy
from connector.cli.send_cmd import split_messages
from connector.settings import AdminSettings, CisisSettings, SendingMatrixProfile
from connector.store import AuditAction, AuditEntry, OutboxItem, OutboxKind, OutboxState
from tests.conftest import CISIS_FIXTURES
from tests.integration.conftest import RunningApp, make_settings
from tests.integration.test_cli import run_cli

TOKEN = "s3cret-admin-token-0123456789"


async def http(host: str, port: int, method: str, path: str, token: str | None = TOKEN
               ) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(host, port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def start(app_factory: Callable[..., object], tmp_path: Path) -> RunningApp:
    base = replace(make_settings(tmp_path), admin=AdminSettings("127.0.0.1", 0, token=TOKEN))
    tenant = replace(base.tenants[0], cisis=CisisSettings(
        schematron_policy=SchematronPolicy.OFF, sending_matrix=SendingMatrixProfile.ANS_EXAMPLES))
    running: RunningApp = await app_factory(replace(base, tenants=(tenant,)))  # type: ignore[operator]
    payload = split_messages((CISIS_FIXTURES / "mdm-t02-initial/message.er7").read_bytes())[0]
    assert b"MSA|AA" in await running.send(payload)
    for _ in range(200):
        rows = await running.app.store.list_outbox()
        if rows and rows[0].state is OutboxState.SENT:
            break
        await asyncio.sleep(0.02)
    return running


async def test_the_api_needs_the_token(app_factory: Callable[..., object],
                                       tmp_path: Path) -> None:
    running = await start(app_factory, tmp_path)
    assert running.app.admin is not None
    address = running.app.admin.address
    assert (await http(*address, "GET", "/api/requests", token=None))[0] == 401
    assert (await http(*address, "GET", "/api/requests", token="wrong-token-0123456789"))[0] \
        == 401
    assert (await http(*address, "GET", "/healthz", token=None))[0] == 200  # probes stay open


async def test_search_and_timeline_of_a_request(app_factory: Callable[..., object],
                                                tmp_path: Path) -> None:
    running = await start(app_factory, tmp_path)
    assert running.app.admin is not None
    address = running.app.admin.address
    status, body = await http(*address, "GET", "/api/requests?control_id=015&status=accepted")
    assert status == 200
    (found,) = json.loads(body)
    assert (found["control_id"], found["status"], found["ack_code"]) == ("015", "accepted", "AA")
    assert json.loads((await http(*address, "GET", "/api/requests?control_id=999"))[1]) == []
    assert (await http(*address, "GET", "/api/requests?since=yesterday"))[0] == 400
    status, body = await http(*address, "GET", f"/api/requests/{found['id']}")
    assert status == 200
    timeline = json.loads(body)
    assert [e["event"] for e in timeline["events"]] == ["received", "accepted", "mail",
                                                         "submitted"]
    assert timeline["mails"][0]["state"] == "sent"
    assert "adam.hoda" not in body  # the domain only, never the address
    assert (await http(*address, "GET", "/api/requests/999999"))[0] == 404
    counts = await running.app.store.purge_payloads(before=time.time() + 1)
    assert (counts.inbound, counts.outbox) == (1, 1)  # sent: nothing waits for them
    timeline = json.loads((await http(*address, "GET", f"/api/requests/{found['id']}"))[1])
    assert [e["event"] for e in timeline["events"]][-1] == "purged"
    assert timeline["request"]["control_id"] == "015"  # the metadata stays


async def test_retry_and_cancel_through_the_api_are_audited(
        app_factory: Callable[..., object], tmp_path: Path) -> None:
    running = await start(app_factory, tmp_path)
    assert running.app.admin is not None
    address = running.app.admin.address
    (row,) = await running.app.store.list_outbox()
    status, body = await http(*address, "POST", f"/api/outbox/{row.id}/cancel")
    assert status == 409  # sent: cannot be cancelled
    await running.app.delivery.stop()  # hold the next mails in the queue
    store = running.app.store
    (new_id,) = await store.enqueue([_item(row.tenant_id)])
    status, body = await http(*address, "POST", f"/api/outbox/{new_id}/cancel")
    assert (status, json.loads(body)) == (200, {"outbox_id": new_id, "done": "cancel"})
    # A mail the operator refused for good: retried through the API, it is due again.
    (dead_id,) = await store.enqueue([_item(row.tenant_id)])
    (lease,) = await store.lease(tenant_id=row.tenant_id, kinds=[OutboxKind.SMTP], limit=1,
                                 lease_seconds=60)
    assert lease.id == dead_id
    await store.mark_dead(lease.id, lease.token, "550", "550 5.1.1 unknown",
                          error_class="permanent")
    status, body = await http(*address, "POST", f"/api/outbox/{new_id}/retry")
    assert status == 409  # cancelled: not retried
    status, body = await http(*address, "POST", f"/api/outbox/{dead_id}/retry")
    assert (status, json.loads(body)) == (200, {"outbox_id": dead_id, "done": "retry"})
    states = {s.id: s.state for s in await store.list_outbox()}
    assert (states[new_id], states[dead_id]) == (OutboxState.CANCELLED, OutboxState.READY)
    status, body = await http(*address, "GET", "/api/audit?from=2020-01-01&format=csv")
    assert status == 200
    rows = list(csv.DictReader(io.StringIO(body)))
    actions = [(r["action"], r["outbox_id"]) for r in rows]
    assert actions[:2] == [("submitted", str(row.id)), ("cancelled", str(new_id))]
    assert actions[-1] == ("retried", str(dead_id))
    assert rows[1]["actor"].startswith("admin api (127.0.0.1:")
    assert rows[-1]["actor"].startswith("admin api (127.0.0.1:")


def _item(tenant: str) -> OutboxItem:
    return OutboxItem(tenant_id=tenant, kind=OutboxKind.SMTP, payload=b"mail",
                      message_id="<held@x>", recipient_domain="medecin.mssante.fr")


async def test_audit_export_cli_writes_csv_and_json(app_factory: Callable[..., object],
                                                    tmp_path: Path) -> None:
    running = await start(app_factory, tmp_path)
    settings = running.app.settings
    await running.app.stop(grace_seconds=1)
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\npath = "{settings.store.path}"\n'
                      '[[tenants]]\nid = "chu-test"\noid = "1.2.3"\n')
    code, out, _ = await run_cli("audit", "export", "--from", "2020-01-01", "--to",
                                 "2100-01-01", "--config", str(config))
    assert code == 0
    (entry,) = list(csv.DictReader(io.StringIO(out)))
    assert (entry["action"], entry["tenant_id"]) == ("submitted", "chu-test")
    target = tmp_path / "audit.json"
    code, _, err = await run_cli("audit", "export", "--from", "2020-01-01", "--to",
                                 "2100-01-01", "--format", "json", "--out", str(target),
                                 "--config", str(config))
    assert code == 0
    assert "1 audit entries" in err
    assert json.loads(target.read_text())[0]["action"] == "submitted"
    assert target.stat().st_mode & 0o077 == 0
    code, out, _ = await run_cli("audit", "export", "--from", "2100-01-01", "--to",
                                 "2101-01-01", "--config", str(config))
    assert out.splitlines() == ["id,at,tenant_id,actor,action,outbox_id,inbound_id,result,"
                                "detail"]


async def test_the_audit_api_pages_with_a_link_to_the_next_page(
        app_factory: Callable[..., object], tmp_path: Path) -> None:
    running = await start(app_factory, tmp_path)  # one audit row: the mail's submission
    assert running.app.admin is not None
    address = running.app.admin.address
    for n in range(4):
        await running.app.store.record_mailbox_audit(
            "chu-test", AuditEntry(f"poller {n}", AuditAction.FETCHED))
    status, body = await http(*address, "GET", "/api/audit?from=2020-01-01")
    whole = [row["actor"] for row in json.loads(body)]
    assert len(whole) == 5
    target, pages = "/api/audit?from=2020-01-01&limit=2&format=csv", []
    while target:
        status, head, body = await http_with_headers(*address, "GET", target)
        assert status == 200
        pages.append([row["actor"] for row in csv.DictReader(io.StringIO(body))])
        link = head.get("link")
        target = link.removeprefix("<").split(">;")[0] if link else ""
        assert not link or link.endswith('; rel="next"')
    assert pages[0] == whole[:2]
    assert [actor for page in pages for actor in page] == whole
    assert [len(page) for page in pages] == [2, 2, 1]
    for bad in ("limit=0", "limit=100001", "after=x", "after=-1", "format=xml"):
        status, body = await http(*address, "GET", f"/api/audit?{bad}")
        assert status == 400, bad
        assert json.loads(body)["error"].startswith(bad.split("=")[0] + ":")


async def test_audit_export_reads_the_whole_trail_page_by_page(
        app_factory: Callable[..., object], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from connector.admin import queries

    running = await start(app_factory, tmp_path)
    for n in range(4):
        await running.app.store.record_mailbox_audit(
            "chu-test", AuditEntry(f"poller {n}", AuditAction.FETCHED))
    monkeypatch.setattr(queries, "AUDIT_PAGE", 2)
    records = await queries.all_audit_records(running.app.store, since=None, until=None)
    assert [r.actor for r in records][1:] == [f"poller {n}" for n in range(4)]
    assert len({r.id for r in records}) == 5


async def http_with_headers(host: str, port: int, method: str, path: str
                            ) -> tuple[int, dict[str, str], str]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body.decode()


async def test_a_store_that_cannot_answer_is_a_503_not_an_empty_reply(
        app_factory: Callable[..., object], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from connector.admin import queries
    from connector.errors import StoreUnavailable

    running = await start(app_factory, tmp_path)
    assert running.app.admin is not None

    async def unavailable(*args: object, **kwargs: object) -> object:
        raise StoreUnavailable("SQLite write failed: disk I/O error")

    monkeypatch.setattr(queries, "search_requests", unavailable)
    monkeypatch.setattr(queries, "retry", unavailable)
    for method, path in (("GET", "/api/requests"), ("POST", "/api/outbox/1/retry")):
        status, body = await http(*running.app.admin.address, method, path)
        assert status == 503
        assert json.loads(body)["error"] == (
            "the store cannot answer: SQLite write failed: disk I/O error")
