"""Asyncio MLLP server: many connections, messages answered in order on each, bounded memory.

The server knows a `MessageHandler`, not the pipeline. Per connection it keeps a queue of frames
and one worker that answers them in order. Back-pressure: when the peer does not read its ACKs,
the transport's write buffer fills, the worker waits, the frame queue fills and reading pauses;
a peer stuck that way longer than the idle timeout is disconnected. A frame over the size limit
closes the connection (the stream can no longer be trusted), with a log event.

TLS listeners accept in clear and then run the handshake themselves (`loop.start_tls`), after the
admission checks: a handshake that fails (no client certificate where one is required, one from
another CA, a client speaking clear MLLP) is logged `tls_handshake_failed` with OpenSSL's reason,
where asyncio's own TLS server would drop it without a word. A listener without TLS that sees a
TLS ClientHello says so (`tls_on_plain_listener`) and closes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from connector.delivery.tls import openssl_reason
from connector.errors import ConfigError, FramingError
from connector.mllp._framing import MLLPFramer, frame
from connector.settings import ListenerSettings, ListenerTLS

log = structlog.get_logger(__name__)

_MAX_QUEUED_FRAMES = 32  # per connection, before reading pauses
_EMPTY_FRAME_MAX = 64  # longer whitespace-only frames go to intake and are answered AE
_TLS_HANDSHAKE = b"\x16\x03"  # a TLS record of type handshake, versions 3.x (TLS 1.0-1.3)
_HANDSHAKE_SECONDS = 15.0  # a TLS handshake longer than this (or the idle timeout) is dropped


class MessageHandler(Protocol):
    async def handle(self, payload: bytes, peer: str) -> bytes | None:
        """Answer one message (ACK bytes, unframed), or None when no answer is due."""
        ...


def server_ssl_context(tls: ListenerTLS, key: str = "tls") -> ssl.SSLContext:
    """TLS 1.2+; with `client_ca`, a client certificate chaining to it is required.

    What OpenSSL refuses (a wrong password, a key that does not belong to the certificate, a
    file that is not PEM) is a `ConfigError` naming `key` + `.private_key`/`.client_ca`, so that
    `check-config` and `serve` say which setting to fix. A password is always given (empty when
    none is set): OpenSSL would otherwise ask for one on the terminal and block start-up."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.certificate, tls.private_key,
                                password=tls.private_key_password or "")
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{key}.private_key",
                          f"{tls.private_key} with {tls.certificate}: refused by OpenSSL "
                          f"({openssl_reason(exc)}): a wrong private_key_password, a key that does "
                          "not belong to the certificate, or not PEM") from None
    if tls.client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=str(tls.client_ca))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{key}.client_ca", f"{tls.client_ca}: refused by OpenSSL "
                              f"({openssl_reason(exc)})") from None
    return context


@dataclass(slots=True)
class ListenerStats:
    connections_accepted: int = 0
    connections_refused: int = 0
    frames: int = 0
    empty_frames: int = 0
    oversized_frames: int = 0
    truncated_frames: int = 0


class MLLPServer:
    """One listener. `start()` binds; `stop()` drains and closes."""

    def __init__(self, settings: ListenerSettings, handler: MessageHandler, *,
                 ssl_context: ssl.SSLContext | None = None,
                 on_frame_refused: Callable[[str], None] | None = None) -> None:
        """`on_frame_refused(reason)`: a frame not answered, `too_large` or `truncated`."""
        self.settings = settings
        self.handler = handler
        self._on_frame_refused = on_frame_refused
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        # TLS connections still shaking hands: not counted against max_connections (a peer that
        # never sends its ClientHello must not keep a DPI out), ended at stop.
        self._handshaking: set[_Connection] = set()
        self.stats = ListenerStats()
        self.draining = False

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        assert self._server.sockets
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def bound(self) -> bool:
        return self._server is not None and self._server.is_serving()

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(  # TLS: each connection's own handshake
            lambda: _Connection(self), self.settings.host, self.settings.port,
            reuse_address=True, backlog=512)
        host, port = self.address
        log.info("listener_started", listener=self.settings.name, host=host, port=port,
                 tls=self._ssl is not None)

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, let each connection finish the message it is handling, close."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._handshaking):
            conn.close()
        connections = list(self._connections)
        for conn in connections:
            conn.begin_drain()
        waiters = [c.idle.wait() for c in connections]
        if waiters:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(w) for w in waiters], timeout=grace_seconds)
            for task in pending:
                task.cancel()
        for conn in connections:
            conn.close()
        log.info("listener_stopped", listener=self.settings.name)

    def frame_refused(self, reason: str) -> None:
        if reason == "too_large":
            self.stats.oversized_frames += 1
        else:
            self.stats.truncated_frames += 1
        if self._on_frame_refused is not None:
            self._on_frame_refused(reason)

    def _admit(self, conn: _Connection) -> str | None:
        """Why a new connection is refused, or None."""
        if self.draining:
            return "draining"
        if len(self._connections) >= self.settings.max_connections:
            return "connection_limit"
        if self.settings.allow_from:
            try:
                address = ipaddress.ip_address(conn.peer_host)
            except ValueError:
                return "source_not_allowed"
            if not any(address in net for net in self.settings.allow_from):
                return "source_not_allowed"
        return None


