"""SMTP submission against a real aiosmtpd server on 127.0.0.1, with a test PKI standing in for
IGC-Santé: STARTTLS or implicit TLS, client certificates required and verified by the server."""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from connector.delivery import (
    ClientTls,
    ClientTlsSettings,
    Outcome,
    OutgoingEnvelope,
    PemClientCertificate,
    Pkcs12ClientCertificate,
    SaslMechanism,
    SendResult,
    SmtpEndpoint,
    SmtpSubmitter,
    Stage,
    TlsMode,
    build_client_tls,
    client_certificate_info,
)
from connector.delivery.job import is_wire_form
from connector.errors import ConfigError
from connector.hl7.codes import SmtpErrorCode
from tests.support.pki import Issued
from tests.support.smtp_server import (
    CLIENT_CN,
    OAUTH_TOKEN,
    PLAIN_PASSWORD,
    PLAIN_USER,
    SENDER,
    Pki,
    RunningServer,
    ServerFactory,
    client_tls,
    pki,
    smtp_server,
)

__all__ = ["pki", "smtp_server"]  # fixtures used by the tests below

DOCTOR = "dr.hoda@medecin.mssante.fr"
PATIENT = "146026322000196@patient.mssante.fr"


# -- client helpers ------------------------------------------------------------------------------


def endpoint(server: RunningServer, **overrides: Any) -> SmtpEndpoint:
    base = SmtpEndpoint(host=server.host, port=server.port, local_hostname="connector.test",
                        connect_timeout=10, command_timeout=10, data_timeout=10)
    return replace(base, **overrides)


def envelope(n: int = 1, *, rcpt: str = DOCTOR, request_dsn: bool = False,
             envid: str | None = None, size: int = 0, wire: bool = False) -> OutgoingEnvelope:
    """`wire`: a message in wire form (CRLF only, no line starting with a period), which the
    submitter writes as it is; else one aiosmtplib has to dot-stuff."""
    body = "x" * size
    second_line = "no leading dot" if wire else ".leading dot"
    message = (f"From: {SENDER}\r\nTo: {rcpt}\r\nMessage-ID: <m{n}@chu-test.mssante.fr>\r\n"
               f"Subject: test {n}\r\nMIME-Version: 1.0\r\n\r\nbody {n}\r\n{second_line}\r\n"
               f"{body}\r\n").encode("ascii")
    assert is_wire_form(message) is wire
    return OutgoingEnvelope(mail_from=SENDER, rcpt_to=rcpt, message=message,
                            message_id=f"<m{n}@chu-test.mssante.fr>", envid=envid or f"outbox-{n}",
                            request_dsn=request_dsn)


async def send(endpoint_: SmtpEndpoint, tls: ClientTls, *envelopes: OutgoingEnvelope
               ) -> tuple[list[SendResult], SmtpSubmitter]:
    async with SmtpSubmitter(endpoint_, tls) as submitter:
        results = await submitter.send_all(envelopes)
    return results, submitter


def no_patient_data(result: SendResult) -> None:
    for text in (result.detail, result.server_message):
        assert PATIENT not in text
        assert "146026322000196" not in text


# -- STARTTLS and certificates -------------------------------------------------------------------


WIRE_FORMS = pytest.mark.parametrize("wire", [False, True], ids=["dot-stuffed", "wire-form"])


@WIRE_FORMS
async def test_starttls_with_client_certificate(smtp_server: ServerFactory, pki: Pki,
                                                wire: bool) -> None:
    server = await smtp_server()
    mail = envelope(wire=wire)
    [result], _ = await send(endpoint(server), client_tls(pki), mail)

    assert result.outcome is Outcome.SENT
    assert (result.stage, result.smtp_code, result.enhanced_status) == (Stage.DONE, 250, "2.0.0")
    assert result.error_code is None
    assert server.recorder.client_certificates == [CLIENT_CN]
    assert server.recorder.mail[0][0] == SENDER
    assert server.recorder.rcpt[0][0] == DOCTOR
    assert server.recorder.messages == [mail.message]  # byte for byte, dot-stuffing undone


