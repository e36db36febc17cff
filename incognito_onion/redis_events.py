"""socket.io events between worker processes (``server.workers`` above 1): python-socketio's
``AsyncRedisManager``, made to hold up under load and to cost little per event.

- **Its own connections to redis** (:mod:`redis_wire`). The library awaits one ``PUBLISH``
  round trip per emit through redis-py, inside the handler of the event that caused it, and
  reads through ``PubSub.listen``. Here an emit's message is queued and everything queued in
  one turn of the loop leaves in one write, in order; the subscriber hands each message over
  as it is read. A publish while redis is away is dropped with a warning (the library's
  behaviour, after its retry), never raised.
- **Room events go to the workers holding people of that room only.** An emit to a room is
  published on that room's channel, and a worker is subscribed to the channels of the rooms
  it holds connections of (socket.io's local room membership decides, whichever way people
  come and go), so it reads no event of other rooms: with the one channel for everything,
  every worker read every event of every other worker, and many workers on a big machine
  would each have paid for all the traffic. A join or create waits, before it is answered
  (:meth:`BatchedRedisManager.hold`: before a join's redis transaction), until redis has
  this worker on the room's channel, so nothing sent to the room after the join is missed.
  Everything else (to one connection, enter/leave/close room, disconnect) goes on the one
  channel every worker reads.
- **A worker does not read back its own events.** Every worker subscribes to the one channel,
  so redis sends each event to its sender too, where the library decoded it only to find its
  own ``host_id`` and skip it: half of what each of two workers decoded. Each message here
  starts with its sender's id (32 hex characters) and a worker skips its own before decoding.
- **Local deliveries the one-process way.** What the manager delivers to this process's own
  connections (its own emits, and the other workers' it reads from redis) goes through
  :class:`~incognito_onion.fastpath.FastManager` (next in the MRO).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import socketio

from .fastpath import FastManager
from .ids import ROOM_ID_RE
from .limits import Throttle
from .redis_wire import Inbox, Publisher, Subscriber
from .tasks import cancel_and_wait

log = logging.getLogger("incognito_onion.redis_events")

ID_LENGTH = 32  # uuid4().hex, the library's host_id
HOLD_TIMEOUT = 5.0  # a join waits at most this for redis to subscribe (then redis is away,
# and the join's own transaction fails)


class BatchedRedisManager(socketio.AsyncRedisManager, FastManager):
    """See the module docstring. :meth:`start` subscribes (the server's startup calls it, so
    a worker hears the others before its first connection); else the first connection does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._own = self.host_id.encode()
        assert len(self._own) == ID_LENGTH
        self.publisher = Publisher(self.redis_url)
        self.subscriber = Subscriber(self.redis_url, [self.channel], self._received)
        self._inbox = Inbox()
        self._holds: dict[str, int] = {}  # joins of a room under way here
        self._started: asyncio.Task | None = None
        self._bad = Throttle(60.0)

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

    def room_channel(self, room: str) -> bytes:
        return f"{self.channel}:r:{room}".encode()

    async def _publish(self, data: Any) -> None:
        message = self.json.dumps(data)
        room = data.get("room") if data.get("method") == "emit" else None
        self.publisher.publish(
            self.room_channel(room) if _is_room(room) else self.channel,
            self._own + (message.encode() if isinstance(message, str) else message))

    @contextlib.asynccontextmanager
    async def hold(self, room: str) -> AsyncIterator[None]:
        """This worker on ``room``'s channel for as long as the block runs (and after, if a
        connection here entered the room meanwhile); the block starts once redis has done
        it."""
        self._holds[room] = self._holds.get(room, 0) + 1
        try:
            self._follow(room)
            await self.subscriber.wait_ready(self.room_channel(room), HOLD_TIMEOUT)
            yield
        finally:
            n = self._holds.pop(room) - 1
            if n:
                self._holds[room] = n
            self._follow(room)

    def _follow(self, room: Any) -> None:
        """On ``room``'s channel exactly while someone here is in it or joining it."""
        if _is_room(room):
            self.subscriber.want(self.room_channel(room),
                                 room in self._holds or room in self.rooms.get("/", ()))

    def basic_enter_room(self, sid: str, namespace: str, room: Any,
                         eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._follow(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        self._follow(room)

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
            try:
                if method == "emit":
                    await self._handle_emit(data)
                elif method == "callback":
                    await self._handle_callback(data)
                elif method == "disconnect":
                    await self._handle_disconnect(data)
                elif method == "enter_room":
                    await self._handle_enter_room(data)
                elif method == "leave_room":
                    await self._handle_leave_room(data)
                elif method == "close_room":
                    await self._handle_close_room(data)
            except Exception:
                log.exception("error while handling an event from another worker")


def _is_room(room: Any) -> bool:
    """A room of ours (not a connection's own room, nor everyone)."""
    return type(room) is str and ROOM_ID_RE.match(room) is not None
