"""Retransmissions, enhanced mode, AR on store failure and on drain, TLS, admission control."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from connector.errors import ProtocolError
from connector.settings import EnhancedAck, ListenerTLS
from connector.store import InboundStatus
from tests.integration.conftest import RunningApp, ack_fields, make_settings
from tests.integration.test_intake_bad_input import adt
from tests.support.pki import TestCA


async def test_retransmission_gets_the_same_ack_and_one_row(running: RunningApp) -> None:
    first = await running.send(adt("DUP1"))
    second = await running.send(adt("DUP1"))
    assert first == second  # byte-identical, same MSH-10 of the ACK
    rows = await running.rows()
    assert len(rows) == 1
    assert rows[0].retransmissions == 1


async def test_same_control_id_different_content_is_a_new_message(running: RunningApp) -> None:
    first = await running.send(adt("015"))
    other = adt("015").replace(b"ADT^A01^ADT_A01", b"ADT^A08^ADT_A01")
    second = await running.send(other)
    assert ack_fields(first)["code"] == ack_fields(second)["code"] == "AA"
    assert first != second
    rows = await running.rows()
    assert len(rows) == 2
    assert [r.control_id_reused for r in rows] == [True, False]  # newest first


async def test_same_control_id_from_another_sender_is_not_a_retransmission(
        running: RunningApp) -> None:
    await running.send(adt("S1"))
    await running.send(adt("S1").replace(b"|GAM|CHU-X|", b"|GAM2|CHU-X|"))
    rows = await running.rows()
    assert len(rows) == 2
    assert not any(r.control_id_reused for r in rows)


async def test_retransmission_of_a_rejected_message_gets_the_same_ae(running: RunningApp) -> None:
    bad = adt("R1").replace(b"ADT^A01^ADT_A01", b"ZZZ^Z99")
    first, second = await running.send(bad), await running.send(bad)
    assert first == second
    assert ack_fields(first)["code"] == "AE"
    (row,) = await running.rows()
    assert row.status is InboundStatus.REJECTED


def with_msh15(message: bytes, value: str) -> bytes:
    msh, rest = message.split(b"\r", 1)
    fields = msh.split(b"|")
    fields[14] = value.encode()  # MSH-15: split index 14, since MSH-1 is the separator itself
    return b"|".join(fields) + b"\r" + rest


def with_msh16(message: bytes, value: str) -> bytes:
    msh, rest = message.split(b"\r", 1)
    fields = msh.split(b"|")
    fields[15] = value.encode()
    return b"|".join(fields) + b"\r" + rest


async def answered(running: RunningApp, message: bytes, expected: str | None) -> None:
    """`message` gets the ACK code `expected`, or no answer at all (None)."""
    async with running.client(timeout=1.0) as client:
        if expected is None:
            with pytest.raises(ProtocolError):
                await client.send(message)
        else:
            assert ack_fields(await client.send(message))["code"] == expected


@pytest.mark.parametrize(("msh15", "expected"), [("AL", "CA"), ("SU", "CA"), ("ER", None),
                                                 ("NE", None)])
async def test_enhanced_mode_commit_ack(running: RunningApp, msh15: str,
                                        expected: str | None) -> None:
    await answered(running, with_msh15(adt("EN1"), msh15), expected)
    assert len(await running.rows(status=InboundStatus.ACCEPTED)) == 1


@pytest.mark.parametrize(("msh16", "expected"), [("AL", "AA"), ("SU", "AA"), ("ER", None),
                                                 ("NE", None)])
async def test_no_commit_ack_asked_but_an_application_ack_answers_it(
        running: RunningApp, msh16: str, expected: str | None) -> None:
    """MSH-15 = NE: no commit ACK; MSH-16 asks for the application ACK, the only one due
    (HL7: NE/AL is original mode), which the sender gets on the connection."""
    await answered(running, with_msh16(with_msh15(adt(f"NA{msh16}"), "NE"), msh16), expected)
    assert len(await running.rows(status=InboundStatus.ACCEPTED)) == 1
    refused = with_msh16(with_msh15(adt(f"NR{msh16}").replace(b"ADT^A01^ADT_A01", b"ZZZ^Z01"),
                                    "NE"), msh16)
    if msh16 in ("AL", "ER"):
        assert ack_fields(await running.send(refused))["code"] == "AE"


@pytest.mark.parametrize("msh15", ["AL", "NE"])
async def test_a_listener_set_to_answer_application_acks_answers_aa_in_enhanced_mode(
        app_factory: Callable[..., object], tmp_path: Path, msh15: str) -> None:
    """`enhanced_ack = "application"`: a message with MSH-15/16 gets one AA (the CI-SIS ACKs
    only know AA/AE/AR), an unsupported type AE, even when MSH-15 says NE."""
    base = make_settings(tmp_path)
    (tenant,) = base.tenants
    (listener,) = tenant.listeners
    settings = replace(base, tenants=(replace(tenant, listeners=(replace(
        listener, enhanced_ack=EnhancedAck.APPLICATION),)),))
    running: RunningApp = await app_factory(settings)  # type: ignore[operator]
    accepted = with_msh16(with_msh15(adt("EA1"), msh15), "AL")
    assert ack_fields(await running.send(accepted))["code"] == "AA"
    refused = with_msh15(adt("EA2").replace(b"ADT^A01^ADT_A01", b"ZZZ^Z01"), msh15)
    assert ack_fields(await running.send(refused))["code"] == "AE"


async def test_enhanced_mode_error_gets_ce(running: RunningApp) -> None:
    message = with_msh15(adt("EN2").replace(b"ADT^A01^ADT_A01", b"ZZZ^Z01"), "ER")
    fields_ack = ack_fields(await running.send(message))
    assert (fields_ack["code"], fields_ack["err3"]) == ("CE", "200")


async def test_store_unavailable_is_ar_and_nothing_stored(running: RunningApp) -> None:
    await running.app.store.close()
    fields = ack_fields(await running.send(adt("AR1")))
    assert fields["code"] == "AR"
    assert fields["acked"] == "AR1"
    assert fields["err3"] == "207"
    running.app.store.open()
    assert await running.rows() == []


async def test_draining_answers_ar_without_storing(running: RunningApp) -> None:
    for handler in running.app.handlers:
        handler.draining = True
    assert ack_fields(await running.send(adt("DR1")))["code"] == "AR"
    assert await running.rows() == []


async def test_draining_ar_is_written_in_the_requests_charset(running: RunningApp) -> None:
    """The AR of a message the connector will not take is written in the request's MSH-18
    charset, says so in its MSH-18, and gives MSH-3/MSH-4 back in MSH-5/MSH-6."""
    latin = adt("DR2").replace(b"UNICODE UTF-8", b"8859/15").replace(
        b"|GAM|CHU-X|", "|GAM|HÔPITAL-€|".encode("iso-8859-15"), 1)
    for handler in running.app.handlers:
        handler.draining = True
    ack = await running.send(latin)
    msh = ack.split(b"\r", 1)[0].split(b"|")
    assert msh[5] == "HÔPITAL-€".encode("iso-8859-15")
    assert msh[17] == b"8859/15"
    assert b"MSA|AR|DR2" in ack


async def test_a_bug_in_intake_is_answered_ar_and_logged_without_its_message(
        running: RunningApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception no step expected (a bug) still gets the message an answer, AR (send again
    later), and a log line with its type and frames, never its message."""
    def broken(payload: bytes) -> None:
        raise RuntimeError("PAT-TROIS DOMINIQUE 19790328")

    for handler in running.app.handlers:
        monkeypatch.setattr(handler.decider, "first_pass", broken)
    with structlog.testing.capture_logs() as logs:
        fields = ack_fields(await running.send(adt("BUG1")))
    assert (fields["code"], fields["acked"], fields["err3"]) == ("AR", "BUG1", "207")
    (failed,) = [e for e in logs if e["event"] == "intake_failed"]
    assert failed["error"] == "RuntimeError"
    assert "pipeline/intake.py" in failed["where"]
    assert "PAT-TROIS" not in repr(logs)
    assert "19790328" not in repr(logs)
    assert await running.rows() == []


