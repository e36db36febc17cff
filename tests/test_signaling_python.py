"""The signaling contract (docs/protocol.md) through python-socketio clients against a live
``incognito-onion up --no-tor --no-turn``, plus the HTTP surface (healthz, security headers).

Negative checks ("B never got its own message") are made after a *fence*: an event sent later to
the same socket whose arrival proves everything queued before it has arrived too.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets

import aiohttp
import pytest

from tests.support.server import LiveServer, Peer, RawSocketIO, fence

# one server for this module: small rooms so capacity is cheap to reach, small payloads,
# rooms die at once when empty
CAPACITY = 4
MAX_PAYLOAD = 1024
SERVER_ENV = {
    "INCOGNITO_ROOMS_CAPACITY": str(CAPACITY),
    "INCOGNITO_LIMITS_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD),
    "INCOGNITO_ROOMS_EMPTY_GRACE_SECONDS": "0",
    "INCOGNITO_ROOMS_PER_CONNECTION": "2",
}

ROOM_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")
PEER_RE = re.compile(r"^[A-Za-z0-9_-]{16}$")
RESUME_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")

KNOWN_CODES = {
    "bad_request", "payload_too_large", "rate_limited", "unknown_event", "room_not_found",
    "room_full", "room_locked", "not_in_room", "already_in_room", "peer_not_found", "not_host",
    "too_many_rooms", "server_full", "internal",
}


def blob(n: int = 24) -> str:
    """An opaque base64url string, like the client's ciphertext."""
    return secrets.token_urlsafe(n)


def random_room_id() -> str:
    return secrets.token_urlsafe(16)


class Peers:
    """Connects peers and disconnects all of them at the end of a test."""

    def __init__(self, base: str):
        self.base = base
        self.all: list[Peer] = []

    async def new(self, name: str) -> Peer:
        p = Peer(self.base, name)
        await p.connect()
        self.all.append(p)
        return p

    async def close(self) -> None:
        await asyncio.gather(*(p.disconnect() for p in self.all), return_exceptions=True)


@pytest.fixture
async def peers(shared_server: LiveServer):
    ps = Peers(shared_server.base)
    try:
        yield ps
    finally:
        await ps.close()


async def expect_error(peer: Peer, event: str, payload, code: str, *, timeout: float = 5.0):
    """The failure comes back both as the ack and as an ``error`` event with the same object."""
    ack = await peer.call(event, payload, timeout=timeout)
    assert isinstance(ack, dict), f"{event} {payload!r}: ack is not an object: {ack!r}"
    assert ack.get("ok") is False, f"{event} {payload!r}: expected ok false, got {ack!r}"
    err = ack.get("error")
    assert isinstance(err, dict), f"{event}: ack has no error object: {ack!r}"
    assert err.get("code") == code, f"{event} {str(payload)[:200]!r}: expected {code}, got {ack!r}"
    assert isinstance(err.get("message"), str) and err["message"], ack
    assert err.get("event") == event, f"error names event {err.get('event')!r}, not {event!r}"
    ev = await peer.next("error", timeout=timeout, code=code, event=event)
    assert ev == err, f"error event {ev!r} differs from the ack's error {err!r}"
    return err


async def four_in_a_room(peers: Peers):
    a = await peers.new("A")
    created = await a.create(meta="meta-A")
    room = created["room"]
    others = []
    for name in "BCD":
        p = await peers.new(name)
        await p.join(room, meta=f"meta-{name}")
        others.append(p)
    return room, [a, *others]


# ---------------------------------------------------------------------------------------------
# the room printed by `up`


async def test_up_room_is_joinable_and_first_joiner_is_host(shared_server: LiveServer, peers):
    room = shared_server.room
    a = await peers.new("A")
    ack = await a.join(room, meta="m-a")
    assert ack["room"] == room
    assert PEER_RE.match(ack["peer"]), ack
    assert ack["host"] == ack["peer"], f"first joiner of the up room must be host: {ack!r}"
    assert ack["peers"] == []
    assert ack["locked"] is False
    assert ack["capacity"] == CAPACITY
    b = await peers.new("B")
    ack_b = await b.join(room, meta="m-b")
    assert ack_b["host"] == ack["peer"]
    assert ack_b["peers"] == [{"peer": ack["peer"], "meta": "m-a"}]
    # the room key never reaches the server, and the server never invents one for us
    assert shared_server.key not in repr(ack) + repr(ack_b)
    # the `up` room stays open even when everyone leaves (grace 0 on this server)
    assert (await a.call("leave", {"room": room}))["ok"] is True
    assert (await b.call("leave", {"room": room}))["ok"] is True
    c = await peers.new("C")
    ack_c = await c.join(room)
    assert ack_c["host"] == ack_c["peer"], "first joiner of an emptied up room must be host"


# ---------------------------------------------------------------------------------------------
# four peers: create, join, message, connection, screen share, leave, disconnect


