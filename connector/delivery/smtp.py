"""SMTP submission of prepared e-mails to the tenant's MSSanté operator (aiosmtplib's only owner).

`SmtpSubmitter` opens one session (STARTTLS on 587, or implicit TLS; the client certificate of
the application mailbox; optional SASL) and sends envelopes one SMTP transaction each, reusing the
session. Every envelope gets a `SendResult`; nothing raises for a delivery failure.

Outcomes:

- SENT: 250 after the data. The operator took custody; delivery is only known from a DSN.
- TRANSIENT (retry later): 4xx replies, time-outs, connection refused or lost.
- PERMANENT (do not retry the message): 5xx at RCPT or DATA; 5xx at MAIL about the message
  (its size, its parameters: `refuses_the_sender`); a message over the server's SIZE.
- CONFIG_ERROR (do not retry anything before an operator acts; the message itself is not at
  fault): TLS handshake or certificate failures, STARTTLS not offered (nothing is ever sent in
  clear), SASL mechanism not offered or refused, 5xx while opening the session, "authentication
  required" at any stage; a 5xx at MAIL that refuses the sender (the tenant's mailbox, the same
  on every mail). The result's `detail` says which certificate, CA bundle, host or
  mechanism is involved.

Each failure also carries a SMTPERRORCODE (CI-SIS table, ERR-5 of ZAM^Z02): see
`smtp_error_code`. Connection-level failures without a reply: refused 111, other connect
failures 101, time-outs 420, lost connection 442, TLS/configuration 101.

Session rules:

- Once a session cannot be opened, the remaining envelopes of this submitter get the same result
  with `attempted=False`: no reconnection storm. A new submitter tries again (the worker's
  back-off decides when).
- If a reused session turns out to be dead at MAIL (nothing of the envelope accepted yet), the
  envelope is tried once more on a new session. A session the server closed (421, idle time-out)
  is reopened for the next envelope.
- A TLS 1.3 server that refuses our client certificate may just close the connection after the
  handshake, without an alert reaching us. A connection closed during or right after the
  handshake is therefore confirmed once on a new connection; if it happens again it is reported
  as a certificate problem (CONFIG_ERROR).

DSN (RFC 3461) is requested only when the envelope asks for it (ACK_RECEPTION = Y) and the server
advertises DSN: `RET=HDRS ENVID=<xtext>` on MAIL, `NOTIFY=SUCCESS,FAILURE,DELAY
ORCPT=rfc822;<xtext>` on RCPT. Logs carry the Message-ID, codes and enhanced status, never an
address, a subject, a body or the server's free text.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import re
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Final

import aiosmtplib
import structlog

from connector.delivery.job import ends_data_only_at_its_end, is_wire_form
from connector.delivery.tls import ClientTls
from connector.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from connector.hl7.codes import SmtpErrorCode

log = structlog.get_logger(__name__)

SERVER_MESSAGE_MAX: Final = 160
ENVID_MAX: Final = 100  # RFC 3461 §4.4, encoded length (ORCPT's 500 cannot be reached: the
# addresses are at most 254 characters, 389 once xtext-encoded with "rfc822;")
_SMTP_ERRORS: Final = (aiosmtplib.SMTPException, OSError)  # OSError: ssl.SSLError, TimeoutError


# -- settings and values -------------------------------------------------------------------------


class TlsMode(StrEnum):
    STARTTLS = "starttls"  # port 587 (RFC 3207), the MSSanté default
    IMPLICIT_TLS = "implicit-tls"  # port 465 (RFC 8314), when the operator offers it


class SaslMechanism(StrEnum):
    NONE = "none"  # the client certificate alone identifies the application mailbox
    PLAIN = "plain"
    EXTERNAL = "external"  # RFC 4422: the identity is the TLS client certificate
    XOAUTH2 = "xoauth2"  # PSC access token (personal/organisational mailboxes)


@dataclass(frozen=True, slots=True)
class SmtpEndpoint:
    """Where and how to submit. Secrets come as values: reading them is the settings' job."""

    host: str
    port: int = 587
    mode: TlsMode = TlsMode.STARTTLS
    connect_timeout: float = 30.0  # TCP connect, TLS handshake, greeting
    command_timeout: float = 60.0  # each command's reply
    data_timeout: float = 600.0  # the reply to the end of data (RFC 5321 §4.5.3.2.6)
    local_hostname: str | None = None  # EHLO name; None: this host's FQDN
    sasl: SaslMechanism = SaslMechanism.NONE
    username: str | None = None  # PLAIN and XOAUTH2 user; EXTERNAL: optional authorisation id
    password: str | None = field(default=None, repr=False)
    oauth_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("smtp.host", "is required")
        if not 0 < self.port < 65536:
            raise ConfigError("smtp.port", "must be between 1 and 65535")
        for key in ("connect_timeout", "command_timeout", "data_timeout"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"smtp.{key}", "must be positive")
        if self.local_hostname is not None and not _PRINTABLE.fullmatch(self.local_hostname):
            raise ConfigError("smtp.local_hostname", "must be a host name (no space)")
        self._check_sasl()

    def _check_sasl(self) -> None:
        needs = {SaslMechanism.PLAIN: ("username", "password"),
                 SaslMechanism.XOAUTH2: ("username", "oauth_token")}.get(self.sasl, ())
        for key in needs:
            if not getattr(self, key):
                raise ConfigError(f"smtp.{key}", f"is required for SASL {self.sasl.name}")
        for key in ("password", "oauth_token"):
            if key not in needs and getattr(self, key) is not None:
                raise ConfigError(f"smtp.{key}", f"is not used with SASL {self.sasl.name}")


