"""Acknowledgement builder (CI-SIS volet §ACK): pure, from the original MSH and an outcome.

- MSH-3/4 and MSH-5/6 swapped, MSH-9 `ACK^<event>^ACK`, a new MSH-10, MSH-11/12/17/18 echoed,
  no MSH-21 (change-log 2.1.1).
- Original mode (MSH-15/16 empty): AA / AE / AR.
- Enhanced mode (MSH-15 or MSH-16 valued): commit ACK CA / CE / CR, sent or not per MSH-15
  (AL always, NE never, ER on error only, SU on success only; empty counts as AL); when no
  commit ACK is due but MSH-16 asks for an application ACK, AA / AE / AR (`choose_ack_code`).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from connector.errors import ErrorLocation, MessageError
from connector.hl7.codes import (
    AckCode,
    AcknowledgmentCondition,
    ApplicationError,
    ErrorCondition,
    Severity,
)
from connector.hl7.header import MessageHeader
from connector.hl7.message import DEFAULT_DELIMITERS, Delimiters, escape


class Outcome(Enum):
    """What intake decided about a message."""

    ACCEPTED = "accepted"  # durably stored, responsibility taken
    ERROR = "error"  # the message is wrong: never retry it as is
    REJECTED = "rejected"  # transient: store down, shutting down; the sender retries


_ORIGINAL = {
    Outcome.ACCEPTED: AckCode.APPLICATION_ACCEPT,
    Outcome.ERROR: AckCode.APPLICATION_ERROR,
    Outcome.REJECTED: AckCode.APPLICATION_REJECT,
}
_COMMIT = {
    Outcome.ACCEPTED: AckCode.COMMIT_ACCEPT,
    Outcome.ERROR: AckCode.COMMIT_ERROR,
    Outcome.REJECTED: AckCode.COMMIT_REJECT,
}


def choose_ack_code(header: MessageHeader | None, outcome: Outcome, *,
                    application_ack: bool = False) -> AckCode | None:
    """The MSA-1 to answer on the connection, or None when no acknowledgment is due.

    Enhanced mode: the commit ACK (CA/CE/CR) when MSH-15 asks for one for this outcome; when
    it does not but MSH-16 asks for an application ACK, that one (AA/AE/AR), the only
    acknowledgment due: "the original acknowledgment protocol is equivalent to the enhanced
    protocol with MSH-15 = NE and MSH-16 = AL" (HL7 v2 chapter 2), so a sender sending NE/AL
    gets its answer on the connection as in original mode. `application_ack`: AA/AE/AR
    whatever MSH-15/16 say (`EnhancedAck.APPLICATION`)."""
    if header is None or not header.enhanced_mode or application_ack:
        return _ORIGINAL[outcome]
    commit = _COMMIT[outcome]
    if _due(header.accept_ack_condition, commit.is_positive):
        return commit
    if _due(header.application_ack_condition, commit.is_positive):
        return _ORIGINAL[outcome]
    return None


def _due(condition: AcknowledgmentCondition, positive: bool) -> bool:
    """Whether an acknowledgment under `condition` (HL7 table 0155) is sent for an outcome."""
    if condition is AcknowledgmentCondition.NEVER:
        return False
    if condition is AcknowledgmentCondition.ERROR_ONLY:
        return not positive
    if condition is AcknowledgmentCondition.SUCCESS_ONLY:
        return positive
    return True


@dataclass(frozen=True, slots=True)
class AckError:
    """One ERR segment. `detail` goes to ERR-8 and must hold no patient data."""

    condition: ErrorCondition
    severity: Severity = Severity.ERROR
    location: ErrorLocation | None = None
    application_error: ApplicationError | None = None
    detail: str = ""

    @classmethod
    def from_exception(cls, exc: MessageError) -> AckError:
        return cls(exc.condition, exc.severity, exc.location, exc.application_error, exc.detail)


class ControlIdGenerator:
    """New MSH-10 values: unique per process and, with a random tag, across replicas.

    At most 20 characters (ST length of MSH-10 in v2.5).
    """

    _ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

    def __init__(self, prefix: str | None = None) -> None:
        if prefix is None:
            seconds = int(time.time())
            digits = []
            while seconds:
                seconds, rem = divmod(seconds, 36)
                digits.append(self._ALPHABET[rem])
            # 6 time digits + 4 random ones (36**4 = 1.7 M): replicas started in the same second
            # collide once in ~1.7 M pairs (2 random digits gave once in 1296). Counters keep
            # 10 digits before the 20-character cut.
            rnd = int.from_bytes(os.urandom(4), "big") % 36**4
            tag = "".join(self._ALPHABET[rnd // 36**i % 36] for i in range(4))
            prefix = "".join(reversed(digits)) + tag
        self._prefix = prefix[:10]
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            n = next(self._counter)
        return f"{self._prefix}{n}"[:20]


def hl7_timestamp(moment: datetime | None = None) -> str:
    """`moment` (default: now) as an HL7 TS in local time with its offset, to the second."""
    if moment is None:
        return _now()
    try:
        return moment.astimezone().strftime(_TS_FORMAT)
    except (OverflowError, ValueError, OSError):  # at the edge of the calendar (a mail's Date:
        # of 9999-12-31 -1200): written with its own offset rather than converted
        return moment.strftime(_TS_FORMAT)


_TS_FORMAT = "%Y%m%d%H%M%S%z"


class _SecondClock:
    """Now as an HL7 TS, formatted once a second rather than once an ACK."""

    def __init__(self) -> None:
        self._last = (-1, "")  # one tuple, replaced whole: threads never see half an update

    def __call__(self) -> str:
        second = int(time.time())
        last = self._last
        if last[0] != second:
            last = (second, datetime.fromtimestamp(second).astimezone().strftime(_TS_FORMAT))
            self._last = last
        return last[1]


_now = _SecondClock()


@dataclass(frozen=True, slots=True)
class AckIdentity:
    """Who we are, for MSH-3/4 when the original left MSH-5/6 empty."""

    application: str = "MSSANTE-CONNECTOR"
    facility: str = ""


def build_ack(
    header: MessageHeader | None,
    code: AckCode,
    *,
    control_id: str,
    errors: Sequence[AckError] = (),
    identity: AckIdentity = AckIdentity(),
    charset_msh18: str | None = None,
    timestamp: str | None = None,
) -> str:
    """The ACK as ER7 text, segments separated by CR. `header` None: the MSH was unreadable."""
    d: Delimiters = header.delimiters if header is not None else DEFAULT_DELIMITERS
    f = d.field
    if header is not None:
        event = header.message_type.event
        sending_app = header.receiving_application or escape(identity.application, d)
        sending_fac = header.receiving_facility or escape(identity.facility, d)
        receiving_app, receiving_fac = header.sending_application, header.sending_facility
        processing, version = header.processing_id or "P", _raw_version(header)
        # MSH-18 names the character set the ACK is written in (`charset_msh18`, from the codec
        # the caller encodes it with; "" for one table 0211 does not name): the original's only
        # when the caller does not say, since a forced charset or an unsupported MSH-18 make
        # the two differ.
        country = header.country or "FRA"
        msh18 = header.charset if charset_msh18 is None else charset_msh18
        acked_id = escape(header.control_id, d)
    else:
        event, receiving_app, receiving_fac = "", "", ""
        sending_app, sending_fac = escape(identity.application, d), escape(identity.facility, d)
        processing, version, country, acked_id = "P", "2.5", "FRA", ""
        msh18 = charset_msh18 or ""
    msg_type = d.component.join(["ACK", event, "ACK"]) if event else "ACK"
    msh = f.join([
        "MSH", d.encoding_characters, sending_app, sending_fac, receiving_app, receiving_fac,
        timestamp or hl7_timestamp(), "", msg_type, control_id, escape(processing, d), version,
        "", "", "", "", escape(country, d), escape(msh18, d),
    ])
    segments = [msh, f.join(["MSA", code.value, acked_id])]
    segments.extend(_err_segment(e, d) for e in errors)
    return "\r".join(segments) + "\r"


def _raw_version(header: MessageHeader) -> str:
    return header.version_raw or escape("2.5", header.delimiters)


def _err_segment(error: AckError, d: Delimiters) -> str:
    c = d.component
    location = error.location.to_hl7(c) if error.location else ""
    err3 = c.join([error.condition.code, error.condition.label, "messageErrorCondition"])
    err5 = ""
    if error.application_error is not None:
        app = error.application_error
        err5 = c.join([app.code, escape(app.label, d), "applicationErrorCode"])
    fields = ["ERR", "", location, err3, error.severity.value, err5, "", "",
              escape(error.detail, d)]
    while fields and not fields[-1]:
        fields.pop()
    return d.field.join(fields)
