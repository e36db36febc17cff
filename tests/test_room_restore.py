"""A call outlives the server process (issue 8, "kill the server mid-call"): restore tickets.

Unit tests of the tickets and of re-creating a room under its id (in-process and on a real
redis-server), then real servers killed with SIGKILL and started again on the same port and
state dir, with python-socketio clients doing what the web client does on reconnect.
"""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

from incognito_onion import room_tickets
from incognito_onion.room_tickets import RoomTickets
from incognito_onion.rooms import RESTORE_WINDOW, Registry, RoomError, claim_host
from incognito_onion.shared_rooms import SharedRooms
from incognito_onion.state import StateDirError
from tests.support.server import Peer, start_server

ROOM = "A" * 22


# --- tickets ------------------------------------------------------------------------------------

def test_a_ticket_is_bound_to_its_room_and_its_secret():
    t = RoomTickets(b"s" * 32)
    ticket = t.issue(ROOM)
    assert len(ticket) == 22 and t.valid(ROOM, ticket) and t.generation(ROOM, ticket) == 0
    later = t.issue(ROOM, 2)
    assert later.startswith("2.") and t.generation(ROOM, later) == 2
    assert t.generation(ROOM, "3." + later[2:]) is None  # the generation is in the MAC
    assert t.generation(ROOM, "0." + ticket) is None
    assert not t.valid("B" * 22, ticket)
    assert not RoomTickets(b"x" * 32).valid(ROOM, ticket)
    for bad in (None, "", 5, ticket[:-1] + ("A" if ticket[-1] != "A" else "B"), [ticket]):
        assert not t.valid(ROOM, bad)
    with pytest.raises(ValueError):
        RoomTickets(b"short")


def test_the_secret_is_kept_0600_and_survives_a_restart(tmp_path):
    first = room_tickets.load(tmp_path)
    path = tmp_path / room_tickets.SECRET_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert room_tickets.load(tmp_path).issue(ROOM) == first.issue(ROOM)
    os.chmod(path, 0o644)
    with pytest.raises(StateDirError, match="chmod 600"):
        room_tickets.load(tmp_path)
    os.chmod(path, 0o600)
    path.write_text("not hex\n")
    with pytest.raises(StateDirError, match="delete it"):
        room_tickets.load(tmp_path)


def test_the_registry_reopens_a_room_under_its_id():
    reg = Registry(capacity=3)
    back = reg.create("s1", "m1", room_id=ROOM)
    assert back.room.id == ROOM and back.room.host == back.peer.id and not back.room.locked
    with pytest.raises(RoomError) as exc:
        reg.create("s2", "m2", room_id=ROOM)
    assert exc.value.code == "room_exists"
    assert reg.join(ROOM, "s2", "m2").room.host == back.peer.id


def test_a_ticket_passes_the_lock_of_a_reopened_room_for_a_while_only():
    now = [1000.0]
    reg = Registry(capacity=6, clock=lambda: now[0])
    host = reg.create("s1", "m1", room_id=ROOM)
    reg.lock(ROOM, "s1", True)  # the host locks it again at once
    with pytest.raises(RoomError) as exc:
        reg.join(ROOM, "stranger", "m")
    assert exc.value.code == "room_locked"
    assert reg.join(ROOM, "s2", "m2", ticket=0).peer.id != host.peer.id
    now[0] += RESTORE_WINDOW + 1
    with pytest.raises(RoomError) as exc:
        reg.join(ROOM, "s3", "m3", ticket=0)
    assert exc.value.code == "room_locked"
    # a room that was never restored: a ticket does not open its lock
    plain = reg.create("s4", "m4")
    reg.lock(plain.room.id, "s4", True)
    with pytest.raises(RoomError) as exc:
        reg.join(plain.room.id, "s5", "m5", ticket=0)
    assert exc.value.code == "room_locked"


