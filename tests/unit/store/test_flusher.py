"""The flusher: a process of its own that fdatasyncs the WAL and payload segments on request,
answers each request with 0 or the errno of the failed flush, survives the terminal's Ctrl-C
(the connector drains, then closes it) and exits when its request pipe closes."""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

from connector.store.flusher import Flusher, segment_path


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
