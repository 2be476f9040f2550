"""CDA validation benchmark: safe parse, XSD, ANS structuration-minimale schematron.

    .venv/bin/python bench/validate.py [--runs 30] [--no-xpath]

For each ANS example CDA (fixtures/cda and the CDAs of the CI-SIS HL7 examples) prints the median
over N runs of: the safe parse, XSD only, XSD + schematron (the connector's path, XSLT engine, the
ANS files as published), and the schematron alone with each engine (XSLT 3 vs XPath 3.1). Also
the one-off costs: XSD load and schematron resolve + compile per engine.

The published ANS schematron references a value-set file it does not ship (voc-...5.471,
JDV_J07): every run hits that missing file. The engine comparison therefore runs on a temporary
overlay (symlinks to the ANS files plus that value set built from the ANS SVS file), so that
neither engine pays for an error path; nothing is copied into the project.

Wall-clock medians, plus thread CPU time for the connector's path (the machine may be shared:
CPU time is the steadier figure). No assertions: figures only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

from lxml import etree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connector.cda.safe_xml import parse_xml  # noqa: E402
from connector.cda.schematron import Schematron, SchematronEngine  # noqa: E402
from connector.cda.xsd import XsdValidator  # noqa: E402

SHARED = Path(os.environ.get("MSSCONNECTOR_SHARED_DIR", ROOT.parent / "shared"))
XSD = SHARED / "schemas" / "cda-xsd" / "CDA_extended.xsd"
STRUCMIN_DIR = SHARED / "schemas" / "schematron" / "structurationMinimale"
STRUCMIN = STRUCMIN_DIR / "ASIP-STRUCT-MIN-StrucMin.sch"
JDV_J07 = SHARED / "schemas" / "value-sets" / "JDV_J07_XdsTypeCode_CISIS.xml"
MISSING_VOC = "voc-1.2.250.1.213.1.1.5.471-DYNAMIC.xml"

T = TypeVar("T")


def documents() -> list[Path]:
    fixtures = SHARED / "fixtures"
    cda = sorted((fixtures / "cda").glob("*.xml"))
    hl7 = sorted((fixtures / "hl7v2" / "cisis-trans-cda-2.1").glob("*/document*.xml"))
    return cda + hl7


def overlay(target: Path) -> Path:
    """Symlinks to the ANS structuration-minimale files + the missing JDV_J07 value set."""
    (target / "include").mkdir()
    for source in STRUCMIN_DIR.iterdir():
        if source.is_file():
            os.symlink(source, target / source.name)
    for source in (STRUCMIN_DIR / "include").iterdir():
        os.symlink(source, target / "include" / source.name)
    value_sets = etree.Element("valueSets")
    concepts = etree.SubElement(etree.SubElement(value_sets, "valueSet"), "conceptList")
    for concept in etree.parse(str(JDV_J07)).iterfind(".//{urn:ihe:iti:svs:2008}Concept"):
        etree.SubElement(concepts, "concept", code=concept.get("code", ""))
    etree.ElementTree(value_sets).write(str(target / "include" / MISSING_VOC))
    return target / STRUCMIN.name


def median_ms(action: Callable[[], object], runs: int, clock: Callable[[], float]) -> float:
    action()  # warm-up: per-thread clones, caches
    samples = []
    for _ in range(runs):
        started = clock()
        action()
        samples.append(clock() - started)
    return statistics.median(samples) * 1000


def timed(action: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--no-xpath", action="store_true", help="skip the XPath engine")
    args = parser.parse_args()
    runs: int = args.runs

    load = os.getloadavg()
    print(
        f"saxonche {version('saxonche')}, lxml {version('lxml')}, Python {sys.version.split()[0]},"
        f" {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f},"
        f" {runs} runs per figure"
    )

    xsd, xsd_seconds = timed(lambda: XsdValidator(XSD))
    published, published_seconds = timed(lambda: Schematron.compile(STRUCMIN))
    schema = published.schema
    print(
        f"\nSchematron {STRUCMIN.name}: {len(schema.patterns)} patterns, {len(schema.rules)}"
        f" rules, {len(schema.assertions)} assertion definitions,"
        f" {len(schema.abstract_rules)} abstract rules in use;"
        f" unavailable documents: {', '.join(published.unavailable_documents) or 'none'}"
    )
    print("\nOne-off costs")
    print(f"  XSD load (CDA_extended.xsd + includes)          {xsd_seconds * 1000:8.0f} ms")
    print(f"  schematron resolve + compile, XSLT (published)  {published_seconds * 1000:8.0f} ms")

    with tempfile.TemporaryDirectory(prefix="strucmin-") as tmp:
        complete_path = overlay(Path(tmp))
        engines: dict[SchematronEngine, Schematron] = {}
        for engine in SchematronEngine:
            if engine is SchematronEngine.XPATH and args.no_xpath:
                continue
            compiled, seconds = timed(lambda e=engine: Schematron.compile(complete_path, engine=e))
            engines[engine] = compiled
            label = f"schematron resolve + compile, {engine.value.upper()} (complete)"
            print(f"  {label:<47} {seconds * 1000:8.0f} ms")

        header = (
            f"\n{'document':<40} {'kB':>5} {'parse':>7} {'XSD':>7} {'XSD+sch':>8} {'(CPU)':>7}"
            + "".join(f" {'sch ' + e.value.upper():>9}" for e in engines)
            + "  findings (published files)"
        )
        print("\nMedian per document, ms (XSD+sch = the connector's path: published files, XSLT)")
        print(header)
        totals: dict[str, list[float]] = {}
        for path in documents():
            data = path.read_bytes()
            root = parse_xml(data)

            def both(root: etree._Element = root) -> None:
                xsd.validate(root)
                published.validate(root)

            row = {
                "parse": median_ms(lambda d=data: parse_xml(d), runs, time.perf_counter),
                "xsd": median_ms(lambda r=root: xsd.validate(r), runs, time.perf_counter),
                "both": median_ms(both, runs, time.perf_counter),
                "cpu": median_ms(both, runs, time.thread_time),
            }
            for engine, compiled in engines.items():
                row[engine.value] = median_ms(
                    lambda c=compiled, r=root: c.validate(r), runs, time.perf_counter
                )
            for key, value in row.items():
                totals.setdefault(key, []).append(value)
            report = published.validate(root)
            findings = f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
            name = f"{path.parent.name}/{path.name}"
            print(
                f"{name:<40} {len(data) / 1024:5.0f} {row['parse']:7.1f} {row['xsd']:7.1f}"
                f" {row['both']:8.1f} {row['cpu']:7.1f}"
                + "".join(f" {row[e.value]:9.1f}" for e in engines)
                + f"  {findings}"
            )
        print(
            f"{'median over documents':<40} {'':>5} {statistics.median(totals['parse']):7.1f}"
            f" {statistics.median(totals['xsd']):7.1f} {statistics.median(totals['both']):8.1f}"
            f" {statistics.median(totals['cpu']):7.1f}"
            + "".join(f" {statistics.median(totals[e.value]):9.1f}" for e in engines)
        )


if __name__ == "__main__":
    main()