async def test_four_peers_relay(peers):
    a = await peers.new("A")
    created = await a.create(meta="meta-A")
    assert created["ok"] is True
    room = created["room"]
    assert ROOM_RE.match(room), created
    assert PEER_RE.match(created["peer"]), created
    assert RESUME_RE.match(created["resume"]), created
    assert created["host"] == created["peer"]
    assert created["locked"] is False
    assert created["capacity"] == CAPACITY
    assert created["peers"] == []

    joined_so_far = [a]
    for name in "BCD":
        p = await peers.new(name)
        ack = await p.join(room, meta=f"meta-{name}")
        assert ack["room"] == room
        assert PEER_RE.match(ack["peer"]) and RESUME_RE.match(ack["resume"]), ack
        assert ack["host"] == created["peer"]
        assert ack["locked"] is False and ack["capacity"] == CAPACITY
        # the others, oldest first, with their meta
        assert ack["peers"] == [
            {"peer": q.peer_ids[room], "meta": f"meta-{q.name}"} for q in joined_so_far
        ], ack
        for q in joined_so_far:
            ev = await q.next("joined", peer=ack["peer"])
            assert ev == {"room": room, "peer": ack["peer"], "meta": f"meta-{name}",
                          "resumed": False}, ev
        joined_so_far.append(p)
    a, b, c, d = joined_so_far
    ids = {p.name: p.peer_ids[room] for p in joined_so_far}
    assert len(set(ids.values())) == 4
    resumes = {p.resume[room] for p in joined_so_far}
    assert len(resumes) == 4, "every peer gets its own resume token"

    # message: broadcast to the others, not echoed to the sender
    data = blob()
    assert await b.call("message", {"room": room, "data": data}) == {"ok": True}
    for q in (a, c, d):
        ev = await q.next("message", data=data)
        assert ev == {"room": room, "from": ids["B"], "data": data}, ev
    await fence(a, b, room)
    assert b.seen("message", data=data) == [], "the sender got its own message back"

    # connection: only the target gets it, with the right `from`
    data = blob()
    assert await b.call("connection", {"room": room, "to": ids["D"], "data": data}) == {"ok": True}
    ev = await d.next("connection", data=data)
    assert ev == {"room": room, "from": ids["B"], "data": data}, ev
    for q in (a, b, c):
        await fence(d, q, room)
        assert q.seen("connection", data=data) == [], f"{q.name} got a connection meant for D"

    # screen share / unshare: everyone else (the host included)
    for event in ("connection/shareScreen", "connection/unshareScreen"):
        data = blob()
        assert await c.call(event, {"room": room, "data": data}) == {"ok": True}
        for q in (a, b, d):
            ev = await q.next(event, data=data)
            assert ev == {"room": room, "from": ids["C"], "data": data}, ev
        await fence(a, c, room)
        assert c.seen(event, data=data) == []
    # data is optional for screen share
    assert (await c.call("connection/shareScreen", {"room": room}))["ok"] is True
    ev = await a.next("connection/shareScreen", **{"from": ids["C"]})
    assert ev["room"] == room

    # leave: others get left reason "left"
    assert await d.call("leave", {"room": room}) == {"ok": True}
    for q in (a, b, c):
        ev = await q.next("left", peer=ids["D"])
        assert ev == {"room": room, "peer": ids["D"], "reason": "left"}, ev
    # D is no longer a peer of the room
    await expect_error(d, "message", {"room": room, "data": blob()}, "not_in_room")

    # disconnect: others get left reason "disconnected"
    await c.disconnect()
    for q in (a, b):
        ev = await q.next("left", peer=ids["C"], timeout=10)
        assert ev == {"room": room, "peer": ids["C"], "reason": "disconnected"}, ev

    # a message now reaches only the remaining peer
    data = blob()
    assert (await a.call("message", {"room": room, "data": data}))["ok"] is True
    assert (await b.next("message", data=data))["from"] == ids["A"]


async def test_peer_ids_are_not_socket_ids_and_sids_never_leak(peers):
    room, ps = await four_in_a_room(peers)
    # make every kind of event flow once
    a, b, c, d = ps
    await b.call("message", {"room": room, "data": blob()})
    await c.call("connection", {"room": room, "to": a.peer_ids[room], "data": blob()})
    await d.call("leave", {"room": room})
    for q in (a, b, c):
        await q.next("left", peer=d.peer_ids[room])
    sids = set()
    for p in ps:
        sids.update(x for x in (p.sid, p.eio_sid) if x)
    assert len(sids) >= 4
    for p in ps:
        pid = p.peer_ids[room]
        assert pid not in sids, f"peer id {pid} equals a socket id"
        assert p.resume[room] not in sids
        assert room not in sids
    everything = repr([p.log for p in ps])
    for s in sids:
        assert s not in everything, f"socket id {s} leaked in an event"


# ---------------------------------------------------------------------------------------------
# room limits and host controls


