"""`[tenants.transport] kind = "smtp"` and `[tenants.delivery]`: parsed, checked, and built into a
transport by the same code `serve` and `check-config` run; every error names its key."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import structlog

from connector.app import Application
from connector.delivery.transports import SmtpTransport
from connector.errors import ConfigError
from connector.settings import SmtpSasl, SmtpTlsMode, TransportKind, load_settings
from tests.conftest import SCHEMAS
from tests.support.pki import Issued, TestCA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, Issued]:
    ca = TestCA(tmp_path_factory.mktemp("pki"))
    return ca, ca.issue("BAL applicative", server=False)


CDA_XSD = SCHEMAS / "cda-xsd" / "CDA_extended.xsd"
WHITELIST = ('<?xml version="1.0" encoding="UTF-8"?>\n'
             '<ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema">'
             "<DateDeGeneration>2025-03-13T00:00:00Z</DateDeGeneration><ListeDomaines>"
             "<Domaine><Nom>medecin.mssante.fr</Nom></Domaine></ListeDomaines>"
             "</ListeBlancheMSSante>\n")


def whitelist(tmp_path: Path) -> Path:
    path = tmp_path / "whitelist.xml"
    path.write_text(WHITELIST, encoding="utf-8")
    return path


def config(tmp_path: Path, transport: str, delivery: str = "", *, nil: bool = True,
           safeguards: str | None = None) -> Path:
    """`safeguards`: the [directory] and [validation] tables (default: a whitelist and the ANS
    CDA XSD, which a tenant sending over SMTP needs)."""
    if safeguards is None:
        safeguards = (f'[directory]\nwhitelist = "{whitelist(tmp_path)}"\n'
                      f'[validation]\ncda_xsd = "{CDA_XSD}"\n')
    path = tmp_path / "connector.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n{safeguards}'
                    '[[tenants]]\nid = "chu"\noid = "1.2.3"\n'
                    '[tenants.mailbox]\naddress = "pfi@chu.mssante.fr"\n'
                    + ('nil = "DEV935997"\n' if nil else "")
                    + f"[tenants.transport]\n{transport}\n"
                    + (f"[tenants.delivery]\n{delivery}\n" if delivery else ""))
    return path


def smtp(pki: tuple[TestCA, Issued], extra: str = "") -> str:
    ca, client = pki
    return (f'kind = "smtp"\nhost = "smtp.operator.test"\nca_bundle = "{ca.certificate}"\n'
            f'client_certificate = "{client.certificate}"\n'
            f'client_private_key = "{client.private_key}"\n{extra}')


def test_a_complete_smtp_transport(tmp_path: Path, pki: tuple[TestCA, Issued]) -> None:
    settings = load_settings(config(
        tmp_path, smtp(pki, 'port = 465\ntls = "implicit-tls"\nsasl = "plain"\n'
                            'username = "pfi"\npassword_env = "SMTP_PASSWORD"\n'),
        "concurrency = 4\nrate_per_second = 50\nretry_budget_hours = 24\n"),
        env={"SMTP_PASSWORD": "s3cret"})
    tenant = settings.tenants[0]
    assert tenant.transport.kind is TransportKind.SMTP
    assert tenant.transport.smtp is not None
    assert tenant.transport.smtp.port == 465
    assert tenant.transport.smtp.tls is SmtpTlsMode.IMPLICIT_TLS
    assert tenant.transport.smtp.sasl is SmtpSasl.PLAIN
    assert tenant.transport.smtp.password == "s3cret"
    assert "s3cret" not in repr(tenant)
    assert (tenant.delivery.concurrency, tenant.delivery.rate_per_second) == (4, 50)
    app = Application.build(settings)
    worker = app.delivery.tenants["chu"]
    assert isinstance(worker.transport, SmtpTransport)
    assert worker.retry.budget_seconds == 24 * 3600
    assert worker.limits.concurrency == 4


@pytest.mark.parametrize(("extra", "key"), [
    ('tls = "ssl3"', "tenants[0].transport.tls"),
    ("port = 0", "tenants[0].transport.port"),
    ('sasl = "plain"\nusername = "u"', "tenants[0].transport.password_env"),
    ('sasl = "xoauth2"\npassword_env = "X"', "tenants[0].transport.password_env"),
    ('password = "inline"', "tenants[0].transport.password"),
    ('client_pkcs12 = "{ca}"', "tenants[0].transport.client_pkcs12"),
    ("command_timeout_seconds = 0", "tenants[0].transport.command_timeout_seconds"),
    ('colour = "blue"', "tenants[0].transport.colour"),
])
def test_smtp_errors_name_their_key(tmp_path: Path, pki: tuple[TestCA, Issued], extra: str,
                                    key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(config(tmp_path, smtp(pki, extra.format(ca=pki[0].certificate))),
                      env={})
    assert caught.value.key == key


def test_a_client_certificate_is_required(tmp_path: Path, pki: tuple[TestCA, Issued]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(config(tmp_path, f'kind = "smtp"\nhost = "h"\n'
                                       f'ca_bundle = "{pki[0].certificate}"'))
    assert caught.value.key == "tenants[0].transport.client_certificate"


@pytest.mark.parametrize(("delivery", "key"), [
    ("concurrency = 0", "tenants[0].delivery.concurrency"),
    ("retry_budget_hours = 0", "tenants[0].delivery.retry_budget_hours"),
    ("retry_initial_seconds = 10\nretry_maximum_seconds = 5",
     "tenants[0].delivery.retry_maximum_seconds"),
    ("batch = 3", "tenants[0].delivery.batch"),
])
def test_delivery_errors_name_their_key(tmp_path: Path, delivery: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(config(tmp_path, 'kind = "maildir"', delivery))
    assert caught.value.key == key


def test_an_unreadable_ca_bundle_is_named_at_build(tmp_path: Path,
                                                   pki: tuple[TestCA, Issued]) -> None:
    garbage = tmp_path / "roots.pem"
    garbage.write_text("not a certificate")
    ca = pki[0]
    settings = load_settings(config(tmp_path, smtp(pki).replace(str(ca.certificate),
                                                                 str(garbage))))
    with pytest.raises(ConfigError) as caught:
        Application.build(settings)
    assert caught.value.key == "tenants[0].transport.ca_bundle"
    assert str(garbage) in caught.value.problem


def test_a_key_that_does_not_match_is_named_at_build(tmp_path: Path,
                                                     pki: tuple[TestCA, Issued]) -> None:
    other = pki[0].issue("someone else", server=False)
    settings = load_settings(config(tmp_path, smtp(pki).replace(
        str(pki[1].private_key), str(other.private_key))))
    with pytest.raises(ConfigError) as caught:
        Application.build(settings)
    assert caught.value.key.startswith("tenants[0].transport.client_")


def test_receipts_and_his_sections(tmp_path: Path, pki: tuple[TestCA, Issued]) -> None:
    path = config(tmp_path, smtp(pki))
    path.write_text(path.read_text() + '[tenants.receipts]\nhost = "imap.operator.test"\n'
                    'username = "pfi@chu.mssante.fr"\npassword_env = "IMAP_PASSWORD"\n'
                    "final_report_timeout_hours = 24\n"
                    '[tenants.his]\nhost = "10.0.0.5"\nport = 6661\n')
    settings = load_settings(path, env={"IMAP_PASSWORD": "pw"})
    tenant = settings.tenants[0]
    assert tenant.receipts is not None
    assert (tenant.receipts.port, tenant.receipts.password) == (993, "pw")
    assert tenant.his is not None
    assert (tenant.his.host, tenant.his.port) == ("10.0.0.5", 6661)
    app = Application.build(settings)
    assert len(app.pollers) == 1
    assert app.pollers[0].settings.final_report_timeout_seconds == 24 * 3600
    assert "chu" in app.delivery.returns


@pytest.mark.parametrize(("extra", "key"), [
    ('[tenants.his]\nhost = "h"\n', "tenants[0].his.port"),
    ('[tenants.his]\nport = 1\n', "tenants[0].his.host"),
    ('[tenants.receipts]\nport = 993\n', "tenants[0].receipts.host"),
    ('[tenants.receipts]\nhost = "h"\ntls = "none"\n', "tenants[0].receipts.tls"),
    ('[tenants.receipts]\nhost = "h"\nidle_seconds = 3600\n', "tenants[0].receipts.idle_seconds"),
])
def test_receipts_and_his_errors_name_their_key(tmp_path: Path, pki: tuple[TestCA, Issued],
                                                extra: str, key: str) -> None:
    path = config(tmp_path, smtp(pki))
    path.write_text(path.read_text() + extra)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert caught.value.key == key


def test_payloads_must_outlive_the_wait_for_a_final_report(
        tmp_path: Path, pki: tuple[TestCA, Issued]) -> None:
    path = config(tmp_path, smtp(pki))
    receipts = ('[tenants.receipts]\nhost = "imap.operator.test"\n'
                "final_report_timeout_hours = 72\n")
    path.write_text(path.read_text() + receipts + "[store]\npayload_retention_days = 3\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert caught.value.key == "store.payload_retention_days"
    assert "tenants[0].receipts.final_report_timeout_hours (72 h)" in caught.value.problem
    path.write_text(path.read_text().replace("payload_retention_days = 3",
                                             "payload_retention_days = 3.5"))
    assert load_settings(path, env={}).store.payload_retention_days == 3.5


def test_receipts_without_any_ca_bundle_are_refused_at_build(tmp_path: Path) -> None:
    path = config(tmp_path, 'kind = "maildir"')
    path.write_text(path.read_text() + '[tenants.receipts]\nhost = "imap.operator.test"\n')
    with pytest.raises(ConfigError) as caught:
        Application.build(load_settings(path))
    assert caught.value.key == "tenants[0].receipts.ca_bundle"


def test_sending_over_smtp_needs_the_nil(tmp_path: Path, pki: tuple[TestCA, Issued]) -> None:
    """X-MSS-NIL is on every mail sent into the trust space (ANS transport notes: fail closed):
    an SMTP transport without `[tenants.mailbox] nil` is refused, naming the key; the dry-run
    Maildir may go without it."""
    with pytest.raises(ConfigError) as caught:
        load_settings(config(tmp_path, smtp(pki), nil=False))
    assert caught.value.key == "tenants[0].mailbox.nil"
    assert load_settings(config(tmp_path, 'kind = "maildir"', nil=False)).tenants[0].mailbox.nil \
        is None


@pytest.mark.parametrize(("safeguards", "key"), [
    ("", "directory.whitelist"),
    ('[directory]\nwhitelist = "{wl}"\n', "validation.cda_xsd"),
    ('[validation]\ncda_xsd = "{xsd}"\n', "directory.whitelist"),
])
def test_a_tenant_sending_over_smtp_needs_the_whitelist_and_the_xsd(
        tmp_path: Path, pki: tuple[TestCA, Issued], safeguards: str, key: str) -> None:
    """A dry run may skip the trust space and the XSD (a warning at start-up); real sending
    may not: start-up stops on the key."""
    tables = safeguards.format(wl=whitelist(tmp_path), xsd=CDA_XSD)
    with pytest.raises(ConfigError) as caught:
        load_settings(config(tmp_path, smtp(pki), safeguards=tables))
    assert caught.value.key == key
    assert 'tenants[0].transport.kind = "smtp"' in caught.value.problem
    load_settings(config(tmp_path, 'kind = "maildir"', safeguards=tables))  # the dry run: fine


def test_crl_files_check_the_operator_for_smtp_and_imap(tmp_path: Path,
                                                         pki: tuple[TestCA, Issued]) -> None:
    """ECO.1.1.6: given in [tenants.transport], the CRLs serve the IMAP connection too unless
    [tenants.receipts] names its own; without any, start-up says revocation is not checked."""
    ca, _ = pki
    crl = ca.crl("operator.crl")
    path = config(tmp_path, smtp(pki, f'crl_files = ["{crl}"]\n'))
    path.write_text(path.read_text() + '[tenants.receipts]\nhost = "imap.operator.test"\n')
    settings = load_settings(path)
    tenant = settings.tenants[0]
    assert tenant.transport.smtp is not None
    assert tenant.transport.smtp.crl_files == (crl,)
    assert tenant.receipts is not None
    assert tenant.receipts.crl_files is None  # the transport's
    with structlog.testing.capture_logs() as logs:
        app = Application.build(settings)
    transport = app.delivery.tenants["chu"].transport
    assert isinstance(transport, SmtpTransport)
    assert transport.tls.crls == 1
    assert transport.tls.context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert len(app.pollers) == 1
    assert "revocation_not_checked" not in [e["event"] for e in logs]  # neither smtp nor imap

    without = load_settings(config(tmp_path, smtp(pki)))
    with structlog.testing.capture_logs() as logs:
        Application.build(without)
    assert [(e["tenant"], e["use"]) for e in logs
            if e["event"] == "revocation_not_checked"] == [("chu", "smtp")]

    path = config(tmp_path, smtp(pki))
    path.write_text(path.read_text() + '[tenants.receipts]\nhost = "imap.operator.test"\n')
    with structlog.testing.capture_logs() as logs:
        Application.build(load_settings(path))
    assert sorted(e["use"] for e in logs if e["event"] == "revocation_not_checked") == [
        "imap", "smtp"]


@pytest.mark.parametrize(("value", "key"), [
    ('["/nowhere/igc.crl"]', "tenants[0].transport.crl_files[0]"),
    ('"/etc/one.crl"', "tenants[0].transport.crl_files"),
    ("[1]", "tenants[0].transport.crl_files[0]"),
])
def test_crl_files_errors_name_their_key(tmp_path: Path, pki: tuple[TestCA, Issued],
                                         value: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(config(tmp_path, smtp(pki, f"crl_files = {value}\n")))
    assert caught.value.key == key


async def test_the_crls_time_to_their_next_update_is_a_gauge(
        tmp_path: Path, pki: tuple[TestCA, Issued]) -> None:
    """`mssconnector_crl_next_update_seconds{tenant,use}`: what the alerts watch, so that a
    broken CRL download shows before every handshake fails."""
    ca, _ = pki
    soon = ca.crl("soon.crl", next_update_days=0.25)
    path = config(tmp_path, smtp(pki, f'crl_files = ["{soon}"]\n'))
    path.write_text(path.read_text() + '[tenants.receipts]\nhost = "imap.operator.test"\n')
    app = Application.build(load_settings(path))
    assert app.gauges is not None
    await app.gauges.refresh()
    for use in ("smtp", "imap"):
        left = app.metrics.registry.get_sample_value(
            "mssconnector_crl_next_update_seconds", {"tenant": "chu", "use": use})
        assert left is not None
        assert 0.25 * 86400 - 120 < left <= 0.25 * 86400
    expired = ca.crl("expired.crl", next_update_days=-1)
    app = Application.build(load_settings(config(tmp_path, smtp(
        pki, f'crl_files = ["{expired}"]\n'))))
    assert app.gauges is not None
    await app.gauges.refresh()
    left = app.metrics.registry.get_sample_value(
        "mssconnector_crl_next_update_seconds", {"tenant": "chu", "use": "smtp"})
    assert left is not None
    assert -86400 - 120 < left < -86400 + 120
    without = Application.build(load_settings(config(tmp_path, smtp(pki))))
    assert without.gauges is not None
    await without.gauges.refresh()
    assert without.metrics.registry.get_sample_value(
        "mssconnector_crl_next_update_seconds", {"tenant": "chu", "use": "smtp"}) is None


def test_a_crl_past_its_next_update_is_warned_about(tmp_path: Path,
                                                   pki: tuple[TestCA, Issued]) -> None:
    ca, _ = pki
    crl = ca.crl("expired.crl", next_update_days=-1)
    with structlog.testing.capture_logs() as logs:
        Application.build(load_settings(config(tmp_path, smtp(pki, f'crl_files = ["{crl}"]\n'))))
    (expired,) = [e for e in logs if e["event"] == "crl_expired"]
    assert (expired["tenant"], expired["use"]) == ("chu", "smtp")


def test_his_client_certificate_without_its_ca_bundle_is_refused(
        tmp_path: Path, pki: tuple[TestCA, Issued]) -> None:
    """Meant for mutual TLS, it would have gone in clear: refused, naming the key."""
    _, client = pki
    path = config(tmp_path, 'kind = "maildir"')
    path.write_text(path.read_text() + f'[tenants.his]\nhost = "10.0.0.5"\nport = 6661\n'
                    f'client_certificate = "{client.certificate}"\n'
                    f'client_private_key = "{client.private_key}"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.key == "tenants[0].his.ca_bundle"


@pytest.mark.parametrize(("host", "warned"), [("10.0.0.5", True), ("127.0.0.1", False)])
def test_his_in_clear_off_the_loopback_is_warned_about(tmp_path: Path, host: str,
                                                       warned: bool) -> None:
    from connector.app import warn_about_exposure

    path = config(tmp_path, 'kind = "maildir"')
    path.write_text(path.read_text() + f'[tenants.his]\nhost = "{host}"\nport = 6661\n')
    with structlog.testing.capture_logs() as logs:
        warn_about_exposure(load_settings(path))
    assert ("his_in_clear" in [e["event"] for e in logs]) is warned


def test_receipts_take_a_pkcs12_or_a_pem_pair_not_both(tmp_path: Path,
                                                       pki: tuple[TestCA, Issued]) -> None:
    _, client = pki
    bundle = tmp_path / "bal.p12"
    bundle.write_bytes(b"not read: refused before")
    path = config(tmp_path, smtp(pki))
    path.write_text(path.read_text() + '[tenants.receipts]\nhost = "imap.operator.test"\n'
                    f'client_pkcs12 = "{bundle}"\n'
                    f'client_certificate = "{client.certificate}"\n'
                    f'client_private_key = "{client.private_key}"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.key == "tenants[0].receipts.client_pkcs12"


@pytest.mark.parametrize(("receipts", "key"), [
    ("", "tenants[0].transport.client_private_key"),  # inherited: the transport's setting
    ("client_certificate = \"{cert}\"\nclient_private_key = \"{key}\"\n"
     "client_private_key_password_env = \"IMAP_KEY_PASSWORD\"\n",
     "tenants[0].receipts.client_private_key"),  # its own
])
def test_a_certificate_error_names_the_table_that_set_it(
        tmp_path: Path, pki: tuple[TestCA, Issued], receipts: str, key: str) -> None:
    """[tenants.receipts] takes the transport's certificate when it names none: an error about
    it names [tenants.transport], where the reader wrote it (it named receipts before)."""
    _, client = pki
    extra = ('client_private_key_password_env = "BAL_KEY_PASSWORD"\n' if not receipts else "")
    path = config(tmp_path, smtp(pki, extra))
    path.write_text(path.read_text() + '[tenants.receipts]\nhost = "imap.operator.test"\n'
                    + receipts.format(cert=client.certificate, key=client.private_key))
    with pytest.raises(ConfigError) as caught:
        Application.build(load_settings(path, env={"BAL_KEY_PASSWORD": "x",
                                                   "IMAP_KEY_PASSWORD": "y"}))
    assert caught.value.key == key
    assert "is not encrypted" in caught.value.problem
