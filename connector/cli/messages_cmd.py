"""`mssante-connector messages list|show`: what was received, and why a message was rejected.

`list` shows no patient data (identifiers, codes, sizes). `show` prints the raw message and its
ACK for an operator allowed to read the store.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from connector.cli._common import (
    add_config_argument,
    report_config_error,
    run_with_store,
    settings_from,
    utc_time,
)
from connector.errors import ConfigError
from connector.hl7.header import codec_or_default
from connector.settings import Settings
from connector.store import InboundDetail, InboundStatus, InboundSummary


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "messages", help="list received messages or show one")
    inner = parser.add_subparsers(dest="messages_command", required=True, metavar="ACTION")
    list_parser = inner.add_parser("list", help="recent messages, newest first (no patient data)")
    add_config_argument(list_parser)
    list_parser.add_argument("--status", choices=[s.value for s in InboundStatus])
    list_parser.add_argument("--tenant")
    list_parser.add_argument("--limit", type=int, default=50)
    list_parser.set_defaults(handler=run_list)
    show_parser = inner.add_parser("show", help="one message in full: raw HL7, ACK, error")
    add_config_argument(show_parser)
    show_parser.add_argument("id", type=int)
    show_parser.set_defaults(handler=run_show)


def _line(s: InboundSummary) -> str:
    error = f" {s.error_code} {s.error_detail}" if s.error_code else ""
    flags = (" retransmitted" * bool(s.retransmissions)) + (" msh10-reused" * s.control_id_reused)
    return (f"{s.id:>8} {utc_time(s.received_at)} {s.tenant_id} {s.message_type or '-'} "
            f"MSH-10={s.control_id or '-'} {s.status.value} {s.ack_code or '-'}"
            f"{error}{flags}")


def run_list(args: argparse.Namespace) -> int:
    async def action(store: Any) -> int:
        status = InboundStatus(args.status) if args.status else None
        for summary in await store.list_inbound(tenant_id=args.tenant, status=status,
                                                limit=args.limit):
            print(_line(summary))
        return 0

    return run_with_store(args, action)


def _codec(settings: Settings, detail: InboundDetail) -> str:
    """The character set intake decoded the message with (its listener's forced `charset`,
    else its MSH-18, else `default_charset`), which its ACK is written in too."""
    forced = None
    for tenant in settings.tenants:
        if tenant.id == detail.summary.tenant_id:
            forced = next((listener.charset for listener in tenant.listeners
                           if listener.name == detail.summary.listener), None)
    return codec_or_default(detail.raw or detail.ack, forced=forced,
                            default=settings.default_charset)


def run_show(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        return report_config_error(exc)

    async def action(store: Any) -> int:
        detail = await store.get_inbound(args.id)
        if detail is None:
            print(f"no message {args.id}", file=sys.stderr)
            return 1
        codec = _codec(settings, detail)
        s = detail.summary
        print(_line(s))
        print(f"listener: {s.listener}  peer: {s.peer}  size: {s.size} bytes  "
              f"sender: {s.sending_application}|{s.sending_facility}  version: {s.version}")
        print("--- acknowledgement")
        print(detail.ack.decode(codec, errors="replace").replace("\r", "\n").rstrip())
        if detail.report:
            print("--- validation report")
            print(detail.report.decode("utf-8", errors="replace").rstrip())
        if detail.purged_at is not None:
            print(f"--- message: purged {utc_time(detail.purged_at)} "
                  "(store.payload_retention_days)")
            return 0
        print("--- message")
        print(detail.raw.decode(codec, errors="replace").replace("\r", "\n").rstrip())
        return 0

    return run_with_store(args, action)