async def test_a_wire_form_flag_never_lets_a_leading_period_through(smtp_server: ServerFactory,
                                                                   pki: Pki) -> None:
    """A row claiming wire form for a message with a line starting with a period (a bug, or a
    tampered row) is still dot-stuffed: the data cannot end early (SMTP smuggling)."""
    server = await smtp_server()
    mail = replace(envelope(), wire_form=True)
    [result], _ = await send(endpoint(server), client_tls(pki), mail)

    assert result.outcome is Outcome.SENT
    assert server.recorder.messages == [mail.message]


async def test_one_connection_carries_a_batch(smtp_server: ServerFactory, pki: Pki) -> None:
    server = await smtp_server()
    results, submitter = await send(endpoint(server), client_tls(pki),
                                    *(envelope(n) for n in range(1, 5)))

    assert [r.outcome for r in results] == [Outcome.SENT] * 4
    assert [r.message_id for r in results] == [f"<m{n}@chu-test.mssante.fr>" for n in range(1, 5)]
    assert server.recorder.connections == 1
    assert submitter.connections_opened == 1
    assert len(server.recorder.messages) == 4


async def test_server_refuses_a_client_without_certificate(smtp_server: ServerFactory,
                                                           pki: Pki) -> None:
    server = await smtp_server()
    results, submitter = await send(endpoint(server), client_tls(pki, certificate=None),
                                    envelope(1), envelope(2))

    first, second = results
    assert first.outcome is Outcome.CONFIG_ERROR
    assert first.stage is Stage.TLS
    assert first.error_code is SmtpErrorCode.CANNOT_CONNECT
    assert "no client certificate is configured" in first.detail
    assert second.outcome is Outcome.CONFIG_ERROR
    assert not second.attempted
    assert submitter.connections_opened <= 2  # confirmed once, then no more attempts
    assert server.recorder.mail == []


async def test_server_refuses_a_certificate_from_another_ca(smtp_server: ServerFactory,
                                                            pki: Pki) -> None:
    server = await smtp_server()
    [result], submitter = await send(endpoint(server),
                                     client_tls(pki, certificate=pki.foreign_client), envelope())

    assert result.outcome is Outcome.CONFIG_ERROR
    assert result.stage is Stage.TLS
    assert "CN=Foreign client" in result.detail  # which certificate
    assert "CN=Other Root CA" in result.detail  # and who issued it
    assert str(pki.foreign_client.certificate) in result.detail
    assert submitter.connections_opened <= 2
    assert server.recorder.mail == []


async def test_untrusted_server_certificate_fails_fast(smtp_server: ServerFactory,
                                                       pki: Pki) -> None:
    server = await smtp_server()
    results, submitter = await send(endpoint(server), client_tls(pki, trust=pki.other_ca),
                                    envelope(1), envelope(2))

    first, second = results
    assert first.outcome is Outcome.CONFIG_ERROR
    assert first.stage is Stage.TLS
    assert "failed verification" in first.detail
    assert str(pki.other_ca.certificate) in first.detail  # which CA bundle
    assert (second.outcome, second.attempted) == (Outcome.CONFIG_ERROR, False)
    assert submitter.connections_opened == 1  # a verification failure is not retried
    assert server.recorder.mail == []


def crl_tls(pki: Pki, *crls: Path) -> ClientTls:
    return build_client_tls(ClientTlsSettings(
        ca_bundle=pki.ca.certificate, crls=crls,
        client_certificate=PemClientCertificate(pki.client.certificate, pki.client.private_key)))


