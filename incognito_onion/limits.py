"""Per-connection rate limiting: a token bucket, and a throttle so the `rate_limited` error
itself cannot become a flood back to the client."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` events per second sustained, ``burst`` at once."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "clock")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.stamp = clock()

    def has(self, cost: float = 1.0) -> bool:
        """Whether ``cost`` tokens are there now, without taking them."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens >= cost

    def allow(self, cost: float = 1.0) -> bool:
        if self.has(cost):
            self.tokens -= cost
            return True
        return False


class Throttle:
    """True at most once per ``interval`` seconds."""

    __slots__ = ("interval", "last", "clock")

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self.last = float("-inf")

    def ready(self) -> bool:
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            return True
        return False