_ADDRESS: Final = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,189}")
_PRINTABLE: Final = re.compile(r"[!-~]+")


@dataclass(frozen=True, slots=True)
class OutgoingEnvelope:
    """One SMTP transaction: one recipient, one prepared message (CRLF or LF line ends)."""

    mail_from: str
    rcpt_to: str
    message: bytes = field(repr=False)
    message_id: str
    envid: str  # DSN ENVID (the outbox id): comes back as Original-Envelope-Id
    request_dsn: bool = False  # ACK_RECEPTION = Y
    orcpt: str | None = None  # DSN ORCPT; defaults to rcpt_to
    wire_form: bool = False  # `message` is known to be in wire form (`is_wire_form`)

    def __post_init__(self) -> None:
        # Messages name the field, never the value: a recipient may be a patient's address.
        for name in ("mail_from", "rcpt_to") + (("orcpt",) if self.orcpt is not None else ()):
            if not _ADDRESS.fullmatch(getattr(self, name)):
                raise ValueError(f"{name}: not a plain US-ASCII mailbox address")
        if not self.message:
            raise ValueError("message: empty")
        if not _PRINTABLE.fullmatch(self.message_id):
            raise ValueError("message_id: must be printable US-ASCII without spaces")
        if not _PRINTABLE.fullmatch(self.envid) or len(xtext_encode(self.envid)) > ENVID_MAX:
            raise ValueError(f"envid: printable US-ASCII, at most {ENVID_MAX} once xtext-encoded")

    @property
    def original_recipient(self) -> str:
        return self.orcpt if self.orcpt is not None else self.rcpt_to


# -- outcomes ------------------------------------------------------------------------------------


class Outcome(StrEnum):
    SENT = "sent"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    CONFIG_ERROR = "config_error"


class Stage(StrEnum):
    CONNECT = "connect"  # TCP connection and greeting
    EHLO = "ehlo"
    TLS = "tls"  # STARTTLS or implicit TLS, up to the first reply over TLS
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    DONE = "done"


SESSION_STAGES: Final = frozenset({Stage.CONNECT, Stage.EHLO, Stage.TLS, Stage.AUTH})



# Reply codes outside the table, by enhanced status (RFC 3463) when the server gives one.
_BY_ENHANCED_STATUS: Final = {
    "4.2.2": SmtpErrorCode.MAILBOX_FULL,
    "4.3.1": SmtpErrorCode.INSUFFICIENT_DISK,
    "4.4.1": SmtpErrorCode.NO_ANSWER,
    "4.4.2": SmtpErrorCode.CONNECTION_DROPPED,
    "5.1.1": SmtpErrorCode.MAILBOX_UNAVAILABLE,
    "5.1.2": SmtpErrorCode.DNS_ERROR,
    "5.1.3": SmtpErrorCode.MAILBOX_NAME_INVALID,
    "5.2.2": SmtpErrorCode.STORAGE_EXCEEDED,
    "5.2.3": SmtpErrorCode.SIZE_EXCEEDED,
    "5.3.4": SmtpErrorCode.SIZE_EXCEEDED,
    "5.7.1": SmtpErrorCode.REJECTED,
}
_AUTHENTICATION_CODES: Final = frozenset({530, 534, 535, 538})
_AUTHENTICATION_STATUSES: Final = frozenset({"5.7.8", "5.7.9", "5.7.11"})


def smtp_error_code(code: int, enhanced_status: str | None = None) -> SmtpErrorCode:
    """SMTPERRORCODE of a failure reply: the reply code when the table has it; otherwise
    authentication failures (534, 535, 538, 5.7.8...) give 530, then the enhanced status decides
    (5.1.1 → 550, 5.3.4 → 523...), then the class: any other 4xx → 451 (erreur de traitement),
    any other 5xx → 554 (échec permanent); a reply that is neither (malformed) → 451."""
    known = SmtpErrorCode.from_code(str(code)) if code >= 400 else None
    if known is not None:
        return known
    if code in _AUTHENTICATION_CODES or enhanced_status in _AUTHENTICATION_STATUSES:
        return SmtpErrorCode.AUTHENTICATION_REQUIRED
    if enhanced_status in _BY_ENHANCED_STATUS:
        return _BY_ENHANCED_STATUS[enhanced_status]
    if 500 <= code < 600:
        return SmtpErrorCode.TRANSACTION_FAILED
    return SmtpErrorCode.PROCESSING_ERROR


class FailureKind(StrEnum):
    REPLY = "reply"  # the server answered with a failure code
    REFUSED = "refused"  # TCP connection refused
    UNREACHABLE = "unreachable"  # other connection failures (name resolution, routing)
    TIMEOUT = "timeout"
    DISCONNECTED = "disconnected"
    TLS = "tls"  # handshake or certificate verification failed
    NOT_OFFERED = "not_offered"  # STARTTLS or the SASL mechanism is not advertised
    TOO_LARGE = "too_large"  # over the server's SIZE, refused locally
    PROTOCOL = "protocol"  # a malformed or unexpected reply


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    code: int | None = None  # the reply code, for REPLY
    text: str = ""  # the server's reply text (REPLY) or the TLS library's reason (TLS)


