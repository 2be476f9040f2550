"""The ordered profile checks of a CI-SIS ORU/MDM message, and `parse_document_request`.

The order is reference §8.3; the first failing check raises, with ERR-3 (table 0357), ERR-2
(segment^sequence^field[^1^component]) and, for rule violations answered 207, ERR-5 (table 0533):

 1. MSH-9 / MSH-12 ........ UnsupportedMessageError 200 (type) / 201 (event) / 203 (version)
 2. MSH-21 ................ ProfileError 101 (absent) / UnsupportedMessageError 203 (other profile)
 3. segments and fields ... ProfileError 100 (segment) / 101 (field) / 198 (too many documents)
 4. ORC-1 ⇔ OBX-11 ⇔ event  ProfileError 103 (unknown code) / 207 + 906 (disagreement)
 5. OBX-2 / OBX-5 ......... ProfileError 102 (OBX-2 not ED) / 103 (OBX-5.3 not XML, .4 not Base64)
 6. the CDA ............... DocumentError 207 + 906 (not base64, placeholder text, not XML, no id)
 7. PID-3 ⇔ recordTarget .. DocumentError 207 + 903 / 904 / 906
 8. TXA-12 ⇔ document id .. DocumentError 207 + 906 (MDM)
 9. TXA-13 ⇔ parent id .... DocumentError 207 + 906 (MDM^T10)
10. metadata .............. ProfileError 100 (missing) / 103 (not Y/N) / 198 (contradictory twin)
11. recipients ............ ProfileError 100 (no RCT for a Y destination) / 101-102 (address)
                            / 207 + 904 (patient RCT with another INS)
12. the sending matrix .... SendingMatrixError 207 + 906

Detail strings name segments, fields, rules and codes; they never echo patient data, and echo
a field value only when it is a short code (`_shown`).

Decisions where the volet is silent (also in the report of the change that added this module):
* MSH-21: the namespace `CISIS_CDA_HL7_V2` is required. Any 2.x version is processed with the
  2.1 rules (a version other than 2.1 is a warning: V2.0 senders are close enough, and their
  metadata names are accepted); the V1.x profile (`CISIS_CDA_HL7_V1`, recipients in the CDA)
  and any other namespace are refused with 203.
* PID-3 ⇔ recordTarget/patientRole/id: identifiers are compared as (OID, value) pairs, exact
  after trimming, one document at a time. PID-3 identifiers without an OID (namespace-only
  assigning authority) cannot be compared and are ignored. The rule: (a) if either side carries
  an INS (OID .8/.9/.10/.11), both must carry the same INS set (903 when the CDA has none, 904
  otherwise); (b) no OID may carry different values on the two sides; (c) at least one pair
  must be common. Extra identifiers under OIDs the other side does not use are accepted (PID-3
  often adds an IPP the CDA omits).
* ORU replacement documents without relatedDocument/parentDocument/id are accepted with a
  warning (the ANS ORU example's level-3 document has none); MDM^T10 requires it via TXA-13.
* ACK_RECEPTION / ACK_LECTURE_MSS absent → N with a warning; the eight other flags are required.
  Metadata out of the volet's order, duplicates with the same value, OBX-11 ≠ F on metadata and
  OBX-5.2 ≠ TEXT on the document are warnings.
* A PRT RCT without a usable address is refused only when its group (PS or patient) is asked
  for by DESTMSSANTEPS / DESTMSSANTEPAT; otherwise it is a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from connector.cda.header import InstanceId, read_cda_header
from connector.cda.safe_xml import parse_xml
from connector.cisis.matrix import CISIS_MATRIX, SendingMatrix, plan_sending
from connector.cisis.model import (
    DEFAULTED_FLAGS,
    INS_OIDS,
    OBX11_ACTIONS,
    ORC1_ACTIONS,
    Action,
    Audience,
    CdaDocument,
    DmpMssMetadata,
    DocumentRequest,
    EntityIdentifier,
    MailRoute,
    MessageKind,
    MessageOrigin,
    MetadataFlag,
    ParticipationRole,
    PatientIdentity,
    Recipient,
    RecipientKind,
    RequestWarning,
    SendingDecision,
)
from connector.cisis.parse import (
    Layout,
    ObxRef,
    Participants,
    classify_recipient,
    decode_base64,
    is_plausible_address,
    participation_role,
    read_bodies,
    read_coded,
    read_entity_identifier,
    read_participants,
    read_patient,
    split_observations,
    yes_no,
)
from connector.errors import (
    DocumentError,
    ErrorLocation,
    ProfileError,
    UnsupportedMessageError,
)
from connector.hl7.codes import ApplicationError, ErrorCondition
from connector.hl7.header import MessageHeader
from connector.hl7.message import Message, Segment, component_of

#: MSH-21.2 of the volet "Transmission d'un document CDA-R2 en HL7v2" (versions 2.x).
PROFILE_NAMESPACE = "CISIS_CDA_HL7_V2"
#: The volet version whose rules this module implements.
PROFILE_VERSION = "2.1"
_V1_NAMESPACE = "CISIS_CDA_HL7_V1"
_CODE_LIKE = re.compile(r"[A-Za-z0-9_.\-]{1,20}\Z")
_ADMITTED_CLASSES = frozenset({"E", "I", "O", "R"})  # PV1-19 is required for these PV1-2

_REQUIRED_SEGMENTS: dict[bool, tuple[str, ...]] = {
    False: ("PID", "ORC", "OBR"),  # ORU: PV1 is RE (PATIENT_VISIT [0..1])
    True: ("EVN", "PID", "PV1", "ORC", "OBR", "TXA"),  # MDM
}
_MAX_DOCUMENTS: dict[bool, int] = {False: 2, True: 1}


def _loc(
    segment: str, sequence: int = 1, field: int | None = None, component: int | None = None
) -> ErrorLocation:
    return ErrorLocation(segment, sequence, field, component)


def _shown(value: str) -> str:
    """A field value fit for an error detail: short codes only, never free text."""
    if not value:
        return "empty"
    return repr(value) if _CODE_LIKE.match(value) else "an unexpected value"


def _warn(
    warnings: list[RequestWarning],
    detail: str,
    condition: ErrorCondition,
    location: ErrorLocation | None = None,
) -> None:
    warnings.append(RequestWarning(detail, condition, location))


# -- 1. message type, event, version ---------------------------------------------------------------


def check_message_type(header: MessageHeader, warnings: list[RequestWarning]) -> MessageKind:
    """MSH-9 in ORU^R01 / MDM^T02/T04/T10 and MSH-12 = 2.5 (ORU) / 2.6 (MDM)."""
    message_type = header.message_type
    if not message_type.code:
        raise ProfileError("MSH-9 (message type) is empty", location=_loc("MSH", 1, 9))
    if message_type.code not in ("ORU", "MDM"):
        raise UnsupportedMessageError(
            f"MSH-9.1 {_shown(message_type.code)} is not ORU or MDM",
            condition=ErrorCondition.UNSUPPORTED_MESSAGE_TYPE, location=_loc("MSH", 1, 9, 1),
        )
    kind = MessageKind.find(message_type.code, message_type.event)
    if kind is None:
        raise UnsupportedMessageError(_unsupported_event(message_type.code, message_type.event),
                                      condition=ErrorCondition.UNSUPPORTED_EVENT_CODE,
                                      location=_loc("MSH", 1, 9, 2))
    if header.version_id != kind.version:
        raise UnsupportedMessageError(
            f"MSH-12 {_shown(header.version_id)}: {kind.code}^{kind.event} must be HL7 v"
            f"{kind.version}",
            condition=ErrorCondition.UNSUPPORTED_VERSION_ID, location=_loc("MSH", 1, 12),
        )
    if message_type.structure and message_type.structure != kind.structure:
        _warn(warnings, f"MSH-9.3 {_shown(message_type.structure)} is not {kind.structure}",
              ErrorCondition.TABLE_VALUE_NOT_FOUND, _loc("MSH", 1, 9, 3))
    return kind


def _unsupported_event(code: str, event: str) -> str:
    supported = "R01" if code == "ORU" else "T02, T04 or T10"
    detail = f"MSH-9.2 {_shown(event)}: {code} must be {supported}"
    if code == "MDM" and event == "T11":
        detail += " (T11 is not used by the volet: a deletion is T04 with OBX-11 D, ORC-1 CA)"
    return detail


# -- 2. MSH-21 -------------------------------------------------------------------------------------


def check_profile(msh: Segment, warnings: list[RequestWarning]) -> str:
    """MSH-21 names `2.x^CISIS_CDA_HL7_V2`; returns the volet version (MSH-21.1)."""
    repetitions = [r for r in msh.repetitions(21) if r.strip()]
    if not repetitions:
        raise ProfileError("MSH-21 (message profile identifier) is missing",
                           location=_loc("MSH", 1, 21))
    namespaces: list[str] = []
    for raw in repetitions:
        version = component_of(raw, 1, d=msh.delimiters)
        namespace = component_of(raw, 2, d=msh.delimiters).upper().replace(" ", "")
        namespaces.append(namespace)
        if namespace == PROFILE_NAMESPACE:
            return _profile_version(version, warnings)
    if _V1_NAMESPACE in namespaces:
        detail = ("MSH-21: volet version 1.x (CISIS_CDA_HL7_V1) is not supported; "
                  f"send {PROFILE_VERSION}^{PROFILE_NAMESPACE}")
    else:
        detail = f"MSH-21 does not name the profile {PROFILE_NAMESPACE}"
    raise UnsupportedMessageError(detail, condition=ErrorCondition.UNSUPPORTED_VERSION_ID,
                                  location=_loc("MSH", 1, 21))


def _profile_version(version: str, warnings: list[RequestWarning]) -> str:
    major = version.split(".", 1)[0]
    if version and major != "2":
        raise UnsupportedMessageError(
            f"MSH-21.1 {_shown(version)} is not a {PROFILE_NAMESPACE} version (2.x)",
            condition=ErrorCondition.UNSUPPORTED_VERSION_ID, location=_loc("MSH", 1, 21, 1),
        )
    if version != PROFILE_VERSION and not version.startswith(PROFILE_VERSION + "."):
        _warn(warnings, f"MSH-21.1 {_shown(version)}: processed with the volet "
                        f"{PROFILE_VERSION} rules",
              ErrorCondition.UNSUPPORTED_VERSION_ID, _loc("MSH", 1, 21, 1))
    return version or PROFILE_VERSION


# -- 3. required segments and fields ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoreSegments:
    """The single-occurrence segments of the profile (the first of each when repeated)."""

    pid: Segment
    pv1: Segment | None
    orc: Segment
    obr: Segment
    txa: Segment | None


def _first_required(
    message: Message, name: str, required: bool, warnings: list[RequestWarning]
) -> Segment | None:
    found = message.all(name)
    if not found:
        if required:
            raise ProfileError(f"required segment {name} is missing",
                               condition=ErrorCondition.SEGMENT_SEQUENCE_ERROR,
                               location=_loc(name))
        return None
    if len(found) > 1:
        _warn(warnings, f"{len(found)} {name} segments: the first one is used",
              ErrorCondition.NON_CONFORMANT_CARDINALITY, _loc(name, 2))
    return found[0]


def _require_field(segment: Segment, sequence: int, position: int, what: str) -> None:
    if not any(r.strip() for r in segment.repetitions(position)):
        raise ProfileError(f"{segment.name}-{position} ({what}) is missing",
                           location=_loc(segment.name, sequence, position))


def check_segments(
    message: Message, kind: MessageKind, layout: Layout, warnings: list[RequestWarning]
) -> CoreSegments:
    """Required segments (100) and fields (101) of §1.2–§1.9, and the document OBX count."""
    required = _REQUIRED_SEGMENTS[kind.is_mdm]
    found = {
        name: _first_required(message, name, name in required, warnings)
        for name in ("EVN", "PID", "PV1", "ORC", "OBR", "TXA")
    }
    pid, orc, obr = found["PID"], found["ORC"], found["OBR"]
    # required for both kinds, so _first_required raised if absent
    assert pid is not None
    assert orc is not None
    assert obr is not None
    core = CoreSegments(pid, found["PV1"], orc, obr, found["TXA"] if kind.is_mdm else None)
    _check_documents_present(kind, layout)
    _check_participants_present(layout)
    _check_fields(message, kind, core, layout, warnings)
    return core


def _check_documents_present(kind: MessageKind, layout: Layout) -> None:
    if not layout.documents:
        raise ProfileError(
            "no document OBX (OBX-2 ED carrying the CDA) before the DMP/MSSanté metadata OBX",
            condition=ErrorCondition.SEGMENT_SEQUENCE_ERROR, location=_loc("OBX", 1),
        )
    limit = _MAX_DOCUMENTS[kind.is_mdm]
    if len(layout.documents) > limit:
        extra = layout.documents[limit]
        raise ProfileError(
            f"{len(layout.documents)} document OBX: {kind.code} carries at most {limit}",
            condition=ErrorCondition.NON_CONFORMANT_CARDINALITY,
            location=_loc("OBX", extra.sequence),
        )


def _check_participants_present(layout: Layout) -> None:
    roles = {participation_role(p.segment) for p in layout.participants}
    if not roles & {ParticipationRole.SENDER, ParticipationRole.RECIPIENT}:
        raise ProfileError(
            "no PRT segment with PRT-4 SB (sender) or RCT (recipient) after the document OBX",
            condition=ErrorCondition.SEGMENT_SEQUENCE_ERROR, location=_loc("PRT"),
        )


def _check_fields(
    message: Message, kind: MessageKind, core: CoreSegments, layout: Layout,
    warnings: list[RequestWarning],
) -> None:
    # Usage R in the volet's MSH table (MSH-9/12/21 are checked earlier, with their own codes).
    for position, what in ((3, "sending application"), (4, "sending facility"),
                           (5, "receiving application"), (6, "receiving facility"),
                           (7, "message date/time"), (10, "message control id"),
                           (11, "processing id"), (17, "country code"), (18, "character set")):
        _require_field(message.msh, 1, position, what)
    _require_field(core.pid, 1, 3, "patient identifiers")
    _require_field(core.pid, 1, 5, "patient name")
    if core.pv1 is not None:
        _require_field(core.pv1, 1, 2, "patient class")
        if core.pv1.value(2).upper() in _ADMITTED_CLASSES and not core.pv1.raw(19).strip():
            _warn(warnings, "PV1-19 (visit number) is missing although PV1-2 is E, I, O or R",
                  ErrorCondition.REQUIRED_FIELD_MISSING, _loc("PV1", 1, 19))
    _require_field(core.orc, 1, 1, "order control")
    _require_field(core.obr, 1, 4, "document type")
    if core.txa is not None:
        for position, what in ((1, "set id"), (2, "document type"),
                               (3, "document content presentation"),
                               (12, "unique document number"), (17, "document completion status")):
            _require_field(core.txa, 1, position, what)
        if kind is MessageKind.MDM_T10:
            _require_field(core.txa, 1, 13, "parent document number, required by T10")
    for ref in layout.documents:
        for position, what in ((2, "value type"), (3, "document type"),
                               (5, "observation value"), (11, "result status")):
            _require_field(ref.segment, ref.sequence, position, what)


# -- 4. action consistency -------------------------------------------------------------------------


def _orc_action(orc: Segment) -> Action:
    code = orc.value(1).upper()
    action = ORC1_ACTIONS.get(code)
    if action is None:
        raise ProfileError(f"ORC-1 {_shown(code)} is not NW, RO or CA",
                           condition=ErrorCondition.TABLE_VALUE_NOT_FOUND,
                           location=_loc("ORC", 1, 1))
    return action


def _obx_action(ref: ObxRef) -> Action:
    code = ref.segment.value(11).upper()
    action = OBX11_ACTIONS.get(code)
    if action is None:
        raise ProfileError(f"OBX {ref.sequence}: OBX-11 {_shown(code)} is not F, C or D",
                           condition=ErrorCondition.TABLE_VALUE_NOT_FOUND,
                           location=_loc("OBX", ref.sequence, 11))
    return action


def _disagreement(detail: str, location: ErrorLocation) -> ProfileError:
    return ProfileError(detail, condition=ErrorCondition.APPLICATION_ERROR, location=location,
                        application_error=ApplicationError.OTHER)


def check_action(kind: MessageKind, orc: Segment, documents: tuple[ObxRef, ...]) -> Action:
    """ORC-1, every document OBX-11 and (MDM) the trigger event must name the same action."""
    orc_action = _orc_action(orc)
    obx_actions = [(ref, _obx_action(ref)) for ref in documents]
    event_action = kind.event_action
    reference = event_action if event_action is not None else obx_actions[0][1]
    source = f"the {kind.code}^{kind.event} event" if event_action is not None else (
        f"OBX {obx_actions[0][0].sequence} OBX-11")
    for ref, action in obx_actions:
        if action is not reference:
            raise _disagreement(
                f"OBX {ref.sequence}: OBX-11 {action.value} disagrees with {source} "
                f"({reference.value})", _loc("OBX", ref.sequence, 11))
    if orc_action is not reference:
        raise _disagreement(
            f"ORC-1 {orc_action.value} disagrees with {source} ({reference.value})",
            _loc("ORC", 1, 1))
    return reference


# -- 5. document OBX encoding ----------------------------------------------------------------------


def check_document_encoding(
    documents: tuple[ObxRef, ...], warnings: list[RequestWarning]
) -> None:
    """OBX-2 = ED, OBX-5.3 = XML, OBX-5.4 = Base64 (any case), OBX-5.5 present."""
    for ref in documents:
        obx, k = ref.segment, ref.sequence
        value_type = obx.value(2).upper()
        if value_type != "ED":
            raise ProfileError(f"OBX {k}: OBX-2 {_shown(value_type)} must be ED",
                               condition=ErrorCondition.DATA_TYPE_ERROR,
                               location=_loc("OBX", k, 2))
        if obx.component(5, 2).upper() != "TEXT":
            _warn(warnings, f"OBX {k}: OBX-5.2 {_shown(obx.component(5, 2))} is not TEXT",
                  ErrorCondition.TABLE_VALUE_NOT_FOUND, _loc("OBX", k, 5, 2))
        for component, expected in ((3, "XML"), (4, "BASE64")):
            found = obx.component(5, component)
            if found.upper() != expected:
                raise ProfileError(
                    f"OBX {k}: OBX-5.{component} {_shown(found)} must be "
                    f"{'XML' if component == 3 else 'Base64'}",
                    condition=ErrorCondition.TABLE_VALUE_NOT_FOUND,
                    location=_loc("OBX", k, 5, component),
                )
        if not obx.component(5, 5):
            raise ProfileError(f"OBX {k}: OBX-5.5 (the base64 CDA) is empty",
                               location=_loc("OBX", k, 5, 5))


# -- 6. the CDA decodes and parses -----------------------------------------------------------------


def _looks_like_xml(data: bytes) -> bool:
    head = data[:256].lstrip(b"\xef\xbb\xbf\xfe\xff\x00 \t\r\n")
    return head.startswith(b"<")


def _document_error(detail: str, location: ErrorLocation) -> DocumentError:
    return DocumentError(detail, location=location, application_error=ApplicationError.OTHER)


def decode_document(ref: ObxRef) -> CdaDocument:
    """Base64-decode OBX-5.5, parse it with the safe XML parser, read the CDA header."""
    location = _loc("OBX", ref.sequence, 5, 5)
    data = decode_base64(ref.segment.component(5, 5))
    if data is None:
        raise _document_error(f"OBX {ref.sequence}: OBX-5.5 is not valid base64", location)
    if not _looks_like_xml(data):
        raise _document_error(
            f"OBX {ref.sequence}: OBX-5.5 decodes to {len(data)} bytes of non-XML data, "
            "not a CDA document (a placeholder text in place of the base64 CDA?)", location)
    try:
        tree = parse_xml(data, what="CDA document")
        header = read_cda_header(tree)
    except DocumentError as exc:
        raise DocumentError(f"OBX {ref.sequence}: {exc.detail}", report=exc.report,
                            location=location,
                            application_error=ApplicationError.OTHER) from exc
    return CdaDocument(ref.sequence, read_coded(ref.segment, 3), data, header, tree)


def decode_documents(
    documents: tuple[ObxRef, ...], warnings: list[RequestWarning]
) -> tuple[CdaDocument, ...]:
    decoded = tuple(decode_document(ref) for ref in documents)
    if len(decoded) == 2:
        first, second = decoded
        if _same_id(first.header.document_id, second.header.document_id):
            raise _document_error(
                "the two documents carry the same ClinicalDocument/id; an ORU pair (level 1 and "
                "level 3) must be two documents", _loc("OBX", second.obx_sequence, 5, 5))
        if first.level == second.level:
            _warn(warnings, f"both documents are CDA level {first.level}; an ORU pair is "
                            "normally one level 1 and one level 3",
                  ErrorCondition.APPLICATION_ERROR, _loc("OBX", second.obx_sequence, 5))
    return decoded


# -- 7. PID-3 ⇔ recordTarget/patientRole/id --------------------------------------------------------


def _pid_pairs(patient: PatientIdentity) -> set[tuple[str, str]]:
    return {(i.oid, i.value) for i in patient.identifiers if i.oid}


def _cda_pairs(document: CdaDocument) -> set[tuple[str, str]]:
    return {(i.root, i.extension or "") for i in document.header.patient_ids}


def _conflicting_oids(left: set[tuple[str, str]], right: set[tuple[str, str]]) -> set[str]:
    common = {oid for oid, _ in left} & {oid for oid, _ in right}
    return {
        oid for oid in common
        if {v for o, v in left if o == oid} != {v for o, v in right if o == oid}
    }


def check_patient_ids(patient: PatientIdentity, documents: tuple[CdaDocument, ...]) -> None:
    """PID-3 ⇔ recordTarget/patientRole/id, by (OID, value); the rule is in the module doc."""
    pid = _pid_pairs(patient)
    pid_ins = {p for p in pid if p[0] in INS_OIDS}
    location = _loc("PID", 1, 3)
    for document in documents:
        k = document.obx_sequence
        cda = _cda_pairs(document)
        cda_ins = {p for p in cda if p[0] in INS_OIDS}
        if pid_ins and not cda_ins:
            raise DocumentError(
                f"OBX {k}: PID-3 carries an INS but the CDA recordTarget/patientRole/id does not",
                location=location, application_error=ApplicationError.INS_MISSING)
        if pid_ins != cda_ins:
            raise DocumentError(
                f"OBX {k}: the INS of PID-3 and of the CDA recordTarget/patientRole/id differ "
                "(compared by OID and value)",
                location=location, application_error=ApplicationError.INS_MISMATCH)
        if _conflicting_oids(pid, cda):
            raise DocumentError(
                f"OBX {k}: PID-3 and the CDA recordTarget/patientRole/id give different values "
                "under the same assigning authority OID",
                location=location, application_error=ApplicationError.OTHER)
        if not pid & cda:
            raise DocumentError(
                f"OBX {k}: no identifier in common between PID-3 and the CDA "
                "recordTarget/patientRole/id (compared by OID and value)",
                location=location, application_error=ApplicationError.OTHER)


# -- 8-9. TXA-12 / TXA-13 ⇔ the CDA ids ------------------------------------------------------------


def _normalised(identifier: InstanceId) -> InstanceId:
    return InstanceId(identifier.root.strip(), (identifier.extension or "").strip() or None)


def _same_id(left: InstanceId, right: InstanceId) -> bool:
    return _normalised(left) == _normalised(right)


def check_txa(
    kind: MessageKind, txa: Segment | None, documents: tuple[CdaDocument, ...]
) -> tuple[EntityIdentifier | None, EntityIdentifier | None]:
    """MDM: TXA-12 denotes ClinicalDocument/id; T10: TXA-13 one of its parentDocument/id."""
    if txa is None:
        return None, None
    unique = read_entity_identifier(txa, 12)
    parent = read_entity_identifier(txa, 13)
    header = documents[0].header
    unique_id = unique.instance_id if unique is not None else None
    if unique_id is None or not _same_id(unique_id, header.document_id):
        raise _document_error(
            "TXA-12 does not denote the CDA ClinicalDocument/id (EI.1 = @extension with EI.3 = "
            "@root, or EI.1 = @root alone)", _loc("TXA", 1, 12))
    if kind is MessageKind.MDM_T10:
        _check_parent(parent, header.parent_document_ids)
    return unique, parent


def _check_parent(parent: EntityIdentifier | None, parents: tuple[InstanceId, ...]) -> None:
    location = _loc("TXA", 1, 13)
    if not parents:
        raise _document_error(
            "MDM^T10: the CDA has no relatedDocument/parentDocument/id to match TXA-13", location)
    parent_id = parent.instance_id if parent is not None else None
    if parent_id is None or not any(_same_id(parent_id, p) for p in parents):
        raise _document_error(
            "TXA-13 does not denote the CDA relatedDocument/parentDocument/id", location)


def check_related_documents(
    action: Action, documents: tuple[CdaDocument, ...], warnings: list[RequestWarning]
) -> None:
    """Warnings only: a replacement should name its parent, a new document should not."""
    for document in documents:
        k, header = document.obx_sequence, document.header
        location = _loc("OBX", k, 5, 5)
        if action is Action.REPLACE and not header.parent_document_ids:
            _warn(warnings, f"OBX {k}: replacement document without relatedDocument/"
                            "parentDocument/id", ErrorCondition.APPLICATION_ERROR, location)
        elif action is Action.NEW and header.parent_document_ids:
            _warn(warnings, f"OBX {k}: initial transmission of a document that names a parent "
                            "document", ErrorCondition.APPLICATION_ERROR, location)
        related = (header.related_document_type or "").upper()
        if action is Action.REPLACE and related and related != "RPLC":
            _warn(warnings, f"OBX {k}: relatedDocument/@typeCode {_shown(related)} is not RPLC",
                  ErrorCondition.APPLICATION_ERROR, location)


# -- 10. metadata ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckedMetadata:
    metadata: DmpMssMetadata
    locations: dict[MetadataFlag, ErrorLocation]  # OBX-5 of each flag found


def _expected_location(flag: MetadataFlag, document_count: int) -> ErrorLocation:
    """Where a missing flag should have been: its OBX-1 in a message that follows the order."""
    return _loc("OBX", document_count + list(MetadataFlag).index(flag) + 1)


def check_metadata(
    layout: Layout, warnings: list[RequestWarning]
) -> CheckedMetadata:
    """Every Y/N metadata present (ACK_* default to N), valued Y or N, no contradictory twin."""
    values: dict[MetadataFlag, bool] = {}
    locations: dict[MetadataFlag, ErrorLocation] = {}
    for entry in layout.metadata:
        flag = entry.name
        if not isinstance(flag, MetadataFlag):
            continue
        k = entry.obx.sequence
        value = yes_no(entry.obx.segment.component(5, 1))
        if value is None:
            raise ProfileError(f"OBX {k}: {flag.value} OBX-5 must be Y or N",
                               condition=ErrorCondition.TABLE_VALUE_NOT_FOUND,
                               location=_loc("OBX", k, 5))
        if flag in values:
            _duplicate_flag(flag, k, value == values[flag], warnings)
            continue
        values[flag] = value
        locations[flag] = _loc("OBX", k, 5)
        if entry.obx.segment.value(11).upper() != "F":
            _warn(warnings, f"OBX {k}: {flag.value} OBX-11 is not F",
                  ErrorCondition.TABLE_VALUE_NOT_FOUND, _loc("OBX", k, 11))
    defaulted = _fill_missing(values, len(layout.documents), warnings)
    order = [f for f in MetadataFlag if f in locations]
    if sorted(locations, key=lambda f: locations[f].sequence) != order:
        _warn(warnings, "the DMP/MSSanté metadata OBX are not in the order of the volet",
              ErrorCondition.SEGMENT_SEQUENCE_ERROR)
    return CheckedMetadata(DmpMssMetadata.from_flags(values, defaulted=defaulted), locations)


def _duplicate_flag(
    flag: MetadataFlag, sequence: int, same_value: bool, warnings: list[RequestWarning]
) -> None:
    if not same_value:
        raise ProfileError(f"OBX {sequence}: second {flag.value} with a different value",
                           condition=ErrorCondition.NON_CONFORMANT_CARDINALITY,
                           location=_loc("OBX", sequence, 3))
    _warn(warnings, f"OBX {sequence}: {flag.value} repeated with the same value",
          ErrorCondition.NON_CONFORMANT_CARDINALITY, _loc("OBX", sequence, 3))


def _fill_missing(
    values: dict[MetadataFlag, bool], document_count: int, warnings: list[RequestWarning]
) -> frozenset[MetadataFlag]:
    defaulted: set[MetadataFlag] = set()
    for flag in MetadataFlag:
        if flag in values:
            continue
        location = _expected_location(flag, document_count)
        if flag not in DEFAULTED_FLAGS:
            raise ProfileError(f"metadata OBX {flag.value} is missing",
                               condition=ErrorCondition.SEGMENT_SEQUENCE_ERROR,
                               location=location)
        _warn(warnings, f"metadata OBX {flag.value} is missing: taken as N",
              ErrorCondition.SEGMENT_SEQUENCE_ERROR, location)
        values[flag] = False
        defaulted.add(flag)
    return frozenset(defaulted)


# -- 11. recipients --------------------------------------------------------------------------------


def _requested(metadata: DmpMssMetadata, audience: Audience) -> bool:
    return metadata.destmssanteps if audience is Audience.PS else metadata.destmssantepat


def check_recipients(
    participants: Participants,
    metadata: DmpMssMetadata,
    patient: PatientIdentity,
    locations: dict[MetadataFlag, ErrorLocation],
    warnings: list[RequestWarning],
) -> tuple[Recipient, ...]:
    """Usable PRT RCT; a recipient of each group asked for by DESTMSSANTEPS / DESTMSSANTEPAT.
    An address given by two PRTs gets one mail (the first PRT's), with a W warning: two would
    share their Message-ID, and each receipt would then settle both."""
    recipients: list[Recipient] = []
    first_of: dict[str, int] = {}  # address (case-folded) -> the PRT that gave it first
    for participant in participants.recipients:
        kind = classify_recipient(participant)
        k = participant.prt_sequence
        needed = _requested(metadata, kind.audience)
        address = participant.address
        if address is None or not is_plausible_address(address):
            _unusable_address(k, address is None, needed, warnings)
            continue
        first = first_of.setdefault(address.casefold(), k)
        if first != k:
            _warn(warnings, f"PRT {k}: the same address as PRT {first}: one mail to it",
                  ErrorCondition.APPLICATION_ERROR, _loc("PRT", k, 15))
            continue
        if kind is RecipientKind.PATIENT:
            _check_patient_recipient(participant.person.id if participant.person else "",
                                     patient, k, needed, warnings)
        elif kind is RecipientKind.UNIDENTIFIED:
            _warn(warnings, f"PRT {k}: RCT with an address only (no PRT-5, PRT-8 or PRT-10); "
                            "treated as a professional/organisation mailbox",
                  ErrorCondition.REQUIRED_FIELD_MISSING, _loc("PRT", k))
        recipients.append(Recipient(kind, address, participant))
    for audience, flag in ((Audience.PS, MetadataFlag.DESTMSSANTEPS),
                           (Audience.PATIENT, MetadataFlag.DESTMSSANTEPAT)):
        if metadata[flag] and not any(r.audience is audience for r in recipients):
            group = "professional, organisation or application" if audience is Audience.PS \
                else "patient"
            raise ProfileError(f"{flag.value} = Y but no PRT RCT with a {group} address",
                               condition=ErrorCondition.SEGMENT_SEQUENCE_ERROR,
                               location=locations.get(flag, _loc("PRT")))
    return tuple(recipients)


def _unusable_address(
    sequence: int, missing: bool, needed: bool, warnings: list[RequestWarning]
) -> None:
    if missing:
        detail = f"PRT {sequence}: RCT without an X.400 address in PRT-15"
        condition = ErrorCondition.REQUIRED_FIELD_MISSING
    else:
        detail = f"PRT {sequence}: PRT-15 address is not a plain e-mail address"
        condition = ErrorCondition.DATA_TYPE_ERROR
    if needed:
        raise ProfileError(detail, condition=condition, location=_loc("PRT", sequence, 15))
    _warn(warnings, f"{detail}; ignored (its group is not a destination)", condition,
          _loc("PRT", sequence, 15))


def _check_patient_recipient(
    recipient_id: str, patient: PatientIdentity, sequence: int, needed: bool,
    warnings: list[RequestWarning],
) -> None:
    """A patient RCT that names an INS must name the INS of PID-3 (wrong-mailbox guard)."""
    pid_ins = {i.value for i in patient.identifiers if i.is_ins}
    if not recipient_id or not pid_ins or recipient_id in pid_ins:
        return
    detail = f"PRT {sequence}: the patient recipient's INS (PRT-5.1) is not an INS of PID-3"
    if needed:
        raise ProfileError(detail, condition=ErrorCondition.APPLICATION_ERROR,
                           location=_loc("PRT", sequence, 5),
                           application_error=ApplicationError.INS_MISMATCH)
    _warn(warnings, detail, ErrorCondition.APPLICATION_ERROR, _loc("PRT", sequence, 5))


# -- 12. the sending matrix, then the request ------------------------------------------------------


def _note_withheld(decision: SendingDecision, metadata: DmpMssMetadata,
                   warnings: list[RequestWarning]) -> None:
    if decision.route is MailRoute.NO_MAIL and not metadata.destdmp:
        _warn(warnings, "DESTDMP, DESTMSSANTEPS and DESTMSSANTEPAT are all N: nothing to send",
              ErrorCondition.APPLICATION_ERROR)
    for recipient in decision.withheld:
        k = recipient.participant.prt_sequence
        _warn(warnings, f"PRT {k}: {recipient.audience.value} recipient not sent to "
                        f"(route {decision.route.value})",
              ErrorCondition.APPLICATION_ERROR, _loc("PRT", k))


def parse_document_request(
    message: Message, *, matrix: SendingMatrix = CISIS_MATRIX
) -> DocumentRequest:
    """Read and check a CI-SIS ORU^R01 / MDM^T02/T04/T10. Raises MessageError (see module doc)."""
    warnings: list[RequestWarning] = []
    header = MessageHeader.from_segment(message.msh)
    kind = check_message_type(header, warnings)
    profile_version = check_profile(message.msh, warnings)
    layout = split_observations(message)
    warnings.extend(layout.warnings)
    core = check_segments(message, kind, layout, warnings)
    action = check_action(kind, core.orc, layout.documents)
    check_document_encoding(layout.documents, warnings)
    documents = decode_documents(layout.documents, warnings)
    patient = read_patient(core.pid)
    check_patient_ids(patient, documents)
    unique_id, parent_id = check_txa(kind, core.txa, documents)
    check_related_documents(action, documents, warnings)
    checked = check_metadata(layout, warnings)
    bodies, body_warnings = read_bodies(layout)
    warnings.extend(body_warnings)
    participants = read_participants(layout)
    warnings.extend(participants.warnings)
    recipients = check_recipients(participants, checked.metadata, patient, checked.locations,
                                  warnings)
    decision = plan_sending(checked.metadata, recipients, matrix, checked.locations)
    _note_withheld(decision, checked.metadata, warnings)
    return DocumentRequest(
        origin=MessageOrigin(kind, header.control_id, header.sending_application,
                             header.sending_facility, profile_version),
        action=action,
        documents=documents,
        patient=patient,
        patient_class=core.pv1.value(2).upper() if core.pv1 is not None else "",
        unique_document_id=unique_id,
        parent_document_id=parent_id,
        sender=participants.sender,
        recipients=recipients,
        reply_to=participants.reply_to,
        metadata=checked.metadata,
        bodies=bodies,
        patient_may_reply=not layout.no_reply_note,
        sending=decision,
        warnings=tuple(warnings),
    )
