"""`mssante-connector receipts list [--status matched|unmatched]`: what came back to the
application mailboxes (DSN, MDN, KO mails, and what could not be matched), newest first.

No patient data: ids, times, kinds, outcomes, the outbox row, and why a mail was not matched.
"""

from __future__ import annotations

import argparse
from typing import Any

from connector.cli._common import add_config_argument, run_with_store, utc_time
from connector.store import ReceiptStatus, ReturnedMailSummary


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "receipts", help="list the receipts read from the application mailboxes")
    inner = parser.add_subparsers(dest="receipts_command", required=True, metavar="ACTION")
    list_parser = inner.add_parser("list", help="newest first (no patient data)")
    add_config_argument(list_parser)
    list_parser.add_argument("--status", choices=[s.value for s in ReceiptStatus])
    list_parser.add_argument("--tenant")
    list_parser.add_argument("--limit", type=int, default=50)
    list_parser.set_defaults(handler=run_list)


def _line(s: ReturnedMailSummary) -> str:
    about = f" outbox={s.outbox_id}" if s.outbox_id is not None else ""
    why = f" ({s.detail})" if s.detail else ""
    return (f"{s.id:>8} {utc_time(s.received_at)} {s.tenant_id} {s.kind or '-'} "
            f"{s.status.value} {s.outcome or '-'}{about}{why}")


def run_list(args: argparse.Namespace) -> int:
    async def action(store: Any) -> int:
        status = ReceiptStatus(args.status) if args.status else None
        for summary in await store.list_returned_mails(tenant_id=args.tenant, status=status,
                                                       limit=args.limit):
            print(_line(summary))
        return 0

    return run_with_store(args, action)
