"""incognito_onion/redis_events.py and redis_wire.py: what one worker publishes for the
others, on a real redis-server (our supervisor's). Many emits in one turn leave in one write,
in order; a worker never decodes its own events again; with redis killed emits are dropped
with a warning, never raised, and once the supervisor has restarted redis publishing and
listening go on by themselves."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

from redis.exceptions import ConnectionError as RedisConnectionError

from incognito_onion import fastpath, redis_wire
from incognito_onion.config import load
from incognito_onion.redis_events import ID_LENGTH, BatchedRedisManager
from incognito_onion.redis_wire import Inbox, Publisher, Subscriber, command
from incognito_onion.shared_rooms import redis_client
from incognito_onion.signaling import Signaling
from tests.support.server import until


async def listen(url: str, channel: str, got: list[dict]) -> asyncio.Task:
    """Collects every message on ``channel`` into ``got`` (as another worker would: after
    the sender's id)."""
    r = redis_client(url, decode=False)
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)

    async def read() -> None:
        try:
            while True:
                msg = await pubsub.get_message(timeout=None)
                if msg is not None:
                    got.append(json.loads(msg["data"][ID_LENGTH:]))
        finally:
            await pubsub.aclose()
            await r.aclose()

    return asyncio.create_task(read())


class Handled(BatchedRedisManager):
    """A manager that records the other workers' events instead of delivering them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.handled: list[dict] = []

    async def _handle_emit(self, message: dict) -> None:
        self.handled.append(message)


def test_a_command_is_resp():
    assert command(b"PUBLISH", "ch", b"a\r\nb") == \
        b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n"


async def test_emits_of_one_turn_leave_in_one_write_in_order(redis_url):
    got: list[dict] = []
    reader = await listen(redis_url, "io-test", got)
    mgr = BatchedRedisManager(redis_url, channel="io-test")
    await mgr.start()
    try:
        for i in range(500):  # what one turn of a busy worker's loop may emit
            await mgr._publish({"method": "emit", "event": "message", "data": [i]})
        await until(lambda: len(got) >= 500, what="500 messages")
        assert [m["data"] for m in got] == [[i] for i in range(500)]
        assert mgr.publisher.writes == 1, mgr.publisher.writes
        await mgr._publish({"method": "emit", "event": "message", "data": [500]})
        await until(lambda: len(got) == 501, what="the next turn's message")
        assert mgr.publisher.writes == 2 and mgr.publisher.errors == 0
    finally:
        reader.cancel()
        await mgr.close()


async def test_a_worker_handles_the_others_events_and_not_its_own(redis_url):
    a = Handled(redis_url, channel="io-test")
    b = Handled(redis_url, channel="io-test")
    ta = asyncio.create_task(a._thread())
    tb = asyncio.create_task(b._thread())
    try:
        await a.start()
        await b.start()
        for i in range(20):
            await a._publish({"method": "emit", "event": "message", "data": [i],
                              "room": "r", "host_id": a.host_id})
        await b._publish({"method": "emit", "event": "message", "data": ["b"], "room": "r",
                          "host_id": b.host_id})
        await until(lambda: len(b.handled) == 20 and len(a.handled) == 1, what="both sides")
        assert [m["data"] for m in b.handled] == [[i] for i in range(20)]
        assert a.handled[0]["data"] == ["b"]
        # each heard its own messages from redis too, and dropped them undecoded
        await until(lambda: a.subscriber.received == 21 and b.subscriber.received == 21,
                    what="every message at both")
    finally:
        ta.cancel()
        tb.cancel()
        await a.close()
        await b.close()


class Held(Handled):
    """A manager whose handling waits until ``go`` is set (a worker far behind)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.go = asyncio.Event()

    async def _handle_emit(self, message: dict) -> None:
        await self.go.wait()
        self.handled.append(message)


async def test_a_worker_behind_leaves_the_rest_in_redis_and_catches_up_in_order(redis_url):
    mgr = Held(redis_url, channel="io-test")
    sub = mgr.subscriber
    mgr._inbox = Inbox(sub.pause_reading, sub.resume_reading, high=200_000, low=50_000)
    task = asyncio.create_task(mgr._thread())
    r = redis_client(redis_url, decode=False)
    other = b"f" * ID_LENGTH
    try:
        await mgr.start()
        for i in range(400):  # 4 MB, 20 times the bound
            await r.publish("io-test", other + json.dumps(
                {"method": "emit", "event": "e", "data": [i, "x" * 10_000]}).encode())
        await until(lambda: mgr._inbox.paused, what="reading paused")
        assert not sub._transport.is_reading()
        await asyncio.sleep(0.2)  # (nothing more is read while paused)
        assert mgr._inbox.size < 200_000 + 300_000, mgr._inbox.size  # + at most one read
        mgr.go.set()
        await until(lambda: len(mgr.handled) == 400, what="all 400 handled")
        assert [m["data"][0] for m in mgr.handled] == list(range(400))
        assert not mgr._inbox.paused and sub._transport.is_reading()
        assert mgr._inbox.size == 0 and mgr._inbox.pauses >= 1
    finally:
        task.cancel()
        await mgr.close()
        await r.aclose()


