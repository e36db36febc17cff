"""Where room state lives: in this process (:class:`LocalRooms`, one worker) or in Redis, shared
by every worker process (:class:`SharedRooms`, ``server.workers`` above 1).

Both give the signaling layer the same asynchronous interface (``create``, ``join``, ``member``,
``leave``, ``disconnect``, ``lock``, ``remove``, ``open_pinned``, ``sweep``, ``count``) and apply
the same rules, the pure functions of :mod:`rooms` (``admit``, ``depart``, ``require_host``,
``expired``); only where the state is kept differs.

Design of the shared store (several processes on one port, ``reuse_port``; the kernel hands each
new connection to any of them, so two people of one room are usually on different workers):

- **Authoritative state in Redis, one key per room.** ``room:<id>`` holds the room as a small
  JSON document (capacity, pinned, locked, host, empty-since and its peers in join order: peer
  id, connection id, resume token, worker id). Profiles (``meta``, up to
  ``limits.max_payload_bytes`` each) are kept apart in the hash ``rmeta:<id>`` so the per-event
  membership check reads only the small document.
- **Every change is one optimistic transaction** (``WATCH`` the room's key and the acting
  connection's key, read, apply the pure rule in Python, ``MULTI``/``EXEC`` the writes; on a
  conflict, read again and retry). Two workers changing one room at once are serialised by
  Redis: capacity, the lock, the host role, resume and removal can never be decided on stale
  state. No Lua, so the rules stay in one place (:mod:`rooms`) and are unit-tested without Redis.
- ``sid:<sid>`` (a hash room id → peer id) is the rooms a connection is in, for
  ``rooms.per_connection``; it is changed in the same transactions (a host removing a peer held
  by another worker clears that peer's entry too). ``rooms`` (a set) counts rooms for
  ``rooms.max_rooms``; ``empty`` (a sorted set by empty-since) lists unpinned empty rooms in their
  grace period, so the sweep finds expired rooms without scanning.
- **Workers that die.** Each worker refreshes ``node:<id>`` (a key that expires after
  :data:`NODE_TTL` seconds) and is listed in ``nodes``. A worker killed without closing its
  sockets leaves peers behind; the sweep (one worker at a time, under a short lock) finds worker
  ids whose key expired and removes their peers as ``disconnected``, announcing ``left``/``host``
  like any disconnect, within about :data:`NODE_TTL` seconds.
- Events between people travel through python-socketio's ``AsyncRedisManager`` (Redis pub/sub):
  an emit to a room or to one connection reaches it on whichever worker holds it.
- ``rrecv:<id>`` (a hash peer id -> ``{"n": worker id, "o": senders wanted or null}``) lists
  the room's onion media relay receivers, for the ``media/receivers`` note and for the workers
  whose senders must publish chunks to theirs (:mod:`relay_link`). A departure removes its
  entry in the same transaction, so a receiver never outlives its membership.

Clocks: room grace periods use wall-clock time (``time.time``), the same for every process on
the machine. Redis runs without persistence: if it restarts, open rooms are gone (people rejoin
with the link; ``up`` opens its printed room again under the same id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import ids
from .rooms import (
    Departure,
    Joined,
    Peer,
    Registry,
    Room,
    RoomError,
    add_peer,
    admit,
    claim_host,
    depart,
    expired,
    find_sid,
    reopened,
    require_host,
    target,
)
from .tasks import cancel_and_wait

log = logging.getLogger("incognito_onion.shared_rooms")

T = TypeVar("T")

PREFIX = "io:"
NODE_TTL = 10.0  # seconds a worker's liveness key lives without a refresh
HEARTBEAT = 2.0  # seconds between refreshes
MAX_RETRIES = 100  # optimistic transaction attempts before giving up (a bug or a storm)
# Connections to redis per client: commands beyond wait for a free one (redis-py's default pool
# raises MaxConnectionsError past 100 at once, which a loaded worker reached: every event of
# every connection awaits a command)
REDIS_POOL = 32
POOL_WAIT = 30.0  # seconds a command may wait for a connection before it fails


def redis_client(url: str, *, decode: bool = True, pool: int = REDIS_POOL) -> Any:
    """A ``redis.asyncio.Redis`` on a blocking pool of ``pool`` connections."""
    from redis import asyncio as aioredis

    return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
        url, max_connections=pool, timeout=POOL_WAIT, decode_responses=decode))


class LocalRooms:
    """The in-process :class:`~incognito_onion.rooms.Registry` behind the async interface."""

    shared = False

    def __init__(self, registry: Registry):
        self.registry = registry

    async def start(self) -> None:
        return None

    async def open_pinned(self, room_id: str | None = None) -> Room:
        return self.registry.open_pinned(room_id)

    async def create(self, sid: str, meta: str = "", room_id: str | None = None,
                     host_claim: int | None = None, ticket: int = 0) -> Joined:
        return self.registry.create(sid, meta, room_id, host_claim, ticket)

    async def join(self, room_id: str, sid: str, meta: str = "", resume: str | None = None,
                   ticket: int | None = None, host_claim: int | None = None) -> Joined:
        return self.registry.join(room_id, sid, meta, resume, ticket, host_claim)

    async def member(self, room_id: str, sid: str) -> tuple[Room, Peer]:
        return self.registry.member(room_id, sid)

    def target(self, room: Room, peer_id: str) -> Peer:
        return target(room, peer_id)

    async def leave(self, room_id: str, sid: str) -> Departure:
        return self.registry.leave(room_id, sid)

    async def disconnect(self, sid: str) -> list[Departure]:
        return self.registry.disconnect(sid)

    async def lock(self, room_id: str, sid: str, locked: bool) -> Room:
        return self.registry.lock(room_id, sid, locked)

    async def remove(self, room_id: str, sid: str, target_id: str) -> Departure:
        return self.registry.remove(room_id, sid, target_id)

    async def sweep(self) -> tuple[int, list[Departure]]:
        return self.registry.sweep(), []

    async def count(self) -> int:
        return len(self.registry)

    async def room(self, room_id: str) -> Room | None:
        return self.registry.rooms.get(room_id)

    async def close(self) -> None:
        return None


# -- the room document (pure) --------------------------------------------------------------------

def _member(raw: str | None, sid: str) -> tuple[Room, Peer]:
    """The stored room and the peer ``sid`` holds in it, or not_in_room."""
    room = decode_room(raw) if raw is not None else None
    peer = find_sid(room, sid) if room is not None else None
    if room is None or peer is None:
        raise RoomError("not_in_room", "you are not in this room")
    return room, peer


def _receivers(raw: dict) -> dict[str, tuple[str, frozenset[str] | None]]:
    """The relay receivers' hash as stored: peer id -> {"n": worker, "o": senders or null}."""
    out: dict[str, tuple[str, frozenset[str] | None]] = {}
    for peer_id, value in raw.items():
        d = json.loads(value)
        out[peer_id] = (d["n"], None if d["o"] is None else frozenset(d["o"]))
    return out


