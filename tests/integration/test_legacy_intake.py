"""Legacy ORUs (no CI-SIS profile) through the real intake with the tenant's mappings: accepted
ones produce a generated CDA and its mails; no matching mapping is AE 207 and kept; the
unresolved-recipient policy; render and check-config on mappings."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from collections.abc import Callable
from dataclasses import replace
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from connector.cda.header import read_cda_header
from connector.cda.policy import SchematronPolicy
from connector.cda.safe_xml import parse_xml
from connector.delivery.job import MailJob
from connector.errors import StoreUnavailable
from connector.hl7.message import parse_message
from connector.mllp.client import MLLPClient
from connector.settings import CisisSettings, Settings, ValidationSettings
from connector.store import DocumentStatus, InboundStatus
from tests.conftest import SCHEMAS
from tests.integration.conftest import RunningApp, make_settings
from tests.integration.test_cli import run_cli

SHIPPED = Path(__file__).resolve().parents[2] / "mappings"
LAB_CASE = (SHIPPED / "labo-cr-bio" / "cases" / "cr-bio-pdf.hl7").read_bytes()


def mappings_dir(tmp_path: Path, rules: str, unresolved: str = "skip") -> Path:
    """The shipped lab mapping with other recipient rules."""
    text = (SHIPPED / "labo-cr-bio" / "mapping.yaml").read_text("utf-8")
    text = text.replace("  rules: [ordering-provider, copies]", f"  rules: {rules}")
    text = text.replace("  unresolved: skip", f"  unresolved: {unresolved}")
    target = tmp_path / "mappings" / "labo"
    target.mkdir(parents=True)
    (target / "mapping.yaml").write_text(text, "utf-8")
    return target.parent


def replace_mappings(tmp_path: Path) -> Path:
    """The shipped lab mapping to one fixed address, linking an order's reports
    (`results.corrected: replace`)."""
    mappings = mappings_dir(tmp_path, '[{fixed: ["labo.resultats@chu-x.mssante.fr"]}]')
    path = mappings / "labo" / "mapping.yaml"
    path.write_text(path.read_text("utf-8") + "results:\n  corrected: replace\n", "utf-8")
    return mappings


def settings_with(tmp_path: Path, mappings: Path) -> Settings:
    """The CDA XSD checks the generated documents (the schematron runs in the golden tests:
    with the ANS copy it adds one "not run" W to every answer)."""
    base = make_settings(tmp_path)
    tenant = replace(base.tenants[0], mappings=mappings,
                     cisis=CisisSettings(schematron_policy=SchematronPolicy.OFF))
    return replace(base, tenants=(tenant,),
                   validation=ValidationSettings(SCHEMAS / "cda-xsd" / "CDA_extended.xsd"))


# The shipped lab mapping asks for ZAM^Z02 (ack_reception: true); the test tenant has neither
# [tenants.receipts] nor [tenants.his], so its AA says it returns none.
NO_ZAM_WARNING = ("207", "", "")


def ack(answer: bytes) -> tuple[str, list[tuple[str, str, str]]]:
    """MSA-1 and, per ERR: ERR-3.1, ERR-5.1, ERR-2 as sent."""
    message = parse_message(answer.decode())
    msa = message.first("MSA")
    assert msa is not None
    return msa.value(1), [(err.component(3, 1), err.component(5, 1), err.raw(2))
                          for err in message.all("ERR")]


async def test_a_legacy_pdf_report_is_accepted_and_mailed(
        tmp_path: Path, app_factory: Callable[..., object]) -> None:
    mappings = mappings_dir(tmp_path, '[{fixed: ["labo.resultats@chu-x.mssante.fr"]}]')
    running: RunningApp = await app_factory(settings_with(tmp_path, mappings))  # type: ignore[operator]
    code, errors = ack(await running.send(LAB_CASE))
    assert (code, errors) == ("AA", [NO_ZAM_WARNING])
    (row,) = await running.app.store.list_outbox()
    detail = await running.app.store.get_outbox(row.id)
    assert detail is not None
    job = MailJob.decode(detail.payload)
    assert job.rcpt_to == "labo.resultats@chu-x.mssante.fr"
    assert job.request_dsn  # the mapping's ACK_RECEPTION default
    mail = message_from_bytes(job.message, policy=policy.default)
    parts = {(part.get_filename() or "").upper(): part.get_payload(decode=True)
             for part in mail.iter_attachments()}  # type: ignore[attr-defined]
    with zipfile.ZipFile(io.BytesIO(parts["IHE_XDM.ZIP"])) as archive:
        cda = archive.read("IHE_XDM/SUBSET01/DOC0001.XML")
    assert b'code="11502-2"' in cda
    assert b"<nonXMLBody>" in cda
    assert any(name.endswith(".PDF") for name in parts)
    for _ in range(100):  # delivered to the dry-run Maildir like any request
        if (await running.app.store.list_outbox())[0].state.value == "sent":
            break
        await asyncio.sleep(0.02)
    assert (await running.app.store.list_outbox())[0].state.value == "sent"


async def test_a_legacy_oru_no_mapping_matches_is_ae_and_kept(
        tmp_path: Path, app_factory: Callable[..., object]) -> None:
    mappings = mappings_dir(tmp_path, '[{fixed: ["labo.resultats@chu-x.mssante.fr"]}]')
    running: RunningApp = await app_factory(settings_with(tmp_path, mappings))  # type: ignore[operator]
    other = LAB_CASE.replace(b"|11502-2^CR d'examens biologiques^LN|||", b"|99999-9^Autre^LN|||")
    code, errors = ack(await running.send(other))
    assert code == "AE"
    assert errors == [("207", "906", "OBR^1^4")]
    (row,) = await running.rows()
    assert row.status is InboundStatus.REJECTED
    assert row.error_detail is not None
    assert "no legacy mapping matches" in row.error_detail
    assert await running.app.store.list_outbox() == []


async def test_a_corrected_or_cancelled_legacy_result_is_ae_and_kept_not_mailed_as_new(
        tmp_path: Path, app_factory: Callable[..., object]) -> None:
    mappings = mappings_dir(tmp_path, '[{fixed: ["labo.resultats@chu-x.mssante.fr"]}]')
    running: RunningApp = await app_factory(settings_with(tmp_path, mappings))  # type: ignore[operator]
    assert LAB_CASE.count(b"||||||F\r") == 1  # the OBX-11 of the report's OBX
    corrected = LAB_CASE.replace(b"||||||F\r", b"||||||C\r").replace(b"|LAB0001|", b"|LAB2|")
    cancelled = LAB_CASE.replace(b"||||||F\r", b"||||||D\r").replace(b"|LAB0001|", b"|LAB3|")
    assert ack(await running.send(corrected)) == ("AE", [("207", "906", "OBX^1^11")])
    assert ack(await running.send(cancelled)) == ("AE", [("207", "906", "OBX^1^11")])
    rows = await running.rows()
    assert [row.status for row in rows] == [InboundStatus.REJECTED] * 2
    assert await running.app.store.list_outbox() == []


async def test_with_corrected_replace_each_report_of_an_order_replaces_the_last(
        tmp_path: Path, app_factory: Callable[..., object]) -> None:
    """The first report of the order is version 1; its correction is version 2, replacing it
    (relatedDocument RPLC, XDM action C, the replacement body, In-Reply-To the first mail);
    a second correction replaces version 2."""
    mappings = replace_mappings(tmp_path)
    running: RunningApp = await app_factory(settings_with(tmp_path, mappings))  # type: ignore[operator]
    corrected = LAB_CASE.replace(b"||||||F\r", b"||||||C\r")
    for control_id in (b"LAB0001", b"LAB0002", b"LAB0003"):
        report = LAB_CASE if control_id == b"LAB0001" else corrected
        answer = await running.send(report.replace(b"|LAB0001|", b"|" + control_id + b"|"))
        assert ack(answer) == ("AA", [NO_ZAM_WARNING])
    mails = []
    for row in sorted(await running.app.store.list_outbox(), key=lambda r: r.id):
        detail = await running.app.store.get_outbox(row.id)
        assert detail is not None
        mails.append(message_from_bytes(MailJob.decode(detail.payload).message,
                                        policy=policy.default))
    headers = []
    for mail in mails:
        parts = {(part.get_filename() or "").upper(): part.get_payload(decode=True)
                 for part in mail.iter_attachments()}  # type: ignore[attr-defined]
        with zipfile.ZipFile(io.BytesIO(parts["IHE_XDM.ZIP"])) as archive:
            cda = archive.read("IHE_XDM/SUBSET01/DOC0001.XML")
            metadata = archive.read("IHE_XDM/SUBSET01/METADATA.XML")
        headers.append((read_cda_header(parse_xml(cda)), metadata))
    (first, first_xdm), (second, second_xdm), (third, _) = headers
    assert first.set_id == second.set_id == third.set_id
    assert [h.version_number for h, _ in headers] == [1, 2, 3]
    assert first.parent_document_ids == ()
    assert second.parent_document_ids == (first.document_id,)
    assert third.parent_document_ids == (second.document_id,)
    assert xdm_action(second_xdm) == ["C"]
    assert xdm_action(first_xdm) == []
    body = mails[1].get_body(preferencelist=("plain",))
    assert body is not None
    assert "annule et remplace" in body.get_content()
    assert mails[1]["In-Reply-To"] == mails[0]["Message-ID"]
    versions = {d.document_id: (d.version, d.status)
                for d in await running.app.store.get_documents("chu-test")}
    assert versions == {
        first.document_id.key: (1, DocumentStatus.REPLACED),
        second.document_id.key: (2, DocumentStatus.REPLACED),
        third.document_id.key: (3, DocumentStatus.ACTIVE)}


async def test_two_reports_of_one_order_at_once_chain_their_versions(
        tmp_path: Path, app_factory: Callable[..., object]) -> None:
    """On two connections at the same moment: one is version 1, the other replaces it
    (before, both read "no version yet" and went out as two current versions 1)."""
    mappings = replace_mappings(tmp_path)
    running: RunningApp = await app_factory(settings_with(tmp_path, mappings))  # type: ignore[operator]
    corrected = LAB_CASE.replace(b"||||||F\r", b"||||||C\r").replace(b"|LAB0001|", b"|LAB2|")
    answers = await asyncio.gather(running.send(LAB_CASE), running.send(corrected))
    assert [ack(answer)[0] for answer in answers] == ["AA", "AA"]
    versions = sorted((d.version, d.status.value)
                      for d in await running.app.store.get_documents("chu-test"))
    assert versions == [(1, "replaced"), (2, "active")]


async def test_reports_of_one_order_on_two_listeners_of_a_tenant_chain_too(
        tmp_path: Path, app_factory: Callable[..., object]) -> None:
    """The order's lock is the process's, not one listener's."""
    mappings = replace_mappings(tmp_path)
    settings = settings_with(tmp_path, mappings)
    tenant = settings.tenants[0]
    second = replace(tenant.listeners[0], name="second", port=0)
    settings = replace(settings, tenants=(replace(tenant, listeners=(*tenant.listeners,
                                                                      second)),))
    running: RunningApp = await app_factory(settings)  # type: ignore[operator]
    corrected = LAB_CASE.replace(b"||||||F\r", b"||||||C\r").replace(b"|LAB0001|", b"|LAB2|")

    async def send_to(server: int, payload: bytes) -> bytes:
        host, port = running.app.servers[server].address
        async with MLLPClient(host, port, timeout=10) as client:
            return await client.send(payload)

    answers = await asyncio.gather(send_to(0, LAB_CASE), send_to(1, corrected))
    assert [ack(answer)[0] for answer in answers] == ["AA", "AA"]
    versions = sorted((d.version, d.status.value)
                      for d in await running.app.store.get_documents("chu-test"))
    assert versions == [(1, "replaced"), (2, "active")]


