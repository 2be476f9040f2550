"""Delivery benchmark: HL7 over MLLP in, mail accepted by a real Postfix (SMTP 250) out, against
aiosmtplib pushing the same mails straight to the same Postfix with nothing stored, in one run.

    .venv/bin/python bench/delivery.py [--messages 2000] [--connections 4] [--concurrency 8]
        [--batch-size 50] [--message-kb 70] [--document-processes 2]

Needs root and Debian's postfix (`tests/support/mailserver.py` runs a private Postfix on loopback:
submission with STARTTLS and a required client certificate, delivery into virtual Maildirs).

The connector runs as a `serve` subprocess, as in production: SQLite store (fsync before every
ACK) in a temporary directory, one tenant whose SMTP transport points at the Postfix submission
port with the harness's CA and client certificate. This process drives it, off the connector's
event loop: `--messages` CI-SIS MDM^T02 requests (the ANS fixture mdm-t02-initial with its PDF
swapped for a smaller valid one, about 70 KB each; every message has its own MSH-10 and document
id) over `--connections` MLLP connections, closed loop, recording when each ACK (AA) arrives.
The connector stores each request with its mail and its delivery worker (`--concurrency`
SMTP connections, `--batch-size` mails leased and sent per connection) submits them. A mail's
`sent_at` (the outbox row, read through a read-only store beside the server) is when Postfix
answered 250. Printed for the connector: mails/s sustained = mails / (last sent_at - first ACK),
and p50/p99 of sent_at - ACK time (how long an acknowledged request waits for its mail).

Baseline: the mail the connector built during the warm-up, sent as many times by aiosmtplib over
STARTTLS with the client certificate, `--concurrency` connections each reopened every
`--batch-size` mails (the connector's connection pattern), MAIL/RCPT/DATA as the connector does.
Its p50/p99 are per-mail SMTP transaction times (MAIL to the 250 after DATA). Between phases
Postfix finishes delivering to the Maildirs and the mailboxes are emptied, so that a phase never
competes with the previous one's local delivery. Each phase also prints the CPU seconds used by
the connector, this process, Postfix and the rest of the machine, and warns when something else
was busy (the figures are then skewed).

Defaults, measured on the 2-core machine with 1,500 requests: `[intake] document_processes = 2`
(the CI-SIS checks and mail building in two worker processes) gives 101-107 mails/s at 4 MLLP
connections (101-121 at 8), about 11-12 ms of connector CPU per request and its mail, p50 ACK to
250 about 0.12 s. With `--document-processes 0` (threads: the GIL keeps intake and delivery on one
core) the same machine gives 73-84 mails/s, and p50 0.22-0.29 s. The machine's speed varies by
up to 30% from one run to the next: compare configurations in alternation.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiosmtplib  # noqa: E402

from connector.delivery.job import MailJob  # noqa: E402
from connector.mllp.client import MLLPClient  # noqa: E402
from connector.store.model import OutboxState, OutboxSummary  # noqa: E402
from connector.store.sqlite import SQLiteStore  # noqa: E402
from tests.support.mailserver import MailServer, postfix_unavailable  # noqa: E402
from tests.support.safeguards import sending_safeguards  # noqa: E402

SHARED = Path(os.environ.get("MSSCONNECTOR_SHARED_DIR", ROOT.parent / "shared"))
MDM_FIXTURE = SHARED / "fixtures" / "hl7v2" / "cisis-trans-cda-2.1" / "mdm-t02-initial" \
    / "message.er7"
RECIPIENT = "adam.hoda@test-ci-sis.mssante.fr"  # the fixture's PRT RCT
SENDER = "pfi-auto@chu-test.mssante.fr"  # the tenant's application mailbox
TENANT = "bench"
HOST = "127.0.0.1"
CONTROL_ID = b"|015|P|"  # the fixture's MSH-10, with its neighbours to make it unique
DOCUMENT_ID = b"1.2.250.1.71.4.2.2.120456789.71024000081"  # TXA-12.1 and the CDA's id/@root
WARMUP = 20
FINAL = (OutboxState.SENT, OutboxState.FAILED, OutboxState.DEAD, OutboxState.CANCELLED)


# -- the ~70 KB request ---------------------------------------------------------------------------


def small_pdf(size: int, seed: int = 70) -> bytes:
    """A valid one-page PDF of about `size` bytes: a title and a noise image (incompressible,
    as the images and Flate streams of a real report are)."""
    rng = random.Random(seed)
    width = 256
    height = max(1, (size - 900) // width)
    image = rng.randbytes(width * height)
    content = (b"BT /F1 14 Tf 72 780 Td (Compte rendu - mssante-connector delivery benchmark) Tj"
               b" ET\nq 400 0 0 %d 97 300 cm /Im1 Do Q\n" % (400 * height // width))
    objects = [
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]/Contents 4 0 R"
        b"/Resources<</Font<</F1 5 0 R>>/XObject<</Im1 6 0 R>>>>>>",
        b"<</Length %d>>stream\n%s\nendstream" % (len(content), content),
        b"<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>",
        b"<</Type/XObject/Subtype/Image/Width %d/Height %d/ColorSpace/DeviceGray"
        b"/BitsPerComponent 8/Length %d>>stream\n%s\nendstream"
        % (width, height, len(image), image),
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<</Size %d/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1,
                                                                              xref)
    return bytes(out)


@dataclass(frozen=True)
class Template:
    """The fixture split around its OBX-1 CDA, with the CDA's PDF replaced."""

    head: bytes  # the segments up to OBX-1's base64 (MSH-10, TXA-12 inside)
    cda: bytes  # decoded CDA (its id inside)
    tail: bytes
    pdf_size: int

    def message(self, control_id: str, n: int) -> bytes:
        """A request with its own MSH-10 and its own document id (TXA-12 and the CDA's)."""
        doc = DOCUMENT_ID + b".%d" % n
        head = self.head.replace(CONTROL_ID, f"|{control_id}|P|".encode(), 1)
        head = head.replace(DOCUMENT_ID + b"^", doc + b"^", 1)
        cda = self.cda.replace(b'root="' + DOCUMENT_ID + b'"', b'root="' + doc + b'"', 1)
        return head + base64.b64encode(cda) + self.tail