class _Connection(asyncio.Protocol):
    def __init__(self, server: MLLPServer) -> None:
        self.server = server
        self.settings = server.settings
        self.framer = MLLPFramer(server.settings.max_frame_bytes)
        self.frames: deque[bytes] = deque()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.peer_host = ""
        self.worker: asyncio.Task[None] | None = None  # started by the first frame, lives on
        self._wake: asyncio.Future[None] | None = None  # what the worker awaits when idle
        self.idle = asyncio.Event()
        self.idle.set()
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.reading_paused = False
        self.closing = False
        self.draining = False
        self.eof = False
        self._handshake: asyncio.Task[None] | None = None  # TLS listeners: until it is done
        self._received = False  # any byte yet
        self._loop = asyncio.get_running_loop()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_activity = self._loop.time()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple):
            self.peer_host = str(peername[0])
            self.peer = f"{peername[0]}:{peername[1]}"
        if self._refused(transport):
            return
        if self.server._ssl is not None:
            self.server._handshaking.add(self)
            self._handshake = self._loop.create_task(self._start_tls(transport,
                                                                     self.server._ssl))
            return
        self.server._connections.add(self)
        self.server.stats.connections_accepted += 1
        log.debug("connection_opened", listener=self.settings.name, peer=self.peer)
        self._arm_idle_timer()

    def _refused(self, transport: asyncio.Transport) -> bool:
        """The server's admission checks; a refusal is counted, said and the connection
        aborted."""
        refusal = self.server._admit(self)
        if refusal is None:
            return False
        self.server.stats.connections_refused += 1
        log.warning("connection_refused", listener=self.settings.name, peer=self.peer,
                    reason=refusal)
        self.closing = True
        transport.abort()
        return True

    async def _start_tls(self, plain: asyncio.Transport, context: ssl.SSLContext) -> None:
        """The handshake; on success the connection goes on over TLS, else it is said why and
        closed (asyncio does not tell this protocol about a handshake that failed)."""
        try:
            secured = await self._loop.start_tls(
                plain, self, context, server_side=True,
                ssl_handshake_timeout=min(self.settings.idle_timeout_seconds,
                                          _HANDSHAKE_SECONDS))
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            self.server._handshaking.discard(self)
            if self.closing:  # closed by a drain: nothing to say
                pass
            elif isinstance(exc, ssl.SSLError) or str(exc):
                log.warning("tls_handshake_failed", listener=self.settings.name,
                            peer=self.peer, reason=openssl_reason(exc) or type(exc).__name__)
            else:  # connected and closed without a word (a load balancer's check, a scan)
                log.debug("connection_closed_before_handshake", listener=self.settings.name,
                          peer=self.peer)
            plain.abort()
            self.connection_lost(exc)
            return
        self.server._handshaking.discard(self)
        if secured is None or self.closing:  # closed while shaking hands (a drain)
            plain.abort()
            return
        assert isinstance(secured, asyncio.Transport)
        if self._refused(secured):  # the limit, as the others may have reached it meanwhile
            return
        self.server._connections.add(self)
        self.server.stats.connections_accepted += 1
        self.transport = secured
        log.debug("connection_opened", listener=self.settings.name, peer=self.peer, tls=True)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if not self._received and self.server._ssl is None and data.startswith(_TLS_HANDSHAKE):
            # A TLS ClientHello on a listener without TLS: never MLLP. Said and closed now,
            # rather than read as bytes between frames until the client's time-out.
            log.warning("tls_on_plain_listener", listener=self.settings.name, peer=self.peer,
                        hint="the client speaks TLS: give this listener [tls], or the client "
                             "no TLS")
            self.abort()
            return
        self._received = True
        self._last_activity = self._loop.time()  # the idle timer reads it when it fires
        try:
            frames = self.framer.feed(data)
        except FramingError as exc:
            self.server.frame_refused("too_large")
            log.warning("frame_too_large", listener=self.settings.name, peer=self.peer,
                        limit=self.settings.max_frame_bytes, error=str(exc))
            self.abort()
            return
        for payload in frames:
            self.server.stats.frames += 1
            if len(payload) <= _EMPTY_FRAME_MAX and not payload.strip(b"\r\n\t \x00"):
                self.server.stats.empty_frames += 1
                continue
            self.frames.append(payload)
        if self.frames:
            self._kick()
            if len(self.frames) >= _MAX_QUEUED_FRAMES and not self.reading_paused:
                self.reading_paused = True
                assert self.transport is not None
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        if self.framer.pending_bytes:
            self.server.frame_refused("truncated")
            log.warning("frame_truncated", listener=self.settings.name, peer=self.peer,
                        pending_bytes=self.framer.pending_bytes)
        # Nothing left to answer: let asyncio close. Otherwise keep the write side open to
        # answer what was received.
        return not self.idle.is_set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.frames.clear()
        self.can_write.set()
        self._wake_worker()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self.server._connections.discard(self)
        if self.framer.pending_bytes and not self.eof:
            self.server.frame_refused("truncated")
            log.warning("frame_truncated", listener=self.settings.name, peer=self.peer,
                        pending_bytes=self.framer.pending_bytes)
        log.debug("connection_closed", listener=self.settings.name, peer=self.peer)

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    # -- work -----------------------------------------------------------------------------------

    def _kick(self) -> None:
        """Frames are queued: wake the worker (one task per connection, not one per message)."""
        self.idle.clear()
        if self.worker is None or self.worker.done():  # done: a handler bug ended it
            self.worker = self._loop.create_task(self._work())
        else:
            self._wake_worker()

    def _wake_worker(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _work(self) -> None:
        while not self.closing:
            try:
                await self._answer_queued()
            finally:
                self.idle.set()
                if not self.closing and (self.eof or self.draining):
                    self.close()
            if self.closing:
                return
            self._wake = self._loop.create_future()
            await self._wake
            self._wake = None

    async def _answer_queued(self) -> None:
        while self.frames and not self.closing:
            payload = self.frames.popleft()
            if (self.reading_paused and not self.draining
                    and len(self.frames) < _MAX_QUEUED_FRAMES // 2):
                self.reading_paused = False
                assert self.transport is not None
                self.transport.resume_reading()
            ack = await self.server.handler.handle(payload, self.peer)
            if ack is None or self.closing:
                continue
            assert self.transport is not None
            self.transport.write(frame(ack))
            if not self.can_write.is_set():
                try:
                    await asyncio.wait_for(self.can_write.wait(),
                                           self.settings.idle_timeout_seconds)
                except TimeoutError:
                    log.warning("peer_not_reading", listener=self.settings.name,
                                peer=self.peer)
                    self.abort()
                    return

    def begin_drain(self) -> None:
        """Frames not yet started are answered AR by the handler; close when idle."""
        self.draining = True
        if self.transport is not None and not self.closing and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        if self.idle.is_set():
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closing = True
        self._wake_worker()

    def abort(self) -> None:
        self.closing = True
        self.frames.clear()
        self._wake_worker()
        if self.transport is not None:
            self.transport.abort()

    def _arm_idle_timer(self, delay: float | None = None) -> None:
        self._idle_timer = self._loop.call_later(
            self.settings.idle_timeout_seconds if delay is None else delay, self._on_idle)

    def _on_idle(self) -> None:
        """The idle timer: armed once, it fires and looks at the last activity (re-arming a
        timer on every read cost more than the reads' own bookkeeping)."""
        if self.closing:
            return
        if not self.idle.is_set():  # busy answering: check again later
            self._arm_idle_timer()
            return
        quiet = self._loop.time() - self._last_activity
        if quiet < self.settings.idle_timeout_seconds:
            self._arm_idle_timer(self.settings.idle_timeout_seconds - quiet)
            return
        log.info("connection_idle_timeout", listener=self.settings.name, peer=self.peer)
        self.close()
