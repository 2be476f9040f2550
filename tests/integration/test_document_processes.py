"""`[intake] document_processes`: the document stage in worker processes answers as threads do,
keeps what the store needs, survives a killed worker, and follows a reload."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from connector.app import Application
from connector.cda.policy import MissingPdfPolicy, SchematronPolicy
from connector.cli.send_cmd import split_messages
from connector.hl7.message import parse_message
from connector.settings import CisisSettings, IntakeSettings, SendingMatrixProfile, Settings
from connector.store import InboundStatus, OutboxKind
from tests.conftest import CISIS_FIXTURES, needs_pdf_renderer
from tests.integration.conftest import make_settings
from tests.integration.test_cisis_fixtures import FIXTURES, VALIDATION

MDM_T02 = "mdm-t02-initial/message.er7"


def settings_for(tmp_path: Path, processes: int, *, validation: bool = False,
                 missing_pdf: MissingPdfPolicy = MissingPdfPolicy.REFUSE) -> Settings:
    base = make_settings(tmp_path)
    tenant = replace(base.tenants[0], cisis=CisisSettings(
        schematron_policy=SchematronPolicy.WARN,
        sending_matrix=SendingMatrixProfile.ANS_EXAMPLES, missing_pdf=missing_pdf))
    settings = replace(base, tenants=(tenant,), intake=IntakeSettings(processes))
    return replace(settings, validation=VALIDATION) if validation else settings


@pytest.fixture
async def apps() -> AsyncIterator[list[Application]]:
    started: list[Application] = []
    yield started
    for app in started:
        await app.stop(grace_seconds=2.0)


async def started(apps: list[Application], settings: Settings) -> Application:
    app = Application.build(settings)
    await app.start()
    apps.append(app)
    return app


async def answer(app: Application, fixture: str, control_id: str | None = None
                 ) -> tuple[str, list[tuple[str, str, str]]]:
    payload = split_messages((CISIS_FIXTURES / fixture).read_bytes())[0]
    if control_id is not None:
        payload = payload.replace(b"|015|", f"|{control_id}|".encode(), 1)
    ack = await app.handlers[0].handle(payload, "127.0.0.1:1")
    assert ack is not None
    message = parse_message(ack.decode())
    msa = message.first("MSA")
    assert msa is not None
    return msa.value(1), [(e.component(3, 1), e.value(4), e.value(8)) for e in message.all("ERR")]


async def test_every_fixture_gets_the_answer_threads_give(apps: list[Application],
                                                          tmp_path: Path) -> None:
    """Same settings (XSD and schematron included) with threads and with two processes."""
    threads = await started(apps, settings_for(tmp_path / "threads", 0, validation=True))
    processes = await started(apps, settings_for(tmp_path / "processes", 2, validation=True))
    assert threads.documents is None
    assert processes.documents is not None
    for fixture in FIXTURES:
        assert await answer(processes, fixture) == await answer(threads, fixture), fixture
    for app in (threads, processes):
        rows = await app.store.list_inbound()
        assert len(rows) == len(FIXTURES)
    by_status = [sorted(r.status.value for r in await app.store.list_inbound())
                 for app in (threads, processes)]
    assert by_status[0] == by_status[1]
    assert InboundStatus.ACCEPTED.value in by_status[1]


async def test_versions_and_the_dmp_count_cross_back(apps: list[Application],
                                                     tmp_path: Path) -> None:
    """T02 (v1) -> T10 (v2 replaces v1) -> T04 (delete v2), checked by a worker: the version
    changes and the DESTDMP flag come back with the decision."""
    app = await started(apps, settings_for(tmp_path, 1))
    sequence = ("mdm-t02-initial/message.er7", "mdm-t10-replace/message.er7",
                "mdm-t04-delete/message.er7")
    codes = [(await answer(app, fixture))[0] for fixture in sequence]
    assert codes == ["AA", "AA", "AA"]
    documents = sorted(d.status.value for d in await app.store.get_documents("chu-test"))
    assert documents == ["deleted", "replaced"]
    dmp = app.metrics.registry.get_sample_value("mssconnector_cisis_dmp_not_fed_total",
                                                {"tenant": "chu-test"})
    assert dmp == 3


async def test_the_mails_come_back_and_are_stored_with_the_request(apps: list[Application],
                                                                   tmp_path: Path) -> None:
    app = await started(apps, settings_for(tmp_path, 1))
    code, errors = await answer(app, MDM_T02)
    assert code == "AA", errors
    [row] = await app.store.list_inbound()
    assert row.status is InboundStatus.ACCEPTED
    mails = [m for m in await app.store.list_outbox() if m.kind is OutboxKind.SMTP]
    assert mails, "the request's mails were stored with it"
    assert {m.inbound_id for m in mails} == {row.id}
    assert all(m.recipient_domain for m in mails)


async def test_a_decision_checked_by_a_worker_needs_no_more_checks(apps: list[Application],
                                                                   tmp_path: Path) -> None:
    app = await started(apps, settings_for(tmp_path, 1))
    assert app.documents is not None
    handler = app.handlers[0]
    payload = split_messages((CISIS_FIXTURES / MDM_T02).read_bytes())[0]
    first = handler.decider.first_pass(payload)
    assert first.needs_document_checks
    checked = await app.documents.check("chu-test", first, payload, handler.decider)
    assert checked.verdict is None  # not sent back
    assert checked.outbox
    assert not checked.needs_document_checks


def _worker_pids(app: Application) -> list[int]:
    assert app.documents is not None
    processes = app.documents._executor._processes  # the test kills one
    return [p.pid for p in processes.values() if p.pid is not None]


async def test_a_killed_worker_costs_no_answer(apps: list[Application], tmp_path: Path) -> None:
    app = await started(apps, settings_for(tmp_path, 1))
    assert (await answer(app, MDM_T02, "A1"))[0] == "AA"
    assert (await answer(app, MDM_T02, "A2"))[0] == "AA"
    [pid] = _worker_pids(app)
    os.kill(pid, signal.SIGKILL)
    code, _ = await answer(app, MDM_T02, "A3")  # finds the pool broken: checked in a thread
    assert code == "AA"
    code, _ = await answer(app, MDM_T02, "A4")  # a new pool
    assert code == "AA"
    assert pid not in _worker_pids(app)
    assert len(await app.store.list_inbound()) == 4


async def test_a_reload_starts_workers_for_the_new_settings(apps: list[Application],
                                                            tmp_path: Path) -> None:
    app = await started(apps, settings_for(tmp_path, 1))
    first = app.documents
    assert (await answer(app, MDM_T02, "R1"))[0] == "AA"
    changed = replace(app.settings.tenants[0], cisis=CisisSettings(
        schematron_policy=SchematronPolicy.WARN, sending_matrix=SendingMatrixProfile.STRICT))
    report = await app.reload(replace(app.settings, tenants=(changed,)))
    assert report.replaced == ("chu-test",)
    assert app.documents is not None
    assert app.documents is not first
    # The strict matrix refuses what ans-examples let through: the workers use the new settings.
    code, errors = await answer(app, MDM_T02, "R2")
    assert code == "AE"
    assert "not in the MSSanté sending matrix" in errors[0][2]
    turned_off = await app.reload(replace(app.settings, intake=IntakeSettings(0)))
    assert turned_off.replaced == ()
    assert app.documents is None
    assert (await answer(app, MDM_T02, "R3"))[0] == "AE"  # in a thread, same settings


def corrected_oru() -> bytes:
    """The ANS ORU with its CDAs in place (a level-1 with its PDF, a level-3 without)."""
    from tests.unit.pipeline.test_mails import oru_initial

    return ("\r".join(oru_initial()) + "\r").encode()


async def pdfs_of_the_stored_mails(app: Application) -> list[int]:
    from email import message_from_bytes, policy

    from connector.delivery.job import MailJob

    counts = []
    for row in await app.store.list_outbox():
        detail = await app.store.get_outbox(row.id)
        assert detail is not None
        assert detail.payload is not None
        mail = message_from_bytes(MailJob.decode(detail.payload).message, policy=policy.default)
        counts.append(sum(part.get_content_type() == "application/pdf"
                          for part in mail.walk()))
    return counts


async def test_a_cda_sent_without_its_pdf_is_counted(apps: list[Application], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from connector.errors import PdfRenditionError
    from connector.pipeline import mails

    def unavailable(root: object, header: object) -> bytes:
        raise PdfRenditionError("no PDF renderer")

    monkeypatch.setattr(mails, "render_pdf", unavailable)
    app = await started(apps, settings_for(tmp_path, 0, missing_pdf=MissingPdfPolicy.SEND))
    ack = await app.handlers[0].handle(corrected_oru(), "127.0.0.1:1")  # threads: patched
    assert ack is not None
    assert b"MSA|AA|" in ack
    missing = app.metrics.registry.get_sample_value(
        "mssconnector_cisis_documents_without_pdf_total", {"tenant": "chu-test"})
    assert missing == 1  # the level-3 CDA
    counts = await pdfs_of_the_stored_mails(app)
    assert counts
    assert set(counts) == {1}  # the level-1's own PDF only


@needs_pdf_renderer
async def test_with_the_renderer_every_cda_has_its_pdf(apps: list[Application],
                                                        tmp_path: Path) -> None:
    app = await started(apps, settings_for(tmp_path, 1))  # in a worker process
    ack = await app.handlers[0].handle(corrected_oru(), "127.0.0.1:1")
    assert ack is not None
    assert b"MSA|AA|" in ack
    assert app.metrics.registry.get_sample_value(
        "mssconnector_cisis_documents_without_pdf_total", {"tenant": "chu-test"}) in (None, 0)
    counts = await pdfs_of_the_stored_mails(app)
    assert counts
    assert set(counts) == {2}  # the level-1's own, and one rendered for the level-3


def samples(app: Application, name: str) -> list[tuple[dict[str, str], float]]:
    return [(sample.labels, sample.value) for metric in app.metrics.registry.collect()
            for sample in metric.samples if sample.name == name]


def err_segments(ack: bytes) -> list[list[str]]:
    return [segment.split("|") for segment in ack.decode().split("\r")
            if segment.startswith("ERR|")]


async def test_without_a_renderer_a_cda_without_pdf_is_not_taken_until_there_is_one(
        apps: list[Application], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ECO.2.1.1 by default: AR, nothing stored, nothing queued; the same message sent again
    once the host can render is taken (the AR left no row to answer it as a retransmission)."""
    from connector.errors import PdfRendererUnavailable
    from connector.pipeline import mails

    rendered = b"%PDF-1.4 rendered"
    renderer: list[bytes] = []

    def render(root: object, header: object) -> bytes:
        if not renderer:
            raise PdfRendererUnavailable("no PDF renderer: the Pango libraries are missing")
        return renderer[0]

    monkeypatch.setattr(mails, "render_pdf", render)
    app = await started(apps, settings_for(tmp_path, 0))  # threads: the patch applies
    payload = corrected_oru()
    with structlog.testing.capture_logs() as logs:
        ack = await app.handlers[0].handle(payload, "127.0.0.1:1")
    assert ack is not None
    assert b"MSA|AR|015" in ack
    (err,) = err_segments(ack)
    assert err[2] == "OBX^2^5"
    assert err[3].startswith("207^")
    assert "ECO.2.1.1" in err[8]
    assert "send the message again later" in err[8]
    assert await app.store.list_inbound() == []
    assert await app.store.list_outbox() == []
    (not_taken,) = [e for e in logs if e["event"] == "message_not_taken"]
    assert "Pango" in not_taken["detail"]
    answered = {labels["ack"]: value
                for labels, value in samples(app, "mssconnector_mllp_messages_total")}
    assert answered == {"AR": 1.0}

    renderer.append(rendered)
    ack = await app.handlers[0].handle(payload, "127.0.0.1:1")
    assert ack is not None
    assert b"MSA|AA|015" in ack
    (row,) = await app.store.list_inbound()
    assert row.retransmissions == 0
    assert not row.control_id_reused
    counts = await pdfs_of_the_stored_mails(app)
    assert counts
    assert set(counts) == {2}


