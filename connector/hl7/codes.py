"""HL7 v2 code tables used in acknowledgements (values only, no behaviour)."""

from __future__ import annotations

from enum import Enum, StrEnum


class AckCode(StrEnum):
    """MSA-1 (HL7 table 0008)."""

    APPLICATION_ACCEPT = "AA"
    APPLICATION_ERROR = "AE"
    APPLICATION_REJECT = "AR"
    COMMIT_ACCEPT = "CA"
    COMMIT_ERROR = "CE"
    COMMIT_REJECT = "CR"

    @property
    def is_positive(self) -> bool:
        return self in (AckCode.APPLICATION_ACCEPT, AckCode.COMMIT_ACCEPT)


class AcknowledgmentCondition(StrEnum):
    """MSH-15 / MSH-16 (HL7 table 0155)."""

    ALWAYS = "AL"
    NEVER = "NE"
    ERROR_ONLY = "ER"
    SUCCESS_ONLY = "SU"


class ErrorCondition(Enum):
    """ERR-3: HL7 table 0357 "messageErrorCondition" as used by the CI-SIS volet."""

    ACCEPTED = ("0", "Message accepted")
    SEGMENT_SEQUENCE_ERROR = ("100", "Segment sequence error")
    REQUIRED_FIELD_MISSING = ("101", "Required field missing")
    DATA_TYPE_ERROR = ("102", "Data type error")
    TABLE_VALUE_NOT_FOUND = ("103", "Table value not found")
    NON_CONFORMANT_CARDINALITY = ("198", "Non-conformant cardinality")
    OTHER_HL7_ERROR = ("199", "Other HL7 Error")
    UNSUPPORTED_MESSAGE_TYPE = ("200", "Unsupported message type")
    UNSUPPORTED_EVENT_CODE = ("201", "Unsupported event code")
    UNSUPPORTED_PROCESSING_ID = ("202", "Unsupported processing id")
    UNSUPPORTED_VERSION_ID = ("203", "Unsupported version id")
    APPLICATION_ERROR = ("207", "Application internal error")

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def label(self) -> str:
        return self.value[1]


class ApplicationError(Enum):
    """ERR-5: user table 0533 "applicationErrorCode" of the CI-SIS volet, plus connector codes.

    Codes 900-906 come from the volet (indicative list).
    """

    WRONG_DOCUMENT_VERSION = ("900", "Version du document incorrecte")
    AUTHOR_NOT_ALLOWED = ("901", "Auteur non autorise a remplacer ou supprimer le document")
    UNKNOWN_PATIENT = ("902", "Identifiant patient inconnu")
    INS_MISSING = ("903", "INS non present dans le document")
    INS_MISMATCH = ("904", "INS different de celui connu")
    INS_INCOMPLETE = ("905", "INS incomplet")
    OTHER = ("906", "Erreur autre")

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def label(self) -> str:
        return self.value[1]


class Severity(StrEnum):
    """ERR-4 (HL7 table 0516)."""

    ERROR = "E"
    FATAL = "F"
    INFORMATION = "I"
    WARNING = "W"
