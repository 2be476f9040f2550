"""ISO Schematron on saxonche: the ANS files run as published (includes, abstract patterns and
rules, let, phases), compiled once per (file, phase) and cached.

Why an engine of our own: the ANS structuration-minimale schematron uses queryBinding="xslt2"
(XPath 2: matches, tokenize, xs:integer, doc() on value sets), which lxml's ISO Schematron (XSLT 1)
cannot run. saxonche gives XPath 3.1 / XSLT 3.0 in process, without a JVM.

How it works:

1. *Resolve* (pure Python, lxml): `sch:include` expanded recursively (href relative to the
   including file), abstract patterns instantiated (`is-a` + `sch:param`, `$name` substituted in
   attribute values, as the ISO reference implementation does), the phase chosen (`defaultPhase`,
   else #ALL), abstract rules kept by id, assertions numbered once per definition. The result is
   an immutable model, `SchematronSchema`.
2. *Compile* to one XSLT 3.0 stylesheet (default engine): one mode per active pattern, one
   template per rule with a priority that decreases in document order, so exactly the first
   matching rule of a pattern fires on a node (ISO semantics); the walk then continues into the
   children. Schema, phase and pattern `let`s become global variables (context: the document
   node), rule `let`s local variables in document order. An abstract rule becomes one named
   template called where it is extended, unless `let` scoping would differ from textual
   inclusion (it uses a local variable of the caller, or the caller uses one of its lets): then
   it is inlined. Each assertion runs inside `xsl:try`: a dynamic error in one test (say
   `xs:integer('x')` on a bad value) fails that assertion with the error code instead of aborting
   the run. `doc()` resolves against the main schematron file, like the ISO pipeline, which
   flattens the includes first (the ANS files rely on it: `doc('include/voc-...xml')` sits in a
   file that is itself under include/).
3. *Run*: the CDA, already parsed safely by `connector.cda.safe_xml`, is re-serialised by lxml
   (no DOCTYPE or entity can survive that) and handed to Saxon, which may read local files only
   (allowedProtocols=file). The stylesheet returns a small XML list of failures (assertion and
   rule numbers, node path, message with values, message without values).

Optimisations that keep the semantics (each measured; together they took the first working
version from 12.9 s compile / 27 ms per level-1 document to the figures below):
* abstract rules as named templates instead of inlining every `extends` (the ANS files have 556:
  inlined, 13,136 assertion copies and a 7.4 MB stylesheet; now 2,001 definitions, 1.8 MB);
* value-set files named by a literal `doc('...')` are parsed once per thread and passed as
  stylesheet parameters (Saxon would re-parse them at every run); a missing one becomes an
  explicit FODC0002 error instead of a disk lookup per run;
* exact rule dispatch: a rule whose last step requires a parent named B (`.../B/X`) can only
  match children of a B, so each pattern has one mode per such parent name holding those rules
  plus the unconstrained ones (original order and priorities kept), chosen by a name-indexed
  walk mode. The ANS "closed" pattern (148 `*[not(self::a|...)]` rules, tried on every element)
  went from 9.6 ms to 0.7 ms;
* a match pattern `.../A/B/X[p]` also gets a first predicate `[parent::B/parent::A]` (names
  only). Every candidate of that step shares one parent, so the predicate is true for all or
  none of them and the positions seen by `p` are unchanged; Saxon rejects most nodes on it;
* the document goes to Saxon as ASCII text with character references (when its names are ASCII):
  about 3 ms instead of 5 to parse a 450 kB level-1 CDA.

Engine choice, by measurement (`.venv/bin/python bench/validate.py`, 30 runs, medians; this
2-core machine, shared with other work, load average about 1, so +-20%; saxonche 13.1.1; ANS
structuration minimale 1.16 with the missing JDV_J07 value set supplied so that neither engine
takes an error path; schematron only, document already parsed; ms):

    document                              XSLT 3 (default)   XPath 3.1
    cda/doc-non-structure-n1.xml (N1)           11.1            27.3
    cda/bio-cr-bio-n1.xml (N1)                  15.9            35.4
    cda/img-cr-img-n1.xml (N1)                  14.8            35.4
    oru-r01-initial/document-n1.xml (N1)        18.9            37.9
    mdm-t02-initial/document.xml (N1)            7.2            22.2
    cda/ldl-ses-n3.xml (N3)                     11.6            27.4
    oru-r01-initial/document-n3.xml (N3)        24.1            39.5
    median over the 10 fixture CDAs             12.3            29.0
    one-off resolve + compile                  1.7 s           3.0 s

With the connector's path (safe parse done, XSD 0.1-0.8 ms, then the XSLT engine on the files as
published), level-1 CDAs take 7 to 20 ms, level-3 ones 13 to 23 ms (median 13.7 ms over the 10).

The XPath engine (`SchematronEngine.XPATH`, kept for this comparison and as a cross-check in the
tests) compiles each rule once into XPath 3.1 function items (`select`, `check`) and runs one
`fold-left` per pattern that removes the nodes an earlier rule already took. A first version
that called `evaluate` once per rule measured about 5 s per document: saxonche recompiles an
expression at every `evaluate` (12 ms for a large one, with or without `set_caching`). Even with
function items it scans the whole document once per rule (766 rules) where the XSLT engine walks
it once per pattern with indexed template dispatch, and it has no try/catch (XPath 3.1 has none):
a dynamic error (the published files' missing value set raises on every document) sends it down
a rule-by-rule fallback from Python, 45 to 85 ms. Hence XSLT is the engine the connector uses.

Thread safety: a `PyXsltExecutable` (and a `PyXPathProcessor`) holds per-run state (global context
item, parameters) and saxonche documents it as not thread-safe. `Schematron` keeps the compiled
executable as a template and gives each thread its own clone (`threading.local`; clones are made
under a lock), with its own document builder and value-set documents. One process-wide
`PySaxonProcessor` is shared, which SaxonC supports. So one `Schematron` may be used from any
number of worker threads without external locking, and runs on different threads go in parallel
(saxonche releases the GIL: two threads gave 1.5 times the throughput of one on this machine).

Messages: `SchematronFailure.message` keeps what the schematron computed (it may quote document
values through `value-of`): operator report only. `summary` is the same message with every
`value-of` replaced by "…" (element names from `sch:name` are kept: structure, not data), and
`rule_reference` names the assertion (its @id, else the id of the rule that defines it and the
assertion's position there). Those two are safe for ERR segments and logs.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse
from urllib.request import url2pathname

from lxml import etree
from saxonche import PySaxonApiError, PySaxonProcessor

from connector.errors import ConfigError

SCH_NS = "http://purl.oclc.org/dsdl/schematron"
XSL_NS = "http://www.w3.org/1999/XSL/Transform"
XML_NS = "http://www.w3.org/XML/1998/namespace"
_SX_NS = "urn:x-mssante-connector:schematron"
_ERR_NS = "http://www.w3.org/2005/xqt-errors"

#: Prefixes an XSLT 2/3 schematron may use without an `sch:ns` (the ISO skeleton declares them).
_DEFAULT_NAMESPACES: Mapping[str, str] = {
    "xs": "http://www.w3.org/2001/XMLSchema",
    "fn": "http://www.w3.org/2005/xpath-functions",
    "math": "http://www.w3.org/2005/xpath-functions/math",
    "map": "http://www.w3.org/2005/xpath-functions/map",
    "array": "http://www.w3.org/2005/xpath-functions/array",
}
_RESERVED_PREFIXES = frozenset({"xml", "xsl", "sx", "err"})
_SUPPORTED_BINDINGS = frozenset({"xslt", "xslt2", "xslt3", "xpath2", "xpath3", "xpath31"})
_ELLIPSIS = "…"
_MAX_INCLUDE_DEPTH = 32
#: Errors meaning "a resource of the schematron is missing", not "the document is wrong".
_RESOURCE_ERRORS = frozenset({"FODC0002", "FODC0005", "FOUT1170", "FOUT1190"})


def _sch(tag: str) -> str:
    return f"{{{SCH_NS}}}{tag}"


def _xsl(tag: str) -> str:
    return f"{{{XSL_NS}}}{tag}"


class SchematronCompileError(ConfigError):
    """The schematron cannot be used (unreadable, unsupported feature, XPath Saxon rejects).

    A configuration problem: names the file and what is wrong, never document content.
    """

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__("schematron", problem, source=str(path))


class SchematronRuntimeError(RuntimeError):
    """Saxon failed while running a compiled schematron outside any assertion (not a finding
    about the document). The message carries Saxon's error code only, never data."""


