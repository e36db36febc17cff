"""Stopping a background task, as every supervisor, link and heartbeat does when it closes."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Future | None) -> None:
    """Cancels ``task`` (None: nothing to stop) and waits until it has ended, so nothing it
    does outlives its owner's close; its cancellation is not an error."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
