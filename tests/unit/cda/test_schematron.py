"""The ISO Schematron engine: hand-written schematrons for each feature (both engines), then the
ANS structuration-minimale files on the ANS example documents and on mutants of them."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lxml import etree

from connector.cda.safe_xml import parse_xml
from connector.cda.schematron import (
    AssertionKind,
    FailureLevel,
    Schematron,
    SchematronCompileError,
    SchematronEngine,
    SchematronReport,
    resolve_schematron,
)
from tests.unit.cda import (
    MISSING_VOC,
    PATIENT_DATA,
    STRUCMIN,
    fixture_cdas,
    fixture_id,
    hl7_cdas,
    mutate,
    overlay_with_typecode_valueset,
    remove,
    set_attribute,
)

SCH = 'xmlns="http://purl.oclc.org/dsdl/schematron"'
HEAD = f'<schema {SCH} queryBinding="xslt2"><ns prefix="h" uri="urn:hl7-org:v3"/>'

ENGINES = [SchematronEngine.XSLT, SchematronEngine.XPATH]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def run(
    path: Path, xml: str, engine: SchematronEngine, phase: str | None = None
) -> SchematronReport:
    return Schematron.compile(path, phase=phase, engine=engine).validate(parse_xml(xml.encode()))


def refs(report: SchematronReport) -> list[tuple[str, str]]:
    return [(f.rule_reference, f.location) for f in report.failures]


# -- engine features, on small schematrons ---------------------------------------------------------


BASICS = (
    HEAD
    + """
  <title>basics</title>
  <pattern id="p1">
    <rule context="h:doc" id="r-doc">
      <assert id="has-title" test="h:title">title missing in <name/></assert>
      <assert test="matches(h:code/@value, '^[A-Z]+$')" role="warning">code <value-of
          select="h:code/@value"/> is not upper case</assert>
      <report id="flagged" test="h:flag = 'yes'" flag="f1">flag set on <name/></report>
      <assert test="xs:integer(h:count) gt 0">count must be positive: <value-of
          select="h:count"/></assert>
      <assert id="ok" test="h:code">never fails here</assert>
    </rule>
  </pattern>
</schema>"""
)
BASICS_DOC = """<doc xmlns="urn:hl7-org:v3">
  <code value="abc"/>
  <flag>yes</flag>
  <count>x12</count>
</doc>"""


@pytest.mark.parametrize("engine", ENGINES)
def test_assert_report_roles_ids_and_messages(tmp_path: Path, engine: SchematronEngine) -> None:
    report = run(write(tmp_path, "basics.sch", BASICS), BASICS_DOC, engine)

    assert [f.rule_reference for f in report.failures] == [
        "has-title",
        "r-doc#2",
        "flagged",
        "r-doc#4",
    ]
    by_ref = {f.rule_reference: f for f in report.failures}
    assert by_ref["has-title"].kind is AssertionKind.ASSERT
    assert by_ref["has-title"].message == "title missing in doc"
    assert by_ref["has-title"].location == "/h:doc[1]"
    assert by_ref["has-title"].line == 1
    assert by_ref["flagged"].kind is AssertionKind.REPORT
    assert by_ref["flagged"].flag == "f1"
    # role="warning" does not invalidate; no role counts as an error.
    assert by_ref["r-doc#2"].level is FailureLevel.WARNING
    assert by_ref["r-doc#2"].role == "warning"
    assert report.errors == (by_ref["has-title"], by_ref["flagged"], by_ref["r-doc#4"])
    assert not report.is_valid
    # value-of: in the message for operators, never in the summary.
    assert "abc" in by_ref["r-doc#2"].message
    assert "abc" not in by_ref["r-doc#2"].summary
    assert by_ref["r-doc#2"].summary == "code … is not upper case"
    assert report.schematron_name == "basics"
    assert report.phase == "#ALL"


@pytest.mark.parametrize("engine", ENGINES)
def test_dynamic_error_fails_only_that_assertion(tmp_path: Path, engine: SchematronEngine) -> None:
    report = run(write(tmp_path, "basics.sch", BASICS), BASICS_DOC, engine)

    failed = next(f for f in report.failures if f.rule_reference == "r-doc#4")
    assert failed.evaluation_error is not None  # xs:integer('x12')
    assert "x12" not in failed.message + failed.summary  # Saxon's text quotes it: not kept
    assert "ok" not in [f.rule_reference for f in report.failures]  # later assertions still ran
    assert "has-title" in [f.rule_reference for f in report.failures]


FIRST_MATCH = (
    HEAD
    + """
  <pattern id="first">
    <rule context="h:item[@kind = 'a']"><assert id="A" test="false()">A</assert></rule>
    <rule context="h:item"><assert id="B" test="false()">B</assert></rule>
    <rule context="h:item/@kind"><assert id="K" test=". = ('a', 'b')">kind</assert></rule>
  </pattern>
  <pattern id="second">
    <rule context="h:item"><assert id="C" test="false()">C</assert></rule>
  </pattern>
