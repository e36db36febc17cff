"""Redis pub/sub for the workers' hot path, on plain asyncio connections.

Every event a worker relays to another worker is one ``PUBLISH`` on one side and one pub/sub
message on the other. Through redis-py each cost tens of microseconds of Python (a pipeline,
its pool, its response objects, ``PubSub.listen``'s generators): with two workers at 1000
clients x 1 msg/s that was a fifth of each worker's CPU (bench/README.md, twelfth session).
Here a :class:`Publisher` writes the commands' bytes itself, those of one turn of the loop in
one write, and reads the integer replies only to throw them away; a :class:`Subscriber` feeds
what it reads to hiredis's parser and hands each message to a callback, synchronously. Both
connect to the same private redis-server as everything else (``unix://`` or ``redis://``).

Pub/sub is at most once anyway, so neither waits for redis: a publish while redis is away is
dropped (counted, and said in a warning at most once a minute), and a subscriber that lost
its connection subscribes again by itself. Nothing here raises into the caller.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any
from urllib.parse import urlparse

import hiredis

from .limits import Throttle
from .tasks import cancel_and_wait

log = logging.getLogger("incognito_onion.redis_wire")

RETRY_SECONDS = 0.5  # between attempts to connect again after redis went away
CONNECT_TIMEOUT = 5.0
# Bounds on what waits in this process. Beyond them the waiting is left to redis, which cuts
# a subscriber off past 256 MB (redis_supervisor.argv), or, for a publisher, is dropped.
MAX_UNSENT = 64 * 1024 * 1024  # bytes written to redis and not read by it yet
INBOX_HIGH = 32 * 1024 * 1024  # bytes read from redis and not handled yet: stop reading
INBOX_LOW = 8 * 1024 * 1024  # ... and read again once down to this


def command(*args: bytes | str) -> bytes:
    """One command in RESP, the protocol's request form (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


async def open_connection(url: str, protocol: asyncio.Protocol) -> asyncio.Transport:
    """Connects ``protocol`` to the redis-server of ``url`` (``unix:///path``,
    ``redis://host:port``); ``OSError`` when it cannot."""
    loop = asyncio.get_running_loop()
    parts = urlparse(url)
    if parts.scheme == "unix":
        connect = loop.create_unix_connection(lambda: protocol, parts.path)
    elif parts.scheme == "redis":
        connect = loop.create_connection(lambda: protocol, parts.hostname or "127.0.0.1",
                                         parts.port or 6379)
    else:
        raise ValueError(f"unsupported redis url scheme: {parts.scheme!r}")
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):  # (wait_for can swallow a cancellation)
            transport, _ = await connect
    except TimeoutError:
        raise OSError("redis did not accept a connection in time") from None
    return transport  # type: ignore[return-value]


class _Replies(asyncio.Protocol):
    """A connection whose replies go through hiredis, each one to ``on_reply``."""

    def __init__(self, on_reply: Callable[[Any], None], on_lost: Callable[[], None]) -> None:
        self.reader = hiredis.Reader()
        self.on_reply = on_reply
        self.on_lost = on_lost

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost()


