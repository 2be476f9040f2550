"""End-to-end fixtures: a real Postfix (`mailserver`) and Dovecot (`imapserver`) on loopback.

Both are started once per test module and skip the test, with the reason, where the Debian
packages are missing or the tests do not run as root (`bash .ci/run` installs them). When a test
that used them fails, its report gets the tail of their logs as extra sections.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator

import pytest

from connector.app import Application
from connector.settings import Settings
from tests.support.mailserver import (
    DovecotServer,
    MailServer,
    dovecot_unavailable,
    postfix_unavailable,
)

Apps = Callable[[Settings], Awaitable[Application]]


@pytest.fixture
async def apps() -> AsyncIterator[Apps]:
    """Start connectors in-process (`await apps(settings)`); stopped at the end of the test."""
    started: list[Application] = []

    async def start(config: Settings) -> Application:
        app = Application.build(config)
        await app.start()
        started.append(app)
        return app

    yield start
    for app in started:
        await app.stop(grace_seconds=2)


@pytest.fixture(scope="module")
def mailserver() -> Iterator[MailServer]:
    """A running Postfix: `host`, `submission_port`, `ca`, `server_cert`, `client_cert`,
    `mailbox_dir()`, `messages()`, `wait_for_messages()`, `clear()`, `stop()`/`start()`."""
    reason = postfix_unavailable()
    if reason is not None:
        pytest.skip(reason)
    server = MailServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def imapserver(mailserver: MailServer) -> Iterator[DovecotServer]:
    """A running Dovecot over the `mailserver` Maildirs: `host`, `imap_port` (STARTTLS),
    `imaps_port` (implicit TLS), `password(address)`, `client_context()`."""
    reason = dovecot_unavailable()
    if reason is not None:
        pytest.skip(reason)
    server = DovecotServer(mailserver)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
        item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                     pytest.TestReport]:
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name in ("mailserver", "imapserver"):
            server = funcargs.get(name)
            if isinstance(server, MailServer | DovecotServer):
                report.sections.append((f"{name} log tail ({call.when})", server.log_tail()))
    return report
