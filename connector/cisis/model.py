"""The CI-SIS document request as a value: what a CREATEUR asked the GESTIONNAIRE to do.

Pure, frozen data built by `connector.cisis.checks.parse_document_request` from an ORU^R01 (v2.5)
or MDM^T02/T04/T10 (v2.6) message of the volet "Transmission d'un document CDA-R2 en HL7v2"
(reference `cisis-hl7v2-to-mssante.md` §1). Nothing here parses or raises: the types only name
the parts of a request, so later stages (store, e-mail builder, ZAM^Z0x) can rely on them.

Patient data (INS, names, bodies, documents) lives in these values and nowhere else: the
`RequestWarning.detail` strings name fields, rules and codes only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum

from lxml import etree

from connector.cda.header import CdaHeader, InstanceId
from connector.cda.safe_xml import parse_xml
from connector.errors import ErrorLocation
from connector.hl7.codes import ErrorCondition, Severity

# -- message kind and action ----------------------------------------------------------------------


class Action(StrEnum):
    """The business request (§1.1): carried by OBX-11 and ORC-1, and by the event for MDM."""

    NEW = "new"
    REPLACE = "replace"
    DELETE = "delete"


#: OBX-11 (HL7 table 0085) of the document OBX → action.
OBX11_ACTIONS: dict[str, Action] = {"F": Action.NEW, "C": Action.REPLACE, "D": Action.DELETE}
#: ORC-1 (HL7 table 0119) → action.
ORC1_ACTIONS: dict[str, Action] = {"NW": Action.NEW, "RO": Action.REPLACE, "CA": Action.DELETE}


class MessageKind(Enum):
    """The four supported MSH-9 / MSH-12 combinations (§1.1, §1.4)."""

    ORU_R01 = ("ORU", "R01", "2.5", "ORU_R01", None)
    MDM_T02 = ("MDM", "T02", "2.6", "MDM_T02", Action.NEW)
    MDM_T10 = ("MDM", "T10", "2.6", "MDM_T02", Action.REPLACE)
    MDM_T04 = ("MDM", "T04", "2.6", "MDM_T02", Action.DELETE)

    @property
    def code(self) -> str:
        return str(self.value[0])

    @property
    def event(self) -> str:
        return str(self.value[1])

    @property
    def version(self) -> str:
        """MSH-12.1 the volet requires for this message."""
        return str(self.value[2])

    @property
    def structure(self) -> str:
        return str(self.value[3])

    @property
    def event_action(self) -> Action | None:
        """The action the MDM trigger event carries; None for ORU (OBX-11/ORC-1 carry it)."""
        action = self.value[4]
        return action if isinstance(action, Action) else None

    @property
    def is_mdm(self) -> bool:
        return self.code == "MDM"

    @classmethod
    def find(cls, code: str, event: str) -> MessageKind | None:
        return next((k for k in cls if k.code == code and k.event == event), None)


# -- patient ---------------------------------------------------------------------------------------


class InsKind(StrEnum):
    """What an INS OID says about the identifier (§1.5)."""

    NIR = "nir"  # 1.2.250.1.213.1.4.8, production
    NIA = "nia"  # 1.2.250.1.213.1.4.9, temporary
    TEST = "test"  # 1.2.250.1.213.1.4.10, INS-NIR de test
    DEMO = "demo"  # 1.2.250.1.213.1.4.11, INS-NIR de démonstration


INS_OIDS: dict[str, InsKind] = {
    "1.2.250.1.213.1.4.8": InsKind.NIR,
    "1.2.250.1.213.1.4.9": InsKind.NIA,
    "1.2.250.1.213.1.4.10": InsKind.TEST,
    "1.2.250.1.213.1.4.11": InsKind.DEMO,
}
#: CX-5 identifier type code of the IPP (HL7 table 0203 "PI", patient internal identifier).
IPP_TYPE_CODE = "PI"


@dataclass(frozen=True, slots=True)
class PatientIdentifier:
    """One PID-3 repetition (CX): value, assigning authority (namespace, OID), type code."""

    value: str  # CX-1
    oid: str | None  # CX-4.2 (or an OID written bare in CX-4.1)
    namespace: str  # CX-4.1 when it is not the OID
    type_code: str  # CX-5 (INS, PI, ...)

    @property
    def ins_kind(self) -> InsKind | None:
        return INS_OIDS.get(self.oid or "")

    @property
    def is_ins(self) -> bool:
        return self.ins_kind is not None

    @property
    def is_ipp(self) -> bool:
        return self.type_code.upper() == IPP_TYPE_CODE

    @property
    def instance_id(self) -> InstanceId | None:
        """The CDA form of this identifier (root = OID, extension = value), if it has an OID."""
        return InstanceId(self.oid, self.value) if self.oid else None


@dataclass(frozen=True, slots=True)
class PatientIdentity:
    """PID-3 identifiers and PID-32 identity reliability code (VALI, PROV, ...)."""

    identifiers: tuple[PatientIdentifier, ...]
    identity_status: str  # PID-32, '' when absent

    @property
    def ins(self) -> PatientIdentifier | None:
        return next((i for i in self.identifiers if i.is_ins), None)

    @property
    def ipp(self) -> PatientIdentifier | None:
        return next((i for i in self.identifiers if i.is_ipp), None)

    @property
    def identity_validated(self) -> bool:
        """PID-32 = VALI. A *qualified* INS also needs INSi verification, not visible here."""
        return self.identity_status.upper() == "VALI"


# -- participants (PRT, pre-adopted from v2.9) -----------------------------------------------------


class ParticipationRole(StrEnum):
    """PRT-4.1 (§1.9), matched case-insensitively on its prefix."""

    SENDER = "SB"
    RECIPIENT = "RCT"
    REPLY_TO = "REPLY"


class Audience(StrEnum):
    """The two recipient groups of the MSSanté matrix (§1.11)."""

    PS = "ps"  # professional, organisation or application mailbox (DESTMSSANTEPS)
    PATIENT = "patient"  # the patient's "Mon espace santé" mailbox (DESTMSSANTEPAT)


class RecipientKind(StrEnum):
    """Who a PRT RCT designates (§1.9 (b))."""

    PROFESSIONAL = "professional"  # PRT-5 (XCN) of a PS
    ORGANISATION = "organisation"  # PRT-8 (XON): establishment, service, UF
    APPLICATION = "application"  # PRT-10 (EI): application mailbox (BAL applicative)
    PATIENT = "patient"  # PRT-5 with an INS, or an address at patient.mssante.fr
    UNIDENTIFIED = "unidentified"  # only an address: handled with the PS group

    @property
    def audience(self) -> Audience:
        return Audience.PATIENT if self is RecipientKind.PATIENT else Audience.PS


@dataclass(frozen=True, slots=True)
class PersonRef:
    """PRT-5 (XCN) as far as the connector needs it."""

    id: str  # XCN-1
    family_name: str  # XCN-2
    given_name: str  # XCN-3
    authority_oid: str | None  # XCN-9.2 (or a bare OID in XCN-9.1)
    authority_namespace: str  # XCN-9.1 when it is not the OID
    id_type: str  # XCN-13 (RPPS, IDNPS, INS, ...)

    @property
    def is_patient(self) -> bool:
        """An INS (by OID or by identifier type) designates the patient, not a professional."""
        return (self.authority_oid or "") in INS_OIDS or self.id_type.upper() == "INS"


@dataclass(frozen=True, slots=True)
class OrganisationRef:
    """PRT-8 (XON): name, identifier, its assigning authority and type (FINEG, UF, SVR...)."""

    name: str  # XON-1
    id: str  # XON-10
    authority: str  # XON-6 (namespace or OID, as sent)
    id_type: str  # XON-7


@dataclass(frozen=True, slots=True)
class Participant:
    """One PRT segment: role, and who or what it designates, with its MSSanté address."""

    role: ParticipationRole
    prt_sequence: int  # 1-based occurrence among the message's PRT segments (ERR-2)
    person: PersonRef | None
    organisation: OrganisationRef | None
    device_id: str | None  # PRT-10.1
    address: str | None  # PRT-15.4 where PRT-15.3 = X.400 (see parse.find_address)


@dataclass(frozen=True, slots=True)
class Recipient:
    """A PRT RCT with a usable address, and the group it belongs to."""

    kind: RecipientKind
    address: str
    participant: Participant

    @property
    def audience(self) -> Audience:
        return self.kind.audience


# -- documents -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodedValue:
    """CE/CWE: code, label, coding system (OBX-3, OBR-4)."""

    code: str
    label: str
    system: str


@dataclass(frozen=True, slots=True)
class EntityIdentifier:
    """EI as sent (TXA-12 / TXA-13): id, namespace, universal id, universal id type."""

    entity_id: str
    namespace_id: str
    universal_id: str
    universal_id_type: str

    @property
    def instance_id(self) -> InstanceId | None:
        """The CDA id this EI denotes (§1.6).

        With EI.3 set: root = EI.3, extension = EI.1 (`58132^^1.2.250...^ISO`). Without it:
        root = EI.1, no extension (`1.2.250....58132`). EI.2 is ignored, which tolerates the
        examples that put an organisation name there.
        """
        if self.universal_id:
            return InstanceId(self.universal_id, self.entity_id or None)
        if self.entity_id:
            return InstanceId(self.entity_id, None)
        return None


@dataclass(frozen=True, slots=True)
class CdaDocument:
    """One CDA R2 document carried in a document OBX (ED, base64)."""

    obx_sequence: int  # occurrence among the message's OBX segments (ERR-2)
    type_code: CodedValue  # OBX-3 (= OBR-4), from JDV_J07-XdsTypeCode-CISIS
    content: bytes  # the decoded CDA, byte for byte
    header: CdaHeader
    # The parsed `content`, kept so that the mail stage does not parse it again (~100 µs per
    # 50 KB document); None when the document was built without one. Not part of the value.
    tree: etree._Element | None = field(default=None, compare=False, repr=False)

    def root(self) -> etree._Element:
        """The parsed document: `tree`, else `content` parsed with the safe parser."""
        return self.tree if self.tree is not None else parse_xml(self.content)

    @property
    def level(self) -> int:
        """3 for a structuredBody document, 1 for a nonXMLBody one."""
        return 3 if self.header.is_structured else 1


# -- DMP/MSSanté metadata --------------------------------------------------------------------------


class MetadataFlag(StrEnum):
    """The ten Y/N metadata OBX (§1.10), in the order the volet requires."""

    MASQUE_PS = "MASQUE_PS"
    INVISIBLE_PATIENT = "INVISIBLE_PATIENT"
    INVISIBLE_REP_LEGAUX = "INVISIBLE_REP_LEGAUX"
    CONNEXION_SECRETE = "CONNEXION_SECRETE"  # noqa: S105 (a metadata name, not a secret)
    MODIF_CONF_CODE = "MODIF_CONF_CODE"
    DESTDMP = "DESTDMP"
    DESTMSSANTEPS = "DESTMSSANTEPS"
    DESTMSSANTEPAT = "DESTMSSANTEPAT"
    ACK_RECEPTION = "ACK_RECEPTION"
    ACK_LECTURE_MSS = "ACK_LECTURE_MSS"

    @property
    def attribute(self) -> str:
        return self.value.lower()


class BodyKind(StrEnum):
    """The two optional ED metadata carrying a proposed e-mail body."""

    CORPSMAIL_PS = "CORPSMAIL_PS"
    CORPSMAIL_PATIENT = "CORPSMAIL_PATIENT"


#: Flags that may be absent: they default to N (reference §1.10 [INFERENCE]).
DEFAULTED_FLAGS: frozenset[MetadataFlag] = frozenset(
    {MetadataFlag.ACK_RECEPTION, MetadataFlag.ACK_LECTURE_MSS}
)


@dataclass(frozen=True, slots=True)
class DmpMssMetadata:
    """The ten metadata flags, Y = True. `defaulted` lists the flags absent from the message."""

    masque_ps: bool
    invisible_patient: bool
    invisible_rep_legaux: bool
    connexion_secrete: bool
    modif_conf_code: bool
    destdmp: bool
    destmssanteps: bool
    destmssantepat: bool
    ack_reception: bool
    ack_lecture_mss: bool
    defaulted: frozenset[MetadataFlag] = frozenset()

    def __getitem__(self, flag: MetadataFlag) -> bool:
        value = getattr(self, flag.attribute)
        assert isinstance(value, bool)
        return value

    @classmethod
    def from_flags(
        cls, values: dict[MetadataFlag, bool], *, defaulted: frozenset[MetadataFlag] = frozenset()
    ) -> DmpMssMetadata:
        """Build from a complete mapping (KeyError if a flag is missing)."""
        return cls(**{f.attribute: values[f] for f in MetadataFlag}, defaulted=defaulted)

    def as_dict(self) -> dict[MetadataFlag, bool]:
        return {flag: self[flag] for flag in MetadataFlag}

    def as_yn(self) -> str:
        """`MASQUE_PS=N INVISIBLE_PATIENT=Y ...`: safe for logs and ERR details."""
        return " ".join(f"{f.value}={'Y' if self[f] else 'N'}" for f in MetadataFlag)


@dataclass(frozen=True, slots=True)
class MailBodies:
    """CORPSMAIL_PS / CORPSMAIL_PATIENT decoded as UTF-8; None means "use the default body"."""

    ps: str | None = None
    patient: str | None = None


# -- the sending decision --------------------------------------------------------------------------


class MailRoute(StrEnum):
    """What the MSSanté matrix (§1.11) decided."""

    PS_AND_PATIENT = "ps_and_patient"  # matrix row 1
    PS_ONLY = "ps_only"  # matrix row 2
    PATIENT_ONLY = "patient_only"  # matrix row 3
    NO_MAIL = "no_mail"  # DESTMSSANTEPS = N and DESTMSSANTEPAT = N (DMP only): no e-mail

    @property
    def audiences(self) -> frozenset[Audience]:
        return _ROUTE_AUDIENCES[self]


_ROUTE_AUDIENCES: dict[MailRoute, frozenset[Audience]] = {
    MailRoute.PS_AND_PATIENT: frozenset({Audience.PS, Audience.PATIENT}),
    MailRoute.PS_ONLY: frozenset({Audience.PS}),
    MailRoute.PATIENT_ONLY: frozenset({Audience.PATIENT}),
    MailRoute.NO_MAIL: frozenset(),
}


@dataclass(frozen=True, slots=True)
class SendingDecision:
    """The e-mails to send: `recipients` get one; `withheld` are PRT RCT the matrix excludes."""

    route: MailRoute
    matrix_row: int | None  # the matching row of the matrix, None for NO_MAIL
    matrix_source: str
    recipients: tuple[Recipient, ...]
    withheld: tuple[Recipient, ...] = ()

    @property
    def sends_mail(self) -> bool:
        return bool(self.recipients)


# -- warnings and the request ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestWarning:
    """Something tolerated: ERR-ready (condition, location, severity W) and free of patient data."""

    detail: str
    condition: ErrorCondition
    location: ErrorLocation | None = None
    severity: Severity = Severity.WARNING


@dataclass(frozen=True, slots=True)
class MessageOrigin:
    """The MSH fields later stages need (ACK, ZAM^Z0x OBX-4 correlation, routing)."""

    kind: MessageKind
    control_id: str  # MSH-10
    sending_application: str  # MSH-3, raw HD
    sending_facility: str  # MSH-4, raw HD
    profile_version: str  # MSH-21.1, e.g. "2.1"


@dataclass(frozen=True, slots=True)
class DocumentRequest:
    """A checked CI-SIS request: one or two CDA documents, who they are for, and how to send."""

    origin: MessageOrigin
    action: Action
    documents: tuple[CdaDocument, ...]
    patient: PatientIdentity
    patient_class: str  # PV1-2 ('' when the ORU has no PV1)
    unique_document_id: EntityIdentifier | None  # TXA-12 (MDM only)
    parent_document_id: EntityIdentifier | None  # TXA-13 (MDM only, when sent)
    sender: Participant | None  # PRT SB
    recipients: tuple[Recipient, ...]  # every usable PRT RCT; mail goes to sending.recipients
    reply_to: Participant | None  # PRT REPLY
    metadata: DmpMssMetadata
    bodies: MailBodies
    patient_may_reply: bool  # False when an NTE-4 = FIN follows DESTMSSANTEPAT
    sending: SendingDecision
    warnings: tuple[RequestWarning, ...] = ()
