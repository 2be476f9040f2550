"""A small admin HTTP listener: `/metrics` (Prometheus text), `/healthz` (the process answers),
`/readyz` (the store is open and every MLLP listener is bound), and the JSON API under `/api/`
(`connector.admin.api`, bearer token) when a token is configured. No request bodies, so a minimal
HTTP/1.1 responder on asyncio streams is enough; optional TLS; bind it to a private address."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable

import structlog

from connector.admin.api import AdminApi, query_of
from connector.observability.metrics import CONTENT_TYPE, ConnectorMetrics

log = structlog.get_logger(__name__)

_MAX_REQUEST_LINE = 8192


class AdminServer:
    def __init__(self, host: str, port: int, metrics: ConnectorMetrics,
                 ready: Callable[[], tuple[bool, str]], *, api: AdminApi | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.metrics = metrics
        self.ready = ready
        self.api = api
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=_MAX_REQUEST_LINE, ssl=self._ssl)
        host, port = self.address
        log.info("admin_listener_started", host=host, port=port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            headers: dict[str, str] = {}
            while line := (await asyncio.wait_for(reader.readline(), 10)).strip():
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
                if len(headers) > 64:
                    raise ValueError("too many headers")
            parts = request.decode("latin-1").split()
            method, target = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path, query = query_of(target)
            if path.startswith("/api/") and self.api is not None:
                peer = writer.get_extra_info("peername")
                response = await self.api.handle(method, path, query, headers,
                                                 f"{peer[0]}:{peer[1]}" if peer else "?")
                status, content_type, body = (response.status, response.content_type,
                                              response.body)
                extra = "".join(f"{name}: {value}\r\n" for name, value in response.headers)
            else:
                status, content_type, body = self._route(method, path)
                extra = ""
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if path.startswith("/api/"):
            return "404 Not Found", "text/plain", (
                b"admin API disabled: set [admin] token_env or token_file\n")
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE, self.metrics.render()
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            ok, reason = self.ready()
            return ("200 OK" if ok else "503 Service Unavailable"), "text/plain", \
                f"{reason}\n".encode()
        return "404 Not Found", "text/plain", b"not found\n"