async def test_stop_finishes_in_flight_then_closes(running: RunningApp) -> None:
    reader, writer = await asyncio.open_connection(*running.address)
    writer.write(b"".join(b"\x0b" + adt(f"F{i}") + b"\x1c\r" for i in range(20)))
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 5)
    await running.app.stop(grace_seconds=5)
    rest = await asyncio.wait_for(reader.read(), 5)
    frames = [chunk[chunk.index(b"\x0b") + 1:] for chunk in (first + rest).split(b"\x1c\r")
              if b"\x0b" in chunk]
    codes = [ack_fields(f)["code"] for f in frames]
    assert codes[0] == "AA"
    assert set(codes) <= {"AA", "AR"}  # accepted before the drain, AR after: never silence
    assert len(codes) == 20
    writer.close()


def _tls(tmp_path: Path, *, mutual: bool) -> tuple[ListenerTLS, TestCA]:
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("mllp-server", server=True)
    return ListenerTLS(server.certificate, server.private_key,
                       client_ca=ca.certificate if mutual else None), ca


def _client_context(ca: TestCA, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.certificate))
    if cert:
        context.load_cert_chain(*cert)
    return context


async def test_tls_listener(app_factory: Callable[..., object], tmp_path: Path) -> None:
    tls, ca = _tls(tmp_path, mutual=False)
    running: RunningApp = await app_factory(tls=tls)  # type: ignore[operator]
    async with running.client(ssl_context=_client_context(ca)) as client:
        assert ack_fields(await client.send(adt("TLS1")))["code"] == "AA"
    with pytest.raises(ProtocolError):  # a client that does not trust the CA
        async with running.client(ssl_context=ssl.create_default_context()) as client:
            await client.send(adt("TLS2"))


