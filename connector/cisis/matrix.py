"""The MSSanté sending matrix of the CI-SIS volet, as an explicit whitelist (reference §1.11).

Source: [TRANS] `input/pagecontent/regles-gestion-mssante.md` of
`ansforge/IG-hl7v2-volet-transmission-document-cda-r2`, as of 2026-04-21 (commits `30fd3bf3`,
`ed4ae5c7`), transcribed in `cisis-hl7v2-to-mssante.md` §1.11:

    "Le tableau présente une liste exhaustive des combinaisons possibles des OBX pour l'échange
    MSSANTE. Les cas non représentés génèrent un message d'erreur."

Changes from earlier versions, as recorded in §1.11: MASQUE_PS in row 2 went from "Y ou N" to "N";
CONNEXION_SECRETE in rows 1–2 went from "N" to "N ou Y". (The copy of commit `30fd3bf3` consulted
while writing this still reads CONNEXION_SECRETE "N" in rows 1–2; the relaxation is `ed4ae5c7`'s,
taken from the reference notes.)

Decisions where the volet is silent:
* DESTMSSANTEPS = N and DESTMSSANTEPAT = N is outside the MSSanté matrix: no e-mail at all
  (`MailRoute.NO_MAIL`), which is not an error (the DMP part of the request may still apply).
* Any other combination that no row lists is refused with `SendingMatrixError` (ERR-3 207,
  ERR-5 906), the detail naming the flags that differ from the row for that destination pair.
* PRT RCT of a group the matching row does not send to are withheld, not refused: the flags
  decide, the PRT only give the addresses. The patient group is withheld whenever
  INVISIBLE_PATIENT = Y, whatever a (custom) matrix says: a document invisible to the patient is
  never sent to the patient.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from connector.cisis.model import (
    Audience,
    DmpMssMetadata,
    MailRoute,
    MetadataFlag,
    Recipient,
    SendingDecision,
)
from connector.errors import ErrorLocation, SendingMatrixError
from connector.hl7.codes import ApplicationError

MATRIX_SOURCE = (
    "CI-SIS trans-cda-r2 regles-gestion-mssante.md as of 2026-04-21 (30fd3bf3, ed4ae5c7)"
)

Y = frozenset({True})
N = frozenset({False})
ANY = frozenset({True, False})

#: Column order of the matrix rows below.
COLUMNS: tuple[MetadataFlag, ...] = (
    MetadataFlag.MASQUE_PS,
    MetadataFlag.INVISIBLE_PATIENT,
    MetadataFlag.INVISIBLE_REP_LEGAUX,
    MetadataFlag.CONNEXION_SECRETE,
    MetadataFlag.MODIF_CONF_CODE,
    MetadataFlag.DESTDMP,
    MetadataFlag.DESTMSSANTEPS,
    MetadataFlag.DESTMSSANTEPAT,
    MetadataFlag.ACK_RECEPTION,
    MetadataFlag.ACK_LECTURE_MSS,
)


@dataclass(frozen=True, slots=True)
class MatrixRow:
    """One row: the values each flag may take (Y, N or ANY), and where the document goes."""

    number: int
    route: MailRoute
    allowed: tuple[frozenset[bool], ...]  # one entry per COLUMNS flag
    meaning: str

    def __post_init__(self) -> None:
        if len(self.allowed) != len(COLUMNS):
            raise ValueError(f"matrix row {self.number} has {len(self.allowed)} columns")

    def allows(self, flag: MetadataFlag) -> frozenset[bool]:
        return self.allowed[COLUMNS.index(flag)]

    def mismatches(self, metadata: DmpMssMetadata) -> tuple[MetadataFlag, ...]:
        """The flags whose value this row does not allow, in column order."""
        return tuple(f for f in COLUMNS if metadata[f] not in self.allows(f))

    def matches(self, metadata: DmpMssMetadata) -> bool:
        return not self.mismatches(metadata)


#:      MASQUE_PS INV_PAT INV_REP CONN_SEC MODIF DESTDMP DEST_PS DEST_PAT ACK_REC ACK_LEC
CISIS_ROWS: tuple[MatrixRow, ...] = (
    MatrixRow(1, MailRoute.PS_AND_PATIENT,
              (N,        N,      N,      ANY,     ANY,  ANY,    Y,      Y,      ANY,    ANY),
              "PS/organisation/application mailboxes and the patient's mailbox"),
    MatrixRow(2, MailRoute.PS_ONLY,
              (N,        Y,      N,      ANY,     ANY,  ANY,    Y,      N,      ANY,    ANY),
              "PS/organisation/application mailboxes only"),
    MatrixRow(3, MailRoute.PATIENT_ONLY,
              (ANY,      N,      ANY,    N,       ANY,  N,      N,      Y,      ANY,    ANY),
              "the patient's mailbox only"),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SendingMatrix:
    """A whitelist of flag combinations. `CISIS_MATRIX` is the volet's; sites may extend it."""

    source: str
    rows: tuple[MatrixRow, ...]

    def __post_init__(self) -> None:
        for row in self.rows:
            if Audience.PATIENT in row.route.audiences and True in row.allows(
                MetadataFlag.INVISIBLE_PATIENT
            ):
                raise ValueError(
                    f"matrix row {row.number} would send a document invisible to the patient "
                    "to the patient"
                )
            if row.route is MailRoute.NO_MAIL:
                raise ValueError(f"matrix row {row.number}: NO_MAIL is not a matrix row")

    def match(self, metadata: DmpMssMetadata) -> MatrixRow | None:
        return next((row for row in self.rows if row.matches(metadata)), None)


