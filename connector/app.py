"""Composition root: build the store and the listeners from settings, run, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field

import structlog

from connector.hl7.ack import AckIdentity, ControlIdGenerator
from connector.mllp.server import MLLPServer, server_ssl_context
from connector.pipeline.intake import IntakeConfig, IntakeHandler
from connector.settings import Settings, StoreBackend
from connector.store.cipher import PayloadCipher
from connector.store.sqlite import SQLiteStore

log = structlog.get_logger(__name__)


def build_cipher(settings: Settings) -> PayloadCipher:
    enc = settings.store.encryption
    return PayloadCipher(enc.keys, enc.current_key_id) if enc else PayloadCipher()


def build_store(settings: Settings) -> SQLiteStore:
    if settings.store.backend is not StoreBackend.SQLITE:
        from connector.errors import ConfigError

        raise ConfigError("store.backend", "only 'sqlite' is available in this version",
                          source=settings.source)
    return SQLiteStore(settings.store.path, cipher=build_cipher(settings),
                       retransmission_window_seconds=settings.store.retransmission_window_seconds)


@dataclass
class Application:
    settings: Settings
    store: SQLiteStore
    servers: list[MLLPServer] = field(default_factory=list)
    handlers: list[IntakeHandler] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings) -> Application:
        store = build_store(settings)
        app = cls(settings, store)
        control_ids = ControlIdGenerator()
        for tenant in settings.tenants:
            for listener in tenant.listeners:
                handler = IntakeHandler(
                    IntakeConfig(tenant.id, listener.name,
                                 AckIdentity(tenant.application, tenant.facility),
                                 listener.charset, settings.default_charset),
                    store, control_ids)
                ssl_context = server_ssl_context(listener.tls) if listener.tls else None
                app.handlers.append(handler)
                app.servers.append(MLLPServer(listener, handler, ssl_context=ssl_context))
        return app

    async def start(self) -> None:
        self.store.open()
        try:
            for server in self.servers:
                await server.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, answer AR to what is queued, finish what is in flight, close."""
        for handler in self.handlers:
            handler.draining = True
        await asyncio.gather(*(s.stop(grace_seconds) for s in self.servers))
        await self.store.close()
        log.info("stopped")

    async def run_until_signalled(self) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("serving", tenants=len(self.settings.tenants), listeners=len(self.servers),
                 store=str(self.settings.store.path))
        await stop.wait()
        log.info("draining")
        await self.stop()
