"""The retention purger `serve` runs: one round's counts reach the metrics; a failing store is
logged and counted, and the next round tries again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from connector.observability.metrics import ConnectorMetrics
from connector.retention import RetentionPurger
from connector.store import InboundStatus
from connector.store.sqlite import SQLiteStore
from tests.contract.test_store_contract import inbound


def value(metrics: ConnectorMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_a_round_purges_what_is_past_the_retention(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    store.open()
    metrics = ConnectorMetrics()
    purger = RetentionPurger(store, 30, metrics)
    now = time.time()
    try:
        await store.record_inbound(inbound(b"MSH|old", control_id="A", at=now - 31 * 86400,
                                           status=InboundStatus.REJECTED))
        await store.record_inbound(inbound(b"MSH|new", control_id="B", at=now - 29 * 86400,
                                           status=InboundStatus.REJECTED))
        counts = await purger.run_once(now=now)
        assert counts is not None
        assert counts.inbound == 1
        assert value(metrics, "mssconnector_store_purged_total", part="inbound") == 1
        assert (await purger.run_once(now=now + 2 * 86400)) is not None  # the second one now
        assert value(metrics, "mssconnector_store_purged_total", part="inbound") == 2
    finally:
        await store.close()
    assert await purger.run_once() is None  # the store is closed: logged, counted, no raise
    assert value(metrics, "mssconnector_store_purge_failures_total") == 1


def test_the_retention_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        RetentionPurger(SQLiteStore(tmp_path / "store.db"), 0)


async def test_a_segment_that_cannot_be_deleted_fails_the_round_not_the_task(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db", payload_segment_bytes=10_000)
    store.open()
    metrics = ConnectorMetrics()
    purger = RetentionPurger(store, 1, metrics)
    now = time.time()
    segments = tmp_path / "store.db.payloads"
    try:
        for n in range(2):  # two segments: the first one can go
            await store.record_inbound(inbound(b"MSH|" + b"x" * 20_000 + str(n).encode(),
                                               control_id=str(n), at=now - 3 * 86400,
                                               status=InboundStatus.REJECTED))
        first = segments / "segment-000001.log"
        first.unlink()
        first.mkdir()  # what unlink refuses, even to root
        assert await purger.run_once(now=now) is None
        first.rmdir()
        first.write_bytes(b"")
        assert value(metrics, "mssconnector_store_purge_failures_total") == 1
        counts = await purger.run_once(now=now)  # the next round finishes the job
        assert counts is not None
        assert counts.segments == 1
    finally:
        await store.close()


@pytest.mark.parametrize("days", [0.0, 400.0])
async def test_patient_contexts_past_their_retention_are_deleted_and_counted(
        tmp_path: Path, days: float) -> None:
    from tests.contract.test_patients_contract import inbound as adt_inbound
    from tests.support.pam import ADMISSION, fixture

    store = SQLiteStore(tmp_path / "store.db")
    store.open()
    metrics = ConnectorMetrics()
    purger = RetentionPurger(store, 30, metrics, patient_context_days=days)
    try:
        await store.record_inbound(adt_inbound(fixture(ADMISSION)))
        counts = await purger.run_once(now=time.time() + 401 * 86400)
        assert counts is not None
        assert counts.patients == (1 if days else 0)  # 0 days: the contexts are kept
        assert value(metrics, "mssconnector_store_purged_total", part="patients") == counts.patients
        assert (await store.get_patient("t1", ipp="000003") is None) is bool(days)
    finally:
        await store.close()
