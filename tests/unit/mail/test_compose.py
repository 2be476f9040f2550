"""One MSSanté e-mail per recipient: headers, MIME tree, X-MSS-* rules, header safety."""

from __future__ import annotations

import dataclasses
import email.policy
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.directory.whitelist import MailAddress, parse_address
from connector.errors import MessageError
from connector.hl7.codes import ErrorCondition
from connector.mail import compose as compose_module
from connector.mail.compose import (
    BODY_NOTICES,
    DEFAULT_BODIES,
    XDM_FILENAME,
    Attachment,
    HeaderSafetyError,
    MailAction,
    MailSpec,
    as_bytes,
    clean_filename,
    compose_mail,
    make_message_id,
    message_id_local_part,
    render_mail,
    with_references,
)
from connector.mail.subject import SubjectInput, build_subject, single_line

PFI = parse_address("pfi-auto@ch-exemple.mssante.fr")
DOCTOR = parse_address("adam.hoda@test-ci-sis.mssante.fr")
PATIENT = parse_address("146026322000196@patient.mssante.fr")
PARIS = timezone(timedelta(hours=1))
XDM = b"PK\x03\x04" + bytes(range(256)) * 40
PDF = b"%PDF-1.4\n" + bytes(range(255, -1, -1)) * 30 + b"\n%%EOF\n"
PDF_NAME = "20220531_CR d'imagerie médicale_CORSE_FIGATELLIX.pdf"
BODY = "Cher confrère,\nvous trouverez ci-joint le CR d’imagerie de M. Corse.\n"


def make_spec(**changes: Any) -> MailSpec:
    spec = MailSpec(
        from_address=PFI,
        to_address=DOCTOR,
        subject=SubjectInput(
            ("CR d'imagerie médicale",), "Corse", "Figatellix", date(1988, 10, 12)
        ),
        date=datetime(2024, 2, 20, 0, 19, tzinfo=PARIS),
        request_key="tenant-a/3f1c9a4e-7d7e-4b36-9d8e-2f0a9c1b5e21",
        from_display_name="CH Exemple - PFI",
        cda_codes=("18748-4",),
        ins_qualified=True,
        nil="DEV935997",
        body_text=BODY,
        xdm_zip=XDM,
        pdfs=(Attachment(PDF_NAME, PDF),),
    )
    return dataclasses.replace(spec, **changes)


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def round_trip(spec: MailSpec) -> tuple[bytes, EmailMessage]:
    raw = as_bytes(compose_mail(spec))
    return raw, parse(raw)


def text_of(part: EmailMessage) -> str:
    """The decoded text part with its canonical CRLF line breaks read as LF (and no lone CR)."""
    content = part.get_content()
    assert isinstance(content, str)
    text = content.replace("\r\n", "\n")
    assert "\r" not in text
    return text


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def raw_header(raw: bytes, name: str) -> str:
    """The unfolded value of a top-level header as written on the wire."""
    for field in re.split(rb"\r\n(?![ \t])", header_block(raw)):
        key, _, value = field.partition(b":")
        if key.decode("ascii").lower() == name.lower():
            return value.decode("ascii").replace("\r\n", "").strip(" ")
    raise AssertionError(f"no {name} header")


def display_name(raw: bytes, name: str) -> str:
    """The display name of a one-mailbox header, decoded by the RFC 2047 decoder of the standard
    library (`email.header`), which drops the white space between adjacent encoded-words as §6.2
    says. Python 3.11's headerregistry keeps that space inside display names, so it would read
    a long display name (split over several encoded-words) with extra spaces."""
    value = raw_header(raw, name)
    if not value.endswith(">"):
        return ""
    return str(make_header(decode_header(value[: value.rindex("<")].strip(" "))))


# -- round trip -----------------------------------------------------------------------------------