class Publisher:
    """``publish(channel, payload)`` queues; everything queued in one turn of the loop leaves
    in one write, in order. Call :meth:`start` first (or not: the first publish connects).
    ``what``: what is published, for the warning when some of it is dropped."""

    def __init__(self, url: str, what: str = "events to other workers") -> None:
        self.url = url
        self.what = what
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Task | None = None
        self._outbox: list[bytes] = []
        self._scheduled = False
        self._closed = False
        self._warned = Throttle(60.0)
        self.writes = 0  # how many writes carried commands (for tests and benchmarks)
        self.published = 0
        self.dropped = 0
        self.errors = 0  # error replies (none expected: only PUBLISH is sent)

    async def start(self) -> None:
        await asyncio.shield(self._connect_once())

    def _connect_once(self) -> asyncio.Task:
        """The connecting task: the one under way, else a new one."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        return self._connecting

    async def _connect(self) -> None:
        """One connection at a time (:meth:`start` and :meth:`_flush` share the task through
        :meth:`_connect_once`)."""
        protocol = _Replies(self._reply, self._lost)
        try:
            transport = await open_connection(self.url, protocol)
        except OSError as exc:
            self._drop(f"redis did not answer ({exc.strerror or exc})")
            return
        if self._closed:
            transport.close()
            return
        self._transport = transport
        self._flush()

    def _reply(self, reply: Any) -> None:
        if isinstance(reply, hiredis.ReplyError):
            self.errors += 1
            if self._warned.ready():
                log.warning("redis refused a publish to the other workers: %s", reply)

    def _lost(self) -> None:
        self._transport = None

    def publish(self, channel: bytes | str, payload: bytes) -> None:
        if self._closed:
            return
        self._outbox.append(command(b"PUBLISH", channel, payload))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._outbox or self._closed:
            return
        t = self._transport
        if t is None or t.is_closing():
            self._connect_once()
            return  # _connect flushes, or drops what waited
        if t.get_write_buffer_size() > MAX_UNSENT:  # redis hangs: memory stays bounded
            self._drop(f"redis is not reading ({MAX_UNSENT >> 20} MB wait for it)")
            return
        batch, self._outbox = self._outbox, []
        t.write(batch[0] if len(batch) == 1 else b"".join(batch))
        self.writes += 1
        self.published += len(batch)

    def _drop(self, why: str) -> None:
        n = len(self._outbox)
        self._outbox.clear()
        self.dropped += n
        if n and self._warned.ready():
            log.warning("%d %s dropped: %s", n, self.what, why)

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(self._connecting)
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class Subscriber:
    """Subscribed to ``channels``; each message's payload handed to ``on_message(channel,
    payload)`` as it is read, in order. Subscribes again after redis went away (what was
    published meanwhile is lost: pub/sub keeps nothing)."""

    def __init__(self, url: str, channels: Iterable[bytes | str],
                 on_message: Callable[[bytes, bytes], None]) -> None:
        self.url = url
        self.channels = [c.encode() if isinstance(c, str) else c for c in channels]
        self.on_message = on_message
        self._task: asyncio.Task | None = None
        self._transport: asyncio.Transport | None = None
        self._subscribed: asyncio.Event | None = None
        self._warned = Throttle(60.0)
        self._paused = False
        self.subscriptions = 0  # how many times it (re)subscribed: 1 once started
        self.received = 0

    def pause_reading(self) -> None:
        """Leave what comes in to wait in redis (see :class:`Inbox`)."""
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._paused = False
        if self._transport is not None:
            self._transport.resume_reading()

    async def start(self) -> None:
        """Returns once subscribed (or after ``CONNECT_TIMEOUT`` without redis: it goes on
        trying in the background)."""
        first = asyncio.Event()
        self._task = asyncio.create_task(self._run(first))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await first.wait()

    async def _run(self, first: asyncio.Event) -> None:
        while True:
            try:
                await self._session(first)
            except OSError as exc:
                if self._warned.ready():
                    log.warning("cannot listen to the other workers (%s); trying again",
                                exc.strerror or exc)
            finally:
                if self._transport is not None:
                    self._transport.close()
                    self._transport = None
            await asyncio.sleep(RETRY_SECONDS)

    async def _session(self, first: asyncio.Event) -> None:
        """One connection: subscribe, then read until redis goes away."""
        lost = asyncio.Event()
        subscribed = self._subscribed = asyncio.Event()

        def on_lost() -> None:
            lost.set()
            subscribed.set()  # no confirmation will come

        self._transport = await open_connection(self.url, _Replies(self._reply, on_lost))
        self._transport.write(command(b"SUBSCRIBE", *self.channels))
        if self._paused:  # (the confirmation then waits with the rest)
            self._transport.pause_reading()
        await subscribed.wait()
        if not lost.is_set():
            self.subscriptions += 1
            first.set()
            await lost.wait()

    def _reply(self, reply: Any) -> None:
        if type(reply) is list and len(reply) == 3:
            kind = reply[0]
            if kind == b"message":
                self.received += 1
                try:
                    self.on_message(reply[1], reply[2])
                except Exception:  # one bad message must not stop the others
                    log.exception("error while handling a message from another worker")
                return
            if kind == b"subscribe" and reply[2] == len(self.channels):
                assert self._subscribed is not None
                self._subscribed.set()

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


class Inbox:
    """What a :class:`Subscriber` read (``put``, from its callback), for one task to take in
    order (``async for item in inbox.items()``) when handling an item may wait.

    Bounded: past ``high`` bytes waiting it calls ``pause`` (the subscriber stops reading, and
    the rest waits in redis), and ``resume`` once the task is down to ``low``. A worker that
    falls behind under load (1000 clients x 16 msg/s on two cores) would otherwise hold in
    memory all it has not handled yet."""

    def __init__(self, pause: Callable[[], None] | None = None,
                 resume: Callable[[], None] | None = None,
                 high: int = INBOX_HIGH, low: int = INBOX_LOW) -> None:
        self._items: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._pause, self._resume = pause, resume
        self.high, self.low = high, low
        self.size = 0  # bytes waiting
        self.paused = False
        self.pauses = 0  # how many times it paused (for tests and benchmarks)

    def put(self, item: bytes) -> None:
        self._items.append(item)
        self.size += len(item)
        self._wake.set()
        if self.size > self.high and not self.paused and self._pause is not None:
            self.paused = True
            self.pauses += 1
            self._pause()

    async def items(self) -> AsyncIterator[bytes]:
        items = self._items
        while True:
            await self._wake.wait()
            self._wake.clear()
            while items:
                item = items.popleft()
                self.size -= len(item)
                if self.paused and self.size <= self.low and self._resume is not None:
                    self.paused = False
                    self._resume()
                yield item
