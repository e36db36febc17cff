"""``server.workers``: several server processes on one port sharing rooms through a private
redis-server (issue 8, "Scale past one process").

- The shared room store (``shared_rooms.SharedRooms``) against a real redis-server, with two
  stores standing for two workers: capacity, lock, host, resume and removal stay exact when both
  change one room at once; a stopped worker's peers are removed; empty rooms expire.
- A live ``incognito-onion up`` with ``server.workers: 2``: two peers whose sockets the kernel
  gave to different processes (found from the processes' own TCP connections) create, join,
  exchange ``message`` and ``connection``, see ``joined``/``left``/``host``/``locked``; polling is
  refused; redis is stopped on exit. The onion media relay across the processes: a sender's
  chunks reach receivers on either worker, in order and windowed by their acks, key requests
  and receiver notes cross, a receiver's departure is announced.
- Configuration: the range of ``server.workers``; a missing redis-server is one line naming the
  Debian package, with its own exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from incognito_onion import rooms as room_rules
from incognito_onion.config import ConfigError, load
from incognito_onion.redis_supervisor import EXIT_CODE, RedisSupervisor, find_binary
from incognito_onion.rooms import RoomError
from incognito_onion.shared_rooms import SharedRooms, decode_room, encode_room
from tests.support.server import (
    Peer,
    fence,
    free_port,
    server_command,
    server_procs,
    start_server,
    worker_of,
)

ROOT = Path(__file__).resolve().parent.parent


def blob(n: int = 24) -> str:
    return secrets.token_urlsafe(n)


# --- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("value,ok", [("1", True), ("64", True), ("0", False), ("65", False),
                                      ("two", False)])
def test_workers_range(tmp_path, value, ok):
    env = {"INCOGNITO_SERVER_WORKERS": value}
    if ok:
        assert load(None, env=env).server.workers == int(value)
    else:
        with pytest.raises(ConfigError) as exc:
            load(None, env=env)
        assert exc.value.problems == [
            f"INCOGNITO_SERVER_WORKERS: server.workers: must be 1-64, got "
            f"{value if value.isdigit() else repr(value).replace(chr(39), chr(34))}"]


def test_workers_in_the_file_names_the_line(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text("server:\n  port: 8080\n  workers: 100\n")
    with pytest.raises(ConfigError) as exc:
        load(p, env={})
    assert exc.value.problems == ["config.yaml:3: server.workers: must be 1-64, got 100"]


def test_missing_redis_binary_is_named_with_its_package():
    with pytest.raises(Exception) as exc:
        find_binary("no-such-redis-server-here")
    msg = str(exc.value)
    assert "sudo apt-get install redis-server" in msg and "server.workers: 1" in msg


def test_up_without_redis_exits_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCOGNITO_")}
    env.update({"INCOGNITO_SERVER_WORKERS": "2",
                "INCOGNITO_SERVER_REDIS_BINARY": "no-such-redis-server-here"})
    p = subprocess.run([*server_command(), "up", "--no-tor", "--no-turn",
                        "--port", str(free_port()), "--state-dir", str(tmp_path / "s")],
                       env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == EXIT_CODE == 7, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("incognito-onion: redis: "), p.stderr
    assert "Debian package redis-server" in lines[0] and "Traceback" not in p.stderr
    assert p.stdout == ""


# --- the shared store against a real redis-server -----------------------------------------------

class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


def stores(url, n=2, clock=None, **kw):
    kw = {"capacity": 3, "max_rooms": 5, "per_connection": 2, "empty_grace": 0.0, **kw}
    if clock is not None:
        kw["clock"] = clock
    return [SharedRooms.from_url(url, node=f"w{i}", **kw) for i in range(n)]


def test_room_document_round_trip():
    room = room_rules.Room(id="r" * 22, capacity=4, locked=True)
    a = room_rules.add_peer(room, "sa", "meta-a", "w0")
    room_rules.add_peer(room, "sb", "meta-b", "w1")
    back = decode_room(encode_room(room), {a.id: "meta-a"})
    assert list(back.peers) == list(room.peers) and back.host == a.id and back.locked
    assert back.peers[a.id].meta == "meta-a" and back.peers[a.id].node == "w0"
    assert "meta-b" not in encode_room(room)  # profiles are kept apart


async def test_two_workers_share_one_room(redis_url):
    w0, w1 = stores(redis_url)
    created = await w0.create("s1", "m1")
    rid = created.room.id
    joined = await w1.join(rid, "s2", "m2")
    assert joined.room.host == created.peer.id
    assert [p.meta for p in joined.room.others(joined.peer.id)] == ["m1"]
    room, peer = await w0.member(rid, "s2")  # a worker sees a peer held by the other
    assert peer.id == joined.peer.id and peer.node == "w1"
    with pytest.raises(RoomError) as exc:
        await w1.join(rid, "s2")
    assert exc.value.code == "already_in_room"
    # host controls decided on the shared state
    with pytest.raises(RoomError) as exc:
        await w1.lock(rid, "s2", True)
    assert exc.value.code == "not_host"
    assert (await w0.lock(rid, "s1", True)).locked
    with pytest.raises(RoomError) as exc:
        await w1.join(rid, "s3")
    assert exc.value.code == "room_locked"
    # resume on the other worker works while locked and keeps the peer and its host role
    resumed = await w1.join(rid, "s1b", resume=created.peer.resume)
    assert resumed.resumed and resumed.peer.id == created.peer.id and resumed.replaced_sid == "s1"
    assert await w0.disconnect("s1") == []  # the stale connection leaves nothing behind
    dep = await w1.remove(rid, "s1b", joined.peer.id)
    assert dep.reason == "removed" and dep.peer.id == joined.peer.id
    assert await w1.r.hlen("io:sid:s2") == 0
    dep = await w0.leave(rid, "s1b")
    assert dep.room_closed and await w0.count() == 0
    with pytest.raises(RoomError) as exc:
        await w1.join(rid, "s4")
    assert exc.value.code == "room_not_found"


async def test_relay_receivers_are_listed_with_their_worker_and_leave_with_their_peer(
        redis_url):
    w0, w1 = stores(redis_url)
    rid = (await w0.create("s1")).room.id
    b = (await w1.join(rid, "s2")).peer
    c = (await w1.join(rid, "s3")).peer
    await w1.set_receiver(rid, "s2", None)
    await w1.set_receiver(rid, "s3", frozenset({"x" * 16}))
    assert await w0.relay_receivers(rid) == {b.id: ("w1", None),
                                             c.id: ("w1", frozenset({"x" * 16}))}
    with pytest.raises(RoomError):  # a connection not in the room cannot list itself
        await w0.set_receiver(rid, "nobody", None)
    await w1.drop_receiver(rid, c.id)
    assert list(await w0.relay_receivers(rid)) == [b.id]
    # leaving removes the entry in the same transaction, and says it was a receiver
    dep = await w1.leave(rid, "s2")
    assert dep.relay_receiver and await w0.relay_receivers(rid) == {}
    assert not (await w1.leave(rid, "s3")).relay_receiver
    # a closed room leaves no list behind
    await w0.set_receiver(rid, "s1", None)
    assert (await w0.leave(rid, "s1")).room_closed
    assert await w0.r.exists("io:rrecv:" + rid) == 0 and await w0.room(rid) is None


async def test_a_media_sender_and_the_receivers_come_in_one_round_trip(redis_url,
                                                                       monkeypatch):
    w0, w1 = stores(redis_url)
    rid = (await w0.create("s1")).room.id
    b = (await w1.join(rid, "s2")).peer
    await w1.set_receiver(rid, "s2", None)
    room, peer = await w0.member(rid, "s2")
    receivers = await w0.relay_receivers(rid)

    async def no_single_commands(*a, **kw):
        raise AssertionError("a command of its own, outside the pipeline")

    monkeypatch.setattr(w0.r, "execute_command", no_single_commands)
    got_room, got_peer, got_receivers = await w0.member_and_receivers(rid, "s2")
    assert got_peer == peer and got_peer.id == b.id and got_room.peers == room.peers
    assert got_receivers == receivers == {b.id: ("w1", None)}
    for room_id, sid in ((rid, "nobody"), ("x" * 22, "s1")):
        with pytest.raises(RoomError) as exc:
            await w0.member_and_receivers(room_id, sid)
        assert exc.value.code == "not_in_room"


async def test_concurrent_joins_never_overfill_a_room(redis_url):
    ws = stores(redis_url, n=4, capacity=3, per_connection=1)
    rid = (await ws[0].create("host")).room.id
    results = await asyncio.gather(
        *(ws[i % 4].join(rid, f"c{i}") for i in range(12)), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, Exception)]
    codes = {r.code for r in results if isinstance(r, RoomError)}
    assert len(ok) == 2 and codes == {"room_full"}, results
    room, _ = await ws[1].member(rid, "host")
    assert len(room.peers) == 3 and room.host == next(iter(room.peers))


async def test_concurrent_creates_respect_limits(redis_url):
    ws = stores(redis_url, n=3, max_rooms=5, per_connection=2)
    results = await asyncio.gather(*(ws[i % 3].create(f"c{i}") for i in range(9)),
                                   return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 5
    assert {r.code for r in results if isinstance(r, RoomError)} == {"server_full"}
    assert await ws[0].count() == 5
    r2 = stores(redis_url, n=1, max_rooms=100, per_connection=1)[0]
    await r2.create("one")
    with pytest.raises(RoomError) as exc:
        await r2.create("one")
    assert exc.value.code == "too_many_rooms"


async def test_host_moves_and_grace_period(redis_url):
    clock = Clock()
    w0, w1 = stores(redis_url, clock=clock, empty_grace=20.0)
    a = await w0.create("a")
    rid = a.room.id
    b = await w1.join(rid, "b")
    dep = await w0.leave(rid, "a")
    assert dep.new_host == b.peer.id and not dep.room_closed
    dep = await w1.leave(rid, "b")
    assert not dep.room_closed  # empty, in its grace period
    clock.t += 10
    assert (await w0.sweep())[0] == 0
    c = await w0.join(rid, "c")  # back in time: first joiner of an empty room is host
    assert c.room.host == c.peer.id
    await w0.leave(rid, "c")
    clock.t += 25
    assert (await w1.sweep())[0] == 1 and await w1.count() == 0
    pinned = await w0.open_pinned()
    clock.t += 1000
    assert (await w0.sweep())[0] == 0
    assert (await w1.join(pinned.id, "d")).room.pinned


async def test_stopped_worker_peers_are_removed(redis_url):
    w0, w1 = stores(redis_url)
    await w0.start()
    await w1.start()
    try:
        a = await w0.create("a")
        b = await w1.join(a.room.id, "b")
        assert (await w1.sweep())[1] == []  # both alive: nothing to reap
        await w0.close()  # w0 stops (as if killed: its liveness key is gone)
        _, departures = await w1.sweep()
        assert [(d.peer.id, d.reason, d.new_host) for d in departures] == [
            (a.peer.id, "disconnected", b.peer.id)]
        room, _ = await w1.member(a.room.id, "b")
        assert list(room.peers) == [b.peer.id] and room.host == b.peer.id
        assert (await w1.sweep())[1] == []
    finally:
        await w1.close()
        await w0.close()


# --- a live server with two workers --------------------------------------------------------------

def _my_ports(port: int) -> set[int]:
    me = psutil.Process()
    return {c.laddr.port for c in me.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED}


async def _peer_on(srv, name: str, avoid: int | None, extra: list[Peer]) -> tuple[Peer, int]:
    """A connected peer, on a worker other than ``avoid`` (the kernel spreads connections over
    the workers; retry until one lands elsewhere)."""
    for _ in range(40):
        before = _my_ports(srv.port)
        p = Peer(srv.base, name)
        await p.connect()
        new = _my_ports(srv.port) - before
        assert len(new) == 1, new
        pid = worker_of(srv, new.pop())
        if pid != avoid:
            return p, pid
        extra.append(p)  # keep it open so the next connection gets a fresh hash
    raise AssertionError("40 connections all went to one worker")


@pytest.fixture
def two_workers(tmp_path):
    srv = start_server(tmp_path, env={"INCOGNITO_SERVER_WORKERS": "2",
                                      "INCOGNITO_ROOMS_EMPTY_GRACE_SECONDS": "0",
                                      "INCOGNITO_ROOMS_CAPACITY": "3"})
    try:
        yield srv
    finally:
        redis = [p for p in psutil.Process(srv.pid).children(recursive=True)
                 if "redis-server" in p.name()]
        srv.stop()
        assert len(redis) == 1
        _, alive = psutil.wait_procs(redis, timeout=5)
        assert not alive, "redis-server outlived up"
        assert not list(srv.state_dir.glob("redis/*.sock"))


async def test_two_peers_on_different_workers_share_a_room(two_workers):
    srv = two_workers
    procs = server_procs(srv)
    assert len(procs) == 2, procs
    spare: list[Peer] = []
    a, pid_a = await _peer_on(srv, "a", None, spare)
    b, pid_b = await _peer_on(srv, "b", pid_a, spare)
    c, pid_c = await _peer_on(srv, "c", None, spare)
    try:
        assert pid_a != pid_b
        made = await a.create(meta="meta-a")
        rid = made["room"]
        ack = await b.join(rid, meta="meta-b")
        assert ack["host"] == made["peer"]
        assert ack["peers"] == [{"peer": made["peer"], "meta": "meta-a"}]
        joined = await a.next("joined", room=rid, peer=ack["peer"])
        assert joined["meta"] == "meta-b" and joined["resumed"] is False
        # message: a room-wide broadcast, both ways across the processes
        assert await a.call("message", {"room": rid, "data": "hello-b"}) == {"ok": True}
        got = await b.next("message", room=rid, data="hello-b")
        assert got["from"] == made["peer"]
        assert await b.call("message", {"room": rid, "data": "hello-a"}) == {"ok": True}
        assert (await a.next("message", room=rid, data="hello-a"))["from"] == ack["peer"]
        # connection: addressed to one peer on the other process
        sdp = blob(200)
        assert await a.call("connection", {"room": rid, "to": ack["peer"], "data": sdp}) == \
            {"ok": True}
        assert (await b.next("connection", room=rid, data=sdp))["from"] == made["peer"]
        await b.call("connection", {"room": rid, "to": made["peer"], "data": "answer"})
        assert (await a.next("connection", room=rid, data="answer"))["from"] == ack["peer"]
        await fence(a, b, rid)
        await fence(b, a, rid)
        assert not a.seen("message", data="hello-b") and not b.seen("message", data="hello-a")
        # capacity (3) and lock are one state for both processes
        ack_c = await c.join(rid)
        await a.next("joined", room=rid, peer=ack_c["peer"])
        await b.next("joined", room=rid, peer=ack_c["peer"])
        d, _ = await _peer_on(srv, "d", None, spare)
        spare.append(d)
        assert (await d.try_join(rid))["error"]["code"] == "room_full"
        assert (await b.call("lock", {"room": rid, "locked": True}))["error"]["code"] == \
            "not_host"
        assert await c.call("leave", {"room": rid}) == {"ok": True}
        await a.next("left", room=rid, peer=ack_c["peer"], reason="left")
        await b.next("left", room=rid, peer=ack_c["peer"], reason="left")
        assert (await a.call("lock", {"room": rid, "locked": True}))["locked"] is True
        await b.next("locked", room=rid, locked=True)
        assert (await d.try_join(rid))["error"]["code"] == "room_locked"
        # the host leaves: the peer on the other process becomes host
        await a.disconnect()
        await b.next("left", room=rid, peer=made["peer"], reason="disconnected")
        assert (await b.next("host", room=rid))["peer"] == ack["peer"]
        assert (await b.call("lock", {"room": rid, "locked": False}))["locked"] is False
        # the room up printed is in redis too: its first joiner is its host
        pinned = await b.join(srv.room)
        assert pinned["host"] == pinned["peer"] and pinned["peers"] == []
    finally:
        for p in (a, b, c, *spare):
            await p.disconnect()


def media(room: str, seq: int, key: bool = False, stream: str = "v") -> dict:
    return {"room": room, "stream": stream, "seq": seq, "key": key,
            "ts": time.time() * 1000, "data": bytes([seq % 256]) * 3000}


async def test_the_onion_media_relay_crosses_workers(two_workers):
    srv = two_workers
    spare: list[Peer] = []
    a, pid_a = await _peer_on(srv, "a", None, spare)  # the sender
    b, pid_b = await _peer_on(srv, "b", pid_a, spare)  # a receiver on the other worker
    c, pid_c = await _peer_on(srv, "c", pid_b, spare)  # a receiver on the sender's worker
    try:
        assert pid_a != pid_b and pid_c == pid_a
        made = await a.create()
        rid, aid = made["room"], made["peer"]
        bid = (await b.join(rid))["peer"]
        # b needs the relay: the sender, on the other worker, is told
        need = await b.call("media/need", {"room": rid, "need": True})
        assert need == {"ok": True, "receivers": [bid], "from": {}}
        assert (await a.next("media/receivers", room=rid))["peers"] == [bid]
        # a joiner's welcome lists it too (read from redis)
        welcome = await c.join(rid)
        cid = welcome["peer"]
        assert welcome["mediaRelay"] == [bid] and welcome["mediaRelayFrom"] == {}
        # c wants only a's media; everyone sees both receivers, whichever worker said so
        need = await c.call("media/need", {"room": rid, "need": True, "from": [aid]})
        assert sorted(need["receivers"]) == sorted([bid, cid]) and need["from"] == {cid: [aid]}
        note = await b.next("media/receivers", room=rid, **{"from": {cid: [aid]}})
        assert sorted(note["peers"]) == sorted([bid, cid])
        # 12 chunks, three times the window of 4 unacknowledged: each receiver's acks let the
        # rest out, to the one across the workers as to the one beside the sender
        for i in range(12):
            ack = await a.call("media", media(rid, i, key=i == 0))
            assert ack == {"ok": True, "relayed": 2}, (i, ack)
        for r in (b, c):
            for i in range(12):
                got = await r.next("media", room=rid, seq=i, timeout=10)
                assert got["from"] == aid and got["key"] == (i == 0)
                assert got["data"] == bytes([i]) * 3000
        # b's media is wanted by nobody: c wants a's only, a receives nothing
        assert (await b.call("media", media(rid, 0, key=True)))["relayed"] == 0
        # a key request from b reaches a on the other worker
        assert await b.call("media/keyframe", {"room": rid, "to": aid, "stream": "v"}) == \
            {"ok": True}
        assert (await a.next("media/keyframe", room=rid))["from"] == bid
        # b goes away: the others are told it no longer receives
        await b.disconnect()
        note = await a.next("media/receivers", room=rid, peers=[cid])
        assert note["from"] == {cid: [aid]}
        assert (await a.call("media", media(rid, 12)))["relayed"] == 1
        await c.next("media", room=rid, seq=12)
    finally:
        for p in (a, b, c, *spare):
            await p.disconnect()


async def test_polling_is_refused_with_several_workers(two_workers):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{two_workers.base}/socket.io/?EIO=4&transport=polling") as r:
            assert r.status == 400
        async with http.get(f"{two_workers.base}/healthz") as r:
            assert r.status == 200


@pytest.mark.faults
async def test_a_killed_worker_is_restarted_and_its_peers_leave(two_workers):
    srv = two_workers
    spare: list[Peer] = []
    a, pid_a = await _peer_on(srv, "a", srv.pid, spare)  # on the child process
    b, pid_b = await _peer_on(srv, "b", pid_a, spare)  # on up's own process
    try:
        made = await a.create()
        ack = await b.join(made["room"])
        psutil.Process(pid_a).kill()
        t0 = time.monotonic()
        left = await b.next("left", timeout=30, room=made["room"], peer=made["peer"])
        assert left["reason"] == "disconnected" and time.monotonic() - t0 < 25
        assert (await b.next("host", room=made["room"]))["peer"] == ack["peer"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            kids = server_procs(srv)[1:]
            if kids and kids[0].pid != pid_a:
                break
            await asyncio.sleep(0.2)
        assert kids and kids[0].pid != pid_a, "the killed server process was not restarted"
    finally:
        for p in (a, b, *spare):
            with contextlib.suppress(Exception):  # a's process was killed
                await p.disconnect()


async def test_long_state_dir_puts_the_socket_in_a_private_temp_dir(tmp_path):
    state = tmp_path / ("s" * 120)
    state.mkdir(mode=0o700)
    sup = RedisSupervisor("redis-server", state)
    await sup.start()
    try:
        sock = sup.socket_path
        assert sock is not None and len(str(sock)) <= 100 and sock.exists()
        assert (sock.parent.stat().st_mode & 0o777) == 0o700
    finally:
        await sup.stop()
    assert not sock.parent.exists()


@pytest.mark.faults
async def test_redis_restart_reopens_the_printed_room(two_workers):
    srv = two_workers
    a = await Peer(srv.base, "a").connect()
    rid = (await a.create())["room"]
    assert await a.call("message", {"room": rid, "data": "before"}) == {"ok": True}
    redis = next(p for p in psutil.Process(srv.pid).children(recursive=True)
                 if "redis-server" in p.name())
    redis.kill()
    # the room is gone with redis: once redis is back, its member is told so (its worker
    # stops trusting what it knew of its connections' rooms: Signaling._known_member)
    deadline = time.monotonic() + 20
    ack: Any = None
    while time.monotonic() < deadline:
        ack = await a.call("message", {"room": rid, "data": "after"})
        if ack.get("error", {}).get("code") == "not_in_room":
            break
        await asyncio.sleep(0.2)
    assert ack["error"]["code"] == "not_in_room", ack
    await a.disconnect()
    deadline = time.monotonic() + 20
    ack = None
    while time.monotonic() < deadline:  # restarted, the room `up` printed opened again
        p = Peer(srv.base, "late")
        try:
            await p.connect()
            ack = await p.try_join(srv.room)
            if isinstance(ack, dict) and ack.get("ok"):
                break
        except Exception:
            pass
        finally:
            await p.disconnect()
        await asyncio.sleep(0.5)
    assert isinstance(ack, dict) and ack.get("ok"), ack
    assert "redis-server exited" in srv.output()


async def test_hundreds_of_commands_at_once_wait_for_a_connection(redis_url):
    # more at once than redis-py's default pool holds (100): they queue for the shared
    # store's bounded pool instead of failing with MaxConnectionsError
    w0, w1 = stores(redis_url, max_rooms=1000)
    rid = (await w0.create("s1")).room.id
    results = await asyncio.gather(*(w1.member(rid, "s1") for _ in range(400)),
                                   return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []


async def test_hundreds_of_creates_at_once_all_get_a_room(redis_url):
    # a storm of creates (every room of a bench's 1000 clients set up at once) used to
    # invalidate each other's transactions on the set of rooms past MAX_RETRIES
    ws = stores(redis_url, n=2, max_rooms=1000)
    results = await asyncio.gather(*(ws[i % 2].create(f"s{i}") for i in range(300)),
                                   return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert await ws[0].count() == 300


@contextlib.asynccontextmanager
async def _across(srv):
    """Peers ``a`` (host) and ``b`` in one room, held by different server processes; yields
    (a, b, room id, b's peer id)."""
    spare: list[Peer] = []
    a, pid_a = await _peer_on(srv, "a", None, spare)
    b, _ = await _peer_on(srv, "b", pid_a, spare)
    try:
        rid = (await a.create())["room"]
        yield a, b, rid, (await b.join(rid))["peer"]
    finally:
        for p in (a, b, *spare):
            await p.disconnect()


async def test_a_burst_of_messages_crosses_workers_in_order(two_workers):
    # emits to the other worker leave in batches (redis_events): none lost, none reordered
    async with _across(two_workers) as (a, b, rid, _bid):
        # no wait for acks: as fast as the socket takes them (within limits.event_burst)
        for i in range(150):
            await a.sio.emit("message", {"room": rid, "data": f"m{i:04d}"})
        await b.next("message", room=rid, data="m0149", timeout=20)
        got = [m["data"] for m in b.seen("message", room=rid)]
        assert got == [f"m{i:04d}" for i in range(150)]


async def test_a_removed_peer_s_messages_stop_at_once_across_workers(two_workers):
    # a worker relays a broadcast of a connection it saw join without reading redis again
    # (Signaling._known_member): a host's removal on the other worker must end that
    async with _across(two_workers) as (a, b, rid, bid):
        assert await b.call("message", {"room": rid, "data": "before"}) == {"ok": True}
        assert (await a.next("message", room=rid, data="before"))["from"] == bid
        assert await a.call("remove", {"room": rid, "peer": bid}) == {"ok": True}
        await b.next("removed", room=rid)
        ack = await b.call("message", {"room": rid, "data": "after"})
        assert ack["error"]["code"] == "not_in_room"  # refused, so never relayed
