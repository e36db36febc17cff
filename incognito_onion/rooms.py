"""Room bookkeeping: who is in which room, who is host, capacity, locks, resume and expiry.

Pure logic with no I/O: the signaling layer turns its results into socket.io emits. Peers are
known to each other only by random peer ids; the connection id (``sid``) never leaves here.

The rules that concern one room (who may join, resume, capacity, lock, host hand-over, when an
empty room dies) are module functions over a :class:`Room` (:func:`admit`, :func:`depart`,
:func:`require_host`, :func:`expired`), so the in-process :class:`Registry` and the Redis-backed
store of several workers (``shared_rooms.py``) apply the very same rules.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import ids

#: seconds after a room was opened again from a restore ticket during which a join with a valid
#: ticket passes its lock (the others of the call coming back after the host re-locked it)
RESTORE_WINDOW = 120.0


class RoomError(Exception):
    """A refused room operation, with a stable ``code`` from docs/protocol.md."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Peer:
    id: str
    sid: str
    meta: str
    resume: str
    node: str = ""  # the worker process holding the connection ("" with one process)
    ticket_gen: int = 0  # the generation of the restore ticket it was last given


@dataclass
class Room:
    id: str
    capacity: int
    pinned: bool = False  # the room `up` prints: lives while the server runs
    locked: bool = False
    host: str | None = None
    peers: dict[str, Peer] = field(default_factory=dict)  # insertion order = oldest first
    empty_since: float | None = None
    # opened again from a restore ticket after a server restart: until then (server clock) a
    # join with a valid ticket passes the lock, so the host can lock it again at once
    restored_until: float | None = None
    # host hand-overs so far (room_tickets.py, host tickets); None in a room opened again from a
    # restore ticket: the server forgot it, so any valid host ticket shown wins
    host_epoch: int | None = 0
    # restore-ticket generation (room_tickets.py): goes up when the host removes someone; in a
    # room opened again, the highest generation of the tickets shown so far
    ticket_gen: int = 0

    def others(self, peer_id: str) -> list[Peer]:
        return [p for p in self.peers.values() if p.id != peer_id]


@dataclass
class Departure:
    """A peer that left a room: what the others must be told."""

    room: Room
    peer: Peer
    reason: str  # "left", "removed", "disconnected"
    new_host: str | None  # set when the host role moved
    room_closed: bool
    tickets_changed: bool = False  # a removal: the others must be told the new restore ticket
    relay_receiver: bool = False  # it received media through the onion relay (several workers)


@dataclass
class Joined:
    room: Room
    peer: Peer
    resumed: bool
    replaced_sid: str | None  # the stale connection a resume took the peer from
    host_changed: bool = False  # a host ticket made the joiner host (the others must hear it)


