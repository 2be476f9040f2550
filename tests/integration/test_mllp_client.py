"""The MLLP client (`send`, the return path to the HIS): a peer that resets the connection is a
`ProtocolError` (retried with the backoff), never an `OSError` escaping to the caller; and the
HIS session does not stay on a connection whose answers are out of step."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from pathlib import Path

import pytest

from connector.delivery.smtp import Outcome
from connector.errors import ProtocolError
from connector.mllp.client import MLLPClient
from connector.receipts.his import HisEndpoint, HisTransport
from connector.store import OutboxKind, OutboxLease


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


def zam_lease(n: int) -> OutboxLease:
    message_id = f"Z{n}"
    payload = (f"MSH|^~\\&|PFI|CHU|DPI|CHU|20261124||ZAM^Z02^ZAM_Z01|{message_id}|P|2.6\r"
               ).encode()
    return OutboxLease(n, "token", 0.0, 1, "chu", OutboxKind.HL7, 1, message_id, None, None,
                       payload)


async def test_the_his_answer_for_another_zam_puts_the_next_one_on_a_new_connection() -> None:
    """An extra or late frame from the HIS would put every later answer one behind: after an
    answer that acknowledges another message, the session reconnects."""
    connections: list[int] = []

    async def his(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections) + 1)
        while True:
            try:
                frame = await reader.readuntil(b"\x1c\r")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            control_id = frame.split(b"|")[9].decode()
            acked = "Z0" if len(connections) == 1 else control_id  # the first: out of step
            writer.write(f"\x0bMSH|^~\\&|DPI|CHU|PFI|CHU|20261124||ACK^Z02^ACK|A|P|2.6\r"
                         f"MSA|AA|{acked}\r\x1c\r".encode())
            await writer.drain()

    server = await asyncio.start_server(his, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    session = HisTransport(HisEndpoint("127.0.0.1", port, 5.0)).session()
    try:
        first = await session.send(zam_lease(1))
        assert first.outcome is Outcome.TRANSIENT
        assert "acknowledged another message ('Z0')" in first.detail
        second = await session.send(zam_lease(2))
        assert second.outcome is Outcome.SENT
        assert connections == [1, 2]
    finally:
        await session.close()
        server.close()
        await server.wait_closed()


async def test_connect_failures_say_why_in_words(tmp_path: Path) -> None:
    """A TLS or a resolver error's errno is not an errno: 'Operation not permitted' for a
    certificate not verified, 'Unknown error -2' for an unknown name, before."""
    from tests.support.pki import TestCA

    with pytest.raises(ProtocolError) as caught:
        await MLLPClient("no-such-host.invalid", 2575, timeout=5).connect()
    assert "Unknown error" not in str(caught.value)
    assert str(caught.value).startswith("cannot connect to no-such-host.invalid:2575: ")
    server_ca = TestCA(tmp_path / "server-ca")
    issued = server_ca.issue("mllp", server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.certificate, issued.private_key)

    async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1)
        writer.close()

    server = await asyncio.start_server(idle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    other = TestCA(tmp_path / "other-ca")
    async with server:
        with pytest.raises(ProtocolError) as caught:
            await MLLPClient("127.0.0.1", port, timeout=5, ssl_context=ssl.create_default_context(
                cafile=str(other.certificate))).connect()
    assert "Operation not permitted" not in str(caught.value)
    assert "TLS: " in str(caught.value)
    assert "certificate" in str(caught.value)
    with pytest.raises(ProtocolError) as caught:
        await MLLPClient("127.0.0.1", 1, timeout=5).connect()
    assert str(caught.value) == "cannot connect to 127.0.0.1:1: Connection refused"
