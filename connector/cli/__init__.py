"""`mssante-connector` command line. Each sub-command lives in its own module with `register`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from connector import __version__

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from connector.cli.audit_cmd import register as register_audit
    from connector.cli.config_cmd import register as register_check_config
    from connector.cli.directory_cmd import register as register_directory
    from connector.cli.health_cmd import register as register_healthcheck
    from connector.cli.messages_cmd import register as register_messages
    from connector.cli.outbox_cmd import register as register_outbox
    from connector.cli.receipts_cmd import register as register_receipts
    from connector.cli.render_cmd import register as register_render
    from connector.cli.send_cmd import register as register_send
    from connector.cli.serve_cmd import register as register_serve
    from connector.cli.store_cmd import register as register_store
    from connector.cli.whitelist_cmd import register as register_whitelist

    parser = argparse.ArgumentParser(
        prog="mssante-connector",
        description="HL7 v2 (CI-SIS CDA R2, legacy ORU, ADT) to MSSanté bridge",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (register_serve, register_check_config, register_send, register_messages,
                     register_render, register_whitelist, register_outbox, register_receipts,
                     register_audit, register_directory, register_healthcheck,
                     register_store):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as Unix tools do; stdout is closed
        # for Python's own flush at exit, which would fail the same way.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