def test_round_trip_headers() -> None:
    spec = make_spec(reply_to=DOCTOR, read_receipt=True)
    _, parsed = round_trip(spec)

    assert list(parsed.keys()) == [
        "Date",
        "From",
        "To",
        "Reply-To",
        "Message-ID",
        "Subject",
        "X-MSS-CODECDA",
        "X-MSS-INS",
        "X-MSS-NIL",
        "Disposition-Notification-To",
        "MIME-Version",
        "Content-Type",
    ]
    assert parsed["Date"].datetime == spec.date
    sender = parsed["From"].addresses
    assert [(a.display_name, a.addr_spec) for a in sender] == [
        ("CH Exemple - PFI", "pfi-auto@ch-exemple.mssante.fr")
    ]
    assert [a.addr_spec for a in parsed["To"].addresses] == ["adam.hoda@test-ci-sis.mssante.fr"]
    assert [a.addr_spec for a in parsed["Reply-To"].addresses] == [str(DOCTOR)]
    assert parsed["Message-ID"] == spec.message_id
    assert parsed["Subject"] == "XDM/1.0/DDM+CR d'imagerie médicale CORSE Figatellix 12/10/1988"
    assert parsed["X-MSS-CODECDA"] == "18748-4"
    assert parsed["X-MSS-INS"] == "O"
    assert parsed["X-MSS-NIL"] == "DEV935997"
    assert parsed["Disposition-Notification-To"] == "pfi-auto@ch-exemple.mssante.fr"
    assert parsed["MIME-Version"] == "1.0"
    assert not parsed.defects


def test_round_trip_mime_tree_body_and_attachments() -> None:
    second_pdf = Attachment("20220601_CR_CORSE_FIGATELLIX.pdf", PDF[::-1])
    spec = make_spec(pdfs=(Attachment(PDF_NAME, PDF), second_pdf))
    _, parsed = round_trip(spec)

    assert parsed.get_content_type() == "multipart/mixed"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "application/zip",
        "application/pdf",
        "application/pdf",
    ]
    text, zip_part, pdf_part, pdf2_part = parts
    assert text.get_content_charset() == "utf-8"
    assert text.get_content_disposition() is None
    assert text_of(text) == BODY
    assert zip_part.get_filename() == XDM_FILENAME
    assert zip_part.get_param("name") == XDM_FILENAME
    assert zip_part.get_content_disposition() == "attachment"
    assert zip_part.get_content() == XDM
    assert pdf_part.get_filename() == PDF_NAME  # RFC 2231, accents and apostrophe intact
    assert pdf_part.get_content() == PDF
    assert pdf2_part.get_filename() == "20220601_CR_CORSE_FIGATELLIX.pdf"
    assert pdf2_part.get_content() == PDF[::-1]
    for part in parts:
        assert "MIME-Version" not in part
        assert not part.defects


def test_wire_format_is_crlf_seven_bit_and_short_lined() -> None:
    raw = as_bytes(compose_mail(make_spec(body_text="é" * 3000 + "\n" + "x" * 2000)))
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78


def test_text_body_is_quoted_printable_utf8() -> None:
    raw = as_bytes(compose_mail(make_spec()))
    assert b'Content-Type: text/plain; charset="utf-8"' in raw
    assert b"Content-Transfer-Encoding: quoted-printable" in raw
    assert b"confr=C3=A8re" in raw


def test_body_line_endings_are_normalised() -> None:
    _, parsed = round_trip(make_spec(body_text="ligne 1\r\nligne 2\rligne 3"))
    text = next(parsed.iter_parts())
    assert text_of(text) == "ligne 1\nligne 2\nligne 3\n"


def test_same_spec_gives_the_same_bytes() -> None:
    assert as_bytes(compose_mail(make_spec())) == as_bytes(compose_mail(make_spec()))


def test_mail_without_documents_has_only_the_text_part() -> None:
    _, parsed = round_trip(make_spec(cda_codes=(), xdm_zip=None, pdfs=()))
    assert parsed.get_content_type() == "multipart/mixed"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain"]


# -- Message-ID -----------------------------------------------------------------------------------


def test_message_id_is_stable_per_request_and_recipient() -> None:
    first = make_spec()
    again = make_spec(date=datetime(2024, 2, 21, tzinfo=UTC), body_text="autre texte")
    assert first.message_id == again.message_id
    assert round_trip(first)[1]["Message-ID"] == round_trip(again)[1]["Message-ID"]
    assert re.fullmatch(r"<[0-9a-f]{32}@ch-exemple\.mssante\.fr>", first.message_id)