def _template(pdf_size: int) -> Template:
    raw = MDM_FIXTURE.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    segments = raw.rstrip(b"\r").split(b"\r")
    index = next(i for i, s in enumerate(segments) if s.startswith(b"OBX|1|ED|"))
    fields = segments[index].split(b"|")
    ed = fields[5].split(b"^")  # ^text^XML^Base64^<data>
    cda = base64.b64decode(ed[4])
    body = re.search(rb'<text mediaType="application/pdf" representation="B64">([^<]*)</text>',
                     cda)
    if body is None:
        raise SystemExit(f"{MDM_FIXTURE}: no level-1 PDF body in OBX-1's CDA")
    cda = cda[:body.start(1)] + base64.b64encode(small_pdf(pdf_size)) + cda[body.end(1):]
    head = b"\r".join(segments[:index]) + b"\r" + b"|".join(fields[:5]) + b"|" \
        + b"^".join(ed[:4]) + b"^"
    tail = b"|" + b"|".join(fields[6:]) + b"\r" + b"\r".join(segments[index + 1:]) + b"\r"
    if CONTROL_ID not in head or DOCUMENT_ID + b"^" not in head \
            or b'root="' + DOCUMENT_ID + b'"' not in cda:
        raise SystemExit(f"{MDM_FIXTURE}: MSH-10 or the document id is not where expected")
    return Template(head, cda, tail, pdf_size)


