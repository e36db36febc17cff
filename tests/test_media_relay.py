"""The onion media relay: the pure queue/cap logic (incognito_onion/media_relay.py), and the
server's media events over real socket.io (docs/protocol.md "Media relay")."""

from __future__ import annotations

import asyncio
import time

import pytest

from incognito_onion.media_relay import Chunk, ReceiverQueue, RoomRelay
from tests.support.server import Peer

# --------------------------------------------------------------------------------------------
# pure logic
# --------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def ch(stream: str, seq: int, key: bool = False, sender: str = "S", size: int = 100,
       arrived: float = 100.0) -> Chunk:
    return Chunk(sender, stream, seq, key, float(seq), b"x" * size, arrived)


def drain(q: ReceiverQueue, now: float = 100.0) -> list[tuple[str, int]]:
    out = []
    while True:
        c, _ = q.pop(now)
        if c is None:
            return out
        out.append((c.stream, c.seq))
        q.acked()


def test_window_limits_chunks_in_flight_and_acks_free_slots():
    q = ReceiverQueue(max_chunks=10, max_delay=5, window=2)
    for i in range(5):
        q.push(ch("v", i, key=i == 0))
    assert q.pop(100)[0].seq == 0
    assert q.pop(100)[0].seq == 1
    assert q.pop(100)[0] is None  # two in flight, none acknowledged
    q.acked()
    assert q.pop(100)[0].seq == 2
    assert q.in_flight == 2


def test_audio_goes_out_before_video():
    q = ReceiverQueue(max_chunks=10, max_delay=5, window=10)
    q.push(ch("v", 0, key=True))
    q.push(ch("v", 1))
    q.push(ch("a", 0, key=True))
    q.push(ch("a", 1))
    assert drain(q) == [("a", 0), ("a", 1), ("v", 0), ("v", 1)]


def test_overflow_drops_video_first_and_breaks_the_stream_until_its_next_key_chunk():
    q = ReceiverQueue(max_chunks=4, max_delay=5, window=1)
    q.push(ch("v", 0, key=True))
    q.push(ch("a", 0, key=True))
    q.push(ch("v", 1))
    q.push(ch("a", 1))
    broke = q.push(ch("a", 2))  # fifth: over the bound
    # the oldest non-key video chunk went, with the rest of its stream; audio stays whole
    assert broke == {("S", "v")}
    assert [(c.stream, c.seq) for c in q.queue] == [("v", 0), ("a", 0), ("a", 1), ("a", 2)]
    # later video chunks are useless until a key chunk: dropped, and a key is asked for again
    assert q.push(ch("v", 2)) == {("S", "v")}
    assert all(c.stream == "a" or c.seq == 0 for c in q.queue)
    # a key chunk heals the stream and supersedes the old recording still waiting
    assert q.push(ch("v", 3, key=True)) == set()
    assert drain(q) == [("a", 0), ("a", 1), ("a", 2), ("v", 3)]
    assert q.dropped == 3  # v1, v2, and the superseded v0
    assert q.push(ch("v", 4)) == set() and drain(q) == [("v", 4)]


def test_under_a_flood_the_queue_stays_bounded_and_what_goes_out_stays_playable():
    """Random pops against a flood: the queue never passes its bound, and every stream as
    delivered is a key chunk followed by consecutive chunks (a WebM byte stream with no hole)."""
    import random

    rnd = random.Random(7)
    q = ReceiverQueue(max_chunks=8, max_delay=5, window=1)
    delivered: list[Chunk] = []
    seq = {"a": 0, "v": 0}
    need_key = {"a": True, "v": True}  # the sender restarts its recorder when asked
    for _ in range(3000):
        stream = rnd.choice("avv")
        broke = q.push(ch(stream, seq[stream], key=need_key[stream]))
        need_key[stream] = False
        seq[stream] += 1
        for _s, st in broke:
            need_key[st] = True
        assert len(q.queue) <= 8
        if rnd.random() < 0.3:  # a slow link: acks come at a third of the chunk rate
            c, broke = q.pop(100)
            for _s, st in broke:
                need_key[st] = True
            if c is not None:
                delivered.append(c)
            q.acked()
    for stream in "av":
        mine = [c for c in delivered if c.stream == stream]
        assert mine and mine[0].key
        for prev, cur in zip(mine, mine[1:], strict=False):
            assert cur.key or cur.seq == prev.seq + 1, (stream, prev.seq, cur.seq)
    assert sum(c.stream == "a" for c in delivered) > sum(c.stream == "v" for c in delivered)
    assert q.dropped > 0


