"""Tolerant readers for the parts of a CI-SIS ORU/MDM message (reference §1.8–§1.10, §9).

These functions read; they do not judge. They accept the variants real senders produce and
return what they found plus `RequestWarning`s for what they tolerated. Deciding that a message
is wrong (and raising) is `connector.cisis.checks`' job. None of them raises on any input: a
malformed value comes back as None / '' and, where it matters, a warning.

Tolerated variants:
* `TEXT` / `text` in OBX-5.2, any case for `XML` / `Base64` (the check compares case-insensitively);
* base64 without `=` padding, or broken by white space;
* metadata names of older volet versions (`ACK_LECTURE`, `INVISIBLE_REPRESENTANTS_LEGAUX`,
  `MODIF_CONFIDENTIALITYCODE`), any case, stray spaces (the ER7 parser strips components);
* Y/N in any case, whatever the coding system (`expandedYes-NoIndicator`, `HL70136`, none);
* PRT-4 matched case-insensitively on its code prefix (`SB`, `RCT`, `REPLY`), whatever follows
  (`RCT^Results Copies Toç participation`);
* the e-mail address in PRT-15 (XTN-3 `X.400` or `Internet`, XTN-4 the address), else in any
  other field of the PRT with such an XTN (the spec example that shifted it into PRT-16);
* an OID written bare in the namespace component (XCN-9.1, CX-4.1) instead of HD-2.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

from connector.cisis.model import (
    BodyKind,
    CodedValue,
    EntityIdentifier,
    MailBodies,
    MetadataFlag,
    OrganisationRef,
    Participant,
    ParticipationRole,
    PatientIdentifier,
    PatientIdentity,
    PersonRef,
    RecipientKind,
    RequestWarning,
)
from connector.errors import ErrorLocation
from connector.hl7.codes import ErrorCondition
from connector.hl7.message import Composite, Message, Segment, component_of

_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+\Z")
# A deliberately plain address shape: one @, no white space, no characters that could break an
# e-mail header (<>,;:"()[]\) or be a control character, a dotted domain.
_ADDRESS = re.compile(r"[^@\s<>(),;:\"\[\]\\\x00-\x1f\x7f]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+\Z")

#: XTN-3 telecommunication equipment types that denote an e-mail address.
EMAIL_EQUIPMENT_TYPES = frozenset({"X.400", "INTERNET"})
#: The "Mon espace santé" domain: an address there is always the patient's mailbox.
PATIENT_MAIL_DOMAIN = "patient.mssante.fr"
#: OBX-3.3 of the DMP/MSSanté metadata OBX.
METADATA_CODING_SYSTEM = "METADMPMSS"
#: The comment type (NTE-4) that says the patient must not be able to reply (§1.10, row 8).
NO_REPLY_NOTE = "FIN"

_METADATA_NAMES: dict[str, MetadataFlag | BodyKind] = {
    **{flag.value: flag for flag in MetadataFlag},
    **{body.value: body for body in BodyKind},
    # names of the volet versions 1.2 and 2.0 (§1.10 "Variants")
    "ACK_LECTURE": MetadataFlag.ACK_LECTURE_MSS,
    "INVISIBLE_REPRESENTANTS_LEGAUX": MetadataFlag.INVISIBLE_REP_LEGAUX,
    "MODIF_CONFIDENTIALITYCODE": MetadataFlag.MODIF_CONF_CODE,
}


def _loc(
    segment: str, sequence: int, field: int | None = None, component: int | None = None
) -> ErrorLocation:
    return ErrorLocation(segment, sequence, field, component)


# -- scalar helpers --------------------------------------------------------------------------------


def is_oid(text: str) -> bool:
    return bool(_OID.match(text))


def is_plausible_address(text: str) -> bool:
    return bool(_ADDRESS.match(text))


def decode_base64(text: str) -> bytes | None:
    """Decode standard base64 leniently: white space ignored, missing `=` padding restored.

    Returns None when the text is not base64 at all (bad characters, or a length that no
    padding can repair, as in the truncated CORPSMAIL strings of the ANS ORU examples).

    The ~70 KB of an OBX-5 CDA go through this on every request: `str.split` drops what `\\s`
    matches at memchr speed, and binascii's strict mode checks the alphabet and the padding in
    C (a regular expression over the text cost ~20 times as much).
    """
    compact = "".join(text.split())
    unpadded = compact.rstrip("=")
    if not unpadded or len(compact) - len(unpadded) > 2 or len(unpadded) % 4 == 1:
        return None
    try:
        return binascii.a2b_base64(unpadded + "=" * (-len(unpadded) % 4), strict_mode=True)
    except (binascii.Error, ValueError):  # ValueError: a character outside ASCII
        return None


def yes_no(value: str) -> bool | None:
    """HL7 table 0136: `Y` → True, `N` → False (any case, spaces ignored), else None."""
    normalised = value.strip().upper()
    if normalised == "Y":
        return True
    if normalised == "N":
        return False
    return None


def read_coded(segment: Segment, position: int) -> CodedValue:
    return CodedValue(
        segment.component(position, 1),
        segment.component(position, 2),
        segment.component(position, 3),
    )


def read_entity_identifier(segment: Segment, position: int) -> EntityIdentifier | None:
    """An EI field (TXA-12 / TXA-13), or None when empty."""
    ei = EntityIdentifier(*(segment.component(position, c) for c in (1, 2, 3, 4)))
    return ei if ei.entity_id or ei.universal_id else None


def _authority(hd: Composite, component: int) -> tuple[str | None, str]:
    """An HD inside a composite (CX-4, XCN-9): (OID or None, namespace).

    The OID is HD-2; an OID written bare in HD-1 (the patient PRT-5.9 of the ANS ORU examples)
    is taken as the OID too.
    """
    namespace = hd.component(component, 1)
    universal = hd.component(component, 2)
    if universal and is_oid(universal):
        return universal, namespace
    if is_oid(namespace):
        return namespace, ""
    return None, namespace


# -- patient ---------------------------------------------------------------------------------------


def read_patient(pid: Segment) -> PatientIdentity:
    """PID-3 (every repetition with a value) and PID-32."""
    return PatientIdentity(read_identifiers(pid, 3), pid.value(32).upper())


def read_identifiers(segment: Segment, position: int) -> tuple[PatientIdentifier, ...]:
    """A repeating CX field (PID-3, MRG-1): every repetition with a value."""
    identifiers: list[PatientIdentifier] = []
    for cx in segment.composites(position):
        value = cx.component(1)
        if not value:
            continue
        oid, namespace = _authority(cx, 4)
        identifiers.append(PatientIdentifier(value, oid, namespace, cx.component(5).upper()))
    return tuple(identifiers)


# -- PRT -------------------------------------------------------------------------------------------


def participation_role(prt: Segment) -> ParticipationRole | None:
    """PRT-4.1 matched case-insensitively on its prefix; None when it names no known role."""
    code = prt.component(4, 1).upper()
    for role in (ParticipationRole.REPLY_TO, ParticipationRole.RECIPIENT,
                 ParticipationRole.SENDER):
        if code.startswith(role.value):
            return role
    return None


def read_person(prt: Segment) -> PersonRef | None:
    """PRT-5 (XCN), or None when it holds no identifier and no name."""
    return read_xcn(prt, 5)


def read_xcn(segment: Segment, position: int) -> PersonRef | None:
    """An XCN field (its first repetition), or None when it holds no identifier and no name."""
    xcn = segment.composite(position)
    ident = xcn.component(1)
    family = xcn.component(2)
    if not ident and not family:
        return None
    oid, namespace = _authority(xcn, 9)
    return PersonRef(
        id=ident,
        family_name=family,
        given_name=xcn.component(3),
        authority_oid=oid,
        authority_namespace=namespace,
        id_type=xcn.component(13).upper(),
    )


def read_organisation(prt: Segment) -> OrganisationRef | None:
    """PRT-8 (XON), or None when it holds no name and no identifier."""
    name = prt.component(8, 1)
    ident = prt.component(8, 10)
    if not name and not ident:
        return None
    authority = prt.component(8, 6, 2) or prt.component(8, 6, 1)
    return OrganisationRef(
        name=name, id=ident, authority=authority, id_type=prt.component(8, 7).upper()
    )


def _email_in_field(segment: Segment, position: int) -> str | None:
    """XTN-4 of the first repetition of field `position` whose XTN-3 is an e-mail type."""
    for raw in segment.repetitions(position):
        equipment = component_of(raw, 3, d=segment.delimiters).upper()
        address = component_of(raw, 4, d=segment.delimiters)
        if equipment in EMAIL_EQUIPMENT_TYPES and address:
            return address
    return None


def find_address(prt: Segment) -> tuple[str | None, int | None]:
    """The MSSanté address of a PRT and the field it was found in (15 normally)."""
    found = _email_in_field(prt, 15)
    if found is not None:
        return found, 15
    for position in range(5, len(prt.fields)):
        if position == 15:
            continue
        found = _email_in_field(prt, position)
        if found is not None:
            return found, position
    return None, None


def read_participant(
    prt: Segment, sequence: int
) -> tuple[Participant | None, list[RequestWarning]]:
    """One PRT, or None (with a warning) when PRT-4 names no role the volet defines."""
    warnings: list[RequestWarning] = []
    role = participation_role(prt)
    if role is None:
        warnings.append(RequestWarning(
            f"PRT {sequence}: PRT-4 is not SB, RCT or REPLY; segment ignored",
            ErrorCondition.TABLE_VALUE_NOT_FOUND, _loc("PRT", sequence, 4),
        ))
        return None, warnings
    address, position = find_address(prt)
    if position is not None and position != 15:
        warnings.append(RequestWarning(
            f"PRT {sequence}: e-mail address found in PRT-{position} instead of PRT-15",
            ErrorCondition.SEGMENT_SEQUENCE_ERROR, _loc("PRT", sequence, position),
        ))
    participant = Participant(
        role=role,
        prt_sequence=sequence,
        person=read_person(prt),
        organisation=read_organisation(prt),
        device_id=prt.component(10, 1) or None,
        address=address,
    )
    return participant, warnings


def classify_recipient(participant: Participant) -> RecipientKind:
    """What kind of mailbox a PRT RCT designates.

    The patient is recognised first, by any of its signs (PRT-5 with an INS OID or type `INS`,
    or an address at patient.mssante.fr), so that a patient mailbox is never mistaken for a
    professional one. Then PRT-10 (application), PRT-5 (professional), PRT-8 (organisation):
    a professional or an application PRT may also name its organisation in PRT-8.
    """
    address = (participant.address or "").lower()
    if (participant.person is not None and participant.person.is_patient) or address.endswith(
        "@" + PATIENT_MAIL_DOMAIN
    ):
        return RecipientKind.PATIENT
    if participant.device_id:
        return RecipientKind.APPLICATION
    if participant.person is not None:
        return RecipientKind.PROFESSIONAL
    if participant.organisation is not None:
        return RecipientKind.ORGANISATION
    return RecipientKind.UNIDENTIFIED


# -- OBX / NTE layout ------------------------------------------------------------------------------


def metadata_name(obx: Segment) -> MetadataFlag | BodyKind | None:
    """The metadata an OBX carries (OBX-3.1, any case, older names accepted), else None."""
    code = obx.component(3, 1).upper().replace(" ", "")
    return _METADATA_NAMES.get(code)


@dataclass(frozen=True, slots=True)
class ObxRef:
    """An OBX and its 1-based occurrence among the message's OBX segments (ERR-2 sequence)."""

    segment: Segment
    sequence: int


