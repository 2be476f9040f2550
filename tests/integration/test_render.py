"""`mssante-connector render`: the command as an interface team runs it, in a real process."""

from __future__ import annotations

import email.policy
import re
import stat
import subprocess
import sys
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from tests.conftest import CISIS_FIXTURES, FIXTURES, HL7_FIXTURES, needs_pdf_renderer
from tests.unit.pipeline.test_mails import _with_fin_and_bodies, oru_initial

pytestmark = pytest.mark.slow

MDM_T02 = CISIS_FIXTURES / "mdm-t02-initial" / "message.er7"
MDM_T04 = CISIS_FIXTURES / "mdm-t04-delete" / "message.er7"
PLACEHOLDER = CISIS_FIXTURES / "mdm-t02-initial" / "message-placeholder-cda.er7"
ORU_INS_MISMATCH = CISIS_FIXTURES / "oru-r01-replace" / "message.er7"
ADT = HL7_FIXTURES / "pam-fr-2.11" / "adt-a01-admission.er7"
DOCTOR = "adam.hoda@test-ci-sis.mssante.fr"
WHITELIST = """<?xml version="1.0" encoding="UTF-8"?>
<ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema">
  <DateDeGeneration>2025-03-13T00:00:00Z</DateDeGeneration>
  <ListeDomaines>{domains}</ListeDomaines>
</ListeBlancheMSSante>
"""


def write_config(tmp_path: Path, *, oid: str | None = "1.2.250.1.999.1",
                 domains: tuple[str, ...] = ("test-ci-sis.mssante.fr", "patient.mssante.fr"),
                 whitelist: Path | None = None, listeners: str = "") -> Path:
    if whitelist is None:
        whitelist = tmp_path / "whitelist.xml"
        entries = "".join(f"<Domaine><Nom>{d}</Nom></Domaine>" for d in domains)
        whitelist.write_text(WHITELIST.format(domains=entries), encoding="utf-8")
    config = tmp_path / "connector.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "var"}"\n'
        f'[directory]\nwhitelist = "{whitelist}"\n'
        '[[tenants]]\nid = "chu-test"\nname = "CHU Test"\n'
        + (f'oid = "{oid}"\n' if oid else "")
        + '[tenants.cisis]\nsending_matrix = "ans-examples"\n'
        '[tenants.mailbox]\naddress = "pfi@chu-test.mssante.fr"\nnil = "DEV935997"\n'
        '[[tenants.listeners]]\nport = 2575\n' + listeners,
        encoding="utf-8",
    )
    return config


def render(tmp_path: Path, config: Path, *files: Path, extra: tuple[str, ...] = ()
           ) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "connector", "render", *map(str, files),
         "--out", str(tmp_path / "out"), "--config", str(config), *extra],
        capture_output=True, cwd=tmp_path, timeout=120, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def read_eml(path: Path) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(path.read_bytes())
    assert isinstance(message, EmailMessage)
    return message


def attachment(message: EmailMessage, content_type: str) -> list[bytes]:
    found = []
    for part in message.iter_attachments():
        if part.get_content_type() == content_type:
            content = part.get_content()
            assert isinstance(content, bytes)
            found.append(content)
    return found


