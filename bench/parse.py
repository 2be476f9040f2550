"""Parser choice, measured: the connector's lean ER7 parser against python-hl7 and hl7apy on the
messages intake sees (the ANS ADT^A01, a 70 KB legacy ORU with a base64 PDF, the 820 KB CI-SIS
ORU), for the two jobs intake has: read the MSH (enough for an ACK) and split the whole message.

    .venv/bin/python bench/parse.py
"""

from __future__ import annotations

import os
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

import hl7
from hl7apy.parser import parse_message as hl7apy_parse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from ingest import adt_template, oru_template  # noqa: E402

from connector.hl7.header import read_header  # noqa: E402
from connector.hl7.message import parse_message  # noqa: E402

SHARED = Path(os.environ.get("MSSCONNECTOR_SHARED_DIR", ROOT.parent / "shared"))
CISIS_ORU = SHARED / "fixtures/hl7v2/cisis-trans-cda-2.1/oru-r01-replace/message.er7"


def median_us(fn: Callable[[], object], number: int) -> float:
    runs = timeit.repeat(fn, number=number, repeat=5)
    return statistics.median(runs) / number * 1e6


def main() -> None:
    messages = {
        "ADT^A01 (ANS, 0.8 KB)": adt_template().decode(),
        "ORU legacy PDF (70 KB)": oru_template().decode(),
        "ORU CI-SIS N1+N3 (820 KB)": CISIS_ORU.read_bytes().decode().replace("\n", "\r"),
    }
    print(f"{'message':<28}{'job':<16}{'lean':>10}{'python-hl7':>12}{'hl7apy':>12}  (µs, median)")
    for name, text in messages.items():
        number = 2000 if len(text) < 10_000 else 50
        lean_msh = median_us(lambda t=text: read_header(t), number)
        lean_all = median_us(lambda t=text: parse_message(t), number)
        py_hl7 = median_us(lambda t=text: hl7.parse(t), number)
        apy_number = max(5, number // 20)
        try:
            apy = median_us(lambda t=text: hl7apy_parse(t, find_groups=False), apy_number)
            apy_text = f"{apy:>12.1f}"
        except Exception as exc:  # hl7apy refuses some real messages: say so
            apy_text = f"{'fails':>12}"
            print(f"  hl7apy on {name}: {type(exc).__name__}")
        print(f"{name:<28}{'MSH only':<16}{lean_msh:>10.1f}{'-':>12}{'-':>12}")
        print(f"{'':<28}{'whole message':<16}{lean_all:>10.1f}{py_hl7:>12.1f}{apy_text}")


if __name__ == "__main__":
    main()
