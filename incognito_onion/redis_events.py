"""socket.io events between worker processes (``server.workers`` above 1): python-socketio's
``AsyncRedisManager``, made to hold up under load.

- **A bounded, blocking pool of connections.** The library's client uses redis-py's default
  pool, which raises past 100 commands at once; the manager then logs "Cannot publish to
  redis... retrying", connects afresh and, if that fails too, drops the emit. A worker under
  1000 clients x 4 msg/s lost most of its messages so.
- **Publishes leave in batches.** The library awaits one ``PUBLISH`` round trip per emit,
  inside the handler of the event that caused it (so the next event of that connection waits
  for redis). Here an emit queues its message and returns; one flusher sends whatever queued
  meanwhile in one pipeline, in order. At light load a batch is one message; under load the
  cost per message falls as batches grow. A batch that cannot be sent twice is dropped with a
  warning (the library's behaviour per message).
- **Local deliveries the one-process way.** What the manager delivers to this process's own
  connections (its own emits, and the other workers' it reads from redis) goes through
  :class:`~incognito_onion.fastpath.FastManager` (next in the MRO).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import socketio

from .fastpath import FastManager
from .shared_rooms import redis_client

log = logging.getLogger("incognito_onion.redis_events")


class BatchedRedisManager(socketio.AsyncRedisManager, FastManager):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outbox: list[bytes] = []
        self._flusher: asyncio.Task | None = None
        self.batches = 0  # how many pipelines went out (for tests and benchmarks)

    def _redis_connect(self) -> None:
        self.redis = redis_client(self.redis_url, decode=False)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True

    async def _publish(self, data: Any) -> None:
        message = self.json.dumps(data)
        self._outbox.append(message.encode() if isinstance(message, str) else message)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            for attempt in range(2):
                try:
                    if not self.connected:
                        self._redis_connect()
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for message in batch:
                            pipe.publish(self.channel, message)
                        await pipe.execute()
                    self.batches += 1
                    break
                except Exception as exc:
                    self.connected = False
                    if attempt:
                        log.warning("%d events to other workers dropped: redis did not take "
                                    "them (%s)", len(batch), type(exc).__name__)
