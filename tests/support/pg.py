"""PostgreSQL for end-to-end tests: a private schema per test, and the local cluster behind the
DSN (to restart it under load).

The server is the one named by MSSCONNECTOR_TEST_PG_DSN (`.ci/run` sets it); without it, or when
it cannot be reached, the tests that use these fixtures are skipped with the reason. Each test gets
a random schema, selected through `options=-c search_path=...` in the DSN it hands to the
connector, dropped afterwards, as the contract tests do.

Import the fixtures into a test module: `from tests.support.pg import pg_dsn, pg_schema`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

PG_DSN_ENV = "MSSCONNECTOR_TEST_PG_DSN"
_LOCAL_HOSTS = {"", "127.0.0.1", "localhost", "::1"}


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The test server's DSN, or a skip saying why there is none."""
    dsn = os.environ.get(PG_DSN_ENV)
    if not dsn:
        pytest.skip(f"PostgreSQL tests need {PG_DSN_ENV} "
                    "(e.g. postgresql://postgres@127.0.0.1:5432/test)")
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.Error as exc:  # the reason names the failure, not the DSN (may hold a password)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        pytest.skip(f"PostgreSQL from {PG_DSN_ENV} is unreachable: {reason}")
    return dsn


@dataclass(frozen=True)
class PgSchema:
    server_dsn: str  # the server, default search_path
    name: str  # the private schema

    @property
    def dsn(self) -> str:
        """The DSN a store (or a connector process) uses: the private schema only."""
        return make_conninfo(self.server_dsn, options=f"-c search_path={self.name}")


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[PgSchema]:
    """A fresh schema, dropped after the test (the test stops its stores and processes first)."""
    schema = PgSchema(pg_dsn, f"mssc_e2e_{secrets.token_hex(6)}")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema.name)))
    try:
        yield schema
    finally:
        # The server may have been restarted by the test: wait for it rather than leak a schema.
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(pg_dsn, autocommit=True, connect_timeout=3) as conn:
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        sql.Identifier(schema.name)))
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


@dataclass(frozen=True)
class LocalCluster:
    """The Debian cluster (`pg_lsclusters`) listening on the DSN's port on this machine."""

    version: str
    name: str
    host: str
    port: int

    def _ctl(self, action: str, timeout: float = 60) -> None:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name,
                        action], check=True, capture_output=True, timeout=timeout)

    def restart_command(self) -> list[str]:
        return ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, "restart"]

    def ready(self) -> bool:
        return subprocess.run(["pg_isready", "-q", "-h", self.host or "127.0.0.1", "-p",
                               str(self.port), "-t", "2"], check=False).returncode == 0

    def ensure_running(self, timeout: float = 60) -> None:
        """Start the cluster if it does not answer, and wait until it accepts connections."""
        if self.ready():
            return
        status = subprocess.run(["pg_ctlcluster", self.version, self.name, "status"],
                                check=False, capture_output=True)
        if status.returncode != 0:  # not running (3): start it; running but not ready: wait
            self._ctl("start", timeout)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"PostgreSQL {self.version}/{self.name} did not come back")
            time.sleep(0.2)


def local_cluster(dsn: str) -> LocalCluster | str:
    """The cluster serving `dsn`, or why it cannot be restarted from here."""
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "")
    port = int(params.get("port") or 5432)
    if host not in _LOCAL_HOSTS and not host.startswith("/"):
        return f"the PostgreSQL of {PG_DSN_ENV} is not on this machine ({host})"
    if os.geteuid() != 0:
        return "restarting PostgreSQL needs root (pg_ctlcluster)"
    for tool in ("pg_lsclusters", "pg_ctlcluster", "pg_isready"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian's postgresql-common)"
    listing = subprocess.run(["pg_lsclusters", "--no-header"], check=True, capture_output=True,
                             text=True).stdout
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == str(port):
            return LocalCluster(fields[0], fields[1], host, port)
    return f"no local cluster listens on port {port} (pg_lsclusters)"