async def _mails_of(running: RunningApp) -> list[tuple[EmailMessage, bytes, bytes]]:
    """Each queued mail (in order), its archive's first CDA and METADATA.XML."""
    found = []
    for row in sorted(await running.app.store.list_outbox(), key=lambda r: r.id):
        detail = await running.app.store.get_outbox(row.id)
        assert detail is not None
        mail = message_from_bytes(MailJob.decode(detail.payload).message, policy=policy.default)
        assert isinstance(mail, EmailMessage)
        parts = {(part.get_filename() or "").upper(): part.get_payload(decode=True)
                 for part in mail.iter_attachments()}
        with zipfile.ZipFile(io.BytesIO(parts["IHE_XDM.ZIP"])) as archive:
            found.append((mail, archive.read("IHE_XDM/SUBSET01/DOC0001.XML"),
                          archive.read("IHE_XDM/SUBSET01/METADATA.XML")))
    return found


async def test_with_corrected_replace_a_cancelled_result_withdraws_the_report_sent(
        tmp_path: Path, app_factory: Callable[..., object]) -> None:
    """The order's latest report goes again, byte for byte, as a deletion (XDM action D, the
    deletion body); the store marks it deleted; a second cancellation has nothing left to
    withdraw (AE)."""
    mappings = replace_mappings(tmp_path)
    running: RunningApp = await app_factory(settings_with(tmp_path, mappings))  # type: ignore[operator]
    assert ack(await running.send(LAB_CASE))[0] == "AA"
    cancelled = LAB_CASE.replace(b"||||||F\r", b"||||||D\r").replace(b"|LAB0001|", b"|LAB2|")
    assert ack(await running.send(cancelled)) == ("AA", [NO_ZAM_WARNING])
    (first, first_cda, _), (withdrawal, withdrawn_cda, metadata) = await _mails_of(running)
    assert withdrawn_cda == first_cda  # the report as it was sent
    assert xdm_action(metadata) == ["D"]
    body = withdrawal.get_body(preferencelist=("plain",))
    assert body is not None
    assert "doit être supprimé" in body.get_content()
    assert withdrawal["In-Reply-To"] == first["Message-ID"]
    versions = [(d.version, d.status) for d in await running.app.store.get_documents("chu-test")]
    assert versions == [(1, DocumentStatus.DELETED)]
    again = cancelled.replace(b"|LAB2|", b"|LAB3|")
    code, errors = ack(await running.send(again))
    assert (code, errors[0][2]) == ("AE", "OBX^1^11")
    rows = sorted(await running.rows(), key=lambda r: r.id)
    assert rows[-1].error_detail is not None
    assert "already withdrawn" in rows[-1].error_detail
    # A new report of the order after its withdrawal: version 2, replacing nothing.
    assert ack(await running.send(LAB_CASE.replace(b"|LAB0001|", b"|LAB4|")))[0] == "AA"
    *_, (_, next_cda, next_metadata) = await _mails_of(running)
    header = read_cda_header(parse_xml(next_cda))
    assert (header.version_number, header.parent_document_ids) == (2, ())
    assert xdm_action(next_metadata) == []
    versions = sorted((d.version, d.status) for d in
                      await running.app.store.get_documents("chu-test"))
    assert versions == [(1, DocumentStatus.DELETED), (2, DocumentStatus.ACTIVE)]


