"""Stopping a background task, as every supervisor, link and heartbeat does when it closes."""

from __future__ import annotations

import asyncio

GRACE = 1.0  # seconds between cancellations of a task that has not ended


async def cancel_and_wait(task: asyncio.Future | None, grace: float = GRACE) -> None:
    """Cancels ``task`` (None: nothing to stop) and waits until it has ended, so nothing it
    does outlives its owner's close; its cancellation is not an error, any other exception
    it ended with is raised here.

    Cancels again each ``grace`` seconds while it runs on: on Python 3.11 a cancellation that
    lands as an ``asyncio.wait_for`` inside the task completes is swallowed (gh-86296), and
    the task goes on as if never cancelled; a close waiting for it would wait for ever."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=grace)
    if not task.cancelled():
        task.result()
