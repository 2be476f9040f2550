"""The structlog redaction processor on values taken from the ANS fixtures."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from connector.hl7.message import parse_message
from connector.observability.logs import (
    FORBIDDEN_KEYS,
    REDACTED,
    configure_logging,
    exception_frames,
    loop_exception_handler,
    redact,
    redact_value,
)
from connector.settings import LogFormat, LoggingSettings
from tests.conftest import CISIS_FIXTURES, HL7_FIXTURES

ORU = parse_message((CISIS_FIXTURES / "oru-r01-delete" / "message.er7").read_bytes()
                    .decode("utf-8"))
ADT = parse_message((HL7_FIXTURES / "pam-fr-2.11" / "adt-a01-admission.er7").read_bytes()
                    .decode("utf-8"))
_PID = ORU.first("PID")
assert _PID is not None
INS = _PID.value(3)  # 279035121518989
PATIENT_NAME = f"{_PID.component(5, 1)} {_PID.component(5, 2)}"  # PAT-TROIS DOMINIQUE
BIRTH_DATE = _PID.value(7)
PATIENT_MAILBOX = ORU.all("PRT")[2].component(15, 4)  # the patient recipient's PRT-15
PS_MAILBOX = ORU.all("PRT")[1].component(15, 4)
PATIENT_DATA = (INS, "PAT-TROIS", "DOMINIQUE", PATIENT_MAILBOX, BIRTH_DATE)


def run(**event: Any) -> dict[str, Any]:
    return dict(redact(None, "info", dict(event)))


def leaks(value: Any) -> list[str]:
    text = json.dumps(value, default=repr)
    return [p for p in PATIENT_DATA if p in text]


def test_fixture_values_are_what_we_think() -> None:
    assert INS == "279035121518989"
    assert PATIENT_NAME == "PAT-TROIS DOMINIQUE"
    assert PATIENT_MAILBOX == "279035121518989@patient.mssante.fr"
    assert PS_MAILBOX == "adam.hoda@test-ci-sis.mssante.fr"


def test_forbidden_keys_are_dropped_whatever_their_value() -> None:
    event = {key: PATIENT_NAME for key in FORBIDDEN_KEYS} | {"event": "message_received"}
    out = run(**event)
    assert out["event"] == "message_received"
    assert all(out[key] == REDACTED for key in FORBIDDEN_KEYS)
    assert run(name=12345)["name"] == REDACTED
    assert run(patient={"family": "PAT-TROIS"})["patient"] == REDACTED


def test_ins_and_patient_mailbox_are_masked_in_any_string() -> None:
    out = run(
        event=f"rejected: INS {INS} unknown",
        detail=f"PID-3 {ADT.first('PID').raw(3)}",  # type: ignore[union-attr]
        recipient=PATIENT_MAILBOX,
        header=f"To: <{PATIENT_MAILBOX.upper()}>, {PS_MAILBOX}",
        nir_without_key=INS[:13],
        spaced=f"ins={INS};",
    )
    assert out["event"] == f"rejected: INS {REDACTED} unknown"
    assert out["detail"] == ("PID-3 000003^^^CHU-X&000897406&N^PI~[redacted]^^^"
                             "ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS^^20101207")
    assert out["recipient"] == REDACTED
    assert out["header"] == f"To: <{REDACTED}>, {PS_MAILBOX}"
    assert out["nir_without_key"] == REDACTED
    assert out["spaced"] == f"ins={REDACTED};"
    assert leaks(out) == []


def test_nir_of_someone_born_in_corsica_is_masked() -> None:
    """NIR positions 6-7 hold the birth department, `2A` or `2B` for Corsica."""
    for nir in ("185052A12345678", "285062B12345123", "185052a12345678", "185052A123456"):
        assert redact_value(f"INS {nir} rejected") == f"INS {REDACTED} rejected"


def test_bytes_are_replaced_by_their_size() -> None:
    assert run(raw_bytes=INS.encode())["raw_bytes"] == "<15 bytes>"


def test_nested_values_are_redacted() -> None:
    out = run(
        recipients=[PS_MAILBOX, PATIENT_MAILBOX],
        pair=(INS, "015"),
        context={"control_id": "015", "name": PATIENT_NAME, "to": [PATIENT_MAILBOX]},
        deep=[[{"detail": f"INS {INS}"}]],
        members={(INS, frozenset({PATIENT_MAILBOX}))},
    )
    assert out["members"] == {(REDACTED, frozenset({REDACTED}))}
    assert out["recipients"] == [PS_MAILBOX, REDACTED]
    assert out["pair"] == (REDACTED, "015")
    assert out["context"] == {"control_id": "015", "name": REDACTED, "to": [REDACTED]}
    assert out["deep"] == [[{"detail": f"INS {REDACTED}"}]]
    assert leaks(out) == []


def test_deep_and_cyclic_values_do_not_break_logging() -> None:
    cyclic: list[Any] = [INS]
    cyclic.append(cyclic)
    deep: Any = INS
    for _ in range(50):
        deep = [deep]
    out = run(cyclic=cyclic, deep=deep)
    assert out["cyclic"][0] == REDACTED
    assert INS not in repr(out)


@pytest.mark.parametrize(
    "value",
    [
        "015", "3975", "AE", "207", "ORU^R01", "MDM^T10", "ACK^R01^ACK",
        "801234567897",  # RPPS / IDNPS (12 digits)
        "10000023084",  # RPPS (11 digits)
        "120456789", "2A0000001",  # FINESS
        "1.2.250.1.213.1.4.10",  # INS test OID
        "1.2.250.1.71.4.2.2.120456789.71024000081",  # document id
        "20240306111154", "202106060931",  # HL7 timestamps
        "TOXTM1FDZE2",  # our MSH-10
        "adam.hoda@test-ci-sis.mssante.fr",  # a health professional's mailbox
        "frame exceeds 16777216 bytes",
        "",
    ],
)
def test_ordinary_values_survive(value: str) -> None:
    out = run(event="message_rejected", control_id=value, code=value, count=3, ok=True,
              ratio=0.5, nothing=None)
    assert out == {"event": "message_rejected", "control_id": value, "code": value, "count": 3,
                   "ok": True, "ratio": 0.5, "nothing": None}


@pytest.fixture
def json_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The production pipeline, writing JSON lines to a buffer (bound as sys.stderr)."""
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging(LoggingSettings(format=LogFormat.JSON, level="info"))
    yield buffer
    structlog.reset_defaults()