def test_message_id_differs_across_recipients_and_requests() -> None:
    to_doctor = make_spec()
    to_patient = make_spec(to_address=PATIENT)
    other_request = make_spec(request_key="tenant-a/another-request")
    assert len({to_doctor.message_id, to_patient.message_id, other_request.message_id}) == 3


def test_message_id_ignores_the_case_of_the_recipient() -> None:
    upper = MailAddress("ADAM.HODA", "test-ci-sis.mssante.fr")
    assert make_message_id("k", upper, PFI) == make_message_id("k", DOCTOR, PFI)


# -- X-MSS-* rules --------------------------------------------------------------------------------


def x_mss(spec: MailSpec) -> dict[str, str]:
    parsed = round_trip(spec)[1]
    return {name: str(value) for name, value in parsed.items() if name.startswith("X-MSS-")}


def test_no_document_no_codecda_and_no_ins() -> None:
    assert x_mss(make_spec(cda_codes=(), xdm_zip=None, pdfs=())) == {"X-MSS-NIL": "DEV935997"}


def test_several_documents_give_a_multi_valued_codecda() -> None:
    headers = x_mss(make_spec(cda_codes=("11502-2", "11502-2", "CERT_DECL")))
    assert headers["X-MSS-CODECDA"] == "11502-2,11502-2,CERT_DECL"


def test_ins_header_says_whether_the_ins_is_qualified() -> None:
    assert x_mss(make_spec(ins_qualified=True))["X-MSS-INS"] == "O"
    assert x_mss(make_spec(ins_qualified=False))["X-MSS-INS"] == "N"


def test_nil_is_left_out_when_not_configured() -> None:
    assert "X-MSS-NIL" not in x_mss(make_spec(nil=None))


def test_fin_only_on_a_patient_mail_with_the_fin_note() -> None:
    assert x_mss(make_spec(to_address=PATIENT, no_reply=True))["X-MSS-MES"] == "FIN"
    assert "X-MSS-MES" not in x_mss(make_spec(to_address=PATIENT, no_reply=False))
    assert "X-MSS-MES" not in x_mss(make_spec(to_address=DOCTOR, no_reply=True))


def test_read_receipt_asks_for_an_mdn_to_the_tenant_mailbox() -> None:
    with_receipt = round_trip(make_spec(read_receipt=True))[1]
    assert with_receipt["Disposition-Notification-To"] == str(PFI)
    assert "Disposition-Notification-To" not in round_trip(make_spec())[1]


def test_reply_to_only_when_given() -> None:
    assert "Reply-To" not in round_trip(make_spec())[1]


@pytest.mark.parametrize(
    "code", ["", "a,b", "11502 2", "11502-2\r\nBcc: x@y.fr", "é", "-lead", "x" * 65]
)
def test_invalid_cda_codes_are_refused(code: str) -> None:
    with pytest.raises(MessageError) as caught:
        make_spec(cda_codes=(code,))
    assert caught.value.condition is ErrorCondition.DATA_TYPE_ERROR


@pytest.mark.parametrize("nil", ["", "DEV 935997", "DEV935997\r\nX: y", "DÉV"])
def test_invalid_nil_is_refused(nil: str) -> None:
    with pytest.raises(MessageError):
        make_spec(nil=nil)


# -- default bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize("action", list(MailAction))
@pytest.mark.parametrize("body_text", [None, "", " \r\n\t"])
def test_default_body_by_action(action: MailAction, body_text: str | None) -> None:
    _, parsed = round_trip(make_spec(action=action, body_text=body_text))
    assert text_of(next(parsed.iter_parts())) == DEFAULT_BODIES[action]


def test_default_bodies_differ_and_say_what_happens() -> None:
    assert len(set(DEFAULT_BODIES.values())) == 3
    assert "ci-joint un document de santé" in DEFAULT_BODIES[MailAction.NEW]
    assert "annule et remplace" in DEFAULT_BODIES[MailAction.REPLACEMENT]
    assert "doit être supprimé" in DEFAULT_BODIES[MailAction.DELETION]
    for body in DEFAULT_BODIES.values():
        assert body.startswith("Bonjour,\n")
        assert not re.search(r"\d{6,}|@|\{|\}", body)  # no INS, address or template hole


