"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 with a test PKI standing in for
IGC-Santé (STARTTLS or implicit TLS, client certificates required and verified), whose replies a
test scripts through `Behaviour` (mutable while it runs) and whose traffic `Recorder` keeps.

Import the fixtures into a test module: `from tests.support.smtp_server import pki, smtp_server`.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd import smtp as aiosmtpd_smtp
from aiosmtpd.smtp import AuthResult, LoginPassword

from connector.delivery import (
    ClientTls,
    ClientTlsSettings,
    PemClientCertificate,
    build_client_tls,
)
from tests.support.pki import Issued, TestCA

SENDER = "pfi-auto@chu-test.mssante.fr"
CLIENT_CN = "BAL applicative CHU test"
PLAIN_USER, PLAIN_PASSWORD = "pfi-auto@chu-test.mssante.fr", "s3cret-pl@in"
OAUTH_TOKEN = "psc-access-token"


# -- PKI -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: TestCA
    other_ca: TestCA
    server: Issued
    server_for_other_host: Issued
    client: Issued
    foreign_client: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = TestCA(directory / "igc")
    other = TestCA(directory / "other", name="Other Root CA")
    return Pki(directory, ca, other,
               server=ca.issue("smtp.operator.test", server=True),
               server_for_other_host=ca.issue("elsewhere", server=True,
                                              hosts=("smtp.elsewhere.test",)),
               client=ca.issue(CLIENT_CN, server=False),
               foreign_client=other.issue("Foreign client", server=False))


def server_context(pki: Pki, certificate: Issued | None = None, *,
                   require_client_certificate: bool = True) -> ssl.SSLContext:
    certificate = certificate or pki.server
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate.certificate, certificate.private_key)
    if require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(pki.ca.certificate))
    return context


def client_tls(pki: Pki, *, trust: TestCA | None = None,
               certificate: Issued | str | None = "default") -> ClientTls:
    issued = pki.client if certificate == "default" else certificate
    source = (PemClientCertificate(issued.certificate, issued.private_key)
              if isinstance(issued, Issued) else None)
    return build_client_tls(ClientTlsSettings(ca_bundle=(trust or pki.ca).certificate,
                                              client_certificate=source))


# -- the server ----------------------------------------------------------------------------------


@dataclass
class Behaviour:
    advertise_dsn: bool = False
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    drop_at_data: bool = False  # close the connection instead of answering the end of data
    stall_at_data: bool = False  # never answer the end of data
    close_after_message: bool = False  # answer 250, then close the connection
    drop_reused_at_mail: bool = False  # once: close a connection that already carried a message
    mail_reply: str | None = None  # the reply to every MAIL FROM, instead of 250


@dataclass
class Recorder:
    connections: int = 0
    mail: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    rcpt: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    client_certificates: list[str] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    dropped_reused: bool = False


def _parameters(arg: str) -> tuple[str, dict[str, str], list[str]]:
    address, *params = arg.split()
    return address, dict(p.partition("=")[::2] for p in params), params