async def test_workers_racing_to_reopen_a_room_make_one(redis_url):
    ws = [SharedRooms.from_url(redis_url, node=f"w{i}", capacity=6, max_rooms=5,
                               per_connection=2, empty_grace=0.0) for i in range(3)]
    results = await asyncio.gather(*(ws[i % 3].create(f"s{i}", f"m{i}", room_id=ROOM)
                                     for i in range(6)), return_exceptions=True)
    made = [r for r in results if not isinstance(r, Exception)]
    codes = [r.code for r in results if isinstance(r, RoomError)]
    assert len(made) == 1 and codes == ["room_exists"] * 5, results
    assert made[0].room.id == ROOM and await ws[0].count() == 1
    joined = await ws[1].join(ROOM, "late", "m")
    assert joined.room.host == made[0].peer.id
    # the window rides along in redis: another worker lets a ticket through the lock
    await ws[0].lock(ROOM, made[0].peer.sid, True)
    with pytest.raises(RoomError) as exc:
        await ws[2].join(ROOM, "stranger", "m")
    assert exc.value.code == "room_locked"
    assert (await ws[2].join(ROOM, "back", "m", ticket=0)).room.locked


# --- host tickets ------------------------------------------------------------------------------

def test_a_host_ticket_is_bound_to_its_room_epoch_and_secret():
    t = RoomTickets(b"s" * 32)
    ticket = t.issue_host(ROOM, 3)
    assert ticket.startswith("3.") and t.host_epoch(ROOM, ticket) == 3
    assert t.host_epoch("B" * 22, ticket) is None
    assert RoomTickets(b"x" * 32).host_epoch(ROOM, ticket) is None
    forged = "4" + ticket[1:]  # a later epoch, same tag
    assert t.host_epoch(ROOM, forged) is None
    for bad in (None, "", 5, t.issue(ROOM), "0." + ticket[2:], ticket + "x", [ticket]):
        assert t.host_epoch(ROOM, bad) is None


def test_host_epochs_count_hand_overs_and_a_later_ticket_takes_the_role():
    reg = Registry(capacity=6, empty_grace=60)
    a = reg.create("sa", "a")
    room = a.room
    assert room.host == a.peer.id and room.host_epoch == 1
    b = reg.join(room.id, "sb", "b")
    reg.join(room.id, "sc", "c")
    reg.leave(room.id, "sa")  # hand-over to b: epoch 2
    assert room.host == b.peer.id and room.host_epoch == 2
    # an old ticket (epoch 1, a's) does not take the role from b
    d = reg.join(room.id, "sd", "d", host_claim=1)
    assert room.host == b.peer.id and not d.host_changed
    # a room opened again knows no epoch: the first ticket shown wins, a later one after it
    reg2 = Registry(capacity=6)
    first = reg2.create("s1", "guest", room_id=ROOM)
    assert first.room.host == first.peer.id and first.room.host_epoch is None
    old_host = reg2.join(ROOM, "s2", "a", ticket=0, host_claim=1)
    assert old_host.host_changed and first.room.host == old_host.peer.id
    assert first.room.host_epoch == 1
    latest = reg2.join(ROOM, "s3", "b", ticket=0, host_claim=2)
    assert latest.host_changed and first.room.host == latest.peer.id
    again = reg2.join(ROOM, "s4", "stale", ticket=0, host_claim=1)
    assert not again.host_changed and first.room.host == latest.peer.id
    # the first one back holding the ticket is host from the start, at its epoch
    reg3 = Registry(capacity=6)
    back = reg3.create("s1", "a", room_id=ROOM, host_claim=2)
    assert back.room.host == back.peer.id and back.room.host_epoch == 2
    # a room emptied and joined again: a new host, a new epoch
    reg.leave(room.id, "sb")
    reg.leave(room.id, "sc")
    reg.leave(room.id, "sd")
    assert room.host is None
    e = reg.join(room.id, "se", "e")
    assert room.host == e.peer.id and room.host_epoch == 5  # b->c, c->d, then e
    assert not claim_host(room, e.peer, None)


