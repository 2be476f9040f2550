"""Helpers shared by sub-commands: loading settings the way `serve` does."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from connector.errors import ConfigError
from connector.settings import Settings, embedded_default, load_settings

CONFIG_ENV = "MSSCONNECTOR_CONFIG"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", type=Path, default=None,
        help=f"TOML configuration (default: ${CONFIG_ENV}, else the embedded default)")


def settings_from(args: argparse.Namespace) -> Settings:
    path: Path | None = args.config
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    return embedded_default() if path is None else load_settings(path)


def report_config_error(exc: ConfigError) -> int:
    print(f"configuration error: {exc}", file=sys.stderr)
    return 2
