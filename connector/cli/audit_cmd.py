"""`mssante-connector audit export --from T --to T [--tenant T] [--format csv|json] [--out F]`:
the audit trail (who, when, what, the server's reply; never content) for a period, oldest first.
Times are ISO 8601 or epoch seconds; a date alone is midnight UTC."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from connector.admin import queries
from connector.admin.api import BadRequest, parse_time
from connector.cli._common import add_config_argument, run_with_store


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "audit", help="export the audit trail: submissions to the operator, receipts, "
                      "mailbox and operator actions (never content)")
    inner = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    export = inner.add_parser("export", help="write the audit trail of a period (CSV or JSON)")
    add_config_argument(export)
    export.add_argument("--from", dest="since", required=True, metavar="TIME")
    export.add_argument("--to", dest="until", required=True, metavar="TIME")
    export.add_argument("--tenant")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("--out", type=Path, help="file to write (default: standard output)")
    export.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    try:
        since, until = parse_time(args.since, "--from"), parse_time(args.until, "--to")
    except BadRequest as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if since is not None and until is not None and since >= until:
        print("--from: must be before --to (the period is empty)", file=sys.stderr)
        return 2

    async def action(store: Any) -> int:
        records = await queries.all_audit_records(store, since=since, until=until,
                                                  tenant_id=args.tenant)
        text = (queries.audit_as_json(records) if args.format == "json"
                else queries.audit_as_csv(records))
        if args.out is None:
            sys.stdout.write(text)
            return 0
        try:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            print(f"--out {args.out}: {exc.strerror}", file=sys.stderr)
            return 2
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        print(f"{len(records)} audit entries written to {args.out}", file=sys.stderr)
        return 0

    return run_with_store(args, action)
