"""incognito_onion/tasks.py: stopping a background task ends it, even one that swallowed a
cancellation (as ``asyncio.wait_for`` can on Python 3.11), and never hides its failure."""

from __future__ import annotations

import asyncio
import time

import pytest

from incognito_onion.tasks import cancel_and_wait


async def test_a_task_is_cancelled_and_awaited():
    task = asyncio.create_task(asyncio.sleep(60))
    await cancel_and_wait(task)
    assert task.cancelled()
    await cancel_and_wait(None)


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again():
    swallowed = []

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.append(True)  # goes on as if nothing happened
        await asyncio.sleep(60)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    t0 = time.monotonic()
    await asyncio.wait_for(cancel_and_wait(task, grace=0.1), 5)
    assert task.cancelled() and swallowed and time.monotonic() - t0 < 2


async def test_a_task_that_failed_raises_its_error():
    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="boom"):
        await cancel_and_wait(task)
