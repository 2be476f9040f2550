"""The MSSanté subject `XDM/1.0/DDM+<libellé> <NOM> <prénom> <JJ/MM/AAAA>` (ECO.2.1.3)."""

from __future__ import annotations

import unicodedata
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import ProfileError
from connector.mail.subject import (
    MAX_LABEL_LENGTH,
    SUBJECT_PREFIX,
    SubjectInput,
    build_subject,
    single_line,
    strip_accents,
)


def subject(
    labels: tuple[str, ...] = ("CR d'imagerie médicale",),
    birth_name: str = "Corse",
    given_name: str = "Figatellix",
    birth_date: date | None = date(1988, 10, 12),
) -> str:
    return build_subject(SubjectInput(labels, birth_name, given_name, birth_date))


def test_reference_examples() -> None:
    assert subject() == "XDM/1.0/DDM+CR d'imagerie médicale CORSE Figatellix 12/10/1988"
    assert (
        subject(("CR d'examens biologiques",), "Vial", "Paul", date(1978, 11, 26))
        == "XDM/1.0/DDM+CR d'examens biologiques VIAL Paul 26/11/1978"
    )


def test_birth_date_is_optional() -> None:
    assert subject(birth_date=None) == "XDM/1.0/DDM+CR d'imagerie médicale CORSE Figatellix"


def test_date_is_zero_padded() -> None:
    assert subject(birth_date=date(905, 1, 2)).endswith(" 02/01/0905")


@pytest.mark.parametrize(
    ("birth_name", "nom"),
    [
        ("Pat-Trois", "PAT-TROIS"),
        ("Lefèvre-Gaël", "LEFEVRE-GAEL"),
        ("d'Hérouville", "D'HEROUVILLE"),
        ("Œuvrard", "OEUVRARD"),
        ("Cæsar", "CAESAR"),
        ("Straße", "STRASSE"),
        ("Ørsted", "ORSTED"),
        ("Łukasz", "LUKASZ"),
        ("ÇÀÉÈÊËÎÏÔÙÛÜŸ", "CAEEEEIIOUUUY"),
    ],
)
def test_birth_name_upper_case_without_accents(birth_name: str, nom: str) -> None:
    assert subject(birth_name=birth_name, birth_date=None).split(" ")[-2] == nom


def test_given_name_loses_accents_and_keeps_its_case() -> None:
    assert subject(given_name="Hélène", birth_date=None).endswith(" Helene")
    assert subject(given_name="DOMINIQUE", birth_date=None).endswith(" DOMINIQUE")
    assert subject(given_name="Jean-Noël", birth_date=None).endswith(" Jean-Noel")


def test_decomposed_accents_are_handled_like_composed_ones() -> None:
    decomposed = unicodedata.normalize("NFD", "Hélène")
    assert subject(given_name=decomposed) == subject(given_name="Hélène")


def test_label_keeps_accents_and_is_cut_at_40_characters() -> None:
    label = "Compte rendu d'hospitalisation en médecine interne et gériatrie"
    cut = subject((label,), birth_date=None)
    assert cut == f"{SUBJECT_PREFIX}{label[:40].rstrip()} CORSE Figatellix"
    assert len(label[:40]) == MAX_LABEL_LENGTH


def test_label_cut_counts_characters_not_code_points_of_decomposed_text() -> None:
    label = unicodedata.normalize("NFD", "é" * 45)
    assert subject((label,), birth_date=None) == f"{SUBJECT_PREFIX}{'é' * 40} CORSE Figatellix"


def test_label_cut_drops_a_trailing_space() -> None:
    label = "a" * 39 + " bcd"
    assert subject((label,), birth_date=None) == f"{SUBJECT_PREFIX}{'a' * 39} CORSE Figatellix"


def test_several_documents_are_counted() -> None:
    assert subject(("CR de biologie", "CR de biologie")).startswith("XDM/1.0/DDM+2 documents CORSE")
    assert subject(("a", "b", "c"), birth_date=None) == "XDM/1.0/DDM+3 documents CORSE Figatellix"


