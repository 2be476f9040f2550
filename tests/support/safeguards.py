"""The [directory] and [validation] tables a tenant sending over SMTP needs (settings refuse to
start one without them): a whitelist written for the test's domains, and the ANS CDA XSD."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import SCHEMAS

CDA_XSD = SCHEMAS / "cda-xsd" / "CDA_extended.xsd"
_WHITELIST = """<?xml version="1.0" encoding="UTF-8"?>
<ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema">
  <DateDeGeneration>2025-03-13T00:00:00Z</DateDeGeneration>
  <ListeDomaines>{domains}</ListeDomaines>
</ListeBlancheMSSante>
"""


def write_whitelist(directory: Path, *domains: str) -> Path:
    path = directory / "whitelist.xml"
    entries = "".join(f"<Domaine><Nom>{domain}</Nom></Domaine>" for domain in domains)
    path.write_text(_WHITELIST.format(domains=entries), encoding="utf-8")
    return path


def sending_safeguards(directory: Path, *domains: str) -> str:
    """TOML: `[directory] whitelist` (written in `directory`, with `domains`) and
    `[validation] cda_xsd`."""
    return (f'[directory]\nwhitelist = "{write_whitelist(directory, *domains)}"\n'
            f'[validation]\ncda_xsd = "{CDA_XSD}"\n')
