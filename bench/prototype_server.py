"""The issue's "quick prototype", the second reference of `bench/ingest.py --prototype`.

    .venv/bin/python bench/prototype_server.py PORT DATABASE [--patient-context]

Durable, and nothing else: each message's raw bytes and MSH fields go into SQLite through one
writer thread that batches whatever is queued into one transaction (WAL, `synchronous=FULL`:
fsynced in COMMIT), and the ACK (AA, always) is built from MSH alone. No charset, no validation,
no routing, no patient context, no retransmission check, no metrics, no logs: the floor of a
Python MLLP server that fsyncs before it ACKs, on the machine of the run. Not a product.

`--patient-context` adds what issue 8 asks of an ADT before its ACK, in its leanest form: in the
same transaction, the writer thread reads the patient's context (by PID-3's first IPP), merges
the message's PID and PV1 into it (JSON, each field split into its components: about the size of
the connector's context), writes it back, and adds a history row. No INS, no merges, no
encryption, no identifier index.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import sys
import threading
import time

Row = tuple[float, str, str, str, str, str, bytes]
Patient = tuple[str, dict[str, list[list[str]]]] | None  # PID-3's IPP, the message's PID and PV1
Job = tuple[Row, Patient, asyncio.AbstractEventLoop, "asyncio.Future[None]"]

_INSERT = ("INSERT INTO inbound (received_at, sending_application, sending_facility,"
           " message_type, control_id, version, raw) VALUES (?, ?, ?, ?, ?, ?, ?)")


def open_database(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS inbound (id INTEGER PRIMARY KEY, received_at REAL,"
               " sending_application TEXT, sending_facility TEXT, message_type TEXT,"
               " control_id TEXT, version TEXT, raw BLOB)")
    db.execute("CREATE TABLE IF NOT EXISTS patients (id INTEGER PRIMARY KEY, ipp TEXT UNIQUE,"
               " context BLOB, updated_at REAL, inbound_id INTEGER)")
    db.execute("CREATE TABLE IF NOT EXISTS patient_history (id INTEGER PRIMARY KEY,"
               " patient_id INTEGER, inbound_id INTEGER, event TEXT, at REAL)")
    db.execute("CREATE INDEX IF NOT EXISTS patient_history_by_patient"
               " ON patient_history (patient_id, id)")
    return db


def write_batches(db: sqlite3.Connection, jobs: queue.SimpleQueue[Job]) -> None:
    """The writer thread: one transaction for all that is queued, then wake the callers."""
    while True:
        batch = [jobs.get()]
        while True:
            try:
                batch.append(jobs.get_nowait())
            except queue.Empty:
                break
        db.execute("BEGIN")
        if any(patient is not None for _, patient, _, _ in batch):
            for row, patient, _, _ in batch:
                inbound_id = db.execute(_INSERT, row).lastrowid
                if patient is not None:
                    _apply_patient(db, patient, row[3], inbound_id or 0, row[0])
        else:
            db.executemany(_INSERT, [row for row, _, _, _ in batch])
        db.execute("COMMIT")
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, _, loop, future in batch:
            by_loop.setdefault(loop, []).append(future)
        for loop, futures in by_loop.items():
            loop.call_soon_threadsafe(_wake, futures)


def _apply_patient(db: sqlite3.Connection, patient: tuple[str, dict[str, list[list[str]]]],
                   message_type: str, inbound_id: int, now: float) -> None:
    ipp, segments = patient
    found = db.execute("SELECT id, context FROM patients WHERE ipp = ?", (ipp,)).fetchone()
    context = json.loads(found[1]) if found is not None else {}
    context.update(segments)
    context["last_event"] = message_type
    blob = json.dumps(context).encode()
    if found is None:
        patient_id = db.execute("INSERT INTO patients (ipp, context, updated_at, inbound_id)"
                                " VALUES (?, ?, ?, ?)", (ipp, blob, now, inbound_id)).lastrowid
    else:
        patient_id = found[0]
        db.execute("UPDATE patients SET context = ?, updated_at = ?, inbound_id = ? WHERE id = ?",
                   (blob, now, inbound_id, patient_id))
    db.execute("INSERT INTO patient_history (patient_id, inbound_id, event, at)"
               " VALUES (?, ?, ?, ?)", (patient_id, inbound_id, message_type, now))


def _patient(raw: bytes) -> Patient:
    """PID-3's first IPP and the PID and PV1 fields split into components (None: no PID)."""
    segments = {line[:3]: line.split("|") for line in raw.decode().split("\r")
                if line[:3] in ("PID", "PV1")}
    pid = segments.get("PID")
    if pid is None or len(pid) < 4:
        return None
    return (pid[3].split("^")[0],
            {name: [field.split("^") for field in fields] for name, fields in segments.items()})


def _wake(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        future.set_result(None)


def serve(port: int, jobs: queue.SimpleQueue[Job], patient_context: bool) -> None:
    counter = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal counter
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await reader.readuntil(b"\x1c\r")
                raw = frame[frame.index(b"\x0b") + 1:-2]
                msh = raw[:raw.find(b"\r")].decode().split("|")
                future: asyncio.Future[None] = loop.create_future()
                patient = (_patient(raw) if patient_context and msh[8].startswith("ADT")
                           else None)
                jobs.put(((time.time(), msh[2], msh[3], msh[8], msh[9], msh[11], raw),
                          patient, loop, future))
                await future
                counter += 1
                event = msh[8].split("^")
                ack = (f"MSH|^~\\&|{msh[4]}|{msh[5]}|{msh[2]}|{msh[3]}|"
                       f"{time.strftime('%Y%m%d%H%M%S')}||ACK^{event[1] if len(event) > 1 else ''}"
                       f"^ACK|P{counter}|P|{msh[11]}\rMSA|AA|{msh[9]}\r")
                writer.write(b"\x0b" + ack.encode() + b"\x1c\r")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, limit=64 * 1024 * 1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":
    jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
    threading.Thread(target=write_batches, args=(open_database(sys.argv[2]), jobs),
                     daemon=True).start()
    serve(int(sys.argv[1]), jobs, "--patient-context" in sys.argv[3:])
