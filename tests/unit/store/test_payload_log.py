"""The payload log: records survive reopening, a torn tail is overwritten, segments rotate, and
the zeroed space is extended ahead of the writer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connector.errors import StoreError
from connector.store.payload_log import PayloadLog, PayloadRef

STEP = 64 * 1024


def open_log(directory: Path, **kwargs: int) -> PayloadLog:
    log = PayloadLog(directory, zero_step=STEP, **kwargs)
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
    assert after.offset == refs[-1].offset + 12 + refs[-1].length  # resumes after the last one
    reopened.close()


def test_space_is_zeroed_ahead_of_the_writer(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(b"x" * 1000)
    log.close()
    (segment,) = tmp_path.glob("segment-*.log")
    assert segment.stat().st_size >= STEP  # allocated beyond the data, so syncs need no metadata


def test_torn_tail_is_overwritten(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    kept = log.append(b"a" * 5000)
    torn = log.append(b"b" * 5000)
    log.sync()
    log.close()
    (segment,) = tmp_path.glob("segment-*.log")
    with open(segment, "r+b") as f:  # simulate a write that never reached the disk whole
        f.seek(torn.offset + 12 + 2000)
        f.write(b"\0" * 3000)
    reopened = open_log(tmp_path)
    replacement = reopened.append(b"c" * 10)
    assert replacement.offset == torn.offset
    assert reopened.read(kept) == b"a" * 5000
    assert reopened.read(replacement) == b"c" * 10
    reopened.close()


def test_segments_rotate_and_stay_readable(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=20_000)
    refs = [log.append(bytes([65 + i]) * 7000) for i in range(6)]
    log.sync()
    assert len({r.segment for r in refs}) == 3
    log.close()
    reopened = open_log(tmp_path, segment_bytes=20_000)
    assert reopened.append(b"z").segment == refs[-1].segment
    for i, ref in enumerate(refs):
        assert reopened.read(ref) == bytes([65 + i]) * 7000
    reopened.close()


def test_a_record_larger_than_the_zero_step(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    big = os.urandom(5 * STEP)
    ref = log.append(big)
    log.sync()
    assert log.read(ref) == big
    log.close()


def test_reference_to_a_missing_segment(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    with pytest.raises(StoreError, match="missing"):
        log.read(PayloadRef(99, 0, 10))
    log.close()