def test_render_writes_each_mail_and_its_attachments(tmp_path: Path) -> None:
    code, out, _ = render(tmp_path, write_config(tmp_path), MDM_T02, MDM_T04)
    assert code == 0, out
    lines = out.splitlines()
    first, second = (line for line in lines if not line.startswith("  "))
    assert first == f"{MDM_T02}#1 [001] MSH-10=015 AA 1 e-mail(s), route ps_only"
    assert second == f"{MDM_T04}#1 [002] MSH-10=015 AA 1 e-mail(s), route ps_only"
    assert "  warning ERR-3=207 ERR-2=OBX^1^5 CDA not validated" in out
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [
        "001-1-professional-IHE_XDM.zip", "001-1-professional-pdf1.pdf",
        "001-1-professional.eml",
        "002-1-professional-IHE_XDM.zip", "002-1-professional-pdf1.pdf",
        "002-1-professional.eml",
    ]
    mail_lines = [line for line in lines if line.startswith("  mail ")]
    assert len(mail_lines) == 2
    for number, line in zip(("001", "002"), mail_lines, strict=True):
        stem = tmp_path / "out" / f"{number}-1-professional"
        eml = stem.with_suffix(".eml")
        message = read_eml(eml)
        assert f"To={DOCTOR}" in line
        assert f"Message-ID={message['Message-ID']}" in line
        assert message["Message-ID"].endswith("@chu-test.mssante.fr>")
        assert message["To"] == DOCTOR
        assert message["X-MSS-NIL"] == "DEV935997"
        zip_path = Path(f"{stem}-IHE_XDM.zip")
        pdf_path = Path(f"{stem}-pdf1.pdf")
        assert attachment(message, "application/zip") == [zip_path.read_bytes()]
        assert attachment(message, "application/pdf") == [pdf_path.read_bytes()]
        assert (f"eml={eml.stat().st_size} IHE_XDM.zip={zip_path.stat().st_size} "
                f"pdf={pdf_path.stat().st_size}") in line
        assert b"\r\n" in eml.read_bytes()
        assert b"\n" not in eml.read_bytes().replace(b"\r\n", b"")
        for path in (eml, zip_path, pdf_path):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_refused_messages_print_the_err_serve_would_answer(tmp_path: Path) -> None:
    code, out, _ = render(tmp_path, write_config(tmp_path), PLACEHOLDER, ORU_INS_MISMATCH,
                          MDM_T02)
    assert code == 1
    first, second, third = (line for line in out.splitlines() if not line.startswith("  "))
    assert first.startswith(f"{PLACEHOLDER}#1 [001] MSH-10=015 AE ERR-3=207 ERR-5=906 "
                            "ERR-2=OBX^1^5^1^5 OBX 1: OBX-5.5 decodes to 39 bytes of non-XML")
    assert second.startswith(f"{ORU_INS_MISMATCH}#1 [002] MSH-10=015 AE ERR-3=207 ERR-5=904 "
                             "ERR-2=PID^1^3 OBX 1: the INS of PID-3 and of the CDA")
    assert " AA " in third
    assert sorted(p.name[:3] for p in (tmp_path / "out").iterdir()) == ["003"] * 3


def test_recipient_outside_the_trust_space_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, domains=("patient.mssante.fr",))
    code, out, _ = render(tmp_path, config, MDM_T02)
    assert code == 1
    assert re.search(r" AE ERR-3=207 ERR-5=906 ERR-2=PRT\^2\^15 PRT 2: recipient domain is "
                     r"not in the MSSante trust space", out)
    assert not any((tmp_path / "out").iterdir())


@needs_pdf_renderer
def test_two_documents_and_a_patient_mail(tmp_path: Path) -> None:
    message = tmp_path / "oru-corrected.hl7"
    message.write_bytes(("\r".join(_with_fin_and_bodies(oru_initial())) + "\r").encode())
    code, out, _ = render(tmp_path, write_config(tmp_path), message)
    assert code == 0, out
    mails = [line for line in out.splitlines() if line.startswith("  mail ")]
    assert mails[0].startswith(f"  mail 1 professional To={DOCTOR} ")
    assert mails[1].startswith("  mail 2 patient To=279035121518989@patient.mssante.fr ")
    # the N1's own PDF, and one rendered from the N3 (it embeds none)
    assert all(re.search(r" pdf=\d+\+\d+ ", line) for line in mails)
    assert not [line for line in mails if "no PDF rendition" in line]
    assert (tmp_path / "out" / "001-2-patient-pdf2.pdf").read_bytes().startswith(b"%PDF-1.4")
    patient = read_eml(tmp_path / "out" / "001-2-patient.eml")
    assert patient["X-MSS-MES"] == "FIN"
    assert patient["X-MSS-CODECDA"] == "11502-2,11502-2"
    assert patient["Disposition-Notification-To"] == "pfi@chu-test.mssante.fr"
    assert "PAT-TROIS" not in " ".join(p.name for p in (tmp_path / "out").iterdir())


def test_the_answer_is_the_one_of_the_listener_named(tmp_path: Path) -> None:
    enhanced = tmp_path / "enhanced.hl7"  # MSH-15 = AL, MSH-16 = AL: enhanced mode
    enhanced.write_bytes(MDM_T02.read_bytes().replace(b"|2.6|||||FRA|", b"|2.6|||AL|AL|FRA|", 1))
    config = write_config(tmp_path, listeners='[[tenants.listeners]]\nname = "apps"\n'
                                              'port = 2576\nenhanced_ack = "application"\n')
    lines = {}
    for listener in (None, "apps"):
        extra = ("--listener", listener) if listener else ()
        code, out, _ = render(tmp_path, config, enhanced, extra=extra)
        assert code == 0, out
        lines[listener] = out.splitlines()[0]
    assert " MSH-10=015 CA 1 e-mail(s)" in lines[None]  # the first listener: commit ACK
    assert " MSH-10=015 AA 1 e-mail(s)" in lines["apps"]  # one application ACK
    code, out, err = render(tmp_path, config, enhanced, extra=("--listener", "other"))
    assert code == 2
    assert "--listener: tenant 'chu-test' has no listener 'other'" in err