@pytest.mark.parametrize("der", [False, True])
async def test_a_crl_that_does_not_revoke_the_operator_lets_the_mail_go(
        smtp_server: ServerFactory, pki: Pki, der: bool) -> None:
    crl = pki.ca.crl(f"current-{der}.crl", pki.server_for_other_host, der=der)
    tls = crl_tls(pki, crl)
    assert (tls.crls, tls.crl_next_update is not None) == (1, True)
    server = await smtp_server()
    [result], _ = await send(endpoint(server), tls, envelope())
    assert result.outcome is Outcome.SENT


@pytest.mark.parametrize("case", ["revoked", "expired", "no CRL for its CA"])
async def test_a_revoked_operator_certificate_is_refused(
        smtp_server: ServerFactory, pki: Pki, case: str) -> None:
    """ECO.1.1.6: revoked per the CRL; and a CRL past its nextUpdate, or none for the CA that
    signed the operator, cannot say it is not: refused the same way (the tenant pauses)."""
    crl = {"revoked": lambda: pki.ca.crl("revoked.crl", pki.server),
           "expired": lambda: pki.ca.crl("expired.crl", next_update_days=-1),
           "no CRL for its CA": lambda: pki.other_ca.crl("other.crl")}[case]()
    trust = pki.ca.certificate
    if case == "no CRL for its CA":  # the other CA's CRL loads only beside its certificate
        both = pki.directory / "both.pem"
        both.write_bytes(pki.ca.certificate.read_bytes() + pki.other_ca.certificate.read_bytes())
        trust = both
    tls = build_client_tls(ClientTlsSettings(
        ca_bundle=trust, crls=(crl,),
        client_certificate=PemClientCertificate(pki.client.certificate, pki.client.private_key)))
    server = await smtp_server()
    [result], _ = await send(endpoint(server), tls, envelope())
    assert (result.outcome, result.stage) == (Outcome.CONFIG_ERROR, Stage.TLS)
    assert "failed verification" in result.detail
    assert server.recorder.mail == []


def test_a_file_that_is_not_a_crl_names_the_key(pki: Pki) -> None:
    with pytest.raises(ConfigError) as caught:
        crl_tls(pki, pki.ca.certificate)
    assert caught.value.key == "tls.crl_files"
    assert str(pki.ca.certificate) in caught.value.problem


async def test_server_certificate_for_another_host(smtp_server: ServerFactory, pki: Pki) -> None:
    server = await smtp_server(certificate=pki.server_for_other_host)
    [result], _ = await send(endpoint(server), client_tls(pki), envelope())

    assert result.outcome is Outcome.CONFIG_ERROR
    assert "mismatch" in result.detail.lower()
    assert "127.0.0.1" in result.detail


async def test_nothing_is_sent_in_clear_without_starttls(smtp_server: ServerFactory,
                                                         pki: Pki) -> None:
    server = await smtp_server(starttls=False)
    [result], _ = await send(endpoint(server), client_tls(pki), envelope())

    assert result.outcome is Outcome.CONFIG_ERROR
    assert (result.stage, result.error_code) == (Stage.TLS, SmtpErrorCode.CANNOT_CONNECT)
    assert "does not offer STARTTLS" in result.detail
    assert server.recorder.mail == []


async def test_implicit_tls(smtp_server: ServerFactory, pki: Pki) -> None:
    server = await smtp_server(implicit=True)
    results, _ = await send(endpoint(server, mode=TlsMode.IMPLICIT_TLS), client_tls(pki),
                            envelope(1), envelope(2))

    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert server.recorder.client_certificates == [CLIENT_CN, CLIENT_CN]
    assert server.recorder.connections == 1


async def test_implicit_tls_without_client_certificate(smtp_server: ServerFactory,
                                                       pki: Pki) -> None:
    server = await smtp_server(implicit=True)
    [result], _ = await send(endpoint(server, mode=TlsMode.IMPLICIT_TLS),
                             client_tls(pki, certificate=None), envelope())

    assert result.outcome is Outcome.CONFIG_ERROR
    assert result.stage is Stage.TLS