async def test_capacity_room_full(peers):
    room, ps = await four_in_a_room(peers)
    e = await peers.new("E")
    err = await expect_error(e, "join", {"room": room, "meta": blob()}, "room_full")
    assert str(CAPACITY) in err["message"]
    # nobody saw E join
    await fence(ps[1], ps[0], room)
    assert len(ps[0].seen("joined")) == 3
    # a place frees up: E can join
    await ps[3].call("leave", {"room": room})
    ack = await e.join(room)
    assert ack["ok"] is True
    assert [x["peer"] for x in ack["peers"]] == [p.peer_ids[room] for p in ps[:3]]


async def test_lock_unlock_and_only_host_can_lock(peers):
    a = await peers.new("A")
    room = (await a.create())["room"]
    b = await peers.new("B")
    await b.join(room)
    await a.next("joined")

    # only the host locks
    await expect_error(b, "lock", {"room": room, "locked": True}, "not_host")

    ack = await a.call("lock", {"room": room, "locked": True})
    assert ack == {"ok": True, "locked": True}, ack
    for q in (a, b):  # everyone, the host included
        ev = await q.next("locked")
        assert ev == {"room": room, "locked": True}, ev

    c = await peers.new("C")
    await expect_error(c, "join", {"room": room}, "room_locked")
    await fence(b, a, room)
    assert a.seen("joined") != [] and len(a.seen("joined")) == 1, "C must not have joined"

    ack = await a.call("lock", {"room": room, "locked": False})
    assert ack == {"ok": True, "locked": False}, ack
    for q in (a, b):
        assert await q.next("locked", locked=False) == {"room": room, "locked": False}
    ack = await c.join(room)
    assert ack["locked"] is False
    assert (await a.next("joined", peer=ack["peer"]))["resumed"] is False

    # a locked state shows in the join ack
    await a.call("lock", {"room": room, "locked": True})
    await c.next("locked", locked=True)
    # and `locked` must be a boolean
    await expect_error(a, "lock", {"room": room, "locked": "false"}, "bad_request")
    await expect_error(a, "lock", {"room": room}, "bad_request")


async def test_unknown_room(peers):
    a = await peers.new("A")
    await expect_error(a, "join", {"room": random_room_id()}, "room_not_found")
    await expect_error(a, "message", {"room": random_room_id(), "data": "x"}, "not_in_room")


async def test_room_dies_when_last_peer_leaves(peers):
    # grace 0 on this server: the room is gone at once
    a = await peers.new("A")
    room = (await a.create())["room"]
    assert (await a.call("leave", {"room": room}))["ok"] is True
    b = await peers.new("B")
    await expect_error(b, "join", {"room": room}, "room_not_found")


async def test_remove_peer(peers):
    room, (a, b, c, d) = await four_in_a_room(peers)
    bid = b.peer_ids[room]
    # only the host removes
    await expect_error(c, "remove", {"room": room, "peer": bid}, "not_host")
    await expect_error(a, "remove", {"room": room, "peer": blob(12)}, "peer_not_found")

    assert await a.call("remove", {"room": room, "peer": bid}) == {"ok": True}
    assert await b.next("removed") == {"room": room}
    for q in (a, c, d):
        ev = await q.next("left", peer=bid)
        assert ev == {"room": room, "peer": bid, "reason": "removed"}, ev

    # the removed peer can no longer use the room
    await expect_error(b, "message", {"room": room, "data": blob()}, "not_in_room")
    await expect_error(b, "connection", {"room": room, "to": c.peer_ids[room], "data": "x"},
                       "not_in_room")
    await expect_error(b, "connection/shareScreen", {"room": room}, "not_in_room")
    # nor can anyone reach it any more
    await expect_error(c, "connection", {"room": room, "to": bid, "data": "x"}, "peer_not_found")
    # no broadcast reaches it either
    data = blob()
    await c.call("message", {"room": room, "data": data})
    await a.next("message", data=data)
    await fence(c, a, room)
    assert b.seen("message", data=data) == []
    # it was removed, not disconnected: no second `left` for it
    await fence(c, a, room)
    assert len(a.seen("left", peer=bid)) == 1

    # its resume token died with it: a new socket with it does not become B again
    b2 = await peers.new("B2")
    ack = await b2.try_join(room, resume=b.resume[room])
    if isinstance(ack, dict) and ack.get("ok"):
        assert ack["peer"] != bid, "a removed peer's resume token still worked"
        ev = await a.next("joined", peer=ack["peer"])
        assert ev["resumed"] is False
    else:
        assert isinstance(ack, dict) and ack.get("ok") is False, ack