async def test_a_hung_redis_costs_a_publisher_bounded_memory(redis_sup, monkeypatch, caplog):
    monkeypatch.setattr(redis_wire, "MAX_UNSENT", 2 * 1024 * 1024)
    pub = Publisher(redis_sup.url)
    await pub.start()
    got: list[dict] = []
    os.kill(redis_sup.pid, signal.SIGSTOP)
    try:
        for i in range(40):  # 40 MB, one turn each
            pub.publish("io-test", b"x" * 1_000_000)
            await asyncio.sleep(0)
        await until(lambda: pub.dropped > 0, what="drops")
        assert pub._transport.get_write_buffer_size() <= 2 * 1024 * 1024 + 1_000_100
        assert "redis is not reading" in caplog.text
    finally:
        os.kill(redis_sup.pid, signal.SIGCONT)
    await until(lambda: pub._transport.get_write_buffer_size() == 0, what="redis reading again")
    reader = await listen(redis_sup.url, "io-test", got)
    try:
        pub.publish("io-test", b"e" * ID_LENGTH + b'{"n": 1}')
        await until(lambda: got, what="a message once redis reads again")
        assert got == [{"n": 1}]
    finally:
        reader.cancel()
        await pub.close()


async def test_a_malformed_event_is_dropped_and_the_next_one_handled(redis_url, caplog):
    mgr = Handled(redis_url, channel="io-test")
    task = asyncio.create_task(mgr._thread())
    r = redis_client(redis_url, decode=False)
    try:
        await mgr.start()
        other = b"f" * ID_LENGTH
        for raw in (b"", b"x", other + b"{not json", other + b"[1]", other + b'{"no": 1}',
                    other + json.dumps({"method": "emit", "event": "e", "data": [1]}).encode()):
            await r.publish("io-test", raw)
        await until(lambda: mgr.handled, what="the good event")
        assert mgr.handled[0]["data"] == [1] and len(mgr.handled) == 1
        assert "malformed event from another worker" in caplog.text
        assert not task.done()
    finally:
        task.cancel()
        await mgr.close()
        await r.aclose()


async def test_with_redis_down_emits_are_dropped_and_both_ends_come_back(redis_sup, caplog):
    got: list[dict] = []
    mgr = Handled(redis_sup.url, channel="io-test")
    task = asyncio.create_task(mgr._thread())
    await mgr.start()
    try:
        await mgr._publish({"n": 0})
        await until(lambda: mgr.publisher.published == 1, what="the first message")
        old = redis_sup.pid
        os.kill(old, signal.SIGKILL)
        await until(lambda: mgr.publisher._transport is None, what="the link to notice")
        await mgr._publish({"n": 1})  # never raises: dropped
        await until(lambda: "events to other workers dropped" in caplog.text, what="the warning")
        assert mgr.publisher.dropped == 1
        await until(lambda: redis_sup.restarts == 1 and redis_sup.pid not in (None, old),
                    what="redis-server restarted by its supervisor")
        reader = await listen(redis_sup.url, "io-test", got)
        await mgr._publish({"n": 2})
        await until(lambda: got, what="a message after the restart")
        assert got == [{"n": 2}]
        reader.cancel()
        # and the manager hears the others again, subscribed anew by itself
        await until(lambda: mgr.subscriber.subscriptions == 2, what="subscribed again")
        r = redis_client(redis_sup.url, decode=False)
        await r.publish("io-test", b"e" * ID_LENGTH + json.dumps(
            {"method": "emit", "event": "e", "data": ["after"]}).encode())
        await r.aclose()
        await until(lambda: mgr.handled, what="an event after the restart")
        assert mgr.handled[0]["data"] == ["after"]
    finally:
        task.cancel()
        await mgr.close()


async def test_without_redis_a_publisher_drops_and_a_subscriber_keeps_trying(tmp_path, caplog):
    url = f"unix://{tmp_path}/none.sock"
    pub = Publisher(url)
    await pub.start()
    pub.publish("ch", b"x")
    await until(lambda: pub.dropped == 1, what="the drop")
    sub = Subscriber(url, ["ch"], lambda _c, _p: None)
    t0 = time.monotonic()
    await sub.start()  # returns (after its timeout) though nothing answers
    assert time.monotonic() - t0 < 10 and sub.subscriptions == 0
    assert "cannot listen to the other workers" in caplog.text
    await sub.close()
    await pub.close()


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


class StandInSocket:
    """An engine.io socket the fast loop runs, keeping what would be written."""

    def __init__(self) -> None:
        self.closed = False
        self.packets: list = []
        setattr(self, fastpath._SEND_NOW, self._send_now)

    def _send_now(self, pkt) -> bool:
        self.packets.append(pkt.data)
        return True


async def test_an_emit_to_a_connection_of_this_worker_is_not_published(redis_url):
    a = BatchedRedisManager(redis_url, channel="io-test")
    b = Handled(redis_url, channel="io-test")
    sig = Signaling(load(path=None, env={}), client_manager=a)  # a's server
    tb = asyncio.create_task(b._thread())
    try:
        await a.start()
        await b.start()
        sock = StandInSocket()
        sig.sio.eio.sockets["e1"] = sock
        sid = await a.connect("e1", "/")
        await sig.sio.emit("error", {"code": "bad_request"}, to=sid)
        await a.emit("connection", {"data": "sdp"}, "/", room=sid)
        assert len(sock.packets) == 2 and "bad_request" in sock.packets[0]
        # a connection this worker does not hold, then a room: both go to the others
        await sig.sio.emit("removed", {"room": "r"}, to="held-elsewhere")
        await sig.sio.emit("left", {"room": "r"}, room="r")
        await until(lambda: len(b.handled) == 2, what="the two emits for other workers")
        assert [(m["event"], m["room"]) for m in b.handled] == [
            ("removed", "held-elsewhere"), ("left", "r")]
    finally:
        tb.cancel()
        await a.close()
        await b.close()
