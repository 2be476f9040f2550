"""CI-SIS "Transmission d'un document CDA-R2 en HL7v2": the GESTIONNAIRE's view of a request.

`parse_document_request(message)` reads a parsed ORU^R01 / MDM^T02/T04/T10, runs the volet's
checks in order (raising a `connector.errors.MessageError` subclass with ERR-2/3/5 data), and
returns a frozen `DocumentRequest`: action, CDA document(s), patient identifiers, PRT sender,
recipients and reply-to, the DMP/MSSanté metadata, e-mail bodies, and the sending decision of
the MSSanté matrix. Modules: `model` (types), `parse` (tolerant readers), `checks` (ordered
checks), `matrix` (the sending matrix).
"""

from connector.cisis.checks import parse_document_request
from connector.cisis.matrix import (
    ANS_EXAMPLES_MATRIX,
    CISIS_MATRIX,
    MatrixRow,
    SendingMatrix,
    plan_sending,
)
from connector.cisis.model import (
    Action,
    Audience,
    BodyKind,
    CdaDocument,
    DmpMssMetadata,
    DocumentRequest,
    InsKind,
    MailBodies,
    MailRoute,
    MessageKind,
    MessageOrigin,
    MetadataFlag,
    Participant,
    ParticipationRole,
    PatientIdentifier,
    PatientIdentity,
    Recipient,
    RecipientKind,
    RequestWarning,
    SendingDecision,
)

__all__ = [
    "ANS_EXAMPLES_MATRIX",
    "CISIS_MATRIX",
    "Action",
    "Audience",
    "BodyKind",
    "CdaDocument",
    "DmpMssMetadata",
    "DocumentRequest",
    "InsKind",
    "MailBodies",
    "MailRoute",
    "MatrixRow",
    "MessageKind",
    "MessageOrigin",
    "MetadataFlag",
    "Participant",
    "ParticipationRole",
    "PatientIdentifier",
    "PatientIdentity",
    "Recipient",
    "RecipientKind",
    "RequestWarning",
    "SendingDecision",
    "SendingMatrix",
    "parse_document_request",
    "plan_sending",
]
