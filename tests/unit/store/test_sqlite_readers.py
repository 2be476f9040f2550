"""The SQLite store's read connections: kept open between reads, each read still sees every
commit before it, a failed read's connection is dropped, and close() leaves no connection that
would keep the WAL file alive."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connector.errors import StoreUnavailable
from connector.store.sqlite import SQLiteStore
from tests.unit.store.test_sqlite_writer import inbound


@pytest.fixture
def read_connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The read-only connections opened (their URIs), by spying on sqlite3.connect."""
    opened: list[str] = []
    connect = sqlite3.connect

    def spy(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if "mode=ro" in str(database):
            opened.append(str(database))
        return connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", spy)
    return opened


@pytest.fixture
async def store(tmp_path: Path, read_connections: list[str]) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "store.db")
    opened.open()
    yield opened
    await opened.close()


async def test_reads_reuse_one_connection_and_see_every_commit(
        store: SQLiteStore, read_connections: list[str]) -> None:
    for n in range(5):
        await store.record_inbound(inbound(n))
        listed = await store.list_inbound(limit=100)
        assert len(listed) == n + 1  # the commit just made, through the kept connection
    assert len(read_connections) == 1


async def test_a_failed_read_drops_its_connection(store: SQLiteStore,
                                                  read_connections: list[str]) -> None:
    await store.list_inbound()
    with pytest.raises(StoreUnavailable, match="SQLite read failed"):
        await store._read(lambda c: c.execute("SELECT * FROM no_such_table").fetchall())
    assert len(await store.list_inbound()) == 0
    assert len(read_connections) == 2  # a new one after the failure


async def test_close_leaves_no_wal_behind(tmp_path: Path, read_connections: list[str]) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    store.open()
    await store.record_inbound(inbound(1))
    assert len(await store.list_inbound()) == 1
    await store.close()
    # the last connection to close removes the WAL: no read connection outlived the store
    assert not (tmp_path / "store.db-wal").exists()
    assert read_connections  # the read above did go through a kept connection