def test_a_removal_changes_the_tickets_unless_the_removed_one_was_already_stale():
    reg = Registry(capacity=6)
    a = reg.create("sa", "a")
    room = a.room
    reg.join(room.id, "sb", "b")
    c = reg.join(room.id, "sc", "c")
    dep = reg.remove(room.id, "sa", c.peer.id)
    assert dep.tickets_changed and room.ticket_gen == 1
    assert {p.ticket_gen for p in room.peers.values()} == {1}  # the others are told
    d = reg.join(room.id, "sd", "d")
    assert d.peer.ticket_gen == 1  # a newcomer is given the current one
    # a room opened again: the removed peer (generation 0) came back first, the host with 1
    reg2 = Registry(capacity=6)
    intruder = reg2.create("s1", "c", room_id=ROOM, ticket=0)
    host = reg2.join(ROOM, "s2", "a", ticket=1, host_claim=1)
    assert intruder.room.ticket_gen == 1 and host.host_changed
    reg2.lock(ROOM, "s2", True)
    dep = reg2.remove(ROOM, "s2", intruder.peer.id)
    assert not dep.tickets_changed and intruder.room.ticket_gen == 1  # the others' still pass
    with pytest.raises(RoomError) as exc:
        reg2.join(ROOM, "s3", "c", ticket=0)
    assert exc.value.code == "room_locked"
    assert reg2.join(ROOM, "s4", "b", ticket=1).room.locked


async def test_host_claims_in_redis(redis_url):
    ws = [SharedRooms.from_url(redis_url, node=f"w{i}", capacity=6, max_rooms=5,
                               per_connection=2, empty_grace=0.0) for i in range(2)]
    first = await ws[0].create("s1", "guest", room_id=ROOM)
    assert first.room.host_epoch is None
    back = await ws[1].join(ROOM, "s2", "host", ticket=0, host_claim=3)
    assert back.host_changed and back.room.host == back.peer.id and back.room.host_epoch == 3
    stale = await ws[0].join(ROOM, "s3", "stale", ticket=0, host_claim=2)
    assert not stale.host_changed and stale.room.host == back.peer.id
    # a removal by the host changes the tickets, and the generations ride along in redis
    dep = await ws[1].remove(ROOM, "s2", stale.peer.id)
    assert dep.tickets_changed and dep.room.ticket_gen == 1
    assert {p.ticket_gen for p in (await ws[0].member(ROOM, "s1"))[0].peers.values()} == {1}
    # the host leaves: the oldest peer left is host, one hand-over later
    dep = await ws[0].leave(ROOM, "s2")
    assert dep.new_host == first.peer.id and dep.room.host_epoch == 4


# --- a real server, killed and started again ------------------------------------------------------

async def _reconnect(srv, name: str) -> Peer:
    p = Peer(srv.base, name)
    await p.connect()
    return p