async def test_host_hand_over(peers):
    room, (a, b, c, d) = await four_in_a_room(peers)
    # the host leaves: the oldest remaining peer (B) becomes host
    await a.call("leave", {"room": room})
    for q in (b, c, d):
        ev = await q.next("host")
        assert ev == {"room": room, "peer": b.peer_ids[room]}, ev
        await q.next("left", peer=a.peer_ids[room])
    ack = await b.call("lock", {"room": room, "locked": True})
    assert ack["ok"] is True, ack
    await expect_error(c, "lock", {"room": room, "locked": False}, "not_host")
    # the new host drops its connection: C is next
    await b.disconnect()
    for q in (c, d):
        ev = await q.next("host", timeout=10)
        assert ev == {"room": room, "peer": c.peer_ids[room]}, ev
        left = await q.next("left", peer=b.peer_ids[room])
        assert left["reason"] == "disconnected"
    assert (await c.call("lock", {"room": room, "locked": False}))["ok"] is True
    # a new joiner sees C as host
    e = await peers.new("E")
    assert (await e.join(room))["host"] == c.peer_ids[room]


async def test_resume_takes_over_the_same_peer(peers):
    a = await peers.new("A")
    room = (await a.create(meta="ma"))["room"]
    b = await peers.new("B")
    b_ack = await b.join(room, meta="mb")
    c = await peers.new("C")
    await c.join(room, meta="mc")
    bid = b.peer_ids[room]
    await a.next("joined", peer=bid)
    await a.next("joined", peer=c.peer_ids[room])
    await b.next("joined", peer=c.peer_ids[room])

    # lock the room: a resume still works while locked
    await a.call("lock", {"room": room, "locked": True})
    for q in (a, b, c):
        await q.next("locked", locked=True)

    b2 = await peers.new("B2")
    ack = await b2.call("join", {"room": room, "meta": "mb", "resume": b_ack["resume"]})
    assert ack.get("ok") is True, ack
    assert ack["peer"] == bid, "resume must keep the same peer id"
    assert ack["host"] == a.peer_ids[room]
    assert ack["locked"] is True
    assert [x["peer"] for x in ack["peers"]] == [a.peer_ids[room], c.peer_ids[room]]
    for q in (a, c):
        ev = await q.next("joined", peer=bid)
        assert ev == {"room": room, "peer": bid, "meta": "mb", "resumed": True}, ev

    # the new socket speaks as B
    data = blob()
    assert (await b2.call("message", {"room": room, "data": data}))["ok"] is True
    assert (await a.next("message", data=data))["from"] == bid
    data = blob()
    await a.call("connection", {"room": room, "to": bid, "data": data})
    assert (await b2.next("connection", data=data))["from"] == a.peer_ids[room]

    # the old socket going away must not produce a ghost `left`
    await b.disconnect()
    # prove the server processed the old socket's disconnect: wait until it is gone server-side
    # by a round trip after it (the disconnect was sent before this message)
    data = blob()
    await c.call("message", {"room": room, "data": data})
    await a.next("message", data=data)
    await fence(b2, a, room)
    await fence(b2, c, room)
    assert a.seen("left", peer=bid) == [], f"ghost left for a resumed peer: {a.log!r}"
    assert c.seen("left", peer=bid) == []
    # B is still reachable through the new socket
    data = blob()
    await c.call("connection", {"room": room, "to": bid, "data": data})
    await b2.next("connection", data=data)

    # the host resumes too, keeping the host role
    a2 = await peers.new("A2")
    ack = await a2.call("join", {"room": room, "resume": a.resume[room]})
    assert ack.get("ok") is True and ack["peer"] == a.peer_ids[room], ack
    assert ack["host"] == a.peer_ids[room]
    assert (await a2.call("lock", {"room": room, "locked": False}))["ok"] is True
    # the old host socket no longer is a peer of the room... nor does it count as host
    await a.disconnect()
    await fence(a2, c, room)
    assert c.seen("left", peer=a.peer_ids[room]) == []
    assert c.seen("host") == []


async def test_already_in_room_and_too_many_rooms(peers):
    a = await peers.new("A")
    r1 = (await a.create())["room"]
    await expect_error(a, "join", {"room": r1}, "already_in_room")
    r2 = (await a.create())["room"]
    assert r2 != r1
    # per_connection is 2 on this server
    await expect_error(a, "create", {}, "too_many_rooms")
    b = await peers.new("B")
    r3 = (await b.create())["room"]
    await expect_error(a, "join", {"room": r3}, "too_many_rooms")
    # leaving one makes room for another
    await a.call("leave", {"room": r1})
    assert (await a.join(r3))["ok"] is True
    # messages go to the right room only
    c = await peers.new("C")
    await c.join(r2)
    data = blob()
    await a.call("message", {"room": r2, "data": data})
    assert (await c.next("message", data=data))["room"] == r2
    await fence(a, b, r3)
    assert b.seen("message", data=data) == []


async def test_connection_to_unknown_peer(peers):
    a = await peers.new("A")
    room = (await a.create())["room"]
    await expect_error(a, "connection", {"room": room, "to": blob(12), "data": "x"},
                       "peer_not_found")


# ---------------------------------------------------------------------------------------------
# envelope checks


