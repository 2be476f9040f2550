"""Element paths into a CDA, compiled once: `select(parent, "h:recordTarget/h:patientRole")`.

`etree.XPath` objects are kept per thread (intake reads headers in worker threads, and lxml
documents sharing an evaluator across threads as unsafe) and per path: a compiled path costs
about a third of `_Element.xpath(path, namespaces=...)`, which compiles the path on every call.
A CDA header read takes about 80 lookups, so this is a measurable part of intake.
"""

from __future__ import annotations

import threading

from lxml import etree

HL7_NS = "urn:hl7-org:v3"
NAMESPACES = {"h": HL7_NS}

_local = threading.local()


def _compiled(path: str) -> etree.XPath:
    cache: dict[str, etree.XPath] | None = getattr(_local, "paths", None)
    if cache is None:
        cache = _local.paths = {}
    xpath = cache.get(path)
    if xpath is None:
        xpath = cache[path] = etree.XPath(path, namespaces=NAMESPACES)
    return xpath


def select(parent: etree._Element, path: str) -> list[etree._Element]:
    """The elements `path` (prefix `h:` = HL7 v3) selects from `parent`, in document order."""
    found = _compiled(path)(parent)
    assert isinstance(found, list)
    return [el for el in found if isinstance(el, etree._Element)]