async def test_implicit_tls_against_a_starttls_port(smtp_server: ServerFactory,
                                                    pki: Pki) -> None:
    server = await smtp_server()  # plain greeting, then STARTTLS
    [result], _ = await send(endpoint(server, mode=TlsMode.IMPLICIT_TLS), client_tls(pki),
                             envelope())

    assert (result.outcome, result.stage) == (Outcome.CONFIG_ERROR, Stage.TLS)
    assert "the other TLS mode" in result.detail
    assert server.recorder.mail == []


async def test_pkcs12_client_certificate_with_password(smtp_server: ServerFactory, pki: Pki,
                                                       tmp_path: Path) -> None:
    bundle = _pkcs12(pki.client, tmp_path / "bal.p12", password="p12-secret")
    tls = build_client_tls(ClientTlsSettings(
        ca_bundle=pki.ca.certificate,
        client_certificate=Pkcs12ClientCertificate(bundle, password="p12-secret")))
    server = await smtp_server()
    [result], _ = await send(endpoint(server), tls, envelope())

    assert result.outcome is Outcome.SENT
    assert server.recorder.client_certificates == [CLIENT_CN]
    assert tls.client_certificate is not None
    assert tls.client_certificate.source == str(bundle)


async def test_ca_bundle_as_pkcs7(smtp_server: ServerFactory, pki: Pki, tmp_path: Path) -> None:
    """The ANS publishes the IGC-Santé chain as a .p7b."""
    root = x509.load_pem_x509_certificate(pki.ca.certificate.read_bytes())
    p7b = tmp_path / "chain.p7b"
    p7b.write_bytes(pkcs7.serialize_certificates([root], serialization.Encoding.DER))
    tls = build_client_tls(ClientTlsSettings(
        ca_bundle=p7b,
        client_certificate=PemClientCertificate(pki.client.certificate, pki.client.private_key)))
    server = await smtp_server()
    [result], _ = await send(endpoint(server), tls, envelope())

    assert result.outcome is Outcome.SENT


