"""The embedded store's online backup and its check, on real SQLite stores with payload-log
records, taken while messages keep being written; `store backup` / `store verify` commands."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from connector.errors import BackupError
from connector.store import InboundMessage, InboundStatus
from connector.store import backup as store_backup
from connector.store.backup import MANIFEST, take_backup, verify
from connector.store.sqlite import SQLiteStore
from tests.integration.test_cli import run_cli


def message(n: int, size: int) -> InboundMessage:
    """An ORU of `size` bytes: past 16 KB its payload is a payload-log record."""
    raw = (f"MSH|^~\\&|LAB|CHU|PFI|CHU|20261124||ORU^R01|M{n}|P|2.5\rOBX|1|ED|PDF||".encode()
           + bytes([65 + n % 26]) * size + b"\r")
    return InboundMessage(
        tenant_id="t1", listener="l1", peer="127.0.0.1:1", received_at=time.time(), raw=raw,
        digest=hashlib.sha256(raw).digest(), sending_application="LAB", sending_facility="CHU",
        message_type="ORU^R01", control_id=f"M{n}", version="2.5",
        status=InboundStatus.ACCEPTED, ack_code="AA", ack=b"ack")


def store_at(path: Path) -> SQLiteStore:
    store = SQLiteStore(path, payload_segment_bytes=300_000)  # several segments
    store.open()
    return store


async def test_a_backup_taken_while_messages_are_written_reads_back_whole(
        tmp_path: Path) -> None:
    live = store_at(tmp_path / "var" / "connector.db")
    before = [(await live.record_inbound(message(n, 70_000 if n % 2 else 200))).inbound_id
              for n in range(12)]
    stop = asyncio.Event()

    async def keep_writing() -> int:
        n = 100
        while not stop.is_set():
            await live.record_inbound(message(n, 70_000))
            n += 1
        return n - 100

    writer = asyncio.create_task(keep_writing())
    await asyncio.sleep(0.05)
    done = await asyncio.to_thread(take_backup, live.path, tmp_path / "backup")
    stop.set()
    written_during = await writer
    assert written_during > 0
    assert done.check.payload_records >= 6  # the six 70 KB messages at least
    assert len(done.check.segments) >= 2
    manifest = json.loads((tmp_path / "backup" / MANIFEST).read_text())
    assert manifest["schema_version"] == done.check.schema_version > 0
    for name, facts in manifest["files"].items():
        path = tmp_path / "backup" / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == facts["sha256"]
        assert path.stat().st_mode & 0o077 == 0  # patient data: the service account only
    copy = SQLiteStore(tmp_path / "backup" / "connector.db")
    copy.open(read_only=True)
    try:
        for n, inbound_id in enumerate(before):
            detail = await copy.get_inbound(inbound_id)
            assert detail is not None
            assert detail.raw == message(n, 70_000 if n % 2 else 200).raw
        rows = await copy.list_inbound(limit=100_000)
        for row in rows:  # whatever the snapshot holds of what came during it is whole too
            detail = await copy.get_inbound(row.id)
            assert detail is not None
            assert detail.raw.startswith(b"MSH|")
    finally:
        await copy.close()
        await live.close()
    assert verify(tmp_path / "backup" / "connector.db") == done.check
    # Restored (the README's steps): the files copied to a store path, and served from there.
    restored = tmp_path / "restored" / "connector.db"
    restored.parent.mkdir()
    shutil.copy(tmp_path / "backup" / "connector.db", restored)
    shutil.copytree(tmp_path / "backup" / "connector.db.payloads",
                    tmp_path / "restored" / "connector.db.payloads")
    again = store_at(restored)
    try:
        later = await again.record_inbound(message(500, 70_000))
        for inbound_id, raw in ((before[1], message(1, 70_000).raw),
                                (later.inbound_id, message(500, 70_000).raw)):
            detail = await again.get_inbound(inbound_id)
            assert detail is not None
            assert detail.raw == raw
    finally:
        await again.close()


async def test_verify_finds_a_damaged_or_missing_segment(tmp_path: Path) -> None:
    live = store_at(tmp_path / "var" / "connector.db")
    for n in range(4):
        await live.record_inbound(message(n, 70_000))
    await live.close()
    take_backup(live.path, tmp_path / "b1")
    segment = sorted((tmp_path / "b1" / "connector.db.payloads").glob("segment-*.log"))[0]
    data = bytearray(segment.read_bytes())
    data[100] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(BackupError, match="fails its CRC"):
        verify(tmp_path / "b1" / "connector.db")
    segment.unlink()
    with pytest.raises(BackupError, match="is missing"):
        verify(tmp_path / "b1" / "connector.db")
    with pytest.raises(BackupError, match="exists"):
        take_backup(live.path, tmp_path / "b1")
    with pytest.raises(BackupError, match="is not a directory: create it first"):
        take_backup(live.path, tmp_path / "typo" / "b2")
    assert not (tmp_path / "typo").exists()  # a typo makes no tree


async def test_a_segment_purged_while_the_backup_runs_fails_it_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = store_at(tmp_path / "var" / "connector.db")
    await live.record_inbound(message(1, 70_000))
    await live.close()
    copy_file = store_backup._copy_file

    def purged_first(source: Path, destination: Path) -> None:
        source.unlink()  # what the retention purge does to a segment nothing references
        copy_file(source, destination)

    monkeypatch.setattr(store_backup, "_copy_file", purged_first)
    with pytest.raises(BackupError, match="purged while the backup ran: run the backup again"):
        take_backup(live.path, tmp_path / "b")
    assert not (tmp_path / "b").exists()


async def test_the_store_commands(tmp_path: Path) -> None:
    database = tmp_path / "var" / "connector.db"
    live = store_at(database)
    for n in range(3):
        await live.record_inbound(message(n, 70_000))
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\npath = "{database}"\n[[tenants]]\nid = "t1"\noid = "1.2.3"\n')
    try:  # beside the process that owns the store, as with a running serve
        code, out, err = await run_cli("store", "backup", "--to", str(tmp_path / "bk"),
                                       "--config", str(config))
        assert code == 0, err
        assert "3 payload records checked" in out
        code, out, _ = await run_cli("store", "verify", str(tmp_path / "bk"))
        assert code == 0
        assert "integrity ok" in out
        code, out, _ = await run_cli("store", "verify", "--config", str(config))
        assert (code, "3 payload records in 1 segments read back" in out) == (0, True)
    finally:
        await live.close()
    segment = next((tmp_path / "bk" / "connector.db.payloads").glob("segment-*.log"))
    os.truncate(segment, 1000)
    code, _, err = await run_cli("store", "verify", str(tmp_path / "bk"))
    assert code == 1
    assert "store not whole" in err
    code, _, err = await run_cli("store", "backup", "--to", str(tmp_path / "bk"),
                                 "--config", str(config))
    assert (code, "exists" in err) == (1, True)
    pg = tmp_path / "pg.toml"
    (tmp_path / "dsn").write_text("postgresql://x@127.0.0.1/x")
    pg.write_text(f'[store]\nbackend = "postgres"\ndsn_file = "{tmp_path / "dsn"}"\n'
                  '[[tenants]]\nid = "t1"\noid = "1.2.3"\n')
    code, _, err = await run_cli("store", "backup", "--to", str(tmp_path / "pgbk"),
                                 "--config", str(pg))
    assert (code, "pg_dump" in err) == (2, True)


async def test_a_long_read_past_the_wal_hard_limit_turns_no_write_away(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a backup or a live `verify` does to a busy store: one read transaction that the
    checkpointer cannot pass. Past the WAL's hard limit the truncating checkpoint used to wait
    for it (the busy timeout) with every writer blocked behind it: writes failed 'database is
    locked' and intake would have answered AR. It now tries without waiting."""
    import sqlite3
    import threading

    import structlog

    from connector.errors import StoreUnavailable
    from connector.store import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_WAL_HARD_LIMIT", 256 * 1024)
    monkeypatch.setattr(sqlite_store, "_CHECKPOINT_EVERY_SECONDS", 0.05)
    live = SQLiteStore(tmp_path / "connector.db", busy_timeout_ms=400)
    live.open()
    for n in range(20):
        await live.record_inbound(message(n, 2000))
    reading, done = threading.Event(), threading.Event()

    def long_reader() -> None:
        conn = sqlite3.connect(f"file:{live.path}?mode=ro", uri=True, isolation_level=None)
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM inbound").fetchone()
        reading.set()
        done.wait(30)
        conn.execute("COMMIT")
        conn.close()

    reader = threading.Thread(target=long_reader)
    reader.start()
    reading.wait(5)
    failures = 0
    try:
        with structlog.testing.capture_logs() as logs:
            for n in range(100, 1600):  # about 3 MB of WAL: many hard-limit rounds
                try:
                    await live.record_inbound(message(n, 2000))
                except StoreUnavailable:
                    failures += 1
    finally:
        done.set()
        reader.join()
        await live.close()
    assert failures == 0
    assert [e["event"] for e in logs].count("store_wal_held") == 1  # said once per reader


async def test_verify_reads_a_backup_through_its_manifest(tmp_path: Path) -> None:
    """Whatever the store file is called (not only *.db), and every file checked against the
    SHA-256 the backup wrote."""
    from connector.store.backup import verify_backup

    live = store_at(tmp_path / "var" / "store.sqlite3")
    for n in range(3):
        await live.record_inbound(message(n, 70_000))
    await live.close()
    take_backup(live.path, tmp_path / "bk")
    database, check = verify_backup(tmp_path / "bk")
    assert database == tmp_path / "bk" / "store.sqlite3"
    assert check.payload_records == 3
    code, out, _ = await run_cli("store", "verify", str(tmp_path / "bk"))
    assert (code, "integrity ok" in out) == (0, True)
    segment = next((tmp_path / "bk" / "store.sqlite3.payloads").glob("segment-*.log"))
    with segment.open("ab") as tail:
        tail.write(b"x")  # the records still read back: only the manifest tells
    with pytest.raises(BackupError, match=r"differs from MANIFEST\.json"):
        verify_backup(tmp_path / "bk")
    (tmp_path / "bk" / MANIFEST).unlink()
    with pytest.raises(BackupError, match="not a backup"):
        verify_backup(tmp_path / "bk")
