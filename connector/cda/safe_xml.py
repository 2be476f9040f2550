"""The one way the connector parses XML it receives: no network, no DTD, no entity expansion."""

from __future__ import annotations

from typing import Any

from lxml import etree

from connector.errors import DocumentError

_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=True,  # level-3 CDAs with an embedded PDF reach several MB of text
    remove_blank_text=False,
)


def parse_xml(data: bytes, *, what: str = "document") -> etree._Element:
    """Parse `data`; a DOCTYPE or an undefined entity is refused, never resolved."""
    try:
        root = etree.fromstring(data, parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        raise DocumentError(f"{what} is not well-formed XML (line {exc.lineno})") from exc
    docinfo: Any = root.getroottree().docinfo  # lxml-stubs lack DocInfo.doctype
    if docinfo.doctype:
        raise DocumentError(f"{what} carries a DOCTYPE, which is refused")
    return root
