"""Every CI-SIS fixture through the real intake (ANS XSD and schematron, SQLite store), with its
expected answer under each schematron policy and sending-matrix profile.

Why the ANS examples end as they do (each checked against the fixture itself):
- `message-placeholder-cda.*` and `oru-r01-initial/message.hl7` carry a sentence instead of a
  base64 CDA: AE 207, detail "not a CDA document".
- `oru-r01-replace` / `oru-r01-delete`: PID-3 holds the test INS `.10`, the CDA recordTarget a
  production INS `.8` of another patient: AE 207 with ERR-5 904 at PID-3.
- The three MDM examples send to PS mailboxes only a document the patient may see (T04/T10) or
  hidden from legal representatives (T02): outside the 2026-04-21 matrix, so AE under the
  `strict` profile; the `ans-examples` profile allows it. Their CDAs lack the setId that
  structuration minimale 1.16 requires: AE under `reject` naming the rule, W warnings under
  `warn`, nothing under `off`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from connector.app import Application
from connector.cda.policy import SchematronPolicy
from connector.cli.send_cmd import split_messages
from connector.delivery.job import MailJob
from connector.hl7.message import parse_message
from connector.settings import CisisSettings, SendingMatrixProfile, Settings, ValidationSettings
from connector.store import InboundStatus, OutboxKind, UnknownOriginalPolicy
from tests.conftest import CISIS_FIXTURES, SCHEMAS
from tests.integration.conftest import make_settings

VALIDATION = ValidationSettings(
    SCHEMAS / "cda-xsd" / "CDA_extended.xsd",
    SCHEMAS / "schematron" / "structurationMinimale" / "ASIP-STRUCT-MIN-StrucMin.sch")

PLACEHOLDER = ("AE", "207", "906", "not a CDA document")
OTHER_PATIENT = ("AE", "207", "904", "INS of PID-3 and of the CDA")
MATRIX = ("AE", "207", "906", "not in the MSSanté sending matrix")
NO_SETID = ("AE", "207", "906", "hl7:setId")
ACCEPTED = ("AA", "", "", "")

CONTENT_OUTCOMES = {
    "mdm-t02-initial/message-placeholder-cda.er7": PLACEHOLDER,
    "oru-r01-initial/message.hl7": PLACEHOLDER,
    "oru-r01-replace/message-placeholder-cda.er7": PLACEHOLDER,
    "oru-r01-replace/message.er7": OTHER_PATIENT,
    "oru-r01-delete/message.er7": OTHER_PATIENT,
}
MDM = ("mdm-t02-initial/message.er7", "mdm-t04-delete/message.er7",
       "mdm-t10-replace/message.er7")


def expected(fixture: str, policy: SchematronPolicy, matrix: SendingMatrixProfile
             ) -> tuple[str, str, str, str]:
    if fixture in CONTENT_OUTCOMES:
        return CONTENT_OUTCOMES[fixture]
    if matrix is SendingMatrixProfile.STRICT:
        return MATRIX
    return NO_SETID if policy is SchematronPolicy.REJECT else ACCEPTED


FIXTURES = sorted(str(p.relative_to(CISIS_FIXTURES)) for p in CISIS_FIXTURES.rglob("message*"))


def test_every_cisis_fixture_has_an_expectation() -> None:
    assert set(FIXTURES) == set(CONTENT_OUTCOMES) | set(MDM)


def settings_for(tmp_path: Path, policy: SchematronPolicy, matrix: SendingMatrixProfile,
                 unknown: UnknownOriginalPolicy = UnknownOriginalPolicy.ACCEPT) -> Settings:
    base = make_settings(tmp_path)
    tenant = replace(base.tenants[0], cisis=CisisSettings(
        schematron_policy=policy, sending_matrix=matrix, unknown_original=unknown))
    return replace(base, tenants=(tenant,), validation=VALIDATION)


@pytest.fixture
async def intake(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    apps: list[Application] = []

    def build(policy: SchematronPolicy, matrix: SendingMatrixProfile,
              unknown: UnknownOriginalPolicy = UnknownOriginalPolicy.ACCEPT) -> Application:
        app = Application.build(settings_for(tmp_path / str(len(apps)), policy, matrix, unknown))
        app.store.open()
        apps.append(app)
        return app

    yield build
    for app in apps:
        await app.store.close()


async def answer(app: Application, fixture: str) -> tuple[str, list[tuple[str, str, str, str]]]:
    payload = split_messages((CISIS_FIXTURES / fixture).read_bytes())[0]
    ack = await app.handlers[0].handle(payload, "127.0.0.1:1")
    assert ack is not None
    message = parse_message(ack.decode())
    msa = message.first("MSA")
    assert msa is not None
    errs = [(e.component(3, 1), e.value(4), e.component(5, 1), e.value(8))
            for e in message.all("ERR")]
    return msa.value(1), errs


@pytest.mark.parametrize("matrix", list(SendingMatrixProfile), ids=lambda m: m.value)
@pytest.mark.parametrize("policy", list(SchematronPolicy), ids=lambda p: p.value)
@pytest.mark.parametrize("fixture", FIXTURES)
async def test_fixture_answer(intake: Callable[..., Application], fixture: str,
                              policy: SchematronPolicy, matrix: SendingMatrixProfile) -> None:
    app = intake(policy, matrix)
    code, errs = await answer(app, fixture)
    want_code, err3, err5, detail = expected(fixture, policy, matrix)
    assert code == want_code
    errors = [e for e in errs if e[1] == "E"]
    warnings = [e for e in errs if e[1] == "W"]
    (row,) = await app.store.list_inbound()
    if want_code == "AE":
        assert len(errors) == 1
        assert errors[0][0] == err3
        assert errors[0][2] == err5
        assert detail in errors[0][3]
        assert row.status is InboundStatus.REJECTED
    else:
        assert errors == []
        assert row.status is InboundStatus.ACCEPTED
        # DESTDMP=Y in every MDM example: said in a W warning; setId under `warn` too.
        details = " | ".join(w[3] for w in warnings)
        assert "does not feed the DMP" in details
        assert ("hl7:setId" in details) is (policy is SchematronPolicy.WARN)
    if detail == NO_SETID[3] or (want_code == "AA" and policy is SchematronPolicy.WARN):
        stored = await app.store.get_inbound(row.id)
        assert stored is not None
        assert stored.report is not None  # the full report is kept for operators either way
        assert b"count(hl7:setId[not(@nullFlavor)]) >= 1" in stored.report


async def test_new_replace_delete_sequence(intake: Callable[..., Application]) -> None:
    """T02 (v1) → T10 (v2 replaces v1) → T04 (delete v2): all accepted, versions tracked."""
    app = intake(SchematronPolicy.WARN, SendingMatrixProfile.ANS_EXAMPLES)
    codes = [(await answer(app, f))[0] for f in (MDM[0], MDM[2], MDM[1])]
    assert codes == ["AA", "AA", "AA"]
    dmp = app.metrics.registry.get_sample_value("mssconnector_cisis_dmp_not_fed_total",
                                                {"tenant": "chu-test"})
    assert dmp == 3  # DESTDMP=Y in every MDM example: counted, not fed
    documents = {d.document_id.rsplit(".", 1)[-1]: d.status.value
                 for d in await app.store.get_documents("chu-test")}
    assert sorted(documents.values()) == ["deleted", "replaced"]
    # The same replacement sent again under a new MSH-10 is already applied: idempotent AA.
    replay = (CISIS_FIXTURES / MDM[2]).read_bytes().replace(b"|015|", b"|016|", 1)
    ack = await app.handlers[0].handle(split_messages(replay)[0], "127.0.0.1:1")
    assert ack is not None
    assert b"MSA|AA|016" in ack


async def test_replace_after_the_new_version_was_deleted_is_900(
        intake: Callable[..., Application]) -> None:
    """T02 (v1) → T04 (delete v2, never seen: accepted by policy) → T10 (v2 replaces v1): v2
    already exists, deleted, so the replacement does not target the latest state: AE 900."""
    app = intake(SchematronPolicy.OFF, SendingMatrixProfile.ANS_EXAMPLES)
    first, second = (await answer(app, MDM[0]))[0], (await answer(app, MDM[1]))[0]
    code, errs = await answer(app, MDM[2])
    assert (first, second, code) == ("AA", "AA", "AE")
    assert [(e[0], e[2]) for e in errs] == [("207", "900")]
    rows = await app.store.list_inbound()
    assert rows[0].error_code == "207"
    assert rows[0].status is InboundStatus.REJECTED


@pytest.mark.parametrize("unknown", list(UnknownOriginalPolicy), ids=lambda u: u.value)
async def test_replace_of_an_unknown_original(intake: Callable[..., Application],
                                              unknown: UnknownOriginalPolicy) -> None:
    app = intake(SchematronPolicy.OFF, SendingMatrixProfile.ANS_EXAMPLES, unknown)
    code, errs = await answer(app, MDM[2])
    if unknown is UnknownOriginalPolicy.ACCEPT:
        assert code == "AA"
    else:
        assert code == "AE"
        assert [(e[0], e[2]) for e in errs if e[1] == "E"] == [("207", "900")]


async def mails_by_request(app: Application) -> dict[str, dict[str, EmailMessage]]:
    """Each request's mails (by MSH-10 + type), by recipient."""
    requests = {row.id: f"{row.message_type} {row.control_id}"
                for row in await app.store.list_inbound()}
    found: dict[str, dict[str, EmailMessage]] = {}
    for summary in await app.store.list_outbox():
        if summary.kind is not OutboxKind.SMTP or summary.inbound_id is None:
            continue
        detail = await app.store.get_outbox(summary.id)
        assert detail is not None
        job = MailJob.decode(detail.payload)
        mail = message_from_bytes(job.message, policy=SMTP)
        assert isinstance(mail, EmailMessage)
        assert mail["Message-ID"] == summary.message_id
        found.setdefault(requests[summary.inbound_id], {})[job.rcpt_to] = mail
    return found