def test_stale_chunks_are_dropped_not_sent_late():
    q = ReceiverQueue(max_chunks=50, max_delay=1.0, window=50)
    q.push(ch("v", 0, key=True, arrived=100.0))
    q.push(ch("v", 1, arrived=100.5))
    q.push(ch("a", 0, key=True, arrived=100.9))
    chunk, broke = q.pop(101.2)  # v0 is over 1 s old; v1 is useless without it
    assert (chunk.stream, chunk.seq) == ("a", 0)
    assert broke == {("S", "v")}
    assert q.pop(101.2)[0] is None
    assert ("S", "v") in q.broken and q.dropped == 2


def test_room_cap_drops_video_but_lets_audio_overdraw():
    clock = Clock()
    relay = RoomRelay(room_kbps=80, max_chunks=10, max_delay=5, window=10,
                      key_interval=1.0, clock=clock)  # 10 000 bytes/s
    relay.add_receiver("R1")
    relay.add_receiver("R2")
    assert relay.route(ch("v", 0, key=True, size=4000)).receivers == ["R1", "R2"]  # 8000
    r = relay.route(ch("v", 1, size=4000))  # 8000 more: over the cap
    assert r.capped and r.key_requests == {("S", "v")}
    assert relay.route(ch("a", 0, key=True, size=4000)).capped is False  # audio overdraws
    r = relay.route(ch("v", 2, size=10))
    assert r.capped and r.key_requests == set()  # asked less than a second ago
    clock.t += 2.0  # the bucket refills
    assert not relay.route(ch("v", 3, key=True, size=1000)).capped
    assert drain(relay.receivers["R1"]) == [("a", 0), ("v", 3)]


def test_key_requests_are_throttled_per_stream():
    clock = Clock()
    relay = RoomRelay(room_kbps=8000, max_chunks=2, max_delay=5, window=1, clock=clock)
    relay.add_receiver("R")
    relay.route(ch("v", 0, key=True))
    relay.route(ch("v", 1))
    asked = [relay.route(ch("v", i)).key_requests for i in range(2, 6)]
    assert asked[0] == {("S", "v")} and asked[1:] == [set(), set(), set()]
    clock.t += 1.5
    assert relay.route(ch("v", 6)).key_requests == {("S", "v")}


def test_sender_never_receives_its_own_chunks_and_leaving_forgets_it():
    relay = RoomRelay(room_kbps=8000, max_chunks=10, max_delay=5, window=4, clock=Clock())
    relay.add_receiver("S")
    relay.add_receiver("R")
    assert relay.route(ch("v", 0, key=True)).receivers == ["R"]
    assert relay.remove_peer("S") is True
    assert not relay.receivers["R"].queue
    assert relay.remove_peer("nobody") is False


def test_a_receiver_can_want_only_some_senders():
    """A WebRTC participant takes through the relay only the peers that have no WebRTC."""
    relay = RoomRelay(room_kbps=8000, max_chunks=10, max_delay=5, window=4, clock=Clock())
    relay.add_receiver("T")  # Tor Browser: everyone
    relay.add_receiver("W", only=frozenset({"T"}))  # a WebRTC peer: only T
    assert relay.route(ch("a", 0, key=True, sender="S")).receivers == ["T"]
    assert relay.route(ch("a", 0, key=True, sender="T")).receivers == ["W"]
    assert relay.wants() == {"T": None, "W": frozenset({"T"})}
    # wanting someone else now: what waits from T is dropped, nothing more comes from T
    relay.add_receiver("W", only=frozenset({"X"}))
    assert not relay.receivers["W"].queue
    assert relay.route(ch("a", 1, sender="T")).receivers == []
    assert relay.route(ch("a", 0, key=True, sender="X")).receivers == ["T", "W"]
    relay.add_receiver("W")  # everyone
    assert relay.wants() == {"T": None, "W": None}
    assert relay.targets("S") == ["T", "W"]


# --------------------------------------------------------------------------------------------
# the live server
# --------------------------------------------------------------------------------------------

SERVER_ENV = {
    "INCOGNITO_MEDIA_RELAY_MAX_CHUNK_BYTES": "8192",
    "INCOGNITO_MEDIA_RELAY_QUEUE_CHUNKS": "6",
    "INCOGNITO_MEDIA_RELAY_MAX_DELAY_MS": "800",
    "INCOGNITO_MEDIA_RELAY_WINDOW": "2",
}