class SchematronEngine(Enum):
    """How the resolved schematron is executed (see the module docstring for the figures)."""

    XSLT = "xslt"  # compile to one XSLT 3.0 stylesheet: the default, measured faster
    XPATH = "xpath"  # evaluate one XPath 3.1 expression per rule: comparison / cross-check


class AssertionKind(Enum):
    ASSERT = "assert"  # fails when the test is false
    REPORT = "report"  # fires when the test is true


class FailureLevel(Enum):
    """What a finding means, from its `role` (else `flag`).

    The ANS files use role="error" and role="warning" (the "closed template" checks are
    warnings). No role counts as an error, as in SVRL consumers and Gazelle.
    """

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @classmethod
    def from_role(cls, role: str | None) -> FailureLevel:
        if role is None:
            return cls.ERROR
        value = role.strip().lower()
        if value in {"warning", "warn"}:
            return cls.WARNING
        if value in {"info", "information", "informational", "hint", "note"}:
            return cls.INFO
        return cls.ERROR


# -- the resolved model (pure values) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Let:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Extends:
    """`sch:extends rule="..."`: the abstract rule's items, at this point."""

    rule: str


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ValueOfPart:
    select: str


@dataclass(frozen=True, slots=True)
class NamePart:
    path: str | None


MessagePart = TextPart | ValueOfPart | NamePart


@dataclass(frozen=True, slots=True)
class Assertion:
    """One `sch:assert` / `sch:report` definition, numbered schema-wide (`index`).

    An assertion of an abstract rule is one definition however many rules extend it.
    """

    index: int
    kind: AssertionKind
    test: str
    message: tuple[MessagePart, ...]
    diagnostics: tuple[tuple[MessagePart, ...], ...]
    assertion_id: str | None
    defining_rule: str  # id (or synthetic name) of the rule, abstract or not, that holds it
    position: int  # 1-based position among the assertions of `defining_rule`
    role: str | None
    flag: str | None
    subject: str | None
    see: str | None

    @property
    def reference(self) -> str:
        """Value-free name of the assertion: @id, else "<defining rule>#<position>"."""
        return self.assertion_id or f"{self.defining_rule}#{self.position}"

    @property
    def level(self) -> FailureLevel:
        return FailureLevel.from_role(self.role if self.role is not None else self.flag)


RuleItem = Let | Assertion | Extends


