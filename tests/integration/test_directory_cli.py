"""`directory import` then `directory lookup`, as an operator runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.cli import main
from tests.integration.test_cli import run_cli
from tests.unit.directory.test_annuaire import (
    FINESS,
    HEADER,
    RPPS,
    RPPS_2,
    extraction,
    line,
    org_line,
    write,
)
from tests.unit.directory.test_fhir import (  # noqa: F401 - `annuaire` is a fixture
    KEY,
    FakeAnnuaire,
    Reply,
    annuaire,
    bundle,
    mss_telecom,
    practitioner,
)
from tests.unit.directory.test_whitelist import whitelist_xml


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "listeblanche.xml").write_bytes(
        whitelist_xml(["chu-test.mssante.fr", "medecin.mssante.fr"]))
    path = tmp_path / "c.toml"
    path.write_text(f'data_dir = "{tmp_path / "var"}"\n'
                    f'[directory]\nwhitelist = "{tmp_path / "listeblanche.xml"}"\n'
                    '[[tenants]]\nid = "a"\noid = "1.2.3"\n')
    return path


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write(tmp_path / "Extraction_Correspondance_MSSante_202608260300.txt", extraction(
        line(),
        line(address="jean.dupont@medecin.mssante.fr", structure_id="", structure_name=""),
        line(pp_id=RPPS_2, national_id="", address="gaelle@ailleurs.example.fr"),
        org_line(),
        "PER|broken",
        trailing=True))


async def test_import_then_lookup(config: Path, source: Path, tmp_path: Path) -> None:
    code, out, err = await run_cli("directory", "import", str(source), "--config", str(config))
    assert code == 0, err
    assert f"imported {tmp_path / 'var' / 'directory.db'}: 3 entries (2 PER, 1 ORG" in out
    assert "1 malformed, 1 outside the trust space;" in out
    assert "line 6: expected 31 fields, found 3" in out  # "PER|broken|"
    assert "DUPONT" not in out + err
    assert (tmp_path / "var" / "directory.db").is_file()

    code, out, err = await run_cli("directory", "lookup", RPPS, "--config", str(config))
    assert code == 0, err
    assert out.splitlines() == [f"jean.dupont@chu-test.mssante.fr\tPER\t{FINESS}",
                                "jean.dupont@medecin.mssante.fr\tPER\t"]

    code, out, _ = await run_cli("directory", "lookup", f"8{RPPS}", "--rule", "organisation",
                                 "--structure", FINESS, "--config", str(config))
    assert code == 0
    assert out.splitlines() == [f"cardiologie@chu-test.mssante.fr\tORG\t{FINESS}"]


def test_lookup_outcomes(config: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["directory", "import", str(source), "--config", str(config)]) == 0
    capsys.readouterr()
    # Structure narrowing within the personal rule.
    assert main(["directory", "lookup", RPPS, "--structure", FINESS, "--config",
                 str(config)]) == 0
    assert capsys.readouterr().out == f"jean.dupont@chu-test.mssante.fr\tPER\t{FINESS}\n"
    # Outside the trust space at import: not there.
    assert main(["directory", "lookup", RPPS_2, "--config", str(config)]) == 1
    assert "no MSSanté address found" in capsys.readouterr().err
    assert main(["directory", "lookup", "not-an-id!", "--config", str(config)]) == 2
    assert "not a national professional identifier" in capsys.readouterr().err
    assert main(["directory", "lookup", RPPS, "--rule", "any", "--config", str(config)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_import_failures(config: Path, source: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["directory", "import", str(tmp_path / "missing.txt"), "--config",
                 str(config)]) == 2
    assert "missing.txt: No such file or directory" in capsys.readouterr().err
    other = write(tmp_path / "other.csv", "a;b;c\n1;2;3\n")
    assert main(["directory", "import", str(other), "--config", str(config)]) == 2
    assert "not an MSSanté extraction header" in capsys.readouterr().err

    assert main(["directory", "import", str(source), "--config", str(config)]) == 0
    installed = (tmp_path / "var" / "directory.db").read_bytes()
    capsys.readouterr()
    empty = write(tmp_path / "empty.txt", extraction(line(mailbox_type="?"), header=HEADER))
    assert main(["directory", "import", str(empty), "--config", str(config)]) == 1
    captured = capsys.readouterr()
    assert "nothing imported: 0 entries" in captured.out
    assert "the installed directory is unchanged" in captured.err
    assert (tmp_path / "var" / "directory.db").read_bytes() == installed


def test_lookup_needs_an_imported_directory(config: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["directory", "lookup", RPPS, "--config", str(config)]) == 2
    assert "run `directory import`" in capsys.readouterr().err


def test_no_whitelist_configured_is_said(tmp_path: Path, source: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "plain.toml"
    config.write_text(f'data_dir = "{tmp_path / "plain"}"\n[[tenants]]\nid = "a"\noid = "1.2.3"\n')
    assert main(["directory", "import", str(source), "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "4 entries" in captured.out
    assert "outside the trust space (not checked)" in captured.out
    assert "the trust space is not checked" in captured.err


def test_lookup_through_the_fhir_api(config: Path, annuaire: FakeAnnuaire,  # noqa: F811
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    annuaire.routes["Practitioner"] = Reply(200, bundle(practitioner(
        RPPS, mss_telecom("jm.dupont@medecin.mssante.fr"),
        mss_telecom("jm.dupont@ailleurs.example.fr"))))
    monkeypatch.setenv("MSSCONNECTOR_ESANTE_API_KEY", KEY)
    assert main(["directory", "lookup", RPPS, "--fhir", "--fhir-url", annuaire.url,
                 "--config", str(config)]) == 0
    assert capsys.readouterr().out == "jm.dupont@medecin.mssante.fr\tPER\t\n"
    monkeypatch.delenv("MSSCONNECTOR_ESANTE_API_KEY")
    assert main(["directory", "lookup", RPPS, "--fhir", "--fhir-url", annuaire.url,
                 "--config", str(config)]) == 2
    assert "MSSCONNECTOR_ESANTE_API_KEY: environment variable is not set" in (
        capsys.readouterr().err)
