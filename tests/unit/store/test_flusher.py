"""The flusher: a process of its own that fdatasyncs the WAL and payload segments on request,
answers each request with 0 or the errno of the failed flush, survives the terminal's Ctrl-C
(the connector drains, then closes it) and exits when its request pipe closes."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connector.store import flusher as flusher_module
from connector.store.flusher import REQUEST, WAL, Flusher, segment_path


def test_it_flushes_the_wal_and_segments_and_names_what_failed(tmp_path: Path) -> None:
    wal, payloads = tmp_path / "store.db-wal", tmp_path / "payloads"
    payloads.mkdir()
    Path(segment_path(str(payloads), 3)).write_bytes(b"MSP1")
    flusher = Flusher.process(wal, payloads)
    try:
        flusher.request_wal()
        assert flusher.read_reply() == 0
        assert wal.exists()  # opened (created) by the process itself
        flusher.request_segment(3)
        assert flusher.read_reply() == 0
        flusher.request_segment(4)  # no such segment
        assert flusher.read_reply() == errno.ENOENT
        flusher.request_wal()  # and it goes on
        assert flusher.read_reply() == 0
    finally:
        flusher.close()


def test_ctrl_c_does_not_stop_it_closing_its_pipe_does(tmp_path: Path) -> None:
    flusher = Flusher.process(tmp_path / "store.db-wal", tmp_path)
    assert flusher.pid is not None
    flusher.request_wal()
    assert flusher.read_reply() == 0  # started, its signal handlers set
    os.kill(flusher.pid, signal.SIGINT)
    os.kill(flusher.pid, signal.SIGTERM)
    time.sleep(0.1)
    flusher.request_wal()
    assert flusher.read_reply() == 0
    flusher.close()
    # Reaped by close(): the pid is no child of this process any more.
    assert not Path(f"/proc/{flusher.pid}").exists() or _not_ours(flusher.pid)


def _not_ours(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1]) != os.getpid()


def test_it_exits_quietly_when_the_connector_dies_mid_flush(tmp_path: Path) -> None:
    """The connector killed (SIGKILL) while a flush is under way: the reply has nowhere to go;
    the process ends without a traceback on the connector's stderr."""
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-I", "-S", flusher_module.__file__, str(requests_r), str(replies_w),
         str(tmp_path / "store.db-wal"), str(tmp_path)],
        pass_fds=(requests_r, replies_w), stderr=subprocess.PIPE)
    os.close(requests_r)
    os.close(replies_w)
    os.close(replies_r)  # what the connector's death does to the reply pipe
    os.write(requests_w, REQUEST.pack(WAL, 0))
    os.close(requests_w)
    _, stderr = child.communicate(timeout=10)
    assert child.returncode == 0
    assert stderr == b""


def test_signals_for_the_connector_do_not_reach_it(tmp_path: Path) -> None:
    """A reload (SIGHUP), a hang-up or a signal to the connector's process group: the flusher
    runs in a session of its own and ignores them; the connector closes it."""
    flusher = Flusher.process(tmp_path / "store.db-wal", tmp_path)
    assert flusher.pid is not None
    try:
        assert os.getsid(flusher.pid) != os.getsid(0)
        for number in (signal.SIGHUP, signal.SIGQUIT, signal.SIGINT, signal.SIGTERM):
            os.kill(flusher.pid, number)
        time.sleep(0.1)
        flusher.request_wal()
        assert flusher.read_reply() == 0
    finally:
        flusher.close()


def test_a_flusher_that_cannot_start_is_refused_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(OSError, match="flush process"):
        Flusher.process(tmp_path / "store.db-wal", tmp_path)


def test_it_starts_in_a_process_with_more_than_1024_descriptors(tmp_path: Path) -> None:
    """A server with many connections: its pipes get numbers past select()'s limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the descriptor limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        flusher = Flusher.process(tmp_path / "store.db-wal", tmp_path)
        assert flusher.reply_fd > 1024
        flusher.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_wal_descriptor_follows_a_replaced_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite replaces the WAL when its last connection closes: the next flush opens the new
    file (looked at once a second; here at every call)."""
    monkeypatch.setattr(flusher_module, "_INODE_CHECK_SECONDS", 0.0)
    wal = tmp_path / "store.db-wal"
    wal_file = flusher_module.WalFile(str(wal))
    first = os.fstat(wal_file.descriptor()).st_ino
    assert wal_file.descriptor() == wal_file.descriptor()  # kept while the file stays
    wal.rename(tmp_path / "old-wal")  # kept: its inode number cannot be given to the new one
    wal.write_bytes(b"new")
    assert os.fstat(wal_file.descriptor()).st_ino == wal.stat().st_ino != first
    wal_file.close()


_MIB = 1024 * 1024


def test_flushed_payload_bytes_leave_the_page_cache_but_the_newest(tmp_path: Path) -> None:
    """A segment's records are written once: after a flush, what lies more than `keep_cached`
    behind its end leaves the page cache, and the whole segment when the next one starts; the
    bytes read back the same from the disk."""
    payloads = tmp_path / "payloads"
    payloads.mkdir()
    first, second = Path(segment_path(str(payloads), 1)), Path(segment_path(str(payloads), 2))
    data = os.urandom(10 * _MIB)
    first.write_bytes(data)  # written, not yet flushed: all of it in the page cache
    second.write_bytes(b"MSP1")
    assert _resident_pages(first, 0, 10 * _MIB) == 10 * _MIB // 4096
    flusher = Flusher.thread(tmp_path / "store.db-wal", payloads, keep_cached=2 * _MIB)
    try:
        flusher.request_segment(1)
        assert flusher.read_reply() == 0
        assert _resident_pages(first, 0, 8 * _MIB) == 0
        assert _resident_pages(first, 8 * _MIB, 10 * _MIB) == 2 * _MIB // 4096
        flusher.request_segment(2)
        assert flusher.read_reply() == 0
        assert _resident_pages(first, 0, 10 * _MIB) == 0
    finally:
        flusher.close()
    assert first.read_bytes() == data


def test_a_small_segment_is_left_in_the_page_cache(tmp_path: Path) -> None:
    """Under `keep_cached` (and a few megabytes more) a flush drops nothing."""
    segment = Path(segment_path(str(tmp_path), 1))
    segment.write_bytes(os.urandom(5 * _MIB))
    segment_file = flusher_module.SegmentFile(str(tmp_path), keep_cached=2 * _MIB)
    os.fdatasync(segment_file.descriptor(1))
    segment_file.flushed()  # 3 MiB behind the end: under the 4 MiB step
    assert _resident_pages(segment, 0, 5 * _MIB) == 5 * _MIB // 4096
    segment_file.close()


def _resident_pages(path: Path, start: int, end: int) -> int:
    """How many pages of the file's bytes [start, end) are in the page cache (mincore(2) on a
    mapping of the file, which reads nothing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    with path.open("r+b") as file, mmap.mmap(file.fileno(), 0) as mapped:
        vector = (ctypes.c_ubyte * ((len(mapped) + 4095) // 4096))()
        anchor = ctypes.c_char.from_buffer(mapped)
        try:
            if libc.mincore(ctypes.addressof(anchor), len(mapped), vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del anchor  # the mapping cannot close while a ctypes object points into it
        return sum(page & 1 for page in vector[start // 4096:end // 4096])
