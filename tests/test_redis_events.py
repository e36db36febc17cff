"""incognito_onion/redis_events.py: what one worker publishes for the others, on a real
redis-server (our supervisor's). Many emits at once leave in fewer round trips than emits, in
order; with redis killed they are dropped with a warning, never raised, and once the
supervisor has restarted redis publishing goes on by itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

from redis.exceptions import ConnectionError as RedisConnectionError

from incognito_onion.redis_events import BatchedRedisManager
from incognito_onion.shared_rooms import redis_client
from tests.support.server import until


async def listen(url: str, channel: str, got: list[dict]) -> asyncio.Task:
    """Collects every message on ``channel`` into ``got`` (as another worker would)."""
    r = redis_client(url, decode=False)
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)

    async def read() -> None:
        try:
            while True:
                msg = await pubsub.get_message(timeout=None)
                if msg is not None:
                    got.append(json.loads(msg["data"]))
        finally:
            await pubsub.aclose()
            await r.aclose()

    return asyncio.create_task(read())


async def test_emits_leave_in_batches_in_order(redis_url):
    got: list[dict] = []
    reader = await listen(redis_url, "io-test", got)
    mgr = BatchedRedisManager(redis_url, channel="io-test")
    try:
        for i in range(500):  # what one turn of a busy worker's loop may emit
            await mgr._publish({"method": "emit", "event": "message", "data": [i]})
        await until(lambda: len(got) >= 500, what="500 messages")
        assert [m["data"] for m in got] == [[i] for i in range(500)]
        assert 1 <= mgr.batches < 500, mgr.batches  # fewer round trips than messages
    finally:
        reader.cancel()
        await mgr.redis.aclose()


async def test_with_redis_down_emits_are_dropped_and_publishing_comes_back(redis_sup, caplog):
    got: list[dict] = []
    mgr = BatchedRedisManager(redis_sup.url, channel="io-test")
    await mgr._publish({"n": 0})
    await until(lambda: mgr.batches == 1, what="the first batch")
    old = redis_sup.pid
    os.kill(old, signal.SIGKILL)
    await mgr._publish({"n": 1})  # never raises: the flusher tries, and drops
    await until(lambda: "events to other workers dropped" in caplog.text, what="the warning")
    await until(lambda: redis_sup.restarts == 1 and redis_sup.pid not in (None, old),
                   what="redis-server restarted by its supervisor")
    reader = await listen(redis_sup.url, "io-test", got)
    try:
        await mgr._publish({"n": 2})
        await until(lambda: got, what="a message after the restart")
        assert got == [{"n": 2}]
    finally:
        reader.cancel()
        await mgr.redis.aclose()


async def test_a_worker_tens_of_megabytes_behind_is_not_cut_off(redis_url):
    # redis's default cuts a subscriber off past 32 MB waiting for it (and everything in it
    # is lost): a worker seconds behind under load lost its link to the others so. Our
    # redis-server gives it 256 MB.
    sub = redis_client(redis_url, decode=False)
    pubsub = sub.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("lagging")
    pub = redis_client(redis_url, decode=False)
    try:
        block = b"x" * 65536
        for _ in range(640):  # 40 MB that the subscriber does not read yet
            await pub.publish("lagging", block)
        got = 0
        end = time.monotonic() + 20
        while got < 640 and time.monotonic() < end:
            try:
                msg = await pubsub.get_message(timeout=1)
            except RedisConnectionError as exc:  # redis closed the link
                raise AssertionError(f"the link was cut off after {got} messages") from exc
            got += msg is not None  # (None: nothing yet, or the subscription's own reply)
        assert got == 640
    finally:
        await pubsub.aclose()
        await sub.aclose()
        await pub.aclose()