async def test_private_directory_when_memfd_is_unavailable(
        smtp_server: ServerFactory, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    before = set(Path(tempfile.gettempdir()).glob("mssconnector-tls-*"))
    monkeypatch.delattr(os, "memfd_create", raising=False)
    tls = client_tls(pki)
    server = await smtp_server()
    [result], _ = await send(endpoint(server), tls, envelope())

    assert result.outcome is Outcome.SENT
    assert set(Path(tempfile.gettempdir()).glob("mssconnector-tls-*")) == before  # removed


# -- DSN -----------------------------------------------------------------------------------------


async def test_dsn_parameters_when_advertised(smtp_server: ServerFactory, pki: Pki) -> None:
    server = await smtp_server(advertise_dsn=True)
    mail = replace(envelope(request_dsn=True, envid="outbox-42+retry=1"),
                   rcpt_to="dr.hoda+cardio@medecin.mssante.fr")
    [result], _ = await send(endpoint(server), client_tls(pki), mail)

    assert result.outcome is Outcome.SENT
    assert result.dsn_requested
    [(_, mail_params)] = server.recorder.mail
    assert mail_params["RET"] == "HDRS"
    assert mail_params["ENVID"] == "outbox-42+2Bretry+3D1"  # xtext
    assert mail_params["SIZE"] == str(len(mail.message))
    [(address, rcpt_params)] = server.recorder.rcpt
    assert address == "dr.hoda+cardio@medecin.mssante.fr"
    assert rcpt_params == {"NOTIFY": "SUCCESS,FAILURE,DELAY",
                           "ORCPT": "rfc822;dr.hoda+2Bcardio@medecin.mssante.fr"}


@pytest.mark.parametrize(("advertised", "requested"), [(False, True), (True, False)])
async def test_no_dsn_parameters_unless_advertised_and_requested(
        smtp_server: ServerFactory, pki: Pki, advertised: bool, requested: bool) -> None:
    server = await smtp_server(advertise_dsn=advertised)
    [result], _ = await send(endpoint(server), client_tls(pki), envelope(request_dsn=requested))

    assert result.outcome is Outcome.SENT
    assert not result.dsn_requested
    # Asked for and not offered: said, so that the hospital still gets its Z02 (W) later.
    assert result.dsn_unsupported is (requested and not advertised)
    [(_, mail_params)] = server.recorder.mail
    assert set(mail_params) == {"SIZE"}
    [(_, rcpt_params)] = server.recorder.rcpt
    # ORCPT whenever the server takes DSN parameters (an MDN's Original-Recipient), asked or not
    assert rcpt_params == ({"ORCPT": f"rfc822;{DOCTOR}"}
                           if advertised else {})


# -- replies -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "code", "status", "error_code"), [
    ("450 4.2.1 Mailbox busy", 450, "4.2.1", SmtpErrorCode.MAILBOX_BUSY),
    ("451 4.3.0 Local error", 451, "4.3.0", SmtpErrorCode.PROCESSING_ERROR),
    ("452 4.5.3 Too many recipients", 452, "4.5.3", SmtpErrorCode.INSUFFICIENT_RESOURCES),
    ("454 4.7.1 Relay temporarily refused", 454, "4.7.1", SmtpErrorCode.PROCESSING_ERROR),
])
async def test_4xx_at_rcpt_is_transient(smtp_server: ServerFactory, pki: Pki, reply: str,
                                        code: int, status: str,
                                        error_code: SmtpErrorCode) -> None:
    server = await smtp_server(rcpt_replies={PATIENT: reply})
    results, submitter = await send(endpoint(server), client_tls(pki), envelope(1, rcpt=PATIENT),
                                    envelope(2))

    failed, sent = results
    assert (failed.outcome, failed.stage) == (Outcome.TRANSIENT, Stage.RCPT)
    assert (failed.smtp_code, failed.enhanced_status, failed.error_code) == (code, status,
                                                                             error_code)
    assert failed.retryable
    no_patient_data(failed)
    assert sent.outcome is Outcome.SENT  # the session was reset and reused
    assert submitter.connections_opened == 1
    assert len(server.recorder.messages) == 1


async def test_421_at_rcpt_then_reconnects(smtp_server: ServerFactory, pki: Pki) -> None:
    server = await smtp_server(rcpt_replies={PATIENT: "421 4.3.2 Service shutting down"})
    results, submitter = await send(endpoint(server), client_tls(pki), envelope(1, rcpt=PATIENT),
                                    envelope(2))

    failed, sent = results
    assert (failed.outcome, failed.error_code) == (Outcome.TRANSIENT,
                                                   SmtpErrorCode.SERVICE_UNAVAILABLE)
    assert sent.outcome is Outcome.SENT
    assert submitter.connections_opened == 2


async def test_5xx_at_rcpt_is_permanent(smtp_server: ServerFactory, pki: Pki) -> None:
    reply = f"550 5.1.1 <{PATIENT}>: Recipient address rejected: User unknown"
    server = await smtp_server(rcpt_replies={PATIENT: reply})
    [result], _ = await send(endpoint(server), client_tls(pki), envelope(rcpt=PATIENT))

    assert (result.outcome, result.stage) == (Outcome.PERMANENT, Stage.RCPT)
    assert (result.smtp_code, result.enhanced_status) == (550, "5.1.1")
    assert result.error_code is SmtpErrorCode.MAILBOX_UNAVAILABLE
    assert result.error_label == SmtpErrorCode.MAILBOX_UNAVAILABLE.label
    assert "<address>" in result.server_message
    no_patient_data(result)


