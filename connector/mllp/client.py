"""Asyncio MLLP client: send one message, wait for its framed answer. Used by `send` and by the
return path to the HIS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from types import TracebackType

from connector.errors import FramingError, ProtocolError
from connector.mllp._framing import DEFAULT_MAX_FRAME_BYTES, MLLPFramer, frame


def connect_reason(exc: OSError) -> str:
    """Why a connection failed, in words: OpenSSL's for TLS (a certificate not verified, a
    handshake refused), the resolver's for a name, the system's for a socket error (not
    asyncio's 'Connect call failed'); an SSL error's or a resolver's errno is not an errno."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)


class MLLPClient:
    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 timeout: float = 30.0, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._ssl = ssl_context
        self._framer = MLLPFramer(max_frame_bytes)
        self._pending: list[bytes] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self._ssl,
                                        limit=1 << 20), self.timeout)
        except TimeoutError as exc:
            raise ProtocolError(f"cannot connect to {self.host}:{self.port}: no answer within "
                                f"{self.timeout:g} s") from exc
        except OSError as exc:
            raise ProtocolError(f"cannot connect to {self.host}:{self.port}: "
                                f"{connect_reason(exc)}") from exc

    async def send(self, payload: bytes) -> bytes:
        """Send one message and return the payload of the next frame received."""
        if self._writer is None or self._reader is None:
            raise ProtocolError("not connected")
        try:
            self._writer.write(frame(payload))
            await self._writer.drain()
        except OSError as exc:  # reset, broken pipe: the peer went away
            raise ProtocolError(f"connection lost while sending: {type(exc).__name__}") from exc
        return await self.receive()

    async def receive(self) -> bytes:
        assert self._reader is not None
        while not self._pending:
            try:
                data = await asyncio.wait_for(self._reader.read(65536), self.timeout)
            except TimeoutError as exc:
                raise ProtocolError("no acknowledgement before the time-out") from exc
            except OSError as exc:  # a reset (an engine restarting, a firewall): retried
                raise ProtocolError(f"connection lost before an acknowledgement: "
                                    f"{type(exc).__name__}") from exc
            if not data:
                raise ProtocolError("connection closed before an acknowledgement")
            try:
                self._pending.extend(self._framer.feed(data))
            except FramingError as exc:
                raise ProtocolError(str(exc)) from exc
        return self._pending.pop(0)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await self._writer.wait_closed()
            self._writer = None

    async def __aenter__(self) -> MLLPClient:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
