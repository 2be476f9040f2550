"""CDA XSD validation (CDA_extended.xsd and its includes), loaded once, offline.

The schema files are the site's copy of the ANS ones (configuration). They are read with no
network access: every include/import goes through a resolver that accepts local files only, so a
schemaLocation pointing at http://... fails at start-up instead of fetching anything.

libxml2's messages can quote element values ("The value '1979-03-28X' is not accepted by the
pattern ..."). `XsdViolation.message` keeps them for the operator report; `summary` is rebuilt from
the error code, the element/attribute names and the node path only, so that it can go to ERR-8
and to logs.

Thread safety: libxml2 validation runs without the GIL, but an lxml `XMLSchema` keeps its error
log on the object, so one instance must not validate in two threads at once. `XsdValidator`
parses the schema once and builds one `XMLSchema` per thread (`threading.local`, built under a
lock), so it can be shared by the worker threads and validations run in parallel.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

from connector.errors import ConfigError

#: Readable prefixes for node paths (the CDA namespaces); others are shown as Q{uri}name.
CDA_PREFIXES = {
    "urn:hl7-org:v3": "hl7",
    "urn:hl7-org:sdtc": "sdtc",
    "urn:oid:1.3.6.1.4.1.19376.1.3.2": "lab",
    "urn:dicom-org:ps3-20": "ps3-20",
    "urn:ihe:pharm:medication": "pharm",
    "http://www.w3.org/2001/XMLSchema-instance": "xsi",
}

#: libxml2 error codes -> what went wrong, without the value.
_PHRASES = {
    "SCHEMAV_ELEMENT_CONTENT": "element not expected here (content model)",
    "SCHEMAV_CVC_ELT_1": "no declaration for the root element",
    "SCHEMAV_CVC_COMPLEX_TYPE_2_1": "element must be empty",
    "SCHEMAV_CVC_COMPLEX_TYPE_2_3": "text not allowed in element-only content",
    "SCHEMAV_CVC_COMPLEX_TYPE_2_4": "element not expected here (content model)",
    "SCHEMAV_CVC_COMPLEX_TYPE_3_2_1": "attribute not allowed",
    "SCHEMAV_CVC_COMPLEX_TYPE_3_2_2": "attribute not allowed",
    "SCHEMAV_CVC_COMPLEX_TYPE_4": "required attribute missing",
    "SCHEMAV_CVC_PATTERN_VALID": "value does not match the datatype pattern",
    "SCHEMAV_CVC_ENUMERATION_VALID": "value not in the enumeration",
    "SCHEMAV_CVC_DATATYPE_VALID_1_2_1": "value not valid for its datatype",
    "SCHEMAV_CVC_DATATYPE_VALID_1_2_3": "value not valid for its datatype",
    "SCHEMAV_CVC_LENGTH_VALID": "value length not allowed",
    "SCHEMAV_CVC_MINLENGTH_VALID": "value too short",
    "SCHEMAV_CVC_MAXLENGTH_VALID": "value too long",
    "SCHEMAV_CVC_MININCLUSIVE_VALID": "value below the minimum",
    "SCHEMAV_CVC_MAXINCLUSIVE_VALID": "value above the maximum",
    "SCHEMAV_CVC_TYPE_2": "element type is abstract",
    "SCHEMAV_CVC_ELT_4_3": "xsi:type not derived from the declared type",
    "SCHEMAV_CVC_ELT_4_2": "xsi:type does not name a known type",
    "SCHEMAV_CVC_ATTRIBUTE_3": "attribute value not valid",
    "SCHEMAV_CVC_AU": "attribute value not valid",
}

_NAMES = re.compile(r"^Element '(?P<element>[^']+)'(?:, attribute '(?P<attribute>[^']+)')?:")


@dataclass(frozen=True, slots=True)
class XsdViolation:
    """One XSD error: where, what (value-free), and libxml2's own words (maybe with values)."""

    line: int | None
    path: str  # e.g. /hl7:ClinicalDocument[1]/hl7:recordTarget[1]/...
    code: str  # libxml2 error type, e.g. SCHEMAV_CVC_PATTERN_VALID
    element: str | None  # hl7:birthTime (a name, never a value)
    attribute: str | None
    message: str  # libxml2's message: may quote document values, operator report only

    @property
    def summary(self) -> str:
        """Value-free: for ERR-8 and logs."""
        phrase = _PHRASES.get(self.code, "schema violation")
        name = self.element or ""
        if self.attribute:
            name = f"{name}/@{self.attribute}" if name else f"@{self.attribute}"
        subject = f"{name}: " if name else ""
        return f"{subject}{phrase} ({self.code}) at {self.path}"

    def render(self) -> str:
        where = f"line {self.line}, " if self.line is not None else ""
        return f"[xsd] {where}{self.path}\n  {self.code}: {self.message}"


