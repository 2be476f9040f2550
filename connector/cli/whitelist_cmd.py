"""`mssante-connector whitelist import FILE`: check a new MSSanté trust-space list and install it
where the configuration (`[directory] whitelist`) says, reporting what changed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from connector.cli._common import add_config_argument, report_config_error, settings_from
from connector.directory.whitelist import install_whitelist
from connector.errors import ConfigError


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "whitelist", help="manage the MSSanté trust-space list (liste blanche)")
    inner = parser.add_subparsers(dest="whitelist_command", required=True, metavar="ACTION")
    imp = inner.add_parser("import", help="check FILE and install it as the whitelist")
    add_config_argument(imp)
    imp.add_argument("file", type=Path)
    imp.add_argument("--allow-older", action="store_true",
                     help="install a list generated before the one installed")
    imp.set_defaults(handler=run_import)


def run_import(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
        if settings.whitelist is None:
            raise ConfigError("directory.whitelist", "is not set: where should the list go?",
                              source=settings.source)
        change = install_whitelist(args.file, settings.whitelist, allow_older=args.allow_older)
    except ConfigError as exc:
        return report_config_error(exc)
    except OSError as exc:
        print(f"{args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    previous = (change.previous_generated_at.isoformat() if change.previous_generated_at
                else "none")
    print(f"installed {settings.whitelist}: {change.whitelist.domain_count} domains, generated "
          f"{change.generated_at.isoformat()} (previous: {previous}); "
          f"{change.added_count} added, {change.removed_count} removed")
    return 0