def encode_room(room: Room) -> str:
    """The room as stored in Redis, without the peers' profiles (kept in ``rmeta:<id>``)."""
    return json.dumps({
        "id": room.id, "capacity": room.capacity, "pinned": room.pinned,
        "locked": room.locked, "host": room.host, "empty_since": room.empty_since,
        "restored_until": room.restored_until, "host_epoch": room.host_epoch,
        "ticket_gen": room.ticket_gen,
        "peers": [[p.id, p.sid, p.resume, p.node, p.ticket_gen] for p in room.peers.values()],
    }, separators=(",", ":"))


def decode_room(raw: str | bytes, metas: dict[str, str] | None = None) -> Room:
    d = json.loads(raw)
    metas = metas or {}
    room = Room(id=d["id"], capacity=int(d["capacity"]), pinned=bool(d["pinned"]),
                locked=bool(d["locked"]), host=d["host"], empty_since=d["empty_since"],
                restored_until=d.get("restored_until"), host_epoch=d.get("host_epoch", 0),
                ticket_gen=int(d.get("ticket_gen", 0)))
    for pid, sid, resume, node, *rest in d["peers"]:
        room.peers[pid] = Peer(id=pid, sid=sid, meta=metas.get(pid, ""), resume=resume,
                               node=node, ticket_gen=int(rest[0]) if rest else 0)
    return room


def k_room(room_id: str) -> str:
    return f"{PREFIX}room:{room_id}"


def k_meta(room_id: str) -> str:
    return f"{PREFIX}rmeta:{room_id}"


def k_sid(sid: str) -> str:
    return f"{PREFIX}sid:{sid}"


def k_recv(room_id: str) -> str:
    return f"{PREFIX}rrecv:{room_id}"


def k_node(node: str) -> str:
    return f"{PREFIX}node:{node}"


