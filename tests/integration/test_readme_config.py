"""The README's example configuration, copied as an interface engineer would copy it, passes
`check-config` once its paths point at real files: a key that TOML puts in another table (after
a `[table]` header) or a key the loader does not know fails this test, not the reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from connector.cli import main
from tests.conftest import SCHEMAS
from tests.support.pki import TestCA
from tests.support.safeguards import write_whitelist

ROOT = Path(__file__).resolve().parents[2]


def readme_config() -> str:
    text = (ROOT / "README.md").read_text("utf-8")
    section = text.split("\n## Configuration\n", 1)[1]
    return section.split("```toml\n", 1)[1].split("\n```", 1)[0]


def test_the_readme_example_configuration_passes_check_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("mllp", server=True)
    client = ca.issue("bal", server=False)
    encrypted = tmp_path / "pki" / "bal-encrypted.key"  # the example sets its password
    key = serialization.load_pem_private_key(client.private_key.read_bytes(), None)
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"bal-key-password")))
    files: dict[str, Path] = {
        "/etc/mssante-connector/mllp.pem": server.certificate,
        "/etc/mssante-connector/mllp.key": server.private_key,
        "/etc/mssante-connector/his-ca.pem": ca.certificate,
        "/etc/mssante-connector/certs/igc-sante-roots.pem": ca.certificate,
        "/etc/mssante-connector/certs/bal-applicative.pem": client.certificate,
        "/etc/mssante-connector/certs/bal-applicative.key": encrypted,
        "/var/lib/mssante-connector/crl/acr-igc-sante.crl": ca.crl("acr.crl"),
        "/var/lib/mssante-connector/crl/aci-igc-sante-elem-org.crl": ca.crl("aci.crl"),
        "/etc/mssante-connector/ans/cda-xsd/CDA_extended.xsd":
            SCHEMAS / "cda-xsd" / "CDA_extended.xsd",
        "/etc/mssante-connector/ans/schematron/structurationMinimale/"
        "ASIP-STRUCT-MIN-StrucMin.sch":
            SCHEMAS / "schematron" / "structurationMinimale" / "ASIP-STRUCT-MIN-StrucMin.sch",
        "/etc/mssante-connector/mappings": ROOT / "mappings",
    }
    files["/var/lib/mssante-connector/listeblanchemssante.xml"] = write_whitelist(
        tmp_path, "chu-x.mssante.fr", "operateur-mssante.example")
    for secret, value in (("/run/secrets/admin-token", "an-admin-token-of-32-characters!"),
                          ("/run/secrets/mllp-key-password", "")):
        path = tmp_path / Path(secret).name
        path.write_text(value)
        files[secret] = path
    text = readme_config()
    for original, replacement in sorted(files.items(), key=lambda item: -len(item[0])):
        assert f'"{original}"' in text, original
        text = text.replace(f'"{original}"', f'"{replacement}"')
    # What is left under the service's own directories goes to the test's.
    text = text.replace('"/var/lib/mssante-connector', f'"{tmp_path / "var"}')
    settings_part = "\n".join(line.split(" #", 1)[0] for line in text.splitlines()
                              if not line.lstrip().startswith("#"))
    assert not re.findall(r'"/(?:etc|var|run)/[^"]*"', settings_part)
    config = tmp_path / "connector.toml"
    config.write_text(text, "utf-8")
    monkeypatch.setenv("MSSCONNECTOR_PAYLOAD_KEYS", "2026-11:" + "A" * 43 + "=")
    monkeypatch.setenv("BAL_KEY_PASSWORD", "bal-key-password")
    monkeypatch.setenv("BAL_IMAP_PASSWORD", "imap-secret")
    code = main(["check-config", str(config)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "OK (1 tenant(s), 1 listener(s), store sqlite)" in out
