"""`serve`'s exit: what it tells the operator when an I/O error ends it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from connector.app import Application
from connector.cli import serve_cmd


class _Failing:
    """An application whose run ends in `error`, after it started serving or before."""

    def __init__(self, error: OSError, *, started: bool) -> None:
        self.error = error
        self.started = started
        self.serving = False

    async def run_until_signalled(self) -> None:
        self.serving = self.started
        raise self.error


@pytest.mark.parametrize(("started", "said"), [(False, "cannot start: "),
                                               (True, "stopped on an error: ")])
def test_an_io_error_is_reported_by_when_it_happened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        started: bool, said: str) -> None:
    app = _Failing(OSError(9, "Bad file descriptor"), started=started)
    monkeypatch.setattr(Application, "build", classmethod(lambda cls, settings: app))
    # Not the real logging set-up: it would point structlog at this test's captured stderr,
    # which is closed after it, for every later test of the run.
    monkeypatch.setattr(serve_cmd, "configure_logging", lambda settings: None)
    monkeypatch.chdir(tmp_path)  # the embedded default's ./var
    code = serve_cmd.run(argparse.Namespace(config=None))
    assert code == 1
    assert capsys.readouterr().err == f"{said}[Errno 9] Bad file descriptor\n"
