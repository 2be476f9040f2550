"""Plumbing both store adapters share: waking callers from a writer thread, reading summaries."""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from connector.store.model import InboundStatus, InboundSummary

# Column order `summary_from_row` expects (the same in both schemas).
SUMMARY_COLUMNS = (
    "id, tenant_id, listener, peer, received_at, sending_application, sending_facility,"
    " message_type, control_id, version, status, ack_code, error_code, error_detail,"
    " retransmissions, control_id_reused, size")
SUMMARY_WIDTH = 17


class Waiter(Protocol):
    """A queued job: the caller's event loop and the future it awaits."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def future(self) -> asyncio.Future[Any]: ...


Outcome = tuple[Waiter, Any, BaseException | None]
J = TypeVar("J")


def take_batch(jobs: queue.SimpleQueue[Any], stop: object, kind: type[J], limit: int
               ) -> tuple[list[J], bool]:
    """Block for one job, then take whatever else is queued, up to `limit`: the group of a group
    commit. Returns the jobs and whether `stop` was seen (the writer ends after this batch)."""
    first = jobs.get()
    if first is stop:
        return [], True
    assert isinstance(first, kind)
    batch = [first]
    while len(batch) < limit:
        try:
            item = jobs.get_nowait()
        except queue.Empty:
            break
        if item is stop:
            return batch, True
        assert isinstance(item, kind)
        batch.append(item)
    return batch, False


def resolve(outcomes: Sequence[Outcome]) -> None:
    """Hand results back to each caller's event loop: one wake-up per loop per batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: its callers are gone
            loop.call_soon_threadsafe(_set_results, items)


def _set_results(items: list[Outcome]) -> None:
    for job, result, error in items:
        if job.future.cancelled():
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)


def summary_from_row(row: Sequence[Any]) -> InboundSummary:
    return InboundSummary(
        id=int(row[0]), tenant_id=row[1], listener=row[2], peer=row[3], received_at=row[4],
        sending_application=row[5], sending_facility=row[6], message_type=row[7],
        control_id=row[8], version=row[9], status=InboundStatus(row[10]), ack_code=row[11],
        error_code=row[12], error_detail=row[13], retransmissions=int(row[14]),
        control_id_reused=bool(row[15]), size=int(row[16]))
