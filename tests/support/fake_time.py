"""A clock that moves only when the code under test sleeps: durations computed, never measured."""

from __future__ import annotations


class FakeTime:
    """`clock()` and `sleep()` for code that takes both (`_RateLimiter`)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