def test_given_body_wins_over_the_default() -> None:
    _, parsed = round_trip(make_spec(action=MailAction.NEW, body_text="Texte du DPI"))
    assert text_of(next(parsed.iter_parts())) == "Texte du DPI\n"


@pytest.mark.parametrize(("action", "says"), [
    (MailAction.REPLACEMENT, "annule et remplace un document"),
    (MailAction.DELETION, "doit être supprimé"),
])
def test_a_given_body_follows_the_replacement_or_deletion_notice(
        action: MailAction, says: str) -> None:
    """CI-SIS: the mail says the replacement or deletion in its body, and keeps the sender's
    CORPSMAIL text; without one, the default body of the action says it."""
    _, parsed = round_trip(make_spec(action=action, body_text="Texte du DPI"))
    text = text_of(next(parsed.iter_parts()))
    assert text.startswith(BODY_NOTICES[action])
    assert says in BODY_NOTICES[action]
    assert text.endswith("\n\nTexte du DPI\n")
    assert says in DEFAULT_BODIES[action]


# -- spec checks and redaction --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"date": datetime(2024, 2, 20)}, "time zone"),
        ({"request_key": ""}, "request key"),
        ({"xdm_zip": None}, "CDA codes"),
        ({"cda_codes": ()}, "CDA codes"),
    ],
)
def test_inconsistent_specs_are_caller_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_spec(**changes)


@pytest.mark.parametrize("name", ["", "  ", "\r\n", ".", "..", " . "])
def test_attachment_needs_a_name(name: str) -> None:
    with pytest.raises(ValueError, match="file name"):
        Attachment(name, PDF)


def test_reprs_hide_patient_data() -> None:
    spec = make_spec(to_address=PATIENT, to_display_name="Figatellix Corse")
    text = repr(spec) + repr(spec.pdfs)
    for secret in ("146026322000196", "Corse", "CORSE", "Figatellix", "1988", "confrère"):
        assert secret not in text
    assert spec.message_id in text


# -- header safety --------------------------------------------------------------------------------

SMUGGLED = "=?utf-8?q?x=0D=0ABcc:_spy@evil.example?="


def test_encoded_word_smuggling_does_not_add_headers() -> None:
    # Python 3.11.7 writes the CR/LF hidden in such an encoded-word raw (CVE-2024-6923).
    spec = make_spec(
        subject=SubjectInput((SMUGGLED,), SMUGGLED, "Fig\r\nCc: spy@evil.example"),
        from_display_name=SMUGGLED,
        to_display_name="Dr\r\nBcc: spy@evil.example",
        pdfs=(Attachment(f"{SMUGGLED}.pdf", PDF),),
    )
    raw, parsed = round_trip(spec)
    assert Counter(parsed.keys())["Bcc"] == 0
    assert Counter(parsed.keys())["Cc"] == 0
    assert b"\r\nBcc:" not in raw
    assert b"\r\nCc:" not in raw
    assert parsed["Subject"] == build_subject(spec.subject)
    assert display_name(raw, "From") == single_line(SMUGGLED)
    assert display_name(raw, "To") == "Dr Bcc: spy@evil.example"
    assert parsed["To"].addresses[0].display_name == "Dr Bcc: spy@evil.example"
    assert list(parsed.iter_attachments())[1].get_filename() == clean_filename(f"{SMUGGLED}.pdf")


def test_header_check_catches_a_split_header() -> None:
    message = EmailMessage(policy=compose_module.SMTP_POLICY)
    message["Comments"] = SMUGGLED  # bypasses the cleaning, as a bug would
    with pytest.raises(HeaderSafetyError, match="Comments"):
        compose_module._check_headers(message)


