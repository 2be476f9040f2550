"""`outbox list|show|retry|cancel` as a user runs them, on a real SQLite store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from connector.app import build_store
from connector.settings import load_settings
from connector.store import OutboxItem, OutboxKind, OutboxState, ReceiptStatus, ReturnedMail
from tests.integration.test_cli import run_cli

MAIL = (b"From: pfi@chu.mssante.fr\r\nTo: 279035121518989@patient.mssante.fr\r\n"
        b"Subject: XDM/1.0/DDM+CR PAT-TROIS DOMINIQUE\r\n\r\nbody\r\n")


@pytest.fixture
async def config_with_items(tmp_path: Path) -> tuple[Path, list[int]]:
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n[[tenants]]\nid = "chu"\noid = "1.2.3"\n')
    store = build_store(load_settings(config))
    store.open()
    try:
        ids = await store.enqueue([
            OutboxItem("chu", OutboxKind.SMTP, MAIL, message_id=f"<m{i}@chu.mssante.fr>",
                       recipient_domain="patient.mssante.fr") for i in range(2)])
        (lease,) = await store.lease(tenant_id="chu", kinds=[OutboxKind.SMTP], limit=1,
                                     lease_seconds=60)
        await store.mark_dead(lease.id, lease.token, "550", "550 5.1.1 <279035121518989@"
                              "patient.mssante.fr> unknown", error_class="permanent")
    finally:
        await store.close()
    return config, ids


async def test_list_shows_no_patient_data(config_with_items: tuple[Path, list[int]]) -> None:
    config, _ = config_with_items
    code, out, _ = await run_cli("outbox", "list", "--config", str(config))
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert "dead" in out
    assert "550 permanent" in out
    assert "to=@patient.mssante.fr" in out
    assert "279035121518989" not in out
    assert "PAT-TROIS" not in out
    code, out, _ = await run_cli("outbox", "list", "--state", "ready", "--config", str(config))
    assert len(out.splitlines()) == 1


async def test_show_prints_payload_and_last_answer(
        config_with_items: tuple[Path, list[int]]) -> None:
    config, ids = config_with_items
    code, out, _ = await run_cli("outbox", "show", str(ids[0]), "--config", str(config))
    assert code == 0
    assert "550 5.1.1" in out  # the operator sees the server's answer, unsealed
    assert "Subject: XDM/1.0/DDM+CR PAT-TROIS DOMINIQUE" in out


async def test_retry_and_cancel(config_with_items: tuple[Path, list[int]]) -> None:
    config, ids = config_with_items
    dead, ready = ids
    code, out, _ = await run_cli("outbox", "retry", str(dead), "--config", str(config))
    assert (code, out.strip()) == (0, f"outbox item {dead}: due now")
    code, _, _ = await run_cli("outbox", "cancel", str(ready), "--config", str(config))
    assert code == 0
    code, _, err = await run_cli("outbox", "cancel", "999", "--config", str(config))
    assert (code, err.strip()) == (1, "no outbox item 999")
    code, _, err = await run_cli("outbox", "retry", str(ready), "--config", str(config))
    assert code == 1
    assert f"outbox item {ready} is cancelled: a retry does not apply" in err
    store = build_store(load_settings(config))
    store.open(read_only=True)
    try:
        states = {s.id: s.state for s in await store.list_outbox()}
    finally:
        await store.close()
    assert states == {dead: OutboxState.READY, ready: OutboxState.CANCELLED}
    code, out, _ = await run_cli("outbox", "show", str(dead), "--config", str(config))
    assert code == 0
    audit = out.split("--- audit\n", 1)[1].split("--- payload", 1)[0].splitlines()
    assert len(audit) == 1
    assert " retried by operator " in audit[0]
    assert audit[0].endswith("(cli)")


async def test_changes_are_refused_while_another_process_writes(
        config_with_items: tuple[Path, list[int]]) -> None:
    config, ids = config_with_items
    writer = build_store(load_settings(config))
    writer.open()  # as a running `serve` would
    try:
        code, _, err = await run_cli("outbox", "retry", str(ids[0]), "--config", str(config))
        assert code == 1
        assert "in use by another connector process" in err
        assert f"use the admin API: POST /api/outbox/{ids[0]}/retry" in err
        code, _, _ = await run_cli("outbox", "list", "--config", str(config))
        assert code == 0  # reading beside the writer is fine
    finally:
        await writer.close()


async def test_receipts_list(config_with_items: tuple[Path, list[int]]) -> None:
    config, ids = config_with_items
    store = build_store(load_settings(config))
    store.open()
    try:
        await store.record_returned_mail(ReturnedMail(
            tenant_id="chu", key="<spam@x>", received_at=0.0, raw=b"Subject: PAT-TROIS",
            status=ReceiptStatus.UNMATCHED, detail="not a receipt"))
        await store.record_returned_mail(ReturnedMail(
            tenant_id="chu", key="<dsn@x>", received_at=0.0, raw=b"dsn", kind="dsn",
            outcome="positive", status=ReceiptStatus.MATCHED, outbox_id=ids[1]))
    finally:
        await store.close()
    code, out, _ = await run_cli("receipts", "list", "--config", str(config))
    assert code == 0
    assert len(out.splitlines()) == 2
    assert f"dsn matched positive outbox={ids[1]}" in out
    assert "PAT-TROIS" not in out
    code, out, _ = await run_cli("receipts", "list", "--status", "unmatched", "--config",
                                 str(config))
    assert out.splitlines()[0].endswith("- unmatched - (not a receipt)")


async def test_a_purged_item_shows_when_and_cannot_be_retried(
        config_with_items: tuple[Path, list[int]]) -> None:
    config, ids = config_with_items
    dead, ready = ids
    store = build_store(load_settings(config))
    store.open()
    try:
        counts = await store.purge_payloads(before=time.time() + 1, now=1_700_000_000.0)
    finally:
        await store.close()
    assert counts.outbox == 1  # the dead one; the ready one waits to be sent
    code, out, _ = await run_cli("outbox", "show", str(dead), "--config", str(config))
    assert code == 0
    assert out.rstrip().endswith(
        "--- payload: purged 2023-11-14T22:13:20.000Z (store.payload_retention_days)")
    assert "PAT-TROIS" not in out
    assert "550 5.1.1" not in out  # the server's answer named the patient's address: gone too
    code, _, err = await run_cli("outbox", "retry", str(dead), "--config", str(config))
    assert code == 1
    assert "payload was purged" in err
    code, out, _ = await run_cli("outbox", "show", str(ready), "--config", str(config))
    assert "Subject: XDM/1.0/DDM+CR PAT-TROIS DOMINIQUE" in out