@dataclass(frozen=True, slots=True)
class MetadataObx:
    name: MetadataFlag | BodyKind
    obx: ObxRef


@dataclass(frozen=True, slots=True)
class PrtRef:
    segment: Segment
    sequence: int  # 1-based occurrence among the message's PRT segments
    after_document: bool  # follows the first document OBX (where the volet puts PRT)


@dataclass(frozen=True, slots=True)
class Layout:
    """The message's observation part split the way the volet defines it (§1.2, §1.3).

    `documents`: the OBX before the first metadata OBX (the CDA, one or two).
    `metadata`: the OBX whose OBX-3.1 names a DMP/MSSanté metadata, in message order.
    `no_reply_note`: an NTE with NTE-4 = FIN follows the DESTMSSANTEPAT OBX.
    """

    documents: tuple[ObxRef, ...]
    metadata: tuple[MetadataObx, ...]
    participants: tuple[PrtRef, ...]
    no_reply_note: bool
    warnings: tuple[RequestWarning, ...]


def _is_no_reply_note(nte: Segment) -> bool:
    return nte.component(4, 1).upper() == NO_REPLY_NOTE


@dataclass
class _LayoutBuilder:
    documents: list[ObxRef]
    metadata: list[MetadataObx]
    participants: list[PrtRef]
    warnings: list[RequestWarning]
    no_reply_note: bool = False
    current: MetadataObx | ObxRef | None = None
    obx_count: int = 0
    prt_count: int = 0

    def add_obx(self, segment: Segment) -> None:
        self.obx_count += 1
        ref = ObxRef(segment, self.obx_count)
        name = metadata_name(segment)
        if name is not None:
            self.current = MetadataObx(name, ref)
            self.metadata.append(self.current)
            return
        self.current = ref
        if self.metadata:
            self.warnings.append(RequestWarning(
                f"OBX {ref.sequence}: OBX-3 is not a DMP/MSSanté metadata; segment ignored",
                ErrorCondition.TABLE_VALUE_NOT_FOUND, _loc("OBX", ref.sequence, 3),
            ))
        else:
            self.documents.append(ref)

    def add_prt(self, segment: Segment) -> None:
        self.prt_count += 1
        after_document = bool(self.documents) and self.current is self.documents[0]
        if not after_document:
            self.warnings.append(RequestWarning(
                f"PRT {self.prt_count}: not in the group of the first document OBX",
                ErrorCondition.SEGMENT_SEQUENCE_ERROR, _loc("PRT", self.prt_count),
            ))
        self.participants.append(PrtRef(segment, self.prt_count, after_document))

    def add_nte(self, segment: Segment, sequence: int) -> None:
        if not _is_no_reply_note(segment):
            return
        current = self.current
        if isinstance(current, MetadataObx) and current.name is MetadataFlag.DESTMSSANTEPAT:
            self.no_reply_note = True
            return
        self.warnings.append(RequestWarning(
            f"NTE {sequence}: an NTE-4 = {NO_REPLY_NOTE} note not under DESTMSSANTEPAT; ignored",
            ErrorCondition.SEGMENT_SEQUENCE_ERROR, _loc("NTE", sequence, 4),
        ))


