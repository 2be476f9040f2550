"""What an SMTP outbox row carries: the envelope and the message, as one sealed payload.

The envelope holds the recipient's address (a patient's is their INS), so it travels inside the
sealed payload, never in a clear column. Layout, version 1:

    b"MSSJOB/1\\n" + JSON object (one line, ASCII) + b"\\n" + the RFC 5322 message

The JSON object has `from`, `to` (addr-specs), `dsn` (ACK_RECEPTION asked: request a DSN),
`mdn` (ACK_LECTURE_MSS asked: the message carries Disposition-Notification-To) and `wire` (the
message is in wire form, `is_wire_form`: checked when the mail was built, off the delivery
worker's event loop; absent in rows written before it, which are checked at sending).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final

from connector.errors import PermanentDeliveryError

MAGIC: Final = b"MSSJOB/1\n"


def ends_data_only_at_its_end(message: bytes) -> bool:
    """No line of `message` starts with a period and it ends with CRLF: written after SMTP DATA
    as it is, nothing in it can end the data early (SMTP smuggling's lever)."""
    return message.endswith(b"\r\n") and not message.startswith(b".") and b"\n." not in message


def is_wire_form(message: bytes) -> bool:
    """True when `message` can go after SMTP DATA as it is: CRLF line ends only, the last
    included, and no line starting with a period (nothing to dot-stuff). What `render_mail`
    writes is, unless the text part has a line starting with a period."""
    crlf = message.count(b"\r\n")
    return (message.count(b"\n") == crlf and message.count(b"\r") == crlf
            and ends_data_only_at_its_end(message))


class MalformedJob(PermanentDeliveryError):
    """An outbox payload that is not a mail job: a bug or a foreign row, never retried."""


@dataclass(frozen=True, slots=True, repr=False)
class MailJob:
    mail_from: str
    rcpt_to: str
    message: bytes = field(repr=False)
    request_dsn: bool = False
    request_mdn: bool = False
    wire_form: bool = False  # `is_wire_form(message)`, known when the job was made

    @classmethod
    def of(cls, mail_from: str, rcpt_to: str, message: bytes, *, request_dsn: bool = False,
           request_mdn: bool = False) -> MailJob:
        """A job for a new message, its wire form checked now."""
        return cls(mail_from, rcpt_to, message, request_dsn, request_mdn, is_wire_form(message))

    def __repr__(self) -> str:  # no address, no content
        return f"MailJob(size={len(self.message)}, dsn={self.request_dsn}, mdn={self.request_mdn})"

    def encode(self) -> bytes:
        header = json.dumps({"from": self.mail_from, "to": self.rcpt_to,
                             "dsn": self.request_dsn, "mdn": self.request_mdn,
                             "wire": self.wire_form},
                            ensure_ascii=True, separators=(",", ":"))
        return MAGIC + header.encode("ascii") + b"\n" + self.message

    @classmethod
    def decode(cls, payload: bytes) -> MailJob:
        if not payload.startswith(MAGIC):
            raise MalformedJob("outbox payload is not a mail job (MSSJOB/1)")
        header, sep, message = payload[len(MAGIC):].partition(b"\n")
        if not sep or not message:
            raise MalformedJob("mail job without a message")
        try:
            fields = json.loads(header)
        except ValueError as exc:
            raise MalformedJob("mail job envelope is not JSON") from exc
        if not isinstance(fields, dict):
            raise MalformedJob("mail job envelope is not an object")
        sender, recipient = fields.get("from"), fields.get("to")
        dsn, mdn = fields.get("dsn", False), fields.get("mdn", False)
        wire = fields.get("wire", False)
        if not isinstance(sender, str) or not isinstance(recipient, str):
            raise MalformedJob("mail job envelope without from/to")
        if not all(isinstance(flag, bool) for flag in (dsn, mdn, wire)):
            raise MalformedJob("mail job envelope flags are not booleans")
        return cls(sender, recipient, message, dsn, mdn, wire)
