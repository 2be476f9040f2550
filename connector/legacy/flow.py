"""A legacy ORU^R01 (no CI-SIS profile) through its mapping: a CDA R2 level 1 document and a
`DocumentRequest`, so that it takes the same checks, mails, delivery and receipts as a CI-SIS
request.

Steps (`LegacyFlows.request`):

1. the first mapping whose `match` holds (MSH-3/MSH-4 namespace, MSH-9 `code^event`, OBR-4.1);
   none: `LegacyMappingError` (AE 207, ERR-5 906, at OBR-4);
2. the body: the first OBX of type ED whose subtype is PDF (`^application^pdf^Base64^...`,
   also `AP^PDF`), or the TX/FT/ST OBX joined line by line as `text/plain` (UTF-8);
3. the patient from PID (IPP = PID-3 with CX-5 `PI`; INS = PID-3 with CX-5 `INS` and an INS OID;
   PID-5 birth name (type L); PID-7; PID-8; PID-11 `BDL` county = birth place; PID-32), enriched
   by the ADT context when one is given (`PatientTraits`). The INS goes into the document only
   when the identity is VALI and its traits are complete (structuration minimale requires birth
   names and given names, birth date and place, sex with an INS);
4. the author and legal authenticator from the mapping's fields (OBR-32 NDL, ORC-12 / OBR-16 /
   OBX-16 XCN), the first that carries an RPPS or a national PS id, else the default person;
5. the recipients by rule: `ordering-provider` (ORC-12, else OBR-16), `copies` (OBR-28
   repetitions), `medecin-traitant` (ADT context), fixed addresses; persons are resolved to
   MSSanté addresses by the directory; an unresolved one is skipped (W warning) or refuses the
   request (AE), per the mapping;
6. the result status: a cancelled result (OBX-11 D/W/X of the body's OBX, OBR-25 X, ORC-1
   CA/OC/CR) is refused (AE); a corrected one (OBX-11 or OBR-25 C) as `results.corrected` says:
   refused (AE, the default); sent as a new document with a W warning (`new`); or (`replace`)
   linked: the order (`order_key`) names the document set (`report_set_id`, the same for every
   report of the order), intake reads the set's latest version from the store
   (`ReportVersion`), and the report goes as the next version replacing it (relatedDocument
   RPLC, XDM action C, the mails' "annule et remplace" notice). A corrected result whose earlier
   report the store does not know goes as version 1 with a W. Under `replace`, a cancelled
   result withdraws the order's latest report: that CDA, as it was sent, goes again as a
   deletion to the addresses it went to (`_withdrawn`), and the next report of the order is the
   next version, replacing nothing.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Final, Protocol

from connector.cda.header import InstanceId, read_cda_header
from connector.cda.safe_xml import parse_xml
from connector.cisis.model import (
    INS_OIDS,
    Action,
    CdaDocument,
    CodedValue,
    DmpMssMetadata,
    MailBodies,
    MailRoute,
    MessageKind,
    MessageOrigin,
    Participant,
    ParticipationRole,
    PatientIdentifier,
    PatientIdentity,
    PersonRef,
    Recipient,
    RecipientKind,
    RequestWarning,
    SendingDecision,
)
from connector.cisis.model import DocumentRequest as Request
from connector.cisis.parse import is_oid
from connector.directory.whitelist import PATIENT_DOMAIN
from connector.errors import ErrorLocation, MessageError, ProfileError
from connector.hl7.codes import ApplicationError, ErrorCondition
from connector.hl7.header import MessageHeader
from connector.hl7.message import Message, Segment, component_of
from connector.legacy.cda import (
    STRUCTURE_ROOT,
    CodedConcept,
    LevelOneDocument,
    Organisation,
    Patient,
    Person,
    build_level_one,
)
from connector.legacy.mapping import (
    BodySource,
    CorrectionPolicy,
    DefaultPerson,
    FlowMapping,
    MailboxChoice,
    RecipientRule,
    UnresolvedPolicy,
)

# Result statuses that cancel a result: OBX-11 (HL7 table 0085: D deleted, W wrong, X cannot be
# obtained), OBR-25 (table 0123: X cancelled), ORC-1 (table 0119: CA cancel, OC cancelled, CR
# cancelled as requested).
_CANCELLED: Final = (("OBX", 11, frozenset({"D", "W", "X"})), ("OBR", 25, frozenset({"X"})),
                     ("ORC", 1, frozenset({"CA", "OC", "CR"})))
_CORRECTED: Final = (("OBX", 11, frozenset({"C"})), ("OBR", 25, frozenset({"C"})))

DEFAULT_PRACTICE_SETTING: Final = CodedConcept("ETABLISSEMENT", "Etablissement de santé",
                                               "1.2.250.1.213.1.1.4.9")
DEFAULT_FACILITY: Final = CodedConcept("SA01", "Etablissement public de santé",
                                       "1.2.250.1.71.4.2.4")
_TS: Final = re.compile(r"(\d{8})(\d{4,6})?(?:\.\d+)?([+-]\d{4})?")


class LegacyMappingError(MessageError):
    """No mapping matches, or the message lacks what its mapping needs: AE, kept."""


class Resolver(Protocol):
    """The directory, as the flow needs it: a PS national id (8 + RPPS, or an RPPS) to the
    MSSanté addresses chosen by the mapping's mailbox rule, inside the trust space."""

    def addresses(self, national_id: str, choice: MailboxChoice) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class PatientTraits:
    """What the ADT context knows of the patient (overrides PID where set)."""

    birth_family: str | None = None
    used_family: str | None = None
    given: str | None = None
    given_names: str | None = None
    birth_time: str | None = None
    gender: str | None = None
    birth_place_code: str | None = None
    ins: str | None = None
    ins_oid: str | None = None
    identity_status: str | None = None
    medecin_traitant: str | None = None  # national id (8 + RPPS)