@pytest.mark.parametrize(("reply", "error_code"), [
    ("554 5.6.0 Message content rejected", SmtpErrorCode.TRANSACTION_FAILED),
    ("552 5.3.4 Message too big for system", SmtpErrorCode.STORAGE_EXCEEDED),
    ("556 5.7.0 Unknown policy", SmtpErrorCode.TRANSACTION_FAILED),
])
@WIRE_FORMS
async def test_5xx_at_data_is_permanent(smtp_server: ServerFactory, pki: Pki, reply: str,
                                        error_code: SmtpErrorCode, wire: bool) -> None:
    server = await smtp_server(data_reply=reply)
    [result], _ = await send(endpoint(server), client_tls(pki), envelope(wire=wire))

    assert (result.outcome, result.stage, result.error_code) == (Outcome.PERMANENT, Stage.DATA,
                                                                 error_code)
    assert result.smtp_code == int(reply[:3])


async def test_message_over_the_server_size_is_refused_locally(smtp_server: ServerFactory,
                                                               pki: Pki) -> None:
    server = await smtp_server(data_size_limit=2000)
    [result], _ = await send(endpoint(server), client_tls(pki), envelope(size=5000))

    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, SmtpErrorCode.SIZE_EXCEEDED)
    assert result.smtp_code is None
    assert server.recorder.mail == []


# -- disconnections and time-outs ----------------------------------------------------------------


@WIRE_FORMS
async def test_disconnect_mid_session_is_transient(smtp_server: ServerFactory, pki: Pki,
                                                   wire: bool) -> None:
    server = await smtp_server(drop_at_data=True)
    results, _ = await send(endpoint(server), client_tls(pki), envelope(1, wire=wire))

    [result] = results
    assert (result.outcome, result.stage) == (Outcome.TRANSIENT, Stage.DATA)
    assert result.error_code is SmtpErrorCode.CONNECTION_DROPPED
    assert result.smtp_code is None
    assert "may have been accepted" in result.detail


@WIRE_FORMS
async def test_next_envelope_reconnects_after_a_disconnect(smtp_server: ServerFactory,
                                                           pki: Pki, wire: bool) -> None:
    server = await smtp_server(close_after_message=True)
    results, submitter = await send(endpoint(server), client_tls(pki),
                                    *(envelope(n, wire=wire) for n in range(1, 4)))

    assert [r.outcome for r in results] == [Outcome.SENT] * 3
    assert submitter.connections_opened == server.recorder.connections == 3


async def test_dead_reused_session_is_retried_once(smtp_server: ServerFactory, pki: Pki) -> None:
    server = await smtp_server(drop_reused_at_mail=True)
    results, submitter = await send(endpoint(server), client_tls(pki), envelope(1), envelope(2))

    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert submitter.connections_opened == 2
    assert len(server.recorder.messages) == 2


async def test_connection_refused_is_transient_111(pki: Pki) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = SmtpEndpoint(host="127.0.0.1", port=port, connect_timeout=10)
    results, submitter = await send(refused, client_tls(pki), envelope(1), envelope(2))

    first, second = results
    assert (first.outcome, first.stage) == (Outcome.TRANSIENT, Stage.CONNECT)
    assert first.error_code is SmtpErrorCode.CONNECTION_REFUSED
    assert first.error_label == SmtpErrorCode.CONNECTION_REFUSED.label
    assert (second.error_code, second.attempted) == (SmtpErrorCode.CONNECTION_REFUSED, False)
    assert submitter.connections_opened == 1


@WIRE_FORMS
async def test_no_reply_in_time_is_transient_420(smtp_server: ServerFactory, pki: Pki,
                                                 wire: bool) -> None:
    server = await smtp_server(stall_at_data=True)
    [result], _ = await send(endpoint(server, data_timeout=0.5), client_tls(pki),
                             envelope(wire=wire))

    assert (result.outcome, result.stage) == (Outcome.TRANSIENT, Stage.DATA)
    assert result.error_code is SmtpErrorCode.TIMEOUT


