"""The issue's "quick prototype", the second reference of `bench/ingest.py --prototype`.

    .venv/bin/python bench/prototype_server.py PORT DATABASE

Durable, and nothing else: each message's raw bytes and MSH fields go into SQLite through one
writer thread that batches whatever is queued into one transaction (WAL, `synchronous=FULL`:
fsynced in COMMIT), and the ACK (AA, always) is built from MSH alone. No charset, no validation,
no routing, no patient context, no retransmission check, no metrics, no logs: the floor of a
Python MLLP server that fsyncs before it ACKs, on the machine of the run. Not a product.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import sys
import threading
import time

Row = tuple[float, str, str, str, str, str, bytes]
Job = tuple[Row, asyncio.AbstractEventLoop, "asyncio.Future[None]"]

_INSERT = ("INSERT INTO inbound (received_at, sending_application, sending_facility,"
           " message_type, control_id, version, raw) VALUES (?, ?, ?, ?, ?, ?, ?)")


def open_database(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS inbound (id INTEGER PRIMARY KEY, received_at REAL,"
               " sending_application TEXT, sending_facility TEXT, message_type TEXT,"
               " control_id TEXT, version TEXT, raw BLOB)")
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
        db.executemany(_INSERT, [row for row, _, _ in batch])
        db.execute("COMMIT")
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, loop, future in batch:
            by_loop.setdefault(loop, []).append(future)
        for loop, futures in by_loop.items():
            loop.call_soon_threadsafe(_wake, futures)


def _wake(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        future.set_result(None)


def serve(port: int, jobs: queue.SimpleQueue[Job]) -> None:
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
                jobs.put(((time.time(), msh[2], msh[3], msh[8], msh[9], msh[11], raw),
                          loop, future))
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
    serve(int(sys.argv[1]), jobs)
