"""ADT messages (IHE PAM France 2.11) for tests: the ANS fixtures, and messages derived from them
(other events, other patients, movements, merges) with the fixtures' own segments."""

from __future__ import annotations

from pathlib import Path

from connector.hl7.header import MessageHeader
from connector.hl7.message import parse_message
from connector.patients import PatientUpdate, plan_adt
from tests.conftest import HL7_FIXTURES

PAM = HL7_FIXTURES / "pam-fr-2.11"
ADMISSION = PAM / "adt-a01-admission.er7"
DISCHARGE = PAM / "adt-a03-discharge.er7"
CONSENTS = sorted((PAM / "consent").glob("*.er7"))
CONSENT = PAM / "consent" / "ConsentementConsultation_NonOppositionAlimentation.er7"

IPP = "000003"
INS = "279035121518989"
INS_TEST_OID = "1.2.250.1.213.1.4.10"
AUTHORITY = "CHU-X"  # CX-4.1 (CX-4.2, 000897406, is not an OID)
FAMILY = "PAT-TROIS"


def segments(path: Path) -> dict[str, str]:
    """The first segment of each kind in a fixture, by segment id."""
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            found.setdefault(line[:3], line)
    return found


_BASE = segments(ADMISSION)
_CONSENT = segments(CONSENT)
_IPP_CX = f"{IPP}^^^CHU-X&000897406&N^PI"
_INS_CX = f"~{INS}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS^^20101207"
_STRUCTURES = {"A01": "ADT_A01", "A02": "ADT_A02", "A03": "ADT_A03", "A04": "ADT_A01",
               "A05": "ADT_A05", "A08": "ADT_A01", "A11": "ADT_A09", "A12": "ADT_A12",
               "A13": "ADT_A01", "A21": "ADT_A21", "A22": "ADT_A21", "A28": "ADT_A05",
               "A31": "ADT_A05", "A38": "ADT_A38", "A40": "ADT_A39", "A47": "ADT_A30",
               "A52": "ADT_A52", "A53": "ADT_A52", "A54": "ADT_A54", "A55": "ADT_A52",
               "Z99": "ADT_A01"}

PV1_NONE = "PV1|1|N"  # A28/A31/A40/A47: no encounter


def pid(*, ipp: str | None = IPP, ins: bool = True, status: str = "VALI",
        family: str = FAMILY, names: str | None = None) -> str:
    """The fixture's PID with another IPP (None: the INS only), without the INS, with another
    PID-32 or birth family name, or with PID-5 replaced by `names`."""
    line = _BASE["PID"]
    ids = (_IPP_CX.replace(IPP, ipp) if ipp is not None else "") + (_INS_CX if ins else "")
    line = line.replace(_IPP_CX + _INS_CX, ids.lstrip("~"))
    line = line.replace("|VALI|", f"|{status}|").replace(f"{FAMILY}^", f"{family}^")
    if names is not None:
        line = line.replace("PAT-TROIS^DOMINIQUE^DOMINIQUE^^^^L", names)
    return line


def zbe(movement: str, *, at: str = "20240306110000", action: str = "INSERT", unit: str = "Chir V",
        code: str = "6268", original: str = "") -> str:
    uf = f"{unit}^^^^^CHU-X&000897406&N^UF^^^{code}"
    return f"ZBE|{movement}^CHU-X^000897406|{at}||{action}|N|{original}|{uf}|{uf}|HMS"


def adt(event: str, control_id: str, *, patient: str | None = None, pv1: str | None = None,
        movement: str | None = None, others: tuple[str, ...] = (), mrg: str | None = None,
        zfa: bool = False, rol: bool = False) -> bytes:
    """An ADT^`event` built from the admission fixture's segments (LF-separated, as the ANS
    files): MSH (event, MSH-10), EVN, PID (`patient`, default the fixture's), ROL/PD1 from the
    consent fixture when `rol`, MRG-1 = `mrg` under the IPP's authority, PV1 (default the
    fixture's), ZBE `movement` (None: none), `others`, ZFA when `zfa`."""
    msh = _BASE["MSH"].replace("ADT^A01^ADT_A01", f"ADT^{event}^{_STRUCTURES[event]}")
    lines = [msh.replace("|3975|", f"|{control_id}|"), _BASE["EVN"], patient or pid()]
    if rol:
        lines += [_CONSENT["PD1"], _CONSENT["ROL"]]
    if mrg is not None:
        lines.append(f"MRG|{mrg}^^^CHU-X&000897406&N^PI")
    lines.append(pv1 if pv1 is not None else _BASE["PV1"])
    if movement is not None:
        lines.append(movement)
    lines += others
    if zfa:
        lines.append(_BASE["ZFA"])
    return ("\n".join(lines) + "\n").encode()


def fixture(path: Path, control_id: str | None = None) -> bytes:
    """A fixture as sent over MLLP (CR separators), with another MSH-10 when given."""
    data = path.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    if control_id is None:
        return data
    header, rest = data.split(b"\r", 1)
    fields = header.split(b"|")
    fields[9] = control_id.encode()
    return b"|".join(fields) + b"\r" + rest


def plan(data: bytes | Path) -> PatientUpdate:
    """`plan_adt` on a message (bytes or a fixture path)."""
    text = (data.read_bytes() if isinstance(data, Path) else data).decode("utf-8")
    message = parse_message(text)
    return plan_adt(message, MessageHeader.from_segment(message.msh))
