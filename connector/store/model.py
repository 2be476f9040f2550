"""Values the store records and returns. They hold metadata in clear but no patient data: the
raw message is the only patient-bearing field, and it is sealed by the adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class InboundStatus(StrEnum):
    ACCEPTED = "accepted"  # answered AA/CA: the connector took responsibility
    REJECTED = "rejected"  # answered AE/CE: kept for operators, never processed


class EventKind(StrEnum):
    CONTROL_ID_REUSED = "control_id_reused"  # same sender + MSH-10, different content
    RETRANSMISSION = "retransmission"  # same sender + MSH-10 + content: answered again


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One received HL7 message and the answer decided for it, to be stored atomically."""

    tenant_id: str
    listener: str
    peer: str
    received_at: float  # epoch seconds
    raw: bytes = field(repr=False)
    digest: bytes  # SHA-256 of raw: the retransmission key with sender and control id
    sending_application: str | None
    sending_facility: str | None
    message_type: str | None
    control_id: str | None
    version: str | None
    status: InboundStatus
    ack_code: str
    ack: bytes = field(repr=False)  # the encoded ACK, sent again on a retransmission
    error_code: str | None = None  # ERR-3
    error_detail: str | None = None  # ERR-8 text: rules and fields, never patient data


@dataclass(frozen=True, slots=True)
class InboundReceipt:
    """What the store did: the row, and the ACK to send (the first one, on a retransmission)."""

    inbound_id: int
    ack: bytes = field(repr=False)
    retransmission_of: int | None = None
    control_id_reused: bool = False


@dataclass(frozen=True, slots=True)
class InboundSummary:
    """A row for listings: no payload."""

    id: int
    tenant_id: str
    listener: str
    peer: str
    received_at: float
    sending_application: str | None
    sending_facility: str | None
    message_type: str | None
    control_id: str | None
    version: str | None
    status: InboundStatus
    ack_code: str
    error_code: str | None
    error_detail: str | None
    retransmissions: int
    control_id_reused: bool
    size: int


@dataclass(frozen=True, slots=True)
class InboundDetail:
    summary: InboundSummary
    raw: bytes = field(repr=False)
    ack: bytes = field(repr=False)