@dataclass(frozen=True, slots=True)
class Establishment:
    """The tenant as custodian: its name, FINESS and OID (for the IPP authority)."""

    name: str
    oid: str
    finess: str | None = None

    @property
    def custodian(self) -> Organisation:
        if self.finess:
            return Organisation(InstanceId(STRUCTURE_ROOT, f"1{self.finess}"), self.name)
        return Organisation(InstanceId(self.oid), self.name)


@dataclass(frozen=True, slots=True)
class ReportVersion:
    """The latest version the store knows of an order's report (`results.corrected:
    replace`): the next report of the order replaces it, a cancellation withdraws it."""

    document_id: InstanceId
    set_id: InstanceId
    version: int
    # For a withdrawal, while the payload retention keeps its mails: its CDA as sent and the
    # addresses it went to.
    cda: bytes | None = field(default=None, repr=False)
    recipients: tuple[str, ...] = ()
    withdrawn: bool = False  # deleted: the order's next report starts over, replacing nothing


# The order's identifiers, in the order they name a report's document set: the filler's order
# number (the lab's own, stable across its reports of the order), then the placer's.
ORDER_FIELDS: Final = (("OBR", 3), ("ORC", 3), ("OBR", 2), ("ORC", 2))


def report_cancelled(mapping: FlowMapping, message: Message) -> tuple[str, int, int, str] | None:
    """Where the message says its report is cancelled, if it does: the report's own OBX-11 (D,
    W or X), OBR-25 (X), ORC-1 (CA, OC, CR): (segment, sequence, field, value). The OBX is the
    one the mapping takes the report from, found without reading its content (a cancellation
    may carry none); an analyte of a panel marked X ("cannot be obtained") is not the report."""
    sequence = _report_obx(mapping, message)
    segments = {"OBX": (message.all("OBX")[sequence - 1] if sequence else None, sequence or 1),
                "OBR": (message.first("OBR"), 1), "ORC": (message.first("ORC"), 1)}
    for name, position, values in _CANCELLED:
        segment, at = segments[name]
        if segment is not None and segment.value(position) in values:
            return name, at, position, segment.value(position)
    return None


_TEXT_TYPES: Final = ("TX", "FT", "ST")


