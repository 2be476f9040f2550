"""Per-tenant policy for schematron findings (the XSD and profile checks always reject)."""

from __future__ import annotations

from enum import StrEnum


class SchematronPolicy(StrEnum):
    REJECT = "reject"  # a failed assertion makes the request AE, ERR-5 naming the rule
    WARN = "warn"  # accepted; the AA carries ERR segments with severity W
    OFF = "off"  # not run


class MissingPdfPolicy(StrEnum):
    """What a request gets when the PDF/A-1 of one of its CDAs cannot be had (the CDA embeds
    none and none could be rendered). ECO.2.1.1: an MSSanté mail MUST carry the same documents
    as PDF/A-1 next to the IHE_XDM archive."""

    REFUSE = "refuse"  # not sent: AR when this host cannot render PDFs (the sender sends it
    # again once the renderer is installed), AE when this CDA cannot be rendered
    SEND = "send"  # sent without that PDF (the CDA is in the archive), with a warning