async def test_a_cancelled_result_whose_report_is_no_longer_held_is_ae(
        tmp_path: Path, app_factory: Callable[..., object]) -> None:
    mappings = replace_mappings(tmp_path)
    running: RunningApp = await app_factory(settings_with(tmp_path, mappings))  # type: ignore[operator]
    assert ack(await running.send(LAB_CASE))[0] == "AA"
    for _ in range(100):  # sent to the dry-run Maildir, then past its retention
        if (await running.app.store.list_outbox())[0].state.value == "sent":
            break
        await asyncio.sleep(0.02)
    later = time.time() + 1
    await running.app.store.purge_payloads(before=later, now=later)
    cancelled = LAB_CASE.replace(b"||||||F\r", b"||||||D\r").replace(b"|LAB0001|", b"|LAB2|")
    answer = await running.send(cancelled)
    assert ack(answer)[0] == "AE"
    rows = sorted(await running.rows(), key=lambda r: r.id)
    assert rows[-1].error_detail is not None
    assert "no longer held" in rows[-1].error_detail


async def test_a_report_beaten_by_another_replica_is_ar_and_becomes_the_next_version_resent(
        tmp_path: Path, app_factory: Callable[..., object],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another replica stored a report of the order after this one read the order's latest
    version (simulated: the read says there is none): the store refuses a second current
    version, the sender gets AR (an AE would lose the report), and the same bytes sent again
    are processed anew and become version 2."""
    mappings = replace_mappings(tmp_path)
    running: RunningApp = await app_factory(settings_with(tmp_path, mappings))  # type: ignore[operator]
    assert ack(await running.send(LAB_CASE))[0] == "AA"
    corrected = LAB_CASE.replace(b"||||||F\r", b"||||||C\r").replace(b"|LAB0001|", b"|LAB2|")
    store = running.app.store
    real = store.latest_version

    async def not_yet(*args: object) -> None:
        return None

    monkeypatch.setattr(store, "latest_version", not_yet)
    code, errors = ack(await running.send(corrected))
    assert code == "AR"
    assert errors[0][:2] == ("207", "900")
    monkeypatch.setattr(store, "latest_version", real)
    assert ack(await running.send(corrected)) == ("AA", [NO_ZAM_WARNING])
    versions = sorted((d.version, d.status.value) for d in await store.get_documents("chu-test"))
    assert versions == [(1, "replaced"), (2, "active")]
    statuses = [r.status for r in sorted(await running.rows(), key=lambda r: r.id)]
    assert statuses == [InboundStatus.ACCEPTED, InboundStatus.REJECTED, InboundStatus.ACCEPTED]


async def test_a_report_whose_earlier_versions_cannot_be_read_is_ar_and_not_stored(
        tmp_path: Path, app_factory: Callable[..., object],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Sent without them it would go as a second version 1 of its order: the sender retries."""
    mappings = replace_mappings(tmp_path)
    running: RunningApp = await app_factory(settings_with(tmp_path, mappings))  # type: ignore[operator]

    async def unavailable(*args: object) -> object:
        raise StoreUnavailable("SQLite read failed: disk I/O error")

    monkeypatch.setattr(running.app.store, "latest_version", unavailable)
    assert ack(await running.send(LAB_CASE))[0] == "AR"
    assert await running.rows() == []
    assert await running.app.store.list_outbox() == []


def xdm_action(metadata: bytes) -> list[str]:
    """The DocumentEntry's extra metadata `action` (C: replacement, D: deletion)."""
    rim = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
    values = parse_xml(metadata).xpath("//rim:ExtrinsicObject/rim:Slot[@name='action']"
                                       "/rim:ValueList/rim:Value/text()", namespaces={"rim": rim})
    return [str(value) for value in values]


async def test_unresolved_recipients_follow_the_mapping_policy(
        tmp_path: Path, app_factory: Callable[..., object]) -> None:
    # No directory is configured: the ordering provider cannot be resolved.
    skip = mappings_dir(tmp_path / "skip",
                        '[ordering-provider, {fixed: ["labo.resultats@chu-x.mssante.fr"]}]')
    running: RunningApp = await app_factory(settings_with(tmp_path / "skip", skip))  # type: ignore[operator]
    code, errors = ack(await running.send(LAB_CASE))
    assert code == "AA"
    assert len(errors) == 2  # two W: the ordering provider was skipped, no ZAM
    assert len(await running.app.store.list_outbox()) == 1
    reject = mappings_dir(tmp_path / "reject", "[ordering-provider, copies]", "reject")
    strict: RunningApp = await app_factory(settings_with(tmp_path / "reject", reject))  # type: ignore[operator]
    code, errors = ack(await strict.send(LAB_CASE))
    assert code == "AE"
    assert errors == [("207", "906", "OBR^1^28")]
    assert await strict.app.store.list_outbox() == []


async def test_render_writes_the_generated_cda(tmp_path: Path) -> None:
    mappings = mappings_dir(tmp_path, '[{fixed: ["labo.resultats@chu-x.mssante.fr"]}]')
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n[[tenants]]\nid = "chu"\n'
                      f'oid = "1.2.250.1.71.4.2.2.1120456789"\nmappings = "{mappings}"\n')
    case = tmp_path / "case.hl7"
    case.write_bytes(LAB_CASE)
    code, out, err = await run_cli("render", str(case), "--out", str(tmp_path / "out"),
                                   "--config", str(config))
    assert code == 0, err
    assert "generated CDA 1: 001-cda1.xml (legacy mapping labo-cr-bio)" in out
    assert b'code="11502-2"' in (tmp_path / "out" / "001-cda1.xml").read_bytes()


