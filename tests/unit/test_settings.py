"""TOML configuration: a full valid file, then every kind of error with its exact dotted key."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from pathlib import Path

import pytest

from connector.errors import ConfigError
from connector.settings import (
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_PORT,
    EnhancedAck,
    LogFormat,
    StoreBackend,
    TransportKind,
    embedded_default,
    load_settings,
    parse_settings,
)

KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 132))
KEYS_TEXT = f"k1:{base64.b64encode(KEY1).decode()}, k2:{base64.b64encode(KEY2).decode()}"
DSN = "postgresql://connector:s3cret@db.example/connector"


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name in ("cert.pem", "key.pem", "ca.pem"):
        files[name] = tmp_path / name
        files[name].write_text("-----BEGIN PLACEHOLDER-----\n", encoding="ascii")
    files["pw.txt"] = tmp_path / "pw.txt"
    files["pw.txt"].write_text("  key-password \n", encoding="utf-8")
    return files


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connector.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, env: Mapping[str, str] | None = None) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env=env or {})
    error = excinfo.value
    assert error.source == str(path)
    assert str(path) in str(error)
    assert error.key in str(error)
    return error


# -- a full valid file ----------------------------------------------------------------------------


def test_full_valid_file(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    path = write(tmp_path, f"""
data_dir = "{tmp_path}/data"
default_charset = "8859/15"

[store]
backend = "postgres"
dsn_env = "MSSC_DSN"
retransmission_window_seconds = 3600
payload_retention_days = 30

[store.encryption]
current_key_id = "k2"
keys_env = "MSSC_KEYS"

[logging]
format = "json"
level = "WARNING"

[[tenants]]
id = "chu-x"
oid = "1.2.3"
name = "CHU X"
finess = "120456789"
application = "PFI-X"
facility = "Organisation-X"

[tenants.transport]
kind = "maildir"
maildir = "{tmp_path}/mail"

[[tenants.listeners]]
name = "oru"
host = "0.0.0.0"
port = 2575
charset = "UNICODE UTF-8"
max_frame_bytes = 1048576
idle_timeout_seconds = 30.5
max_connections = 10
allow_from = ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]

[tenants.listeners.tls]
certificate = "{tls_files['cert.pem']}"
private_key = "{tls_files['key.pem']}"
private_key_password_file = "{tls_files['pw.txt']}"
client_ca = "{tls_files['ca.pem']}"

[[tenants.listeners]]
port = 2576

[[tenants]]
id = "site-2b"
oid = "1.2.3"
finess = "2B0000001"