def test_empty_label_falls_back_to_document() -> None:
    assert subject((" \r\n",), birth_date=None) == "XDM/1.0/DDM+Document CORSE Figatellix"


def test_no_document_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="at least one document"):
        SubjectInput((), "Corse", "Figatellix")


@pytest.mark.parametrize(
    ("birth_name", "given_name", "part"),
    [
        ("", "Figatellix", "birth name"),
        ("Corse", " \t\r\n", "given name"),
        ("\u200b", "X", "birth"),
    ],
)
def test_missing_names_raise_without_patient_data(
    birth_name: str, given_name: str, part: str
) -> None:
    with pytest.raises(ProfileError, match=part) as caught:
        subject(birth_name=birth_name, given_name=given_name)
    assert "Figatellix" not in str(caught.value)
    assert "CORSE" not in str(caught.value).upper()


def test_control_characters_never_break_the_line() -> None:
    text = subject(
        ("CR\r\nBcc: spy@evil.example",),
        birth_name="Corse\nX-Injected: 1",
        given_name="Figa\ttellix\x00\x85\u2028",
        birth_date=None,
    )
    assert text == "XDM/1.0/DDM+CR Bcc: spy@evil.example CORSE X-INJECTED: 1 Figa tellix"


def test_encoded_word_openers_are_neutralised() -> None:
    text = subject(("=?utf-8?q?a=0D=0ABcc:_spy@evil.example?=",), birth_name="=?x?b?QQ==?=")
    assert "=?" not in text
    assert text.startswith("XDM/1.0/DDM+= ?utf-8?q?a=0D=0ABcc:_spy@evil.exa")
    # full-width ＝？ become =? when accents are folded: they are neutralised too
    assert "=?" not in subject(given_name="Ａ＝？ｂ")
    assert subject(given_name="Ａ＝？ｂ", birth_date=None).endswith(" A= ?b")


def test_invisible_format_characters_are_removed() -> None:
    assert subject(given_name="Fi\u200bga\u202etel\ufefflix", birth_date=None).endswith(
        " Figatellix"
    )


def test_repr_hides_the_identity() -> None:
    text = repr(SubjectInput(("CR",), "Corse", "Figatellix", date(1988, 10, 12)))
    assert "Corse" not in text
    assert "Figatellix" not in text
    assert "1988" not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Éloïse", "Eloise"), ("ﬁlle", "fille"), ("Ａｂｃ", "Abc"), ("Ἀθῆναι", "Αθηναι"), ("Ç", "C")],
)
def test_strip_accents(text: str, expected: str) -> None:
    assert strip_accents(text) == expected


@given(st.text())
def test_single_line_output_is_one_clean_line(text: str) -> None:
    line = single_line(text)
    assert "=?" not in line
    assert line == line.strip()
    assert "  " not in line
    assert all(ch == " " or not ch.isspace() for ch in line)
    assert all(unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in line)
    assert single_line(line) == line


def visible(text: str) -> str:
    """What is left of a name once cleaned and stripped of combining marks."""
    decomposed = unicodedata.normalize("NFKD", single_line(text))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).strip()


@given(
    st.lists(st.text(), min_size=1, max_size=3),
    st.text(),
    st.text(),
    st.none() | st.dates(),
)
def test_any_input_gives_one_line_subject(
    labels: list[str], birth_name: str, given_name: str, birth_date: date | None
) -> None:
    spec = SubjectInput(tuple(labels), birth_name, given_name, birth_date)
    named = bool(visible(birth_name)) and bool(visible(given_name))
    if not named:
        with pytest.raises(ProfileError):
            build_subject(spec)
        return
    text = build_subject(spec)
    assert text.startswith(SUBJECT_PREFIX)
    assert single_line(text) == text
    label = text[len(SUBJECT_PREFIX) :]
    if len(labels) == 1:
        assert label.startswith(single_line(labels[0])[:MAX_LABEL_LENGTH].rstrip() or "Document")
    else:
        assert label.startswith(f"{len(labels)} documents ")
