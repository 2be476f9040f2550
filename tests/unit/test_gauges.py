"""GaugeRefresher: the store's size and free disk (the other gauges: tests/integration)."""

from __future__ import annotations

from connector.errors import StoreUnavailable
from connector.observability.gauges import GaugeRefresher
from connector.observability.metrics import ConnectorMetrics
from connector.store import DiskUsage, OutboxStat


async def no_outbox() -> list[OutboxStat]:
    return []


def value(metrics: ConnectorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_store_size_and_free_disk_are_set() -> None:
    metrics = ConnectorMetrics()

    async def usage() -> DiskUsage:
        return DiskUsage(database=4096, payloads=70_000, free=10**9)

    await GaugeRefresher(metrics, no_outbox, list, disk_usage=usage).refresh()
    assert value(metrics, "mssconnector_store_bytes", part="database") == 4096
    assert value(metrics, "mssconnector_store_bytes", part="payloads") == 70_000
    assert value(metrics, "mssconnector_store_free_bytes") == 10**9


async def test_a_remote_database_sets_no_free_disk() -> None:
    metrics = ConnectorMetrics()

    async def usage() -> DiskUsage:
        return DiskUsage(database=8_000_000)  # PostgreSQL: its disk is the server's

    await GaugeRefresher(metrics, no_outbox, list, disk_usage=usage).refresh()
    assert value(metrics, "mssconnector_store_bytes", part="database") == 8_000_000
    # Never set, not exported: a 0 would page MSSConnectorStoreDiskLow on every PostgreSQL
    # deployment.
    assert value(metrics, "mssconnector_store_free_bytes") is None


async def test_an_unavailable_store_leaves_the_last_values() -> None:
    metrics = ConnectorMetrics()
    answers = [DiskUsage(database=4096, payloads=1, free=5)]

    async def usage() -> DiskUsage:
        if not answers:
            raise StoreUnavailable("the store is closed")
        return answers.pop()

    refresher = GaugeRefresher(metrics, no_outbox, list, disk_usage=usage)
    await refresher.refresh()
    await refresher.refresh()  # logs a warning, raises nothing
    assert value(metrics, "mssconnector_store_bytes", part="database") == 4096
    assert value(metrics, "mssconnector_store_free_bytes") == 5


async def test_a_tenant_gone_leaves_no_crl_series_behind() -> None:
    """A removed tenant (or one a reload could not start) kept its last, maybe negative,
    value: MSSConnectorCrlExpired would have fired for good."""
    from datetime import UTC, datetime, timedelta

    from connector.observability.gauges import RevocationLists

    metrics = ConnectorMetrics()
    running = [RevocationLists("chu-a", "smtp", datetime.now(UTC) - timedelta(hours=1)),
               RevocationLists("chu-b", "imap", datetime.now(UTC) + timedelta(days=3))]
    refresher = GaugeRefresher(metrics, no_outbox, list, crls=lambda: list(running))
    await refresher.refresh()
    expired = value(metrics, "mssconnector_crl_next_update_seconds", tenant="chu-a", use="smtp")
    assert expired is not None
    assert expired < 0
    running.pop(0)
    await refresher.refresh()
    assert value(metrics, "mssconnector_crl_next_update_seconds",
                 tenant="chu-a", use="smtp") is None
    assert value(metrics, "mssconnector_crl_next_update_seconds",
                 tenant="chu-b", use="imap") is not None


async def test_the_store_is_unreachable_after_two_failed_reads_in_a_row() -> None:
    """What /readyz reads: a replica cut off from PostgreSQL goes out of the Service; one
    transient error does not (a single SQLite pod would leave it for nothing)."""
    metrics = ConnectorMetrics()
    down = StoreUnavailable("connection refused")
    answers: list[BaseException | None] = [down, None, down, down, None]

    async def stats() -> list[OutboxStat]:
        failure = answers.pop(0)
        if failure is not None:
            raise failure
        return []

    refresher = GaugeRefresher(metrics, stats, list)
    seen = []
    for _ in range(5):
        await refresher.refresh()
        seen.append(refresher.store_reachable)
    assert seen == [True, True, True, False, True]


async def test_a_bug_in_one_refresh_does_not_end_the_gauges() -> None:
    """The task ran unguarded: one unexpected error ended it, and readiness with it."""
    import asyncio

    import structlog

    metrics = ConnectorMetrics()
    reads = 0

    async def stats() -> list[OutboxStat]:
        nonlocal reads
        reads += 1
        return []

    def broken() -> list[object]:
        raise RuntimeError("a bug")

    refresher = GaugeRefresher(metrics, stats, list, certificates=broken,  # type: ignore[arg-type]
                               interval=0.01)
    with structlog.testing.capture_logs() as logs:
        refresher.start()
        await asyncio.sleep(0.1)
        await refresher.stop()
    assert reads > 2
    assert "gauges_refresh_failed" in [e["event"] for e in logs]
