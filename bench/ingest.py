"""Ingest benchmark: the connector (fsync before every ACK) against python-hl7's asyncio MLLP
server doing parse + ACK with nothing stored, driven by the same load in the same run.

    .venv/bin/python bench/ingest.py [--seconds 5] [--connections 4 16] [--kinds adt oru]
                                     [--rounds 1] [--patients 1] [--prototype]
                                     [--prototype-patients] [--compare TREE]

Each server runs in its own process; the load runs in a third process (closed loop: each
connection sends one message and waits for its ACK). Every message has a unique MSH-10 and
content, so the connector never short-circuits on retransmission detection. Prints msgs/s and
p50/p99 ACK latency per server, the ratio connector/baseline, each server's CPU per message (all
its threads, user + system, from /proc: on a shared machine it moves less than msgs/s, which also
counts the time a server waited for a core), and the ACK codes received. Three more columns
say where the limit is: `loop us`, the CPU per message of the server's main thread (the event
loop, and the GIL it holds most of the time); `busy`, the share of a core that thread takes at
the rate measured (near 100%, the loop is what limits msgs/s); `load us`, the CPU per message
of the load process driving that server (the other core's main user). For the connectors,
`jobs/c` is the jobs per group commit during the slices (its /metrics, served on a port of its
own): how many messages share each COMMIT and each WAL flush.

Every ADT is the fixture's patient unless `--patients N` (N > 1) makes them cycle through N
patients (distinct IPP and INS, same length), so that the connector creates patients instead of
updating one.

The connector runs with no legacy mapping configured, so it answers the ORU (a bare PDF, no CI-SIS
profile) AE and keeps it as rejected: stored and synced like an accepted message (the same row,
the same 70 KB payload record), without the document stage that an accepted legacy ORU would
start (`bench/delivery.py` measures that path). The ADT is accepted (AA) and updates the patient
context in the same commit.

Three more servers can run in the same slices, each with its ratio to the baseline:
`--prototype` adds `bench/prototype_server.py`, the issue's "quick prototype" (durable and nothing
else: raw bytes and MSH fields into SQLite through one writer thread batching commits, an ACK from
MSH): the floor of a Python server that fsyncs before it ACKs, on the machine of the run.
`--prototype-patients` adds the same prototype with `--patient-context` (the ADT's patient
context read, merged and written back in the commit before its ACK, as issue 8 asks, in its
leanest form). `--compare TREE` adds the connector of another checkout (a `git worktree` with a
change), for an A/B of that change under the same conditions.

On a shared machine, other work comes and goes within seconds: `--rounds N` splits each
measurement into N slices of `--seconds / N`, alternating baseline and connector (B C, C B, ...),
so both see the same conditions; the figures are over all slices, and the last column gives the
range of the per-slice ratios. With more servers, their order rotates by one from one round to
the next.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MSSCONNECTOR_SHARED_DIR", ROOT.parent / "shared"))
ADT_FIXTURE = SHARED / "fixtures" / "hl7v2" / "pam-fr-2.11" / "adt-a01-admission.er7"

BASELINE = r"""
import asyncio, sys
import hl7.mllp

async def handle(reader, writer):
    try:
        while not writer.is_closing():
            message = await reader.readmessage()
            writer.writemessage(message.create_ack())
            await writer.drain()
    except asyncio.IncompleteReadError:
        pass
    finally:
        writer.close()

async def main():
    server = await hl7.mllp.start_hl7_server(handle, host="127.0.0.1", port=int(sys.argv[1]),
                                             limit=64 * 1024 * 1024)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def adt_template() -> bytes:
    return ADT_FIXTURE.read_bytes().replace(b"\n", b"\r")