@pytest.mark.faults
async def test_a_killed_server_comes_back_and_the_room_with_it(tmp_path):
    srv = start_server(tmp_path, env={"INCOGNITO_ROOMS_EMPTY_GRACE_SECONDS": "0"})
    a, b = Peer(srv.base, "a"), Peer(srv.base, "b")
    try:
        await a.connect()
        await b.connect()
        made = await a.create(meta="meta-a")
        rid, ticket = made["room"], made["restore"]
        ack_b = await b.join(rid, meta="meta-b")
        assert ack_b["restore"] == ticket  # one ticket per room, not per peer
        await a.call("lock", {"room": rid, "locked": True})
    finally:
        await a.disconnect()
        await b.disconnect()
    srv.kill()
    srv = srv.relaunch()
    a2 = await _reconnect(srv, "a2")
    b2 = await _reconnect(srv, "b2")
    guesser = await _reconnect(srv, "guesser")
    other = start_server(tmp_path / "other")  # another server: its secret differs
    o = Peer(other.base, "o")
    try:
        # without a ticket, or with a wrong one: an unknown room, like any guess
        for payload in ({"room": rid}, {"room": rid, "restore": "x" * 22},
                        {"room": "B" * 22, "restore": ticket}):
            ack = await guesser.call("join", payload)
            assert ack["error"]["code"] == "room_not_found", ack
        await o.connect()
        ack = await o.call("join", {"room": rid, "restore": ticket})
        assert ack["error"]["code"] == "room_not_found", ack
        # what the web client sends on reconnect: the old resume token and the ticket
        ack_a = await a2.call("join", {"room": rid, "meta": "meta-a", "resume": made["resume"],
                                       "restore": ticket})
        assert ack_a["ok"] and ack_a["room"] == rid and ack_a["peers"] == [], ack_a
        assert ack_a["host"] == ack_a["peer"] != made["peer"] and not ack_a["locked"]
        relock = await a2.call("lock", {"room": rid, "locked": True})  # what the host's page does
        assert relock["ok"] and relock["locked"], relock
        ack = await guesser.call("join", {"room": rid})
        assert ack["error"]["code"] == "room_locked", ack
        ack_b2 = await b2.call("join", {"room": rid, "meta": "meta-b",
                                        "resume": ack_b["resume"], "restore": ticket})
        assert ack_b2["ok"] and ack_b2["peers"] == [{"peer": ack_a["peer"], "meta": "meta-a"}]
        joined = await a2.next("joined", room=rid)
        assert joined["peer"] == ack_b2["peer"] and joined["resumed"] is False
        # and the room works: a message and a signal cross
        await b2.call("message", {"room": rid, "data": "after the restart"})
        assert (await a2.next("message", room=rid))["data"] == "after the restart"
        a2.peer_ids[rid] = ack_a["peer"]
        await a2.call("connection", {"room": rid, "to": ack_b2["peer"], "data": "sdp"})
        assert (await b2.next("connection", room=rid))["from"] == ack_a["peer"]
        assert "room came back after a server restart" in "\n".join(srv._stderr.lines)
        assert rid not in srv.output() and ticket not in srv.output()  # never logged
    finally:
        for p in (a2, b2, guesser, o):
            await p.disconnect()
        other.stop()
        srv.stop()


async def _room_of_three(srv) -> tuple[list[Peer], list[dict]]:
    """Peers a (host, made the room), b and c in one room: the peers and their answers."""
    peers = [Peer(srv.base, n) for n in ("a", "b", "c")]
    for p in peers:
        await p.connect()
    made = await peers[0].create(meta="meta-a")
    acks = [made] + [await p.join(made["room"], meta=f"meta-{p.name}") for p in peers[1:]]
    return peers, acks


@pytest.mark.faults
async def test_the_host_back_after_a_guest_takes_the_role_back(tmp_path):
    """After a restart the first one back is host; the host of before, back later with its host
    ticket, takes the role back (and can lock the room again); a guest showing the room's
    restore ticket or a forged host ticket cannot; a host hand-over gives the heir a ticket."""
    srv = start_server(tmp_path)
    (a, b, c), (made, ack_b, ack_c) = await _room_of_three(srv)
    rid, host_ticket = made["room"], made["hostRestore"]
    try:
        assert "hostRestore" not in ack_b and "hostRestore" not in ack_c  # guests hold none
    finally:
        for p in (a, b, c):
            await p.disconnect()
    srv.kill()
    srv = srv.relaunch()
    a2, b2, c2 = [await _reconnect(srv, n) for n in ("a2", "b2", "c2")]
    try:
        ack_b2 = await b2.call("join", {"room": rid, "meta": "meta-b",
                                        "restore": made["restore"]})
        assert ack_b2["host"] == ack_b2["peer"] and "hostRestore" not in ack_b2, ack_b2
        # a guest cannot pass the restore ticket, or a forged one, off as a host ticket
        for forged in (made["restore"], "9." + host_ticket.partition(".")[2]):
            ack = await c2.call("join", {"room": rid, "meta": "meta-c",
                                         "restore": made["restore"], "hostRestore": forged})
            if ack["ok"]:
                assert ack["host"] == ack_b2["peer"], ack
                await c2.call("leave", {"room": rid})
            else:
                assert ack["error"]["code"] == "bad_request", ack
        ack_a2 = await a2.call("join", {"room": rid, "meta": "meta-a",
                                        "restore": made["restore"], "hostRestore": host_ticket})
        assert ack_a2["ok"] and ack_a2["host"] == ack_a2["peer"], ack_a2
        assert (await b2.next("host", room=rid))["peer"] == ack_a2["peer"]
        assert (await a2.call("lock", {"room": rid, "locked": True}))["locked"] is True
        assert (await b2.call("lock", {"room": rid, "locked": False}))["error"]["code"] == \
            "not_host"
        # the host leaves: the heir, and only the heir, is told a host ticket
        await a2.call("leave", {"room": rid})
        heir = await b2.next("host-restore", room=rid)
        assert srv_tickets_epoch(heir["hostRestore"]) > srv_tickets_epoch(host_ticket)
        assert not c2.seen("host-restore")
        assert host_ticket not in srv.output() and heir["hostRestore"] not in srv.output()
    finally:
        for p in (a2, b2, c2):
            await p.disconnect()
        srv.stop()


