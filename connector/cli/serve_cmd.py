"""`mssante-connector serve`: run the listeners until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from connector.cli._common import add_config_argument, report_config_error, settings_from
from connector.errors import ConfigError, StoreError
from connector.observability.logs import configure_logging


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the MLLP listeners (embedded default with no configuration)")
    add_config_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from connector.app import Application

    try:
        settings = settings_from(args)
        configure_logging(settings.logging)
        app = Application.build(settings)
    except ConfigError as exc:
        return report_config_error(exc)
    try:
        asyncio.run(app.run_until_signalled())
    except StoreError as exc:
        print(f"store error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A port taken or a directory not writable at start-up; once serving, an I/O error
        # while draining (the data directory removed under the running process, a disk gone).
        when = "stopped on an error" if app.serving else "cannot start"
        print(f"{when}: {exc}", file=sys.stderr)
        return 1
    return 0