def _report_line(mapping: FlowMapping, obx: Segment) -> bool:
    """Whether `obx` is one the mapping may take the report from (its `body.obx_code`)."""
    return mapping.body_obx_code is None or obx.value(3) == mapping.body_obx_code


def _report_obx(mapping: FlowMapping, message: Message) -> int | None:
    """The sequence of the OBX that holds the report (`FlowMapping.body`): the first ED whose
    subtype says PDF, or the first TX/FT/ST line; by its type only, not its content."""
    for sequence, obx in enumerate(message.all("OBX"), start=1):
        if not _report_line(mapping, obx):
            continue
        if mapping.body is BodySource.OBX_PDF:
            subtype = (obx.component(5, 2) + obx.component(5, 3)).upper()
            if obx.value(2) == "ED" and "PDF" in subtype:
                return sequence
        elif obx.value(2) in _TEXT_TYPES:
            return sequence
    return None


def _sent_to(address: str) -> Recipient:
    """A recipient a withdrawn report went to, known by its address only."""
    patient = address.rpartition("@")[2].lower() == PATIENT_DOMAIN
    participant = Participant(ParticipationRole.RECIPIENT, 0, None, None, None, address)
    return Recipient(RecipientKind.PATIENT if patient else RecipientKind.UNIDENTIFIED, address,
                     participant)


def order_key(message: Message) -> str | None:
    """`OBR-3`, `ORC-3`, `OBR-2` or `ORC-2`, the first whose entity identifier is given: its
    kind (filler or placer), identifier and namespace, unescaped, joined by a character no
    HL7 value holds (US, 0x1F), so that the message's delimiters do not change it."""
    for name, position in ORDER_FIELDS:
        segment = message.first(name)
        if segment is None or not segment.component(position, 1).strip():
            continue
        kind = "filler" if position == 3 else "placer"
        return _UNIT.join((kind, segment.component(position, 1).strip(),
                           segment.component(position, 2).strip()))
    return None


_UNIT: Final = "\x1f"


@dataclass(frozen=True, slots=True)
class LegacyOutcome:
    request: Request
    mapping: FlowMapping
    unresolved: tuple[str, ...] = field(default=())  # rules or ids not resolved (skipped)


def _located(detail: str, segment: str, sequence: int, position: int,
             component: int | None = None) -> LegacyMappingError:
    return LegacyMappingError(detail, condition=ErrorCondition.APPLICATION_ERROR,
                              application_error=ApplicationError.OTHER,
                              location=ErrorLocation(segment, sequence, position, component))


def hl7_time(value: str, now: datetime) -> str | None:
    """An HL7 TS with minutes and an offset (the local one when the sender gave none)."""
    match = _TS.fullmatch(value.strip())
    if match is None:
        return None
    day, clock, offset = match.group(1), match.group(2) or "0000", match.group(3)
    if offset is None:
        offset = now.strftime("%z") or "+0000"
    return f"{day}{clock}{offset}"


def national_id(identifier: str) -> str | None:
    """8 + RPPS (12 digits) from an RPPS (11 digits) or a national id; None otherwise."""
    value = identifier.strip()
    if re.fullmatch(r"\d{11}", value):
        return f"8{value}"
    if re.fullmatch(r"[0-9]\d{11}", value):
        return value
    return None