CISIS_MATRIX = SendingMatrix(MATRIX_SOURCE, CISIS_ROWS)

#: The ANS V2.1 MDM examples send to PS mailboxes a document the patient may see
#: (INVISIBLE_PATIENT = N, DESTMSSANTEPAT = N) or hidden from legal representatives
#: (INVISIBLE_REP_LEGAUX = Y): no row of the 2026-04-21 table allows either. Sites whose senders
#: work like those examples opt in with `sending_matrix = "ans-examples"`; the default is the
#: table as published.
ANS_EXAMPLE_ROWS: tuple[MatrixRow, ...] = (
    MatrixRow(4, MailRoute.PS_ONLY,
              (N,        ANY,    ANY,    ANY,     ANY,  ANY,    Y,      N,      ANY,    ANY),
              "PS/organisation/application mailboxes only (as in the ANS MDM examples)"),
)  # fmt: skip
ANS_EXAMPLES_MATRIX = SendingMatrix(
    MATRIX_SOURCE + " + PS-only row of the ANS V2.1 MDM examples", CISIS_ROWS + ANS_EXAMPLE_ROWS)


def _yn(values: frozenset[bool]) -> str:
    return "Y or N" if values == ANY else ("Y" if values == Y else "N")


def _destination_rows(matrix: SendingMatrix, metadata: DmpMssMetadata) -> list[MatrixRow]:
    """The rows for the message's DESTMSSANTEPS / DESTMSSANTEPAT pair."""
    pair = (MetadataFlag.DESTMSSANTEPS, MetadataFlag.DESTMSSANTEPAT)
    return [r for r in matrix.rows if all(metadata[f] in r.allows(f) for f in pair)]


def closest_row(matrix: SendingMatrix, metadata: DmpMssMetadata) -> MatrixRow | None:
    """The row for the message's destination pair that differs from it on the fewest flags."""
    candidates = _destination_rows(matrix, metadata)
    if not candidates:
        return None
    return min(candidates, key=lambda r: len(r.mismatches(metadata)))


def explain_refusal(matrix: SendingMatrix, metadata: DmpMssMetadata) -> str:
    """Why no row matches: the closest row for the destination pair and what differs."""
    pair = (
        f"DESTMSSANTEPS={'Y' if metadata.destmssanteps else 'N'}, "
        f"DESTMSSANTEPAT={'Y' if metadata.destmssantepat else 'N'}"
    )
    row = closest_row(matrix, metadata)
    if row is None:
        return f"flag combination not in the MSSanté sending matrix: no row has {pair}"
    wrong = ", ".join(
        f"{f.value} = {_yn(row.allows(f))} (got {'Y' if metadata[f] else 'N'})"
        for f in row.mismatches(metadata)
    )
    reason = f"flag combination not in the MSSanté sending matrix: for {pair}, row {row.number} "
    reason += f"({row.meaning}) requires {wrong}"
    if metadata.invisible_patient and metadata.destmssantepat:
        reason += "; a document invisible to the patient is never sent to the patient"
    return reason


def decide_route(
    metadata: DmpMssMetadata,
    matrix: SendingMatrix = CISIS_MATRIX,
    locations: Mapping[MetadataFlag, ErrorLocation] | None = None,
) -> tuple[MailRoute, int | None]:
    """The route and matrix row for these flags; raises SendingMatrixError (207) off-matrix.

    `locations` (the OBX-5 of each flag) lets the error point at the first offending flag.
    """
    if not metadata.destmssanteps and not metadata.destmssantepat:
        return MailRoute.NO_MAIL, None
    row = matrix.match(metadata)
    if row is not None:
        return row.route, row.number
    closest = closest_row(matrix, metadata)
    culprits = closest.mismatches(metadata) if closest is not None else (
        MetadataFlag.DESTMSSANTEPS,
    )
    raise SendingMatrixError(
        f"{explain_refusal(matrix, metadata)} [{matrix.source}]",
        location=(locations or {}).get(culprits[0]) if culprits else None,
        application_error=ApplicationError.OTHER,
    )


def plan_sending(
    metadata: DmpMssMetadata,
    recipients: tuple[Recipient, ...],
    matrix: SendingMatrix = CISIS_MATRIX,
    locations: Mapping[MetadataFlag, ErrorLocation] | None = None,
) -> SendingDecision:
    """Apply the matrix to the flags, then keep the recipients of the audiences it sends to."""
    route, row = decide_route(metadata, matrix, locations)
    audiences = set(route.audiences)
    if metadata.invisible_patient:
        audiences.discard(Audience.PATIENT)
    return SendingDecision(
        route=route,
        matrix_row=row,
        matrix_source=matrix.source,
        recipients=tuple(r for r in recipients if r.audience in audiences),
        withheld=tuple(r for r in recipients if r.audience not in audiences),
    )