@dataclass(frozen=True, slots=True)
class Classification:
    outcome: Outcome
    error_code: SmtpErrorCode


_BY_KIND: Final = {
    FailureKind.REFUSED: Classification(Outcome.TRANSIENT, SmtpErrorCode.CONNECTION_REFUSED),
    FailureKind.UNREACHABLE: Classification(Outcome.TRANSIENT, SmtpErrorCode.CANNOT_CONNECT),
    FailureKind.TIMEOUT: Classification(Outcome.TRANSIENT, SmtpErrorCode.TIMEOUT),
    FailureKind.TLS: Classification(Outcome.CONFIG_ERROR, SmtpErrorCode.CANNOT_CONNECT),
    FailureKind.TOO_LARGE: Classification(Outcome.PERMANENT, SmtpErrorCode.SIZE_EXCEEDED),
    FailureKind.PROTOCOL: Classification(Outcome.TRANSIENT, SmtpErrorCode.PROCESSING_ERROR),
}


def classify(stage: Stage, failure: Failure) -> Classification:
    """Outcome and SMTPERRORCODE of a failure at a stage (the table in the module docstring)."""
    if failure.kind is FailureKind.REPLY:
        if _refuses_our_certificate(stage, failure):
            return Classification(Outcome.CONFIG_ERROR, SmtpErrorCode.CANNOT_CONNECT)
        status = enhanced_status(failure.text)
        if _refuses_the_sender_at_rcpt(stage, failure, status):
            return Classification(Outcome.CONFIG_ERROR,
                                  smtp_error_code(failure.code or 550, status))
        return _classify_reply(stage, failure.code if failure.code is not None else -1, status)
    if failure.kind is FailureKind.DISCONNECTED:
        if stage is Stage.TLS:  # closed during or right after the handshake: refused certificate
            return Classification(Outcome.CONFIG_ERROR, SmtpErrorCode.CANNOT_CONNECT)
        return Classification(Outcome.TRANSIENT, SmtpErrorCode.CONNECTION_DROPPED)
    if failure.kind is FailureKind.NOT_OFFERED:
        code = (SmtpErrorCode.AUTHENTICATION_REQUIRED if stage is Stage.AUTH
                else SmtpErrorCode.CANNOT_CONNECT)
        return Classification(Outcome.CONFIG_ERROR, code)
    return _BY_KIND[failure.kind]


def _refuses_our_certificate(stage: Stage, failure: Failure) -> bool:
    """A reply to the first command over TLS that names the client certificate (Postfix:
    `421 4.7.1 ... No client certificate presented`): a configuration problem, even as 4xx."""
    return stage is Stage.TLS and "CERTIFICATE" in failure.text.upper()


# At RCPT, refusals of the sender or of the relay rather than of the recipient: servers that
# check the sender late (Postfix's default smtpd_delay_reject) answer them to RCPT TO.
_SENDER_AT_RCPT: Final = ("SENDER ADDRESS REJECTED", "RELAY ACCESS DENIED")


def _refuses_the_sender_at_rcpt(stage: Stage, failure: Failure, status: str | None) -> bool:
    """A 5xx to RCPT that refuses the sender (X.1.7 / X.1.8 in `status`, or the server's words
    for it): every mail of the tenant would get it, so it is the configuration, as at MAIL."""
    if stage is not Stage.RCPT or failure.code is None or not 500 <= failure.code < 600:
        return False
    if status is not None and status.split(".")[1:] in (["1", "7"], ["1", "8"]):
        return True
    text = failure.text.upper()
    return any(words in text for words in _SENDER_AT_RCPT)


def _classify_reply(stage: Stage, code: int, status: str | None) -> Classification:
    error_code = smtp_error_code(code, status)
    if 400 <= code < 500:
        return Classification(Outcome.TRANSIENT, error_code)
    if not 500 <= code < 600:  # a success or intermediate code where a failure was seen
        return Classification(Outcome.TRANSIENT, error_code)
    if stage in SESSION_STAGES or error_code is SmtpErrorCode.AUTHENTICATION_REQUIRED:
        return Classification(Outcome.CONFIG_ERROR, error_code)
    if stage is Stage.MAIL and refuses_the_sender(code, status):
        return Classification(Outcome.CONFIG_ERROR, error_code)
    return Classification(Outcome.PERMANENT, error_code)


# At MAIL FROM, replies about the message itself: its size (SIZE=) or its parameters (DSN's
# RET and ENVID, BODY), by reply code when no enhanced status says more. RFC 3463: X.3.4
# "message too big for system", X.2.3 "message length exceeds administrative limit", X.5.x
# protocol (a parameter refused); any other status at MAIL is about the sender or the system.
_MESSAGE_CODES_AT_MAIL: Final = frozenset({501, 552, 555})


