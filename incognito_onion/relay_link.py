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
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .limits import Throttle
from .media_relay import STREAMS, Chunk
from .shared_rooms import redis_client
from .tasks import cancel_and_wait

log = logging.getLogger("incognito_onion.relay_link")

CHANNEL_PREFIX = "io:media:"
RETRY_SECONDS = 1.0  # between attempts to subscribe again after redis went away

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
        self._r: Any = None
        self._task: asyncio.Task | None = None
        self._lost = Throttle(60.0)
        self.published = 0
        self.received = 0
        self.subscriptions = 0  # how many times it (re)subscribed: 1 once started

    async def start(self) -> None:
        self._r = redis_client(self.url, decode=False)  # bytes: chunks are binary
        self._task = asyncio.create_task(self._read_loop())

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._r is not None:
            with contextlib.suppress(Exception):
                await self._r.aclose()
            self._r = None

    async def publish(self, nodes: Iterable[str], room_id: str, chunk: Chunk) -> None:
        """Sends ``chunk`` to the workers ``nodes`` (never to this one)."""
        raw = None
        for node in nodes:
            if node == self.node:
                continue
            raw = raw or encode(room_id, chunk)
            try:
                await self._r.publish(channel(node), raw)
                self.published += 1
            except Exception as exc:  # redis restarting: this chunk is lost, as on any link
                self._note(exc)

    async def _read_loop(self) -> None:
        while True:
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel(self.node))
                self.subscriptions += 1
                while True:
                    msg = await pubsub.get_message(timeout=None)
                    if msg is not None and msg.get("type") == "message":
                        await self._one(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # redis went away: subscribe again when it is back
                self._note(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(RETRY_SECONDS)

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

    def _note(self, exc: Exception) -> None:
        if self._lost.ready():
            log.warning("media between workers interrupted (%s); chunks dropped until redis "
                        "answers again", type(exc).__name__)
