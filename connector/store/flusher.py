"""The SQLite store's disk flushes, made by a process of its own.

After each group commit the WAL must reach the disk (fdatasync) before any caller is woken, and
a batch's payload-log records before the COMMIT that points at them. A thread of the connector
could make these calls, but each time one returns that thread needs the GIL again, and takes it
from the event loop in the middle of an intake: at 4 connections that hand-over, two or three
times per group commit, cost the loop as much CPU as the SQL of an ADT (docs/perf-adt.md). A
process of its own flushes without touching the loop's GIL: the loop writes a request to a pipe
and reads the reply when the pipe is readable, in the `epoll` it waits in anyway.

The protocol is one request at a time: `W` (the WAL) or `P` with a segment number (that payload
segment), answered by a 4-byte status, 0 or the `errno` of the failed fdatasync. The process
opens the files itself (fdatasync flushes an inode's pages whatever descriptor wrote them), has
nothing but these two pipes, runs in a session of its own and ignores SIGINT, SIGTERM, SIGHUP
and SIGQUIT (the connector drains and closes it), and exits when the request pipe closes, which
also happens when the connector dies. It answers one flush before the store opens: a flusher
that cannot start stops the store's start-up, not its first write. If it dies later, the reply
pipe closes: the writer then knows nothing of the flush under way and stops writing until a
restart, as after a failed flush.

`serve` is the whole of the process's work and runs unchanged in a thread when the writer is
built with `Flusher.thread` (tests: a flush made slow or failing on purpose).

This module is run as a script by path (`python -I -S flusher.py ...`): it imports nothing but
the standard library.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REQUEST = struct.Struct(">cI")  # b"W" | b"P", the payload segment's number (0 for the WAL)
REPLY = struct.Struct(">I")  # 0, or the errno of the failed flush
WAL, SEGMENT = b"W", b"P"
_INODE_CHECK_SECONDS = 1.0
_STOP_SECONDS = 10.0
_START_SECONDS = 10.0
KEEP_CACHED = 64 * 1024 * 1024  # the newest bytes of a payload segment left in the page cache
_DROP_STEP = 4 * 1024 * 1024
_PAGE = 4096


def segment_path(directory: str, segment: int) -> str:
    """A payload segment's file, as `PayloadLog` names it."""
    return os.path.join(directory, f"segment-{segment:06d}.log")


def serve(requests: int, replies: int, wal: str, payloads: str,
          sync: Callable[[int], None] = os.fdatasync, *,
          keep_cached: int = KEEP_CACHED) -> None:
    """Answer each request on `requests` once its file is flushed, until end of file."""
    wal_file = WalFile(wal)
    segment_file = SegmentFile(payloads, keep_cached)
    pending = b""
    try:
        while True:
            chunk = os.read(requests, 4096)
            if not chunk:
                return
            pending += chunk
            while len(pending) >= REQUEST.size:
                op, number = REQUEST.unpack_from(pending)
                pending = pending[REQUEST.size:]
                code = 0
                try:
                    if op == WAL:
                        sync(wal_file.descriptor())
                    else:
                        sync(segment_file.descriptor(number))
                        segment_file.flushed()
                except OSError as exc:
                    code = exc.errno or errno.EIO
                try:
                    os.write(replies, REPLY.pack(code))
                except BrokenPipeError:  # the connector is gone: nobody waits for this
                    return
    finally:
        wal_file.close()
        segment_file.close()


class WalFile:
    """A descriptor of the WAL file, to fdatasync it (the flusher's, and the writer's commit
    thread's for the batches it commits itself). SQLite replaces the WAL only when its last
    connection closes, which the store's own connection prevents: whether it was replaced is
    looked at once a second, not before every flush."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._checked = 0.0  # monotonic: when the inode was last compared

    def descriptor(self) -> int:
        """Open (created if missing), and reopened if the file was replaced."""
        now = time.monotonic()
        if self._fd >= 0 and now >= self._checked + _INODE_CHECK_SECONDS:
            self._checked = now
            if _inode(self.path) != os.fstat(self._fd).st_ino:
                self.close()
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o600)
            self._checked = now
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SegmentFile:
    """A descriptor of the payload segment last flushed, and the page cache it leaves behind.

    A payload record is written once and read back at most soon after (the pipeline's stage
    that handles its message) or rarely (an operator). Left in the page cache, the segments
    make it grow at the intake's rate (140 MB/s at 2,000 ORUs of 70 KB a second), and each new
    page costs the writer: on a virtual machine whose host backs the guest's memory when first
    touched, a 70 KB record's `writev` on the event loop took 175 us instead of 22 once the
    cache had grown by a gigabyte (docs/perf-oru.md). So once a flush has made a segment's
    records durable, what lies more than `keep_cached` bytes behind its end leaves the cache
    (`POSIX_FADV_DONTNEED`), and the whole segment when the next one starts. The advice drops
    clean pages only: it never loses a byte, and a read after it goes to the disk."""

    def __init__(self, directory: str, keep_cached: int = KEEP_CACHED) -> None:
        self.directory = directory
        self.keep_cached = keep_cached
        self.number = -1
        self._fd = -1
        self._dropped = 0  # the segment's bytes before this offset left the cache

    def descriptor(self, number: int) -> int:
        """Segment `number`'s, opened when it is not the last one flushed (which is closed)."""
        if number != self.number:
            self.close()
            self._fd = os.open(segment_path(self.directory, number), os.O_RDONLY)
            self.number, self._dropped = number, 0
        return self._fd

    def flushed(self) -> None:
        """The segment was just flushed: drop its pages more than `keep_cached` behind its end,
        a few megabytes at a time."""
        end = (os.fstat(self._fd).st_size - self.keep_cached) // _PAGE * _PAGE
        if end - self._dropped >= _DROP_STEP:
            _drop_cached(self._fd, self._dropped, end - self._dropped)
            self._dropped = end

    def close(self) -> None:
        if self._fd >= 0:
            _drop_cached(self._fd, self._dropped, 0)  # 0: to the end of the file
            os.close(self._fd)
            self._fd, self.number = -1, -1


