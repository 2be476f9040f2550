"""Where an ADT's CPU goes on the connector's event loop, step by step, next to what the
`bench/ingest.py` baseline spends per message (python-hl7: parse + `create_ack`), in one process.

    .venv/bin/python bench/adt_cost.py [--messages 4000] [--patients 1]

Hot-loop steps (best of 5, µs per call): the intake's first pass (charset, parse, MSH, route,
ADT plan), the ADT plan alone, the patient-context merge (decode, apply, encode), the ACK; then
the store job alone on a real SQLite store inside a transaction that is rolled back (the inbound
row, with and without its patient change); then the SQLite writer's own cost per job (a job that
does nothing, 4 concurrent callers, with its group commits and WAL syncs); and last the whole
`IntakeHandler.handle` with 4 concurrent callers and no sockets: the event loop thread's CPU per
message (`time.thread_time`), which `bench/ingest.py` adds the MLLP socket work to.

The hot loops run warm caches and repeat one message, so they read low next to the in-situ
figure; compare them with each other and with the baseline's line, which is measured alike.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import hl7
import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from ingest import adt_template, for_patient, unique  # noqa: E402

from connector.hl7.ack import AckIdentity, ControlIdGenerator  # noqa: E402
from connector.hl7.codes import AckCode  # noqa: E402
from connector.patients import plan_adt  # noqa: E402
from connector.pipeline.decide import IntakeDecider  # noqa: E402
from connector.pipeline.documents import CisisIntake  # noqa: E402
from connector.pipeline.intake import IntakeConfig, IntakeHandler  # noqa: E402
from connector.settings import CisisSettings  # noqa: E402
from connector.store import InboundMessage, InboundStatus  # noqa: E402
from connector.store.sqlite import SQLiteStore  # noqa: E402


def best_us(fn: Callable[[], object], number: int = 2000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def line(name: str, value: float, unit: str = "us") -> None:
    print(f"  {name:58} {value:8.1f} {unit}")


def new_store() -> SQLiteStore:
    store = SQLiteStore(Path(tempfile.mkdtemp(prefix="adt-cost-")) / "connector.db")
    store.open()
    return store


def hot_loops(template: bytes) -> None:
    decider = IntakeDecider(CisisIntake(CisisSettings(), None))  # type: ignore[arg-type]
    decision = decider.first_pass(template)
    assert decision.patient_update is not None
    assert decision.message is not None
    assert decision.header is not None
    update, message, header = decision.patient_update, decision.message, decision.header
    change = update.change()
    context = change.apply(None)
    handler = IntakeHandler(IntakeConfig("t", "l", AckIdentity("PFI", "CHU")), new_store(),
                            ControlIdGenerator(), decider.cisis)
    text = template.decode()
    print("hot loops (one message again and again, warm caches):")
    line("baseline: python-hl7 parse + create_ack + str (all it does)",
         best_us(lambda: str(hl7.parse(text).create_ack())))
    line("connector: first pass (charset, parse, MSH, route, ADT plan)",
         best_us(lambda: decider.first_pass(template)))
    line("  of which the ADT plan (PID, PV1, ZBE, ZFA, ROL... read)",
         best_us(lambda: plan_adt(message, header)))
    line("connector: patient context merge, new patient (apply, encode)",
         best_us(lambda: change.apply(None)))
    line("connector: patient context merge, known patient (decode too)",
         best_us(lambda: change.apply(context)))
    line("connector: the ACK (build, encode)",
         best_us(lambda: handler._ack(decision, AckCode.APPLICATION_ACCEPT, ())))


def store_jobs(template: bytes, count: int, patients: int) -> None:
    decider = IntakeDecider(CisisIntake(CisisSettings(), None))  # type: ignore[arg-type]
    store = new_store()
    conn = store._conn
    assert conn is not None
    print("store job alone (real SQLite, in a transaction rolled back after):")
    for with_patient in (False, True):
        records = []
        for n in range(count):
            payload = unique(template, n, "S")
            if patients > 1:
                payload = for_patient(payload, n % patients)
            decision = decider.first_pass(payload)
            assert decision.header is not None
            assert decision.patient_update is not None
            header = decision.header
            records.append(InboundMessage(
                tenant_id="t", listener="l", peer="p", received_at=time.time(), raw=payload,
                digest=hashlib.sha256(payload).digest(),
                sending_application=header.sending_application,
                sending_facility=header.sending_facility,
                message_type=str(header.message_type), control_id=header.control_id,
                version=header.version_id, status=InboundStatus.ACCEPTED, ack_code="AA",
                ack=b"ACK", patient_update=(decision.patient_update.change()
                                            if with_patient else None)))
        conn.execute("BEGIN")
        started = time.perf_counter()
        for record in records:
            conn.execute("SAVEPOINT job")
            store._record_inbound(conn, record)
            conn.execute("RELEASE job")
        elapsed = time.perf_counter() - started
        conn.execute("ROLLBACK")
        label = "with its patient change" if with_patient else "without the patient change"
        line(f"inbound row + savepoint, {label}", elapsed / count * 1e6)
    asyncio.run(store.close())


async def loop_cpu(count: int, job: Callable[[], object]) -> tuple[float, float]:
    """Loop-thread CPU µs and wall µs per call of `job` (a coroutine factory), 4 callers."""
    async def caller(n: int) -> None:
        for _ in range(n):
            await job()  # type: ignore[misc]

    await asyncio.gather(*(caller(max(count // 20, 25)) for _ in range(4)))  # warm-up
    cpu, wall = time.thread_time(), time.perf_counter()
    await asyncio.gather(*(caller(count // 4) for _ in range(4)))
    return ((time.thread_time() - cpu) / count * 1e6,
            (time.perf_counter() - wall) / count * 1e6)


async def in_process(template: bytes, count: int, patients: int) -> None:
    store = new_store()
    writer = store._writer
    assert writer is not None
    cpu, wall = await loop_cpu(count, lambda: writer.submit(lambda conn: None))
    print("event loop thread CPU, 4 concurrent callers, real group commits and WAL syncs:")
    line("SQLite writer, a job that does nothing", cpu)
    handler = IntakeHandler(IntakeConfig("t", "l", AckIdentity("PFI", "CHU")), store,
                            ControlIdGenerator(),
                            CisisIntake(CisisSettings(), None))  # type: ignore[arg-type]
    payloads = iter([for_patient(unique(template, n, "H"), n % patients) if patients > 1
                     else unique(template, n, "H") for n in range(count * 2)])

    async def one() -> None:
        ack = await handler.handle(next(payloads), "bench")
        assert ack is not None
        assert b"MSA|AA" in ack, ack

    cpu, wall = await loop_cpu(count, one)
    line("IntakeHandler.handle, whole (no sockets)", cpu)
    line(f"  wall time per message ({1e6 / wall:,.0f} msgs/s)", wall)
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--patients", type=int, default=1,
                        help="distinct patients the ADTs cycle through (1: the fixture's own)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    template = adt_template()
    print(f"ADT^A01 {len(template)} B, patients={args.patients}")
    hot_loops(template)
    store_jobs(template, args.messages, args.patients)
    asyncio.run(in_process(template, args.messages, args.patients))


if __name__ == "__main__":
    main()
