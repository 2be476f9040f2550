"""TLS of the MLLP listeners and of the admin endpoint: what OpenSSL refuses is a ConfigError
naming the setting, at build (so `check-config` finds it), and never a terminal prompt."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from cryptography.hazmat.primitives import serialization

from connector.app import Application, warn_about_exposure
from connector.errors import ConfigError
from connector.settings import load_settings
from tests.support.pki import Issued, TestCA


@pytest.fixture
def pki(tmp_path: Path) -> tuple[TestCA, Issued, Issued]:
    ca = TestCA(tmp_path / "pki")
    return ca, ca.issue("mllp", server=True), ca.issue("someone else", server=True)


def build(tmp_path: Path, tls: str, *, admin: str = "", env: dict[str, str] | None = None
          ) -> Application:
    path = tmp_path / "c.toml"
    path.write_text(f'data_dir = "{tmp_path / "var"}"\n{admin}'
                    '[[tenants]]\nid = "chu"\noid = "1.2.3"\n'
                    f'[[tenants.listeners]]\nport = 2575\n{tls}', encoding="utf-8")
    return Application.build(load_settings(path, env=env or {}))


def listener_tls(certificate: Path, private_key: Path, extra: str = "") -> str:
    return (f"[tenants.listeners.tls]\ncertificate = '{certificate}'\n"
            f"private_key = '{private_key}'\n{extra}")


def encrypted(key: Path, password: bytes) -> Path:
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    path = key.with_name("encrypted-key.pem")
    path.write_bytes(loaded.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(password)))
    return path


def test_a_key_of_another_certificate_is_named(tmp_path: Path,
                                               pki: tuple[TestCA, Issued, Issued]) -> None:
    _, server, other = pki
    with pytest.raises(ConfigError) as caught:
        build(tmp_path, listener_tls(server.certificate, other.private_key))
    assert caught.value.key == "tenants[0].listeners[0].tls.private_key"
    assert str(other.private_key) in caught.value.problem


def test_a_wrong_key_password_is_named(tmp_path: Path,
                                       pki: tuple[TestCA, Issued, Issued]) -> None:
    _, server, _ = pki
    key = encrypted(server.private_key, b"right")
    with pytest.raises(ConfigError) as caught:
        build(tmp_path, listener_tls(server.certificate, key,
                                     "private_key_password_env = 'KEY_PASSWORD'\n"),
              env={"KEY_PASSWORD": "Not-The-Pa55word"})
    assert caught.value.key == "tenants[0].listeners[0].tls.private_key"
    assert "Not-The-Pa55word" not in str(caught.value)


def test_an_encrypted_key_without_a_password_is_named_not_prompted(
        tmp_path: Path, pki: tuple[TestCA, Issued, Issued]) -> None:
    _, server, _ = pki
    key = encrypted(server.private_key, b"right")
    with pytest.raises(ConfigError) as caught:
        build(tmp_path, listener_tls(server.certificate, key))
    assert caught.value.key == "tenants[0].listeners[0].tls.private_key"


def test_the_right_password_builds(tmp_path: Path, pki: tuple[TestCA, Issued, Issued]) -> None:
    _, server, _ = pki
    key = encrypted(server.private_key, b"right")
    app = build(tmp_path, listener_tls(server.certificate, key,
                                       "private_key_password_env = 'KEY_PASSWORD'\n"),
                env={"KEY_PASSWORD": "right"})
    assert app.servers[0]._ssl is not None


def test_the_admin_key_is_checked_at_build(tmp_path: Path,
                                           pki: tuple[TestCA, Issued, Issued]) -> None:
    _, server, other = pki
    admin = ("[admin]\nhost = '127.0.0.1'\nport = 9610\n[admin.tls]\n"
             f"certificate = '{server.certificate}'\nprivate_key = '{other.private_key}'\n")
    with pytest.raises(ConfigError) as caught:
        build(tmp_path, "", admin=admin)
    assert caught.value.key == "admin.tls.private_key"


# -- start-up warnings -------------------------------------------------------------------------


def exposure_events(tmp_path: Path, toml: str, env: dict[str, str] | None = None
                    ) -> list[dict[str, object]]:
    path = tmp_path / "exposure.toml"
    path.write_text(f'data_dir = "{tmp_path / "var"}"\n{toml}', encoding="utf-8")
    with structlog.testing.capture_logs() as logs:
        warn_about_exposure(load_settings(path, env=env or {}))
    return logs


def test_clear_text_off_the_loopback_is_warned(tmp_path: Path) -> None:
    logs = exposure_events(
        tmp_path, "[admin]\nhost = '0.0.0.0'\nport = 9610\ntoken_env = 'TOKEN'\n"
                  "[[tenants]]\nid = 'chu'\noid = '1.2.3'\n"
                  "[[tenants.listeners]]\nname = 'dpi'\nhost = '0.0.0.0'\nport = 2575\n",
        env={"TOKEN": "t" * 32})
    events = {e["event"]: e for e in logs}
    assert events["admin_api_in_clear"]["host"] == "0.0.0.0"
    assert events["listener_in_clear"]["listener"] == "dpi"
    assert events["dry_run"]["tenant"] == "chu"  # no [tenants.transport]: the Maildir
    assert "t" * 32 not in repr(logs)


def test_loopback_or_an_allow_list_is_not_warned(tmp_path: Path) -> None:
    logs = exposure_events(
        tmp_path, "[admin]\nhost = '127.0.0.1'\nport = 9610\ntoken_env = 'TOKEN'\n"
                  "[[tenants]]\nid = 'chu'\noid = '1.2.3'\n"
                  "[[tenants.listeners]]\nname = 'dpi'\nhost = '0.0.0.0'\nport = 2575\n"
                  "allow_from = ['10.1.2.0/24']\n"
                  "[[tenants.listeners]]\nname = 'local'\nhost = '127.0.0.1'\nport = 2576\n",
        env={"TOKEN": "t" * 32})
    assert [e["event"] for e in logs] == ["dry_run"]


@pytest.mark.parametrize(("dsn", "env", "hosts"), [
    ("postgresql://connector:s3cret@db.chu.local:5432/connector", {}, ["db.chu.local"]),
    ("postgresql://connector:s3cret@db.chu.local/c?sslmode=require", {}, ["db.chu.local"]),
    ("host=pg1.grades.local,pg2.grades.local dbname=c password=s3cret", {},
     ["pg1.grades.local", "pg2.grades.local"]),
    ("dbname=c password=s3cret", {"PGHOST": "db.chu.local"}, ["db.chu.local"]),
    ("postgresql://connector:s3cret@db.chu.local/c?sslmode=verify-full", {}, []),
    ("postgresql://connector:s3cret@db.chu.local/c", {"PGSSLMODE": "verify-ca"}, []),
    ("postgresql://connector:s3cret@127.0.0.1/c", {}, []),
    ("postgresql://connector:s3cret@db.chu.local/c?sslrootcert=system", {}, []),
    ("postgresql://connector:s3cret@db.chu.local/c?sslrootcert=system&sslmode=require", {},
     ["db.chu.local"]),
    ("host=/run/postgresql dbname=c", {}, []),
])
def test_a_postgres_server_reached_without_verification_is_warned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str, env: dict[str, str],
        hosts: list[str]) -> None:
    for name in ("PGHOST", "PGSSLMODE", "PGSSLROOTCERT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    logs = exposure_events(
        tmp_path, "[store]\nbackend = 'postgres'\ndsn_env = 'PG_DSN'\n"
                  "[[tenants]]\nid = 'chu'\noid = '1.2.3'\n"
                  "[[tenants.listeners]]\nname = 'dpi'\nhost = '127.0.0.1'\nport = 2575\n",
        env={"PG_DSN": dsn})
    warned = [e for e in logs if e["event"] == "store_tls_unverified"]
    assert [e["hosts"] for e in warned] == ([hosts] if hosts else [])
    assert "s3cret" not in repr(logs)  # never the DSN


def test_secret_files_other_accounts_can_read_are_warned(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("k1:" + "A" * 43 + "=\n", encoding="utf-8")
    token = tmp_path / "token"
    token.write_text("t" * 32, encoding="utf-8")
    ca = TestCA(tmp_path / "pki")
    listener = ca.issue("mllp", server=True)
    toml = ("[store.encryption]\ncurrent_key_id = 'k1'\n"
            f"keys_file = '{keys}'\n"
            f"[admin]\nhost = '127.0.0.1'\nport = 9610\ntoken_file = '{token}'\n"
            "[[tenants]]\nid = 'chu'\noid = '1.2.3'\n"
            "[[tenants.listeners]]\nname = 'dpi'\nhost = '127.0.0.1'\nport = 2575\n"
            + listener_tls(listener.certificate, listener.private_key))
    for path, mode in ((keys, 0o644), (token, 0o620), (listener.private_key, 0o604)):
        path.chmod(mode)
    warned = {e["key"]: e for e in exposure_events(tmp_path, toml)
              if e["event"] == "secret_file_exposed"}
    assert {key: e["mode"] for key, e in warned.items()} == {
        "store.encryption.keys_file": "0644",
        "admin.token_file": "0620",
        "tenants[0].listeners[0].tls.private_key": "0604"}
    assert warned["admin.token_file"]["path"] == str(token)
    assert "t" * 32 not in repr(warned)  # the path, never the secret

    for path, mode in ((keys, 0o600), (token, 0o640), (listener.private_key, 0o401)):
        path.chmod(mode)
    assert not [e for e in exposure_events(tmp_path, toml)
                if e["event"] == "secret_file_exposed"]
