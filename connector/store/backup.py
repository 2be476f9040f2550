"""Online backup of the embedded SQLite store, and the check that a store's payloads are whole.

A backup is a directory:

    connector.db                        the database at one moment
    connector.db.payloads/segment-N.log the payload-log segments that copy references
    MANIFEST.json                       when, the schema version, each file's size and SHA-256

It is taken while `serve` runs, in this order:

1. the database, with SQLite's online backup API in one step (one read transaction: a
   consistent snapshot, WAL frames included, without stopping the writer);
2. the segments the snapshot references, copied after it. A segment only grows after the
   snapshot (its later records are referenced by later rows, not by the copy: harmless), and the
   retention purge deletes a segment only once no row references it, so a referenced segment
   can disappear before it is copied only if its rows' payloads were purged in the meantime:
   the backup then fails and says to run it again;
3. `verify`: `PRAGMA integrity_check` on the copy, and every payload reference of every row read
   back from the copied segments (magic, length, CRC-32). A backup that fails it is removed.

Files are written 0600 (patient data), then fsynced, the directory last. Encryption keys are
not part of a backup: a store sealed with keys needs the same keys (`[store.encryption]`) to be
read again. Restoring is copying `connector.db` and its `.payloads` directory back to
`[store] path` while the connector is stopped (README, "Backup and restore").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from connector import __version__
from connector.errors import BackupError, PayloadUnreadable
from connector.files import fsync_path
from connector.store._shared import REFERENCED_SEGMENTS_SQL
from connector.store.payload_log import PayloadLog, PayloadRef, payloads_directory

_PAYLOAD_TABLES = ("inbound", "outbox", "receipts")  # the rows that may point at a record
MANIFEST = "MANIFEST.json"


@dataclass(frozen=True, slots=True)
class StoreCheck:
    """What `verify` read: the rows' payload references, all readable."""

    schema_version: int
    payload_records: int
    segments: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Backup:
    directory: Path
    check: StoreCheck
    files: int
    bytes: int
    seconds: float


def verify(database: Path) -> StoreCheck:
    """Check the store at `database` (a backup, or a live store: reads only): the database's
    own integrity, then every payload reference read back. BackupError says what is wrong."""
    if not database.is_file():
        raise BackupError(f"no database at {database}")
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise BackupError(f"{database}: integrity check failed: {problems[0]}")
        version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        refs = [PayloadRef(int(s), int(o), int(n)) for table in _PAYLOAD_TABLES
                for s, o, n in conn.execute(
                    f"SELECT payload_segment, payload_offset, payload_length FROM {table}"  # noqa: S608
                    " WHERE payload_segment IS NOT NULL ORDER BY 1, 2")]
    except sqlite3.Error as exc:
        raise BackupError(f"{database}: not a readable connector store ({exc})") from exc
    finally:
        conn.close()
    log = PayloadLog(payloads_directory(database))
    for ref in refs:
        try:
            log.read(ref)
        except PayloadUnreadable as exc:
            raise BackupError(f"{database}: {exc}") from exc
    return StoreCheck(int(version or 0), len(refs), tuple(sorted({r.segment for r in refs})))


def verify_backup(directory: Path) -> tuple[Path, StoreCheck]:
    """Check a backup directory: every file its MANIFEST.json lists, by size and SHA-256, then
    its database as `verify` does. Its database and what was read; BackupError otherwise."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text("utf-8"))
        files: dict[str, dict[str, object]] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{directory}: not a backup (no readable {MANIFEST})") from exc
    databases = [name for name in files if "/" not in name]
    if len(databases) != 1:
        raise BackupError(f"{directory}/{MANIFEST}: lists {len(databases)} databases, not one")
    for name, facts in files.items():
        path = directory / name
        if not path.is_file():
            raise BackupError(f"{path}: missing (listed in {MANIFEST})")
        if path.stat().st_size != facts.get("bytes") or _sha256(path) != facts.get("sha256"):
            raise BackupError(f"{path}: differs from {MANIFEST} (size or SHA-256)")
    database = directory / databases[0]
    return database, verify(database)


def take_backup(database: Path, target: Path) -> Backup:
    """Copy the store at `database` into the new directory `target` (see the module)."""
    started = time.monotonic()
    if not database.is_file():
        raise BackupError(f"no database at {database}")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} is not a directory: create it first (a backup "
                          "creates only its own directory, so that a typo does not make a tree)")
    try:
        target.mkdir(mode=0o700)
    except FileExistsError:
        raise BackupError(f"{target} exists: a backup goes into a new directory") from None
    try:
        return _take(database, target, started)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def _take(database: Path, target: Path, started: float) -> Backup:
    copy = target / database.name
    os.close(os.open(copy, os.O_CREAT | os.O_WRONLY, 0o600))
    source = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    destination = sqlite3.connect(copy)
    try:
        source.backup(destination)  # pages=-1: the whole database in one step
        destination.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        segments = sorted(int(row[0]) for row in destination.execute(REFERENCED_SEGMENTS_SQL))
    except sqlite3.Error as exc:
        raise BackupError(f"{database}: the database could not be copied ({exc})") from exc
    finally:
        destination.close()
        source.close()
    source_segments, copied_segments = payloads_directory(database), payloads_directory(copy)
    copied_segments.mkdir(mode=0o700)
    for number in segments:
        name = f"segment-{number:06d}.log"
        try:
            _copy_file(source_segments / name, copied_segments / name)
        except FileNotFoundError:
            raise BackupError(f"payload segment {number} was purged while the backup ran: "
                              "run the backup again") from None
    check = verify(copy)
    files = [copy, *(copied_segments / f"segment-{n:06d}.log" for n in segments)]
    manifest = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "connector_version": __version__,
        "schema_version": check.schema_version,
        "payload_records": check.payload_records,
        "files": {str(path.relative_to(target)): {"bytes": path.stat().st_size,
                                                  "sha256": _sha256(path)} for path in files},
    }
    manifest_path = target / MANIFEST
    fd = os.open(manifest_path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(manifest, indent=1) + "\n")
    for path in (*files, manifest_path):
        fsync_path(path)
    for directory in (copied_segments, target):
        fsync_path(directory)
    size = sum(path.stat().st_size for path in (*files, manifest_path))
    return Backup(target, check, len(files) + 1, size, time.monotonic() - started)


def _copy_file(source: Path, destination: Path) -> None:
    with source.open("rb") as reader:
        fd = os.open(destination, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as writer:
            shutil.copyfileobj(reader, writer, 1024 * 1024)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as reader:
        while chunk := reader.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