async def test_a_cda_whose_pdf_cannot_be_rendered_is_answered_ae_and_kept(
        apps: list[Application], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from connector.errors import PdfRenditionError
    from connector.pipeline import mails

    def too_large(root: object, header: object) -> bytes:
        raise PdfRenditionError("the narrative has over 15000 elements")

    monkeypatch.setattr(mails, "render_pdf", too_large)
    app = await started(apps, settings_for(tmp_path, 0))
    ack = await app.handlers[0].handle(corrected_oru(), "127.0.0.1:1")
    assert ack is not None
    assert b"MSA|AE|015" in ack
    (err,) = err_segments(ack)
    assert err[2] == "OBX^2^5"
    (row,) = await app.store.list_inbound()
    assert row.status is InboundStatus.REJECTED
    assert row.ack_code == "AE"
    assert row.error_code == "207"
    assert row.error_detail is not None
    assert "15000 elements" in row.error_detail
    assert await app.store.list_outbox() == []


def test_workers_get_no_secret_but_know_whether_zams_are_returned(tmp_path: Path) -> None:
    from connector.pipeline.offload import worker_settings
    from connector.settings import HisSettings, ReceiptsSettings

    base = settings_for(tmp_path, 1)
    receipts = ReceiptsSettings("imap.example", username="bal", password="s3cret",
                                client_private_key_password="k3y",
                                client_pkcs12_password="p12")
    tenant = replace(base.tenants[0], receipts=receipts, his=HisSettings("his.example", 2576))
    (worker,) = worker_settings(replace(base, tenants=(tenant,))).tenants
    assert worker.returns_zams
    assert worker.receipts is not None
    assert (worker.receipts.password, worker.receipts.client_private_key_password,
            worker.receipts.client_pkcs12_password) == (None, None, None)
    (without,) = worker_settings(replace(base, tenants=(replace(tenant, his=None),))).tenants
    assert not without.returns_zams