[[tenants.listeners]]
port = 2577
""")
    settings = load_settings(path, env={"MSSC_DSN": DSN, "MSSC_KEYS": KEYS_TEXT})

    assert settings.source == str(path)
    assert settings.default_charset == "iso8859-15"
    assert settings.logging.format is LogFormat.JSON
    assert settings.logging.level == "warning"

    store = settings.store
    assert store.backend is StoreBackend.POSTGRES
    assert store.dsn == DSN
    assert store.path == tmp_path / "data" / "connector.db"
    assert store.retransmission_window_seconds == 3600.0
    assert store.payload_retention_days == 30.0
    assert store.encryption is not None
    assert store.encryption.current_key_id == "k2"
    assert dict(store.encryption.keys) == {"k1": KEY1, "k2": KEY2}

    chu, site = settings.tenants
    assert settings.tenant("site-2b") is site
    with pytest.raises(KeyError):
        settings.tenant("nope")
    assert (chu.id, chu.name, chu.finess) == ("chu-x", "CHU X", "120456789")
    assert (chu.application, chu.facility) == ("PFI-X", "Organisation-X")
    assert chu.transport.kind is TransportKind.MAILDIR
    assert chu.transport.maildir == tmp_path / "mail"

    oru, second = chu.listeners
    assert (oru.name, oru.host, oru.port) == ("oru", "0.0.0.0", 2575)
    assert oru.charset == "utf-8"
    assert (oru.max_frame_bytes, oru.idle_timeout_seconds, oru.max_connections) == (
        1048576, 30.5, 10)
    assert oru.allow_from == (ipaddress.ip_network("10.0.0.0/8"),
                              ipaddress.ip_network("192.168.1.7/32"),
                              ipaddress.ip_network("2001:db8::/32"))
    assert oru.tls is not None
    assert oru.tls.certificate == tls_files["cert.pem"]
    assert oru.tls.private_key == tls_files["key.pem"]
    assert oru.tls.private_key_password == "key-password"
    assert oru.tls.client_ca == tls_files["ca.pem"]

    assert (second.name, second.host, second.port) == ("chu-x-1", "127.0.0.1", 2576)
    assert second.charset is None
    assert second.max_frame_bytes == DEFAULT_MAX_FRAME_BYTES
    assert second.allow_from == ()
    assert second.tls is None

    assert (site.name, site.finess, site.application, site.facility) == (
        "site-2b", "2B0000001", "MSSANTE-CONNECTOR", "")
    assert site.transport.maildir == tmp_path / "data" / "maildir" / "site-2b"

    text = repr(settings)
    for secret in (DSN, "key-password", repr(KEY1), repr(KEY2)):
        assert secret not in text


def test_minimal_file_gets_the_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[[tenants]]\nid = "a"\noid = "1.2.3"\n'
                                             '[[tenants.listeners]]\n'),
                             env={})
    assert settings.store.backend is StoreBackend.SQLITE
    assert settings.store.path == Path("var/connector.db")
    assert settings.store.encryption is None
    assert settings.store.dsn is None
    assert settings.default_charset == "utf-8"
    assert settings.logging.format is LogFormat.CONSOLE
    assert settings.intake.document_processes == 0
    (listener,) = settings.tenants[0].listeners
    assert (listener.name, listener.host, listener.port) == ("a-0", "127.0.0.1", DEFAULT_PORT)


@pytest.mark.parametrize(
    ("charset", "codec"),
    [("UNICODE UTF-8", "utf-8"), ("utf8", "utf-8"), ("8859/1", "iso8859-1"),
     ("latin-1", "iso8859-1"), ("8859/15", "iso8859-15"), ("ASCII", "ascii"),
     ("cp1252", "cp1252"), ("8859/2", "iso8859-2"), ("cp850", "cp850")],
)
def test_accepted_charsets(tmp_path: Path, charset: str, codec: str) -> None:
    path = write(tmp_path, f'default_charset = "{charset}"\n{BASE}charset = "{charset}"\n')
    settings = load_settings(path, env={})
    assert settings.default_charset == codec
    assert settings.tenants[0].listeners[0].charset == codec


def test_document_processes(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[intake]\ndocument_processes = 3\n" + BASE), env={})
    assert settings.intake.document_processes == 3


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "dsn").write_text(DSN + "\n", encoding="utf-8")
    (tmp_path / "keys").write_text(KEYS_TEXT.replace(", ", "\n") + "\n", encoding="utf-8")
    settings = load_settings(write(tmp_path, f"""
[store]
backend = "postgres"
dsn_file = "{tmp_path}/dsn"
[store.encryption]
current_key_id = "k1"
keys_file = "{tmp_path}/keys"
[[tenants]]
id = "a"
oid = "1.2.3"
"""), env={})
    assert settings.store.dsn == DSN
    assert settings.store.encryption is not None
    assert dict(settings.store.encryption.keys) == {"k1": KEY1, "k2": KEY2}


def test_secret_from_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             tls_files: dict[str, Path]) -> None:
    monkeypatch.setenv("MSSC_TEST_PASSWORD", "from-env")
    path = write(tmp_path, f"""