async def test_payload_too_large(peers):
    a = await peers.new("A")
    room = (await a.create())["room"]
    b = await peers.new("B")
    await b.join(room)
    exact = "x" * MAX_PAYLOAD
    assert (await a.call("message", {"room": room, "data": exact}))["ok"] is True
    assert (await b.next("message", **{"from": a.peer_ids[room]}))["data"] == exact
    await expect_error(a, "message", {"room": room, "data": exact + "x"}, "payload_too_large")
    # the limit is in UTF-8 bytes, not characters
    euro = "\u20ac" * (MAX_PAYLOAD // 3 + 1)  # 1026 bytes, 342 characters
    await expect_error(a, "message", {"room": room, "data": euro}, "payload_too_large")
    await expect_error(a, "connection", {"room": room, "to": b.peer_ids[room],
                                         "data": exact + "y"}, "payload_too_large")
    await expect_error(a, "connection/shareScreen", {"room": room, "data": exact + "z"},
                       "payload_too_large")
    c = await peers.new("C")
    await expect_error(c, "join", {"room": room, "meta": exact + "m"}, "payload_too_large")
    await expect_error(c, "create", {"meta": exact + "m"}, "payload_too_large")
    # ten times the limit is refused, and the connection lives on
    await expect_error(a, "message", {"room": room, "data": "h" * (10 * MAX_PAYLOAD)},
                       "payload_too_large")
    assert (await a.call("message", {"room": room, "data": "ok"}))["ok"] is True
    # nothing oversized was relayed
    await fence(a, b, room)
    assert all(len(p["data"]) <= MAX_PAYLOAD for p in b.seen("message"))


async def test_bad_request(peers):
    a = await peers.new("A")
    room = (await a.create())["room"]
    b = await peers.new("B")
    await b.join(room)
    bid = b.peer_ids[room]
    cases = [
        ("message", "just a string"),
        ("message", ["a", "list"]),
        ("message", 42),
        ("message", None),  # no argument at all
        ("message", {}),
        ("message", {"room": room}),  # missing data
        ("message", {"data": "x"}),  # missing room
        ("message", {"room": room, "data": 7}),  # a number where a string is expected
        ("message", {"room": room, "data": {"nested": "x"}}),
        ("message", {"room": room, "data": ["x"]}),
        ("message", {"room": room, "data": True}),
        ("message", {"room": room, "data": b"binary ciphertext"}),  # binary where text expected
        ("message", {"room": 123, "data": "x"}),
        ("message", {"room": room.encode(), "data": "x"}),
        ("message", {"room": "short", "data": "x"}),
        ("message", {"room": room[:-1] + "/", "data": "x"}),
        ("message", {"room": room + "\n", "data": "x"}),  # an id with a trailing newline
        ("connection", {"room": room, "data": "x"}),  # missing to
        ("connection", {"room": room, "to": 5, "data": "x"}),
        ("connection", {"room": room, "to": "not a peer id!!!", "data": "x"}),
        ("connection", {"room": room, "to": bid + "\n", "data": "x"}),
        ("connection", {"room": room, "to": bid, "data": b"\x00\x01"}),
        ("connection/shareScreen", {"room": room, "data": 1}),
        ("connection/unshareScreen", "x"),
        ("join", {}),
        ("join", {"room": ["x"]}),
        ("join", {"room": room, "meta": 5}),
        ("join", {"room": room, "resume": 5}),
        ("join", {"room": room, "resume": "bad resume"}),
        ("create", {"meta": b"bytes"}),
        ("create", {"meta": 1}),
        ("create", "x"),
        ("leave", {}),
        ("leave", {"room": None}),
        ("lock", {"room": room, "locked": 1}),
        ("lock", {"room": room, "locked": None}),
        ("remove", {"room": room}),
        ("remove", {"room": room, "peer": 1}),
        ("remove", {"room": room, "peer": bid.encode()}),
    ]
    for event, payload in cases:
        await expect_error(a, event, payload, "bad_request")
    # two arguments where one object is expected
    ack = await a.call("message", ({"room": room, "data": "x"}, {"extra": 1}))
    assert isinstance(ack, dict) and ack.get("ok") is False, ack
    assert ack["error"]["code"] == "bad_request", ack
    await a.next("error", code="bad_request")
    # nothing of the above was relayed, and the connection still works
    data = blob()
    assert (await a.call("message", {"room": room, "data": data}))["ok"] is True
    await b.next("message", data=data)
    assert [m["data"] for m in b.seen("message")] == [data]
    assert b.seen("connection") == []
    # the error went only to the sender
    assert b.seen("error") == []


async def test_unknown_event(peers):
    a = await peers.new("A")
    for name in ("nonsense", "Message", "join ", "connection/other"):
        await expect_error(a, name, {"room": random_room_id()}, "unknown_event")
    # a long name is not echoed back verbatim, but still refused
    ack = await a.call("x" * 300, {})
    assert ack["ok"] is False and ack["error"]["code"] == "unknown_event", ack
    assert len(ack["error"]["event"]) <= 300
    await a.next("error", code="unknown_event", event=ack["error"]["event"])
    # without an ack the error event still arrives
    await a.emit("nope", {})
    ev = await a.next("error", code="unknown_event")
    assert ev["event"] == "nope"


async def test_error_event_without_ack(peers):
    a = await peers.new("A")
    await a.emit("join", {"room": random_room_id()})
    ev = await a.next("error")
    assert ev["code"] == "room_not_found" and ev["event"] == "join", ev
    assert set(ev) == {"code", "message", "event"}, ev


@pytest.mark.parametrize("name", ["disconnect", "connect", "connect_error"])
async def test_reserved_event_names_from_a_client_are_not_obeyed(shared_server: LiveServer,
                                                                  peers, name):
    """A client sending an event *named* ``disconnect``/``connect`` (python-socketio routes those
    to the server's connect/disconnect handlers) must not make the server run its
    connection-life logic: the peer stays in its room and the connection keeps working."""
    a = await peers.new("A")
    room = (await a.create())["room"]
    async with RawSocketIO(shared_server) as raw:
        await raw.handshake()
        ack = await raw.call("join", {"room": room})
        assert ack.get("ok") is True, ack
        me = ack["peer"]
        await a.next("joined", peer=me)
        await raw.send("42" + json.dumps([name, {"room": room}]))
        await raw.send("42" + json.dumps([name]))
        ack = await raw.call("message", {"room": room, "data": "still-here"})
        assert ack.get("ok") is True, (
            f"after a client event named {name!r} the peer can no longer talk: {ack!r}"
        )
        await a.next("message", data="still-here")
        assert a.seen("left", peer=me) == [], f"an event named {name!r} made the peer leave"


async def test_oversized_frame_does_not_hurt_the_server(shared_server: LiveServer, peers):
    """A frame far over the payload limit is refused (payload_too_large) or cut off by closing
    that one connection; either way the server and the room live on."""
    a = await peers.new("A")
    room = (await a.create())["room"]
    b = await peers.new("B")
    await b.join(room)
    try:
        ack = await a.call("message", {"room": room, "data": "h" * 300_000}, timeout=5)
    except Exception:  # socketio TimeoutError: the connection was cut off
        ack = None
    if ack is not None:
        assert ack["ok"] is False and ack["error"]["code"] == "payload_too_large", ack
    else:
        ev = await b.next("left", peer=a.peer_ids[room], timeout=10)
        assert ev["reason"] == "disconnected", ev
    assert all(len(m["data"]) < 300_000 for m in b.seen("message"))
    c = await peers.new("C")
    await c.join(room)
    data = blob()
    await c.call("message", {"room": room, "data": data})
    await b.next("message", data=data)


# ---------------------------------------------------------------------------------------------
# rate limiting (own server: very low limits)


@pytest.mark.server_env({
    "INCOGNITO_LIMITS_EVENTS_PER_SECOND": "1",
    "INCOGNITO_LIMITS_EVENT_BURST": "5",
})
async def test_rate_limited(live_server: LiveServer):
    a = Peer(live_server.base, "A")
    b = Peer(live_server.base, "B")
    await a.connect()
    await b.connect()
    try:
        room = (await a.create())["room"]  # 1 event of the burst
        await b.join(room)
        n = 30
        acks: dict[int, object] = {}
        done = asyncio.Event()

        def callback(i):
            def cb(*args):
                acks[i] = args[0] if args else None
                if len(acks) == n:
                    done.set()
            return cb

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(n):
            await a.sio.emit("message", {"room": room, "data": f"m{i}"}, callback=callback(i))
        ev = await a.next("error", code="rate_limited", timeout=5)
        assert ev["event"] == "message", ev
        # every emit with a callback is answered, the dropped ones with rate_limited
        try:
            await asyncio.wait_for(done.wait(), 10)
        except TimeoutError:
            raise AssertionError(
                f"only {len(acks)} of {n} acks arrived: dropped events left unanswered"
            ) from None
        elapsed = loop.time() - t0
        passed = [f"m{i}" for i in range(n) if acks[i] == {"ok": True}]
        limited = [acks[i] for i in range(n) if acks[i] != {"ok": True}]
        assert all(
            isinstance(x, dict) and x.get("ok") is False and x["error"]["code"] == "rate_limited"
            and x["error"]["event"] == "message"
            for x in limited
        ), limited
        # the burst (5, one used by create) passes, plus at most the refill over the send time
        assert 3 <= len(passed) <= 4 + elapsed + 1, (passed, elapsed, acks)
        assert len(limited) >= 20, acks

        # the connection is not dropped: once the bucket refills, events pass again
        async def until_ok():
            while True:
                ack = await a.call("message", {"room": room, "data": "later"})
                if ack.get("ok") is True:
                    return
                await asyncio.sleep(0.25)

        await asyncio.wait_for(until_ok(), 10)
        assert a.sio.connected
        # dropped events were not relayed: B got exactly the passed ones, in order, then "later"
        await b.next("message", data="later")
        relayed = [m["data"] for m in b.seen("message")]
        assert relayed == [*passed, "later"], relayed
        # `error` events for rate limiting come at most once a second
        total = loop.time() - t0
        n_err = len(a.seen("error", code="rate_limited"))
        assert 1 <= n_err <= total + 2, f"{n_err} rate_limited error events in {total:.2f}s"
        # another connection has its own bucket
        assert (await b.call("message", {"room": room, "data": "from-b"}))["ok"] is True
    finally:
        await a.disconnect()
        await b.disconnect()


# ---------------------------------------------------------------------------------------------
# HTTP


async def test_healthz(shared_server: LiveServer):
    async with aiohttp.ClientSession() as http, http.get(shared_server.base + "/healthz") as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        body = await r.json()
        text = await r.text()
    assert body.get("status") == "ok", body
    assert shared_server.room not in text, "healthz leaks a room id"
    assert shared_server.key not in text


CSP_REQUIRED = {
    "default-src": "'self'",
    "frame-ancestors": "'none'",
    "object-src": "'none'",
    "base-uri": "'none'",
}


def check_security_headers(path: str, headers, page: bool) -> None:
    csp = headers.get("Content-Security-Policy")
    assert csp, f"{path}: no Content-Security-Policy"
    directives = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    for name, value in CSP_REQUIRED.items():
        assert directives.get(name) == [value], f"{path}: CSP {name} is {directives.get(name)}"
    script = directives.get("script-src", directives.get("default-src"))
    assert script is not None
    assert "'unsafe-inline'" not in script and "'unsafe-eval'" not in script, f"{path}: {csp}"
    assert headers.get("Referrer-Policy") == "no-referrer", path
    assert headers.get("X-Content-Type-Options") == "nosniff", path
    pp = headers.get("Permissions-Policy", "")
    pp_items = {x.strip() for x in pp.split(",")}
    for item in ("camera=(self)", "microphone=(self)", "display-capture=(self)"):
        assert item in pp_items, f"{path}: Permissions-Policy {pp!r} lacks {item}"
    assert headers.get("Cross-Origin-Opener-Policy") == "same-origin", path
    assert headers.get("Cross-Origin-Resource-Policy") == "same-origin", path
    if page:
        assert "no-store" in headers.get("Cache-Control", ""), f"{path}: pages must be no-store"


async def test_security_headers(shared_server: LiveServer):
    base = shared_server.base
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/") as r:
            assert r.status == 200
            assert r.content_type == "text/html"
            landing = await r.text()
            check_security_headers("/", r.headers, page=True)
        async with http.get(f"{base}/r/{shared_server.room}") as r:
            assert r.status == 200
            assert r.content_type == "text/html"
            client_page = await r.text()
            check_security_headers("/r/<room>", r.headers, page=True)
        assert shared_server.key not in client_page
        # a static file referenced by the pages
        refs = re.findall(r"""(?:src|href)=["'](/static/[^"'?#]+)""", landing + client_page)
        assert refs, "the pages reference no /static/ file"
        async with http.get(base + refs[0]) as r:
            assert r.status == 200, refs[0]
            check_security_headers(refs[0], r.headers, page=False)
        # no inline scripts: script-src 'self' would block them anyway
        for html in (landing, client_page):
            for m in re.finditer(r"<script\b([^>]*)>(.*?)</script>", html, re.S | re.I):
                assert "src=" in m.group(1) and not m.group(2).strip(), m.group(0)[:200]
        for path in ("/no-such-page", "/static/no-such-file.js", "/r/not-a-room-id"):
            async with http.get(base + path) as r:
                assert r.status == 404, f"{path}: {r.status}"
                check_security_headers(path, r.headers, page=False)
        async with http.get(base + "/healthz") as r:
            check_security_headers("/healthz", r.headers, page=False)


@pytest.mark.server_env({
    "INCOGNITO_LIMITS_EVENTS_PER_SECOND": "1",
    "INCOGNITO_LIMITS_EVENT_BURST": "3",
})
async def test_event_named_connect_does_not_reset_the_rate_limit(live_server: LiveServer):
    async with RawSocketIO(live_server) as raw:
        await raw.handshake()
        codes = []
        for _ in range(6):
            ack = await raw.call("create", {})
            codes.append(ack["ok"] if ack["ok"] else ack["error"]["code"])
        assert "rate_limited" in codes, codes
        # an event *named* connect must not hand out a fresh bucket
        await raw.send("42" + json.dumps(["connect", {}]))
        ack = await raw.call("nonsense", {})
        assert ack["error"]["code"] == "rate_limited", (
            f"a client event named 'connect' reset the rate limiter: {ack!r}"
        )


@pytest.mark.server_env({"INCOGNITO_LIMITS_MAX_CONNECTIONS": "2"})
async def test_max_connections(live_server: LiveServer):
    import socketio

    a = await Peer(live_server.base, "A").connect()
    try:
        async with RawSocketIO(live_server) as raw:
            await raw.handshake()
            c = Peer(live_server.base, "C")
            with pytest.raises(socketio.exceptions.ConnectionError):
                await c.connect()
            assert c.seen("connect_error") == [{"message": "server_full"}], c.log
            # an event *named* disconnect must not free a connection slot
            await raw.send("42" + json.dumps(["disconnect"]))
            await raw.call("nonsense", {})  # a round trip: the server has handled it
            d = Peer(live_server.base, "D")
            try:
                await d.connect()
                pytest.fail("a client event named 'disconnect' freed a connection slot: "
                            "a third connection was accepted with max_connections 2")
            except socketio.exceptions.ConnectionError:
                pass
            finally:
                await d.disconnect()
            assert d.seen("connect_error") == [{"message": "server_full"}], (
                "an event named 'disconnect' freed a connection slot"
            )
        # a real disconnect frees one
        e = Peer(live_server.base, "E")

        async def until_connected():
            while True:
                try:
                    await e.connect()
                    return
                except socketio.exceptions.ConnectionError:
                    await asyncio.sleep(0.1)

        await asyncio.wait_for(until_connected(), 10)
        await e.disconnect()
    finally:
        await a.disconnect()


async def test_event_named_star_is_an_unknown_event(peers):
    """``*`` is the server's catch-all handler name: an event literally named ``*`` must be
    refused like any unknown event, not dispatched with its arguments shifted (which would make
    the first argument the socket to act for and to send the error to)."""
    a = await peers.new("A")
    room = (await a.create())["room"]
    b = await peers.new("B")
    await b.join(room)
    x = await peers.new("X")
    acks = []
    for payload in (room, {"room": room}, [room], ({"room": room}, {"data": "x"}), None):
        try:
            acks.append((payload, await x.call("*", payload, timeout=3)))
        except Exception as e:  # no ack at all
            acks.append((payload, f"no ack: {type(e).__name__}"))
    # nothing reached the room's peers
    await fence(a, b, room)
    await fence(b, a, room)
    assert a.seen("error") == [] and b.seen("error") == [], (
        f"an event named '*' from a non-member sent errors into the room: A got "
        f"{a.seen('error')}, B got {b.seen('error')}"
    )
    for payload, ack in acks:
        assert isinstance(ack, dict) and ack.get("ok") is False, (payload, ack)
        assert ack["error"]["code"] == "unknown_event", (payload, ack)
        assert x.sid not in repr(ack), f"the ack carries the socket id: {ack!r}"


async def test_event_packet_that_is_not_an_array_is_a_bad_request(shared_server: LiveServer):
    """An event packet's payload is ``[name, ...args]``. A bare JSON string must not be taken
    as one (python-socketio would index it: ``"abc"`` became event ``a`` with arguments ``b``,
    ``c``); it and other shapes are answered ``bad_request``, in the ack the packet asked for."""
    async with RawSocketIO(shared_server) as raw:
        await raw.handshake()
        for i, body in enumerate(['"join"', '"\\u00f2\\u00cd\\u00fa"', "[]", "[null]", "[7]",
                                  '[{"a": 1}]', '{"0": "join"}', "true"], start=700):
            await raw.send(f"42{i}{body}")
            prefix = f"43{i}["
            while True:
                frame = await raw.recv()
                assert frame is not None, f"closed after {body!r}"
                if isinstance(frame, str) and frame.startswith(prefix):
                    break
                assert frame == '42["error",{"code":"bad_request","message":"malformed packet",' \
                                '"event":"?"}]', (body, frame)
            ack = json.loads(frame[len(prefix) - 1:])[0]
            assert ack == {"ok": False, "error": {"code": "bad_request",
                                                  "message": "malformed packet",
                                                  "event": "?"}}, (body, ack)
        # the connection still works
        ack = await raw.call("nonsense", {})
        assert ack["error"]["code"] == "unknown_event", ack


@pytest.mark.parametrize("frames", [["41", "42990" + json.dumps(["nonsense", {}])],
                                    ["42/x,990" + json.dumps(["nonsense", {}])]],
                         ids=["after-leaving-the-namespace", "namespace-never-joined"])
async def test_event_on_a_namespace_the_connection_is_not_in_closes_it(
        shared_server: LiveServer, peers, frames):
    """There is no socket to answer such an event on; rather than dropping it without a word
    (python-socketio's default) the server ends the session, as Socket.IO's reference server
    does, and the client's room sees it leave."""
    a = await peers.new("A")
    room = (await a.create())["room"]
    async with RawSocketIO(shared_server) as raw:
        await raw.handshake()
        ack = await raw.call("join", {"room": room})
        me = ack["peer"]
        for frame in frames:
            await raw.send(frame)
        while True:
            frame = await raw.recv(timeout=5)
            if frame is None or frame == "1":  # the websocket, or the Engine.IO session, closed
                break
            assert not (isinstance(frame, str) and frame.startswith("43990")), frame
    ev = await a.next("left", peer=me, timeout=5)
    assert ev["reason"] == "disconnected", ev
