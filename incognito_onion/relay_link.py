"""The onion media relay across worker processes (``server.workers`` above 1).

A relay receiver's queue, its window of unacknowledged chunks and its acks belong to the
process that holds its connection (:mod:`media_relay`), but the kernel hands the people of one
room to any of the workers. So each worker relays to its own receivers only, and a chunk whose
room has receivers on other workers is published to those workers, and to no other, through the
private redis-server the workers already share: Redis pub/sub on one channel per worker
(``io:media:<worker id>``). The receiving worker queues it for its receivers exactly as a chunk
of one of its own senders.

The message is the chunk's envelope as one line of JSON, a newline, then the chunk's bytes
(opaque, end-to-end encrypted; never base64). Media may be dropped, never delayed: a chunk that
cannot be published (redis restarting) is dropped, and the receivers' streams recover at the
next key chunk, as after any loss.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable

from .media_relay import STREAMS, Chunk
from .redis_wire import Inbox, Publisher, Subscriber
from .tasks import cancel_and_wait

log = logging.getLogger("incognito_onion.relay_link")

CHANNEL_PREFIX = "io:media:"

Deliver = Callable[[str, Chunk], Awaitable[None]]


def channel(node: str) -> str:
    """The channel of worker ``node``'s relay receivers."""
    return CHANNEL_PREFIX + node


def encode(room_id: str, chunk: Chunk) -> bytes:
    head = json.dumps({"r": room_id, "s": chunk.sender, "t": chunk.stream, "q": chunk.seq,
                       "k": chunk.key, "ts": chunk.ts}, separators=(",", ":"))
    return head.encode() + b"\n" + chunk.data


def decode(raw: bytes) -> tuple[str, Chunk]:
    """The room and chunk of a published message; ``ValueError`` for anything else (only
    workers publish here, but a bad message must not stop the reader)."""
    head, sep, data = raw.partition(b"\n")
    if not sep:
        raise ValueError("no envelope")
    try:
        d = json.loads(head)
        room, sender, stream, seq, key, ts = d["r"], d["s"], d["t"], d["q"], d["k"], d["ts"]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError("bad envelope") from exc
    if not (isinstance(room, str) and isinstance(sender, str) and stream in STREAMS
            and type(seq) is int and type(key) is bool
            and isinstance(ts, int | float) and not isinstance(ts, bool)):
        raise ValueError("bad envelope")
    return room, Chunk(sender, stream, seq, key, ts, bytes(data))


class RelayLink:
    """This worker's end of the link: :meth:`publish` to other workers, and every chunk
    published to this one handed to ``deliver(room_id, chunk)``, in order."""

    def __init__(self, redis_url: str, node: str, deliver: Deliver) -> None:
        self.url = redis_url
        self.node = node
        self.deliver = deliver
        self.publisher = Publisher(redis_url, what="media chunks to other workers")
        self.subscriber = Subscriber(redis_url, [channel(node)],
                                     lambda _ch, raw: self._inbox.put(raw))
        self._inbox = Inbox(self.subscriber.pause_reading, self.subscriber.resume_reading)
        self._task: asyncio.Task | None = None
        self.received = 0

    @property
    def published(self) -> int:
        return self.publisher.published

    @property
    def subscriptions(self) -> int:
        """How many times it (re)subscribed: 1 once started."""
        return self.subscriber.subscriptions

    async def start(self) -> None:
        await self.publisher.start()
        await self.subscriber.start()
        self._task = asyncio.create_task(self._read_loop())

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self.subscriber.close()
        await self.publisher.close()

    async def publish(self, nodes: Iterable[str], room_id: str, chunk: Chunk) -> None:
        """Sends ``chunk`` to the workers ``nodes`` (never to this one). Never waits: a chunk
        that cannot be published now (redis restarting) is dropped, as on any link."""
        raw = None
        for node in nodes:
            if node != self.node:
                raw = raw or encode(room_id, chunk)
                self.publisher.publish(channel(node), raw)

    async def _read_loop(self) -> None:
        async for raw in self._inbox.items():
            await self._one(raw)

    async def _one(self, raw: bytes) -> None:
        try:
            room_id, chunk = decode(raw)
        except ValueError:
            log.warning("a malformed media message on the workers' link was dropped")
            return
        self.received += 1
        try:
            await self.deliver(room_id, chunk)
        except Exception:  # one bad delivery must not stop the link
            log.exception("error while relaying media from another worker")
