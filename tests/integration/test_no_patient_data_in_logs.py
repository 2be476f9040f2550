"""Every ANS fixture through the real intake, logs captured as JSON: no patient data in them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from connector.app import Application
from connector.cda.policy import SchematronPolicy
from connector.cli.send_cmd import split_messages
from connector.observability.logs import configure_logging
from connector.settings import CisisSettings, LogFormat, LoggingSettings, SendingMatrixProfile
from tests.conftest import HL7_FIXTURES
from tests.integration.conftest import make_settings
from tests.integration.test_cisis_fixtures import VALIDATION

# The identity of the ANS test patient and the professionals in the fixtures.
PATIENT_DATA = ("PAT-TROIS", "DOMINIQUE", "279035121518989", "277076322082910", "19790328",
                "Breteuil", "75007", "Hoda", "patient.mssante.fr", "Cher confr")


@pytest.mark.parametrize("policy", [SchematronPolicy.REJECT, SchematronPolicy.WARN])
async def test_intake_logs_carry_no_patient_data(tmp_path: Path, policy: SchematronPolicy,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggingSettings(LogFormat.JSON, "debug"), cache=False)
    try:
        base = make_settings(tmp_path)
        tenant = replace(base.tenants[0], cisis=CisisSettings(
            schematron_policy=policy, sending_matrix=SendingMatrixProfile.ANS_EXAMPLES))
        app = Application.build(replace(base, tenants=(tenant,), validation=VALIDATION))
        app.store.open()
        try:
            for path in sorted(HL7_FIXTURES.rglob("*")):
                if path.suffix in (".er7", ".hl7"):
                    for payload in split_messages(path.read_bytes()):
                        await app.handlers[0].handle(payload, "127.0.0.1:1")
        finally:
            await app.store.close()
    finally:
        structlog.reset_defaults()
    logged = capsys.readouterr().err
    assert "message_rejected" in logged  # the logs were captured
    assert "cda_validated" in logged
    for value in PATIENT_DATA:
        assert value not in logged, value
