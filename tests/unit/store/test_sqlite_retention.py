"""The SQLite store's retention purge deletes the payload-log segments no row points at any more
(the rows' side is in tests/contract/test_retention_contract.py)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from connector.store import InboundStatus
from connector.store.sqlite import SQLiteStore
from tests.contract.test_intake_outbox_contract import mail
from tests.contract.test_store_contract import inbound

DAY = 86400.0
PDF = b"%PDF" + b"x" * 70_000  # a record of the payload log (not inline)


def segments(store: SQLiteStore) -> list[str]:
    directory = store.path.with_name(store.path.name + ".payloads")
    return sorted(p.name for p in directory.glob("segment-*.log"))


def message(n: int, at: float, status: InboundStatus = InboundStatus.REJECTED):  # type: ignore[no-untyped-def]
    raw = f"MSH|^~\\&|A|B|C|D|1||ORU^R01|R{n}|P|2.5\rOBX|1|ED|".encode() + PDF + b"\r"
    return inbound(raw, control_id=f"R{n}", at=at, status=status)


async def test_segments_nothing_points_at_are_deleted(tmp_path: Path) -> None:
    # 100 kB segments: two 70 kB records each (a segment past its size takes no more).
    store = SQLiteStore(tmp_path / "store.db", payload_segment_bytes=100_000)
    store.open()
    try:
        now = time.time()
        old = now - 10 * DAY
        for n in range(4):  # segments 1 and 2
            await store.record_inbound(message(n, old))
        # Segment 3: a message and its mail, which still waits: both stay.
        waiting = await store.record_inbound(
            replace(message(4, old, InboundStatus.ACCEPTED), outbox=(mail(1, PDF),)))
        for n in range(5, 8):  # segment 4, then 5
            await store.record_inbound(message(n, old))
        assert segments(store) == [f"segment-{n:06d}.log" for n in (1, 2, 3, 4, 5)]
        recent = await store.record_inbound(message(9, now))  # segment 5 too, the current one

        counts = await store.purge_payloads(before=now - DAY, now=now)

        assert (counts.inbound, counts.outbox, counts.segments) == (7, 0, 3)
        assert segments(store) == ["segment-000003.log", "segment-000005.log"]
        for kept in (waiting.inbound_id, recent.inbound_id):
            detail = await store.get_inbound(kept)
            assert detail is not None
            assert detail.raw.endswith(PDF + b"\r")
        (row,) = await store.list_outbox()
        outbox = await store.get_outbox(row.id)
        assert outbox is not None
        assert outbox.payload == PDF
        assert (await store.purge_payloads(before=now - DAY, now=now)).total == 0
    finally:
        await store.close()
    reopened = SQLiteStore(tmp_path / "store.db", payload_segment_bytes=100_000)
    reopened.open()  # appends go to a new segment; the deleted ones are not missed
    try:
        after = await reopened.record_inbound(message(10, time.time()))
        detail = await reopened.get_inbound(after.inbound_id)
        assert detail is not None
        assert detail.raw.endswith(PDF + b"\r")
    finally:
        await reopened.close()


async def test_a_quiet_sites_purged_payloads_leave_the_disk_once_their_segment_ends(
        tmp_path: Path) -> None:
    """One old message on a site that sends little: its segment is the current one until the
    process restarts (or a day of appends passes), then the purge deletes it with its bytes."""
    store = SQLiteStore(tmp_path / "store.db")
    store.open()
    now = time.time()
    try:
        old = await store.record_inbound(message(1, now - 200 * DAY))
        counts = await store.purge_payloads(before=now - 90 * DAY, now=now)
        assert (counts.inbound, counts.segments) == (1, 0)  # the current segment stays...
    finally:
        await store.close()
    reopened = SQLiteStore(tmp_path / "store.db")
    reopened.open()  # ...until the next one starts
    try:
        counts = await reopened.purge_payloads(before=now - 90 * DAY, now=now)
        assert counts.segments == 1
        assert segments(reopened) == ["segment-000002.log"]  # the current one, empty
        detail = await reopened.get_inbound(old.inbound_id)
        assert detail is not None
        assert detail.raw == b""
    finally:
        await reopened.close()
