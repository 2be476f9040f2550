"""Run the real application in-process on loopback, with a real SQLite file."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from connector.app import Application
from connector.hl7.message import parse_message
from connector.mllp.client import MLLPClient
from connector.settings import (
    ListenerSettings,
    Settings,
    StoreSettings,
    TenantSettings,
    TransportSettings,
)


def make_settings(tmp_path: Path, **listener_overrides: object) -> Settings:
    listener = replace(ListenerSettings(name="test", host="127.0.0.1", port=0),
                       **listener_overrides)  # type: ignore[arg-type]
    tenant = TenantSettings(id="chu-test", name="CHU Test", finess="120456789",
                            application="PFI-TEST", facility="CHU-TEST", listeners=(listener,),
                            transport=TransportSettings(maildir=tmp_path / "maildir"),
                            oid="1.2.250.1.71.4.2.2.1120456789")
    return Settings(store=StoreSettings(path=tmp_path / "connector.db"), tenants=(tenant,))


class RunningApp:
    def __init__(self, app: Application) -> None:
        self.app = app

    @property
    def address(self) -> tuple[str, int]:
        return self.app.servers[0].address

    def client(self, *, ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0
               ) -> MLLPClient:
        host, port = self.address
        return MLLPClient(host, port, ssl_context=ssl_context, timeout=timeout)

    async def send(self, payload: bytes) -> bytes:
        async with self.client() as client:
            return await client.send(payload)

    async def rows(self, **filters: object) -> list:  # type: ignore[type-arg]
        return await self.app.store.list_inbound(limit=100_000, **filters)  # type: ignore[arg-type]


AppFactory = Callable[..., "asyncio.Future[RunningApp]"]


@pytest.fixture
async def app_factory(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    started: list[Application] = []

    async def start(settings: Settings | None = None, **listener_overrides: object) -> RunningApp:
        app = Application.build(settings or make_settings(tmp_path, **listener_overrides))
        await app.start()
        started.append(app)
        return RunningApp(app)

    yield start
    for app in started:
        await app.stop(grace_seconds=2.0)


@pytest.fixture
async def running(app_factory: Callable[..., object]) -> RunningApp:
    return await app_factory()  # type: ignore[operator,no-any-return]


def ack_fields(ack: bytes) -> dict[str, str]:
    message = parse_message(ack.decode("utf-8"))
    msa = message.first("MSA")
    err = message.first("ERR")
    assert msa is not None
    return {
        "code": msa.value(1),
        "acked": msa.value(2),
        "msh9": message.msh.raw(9),
        "err3": err.component(3, 1) if err else "",
        "err2": err.raw(2) if err else "",
        "err4": err.value(4) if err else "",
    }