def split_observations(message: Message) -> Layout:
    """Group OBX, PRT and NTE segments as the volet's OBSERVATION / OBXNTE groups."""
    builder = _LayoutBuilder([], [], [], [])
    nte_count = 0
    for segment in message.segments:
        if segment.name == "OBX":
            builder.add_obx(segment)
        elif segment.name == "PRT":
            builder.add_prt(segment)
        elif segment.name == "NTE":
            nte_count += 1
            builder.add_nte(segment, nte_count)
    return Layout(
        documents=tuple(builder.documents),
        metadata=tuple(builder.metadata),
        participants=tuple(builder.participants),
        no_reply_note=builder.no_reply_note,
        warnings=tuple(builder.warnings),
    )


# -- participants and bodies -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Participants:
    sender: Participant | None
    recipients: tuple[Participant, ...]  # every PRT RCT, address or not
    reply_to: Participant | None
    warnings: tuple[RequestWarning, ...]


def _keep_first(
    role: ParticipationRole, found: list[Participant], warnings: list[RequestWarning]
) -> Participant | None:
    for extra in found[1:]:
        warnings.append(RequestWarning(
            f"PRT {extra.prt_sequence}: second PRT-4 = {role.value}; the first one is used",
            ErrorCondition.NON_CONFORMANT_CARDINALITY, _loc("PRT", extra.prt_sequence, 4),
        ))
    return found[0] if found else None


