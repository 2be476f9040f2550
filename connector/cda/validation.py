"""CDA validation as intake needs it: safe parse, XSD, then the schematron under a tenant policy.

* Parsing goes through `connector.cda.safe_xml.parse_xml` (no network, no DTD, no entities): a
  DOCTYPE or a malformed document raises `DocumentError` before anything else runs.
* The XSD always rejects (under every policy).
* The schematron follows `SchematronPolicy` (the enum of `connector.cda.policy`, shared with the
  settings): REJECT (default) refuses a document with a failed error-level assertion; WARN
  accepts it and turns each failure into a W warning for the AA; OFF does not run it.
  Findings that never refuse (role="warning"/"info", a check whose value-set file is missing
  from the site's schematron copy) are W warnings under REJECT and WARN alike.
* Whatever the outcome, `CdaValidation.report()` is the full text for operators (it may quote
  document values: store it with the request, never log it).

The detail of a refusal (`DocumentError` first argument, which becomes ERR-8) and of each
warning names the rule (pattern, assertion reference, message skeleton) or the XSD error code and
node path: never a document value. ERR-5 is table 0533 code 906 ("Erreur autre"): the volet's
table has no code for a non-conformant CDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog
from lxml import etree

from connector.cda.policy import SchematronPolicy
from connector.cda.safe_xml import parse_xml
from connector.cda.schematron import FailureLevel, Schematron, SchematronFailure, SchematronReport
from connector.cda.xsd import XsdValidator, XsdViolation
from connector.errors import DocumentError
from connector.hl7.ack import AckError
from connector.hl7.codes import ApplicationError, ErrorCondition, Severity

__all__ = [
    "CdaValidation",
    "CdaValidator",
    "DocumentWarning",
    "SchematronPolicy",
]

log = structlog.get_logger(__name__)

_MAX_DETAIL = 300  # ERR-8 is free text; keep one line readable in an ACK


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


@dataclass(frozen=True, slots=True)
class DocumentWarning:
    """A finding that does not refuse the document: one ERR segment, severity W, on the AA."""

    detail: str  # value-free: rule reference and message skeleton
    rule_reference: str
    severity: Severity = Severity.WARNING
    condition: ErrorCondition = ErrorCondition.APPLICATION_ERROR
    application_error: ApplicationError = ApplicationError.OTHER

    @classmethod
    def from_failure(cls, failure: SchematronFailure, schematron: str) -> DocumentWarning:
        return cls(_clip(f"schematron {schematron}: {failure.short()}"), failure.rule_reference)

    def to_ack_error(self) -> AckError:
        return AckError(self.condition, self.severity, None, self.application_error, self.detail)


@dataclass(frozen=True, slots=True)
class CdaValidation:
    """What validating one CDA found, and whether it is accepted."""

    root: etree._Element
    policy: SchematronPolicy
    xsd_violations: tuple[XsdViolation, ...]
    schematron: SchematronReport | None  # None when the policy is OFF or none is configured
    warnings: tuple[DocumentWarning, ...]
    accepted: bool
    rejection: str | None = None  # value-free detail when not accepted (ERR-8)

    def report(self) -> str:
        """Full report for operators: XSD errors and schematron findings, with their messages
        (which may quote document values)."""
        verdict = "accepted" if self.accepted else f"rejected: {self.rejection}"
        parts = [f"CDA validation ({verdict}; schematron policy {self.policy.value})"]
        if self.xsd_violations:
            parts.append(f"XSD: {len(self.xsd_violations)} error(s)")
            parts.extend(v.render() for v in self.xsd_violations)
        else:
            parts.append("XSD: valid")
        if self.schematron is not None:
            parts.append(self.schematron.render())
        elif self.policy is SchematronPolicy.OFF:
            parts.append("Schematron: not run (policy off)")
        else:
            parts.append("Schematron: not configured")
        return "\n\n".join(parts)

    def raise_if_rejected(self) -> None:
        """DocumentError (AE, ERR-5 906, ERR-8 naming the rule) with the full report attached."""
        if not self.accepted:
            raise DocumentError(
                self.rejection or "CDA rejected",
                report=self.report(),
                application_error=ApplicationError.OTHER,
            )


class CdaValidator:
    """Safe parse + XSD + schematron (per policy). Shareable between worker threads: the XSD
    and schematron objects keep per-thread state themselves."""

    def __init__(
        self,
        xsd: XsdValidator,
        schematron: Schematron | None = None,
        policy: SchematronPolicy = SchematronPolicy.REJECT,
    ) -> None:
        self.xsd = xsd
        self.schematron = schematron
        self.policy = SchematronPolicy(policy)

    @classmethod
    def from_paths(
        cls,
        xsd: Path,
        schematron: Path | None = None,
        *,
        policy: SchematronPolicy = SchematronPolicy.REJECT,
        phase: str | None = None,
    ) -> CdaValidator:
        """Load (and compile, once per file: cached) the site's ANS files."""
        compiled = None
        if schematron is not None and SchematronPolicy(policy) is not SchematronPolicy.OFF:
            compiled = Schematron.load(schematron, phase=phase)
        return cls(XsdValidator(xsd), compiled, policy)

    @property
    def schematron_label(self) -> str:
        return self.schematron.schema.path.name if self.schematron is not None else "-"

    def assess(self, data: bytes) -> CdaValidation:
        """Validate without raising for an invalid document (the verdict is in the result).

        Raises DocumentError only when `data` cannot be parsed safely (not well-formed, DOCTYPE).
        """
        root = parse_xml(data, what="CDA")
        xsd_violations = self.xsd.validate(root)
        report = None
        if self.schematron is not None and self.policy is not SchematronPolicy.OFF:
            # Run even after an XSD failure: the operator report then says everything at once.
            report = self.schematron.validate(root)
        rejection = self._rejection(xsd_violations, report)
        validation = CdaValidation(
            root=root,
            policy=self.policy,
            xsd_violations=xsd_violations,
            schematron=report,
            warnings=self._warnings(report) if rejection is None else (),
            accepted=rejection is None,
            rejection=rejection,
        )
        self._log(validation)
        return validation

    def validate(self, data: bytes) -> CdaValidation:
        """`assess`, then DocumentError (report attached) when the document must be refused."""
        validation = self.assess(data)
        validation.raise_if_rejected()
        return validation

    def _rejection(
        self, xsd_violations: tuple[XsdViolation, ...], report: SchematronReport | None
    ) -> str | None:
        if xsd_violations:
            more = len(xsd_violations) - 1
            suffix = f" (+{more} more)" if more else ""
            return _clip(f"CDA not valid against the CDA XSD: {xsd_violations[0].summary}{suffix}")
        if report is not None and report.errors and self.policy is SchematronPolicy.REJECT:
            first = report.errors[0]
            more = len(report.errors) - 1
            suffix = f" (+{more} more)" if more else ""
            return _clip(
                f"CDA not conformant to schematron {self.schematron_label}: "
                f"{first.rule_reference} in {first.pattern_id}: {first.summary}{suffix}"
            )
        return None

    def _warnings(self, report: SchematronReport | None) -> tuple[DocumentWarning, ...]:
        if report is None:
            if self.policy is SchematronPolicy.OFF:
                return ()
            # A policy that asks for the schematron, and no file to run: say so on every AA.
            return (
                DocumentWarning(
                    "CDA not checked against a schematron: validation.schematron is not configured",
                    "validation.schematron",
                ),
            )
        label = self.schematron_label
        ordered = (*report.errors, *report.warnings)  # errors only reach here under WARN
        # role="info" findings stay in the report: they are not problems to signal in the AA.
        return tuple(
            DocumentWarning.from_failure(f, label)
            for f in ordered
            if f.level is not FailureLevel.INFO
        )

    def _log(self, validation: CdaValidation) -> None:
        report = validation.schematron
        log.info(
            "cda_validated",
            accepted=validation.accepted,
            policy=validation.policy.value,
            xsd_errors=len(validation.xsd_violations),
            xsd_codes=sorted({v.code for v in validation.xsd_violations}),
            schematron_errors=len(report.errors) if report else None,
            schematron_warnings=len(report.warnings) if report else None,
            rules=list(report.rule_references()[:10]) if report else [],
        )