async def test_a_replacement_and_a_deletion_refer_to_the_mails_they_follow(
        intake: Callable[..., Application]) -> None:
    """ECO.2.2.2: T10's mails say In-Reply-To / References the Message-ID of T02's mail to the
    same recipient (T10 replaces the document T02 carried), T04's the one of T10's (it deletes
    the version T10 carried); T02's mails refer to nothing."""
    app = intake(SchematronPolicy.OFF, SendingMatrixProfile.ANS_EXAMPLES)
    assert [(await answer(app, f))[0] for f in (MDM[0], MDM[2], MDM[1])] == ["AA"] * 3
    mails = await mails_by_request(app)
    initial, replacement, deletion = (mails[key] for key in sorted(
        mails, key=lambda k: ["MDM^T02", "MDM^T10", "MDM^T04"].index(k.split()[0])))
    assert set(initial) == set(replacement) == set(deletion)  # the same recipients
    for recipient, mail in initial.items():
        assert mail["In-Reply-To"] is None
        assert mail["References"] is None
        original = mail["Message-ID"]
        assert replacement[recipient]["In-Reply-To"] == original
        assert replacement[recipient]["References"] == original
        assert deletion[recipient]["In-Reply-To"] == replacement[recipient]["Message-ID"]
    assert len({m["Message-ID"] for per in mails.values() for m in per.values()}) == 3 * len(
        initial)


async def test_a_replacement_of_a_document_never_sent_here_refers_to_nothing(
        intake: Callable[..., Application]) -> None:
    app = intake(SchematronPolicy.OFF, SendingMatrixProfile.ANS_EXAMPLES)
    assert (await answer(app, MDM[2]))[0] == "AA"  # unknown original, accepted by policy
    (per_recipient,) = (await mails_by_request(app)).values()
    assert all(mail["In-Reply-To"] is None for mail in per_recipient.values())
