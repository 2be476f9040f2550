"""`mssante-connector send FILE...`: an MLLP client for interface teams.

Each file holds one or many messages (a new message starts at each `MSH` segment; segments may be
separated by CR, LF or CRLF). Prints one line per message with its ACK code, exits 1 if any answer
is not positive or the peer fails, and shows a progress bar on a terminal when sending many.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl
import sys
from pathlib import Path
from typing import Any, TextIO

from connector.errors import ConfigError, ConnectorError, HL7ParseError
from connector.hl7.header import read_header
from connector.hl7.message import parse_message
from connector.mllp.client import MLLPClient

_SEGMENT_SPLIT = re.compile(rb"\r\n|\r|\n")
_PROGRESS_FROM = 20


def split_messages(data: bytes) -> list[bytes]:
    """Messages of a file, each with CR segment separators."""
    messages: list[list[bytes]] = []
    for line in _SEGMENT_SPLIT.split(data):
        if not line.strip():
            continue
        if line.lstrip(b"\xef\xbb\xbf").startswith(b"MSH") or not messages:
            messages.append([line.lstrip(b"\xef\xbb\xbf")])
        else:
            messages[-1].append(line)
    return [b"\r".join(segments) + b"\r" for segments in messages]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "send", help="send HL7 files over MLLP and print each ACK code")
    parser.add_argument("files", type=Path, nargs="+", metavar="FILE")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2575)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--tls-ca", type=Path, help="CA bundle to verify the server (enables TLS)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="client private key (PEM)")
    parser.set_defaults(handler=run)


def _ack_summary(ack: bytes, control_id: str) -> tuple[str, str]:
    """(MSA-1, short ERR text) of an ACK; "??" when it is unreadable or acknowledges another
    message than `control_id` (MSA-2), which the caller then counts as a failure."""
    try:
        message = parse_message(ack.decode("utf-8", errors="replace"))
    except HL7ParseError:
        return "??", "unreadable acknowledgement"
    msa = message.first("MSA")
    if msa is not None and control_id != "?" and msa.value(2) != control_id:
        return "??", f"acknowledges another message (MSA-2 {msa.value(2)!r})"
    err = message.first("ERR")
    detail = ""
    if err is not None:
        detail = " ".join(x for x in (err.component(3, 1), err.component(3, 2),
                                      err.value(8)) if x)
    return (msa.value(1) if msa else "??"), detail


class _Progress:
    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream, self.done = total, stream, 0
        self.enabled = total >= _PROGRESS_FROM and stream.isatty()

    def step(self) -> None:
        self.done += 1
        if self.enabled:
            width = 30
            filled = width * self.done // self.total
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.done}/{self.total}")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()


async def _send_all(args: argparse.Namespace, batches: list[tuple[Path, list[bytes]]]) -> int:
    if (args.tls_cert or args.tls_key) and not args.tls_ca:
        raise ConfigError("--tls-ca", "is required with --tls-cert/--tls-key: without it the "
                                      "message would go in clear")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-key" if args.tls_cert else "--tls-cert",
                          "--tls-cert and --tls-key go together")
    context = None
    if args.tls_ca:
        context = ssl.create_default_context(cafile=str(args.tls_ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if args.tls_cert:
            context.load_cert_chain(args.tls_cert, args.tls_key)
    total = sum(len(m) for _, m in batches)
    progress = _Progress(total, sys.stderr)
    failures = 0
    client = MLLPClient(args.host, args.port, ssl_context=context, timeout=args.timeout)
    await client.connect()
    try:
        for path, messages in batches:
            for index, payload in enumerate(messages, start=1):
                try:
                    control_id = read_header(payload.decode("latin-1")).control_id
                except HL7ParseError:
                    control_id = "?"
                code, detail = _ack_summary(await client.send(payload), control_id)
                if code not in ("AA", "CA"):
                    failures += 1
                line = f"{path}#{index} MSH-10={control_id} {code}"
                print(f"{line} {detail}".rstrip(), flush=True)
                progress.step()
    finally:
        await client.close()
    return 1 if failures else 0


def run(args: argparse.Namespace) -> int:
    batches = []
    for path in args.files:
        try:
            batches.append((path, split_messages(path.read_bytes())))
        except OSError as exc:
            print(f"{path}: {exc.strerror}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(_send_all(args, batches))
    except ConfigError as exc:  # options that do not go together: nothing was sent
        print(f"send: {exc}", file=sys.stderr)
        return 2
    except (ConnectorError, OSError, ssl.SSLError) as exc:
        print(f"send failed: {exc}", file=sys.stderr)
        return 1
