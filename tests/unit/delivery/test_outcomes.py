"""The classification table, the SMTPERRORCODE mapping, xtext, and the value objects' checks.

Pure functions and standard-library exceptions only: the aiosmtplib seam is exercised against a
real server in tests/integration/test_smtp_submission.py.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.delivery.job import is_wire_form
from connector.delivery.smtp import (
    Failure,
    FailureKind,
    Outcome,
    OutgoingEnvelope,
    SaslMechanism,
    SendResult,
    SmtpEndpoint,
    SmtpPermanentError,
    SmtpTransientError,
    Stage,
    classify,
    enhanced_status,
    failure_from_exception,
    sanitise_server_message,
    smtp_error_code,
    xtext_decode,
    xtext_encode,
)
from connector.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from connector.hl7.codes import SmtpErrorCode

PATIENT = "146026322000196@patient.mssante.fr"
# RFC 3461 §4: xchar is "!".."~" except "+" and "="; hexchar is "+" and two upper-case hex digits
XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")

# The CI-SIS SMTPERRORCODE table (cisis-hl7v2-to-mssante.md §2.2), code → label.
CISIS_TABLE = {
    101: "connexion impossible", 111: "connexion refusée", 251: "relayé",
    252: "utilisateur non vérifiable", 420: "problème de temporisation",
    421: "service indisponible", 422: "BAL pleine", 431: "espace disque",
    432: "mot de passe de transition", 441: "serveur ne répond pas",
    442: "connexion interrompue", 450: "BAL non disponible", 451: "erreur de traitement",
    452: "ressources système", 500: "syntaxe", 501: "syntaxe paramètres",
    502: "commande non implémentée", 503: "mauvaise séquence", 504: "paramètre non implémenté",
    510: "mauvaise adresse", 512: "erreur DNS", 513: "type d'adresse incorrect",
    523: "taille dépassée", 530: "authentification requise", 541: "rejet (anti-spam)",
    550: "BAL non disponible/non trouvée", 551: "relais interrompu", 552: "stockage dépassé",
    553: "nom de BAL invalide", 554: "échec permanent",
}


def reply(code: int, text: str = "") -> Failure:
    return Failure(FailureKind.REPLY, code, text)


# -- SMTPERRORCODE -------------------------------------------------------------------------------


def test_the_table_is_the_cisis_one() -> None:
    # Codes as in the reference table; labels are the ANS page's verbatim (longer) wording.
    assert {int(code.code) for code in SmtpErrorCode} == set(CISIS_TABLE)


@pytest.mark.parametrize("code", [c for c in CISIS_TABLE if c >= 400])
def test_a_code_of_the_table_maps_to_itself(code: int) -> None:
    assert smtp_error_code(code, "5.1.1") is SmtpErrorCode.from_code(str(code))


@pytest.mark.parametrize(("code", "status", "expected"), [
    (455, None, SmtpErrorCode.PROCESSING_ERROR),  # unknown 4xx
    (454, "4.7.0", SmtpErrorCode.PROCESSING_ERROR),
    (556, None, SmtpErrorCode.TRANSACTION_FAILED),  # unknown 5xx
    (557, "5.1.1", SmtpErrorCode.MAILBOX_UNAVAILABLE),  # the enhanced status decides
    (571, "5.7.1", SmtpErrorCode.REJECTED),
    (557, "5.3.4", SmtpErrorCode.SIZE_EXCEEDED),
    (458, "4.4.1", SmtpErrorCode.NO_ANSWER),
    (535, None, SmtpErrorCode.AUTHENTICATION_REQUIRED),
    (538, "5.7.11", SmtpErrorCode.AUTHENTICATION_REQUIRED),
    (557, "5.7.8", SmtpErrorCode.AUTHENTICATION_REQUIRED),
    (250, None, SmtpErrorCode.PROCESSING_ERROR),  # a success where a failure was seen
    (-1, None, SmtpErrorCode.PROCESSING_ERROR),  # malformed
])
def test_codes_outside_the_table(code: int, status: str | None, expected: SmtpErrorCode) -> None:
    assert smtp_error_code(code, status) is expected


# -- classification ------------------------------------------------------------------------------


@pytest.mark.parametrize(("stage", "failure", "outcome", "code"), [
    # connection
    (Stage.CONNECT, Failure(FailureKind.REFUSED), Outcome.TRANSIENT, 111),
    (Stage.CONNECT, Failure(FailureKind.UNREACHABLE), Outcome.TRANSIENT, 101),
    (Stage.CONNECT, Failure(FailureKind.TIMEOUT), Outcome.TRANSIENT, 420),
    (Stage.CONNECT, reply(421, "4.3.2 try later"), Outcome.TRANSIENT, 421),
    (Stage.CONNECT, reply(554, "5.7.1 go away"), Outcome.CONFIG_ERROR, 554),  # in the table
    (Stage.CONNECT, Failure(FailureKind.DISCONNECTED), Outcome.TRANSIENT, 442),
    (Stage.EHLO, reply(550), Outcome.CONFIG_ERROR, 550),
    # TLS: fail fast
    (Stage.TLS, Failure(FailureKind.TLS, text="certificate verify failed"),
     Outcome.CONFIG_ERROR, 101),
    (Stage.TLS, Failure(FailureKind.DISCONNECTED), Outcome.CONFIG_ERROR, 101),
    (Stage.TLS, Failure(FailureKind.NOT_OFFERED), Outcome.CONFIG_ERROR, 101),
    (Stage.TLS, reply(454, "4.7.0 TLS not available"), Outcome.TRANSIENT, 451),
    # Postfix with smtpd_tls_req_ccert, to a client without a certificate: 421 after STARTTLS
    (Stage.TLS, reply(421, "4.7.1 mx.operator.test Error: No client certificate presented"),
     Outcome.CONFIG_ERROR, 101),
    (Stage.MAIL, reply(421, "4.7.1 certificate expired, come back later"), Outcome.TRANSIENT,
     421),
    (Stage.TLS, Failure(FailureKind.TIMEOUT), Outcome.TRANSIENT, 420),
    # authentication
    (Stage.AUTH, reply(535, "5.7.8 bad credentials"), Outcome.CONFIG_ERROR, 530),
    (Stage.AUTH, reply(454, "4.7.0 temporary failure"), Outcome.TRANSIENT, 451),
    (Stage.AUTH, Failure(FailureKind.NOT_OFFERED), Outcome.CONFIG_ERROR, 530),
    (Stage.AUTH, reply(432, "4.7.12 password transition"), Outcome.TRANSIENT, 432),
    # MAIL / RCPT / DATA
    (Stage.MAIL, reply(451, "4.3.0 local error"), Outcome.TRANSIENT, 451),
    (Stage.MAIL, reply(530, "5.7.0 Authentication required"), Outcome.CONFIG_ERROR, 530),
    (Stage.MAIL, reply(552, "5.3.4 too big"), Outcome.PERMANENT, 552),
    (Stage.MAIL, reply(552), Outcome.PERMANENT, 552),
    (Stage.MAIL, reply(554, "5.2.3 message length exceeds limit"), Outcome.PERMANENT, 554),
    (Stage.MAIL, reply(555, "5.5.4 parameters not recognised"), Outcome.PERMANENT, 554),
    (Stage.MAIL, reply(555), Outcome.PERMANENT, 554),
    (Stage.MAIL, reply(501, "5.5.4 invalid ENVID"), Outcome.PERMANENT, 501),
    # MAIL refusing the sender: the tenant's mailbox, on every mail (Postfix's
    # reject_sender_login_mismatch, an unknown or disabled BAL)
    (Stage.MAIL, reply(553, "5.7.1 Sender address rejected: not owned by user"),
     Outcome.CONFIG_ERROR, 553),
    (Stage.MAIL, reply(550, "5.1.8 Sender address rejected: Domain not found"),
     Outcome.CONFIG_ERROR, 550),
    (Stage.MAIL, reply(550, "5.2.1 Mailbox disabled"), Outcome.CONFIG_ERROR, 550),
    (Stage.MAIL, reply(554, "5.3.2 System not accepting network messages"),
     Outcome.CONFIG_ERROR, 554),
    (Stage.MAIL, reply(554, "5.3.5 System incorrectly configured"), Outcome.CONFIG_ERROR, 554),
    (Stage.MAIL, reply(550), Outcome.CONFIG_ERROR, 550),
    (Stage.MAIL, reply(554), Outcome.CONFIG_ERROR, 554),
    (Stage.MAIL, Failure(FailureKind.TOO_LARGE), Outcome.PERMANENT, 523),
    (Stage.RCPT, reply(450, "4.2.1 busy"), Outcome.TRANSIENT, 450),
    (Stage.RCPT, reply(452, "4.5.3 too many recipients"), Outcome.TRANSIENT, 452),
    (Stage.RCPT, reply(421), Outcome.TRANSIENT, 421),
    (Stage.RCPT, reply(550, "5.1.1 unknown"), Outcome.PERMANENT, 550),
    (Stage.RCPT, reply(553, "5.1.3 bad syntax"), Outcome.PERMANENT, 553),
    (Stage.RCPT, reply(551, "5.7.1 relay denied"), Outcome.PERMANENT, 551),
    # RCPT refusing the sender or the relay (Postfix checks the sender there by default,
    # smtpd_delay_reject): every mail would get it, the tenant pauses as at MAIL
    (Stage.RCPT, reply(553, "5.7.1 <bal@chu.mssante.fr>: Sender address rejected: not owned "
                            "by user"), Outcome.CONFIG_ERROR, 553),
    (Stage.RCPT, reply(554, "5.7.1 <dr@medecin.mssante.fr>: Relay access denied"),
     Outcome.CONFIG_ERROR, 554),
    (Stage.RCPT, reply(550, "5.1.8 bad sender's system address"), Outcome.CONFIG_ERROR, 550),
    (Stage.RCPT, reply(550, "5.7.1 recipient refuses mail from this domain"),
     Outcome.PERMANENT, 550),  # about the recipient: this mail only
    (Stage.RCPT, reply(556, "5.1.10 null MX"), Outcome.PERMANENT, 554),
    (Stage.RCPT, Failure(FailureKind.DISCONNECTED), Outcome.TRANSIENT, 442),
    (Stage.DATA, reply(554, "5.6.0 rejected"), Outcome.PERMANENT, 554),
    (Stage.DATA, reply(452, "4.3.1 out of storage"), Outcome.TRANSIENT, 452),
    (Stage.DATA, Failure(FailureKind.TIMEOUT), Outcome.TRANSIENT, 420),
    (Stage.DATA, Failure(FailureKind.DISCONNECTED), Outcome.TRANSIENT, 442),
    (Stage.DATA, Failure(FailureKind.PROTOCOL), Outcome.TRANSIENT, 451),
])
def test_classification(stage: Stage, failure: Failure, outcome: Outcome, code: int) -> None:
    classification = classify(stage, failure)
    assert (classification.outcome, int(classification.error_code.code)) == (outcome, code)


@given(code=st.integers(400, 599), stage=st.sampled_from([Stage.MAIL, Stage.RCPT, Stage.DATA]))
def test_4xx_retries_5xx_does_not(code: int, stage: Stage) -> None:
    outcome = classify(stage, reply(code)).outcome
    if code < 500:
        assert outcome is Outcome.TRANSIENT
    else:
        assert outcome in (Outcome.PERMANENT, Outcome.CONFIG_ERROR)


# -- the exception seam (standard-library exceptions) --------------------------------------------


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(("exception", "kind"), [
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), FailureKind.REFUSED),
    (OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 587), "
             "[Errno 111] Connect call failed ('127.0.0.1', 587)"), FailureKind.REFUSED),
    (OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 587), "
             "[Errno 101] Network is unreachable"), FailureKind.UNREACHABLE),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), FailureKind.UNREACHABLE),
    (TimeoutError(), FailureKind.TIMEOUT),
    (ConnectionResetError(), FailureKind.DISCONNECTED),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), FailureKind.DISCONNECTED),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), FailureKind.TLS),
    (_chained(OSError("while connecting"), ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA]")),
     FailureKind.TLS),
])
def test_failure_from_exception(exception: BaseException, kind: FailureKind) -> None:
    assert failure_from_exception(exception).kind is kind


def test_a_tls_failure_carries_openssl_s_reason() -> None:
    failure = failure_from_exception(ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] unknown ca"))
    assert "UNKNOWN_CA" in failure.text


# -- xtext (RFC 3461 §4) -------------------------------------------------------------------------


@pytest.mark.parametrize(("plain", "encoded"), [
    ("outbox-42", "outbox-42"),
    ("a+b=c", "a+2Bb+3Dc"),
    ("with space", "with+20space"),
    ("tab\tand\x7f", "tab+09and+7F"),
    ("dr.hoda+cardio@medecin.mssante.fr", "dr.hoda+2Bcardio@medecin.mssante.fr"),
    ("", ""),
])
def test_xtext_examples(plain: str, encoded: str) -> None:
    assert xtext_encode(plain) == encoded
    assert xtext_decode(encoded) == plain


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_xtext_round_trip_and_alphabet(value: str) -> None:
    encoded = xtext_encode(value)
    assert xtext_decode(encoded) == value
    assert XTEXT.fullmatch(encoded)


def test_xtext_refuses_non_ascii_and_bad_escapes() -> None:
    with pytest.raises(ValueError, match="US-ASCII"):
        xtext_encode("é")
    for bad in ("a+", "a+G1", "+2"):
        with pytest.raises(ValueError, match="hexadecimal"):
            xtext_decode(bad)


# -- server replies ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "status"), [
    ("5.1.1 <x@y>: Recipient address rejected", "5.1.1"),
    ("2.0.0 Ok: queued as ABC", "2.0.0"),
    ("4.7.11 encryption required", "4.7.11"),
    ("Ok", None),
    ("5.1.1.1 not a status", None),
    ("3.1.1 not a class", None),
])
def test_enhanced_status(text: str, status: str | None) -> None:
    assert enhanced_status(text) == status


def test_server_messages_lose_addresses_numbers_and_control_characters() -> None:
    text = (f"5.1.1 <{PATIENT}>: Recipient address rejected:\nUser unknown "
            f"(INS 2750123456789 12) \x00\udcff")
    cleaned = sanitise_server_message(text)
    assert PATIENT not in cleaned
    assert "146026322000196" not in cleaned
    assert "2750123456789" not in cleaned
    assert cleaned == ("5.1.1 <address>: Recipient address rejected: User unknown (INS <number> "
                       "12)")
    cleaned.encode("utf-8")  # no surrogate left from a non-UTF-8 reply


def test_server_messages_are_truncated() -> None:
    cleaned = sanitise_server_message("5.7.1 " + "blocked " * 100)
    assert len(cleaned) == 160
    assert cleaned.endswith("…")


# -- value objects -------------------------------------------------------------------------------


def envelope(**overrides: object) -> OutgoingEnvelope:
    values: dict[str, object] = {
        "mail_from": "pfi@chu.mssante.fr", "rcpt_to": PATIENT, "message": b"Subject: x\r\n\r\nx",
        "message_id": "<1@chu.mssante.fr>", "envid": "outbox-1"}
    values.update(overrides)
    return OutgoingEnvelope(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "value"), [
    ("rcpt_to", PATIENT + "\r\nRCPT TO:<evil@x>"),
    ("rcpt_to", f"<{PATIENT}>"),
    ("rcpt_to", "dr.hoda@médecin.mssante.fr"),
    ("mail_from", "no-at-sign"),
    ("orcpt", "a b@c"),
    ("message", b""),
    ("message_id", "<with space@x>"),
    ("envid", "x" * 101),
    ("envid", "+" * 34),  # 102 once encoded
])
def test_envelope_refuses_unsafe_values_without_echoing_them(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field) as caught:
        envelope(**{field: value})
    assert PATIENT not in str(caught.value)


def test_envelope_orcpt_defaults_to_the_recipient() -> None:
    assert envelope().original_recipient == PATIENT
    assert envelope(orcpt="other@chu.mssante.fr").original_recipient == "other@chu.mssante.fr"
    assert b"Subject" not in repr(envelope()).encode()


@pytest.mark.parametrize(("overrides", "key"), [
    ({"sasl": SaslMechanism.PLAIN, "username": "u"}, "smtp.password"),
    ({"sasl": SaslMechanism.XOAUTH2, "username": "u"}, "smtp.oauth_token"),
    ({"sasl": SaslMechanism.NONE, "password": "p"}, "smtp.password"),
    ({"sasl": SaslMechanism.EXTERNAL, "oauth_token": "t"}, "smtp.oauth_token"),
    ({"port": 0}, "smtp.port"),
    ({"data_timeout": 0}, "smtp.data_timeout"),
    ({"local_hostname": "two words"}, "smtp.local_hostname"),
])
def test_endpoint_checks(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SmtpEndpoint(host="smtp.operator.test", **overrides)  # type: ignore[arg-type]
    assert caught.value.key == key


def test_endpoint_repr_hides_secrets() -> None:
    endpoint = SmtpEndpoint(host="h", sasl=SaslMechanism.PLAIN, username="u", password="s3cr3t")
    assert "s3cr3t" not in repr(endpoint)


def result(outcome: Outcome) -> SendResult:
    return SendResult(outcome, Stage.RCPT, "<1@x>", 450, "4.2.1",
                      SmtpErrorCode.MAILBOX_BUSY, "", "RCPT refused with 450",
                      dsn_requested=False)


def test_outcomes_map_onto_the_connector_errors() -> None:
    result(Outcome.SENT).raise_for_outcome()
    with pytest.raises(TransientDeliveryError) as transient:
        result(Outcome.TRANSIENT).raise_for_outcome()
    assert isinstance(transient.value, SmtpTransientError)
    assert transient.value.result.smtp_code == 450
    for outcome in (Outcome.PERMANENT, Outcome.CONFIG_ERROR):
        with pytest.raises(PermanentDeliveryError) as permanent:
            result(outcome).raise_for_outcome()
        assert isinstance(permanent.value, SmtpPermanentError)
    assert result(Outcome.TRANSIENT).retryable
    assert not result(Outcome.PERMANENT).retryable
    assert result(Outcome.TRANSIENT).error_label == SmtpErrorCode.MAILBOX_BUSY.label


# -- wire form: what DATA can send without aiosmtplib's normalisation ----------------------------


@pytest.mark.parametrize(("message", "wire"), [
    (b"Subject: x\r\n\r\nbody\r\n", True),
    (b"Subject: x\r\n\r\nbody\r\n..\r\n", False),  # a line starting with a period
    (b".Subject: x\r\n\r\nbody\r\n", False),  # the first line too
    (b"Subject: x\n\nbody\n", False),  # bare LF
    (b"Subject: x\r\n\r\nbo\rdy\r\n", False),  # bare CR
    (b"Subject: x\r\n\r\nbody", False),  # no final CRLF
    (b"Subject: x\r\n\r\nline with a . inside\r\n", True),
])
def test_wire_form_is_what_aiosmtplib_would_send_unchanged(message: bytes, wire: bool) -> None:
    assert is_wire_form(message) is wire
    normalised = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message))
    if wire:  # the fast path sends exactly what SMTP.data would have sent
        assert normalised == message


@settings(max_examples=300)
@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b" ", b"=0D"]), max_size=30))
def test_wire_form_never_needs_normalising(parts: list[bytes]) -> None:
    message = b"".join(parts)
    if is_wire_form(message):
        assert PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) == message