</schema>"""
)


@pytest.mark.parametrize("engine", ENGINES)
def test_first_matching_rule_per_pattern(tmp_path: Path, engine: SchematronEngine) -> None:
    xml = '<list xmlns="urn:hl7-org:v3"><item kind="a"/><item kind="b"/><item kind="z"/></list>'
    report = run(write(tmp_path, "first.sch", FIRST_MATCH), xml, engine)

    assert sorted(refs(report)) == sorted(
        [
            ("A", "/h:list[1]/h:item[1]"),  # the second rule does not fire on item 1 as well
            ("B", "/h:list[1]/h:item[2]"),
            ("B", "/h:list[1]/h:item[3]"),
            ("K", "/h:list[1]/h:item[3]/@kind"),  # attribute contexts are visited
            ("C", "/h:list[1]/h:item[1]"),  # another pattern sees every node again
            ("C", "/h:list[1]/h:item[2]"),
            ("C", "/h:list[1]/h:item[3]"),
        ]
    )
    assert {f.pattern_id for f in report.failures if f.rule_reference == "C"} == {"second"}


@pytest.mark.parametrize("engine", ENGINES)
def test_includes_are_recursive_and_relative(tmp_path: Path, engine: SchematronEngine) -> None:
    main = write(
        tmp_path,
        "main.sch",
        HEAD + '<include href="inc/pattern.sch"/><pattern id="p-main">'
        '<include href="inc/rule.sch"/></pattern></schema>',
    )
    write(
        tmp_path,
        "inc/pattern.sch",
        f'<pattern {SCH} id="p-inc"><include href="deep/r.sch"/></pattern>',
    )
    write(
        tmp_path,
        "inc/deep/r.sch",
        f'<rule {SCH} context="h:doc"><assert id="deep" test="h:a">a</assert></rule>',
    )
    write(
        tmp_path,
        "inc/rule.sch",
        f'<rule {SCH} context="h:doc"><assert id="near" test="h:b">b</assert></rule>',
    )

    report = run(main, '<doc xmlns="urn:hl7-org:v3"/>', engine)

    assert [(f.pattern_id, f.rule_reference) for f in report.failures] == [
        ("p-inc", "deep"),
        ("p-main", "near"),
    ]


def test_include_errors_are_configuration_errors(tmp_path: Path) -> None:
    write(tmp_path, "a.sch", HEAD + '<include href="b.sch"/></schema>')
    write(tmp_path, "b.sch", f'<pattern {SCH}><include href="c.sch"/></pattern>')
    write(tmp_path, "c.sch", f'<rule {SCH} context="h:x"><include href="b.sch"/></rule>')
    write(tmp_path, "whole.sch", HEAD + '<include href="a.sch"/></schema>')
    write(tmp_path, "remote.sch", HEAD + '<include href="http://example.invalid/x.sch"/></schema>')
    write(tmp_path, "missing.sch", HEAD + '<include href="nowhere.sch"/></schema>')

    with pytest.raises(SchematronCompileError, match=r"cycle through b\.sch"):
        resolve_schematron(tmp_path / "a.sch")
    with pytest.raises(SchematronCompileError, match="including a sch:schema"):
        resolve_schematron(tmp_path / "whole.sch")
    with pytest.raises(SchematronCompileError, match="non-local"):
        resolve_schematron(tmp_path / "remote.sch")
    with pytest.raises(SchematronCompileError, match="cannot read"):
        resolve_schematron(tmp_path / "missing.sch")


ABSTRACT_PATTERN = (
    HEAD
    + """
  <pattern abstract="true" id="counted">
    <rule context="$parent">
      <let name="nb" value="count($nodes)"/>
      <assert id="count" test="$nb = $n">wrong count</assert>
    </rule>
  </pattern>
  <pattern is-a="counted" id="two-items">
    <param name="parent" value="h:list"/><param name="nodes" value="h:item"/>
    <param name="n" value="2"/>
  </pattern>
  <pattern is-a="counted" id="one-title">
    <param name="parent" value="h:list"/><param name="nodes" value="h:title"/>
    <param name="n" value="1"/>
  </pattern>
