"""Which message types the connector takes, and for what. Everything else is answered AE."""

from __future__ import annotations

from enum import StrEnum

from connector.errors import ErrorLocation, UnsupportedMessageError
from connector.hl7.codes import ErrorCondition
from connector.hl7.header import MessageHeader


class Flow(StrEnum):
    DOCUMENT_ORU = "document-oru"  # ORU^R01: CI-SIS (MSH-21 CISIS_CDA_HL7_V2) or legacy report
    DOCUMENT_MDM = "document-mdm"  # MDM^T02/T04/T10: CI-SIS
    PATIENT_ADT = "patient-adt"  # ADT (IHE PAM France 2.11): patient context


# IHE PAM France 2.11 events the connector keeps patient context from (A52/A53: cancel a leave
# of absence / a return from it; A54/A55: change of attending doctor and its cancellation;
# Z99: update of a movement, ZBE-4 = UPDATE).
ADT_EVENTS = frozenset({
    "A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A12", "A13", "A21", "A22",
    "A28", "A31", "A38", "A40", "A47", "A52", "A53", "A54", "A55", "Z99",
})

SUPPORTED: dict[str, dict[str, Flow]] = {
    "ORU": {"R01": Flow.DOCUMENT_ORU},
    # T02 original, T10 replacement, T04 status change (deletion). T11 is not in the volet.
    "MDM": {"T02": Flow.DOCUMENT_MDM, "T04": Flow.DOCUMENT_MDM, "T10": Flow.DOCUMENT_MDM},
    "ADT": dict.fromkeys(ADT_EVENTS, Flow.PATIENT_ADT),
}


# HL7 table 0103, MSH-11.1: production, training (test), debugging.
PROCESSING_IDS = frozenset({"P", "T", "D"})


def route(header: MessageHeader) -> Flow:
    """The flow for this message, or UnsupportedMessageError: ERR-3 200 or 201 on MSH-9, 202
    on an MSH-11 outside table 0103 (an empty one is taken as production)."""
    if header.processing_id and header.processing_id.upper() not in PROCESSING_IDS:
        raise UnsupportedMessageError(
            "processing id (MSH-11) is not P, T or D (HL7 table 0103)",
            condition=ErrorCondition.UNSUPPORTED_PROCESSING_ID,
            location=ErrorLocation("MSH", 1, 11, 1),
        )
    events = SUPPORTED.get(header.message_type.code)
    if events is None:
        raise UnsupportedMessageError(
            f"message type {header.message_type.code or '(empty)'} is not supported",
            condition=ErrorCondition.UNSUPPORTED_MESSAGE_TYPE,
            location=ErrorLocation("MSH", 1, 9, 1),
        )
    flow = events.get(header.message_type.event)
    if flow is None:
        raise UnsupportedMessageError(
            f"event {header.message_type.event or '(empty)'} is not supported for "
            f"{header.message_type.code}",
            condition=ErrorCondition.UNSUPPORTED_EVENT_CODE,
            location=ErrorLocation("MSH", 1, 9, 2),
        )
    return flow