class SlowPeer(Peer):
    """A receiver that holds each `media` ack until ``release`` (a slow link)."""

    def __init__(self, base: str, name: str = "slow"):
        super().__init__(base, name)
        self.gate = asyncio.Event()
        self.got: list[dict] = []

        @self.sio.on("media")
        async def _media(payload):
            self.got.append(payload)
            await self.gate.wait()
            return None


@pytest.fixture
async def trio(shared_server):
    made: list[Peer] = []

    async def new(cls=Peer, name="p"):
        p = await cls(shared_server.base, name).connect()
        made.append(p)
        return p

    try:
        yield new
    finally:
        for p in made:
            await p.disconnect()


def media(room: str, seq: int, key: bool = False, stream: str = "v", size: int = 500) -> dict:
    return {"room": room, "stream": stream, "seq": seq, "key": key,
            "ts": time.time() * 1000, "data": bytes([seq % 256]) * size}


async def test_chunks_reach_relay_receivers_only_after_they_ask(trio):
    a = await trio(name="A")
    room = (await a.create())["room"]
    b = await trio(name="B")
    ack = await b.join(room)
    assert ack["mediaRelay"] == []
    c = await trio(name="C")
    await c.join(room)
    assert await a.call("media", media(room, 0, key=True)) == {"ok": True, "relayed": 0}
    assert (await b.call("media/need", {"room": room, "need": True}))["receivers"] == [
        b.peer_ids[room]]
    note = await a.next("media/receivers", room=room)
    assert note["peers"] == [b.peer_ids[room]]
    ack = await a.call("media", media(room, 1, key=True, size=700))
    assert ack == {"ok": True, "relayed": 1}
    got = await b.next("media", room=room)
    assert got["from"] == a.peer_ids[room] and got["seq"] == 1 and got["key"] is True
    assert got["stream"] == "v" and got["data"] == bytes([1]) * 700
    await asyncio.sleep(0)  # C, not a receiver, got nothing (checked after B's delivery)
    assert c.seen("media") == [] and a.seen("media") == []
    # the receiver stops: nobody gets chunks any more
    await b.call("media/need", {"room": room, "need": False})
    assert (await a.call("media", media(room, 2)))["relayed"] == 0


async def test_a_webrtc_peer_takes_only_the_relay_only_senders(trio):
    """Mixed room: T has no WebRTC (everyone's media through the relay); W has WebRTC and takes
    through the relay only T's media; S's media reaches W directly, never through the relay."""
    s_ = await trio(name="S")
    room = (await s_.create())["room"]
    t, w = await trio(name="T"), await trio(name="W")
    await t.join(room)
    await w.join(room)
    tid, wid = t.peer_ids[room], w.peer_ids[room]
    await t.call("media/need", {"room": room, "need": True})
    ack = await w.call("media/need", {"room": room, "need": True, "from": [tid]})
    assert sorted(ack["receivers"]) == sorted([tid, wid]) and ack["from"] == {wid: [tid]}
    assert (await s_.next("media/receivers", room=room))["peers"] == [tid]
    note = await s_.next("media/receivers", room=room)
    assert note["from"] == {wid: [tid]}  # so S knows W does not want its media
    assert (await s_.call("media", media(room, 0, key=True)))["relayed"] == 1  # T only
    assert (await t.call("media", media(room, 0, key=True)))["relayed"] == 1  # W only
    got = await w.next("media", room=room)
    assert got["from"] == tid
    await t.next("media", room=room)
    await asyncio.sleep(0.2)
    assert [m["from"] for m in w.seen("media")] == [tid]
    # a late joiner learns it from the join ack
    late = await trio(name="L")
    ack = await late.join(room)
    assert ack["mediaRelayFrom"] == {wid: [tid]}
    # malformed lists are refused with bad_request
    for bad in ("x", [1], ["not a peer id"], [tid] * 65):
        reply = await w.call("media/need", {"room": room, "need": True, "from": bad})
        assert reply["ok"] is False and reply["error"]["code"] == "bad_request", (bad, reply)


