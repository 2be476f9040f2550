"""Per-tenant policy for schematron findings (the XSD and profile checks always reject)."""

from __future__ import annotations

from enum import StrEnum


class SchematronPolicy(StrEnum):
    REJECT = "reject"  # a failed assertion makes the request AE, ERR-5 naming the rule
    WARN = "warn"  # accepted; the AA carries ERR segments with severity W
    OFF = "off"  # not run
