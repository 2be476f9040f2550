"""The payload log: records survive reopening, segments rotate, references are checked."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from connector.errors import StoreError
from connector.store.payload_log import PayloadLog, PayloadRef


def open_log(directory: Path, **kwargs: int) -> PayloadLog:
    log = PayloadLog(directory, **kwargs)
    log.open()
    return log


def test_records_round_trip_and_survive_reopen(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    refs = [log.append(bytes([i]) * (1000 + i)) for i in range(50)]
    log.sync()
    log.close()
    reopened = open_log(tmp_path)
    assert [reopened.read(r) for r in refs] == [bytes([i]) * (1000 + i) for i in range(50)]
    after = reopened.append(b"next")
    # a new segment per process: the one found may be old (retention deletes whole segments)
    assert (after.segment, after.offset) == (refs[-1].segment + 1, 0)
    reopened.sync()
    reopened.close()
    again = open_log(tmp_path)
    assert again.read(after) == b"next"
    assert again.current_segment == after.segment + 1
    again.close()


def test_a_torn_tail_is_left_behind_not_reused(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    kept = log.append(b"a" * 5000)
    log.sync()
    log.close()
    (segment,) = tmp_path.glob("segment-*.log")
    with open(segment, "ab") as f:  # a record that never reached the disk whole
        f.write(b"MSP1\x00\x00\x13\x88" + b"b" * 100)
    reopened = open_log(tmp_path)
    new = reopened.append(b"c" * 10)
    reopened.sync()
    assert (new.segment, new.offset) == (kept.segment + 1, 0)  # the torn tail is never written on
    assert segment.stat().st_size == 12 + 5000 + 108
    assert reopened.read(kept) == b"a" * 5000
    assert reopened.read(new) == b"c" * 10
    reopened.close()


def test_segments_rotate_and_stay_readable(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=20_000)
    refs = [log.append(bytes([65 + i]) * 7000) for i in range(6)]
    log.sync()
    assert len({r.segment for r in refs}) == 2  # a segment closes once it reaches its size
    log.close()
    reopened = open_log(tmp_path, segment_bytes=20_000)
    assert reopened.append(b"z").segment == refs[-1].segment + 1  # the last one is full
    for i, ref in enumerate(refs):
        assert reopened.read(ref) == bytes([65 + i]) * 7000
    reopened.close()


def test_a_large_record(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    big = os.urandom(3 * 1024 * 1024)
    ref = log.append(big)
    log.sync()
    assert log.read(ref) == big
    log.close()


def test_reference_to_a_missing_segment(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    with pytest.raises(StoreError, match="missing"):
        log.read(PayloadRef(99, 0, 10))
    log.close()


def test_records_are_written_by_sync(tmp_path: Path) -> None:
    """append() only reserves the place (the event loop runs it); sync() writes and flushes."""
    log = open_log(tmp_path)
    first, second = log.append(b"a" * 3000), log.append(b"b" * 4000)
    (segment,) = tmp_path.glob("segment-*.log")
    assert segment.stat().st_size == 0
    log.sync()
    assert segment.stat().st_size == 2 * 12 + 7000
    assert (log.read(first), log.read(second)) == (b"a" * 3000, b"b" * 4000)
    log.close()


def test_a_failed_write_leaves_later_records_where_their_references_say(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log(tmp_path)
    kept = log.append(b"k" * 2000)
    log.sync()
    log.append(b"x" * 5000)  # its batch fails: nothing references it

    def short_write(fd: int, buffers: list[bytes]) -> int:
        return os.write(fd, b"".join(buffers)[:100])

    monkeypatch.setattr(os, "writev", short_write)
    with pytest.raises(OSError, match="short write"):
        log.sync()
    monkeypatch.undo()
    after = log.append(b"y" * 3000)
    log.sync()
    assert after.offset == 12 + 2000 + 100  # right after the torn bytes
    assert (log.read(kept), log.read(after)) == (b"k" * 2000, b"y" * 3000)
    log.close()


def test_remove_segments_keeps_the_current_one_and_those_still_referenced(
        tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=500)
    refs = [log.append(bytes([i]) * 900) for i in range(5)]  # one record per segment
    log.sync()
    assert [r.segment for r in refs] == [1, 2, 3, 4, 5]
    assert log.current_segment == 5
    assert log.remove_segments(below=99, keep={2}) == 3  # 1, 3, 4; never 5, the current one
    assert sorted(p.name for p in tmp_path.glob("segment-*.log")) == [
        "segment-000002.log", "segment-000005.log"]
    assert log.read(refs[1]) == bytes([1]) * 900
    with pytest.raises(StoreError, match="segment 1 is missing"):
        log.read(refs[0])
    assert log.remove_segments(below=2, keep=set()) == 0  # nothing under 2 left
    after = log.append(b"next")
    log.sync()
    assert (after.segment, log.read(after)) == (6, b"next")
    log.close()


def test_a_segment_ends_after_its_time_however_little_it_holds(tmp_path: Path) -> None:
    """Retention deletes whole segments no row references, never the current one: a quiet site
    must not keep one segment (and its purged payloads) open for months."""
    log = PayloadLog(tmp_path, segment_seconds=0.05)
    log.open()
    first = log.append(b"a" * 100)
    log.sync()
    assert log.append(b"b").segment == first.segment  # within its time: the same segment
    log.sync()
    time.sleep(0.06)
    later = log.append(b"c")
    log.sync()
    assert (later.segment, later.offset) == (first.segment + 1, 0)
    assert log.remove_segments(below=log.current_segment, keep=set()) == 1
    assert log.read(later) == b"c"
    log.close()
