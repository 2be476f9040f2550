"""The delivery rate cap (`_RateLimiter`, a token bucket) on a fake clock: when each send may go,
computed, never measured."""

from __future__ import annotations

import pytest

from connector.delivery.worker import _RateLimiter
from tests.support.fake_time import FakeTime


async def release_times(rate: float, sends: int, fake: FakeTime) -> list[float]:
    limiter = _RateLimiter(rate, fake.clock, fake.sleep)
    times = []
    for _ in range(sends):
        await limiter.acquire()
        times.append(round(fake.now, 9))
    return times


async def test_a_burst_of_one_seconds_worth_then_one_send_per_interval() -> None:
    fake = FakeTime()
    times = await release_times(20, 30, fake)
    assert times[:20] == [0.0] * 20  # the bucket starts full: one second's worth at once
    assert times[20:] == [pytest.approx(0.05 * n) for n in range(1, 11)]  # then 1 per 50 ms


async def test_an_idle_bucket_refills_but_never_past_one_seconds_worth() -> None:
    fake = FakeTime()
    limiter = _RateLimiter(10, fake.clock, fake.sleep)
    for _ in range(10):
        await limiter.acquire()
    fake.now += 60.0  # a minute idle: still only 10 at once
    released = []
    for _ in range(11):
        await limiter.acquire()
        released.append(round(fake.now - 60.0, 9))
    assert released[:10] == [0.0] * 10
    assert released[10] == pytest.approx(0.1)


async def test_a_rate_under_one_per_second_still_lets_one_through() -> None:
    fake = FakeTime()
    assert await release_times(0.5, 3, fake) == [0.0, pytest.approx(2.0), pytest.approx(4.0)]


async def test_no_cap_never_waits() -> None:
    fake = FakeTime()
    assert await release_times(0, 100, fake) == [0.0] * 100
    assert fake.sleeps == []
