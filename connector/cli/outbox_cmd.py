"""`mssante-connector outbox list|show|retry|cancel`: the e-mails (and, later, HL7 returns) the
connector owes, and what happened to each.

`list` shows no patient data (ids, states, codes, the recipient's domain only). `show` prints one
item in full, its payload and the server's last answer, for an operator allowed to read the store.
`retry` and `cancel` change the store, with an audit entry naming the operator's account and host:
with SQLite they need `serve` stopped (one writer process).
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
from typing import Any

from connector.admin import queries
from connector.cli._common import add_config_argument, run_with_store, utc_time
from connector.store import OutboxState, OutboxSummary


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "outbox", help="list, show, retry or cancel what the connector has to send")
    inner = parser.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    list_parser = inner.add_parser("list", help="items, newest first (no patient data)")
    add_config_argument(list_parser)
    list_parser.add_argument("--state", choices=[s.value for s in OutboxState])
    list_parser.add_argument("--tenant")
    list_parser.add_argument("--limit", type=int, default=50)
    list_parser.set_defaults(handler=run_list)
    for name, handler, text in (
            ("show", run_show, "one item in full: payload and last server answer"),
            ("retry", run_retry, "make a failed, dead or waiting item due now"),
            ("cancel", run_cancel, "never send this item (not once it was sent)")):
        action = inner.add_parser(name, help=text)
        add_config_argument(action)
        action.add_argument("id", type=int)
        action.set_defaults(handler=handler)


def _line(s: OutboxSummary) -> str:
    error = " ".join(x for x in (s.error_code, s.error_class) if x)
    receipt = f" delivery={s.delivery_status}" if s.delivery_status else ""
    receipt += f" read={s.read_status}" if s.read_status else ""
    return (f"{s.id:>8} {utc_time(s.created_at)} {s.tenant_id} {s.kind.value} {s.state.value}"
            f" attempts={s.attempts} to=@{s.recipient_domain or '-'}{receipt}"
            f" message-id={s.message_id or '-'} {error}").rstrip()


def run_list(args: argparse.Namespace) -> int:
    async def action(store: Any) -> int:
        state = OutboxState(args.state) if args.state else None
        for summary in await store.list_outbox(tenant_id=args.tenant, state=state,
                                               limit=args.limit):
            print(_line(summary))
        return 0

    return run_with_store(args, action)


def run_show(args: argparse.Namespace) -> int:
    async def action(store: Any) -> int:
        detail = await store.get_outbox(args.id)
        if detail is None:
            print(f"no outbox item {args.id}", file=sys.stderr)
            return 1
        s = detail.summary
        print(_line(s))
        print(f"inbound: {s.inbound_id or '-'}  envid: {s.envid or '-'}  "
              f"last reply: {s.smtp_code or '-'}  "
              f"available: {utc_time(s.available_at)}  size: {s.size} bytes")
        if s.delivery_status or s.read_status:
            when = utc_time(s.receipt_at) if s.receipt_at else "-"
            print(f"delivery: {s.delivery_status or '-'}  reading: {s.read_status or '-'}  "
                  f"last receipt: {when}")
        if detail.error_detail:
            print("--- last server answer")
            print(detail.error_detail)
        audit = await store.list_audit(outbox_id=s.id)
        if audit:
            print("--- audit")
            for entry in audit:
                said = " ".join(x for x in (entry.result, entry.detail) if x)
                print(f"{utc_time(entry.at)} {entry.action.value} by {entry.actor}"
                      f"{': ' + said if said else ''}")
        if detail.purged_at is not None:
            print(f"--- payload: purged {utc_time(detail.purged_at)} "
                  "(store.payload_retention_days)")
            return 0
        print("--- payload")
        print(detail.payload.decode("utf-8", errors="replace").replace("\r\n", "\n").rstrip())
        return 0

    return run_with_store(args, action)


def _operator() -> str:
    """Who acts, for the audit trail: the operating-system account and the host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        user = f"uid {os.getuid()}"
    return f"operator {user}@{socket.gethostname()} (cli)"


def _change(args: argparse.Namespace, verb: str) -> int:
    change = queries.retry if verb == "retry_now" else queries.cancel

    async def action(store: Any) -> int:
        changed = await change(store, args.id, _operator())
        if not changed:
            found = await store.get_outbox(args.id)
            if found is None:
                print(f"no outbox item {args.id}", file=sys.stderr)
            else:
                print(f"outbox item {args.id} is {found.summary.state.value}: "
                      f"{'a retry' if verb == 'retry_now' else 'a cancel'} does not apply "
                      "(being sent, sent, cancelled, or its payload was purged)",
                      file=sys.stderr)
            return 1
        print(f"outbox item {args.id}: {'due now' if verb == 'retry_now' else 'cancelled'}")
        return 0

    return run_with_store(
        args, action, read_only=False,
        in_use_hint=f"with SQLite, outbox {verb.replace('_now', '')} changes the store while "
                    f"serve is stopped; while it runs, use the admin API: POST "
                    f"/api/outbox/{args.id}/{verb.replace('_now', '')}")


def run_retry(args: argparse.Namespace) -> int:
    return _change(args, "retry_now")


def run_cancel(args: argparse.Namespace) -> int:
    return _change(args, "cancel")
