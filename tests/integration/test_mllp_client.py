"""The MLLP client (`send`, the return path to the HIS): a peer that resets the connection is a
`ProtocolError` (retried with the backoff), never an `OSError` escaping to the caller."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from connector.errors import ProtocolError
from connector.mllp.client import MLLPClient


async def test_a_reset_after_the_message_is_a_protocol_error() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\x1c\r")  # the message arrived; then an RST, no answer
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = MLLPClient("127.0.0.1", port, timeout=5)
        await client.connect()
        with pytest.raises(ProtocolError, match=r"^connection lost before an acknowledgement: "
                                               r"ConnectionResetError$"):
            await client.send(b"MSH|^~\\&|PFI|CHU|DPI|CHU|20261124||ZAM^Z02^ZAM_Z01|Z1|P|2.6\r")
        await client.close()
    finally:
        server.close()
        await server.wait_closed()