K_ROOMS = PREFIX + "rooms"
K_EMPTY = PREFIX + "empty"
K_NODES = PREFIX + "nodes"
K_REAP_LOCK = PREFIX + "reap-lock"


class SharedRooms:
    """Room state in Redis, shared by every worker (see the module docstring)."""

    shared = True

    def __init__(self, redis: Any, *, node: str, capacity: int = 6, max_rooms: int = 1000,
                 per_connection: int = 2, empty_grace: float = 0.0,
                 clock: Callable[[], float] = time.time, beat_redis: Any = None):
        self.r = redis  # a redis.asyncio.Redis with decode_responses=True
        # the heartbeat's own connection: a liveness key that cannot be refreshed for
        # NODE_TTL seconds gets this worker's people removed by the others, so it must not
        # queue behind a busy worker's room commands
        self.beat_r = beat_redis if beat_redis is not None else redis
        # called when redis turns out to have forgotten this worker (it restarted, or the
        # others took this worker for dead and removed its people)
        self.on_forgotten: Callable[[], None] | None = None
        self._announced = False
        self.node = node
        self.capacity = capacity
        self.max_rooms = max_rooms
        self.per_connection = per_connection
        self.empty_grace = empty_grace
        self.clock = clock
        self._beat: asyncio.Task | None = None

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> SharedRooms:
        return cls(redis_client(url), beat_redis=redis_client(url, pool=1), **kw)

    # -- liveness ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Announce this worker and keep its liveness key fresh."""
        await self._heartbeat()
        self._beat = asyncio.create_task(self._beat_loop())

    async def _heartbeat(self) -> None:
        async with self.beat_r.pipeline(transaction=True) as p:
            p.set(k_node(self.node), "1", px=int(NODE_TTL * 1000))
            p.sadd(K_NODES, self.node)
            _, added = await p.execute()
        if added and self._announced and self.on_forgotten is not None:
            log.warning("redis had forgotten this worker (restarted, or took it for dead)")
            self.on_forgotten()
        self._announced = True

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self._heartbeat()
            except Exception as exc:  # redis restarting: try again at the next beat
                log.warning("cannot refresh this worker's liveness in redis (%s)",
                            type(exc).__name__)

    async def close(self, forget: bool = True) -> None:
        """Stop the heartbeat; ``forget`` drops the liveness key so the others reap this
        worker's peers at their next sweep instead of after :data:`NODE_TTL`."""
        await cancel_and_wait(self._beat)
        self._beat = None
        if forget:
            with contextlib.suppress(Exception):
                await self.r.delete(k_node(self.node))

    # -- the transaction helper --------------------------------------------------------------------
    async def _txn(self, watch: list[str],
                   body: Callable[[Any], Awaitable[tuple[T, Callable[[Any], None]]]],
                   replies: list[Any] | None = None) -> T:
        """``WATCH`` ``watch``, run ``body(pipe)`` (it reads through ``pipe`` and returns the
        result and a function queuing the writes), then ``MULTI``/``EXEC``; retried when a
        watched key changed meanwhile. A :class:`RoomError` from ``body`` writes nothing.
        ``replies``: filled with what the queued commands returned."""
        from redis.exceptions import WatchError

        async with self.r.pipeline(transaction=True) as pipe:
            for _ in range(MAX_RETRIES):
                try:
                    await pipe.watch(*watch)
                    result, writes = await body(pipe)
                    pipe.multi()
                    writes(pipe)
                    out = await pipe.execute()
                    if replies is not None:
                        replies[:] = out
                    return result
                except WatchError:
                    await pipe.reset()
                    continue
        raise RuntimeError("room transaction kept conflicting")

    async def _load(self, pipe: Any, room_id: str) -> Room | None:
        raw = await pipe.get(k_room(room_id))
        return None if raw is None else decode_room(raw)

    async def _metas(self, room: Room) -> Room:
        metas = await self.r.hgetall(k_meta(room.id))
        for p in room.peers.values():
            p.meta = metas.get(p.id, p.meta)
        return room

    # -- queries -----------------------------------------------------------------------------------
    async def count(self) -> int:
        return int(await self.r.scard(K_ROOMS))

    async def member(self, room_id: str, sid: str) -> tuple[Room, Peer]:
        return _member(await self.r.get(k_room(room_id)), sid)

    def target(self, room: Room, peer_id: str) -> Peer:
        return target(room, peer_id)

    async def room(self, room_id: str) -> Room | None:
        """The room as it is now (without profiles), or None."""
        raw = await self.r.get(k_room(room_id))
        return None if raw is None else decode_room(raw)

    # -- onion media relay receivers ---------------------------------------------------------------
    async def relay_receivers(self, room_id: str) -> dict[str, tuple[str, frozenset[str] | None]]:
        """The room's relay receivers: peer id -> (its worker, the senders it wants or None
        for all)."""
        return _receivers(await self.r.hgetall(k_recv(room_id)))

    async def member_and_receivers(self, room_id: str, sid: str) -> tuple[
            Room, Peer, dict[str, tuple[str, frozenset[str] | None]]]:
        """:meth:`member` and :meth:`relay_receivers` in one round trip to redis: every media
        chunk a sender relays needs both (not a transaction: a receiver that joins or leaves
        in between is a chunk early or late either way)."""
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.get(k_room(room_id))
            pipe.hgetall(k_recv(room_id))
            raw, recv = await pipe.execute()
        return *_member(raw, sid), _receivers(recv)

    async def set_receiver(self, room_id: str, sid: str, only: frozenset[str] | None) -> None:
        """Makes the peer ``sid`` holds in ``room_id`` a relay receiver on this worker (of
        ``only`` those senders, or all), if it is still there."""
        async def body(pipe: Any):
            room = await self._load(pipe, room_id)
            peer = find_sid(room, sid) if room is not None else None
            if room is None or peer is None:
                raise RoomError("not_in_room", "you are not in this room")
            entry = json.dumps({"n": self.node, "o": None if only is None else sorted(only)})
            return None, lambda p: p.hset(k_recv(room_id), peer.id, entry)

        await self._txn([k_room(room_id)], body)

    async def drop_receiver(self, room_id: str, peer_id: str) -> None:
        await self.r.hdel(k_recv(room_id), peer_id)

    # -- changes -----------------------------------------------------------------------------------
    async def open_pinned(self, room_id: str | None = None) -> Room:
        """The room ``up`` prints (lives while the server runs, even empty); ``room_id`` opens
        it again under the same id (after redis restarted, or ``rooms.keep_link``)."""
        room = Room(id=room_id or ids.new_room_id(), capacity=self.capacity, pinned=True)

        async def body(pipe: Any):
            existing = await self._load(pipe, room.id)
            if existing is not None:
                return existing, lambda p: None

            def writes(p: Any) -> None:
                p.set(k_room(room.id), encode_room(room))
                p.sadd(K_ROOMS, room.id)
            return room, writes

        return await self._txn([k_room(room.id)], body)

    async def create(self, sid: str, meta: str = "", room_id: str | None = None,
                     host_claim: int | None = None, ticket: int = 0) -> Joined:
        """A new room with ``sid`` as host; ``room_id``: opened again under its old id (see
        ``Registry.create``), ``room_exists`` when it is open; ``host_claim``: see
        ``rooms.claim_host``."""
        for attempt in range(2):
            try:
                return await self._create(sid, meta, room_id, host_claim, ticket)
            except RoomError as exc:
                if exc.code != "server_full" or attempt:
                    raise
                await self.sweep()
        raise AssertionError("unreachable")

    async def _create(self, sid: str, meta: str, room_id: str | None = None,
                      host_claim: int | None = None, ticket: int = 0) -> Joined:
        """The set of rooms is not watched (every create and close changes it: hundreds of
        creates at once kept invalidating each other past MAX_RETRIES); ``rooms.max_rooms``
        is kept by the count each create's own transaction reads right after adding its room,
        in the order they commit: one that finds more than the limit takes its room back."""
        room = Room(id=room_id or ids.new_room_id(), capacity=self.capacity)

        async def body(pipe: Any):
            if await pipe.hlen(k_sid(sid)) >= self.per_connection:
                raise RoomError("too_many_rooms",
                                f"one connection can be in at most {self.per_connection} rooms")
            if await pipe.scard(K_ROOMS) >= self.max_rooms:
                raise RoomError("server_full", "this server holds as many rooms as it may")
            if await pipe.exists(k_room(room.id)):
                existing = await self._load(pipe, room.id)
                if room_id is not None and existing is not None and not expired(
                        existing, self.clock(), self.empty_grace):
                    raise RoomError("room_exists", "this room is open again; join it")
                if room_id is None:  # 128 random bits: never, but be exact
                    room.id = ids.new_room_id()
                    raise _Retry
            room.peers.clear()
            room.host = None
            room.host_epoch = 0
            room.ticket_gen = 0
            if room_id is not None:
                reopened(room, self.clock(), ticket)
            peer = add_peer(room, sid, meta, self.node)
            claim_host(room, peer, host_claim)

            def writes(p: Any) -> None:
                if room_id is not None:  # an expired room of that id leaves no profiles
                    p.delete(k_meta(room.id))
                p.set(k_room(room.id), encode_room(room))
                p.sadd(K_ROOMS, room.id)
                p.hset(k_meta(room.id), peer.id, meta)
                p.hset(k_sid(sid), room.id, peer.id)
                p.scard(K_ROOMS)  # the count with it, as this create commits
            return Joined(room, peer, resumed=False, replaced_sid=None), writes

        replies: list[Any] = []
        while True:
            try:
                joined = await self._txn([k_sid(sid), k_room(room.id)], body, replies)
                break
            except _Retry:
                continue
        if replies[-1] > self.max_rooms:  # others got in first: take it back
            async with self.r.pipeline(transaction=True) as p:
                p.delete(k_room(room.id), k_meta(room.id), k_recv(room.id))
                p.srem(K_ROOMS, room.id)
                p.zrem(K_EMPTY, room.id)
                p.hdel(k_sid(sid), room.id)
                await p.execute()
            raise RoomError("server_full", "this server holds as many rooms as it may")
        return joined

    async def join(self, room_id: str, sid: str, meta: str = "", resume: str | None = None,
                   ticket: int | None = None, host_claim: int | None = None) -> Joined:
        async def body(pipe: Any):
            room = await self._load(pipe, room_id)
            if room is None or expired(room, self.clock(), self.empty_grace):
                raise RoomError("room_not_found", "no such room (it may have ended)")
            if find_sid(room, sid) is not None or await pipe.hexists(k_sid(sid), room_id):
                raise RoomError("already_in_room", "you are already in this room")
            held = await pipe.hlen(k_sid(sid))

            def check_slots() -> None:
                if held >= self.per_connection:
                    raise RoomError("too_many_rooms", f"one connection can be in at most "
                                                      f"{self.per_connection} rooms")

            joined = admit(room, sid, meta, resume, check_slots, self.node, ticket=ticket,
                           now=self.clock(), host_claim=host_claim)

            def writes(p: Any) -> None:
                p.set(k_room(room.id), encode_room(room))
                p.zrem(K_EMPTY, room.id)
                p.hset(k_sid(sid), room.id, joined.peer.id)
                if joined.replaced_sid is not None:
                    p.hdel(k_sid(joined.replaced_sid), room.id)
                if meta or not joined.resumed:
                    p.hset(k_meta(room.id), joined.peer.id, meta)
            return joined, writes

        joined = await self._txn([k_room(room_id), k_sid(sid)], body)
        await self._metas(joined.room)
        return joined

    async def _depart(self, room_id: str, sid: str, reason: str,
                      choose: Callable[[Room, Peer], Peer]) -> Departure:
        """One peer leaves ``room_id``: ``choose(room, actor)`` names it (``actor`` is the peer
        ``sid`` holds there) or raises."""
        async def body(pipe: Any):
            room = await self._load(pipe, room_id)
            actor = find_sid(room, sid) if room is not None else None
            if room is None or actor is None:
                raise RoomError("not_in_room", "you are not in this room")
            leaving = choose(room, actor)
            return await self._departure_of(pipe, room, leaving, reason)

        return await self._txn([k_room(room_id)], body)

    async def _departure_of(self, pipe: Any, room: Room, leaving: Peer, reason: str
                            ) -> tuple[Departure, Callable[[Any], None]]:
        """:meth:`_departure`, and whether the one leaving was a relay receiver (read through
        ``pipe`` before the writes)."""
        was_receiver = bool(await pipe.hexists(k_recv(room.id), leaving.id))
        dep, writes = self._departure(room, leaving, reason)
        dep.relay_receiver = was_receiver
        return dep, writes

    def _departure(self, room: Room, leaving: Peer, reason: str
                   ) -> tuple[Departure, Callable[[Any], None]]:
        now = self.clock()
        dep = depart(room, leaving, reason, now, self.empty_grace)

        def writes(p: Any) -> None:
            p.hdel(k_sid(leaving.sid), room.id)
            p.hdel(k_recv(room.id), leaving.id)
            if dep.room_closed:
                p.delete(k_room(room.id), k_meta(room.id), k_recv(room.id))
                p.srem(K_ROOMS, room.id)
                p.zrem(K_EMPTY, room.id)
                return
            p.set(k_room(room.id), encode_room(room))
            p.hdel(k_meta(room.id), leaving.id)
            if not room.peers and not room.pinned:
                p.zadd(K_EMPTY, {room.id: now})
        return dep, writes

    async def leave(self, room_id: str, sid: str, reason: str = "left") -> Departure:
        return await self._depart(room_id, sid, reason, lambda room, actor: actor)

    async def remove(self, room_id: str, sid: str, target_id: str) -> Departure:
        def choose(room: Room, actor: Peer) -> Peer:
            require_host(room, actor)
            leaving = target(room, target_id)
            if leaving.id == actor.id:
                raise RoomError("bad_request", "the host cannot remove themselves; use leave")
            return leaving

        return await self._depart(room_id, sid, "removed", choose)

    async def disconnect(self, sid: str) -> list[Departure]:
        """The connection closed: it leaves every room it was in."""
        out = []
        for room_id in list(await self.r.hkeys(k_sid(sid))):
            with contextlib.suppress(RoomError):  # taken over by a resume, or removed
                out.append(await self.leave(room_id, sid, "disconnected"))
        await self.r.delete(k_sid(sid))
        return out

    async def lock(self, room_id: str, sid: str, locked: bool) -> Room:
        async def body(pipe: Any):
            room = await self._load(pipe, room_id)
            actor = find_sid(room, sid) if room is not None else None
            if room is None or actor is None:
                raise RoomError("not_in_room", "you are not in this room")
            require_host(room, actor)
            room.locked = locked
            return room, lambda p: p.set(k_room(room.id), encode_room(room))

        return await self._txn([k_room(room_id)], body)

    # -- upkeep ------------------------------------------------------------------------------------
    async def sweep(self) -> tuple[int, list[Departure]]:
        """Deletes rooms whose grace period ran out, and removes the peers of workers that died
        (as ``disconnected``; the caller announces the departures). Returns (rooms deleted,
        departures)."""
        now = self.clock()
        deleted = 0
        for room_id in await self.r.zrangebyscore(K_EMPTY, "-inf", now - self.empty_grace):
            if await self._expire(room_id, now):
                deleted += 1
        return deleted, await self._reap_dead_nodes()

    async def _expire(self, room_id: str, now: float) -> bool:
        async def body(pipe: Any):
            room = await self._load(pipe, room_id)
            gone = room is None or expired(room, now, self.empty_grace)
            if room is not None and not gone:
                return False, lambda p: p.zrem(K_EMPTY, room_id) if room.peers else None

            def writes(p: Any) -> None:
                p.delete(k_room(room_id), k_meta(room_id), k_recv(room_id))
                p.srem(K_ROOMS, room_id)
                p.zrem(K_EMPTY, room_id)
            return room is not None, writes

        return await self._txn([k_room(room_id)], body)

    async def _reap_dead_nodes(self) -> list[Departure]:
        nodes = await self.r.smembers(K_NODES)
        dead = []
        for node in nodes:
            if node != self.node and not await self.r.exists(k_node(node)):
                dead.append(node)
        if not dead:
            return []
        # one worker reaps at a time (the others would find nothing left, but need not look)
        if not await self.r.set(K_REAP_LOCK, self.node, nx=True, px=int(NODE_TTL * 1000)):
            return []
        out: list[Departure] = []
        try:
            dead_set = set(dead)
            for room_id in await self.r.smembers(K_ROOMS):
                out += await self._reap_room(room_id, dead_set)
            await self.r.srem(K_NODES, *dead)
        finally:
            await self.r.delete(K_REAP_LOCK)
        if out:
            log.info("removed %d peers of %d stopped workers", len(out), len(dead))
        return out

    async def _reap_room(self, room_id: str, dead: set[str]) -> list[Departure]:
        out: list[Departure] = []
        while True:
            async def body(pipe: Any):
                room = await self._load(pipe, room_id)
                ghost = next((p for p in room.peers.values() if p.node in dead),
                             None) if room is not None else None
                if room is None or ghost is None:
                    return None, lambda p: None
                return await self._departure_of(pipe, room, ghost, "disconnected")

            dep = await self._txn([k_room(room_id)], body)
            if dep is None:
                return out
            out.append(dep)


class _Retry(Exception):
    """Internal: start a transaction body again with fresh inputs."""
