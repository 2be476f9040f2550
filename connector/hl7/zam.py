"""ZAM^Z02 / ZAM^Z03 business acknowledgements back to the CREATEUR (CI-SIS volet, ZAM_Z01).

Pure builders: one `ZamRequest` in, ER7 text out (segments separated by CR, like `build_ack`).

```
MSH|^~\\&|<ours>|<ours>|<original MSH-3>|<original MSH-4>|<now>||ZAM^Z02^ZAM_Z01|<id>|P|2.6|||||FRA|
    UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2
EVN||<date/time of the acknowledged event>
OBX|1|CWE|ACK_RECEPTION_MSS^Accusé de réception MSSanté^AckMetierZAM|<original MSH-10>|
    Y^^expandedYes-NoIndicator||||||F
OBX|2|XTN|DESTINATAIRE_MSS^Destinataire MSSanté^AckMetierZAM|<recipient id>|^^X.400^<address>||||||F
ERR|||207^Application error^messageErrorCondition|E|550^<libellé>^SMTPERRORCODE   (when N)
```

Z03 is the same with `ACK_LECTURE_MSS^Accusé de lecture^AckMetierZAM`,
`LECTEUR_MSS^Lecteur du courriel MSSanté^AckMetierZAM` and ERR-5
`code^libellé^applicationErrorCode`.

Choices where the sources disagree (see the module's tests for the fixtures it is checked against):

* ERR-3 is `207^Application error^messageErrorCondition`: the volet's field table, the LPS ACK
  example and the ANS error-code page say "Application error"; the ANS Z01 example (and
  `ErrorCondition.APPLICATION_ERROR`, the HL7 0357 label) say "Application internal error".
* ERR-5 of Z03 is coded `applicationErrorCode` (HL7 table 0533's symbolic name, as in the ACK
  builder); the volet's prose also writes `applicationErrorCondition`.
* OBX-3 of the second OBX is coded `AckMetierZAM` (the fixtures), not `AckMétierZAM` (one table).
* Trailing empty fields are not written (`...||||||F`, where the ANS examples end in `F|`).

Every value that comes from outside (identities, control ids, addresses, labels) is escaped with
`escape` and, beyond it, C0 control characters and DEL are written as `\\Xhh\\`: an address or a
label can neither split a field, a component or a segment, nor carry the MLLP framing bytes
0x0B / 0x1C. Leading and trailing white space is dropped (the parser strips it anyway).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Final

from connector.errors import AckStateError
from connector.hl7.ack import hl7_timestamp
from connector.hl7.codes import ApplicationError, Severity, SmtpErrorCode
from connector.hl7.message import DEFAULT_DELIMITERS, Delimiters, component_of, escape

VERSION: Final = "2.6"
COUNTRY: Final = "FRA"
PROFILE: Final = ("2.1", "CISIS_CDA_HL7_V2")  # MSH-21.1, MSH-21.2
ACK_TABLE: Final = "AckMetierZAM"
YES_NO_TABLE: Final = "expandedYes-NoIndicator"
ERROR_CONDITION: Final = ("207", "Application error", "messageErrorCondition")
SMTP_ERROR_TABLE: Final = "SMTPERRORCODE"
APPLICATION_ERROR_TABLE: Final = "applicationErrorCode"
DEFAULT_APPLICATION: Final = "MSSANTE-CONNECTOR"

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")




class ZamEvent(Enum):
    """The two business acknowledgements built from what comes back over MSSanté."""

    RECEPTION_MSS = "Z02"  # from a DSN
    LECTURE_MSS = "Z03"  # from an MDN (or a "courriel standard" KO mail)

    @property
    def ack_observation(self) -> tuple[str, str]:
        """OBX-3.1 / OBX-3.2 of the first OBX."""
        if self is ZamEvent.RECEPTION_MSS:
            return ("ACK_RECEPTION_MSS", "Accusé de réception MSSanté")
        return ("ACK_LECTURE_MSS", "Accusé de lecture")

    @property
    def mailbox_observation(self) -> tuple[str, str]:
        """OBX-3.1 / OBX-3.2 of the second OBX (the recipient, or the reader)."""
        if self is ZamEvent.RECEPTION_MSS:
            return ("DESTINATAIRE_MSS", "Destinataire MSSanté")
        return ("LECTEUR_MSS", "Lecteur du courriel MSSanté")

    @property
    def error_table(self) -> str:
        """ERR-5.3."""
        if self is ZamEvent.RECEPTION_MSS:
            return SMTP_ERROR_TABLE
        return APPLICATION_ERROR_TABLE


@dataclass(frozen=True, slots=True)
class HierarchicDesignator:
    """An HD (MSH-3 / MSH-4 / MSH-5 / MSH-6), components unescaped."""

    namespace_id: str = ""
    universal_id: str = ""
    universal_id_type: str = ""

    @classmethod
    def from_raw(cls, raw: str,
                 delimiters: Delimiters = DEFAULT_DELIMITERS) -> HierarchicDesignator:
        """From a field as sent (e.g. `MessageHeader.sending_application`) in its delimiters."""
        return cls(*(component_of(raw, i, None, delimiters) for i in (1, 2, 3)))

    def to_hl7(self, d: Delimiters = DEFAULT_DELIMITERS) -> str:
        parts = [_text(p, d) for p in (self.namespace_id, self.universal_id,
                                       self.universal_id_type)]
        while parts and not parts[-1]:
            parts.pop()
        return d.component.join(parts)


@dataclass(frozen=True, slots=True)
class ZamError:
    """The ERR segment of a negative ZAM: ERR-4 severity and ERR-5.1 / ERR-5.2.

    ERR-5.3 (the coding system) follows the event: SMTPERRORCODE for Z02,
    applicationErrorCode for Z03.
    """

    code: str
    label: str
    severity: Severity = Severity.ERROR

    @classmethod
    def smtp(cls, entry: SmtpErrorCode, severity: Severity = Severity.ERROR) -> ZamError:
        return cls(entry.code, entry.label, severity)

    @classmethod
    def application(cls, entry: ApplicationError,
                    severity: Severity = Severity.ERROR) -> ZamError:
        return cls(entry.code, entry.label, severity)


@dataclass(frozen=True, slots=True)
class ZamRequest:
    """Everything one ZAM^Z02 / ZAM^Z03 is built from.

    * `sending_*`: who we are (our MSH-3 / MSH-4; usually the original request's MSH-5 / MSH-6).
    * `receiving_*`: the original request's MSH-3 / MSH-4 (our MSH-5 / MSH-6).
    * `original_control_id`: MSH-10 of the ORU / MDM that carried the document (OBX-4 of OBX 1).
    * `recipient_address`: the MSSanté address the receipt is about (OBX-5.4 of OBX 2); for Z03
      the mailbox that read / processed the mail. `recipient_id` (OBX-4 of OBX 2) is optional.
    * `positive`: OBX-5 of OBX 1 `Y` / `N`; a negative ZAM needs an `error`, a positive one none.
    * `event_time`: EVN-2, the date/time of the acknowledged event (delivery, reading).
    * `control_id`: MSH-10 of this ZAM (see `ControlIdGenerator`).
    * `charset`: MSH-18 as written (`UNICODE UTF-8`, `8859/15`); encoding the text with the
      matching codec is the caller's job, as for the ACK.
    """

    event: ZamEvent
    control_id: str
    original_control_id: str
    receiving_application: HierarchicDesignator
    receiving_facility: HierarchicDesignator
    recipient_address: str
    positive: bool
    event_time: datetime
    sending_application: HierarchicDesignator = HierarchicDesignator(DEFAULT_APPLICATION)
    sending_facility: HierarchicDesignator = HierarchicDesignator()
    recipient_id: str = ""
    error: ZamError | None = None
    charset: str = "UNICODE UTF-8"
    processing_id: str = "P"


def build_zam(request: ZamRequest, *, timestamp: datetime | None = None) -> str:
    """The ZAM as ER7 text, segments separated (and ended) by CR. MSH-7 is `timestamp` or now.

    Raises `AckStateError` (a bug of the caller, not an input problem) when the request cannot
    make a valid ZAM: no control id, no original MSH-10, no recipient address, a negative answer
    without an error (or with an empty one), a positive answer with an error.
    """
    _check(request)
    d = DEFAULT_DELIMITERS
    f, c = d.field, d.component
    event = request.event
    msh = f.join([
        "MSH", d.encoding_characters,
        request.sending_application.to_hl7(d), request.sending_facility.to_hl7(d),
        request.receiving_application.to_hl7(d), request.receiving_facility.to_hl7(d),
        hl7_timestamp(timestamp), "", c.join(["ZAM", event.value, "ZAM_Z01"]),
        _text(request.control_id, d), _text(request.processing_id, d), VERSION,
        "", "", "", "", COUNTRY, _text(request.charset, d), "", "", c.join(PROFILE),
    ])
    evn = f.join(["EVN", "", hl7_timestamp(request.event_time)])
    status = c.join(["Y" if request.positive else "N", "", YES_NO_TABLE])
    obx1 = _obx(1, "CWE", event.ack_observation, _text(request.original_control_id, d), status, d)
    address = c.join(["", "", "X.400", _text(request.recipient_address, d)])
    obx2 = _obx(2, "XTN", event.mailbox_observation, _text(request.recipient_id, d), address, d)
    segments = [msh, evn, obx1, obx2]
    if request.error is not None:
        segments.append(_err(request.error, event, d))
    return "\r".join(segments) + "\r"


def _check(request: ZamRequest) -> None:
    if not request.control_id.strip():
        raise AckStateError("ZAM without a control id (MSH-10)")
    if not request.original_control_id.strip():
        raise AckStateError("ZAM without the original control id (OBX-4)")
    if not request.recipient_address.strip():
        raise AckStateError("ZAM without a recipient address (OBX-5.4)")
    if request.positive and request.error is not None:
        raise AckStateError("positive ZAM with an error")
    if not request.positive:
        if request.error is None:
            raise AckStateError("negative ZAM without an error (ERR required when OBX-5 = N)")
        if not (request.error.code.strip() or request.error.label.strip()):
            raise AckStateError("negative ZAM with an empty error code and label")


def _obx(set_id: int, value_type: str, observation: tuple[str, str], sub_id: str, value: str,
         d: Delimiters) -> str:
    identifier = d.component.join([*observation, ACK_TABLE])
    return d.field.join(["OBX", str(set_id), value_type, identifier, sub_id, value,
                         "", "", "", "", "", "F"])


def _err(error: ZamError, event: ZamEvent, d: Delimiters) -> str:
    c = d.component
    err5 = c.join([_text(error.code, d), _text(error.label, d), event.error_table])
    return d.field.join(["ERR", "", "", c.join(ERROR_CONDITION), error.severity.value, err5])


def _text(value: str, d: Delimiters) -> str:
    """`escape`, then C0 controls and DEL as hex escapes (CR and LF are already `\\X0D\\`...)."""
    escaped = escape(value.strip(), d)
    if not _CONTROL.search(escaped):
        return escaped
    return _CONTROL.sub(lambda m: f"{d.escape}X{ord(m.group()):02X}{d.escape}", escaped)
