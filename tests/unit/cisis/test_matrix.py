"""The MSSanté sending matrix (§1.11): every row, every rejected combination, the invariants."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.cisis import (
    CISIS_MATRIX,
    Audience,
    DmpMssMetadata,
    MailRoute,
    MatrixRow,
    MetadataFlag,
    Participant,
    ParticipationRole,
    Recipient,
    RecipientKind,
    SendingMatrix,
    plan_sending,
)
from connector.cisis.matrix import ANY, COLUMNS, MATRIX_SOURCE, N, Y, decide_route
from connector.errors import ErrorLocation, SendingMatrixError
from connector.hl7.codes import ApplicationError

FLAGS = list(MetadataFlag)


def metadata(**values: str) -> DmpMssMetadata:
    """Flags from `name="Y"/"N"`; unnamed flags are N."""
    flags = {flag: values.get(flag.value.lower(), "N") == "Y" for flag in MetadataFlag}
    return DmpMssMetadata.from_flags(flags)


def all_combinations() -> list[DmpMssMetadata]:
    return [
        DmpMssMetadata.from_flags(dict(zip(FLAGS, bits, strict=True)))
        for bits in itertools.product((False, True), repeat=len(FLAGS))
    ]


def expected_route(m: DmpMssMetadata) -> MailRoute | None:
    """The matrix of regles-gestion-mssante.md (2026-04-21), written out independently."""
    if not m.destmssanteps and not m.destmssantepat:
        return MailRoute.NO_MAIL
    if (not m.masque_ps and not m.invisible_patient and not m.invisible_rep_legaux
            and m.destmssanteps and m.destmssantepat):
        return MailRoute.PS_AND_PATIENT
    if (not m.masque_ps and m.invisible_patient and not m.invisible_rep_legaux
            and m.destmssanteps and not m.destmssantepat):
        return MailRoute.PS_ONLY
    if (not m.invisible_patient and not m.connexion_secrete and not m.destdmp
            and not m.destmssanteps and m.destmssantepat):
        return MailRoute.PATIENT_ONLY
    return None


def recipient(kind: RecipientKind, sequence: int) -> Recipient:
    address = f"r{sequence}@patient.mssante.fr" if kind is RecipientKind.PATIENT \
        else f"r{sequence}@hop.mssante.fr"
    participant = Participant(ParticipationRole.RECIPIENT, sequence, None, None, None, address)
    return Recipient(kind, address, participant)


MIXED = (recipient(RecipientKind.PROFESSIONAL, 1), recipient(RecipientKind.PATIENT, 2),
         recipient(RecipientKind.ORGANISATION, 3), recipient(RecipientKind.APPLICATION, 4),
         recipient(RecipientKind.UNIDENTIFIED, 5))


# -- the table itself ------------------------------------------------------------------------------


def test_matrix_names_its_source_version() -> None:
    assert CISIS_MATRIX.source == MATRIX_SOURCE
    assert "regles-gestion-mssante.md" in MATRIX_SOURCE
    assert "2026-04-21" in MATRIX_SOURCE


def test_matrix_rows_as_transcribed() -> None:
    """Row by row, column by column, as §1.11 lists them."""
    assert tuple(MetadataFlag) == COLUMNS
    rows = {row.number: (row.route, row.allowed) for row in CISIS_MATRIX.rows}
    assert rows == {
        1: (MailRoute.PS_AND_PATIENT, (N, N, N, ANY, ANY, ANY, Y, Y, ANY, ANY)),
        2: (MailRoute.PS_ONLY, (N, Y, N, ANY, ANY, ANY, Y, N, ANY, ANY)),
        3: (MailRoute.PATIENT_ONLY, (ANY, N, ANY, N, ANY, N, N, Y, ANY, ANY)),
    }


@pytest.mark.parametrize(
    ("flags", "route", "row"),
    [
        ({"destmssanteps": "Y", "destmssantepat": "Y"}, MailRoute.PS_AND_PATIENT, 1),
        ({"destmssanteps": "Y", "destmssantepat": "Y", "connexion_secrete": "Y",
          "modif_conf_code": "Y", "destdmp": "Y", "ack_reception": "Y",
          "ack_lecture_mss": "Y"}, MailRoute.PS_AND_PATIENT, 1),
        ({"destmssanteps": "Y", "invisible_patient": "Y"}, MailRoute.PS_ONLY, 2),
        ({"destmssanteps": "Y", "invisible_patient": "Y", "connexion_secrete": "Y",
          "destdmp": "Y", "modif_conf_code": "Y"}, MailRoute.PS_ONLY, 2),
        ({"destmssantepat": "Y"}, MailRoute.PATIENT_ONLY, 3),
        ({"destmssantepat": "Y", "masque_ps": "Y", "invisible_rep_legaux": "Y",
          "modif_conf_code": "Y", "ack_reception": "Y"}, MailRoute.PATIENT_ONLY, 3),
        ({}, MailRoute.NO_MAIL, None),
        ({"destdmp": "Y", "masque_ps": "Y", "invisible_patient": "Y"}, MailRoute.NO_MAIL, None),
    ],
)
def test_each_row(flags: dict[str, str], route: MailRoute, row: int | None) -> None:
    assert decide_route(metadata(**flags)) == (route, row)


def test_every_one_of_the_1024_combinations() -> None:
    accepted = 0
    for m in all_combinations():
        expected = expected_route(m)
        if expected is None:
            with pytest.raises(SendingMatrixError) as caught:
                decide_route(m)
            assert caught.value.condition.code == "207"
            assert caught.value.application_error is ApplicationError.OTHER
        else:
            assert decide_route(m)[0] is expected, m.as_yn()
            accepted += 1
    # 32 per row (5 free columns) + 256 "no e-mail" (DESTMSSANTEPS = DESTMSSANTEPAT = N)
    assert accepted == 3 * 32 + 256


# -- rejected combinations and what the detail says ------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ({"destmssanteps": "Y", "destmssantepat": "Y", "invisible_patient": "Y"},
         "never sent to the patient"),
        ({"destmssantepat": "Y", "invisible_patient": "Y"}, "never sent to the patient"),
        ({"destmssanteps": "Y", "destmssantepat": "Y", "masque_ps": "Y"},
         "MASQUE_PS = N (got Y)"),
        ({"destmssanteps": "Y", "masque_ps": "Y", "invisible_patient": "Y"},
         "MASQUE_PS = N (got Y)"),
        ({"destmssanteps": "Y"}, "INVISIBLE_PATIENT = Y (got N)"),
        ({"destmssanteps": "Y", "invisible_patient": "Y", "invisible_rep_legaux": "Y"},
         "INVISIBLE_REP_LEGAUX = N (got Y)"),
        ({"destmssantepat": "Y", "destdmp": "Y"}, "DESTDMP = N (got Y)"),
        ({"destmssantepat": "Y", "connexion_secrete": "Y"}, "CONNEXION_SECRETE = N (got Y)"),
        ({"destmssanteps": "Y", "destmssantepat": "Y", "invisible_rep_legaux": "Y"},
         "row 1"),
    ],
)
def test_refusal_says_why(flags: dict[str, str], says: str) -> None:
    with pytest.raises(SendingMatrixError) as caught:
        decide_route(metadata(**flags))
    assert says in caught.value.detail
    assert MATRIX_SOURCE in caught.value.detail


def test_refusal_points_at_the_first_offending_flag() -> None:
    locations = {flag: ErrorLocation("OBX", i + 2, 5) for i, flag in enumerate(MetadataFlag)}
    with pytest.raises(SendingMatrixError) as caught:
        decide_route(metadata(destmssanteps="Y", masque_ps="Y", invisible_rep_legaux="Y"),
                     locations=locations)
    assert caught.value.location == ErrorLocation("OBX", 2, 5)


def test_refusal_without_any_row_for_the_destination_pair() -> None:
    matrix = SendingMatrix("only row 3", (CISIS_MATRIX.rows[2],))
    with pytest.raises(SendingMatrixError) as caught:
        decide_route(metadata(destmssanteps="Y", destmssantepat="Y"), matrix)
    assert "no row has DESTMSSANTEPS=Y, DESTMSSANTEPAT=Y" in caught.value.detail


# -- recipients filtering --------------------------------------------------------------------------


def test_row_1_sends_to_everyone() -> None:
    decision = plan_sending(metadata(destmssanteps="Y", destmssantepat="Y"), MIXED)
    assert decision.recipients == MIXED
    assert decision.withheld == ()
    assert decision.matrix_row == 1
    assert decision.matrix_source == MATRIX_SOURCE


def test_row_2_withholds_the_patient() -> None:
    decision = plan_sending(metadata(destmssanteps="Y", invisible_patient="Y"), MIXED)
    assert [r.participant.prt_sequence for r in decision.recipients] == [1, 3, 4, 5]
    assert [r.kind for r in decision.withheld] == [RecipientKind.PATIENT]


def test_row_3_withholds_the_professionals() -> None:
    decision = plan_sending(metadata(destmssantepat="Y"), MIXED)
    assert [r.kind for r in decision.recipients] == [RecipientKind.PATIENT]
    assert len(decision.withheld) == 4


def test_no_mail_withholds_everyone() -> None:
    decision = plan_sending(metadata(destdmp="Y"), MIXED)
    assert decision.route is MailRoute.NO_MAIL
    assert not decision.sends_mail
    assert decision.withheld == MIXED


# -- custom matrices -------------------------------------------------------------------------------


def test_a_row_that_would_send_an_invisible_document_to_the_patient_is_refused() -> None:
    bad = MatrixRow(9, MailRoute.PS_AND_PATIENT, (N, ANY, N, ANY, ANY, ANY, Y, Y, ANY, ANY), "x")
    with pytest.raises(ValueError, match="invisible to the patient"):
        SendingMatrix("bad", (bad,))


def test_a_row_needs_ten_columns() -> None:
    with pytest.raises(ValueError, match="columns"):
        MatrixRow(9, MailRoute.PS_ONLY, (N, N), "x")


def test_no_mail_is_not_a_row() -> None:
    row = MatrixRow(9, MailRoute.NO_MAIL, (ANY,) * 10, "x")
    with pytest.raises(ValueError, match="NO_MAIL"):
        SendingMatrix("bad", (row,))


def test_a_site_row_extends_the_whitelist() -> None:
    site = SendingMatrix("site", (*CISIS_MATRIX.rows, MatrixRow(
        4, MailRoute.PS_ONLY, (N, N, N, ANY, ANY, ANY, Y, N, ANY, ANY), "PS only, visible")))
    m = metadata(destmssanteps="Y")
    with pytest.raises(SendingMatrixError):
        decide_route(m)
    assert decide_route(m, site) == (MailRoute.PS_ONLY, 4)


# -- the invariant, whatever the flags and the recipients ------------------------------------------

flag_values = st.fixed_dictionaries({flag: st.booleans() for flag in MetadataFlag})
recipient_lists = st.lists(
    st.sampled_from(list(RecipientKind)), max_size=6
).map(lambda kinds: tuple(recipient(k, i + 1) for i, k in enumerate(kinds)))


@given(flag_values, recipient_lists)
def test_no_patient_mail_for_an_invisible_document(
    values: dict[MetadataFlag, bool], recipients: tuple[Recipient, ...]
) -> None:
    m = DmpMssMetadata.from_flags(values)
    try:
        decision = plan_sending(m, recipients)
    except SendingMatrixError:
        assert expected_route(m) is None
        return
    assert decision.route is expected_route(m)
    assert set(decision.recipients) | set(decision.withheld) == set(recipients)
    sent_audiences = {r.audience for r in decision.recipients}
    if m.invisible_patient or not m.destmssantepat:
        assert Audience.PATIENT not in sent_audiences
    if not m.destmssanteps or m.masque_ps:
        assert Audience.PS not in sent_audiences