@pytest.mark.faults
async def test_a_removed_peer_cannot_use_its_ticket_through_the_lock(tmp_path):
    """The host removes c: the others get a new restore ticket (generation 1), c keeps its old
    one. After a restart c comes back first and opens the room (unlocked: anyone with the link
    may enter an unlocked room); the host comes back with its host and new restore tickets,
    takes its role back, locks the room and removes c again; c's old ticket then no longer
    passes the lock, while b's new one still does."""
    srv = start_server(tmp_path)
    (a, b, c), (made, _ack_b, ack_c) = await _room_of_three(srv)
    rid, old_ticket = made["room"], made["restore"]
    try:
        assert (await a.call("lock", {"room": rid, "locked": True}))["locked"]
        assert (await a.call("remove", {"room": rid, "peer": ack_c["peer"]}))["ok"]
        new_a = (await a.next("restore", room=rid))["restore"]
        new_b = (await b.next("restore", room=rid))["restore"]
        assert new_a == new_b != old_ticket and new_b.startswith("1.")
        await c.next("removed", room=rid)
        assert not c.seen("restore")  # the removed peer is not told
    finally:
        for p in (a, b, c):
            await p.disconnect()
    srv.kill()
    srv = srv.relaunch()
    a2, b2, c2, c3 = [await _reconnect(srv, n) for n in ("a2", "b2", "c2", "c3")]
    try:
        ack = await c2.call("join", {"room": rid, "meta": "meta-c", "restore": old_ticket})
        assert ack["ok"] and ack["host"] == ack["peer"], ack  # first back: it opens the room
        ack_a2 = await a2.call("join", {"room": rid, "meta": "meta-a", "restore": new_a,
                                        "hostRestore": made["hostRestore"]})
        assert ack_a2["host"] == ack_a2["peer"] and ack_a2["restore"] == new_a, ack_a2
        assert (await a2.call("lock", {"room": rid, "locked": True}))["locked"]
        assert (await a2.call("remove", {"room": rid, "peer": ack["peer"]}))["ok"]
        # within the restore window: c's old ticket does not pass the lock, b's new one does
        ack = await c3.call("join", {"room": rid, "meta": "meta-c", "restore": old_ticket})
        assert ack["error"]["code"] == "room_locked", ack
        ack_b2 = await b2.call("join", {"room": rid, "meta": "meta-b", "restore": new_b})
        assert ack_b2["ok"], ack_b2
    finally:
        for p in (a2, b2, c2, c3):
            await p.disconnect()
        srv.stop()


def srv_tickets_epoch(ticket: str) -> int:
    return int(ticket.partition(".")[0])


async def test_wrong_tickets_spend_the_failed_join_budget(tmp_path):
    srv = start_server(tmp_path, env={"INCOGNITO_LIMITS_FAILED_JOINS_PER_MINUTE": "3"})
    p = Peer(srv.base, "p")
    try:
        await p.connect()
        codes = []
        for i in range(5):
            ack = await p.call("join", {"room": f"{i:022d}", "restore": "y" * 22})
            codes.append(ack["error"]["code"])
        assert codes == ["room_not_found"] * 3 + ["rate_limited"] * 2, codes
    finally:
        await p.disconnect()
        srv.stop()
