"""Per-connection rate limiting: a token bucket, and a throttle so the `rate_limited` error
itself cannot become a flood back to the client; and a gate spreading a burst of work over
turns of the event loop."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class TokenBucket:
    """``rate`` events per second sustained, ``burst`` at once; ``fill``: the share of the
    burst granted at the start, the rest earned at ``rate``."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "clock")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 *, fill: float = 1.0):
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst) * fill
        self.clock = clock
        self.stamp = clock()

    def has(self, cost: float = 1.0, now: float | None = None) -> bool:
        """Whether ``cost`` tokens are there now, without taking them; ``now``: a reading of
        ``clock`` the caller made (one reading for several buckets, once per frame on the
        relay's hot path)."""
        if now is None:
            now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens >= cost

    def allow(self, cost: float = 1.0, now: float | None = None) -> bool:
        if self.has(cost, now):
            self.tokens -= cost
            return True
        return False

    def spend(self, cost: float) -> None:
        """Takes ``cost`` tokens whether or not they are there, into debt down to ``-burst``:
        a penalty, which the bucket then earns back at ``rate`` before it allows again."""
        self.has(0.0)  # refill up to now first
        self.tokens = max(-self.burst, self.tokens - cost)


class TurnGate:
    """About ``per_turn`` passes per turn of the event loop; the others wait, first come first
    served, for later turns.

    Why: a hundred clients connecting at once had every handshake (aiohttp's upgrade,
    engine.io's session, the first writes) run in one turn of the loop, and every established
    connection's next event waited behind all of them (tests/test_attack.py: the honest p99
    under attack was ~20 ms with the storm, ~5 ms without). Spread over turns, the storm
    interleaves with everyone else's traffic.

    The waiters sleep on futures that one callback per turn releases: a waiter that polled
    (``sleep(0)`` until a slot is free) cost a task step per waiter per turn, so a storm of a
    hundred made every turn a hundred steps longer for as long as it lasted."""

    __slots__ = ("per_turn", "used", "waiters", "_scheduled")

    def __init__(self, per_turn: int):
        self.per_turn = per_turn
        self.used = 0  # passes counted against the current turn
        self.waiters: deque[asyncio.Future[None]] = deque()
        self._scheduled = False

    async def wait(self) -> None:
        if self.used < self.per_turn and not self.waiters:
            self.used += 1
            self._schedule()
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self._schedule()
        await fut  # released (and counted) by _turn

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        """Once per turn while there is anything to count: the count starts afresh with the
        oldest waiters, which run in the next turn (a cancelled one is skipped)."""
        self._scheduled = False
        self.used = 0
        while self.waiters and self.used < self.per_turn:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                self.used += 1
        if self.used or self.waiters:
            self._schedule()


class TurnDelay:
    """Waits of a number of turns of the event loop, for any number of waiters at the cost of
    one callback per turn (while someone waits) and one wake-up per waiter.

    Why: a connection over its frame budget waits some turns before its next frame
    (``fastpath.LOW_PRIORITY_TURNS``). As ``sleep(0)`` in a loop that was a task step through
    the connection's whole coroutine stack per turn per flooding connection: a hundred
    flooders made every turn a hundred steps longer, which every honest frame waited behind."""

    __slots__ = ("turn", "due", "_scheduled", "_loop")

    def __init__(self) -> None:
        self._start(None)

    def _start(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.turn = 0  # turns counted while someone waited
        self.due: dict[int, list[asyncio.Future[None]]] = {}
        self._scheduled = False
        self._loop = loop

    async def turns(self, n: int) -> None:
        """Resume about ``n`` turns from now (``n`` + 1: released in the n-th, run in the
        next; as ``n`` times ``sleep(0)`` would, give or take one)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests run several): nothing carries over
            self._start(loop)
        fut = loop.create_future()
        self.due.setdefault(self.turn + max(1, n), []).append(fut)  # 0 would never come
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._tick)
        await fut

    def _tick(self) -> None:
        """Once per turn while anyone waits; a released waiter runs in the next turn."""
        self._scheduled = False
        self.turn += 1
        for fut in self.due.pop(self.turn, ()):
            if not fut.done():
                fut.set_result(None)
        if self.due and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._tick)


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