def test_accented_subject_is_rfc2047_encoded_and_decodes_back() -> None:
    spec = make_spec(
        subject=SubjectInput(("Compte rendu d'échographie",), "Lefèvre-Gaël", "Hélène", None)
    )
    raw, parsed = round_trip(spec)
    subject_lines = re.search(rb"\r\nSubject: (.*?)\r\n(?! )", raw, re.S)
    assert subject_lines is not None
    assert b"=?utf-8?" in subject_lines.group(1)
    assert parsed["Subject"] == "XDM/1.0/DDM+Compte rendu d'échographie LEFEVRE-GAEL Helene"


def test_accented_display_name_is_encoded_and_decodes_back() -> None:
    raw, parsed = round_trip(make_spec(from_display_name="Hôpital Saint-Éloi, « PFI »"))
    assert raw_header(raw, "From").startswith("=?utf-8?b?")
    assert raw_header(raw, "From").endswith(
        " PFI =?utf-8?b?wrs=?= <pfi-auto@ch-exemple.mssante.fr>"
    )
    assert display_name(raw, "From") == "Hôpital Saint-Éloi, « PFI »"
    assert parsed["From"].addresses[0].display_name == "Hôpital Saint-Éloi, « PFI »"


def test_plain_words_stay_readable_on_the_wire() -> None:
    raw, _ = round_trip(make_spec())
    assert raw_header(raw, "From") == "CH Exemple - PFI <pfi-auto@ch-exemple.mssante.fr>"
    assert raw_header(raw, "Subject").startswith("XDM/1.0/DDM+CR d'imagerie =?utf-8?b?")
    assert raw_header(raw, "Subject").endswith("?= CORSE Figatellix 12/10/1988")


@pytest.mark.parametrize(
    "name",
    [
        "médecine " + "A" * 100,  # Python 3.11's own folder loses the space after `médecine`
        "é" * 10 + " " + "b" * 80 + " " + "c" * 80,
        "Centre Hospitalier Universitaire de Clermont-Ferrand – Plateforme d'échange " * 8,
        "a" * 1200,  # Python 3.11's folder writes this on one 1,200-character line
        "x",
    ],
)
def test_long_display_names_fold_and_decode_back(name: str) -> None:
    raw, parsed = round_trip(make_spec(from_display_name=name, to_display_name=name))
    assert max(len(line) for line in header_block(raw).split(b"\r\n")) <= 76
    assert display_name(raw, "From") == single_line(name)
    assert display_name(raw, "To") == single_line(name)
    assert [a.addr_spec for a in parsed["From"].addresses] == [str(PFI)]
    assert [a.addr_spec for a in parsed["To"].addresses] == [str(DOCTOR)]
    assert not parsed["From"].defects
    assert not parsed["To"].defects


@pytest.mark.parametrize(
    ("birth_name", "given_name"),
    [
        ("Dupont-Lefèvre de la Tour d'Auvergne " * 12, "Marie-Thérèse " * 20),
        ("A" * 400, "b" * 400),  # words longer than a line
        ("É" * 400, "ü" * 300),
    ],
)
def test_long_subject_folds_and_parses_back(birth_name: str, given_name: str) -> None:
    spec = make_spec(
        subject=SubjectInput(
            ("Compte rendu d'hospitalisation en médecine interne",), birth_name, given_name
        )
    )
    raw, parsed = round_trip(spec)
    lines = header_block(raw).split(b"\r\n")
    assert max(len(line) for line in lines) <= 76  # RFC 2047 §2 (998 is the RFC 5322 limit)
    subject_start = next(i for i, line in enumerate(lines) if line.startswith(b"Subject: "))
    assert lines[subject_start + 1].startswith(b" ")  # folded
    assert parsed["Subject"] == build_subject(spec.subject)
    assert len(parsed.keys()) == len(set(parsed.keys()))