# -- SASL ----------------------------------------------------------------------------------------


async def test_sasl_plain_over_tls(smtp_server: ServerFactory, pki: Pki) -> None:
    server = await smtp_server(auth_required=True)
    plain = endpoint(server, sasl=SaslMechanism.PLAIN, username=PLAIN_USER,
                     password=PLAIN_PASSWORD)
    results, _ = await send(plain, client_tls(pki), envelope(1), envelope(2))

    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert server.recorder.logins == [PLAIN_USER]  # once per session


async def test_sasl_plain_refused_is_a_configuration_error(smtp_server: ServerFactory,
                                                           pki: Pki) -> None:
    server = await smtp_server(auth_required=True)
    plain = endpoint(server, sasl=SaslMechanism.PLAIN, username=PLAIN_USER,
                     password="Not-Th3-P4ssword")
    [result], _ = await send(plain, client_tls(pki), envelope())

    assert (result.outcome, result.stage) == (Outcome.CONFIG_ERROR, Stage.AUTH)
    assert (result.smtp_code, result.enhanced_status) == (535, "5.7.8")
    assert result.error_code is SmtpErrorCode.AUTHENTICATION_REQUIRED
    assert "Not-Th3-P4ssword" not in result.detail + result.server_message
    assert server.recorder.mail == []


async def test_authentication_required_but_not_configured(smtp_server: ServerFactory,
                                                          pki: Pki) -> None:
    server = await smtp_server(auth_required=True)
    [result], _ = await send(endpoint(server), client_tls(pki), envelope())

    assert (result.outcome, result.stage) == (Outcome.CONFIG_ERROR, Stage.MAIL)
    assert result.error_code is SmtpErrorCode.AUTHENTICATION_REQUIRED
    assert "configure SASL" in result.detail


async def test_sasl_mechanism_not_offered(smtp_server: ServerFactory, pki: Pki) -> None:
    server = await smtp_server(auth_required=True, auth_exclude=["XOAUTH2"])
    oauth = endpoint(server, sasl=SaslMechanism.XOAUTH2, username=PLAIN_USER,
                     oauth_token=OAUTH_TOKEN)
    [result], _ = await send(oauth, client_tls(pki), envelope())

    assert (result.outcome, result.stage) == (Outcome.CONFIG_ERROR, Stage.AUTH)
    assert result.error_code is SmtpErrorCode.AUTHENTICATION_REQUIRED
    assert "does not offer SASL XOAUTH2" in result.detail
    assert "PLAIN" in result.detail  # what it offers instead
    assert server.recorder.mail == []


@pytest.mark.parametrize("mechanism", [SaslMechanism.EXTERNAL, SaslMechanism.XOAUTH2])
async def test_sasl_external_and_xoauth2(smtp_server: ServerFactory, pki: Pki,
                                         mechanism: SaslMechanism) -> None:
    server = await smtp_server(auth_required=True)
    credentials: dict[str, Any] = (
        {"username": PLAIN_USER, "oauth_token": OAUTH_TOKEN}
        if mechanism is SaslMechanism.XOAUTH2 else {})
    [result], _ = await send(endpoint(server, sasl=mechanism, **credentials), client_tls(pki),
                             envelope())

    assert result.outcome is Outcome.SENT
    assert server.recorder.logins == [mechanism.name]


async def test_sasl_xoauth2_refused_token(smtp_server: ServerFactory, pki: Pki) -> None:
    server = await smtp_server(auth_required=True)
    oauth = endpoint(server, sasl=SaslMechanism.XOAUTH2, username=PLAIN_USER,
                     oauth_token="expired-token")
    [result], _ = await send(oauth, client_tls(pki), envelope())

    assert (result.outcome, result.stage) == (Outcome.CONFIG_ERROR, Stage.AUTH)
    assert (result.smtp_code, result.error_code) == (535, SmtpErrorCode.AUTHENTICATION_REQUIRED)
    assert server.recorder.logins == ["XOAUTH2 refused, client answered b''"]
    assert "expired-token" not in result.detail + result.server_message


