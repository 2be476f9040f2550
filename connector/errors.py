"""The connector's exception tree, in one place.

Messages carried by these exceptions are meant for logs and for ERR segments: they name fields,
rules and codes, never patient data (names, INS, birth dates, document contents).
"""

from __future__ import annotations

from dataclasses import dataclass

from connector.hl7.codes import ApplicationError, ErrorCondition, Severity


class ConnectorError(Exception):
    """Root of every error the connector raises on purpose."""


class ConfigError(ConnectorError):
    """Invalid configuration; start-up stops (exit code 2). Names the key and the file."""

    def __init__(self, key: str, problem: str, *, source: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}")


# -- protocol -------------------------------------------------------------------------------------


class ProtocolError(ConnectorError):
    """A transport-level protocol was not followed."""


class FramingError(ProtocolError):
    """The peer broke MLLP framing (for instance a frame over the size limit)."""


class AckStateError(ProtocolError):
    """An acknowledgement was asked for in a state where it cannot be built: our bug."""


# -- messages (answered AE, never retried) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorLocation:
    """ERR-2 (ERL): segment id, segment sequence, field position (component when relevant)."""

    segment: str
    sequence: int = 1
    field: int | None = None
    component: int | None = None

    def to_hl7(self, component_sep: str = "^") -> str:
        parts = [self.segment, str(self.sequence)]
        if self.field is not None:
            parts.append(str(self.field))
            if self.component is not None:
                parts.extend(["1", str(self.component)])
        return component_sep.join(parts)


class MessageError(ConnectorError):
    """The message is wrong: answer AE with ERR-3 (table 0357) and, for business rules, ERR-5."""

    condition: ErrorCondition = ErrorCondition.OTHER_HL7_ERROR

    def __init__(
        self,
        detail: str,
        *,
        condition: ErrorCondition | None = None,
        location: ErrorLocation | None = None,
        application_error: ApplicationError | None = None,
        severity: Severity = Severity.ERROR,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if condition is not None:
            self.condition = condition
        self.location = location
        self.application_error = application_error
        self.severity = severity


class HL7ParseError(MessageError):
    condition = ErrorCondition.SEGMENT_SEQUENCE_ERROR


class UnsupportedMessageError(MessageError):
    condition = ErrorCondition.UNSUPPORTED_MESSAGE_TYPE


class ProfileError(MessageError):
    condition = ErrorCondition.REQUIRED_FIELD_MISSING


class SendingMatrixError(MessageError):
    condition = ErrorCondition.APPLICATION_ERROR


class DocumentError(MessageError):
    """CDA missing, undecodable or invalid; `report` holds the XSD/schematron report if any."""

    condition = ErrorCondition.APPLICATION_ERROR

    def __init__(self, detail: str, *, report: str | None = None, **kwargs: object) -> None:
        super().__init__(detail, **kwargs)  # type: ignore[arg-type]
        self.report = report


class PdfRenditionError(ConnectorError):
    """No PDF could be rendered for a CDA that embeds none (a narrative too large, a layout
    failure). What the request gets then is the tenant's `MissingPdfPolicy`: `PdfRequiredError`,
    or its mails go with the CDA in the archive and without that PDF, and the intake warns."""


class PdfRendererUnavailable(PdfRenditionError):
    """This host cannot render PDFs at all (WeasyPrint or the Pango libraries it loads are
    missing): no document's fault."""


class PdfRequiredError(MessageError):
    """ECO.2.1.1: a mail MUST carry the PDF/A-1 of each CDA, and one could not be had
    (`[tenants.cisis] missing_pdf = "refuse"`). `retry_later`: the renderer is missing on this
    host, so the request is not taken (AR, nothing stored) and the sender sends it again once it
    is installed; otherwise this CDA cannot be rendered, answered AE."""

    condition = ErrorCondition.APPLICATION_ERROR

    def __init__(self, detail: str, *, retry_later: bool, **kwargs: object) -> None:
        super().__init__(detail, **kwargs)  # type: ignore[arg-type]
        self.retry_later = retry_later


# -- store (answered AR: the sender retries) -----------------------------------------------------


class StoreError(ConnectorError):
    """Persistence failed; the message was not taken in charge."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or is closed."""


class LeaseLost(StoreError):
    """A lease token no longer owns the row (fencing)."""


class BackupError(StoreError):
    """A store backup could not be taken, or a store (or its copy) is not whole."""


class StoreInUse(StoreUnavailable):
    """The SQLite store is open for writing by another process (a running `serve`)."""


class PayloadUnreadable(StoreError):
    """One stored payload cannot be read back (a damaged payload-log record, a missing segment,
    a key that is not configured, tampered data): that row cannot be used, the others can."""


class PayloadDecryptionError(PayloadUnreadable):
    """A payload could not be decrypted (unknown key id or tampered data)."""


# -- delivery -------------------------------------------------------------------------------------


class DeliveryError(ConnectorError):
    """Sending to the MSSanté operator failed."""


class TransientDeliveryError(DeliveryError):
    """4xx, time-outs, disconnects: retried with backoff."""


class PermanentDeliveryError(DeliveryError):
    """5xx and certificate errors: not retried."""


class ReceiptError(ConnectorError):
    """A returned mail (DSN, MDN, KO mail) could not be read at all; names no value from it."""


class ShuttingDown(ConnectorError):
    """The process is draining; new work is refused (answered AR)."""