@dataclass(frozen=True, slots=True)
class AbstractRule:
    rule_id: str
    items: tuple[RuleItem, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    index: int  # schema-wide, in document order of the active patterns
    pattern_id: str
    context: str
    rule_id: str | None
    items: tuple[RuleItem, ...]


@dataclass(frozen=True, slots=True)
class Pattern:
    pattern_id: str  # @id, or "pattern-<n>" (1-based, in resolved document order)
    title: str | None
    lets: tuple[Let, ...]
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class SchematronSchema:
    """A schematron after includes, abstract patterns and phase selection."""

    path: Path
    title: str | None
    query_binding: str
    phase: str
    namespaces: tuple[tuple[str, str], ...]  # (prefix, uri), declaration order
    lets: tuple[Let, ...]  # schema then phase lets, in order
    patterns: tuple[Pattern, ...]  # the active ones, in order
    abstract_rules: tuple[AbstractRule, ...]  # those reachable from the active patterns
    assertions: tuple[Assertion, ...]  # by index
    foreign: tuple[str, ...] = ()  # serialised top-level xsl:key / xsl:function (XSLT engine)

    @property
    def name(self) -> str:
        return self.title or self.path.name

    @property
    def base_uri(self) -> str:
        return self.path.as_uri()

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(r for p in self.patterns for r in p.rules)

    @property
    def global_lets(self) -> tuple[Let, ...]:
        """Schema, phase and active-pattern lets: global, as in the ISO skeleton."""
        return (*self.lets, *(let for p in self.patterns for let in p.lets))

    def abstract(self, rule_id: str) -> AbstractRule:
        for rule in self.abstract_rules:
            if rule.rule_id == rule_id:
                return rule
        raise KeyError(rule_id)

    def expand(self, items: Iterable[RuleItem]) -> Iterator[Let | Assertion]:
        """Items with every `extends` replaced by the abstract rule's items (textual inclusion)."""
        for item in items:
            if isinstance(item, Extends):
                yield from self.expand(self.abstract(item.rule).items)
            else:
                yield item

    def prefix_for(self) -> dict[str, str]:
        """namespace URI -> first declared prefix (for readable node paths)."""
        out: dict[str, str] = {}
        for prefix, uri in self.namespaces:
            out.setdefault(uri, prefix)
        return out

    def expressions(self) -> Iterator[str]:
        """Every XPath expression of the active schema (to find doc() literals)."""
        for let in self.global_lets:
            yield let.value
        bodies: list[Iterable[RuleItem]] = [r.items for r in self.rules]
        bodies.extend(a.items for a in self.abstract_rules)
        for rule in self.rules:
            yield rule.context
        for items in bodies:
            for item in items:
                if isinstance(item, Let):
                    yield item.value
                elif isinstance(item, Assertion):
                    yield item.test
                    if item.subject:
                        yield item.subject
                    for parts in (item.message, *item.diagnostics):
                        yield from (p.select for p in parts if isinstance(p, ValueOfPart))
                        yield from (p.path for p in parts if isinstance(p, NamePart) and p.path)


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchematronFailure:
    """A failed assert or a fired report, located in the document."""

    pattern_id: str
    rule_context: str
    rule_id: str | None
    assertion_id: str | None
    rule_reference: str  # value-free: assertion id, or defining rule + position
    kind: AssertionKind
    role: str | None
    flag: str | None
    level: FailureLevel
    test: str
    location: str  # XPath of the node (the rule context, or the assertion's subject)
    line: int | None  # line in the received document, when the path maps back to it
    message: str  # may quote document values: operator report only
    summary: str  # the message with value-of replaced by "…": safe for ERR and logs
    see: str | None = None
    evaluation_error: str | None = None  # XPath error code when the test could not be evaluated

    def short(self) -> str:
        """One value-free line: pattern, assertion reference, message skeleton."""
        return f"{self.pattern_id} {self.rule_reference}: {self.summary}"

    def render(self) -> str:
        line = f" (line {self.line})" if self.line is not None else ""
        rule = f" (rule {self.rule_id})" if self.rule_id else ""
        out = [
            f"[{self.level.value}] {self.kind.value} {self.rule_reference}"
            f" in pattern {self.pattern_id}",
            f"  rule context: {self.rule_context}{rule}",
            f"  location: {self.location}{line}",
            f"  test: {self.test}",
            f"  message: {self.message}",
        ]
        if self.evaluation_error:
            out.append(f"  evaluation error: {self.evaluation_error}")
        if self.see:
            out.append(f"  see: {self.see}")
        return "\n".join(out)


@dataclass(frozen=True, slots=True)
class SchematronReport:
    """Everything one run found, in document order within each pattern."""

    schematron_name: str
    phase: str
    failures: tuple[SchematronFailure, ...]
    engine: SchematronEngine = SchematronEngine.XSLT

    @property
    def errors(self) -> tuple[SchematronFailure, ...]:
        return tuple(f for f in self.failures if f.level is FailureLevel.ERROR)

    @property
    def warnings(self) -> tuple[SchematronFailure, ...]:
        """Findings that do not invalidate the document (role warning/info, missing resource)."""
        return tuple(f for f in self.failures if f.level is not FailureLevel.ERROR)

    @property
    def is_valid(self) -> bool:
        return not self.errors

    def rule_references(self) -> tuple[str, ...]:
        """Distinct value-free references of the findings, errors first."""
        seen: dict[str, None] = {}
        for f in (*self.errors, *self.warnings):
            seen.setdefault(f.rule_reference, None)
        return tuple(seen)

    def rule_reference(self) -> str:
        """Short value-free reference for ERR-5/ERR-8: the first error (else the first finding)
        with its pattern, and how many more findings there are."""
        ordered = (*self.errors, *self.warnings)
        if not ordered:
            return ""
        first = ordered[0]
        more = len(ordered) - 1
        suffix = f" (+{more} more)" if more else ""
        return f"{first.pattern_id} {first.rule_reference}{suffix}"

    def render(self) -> str:
        """The full report for operators (may quote document values: store it, never log it)."""
        head = (
            f"Schematron {self.schematron_name} (phase {self.phase}, engine {self.engine.value}):"
            f" {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        )
        return "\n\n".join([head, *(f.render() for f in self.failures)])


# -- resolution ------------------------------------------------------------------------------------


def _sch_parser() -> etree.XMLParser:
    # The schematron is configuration (the site's copy of the ANS files); still read without
    # network, DTD or entity expansion.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        remove_comments=True,
        remove_pis=True,
        huge_tree=True,
    )


def _read_xml(path: Path, origin: Path) -> etree._Element:
    try:
        return etree.parse(str(path), _sch_parser()).getroot()
    except OSError as exc:
        raise SchematronCompileError(origin, f"cannot read {path}") from exc
    except etree.XMLSyntaxError as exc:
        problem = f"{path} is not well-formed (line {exc.lineno})"
        raise SchematronCompileError(origin, problem) from exc


_URI_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _local_path(base: Path, href: str) -> Path:
    """`href` (relative, or a file: URI) against `base`, normalised without following links."""
    if href.startswith("file:"):
        href = url2pathname(urlparse(href).path)
    return Path(os.path.normpath(base / href))


def _expand_includes(
    elem: etree._Element, base: Path, origin: Path, stack: tuple[Path, ...]
) -> None:
    """Replace every sch:include below `elem` by the root of the referenced file, recursively."""
    for inc in list(elem.iter(_sch("include"))):
        href = inc.get("href")
        if not href:
            raise SchematronCompileError(origin, "sch:include without href")
        if _URI_SCHEME.match(href) and not href.startswith("file:"):
            raise SchematronCompileError(origin, f"sch:include of a non-local resource: {href}")
        target = _local_path(base, href)
        if target in stack:
            raise SchematronCompileError(origin, f"sch:include cycle through {target.name}")
        if len(stack) > _MAX_INCLUDE_DEPTH:
            raise SchematronCompileError(origin, "sch:include nested too deeply")
        included = _read_xml(target, origin)
        if included.tag == _sch("schema"):
            raise SchematronCompileError(origin, f"{target.name}: including a sch:schema")
        _expand_includes(included, target.parent, origin, (*stack, target))
        parent = inc.getparent()
        if parent is None:  # pragma: no cover - an include is never the root
            raise SchematronCompileError(origin, "sch:include at the root")
        included.tail = inc.tail
        parent.replace(inc, included)


def _substitute(text: str, params: Mapping[str, str]) -> str:
    """Replace $name by the parameter's value (longest names first, whole names only)."""
    for name in sorted(params, key=len, reverse=True):
        pattern = re.compile(r"\$" + re.escape(name) + r"(?![\w.\-])")
        text = pattern.sub(params[name].replace("\\", "\\\\"), text)
    return text


def _instantiate(
    abstract: etree._Element, instance: etree._Element, origin: Path
) -> etree._Element:
    params: dict[str, str] = {}
    for param in instance.findall(_sch("param")):
        name, value = param.get("name"), param.get("value")
        if not name or value is None:
            raise SchematronCompileError(
                origin, f"pattern {instance.get('id')}: sch:param needs name and value"
            )
        params[name] = value
    out = etree.Element(_sch("pattern"))
    for key in ("id", "documents"):
        kept = instance.get(key)
        if kept is not None:
            out.set(key, kept)
    for child in abstract:
        if child.tag == _sch("param"):
            continue
        copy = etree.fromstring(etree.tostring(child))
        for node in copy.iter():
            for attr in list(node.attrib):
                node.set(attr, _substitute(str(node.get(attr, "")), params))
        out.append(copy)
    return out


def _message_parts(elem: etree._Element) -> tuple[MessagePart, ...]:
    parts: list[MessagePart] = []

    def walk(node: etree._Element) -> None:
        if node.text:
            parts.append(TextPart(node.text))
        for child in node:
            if child.tag == _sch("value-of"):
                select = child.get("select")
                if select:
                    parts.append(ValueOfPart(select))
            elif child.tag == _sch("name"):
                parts.append(NamePart(child.get("path")))
            elif isinstance(child.tag, str):  # emph, dir, span, foreign: their text
                walk(child)
            if child.tail:
                parts.append(TextPart(child.tail))

    walk(elem)
    return tuple(parts)


@dataclass(slots=True)
class _Resolver:
    """Turns the expanded lxml tree into the immutable model."""

    root: etree._Element
    origin: Path
    abstract_elems: dict[str, etree._Element] = field(default_factory=dict)
    abstract_done: dict[str, AbstractRule] = field(default_factory=dict)
    diagnostics: dict[str, etree._Element] = field(default_factory=dict)
    assertions: list[Assertion] = field(default_factory=list)
    rule_count: int = 0

    def __post_init__(self) -> None:
        for rule in self.root.iter(_sch("rule")):
            if rule.get("abstract") == "true":
                rid = rule.get("id")
                if not rid:
                    raise SchematronCompileError(self.origin, "abstract sch:rule without id")
                self.abstract_elems.setdefault(rid, rule)
        for diag in self.root.iter(_sch("diagnostic")):
            if diag.get("id"):
                self.diagnostics[diag.get("id", "")] = diag

    def lets(self, parent: etree._Element) -> tuple[Let, ...]:
        return tuple(self.let(e) for e in parent.findall(_sch("let")))

    def let(self, elem: etree._Element) -> Let:
        name, value = elem.get("name"), elem.get("value")
        if not name:
            raise SchematronCompileError(self.origin, "sch:let without name")
        if value is None:
            raise SchematronCompileError(self.origin, f"sch:let {name}: only @value is supported")
        return Let(name, value)

    def items(self, rule: etree._Element, rule_name: str) -> tuple[RuleItem, ...]:
        out: list[RuleItem] = []
        position = 0
        for child in rule:
            if child.tag == _sch("let"):
                out.append(self.let(child))
            elif child.tag == _sch("extends"):
                target = child.get("rule")
                if target is None:
                    raise SchematronCompileError(self.origin, "sch:extends without @rule")
                self.abstract(target, ())
                out.append(Extends(target))
            elif child.tag in (_sch("assert"), _sch("report")):
                position += 1
                out.append(self.assertion(child, rule, rule_name, position))
        return tuple(out)

    def abstract(self, rule_id: str, stack: tuple[str, ...]) -> AbstractRule:
        """Resolve an abstract rule once (and, first, the ones it extends)."""
        done = self.abstract_done.get(rule_id)
        if done is not None:
            return done
        if rule_id in stack:
            raise SchematronCompileError(self.origin, f"sch:extends cycle through {rule_id!r}")
        elem = self.abstract_elems.get(rule_id)
        if elem is None:
            raise SchematronCompileError(self.origin, f"sch:extends: no abstract rule {rule_id!r}")
        for ext in elem.findall(_sch("extends")):
            target = ext.get("rule")
            if target is None:
                raise SchematronCompileError(self.origin, "sch:extends without @rule")
            self.abstract(target, (*stack, rule_id))
        resolved = AbstractRule(rule_id, self.items(elem, rule_id))
        self.abstract_done[rule_id] = resolved
        return resolved

    def assertion(
        self, elem: etree._Element, rule: etree._Element, rule_name: str, position: int
    ) -> Assertion:
        test = elem.get("test")
        if test is None:
            raise SchematronCompileError(self.origin, f"{rule_name}: assertion without @test")
        diagnostics = []
        for ref in (elem.get("diagnostics") or "").split():
            diag = self.diagnostics.get(ref)
            if diag is None:
                raise SchematronCompileError(self.origin, f"{rule_name}: no diagnostic {ref!r}")
            diagnostics.append(_message_parts(diag))
        assertion = Assertion(
            index=len(self.assertions),
            kind=AssertionKind.ASSERT if elem.tag == _sch("assert") else AssertionKind.REPORT,
            test=test,
            message=_message_parts(elem),
            diagnostics=tuple(diagnostics),
            assertion_id=elem.get("id"),
            defining_rule=rule_name,
            position=position,
            role=elem.get("role") or rule.get("role"),
            flag=elem.get("flag") or rule.get("flag"),
            subject=elem.get("subject") or rule.get("subject"),
            see=elem.get("see"),
        )
        self.assertions.append(assertion)
        return assertion

    def pattern(self, elem: etree._Element, number: int) -> Pattern:
        pattern_id = elem.get("id") or f"pattern-{number}"
        if elem.get("documents"):
            raise SchematronCompileError(self.origin, f"pattern {pattern_id}: @documents")
        rules = []
        for r_number, rule in enumerate(elem.iter(_sch("rule")), start=1):
            if rule.get("abstract") == "true":
                continue
            context = rule.get("context")
            if not context:
                raise SchematronCompileError(self.origin, f"{pattern_id}: rule without @context")
            name = rule.get("id") or f"{pattern_id}/rule-{r_number}"
            rules.append(
                Rule(self.rule_count, pattern_id, context, rule.get("id"), self.items(rule, name))
            )
            self.rule_count += 1
        title = elem.find(_sch("title"))
        return Pattern(
            pattern_id=pattern_id,
            title=" ".join(title.text.split()) if title is not None and title.text else None,
            lets=self.lets(elem),
            rules=tuple(rules),
        )


def resolve_schematron(path: Path, phase: str | None = None) -> SchematronSchema:
    """Read and resolve `path` for `phase` (None or "#DEFAULT": @defaultPhase, else #ALL)."""
    path = Path(os.path.abspath(path))  # not resolve(): a site may assemble its files by symlinks
    root = _read_xml(path, path)
    if root.tag != _sch("schema"):
        raise SchematronCompileError(path, "root element is not an ISO sch:schema")
    binding = (root.get("queryBinding") or "xslt").lower()
    if binding not in _SUPPORTED_BINDINGS:
        raise SchematronCompileError(path, f"queryBinding {binding!r} is not supported")
    _expand_includes(root, path.parent, path, (path,))

    # Abstract patterns -> instances; the abstract ones themselves never run.
    patterns = root.findall(_sch("pattern"))
    abstract = {p.get("id"): p for p in patterns if p.get("abstract") == "true"}
    for instance in patterns:
        target = instance.get("is-a")
        if target is None:
            continue
        model = abstract.get(target)
        if model is None:
            raise SchematronCompileError(path, f"pattern {instance.get('id')}: no {target!r}")
        root.replace(instance, _instantiate(model, instance, path))

    chosen = phase if phase not in (None, "#DEFAULT") else None
    chosen = chosen or root.get("defaultPhase") or "#ALL"
    resolver = _Resolver(root, path)
    lets = list(resolver.lets(root))
    concrete = [p for p in root.findall(_sch("pattern")) if p.get("abstract") != "true"]
    if chosen == "#ALL":
        active = concrete
    else:
        phase_elem = next((p for p in root.findall(_sch("phase")) if p.get("id") == chosen), None)
        if phase_elem is None:
            raise SchematronCompileError(path, f"no phase {chosen!r}")
        lets.extend(resolver.lets(phase_elem))
        wanted = {a.get("pattern", "") for a in phase_elem.findall(_sch("active"))}
        unknown = wanted - {p.get("id", "") for p in concrete}
        if unknown:
            raise SchematronCompileError(path, f"phase {chosen!r}: no pattern {sorted(unknown)}")
        active = [p for p in concrete if p.get("id") in wanted]

    resolved_patterns = tuple(resolver.pattern(p, n) for n, p in enumerate(active, start=1))
    namespaces = [(ns.get("prefix", ""), ns.get("uri", "")) for ns in root.iter(_sch("ns"))]
    declared = {p for p, _ in namespaces}
    namespaces.extend((p, u) for p, u in _DEFAULT_NAMESPACES.items() if p not in declared)
    foreign = tuple(
        etree.tostring(e, encoding="unicode")
        for e in root
        if e.tag in (_xsl("key"), _xsl("function"))
    )
    title = root.find(_sch("title"))
    return SchematronSchema(
        path=path,
        title=" ".join(title.text.split()) if title is not None and title.text else None,
        query_binding=binding,
        phase=chosen,
        namespaces=tuple((p, u) for p, u in namespaces if p and u),
        lets=tuple(lets),
        patterns=resolved_patterns,
        abstract_rules=tuple(resolver.abstract_done.values()),
        assertions=tuple(resolver.assertions),
        foreign=foreign,
    )


# -- expression helpers ----------------------------------------------------------------------------

_MISSING_MARKER = "schematron resource unavailable"
_MISSING_DOC = (
    f"error(QName('http://www.w3.org/2005/xqt-errors', 'err:FODC0002'), '{_MISSING_MARKER}')"
)


def _doc_replacements(variables: Mapping[str, str], missing: Iterable[str]) -> dict[str, str]:
    """doc() literal -> replacement: the pre-parsed document's variable, or, for a file that
    is missing, an explicit FODC0002 (the code a failed read gives), so that both engines report
    it alike and nothing is looked up on disk at each run."""
    out = {href: f"${name}" for href, name in variables.items()}
    out.update((href, _MISSING_DOC) for href in missing)
    return out


_DOC_CALL = re.compile(r"(?<![\w.\-:])(?:fn:)?doc\(\s*(?:'([^']*)'|\"([^\"]*)\")\s*\)")
_VAR_REF = re.compile(r"\$((?:[A-Za-z_][\w.\-]*:)?[A-Za-z_][\w.\-]*)")


def _doc_literals(expressions: Iterable[str]) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for expr in expressions:
        for match in _DOC_CALL.finditer(expr):
            found.setdefault(match.group(1) if match.group(1) is not None else match.group(2))
    return tuple(found)


def _rewrite_docs(expr: str, replacements: Mapping[str, str]) -> str:
    """doc('literal') -> its replacement expression: `$variable` for a document pre-parsed once
    (see module docstring), an explicit FODC0002 error for a missing one."""
    if "doc(" not in expr:
        return expr

    def swap(match: re.Match[str]) -> str:
        href = match.group(1) if match.group(1) is not None else match.group(2)
        return replacements.get(href, match.group(0))

    return _DOC_CALL.sub(swap, expr)


def _item_refs(items: Iterable[Let | Assertion]) -> set[str]:
    """Variable names referenced by these items (textual over-approximation)."""
    refs: set[str] = set()
    for item in items:
        texts: list[str] = []
        if isinstance(item, Let):
            texts.append(item.value)
        else:
            texts.append(item.test)
            texts.extend(
                p.select
                for m in (item.message, *item.diagnostics)
                for p in m
                if isinstance(p, ValueOfPart)
            )
            if item.subject:
                texts.append(item.subject)
        for text in texts:
            refs.update(_VAR_REF.findall(text))
    return refs


def _xpath_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _scan(expr: str) -> Iterator[tuple[int, str, int]]:
    """(position, character, bracket depth) outside string literals."""
    depth, quote = 0, ""
    for i, ch in enumerate(expr):
        if quote:
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
            continue
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        yield i, ch, depth


def _split_union(pattern: str) -> list[str]:
    """Split an XSLT pattern on top-level `|`."""
    cuts = [i for i, ch, depth in _scan(pattern) if ch == "|" and depth == 0]
    bounds = zip([-1, *cuts], [*cuts, len(pattern)], strict=True)
    return [pattern[a + 1 : b].strip() for a, b in bounds if pattern[a + 1 : b].strip()]


def _split_steps(branch: str) -> tuple[str, list[str], list[str]]:
    """A path pattern as (leading "/" or "//" or "", steps, separators between steps)."""
    text = branch.strip()
    leading = "//" if text.startswith("//") else "/" if text.startswith("/") else ""
    text = text[len(leading) :]
    steps, seps, start, skip = [], [], 0, False
    for i, ch, depth in _scan(text):
        if skip:
            skip = False
            continue
        if ch == "/" and depth == 0:
            steps.append(text[start:i].strip())
            double = text[i + 1 : i + 2] == "/"
            seps.append("//" if double else "/")
            skip = double
            start = i + (2 if double else 1)
    steps.append(text[start:].strip())
    return leading, steps, seps


_NAME_TEST = r"(?:[A-Za-z_][\w.\-]*:)?(?:[A-Za-z_][\w.\-]*|\*)"
_CHILD_STEP = re.compile(rf"^(?:child::)?({_NAME_TEST})(\[.*\])?$", re.S)
_LAST_STEP = re.compile(rf"^((?:child::|attribute::|@)?{_NAME_TEST})(\[.*\])?$", re.S)


def _guard_pattern(context: str, depth_limit: int = 3) -> str:
    """Add `[parent::B/parent::A]` first on the last step of `.../A/B/X[p]` (module docstring)."""
    branches = []
    for branch in _split_union(context):
        leading, steps, seps = _split_steps(branch)
        last = _LAST_STEP.match(steps[-1])
        chain: list[str] = []
        i = len(steps) - 2
        while last and i >= 0 and seps[i] == "/" and len(chain) < depth_limit:
            step = _CHILD_STEP.match(steps[i])
            if step is None or step.group(1).endswith("*"):
                break
            chain.append(step.group(1))
            i -= 1
        if not chain or last is None:
            branches.append(branch)
            continue
        guard = "[" + "/".join(f"parent::{name}" for name in chain) + "]"
        new_last = last.group(1) + guard + (last.group(2) or "")
        body = "".join(step + sep for step, sep in zip(steps[:-1], seps, strict=True))
        branches.append(leading + body + new_last)
    return " | ".join(branches)


def _required_parent(context: str, namespaces: Mapping[str, str]) -> str | None:
    """The expanded name (Q{uri}local) every node matched by `context` must have as parent,
    when the pattern says so syntactically (`.../B/X` or `.../B/@x`), else None."""
    keys = set()
    for branch in _split_union(context):
        _, steps, seps = _split_steps(branch)
        if len(steps) < 2 or seps[-1] != "/" or not _LAST_STEP.match(steps[-1]):
            return None
        parent = _CHILD_STEP.match(steps[-2])
        if parent is None or parent.group(1).endswith("*"):
            return None
        prefix, _, local = parent.group(1).rpartition(":")
        if prefix and prefix not in namespaces:
            return None
        keys.add(f"Q{{{namespaces[prefix] if prefix else ''}}}{local}")
    return keys.pop() if len(keys) == 1 else None


def _group_rules(
    rules: Sequence[Rule], namespaces: Mapping[str, str]
) -> tuple[dict[str, list[Rule]], list[Rule]]:
    """Rules by the parent name they require, and the rules that require none.

    A node whose parent is named B can only match the rules of group B or the ungrouped ones,
    so trying just those, in the original order, finds the same first matching rule while
    sparing Saxon the other rules (the ANS "closed" pattern: 148 `*` rules per element).
    """
    groups: dict[str, list[Rule]] = {}
    unguarded: list[Rule] = []
    for rule in rules:
        key = _required_parent(rule.context, namespaces)
        if key is None:
            unguarded.append(rule)
        else:
            groups.setdefault(key, []).append(rule)
    return groups, unguarded


def _last_step_kind(branch: str) -> str:
    _, steps, _ = _split_steps(branch)
    return re.sub(r"\[.*\]", "", steps[-1], flags=re.S).strip()


def _visits(contexts: Iterable[str]) -> tuple[bool, bool]:
    """Do the rule contexts of a pattern need attribute and/or text nodes visited?"""
    attributes = text = False
    for context in contexts:
        for branch in _split_union(context):
            step = _last_step_kind(branch)
            if step.startswith(("@", "attribute::", "attribute(")):
                attributes = True
            if step.startswith(("text()", "node()", "child::text()", "child::node()")):
                text = True
    return attributes, text


_PATH_BODY = """
if ($n instance of document-node()) then '/' else string-join(
  $n/ancestor-or-self::node()[not(. instance of document-node())] ! (
    let $e := .,
        $u := namespace-uri($e),
        $p := if ($u = '') then () else $PREFIXES($u),
        $q := if ($u = '') then local-name($e)
              else if (exists($p)) then $p || ':' || local-name($e)
              else 'Q{' || $u || '}' || local-name($e)
    return
      if ($e instance of element()) then
        '/' || $q || '[' || (count($e/preceding-sibling::*[node-name(.) eq node-name($e)]) + 1)
        || ']'
      else if ($e instance of attribute()) then '/@' || $q
      else if ($e instance of text()) then
        '/text()[' || (count($e/preceding-sibling::text()) + 1) || ']'
      else if ($e instance of comment()) then
        '/comment()[' || (count($e/preceding-sibling::comment()) + 1) || ']'
      else if ($e instance of processing-instruction()) then
        '/processing-instruction(' || local-name($e) || ')'
      else '/node()'
  ), '')
"""


def _prefix_map_literal(schema: SchematronSchema) -> str:
    entries = ", ".join(
        f"{_xpath_string(uri)}: {_xpath_string(prefix)}"
        for uri, prefix in schema.prefix_for().items()
    )
    return f"map{{{entries}}}"


# -- Saxon plumbing --------------------------------------------------------------------------------

_saxon_lock = threading.Lock()
_saxon_processor: Any = None


def saxon_processor() -> Any:
    """The process-wide PySaxonProcessor (created once; restricted to local files)."""
    global _saxon_processor
    with _saxon_lock:
        if _saxon_processor is None:
            proc = PySaxonProcessor(license=False)
            # doc(), collection(), unparsed-text(): local files only, never the network.
            proc.set_configuration_property("http://saxon.sf.net/feature/allowedProtocols", "file")
            _saxon_processor = proc
        return _saxon_processor


def _saxon_error_code(exc: BaseException) -> str:
    """An error code for a Saxon failure, never its message (which may quote document data).

    saxonche's exceptions carry Saxon's message without the error code, so only our own
    marker (a missing schematron resource) and codes that happen to appear are recognised.
    """
    text = str(exc)
    if _MISSING_MARKER in text:
        return "FODC0002"
    match = re.search(r"\b(?:[A-Z]{4}\d{4}|SX[A-Z]{2}\d{4})\b", text)
    return match.group(0) if match else "dynamic-error"


def _static_error(exc: BaseException) -> str:
    """Saxon's message for a static error in the schematron (configuration, no document data),
    shortened for a start-up error."""
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def _ascii_names(root: etree._Element) -> bool:
    for elem in root.iter():
        tag = elem.tag
        if isinstance(tag, str) and not tag.isascii():
            return False
        if any(not name.isascii() for name in elem.attrib):
            return False
    return True


def _document_text(root: etree._Element) -> str:
    """The document for Saxon, re-serialised by lxml (no DOCTYPE, no entity can survive).

    ASCII with character references when all names are ASCII: Saxon parses that markedly
    faster from a Python string (about 3 ms instead of 5 for a 450 kB level-1 CDA).
    """
    if _ascii_names(root):
        return etree.tostring(root, encoding="ascii", xml_declaration=False).decode("ascii")
    return etree.tostring(root, encoding="unicode")


Row = tuple[int, int, str, str, str, tuple[str, ...], str | None]
"""(assertion index, rule index, location, message, summary, diagnostics, error code)."""


# -- XSLT engine -----------------------------------------------------------------------------------


def _emit_message(
    parent: etree._Element, parts: Sequence[MessagePart], docs: Mapping[str, str], *, safe: bool
) -> None:
    for part in parts:
        if isinstance(part, TextPart):
            etree.SubElement(parent, _xsl("text")).text = part.text
        elif isinstance(part, ValueOfPart):
            if safe:
                etree.SubElement(parent, _xsl("text")).text = _ELLIPSIS
            else:
                select = _rewrite_docs(part.select, docs)
                etree.SubElement(parent, _xsl("value-of"), select=select)
        else:
            path = _rewrite_docs(part.path or ".", docs)
            etree.SubElement(parent, _xsl("value-of"), select=f"name(({path})[1])")


@dataclass(slots=True)
class _XsltBuilder:
    """Builds the stylesheet; `docs` maps doc() literals to their replacements."""

    schema: SchematronSchema
    docs: dict[str, str]
    called: dict[str, str] = field(default_factory=dict)  # abstract rule id -> template name
    expanded_refs: dict[str, set[str]] = field(default_factory=dict)
    expanded_lets: dict[str, set[str]] = field(default_factory=dict)

    def refs_of(self, rule_id: str) -> tuple[set[str], set[str]]:
        """(variables referenced, lets defined) by an abstract rule once fully expanded."""
        if rule_id not in self.expanded_refs:
            items = list(self.schema.expand(self.schema.abstract(rule_id).items))
            self.expanded_refs[rule_id] = _item_refs(items)
            self.expanded_lets[rule_id] = {i.name for i in items if isinstance(i, Let)}
        return self.expanded_refs[rule_id], self.expanded_lets[rule_id]

    def build(self) -> str:
        nsmap: dict[str, str] = {"xsl": XSL_NS, "sx": _SX_NS, "err": _ERR_NS}
        for prefix, uri in self.schema.namespaces:
            if prefix not in _RESERVED_PREFIXES:
                nsmap.setdefault(prefix, uri)
        if nsmap.get("xs") != _DEFAULT_NAMESPACES["xs"]:
            raise SchematronCompileError(self.schema.path, "prefix xs bound to another namespace")
        sheet = etree.Element(_xsl("stylesheet"), nsmap=nsmap, version="3.0")
        sheet.set(f"{{{XML_NS}}}base", self.schema.base_uri)
        sheet.set("exclude-result-prefixes", "#all")
        etree.SubElement(sheet, _xsl("output"), method="xml", indent="no", encoding="UTF-8")
        for foreign in self.schema.foreign:
            sheet.append(etree.fromstring(foreign))
        for replacement in self.docs.values():
            if replacement.startswith("$"):
                etree.SubElement(
                    sheet, _xsl("param"), {"name": replacement[1:], "as": "document-node()"}
                )
        etree.SubElement(
            sheet, _xsl("variable"), name="sx:prefixes", select=_prefix_map_literal(self.schema)
        )
        path_fn = etree.SubElement(sheet, _xsl("function"), {"name": "sx:path", "as": "xs:string"})
        etree.SubElement(path_fn, _xsl("param"), {"name": "n", "as": "node()"})
        etree.SubElement(
            path_fn, _xsl("sequence"), select=_PATH_BODY.replace("$PREFIXES", "$sx:prefixes")
        )

        seen: set[str] = set()
        for let in self.schema.global_lets:
            if let.name in seen:
                raise SchematronCompileError(
                    self.schema.path, f"let {let.name!r} defined twice at schema/pattern level"
                )
            seen.add(let.name)
            select = _rewrite_docs(let.value, self.docs)
            etree.SubElement(sheet, _xsl("variable"), name=let.name, select=select)

        entry = etree.SubElement(sheet, _xsl("template"), match="/")
        guard = etree.SubElement(entry, _xsl("try"))
        report = etree.SubElement(guard, "r")
        catch = etree.SubElement(guard, _xsl("catch"), errors="*")
        etree.SubElement(catch, "x", e="{local-name-from-QName($err:code)}")
        for p_number, pattern in enumerate(self.schema.patterns):
            etree.SubElement(report, _xsl("apply-templates"), select=".", mode=f"sx:M{p_number}")
            self.emit_pattern(sheet, p_number, pattern)
        # Named templates for the abstract rules that are called (and those they call).
        emitted: set[str] = set()
        while len(emitted) < len(self.called):
            for rule_id, name in list(self.called.items()):
                if rule_id in emitted:
                    continue
                emitted.add(rule_id)
                template = etree.SubElement(sheet, _xsl("template"), name=name)
                etree.SubElement(
                    template, _xsl("param"), {"name": "sx:r", "tunnel": "yes", "as": "xs:string"}
                )
                items = self.schema.abstract(rule_id).items
                self.emit_items(template, items, "{$sx:r}", set(), set())
        return etree.tostring(sheet, encoding="unicode")

    def emit_pattern(self, sheet: etree._Element, p_number: int, pattern: Pattern) -> None:
        """Modes of one pattern (see `_group_rules`): rule templates call one named template per
        rule, which runs the items then walks on through the name-indexed mode sx:W<p>."""
        base, walk = f"sx:M{p_number}", f"sx:W{p_number}"
        attributes, text = _visits(r.context for r in pattern.rules)
        children = "*" + ("|@*" if attributes else "") + ("|text()" if text else "")
        count = len(pattern.rules)
        priority = {rule.index: 1000 + count - n for n, rule in enumerate(pattern.rules)}
        groups, unguarded = _group_rules(pattern.rules, dict(self.schema.namespaces))

        for rule in pattern.rules:
            body = etree.SubElement(sheet, _xsl("template"), name=f"sx:R{rule.index}")
            self.emit_items(body, rule.items, str(rule.index), set(), set())
            etree.SubElement(body, _xsl("apply-templates"), select=".", mode=walk)

        def mode_templates(mode: str, rules: Iterable[Rule]) -> None:
            for rule in sorted(rules, key=lambda r: r.index):
                template = etree.SubElement(
                    sheet,
                    _xsl("template"),
                    match=_rewrite_docs(_guard_pattern(rule.context), self.docs),
                    mode=mode,
                    priority=str(priority[rule.index]),
                )
                etree.SubElement(template, _xsl("call-template"), name=f"sx:R{rule.index}")
            fallback = etree.SubElement(
                sheet, _xsl("template"), match="document-node()|*", mode=mode, priority="-2"
            )
            etree.SubElement(fallback, _xsl("apply-templates"), select=".", mode=walk)
            etree.SubElement(
                sheet,
                _xsl("template"),
                match="@*|text()|comment()|processing-instruction()",
                mode=mode,
                priority="-3",
            )

        mode_templates(base, unguarded)
        for g_number, (parent, rules) in enumerate(groups.items()):
            mode = f"sx:M{p_number}g{g_number}"
            mode_templates(mode, [*rules, *unguarded])
            step = etree.SubElement(sheet, _xsl("template"), match=parent, mode=walk)
            etree.SubElement(step, _xsl("apply-templates"), select=children, mode=mode)
        default = etree.SubElement(
            sheet, _xsl("template"), match="document-node()|*", mode=walk, priority="-1"
        )
        etree.SubElement(default, _xsl("apply-templates"), select=children, mode=base)

    def emit_items(
        self,
        parent: etree._Element,
        items: Sequence[RuleItem],
        rule_attr: str,
        visible: set[str],
        after: set[str],
    ) -> None:
        """Emit rule items; `visible` = local lets in scope, `after` = names used later."""
        for k, item in enumerate(items):
            if isinstance(item, Let):
                select = _rewrite_docs(item.value, self.docs)
                etree.SubElement(parent, _xsl("variable"), name=item.name, select=select)
                visible.add(item.name)
            elif isinstance(item, Assertion):
                self.emit_assertion(parent, item, rule_attr)
            else:
                rest = set(after)
                rest.update(_item_refs(self.schema.expand(items[k + 1 :])))
                refs, lets = self.refs_of(item.rule)
                if refs & visible or lets & rest:
                    # Textual inclusion would bind differently from a call: inline it.
                    self.emit_items(
                        parent, self.schema.abstract(item.rule).items, rule_attr, visible, rest
                    )
                    continue
                name = self.called.setdefault(item.rule, f"sx:A{len(self.called)}")
                call = etree.SubElement(parent, _xsl("call-template"), name=name)
                if rule_attr.startswith("{"):
                    continue  # already inside an abstract template: sx:r tunnels through
                etree.SubElement(
                    call, _xsl("with-param"), name="sx:r", select=f"'{rule_attr}'", tunnel="yes"
                )

    def emit_assertion(self, parent: etree._Element, item: Assertion, rule_attr: str) -> None:
        try_ = etree.SubElement(parent, _xsl("try"))
        test = _rewrite_docs(item.test, self.docs)
        cond = etree.SubElement(
            try_,
            _xsl("if"),
            test=f"not({test})" if item.kind is AssertionKind.ASSERT else f"({test})",
        )
        target = f"((({_rewrite_docs(item.subject, self.docs)}), .)[1])" if item.subject else "."
        failure = etree.SubElement(cond, "f", a=str(item.index), r=rule_attr)
        # xsl:attribute rather than an attribute value template: the schematron's expression
        # may hold braces.
        etree.SubElement(failure, _xsl("attribute"), name="l", select=f"sx:path({target})")
        _emit_message(etree.SubElement(failure, "m"), item.message, self.docs, safe=False)
        for diag in item.diagnostics:
            _emit_message(etree.SubElement(failure, "d"), diag, self.docs, safe=False)
        _emit_message(etree.SubElement(failure, "s"), item.message, self.docs, safe=True)
        catch = etree.SubElement(try_, _xsl("catch"), errors="*")
        etree.SubElement(
            catch,
            "f",
            a=str(item.index),
            r=rule_attr,
            l="{sx:path(.)}",
            e="{local-name-from-QName($err:code)}",
        )


def build_xslt(schema: SchematronSchema, docs: Mapping[str, str] | None = None) -> str:
    """The XSLT 3.0 stylesheet that runs `schema` (see the module docstring)."""
    return _XsltBuilder(schema, dict(docs or {})).build()


def _available_documents(schema: SchematronSchema) -> tuple[dict[str, Path], tuple[str, ...]]:
    """doc() literals of the schema: those found on disk, and those missing."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for href in _doc_literals(schema.expressions()):
        if _URI_SCHEME.match(href) and not href.startswith("file:"):
            continue  # left to Saxon, which refuses non-file URIs
        target = _local_path(schema.path.parent, href)
        if target.is_file():
            found[href] = target
        else:
            missing.append(href)
    return found, tuple(missing)


class _XsltRunner:
    """A compiled stylesheet; each thread runs its own clone."""

    def __init__(self, schema: SchematronSchema) -> None:
        self.documents, self.missing = _available_documents(schema)
        self.doc_params = {href: f"sx:doc{i}" for i, href in enumerate(self.documents)}
        self.source = build_xslt(schema, _doc_replacements(self.doc_params, self.missing))
        compiler = saxon_processor().new_xslt30_processor()
        try:
            self._master = compiler.compile_stylesheet(
                stylesheet_text=self.source, encoding="UTF-8"
            )
        except PySaxonApiError as exc:  # a static error in the schematron's XPath
            raise SchematronCompileError(
                schema.path, f"Saxon rejected the schematron: {_static_error(exc)}"
            ) from exc
        self._lock = threading.Lock()
        self._local = threading.local()

    def _bundle(self) -> tuple[Any, Any]:
        bundle: tuple[Any, Any] | None = getattr(self._local, "bundle", None)
        if bundle is None:
            proc = saxon_processor()
            with self._lock:
                executable = self._master.clone()
            builder = proc.new_document_builder()
            for href, path in self.documents.items():
                node = builder.parse_xml(xml_file_name=str(path))
                name = self.doc_params[href].removeprefix("sx:")
                executable.set_parameter(f"{{{_SX_NS}}}{name}", node)
            bundle = (executable, builder)
            self._local.bundle = bundle
        return bundle

    def run(self, root: etree._Element) -> list[Row]:
        executable, builder = self._bundle()
        try:
            node = builder.parse_xml(xml_text=_document_text(root), encoding="UTF-8")
            out = executable.transform_to_string(xdm_node=node)
        except PySaxonApiError as exc:  # outside any assertion
            raise SchematronRuntimeError(
                f"schematron run failed ({_saxon_error_code(exc)})"
            ) from exc
        result = etree.fromstring(out.encode("utf-8"))
        aborted = result.find("x")
        if result.tag == "x" or aborted is not None:
            code = (aborted if aborted is not None else result).get("e", "?")
            raise SchematronRuntimeError(f"schematron run failed ({code})")
        return [
            (
                int(f.get("a", "-1")),
                int(f.get("r", "-1")),
                f.get("l", ""),
                f.findtext("m") or "",
                f.findtext("s") or "",
                tuple(d.text or "" for d in f.findall("d")),
                f.get("e"),
            )
            for f in result
        ]


# -- XPath engine (comparison) ---------------------------------------------------------------------

_UNIT = "\u001f"  # separates the fields of one failure in the XPath engine's string results


def _message_xpath(parts: Sequence[MessagePart], docs: Mapping[str, str], *, safe: bool) -> str:
    pieces = []
    for part in parts:
        if isinstance(part, TextPart):
            pieces.append(_xpath_string(part.text))
        elif isinstance(part, ValueOfPart):
            select = _rewrite_docs(part.select, docs)
            pieces.append(
                _xpath_string(_ELLIPSIS) if safe else f"string-join(({select}) ! string(.), ' ')"
            )
        else:
            pieces.append(f"name(({_rewrite_docs(part.path or '.', docs)})[1])")
    return "string-join((" + ", ".join(pieces or ["''"]) + "), '')"


def _select_from_pattern(context: str) -> str:
    """An XSLT match pattern as a selection over the whole document (focus: the document)."""
    branches = [b if b.startswith("/") else f"//({b})" for b in _split_union(context)]
    return " | ".join(f"({b})" for b in branches)


class _XPathRunner:
    """Each rule compiled once into XPath 3.1 function items; one call per document.

    Per thread, one XPath expression builds `[[map{select, check}, ...], ...]` (patterns of
    rules). A run evaluates the global lets, then folds over each pattern's rules: `select`
    returns the rule's context nodes, minus those an earlier rule of the pattern already took
    (first-match semantics), and `check` returns the failures on one node as strings. XPath 3.1
    has no try/catch: when the run raises, the rules are run one by one from Python, and a rule
    that raises is re-checked node by node and assertion by assertion, each compiled on demand,
    so that only the faulty assertion is reported (with its error code), as with the XSLT engine.
    """

    def __init__(self, schema: SchematronSchema) -> None:
        self.schema = schema
        self.documents, self.missing = _available_documents(schema)
        self.doc_vars = {href: f"sx__doc{i}" for i, href in enumerate(self.documents)}
        self.docs = _doc_replacements(self.doc_vars, self.missing)
        self.global_lets = schema.global_lets
        self.factory = self._factory_expression()
        self._local = threading.local()
        self._lock = threading.Lock()
        try:
            self._thread_state()
        except PySaxonApiError as exc:  # a static error in the schematron's XPath
            raise SchematronCompileError(
                schema.path, f"Saxon rejected the schematron: {_static_error(exc)}"
            ) from exc

    # -- expression text --

    def _globals_binding(self) -> str:
        if not self.global_lets:
            return ""
        names = ", ".join(
            f"${let.name} := $sx__g({_xpath_string(let.name)})" for let in self.global_lets
        )
        return f"let {names} return "

    def _check_body(self, items: Iterable[Let | Assertion], rule: Rule) -> str:
        body: list[str] = []
        closers = 0
        for item in items:
            if isinstance(item, Let):
                value = _rewrite_docs(item.value, self.docs)
                body.append(f"let ${item.name} := ({value}) return (")
                closers += 1
            else:
                body.append(self._assertion_text(item, rule) + ",")
        return "\n".join(body) + " ()" + ")" * closers

    def _assertion_text(self, item: Assertion, rule: Rule) -> str:
        docs = self.docs
        test = _rewrite_docs(item.test, docs)
        test = f"not({test})" if item.kind is AssertionKind.ASSERT else f"({test})"
        subject = _rewrite_docs(item.subject, docs) if item.subject else None
        target = f"((({subject}), .)[1])" if subject else "."
        diags = "".join(
            f" || '{_UNIT}' || {_message_xpath(d, docs, safe=False)}" for d in item.diagnostics
        )
        return (
            f"(if ({test}) then ('{item.index}{_UNIT}{rule.index}{_UNIT}' || $sx__path({target})"
            f" || '{_UNIT}'"
            f" || {_message_xpath(item.message, docs, safe=False)} || '{_UNIT}' || "
            f"{_message_xpath(item.message, docs, safe=True)}{diags}) else ())"
        )

    def _prelude(self) -> str:
        return (
            f"let $PREFIXES := {_prefix_map_literal(self.schema)}, "
            f"$sx__path := function($n as node()) as xs:string {{ {_PATH_BODY} }} return "
        )

    def _factory_expression(self) -> str:
        patterns = []
        for pattern in self.schema.patterns:
            rules = []
            for rule in pattern.rules:
                select = _rewrite_docs(_select_from_pattern(rule.context), self.docs)
                check = self._check_body(self.schema.expand(rule.items), rule)
                rules.append(
                    "map{'select': function($sx__d as node(), $sx__g as map(*)) as node()* "
                    f"{{ $sx__d ! ({self._globals_binding()}{select}) }},"
                    " 'check': function($sx__n as node(), $sx__g as map(*)) as xs:string* "
                    f"{{ $sx__n ! ({self._globals_binding()}{check}) }} }}"
                )
            patterns.append("[" + ",\n".join(rules) + "]")
        return self._prelude() + "[" + ",\n".join(patterns) + "]"

    def _globals_expression(self) -> str:
        if not self.global_lets:
            return "map{}"
        bindings = ", ".join(
            f"${let.name} := ({_rewrite_docs(let.value, self.docs)})" for let in self.global_lets
        )
        entries = ", ".join(f"{_xpath_string(let.name)}: ${let.name}" for let in self.global_lets)
        return f"let {bindings} return map{{{entries}}}"

    _DRIVER = """
let $sx__d := ., $sx__g := GLOBALS
return for $p in $sx__rules?* return fold-left($p?*, map{'seen': (), 'out': ()},
  function($acc, $rule) {
    let $fresh := $rule?select($sx__d, $sx__g) except $acc?seen
    return map{'seen': ($acc?seen | $fresh),
               'out': ($acc?out, $fresh ! $rule?check(., $sx__g))}
  })?out
"""

    # -- per-thread state --

    _SCRATCH = ("sx__rules", "sx__seen", "sx__g", "sx__p", "sx__r", "sx__n", "sx__check")

    @classmethod
    def _reset(cls, xp: Any) -> None:
        """Every declared variable needs a value at each evaluation: bind the scratch ones."""
        empty = saxon_processor().empty_sequence()
        for name in cls._SCRATCH:
            xp.set_parameter(name, empty)

    def _thread_state(self) -> Any:
        state = getattr(self._local, "state", None)
        if state is not None:
            return state
        proc = saxon_processor()
        with self._lock:
            xp = proc.new_xpath_processor()
        for prefix, uri in self.schema.namespaces:
            if prefix != "xml":
                xp.declare_namespace(prefix, uri)
        for name in (*self._SCRATCH, *self.doc_vars.values()):
            xp.declare_variable(name)
        self._reset(xp)
        builder = proc.new_document_builder()
        for href, path in self.documents.items():
            xp.set_parameter(self.doc_vars[href], builder.parse_xml(xml_file_name=str(path)))
        xp.set_context(xdm_item=proc.parse_xml(xml_text="<sx-empty/>"))
        rules = xp.evaluate_single(self.factory)
        state = (xp, builder, rules, {})
        self._local.state = state
        return state

    # -- running --

    def run(self, root: etree._Element) -> list[Row]:
        xp, builder, rules, _ = self._thread_state()
        node = builder.parse_xml(xml_text=_document_text(root), encoding="UTF-8")
        self._reset(xp)
        xp.set_context(xdm_item=node)
        xp.set_parameter("sx__rules", rules)
        try:
            result = xp.evaluate(self._DRIVER.replace("GLOBALS", self._globals_expression()))
        except PySaxonApiError:  # find the faulty assertion(s), rule by rule
            return self._run_carefully(node)
        rows: list[Row] = []
        for i in range(result.size if result is not None else 0):
            fields = result.item_at(i).string_value.split(_UNIT)
            rows.append(self._row(fields, None))
        return rows

    def _row(self, fields: list[str], error: str | None) -> Row:
        index, rule = int(fields[0]), int(fields[1])
        return (index, rule, fields[2], fields[3], fields[4], tuple(fields[5:]), error)

    def _run_carefully(self, node: Any) -> list[Row]:
        xp, _, _, _ = self._thread_state()
        proc = saxon_processor()
        rows: list[Row] = []
        try:
            xp.set_context(xdm_item=node)
            xp.set_parameter("sx__g", xp.evaluate_single(self._globals_expression()))
        except PySaxonApiError as exc:  # in a global let: nothing can run
            raise SchematronRuntimeError(
                f"schematron run failed ({_saxon_error_code(exc)})"
            ) from exc
        for p_number, pattern in enumerate(self.schema.patterns):
            seen = proc.empty_sequence()
            for r_number, rule in enumerate(pattern.rules):
                xp.set_context(xdm_item=node)
                xp.set_parameter("sx__seen", seen)
                xp.set_parameter("sx__p", proc.make_integer_value(p_number + 1))
                xp.set_parameter("sx__r", proc.make_integer_value(r_number + 1))
                fresh = xp.evaluate("$sx__rules($sx__p)($sx__r)?select(., $sx__g) except $sx__seen")
                for i in range(fresh.size if fresh is not None else 0):
                    item = fresh.item_at(i)
                    seen.add_xdm_item(item)
                    self._check_node(item, rule, rows)
        return rows

    def _check_node(self, item: Any, rule: Rule, rows: list[Row]) -> None:
        xp, _, _, _ = self._thread_state()
        xp.set_context(xdm_item=item)
        try:
            out = xp.evaluate("$sx__rules($sx__p)($sx__r)?check(., $sx__g)")
        except PySaxonApiError:  # this rule raised on this node: assertion by assertion
            out = None
        else:
            for i in range(out.size if out is not None else 0):
                rows.append(self._row(out.item_at(i).string_value.split(_UNIT), None))
            return
        items = list(self.schema.expand(rule.items))
        for k, assertion in enumerate(items):
            if not isinstance(assertion, Assertion):
                continue
            check = self._assertion_function(rule, k, items)
            xp.set_parameter("sx__n", item)
            xp.set_context(xdm_item=item)
            try:
                xp.set_parameter("sx__check", check)
                out = xp.evaluate("$sx__check($sx__n, $sx__g)")
            except PySaxonApiError as exc:  # this assertion fails, with its code
                location = xp.evaluate_single(self._prelude() + "$sx__path(.)")
                path = location.string_value if location is not None else ""
                rows.append((assertion.index, rule.index, path, "", "", (), _saxon_error_code(exc)))
                continue
            for i in range(out.size if out is not None else 0):
                rows.append(self._row(out.item_at(i).string_value.split(_UNIT), None))

    def _assertion_function(self, rule: Rule, k: int, items: list[Let | Assertion]) -> Any:
        xp, _, _, cache = self._thread_state()
        key = (rule.index, k)
        if key not in cache:
            lets = [i for i in items[:k] if isinstance(i, Let)]
            body = self._check_body([*lets, items[k]], rule)
            text = (
                self._prelude()
                + "function($sx__n as node(), $sx__g as map(*)) as xs:string* "
                + f"{{ $sx__n ! ({self._globals_binding()}{body}) }}"
            )
            cache[key] = xp.evaluate_single(text)
        return cache[key]


# -- the public validator --------------------------------------------------------------------------


class Schematron:
    """A compiled schematron, ready to validate documents from any thread.

    `Schematron.load(path)` compiles once per (file, phase, engine) and caches.
    """

    _cache: ClassVar[dict[tuple[Path, int, str | None, SchematronEngine], Schematron]] = {}
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self, schema: SchematronSchema, engine: SchematronEngine = SchematronEngine.XSLT
    ) -> None:
        started = time.perf_counter()
        self.schema = schema
        self.engine = engine
        self._runner: _XsltRunner | _XPathRunner = (
            _XsltRunner(schema) if engine is SchematronEngine.XSLT else _XPathRunner(schema)
        )
        self._rules = {rule.index: rule for rule in schema.rules}
        self.compile_seconds = time.perf_counter() - started

    @classmethod
    def compile(
        cls,
        path: Path,
        *,
        phase: str | None = None,
        engine: SchematronEngine = SchematronEngine.XSLT,
    ) -> Schematron:
        """Resolve and compile `path` now, bypassing the cache (benchmarks, tests)."""
        started = time.perf_counter()
        compiled = cls(resolve_schematron(Path(path), phase), engine)
        compiled.compile_seconds = time.perf_counter() - started
        return compiled

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        phase: str | None = None,
        engine: SchematronEngine = SchematronEngine.XSLT,
    ) -> Schematron:
        """The compiled schematron for (file, phase, engine), compiled on first use only.

        The key includes the main file's modification time, so installing new ANS files takes
        effect at the next load; the compile runs under a lock, once, not once per thread.
        """
        resolved = Path(os.path.abspath(path))
        try:
            mtime = resolved.stat().st_mtime_ns
        except OSError as exc:
            raise SchematronCompileError(resolved, "cannot read the file") from exc
        key = (resolved, mtime, phase, engine)
        with cls._cache_lock:
            cached = cls._cache.get(key)
            if cached is None:
                cached = cls.compile(resolved, phase=phase, engine=engine)
                cls._cache[key] = cached
            return cached

    @property
    def name(self) -> str:
        return self.schema.name

    @property
    def phase(self) -> str:
        return self.schema.phase

    @property
    def unavailable_documents(self) -> tuple[str, ...]:
        """doc() targets of the schematron missing on disk (their checks cannot run)."""
        return self._runner.missing

    def validate(self, root: etree._Element) -> SchematronReport:
        """Run the schematron on a document parsed by `connector.cda.safe_xml.parse_xml`."""
        failures = tuple(self._failure(root, row) for row in self._runner.run(root))
        return SchematronReport(self.schema.name, self.schema.phase, failures, self.engine)

    def _failure(self, root: etree._Element, row: Row) -> SchematronFailure:
        index, rule_index, location, message, summary, diagnostics, error = row
        assertion = self.schema.assertions[index]
        rule = self._rules[rule_index]
        level = assertion.level
        full = " ".join(message.split())
        if diagnostics:
            full += " | " + " | ".join(" ".join(d.split()) for d in diagnostics)
        safe = " ".join(summary.split())
        if error is not None:
            if error in _RESOURCE_ERRORS:
                # A file of the schematron is missing: a configuration gap, not the document's
                # fault; reported as a warning so that it is seen without refusing every message.
                level = FailureLevel.WARNING if level is FailureLevel.ERROR else level
                full = safe = f"check not run: a schematron resource is unavailable ({error})"
            else:
                full = safe = f"test could not be evaluated on this document ({error})"
        return SchematronFailure(
            pattern_id=rule.pattern_id,
            rule_context=rule.context,
            rule_id=rule.rule_id,
            assertion_id=assertion.assertion_id,
            rule_reference=assertion.reference,
            kind=assertion.kind,
            role=assertion.role,
            flag=assertion.flag,
            level=level,
            test=assertion.test,
            location=location,
            line=_source_line(root, location, self.schema.namespaces),
            message=full,
            summary=safe,
            see=assertion.see,
            evaluation_error=error,
        )


_TRAILING_NON_ELEMENT = re.compile(
    r"/(@[^/]+|text\(\)\[\d+\]|comment\(\)\[\d+\]|processing-instruction\([^)]*\))$"
)


def _source_line(
    root: etree._Element, location: str, namespaces: Sequence[tuple[str, str]]
) -> int | None:
    """Map a reported node path back to its line in the received document (best effort)."""
    if not location.startswith("/") or "Q{" in location:
        return None
    element_path = _TRAILING_NON_ELEMENT.sub("", location)
    if element_path in ("", "/"):
        return _line_of(root)
    ns = {p: u for p, u in namespaces if p != "xml"}
    try:
        found = root.getroottree().xpath(element_path, namespaces=ns)
    except etree.XPathError:
        return None
    if isinstance(found, list) and found and isinstance(found[0], etree._Element):
        return _line_of(found[0])
    return None


def _line_of(elem: etree._Element) -> int | None:
    line: object = elem.sourceline
    return line if isinstance(line, int) else None