def oru_template(size: int = 70_000) -> bytes:
    """A legacy ORU^R01 carrying a base64 PDF in OBX-5 (about `size` bytes in all)."""
    rng = random.Random(7)
    raw_pdf = b"%PDF-1.4\n" + bytes(rng.getrandbits(8) for _ in range(size * 3 // 4 - 400))
    pdf = base64.b64encode(raw_pdf)
    segments = [
        b"MSH|^~\\&|DPI|CHU-X|PFI|CHU-X|20240306111154||ORU^R01^ORU_R01|3975|P|2.5|||||FRA|"
        b"UNICODE UTF-8",
        b"PID|1||000003^^^CHU-X&000897406&N^PI||PAT-TROIS^DOMINIQUE^^^^^L||19790328|F",
        b"PV1|1|I|UFNEPH",
        b"ORC|NW|98765431",
        b"OBR|1|98765431||11502-2^CR d'examens biologiques^LN|||20240306101500",
        b"OBX|1|ED|11502-2^CR d'examens biologiques^LN||^application^pdf^Base64^" + pdf
        + b"||||||F",
    ]
    return b"\r".join(segments) + b"\r"


def for_patient(template: bytes, index: int) -> bytes:
    """The ADT fixture for patient `index`: its IPP and its INS, the same length as the fixture's
    (the fixture's own patient is 000003)."""
    return (template.replace(b"|000003^^^", b"|%06d^^^" % index, 1)
            .replace(b"~279035121518989^", b"~279035121%06d^" % index, 1))


def unique(template: bytes, n: int, tag: str) -> bytes:
    return template.replace(b"|3975|", f"|{tag}{n}|".encode(), 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(400):
        if process.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


# -- load process ---------------------------------------------------------------------------------


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK frame ('?' when it has none). The segment is looked for after a segment
    separator: python-hl7's random ACK control ids can end with "MSA"."""
    start = ack.replace(b"\n", b"\r").find(b"\rMSA|")
    return ack[start + 5:start + 7].decode("ascii", "replace") if start >= 0 else "?"


async def _connection(port: int, template: bytes, tag: str, deadline: float, warmup_until: float,
                      latencies: list[float], codes: Counter[str],
                      patients: tuple[int, int, int] = (1, 0, 1)) -> int:
    """`patients`: (how many, this connection's first, the step between its messages'): with
    more than one, the ADTs cycle through distinct patients."""
    count, first, step = patients
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    n = 0
    try:
        while True:
            now = time.perf_counter()
            if now >= deadline:
                break
            payload = unique(template, n, tag)
            if count > 1:
                payload = for_patient(payload, (first + n * step) % count)
            n += 1
            start = time.perf_counter()
            writer.write(b"\x0b" + payload + b"\x1c\r")
            ack = await reader.readuntil(b"\x1c\r")
            end = time.perf_counter()
            if start >= warmup_until:
                latencies.append(end - start)
                codes[ack_code(ack)] += 1
    finally:
        writer.close()
    return n


async def _load(port: int, connections: int, seconds: float, kind: str, run_tag: str,
                patients: int = 1) -> dict:
    template = adt_template() if kind == "adt" else oru_template()
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    cpu = time.process_time()
    start = time.perf_counter()
    warmup_until = start + min(1.0, seconds / 5)
    deadline = warmup_until + seconds
    sent = await asyncio.gather(*(
        _connection(port, template, f"{run_tag}C{c}N", deadline, warmup_until, latencies, codes,
                    (patients if kind == "adt" else 1, c, connections))
        for c in range(connections)))
    return {"seconds": seconds, "latencies": latencies, "size": len(template), "acks": codes,
            "messages": sum(sent), "load_cpu": time.process_time() - cpu}


def run_load(port: int, connections: int, seconds: float, kind: str, run_tag: str,
             server_pid: int | None = None, patients: int = 1) -> dict:
    """One slice of load; with `server_pid`, also the server's CPU seconds during it, all its
    threads (`cpu`) and its main thread, the event loop's (`loop_cpu`), from /proc: None where
    there is no /proc."""
    before = process_cpu(server_pid) if server_pid else None
    loop_before = process_cpu(server_pid, server_pid) if server_pid else None
    out = subprocess.run(
        [sys.executable, __file__, "--load", str(port), str(connections), str(seconds), kind,
         run_tag, str(patients)], check=True, capture_output=True, text=True)
    result: dict = json.loads(out.stdout)
    after = process_cpu(server_pid) if server_pid else None
    loop_after = process_cpu(server_pid, server_pid) if server_pid else None
    result["cpu"] = after - before if before is not None and after is not None else None
    result["loop_cpu"] = (loop_after - loop_before
                          if loop_before is not None and loop_after is not None else None)
    return result


def process_cpu(pid: int, thread: int | None = None) -> float | None:
    """User + system CPU seconds of process `pid` so far: all its threads, or only `thread`
    (the main thread's id is the process id)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        stat = Path(path).read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(slices: list[dict]) -> dict:
    latencies = sorted(x for s in slices for x in s["latencies"])
    return {
        "rate": len(latencies) / sum(s["seconds"] for s in slices),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1],
        "size": slices[0]["size"],
        "acks": acks_label(sum((Counter(s["acks"]) for s in slices), Counter())),
        # CPU per message answered, warm-up included on both sides of the division: steadier
        # than msgs/s on a shared machine, since it does not count the time the server waited.
        "cpu_us": _per_message(slices, "cpu"),
        "loop_us": _per_message(slices, "loop_cpu"),
        "load_us": _per_message(slices, "load_cpu"),
        "jobs_per_commit": _jobs_per_commit(slices),
    }


def _jobs_per_commit(slices: list[dict]) -> float | None:
    """The jobs per group commit over the slices, from the connector's counters."""
    if any(s.get("commits") is None for s in slices):
        return None
    commits = sum(s["commits"][0] for s in slices)
    return sum(s["commits"][1] for s in slices) / commits if commits else None


def _per_message(slices: list[dict], key: str) -> float | None:
    """CPU µs per message sent, warm-up included on both sides of the division."""
    if any(s[key] is None for s in slices):
        return None
    return 1e6 * sum(s[key] for s in slices) / sum(s["messages"] for s in slices)


def acks_label(codes: Counter[str]) -> str:
    """The MSA-1 codes received, e.g. 'AA' or 'AA 98% AR 2%'."""
    total = sum(codes.values())
    if len(codes) == 1:
        return next(iter(codes))
    return " ".join(f"{code} {100 * n / total:.0f}%" for code, n in codes.most_common())


def measure(ports: dict[str, int], pids: dict[str, int], conns: int, seconds: float, kind: str,
            rounds: int, patients: int = 1, admins: dict[str, int] | None = None
            ) -> tuple[dict[str, dict], dict[str, list[float]]]:
    """Every server of `ports` ("B", the baseline, first) in `rounds` slices, their order
    rotated by one from one round to the next (two servers: B M, M B, ...); every slice has its
    own MSH-10s. The summary of each server, and the per-slice ratios of each other server to
    the baseline."""
    names = list(ports)
    slices: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            admin = (admins or {}).get(name)
            before = store_commits(admin) if admin else None
            result = run_load(ports[name], conns, seconds / rounds, kind, f"{name}{r}",
                              pids[name], patients)
            after = store_commits(admin) if admin else None
            result["commits"] = (tuple(b - a for a, b in zip(before, after, strict=True))
                                 if before is not None and after is not None else None)
            slices[name].append(result)
    ratios = {name: [len(m["latencies"]) / len(b["latencies"])
                     for b, m in zip(slices["B"], slices[name], strict=True)]
              for name in names if name != "B"}
    return {name: summary(slices[name]) for name in names}, ratios


# -- servers --------------------------------------------------------------------------------------


def store_commits(admin_port: int) -> tuple[float, float] | None:
    """The connector's group commits so far and the jobs they carried, from its /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    values = {sample.name: sample.value for family in text_string_to_metric_families(text)
              for sample in family.samples}
    commits = values.get("mssconnector_store_commits_total")
    jobs = values.get("mssconnector_store_committed_jobs_total")
    return None if commits is None or jobs is None else (commits, jobs)


def start_connector(workdir: Path, port: int, tree: Path = ROOT,
                    admin_port: int | None = None) -> subprocess.Popen[bytes]:
    """The connector of `tree` (a checkout: its `connector` package is the one imported), with
    its configuration and data under `workdir`, which is its own; with `admin_port`, its
    /metrics there (the jobs per group commit)."""
    workdir.mkdir()
    config = workdir / "bench.toml"
    admin = f"[admin]\nhost = \"127.0.0.1\"\nport = {admin_port}\n" if admin_port else ""
    config.write_text(f"""
data_dir = "{workdir / 'var'}"
{admin}[logging]
level = "warning"
[[tenants]]
id = "bench"
oid = "1.2.3"
[[tenants.listeners]]
host = "127.0.0.1"
port = {port}
max_connections = 256
""", encoding="utf-8")
    return subprocess.Popen([sys.executable, "-m", "connector", "serve", "--config", str(config)],
                            cwd=tree)


def start_baseline(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", BASELINE, str(port)])


def start_prototype(workdir: Path, port: int, *options: str) -> subprocess.Popen[bytes]:
    database = workdir / f"prototype{'-'.join(options)}.db"
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / "prototype_server.py"),
                             str(port), str(database), *options])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--kinds", nargs="+", default=["adt", "oru"])
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternating baseline/connector slices per measurement")
    parser.add_argument("--patients", type=int, default=1,
                        help="distinct patients the ADTs cycle through (1: the fixture's own, "
                             "every ADT updates it; more: new patients are created first)")
    parser.add_argument("--prototype", action="store_true",
                        help="also measure bench/prototype_server.py (the issue's quick "
                             "prototype: durable, nothing else) in the same slices")
    parser.add_argument("--prototype-patients", action="store_true",
                        help="also measure the prototype with --patient-context (the ADT's "
                             "patient context read, merged and written back before its ACK)")
    parser.add_argument("--compare", type=Path, metavar="TREE",
                        help="also measure the connector of another checkout (A/B of a change) "
                             "in the same slices")
    parser.add_argument("--load", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        port, conns, seconds, kind, tag, patients = args.load
        print(json.dumps(asyncio.run(_load(int(port), int(conns), float(seconds), kind, tag,
                                           int(patients)))))
        return

    with tempfile.TemporaryDirectory(dir=ROOT / "var" if (ROOT / "var").is_dir() else None
                                     ) as tmp:
        workdir = Path(tmp)
        # Each server: its one-letter name (in the slices' MSH-10s), its label, how it starts.
        admins = {"M": free_port(), "X": free_port()}  # the connectors' /metrics
        starts: dict[str, tuple[str, Callable[[int], subprocess.Popen[bytes]]]] = {
            "B": ("baseline", start_baseline),
            "M": ("connector", lambda port: start_connector(workdir / "connector", port,
                                                            admin_port=admins["M"]))}
        if args.prototype:
            starts["P"] = ("prototype", lambda port: start_prototype(workdir, port))
        if args.prototype_patients:
            starts["Q"] = ("proto+pc",
                           lambda port: start_prototype(workdir, port, "--patient-context"))
        if args.compare is not None:
            tree = args.compare.resolve()
            starts["X"] = ("compare",
                           lambda port: start_connector(workdir / "compare", port, tree,
                                                        admin_port=admins["X"]))
        ports: dict[str, int] = {}
        servers: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name, (_, start) in starts.items():  # in the try: a failed start stops the rest
                ports[name] = free_port()
                servers[name] = start(ports[name])
            for name, port in ports.items():
                asyncio.run(wait_port(port, servers[name]))
            print(f"cpus={os.cpu_count()} seconds={args.seconds} rounds={args.rounds} "
                  f"adt patients={args.patients} (connector: the commit fsynced before every ACK)")
            header = (f"{'load':<10}{'conns':>6} {'server':<10}{'msgs/s':>9}{'p50 ms':>9}"
                      f"{'p99 ms':>9}{'ratio':>8}{'slices':>13}{'CPU us/msg':>12}"
                      f"{'loop us':>9}{'busy':>6}{'load us':>9}{'jobs/c':>7}  ACKs")
            print(header)
            print("-" * len(header))
            for kind in args.kinds:
                for conns in args.connections:
                    results, ratios = measure(ports, {n: p.pid for n, p in servers.items()},
                                              conns, args.seconds, kind, args.rounds,
                                              args.patients,
                                              {n: admins[n] for n in servers if n in admins})
                    base = results["B"]
                    size = base["size"]
                    label = f"{kind} {size // 1000}KB" if size > 5000 else f"{kind} {size}B"
                    for name, r in results.items():
                        ratio = spread = ""
                        cpu, loop, load = (f"{r[key]:.0f}" if r[key] is not None else "-"
                                           for key in ("cpu_us", "loop_us", "load_us"))
                        jobs = (f"{r['jobs_per_commit']:.2f}"
                                if r["jobs_per_commit"] is not None else "-")
                        # The share of a core the loop thread takes at that rate: near 100%,
                        # the loop is what limits msgs/s.
                        busy = (f"{r['loop_us'] * r['rate'] / 1e4:.0f}%"
                                if r["loop_us"] is not None else "-")
                        if name != "B":
                            ratio = f"{r['rate'] / base['rate']:.2f}x"
                            if len(ratios[name]) > 1:
                                spread = f"{min(ratios[name]):.2f}-{max(ratios[name]):.2f}x"
                        print(f"{label:<10}{conns:>6} {starts[name][0]:<10}{r['rate']:>9.0f}"
                              f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{ratio:>8}{spread:>13}"
                              f"{cpu:>12}{loop:>9}{busy:>6}{load:>9}{jobs:>7}  {r['acks']}",
                              flush=True)
        finally:
            for server in servers.values():
                server.terminate()
                server.wait(15)


if __name__ == "__main__":
    main()
