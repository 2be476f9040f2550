"""Bad input over real sockets: every message is answered or the connection is closed on purpose,
the server keeps serving others, and nothing rejected is stored as accepted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from connector.store import InboundStatus
from tests.conftest import HL7_FIXTURES
from tests.integration.conftest import RunningApp, ack_fields

ADT = (HL7_FIXTURES / "pam-fr-2.11" / "adt-a01-admission.er7").read_bytes().replace(b"\n", b"\r")


def adt(control_id: str) -> bytes:
    return ADT.replace(b"|3975|", f"|{control_id}|".encode())


async def open_raw(running: RunningApp) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = running.address
    return await asyncio.open_connection(host, port)


async def read_frame(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    data = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), timeout)
    return data[data.index(b"\x0b") + 1 : -2]


async def assert_still_serving(running: RunningApp, control_id: str = "ALIVE") -> None:
    assert ack_fields(await running.send(adt(control_id)))["code"] == "AA"


async def test_junk_between_frames_is_ignored(running: RunningApp) -> None:
    reader, writer = await open_raw(running)
    writer.write(b"GET / HTTP/1.1\r\n\r\n\x00\xff" + b"\x0b" + adt("J1") + b"\x1c\r" + b"junk")
    writer.write(b"\x0b" + adt("J2") + b"\x1c\r")
    await writer.drain()
    assert ack_fields(await read_frame(reader))["acked"] == "J1"
    assert ack_fields(await read_frame(reader))["acked"] == "J2"
    writer.close()
    assert len(await running.rows()) == 2


async def test_truncated_frame_then_disconnect_stores_nothing(running: RunningApp) -> None:
    _, writer = await open_raw(running)
    writer.write(b"\x0b" + adt("T1")[:300])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.1)
    assert await running.rows() == []
    assert running.app.servers[0].stats.truncated_frames == 1
    await assert_still_serving(running)


async def test_frame_over_limit_closes_connection(app_factory: Callable[..., object]) -> None:
    running: RunningApp = await app_factory(max_frame_bytes=4096)  # type: ignore[operator]
    reader, writer = await open_raw(running)
    other_reader, other_writer = await open_raw(running)  # another client, mid-session
    writer.write(b"\x0b" + adt("BIG") + b"OBX|1|ED|" + b"A" * 10_000 + b"\x1c\r")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no answer
    assert running.app.servers[0].stats.oversized_frames == 1
    refused = [(s.labels["reason"], s.value) for m in running.app.metrics.registry.collect()
               for s in m.samples if s.name == "mssconnector_mllp_frames_refused_total"]
    assert refused == [("too_large", 1.0)]  # alert MSSConnectorFramesTooLarge
    other_writer.write(b"\x0b" + adt("OTHER") + b"\x1c\r")
    await other_writer.drain()
    assert ack_fields(await read_frame(other_reader))["code"] == "AA"
    other_writer.close()
    rows = await running.rows()
    assert [r.control_id for r in rows] == ["OTHER"]


async def test_frame_without_msh_is_answered_ae_and_kept(running: RunningApp) -> None:
    ack = await running.send(b"PID|1||123\rPV1|1|I\r")
    fields = ack_fields(ack)
    assert fields["code"] == "AE"
    assert fields["err3"] == "100"
    assert fields["acked"] == ""
    (row,) = await running.rows()
    assert row.status is InboundStatus.REJECTED
    assert row.error_code == "100"
    detail = await running.app.store.get_inbound(row.id)
    assert detail is not None
    assert detail.raw == b"PID|1||123\rPV1|1|I\r"


async def test_wrong_encoding_characters_answered_ae(running: RunningApp) -> None:
    bad = adt("ENC1").replace(b"MSH|^~\\&|", b"MSH|^^\\&|", 1)
    fields = ack_fields(await running.send(bad))
    assert fields["code"] == "AE"
    assert fields["err3"] == "102"
    assert fields["acked"] == "ENC1"  # salvaged from the header
    (row,) = await running.rows()
    assert row.status is InboundStatus.REJECTED


async def test_undecodable_bytes_answered_ae(running: RunningApp) -> None:
    bad = adt("UTF1").replace(b"PAT-TROIS", b"PAT-\xff\xfeTROIS")  # MSH-18 says UTF-8
    fields = ack_fields(await running.send(bad))
    assert fields["code"] == "AE"
    assert fields["err3"] == "102"
    assert fields["err2"] == "MSH^1^18"
    assert fields["acked"] == "UTF1"
    (row,) = await running.rows(status=InboundStatus.REJECTED)
    assert row.control_id == "UTF1"


async def test_unknown_charset_answered_ae_103(running: RunningApp) -> None:
    bad = adt("CS1").replace(b"UNICODE UTF-8", b"EBCDIC")
    ack = await running.send(bad)
    fields = ack_fields(ack)
    assert (fields["code"], fields["err3"]) == ("AE", "103")
    assert msh_of(ack)[17] == b"UNICODE UTF-8"  # what the answer is written in, not "EBCDIC"


def msh_of(ack: bytes) -> list[bytes]:
    """The ACK's MSH as bytes, split on `|`: index n is MSH-(n+1) (MSH-1 is the separator)."""
    return ack.split(b"\r", 1)[0].split(b"|")


