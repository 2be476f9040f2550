"""HL7 v2 code tables used in acknowledgements (values only, no behaviour)."""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Final


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


class CodedValue(Enum):
    """A code table whose members are (code, label) pairs."""

    @property
    def code(self) -> str:
        return str(self.value[0])

    @property
    def label(self) -> str:
        return str(self.value[1])


class ErrorCondition(CodedValue):
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


class ApplicationError(CodedValue):
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


class Severity(StrEnum):
    """ERR-4 (HL7 table 0516)."""

    ERROR = "E"
    FATAL = "F"
    INFORMATION = "I"
    WARNING = "W"


class SmtpErrorCode(CodedValue):
    """Table SMTPERRORCODE (ERR-5 of ZAM^Z02), codes and labels as published by the ANS.

    Source: `ansforge/IG-hl7v2-volet-transmission-document-cda-r2`, page "Error codes" (v2.1.3),
    labels verbatim. The table mixes standard SMTP reply codes and a few of its own (422, 431,
    441, 510, 512, 513, 523, 541...): it is kept as published.
    """

    CANNOT_CONNECT = ("101", "Le serveur n'arrive pas à se connecter.")
    CONNECTION_REFUSED = ("111", "Connexion refusée ou impossibilité d'ouvrir un flux SMTP.")
    RELAYED = (
        "251",
        "Le compte du destinataire n'est pas sur le serveur actuel. L'envoi sera donc relayé à "
        "un autre serveur.",
    )
    CANNOT_VERIFY_USER = (
        "252",
        "Le serveur ne peut pas vérifier l'utilisateur. Il confirme cependant qu'il essaiera de "
        "transmettre le message malgré tout",
    )
    TIMEOUT = (
        "420",
        "« Problème de connexion de temporisation » : il y a eu des problèmes pendant le "
        "transfert du message.",
    )
    SERVICE_UNAVAILABLE = (
        "421", "Le service est indisponible en raison d'un problème de connexion.")
    MAILBOX_FULL = ("422", "La boîte aux lettres du destinataire a dépassé sa limite de stockage.")
    INSUFFICIENT_DISK = (
        "431",
        "Espace insuffisant sur le disque, ou état de mémoire insuffisante en raison d'une "
        "surcharge de fichiers.",
    )
    TRANSITION_PASSWORD = ("432", "Mot de passe de transition nécessaire")
    NO_ANSWER = ("441", "Le serveur du destinataire ne répond pas")
    CONNECTION_DROPPED = ("442", "La connexion a été interrompue pendant la transmission")
    MAILBOX_BUSY = (
        "450",
        "Action non effectuée : boîte-aux-lettres non disponible [Ex., bloquée par un autre "
        "utilisateur]",
    )
    PROCESSING_ERROR = ("451", "Action arrêtée : erreur de traitement")
    INSUFFICIENT_RESOURCES = ("452", "Action non effectuée : manque de ressources système.")
    SYNTAX_ERROR = (
        "500",
        "Erreur de syntaxe, commande non reconnue [y compris des erreurs de type « ligne de "
        "commande trop longue »]",
    )
    PARAMETER_SYNTAX_ERROR = (
        "501", "Erreur de syntaxe dans des paramètres ou arguments de commande")
    COMMAND_NOT_IMPLEMENTED = ("502", "Commande non implémentée")
    BAD_SEQUENCE = ("503", "Mauvaise séquence de commandes")
    PARAMETER_NOT_IMPLEMENTED = ("504", "Paramètre de commande non implémenté")
    BAD_ADDRESS = ("510", "Mauvaise adresse courriel")
    DNS_ERROR = (
        "512",
        "Ce code indique une erreur DNS. Le serveur hôte du nom de domaine du destinataire est "
        "introuvable.",
    )
    BAD_ADDRESS_TYPE = (
        "513",
        "Le type d'adresse est incorrect. Souvent un problème lié à une faute d'orthographe. "
        "Dans de rares cas, il peut être lié à un problème d'authentification.",
    )
    SIZE_EXCEEDED = (
        "523", "La taille totale de votre mailing dépasse les limites du serveur destinataire.")
    AUTHENTICATION_REQUIRED = (
        "530",
        "L'authentification est requise. Vous devez authentifier votre compte de messagerie "
        "avant d'envoyer un e-mail",
    )
    REJECTED = (
        "541",
        "L'adresse du destinataire a rejeté votre message. Dans la plupart des cas, c'est une "
        "erreur causée par un filtre anti-spam.",
    )
    MAILBOX_UNAVAILABLE = (
        "550",
        "Action non effectuée : boîte aux lettres non disponible (ex. : boîte-aux-lettres non "
        "trouvée, pas d'accès).",
    )
    USER_NOT_LOCAL = (
        "551",
        "Un relais peut être interrompu car votre adresse et celle du destinataire ne sont pas "
        "hébergées localement par le serveur.",
    )
    STORAGE_EXCEEDED = (
        "552",
        "Action abandonnée - Allocation de stockage dépassée. La boîte aux lettres du "
        "destinataire a dépassé ses limites.",
    )
    MAILBOX_NAME_INVALID = (
        "553",
        "La commande a été abandonnée car le nom de la boîte aux lettres n'est pas valide.",
    )
    TRANSACTION_FAILED = (
        "554",
        "Cela signifie que l'envoi a échoué. Ce code indique une erreur permanente et le serveur "
        "n'essaiera pas d'envoyer le message à nouveau.",
    )

    @classmethod
    def from_code(cls, code: str) -> SmtpErrorCode | None:
        """The entry for a three-digit code, None when the table does not have it."""
        return _SMTP_BY_CODE.get(code.strip())


_SMTP_BY_CODE: Final[dict[str, SmtpErrorCode]] = {e.code: e for e in SmtpErrorCode}
