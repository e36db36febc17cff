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


class _EachTurn:
    """A callback once per turn of the event loop for as long as :meth:`_turn` says there is
    more to do: what :class:`TurnGate` and :class:`TurnDelay` share. Its state belongs to one
    loop: on another (tests run several) it starts afresh (:meth:`_reset`), instead of waiting
    for the callback of a loop that ended."""

    __slots__ = ("_scheduled", "_loop")

    def __init__(self) -> None:
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reset()

    def _reset(self) -> None:
        """Forget the waiters and counts of another loop."""

    def _turn(self) -> bool:
        """This turn's work; True while there is more for the next turns."""
        return False

    def _running(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._scheduled = loop, False
            self._reset()
        return loop

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._scheduled = False
        if self._turn() and self._loop is not None:
            self._schedule(self._loop)


class TurnGate(_EachTurn):
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

    __slots__ = ("per_turn", "used", "waiters")

    def __init__(self, per_turn: int):
        self.per_turn = per_turn
        super().__init__()

    def _reset(self) -> None:
        self.used = 0  # passes counted against the current turn
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        loop = self._running()
        if self.used < self.per_turn and not self.waiters:
            self.used += 1
            self._schedule(loop)
            return
        fut = loop.create_future()
        self.waiters.append(fut)
        self._schedule(loop)
        await fut  # released (and counted) by _turn

    def _turn(self) -> bool:
        """The count starts afresh with the oldest waiters, which run in the next turn (a
        cancelled one is skipped)."""
        self.used = 0
        while self.waiters and self.used < self.per_turn:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                self.used += 1
        return bool(self.used or self.waiters)


class TurnDelay(_EachTurn):
    """Waits of a number of turns of the event loop, for any number of waiters at the cost of
    one callback per turn (while someone waits) and one wake-up per waiter.

    Why: a connection over its frame budget waits some turns before its next frame
    (``fastpath.LOW_PRIORITY_TURNS``). As ``sleep(0)`` in a loop that was a task step through
    the connection's whole coroutine stack per turn per flooding connection: a hundred
    flooders made every turn a hundred steps longer, which every honest frame waited behind."""

    __slots__ = ("turn", "due")

    def _reset(self) -> None:
        self.turn = 0  # turns counted while someone waited
        self.due: dict[int, list[asyncio.Future[None]]] = {}

    async def turns(self, n: int) -> None:
        """Resume about ``n`` turns from now (``n`` + 1: released in the n-th, run in the
        next; as ``n`` times ``sleep(0)`` would, give or take one)."""
        loop = self._running()
        fut = loop.create_future()
        self.due.setdefault(self.turn + max(1, n), []).append(fut)  # 0 would never come
        self._schedule(loop)
        await fut

    def _turn(self) -> bool:
        """A released waiter runs in the next turn."""
        self.turn += 1
        for fut in self.due.pop(self.turn, ()):
            if not fut.done():
                fut.set_result(None)
        return bool(self.due)


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
