"""When to try a mail again: exponential backoff with jitter, within a budget (pure).

Attempt n (1 for the first send) that failed temporarily is retried after
`min(maximum, initial * factor ** (n - 1))`, spread by ± `jitter` so that a backlog released by an
operator coming back does not return as one wave. Once `budget` has passed since the row was
enqueued, the next temporary failure makes it dead instead (48 h by default: the MSSanté
operators keep their own queues for about as long).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from connector.errors import ConfigError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_seconds: float = 60.0
    factor: float = 2.0
    maximum_seconds: float = 3600.0
    jitter: float = 0.2  # ± fraction of the delay
    budget_seconds: float = 48 * 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_seconds <= self.maximum_seconds:
            raise ConfigError("delivery.retry_initial_seconds",
                              "must be positive and at most retry_maximum_seconds")
        if self.factor < 1:
            raise ConfigError("delivery.retry_factor", "must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ConfigError("delivery.retry_jitter", "must be in [0, 1)")
        if self.budget_seconds <= 0:
            raise ConfigError("delivery.retry_budget_hours", "must be positive")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        exponent = max(0, attempt - 1)
        base = self.initial_seconds * self.factor ** min(exponent, 64)
        base = min(self.maximum_seconds, base)
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return base * (1.0 + spread)

    def next_attempt_at(self, *, attempt: int, created_at: float, now: float,
                        rng: random.Random | None = None) -> float | None:
        """When to retry, or None when the budget is spent (the row goes dead)."""
        if now - created_at >= self.budget_seconds:
            return None
        return now + self.delay(attempt, rng)