[[tenants]]
id = "a"
oid = "1.2.3"
[[tenants.listeners]]
[tenants.listeners.tls]
certificate = "{tls_files['cert.pem']}"
private_key = "{tls_files['key.pem']}"
private_key_password_env = "MSSC_TEST_PASSWORD"
""")
    tls = load_settings(path).tenants[0].listeners[0].tls
    assert tls is not None
    assert tls.private_key_password == "from-env"
    assert tls.client_ca is None


def test_embedded_default(tmp_path: Path) -> None:
    settings = embedded_default(tmp_path)
    assert settings.store.path == tmp_path / "connector.db"
    (tenant,) = settings.tenants
    assert tenant.id == "default"
    assert tenant.transport.kind is TransportKind.MAILDIR
    assert tenant.transport.maildir == tmp_path / "maildir"
    (listener,) = tenant.listeners
    assert (listener.host, listener.port) == ("127.0.0.1", 2575)
    assert embedded_default().store.path == Path("var/connector.db")


def test_parse_settings_without_a_file_names_no_file() -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_settings({"tenants": [{"id": "a", "bogus": 1}]}, env={})
    assert excinfo.value.key == "tenants[0].bogus"
    assert excinfo.value.source is None
    assert str(excinfo.value) == "tenants[0].bogus: unknown key"


# -- errors ---------------------------------------------------------------------------------------

TENANT = '[[tenants]]\nid = "chu-x"\noid = "1.2.3"\n'
LISTENER = "[[tenants.listeners]]\nport = 2575\n"
BASE = TENANT + LISTENER
B64_16 = base64.b64encode(bytes(16)).decode()


def encryption(keys_env: str = "KEYS", current: str = "k1", extra: str = "") -> str:
    return f'[store.encryption]\ncurrent_key_id = "{current}"\nkeys_env = "{keys_env}"\n{extra}'


ERROR_CASES: list[tuple[str, str, dict[str, str], str]] = [
    # (id, TOML, environment, expected key)
    # unknown keys, at every level
    ("unknown-root", "bogus = 1\n" + BASE, {}, "bogus"),
    ("unknown-store", "[store]\nbogus = 1\n" + BASE, {}, "store.bogus"),
    ("unknown-encryption", encryption(extra="bogus = 1\n") + BASE, {"KEYS": KEYS_TEXT},
     "store.encryption.bogus"),
    ("unknown-logging", "[logging]\nlevle = 'info'\n" + BASE, {}, "logging.levle"),
    ("unknown-tenant", TENANT + "bogus = 1\n" + LISTENER, {}, "tenants[0].bogus"),
    ("unknown-second-tenant", BASE + '[[tenants]]\nid = "b"\noid = "1.2.3"\nbogus = 1\n', {},
     "tenants[1].bogus"),
    ("unknown-listener", BASE + "[[tenants.listeners]]\nport = 2576\nprot = 1\n", {},
     "tenants[0].listeners[1].prot"),
    ("unknown-transport", BASE + "[tenants.transport]\nbogus = 1\n", {},
     "tenants[0].transport.bogus"),
    # wrong types
    ("port-string", TENANT + '[[tenants.listeners]]\nport = "2575"\n', {},
     "tenants[0].listeners[0].port"),
    ("port-bool", TENANT + "[[tenants.listeners]]\nport = true\n", {},
     "tenants[0].listeners[0].port"),
    ("port-float", TENANT + "[[tenants.listeners]]\nport = 2575.0\n", {},
     "tenants[0].listeners[0].port"),
    ("finess-integer", TENANT + "finess = 120456789\n" + LISTENER, {}, "tenants[0].finess"),
    ("timeout-string", BASE + 'idle_timeout_seconds = "30"\n', {},
     "tenants[0].listeners[0].idle_timeout_seconds"),
    ("allow-from-string", BASE + 'allow_from = "10.0.0.0/8"\n', {},
     "tenants[0].listeners[0].allow_from"),
    ("enhanced-ack-unknown", BASE + 'enhanced_ack = "both"\n', {},
     "tenants[0].listeners[0].enhanced_ack"),
    ("store-not-table", "store = 1\n" + BASE, {}, "store"),
    ("tenants-not-array", 'tenants = "chu-x"\n', {}, "tenants"),
    ("tenants-empty", "tenants = []\n", {}, "tenants"),
    ("no-tenants", "[store]\n", {}, "tenants"),
    ("listener-not-table", TENANT + "listeners = [1]\n", {}, "tenants[0].listeners[0]"),
    ("level-integer", "[logging]\nlevel = 3\n" + BASE, {}, "logging.level"),
    # bad values
    ("port-zero", TENANT + "[[tenants.listeners]]\nport = 0\n", {},
     "tenants[0].listeners[0].port"),
    ("port-too-big", TENANT + "[[tenants.listeners]]\nport = 65536\n", {},
     "tenants[0].listeners[0].port"),
    ("port-second-listener", BASE + "[[tenants.listeners]]\nport = -1\n", {},
     "tenants[0].listeners[1].port"),
    ("max-frame-too-small", BASE + "max_frame_bytes = 10\n", {},
     "tenants[0].listeners[0].max_frame_bytes"),
    ("timeout-nan", BASE + "idle_timeout_seconds = nan\n", {},
     "tenants[0].listeners[0].idle_timeout_seconds"),
    ("tenant-id-missing", "[[tenants]]\nname = 'x'\n", {}, "tenants[0].id"),
    ("tenant-id-bad", '[[tenants]]\nid = "CHU_X"\noid = "1.2.3"\n', {}, "tenants[0].id"),
    ("duplicate-tenant", BASE + '[[tenants]]\nid = "chu-x"\noid = "1.2.3"\n', {}, "tenants[1].id"),
    ("duplicate-endpoint-across-tenants",
     BASE + '[[tenants]]\nid = "b"\noid = "1.2.3"\n' + LISTENER, {},
     "tenants[1].listeners[0].port"),
    ("duplicate-endpoint-in-tenant", BASE + LISTENER, {}, "tenants[0].listeners[1].port"),
    ("finess-short", TENANT + 'finess = "12045678"\n', {}, "tenants[0].finess"),
    ("finess-long", TENANT + 'finess = "1204567890"\n', {}, "tenants[0].finess"),
    ("finess-letters", TENANT + 'finess = "3A0000001"\n', {}, "tenants[0].finess"),
    ("finess-trailing", TENANT + 'finess = "120456789 "\n', {}, "tenants[0].finess"),
    ("cidr-bad", BASE + 'allow_from = ["10.0.0.0/8", "10.0.0.300/8"]\n', {},
     "tenants[0].listeners[0].allow_from[1]"),
    ("cidr-words", BASE + 'allow_from = ["localhost"]\n', {},
     "tenants[0].listeners[0].allow_from[0]"),
    ("cidr-prefix", BASE + 'allow_from = ["10.0.0.0/33"]\n', {},
     "tenants[0].listeners[0].allow_from[0]"),
    ("backend-bad", "[store]\nbackend = 'mysql'\n" + BASE, {}, "store.backend"),
    ("postgres-without-dsn", "[store]\nbackend = 'postgres'\n" + BASE, {}, "store.dsn_env"),
    ("transport-smtp-without-ca", BASE + "[tenants.transport]\nkind = 'smtp'\n", {},
     "tenants[0].transport.ca_bundle"),
    ("transport-bad", BASE + "[tenants.transport]\nkind = 'pigeon'\n", {},
     "tenants[0].transport.kind"),
    ("log-format-bad", "[logging]\nformat = 'xml'\n" + BASE, {}, "logging.format"),
    ("log-level-bad", "[logging]\nlevel = 'trace'\n" + BASE, {}, "logging.level"),
    # charsets
    ("charset-unknown", BASE + 'charset = "klingon"\n', {}, "tenants[0].listeners[0].charset"),
    ("charset-not-text", BASE + 'charset = "base64"\n', {}, "tenants[0].listeners[0].charset"),
    ("charset-rot13", BASE + 'charset = "rot13"\n', {}, "tenants[0].listeners[0].charset"),
    ("charset-not-ascii-compatible", BASE + 'charset = "utf-16"\n', {},
     "tenants[0].listeners[0].charset"),
    ("charset-idna", BASE + 'charset = "idna"\n', {}, "tenants[0].listeners[0].charset"),
    ("host-not-an-address", BASE + 'host = "127.0.0.256"\n', {},
     "tenants[0].listeners[0].host"),
    ("host-not-an-ipv6-address", BASE + 'host = "fe80::zz"\n', {},
     "tenants[0].listeners[0].host"),
    ("listener-name-twice", BASE + 'name = "dpi"\n[[tenants.listeners]]\nname = "dpi"\n'
     'port = 2576\n', {}, "tenants[0].listeners[1].name"),
    ("charset-utf7", BASE + 'charset = "utf-7"\n', {}, "tenants[0].listeners[0].charset"),
    ("default-charset-unknown", 'default_charset = "8859/99"\n' + BASE, {}, "default_charset"),
    ("default-charset-ebcdic", 'default_charset = "cp500"\n' + BASE, {}, "default_charset"),
    # secrets
    ("inline-dsn", f"[store]\nbackend = 'postgres'\ndsn = '{DSN}'\n" + BASE, {}, "store.dsn"),
    ("inline-keys", "[store.encryption]\ncurrent_key_id = 'k1'\nkeys = 'k1:x'\n" + BASE, {},
     "store.encryption.keys"),
    ("missing-env-dsn", "[store]\nbackend = 'postgres'\ndsn_env = 'NOPE'\n" + BASE, {},
     "store.dsn_env"),
    ("env-and-file", "[store]\ndsn_env = 'DSN'\ndsn_file = '/x'\n" + BASE, {"DSN": DSN},
     "store.dsn_env"),
    ("unreadable-dsn-file", "[store]\ndsn_file = '/nonexistent/dsn'\n" + BASE, {},
     "store.dsn_file"),
    ("missing-env-keys", encryption() + BASE, {}, "store.encryption.keys_env"),
    ("no-keys", "[store.encryption]\ncurrent_key_id = 'k1'\n" + BASE, {},
     "store.encryption.keys_env"),
    ("empty-keys", encryption() + BASE, {"KEYS": "  "}, "store.encryption.keys_env"),
    ("bad-base64", encryption() + BASE, {"KEYS": "k1:not*base64!"},
     "store.encryption.keys_env"),
    ("short-key", encryption() + BASE, {"KEYS": f"k1:{B64_16}"}, "store.encryption.keys_env"),
    ("entry-without-id", encryption() + BASE, {"KEYS": base64.b64encode(KEY1).decode()},
     "store.encryption.keys_env"),
    ("bad-key-id", encryption() + BASE, {"KEYS": f"k/1:{base64.b64encode(KEY1).decode()}"},
     "store.encryption.keys_env"),
    ("current-not-in-keys", encryption(current="k3") + BASE, {"KEYS": KEYS_TEXT},
     "store.encryption.current_key_id"),
    ("current-missing", "[store.encryption]\nkeys_env = 'KEYS'\n" + BASE, {"KEYS": KEYS_TEXT},
     "store.encryption.current_key_id"),
    ("negative-processes", "[intake]\ndocument_processes = -1\n" + BASE, {},
     "intake.document_processes"),
    ("text-processes", "[intake]\ndocument_processes = 'auto'\n" + BASE, {},
     "intake.document_processes"),
    ("unknown-intake-key", "[intake]\nprocesses = 2\n" + BASE, {}, "intake.processes"),
    ("retention-zero", "[store]\npayload_retention_days = 0\n" + BASE, {},
     "store.payload_retention_days"),
    ("retention-text", "[store]\npayload_retention_days = '90 days'\n" + BASE, {},
     "store.payload_retention_days"),
]


@pytest.mark.parametrize(("toml", "env", "key"), [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_error_names_the_key_and_the_file(
    tmp_path: Path, toml: str, env: dict[str, str], key: str,
) -> None:
    assert load_error(tmp_path, toml, env).key == key


def test_inline_secret_message_points_to_env_and_file(tmp_path: Path) -> None:
    error = load_error(tmp_path, f"[store]\ndsn = '{DSN}'\n" + BASE)
    assert "dsn_env" in error.problem
    assert "dsn_file" in error.problem
    assert DSN not in str(error)


def test_bad_key_material_is_not_echoed(tmp_path: Path) -> None:
    bad = "k1:c2VjcmV0LWtleS1tYXRlcmlhbA=="  # valid base64, 19 bytes
    error = load_error(tmp_path, encryption() + BASE, {"KEYS": bad})
    assert "32 bytes" in error.problem
    assert "c2VjcmV0" not in str(error)


def test_a_key_id_given_twice_is_refused(tmp_path: Path) -> None:
    """The second key would replace the first, and rows sealed with the first stop opening."""
    twice = f"k1:{base64.b64encode(KEY1).decode()}, k1:{base64.b64encode(KEY2).decode()}"
    error = load_error(tmp_path, encryption() + BASE, {"KEYS": twice})
    assert error.key == "store.encryption.keys_env"
    assert "'k1' is given twice" in error.problem
    assert base64.b64encode(KEY2).decode() not in str(error)


@pytest.fixture
def tls_base(tls_files: dict[str, Path]) -> str:
    return (BASE + "[tenants.listeners.tls]\n"
            f"certificate = '{tls_files['cert.pem']}'\nprivate_key = '{tls_files['key.pem']}'\n")


@pytest.mark.parametrize(
    ("extra", "env", "key"),
    [
        ("bogus = 1\n", {}, "tenants[0].listeners[0].tls.bogus"),
        ("client_ca = '/nonexistent/ca.pem'\n", {}, "tenants[0].listeners[0].tls.client_ca"),
        ("private_key_password = 'x'\n", {}, "tenants[0].listeners[0].tls.private_key_password"),
        ("private_key_password_env = 'NOPE'\n", {},
         "tenants[0].listeners[0].tls.private_key_password_env"),
        ("private_key_password_file = '/nonexistent/pw'\n", {},
         "tenants[0].listeners[0].tls.private_key_password_file"),
    ],
)
def test_tls_errors(tmp_path: Path, tls_base: str, extra: str, env: dict[str, str],
                    key: str) -> None:
    assert load_error(tmp_path, tls_base + extra, env).key == key


@pytest.mark.parametrize("missing", ["certificate", "private_key"])
def test_tls_missing_file(tmp_path: Path, tls_files: dict[str, Path], missing: str) -> None:
    paths = {"certificate": tls_files["cert.pem"], "private_key": tls_files["key.pem"]}
    paths[missing] = tmp_path / "absent.pem"
    toml = BASE + "[tenants.listeners.tls]\n" + "".join(f"{k} = '{v}'\n" for k, v in paths.items())
    error = load_error(tmp_path, toml)
    assert error.key == f"tenants[0].listeners[0].tls.{missing}"
    assert "absent.pem" in error.problem


@pytest.mark.parametrize("given", ["certificate", "private_key"])
def test_tls_needs_both_files(tmp_path: Path, tls_files: dict[str, Path], given: str) -> None:
    other = "private_key" if given == "certificate" else "certificate"
    path = tls_files["cert.pem"]
    error = load_error(tmp_path, BASE + f"[tenants.listeners.tls]\n{given} = '{path}'\n")
    assert error.key == f"tenants[0].listeners[0].tls.{other}"


def test_keys_errors_name_keys_file_when_the_keys_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("k1:not*base64!\n", encoding="utf-8")
    toml = f"[store.encryption]\ncurrent_key_id = 'k1'\nkeys_file = '{tmp_path}/keys'\n" + BASE
    assert load_error(tmp_path, toml).key == "store.encryption.keys_file"


def test_binary_secret_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "keys").write_bytes(b"\xff\xfe" + KEY1)  # raw key bytes instead of `id:base64`
    toml = f"[store.encryption]\ncurrent_key_id = 'k1'\nkeys_file = '{tmp_path}/keys'\n" + BASE
    assert load_error(tmp_path, toml).key == "store.encryption.keys_file"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(tmp_path / "absent.toml", env={})
    assert excinfo.value.key == "(file)"
    assert str(tmp_path / "absent.toml") in str(excinfo.value)


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(tmp_path, env={})
    assert excinfo.value.key == "(file)"
    assert str(tmp_path) in str(excinfo.value)


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "connector.toml"
    path.write_bytes(b'[[tenants]]\nid = "caf\xe9"\noid = "1.2.3"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={})
    assert excinfo.value.key == "(file)"
    assert str(path) in str(excinfo.value)


def test_toml_syntax_error(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[[tenants]\nid = ")
    assert error.key == "(syntax)"


def test_a_listener_may_answer_application_acks_in_enhanced_mode(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE + 'enhanced_ack = "application"\n'), env={})
    assert settings.tenants[0].listeners[0].enhanced_ack is EnhancedAck.APPLICATION
    default = load_settings(write(tmp_path, BASE), env={})
    assert default.tenants[0].listeners[0].enhanced_ack is EnhancedAck.COMMIT


@pytest.mark.parametrize(("text", "clash"), [
    (TENANT + LISTENER + '[[tenants]]\nid = "b"\noid = "1.2.3"\n' + LISTENER, "tenant 'chu-x'"),
    (TENANT + 'listeners = [{host = "0.0.0.0", port = 2575}, {host = "127.0.0.1", '
     'port = 2575}]\n', "tenant 'chu-x'"),
    (TENANT + 'listeners = [{host = "10.0.0.1", port = 2575}, {host = "::", port = 2575}]\n',
     "tenant 'chu-x'"),
    ('[admin]\nport = 2575\n' + TENANT + '[[tenants.listeners]]\nhost = "0.0.0.0"\nport = 2575\n',
     "the admin API ([admin] port)"),
])
def test_ports_that_cannot_both_be_bound_are_named(tmp_path: Path, text: str,
                                                   clash: str) -> None:
    error = load_error(tmp_path, text)
    assert error.key.endswith(".port")
    assert error.problem.endswith(f"is already used by {clash}")


def test_the_same_port_on_two_specific_addresses_is_fine(tmp_path: Path) -> None:
    text = (TENANT + 'listeners = [{name = "a", host = "10.0.0.1", port = 2575}, '
            '{name = "b", host = "10.0.0.2", port = 2575}]\n')
    assert len(load_settings(write(tmp_path, text)).tenants[0].listeners) == 2


@pytest.mark.parametrize(("content", "problem"), [
    ("", "gives an empty connection string"),
    ("host=127.0.0.1 dbname=x user=u password=S3cr3t pa55word",
     "not a valid libpq connection string"),
    ("host=127.0.0.1 bogus_param=1", "not a valid libpq connection string"),
])
def test_a_dsn_file_serve_would_refuse_is_named_at_check_config(
        tmp_path: Path, content: str, problem: str) -> None:
    """check-config said OK and serve failed; libpq's own text quoted a piece of the password;
    an empty file was reported as a missing dsn_env."""
    (tmp_path / "dsn").write_text(content, encoding="utf-8")
    path = write(tmp_path, f'[store]\nbackend = "postgres"\ndsn_file = "{tmp_path}/dsn"\n'
                 + BASE)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert caught.value.key == "store.dsn_file"
    assert problem in caught.value.problem
    assert "pa55word" not in str(caught.value)
