"""CommitRecorder: what the commit threads count for `mssconnector_store_commit_*`."""

from __future__ import annotations

import threading

from connector.store import COMMIT_BUCKETS, CommitStats
from connector.store._shared import CommitRecorder


def test_a_new_recorder_has_seen_nothing() -> None:
    assert CommitRecorder().snapshot() == CommitStats()


def test_commits_fall_in_cumulative_buckets() -> None:
    recorder = CommitRecorder()
    recorder.record(0.0003, 2)  # under the first bound
    recorder.record(0.0005, 1)  # on a bound: counted there (le)
    recorder.record(0.003, 4)  # between 0.002 and 0.005
    recorder.record(60.0, 1)  # over the last bound: +Inf only
    stats = recorder.snapshot()
    assert (stats.commits, stats.jobs) == (4, 8)
    assert abs(stats.seconds - 60.0038) < 1e-9
    by_bound = dict(zip(COMMIT_BUCKETS, stats.buckets, strict=True))
    assert by_bound[0.0005] == 2
    assert by_bound[0.001] == 2
    assert by_bound[0.002] == 2
    assert by_bound[0.005] == 3
    assert by_bound[COMMIT_BUCKETS[-1]] == 3  # the fourth is only in +Inf (`commits`)


def test_threads_recording_at_once_lose_nothing() -> None:
    recorder = CommitRecorder()

    def record() -> None:
        for _ in range(10_000):
            recorder.record(0.001, 1)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = recorder.snapshot()
    assert (stats.commits, stats.jobs) == (40_000, 40_000)
    assert stats.buckets[COMMIT_BUCKETS.index(0.001)] == 40_000