</schema>"""
)


@pytest.mark.parametrize("engine", ENGINES)
def test_abstract_pattern_with_params(tmp_path: Path, engine: SchematronEngine) -> None:
    path = write(tmp_path, "abstract.sch", ABSTRACT_PATTERN)
    xml = '<list xmlns="urn:hl7-org:v3"><item/><item/><item/></list>'

    report = run(path, xml, engine)

    # Whole names only: $n is a parameter, $nb (a let) and $nodes are not "$n" + "b"/"odes".
    assert [(f.pattern_id, f.test) for f in report.failures] == [
        ("two-items", "$nb = 2"),
        ("one-title", "$nb = 1"),
    ]
    assert (
        run(path, '<list xmlns="urn:hl7-org:v3"><title/><item/><item/></list>', engine).failures
        == ()
    )


ABSTRACT_RULES = (
    HEAD
    + """
  <pattern id="abs">
    <rule abstract="true" id="has-value"><assert id="hv" test="@value">no value</assert></rule>
    <rule abstract="true" id="coded">
      <extends rule="has-value"/>
      <let name="allowed" value="('A', 'B')"/>
      <assert test="not(@value) or @value = $allowed">not allowed: <value-of
          select="@value"/></assert>
    </rule>
    <rule abstract="true" id="uses-caller">
      <assert id="uc" test="@value = $expected">unexpected</assert>
    </rule>
    <rule abstract="true" id="defines"><let name="limit" value="2"/></rule>
    <rule context="h:code">
      <extends rule="coded"/><assert id="nb" test="not(@bad)">bad</assert>
    </rule>
    <rule context="h:status"><let name="expected" value="'X'"/><extends rule="uses-caller"/></rule>
    <rule context="h:list">
      <extends rule="defines"/><assert id="lim" test="count(*) le $limit">many</assert>
    </rule>
  </pattern>
</schema>"""
)


@pytest.mark.parametrize("engine", ENGINES)
def test_abstract_rules_and_extends(tmp_path: Path, engine: SchematronEngine) -> None:
    path = write(tmp_path, "rules.sch", ABSTRACT_RULES)
    xml = (
        '<list xmlns="urn:hl7-org:v3"><code value="C" bad="1"/><code/>'
        '<status value="Y"/><status value="X"/></list>'
    )

    report = run(path, xml, engine)

    assert sorted(refs(report)) == sorted(
        [
            ("coded#1", "/h:list[1]/h:code[1]"),  # named after the abstract rule that holds it
            ("nb", "/h:list[1]/h:code[1]"),
            ("hv", "/h:list[1]/h:code[2]"),  # nested extends
            ("uc", "/h:list[1]/h:status[1]"),  # the abstract rule sees the caller's let
            ("lim", "/h:list[1]"),  # the caller sees the abstract rule's let
        ]
    )


def test_extends_errors(tmp_path: Path) -> None:
    cycle = write(
        tmp_path,
        "cycle.sch",
        HEAD + '<pattern><rule abstract="true" id="a"><extends rule="b"/></rule>'
        '<rule abstract="true" id="b"><extends rule="a"/></rule>'
        '<rule context="h:x"><extends rule="a"/></rule></pattern></schema>',
    )
    unknown = write(
        tmp_path,
        "unknown.sch",
        HEAD + '<pattern><rule context="h:x"><extends rule="nope"/></rule></pattern></schema>',
    )
    with pytest.raises(SchematronCompileError, match="cycle"):
        resolve_schematron(cycle)
    with pytest.raises(SchematronCompileError, match="no abstract rule"):
        resolve_schematron(unknown)


LETS = (
    HEAD
    + """
  <let name="max" value="2"/>
  <let name="special" value="'z'"/>
  <pattern id="lets">
    <let name="n-items" value="count(//h:item)"/>
    <rule context="h:list">
      <let name="kinds" value="distinct-values(h:item/@kind)"/>
      <assert id="max" test="$n-items le $max">at most <value-of select="$max"/> items</assert>
      <assert id="kinds" test="count($kinds) = 1"><value-of select="count($kinds)"/> kinds</assert>
    </rule>
    <rule context="h:item[@kind = $special]"><assert id="special" test="false()">z</assert></rule>
  </pattern>
