"""socket.io events between worker processes (``server.workers`` above 1): python-socketio's
``AsyncRedisManager``, made to hold up under load and to cost little per event.

- **Its own connections to redis** (:mod:`redis_wire`). The library awaits one ``PUBLISH``
  round trip per emit through redis-py, inside the handler of the event that caused it, and
  reads through ``PubSub.listen``. Here an emit's message is queued and everything queued in
  one turn of the loop leaves in one write, in order; the subscriber hands each message over
  as it is read. A publish while redis is away is dropped with a warning (the library's
  behaviour, after its retry), never raised.
- **A worker does not read back its own events.** Every worker subscribes to the one channel,
  so redis sends each event to its sender too, where the library decoded it only to find its
  own ``host_id`` and skip it: half of what each of two workers decoded. Each message here
  starts with its sender's id (32 hex characters) and a worker skips its own before decoding.
- **An emit to one of this process's connections is not published.** The library published
  every emit; only what may reach another worker's connections (a room, or a connection held
  elsewhere) goes to redis here.
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
from .limits import Throttle
from .redis_wire import Inbox, Publisher, Subscriber
from .tasks import cancel_and_wait

log = logging.getLogger("incognito_onion.redis_events")

ID_LENGTH = 32  # uuid4().hex, the library's host_id


class BatchedRedisManager(socketio.AsyncRedisManager, FastManager):
    """See the module docstring. :meth:`start` subscribes (the server's startup calls it, so
    a worker hears the others before its first connection); else the first connection does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._own = self.host_id.encode()
        assert len(self._own) == ID_LENGTH
        self.publisher = Publisher(self.redis_url)
        self.subscriber = Subscriber(self.redis_url, [self.channel], self._received)
        self._inbox = Inbox(self.subscriber.pause_reading, self.subscriber.resume_reading)
        self._started: asyncio.Task | None = None
        self._bad = Throttle(60.0)
        self._handlers = {"emit": self._handle_emit, "callback": self._handle_callback,
                          "disconnect": self._handle_disconnect,
                          "enter_room": self._handle_enter_room,
                          "leave_room": self._handle_leave_room,
                          "close_room": self._handle_close_room}

    async def start(self) -> None:
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        await self.publisher.start()
        await self.subscriber.start()

    async def close(self) -> None:
        await cancel_and_wait(getattr(self, "thread", None))
        await self.subscriber.close()
        await self.publisher.close()

    async def emit(self, event: str, data: Any, namespace: str | None = None,
                   room: Any = None, skip_sid: Any = None, callback: Any = None,
                   to: Any = None, **kwargs: Any) -> None:
        """The library's, except that an emit to one connection of this process stays here:
        the library published every emit to every worker, so each error reply to a sender, a
        keyframe request or an SDP answer between two peers on one worker was decoded by all
        the others only to find nobody to deliver it to (a flood of refused events made
        every worker pay for it)."""
        target = to or room
        ns = namespace or "/"
        # (a plain look-up first: is_connected raises and catches a KeyError for a room id,
        # and every room message of every call comes this way)
        if (not kwargs.get("ignore_queue") and type(target) is str
                and target in self.rooms.get(ns, {}).get(None, ())
                and self.is_connected(target, ns)):
            kwargs["ignore_queue"] = True
        await super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid,
                           callback=callback, to=to, **kwargs)

    async def _publish(self, data: Any) -> None:
        message = self.json.dumps(data)
        self.publisher.publish(self.channel, self._own + (
            message.encode() if isinstance(message, str) else message))

    def _received(self, _channel: bytes, payload: bytes) -> None:
        if payload.startswith(self._own):
            return  # this worker's own event: delivered here when it was emitted
        self._inbox.put(payload)

    async def _thread(self) -> None:
        """The library's listening task, reading this manager's inbox: the same dispatch by
        ``method``, without its per-message debug line."""
        await self.start()
        async for raw in self._inbox.items():
            try:
                data = self.json.loads(raw[ID_LENGTH:])
                method = data["method"]
            except Exception:
                if self._bad.ready():
                    log.warning("a malformed event from another worker was dropped")
                continue
            handle = self._handlers.get(method) if isinstance(method, str) else None
            if handle is None:
                continue  # (the library ignores what it does not know, too)
            try:
                await handle(data)
            except Exception:
                log.exception("error while handling an event from another worker")
