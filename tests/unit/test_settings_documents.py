"""Settings keys added with CI-SIS intake and the e-mails: read, and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.cda.policy import MissingPdfPolicy, SchematronPolicy
from connector.errors import ConfigError
from connector.settings import SendingMatrixProfile, load_settings
from connector.store import UnknownOriginalPolicy


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_cisis_mailbox_oid_and_validation_keys_are_read(tmp_path: Path) -> None:
    xsd = tmp_path / "cda.xsd"
    xsd.write_text("<schema/>")
    config = write_config(tmp_path, f"""
[validation]
cda_xsd = "{xsd}"
[directory]
whitelist = "{tmp_path / 'not-installed-yet.xml'}"
[[tenants]]
id = "chu"
oid = "1.2.250.1.71.4.2.2.1120456789"
[tenants.mailbox]
address = "pfi@chu.mssante.fr"
nil = "DEV935997"
contact = "Secrétariat, 01 23 45 67 89"
[tenants.cisis]
schematron_policy = "warn"
unknown_original = "refuse"
sending_matrix = "ans-examples"
partial_sending = true
missing_pdf = "send"
""")
    settings = load_settings(config)
    tenant = settings.tenants[0]
    assert settings.validation.cda_xsd == xsd
    assert settings.whitelist == tmp_path / "not-installed-yet.xml"
    assert tenant.oid == "1.2.250.1.71.4.2.2.1120456789"
    assert (tenant.mailbox.address, tenant.mailbox.nil) == ("pfi@chu.mssante.fr", "DEV935997")
    assert tenant.mailbox.contact == "Secrétariat, 01 23 45 67 89"
    assert tenant.cisis.schematron_policy is SchematronPolicy.WARN
    assert tenant.cisis.unknown_original is UnknownOriginalPolicy.REFUSE
    assert tenant.cisis.sending_matrix is SendingMatrixProfile.ANS_EXAMPLES
    assert tenant.cisis.partial_sending is True
    assert tenant.cisis.missing_pdf is MissingPdfPolicy.SEND


@pytest.mark.parametrize(("snippet", "key"), [
    ('[tenants.cisis]\nschematron_policy = "maybe"', "tenants[0].cisis.schematron_policy"),
    ('[tenants.cisis]\nunknown_original = "ignore"', "tenants[0].cisis.unknown_original"),
    ('[tenants.cisis]\nsending_matrix = "loose"', "tenants[0].cisis.sending_matrix"),
    ('[tenants.cisis]\npartial_sending = "yes"', "tenants[0].cisis.partial_sending"),
    ('[tenants.cisis]\nmissing_pdf = "hold"', "tenants[0].cisis.missing_pdf"),
    ('[tenants.cisis]\ncolour = "blue"', "tenants[0].cisis.colour"),
    ('[tenants.mailbox]\naddress = "not an address"', "tenants[0].mailbox.address"),
    ('[tenants.mailbox]\nnil = "X"', "tenants[0].mailbox.address"),
    ('oid = "1.2.x"', "tenants[0].oid"),
    ("", "tenants[0].oid"),
])
def test_new_keys_name_their_errors(tmp_path: Path, snippet: str, key: str) -> None:
    oid = "" if snippet.startswith("oid") or not snippet else 'oid = "1.2.3"\n'
    config = write_config(tmp_path, f'[[tenants]]\nid = "chu"\n{oid}{snippet}\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert caught.value.key == key
    assert str(config) in str(caught.value)


def test_validation_files_must_exist(tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[validation]\ncda_xsd = "{tmp_path / "missing.xsd"}"\n'
                              '[[tenants]]\nid = "chu"\noid = "1.2.3"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert caught.value.key == "validation.cda_xsd"


def test_a_cda_without_pdf_refuses_the_request_unless_the_tenant_says_send(
        tmp_path: Path) -> None:
    """ECO.2.1.1 by default; sending without the PDF is the tenant's explicit choice."""
    config = write_config(tmp_path, '[[tenants]]\nid = "chu"\noid = "1.2.3"\n')
    assert load_settings(config).tenants[0].cisis.missing_pdf is MissingPdfPolicy.REFUSE