</schema>"""
)


@pytest.mark.parametrize("engine", ENGINES)
def test_let_at_schema_pattern_and_rule_level(tmp_path: Path, engine: SchematronEngine) -> None:
    xml = '<list xmlns="urn:hl7-org:v3"><item kind="a"/><item kind="b"/><item kind="z"/></list>'

    report = run(write(tmp_path, "lets.sch", LETS), xml, engine)

    assert sorted(refs(report)) == [
        ("kinds", "/h:list[1]"),
        ("max", "/h:list[1]"),
        ("special", "/h:list[1]/h:item[3]"),  # a schema let used in a rule context
    ]
    messages = {f.rule_reference: f.message for f in report.failures}
    assert messages["max"] == "at most 2 items"
    assert messages["kinds"] == "3 kinds"


PHASES = (
    f'<schema {SCH} queryBinding="xslt2" defaultPhase="quick"><ns prefix="h" uri="urn:hl7-org:v3"/>'
    """
  <phase id="quick"><active pattern="p-a"/></phase>
  <phase id="full"><active pattern="p-a"/><active pattern="p-b"/></phase>
  <phase id="strict"><let name="limit" value="0"/><active pattern="p-c"/></phase>
  <pattern id="p-a"><rule context="h:doc"><assert id="A" test="false()">A</assert></rule></pattern>
  <pattern id="p-b"><rule context="h:doc"><assert id="B" test="false()">B</assert></rule></pattern>
  <pattern id="p-c">
    <rule context="h:doc"><assert id="C" test="count(*) le $limit">C</assert></rule>
  </pattern>
</schema>"""
)


@pytest.mark.parametrize("engine", ENGINES)
def test_phases(tmp_path: Path, engine: SchematronEngine) -> None:
    path = write(tmp_path, "phases.sch", PHASES)
    xml = '<doc xmlns="urn:hl7-org:v3"><x/></doc>'

    def ids(phase: str | None) -> list[str]:
        return [f.rule_reference for f in run(path, xml, engine, phase).failures]

    assert ids(None) == ["A"]  # defaultPhase
    assert ids("#DEFAULT") == ["A"]
    assert ids("full") == ["A", "B"]
    assert ids("strict") == ["C"]  # with the phase's own let
    assert run(path, xml, engine, "full").phase == "full"
    with pytest.raises(SchematronCompileError, match="no phase"):
        resolve_schematron(path, "nope")


def test_all_phase_runs_every_pattern(tmp_path: Path) -> None:
    path = write(tmp_path, "phases.sch", PHASES.replace('<let name="limit" value="0"/>', ""))
    path.write_text(path.read_text().replace("$limit", "0"))
    report = run(path, '<doc xmlns="urn:hl7-org:v3"><x/></doc>', SchematronEngine.XSLT, "#ALL")
    assert [f.rule_reference for f in report.failures] == ["A", "B", "C"]


SUBJECT_AND_DIAGNOSTICS = (
    HEAD
    + """
  <pattern id="p">
    <rule context="h:doc">
      <assert id="s" test="h:code/@value = 'A'" subject="h:code"
              diagnostics="d1">code must be A</assert>
      <assert id="s-none" test="false()" subject="h:absent">falls back to the context</assert>
    </rule>
  </pattern>
  <diagnostics>
    <diagnostic id="d1">found <value-of select="h:code/@value"/></diagnostic>
  </diagnostics>