def test_configured_pipeline_redacts(json_log: io.StringIO) -> None:
    log = structlog.get_logger("test")
    log.info("message_rejected", control_id="015", ack="AE", error="207",
             detail=f"INS {INS} unknown", name=PATIENT_NAME, recipients=[PATIENT_MAILBOX])
    log.debug("hidden", control_id="016")
    (line,) = json_log.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "message_rejected"
    assert (record["control_id"], record["ack"], record["error"]) == ("015", "AE", "207")
    assert record["detail"] == f"INS {REDACTED} unknown"
    assert record["name"] == REDACTED
    assert record["level"] == "info"
    assert leaks(line) == []


# -- what no code caught -----------------------------------------------------------------------


def _fail_with_patient_data() -> None:
    raise ValueError("PAT-TROIS DOMINIQUE 19790328")


def test_exception_frames_name_where_not_what() -> None:
    try:
        _fail_with_patient_data()
    except ValueError as exc:
        where = exception_frames(exc)
    assert where.endswith("_fail_with_patient_data")
    assert "test_logs.py:" in where
    assert "PAT-TROIS" not in where
    assert "19790328" not in where


def test_loop_exception_handler_logs_type_and_frames_only() -> None:
    """A callback that raises on a loop with the handler installed is logged through
    structlog: its type and frames, never its message (asyncio's own handler prints it)."""
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(loop_exception_handler)
    try:
        with structlog.testing.capture_logs() as logs:
            loop.call_soon(_fail_with_patient_data)
            loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    (entry,) = [e for e in logs if e["event"] == "unhandled_error"]
    assert entry["error"] == "ValueError"
    assert entry["where"].endswith("_fail_with_patient_data")
    assert "PAT-TROIS" not in repr(logs)
    assert "19790328" not in repr(logs)
