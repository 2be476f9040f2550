"""`whitelist import`: checks, installs atomically, reports what changed, refuses a bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.cli import main

HEADER = ('<?xml version="1.0" encoding="UTF-8"?><ListeBlancheMSSante '
          'xmlns="https://listeblanche.mssante.fr/schema"><DateDeGeneration>{date}'
          '</DateDeGeneration><ListeDomaines>')


def whitelist(date: str, *domains: str) -> bytes:
    body = "".join(f"<Domaine><Nom>{d}</Nom></Domaine>" for d in domains)
    return (HEADER.format(date=date) + body + "</ListeDomaines></ListeBlancheMSSante>").encode()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[directory]\nwhitelist = "{tmp_path / "installed.xml"}"\n'
                    '[[tenants]]\nid = "a"\noid = "1.2.3"\n')
    return path


def test_import_installs_and_reports(config: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    first = tmp_path / "first.xml"
    first.write_bytes(whitelist("2025-03-13T14:54:10Z", "a.mssante.fr", "b.mssante.fr"))
    assert main(["whitelist", "import", str(first), "--config", str(config)]) == 0
    assert "2 domains" in capsys.readouterr().out
    second = tmp_path / "second.xml"
    second.write_bytes(whitelist("2025-04-01T00:00:00Z", "b.mssante.fr", "c.mssante.fr",
                                 "d.example.fr"))
    assert main(["whitelist", "import", str(second), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "3 domains" in out
    assert "2 added, 1 removed" in out
    assert (tmp_path / "installed.xml").read_bytes() == second.read_bytes()


def test_malformed_file_leaves_the_installed_one(config: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.xml"
    good.write_bytes(whitelist("2025-03-13T14:54:10Z", "a.mssante.fr"))
    assert main(["whitelist", "import", str(good), "--config", str(config)]) == 0
    truncated = tmp_path / "truncated.xml"
    truncated.write_bytes(whitelist("2025-05-01T00:00:00Z", "x.mssante.fr")[:-25])
    assert main(["whitelist", "import", str(truncated), "--config", str(config)]) == 2
    assert "truncated.xml" in capsys.readouterr().err
    assert (tmp_path / "installed.xml").read_bytes() == good.read_bytes()


def test_import_needs_the_configured_target(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[[tenants]]\nid = "a"\noid = "1.2.3"\n')
    source = tmp_path / "w.xml"
    source.write_bytes(whitelist("2025-03-13T14:54:10Z", "a.mssante.fr"))
    assert main(["whitelist", "import", str(source), "--config", str(config)]) == 2
    assert "directory.whitelist: is not set" in capsys.readouterr().err
