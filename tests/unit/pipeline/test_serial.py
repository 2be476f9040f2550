"""`KeyedLocks`: one key's holders one at a time, in order; other keys free; nothing kept."""

from __future__ import annotations

import asyncio

import pytest

from connector.pipeline.serial import KeyedLocks


async def test_holders_of_one_key_run_one_at_a_time_in_arrival_order() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    events: list[str] = []

    async def holder(key: str, name: str) -> None:
        async with locks.hold(key):
            events.append(f"{name} in")
            await asyncio.sleep(0.01)
            events.append(f"{name} out")

    await asyncio.gather(holder("a", "1"), holder("a", "2"), holder("a", "3"))
    assert events == ["1 in", "1 out", "2 in", "2 out", "3 in", "3 out"]
    assert len(locks) == 0  # nothing kept once released


async def test_other_keys_do_not_wait() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    inside = asyncio.Event()
    release = asyncio.Event()

    async def long_holder() -> None:
        async with locks.hold("a"):
            inside.set()
            await release.wait()

    task = asyncio.create_task(long_holder())
    await inside.wait()
    async with locks.hold("b"):  # would hang if "b" waited for "a"
        assert len(locks) == 2
    release.set()
    await task
    assert len(locks) == 0


async def test_a_holder_that_fails_or_is_cancelled_releases_its_key() -> None:
    locks: KeyedLocks[str] = KeyedLocks()

    async def failing() -> None:
        async with locks.hold("a"):
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await failing()
    waiter_entered = asyncio.Event()

    async def waiter() -> None:
        async with locks.hold("a"):
            waiter_entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(waiter())
    await waiter_entered.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    async with locks.hold("a"):
        pass
    assert len(locks) == 0