def read_participants(layout: Layout) -> Participants:
    """Sender (SB), recipients (RCT) and reply-to (REPLY) from every PRT of the message."""
    warnings: list[RequestWarning] = []
    by_role: dict[ParticipationRole, list[Participant]] = {role: [] for role in ParticipationRole}
    for ref in layout.participants:
        participant, found = read_participant(ref.segment, ref.sequence)
        warnings.extend(found)
        if participant is not None:
            by_role[participant.role].append(participant)
    reply_to = _keep_first(ParticipationRole.REPLY_TO, by_role[ParticipationRole.REPLY_TO],
                           warnings)
    if reply_to is not None and reply_to.address is None:
        warnings.append(RequestWarning(
            f"PRT {reply_to.prt_sequence}: REPLY without an X.400 address in PRT-15; ignored",
            ErrorCondition.REQUIRED_FIELD_MISSING, _loc("PRT", reply_to.prt_sequence, 15),
        ))
        reply_to = None
    return Participants(
        sender=_keep_first(ParticipationRole.SENDER, by_role[ParticipationRole.SENDER], warnings),
        recipients=tuple(by_role[ParticipationRole.RECIPIENT]),
        reply_to=reply_to,
        warnings=tuple(warnings),
    )


def read_body(entry: MetadataObx) -> tuple[str | None, list[RequestWarning]]:
    """A CORPSMAIL_* body: OBX-5.5 base64 of UTF-8 text. Undecodable → None and a warning."""
    obx = entry.obx
    raw = obx.segment.component(5, 5)
    if not raw:
        return None, []
    decoded = decode_base64(raw)
    problem = "is not valid base64"
    if decoded is not None:
        try:
            return decoded.decode("utf-8"), []
        except UnicodeDecodeError:
            problem = "does not decode to UTF-8 text"
    return None, [RequestWarning(
        f"OBX {obx.sequence}: {entry.name.value} OBX-5.5 {problem}; the default body will be used",
        ErrorCondition.DATA_TYPE_ERROR, _loc("OBX", obx.sequence, 5, 5),
    )]


def read_bodies(layout: Layout) -> tuple[MailBodies, tuple[RequestWarning, ...]]:
    """CORPSMAIL_PS / CORPSMAIL_PATIENT (the first of each; a second is ignored with a warning)."""
    warnings: list[RequestWarning] = []
    bodies: dict[BodyKind, str | None] = {}
    for entry in layout.metadata:
        if not isinstance(entry.name, BodyKind):
            continue
        if entry.name in bodies:
            warnings.append(RequestWarning(
                f"OBX {entry.obx.sequence}: second {entry.name.value}; the first one is used",
                ErrorCondition.NON_CONFORMANT_CARDINALITY, _loc("OBX", entry.obx.sequence, 3),
            ))
            continue
        body, found = read_body(entry)
        warnings.extend(found)
        bodies[entry.name] = body
    return (
        MailBodies(ps=bodies.get(BodyKind.CORPSMAIL_PS),
                   patient=bodies.get(BodyKind.CORPSMAIL_PATIENT)),
        tuple(warnings),
    )
