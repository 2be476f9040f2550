"""Every ANS fixture message is framed, stored and answered over a real socket."""

from __future__ import annotations

from pathlib import Path

import hl7
import hl7.mllp
import pytest

from connector.cli.send_cmd import split_messages
from connector.store import InboundStatus
from tests.conftest import HL7_FIXTURES
from tests.integration.conftest import RunningApp, ack_fields

FIXTURE_FILES = sorted(p for p in HL7_FIXTURES.rglob("*") if p.suffix in (".er7", ".hl7"))
# ACK and ZAM are what the connector sends, not what it takes: answered AE 200.
UNSUPPORTED_TYPES = ("ACK", "ZAM")


def test_fixture_set_is_complete() -> None:
    assert len(FIXTURE_FILES) == 22


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: str(p.relative_to(HL7_FIXTURES)))
async def test_fixture_is_stored_and_answered(running: RunningApp, path: Path) -> None:
    (payload,) = split_messages(path.read_bytes())
    ack = await running.send(payload)
    fields = ack_fields(ack)
    original = hl7.parse(payload.decode("utf-8"))
    control_id = str(original.segment("MSH")[10])
    msg_type = str(original.segment("MSH")[9][0][0])
    event = str(original.segment("MSH")[9][0][1])
    assert fields["acked"] == control_id
    assert fields["msh9"] == f"ACK^{event}^ACK"
    rows = await running.rows()
    assert len(rows) == 1
    row = rows[0]
    assert row.control_id == control_id
    assert row.message_type == f"{msg_type}^{event}"
    assert row.processing_id == (str(original.segment("MSH")[11]) or None)  # for its ZAMs
    assert row.size == len(payload)
    if msg_type in UNSUPPORTED_TYPES:
        assert fields["code"] == "AE"
        assert fields["err3"] == "200"
    elif msg_type == "ADT":
        assert fields["code"] == "AA"
        assert fields["err3"] == ""
    else:  # CI-SIS requests: exact outcomes per fixture in test_cisis_fixtures.py
        assert fields["code"] in ("AA", "AE")
    expected_status = InboundStatus.ACCEPTED if fields["code"] == "AA" else InboundStatus.REJECTED
    assert row.status is expected_status
    assert row.ack_code == fields["code"]
    detail = await running.app.store.get_inbound(row.id)
    assert detail is not None
    assert detail.raw == payload
    assert detail.ack == ack


async def test_python_hl7_mllp_client_gets_ack(running: RunningApp) -> None:
    """python-hl7's own asyncio MLLP client talks to the server."""
    path = HL7_FIXTURES / "pam-fr-2.11" / "adt-a01-admission.er7"
    message = hl7.parse(split_messages(path.read_bytes())[0].decode("utf-8"))
    host, port = running.address
    reader, writer = await hl7.mllp.open_hl7_connection(host, port)
    try:
        writer.writemessage(message)
        await writer.drain()
        ack = await reader.readmessage()
    finally:
        writer.close()
        await writer.wait_closed()
    assert str(ack.segment("MSA")[1]) == "AA"
    assert str(ack.segment("MSA")[2]) == "3975"
    assert str(ack.segment("MSH")[3]) == "DPI"  # MSH-5 of the original
    assert str(ack.segment("MSH")[5]) == "GAM"  # MSH-3 of the original
    assert str(ack.segment("MSH")[12]) == "2.5^FRA^2.11"


async def test_many_messages_on_one_connection_answered_in_order(running: RunningApp) -> None:
    template = split_messages((HL7_FIXTURES / "pam-fr-2.11" / "adt-a01-admission.er7"
                               ).read_bytes())[0]
    payloads = [template.replace(b"|3975|", f"|ORD{i}|".encode()) for i in range(60)]
    async with running.client() as client:
        assert client._writer is not None
        client._writer.write(b"".join(b"\x0b" + p + b"\x1c\r" for p in payloads))
        acks = [await client.receive() for _ in payloads]
    assert [ack_fields(a)["acked"] for a in acks] == [f"ORD{i}" for i in range(60)]
    assert len(await running.rows()) == 60
