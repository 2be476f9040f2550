"""Golden cases of the shipped mappings: `mappings/<flow>/cases/<case>.hl7` (with an optional
`<case>.context.json`, the ADT context) gives `<case>.cda.xml` (generated ids and times
normalised) and `<case>.expected.json` (mapping, recipients, unresolved). The generated CDA
passes the CDA XSD and the structuration-minimale schematron.

Set MSSCONNECTOR_UPDATE_GOLDEN=1 to rewrite the expected files after a deliberate change (then
review the diff)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from connector.cda.policy import SchematronPolicy
from connector.cda.validation import CdaValidator
from connector.hl7.header import MessageHeader
from connector.hl7.message import parse_message
from connector.legacy.flow import Establishment, LegacyFlows, PatientTraits
from connector.legacy.mapping import MailboxChoice, load_mappings
from tests.conftest import SCHEMAS

SHIPPED = Path(__file__).resolve().parents[3] / "mappings"
CASES = sorted(SHIPPED.glob("*/cases/*.hl7"))
PARIS = timezone(timedelta(hours=1))
NOW = datetime(2026, 11, 23, 10, 30, tzinfo=PARIS)
ESTABLISHMENT = Establishment("CHU X", "1.2.250.1.71.4.2.2.1120456789", "120456789")
DIRECTORY = {  # national id → MSSanté addresses (personal first), as the directory returns them
    "810101010101": ["paul.martin@medecin.mssante.fr"],
    "810202020202": ["claire.durand@medecin.mssante.fr"],
    "810505050505": ["jean.traitant@medecin.mssante.fr"],
}


class StubDirectory:
    def addresses(self, national_id: str, choice: MailboxChoice) -> Sequence[str]:
        return DIRECTORY.get(national_id, [])


@pytest.fixture(scope="module")
def validator() -> CdaValidator:
    return CdaValidator.from_paths(
        SCHEMAS / "cda-xsd" / "CDA_extended.xsd",
        SCHEMAS / "schematron" / "structurationMinimale" / "ASIP-STRUCT-MIN-StrucMin.sch",
        policy=SchematronPolicy.REJECT)


def normalised(cda: bytes) -> str:
    return re.sub(r"2\.25\.\d+", "2.25.GENERATED", cda.decode("utf-8"))


def test_every_shipped_mapping_has_a_case() -> None:
    assert {case.parts[-3] for case in CASES} == {m.name for m in load_mappings(SHIPPED)}


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parts[-3]}/{p.stem}")
def test_golden_case(case: Path, validator: CdaValidator) -> None:
    message = parse_message(case.read_text("utf-8"))
    header = MessageHeader.from_segment(message.msh)
    context_file = case.with_suffix(".context.json")
    traits = (PatientTraits(**json.loads(context_file.read_text("utf-8")))
              if context_file.exists() else None)
    flows = LegacyFlows(load_mappings(SHIPPED), ESTABLISHMENT, resolver=StubDirectory(),
                        clock=lambda: NOW)
    outcome = flows.request(header, message, traits)
    (document,) = outcome.request.documents
    cda = normalised(document.content)
    summary = {"mapping": outcome.mapping.name,
               "recipients": [r.address for r in outcome.request.sending.recipients],
               "unresolved": list(outcome.unresolved),
               "ack_reception": outcome.request.metadata.ack_reception,
               "ack_lecture_mss": outcome.request.metadata.ack_lecture_mss}
    expected_cda, expected = case.with_suffix(".cda.xml"), case.with_suffix(".expected.json")
    if os.environ.get("MSSCONNECTOR_UPDATE_GOLDEN"):
        expected_cda.write_text(cda, "utf-8")
        expected.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", "utf-8")
    assert cda == expected_cda.read_text("utf-8")
    assert summary == json.loads(expected.read_text("utf-8"))
    validation = validator.assess(document.content)
    assert validation.accepted, validation.report()
    assert not validation.xsd_violations
