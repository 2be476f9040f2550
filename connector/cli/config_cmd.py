"""`mssante-connector check-config FILE`: the validation `serve` runs, without serving: the file,
then what `serve` builds from it (trust-space list, CDA validator, mailbox, the operator's CA
bundle and client certificate), opening no socket and no store."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from connector.cli._common import CONFIG_ENV, report_config_error
from connector.errors import ConfigError
from connector.settings import load_settings


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "check-config", help="validate a configuration file and name the faulty key")
    parser.add_argument("file", type=Path, nargs="?",
                        help=f"the file (default: --config, else ${CONFIG_ENV})")
    parser.add_argument("--config", "-c", type=Path, default=None,
                        help="the same file, as the other commands take it")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from connector.app import Application

    path: Path | None = args.file or args.config
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    if path is None:
        print(f"check-config: give the file (FILE, --config or ${CONFIG_ENV})", file=sys.stderr)
        return 2
    try:
        settings = load_settings(path)
        Application.build(settings)
    except ConfigError as exc:
        return report_config_error(exc)
    listeners = sum(len(t.listeners) for t in settings.tenants)
    print(f"{path}: OK ({len(settings.tenants)} tenant(s), {listeners} listener(s), "
          f"store {settings.store.backend.value})")
    return 0
