"""`mssante-connector send FILE...`: an MLLP client for interface teams.

Each file holds one or many messages (a new message starts at each `MSH` segment; segments may be
separated by CR, LF or CRLF). Prints one line per message with its ACK code and its first ERR
(severity E, W or I first, and how many more there are), exits 1 if any answer is not positive or
the peer fails, and shows a progress bar on a terminal when sending many. When the connection
fails, the message it failed on says why and each message after it says it was not sent.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl
import sys
from pathlib import Path
from typing import Any, TextIO

from connector.errors import ConfigError, ConnectorError, HL7ParseError, ProtocolError
from connector.hl7.header import codec_or_default, read_header
from connector.hl7.message import parse_message
from connector.mllp.client import MLLPClient

_SEGMENT_SPLIT = re.compile(rb"\r\n|\r|\n")
_PROGRESS_FROM = 20


def split_messages(data: bytes) -> list[bytes]:
    """Messages of a file, each with CR segment separators. MLLP framing bytes (0x0B, 0x1C)
    left in a file captured from the wire are dropped: `send` frames each message itself."""
    messages: list[list[bytes]] = []
    for line in _SEGMENT_SPLIT.split(data.translate(None, b"\x0b\x1c")):
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
    message than `control_id` (MSA-2), which the caller then counts as a failure. The ERR text
    is the first error (else the first warning), with its severity (ERR-4: E, W, I) and how
    many more ERR segments the ACK carries."""
    try:
        codec = codec_or_default(ack, forced=None, default="utf-8")  # what its MSH-18 names
        message = parse_message(ack.decode(codec, errors="replace"))
    except HL7ParseError:
        return "??", "unreadable acknowledgement"
    msa = message.first("MSA")
    if msa is not None and control_id != "?" and msa.value(2) != control_id:
        return "??", f"acknowledges another message (MSA-2 {msa.value(2)!r})"
    errors = message.all("ERR")
    detail = ""
    if errors:
        err = next((e for e in errors if e.value(4) in ("E", "F")), errors[0])
        severity = err.value(4) or "E"
        detail = f"{severity}: " + " ".join(x for x in (err.component(3, 1),
                                                        err.component(3, 2), err.value(8)) if x)
        if len(errors) > 1:
            detail += f" (+{len(errors) - 1} more ERR)"
    return (msa.value(1) if msa else "??"), detail


class _Progress:
    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream, self.done = total, stream, 0
        self.enabled = total >= _PROGRESS_FROM and stream.isatty()

    def clear(self) -> None:
        """Before a result line: the bar's line erased, so that the two do not mix."""
        if self.enabled and 0 < self.done < self.total:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

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
    context = _client_context(args) if args.tls_ca else None
    total = sum(len(m) for _, m in batches)
    progress = _Progress(total, sys.stderr)
    failures = 0
    client = MLLPClient(args.host, args.port, ssl_context=context, timeout=args.timeout)
    lost: str | None = None  # why the connection failed: the messages after are not sent
    try:
        await client.connect()
    except ProtocolError as exc:
        lost = str(exc)
        print(f"send failed: {lost}", file=sys.stderr)
    try:
        for path, messages in batches:
            for index, payload in enumerate(messages, start=1):
                try:
                    control_id = read_header(payload.decode("latin-1")).control_id
                except HL7ParseError:
                    control_id = "?"
                label = f"{path}#{index} MSH-10={control_id}"
                progress.clear()
                if lost is not None:
                    print(f"{label} not sent", flush=True)
                    failures += 1
                    progress.step()
                    continue
                try:
                    answer = await client.send(payload)
                except ProtocolError as exc:
                    lost = f"{exc}{_tls_hint(context)}"
                    print(f"{label} failed: {lost}", flush=True)
                    failures += 1
                    progress.step()
                    continue
                code, detail = _ack_summary(answer, control_id)
                if code not in ("AA", "CA"):
                    failures += 1
                print(f"{label} {code} {detail}".rstrip(), flush=True)
                progress.step()
    finally:
        await client.close()
    return 1 if failures else 0


def _client_context(args: argparse.Namespace) -> ssl.SSLContext:
    """TLS 1.2+, verifying the server against --tls-ca; a file that cannot be used is a
    ConfigError naming its option (nothing is sent)."""
    try:
        context = ssl.create_default_context(cafile=str(args.tls_ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("--tls-ca", f"{args.tls_ca}: {getattr(exc, 'strerror', None) or exc}"
                          ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if args.tls_cert:
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("--tls-cert", f"{args.tls_cert} with {args.tls_key}: "
                                            f"{getattr(exc, 'strerror', None) or exc}") from exc
    return context


def _tls_hint(context: ssl.SSLContext | None) -> str:
    """What a connection that ends before any answer usually means at an MLLP port."""
    if context is None:
        return " (a TLS listener? give --tls-ca)"
    return " (a listener without TLS, or it refused the certificate?)"


def run(args: argparse.Namespace) -> int:
    batches = []
    for path in args.files:
        try:
            messages = split_messages(path.read_bytes())
        except OSError as exc:
            print(f"{path}: {exc.strerror}", file=sys.stderr)
            return 2
        if not messages:
            print(f"{path}: no HL7 message in this file", file=sys.stderr)
            return 2
        batches.append((path, messages))
    try:
        return asyncio.run(_send_all(args, batches))
    except ConfigError as exc:  # options that do not go together: nothing was sent
        print(f"send: {exc}", file=sys.stderr)
        return 2
    except (ConnectorError, OSError, ssl.SSLError) as exc:
        print(f"send failed: {exc}", file=sys.stderr)
        return 1