async def test_bad_media_events_get_an_error_never_an_exception(trio):
    a = await trio(name="A")
    room = (await a.create())["room"]
    cases = [
        ({"room": room, "stream": "v", "seq": 0, "key": True, "ts": 1, "data": "text"},
         "bad_request"),
        ({"room": room, "stream": "x", "seq": 0, "key": True, "ts": 1, "data": b"x"},
         "bad_request"),
        ({"room": room, "stream": "v", "seq": -1, "key": True, "ts": 1, "data": b"x"},
         "bad_request"),
        ({"room": room, "stream": "v", "seq": 1.5, "key": True, "ts": 1, "data": b"x"},
         "bad_request"),
        ({"room": room, "stream": "v", "seq": 0, "key": "yes", "ts": 1, "data": b"x"},
         "bad_request"),
        ({"room": room, "stream": "v", "seq": 0, "key": True, "ts": "now", "data": b"x"},
         "bad_request"),
        ({"room": room, "stream": "v", "seq": 0, "key": True, "ts": 1, "data": b"x" * 8193},
         "payload_too_large"),
        ({"room": room, "need": "yes"}, "bad_request"),
        ("not an object", "bad_request"),
    ]
    for payload, code in cases:
        event = "media/need" if isinstance(payload, dict) and "need" in payload else "media"
        ack = await a.call(event, payload)
        assert ack["ok"] is False and ack["error"]["code"] == code, (payload, ack)
        err = await a.next("error")
        assert err["code"] == code
    ack = await a.call("media/keyframe", {"room": room, "to": "A" * 16, "stream": "v"})
    assert ack["error"]["code"] == "peer_not_found"
    # not a member
    x = await trio(name="X")
    ack = await x.call("media", media(room, 0, key=True))
    assert ack["error"]["code"] == "not_in_room"
    # the server lives on
    assert (await a.call("media", media(room, 3)))["ok"] is True


async def test_a_media_flood_is_rate_limited(trio):
    a = await trio(name="A")
    room = (await a.create())["room"]
    for i in range(400):
        await a.emit("media", media(room, i, key=i == 0, size=100))
    err = await a.next("error", code="rate_limited", timeout=10)
    assert err["event"] == "media"


async def test_slow_receiver_gets_bounded_queue_fresh_audio_and_a_key_request(trio):
    a = await trio(name="A")
    room = (await a.create())["room"]
    slow = await trio(SlowPeer, "slow")
    await slow.join(room)
    await slow.call("media/need", {"room": room, "need": True})
    await a.call("media", media(room, 0, key=True, stream="a", size=200))
    for i in range(30):  # ~3 s of video while the receiver acknowledges nothing
        await a.call("media", media(room, i, key=i == 0, size=2000))
    # window 2: exactly two chunks went out, the rest waits or was dropped
    assert len(slow.got) == 2
    # the server dropped video and asked the sender for a new recording
    ask = await a.next("media/keyframe", room=room, timeout=5)
    assert ask["stream"] == "v" and ask["from"] is None
    # a new recording arrives while the link is still stalled...
    await a.call("media", media(room, 30, key=True, size=2000))
    # ...and waits longer than relay_max_delay_ms: it must be dropped, not sent late
    await asyncio.sleep(0.9)  # older than relay_max_delay_ms now: must be dropped, not sent
    await a.call("media", media(room, 1, stream="a", size=200))
    t0 = time.time() * 1000
    slow.gate.set()
    await a.call("media", media(room, 2, stream="a", size=200))
    deadline = time.monotonic() + 5
    while not any(p["stream"] == "a" and p["seq"] == 2 for p in slow.got):
        assert time.monotonic() < deadline, slow.got
        await asyncio.sleep(0.05)
    late = [p for p in slow.got[2:] if p["ts"] < t0 - 800]
    assert late == [], [(p["stream"], p["seq"]) for p in late]
    assert [(p["stream"], p["seq"]) for p in slow.got[2:]] == [("a", 1), ("a", 2)]


async def test_receiver_can_ask_a_sender_for_a_key_frame(trio):
    a = await trio(name="A")
    room = (await a.create())["room"]
    b = await trio(name="B")
    await b.join(room)
    await b.call("media/need", {"room": room, "need": True})
    ack = await b.call("media/keyframe", {"room": room, "to": a.peer_ids[room], "stream": "a"})
    assert ack == {"ok": True}
    ask = await a.next("media/keyframe", room=room)
    assert ask == {"room": room, "from": b.peer_ids[room], "stream": "a"}


async def test_a_receiver_that_leaves_is_announced(trio):
    a = await trio(name="A")
    room = (await a.create())["room"]
    b = await trio(name="B")
    await b.join(room)
    await b.call("media/need", {"room": room, "need": True})
    await a.next("media/receivers", room=room)
    await b.disconnect()
    note = await a.next("media/receivers", room=room, timeout=15)
    assert note["peers"] == []
    assert (await a.call("media", media(room, 0, key=True)))["relayed"] == 0
