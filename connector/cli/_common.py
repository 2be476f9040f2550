"""Helpers shared by sub-commands: loading settings the way `serve` does."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connector.errors import ConfigError, StoreError, StoreInUse
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


def utc_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


StoreAction = Callable[[Any], Awaitable[int]]


def run_with_store(args: argparse.Namespace, action: StoreAction, *, read_only: bool = True,
                   in_use_hint: str | None = None) -> int:
    """Open the configured store (read-only unless the command changes something), run
    `action(store)`, close; configuration and store errors become exit codes 2 and 1.
    `in_use_hint`: said after the error when a running `serve` holds the SQLite store."""

    async def run() -> int:
        from connector.app import build_store

        store = build_store(settings_from(args))
        store.open(read_only=read_only)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except ConfigError as exc:
        return report_config_error(exc)
    except StoreError as exc:
        print(f"store error: {exc}", file=sys.stderr)
        if in_use_hint and isinstance(exc, StoreInUse):
            print(in_use_hint, file=sys.stderr)
        if getattr(args, "config", None) is None and not os.environ.get(CONFIG_ENV):
            print(f"(the embedded default's store: give --config FILE, or set {CONFIG_ENV}, "
                  "to use the one serve uses)", file=sys.stderr)
        return 1
