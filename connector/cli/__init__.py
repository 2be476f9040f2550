"""`mssante-connector` command line. Each sub-command lives in its own module with `register`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from connector import __version__

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from connector.cli import config_cmd, messages_cmd, send_cmd, serve_cmd

    parser = argparse.ArgumentParser(
        prog="mssante-connector",
        description="HL7 v2 (CI-SIS CDA R2, legacy ORU, ADT) to MSSanté bridge",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve_cmd, config_cmd, send_cmd, messages_cmd):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
