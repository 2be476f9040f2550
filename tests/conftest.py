"""Shared test configuration: where the ANS fixtures and schemas live (used in place)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connector.cda.render import renderer_problem

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MSSCONNECTOR_SHARED_DIR", ROOT.parent / "shared")).resolve()
FIXTURES = SHARED / "fixtures"
SCHEMAS = SHARED / "schemas"
HL7_FIXTURES = FIXTURES / "hl7v2"
CISIS_FIXTURES = HL7_FIXTURES / "cisis-trans-cda-2.1"
CDA_FIXTURES = FIXTURES / "cda"

# Rendering a PDF/A for a CDA that embeds none needs Debian's Pango (connector/cda/render.py).
RENDERER_PROBLEM = renderer_problem()
needs_pdf_renderer = pytest.mark.skipif(
    RENDERER_PROBLEM is not None, reason=f"{RENDERER_PROBLEM} (.ci/run installs them)")


def skip_without_pdf_renderer() -> None:
    """In a test whose documents need a PDF rendered: skip, saying why, on a host without."""
    if RENDERER_PROBLEM is not None:
        pytest.skip(f"{RENDERER_PROBLEM} (.ci/run installs them)")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data not found at {SHARED} (set MSSCONNECTOR_SHARED_DIR)")
    return SHARED


def pytest_configure(config: pytest.Config) -> None:
    if not (FIXTURES / "hl7v2").is_dir():
        raise pytest.UsageError(
            f"the ANS fixtures are not at {FIXTURES}: run from a checkout with shared/ beside it "
            "or set MSSCONNECTOR_SHARED_DIR")
