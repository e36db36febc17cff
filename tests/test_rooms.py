"""Unit tests of the pure room logic (no sockets)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incognito_onion.ids import PEER_ID_RE, RESUME_RE, ROOM_ID_RE
from incognito_onion.rooms import Registry, RoomError


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def reg(**kw):
    kw.setdefault("clock", Clock())
    return Registry(**kw)


def code(fn, *a, **kw):
    with pytest.raises(RoomError) as exc:
        fn(*a, **kw)
    return exc.value.code


def test_create_makes_host_with_random_ids():
    r = reg()
    j = r.create("s1", "meta")
    assert ROOM_ID_RE.match(j.room.id) and PEER_ID_RE.match(j.peer.id)
    assert RESUME_RE.match(j.peer.resume)
    assert j.room.host == j.peer.id
    assert j.peer.id != "s1"
    ids = {r.create(f"x{i}").room.id for i in range(200)}
    assert len(ids) == 200


def test_join_capacity_lock_unknown():
    r = reg(capacity=3)
    room = r.create("s1").room
    r.join(room.id, "s2")
    r.join(room.id, "s3")
    assert code(r.join, room.id, "s4") == "room_full"
    assert code(r.join, "A" * 22, "s4") == "room_not_found"
    assert code(r.join, room.id, "s2") == "already_in_room"
    r.leave(room.id, "s3")
    assert code(r.lock, room.id, "s2", True) == "not_host"
    r.lock(room.id, "s1", True)
    assert code(r.join, room.id, "s4") == "room_locked"
    r.lock(room.id, "s1", False)
    assert r.join(room.id, "s4").room is room


def test_host_moves_to_oldest_and_room_dies_when_empty():
    r = reg(empty_grace=0)
    room = r.create("s1").room
    p2 = r.join(room.id, "s2").peer
    p3 = r.join(room.id, "s3").peer
    dep = r.leave(room.id, "s1")
    assert dep.new_host == p2.id and room.host == p2.id and not dep.room_closed
    r.leave(room.id, "s3")
    assert p3.id not in room.peers
    dep = r.disconnect("s2")[0]
    assert dep.reason == "disconnected" and dep.room_closed
    assert code(r.get, room.id) == "room_not_found"
    assert len(r) == 0


def test_grace_period_keeps_empty_room_then_expires():
    clock = Clock()
    r = Registry(empty_grace=20, clock=clock)
    room = r.create("s1").room
    r.leave(room.id, "s1")
    clock.t += 19
    j = r.join(room.id, "s2")
    assert j.room.host == j.peer.id  # the first to come back becomes host
    r.leave(room.id, "s2")
    clock.t += 20
    assert code(r.join, room.id, "s3") == "room_not_found"
    assert len(r) == 0


def test_pinned_room_lives_empty_and_first_joiner_is_host():
    clock = Clock()
    r = Registry(empty_grace=0, clock=clock)
    room = r.open_pinned()
    clock.t += 10_000
    r.sweep()
    j = r.join(room.id, "s1")
    assert room.host == j.peer.id
    r.leave(room.id, "s1")
    clock.t += 10_000
    assert r.get(room.id) is room and room.host is None


def test_remove_needs_host_and_drops_target():
    r = reg()
    room = r.create("s1").room
    p2 = r.join(room.id, "s2").peer
    p3 = r.join(room.id, "s3").peer
    assert code(r.remove, room.id, "s2", p3.id) == "not_host"
    assert code(r.remove, room.id, "s1", "B" * 16) == "peer_not_found"
    dep = r.remove(room.id, "s1", p2.id)
    assert dep.reason == "removed" and dep.peer.sid == "s2"
    assert code(r.member, room.id, "s2") == "not_in_room"
    assert code(r.remove, room.id, "s1", room.host) == "bad_request"


def test_resume_takes_over_the_same_peer_even_when_locked():
    r = reg(capacity=2)
    room = r.create("s1").room
    p2 = r.join(room.id, "s2").peer
    r.lock(room.id, "s1", True)
    j = r.join(room.id, "s2b", resume=p2.resume)
    assert j.resumed and j.peer is p2 and j.replaced_sid == "s2" and p2.sid == "s2b"
    assert code(r.member, room.id, "s2") == "not_in_room"
    assert r.disconnect("s2") == []  # the stale socket closing is not a departure
    assert len(room.peers) == 2
    # an unknown token is just a new join (here: refused, the room is locked)
    assert code(r.join, room.id, "s9", resume="C" * 22) == "room_locked"


def test_per_connection_and_total_room_limits():
    r = reg(per_connection=2, max_rooms=3, empty_grace=0)
    r.create("s1")
    r.create("s1")
    assert code(r.create, "s1") == "too_many_rooms"
    r.create("s2")
    assert code(r.create, "s3") == "server_full"
    r.disconnect("s2")
    assert r.create("s3").room


def test_disconnect_forgets_connection_entirely():
    r = reg(empty_grace=0)
    for i in range(100):
        room = r.create(f"s{i}").room
        r.join(room.id, f"t{i}")
        r.disconnect(f"s{i}")
        r.disconnect(f"t{i}")
    assert len(r) == 0 and r._by_sid == {}


def _open_rooms_by_full_scan(r: Registry) -> set[str]:
    """The rooms a sweep must keep, by the rule itself over every room (rooms.expired)."""
    from incognito_onion.rooms import expired

    return {rid for rid, room in r.rooms.items()
            if not expired(room, r.clock(), r.empty_grace)}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["create", "join", "leave", "disconnect", "wait",
                                           "sweep", "get"]),
                          st.integers(0, 5), st.integers(0, 7)), max_size=60))
def test_sweep_frees_exactly_the_expired_rooms(steps):
    """Whatever the order of creates, joins, leaves, disconnects and time: after a sweep the
    rooms left are exactly those a scan of every room keeps (the sweep itself looks only at
    the rooms that emptied, oldest first)."""
    clock = Clock()
    r = Registry(empty_grace=10, per_connection=3, max_rooms=6, clock=clock)
    pinned = r.open_pinned().id
    made: list[str] = [pinned]
    for op, who, which in steps:
        sid = f"s{who}"
        rid = made[which % len(made)]
        try:
            if op == "create":
                made.append(r.create(sid).room.id)
            elif op == "join":
                r.join(rid, sid)
            elif op == "leave":
                r.leave(rid, sid)
            elif op == "disconnect":
                r.disconnect(sid)
            elif op == "wait":
                clock.t += which * 2
            elif op == "get":
                r.get(rid)
            else:
                keep = _open_rooms_by_full_scan(r)
                r.sweep()
                assert set(r.rooms) == keep
        except RoomError:
            pass
    keep = _open_rooms_by_full_scan(r)
    r.sweep()
    assert set(r.rooms) == keep and pinned in r.rooms
    # nothing remembered of rooms gone, nor of rooms with people in them
    assert set(r._emptied) <= {rid for rid, room in r.rooms.items() if not room.peers}


def test_a_full_server_of_rooms_in_their_grace_refuses_a_create_without_a_scan(monkeypatch):
    """max_rooms rooms, all empty in their grace: a create is refused (server_full) after a
    sweep that looks at one room, not all of them."""
    from incognito_onion import rooms as rooms_mod

    clock = Clock()
    r = Registry(empty_grace=20, max_rooms=1000, clock=clock)
    for i in range(1000):
        r.disconnect(r.create(f"s{i}").peer.sid)
    looked = []
    real = rooms_mod.expired

    def counting(room, now, grace):
        looked.append(room.id)
        return real(room, now, grace)

    monkeypatch.setattr(rooms_mod, "expired", counting)
    assert code(r.create, "late") == "server_full"
    assert len(looked) == 1
    clock.t += 21  # every grace over: one sweep frees them all
    looked.clear()
    assert r.create("late").room.id in r.rooms and len(r) == 1 and len(looked) == 1000