async def test_render_links_the_reports_of_an_order_within_the_run(tmp_path: Path) -> None:
    """`corrected: replace` offline: the second report of the order is rendered as the
    replacement of the first, as serve would send it after the first (no misleading W)."""
    mappings = replace_mappings(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n[[tenants]]\nid = "chu"\n'
                      f'oid = "1.2.250.1.71.4.2.2.1120456789"\nmappings = "{mappings}"\n')
    corrected = LAB_CASE.replace(b"||||||F\r", b"||||||C\r").replace(b"|LAB0001|", b"|LAB2|")
    cancelled = LAB_CASE.replace(b"||||||F\r", b"||||||D\r").replace(b"|LAB0001|", b"|LAB3|")
    case = tmp_path / "case.hl7"
    case.write_bytes(LAB_CASE + corrected + cancelled + LAB_CASE.replace(b"|LAB0001|", b"|LAB4|"))
    code, out, err = await run_cli("render", str(case), "--out", str(tmp_path / "out"),
                                   "--config", str(config))
    assert code == 0, err
    assert "not known here" not in out
    withdrawn = (tmp_path / "out" / "003-cda1.xml").read_bytes()  # the third withdraws v2
    assert withdrawn == (tmp_path / "out" / "002-cda1.xml").read_bytes()
    fourth = read_cda_header(parse_xml((tmp_path / "out" / "004-cda1.xml").read_bytes()))
    assert (fourth.version_number, fourth.parent_document_ids) == (3, ())  # as serve does
    first, second = (read_cda_header(parse_xml((tmp_path / "out" / f"00{n}-cda1.xml").read_bytes()))
                     for n in (1, 2))
    assert (first.version_number, second.version_number) == (1, 2)
    assert second.parent_document_ids == (first.document_id,)
    assert first.set_id == second.set_id