async def test_undecodable_bytes_keep_the_senders_names_in_msh5_msh6(
        running: RunningApp) -> None:
    """The AE for bytes that are not the MSH-18 charset salvages the header in the charset the
    answer is written in: MSH-3/MSH-4 come back in MSH-5/MSH-6 byte for byte."""
    original = adt("UTF2").replace(b"|GAM|CHU-X|", "|GAM|Hôpital|".encode(), 1)
    bad = original.replace(b"PAT-TROIS", b"PAT-\xffTROIS")
    ack = await running.send(bad)
    assert ack_fields(ack)["code"] == "AE"
    assert msh_of(ack)[4:6] == [b"GAM", "Hôpital".encode()]


async def test_iso_8859_15_message_is_decoded_per_msh18(running: RunningApp) -> None:
    latin = adt("L1").replace(b"UNICODE UTF-8", b"8859/15").replace(
        b"PAT-TROIS", "PAT-TRÖIS€".encode("iso-8859-15"))
    fields = ack_fields(await running.send(latin))
    assert fields["code"] == "AA"


async def test_thousands_of_empty_frames_get_no_answer(running: RunningApp) -> None:
    reader, writer = await open_raw(running)
    writer.write(b"\x0b\x1c\r" * 5000 + b"\x0b\r\n\x1c\r" * 100)
    writer.write(b"\x0b" + adt("AFTER") + b"\x1c\r")
    await writer.drain()
    assert ack_fields(await read_frame(reader))["acked"] == "AFTER"
    writer.close()
    assert running.app.servers[0].stats.empty_frames == 5100
    assert [r.control_id for r in await running.rows()] == ["AFTER"]


async def test_unknown_processing_id_is_ae_202_and_kept(running: RunningApp) -> None:
    """MSH-11 outside HL7 table 0103 (P, T, D): AE 202 at MSH-11, kept as rejected. T and D
    (a test system, a debugging one) are taken as P is."""
    bad = adt("PID1").replace(b"|3975|D|", b"|3975|X|", 1).replace(b"|PID1|D|", b"|PID1|X|", 1)
    fields = ack_fields(await running.send(bad))
    assert (fields["code"], fields["err3"], fields["err2"]) == ("AE", "202", "MSH^1^11^1^1")
    (row,) = await running.rows(status=InboundStatus.REJECTED)
    assert row.control_id == "PID1"
    for code in ("T", "P", "D"):
        ok = adt(f"PID{code}").replace(f"|PID{code}|D|".encode(), f"|PID{code}|{code}|".encode())
        assert ack_fields(await running.send(ok))["code"] == "AA"


async def test_unsupported_event_is_ae_201(running: RunningApp) -> None:
    fields = ack_fields(await running.send(adt("EV1").replace(b"ADT^A01^ADT_A01",
                                                              b"ADT^A99^ADT_A01")))
    assert (fields["code"], fields["err3"], fields["err2"]) == ("AE", "201", "MSH^1^9^1^2")
    mdm = adt("EV2").replace(b"ADT^A01^ADT_A01", b"MDM^T11^MDM_T01")
    assert ack_fields(await running.send(mdm))["err3"] == "201"


async def test_client_that_never_reads_acks_is_dropped(
        app_factory: Callable[..., object]) -> None:
    running: RunningApp = await app_factory(idle_timeout_seconds=1.0)  # type: ignore[operator]
    host, port = running.address
    _, writer = await asyncio.open_connection(host, port)
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    import socket

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    transport.pause_reading()  # never read the ACKs
    big = adt("NR").replace(b"PV1|", b"NTE|1||" + b"x" * 60_000 + b"\rPV1|", 1)
    sent = 0
    try:
        for i in range(400):
            writer.write(b"\x0b" + big.replace(b"|NR|", f"|NR{i}|".encode()) + b"\x1c\r")
            await asyncio.wait_for(writer.drain(), 3)
            sent += 1
    except (TimeoutError, ConnectionError):
        pass
    # Meanwhile and afterwards, other clients are served.
    await assert_still_serving(running, "OTHER1")
    for _ in range(60):
        if running.app.servers[0].connection_count == 0:
            break
        await asyncio.sleep(0.1)
    assert running.app.servers[0].connection_count == 0  # the stuck peer was disconnected
    await assert_still_serving(running, "OTHER2")
    stored = await running.rows()
    assert 0 < len(stored) < sent + 2  # bounded: it stopped reading the stuck peer
    writer.close()


async def test_a_tls_client_on_a_plain_listener_is_told_at_once(running: RunningApp) -> None:
    """Its ClientHello is never MLLP: the connection is closed at once with a log event saying
    why (before, the bytes waited as a frame until the client's time-out, logged truncated)."""
    import ssl

    import structlog

    host, port = running.address
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with structlog.testing.capture_logs() as logs:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), 5)
        await asyncio.sleep(0.05)
    said = [e for e in logs if e["event"] == "tls_on_plain_listener"]
    assert len(said) == 1
    assert "frame_truncated" not in [e["event"] for e in logs]
    reader, writer = await open_raw(running)  # the listener still serves MLLP
    writer.write(b"\x0b" + adt("AFTER-TLS") + b"\x1c\r")
    await writer.drain()
    assert b"MSA|AA|AFTER-TLS" in await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 5)
    writer.close()