# -- loading the client TLS material -------------------------------------------------------------


def _pkcs12(issued: Issued, path: Path, *, password: str) -> Path:
    key = serialization.load_pem_private_key(issued.private_key.read_bytes(), None)
    certificate = x509.load_pem_x509_certificate(issued.certificate.read_bytes())
    path.write_bytes(pkcs12.serialize_key_and_certificates(
        b"bal", key, certificate, None,  # type: ignore[arg-type]
        serialization.BestAvailableEncryption(password.encode())))
    return path


def test_pkcs12_wrong_password(pki: Pki, tmp_path: Path) -> None:
    bundle = _pkcs12(pki.client, tmp_path / "bal.p12", password="right-one")
    settings = ClientTlsSettings(ca_bundle=pki.ca.certificate,
                                 client_certificate=Pkcs12ClientCertificate(bundle, "wrong-one"))
    with pytest.raises(ConfigError) as caught:
        build_client_tls(settings)
    assert str(bundle) in str(caught.value)
    assert "wrong-one" not in str(caught.value)
    assert "wrong-one" not in repr(settings)


def test_key_that_does_not_match_the_certificate(pki: Pki) -> None:
    mixed = PemClientCertificate(pki.client.certificate, pki.foreign_client.private_key)
    with pytest.raises(ConfigError, match="does not belong"):
        build_client_tls(ClientTlsSettings(ca_bundle=pki.ca.certificate,
                                           client_certificate=mixed))


def test_encrypted_pem_key(pki: Pki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.client.private_key.read_bytes(), None)
    encrypted = tmp_path / "client.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pem-secret")))
    with pytest.raises(ConfigError, match="a password is needed"):
        build_client_tls(ClientTlsSettings(ca_bundle=pki.ca.certificate,
                                           client_certificate=PemClientCertificate(
                                               pki.client.certificate, encrypted)))
    tls = build_client_tls(ClientTlsSettings(
        ca_bundle=pki.ca.certificate,
        client_certificate=PemClientCertificate(pki.client.certificate, encrypted, "pem-secret")))
    assert tls.client_certificate is not None


def test_a_ca_bundle_is_required_unless_the_system_store_is_chosen(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ca_bundle"):
        ClientTlsSettings(ca_bundle=None)
    with pytest.raises(ConfigError, match="cannot read"):
        build_client_tls(ClientTlsSettings(ca_bundle=tmp_path / "missing.pem"))
    tls = build_client_tls(ClientTlsSettings(ca_bundle=None, use_system_trust_store=True))
    assert tls.context.verify_mode is ssl.CERT_REQUIRED
    assert tls.context.check_hostname


def test_context_is_tls12_or_newer_with_verification(pki: Pki) -> None:
    tls = client_tls(pki)
    assert tls.context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert tls.context.verify_mode is ssl.CERT_REQUIRED
    assert tls.context.check_hostname
    assert str(pki.ca.certificate) in tls.trust
    with pytest.raises(ConfigError, match=r"TLS 1\.2"):
        ClientTlsSettings(ca_bundle=pki.ca.certificate, minimum_version=ssl.TLSVersion.TLSv1_1)


def test_client_certificate_expiry(pki: Pki, tmp_path: Path) -> None:
    info = client_certificate_info(PemClientCertificate(pki.client.certificate,
                                                        pki.client.private_key))
    assert f"CN={CLIENT_CN}" in info.subject
    assert "Test IGC-Sante Root" in info.issuer
    assert 9 < info.days_to_expiry() <= 10  # TestCA issues for 10 days
    bundle = _pkcs12(pki.client, tmp_path / "bal.p12", password="pw")
    assert client_certificate_info(Pkcs12ClientCertificate(bundle, "pw")).not_after == \
        info.not_after