class Registry:
    """All rooms of one server process."""

    def __init__(
        self,
        capacity: int = 6,
        max_rooms: int = 1000,
        per_connection: int = 2,
        empty_grace: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.capacity = capacity
        self.max_rooms = max_rooms
        self.per_connection = per_connection
        self.empty_grace = empty_grace
        self.clock = clock
        self.rooms: dict[str, Room] = {}
        self._by_sid: dict[str, dict[str, str]] = {}  # sid -> {room id: peer id}
        # the empty rooms in their grace period, in the order they emptied, so in the order
        # they expire (one grace period for all): a sweep looks at the expired ones and one
        # more, not at every room (a full server of rooms in their grace made each create a
        # scan of all of them, an attacker's cheap lever on the CPU)
        self._emptied: dict[str, None] = {}

    # -- queries -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rooms)

    def peer_count(self) -> int:
        return sum(len(r.peers) for r in self.rooms.values())

    def rooms_of(self, sid: str) -> dict[str, str]:
        return dict(self._by_sid.get(sid, {}))

    def get(self, room_id: str) -> Room:
        room = self.rooms.get(room_id)
        if room is None or self._expired(room):
            if room is not None:
                self._forget(room_id)
            raise RoomError("room_not_found", "no such room (it may have ended)")
        return room

    def member(self, room_id: str, sid: str) -> tuple[Room, Peer]:
        """The room and the sender's peer in it, or ``not_in_room``."""
        peer_id = self._by_sid.get(sid, {}).get(room_id)
        room = self.rooms.get(room_id)
        if peer_id is None or room is None or peer_id not in room.peers:
            raise RoomError("not_in_room", "you are not in this room")
        return room, room.peers[peer_id]

    def target(self, room: Room, peer_id: str) -> Peer:
        return target(room, peer_id)

    # -- changes -------------------------------------------------------------------------------
    def open_pinned(self, room_id: str | None = None) -> Room:
        """Open the room ``up`` prints: it stays while the server runs, even when empty.
        ``room_id`` opens it under the id it had in an earlier run (``rooms.keep_link``), so
        the link printed then works again; an open room of that id is returned as it is."""
        self.sweep()
        if room_id is not None and room_id in self.rooms:
            return self.rooms[room_id]
        room = Room(id=room_id or self._fresh_id(), capacity=self.capacity, pinned=True)
        self.rooms[room.id] = room
        return room

    def create(self, sid: str, meta: str = "", room_id: str | None = None,
               host_claim: int | None = None, ticket: int = 0) -> Joined:
        """A new room with ``sid`` as host; ``room_id`` opens a room again under the id it had
        before the server restarted (the caller checked the restore ticket), and raises
        ``room_exists`` when that room is open (someone restored it first: join it);
        ``host_claim``: the epoch of a valid host ticket the joiner showed (see
        :func:`claim_host`); ``ticket``: the generation of the restore ticket it showed."""
        self._check_per_connection(sid)
        if room_id is not None and room_id in self.rooms and not self._expired(
                self.rooms[room_id]):
            raise RoomError("room_exists", "this room is open again; join it")
        if len(self.rooms) >= self.max_rooms:
            self.sweep()
            if len(self.rooms) >= self.max_rooms:
                raise RoomError("server_full", "this server holds as many rooms as it may")
        room = Room(id=room_id or self._fresh_id(), capacity=self.capacity)
        if room_id is not None:
            reopened(room, self.clock(), ticket)
        self._emptied.pop(room.id, None)  # an expired room of that id, replaced
        self.rooms[room.id] = room
        peer = self._add(room, sid, meta)
        claim_host(room, peer, host_claim)
        return Joined(room, peer, resumed=False, replaced_sid=None)

    def join(self, room_id: str, sid: str, meta: str = "", resume: str | None = None,
             ticket: int | None = None, host_claim: int | None = None) -> Joined:
        """``ticket``: the generation of a valid restore ticket the joiner showed (see
        :func:`admit`);
        ``host_claim``: the epoch of a valid host ticket it showed (:func:`claim_host`)."""
        room = self.get(room_id)
        if room_id in self._by_sid.get(sid, {}):
            raise RoomError("already_in_room", "you are already in this room")
        joined = admit(room, sid, meta, resume, lambda: self._check_per_connection(sid),
                       ticket=ticket, now=self.clock(), host_claim=host_claim)
        if joined.replaced_sid is not None:
            self._unlink(joined.replaced_sid, room.id)
        self._by_sid.setdefault(sid, {})[room.id] = joined.peer.id
        self._emptied.pop(room.id, None)  # not empty now
        return joined

    def leave(self, room_id: str, sid: str, reason: str = "left") -> Departure:
        room, peer = self.member(room_id, sid)
        return self._drop(room, peer, reason)

    def disconnect(self, sid: str) -> list[Departure]:
        """The connection closed: it leaves every room it was in."""
        out = []
        for room_id in list(self._by_sid.get(sid, {})):
            room, peer = self.member(room_id, sid)
            out.append(self._drop(room, peer, "disconnected"))
        self._by_sid.pop(sid, None)
        return out

    def lock(self, room_id: str, sid: str, locked: bool) -> Room:
        room, peer = self.member(room_id, sid)
        self._require_host(room, peer)
        room.locked = locked
        return room

    def remove(self, room_id: str, sid: str, target_id: str) -> Departure:
        room, peer = self.member(room_id, sid)
        self._require_host(room, peer)
        target = self.target(room, target_id)
        if target.id == peer.id:
            raise RoomError("bad_request", "the host cannot remove themselves; use leave")
        return self._drop(room, target, "removed")

    def sweep(self) -> int:
        """Delete rooms that have been empty for longer than the grace period: the first ones
        of those that emptied, up to the first still in its grace."""
        dead = 0
        while self._emptied:
            rid = next(iter(self._emptied))
            room = self.rooms.get(rid)
            if room is not None and not self._expired(room):
                break
            self._forget(rid)
            dead += room is not None
        return dead

    # -- internals -----------------------------------------------------------------------------
    def _fresh_id(self) -> str:
        while True:
            rid = ids.new_room_id()
            if rid not in self.rooms:
                return rid

    def _check_per_connection(self, sid: str) -> None:
        if len(self._by_sid.get(sid, {})) >= self.per_connection:
            raise RoomError("too_many_rooms",
                            f"one connection can be in at most {self.per_connection} rooms")

    def _add(self, room: Room, sid: str, meta: str) -> Peer:
        peer = add_peer(room, sid, meta)
        self._by_sid.setdefault(sid, {})[room.id] = peer.id
        return peer

    def _unlink(self, sid: str, room_id: str) -> None:
        rooms = self._by_sid.get(sid)
        if rooms is not None:
            rooms.pop(room_id, None)
            if not rooms:
                del self._by_sid[sid]

    def _drop(self, room: Room, peer: Peer, reason: str) -> Departure:
        dep = depart(room, peer, reason, self.clock(), self.empty_grace)
        self._unlink(peer.sid, room.id)
        if dep.room_closed:
            del self.rooms[room.id]
        elif not room.peers and not room.pinned:
            self._emptied[room.id] = None  # its grace period starts (it was not in there)
        return dep

    def _forget(self, room_id: str) -> None:
        self.rooms.pop(room_id, None)
        self._emptied.pop(room_id, None)

    def _require_host(self, room: Room, peer: Peer) -> None:
        require_host(room, peer)

    def _expired(self, room: Room) -> bool:
        return expired(room, self.clock(), self.empty_grace)


# -- the rules of one room (pure; shared by Registry and shared_rooms.SharedRooms) --------------

def add_peer(room: Room, sid: str, meta: str, node: str = "") -> Peer:
    """A new peer with fresh random ids; the first peer of a room without host becomes host."""
    peer_id = ids.new_peer_id()
    while peer_id in room.peers:
        peer_id = ids.new_peer_id()
    peer = Peer(id=peer_id, sid=sid, meta=meta, resume=ids.new_resume_token(), node=node,
                ticket_gen=room.ticket_gen)
    room.peers[peer.id] = peer
    room.empty_since = None
    if room.host is None:
        room.host = peer.id
        if room.host_epoch is not None:
            room.host_epoch += 1
    return peer


def reopened(room: Room, now: float, ticket: int) -> None:
    """``room`` is opened again from a restore ticket of generation ``ticket`` (the server
    restarted under its call): its lock lets such tickets through for RESTORE_WINDOW, and it
    knows no host epoch, and no ticket generation but the one shown."""
    room.restored_until = now + RESTORE_WINDOW
    room.host_epoch = None
    room.ticket_gen = ticket


def claim_host(room: Room, peer: Peer, epoch: int | None) -> bool:
    """``peer`` showed a valid host ticket of ``epoch``: it becomes host when that is later than
    the room's own (any epoch, in a room opened again from a restore ticket, which forgot its
    own). Returns whether the host changed."""
    if epoch is None or (room.host_epoch is not None and epoch <= room.host_epoch):
        return False
    room.host_epoch = epoch
    if room.host == peer.id:
        return False
    room.host = peer.id
    return True


def admit(room: Room, sid: str, meta: str, resume: str | None,
          check_slots: Callable[[], None], node: str = "", ticket: int | None = None,
          now: float = 0.0, host_claim: int | None = None) -> Joined:
    """:func:`_admit`, then :func:`claim_host` with ``host_claim`` (a valid host ticket's
    epoch, or None)."""
    joined = _admit(room, sid, meta, resume, check_slots, node, ticket, now)
    joined.host_changed = claim_host(room, joined.peer, host_claim)
    return joined


def _admit(room: Room, sid: str, meta: str, resume: str | None,
           check_slots: Callable[[], None], node: str, ticket: int | None,
           now: float) -> Joined:
    """Lets connection ``sid`` into ``room``: takes over the peer whose ``resume`` token it
    holds (even in a locked room), else refuses a locked or full room, else adds a new peer.
    A locked room opened again from a restore ticket less than RESTORE_WINDOW ago lets in a
    joiner with a valid ticket (``ticket``: its generation; ``now`` on the room's clock):
    someone of the call before the restart, unless a ticket of a later generation was shown
    (someone was removed after this ticket was issued: room_tickets.py). ``check_slots``
    raises ``too_many_rooms`` when the connection may not be in one room more."""
    if resume:
        stale = next((p for p in room.peers.values()
                      if hmac.compare_digest(p.resume, resume)), None)
        if stale is not None:
            check_slots()
            old_sid = stale.sid
            stale.sid = sid
            stale.node = node
            stale.ticket_gen = room.ticket_gen
            if meta:
                stale.meta = meta
            return Joined(room, stale, resumed=True, replaced_sid=old_sid)
    restored = room.restored_until is not None
    if restored and ticket is not None and ticket > room.ticket_gen:
        room.ticket_gen = ticket  # a ticket of after a removal: older ones no longer pass
    coming_back = (ticket is not None and restored and now < room.restored_until
                   and ticket >= room.ticket_gen)
    if room.locked and not coming_back:
        raise RoomError("room_locked", "the host has locked this room")
    if len(room.peers) >= room.capacity:
        raise RoomError("room_full", f"this room is full ({len(room.peers)} of "
                                     f"{room.capacity})")
    check_slots()
    return Joined(room, add_peer(room, sid, meta, node), resumed=False, replaced_sid=None)


def depart(room: Room, peer: Peer, reason: str, now: float, empty_grace: float) -> Departure:
    """``peer`` leaves ``room``: the host role moves to the oldest remaining peer; an empty room
    starts its grace period, or closes at once (``room_closed``) when there is none and it is
    not pinned. The caller forgets a closed room. A removal makes the room's restore tickets
    change (``ticket_gen``), so the removed peer's no longer gets through the lock."""
    del room.peers[peer.id]
    tickets_changed = False
    if reason == "removed" and peer.ticket_gen >= room.ticket_gen:
        # the ticket it holds is the room's: a new one for the others (a peer let in with an
        # older one, in a room opened again, holds nothing worth revoking)
        room.ticket_gen += 1
        for p in room.peers.values():
            p.ticket_gen = room.ticket_gen
        tickets_changed = True
    new_host = None
    if room.host == peer.id:
        room.host = next(iter(room.peers), None)
        new_host = room.host
        if new_host is not None and room.host_epoch is not None:
            room.host_epoch += 1
    closed = False
    if not room.peers:
        room.empty_since = now
        closed = not room.pinned and empty_grace <= 0
    return Departure(room, peer, reason, new_host, closed, tickets_changed)


def find_sid(room: Room, sid: str) -> Peer | None:
    """The peer connection ``sid`` holds in ``room``, if any."""
    return next((p for p in room.peers.values() if p.sid == sid), None)


def require_host(room: Room, peer: Peer) -> None:
    if room.host != peer.id:
        raise RoomError("not_host", "only the host can do that")


def target(room: Room, peer_id: str) -> Peer:
    peer = room.peers.get(peer_id)
    if peer is None:
        raise RoomError("peer_not_found", "no such peer in this room")
    return peer


def expired(room: Room, now: float, empty_grace: float) -> bool:
    """An empty, unpinned room whose grace period has run out."""
    return (not room.pinned and not room.peers and room.empty_since is not None
            and now - room.empty_since >= empty_grace)