async def test_a_mapping_typo_stops_start_up_with_its_file_and_line(tmp_path: Path) -> None:
    mappings = mappings_dir(tmp_path, "[ordering-provider, copie]")
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n[[tenants]]\nid = "chu"\n'
                      f'oid = "1.2.3"\nmappings = "{mappings}"\n')
    code, _, err = await run_cli("check-config", str(config))
    assert code == 2
    line = next(n for n, text in enumerate(
        (mappings / "labo" / "mapping.yaml").read_text().splitlines(), 1) if "copie]" in text)
    assert f"mapping.yaml:{line}: recipients.rules[1]" in err


async def test_recipients_are_resolved_through_the_imported_directory(
        tmp_path: Path, app_factory: Callable[..., object]) -> None:
    """The shipped rules (ordering provider ORC-12, copies OBR-28) resolved by RPPS through
    `directory import` of an Annuaire Santé extraction."""
    from connector.directory.annuaire import directory_path, import_extraction
    from tests.unit.directory.test_annuaire import extraction, line

    mappings = mappings_dir(tmp_path, "[ordering-provider, copies]")
    settings = settings_with(tmp_path, mappings)
    source = tmp_path / "Extraction_Correspondance_MSSante.txt"
    source.write_text(extraction(
        line(pp_id="10101010101", national_id="810101010101",
             address="paul.martin@medecin.mssante.fr", family="MARTIN", given="Paul"),
        line(pp_id="10202020202", national_id="810202020202",
             address="claire.durand@medecin.mssante.fr", family="DURAND", given="Claire")),
        "utf-8")
    target = directory_path(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    import_extraction(source, target)
    running: RunningApp = await app_factory(settings)  # type: ignore[operator]
    code, errors = ack(await running.send(LAB_CASE))
    assert (code, errors) == ("AA", [NO_ZAM_WARNING])
    rows = await running.app.store.list_outbox()
    recipients = set()
    for row in rows:
        detail = await running.app.store.get_outbox(row.id)
        assert detail is not None
        recipients.add(MailJob.decode(detail.payload).rcpt_to)
    assert recipients == {"paul.martin@medecin.mssante.fr", "claire.durand@medecin.mssante.fr"}


def legacy_without_ins(pid32: str = "") -> bytes:
    """The lab case for the ADT fixture's patient (same IPP and authority), without the INS."""
    text = LAB_CASE.decode()
    pid = next(seg for seg in text.split("\r") if seg.startswith("PID|"))
    fields = pid.split("|")
    fields[3] = "000003^^^CHU-X&000897406&N^PI"
    fields[32] = pid32
    return text.replace(pid, "|".join(fields)).encode()


async def test_a_legacy_oru_is_enriched_from_the_adt_context(
        tmp_path: Path, app_factory: Callable[..., object]) -> None:
    from tests.conftest import HL7_FIXTURES

    mappings = mappings_dir(tmp_path, '[{fixed: ["labo.resultats@chu-x.mssante.fr"]}]')
    running: RunningApp = await app_factory(settings_with(tmp_path, mappings))  # type: ignore[operator]
    admission = (HL7_FIXTURES / "pam-fr-2.11" / "adt-a01-admission.er7").read_bytes()
    assert ack(await running.send(admission.replace(b"\n", b"\r")))[0] == "AA"  # VALI
    assert ack(await running.send(legacy_without_ins()))[0] == "AA"
    cda = await _first_cda(running)
    assert b'<id root="1.2.250.1.213.1.4.10" extension="279035121518989"/>' in cda


async def test_no_ins_from_the_context_unless_the_identity_is_validated(
        tmp_path: Path, app_factory: Callable[..., object]) -> None:
    from tests.conftest import HL7_FIXTURES

    mappings = mappings_dir(tmp_path, '[{fixed: ["labo.resultats@chu-x.mssante.fr"]}]')
    running: RunningApp = await app_factory(settings_with(tmp_path, mappings))  # type: ignore[operator]
    admission = (HL7_FIXTURES / "pam-fr-2.11" / "adt-a01-admission.er7").read_bytes()
    provisional = admission.replace(b"\n", b"\r").replace(b"|VALI|", b"|PROV|")
    assert ack(await running.send(provisional))[0] == "AA"
    assert ack(await running.send(legacy_without_ins()))[0] == "AA"
    cda = await _first_cda(running)
    assert b"279035121518989" not in cda
    assert b'extension="000003"' in cda  # the IPP is there


async def _first_cda(running: RunningApp) -> bytes:
    (row,) = await running.app.store.list_outbox()
    detail = await running.app.store.get_outbox(row.id)
    assert detail is not None
    mail = message_from_bytes(MailJob.decode(detail.payload).message, policy=policy.default)
    parts = {(part.get_filename() or "").upper(): part.get_payload(decode=True)
             for part in mail.iter_attachments()}  # type: ignore[attr-defined]
    with zipfile.ZipFile(io.BytesIO(parts["IHE_XDM.ZIP"])) as archive:
        return archive.read("IHE_XDM/SUBSET01/DOC0001.XML")


async def test_destmssantepat_sends_to_the_patients_own_mailbox(
        tmp_path: Path, app_factory: Callable[..., object]) -> None:
    mappings = mappings_dir(tmp_path, '[{fixed: ["labo.resultats@chu-x.mssante.fr"]}]')
    path = mappings / "labo" / "mapping.yaml"
    path.write_text(path.read_text().replace("  ack_lecture_mss: false",
                                             "  ack_lecture_mss: false\n  destmssantepat: true"))
    running: RunningApp = await app_factory(settings_with(tmp_path, mappings))  # type: ignore[operator]
    code, errors = ack(await running.send(LAB_CASE))  # PID-3 carries a production INS, VALI
    assert (code, errors) == ("AA", [NO_ZAM_WARNING])
    recipients = set()
    for row in await running.app.store.list_outbox():
        detail = await running.app.store.get_outbox(row.id)
        assert detail is not None
        recipients.add(MailJob.decode(detail.payload).rcpt_to)
    assert recipients == {"labo.resultats@chu-x.mssante.fr",
                          "279035121518989@patient.mssante.fr"}
    code, errors = ack(await running.send(legacy_without_ins().replace(b"LAB0001", b"LAB0002")))
    assert code == "AA"  # no INS known: the patient's mailbox is skipped, with a W
    assert [e[0] for e in errors] == ["207", "207"]
