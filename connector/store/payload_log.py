"""Append-only payload segments: large payloads written once, in one syscall, outside SQLite.

SQLite's WAL writes a 70 KB payload as 18 page frames and copies it again at checkpoint: about
100 syscalls and twice the bytes per message. Here a payload is one record appended to the
current segment file; the store has it synced (fdatasync) before the COMMIT that references it,
so a committed row never points at bytes that are not on disk. A crash between the two leaves an
orphan record that nothing references, which is harmless.

`append()` only reserves the record's place (the store's jobs run it on the event loop); `write()`,
when the batch commits, computes the CRCs and writes the records in order, and the store's
flusher (store.flusher) syncs the segment before the COMMIT. A failed write leaves the position
at the file's real end, so the records that follow are still where their references say (the
batch whose records failed is not committed).

Record: b"MSP1" | u32 length | u32 CRC-32 | data. A reference is (segment, offset, length), offset
pointing at the record header, and reads check magic, length and CRC.

Segments end at 256 MiB or after a day of appends, whichever comes first, and a process starts a
new one rather than append to the one it finds: the retention purge deletes whole segments that no
row references any more, never the current one, so a segment must not outlive the retention it
serves by more than about a day, however little a site sends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from connector.errors import PayloadUnreadable, StoreError
from connector.store.flusher import segment_path

_MAGIC = b"MSP1"
_HEADER = struct.Struct(">4sII")
DEFAULT_SEGMENT_BYTES = 256 * 1024 * 1024
DEFAULT_SEGMENT_SECONDS = 24 * 3600.0


def payloads_directory(database: Path) -> Path:
    """Where the payload log of the SQLite database `database` lives: beside it."""
    return database.with_name(database.name + ".payloads")


@dataclass(frozen=True, slots=True)
class PayloadRef:
    segment: int
    offset: int
    length: int


class PayloadLog:
    """One appender at a time (the store's jobs append and its writer writes: never both at
    once); reads may come from any thread."""

    def __init__(self, directory: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 segment_seconds: float = DEFAULT_SEGMENT_SECONDS) -> None:
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._segment_seconds = segment_seconds
        self._fd: int | None = None
        self._segment = 0
        self._position = 0
        self._opened_at = 0.0  # monotonic: when the current segment was started
        self._dirty = False
        self._unwritten: list[bytes] = []  # appended, for the next write()

    def _path(self, segment: int) -> Path:
        return Path(segment_path(str(self.directory), segment))

    def _segments(self) -> list[int]:
        """The numbers of the segment files on disk, in order."""
        return sorted(int(p.stem.split("-")[1]) for p in self.directory.glob("segment-*.log"))

    def _sync_directory(self) -> None:
        """Make the directory's entries durable (a segment created or deleted)."""
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def open(self) -> None:
        """Start a segment: the last one found when it is empty, else the next."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = self._segments()
        last = existing[-1] if existing else 1
        if existing and self._path(last).stat().st_size > 0:
            last += 1
        self._open_segment(last)

    def _open_segment(self, segment: int) -> None:
        path = self._path(segment)
        created = not path.exists()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segment = segment
        self._position = os.fstat(self._fd).st_size
        self._opened_at = time.monotonic()
        if created:
            self._sync_directory()

    def append(self, data: bytes) -> PayloadRef:
        """The place of `data`'s record; the next `write()` writes it there."""
        if self._fd is None:
            raise StoreError("payload log is not open")
        if self._position >= self._segment_bytes or (
                self._position and time.monotonic() - self._opened_at >= self._segment_seconds):
            self.sync()
            os.close(self._fd)
            self._open_segment(self._segment + 1)
        ref = PayloadRef(self._segment, self._position, len(data))
        self._unwritten.append(data)
        self._position += _HEADER.size + len(data)
        return ref

    def write(self) -> int | None:
        """Write the records appended since the last call (CRCs, one `writev` each); the
        segment that a flush must make durable before the COMMIT referencing them, None when
        nothing waits for one. After the flush, `flushed()`."""
        if self._fd is None:
            return None
        if self._unwritten:
            records, self._unwritten = self._unwritten, []
            self._dirty = True
            try:
                for data in records:
                    header = _HEADER.pack(_MAGIC, len(data), zlib.crc32(data))
                    if os.writev(self._fd, (header, data)) != len(header) + len(data):
                        # A regular file is written short when the disk is full: an I/O error,
                        # which the store answers as unavailable (AR), like the others.
                        raise OSError(errno.EIO, "short write to the payload log")
            except BaseException:
                self._position = os.fstat(self._fd).st_size
                raise
        return self._segment if self._dirty else None

    @property
    def unwritten(self) -> bool:
        """Whether records were appended since the last `write()`."""
        return bool(self._unwritten)

    def flushed(self) -> None:
        """What `write()` wrote is on disk."""
        self._dirty = False

    def sync(self) -> None:
        """`write()`, then fdatasync here (a segment's end, the commit thread, close)."""
        if self.write() is not None and self._fd is not None:
            os.fdatasync(self._fd)
            self.flushed()

    @property
    def current_segment(self) -> int:
        """The segment appends go to; they never go to a lower one."""
        return self._segment

    def remove_segments(self, below: int, keep: set[int]) -> int:
        """Delete the segments numbered under `below` that are not in `keep` (the retention
        purge: no row references them any more); how many were deleted. Never the current one.
        """
        doomed = [n for n in self._segments() if n < min(below, self._segment) and n not in keep]
        for number in doomed:
            self._path(number).unlink(missing_ok=True)
        if doomed:
            self._sync_directory()
        return len(doomed)

    def read(self, ref: PayloadRef) -> bytes:
        try:
            fd = os.open(self._path(ref.segment), os.O_RDONLY)
        except OSError as exc:
            raise PayloadUnreadable(f"payload segment {ref.segment} is missing") from exc
        try:
            record = os.pread(fd, _HEADER.size + ref.length, ref.offset)
        finally:
            os.close(fd)
        if len(record) < _HEADER.size:
            raise PayloadUnreadable(f"payload record at {ref.segment}:{ref.offset} is truncated")
        magic, length, crc = _HEADER.unpack_from(record)
        data = record[_HEADER.size:]
        if magic != _MAGIC or length != ref.length or len(data) != length:
            raise PayloadUnreadable(f"payload record at {ref.segment}:{ref.offset} is malformed")
        if zlib.crc32(data) != crc:
            raise PayloadUnreadable(f"payload record at {ref.segment}:{ref.offset} fails its CRC")
        return data

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.sync()
            os.close(self._fd)
            self._fd = None
