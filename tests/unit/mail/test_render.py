"""`render_mail` writes, byte for byte, what `as_bytes(compose_mail(spec))` writes, with the same
header checks: the `email`-generated message is the reference, the fast path is what is sent."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.errors import MessageError
from connector.mail import compose as compose_module
from connector.mail.compose import (
    DEFAULT_BODIES,
    XDM_FILENAME,
    Attachment,
    HeaderSafetyError,
    MailAction,
    MailSpec,
    as_bytes,
    clean_filename,
    compose_mail,
    render_mail,
)
from connector.mail.subject import SubjectInput, build_subject
from tests.unit.mail.test_compose import (
    ANY_TEXT,
    DOCTOR,
    NAME,
    PATIENT,
    PDF,
    PDF_NAME,
    SMUGGLED,
    XDM,
    make_spec,
    parse,
)


def reference(spec: MailSpec) -> bytes:
    return as_bytes(compose_mail(spec))


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"reply_to": DOCTOR, "read_receipt": True},
        {"to_address": PATIENT, "no_reply": True, "to_display_name": "Dominique PAT-TROIS"},
        {"cda_codes": (), "xdm_zip": None, "pdfs": ()},
        {"pdfs": ()},
        {"pdfs": (Attachment(PDF_NAME, PDF), Attachment(PDF_NAME + ".pdf", PDF[::-1]))},
        {"pdfs": (Attachment("vide.pdf", b""),), "xdm_zip": b""},
        {"xdm_zip": XDM * 7 + b"\x00" * 3},  # length not a multiple of 57 (a short last line)
        {"nil": None, "ins_qualified": False, "cda_codes": ("11502-2", "CERT_DECL")},
        {"body_text": None},
        {"body_text": "é" * 3000 + "\n" + "x" * 2000 + " \t\n.\n.leading dot\r\nfin "},
        {"from_display_name": "Hôpital Saint-Éloi, « PFI » " * 10},
    ],
)
def test_render_mail_is_compose_mail_byte_for_byte(changes: dict[str, object]) -> None:
    spec = make_spec(**changes)
    assert render_mail(spec) == reference(spec)


@pytest.mark.parametrize("action", list(MailAction))
def test_render_mail_with_each_default_body(action: MailAction) -> None:
    spec = make_spec(action=action, body_text=None)
    raw = render_mail(spec)
    assert raw == reference(spec)
    text = next(parse(raw).iter_parts()).get_content()
    assert text.replace("\r\n", "\n") == DEFAULT_BODIES[action]


def test_render_mail_parts_read_back_byte_for_byte() -> None:
    second = Attachment("20220601_CR_CORSE_FIGATELLIX.pdf", PDF[::-1])
    spec = make_spec(pdfs=(Attachment(PDF_NAME, PDF), second))
    parsed = parse(render_mail(spec))
    assert not parsed.defects
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "application/zip", "application/pdf", "application/pdf",
    ]
    assert parts[1].get_filename() == XDM_FILENAME
    assert parts[1].get_content() == XDM
    assert parts[2].get_filename() == PDF_NAME
    assert parts[2].get_content() == PDF
    assert parts[3].get_content() == PDF[::-1]
    for part in parts:
        assert not part.defects


def test_render_mail_is_deterministic_and_uses_the_cached_part_headers() -> None:
    compose_module._pdf_part_headers.cache_clear()
    first = render_mail(make_spec())
    assert render_mail(make_spec()) == first
    assert compose_module._pdf_part_headers.cache_info().hits >= 1


def test_render_mail_neutralises_header_smuggling() -> None:
    spec = make_spec(
        subject=SubjectInput((SMUGGLED,), SMUGGLED, "Fig\r\nCc: spy@evil.example"),
        from_display_name=SMUGGLED,
        to_display_name="Dr\r\nBcc: spy@evil.example",
        pdfs=(Attachment(f"{SMUGGLED}\r\nBcc: x@y.fr.pdf", PDF),),
    )
    raw = render_mail(spec)
    assert raw == reference(spec)
    parsed = parse(raw)
    assert Counter(parsed.keys())["Bcc"] == 0
    assert Counter(parsed.keys())["Cc"] == 0
    assert b"\r\nBcc:" not in raw
    assert b"\r\nCc:" not in raw


@pytest.mark.parametrize(("name", "value"), [
    ("Comments", SMUGGLED), ("Message-ID", SMUGGLED), ("X-MSS-NIL", SMUGGLED),
    ("Message-ID", "<a@b.fr>\r\nBcc: spy@evil.example"),
    ("Date", "Tue, 07 May 2024 10:11:12 +0200\r\nBcc: spy@evil.example"),
])
def test_render_mail_checks_every_top_level_header(monkeypatch: pytest.MonkeyPatch,
                                                   name: str, value: str) -> None:
    """Whichever way a header is written (folded by email, kept folded, or written as it is
    when email would write it unchanged), a smuggled line break is refused."""
    header_values = compose_module._header_values

    def buggy(spec: MailSpec) -> list[tuple[str, compose_module.HeaderValue]]:
        return [*header_values(spec), (name, value)]  # bypasses the cleaning, as a bug would

    monkeypatch.setattr(compose_module, "_header_values", buggy)
    with pytest.raises((HeaderSafetyError, ValueError), match=f"{name}|linefeed"):
        render_mail(make_spec())


def test_no_header_that_can_carry_patient_data_is_kept_folded() -> None:
    assert not {"To", "Subject", "Message-ID", "Date"} & compose_module._STABLE_HEADERS
    compose_module._folded_stable.cache_clear()
    compose_module._folded_stable_address.cache_clear()
    for n in range(3):
        render_mail(make_spec(to_display_name=f"Patient {n}"))
    assert compose_module._folded_stable_address.cache_info().currsize == 1  # From only
    assert compose_module._folded_stable_address.cache_info().hits == 2


def test_render_mail_checks_the_attachment_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    compose_module._pdf_part_headers.cache_clear()
    monkeypatch.setattr(compose_module, "clean_filename", lambda name: name)  # a bug
    with pytest.raises(HeaderSafetyError):
        render_mail(make_spec(pdfs=(Attachment(f"{SMUGGLED}.pdf", PDF),)))
    compose_module._pdf_part_headers.cache_clear()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    label=ANY_TEXT,
    birth_name=NAME,
    given_name=NAME,
    from_name=ANY_TEXT,
    to_name=ANY_TEXT,
    filenames=st.lists(NAME.filter(lambda text: bool(clean_filename(text))), max_size=3),
    body=ANY_TEXT | st.none(),
    contents=st.lists(st.binary(max_size=400), min_size=4, max_size=4),
    to_patient=st.booleans(),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    action=st.sampled_from(list(MailAction)),
)
def test_arbitrary_specs_render_like_compose_mail(
    label: str,
    birth_name: str,
    given_name: str,
    from_name: str,
    to_name: str,
    filenames: list[str],
    body: str | None,
    contents: list[bytes],
    to_patient: bool,
    flags: tuple[bool, bool, bool],
    action: MailAction,
) -> None:
    subject_input = SubjectInput((label,), birth_name, given_name, date(1979, 3, 28))
    try:
        build_subject(subject_input)
    except MessageError:
        return  # refused upstream, nothing to send
    with_documents, reply_to, read_receipt = flags
    spec = make_spec(
        subject=subject_input,
        action=action,
        from_display_name=from_name,
        to_display_name=to_name,
        to_address=PATIENT if to_patient else DOCTOR,
        reply_to=DOCTOR if reply_to else None,
        read_receipt=read_receipt,
        no_reply=True,
        body_text=body,
    )
    if with_documents:
        spec = dataclasses.replace(
            spec,
            xdm_zip=contents[0],
            pdfs=tuple(Attachment(name, contents[1 + i % 3]) for i, name in enumerate(filenames)),
        )
    else:
        spec = dataclasses.replace(spec, cda_codes=(), xdm_zip=None, pdfs=())
    assert render_mail(spec) == reference(spec)
