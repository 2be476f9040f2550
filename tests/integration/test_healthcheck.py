"""`mssante-connector healthcheck` against a running admin listener: plain HTTP and HTTPS with
the listener's own certificate pinned; exit codes 0 and 1 (Docker reserves 2)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from connector.cli import main
from connector.settings import AdminSettings, ListenerTLS
from tests.integration.conftest import RunningApp, make_settings
from tests.support.pki import TestCA


async def serve_admin(app_factory: Callable[..., object], tmp_path: Path,
                      tls: ListenerTLS | None = None) -> RunningApp:
    settings = replace(make_settings(tmp_path), admin=AdminSettings("127.0.0.1", 0, tls=tls))
    return await app_factory(settings)  # type: ignore[operator,no-any-return]


def config_for(tmp_path: Path, port: int, tls: ListenerTLS | None = None, *,
               host: str = "127.0.0.1") -> Path:
    """The configuration file the check reads, as `serve` would (the admin part matters)."""
    admin_tls = "" if tls is None else (
        f'[admin.tls]\ncertificate = "{tls.certificate}"\nprivate_key = "{tls.private_key}"\n')
    path = tmp_path / "check.toml"
    path.write_text(f'data_dir = "{tmp_path / "check-var"}"\n'
                    f'[admin]\nhost = "{host}"\nport = {port}\n{admin_tls}'
                    '[[tenants]]\nid = "t"\noid = "1.2.3"\n[[tenants.listeners]]\nport = 2575\n',
                    encoding="utf-8")
    return path


async def check(path: Path, *options: str) -> int:
    return await asyncio.to_thread(main, ["healthcheck", "--config", str(path), *options])


async def test_plain_http(app_factory: Callable[..., object], tmp_path: Path) -> None:
    running = await serve_admin(app_factory, tmp_path)
    assert running.app.admin is not None
    port = running.app.admin.address[1]
    assert await check(config_for(tmp_path, port)) == 0
    assert await check(config_for(tmp_path, port, host="0.0.0.0")) == 0  # asks loopback
    assert await check(config_for(tmp_path, port), "--ready") == 0


async def test_not_ready_says_why(app_factory: Callable[..., object], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    running = await serve_admin(app_factory, tmp_path)
    assert running.app.admin is not None
    port = running.app.admin.address[1]
    for handler in running.app.handlers:  # as when the process drains
        handler.draining = True
    running.app.serving = False
    assert await check(config_for(tmp_path, port), "--ready") == 1
    err = capsys.readouterr().err
    assert f"/readyz on 127.0.0.1:{port} answered 503: " in err
    assert err.strip().split("answered 503: ", 1)[1]  # the reason /readyz gave


async def test_https_trusts_the_listeners_own_certificate_only(
        app_factory: Callable[..., object], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    issued = TestCA(tmp_path / "pki").issue("admin.chu.test", server=True,
                                            hosts=("admin.chu.test",))
    tls = ListenerTLS(issued.certificate, issued.private_key)
    running = await serve_admin(app_factory, tmp_path, tls)
    assert running.app.admin is not None
    port = running.app.admin.address[1]
    # Its name is not 127.0.0.1 and its CA is in no trust store: the pinned file is enough.
    assert await check(config_for(tmp_path, port, tls)) == 0
    assert await check(config_for(tmp_path, port)) == 1  # plain HTTP to a TLS port
    other = TestCA(tmp_path / "other").issue("admin.chu.test", server=True)
    assert await check(config_for(tmp_path, port, ListenerTLS(other.certificate,
                                                              other.private_key))) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err  # another key: refused


async def test_https_does_not_trust_the_intermediates_of_the_certificate_file(
        app_factory: Callable[..., object], tmp_path: Path) -> None:
    """Certificate files hold the chain: the CA after the listener's certificate must not
    become a trust anchor, or any certificate it issued would pass the check."""
    ca = TestCA(tmp_path / "pki")

    def chained(cn: str) -> ListenerTLS:
        issued = ca.issue(cn, server=True)
        chain = tmp_path / f"{cn}-chain.pem"
        chain.write_bytes(issued.certificate.read_bytes() + ca.certificate.read_bytes())
        return ListenerTLS(chain, issued.private_key)

    served = chained("admin")
    running = await serve_admin(app_factory, tmp_path, served)
    assert running.app.admin is not None
    port = running.app.admin.address[1]
    assert await check(config_for(tmp_path, port, served)) == 0
    assert await check(config_for(tmp_path, port, chained("another-admin"))) == 1


async def test_nothing_listening_and_no_admin_listener(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert await check(config_for(tmp_path, 9)) == 1  # discard port: refused
    assert "unhealthy: /healthz on 127.0.0.1:9" in capsys.readouterr().err
    path = tmp_path / "no-admin.toml"
    path.write_text(f'data_dir = "{tmp_path / "v"}"\n[[tenants]]\nid = "t"\noid = "1.2.3"\n'
                    '[[tenants.listeners]]\nport = 2575\n', encoding="utf-8")
    assert await check(path) == 1
    assert "no [admin] listener" in capsys.readouterr().err