async def test_mutual_tls_requires_a_client_certificate(app_factory: Callable[..., object],
                                                        tmp_path: Path) -> None:
    tls, ca = _tls(tmp_path, mutual=True)
    running: RunningApp = await app_factory(tls=tls)  # type: ignore[operator]
    client_cert = ca.issue("his-client", server=False)
    context = _client_context(ca, (client_cert.certificate, client_cert.private_key))
    async with running.client(ssl_context=context) as client:
        assert ack_fields(await client.send(adt("MT1")))["code"] == "AA"
    with pytest.raises((ProtocolError, ssl.SSLError, ConnectionError)):
        async with running.client(ssl_context=_client_context(ca), timeout=2) as client:
            await client.send(adt("MT2"))
    other_ca = TestCA(tmp_path / "other")
    stranger = other_ca.issue("stranger", server=False)
    with pytest.raises((ProtocolError, ssl.SSLError, ConnectionError)):
        async with running.client(ssl_context=_client_context(
                ca, (stranger.certificate, stranger.private_key)), timeout=2) as client:
            await client.send(adt("MT3"))
    assert [r.control_id for r in await running.rows()] == ["MT1"]


async def test_a_failed_tls_handshake_is_logged_with_its_reason(
        app_factory: Callable[..., object], tmp_path: Path) -> None:
    """What an interface engineer needs when a DPI cannot connect: no client certificate, a
    certificate from another CA, or clear MLLP sent to the TLS port. Before, asyncio's TLS server
    dropped these without a word; the listener keeps serving the others."""
    tls, ca = _tls(tmp_path, mutual=True)
    running: RunningApp = await app_factory(tls=tls)  # type: ignore[operator]
    stranger = TestCA(tmp_path / "other").issue("stranger", server=False)
    attempts = [
        ("no client certificate", _client_context(ca)),
        ("another CA", _client_context(ca, (stranger.certificate, stranger.private_key))),
        ("clear MLLP", None),
    ]
    for _, context in attempts:
        with structlog.testing.capture_logs() as logs:
            with pytest.raises((ProtocolError, ssl.SSLError, ConnectionError)):
                async with running.client(ssl_context=context, timeout=2) as client:
                    await client.send(adt("NOPE"))
            for _ in range(50):
                if any(e["event"] == "tls_handshake_failed" for e in logs):
                    break
                await asyncio.sleep(0.02)
        (failed,) = [e for e in logs if e["event"] == "tls_handshake_failed"]
        assert failed["reason"]  # OpenSSL's words, e.g. PEER_DID_NOT_RETURN_A_CERTIFICATE
        assert failed["listener"] == running.app.servers[0].settings.name
        assert "NOPE" not in str(failed)
    client_cert = ca.issue("his-client", server=False)
    context = _client_context(ca, (client_cert.certificate, client_cert.private_key))
    async with running.client(ssl_context=context) as client:
        assert ack_fields(await client.send(adt("MT9")))["code"] == "AA"
    assert running.app.servers[0].connection_count <= 1