def _drop_cached(fd: int, offset: int, length: int) -> None:
    """Advise the kernel that these bytes of `fd` are not needed (an advice: never fails)."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return -1


class Flusher:
    """The writer's end: requests out, replies in (`reply_fd` is readable when one came)."""

    def __init__(self, requests: int, replies: int, stop: Callable[[], None],
                 describe: Callable[[], str], pid: int | None = None) -> None:
        self.pid = pid  # the process's, when it is one
        self._requests = requests
        self.reply_fd = replies
        self._stop = stop
        self._describe = describe
        self._closed = False

    @classmethod
    def process(cls, wal: Path, payloads: Path) -> Flusher:
        """A child process running `serve` (its exit closes `reply_fd`)."""
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        try:
            child = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, str(request_r), str(reply_w), str(wal),
                 str(payloads)],
                pass_fds=(request_r, reply_w), stdin=subprocess.DEVNULL,
                # It needs no setting and is given no secret: only what may be needed to
                # start the interpreter itself.
                env={k: v for k, v in os.environ.items() if k == "LD_LIBRARY_PATH"},
                # Its own session: a terminal's hang-up, a signal sent to the connector's
                # process group (reload is SIGHUP) do not reach it.
                start_new_session=True)
        except BaseException:
            os.close(request_w)
            os.close(reply_r)
            raise
        finally:
            os.close(request_r)
            os.close(reply_w)

        def stop() -> None:
            try:
                child.wait(_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

        def describe() -> str:
            code = child.poll()
            return (f"the flush process ({child.pid}) exited with code {code}"
                    if code is not None else f"the flush process ({child.pid}) closed its pipe")

        flusher = cls(request_w, reply_r, stop, describe, child.pid)
        try:
            flusher.check()
        except BaseException:
            child.kill()
            flusher.close()
            raise
        return flusher

    @classmethod
    def thread(cls, wal: Path, payloads: Path,
               sync: Callable[[int], None] = os.fdatasync, *,
               keep_cached: int = KEEP_CACHED) -> Flusher:
        """`serve` in a thread of this process, with `sync` for fdatasync (tests)."""
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()

        def run() -> None:
            try:
                serve(request_r, reply_w, str(wal), str(payloads), sync,
                      keep_cached=keep_cached)
            finally:
                os.close(request_r)
                os.close(reply_w)

        worker = threading.Thread(target=run, name="sqlite-flusher", daemon=True)
        worker.start()
        return cls(request_w, reply_r, lambda: worker.join(_STOP_SECONDS),
                   lambda: "the flush thread stopped")

    def check(self, timeout: float = _START_SECONDS) -> None:
        """One WAL flush, answered within `timeout`: the flusher runs (OSError if not)."""
        self.request_wal()
        poller = select.poll()  # not select.select: no limit on the descriptor's number
        poller.register(self.reply_fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise OSError(errno.ETIMEDOUT, f"{self._describe()}: no answer in {timeout:g} s")
        code = self.read_reply()
        if code:
            raise OSError(code, f"the WAL could not be flushed: {os.strerror(code)}")

    def request_wal(self) -> None:
        self._send(WAL, 0)

    def request_segment(self, segment: int) -> None:
        self._send(SEGMENT, segment)

    def _send(self, op: bytes, number: int) -> None:
        try:
            os.write(self._requests, REQUEST.pack(op, number))
        except OSError as exc:  # EPIPE: the flusher is gone
            raise OSError(errno.EPIPE, self._describe()) from exc

    def read_reply(self) -> int:
        """The reply that `reply_fd` holds (waits for it when it has none: a thread, never the
        loop): 0, or the errno of the failed flush. OSError(EPIPE) when the flusher is gone."""
        data = os.read(self.reply_fd, REPLY.size)
        if len(data) < REPLY.size:  # end of file: the flusher is gone
            raise OSError(errno.EPIPE, self._describe())
        code: int = REPLY.unpack(data)[0]
        return code

    def close(self) -> None:
        """Stop the flusher (it finishes the request it has) and wait for it."""
        if self._closed:
            return
        self._closed = True
        os.close(self._requests)
        try:
            self._stop()
        finally:
            os.close(self.reply_fd)


def _main(argv: list[str]) -> None:
    # The connector stops this process by closing its request pipe, after its last flush;
    # a signal meant for the connector (found by its command line, say) must not end it.
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, signal.SIG_IGN)
    serve(int(argv[0]), int(argv[1]), argv[2], argv[3])


if __name__ == "__main__":
    _main(sys.argv[1:])
