"""Store backends for the contract suite: each test gets a private database.

SQLite: files under the test's tmp_path. PostgreSQL: the server named by MSSCONNECTOR_TEST_PG_DSN,
one random schema per test (selected through `options=-c search_path=...`) dropped afterwards, so
tests may run concurrently and leave nothing behind. Without the variable, or when the server
cannot be reached, the PostgreSQL tests are skipped with the reason.

The helpers here (`query`, `execute`, `stored_bytes`, `hold_write_lock`) let a contract test look
at what each backend keeps at rest without knowing which one it is.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from connector.store.cipher import PayloadCipher
from connector.store.postgres import PostgresStore
from connector.store.sqlite import SQLiteStore
from tests.support.pg import PG_DSN_ENV, pg_dsn

__all__ = ["PG_DSN_ENV", "pg_dsn"]  # the session fixture and its variable, shared with e2e


Store = SQLiteStore | PostgresStore


class StoreFactory:
    """Opens stores on one test's private database; `name` selects a database within it."""

    backend: str

    def __init__(self) -> None:
        self.opened: list[Store] = []

    def __call__(self, *, cipher: PayloadCipher | None = None, window: float = 3600.0,
                 busy_timeout_ms: int = 5000, name: str = "store.db") -> Store:
        store = self._create(cipher=cipher, window=window, busy_timeout_ms=busy_timeout_ms,
                             name=name)
        store.open()
        self.opened.append(store)
        return store

    def _create(self, *, cipher: PayloadCipher | None, window: float, busy_timeout_ms: int,
                name: str) -> Store:
        raise NotImplementedError

    def query(self, statement: str, params: Sequence[Any] = (), *, name: str = "store.db"
              ) -> list[tuple[Any, ...]]:
        """Rows of `statement` (`?` placeholders), read outside the store."""
        raise NotImplementedError

    def execute(self, statement: str, params: Sequence[Any] = (), *, name: str = "store.db"
                ) -> None:
        """Run a write (`?` placeholders) outside the store, committed."""
        raise NotImplementedError

    def stored_bytes(self, pattern: str = "*") -> bytes:
        """Everything the backend keeps at rest for this test (files, or every column)."""
        raise NotImplementedError

    def hold_write_lock(self, *, name: str = "store.db") -> contextlib.AbstractContextManager[None]:
        """Another session holding the lock a store write needs."""
        raise NotImplementedError

    async def close_all(self) -> None:
        for store in self.opened:
            await store.close()


class SQLiteFactory(StoreFactory):
    backend = "sqlite"

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    def _create(self, *, cipher: PayloadCipher | None, window: float, busy_timeout_ms: int,
                name: str) -> Store:
        return SQLiteStore(self.directory / name, cipher=cipher,
                           retransmission_window_seconds=window, busy_timeout_ms=busy_timeout_ms)

    def query(self, statement: str, params: Sequence[Any] = (), *, name: str = "store.db"
              ) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.directory / name)
        try:
            return conn.execute(statement, tuple(params)).fetchall()
        finally:
            conn.close()

    def execute(self, statement: str, params: Sequence[Any] = (), *, name: str = "store.db"
                ) -> None:
        conn = sqlite3.connect(self.directory / name)
        try:
            with conn:
                conn.execute(statement, tuple(params))
        finally:
            conn.close()

    def stored_bytes(self, pattern: str = "*") -> bytes:
        return b"".join(p.read_bytes() for p in self.directory.rglob(pattern) if p.is_file())

    @contextlib.contextmanager
    def hold_write_lock(self, *, name: str = "store.db") -> Iterator[None]:
        blocker = sqlite3.connect(self.directory / name, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()


class PostgresFactory(StoreFactory):
    backend = "postgres"

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn
        self.token = secrets.token_hex(6)
        self.schemas: dict[str, str] = {}
        self._lock = threading.Lock()  # stores may be opened from several threads

    def schema(self, name: str) -> str:
        with self._lock:
            return self._schema(name)

    def _schema(self, name: str) -> str:
        if name not in self.schemas:
            slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:20]
            schema = f"mssc_test_{self.token}_{slug}"
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            self.schemas[name] = schema
        return self.schemas[name]

    def dsn_for(self, name: str) -> str:
        return make_conninfo(self.dsn, options=f"-c search_path={self.schema(name)}")

    def _create(self, *, cipher: PayloadCipher | None, window: float, busy_timeout_ms: int,
                name: str) -> Store:
        return PostgresStore(self.dsn_for(name), cipher=cipher,
                             retransmission_window_seconds=window,
                             lock_timeout_ms=busy_timeout_ms)

    def _connect(self, name: str) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.dsn_for(name), autocommit=True)

    def query(self, statement: str, params: Sequence[Any] = (), *, name: str = "store.db"
              ) -> list[tuple[Any, ...]]:
        with self._connect(name) as conn:
            return conn.execute(_pg(statement), tuple(params)).fetchall()

    def execute(self, statement: str, params: Sequence[Any] = (), *, name: str = "store.db"
                ) -> None:
        with self._connect(name) as conn:
            conn.execute(_pg(statement), tuple(params))

    def stored_bytes(self, pattern: str = "*") -> bytes:
        """Every value of every table of every schema of the test, bytea as raw bytes."""
        chunks: list[bytes] = []
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for schema in self.schemas.values():
                tables = conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                    (schema,)).fetchall()
                for (table,) in tables:
                    query = sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema),
                                                                  sql.Identifier(table))
                    for row in conn.execute(query):
                        for value in row:
                            chunks.append(value if isinstance(value, bytes)
                                          else str(value).encode())
        return b"\x00".join(chunks)

    @contextlib.contextmanager
    def hold_write_lock(self, *, name: str = "store.db") -> Iterator[None]:
        with self._connect(name) as blocker, blocker.transaction():
            blocker.execute("LOCK TABLE inbound IN ACCESS EXCLUSIVE MODE")
            yield

    async def close_all(self) -> None:
        try:
            await super().close_all()
        finally:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                for schema in self.schemas.values():
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        sql.Identifier(schema)))


def _pg(statement: str) -> bytes:
    """Test statements are written with `?` placeholders (they contain no literal `?`)."""
    return statement.replace("?", "%s").encode()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path
                     ) -> AsyncIterator[StoreFactory]:
    factory: StoreFactory
    if request.param == "postgres":
        factory = PostgresFactory(request.getfixturevalue("pg_dsn"))
    else:
        factory = SQLiteFactory(tmp_path)
    try:
        yield factory
    finally:
        await factory.close_all()


def only_on(make_store: StoreFactory, backend: str, reason: str) -> None:
    if make_store.backend != backend:
        pytest.skip(f"{backend} only: {reason}")
