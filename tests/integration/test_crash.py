"""Crash test: SIGKILL the server while clients stream; every message answered AA is on disk."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from connector.errors import ProtocolError
from connector.mllp.client import MLLPClient
from connector.store.sqlite import SQLiteStore
from tests.integration.test_intake_bad_input import adt

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "connector.toml"
    config.write_text(f"""
data_dir = "{tmp_path / 'var'}"
[logging]
level = "warning"
[[tenants]]
id = "crash"
oid = "1.2.3"
[[tenants.listeners]]
host = "127.0.0.1"
port = {port}
""", encoding="utf-8")
    return config


def start_server(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "connector", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read() if process.stderr else b""
            raise AssertionError(f"server exited: {stderr!r}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("server did not start")


def large(control_id: str) -> bytes:
    """An ADT padded to ~70 KB: stored through the payload log, not inline."""
    return adt(control_id).replace(b"PV1|", b"NTE|1||" + b"x" * 70_000 + b"\rPV1|", 1)


async def stream(port: int, worker: int, acked: list[str], stop: asyncio.Event,
                 build: Callable[[str], bytes]) -> None:
    client = MLLPClient("127.0.0.1", port, timeout=5)
    await client.connect()
    try:
        for n in range(100_000):
            if stop.is_set():
                return
            control_id = f"K{worker}-{n}"
            try:
                ack = await client.send(build(control_id))
            except (ProtocolError, OSError):
                return  # the server died mid-message: no ACK, no promise
            if b"MSA|AA|" + control_id.encode() in ack:
                acked.append(control_id)
    finally:
        await client.close()


@pytest.mark.parametrize("build", [adt, large], ids=["inline", "payload-log"])
async def test_sigkill_loses_no_acknowledged_message(tmp_path: Path,
                                                     build: Callable[[str], bytes]) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    server = start_server(config)
    acked: list[str] = []
    try:
        await wait_ready(port, server)
        stop = asyncio.Event()
        workers = [asyncio.create_task(stream(port, w, acked, stop, build)) for w in range(4)]
        while len(acked) < 400:
            await asyncio.sleep(0.01)
            assert server.poll() is None
        os.kill(server.pid, signal.SIGKILL)  # no chance to flush or drain
        server.wait(10)
        await asyncio.wait_for(asyncio.gather(*workers), 10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    restarted = start_server(config)
    try:
        await wait_ready(port, restarted)
        db = tmp_path / "var" / "connector.db"
        conn = sqlite3.connect(db)
        stored = dict(conn.execute(
            "SELECT control_id, id FROM inbound WHERE status = 'accepted'").fetchall())
        conn.close()
        reader = SQLiteStore(db)  # beside the running server: read-only
        reader.open(read_only=True)
        try:
            for control_id in acked[-50:]:  # the last ones were in flight at the kill
                detail = await reader.get_inbound(stored[control_id])
                assert detail is not None
                assert detail.raw == build(control_id)
        finally:
            await reader.close()
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(15) == 0
    missing = [c for c in acked if c not in stored]
    assert len(acked) >= 400
    assert missing == []