class LegacyFlows:
    def __init__(self, mappings: Sequence[FlowMapping], establishment: Establishment, *,
                 resolver: Resolver | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now().astimezone()) -> None:
        self.mappings = tuple(mappings)
        self.establishment = establishment
        self.resolver = resolver
        self.clock = clock

    def match(self, header: MessageHeader, message: Message) -> FlowMapping:
        obr = message.first("OBR")
        obr4 = obr.value(4) if obr is not None else ""
        for mapping in self.mappings:
            m = mapping.match
            if m.sending_application and component_of(header.sending_application or "") \
                    not in m.sending_application:
                continue
            if m.sending_facility and component_of(header.sending_facility or "") \
                    not in m.sending_facility:
                continue
            kind = f"{header.message_type.code}^{header.message_type.event}"
            if m.message_type and kind not in m.message_type:
                continue
            if m.obr4_code and obr4 not in m.obr4_code:
                continue
            return mapping
        raise _located("no legacy mapping matches this message (sending application, MSH-9, "
                       "OBR-4)", "OBR", 1, 4)

    def withdraws(self, header: MessageHeader, message: Message) -> bool:
        """Whether the message cancels a report that its order's set links (intake then reads
        that report's CDA and recipients along with its version)."""
        if self.report_set_id(header, message) is None:
            return False
        return report_cancelled(self.match(header, message), message) is not None

    def report_set_id(self, header: MessageHeader, message: Message) -> InstanceId | None:
        """The document set of the message's order when its mapping links reports
        (`results.corrected: replace`), else None (no such mapping, no order number).

        A name-based UUID (`2.25.<uuid5>`) of the establishment, the sending application and
        facility (MSH-3, MSH-4: namespace and universal id, unescaped), the mapping's document
        type and the order (`order_key`): every report of that type for the order gets it,
        without a lookup, whatever delimiters the message uses; another establishment's or
        lab's orders, and another kind of report of the same order, never do."""
        try:
            mapping = self.match(header, message)
        except LegacyMappingError:
            return None
        key = order_key(message) if mapping.corrected is CorrectionPolicy.REPLACE else None
        if key is None:
            return None
        msh = message.msh
        name = _UNIT.join((
            "mssante-connector report set", self.establishment.oid,
            msh.component(3, 1).strip(), msh.component(3, 2).strip(),
            msh.component(4, 1).strip(), msh.component(4, 2).strip(),
            mapping.document_type.code, mapping.document_type.system, key))
        return InstanceId(f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}")

    def request(self, header: MessageHeader, message: Message,
                traits: PatientTraits | None = None,
                previous: ReportVersion | None = None) -> LegacyOutcome:
        """`previous`: the latest version of the order's report the store knows (read by
        intake for `report_set_id`), which this report replaces, or withdraws when it cancels
        the result (`results.corrected: replace`)."""
        mapping = self.match(header, message)
        set_id = self.report_set_id(header, message)
        if set_id is None or (previous is not None and previous.set_id != set_id):
            previous = None
        patient, identity = self._patient(message, traits)
        cancelled = report_cancelled(mapping, message) if set_id is not None else None
        if cancelled is not None:  # the report sent before goes again, as a deletion
            obx_sequence, cda = cancelled[1], self._withdrawn(mapping, cancelled, previous)
            correction, action = None, Action.DELETE
        else:
            obx_sequence, cda, correction = self._report(mapping, message, patient, set_id,
                                                         previous)
            action = (Action.REPLACE if previous is not None and not previous.withdrawn
                      else Action.NEW)
        cda_tree = parse_xml(cda)
        cda_header = read_cda_header(cda_tree)
        route = MailRoute.PS_ONLY
        unresolved: tuple[str, ...] = ()
        if cancelled is not None and previous is not None:
            # Exactly those the report went to: not the cancellation's own (a new copy
            # recipient would receive the report it withdraws), none left out.
            recipients = tuple(_sent_to(address) for address in previous.recipients)
            if any(r.kind is RecipientKind.PATIENT for r in recipients):
                route = MailRoute.PS_AND_PATIENT
        else:
            recipients, unresolved = self._recipients(mapping, message, traits)
        if mapping.metadata.destmssantepat and cancelled is None:  # Mon espace santé
            ins = patient.ids[0] if patient.ids[0].root in INS_OIDS else None
            if ins is not None and ins.extension:
                address = f"{ins.extension}@{PATIENT_DOMAIN}"
                person = PersonRef(ins.extension, patient.birth_family, patient.given,
                                   ins.root, "", "INS")
                recipients = (*recipients, Recipient(
                    RecipientKind.PATIENT, address,
                    Participant(ParticipationRole.RECIPIENT, 0, person, None, None, address)))
                route = MailRoute.PS_AND_PATIENT
                if not any(i.is_ins for i in identity.identifiers):  # the INS came from ADT
                    identity = replace(identity, identifiers=(
                        *identity.identifiers,
                        PatientIdentifier(ins.extension, ins.root, "", "INS")))
            elif mapping.unresolved is UnresolvedPolicy.REJECT:
                raise _located("the patient's mailbox needs a validated INS with its traits",
                               "PID", 1, 3)
            else:
                unresolved = (*unresolved, "patient mailbox (no validated INS)")
        warnings = tuple(RequestWarning(f"recipient not resolved ({what}): skipped",
                                        ErrorCondition.APPLICATION_ERROR)
                         for what in unresolved)
        if correction is not None:
            warnings = (correction, *warnings)
        code = mapping.document_type
        request = Request(
            origin=MessageOrigin(MessageKind.ORU_R01, header.control_id or "",
                                 header.sending_application or "",
                                 header.sending_facility or "", ""),
            action=action,
            documents=(CdaDocument(obx_sequence, CodedValue(code.code, code.display,
                                                            code.system), cda, cda_header,
                                     cda_tree),),
            patient=identity, patient_class=self._patient_class(message),
            unique_document_id=None, parent_document_id=None, sender=None,
            recipients=recipients, reply_to=None, metadata=self._metadata(mapping),
            bodies=MailBodies(), patient_may_reply=False,
            sending=SendingDecision(route, None, f"legacy mapping {mapping.name}", recipients),
            warnings=warnings)
        return LegacyOutcome(request, mapping, unresolved)

    # -- pieces ----------------------------------------------------------------------------

    def _report(self, mapping: FlowMapping, message: Message, patient: Patient,
                set_id: InstanceId | None, previous: ReportVersion | None
                ) -> tuple[int, bytes, RequestWarning | None]:
        """The report's own CDA (its OBX sequence, its bytes, what its result status says)."""
        now = self.clock()
        media_type, content, obx_sequence = self._body(mapping, message)
        correction = self._correction(
            mapping, message, obx_sequence,
            linked=previous is not None and not previous.withdrawn, in_set=set_id is not None)
        author = self._person(mapping.author.fields, mapping.author.default, message, "author")
        legal = self._person(mapping.legal_authenticator.fields,
                             mapping.legal_authenticator.default, message,
                             "legal authenticator")
        stamp = now.strftime("%Y%m%d%H%M%S%z")
        signed = hl7_time(self._field(message, "OBR-22"), now) or stamp  # results reported
        service_start = next((t for f in mapping.service_event_time
                              if (t := hl7_time(self._field(message, f), now))), stamp)
        document = LevelOneDocument(
            id=InstanceId(f"2.25.{uuid.uuid4().int}"),
            set_id=set_id or InstanceId(f"2.25.{uuid.uuid4().int}"),
            version=previous.version + 1 if previous is not None else 1,
            replaces=(previous.document_id if previous is not None and not previous.withdrawn
                      else None),
            effective_time=stamp,
            type=mapping.document_type,
            title=mapping.title, confidentiality=mapping.confidentiality, patient=patient,
            author=author, author_time=signed,
            custodian=self.establishment.custodian, legal_authenticator=legal,
            legal_time=signed,
            service_event=mapping.service_event or mapping.document_type,
            service_start=service_start, service_end=None,
            practice_setting=mapping.practice_setting or DEFAULT_PRACTICE_SETTING,
            healthcare_facility=mapping.healthcare_facility or DEFAULT_FACILITY,
            encounter_start=self._encounter_start(message, now) or service_start,
            media_type=media_type, content=content)
        return obx_sequence, build_level_one(document), correction

    @staticmethod
    def _withdrawn(mapping: FlowMapping, cancelled: tuple[str, int, int, str],
                   previous: ReportVersion | None) -> bytes:
        """The CDA a cancelled result withdraws: the order's latest report, as it was sent."""
        name, sequence, position, value = cancelled
        if previous is not None and previous.withdrawn:
            raise _located(f"a cancelled result ({name}-{position} = {value}): the report of "
                           "this order was already withdrawn", name, sequence, position)
        if previous is None:
            raise _located(f"a cancelled result ({name}-{position} = {value}) of an order whose "
                           f"report is not known here (legacy mapping {mapping.name!r}): "
                           "nothing to withdraw; tell the recipients another way",
                           name, sequence, position)
        if previous.cda is None or not previous.recipients:
            raise _located(f"a cancelled result ({name}-{position} = {value}): the report it "
                           "withdraws is no longer held (store.payload_retention_days); tell "
                           "the recipients another way", name, sequence, position)
        return previous.cda

    @staticmethod
    def _correction(mapping: FlowMapping, message: Message, obx_sequence: int, *,
                    linked: bool = False, in_set: bool = False) -> RequestWarning | None:
        """The result status of the body's OBX, its OBR and ORC: a cancelled result is refused
        (sent as a new document, it would reach the recipients as a valid report); a corrected
        one is refused, sent as new with a warning, or (`linked`: it replaces the latest known
        version of its order's report) sent as the next version, as the mapping says. `in_set`:
        the order names a document set. None: nothing to say."""
        segments = {"OBX": (message.all("OBX")[obx_sequence - 1], obx_sequence),
                    "OBR": (message.first("OBR"), 1), "ORC": (message.first("ORC"), 1)}

        def said(statuses: tuple[tuple[str, int, frozenset[str]], ...]
                 ) -> tuple[str, int, int, str] | None:
            for name, position, values in statuses:
                segment, sequence = segments[name]
                value = segment.value(position) if segment is not None else ""
                if value in values:
                    return name, sequence, position, value
            return None

        cancelled = said(_CANCELLED)
        if cancelled is not None:
            name, sequence, position, value = cancelled
            raise _located(f"a cancelled result ({name}-{position} = {value}) is not sent by "
                           f"legacy mapping {mapping.name!r}: as a new document it would reach "
                           "the recipients as a valid report; tell them another way",
                           name, sequence, position)
        corrected = said(_CORRECTED)
        if corrected is None:
            return None
        name, sequence, position, value = corrected
        where = f"{name}-{position} = {value}"
        if linked:
            return None
        if mapping.corrected is CorrectionPolicy.REPLACE:
            why = ("the report it corrects is not known here" if in_set else
                   "no order number (OBR-3, ORC-3, OBR-2, ORC-2) to link it by")
            return RequestWarning(f"corrected result ({where}) sent as a new document: {why}",
                                  ErrorCondition.APPLICATION_ERROR,
                                  ErrorLocation(name, sequence, position))
        if mapping.corrected is CorrectionPolicy.REFUSE:
            raise _located(f"a corrected result ({where}) is refused by legacy mapping "
                           f"{mapping.name!r} (results.corrected = refuse): as a new document "
                           "it would not replace the report it corrects", name, sequence,
                           position)
        return RequestWarning(f"corrected result ({where}) sent as a new document, not linked "
                              "to the report it corrects", ErrorCondition.APPLICATION_ERROR,
                              ErrorLocation(name, sequence, position))

    @staticmethod
    def _field(message: Message, reference: str) -> str:
        name, _, position = reference.partition("-")
        segment = message.first(name)
        return segment.value(int(position)) if segment is not None else ""

    @staticmethod
    def _body(mapping: FlowMapping, message: Message) -> tuple[str, bytes, int]:
        sequence = _report_obx(mapping, message)
        if mapping.body is BodySource.OBX_PDF:
            if sequence is None:
                raise _located("no OBX of type ED with a PDF", "OBX", 1, 2)
            obx = message.all("OBX")[sequence - 1]
            try:
                data = base64.b64decode(obx.component(5, 5), validate=False)
            except (binascii.Error, ValueError) as exc:
                raise _located("the PDF of the OBX is not valid base64", "OBX", sequence, 5,
                               5) from exc
            if not data.startswith(b"%PDF"):
                raise _located("the OBX ED does not hold a PDF", "OBX", sequence, 5, 5)
            return "application/pdf", data, sequence
        if sequence is None:
            raise _located("no OBX of type TX, FT or ST with the report text", "OBX", 1, 2)
        lines = [obx.component(5, 1) for obx in message.all("OBX")
                 if _report_line(mapping, obx) and obx.value(2) in _TEXT_TYPES]
        return "text/plain", ("\n".join(lines) + "\n").encode("utf-8"), sequence

    @staticmethod
    def _encounter_start(message: Message, now: datetime) -> str | None:
        """PV1-44 (admission date/time) when the message gives it."""
        pv1 = message.first("PV1")
        return hl7_time(pv1.value(44), now) if pv1 is not None and pv1.value(44) else None

    @staticmethod
    def _patient_class(message: Message) -> str:
        pv1 = message.first("PV1")
        return pv1.value(2) if pv1 is not None else ""

    def _patient(self, message: Message, traits: PatientTraits | None
                 ) -> tuple[Patient, PatientIdentity]:
        pid = message.first("PID")
        if pid is None:
            raise ProfileError("the message has no PID segment",
                               location=ErrorLocation("PID", 1, 3))
        t = traits or PatientTraits()
        identifiers: list[PatientIdentifier] = []
        ipp = ins = ins_oid = None
        for rep in range(1, len(pid.repetitions(3)) + 1):
            value, kind = pid.component(3, 1, repetition=rep), pid.component(3, 5, repetition=rep)
            oid = pid.component(3, 4, 2, repetition=rep) or None
            identifiers.append(PatientIdentifier(value, oid, pid.component(3, 4, 1,
                                                                          repetition=rep),
                                                 kind))
            if kind == "PI" and ipp is None:
                ipp = value
            elif kind == "INS" and oid in INS_OIDS and ins is None:
                ins, ins_oid = value, oid
        if ipp is None:
            raise ProfileError("PID-3 has no IPP (CX-5 = PI)",
                               location=ErrorLocation("PID", 1, 3))
        status = t.identity_status or pid.value(32)
        names = range(1, len(pid.repetitions(5)) + 1)
        birth_rep = next((r for r in names if pid.component(5, 7, repetition=r) == "L"), 1)
        used_rep = next((r for r in names if pid.component(5, 7, repetition=r) == "D"), None)
        birth_family = t.birth_family or pid.component(5, 1, repetition=birth_rep)
        given = t.given or pid.component(5, 2, repetition=birth_rep)
        given_names = t.given_names or " ".join(
            p for p in (pid.component(5, 2, repetition=birth_rep),
                        pid.component(5, 3, repetition=birth_rep)) if p) or None
        birth_time = t.birth_time or pid.value(7)[:8]
        gender = t.gender or pid.value(8) or "U"
        place = t.birth_place_code or next(
            (pid.component(11, 9, repetition=r) for r in range(1, len(pid.repetitions(11)) + 1)
             if pid.component(11, 7, repetition=r) == "BDL"), None) or None
        ins, ins_oid = (t.ins or ins), (t.ins_oid or ins_oid)
        if not (birth_family and given and birth_time):
            raise ProfileError("PID-5 and PID-7 must give the birth name, first given name and "
                               "birth date", location=ErrorLocation("PID", 1, 5))
        complete = bool(given_names and place and gender in ("M", "F"))
        ipp_root = next((i.oid for i in identifiers if i.type_code == "PI" and i.value == ipp
                         and i.oid and is_oid(i.oid)), self.establishment.oid)
        ids = [InstanceId(ipp_root, ipp)]  # the same root as the XDS patientId (mails)
        if ins and ins_oid and status == "VALI" and complete:
            ids.insert(0, InstanceId(ins_oid, ins))
        patient = Patient(tuple(ids), birth_family, given, birth_time, gender,
                          used_family=(t.used_family or (pid.component(5, 1, repetition=used_rep)
                                                         if used_rep else None)),
                          given_names=given_names, birth_place_code=place)
        return patient, PatientIdentity(tuple(identifiers), status)

    def _person(self, fields: Sequence[str], default: DefaultPerson | None, message: Message,
                what: str) -> Person:
        for reference in fields:
            name, _, position = reference.partition("-")
            segment = message.first(name)
            if segment is None:
                continue
            column = int(position)
            if name == "OBR" and column == 32:  # NDL: its first component is a CNN
                ident = segment.component(column, 1, 1)
                family, given = segment.component(column, 1, 2), segment.component(column, 1, 3)
            else:
                ident = segment.component(column, 1)
                family, given = segment.component(column, 2), segment.component(column, 3)
            found = national_id(ident)
            if found and family:
                return Person(found, family, given or "-")
        if default is not None:
            # As written so far: a default author's profession without its codeSystemName.
            profession = (replace(default.profession, system_name=None)
                          if default.profession else None)
            return Person(f"8{default.rpps}", default.family, default.given, profession)
        raise _located(f"no {what} with an RPPS in {', '.join(fields)} and no default",
                       "OBR", 1, 32)

    def _recipients(self, mapping: FlowMapping, message: Message,
                    traits: PatientTraits | None) -> tuple[tuple[Recipient, ...],
                                                           tuple[str, ...]]:
        wanted: list[tuple[str, PersonRef | None, str | None]] = []  # (what, person, address)
        orc, obr = message.first("ORC"), message.first("OBR")
        for rule in mapping.rules:
            if rule is RecipientRule.ORDERING_PROVIDER:
                source = (orc, 12) if orc is not None and orc.value(12) else (obr, 16)
                segment, column = source
                if segment is not None and segment.value(column):
                    wanted.append(("ordering provider", _xcn(segment, column, 1), None))
                else:
                    wanted.append(("ordering provider (ORC-12/OBR-16 empty)", None, None))
            elif rule is RecipientRule.COPIES:
                if obr is not None:
                    for rep in range(1, len(obr.repetitions(28)) + 1):
                        wanted.append((f"copy {rep} (OBR-28)", _xcn(obr, 28, rep), None))
            elif rule is RecipientRule.MEDECIN_TRAITANT:
                doctor = traits.medecin_traitant if traits else None
                person = PersonRef(doctor, "", "", None, "", "RPPS") if doctor else None
                wanted.append(("médecin traitant (ADT context)", person, None))
            else:
                wanted.append(("fixed address", None, str(rule)))
        recipients: list[Recipient] = []
        unresolved: list[str] = []
        seen: set[str] = set()
        for what, person, address in wanted:
            addresses = [address] if address else self._resolve(person, mapping.mailbox)
            if not addresses:
                unresolved.append(what)
                continue
            for found in addresses:
                if found.lower() in seen:
                    continue
                seen.add(found.lower())
                participant = Participant(ParticipationRole.RECIPIENT, 0, person, None, None,
                                          found)
                kind = RecipientKind.PROFESSIONAL if person else RecipientKind.UNIDENTIFIED
                recipients.append(Recipient(kind, found, participant))
        if unresolved and mapping.unresolved is UnresolvedPolicy.REJECT:
            raise _located(f"recipient not resolved: {unresolved[0]}", "OBR", 1, 28)
        if not recipients:
            raise _located("no recipient could be resolved for this document", "OBR", 1, 28)
        return tuple(recipients), tuple(unresolved)

    def _resolve(self, person: PersonRef | None, choice: MailboxChoice) -> list[str]:
        if person is None or self.resolver is None:
            return []
        found = national_id(person.id)
        return list(self.resolver.addresses(found, choice)) if found else []

    @staticmethod
    def _metadata(mapping: FlowMapping) -> DmpMssMetadata:
        m = mapping.metadata
        return DmpMssMetadata(
            masque_ps=m.masque_ps, invisible_patient=m.invisible_patient,
            invisible_rep_legaux=False, connexion_secrete=False, modif_conf_code=False,
            destdmp=False, destmssanteps=True, destmssantepat=m.destmssantepat,
            ack_reception=m.ack_reception, ack_lecture_mss=m.ack_lecture_mss)


def _xcn(segment: Segment, column: int, repetition: int) -> PersonRef:
    return PersonRef(segment.component(column, 1, repetition=repetition),
                     segment.component(column, 2, repetition=repetition),
                     segment.component(column, 3, repetition=repetition),
                     segment.component(column, 9, 2, repetition=repetition) or None,
                     segment.component(column, 9, 1, repetition=repetition),
                     segment.component(column, 13, repetition=repetition))