def build_template(message_bytes: int) -> Template:
    """The request at about `message_bytes`: the PDF grows 16/9 times in the message (base64 in
    the CDA, the CDA in base64 in OBX-5)."""
    probe = _template(30_000)
    size = len(probe.message("X", 0))
    return _template(max(2_000, 30_000 + (message_bytes - size) * 9 // 16))


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"the connector exited with {proc.returncode}:\n{tail(log)}")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"port {port} never opened:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"({path} missing)"


def write_config(workdir: Path, mail: MailServer, port: int, concurrency: int,
                 batch_size: int, document_processes: int) -> Path:
    config = workdir / "bench.toml"
    config.write_text(f"""
data_dir = "{workdir / 'var'}"
{sending_safeguards(workdir, RECIPIENT.partition("@")[2])}
[logging]
level = "warning"
[intake]
document_processes = {document_processes}
[[tenants]]
id = "{TENANT}"
oid = "1.2.250.1.71.4.2.2.1120456789"
[[tenants.listeners]]
host = "{HOST}"
port = {port}
max_connections = 256
[tenants.mailbox]
address = "{SENDER}"
nil = "DEV935997"
[tenants.cisis]
sending_matrix = "ans-examples"
schematron_policy = "off"
[tenants.transport]
kind = "smtp"
host = "{HOST}"
port = {mail.submission_port}
ca_bundle = "{mail.ca.certificate}"
client_certificate = "{mail.client_cert.certificate}"
client_private_key = "{mail.client_cert.private_key}"
[tenants.delivery]
concurrency = {concurrency}
batch_size = {batch_size}
""", encoding="utf-8")
    return config


def start_connector(config: Path, log: Path) -> subprocess.Popen[bytes]:
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        # Own session: a Ctrl-C reaches this process only, which then stops the connector.
        return subprocess.Popen([sys.executable, "-m", "connector", "serve", "--config",
                                 str(config)], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        os.close(out)


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def delivered(mail: MailServer, address: str = RECIPIENT) -> int:
    base = mail.mailbox_dir(address)
    return sum(len(os.listdir(base / sub)) for sub in ("new", "cur"))


async def wait_delivered(mail: MailServer, count: int, timeout: float) -> int:
    """Waits until Postfix has written `count` mails to the recipient's Maildir."""
    deadline = time.monotonic() + timeout
    while (found := delivered(mail)) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    if found < count:
        print(f"  warning: {found}/{count} mails in the Maildir after {timeout:.0f}s; "
              f"postfix queue:\n{mail.queue()[-2000:]}", file=sys.stderr)
    return found


# -- the connector phase ------------------------------------------------------------------------


async def drive(port: int, payloads: list[tuple[str, bytes]], connections: int
                ) -> tuple[dict[str, float], float]:
    """Sends every payload over `connections` MLLP connections (each sends, waits for its ACK,
    sends the next); returns the epoch time of each ACK by MSH-10, and the start time."""
    acks: dict[str, float] = {}
    todo: Iterator[tuple[str, bytes]] = iter(payloads)

    async def connection() -> None:
        async with MLLPClient(HOST, port, timeout=120.0) as client:
            for control_id, payload in todo:
                ack = await client.send(payload)
                acks[control_id] = time.time()
                if b"MSA|AA|" not in ack:
                    segments = ack.replace(b"\r", b" | ")[:400].decode(errors="replace")
                    raise RuntimeError(f"{control_id} not accepted: {segments}")

    started = time.time()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return acks, started


async def outbox_rows(store: SQLiteStore, inbound_ids: set[int], limit: int
                      ) -> list[OutboxSummary]:
    rows = await store.list_outbox(tenant_id=TENANT, limit=limit)
    return [row for row in rows if row.inbound_id in inbound_ids]


async def inbound_ids(store: SQLiteStore, control_ids: set[str], limit: int) -> dict[str, int]:
    rows = await store.list_inbound(tenant_id=TENANT, limit=limit)
    return {row.control_id: row.id for row in rows if row.control_id in control_ids}


async def wait_settled(store: SQLiteStore, ids: set[int], expected: int, limit: int,
                       timeout: float) -> list[OutboxSummary]:
    """Polls the outbox until the `expected` mails of `ids` are settled (sent or given up)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await outbox_rows(store, ids, limit)
        if len(rows) >= expected and all(row.state in FINAL for row in rows):
            return rows
        if time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.5)


def requests(template: Template, messages: int, tag: str) -> list[tuple[str, bytes]]:
    """(MSH-10, request) pairs, built before a phase so that the load costs no more than I/O."""
    return [(f"{tag}{n}", template.message(f"{tag}{n}", n)) for n in range(messages)]


async def connector_phase(store: SQLiteStore, port: int, payloads: list[tuple[str, bytes]],
                          connections: int) -> dict[str, float]:
    messages = len(payloads)
    acks, started = await drive(port, payloads, connections)
    limit = 2 * messages + 10 * WARMUP + 100
    ids = await inbound_ids(store, set(acks), limit)
    by_inbound = {inbound: control for control, inbound in ids.items()}
    rows = await wait_settled(store, set(by_inbound), messages, limit,
                              timeout=60 + messages / 10)
    # (when Postfix said 250, when the request's ACK arrived) for each mail sent
    sent = [(row.sent_at, acks[by_inbound[row.inbound_id]]) for row in rows
            if row.state is OutboxState.SENT and row.sent_at is not None
            and row.inbound_id is not None]
    if not sent:
        raise RuntimeError("no mail was sent")
    waits = sorted(sent_at - acked for sent_at, acked in sent)
    first_ack, last_ack = min(acks.values()), max(acks.values())
    first_sent, last_sent = min(s for s, _ in sent), max(s for s, _ in sent)
    return {
        "mails": len(sent),
        "not_sent": messages - len(sent),
        "rate": len(sent) / (last_sent - first_ack),
        "p50_ms": 1000 * statistics.median(waits),
        "p99_ms": 1000 * percentile(waits, 0.99),
        "ingest_rate": messages / (last_ack - started),
        "drain_s": last_sent - last_ack,
        "send_rate": len(sent) / max(1e-9, last_sent - first_sent),
    }


def _proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (fields[0] is field 3, state)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()
    except OSError:  # gone meanwhile
        return None


class CpuMeter:
    """CPU seconds used during a phase, from /proc: the connector (every process of its
    session: the server with all its threads, and its document worker processes), this process
    (the MLLP load, or the baseline's SMTP client), Postfix (every process of the master's
    session, plus what the master reaped) and the rest of the machine (the kernel, and anything
    else running: another test run on the same machine skews the figures)."""

    def __init__(self, pid: int, mail: MailServer) -> None:
        self.pid = pid
        self.master = mail.queue_dir / "pid" / "master.pid"
        self.tick = os.sysconf("SC_CLK_TCK")
        self.start = self._sample()

    def _postfix(self) -> float:
        try:
            master = self.master.read_text().split()[0]
        except (OSError, IndexError):
            return 0.0
        return self._session(master)

    def _session(self, leader: str) -> float:
        """CPU seconds of the processes of `leader`'s session, and of its reaped children."""
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            fields = _proc_stat(entry.name)
            if fields is None or fields[3] != leader:  # field 6: session id
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
            if entry.name == leader:  # the children that exited, reaped by the leader
                total += int(fields[13]) + int(fields[14])
        return total / self.tick

    def _sample(self) -> tuple[float, ...]:
        with open("/proc/stat", encoding="ascii") as fh:
            values = [int(v) for v in fh.readline().split()[1:8]]
        idle = values[3] + values[4]  # idle + iowait
        times = os.times()
        return (time.monotonic(), (sum(values) - idle) / self.tick,
                self._session(str(self.pid)), times.user + times.system, self._postfix())

    def stop(self) -> dict[str, float]:
        wall, busy, connector, own, postfix = (
            b - a for a, b in zip(self.start, self._sample(), strict=True))
        return {"wall": wall, "connector": connector, "bench": own, "postfix": postfix,
                "rest": max(0.0, busy - connector - own - postfix),
                "idle": max(0.0, wall * (os.cpu_count() or 1) - busy)}


def cpu_line(name: str, cpu: dict[str, float], mails: float) -> str:
    parts = [f"{key} {cpu[key]:.1f}s ({1000 * cpu[key] / mails:.1f} ms/mail)"
             for key in ("connector", "bench", "postfix", "rest")]
    return (f"  CPU {name} ({cpu['wall']:.1f}s wall x {os.cpu_count()} cores): "
            + ", ".join(parts) + f", idle {cpu['idle']:.1f}s")


def percentile(values: list[float], q: float) -> float:
    return values[max(0, min(len(values) - 1, int(len(values) * q + 0.5) - 1))]


# -- the baseline phase ---------------------------------------------------------------------------


async def baseline_phase(mail: MailServer, job: MailJob, messages: int, concurrency: int,
                         batch_size: int) -> dict[str, float]:
    """The same mail `messages` times straight to Postfix: aiosmtplib, STARTTLS with the client
    certificate, `concurrency` connections each reopened every `batch_size` mails."""
    context = mail.client_context()
    left = messages
    latencies: list[float] = []

    async def connection() -> None:
        nonlocal left
        while left > 0:
            client = aiosmtplib.SMTP(hostname=HOST, port=mail.submission_port, start_tls=False,
                                     tls_context=context, timeout=60)
            await client.connect()
            await client.ehlo()
            await client.starttls(server_hostname=HOST)
            await client.ehlo()
            try:
                for _ in range(batch_size):
                    if left <= 0:
                        break
                    left -= 1
                    start = time.perf_counter()
                    await client.mail(job.mail_from)
                    await client.rcpt(job.rcpt_to)
                    reply = await client.data(job.message)
                    latencies.append(time.perf_counter() - start)
                    if reply.code != 250:
                        raise RuntimeError(f"baseline: DATA answered {reply.code}")
            finally:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "mails": len(latencies),
        "rate": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * percentile(latencies, 0.99),
    }


# -- the run ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, mail: MailServer, port: int, store_path: Path,
              proc: subprocess.Popen[bytes], log: Path) -> None:
    await wait_port(port, proc, log)
    template = build_template(args.message_kb * 1000)
    sample = template.message("W0", 0)
    store = SQLiteStore(store_path)
    store.open(read_only=True)
    try:
        # Warm-up: the connector's first requests (imports, lxml) and the mail for the baseline.
        warm = await connector_phase(store, port, requests(template, WARMUP, "W"), 1)
        if warm["mails"] != WARMUP:
            raise RuntimeError(f"warm-up: {warm['not_sent']} mail(s) not sent:\n{tail(log)}")
        rows = await store.list_outbox(tenant_id=TENANT, limit=1)
        detail = await store.get_outbox(rows[0].id)
        assert detail is not None
        job = MailJob.decode(detail.payload)
        await wait_delivered(mail, WARMUP, 30)
        mail.clear()

        print(f"cpus={os.cpu_count()} messages={args.messages} connections={args.connections} "
              f"concurrency={args.concurrency} batch_size={args.batch_size} "
              f"document_processes={args.document_processes}")
        print(f"request {len(sample) / 1000:.1f} KB (PDF {template.pdf_size / 1000:.1f} KB), "
              f"mail {len(job.message) / 1000:.1f} KB to {job.rcpt_to}; connector: SQLite WAL, "
              "fsync before every ACK, serve subprocess")
        drain_timeout = 60 + args.messages / 20
        meter = CpuMeter(proc.pid, mail)
        base = await baseline_phase(mail, job, args.messages, args.concurrency, args.batch_size)
        base_cpu = meter.stop()
        base_delivered = await wait_delivered(mail, args.messages, drain_timeout)
        mail.clear()
        payloads = requests(template, args.messages, f"M{os.getpid()}N")
        meter = CpuMeter(proc.pid, mail)
        mine = await connector_phase(store, port, payloads, args.connections)
        mine_cpu = meter.stop()
        mine_delivered = await wait_delivered(mail, int(mine["mails"]), drain_timeout)
    finally:
        await store.close()

    header = (f"{'server':<11}{'mails':>7}{'mails/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}"
              f"{'in Maildir':>12}  latency measured")
    print(header)
    print("-" * (len(header) + 24))
    print(f"{'baseline':<11}{base['mails']:>7.0f}{base['rate']:>9.1f}{base['p50_ms']:>9.1f}"
          f"{base['p99_ms']:>9.1f}{'':>8}{base_delivered:>12}  MAIL to 250 after DATA")
    print(f"{'connector':<11}{mine['mails']:>7.0f}{mine['rate']:>9.1f}{mine['p50_ms']:>9.1f}"
          f"{mine['p99_ms']:>9.1f}{mine['rate'] / base['rate']:>7.2f}x{mine_delivered:>12}"
          "  ACK (AA) to 250 (outbox sent_at)")
    print(f"connector: ingest {mine['ingest_rate']:.1f} msgs/s (ACKs), SMTP submissions "
          f"{mine['send_rate']:.1f} mails/s (first to last sent_at), backlog drained "
          f"{mine['drain_s']:.1f}s after the last ACK"
          + (f"; {mine['not_sent']:.0f} NOT SENT" if mine["not_sent"] else ""))
    print(cpu_line("baseline ", base_cpu, base["mails"]))
    print(cpu_line("connector", mine_cpu, mine["mails"]))
    for name, cpu in (("baseline", base_cpu), ("connector", mine_cpu)):
        if cpu["rest"] > 0.15 * cpu["wall"] * (os.cpu_count() or 1):
            print(f"  warning: something else used {cpu['rest']:.1f}s of CPU during the {name} "
                  "phase (another process on this machine?): its figures are skewed")
    target = "meets" if mine["rate"] >= 100 else "is BELOW"
    print(f"target 100 mails/s sustained: the connector {target} it ({mine['rate']:.1f})")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="requests (one mail each)")
    parser.add_argument("--connections", type=int, default=4, help="MLLP connections")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="[tenants.delivery] concurrency: SMTP connections")
    parser.add_argument("--batch-size", type=int, default=50,
                        help="[tenants.delivery] batch_size: mails per SMTP connection")
    parser.add_argument("--message-kb", type=int, default=70, help="request size")
    parser.add_argument("--document-processes", type=int, default=2,
                        help="[intake] document_processes of the connector (0: threads)")
    args = parser.parse_args()
    reason = postfix_unavailable()
    if reason is not None:
        raise SystemExit(f"cannot run: {reason}")
    if not MDM_FIXTURE.is_file():
        raise SystemExit(f"fixture not found: {MDM_FIXTURE} (set MSSCONNECTOR_SHARED_DIR)")
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="mssconnector-bench-",
                                    dir=ROOT / "var" if (ROOT / "var").is_dir() else None))
    mail: MailServer | None = None
    proc: subprocess.Popen[bytes] | None = None
    log = workdir / "connector.log"
    try:
        mail = MailServer(mailboxes=[RECIPIENT, SENDER])
        mail.start()
        port = free_port()
        config = write_config(workdir, mail, port, args.concurrency, args.batch_size,
                              args.document_processes)
        proc = start_connector(config, log)
        asyncio.run(run(args, mail, port, workdir / "var" / "connector.db", proc, log))
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        sys.exit(130)
    except Exception:
        if proc is not None:
            print(f"connector log tail:\n{tail(log)}", file=sys.stderr)
        if mail is not None:
            print(f"postfix log tail:\n{mail.log_tail(20)}", file=sys.stderr)
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not skip clean-up
            signal.signal(sig, signal.SIG_IGN)
        stop_process(proc)
        if mail is not None:
            mail.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