def _readable_name(clark: str) -> str:
    if clark.startswith("{"):
        uri, _, local = clark[1:].partition("}")
        prefix = CDA_PREFIXES.get(uri)
        return f"{prefix}:{local}" if prefix else f"Q{{{uri}}}{local}"
    return clark


def element_path(elem: etree._Element) -> str:
    """/hl7:ClinicalDocument[1]/hl7:recordTarget[1]/...: structure only, never a value."""
    steps = []
    node: etree._Element | None = elem
    while node is not None:
        tag = node.tag
        if not isinstance(tag, str):  # comment or processing instruction
            steps.append("node()")
        else:
            parent = node.getparent()
            position = 1
            if parent is not None:
                position = 1 + sum(1 for s in node.itersiblings(preceding=True) if s.tag == tag)
            steps.append(f"{_readable_name(tag)}[{position}]")
        node = node.getparent()
    return "/" + "/".join(reversed(steps))


class _LocalOnlyResolver(etree.Resolver):
    """Resolves schema includes/imports from local files; refuses anything else."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []

    def resolve(  # type: ignore[override]  # lxml-stubs omit the context argument
        self, system_url: str, public_id: str, context: Any
    ) -> Any:
        is_uri = bool(system_url) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", system_url)
        if is_uri and not system_url.startswith("file:"):
            self.refused.append(system_url)
            return self.resolve_string("", context, base_url=None)
        return None  # local path: libxml2 reads it (the parser has no_network set)


class XsdValidator:
    """The CDA XSD, parsed once; validates documents parsed by `connector.cda.safe_xml`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(os.path.abspath(path))
        resolver = _LocalOnlyResolver()
        parser = etree.XMLParser(
            no_network=True, resolve_entities=False, load_dtd=False, remove_comments=True
        )
        parser.resolvers.add(resolver)
        try:
            self._document = etree.parse(str(self.path), parser)
            first = etree.XMLSchema(self._document)
        except (OSError, etree.XMLSyntaxError, etree.XMLSchemaParseError) as exc:
            problem = f"cannot load the CDA XSD: {' '.join(str(exc).split())[:300]}"
            if resolver.refused:
                problem = f"the CDA XSD imports a non-local resource: {resolver.refused[0]}"
            raise ConfigError("validation.cda_xsd", problem, source=str(self.path)) from exc
        if resolver.refused:
            raise ConfigError(
                "validation.cda_xsd",
                f"the CDA XSD imports a non-local resource: {resolver.refused[0]}",
                source=str(self.path),
            )
        self._lock = threading.Lock()
        self._local = threading.local()
        self._local.schema = first

    def _schema(self) -> etree.XMLSchema:
        schema: etree.XMLSchema | None = getattr(self._local, "schema", None)
        if schema is None:
            with self._lock:
                schema = etree.XMLSchema(self._document)
            self._local.schema = schema
        return schema

    def validate(self, root: etree._Element) -> tuple[XsdViolation, ...]:
        """All XSD errors of the document (empty when valid)."""
        schema = self._schema()
        tree = root.getroottree()
        if schema.validate(tree):
            return ()
        entries: Any = schema.error_log  # an _ListErrorLog; lxml-stubs do not type it
        return tuple(self._violation(tree, entry) for entry in entries)

    @staticmethod
    def _violation(tree: etree._ElementTree, entry: Any) -> XsdViolation:
        message = str(entry.message)
        names = _NAMES.match(message)
        element = _readable_name(names.group("element")) if names else None
        attribute = names.group("attribute") if names else None
        path = str(entry.path or "")
        try:
            found = tree.xpath(path) if path else []
        except etree.XPathError:
            found = []
        if isinstance(found, list) and found and isinstance(found[0], etree._Element):
            path = element_path(found[0])
        line = entry.line if isinstance(entry.line, int) and entry.line > 0 else None
        return XsdViolation(line, path or "/", str(entry.type_name), element, attribute, message)