async def test_connections_still_shaking_hands_do_not_keep_a_client_out(
        app_factory: Callable[..., object], tmp_path: Path) -> None:
    """Peers that connect and never send a ClientHello (a scan, a stuck client) are not
    counted against max_connections; one that connects and closes at once is no warning."""
    tls, ca = _tls(tmp_path, mutual=True)
    running: RunningApp = await app_factory(tls=tls, max_connections=2)  # type: ignore[operator]
    host, port = running.address
    silent = [await asyncio.open_connection(host, port) for _ in range(3)]
    client_cert = ca.issue("his-client", server=False)
    context = _client_context(ca, (client_cert.certificate, client_cert.private_key))
    with structlog.testing.capture_logs() as logs:
        async with running.client(ssl_context=context) as client:
            assert ack_fields(await client.send(adt("HS1")))["code"] == "AA"
        _, probe = await asyncio.open_connection(host, port)  # a load balancer's check
        probe.close()
        await asyncio.sleep(0.2)
    events = [e["event"] for e in logs]
    assert "connection_refused" not in events
    assert "tls_handshake_failed" not in events
    for _, writer in silent:
        writer.close()


async def test_source_allowlist(app_factory: Callable[..., object]) -> None:
    import ipaddress

    running: RunningApp = await app_factory(  # type: ignore[operator]
        allow_from=(ipaddress.ip_network("10.0.0.0/8"),))
    with pytest.raises(ProtocolError):
        await running.send(adt("AL1"))
    assert running.app.servers[0].stats.connections_refused == 1
    assert await running.rows() == []


async def test_connection_limit(app_factory: Callable[..., object]) -> None:
    running: RunningApp = await app_factory(max_connections=2)  # type: ignore[operator]
    held = [running.client() for _ in range(2)]
    for c in held:
        await c.connect()
        await c.send(adt("HOLD"))
    with pytest.raises(ProtocolError):
        await running.send(adt("THIRD"))
    assert running.app.servers[0].stats.connections_refused == 1
    await held[0].close()
    await asyncio.sleep(0.1)
    assert ack_fields(await running.send(adt("AFTER")))["code"] == "AA"
    await held[1].close()


async def test_idle_connection_is_closed(app_factory: Callable[..., object]) -> None:
    running: RunningApp = await app_factory(idle_timeout_seconds=0.3)  # type: ignore[operator]
    reader, writer = await asyncio.open_connection(*running.address)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_forced_listener_charset(app_factory: Callable[..., object]) -> None:
    running: RunningApp = await app_factory(charset="iso8859-1")  # type: ignore[operator]
    latin = adt("FC1").replace(b"PAT-TROIS", "PAT-TRÖIS".encode("latin-1"))
    ack = await running.send(latin)
    assert ack_fields(ack)["code"] == "AA"  # MSH-18 UTF-8 is overridden
    # The ACK is written in the listener's charset and says so, not the request's UTF-8.
    assert ack.split(b"\r", 1)[0].split(b"|")[17] == b"8859/1"


async def test_legacy_oru_without_mapping_is_refused_and_kept(running: RunningApp) -> None:
    """An ORU without the CI-SIS profile (MSH-21) needs a legacy mapping; none is configured."""
    legacy = (b"MSH|^~\\&|DPI|CHU-X|PFI|CHU-X|20240306111154||ORU^R01^ORU_R01|LEG1|P|2.5|||||"
              b"FRA|UNICODE UTF-8\rPID|1||000003^^^CHU-X&000897406&N^PI\rOBR|1\r"
              b"OBX|1|ED|11502-2^CR^LN||^application^pdf^Base64^JVBERi0=||||||F\r")
    async with running.client() as client:
        fields = ack_fields(await client.send(legacy))
    assert (fields["code"], fields["err3"]) == ("AE", "207")
    (row,) = await running.rows(status=InboundStatus.REJECTED)
    assert row.error_detail == (
        "ORU without the CI-SIS profile in MSH-21 and no legacy mapping configured")


async def test_activity_keeps_a_connection_open(app_factory: Callable[..., object]) -> None:
    """The idle timer counts from the last bytes received, not from the connection's start."""
    running: RunningApp = await app_factory(idle_timeout_seconds=0.4)  # type: ignore[operator]
    reader, writer = await asyncio.open_connection(*running.address)
    for n in range(6):  # 0.9 s of traffic, more than twice the timeout
        writer.write(b"\x0b" + adt(f"KEEP{n}") + b"\x1c\r")
        assert ack_fields((await reader.readuntil(b"\x1c\r"))[1:-2])["code"] == "AA"
        await asyncio.sleep(0.15)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then quiet: closed
    writer.close()
