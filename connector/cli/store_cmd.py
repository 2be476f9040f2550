"""`mssante-connector store backup --to DIR` and `store verify [PATH]`: the embedded SQLite
store's online backup (taken while `serve` runs) and its check (`connector.store.backup`).

A PostgreSQL store is backed up with PostgreSQL's own tools (`pg_dump`, base backups): its
payloads are in the database."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from connector.cli._common import add_config_argument, report_config_error, settings_from
from connector.errors import BackupError, ConfigError
from connector.settings import StoreBackend


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "store", help="back up the embedded SQLite store, or check that it is whole")
    inner = parser.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    backup = inner.add_parser(
        "backup", help="copy the store (database and payload segments) into a new directory, "
                       "while serve runs, and check the copy")
    add_config_argument(backup)
    backup.add_argument("--to", dest="target", type=Path, required=True, metavar="DIR",
                        help="the new directory (must not exist)")
    backup.set_defaults(handler=run_backup)
    verify = inner.add_parser(
        "verify", help="check a store or a backup: SQLite's integrity check, then every "
                       "payload record read back (length, CRC)")
    add_config_argument(verify)
    verify.add_argument("path", nargs="?", type=Path, metavar="PATH",
                        help="a backup directory or a database file (default: the configured "
                             "store)")
    verify.set_defaults(handler=run_verify)


def _configured_database(args: argparse.Namespace) -> Path | int:
    """The configured SQLite database, or the exit code (2) once stderr says why there is
    none: a configuration error, a PostgreSQL store."""
    try:
        store = settings_from(args).store
    except ConfigError as exc:
        return report_config_error(exc)
    if store.backend is not StoreBackend.SQLITE:
        print("the store is PostgreSQL: back it up with PostgreSQL's tools (pg_dump, base "
              "backups); its payloads are in the database", file=sys.stderr)
        return 2
    return store.path


def run_backup(args: argparse.Namespace) -> int:
    from connector.store.backup import take_backup

    database = _configured_database(args)
    if isinstance(database, int):
        return database
    try:
        done = take_backup(database, args.target)
    except (BackupError, OSError) as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"backup of {database} in {done.directory}: {done.files} files, "
          f"{done.bytes / 1e6:.1f} MB, schema version {done.check.schema_version}, "
          f"{done.check.payload_records} payload records checked, {done.seconds:.1f} s")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from connector.store.backup import verify, verify_backup

    path: Path | int = args.path if args.path is not None else _configured_database(args)
    if isinstance(path, int):
        return path
    try:
        if path.is_dir():  # a backup: its manifest's files, then its database
            path, check = verify_backup(path)
        else:
            check = verify(path)
    except (BackupError, OSError) as exc:
        print(f"store not whole: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: integrity ok, schema version {check.schema_version}, "
          f"{check.payload_records} payload records in {len(check.segments)} segments read back")
    return 0
