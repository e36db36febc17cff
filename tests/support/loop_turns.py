"""Counting turns of the event loop, to see what a test's code ran in the same turn."""

from __future__ import annotations

import asyncio


class LoopTurns:
    """While entered (``with LoopTurns() as turns:``), ``turns.n`` goes up by one per turn of
    the running event loop: a callback that bumps it and schedules itself again with
    ``call_soon``, so it runs once in every turn. ``turns.ready`` has, per turn, how many
    callbacks the loop's ready queue held for the next turn (asyncio's own loop, which
    pytest-asyncio runs: its private ``_ready``), to see what wakes up turn after turn."""

    def __init__(self) -> None:
        self.n = 0
        self.ready: list[int] = []
        self._on = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def _tick(self) -> None:
        self.n += 1
        self.ready.append(len(getattr(self._loop, "_ready", ())))
        if self._on and self._loop is not None:
            self._loop.call_soon(self._tick)

    def __enter__(self) -> LoopTurns:
        self._loop = asyncio.get_running_loop()
        self._on = True
        self._tick()
        return self

    def __exit__(self, *exc: object) -> None:
        self._on = False