def test_adt_is_accepted_without_mail(tmp_path: Path) -> None:
    code, out, _ = render(tmp_path, write_config(tmp_path), ADT)
    assert code == 0
    assert out.strip() == f"{ADT}#1 [001] MSH-10=3975 AA not a document request: no e-mail"


@pytest.mark.parametrize(("kwargs", "extra", "expected"), [
    ({"oid": None}, (), "tenants[0].oid: is required"),
    ({}, ("--tenant", "other"), "--tenant: no tenant 'other'"),
    ({"whitelist": FIXTURES / "mssante" / "listeblanchemssante.xml"}, (),
     "directory.whitelist: malformed whitelist"),
])
def test_configuration_problems_exit_2(tmp_path: Path, kwargs: dict[str, object],
                                      extra: tuple[str, ...], expected: str) -> None:
    config = write_config(tmp_path, **kwargs)  # type: ignore[arg-type]
    code, out, err = render(tmp_path, config, MDM_T02, extra=extra)
    assert code == 2
    assert expected in err
    assert out == ""


def test_unreadable_file_exits_2(tmp_path: Path) -> None:
    code, _, err = render(tmp_path, write_config(tmp_path), tmp_path / "missing.hl7")
    assert code == 2
    assert "missing.hl7" in err


def test_a_mail_without_a_pdf_says_which_document_and_why(tmp_path: Path) -> None:
    from connector.cisis.model import RecipientKind
    from connector.cli.render_cmd import _write_mail
    from connector.directory.whitelist import parse_address
    from connector.pipeline.mails import MissingPdf, OutgoingMail

    mail = OutgoingMail(index=1, recipient=parse_address(DOCTOR),
                        kind=RecipientKind.PROFESSIONAL, prt_sequence=2,
                        message_id="<m@chu-test.mssante.fr>", content=b"eml", xdm_zip=b"zip",
                        missing_pdfs=(MissingPdf(
                            2, "no PDF renderer: the Pango libraries are missing", True),))
    line = _write_mail(tmp_path, 7, mail)
    assert line.endswith(" pdf=none files=007-1-professional* (no PDF rendition: OBX 2: no PDF "
                         "renderer: the Pango libraries are missing)")


@pytest.mark.parametrize(("policy", "error", "expected"), [
    ("", "unavailable", r" AR ERR-3=207 ERR-2=OBX\^2\^5 ECO\.2\.1\.1: the PDF/A-1 of the CDA "
                        r"in OBX 2 cannot be rendered on this host \(no PDF renderer\); send "),
    ("", "fails", r" AE ERR-3=207 ERR-2=OBX\^2\^5 ECO\.2\.1\.1: the CDA in OBX 2 embeds no "
                  r"PDF and its PDF/A-1 could not be rendered \(too large\)"),
    ('missing_pdf = "send"\n', "unavailable", r" AA 2 e-mail\(s\)"),
])
def test_render_answers_what_serve_answers_to_a_cda_without_pdf(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        policy: str, error: str, expected: str) -> None:
    from connector.cli import main
    from connector.errors import PdfRendererUnavailable, PdfRenditionError
    from connector.observability import logs
    from connector.pipeline import mails

    monkeypatch.setattr(logs, "configure_logging", lambda settings: None)  # pytest's stderr

    def render_pdf(root: object, header: object) -> bytes:
        if error == "unavailable":
            raise PdfRendererUnavailable("no PDF renderer")
        raise PdfRenditionError("too large")

    monkeypatch.setattr(mails, "render_pdf", render_pdf)
    message = tmp_path / "oru-corrected.hl7"
    message.write_bytes(("\r".join(oru_initial()) + "\r").encode())
    config = write_config(tmp_path)
    config.write_text(config.read_text(encoding="utf-8").replace(
        "[tenants.cisis]\n", "[tenants.cisis]\n" + policy), encoding="utf-8")
    code = main(["render", str(message), "--out", str(tmp_path / "out"),
                 "--config", str(config)])
    out = capsys.readouterr().out
    assert re.search(expected, out), out
    assert code == (0 if policy else 1)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    if policy:
        assert "(no PDF rendition: OBX 2: no PDF renderer)" in out
        assert "001-1-professional.eml" in written
    else:
        assert written == []
