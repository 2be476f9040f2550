"""Where the delivery worker hands mails: the MSSanté operator (SMTP) or a local Maildir (dry run).

A transport opens one session per batch of leased rows; SMTP reuses its connection for the
batch. `send` never raises for a delivery failure: it returns a `SendResult` whose outcome the
worker turns into an outbox transition.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from connector.delivery.job import MailJob, MalformedJob
from connector.delivery.smtp import (
    Outcome,
    OutgoingEnvelope,
    SendResult,
    SmtpEndpoint,
    SmtpSubmitter,
    Stage,
)
from connector.delivery.tls import ClientTls
from connector.hl7.codes import SmtpErrorCode
from connector.store import OutboxKind, OutboxLease


class TransportSession(Protocol):
    async def send(self, lease: OutboxLease) -> SendResult: ...

    async def close(self) -> None: ...


class Transport(Protocol):
    @property
    def name(self) -> str:
        """`smtp`, `maildir` or `hl7`: for metrics, logs and the audit trail."""
        ...

    @property
    def kind(self) -> OutboxKind:
        """The outbox rows it carries."""
        ...

    @property
    def dead_on_refusal(self) -> bool:
        """A permanent refusal ends the row `dead` (True) rather than `failed`."""
        ...

    @property
    def actor(self) -> str:
        """Who acts, for the audit trail: this process and where it sends (no secret)."""
        ...

    def session(self) -> TransportSession: ...


def _process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def refused_envelope(message_id: str, detail: str) -> SendResult:
    """A job whose envelope cannot be sent at all (an address SMTP cannot carry)."""
    return SendResult(Outcome.PERMANENT, Stage.MAIL, message_id, None, None,
                      SmtpErrorCode.MAILBOX_NAME_INVALID, "", detail, dsn_requested=False)


def _job(lease: OutboxLease) -> MailJob | SendResult:
    """The lease's mail job, or the permanent result of a payload that is not one."""
    try:
        return MailJob.decode(lease.payload)
    except MalformedJob as exc:
        return SendResult(Outcome.PERMANENT, Stage.MAIL, lease.message_id or "", None, None,
                          SmtpErrorCode.TRANSACTION_FAILED, "", str(exc), dsn_requested=False)


# -- SMTP ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmtpTransport:
    endpoint: SmtpEndpoint
    tls: ClientTls

    @property
    def name(self) -> str:
        return "smtp"

    kind = OutboxKind.SMTP
    dead_on_refusal = False

    @property
    def actor(self) -> str:
        return f"{_process_name()} smtp://{self.endpoint.host}:{self.endpoint.port}"

    def session(self) -> TransportSession:
        return _SmtpSession(SmtpSubmitter(self.endpoint, self.tls))


class _SmtpSession:
    def __init__(self, submitter: SmtpSubmitter) -> None:
        self._submitter = submitter

    async def send(self, lease: OutboxLease) -> SendResult:
        job = _job(lease)
        if isinstance(job, SendResult):
            return job
        message_id = lease.message_id or ""
        try:
            envelope = OutgoingEnvelope(job.mail_from, job.rcpt_to, job.message,
                                        message_id=message_id, envid=lease.envid or str(lease.id),
                                        request_dsn=job.request_dsn,
                                        wire_form=job.wire_form)
        except ValueError as exc:  # names the field, never the address
            return refused_envelope(message_id, f"cannot be submitted: {exc}")
        return await self._submitter.send(envelope)

    async def close(self) -> None:
        await self._submitter.close()


# -- Maildir (dry run) -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaildirTransport:
    """Writes each mail as the operator would receive it into `root` (a Maildir: tmp/, new/,
    cur/), durably (fsync of the file and of new/) before reporting it sent. Files are private
    to the service account: they hold health data."""

    root: Path

    @property
    def name(self) -> str:
        return "maildir"

    kind = OutboxKind.SMTP
    dead_on_refusal = False

    @property
    def actor(self) -> str:
        return f"{_process_name()} maildir"

    def session(self) -> TransportSession:
        return _MaildirSession(self.root)


class _MaildirSession:
    _counter = 0

    def __init__(self, root: Path) -> None:
        self._root = root

    async def send(self, lease: OutboxLease) -> SendResult:
        job = _job(lease)
        if isinstance(job, SendResult):
            return job
        message_id = lease.message_id or ""
        try:
            name = await asyncio.to_thread(self._deliver, job.message)
        except OSError as exc:
            return SendResult(Outcome.TRANSIENT, Stage.DATA, message_id, None, None,
                              SmtpErrorCode.INSUFFICIENT_DISK, "",
                              f"cannot write to the Maildir {self._root}: {exc.strerror}",
                              dsn_requested=False)
        return SendResult(Outcome.SENT, Stage.DONE, message_id, None, None, None, "",
                          f"written to the Maildir as new/{name} (dry run: not sent)",
                          dsn_requested=False)

    async def close(self) -> None:
        return None

    def _deliver(self, message: bytes) -> str:
        for sub in ("tmp", "new", "cur"):
            (self._root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        _MaildirSession._counter += 1
        name = (f"{time.time_ns() // 1000}.P{os.getpid()}Q{_MaildirSession._counter}."
                f"{socket.gethostname()}")
        tmp = self._root / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(message)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self._root / "new" / name)
        directory = os.open(self._root / "new", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return name