</schema>"""
)


@pytest.mark.parametrize("engine", ENGINES)
def test_subject_and_diagnostics(tmp_path: Path, engine: SchematronEngine) -> None:
    xml = '<doc xmlns="urn:hl7-org:v3">\n<title/>\n<code value="B"/>\n</doc>'

    report = run(write(tmp_path, "subject.sch", SUBJECT_AND_DIAGNOSTICS), xml, engine)

    first, second = report.failures
    assert first.location == "/h:doc[1]/h:code[1]"
    assert first.line == 3
    assert first.message == "code must be A | found B"
    assert first.summary == "code must be A"  # diagnostics stay in the operator report
    assert second.location == "/h:doc[1]"


@pytest.mark.parametrize("engine", ENGINES)
def test_doc_relative_to_the_schematron_and_missing_documents(
    tmp_path: Path, engine: SchematronEngine
) -> None:
    write(tmp_path, "voc/codes.xml", '<codes><c v="A"/><c v="B"/></codes>')
    path = write(
        tmp_path,
        "sub/../docs.sch",
        HEAD + '<pattern id="p"><rule context="h:code">'
        '<assert id="known" test="@value = doc(\'voc/codes.xml\')//c/@v">unknown code</assert>'
        '<assert id="other" test="@value = doc(\'voc/missing.xml\')//c/@v">not in list</assert>'
        "</rule></pattern></schema>",
    )
    compiled = Schematron.compile(path, engine=engine)
    xml = '<doc xmlns="urn:hl7-org:v3"><code value="A"/><code value="Q"/></doc>'

    report = compiled.validate(parse_xml(xml.encode()))

    assert compiled.unavailable_documents == ("voc/missing.xml",)
    assert [(f.rule_reference, f.location) for f in report.errors] == [
        ("known", "/h:doc[1]/h:code[2]")
    ]
    missing = [f for f in report.failures if f.rule_reference == "other"]
    assert len(missing) == 2  # one per code element: the check could not run on either
    assert all(f.level is FailureLevel.WARNING for f in missing)
    assert all(f.evaluation_error == "FODC0002" for f in missing)


def test_bad_schematrons_are_configuration_errors(tmp_path: Path) -> None:
    syntax = write(
        tmp_path,
        "syntax.sch",
        HEAD + '<pattern><rule context="h:x"><assert test="count(">x</assert>'
        "</rule></pattern></schema>",
    )
    binding = write(tmp_path, "binding.sch", f'<schema {SCH} queryBinding="exslt"/>')
    not_sch = write(tmp_path, "not.sch", "<schema/>")
    for engine in ENGINES:
        with pytest.raises(SchematronCompileError, match="Saxon rejected"):
            Schematron.compile(syntax, engine=engine)
    with pytest.raises(SchematronCompileError, match="queryBinding"):
        Schematron.compile(binding)
    with pytest.raises(SchematronCompileError, match="not an ISO sch:schema"):
        Schematron.compile(not_sch)


def test_load_compiles_once_per_file_and_phase(tmp_path: Path) -> None:
    path = write(tmp_path, "phases.sch", PHASES)

    first = Schematron.load(path)
    assert Schematron.load(path) is first
    assert Schematron.load(path, phase="full") is not first
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert Schematron.load(path) is not first  # a new copy of the files is picked up


def test_report_rendering(tmp_path: Path) -> None:
    report = run(write(tmp_path, "basics.sch", BASICS), BASICS_DOC, SchematronEngine.XSLT)

    text = report.render()
    assert text.startswith("Schematron basics (phase #ALL, engine xslt): 3 error(s), 1 warning(s)")
    assert "code abc is not upper case" in text  # the operator sees the values
    assert report.rule_reference() == "p1 has-title (+3 more)"
    assert report.rule_references() == ("has-title", "flagged", "r-doc#4", "r-doc#2")


# -- the ANS structuration-minimale files ----------------------------------------------------------

SETID_RULE = "d152e10-false-d1610e0#29"  # ClinicalDocument: setId [1..1] (v1.16)
FAMILY_QUALIFIER_RULE = "d2485e87-false-d3093e0#3"  # family@qualifier BR or CL only
TYPECODE_RULE = "d152e75-false-d2268e0#8"  # code from JDV_J07 (the missing value-set file)
LANGUAGE_RULE = "d152e115-false-d2414e0#4"
INS_TRAITS_RULE = "d152e10-false-d1610e0#35"
TELECOM_RULE = "d2952e25-false-d2959e0#4"


@pytest.fixture(scope="module")
def strucmin() -> Schematron:
    return Schematron.load(STRUCMIN)


@pytest.fixture(scope="module")
def strucmin_complete(tmp_path_factory: pytest.TempPathFactory) -> Schematron:
    return Schematron.load(overlay_with_typecode_valueset(tmp_path_factory.mktemp("strucmin")))


def test_published_files_reference_a_value_set_they_do_not_ship(strucmin: Schematron) -> None:
    assert strucmin.unavailable_documents == (MISSING_VOC,)
    assert strucmin.phase == "#ALL"


@pytest.mark.parametrize("path", fixture_cdas(), ids=fixture_id)
def test_ans_example_cdas_pass(
    path: Path, strucmin: Schematron, strucmin_complete: Schematron
) -> None:
    root = parse_xml(path.read_bytes())

    published = strucmin.validate(root)
    assert published.is_valid
    # The one finding: the typeCode check cannot run without its value-set file.
    [unavailable] = published.failures
    assert unavailable.rule_reference == TYPECODE_RULE
    assert unavailable.evaluation_error == "FODC0002"
    assert unavailable.level is FailureLevel.WARNING
    assert unavailable.location == "/hl7:ClinicalDocument[1]/hl7:code[1]"

    assert strucmin_complete.validate(root).failures == ()


HL7_EXPECTED = {
    "mdm-t02-initial/document.xml": {SETID_RULE, FAMILY_QUALIFIER_RULE},
    "mdm-t04-delete/document.xml": {SETID_RULE, FAMILY_QUALIFIER_RULE},
    "mdm-t10-replace/document.xml": {SETID_RULE, FAMILY_QUALIFIER_RULE},
    "oru-r01-initial/document-n1.xml": {FAMILY_QUALIFIER_RULE},
    "oru-r01-initial/document-n3.xml": {FAMILY_QUALIFIER_RULE},
}


@pytest.mark.parametrize("path", hl7_cdas(), ids=fixture_id)
def test_hl7_fixture_documents(path: Path, strucmin_complete: Schematron) -> None:
    report = strucmin_complete.validate(parse_xml(path.read_bytes()))

    assert {f.rule_reference for f in report.errors} == HL7_EXPECTED[fixture_id(path)]
    assert report.warnings == ()
    by_ref = {f.rule_reference: f for f in report.errors}
    if SETID_RULE in by_ref:  # the MDM examples predate structuration minimale 1.16
        assert "hl7:setId" in by_ref[SETID_RULE].test
        assert by_ref[SETID_RULE].location == "/hl7:ClinicalDocument[1]"
    # These volet 2.1 examples name the patient with family@qualifier="SP" (spouse name).
    assert "hl7:family[@qualifier!='BR'and@qualifier!='CL']" in by_ref[
        FAMILY_QUALIFIER_RULE
    ].test.replace(" ", "")
    for failure in report.failures:
        for value in PATIENT_DATA:
            assert value not in failure.short()


def _no_birth_traits(root: etree._Element) -> None:
    patient = "//hl7:recordTarget/hl7:patientRole/hl7:patient"
    remove(root, f"{patient}/hl7:name/hl7:given[@qualifier='BR']")
    remove(root, f"{patient}/hl7:birthplace")


def _tel_prefix(root: etree._Element) -> None:
    set_attribute(
        "//hl7:patientRole/hl7:telecom[starts-with(@value, 'tel:')]", "value", "phone:0147150000"
    )(root)


MUTANTS = {
    "no setId": (
        lambda r: remove(r, "/hl7:ClinicalDocument/hl7:setId"),
        SETID_RULE,
        "/hl7:ClinicalDocument[1]",
    ),
    "languageCode": (
        set_attribute("/hl7:ClinicalDocument/hl7:languageCode", "code", "fr_FR"),
        LANGUAGE_RULE,
        "/hl7:ClinicalDocument[1]/hl7:languageCode[1]",
    ),
    "INS without birth traits": (_no_birth_traits, INS_TRAITS_RULE, "/hl7:ClinicalDocument[1]"),
    "telecom prefix": (
        _tel_prefix,
        TELECOM_RULE,
        "/hl7:ClinicalDocument[1]/hl7:recordTarget[1]/hl7:patientRole[1]/hl7:telecom[1]",
    ),
}
BASE_FIXTURE = next(p for p in fixture_cdas() if p.name == "doc-non-structure-n1.xml")


@pytest.mark.parametrize("name", MUTANTS)
def test_mutants_fail_on_their_rule(name: str, strucmin_complete: Schematron) -> None:
    change, rule, location = MUTANTS[name]
    report = strucmin_complete.validate(parse_xml(mutate(BASE_FIXTURE, change)))

    assert [(f.rule_reference, f.location) for f in report.errors] == [(rule, location)]
    failure = report.errors[0]
    for value in (*PATIENT_DATA, "fr_FR", "phone:"):
        assert value not in failure.short()


def test_rule_texts_behind_the_mutants(strucmin_complete: Schematron) -> None:
    """The references above are ART-DECOR ids; check they are the rules we mean."""
    tests = {a.reference: a.test for a in strucmin_complete.schema.assertions}
    assert "hl7:setId[not(@nullFlavor)]" in tests[SETID_RULE]
    assert "hl7:birthplace/hl7:place/hl7:addr/hl7:county" in tests[INS_TRAITS_RULE]
    assert "'tel'" in tests[TELECOM_RULE]
    assert "'mailto'" in tests[TELECOM_RULE]
    assert "@code" in tests[LANGUAGE_RULE]
    assert "voc-1.2.250.1.213.1.1.5.471-DYNAMIC.xml" in tests[TYPECODE_RULE]


def test_typecode_check_works_when_its_value_set_is_present(strucmin_complete: Schematron) -> None:
    data = mutate(BASE_FIXTURE, set_attribute("/hl7:ClinicalDocument/hl7:code", "code", "99999-9"))
    report = strucmin_complete.validate(parse_xml(data))
    assert [f.rule_reference for f in report.errors] == [TYPECODE_RULE]


def test_engines_agree_on_the_ans_files(strucmin_complete: Schematron) -> None:
    xpath = Schematron.load(strucmin_complete.schema.path, engine=SchematronEngine.XPATH)
    documents = [p.read_bytes() for p in hl7_cdas()[::2]]
    documents += [mutate(BASE_FIXTURE, change) for change, _, _ in MUTANTS.values()]
    for data in documents:
        root = parse_xml(data)

        def key(report: SchematronReport) -> list[tuple[str, str, str, str]]:
            return sorted(
                (f.rule_reference, f.location, f.level.value, f.message) for f in report.failures
            )

        assert key(xpath.validate(root)) == key(strucmin_complete.validate(root))


def test_concurrent_validation_gives_the_sequential_results(strucmin: Schematron) -> None:
    roots = [parse_xml(p.read_bytes()) for p in (*fixture_cdas(), *hl7_cdas())]
    expected = [refs(strucmin.validate(r)) for r in roots]
    barrier = threading.Barrier(4)

    def work(offset: int) -> list[list[tuple[str, str]]]:
        barrier.wait()
        order = roots[offset:] + roots[:offset]
        return [refs(strucmin.validate(r)) for r in order for _ in range(2)][::2]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(4)))
    for offset, result in enumerate(results):
        assert result == expected[offset:] + expected[:offset]