def refuses_the_sender(code: int, status: str | None) -> bool:
    """Whether a 5xx reply to MAIL FROM refuses the sender rather than the message. MAIL
    carries only the sender, the tenant's application mailbox on every mail, and this
    message's own parameters; a refusal of the sender (`553 5.7.1 sender not owned by user`,
    `550 5.1.8 bad sender's system address`) would refuse every mail of the tenant alike, so it
    is the tenant's configuration (or the operator's system: X.3.2 "not accepting network
    messages") at fault, not the message: failing each mail permanently, one after the other,
    would turn a wrong address or certificate into a queue of lost documents. About the
    message: the size (X.3.4, X.2.3 or 552) and the parameters (X.5.x, 501, 555)."""
    if status is not None:
        _, subject, detail = status.split(".")
        return not (subject == "5" or (subject, detail) in (("3", "4"), ("2", "3")))
    return code not in _MESSAGE_CODES_AT_MAIL


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to one envelope. `detail` and `server_message` hold no patient data."""

    outcome: Outcome
    stage: Stage  # where it ended (DONE when sent)
    message_id: str
    smtp_code: int | None  # the server's reply code; None when there was no reply
    enhanced_status: str | None  # RFC 3463, e.g. "5.1.1"
    error_code: SmtpErrorCode | None  # SMTPERRORCODE; None when sent
    server_message: str  # the server's text, sanitised (no addresses) and truncated
    detail: str  # what happened, for operators and the outbox's last error
    dsn_requested: bool  # DSN parameters were actually sent
    attempted: bool = True  # False: an earlier failure of this session was reused
    dsn_unsupported: bool = False  # the mail asked for a DSN; the server does not offer one

    @property
    def error_label(self) -> str | None:
        return self.error_code.label if self.error_code is not None else None

    @property
    def error_value(self) -> str | None:
        """The SMTPERRORCODE code (e.g. "510"), None when sent."""
        return self.error_code.code if self.error_code is not None else None

    @property
    def reply_code(self) -> str | None:
        """The server's reply code as text, None when there was no reply."""
        return str(self.smtp_code) if self.smtp_code is not None else None

    @property
    def answer(self) -> str:
        """What the audit trail records of the attempt: the server's text, else `detail`."""
        return self.server_message or self.detail

    @property
    def full_detail(self) -> str:
        """The outbox row's last error: `detail`, with the server's text when there is one."""
        return f"{self.detail}: {self.server_message}" if self.server_message else self.detail

    @property
    def retryable(self) -> bool:
        return self.outcome is Outcome.TRANSIENT

    def raise_for_outcome(self) -> None:
        """Nothing when SENT; SmtpTransientError (TransientDeliveryError) when TRANSIENT;
        SmtpPermanentError (PermanentDeliveryError) when PERMANENT or CONFIG_ERROR."""
        if self.outcome is Outcome.TRANSIENT:
            raise SmtpTransientError(self)
        if self.outcome is not Outcome.SENT:
            raise SmtpPermanentError(self)


class SmtpTransientError(TransientDeliveryError):
    def __init__(self, result: SendResult) -> None:
        super().__init__(f"{result.message_id}: {result.detail}")
        self.result = result


class SmtpPermanentError(PermanentDeliveryError):
    def __init__(self, result: SendResult) -> None:
        super().__init__(f"{result.message_id}: {result.detail}")
        self.result = result


# -- text helpers (pure) -------------------------------------------------------------------------


def xtext_encode(value: str) -> str:
    """RFC 3461 §4: "+" "=", controls, space and DEL become "+HH"; US-ASCII only."""
    out = []
    for char in value:
        point = ord(char)
        if point > 127:
            raise ValueError("xtext encodes US-ASCII only")
        out.append(f"+{point:02X}" if point < 33 or point == 127 or char in "+=" else char)
    return "".join(out)


_HEXCHAR: Final = re.compile(r"\+([0-9A-Fa-f]{2})")


def xtext_decode(value: str) -> str:
    """The inverse of `xtext_encode` (for Original-Envelope-Id and Original-Recipient)."""
    if "+" in _HEXCHAR.sub("", value):
        raise ValueError("xtext: '+' must start a two-digit hexadecimal escape")
    return _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), value)


_ENHANCED: Final = re.compile(r"\s*([245]\.\d{1,3}\.\d{1,3})(?=\s|$)")
_ANY_ADDRESS: Final = re.compile(r"<?[^\s<>@]+@[^\s<>]+>?")
_LONG_NUMBER: Final = re.compile(r"\d{11,}")  # NIR/INS, RPPS...
_NOT_PRINTABLE: Final = re.compile(r"[^ -~\u00a0-\u024f]+")


def enhanced_status(reply_text: str) -> str | None:
    """The RFC 3463 status that starts a reply's text, if any."""
    match = _ENHANCED.match(reply_text)
    return match.group(1) if match else None