class RecordingServer(aiosmtpd_smtp.SMTP):  # type: ignore[misc]
    """Records MAIL/RCPT parameters as sent (aiosmtpd upper-cases them) and accepts the DSN ones
    when it advertises DSN; without DSN, aiosmtpd answers 555 to them, like a real server."""

    def __init__(self, handler: Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.behaviour = handler.behaviour
        self.recorder = handler.recorder
        self.completed = 0

    async def smtp_MAIL(  # noqa: N802 (aiosmtpd finds hooks by name)
            self, arg: str | None) -> None:
        await super().smtp_MAIL(self._take(arg, self.recorder.mail, {"RET", "ENVID"}))

    async def smtp_RCPT(  # noqa: N802 (aiosmtpd finds hooks by name)
            self, arg: str | None) -> None:
        await super().smtp_RCPT(self._take(arg, self.recorder.rcpt, {"NOTIFY", "ORCPT"}))

    def _take(self, arg: str | None, into: list[tuple[str, dict[str, str]]],
              dsn_keys: set[str]) -> str | None:
        if not arg:
            return arg
        address, parsed, params = _parameters(arg)
        into.append((address.split(":", 1)[1].strip("<>"), parsed))
        if self.behaviour.advertise_dsn:
            params = [p for p in params if p.partition("=")[0].upper() not in dsn_keys]
        return " ".join([address, *params])


class Handler:
    def __init__(self, behaviour: Behaviour, recorder: Recorder) -> None:
        self.behaviour = behaviour
        self.recorder = recorder

    async def handle_EHLO(  # noqa: N802 (aiosmtpd finds hooks by name)
            self, server: RecordingServer, session: Any, envelope: Any,
            hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.behaviour.advertise_dsn:
            responses.insert(-1, "250-DSN")
        return responses

    async def handle_MAIL(  # noqa: N802 (aiosmtpd finds hooks by name)
            self, server: RecordingServer, session: Any, envelope: Any,
            address: str, options: list[str]) -> str:
        if self.behaviour.drop_reused_at_mail and server.completed and \
                not self.recorder.dropped_reused:
            self.recorder.dropped_reused = True
            server.transport.close()  # no reply reaches the client
            return "421 4.4.2 gone"
        if self.behaviour.mail_reply is not None:  # MAIL was recorded as it came
            return self.behaviour.mail_reply
        peer = server.transport.get_extra_info("peercert") or {}
        subject = dict(item for rdn in peer.get("subject", ()) for item in rdn)
        self.recorder.client_certificates.append(subject.get("commonName", ""))
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(  # noqa: N802 (aiosmtpd finds hooks by name)
            self, server: RecordingServer, session: Any, envelope: Any,
            address: str, options: list[str]) -> str:
        if address in self.behaviour.rcpt_replies:
            return self.behaviour.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(  # noqa: N802 (aiosmtpd finds hooks by name)
            self, server: RecordingServer, session: Any, envelope: Any) -> str:
        if self.behaviour.stall_at_data:
            await asyncio.Event().wait()
        if self.behaviour.drop_at_data:
            server.transport.close()
            return "451 4.3.0 gone"
        if self.behaviour.data_reply:
            return self.behaviour.data_reply
        self.recorder.messages.append(envelope.content)
        server.completed += 1
        if self.behaviour.close_after_message:
            asyncio.get_running_loop().call_soon(server.transport.close)
        return "250 2.0.0 Ok: queued as T1"

    async def auth_EXTERNAL(  # noqa: N802 (aiosmtpd finds hooks by name)
            self, server: RecordingServer, args: list[str]) -> AuthResult:
        peer = server.transport.get_extra_info("peercert")
        ok = peer is not None and args[1:] == ["="]
        if ok:
            self.recorder.logins.append("EXTERNAL")
        return AuthResult(success=ok, handled=False)

    async def auth_XOAUTH2(  # noqa: N802 (aiosmtpd finds hooks by name)
            self, server: RecordingServer, args: list[str]) -> AuthResult:
        fields = base64.b64decode(args[1]).decode().split("\x01")
        ok = fields[:2] == [f"user={PLAIN_USER}", f"auth=Bearer {OAUTH_TOKEN}"]
        if ok:
            self.recorder.logins.append("XOAUTH2")
        else:  # like the large providers: error details as a challenge, then the failure
            answer = await server.challenge_auth('{"status":"401","schemes":"Bearer"}')
            self.recorder.logins.append(f"XOAUTH2 refused, client answered {answer!r}")
        return AuthResult(success=ok, handled=False)


def _password_authenticator(recorder: Recorder) -> Callable[..., AuthResult]:
    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == PLAIN_USER.encode()
              and auth_data.password == PLAIN_PASSWORD.encode())
        if ok:
            recorder.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)
    return authenticate


@dataclass(frozen=True)
class RunningServer:
    port: int
    recorder: Recorder
    behaviour: Behaviour
    server: asyncio.Server
    host: str = "127.0.0.1"


ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def smtp_server(pki: Pki) -> AsyncIterator[ServerFactory]:
    servers: list[asyncio.Server] = []
    protocols: list[RecordingServer] = []

    async def start(*, implicit: bool = False, starttls: bool = True,
                    certificate: Issued | None = None, require_client_certificate: bool = True,
                    auth_required: bool = False, auth_exclude: list[str] | None = None,
                    data_size_limit: int = 10_000_000, port: int = 0,
                    **behaviour: Any) -> RunningServer:
        loop = asyncio.get_running_loop()
        context = server_context(pki, certificate,
                                 require_client_certificate=require_client_certificate)
        recorder = Recorder()
        handler = Handler(Behaviour(**behaviour), recorder)

        def connection() -> RecordingServer:
            recorder.connections += 1
            protocol = RecordingServer(
                handler, hostname="smtp.operator.test", loop=loop,
                tls_context=context if starttls and not implicit else None,
                require_starttls=starttls and not implicit, data_size_limit=data_size_limit,
                auth_required=auth_required, auth_exclude_mechanism=auth_exclude,
                authenticator=_password_authenticator(recorder))
            protocols.append(protocol)
            return protocol

        server = await loop.create_server(connection, "127.0.0.1", port,
                                          ssl=context if implicit else None)
        servers.append(server)
        return RunningServer(server.sockets[0].getsockname()[1], recorder, handler.behaviour,
                             server)

    yield start
    for protocol in protocols:
        if protocol.transport is not None:
            protocol.transport.close()
    for server in servers:
        server.close()
        await server.wait_closed()