ANY_TEXT = st.lists(
    st.text(st.characters(codec="utf-8"), max_size=12)
    | st.sampled_from(["\r", "\n", "\r\n", "=?", "?=", "\x00", ":", "\u2028", "\x85", "\ufeff"]),
    max_size=12,
).map("".join)
NAME = ANY_TEXT.filter(lambda text: bool(single_line(text).strip(" ")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    label=ANY_TEXT,
    birth_name=NAME,
    given_name=NAME,
    from_name=ANY_TEXT,
    to_name=ANY_TEXT,
    filename=NAME.filter(lambda text: bool(clean_filename(text))),
    body=ANY_TEXT,
    to_patient=st.booleans(),
)
def test_arbitrary_text_never_adds_a_header_or_breaks_parsing(
    label: str,
    birth_name: str,
    given_name: str,
    from_name: str,
    to_name: str,
    filename: str,
    body: str,
    to_patient: bool,
) -> None:
    subject_input = SubjectInput((label,), birth_name, given_name, date(1979, 3, 28))
    try:
        build_subject(subject_input)
    except MessageError:
        return  # a name made only of accents: refused upstream, nothing to send
    spec = make_spec(
        subject=subject_input,
        from_display_name=from_name,
        to_display_name=to_name,
        to_address=PATIENT if to_patient else DOCTOR,
        no_reply=True,
        body_text=body,
        pdfs=(Attachment(filename, PDF),),
    )
    raw, parsed = round_trip(spec)

    expected = [
        "Date",
        "From",
        "To",
        "Message-ID",
        "Subject",
        "X-MSS-CODECDA",
        "X-MSS-INS",
        "X-MSS-NIL",
        *(["X-MSS-MES"] if to_patient else []),
        "MIME-Version",
        "Content-Type",
    ]
    assert list(parsed.keys()) == expected
    assert raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert parsed["Subject"] == build_subject(subject_input)
    assert [a.addr_spec for a in parsed["To"].addresses] == [str(spec.to_address)]
    assert display_name(raw, "To") == single_line(to_name)
    assert [a.addr_spec for a in parsed["From"].addresses] == [str(PFI)]
    assert display_name(raw, "From") == single_line(from_name)
    assert all(not parsed[name].defects for name in parsed)
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "application/zip",
        "application/pdf",
    ]
    for part in parts:
        assert set(part.keys()) <= {
            "Content-Type",
            "Content-Transfer-Encoding",
            "Content-Disposition",
        }
    assert parts[2].get_filename() == clean_filename(filename)
    assert parts[2].get_content() == PDF
    if body.strip():
        normalised = body.replace("\r\n", "\n").replace("\r", "\n")
        assert text_of(parts[0]) == normalised + ("" if normalised.endswith("\n") else "\n")


# -- follow-ups (ECO.2.2.2) -----------------------------------------------------------------------


def test_the_local_part_of_a_message_id_comes_from_the_key_and_the_recipient() -> None:
    spec = make_spec()
    local = message_id_local_part(spec.request_key, str(spec.to_address).upper())
    assert spec.message_id == f"<{local}@{spec.from_address.domain}>"


def test_references_are_added_to_a_composed_message() -> None:
    spec = make_spec()
    raw = render_mail(spec)
    first = make_message_id("earlier-request", DOCTOR, PFI)
    second = make_message_id("the-request-before", DOCTOR, PFI)
    followed = with_references(raw, [first, second])
    assert followed.endswith(raw)  # the message itself is untouched
    assert all(len(line) <= 78 for line in followed[:len(followed) - len(raw)].split(b"\r\n"))
    message = parse(followed)
    assert message["In-Reply-To"] == first
    assert message["References"].split() == [first, second]
    assert message["Message-ID"] == spec.message_id
    assert with_references(raw, []) is raw


def test_references_take_only_the_message_ids_the_composer_writes() -> None:
    with pytest.raises(ValueError, match="msg-id"):
        with_references(b"Subject: x\r\n\r\nbody\r\n", ["<a>\r\nBcc: someone@example.org"])


@pytest.mark.parametrize(("name", "written"), [
    ("CR: biologie/hémato.pdf", "CR_ biologie_hémato.pdf"),
    ('<>', "__"),  # Python's parser would read <...> back without its brackets
    ('a"b|c?d*e\\f.pdf', "a_b_c_d_e_f.pdf"),
    (" .hidden. ", "hidden"),
])
def test_attachment_names_lose_what_a_file_name_cannot_hold(name: str, written: str) -> None:
    assert clean_filename(name) == written
    _, parsed = round_trip(make_spec(pdfs=(Attachment(name, PDF),)))
    assert list(parsed.iter_attachments())[1].get_filename() == written