def sanitise_server_message(reply_text: str, limit: int = SERVER_MESSAGE_MAX) -> str:
    """Addresses and long numbers masked, one line of printable text, at most `limit` chars."""
    text = _ANY_ADDRESS.sub("<address>", reply_text)
    text = _LONG_NUMBER.sub("<number>", text)
    text = " ".join(_NOT_PRINTABLE.sub(" ", text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# -- the aiosmtplib seam -------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLError) and not isinstance(
                cause, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return cause
    return None


def failure_from_exception(exc: BaseException) -> Failure:
    """Translate an aiosmtplib / socket / ssl exception into a `Failure`."""
    tls = _tls_error(exc)
    if tls is not None:
        return Failure(FailureKind.TLS, text=_describe_ssl_error(tls))
    causes = list(_chain(exc))
    if any(_refused(c) for c in causes):
        return Failure(FailureKind.REFUSED)
    if any(isinstance(c, TimeoutError) for c in causes):
        return Failure(FailureKind.TIMEOUT)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if exc.code < 0:  # aiosmtplib's code for a malformed reply
            return Failure(FailureKind.PROTOCOL)
        return Failure(FailureKind.REPLY, exc.code, exc.message)
    if any(isinstance(c, aiosmtplib.SMTPServerDisconnected | ConnectionError | ssl.SSLError)
           for c in causes):
        return Failure(FailureKind.DISCONNECTED)
    if isinstance(exc, aiosmtplib.SMTPConnectError | OSError):
        return Failure(FailureKind.UNREACHABLE)
    return Failure(FailureKind.PROTOCOL)


_ERRNO: Final = re.compile(r"\[Errno (\d+)\]")


def _refused(exc: BaseException) -> bool:
    """Connection refused, also when asyncio tried several addresses and all of them refused."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    text = str(exc)
    if not isinstance(exc, OSError) or not text.startswith("Multiple exceptions:"):
        return False
    codes = _ERRNO.findall(text)
    return bool(codes) and all(int(code) == errno.ECONNREFUSED for code in codes)


def _describe_ssl_error(exc: ssl.SSLError) -> str:
    """OpenSSL's reason; the attributes are missing on an SSLError built in Python."""
    for attribute in ("verify_message", "reason", "strerror"):
        value = getattr(exc, attribute, None)
        if value:
            return str(value)
    return type(exc).__name__


# -- the submitter -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SessionFailure:
    stage: Stage
    failure: Failure
    detail: str


class _StaleSession(Exception):
    """A reused session was found dead at MAIL: nothing of the envelope was accepted."""


class SmtpSubmitter:
    """One SMTP session to the operator, opened at the first `send` and reused.

    ```
    async with SmtpSubmitter(endpoint, client_tls) as submitter:
        results = [await submitter.send(envelope) for envelope in batch]
    ```
    Sends are serialised; results are per envelope and never raise for delivery failures.
    """

    def __init__(self, endpoint: SmtpEndpoint, tls: ClientTls) -> None:
        self._endpoint = endpoint
        self._tls = tls
        self._client: aiosmtplib.SMTP | None = None
        self._session_failure: _SessionFailure | None = None
        self._lock = asyncio.Lock()
        self._connections_opened = 0

    @property
    def connections_opened(self) -> int:
        return self._connections_opened

    async def __aenter__(self) -> SmtpSubmitter:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def send_all(self, envelopes: Iterable[OutgoingEnvelope]) -> list[SendResult]:
        return [await self.send(envelope) for envelope in envelopes]

    async def send(self, envelope: OutgoingEnvelope) -> SendResult:
        async with self._lock:
            try:
                result = await self._send(envelope, retry_stale=True)
            except asyncio.CancelledError:
                self._drop_client()  # cancelled mid-command: the session state is unknown
                raise
        _log_result(result)
        return result

    async def close(self) -> None:
        """QUIT if a session is open; a new `send` would open another."""
        async with self._lock:
            client, self._client = self._client, None
            if client is None:
                return
            with contextlib.suppress(*_SMTP_ERRORS):
                if client.is_connected:
                    await client.quit(timeout=self._endpoint.command_timeout)
            client.close()

    # -- session -------------------------------------------------------------------------------

    async def _send(self, envelope: OutgoingEnvelope, *, retry_stale: bool) -> SendResult:
        if self._session_failure is not None:
            return self._failed(envelope, self._session_failure, attempted=False)
        reused = self._client is not None and self._client.is_connected
        if not reused:
            self._drop_client()  # closed by the server (421, idle time-out) or never opened
            self._session_failure = await self._open_session()
            if self._session_failure is not None:
                return self._failed(envelope, self._session_failure)
        assert self._client is not None
        try:
            return await self._transaction(self._client, envelope)
        except _StaleSession:
            self._drop_client()
            if reused and retry_stale:
                return await self._send(envelope, retry_stale=False)
            failure = _SessionFailure(Stage.MAIL, Failure(FailureKind.DISCONNECTED),
                                      "the server closed the connection at MAIL")
            return self._failed(envelope, failure)

    async def _open_session(self) -> _SessionFailure | None:
        failure = await self._try_open_session()
        if failure is not None and failure.stage is Stage.TLS \
                and failure.failure.kind is FailureKind.DISCONNECTED:
            log.warning("smtp_session_closed_at_tls", host=self._endpoint.host,
                        port=self._endpoint.port, action="confirming once")
            failure = await self._try_open_session()  # a refused certificate fails again
        if failure is not None:
            _log_session_failure(self._endpoint, failure)
        return failure

    async def _try_open_session(self) -> _SessionFailure | None:
        endpoint = self._endpoint
        implicit = endpoint.mode is TlsMode.IMPLICIT_TLS
        client = aiosmtplib.SMTP(
            hostname=endpoint.host, port=endpoint.port, use_tls=implicit, start_tls=False,
            tls_context=self._tls.context, timeout=endpoint.command_timeout,
            local_hostname=endpoint.local_hostname)
        self._connections_opened += 1
        stage = Stage.TLS if implicit else Stage.CONNECT
        try:
            await client.connect(timeout=endpoint.connect_timeout)
            if not implicit:
                stage = Stage.EHLO
                await client.ehlo()
                if not client.supports_extension("starttls"):
                    client.close()
                    return self._session_failure_at(Stage.TLS, Failure(FailureKind.NOT_OFFERED))
                stage = Stage.TLS
                await client.starttls(server_hostname=endpoint.host,
                                      timeout=endpoint.connect_timeout)
            await client.ehlo()  # the first reply over TLS: a refused certificate shows here
            stage = Stage.AUTH
            refused = await self._authenticate(client)
        except _SMTP_ERRORS as exc:
            client.close()
            failure = failure_from_exception(exc)
            if failure.kind in (FailureKind.REFUSED, FailureKind.UNREACHABLE):
                stage = Stage.CONNECT
            return self._session_failure_at(stage, failure)
        if refused is not None:
            client.close()
            return self._session_failure_at(Stage.AUTH, refused)
        self._client = client
        _log_session_opened(endpoint, client, self._connections_opened)
        return None

    async def _authenticate(self, client: aiosmtplib.SMTP) -> Failure | None:
        """None when authenticated (or no SASL); the failure otherwise. One round trip with an
        initial response (RFC 4954); XOAUTH2 reports errors as a 334 challenge, answered empty."""
        endpoint = self._endpoint
        if endpoint.sasl is SaslMechanism.NONE:
            return None
        if endpoint.sasl.value not in client.server_auth_methods:
            return Failure(FailureKind.NOT_OFFERED,
                           text=" ".join(client.server_auth_methods).upper() or "none")
        response = await client.execute_command(b"AUTH", endpoint.sasl.name.encode("ascii"),
                                                _initial_response(endpoint))
        if response.code == 334:
            response = await client.execute_command(b"")
        if response.code != 235:
            return Failure(FailureKind.REPLY, response.code, response.message)
        return None

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- transaction ---------------------------------------------------------------------------

    async def _transaction(self, client: aiosmtplib.SMTP,
                           envelope: OutgoingEnvelope) -> SendResult:
        dsn_extension = client.supports_extension("dsn")
        dsn = envelope.request_dsn and dsn_extension
        size_limit = _size_limit(client)
        if size_limit and len(envelope.message) > size_limit:
            detail = (f"the message ({len(envelope.message)} bytes) is over the server's SIZE "
                      f"limit ({size_limit} bytes); not sent")
            return self._result(envelope, Stage.MAIL, Failure(FailureKind.TOO_LARGE), detail,
                                dsn_requested=False)
        stage = Stage.MAIL
        try:
            try:
                await client.mail(envelope.mail_from, options=_mail_options(client, envelope, dsn))
            except aiosmtplib.SMTPServerDisconnected as exc:
                raise _StaleSession from exc
            stage = Stage.RCPT
            await client.rcpt(envelope.rcpt_to,
                              options=_rcpt_options(envelope, dsn, orcpt=dsn_extension))
            stage = Stage.DATA
            reply = await send_data(client, envelope.message, self._endpoint.data_timeout,
                                    wire_form=envelope.wire_form)
        except _SMTP_ERRORS as exc:
            failure = failure_from_exception(exc)
            await self._reset_after_failure(client)
            return self._result(envelope, stage, failure, _transaction_detail(stage, failure),
                                dsn_requested=dsn)
        return SendResult(Outcome.SENT, Stage.DONE, envelope.message_id, reply.code,
                          enhanced_status(reply.message), None,
                          sanitise_server_message(reply.message), "accepted for delivery",
                          dsn_requested=dsn, dsn_unsupported=envelope.request_dsn and not dsn)

    async def _reset_after_failure(self, client: aiosmtplib.SMTP) -> None:
        if not client.is_connected:  # lost, timed out or closed after a 421
            self._drop_client()
            return
        try:
            await client.rset()
        except _SMTP_ERRORS:
            self._drop_client()

    # -- results -------------------------------------------------------------------------------

    def _result(self, envelope: OutgoingEnvelope, stage: Stage, failure: Failure, detail: str,
                *, dsn_requested: bool, attempted: bool = True) -> SendResult:
        classification = classify(stage, failure)
        reply = failure.kind is FailureKind.REPLY
        return SendResult(
            outcome=classification.outcome, stage=stage, message_id=envelope.message_id,
            smtp_code=failure.code if reply else None,
            enhanced_status=enhanced_status(failure.text) if reply else None,
            error_code=classification.error_code,
            server_message=sanitise_server_message(failure.text) if reply else "",
            detail=detail, dsn_requested=dsn_requested, attempted=attempted)

    def _failed(self, envelope: OutgoingEnvelope, failure: _SessionFailure,
                *, attempted: bool = True) -> SendResult:
        detail = failure.detail if attempted else (
            f"not attempted: opening the session failed earlier ({failure.detail})")
        return self._result(envelope, failure.stage, failure.failure, detail,
                            dsn_requested=False, attempted=attempted)

    def _session_failure_at(self, stage: Stage, failure: Failure) -> _SessionFailure:
        return _SessionFailure(stage, failure, _session_detail(self._endpoint, self._tls, stage,
                                                               failure))


# -- options -------------------------------------------------------------------------------------


def _initial_response(endpoint: SmtpEndpoint) -> bytes:
    user = endpoint.username or ""
    if endpoint.sasl is SaslMechanism.PLAIN:  # RFC 4616: authzid NUL authcid NUL password
        raw = f"\0{user}\0{endpoint.password}"
    elif endpoint.sasl is SaslMechanism.XOAUTH2:
        raw = f"user={user}\x01auth=Bearer {endpoint.oauth_token}\x01\x01"
    else:  # EXTERNAL: the optional authorisation identity; "=" stands for an empty one
        raw = user
    return base64.b64encode(raw.encode("utf-8")) or b"="


def _size_limit(client: aiosmtplib.SMTP) -> int | None:
    value = client.esmtp_extensions.get("size", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _mail_options(client: aiosmtplib.SMTP, envelope: OutgoingEnvelope, dsn: bool) -> list[str]:
    options = [f"SIZE={len(envelope.message)}"] if client.supports_extension("size") else []
    if dsn:
        options += ["RET=HDRS", f"ENVID={xtext_encode(envelope.envid)}"]
    return options


def _rcpt_options(envelope: OutgoingEnvelope, dsn: bool, *, orcpt: bool) -> list[str]:
    """NOTIFY when a delivery report is asked for; ORCPT whenever the server takes DSN
    parameters, asked or not: the recipient's MDN carries Original-Recipient from it, which the
    LPS volet's MDN expects (a read receipt may be asked without a delivery report)."""
    options = ["NOTIFY=SUCCESS,FAILURE,DELAY"] if dsn else []
    if orcpt:
        options.append(f"ORCPT=rfc822;{xtext_encode(envelope.original_recipient)}")
    return options


# -- DATA ----------------------------------------------------------------------------------------


def _writable_as_is(message: bytes, wire_form: bool) -> bool:
    # A row's wire form was checked when the mail was built; what could end the data early is
    # checked again here, whatever the row says.
    return ends_data_only_at_its_end(message) if wire_form else is_wire_form(message)


async def send_data(client: aiosmtplib.SMTP, message: bytes, timeout: float, *,
                    wire_form: bool = False) -> aiosmtplib.SMTPResponse:
    """The DATA exchange. A message in wire form (`wire_form`, or `is_wire_form` says so) is
    written as it is, which the server receives exactly as if `SMTP.data` had sent it; anything
    else goes through `SMTP.data`. `SMTP.data` normalises line ends and dot-stuffs every message
    with two regular expressions: ~1 ms of CPU on the event loop for a 100 KB mail.

    Raises what `SMTP.data` raises (`SMTPDataError` for a reply other than 354 then 250), and
    closes the client when the connection is lost or times out, as it does.
    """
    protocol = client.protocol
    if protocol is None or not _writable_as_is(message, wire_form):
        return await client.data(message, timeout=timeout)
    try:
        start = await protocol.execute_command(b"DATA", timeout=timeout)
        if start.code != aiosmtplib.SMTPStatus.start_input:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        # No await between the writes and read_response: the reply cannot arrive unclaimed.
        protocol.write(message)
        protocol.write(b".\r\n")
        reply = await protocol.read_response(timeout=timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise
    if reply.code != aiosmtplib.SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    return reply


# -- operator-facing details (no patient data: no recipient, subject or server text) -------------


def _session_detail(endpoint: SmtpEndpoint, tls: ClientTls, stage: Stage,
                    failure: Failure) -> str:
    where = f"{endpoint.host}:{endpoint.port}"
    kind = failure.kind
    if kind is FailureKind.REFUSED:
        return f"cannot connect to {where}: connection refused"
    if kind is FailureKind.UNREACHABLE:
        return f"cannot connect to {where} (name resolution or network)"
    if kind is FailureKind.TIMEOUT and stage is Stage.CONNECT:
        return (f"{where} did not answer in time (connect stage); if this port expects implicit "
                f"TLS (465), the mode should be implicit-tls")
    if kind is FailureKind.TIMEOUT:
        return f"{where} did not answer in time ({stage} stage)"
    if kind is FailureKind.TLS:
        return _tls_detail(where, tls, failure.text)
    if kind is FailureKind.DISCONNECTED and stage is Stage.TLS:
        return _rejected_certificate_detail(where, tls)
    if kind is FailureKind.DISCONNECTED:
        return f"{where} closed the connection ({stage} stage)"
    if kind is FailureKind.NOT_OFFERED and stage is Stage.TLS:
        return (f"{where} does not offer STARTTLS: nothing was sent (never in clear). Check the "
                f"host and port, or use implicit TLS if this port expects it")
    if kind is FailureKind.NOT_OFFERED:
        return (f"{where} does not offer SASL {endpoint.sasl.name} (it offers: {failure.text}); "
                f"check the endpoint's SASL setting")
    if kind is FailureKind.REPLY and _refuses_our_certificate(stage, failure):
        code = f"{failure.code} {enhanced_status(failure.text) or ''}".strip()
        return _rejected_certificate_detail(where, tls, alert=f"reply {code}")
    if kind is FailureKind.REPLY:
        return _session_reply_detail(where, endpoint, stage, failure)
    return f"unexpected reply from {where} ({stage} stage)"


def _tls_detail(where: str, tls: ClientTls, reason: str) -> str:
    upper = reason.upper()
    if _is_certificate_alert(upper):
        return _rejected_certificate_detail(where, tls, alert=reason)
    if "VERSION" in upper or "PROTOCOL" in upper:
        return (f"TLS with {where} failed ({reason}): the server does not negotiate TLS 1.2 or "
                f"newer, or the port expects the other TLS mode (STARTTLS on 587, implicit on 465)")
    if any(word in upper for word in ("HOSTNAME", "VERIFY", "CERTIFICATE", "EXPIRED", "ISSUER")):
        return (f"the server certificate of {where} failed verification ({reason}) against "
                f"{tls.trust}. Check that the bundle holds the operator's IGC-Santé chain and "
                f"that the configured host is a name in the server certificate")
    return f"TLS handshake with {where} failed ({reason}); trusted: {tls.trust}"


def _is_certificate_alert(reason: str) -> bool:
    """An alert from the server about our certificate (TLSV1_ALERT_UNKNOWN_CA,
    SSLV3_ALERT_BAD_CERTIFICATE, TLSV13_ALERT_CERTIFICATE_REQUIRED, ..._CERTIFICATE_EXPIRED...)."""
    return "UNKNOWN_CA" in reason or ("ALERT" in reason and "CERTIFICATE" in reason)


def _rejected_certificate_detail(where: str, tls: ClientTls, alert: str | None = None) -> str:
    how = (f"refused the TLS session ({alert})" if alert else
           "closed the connection during or right after the TLS handshake, twice")
    certificate = tls.client_certificate
    if certificate is None:
        return (f"{where} {how}: no client certificate is configured and the operator most "
                f"likely requires one (the application mailbox's IGC-Santé certificate)")
    return (f"{where} {how}: it most likely refused our client certificate "
            f"{certificate.describe()}. Check that it is the certificate registered for the "
            f"application mailbox, issued by a CA the operator accepts, not expired or revoked")


def _session_reply_detail(where: str, endpoint: SmtpEndpoint, stage: Stage,
                          failure: Failure) -> str:
    code = f"{failure.code} {enhanced_status(failure.text) or ''}".strip()
    if stage is Stage.AUTH:
        user = f" as '{endpoint.username}'" if endpoint.username else ""
        return f"{where} refused SASL {endpoint.sasl.name}{user} ({code}): check the credentials"
    return f"{where} refused the session at {stage} ({code})"


def _transaction_detail(stage: Stage, failure: Failure) -> str:
    command = stage.value.upper()
    if failure.kind is FailureKind.REPLY:
        code = f"{failure.code} {enhanced_status(failure.text) or ''}".strip()
        classification = classify(stage, failure)
        if classification.outcome is Outcome.CONFIG_ERROR:
            if classification.error_code is SmtpErrorCode.AUTHENTICATION_REQUIRED:
                return (f"{command} refused with {code}: the server requires authentication; "
                        f"configure SASL for this endpoint")
            return (f"{command} refused with {code}: the operator refuses this tenant's sender "
                    f"address, for every mail; check [tenants.mailbox] address (the application "
                    f"mailbox, BAL) and that the client certificate is the one issued for it")
        return f"{command} refused with {code}"
    if failure.kind is FailureKind.TIMEOUT:
        return f"no reply to {command} in time"
    if failure.kind is FailureKind.DISCONNECTED:
        after = " (the message may have been accepted)" if stage is Stage.DATA else ""
        return f"connection lost at {command}{after}"
    return f"{failure.kind} at {command}"


# -- logs (Message-ID, codes, enhanced status: never addresses or server text) -------------------


def _log_result(result: SendResult) -> None:
    fields = {"message_id": result.message_id, "outcome": result.outcome.value,
              "stage": result.stage.value, "smtp_code": result.smtp_code,
              "enhanced_status": result.enhanced_status,
              "smtperrorcode": result.error_value,
              "dsn_requested": result.dsn_requested, "attempted": result.attempted}
    if result.outcome is Outcome.SENT:
        log.info("smtp_envelope_sent", **fields)
    else:
        log.warning("smtp_envelope_failed", **fields)


def _log_session_opened(endpoint: SmtpEndpoint, client: aiosmtplib.SMTP, number: int) -> None:
    transport = client.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    log.info("smtp_session_opened", host=endpoint.host, port=endpoint.port,
             mode=endpoint.mode.value, connection=number,
             tls_version=ssl_object.version() if ssl_object is not None else None,
             dsn=client.supports_extension("dsn"), sasl=endpoint.sasl.value)


def _log_session_failure(endpoint: SmtpEndpoint, failure: _SessionFailure) -> None:
    classification = classify(failure.stage, failure.failure)
    emit = log.error if classification.outcome is Outcome.CONFIG_ERROR else log.warning
    is_reply = failure.failure.kind is FailureKind.REPLY
    emit("smtp_session_failed", host=endpoint.host, port=endpoint.port,
         stage=failure.stage.value, outcome=classification.outcome.value,
         smtp_code=failure.failure.code,
         enhanced_status=enhanced_status(failure.failure.text) if is_reply else None,
         smtperrorcode=classification.error_code.code, reason=failure.detail)
