"""The signaling contract through the official npm ``socket.io-client`` (the library the browser
client uses), run by node: ``tests/js/peers.mjs`` drives peers against a live server and prints
what they saw; this test asserts on it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.server import LiveServer, start_server

JS = Path(__file__).resolve().parent / "js"
PEER_RE = re.compile(r"^[A-Za-z0-9_-]{16}$")
ROOM_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")
CAPACITY = 4


def node_or_fail() -> str:
    node = shutil.which("node")
    if not node:
        pytest.fail("node is not installed (Node 20+ runs tests/js/peers.mjs)", pytrace=False)
    lib = JS / "node_modules" / "socket.io-client" / "package.json"
    if not lib.exists():
        pytest.fail(
            "tests/js/node_modules is missing: run `npm ci --prefix tests/js` first "
            "(scripts/test does it)",
            pytrace=False,
        )
    return node


def run_peers(server: LiveServer) -> dict:
    node = node_or_fail()
    proc = subprocess.Popen(
        [node, str(JS / "peers.mjs"), server.base, "--up-room", server.room],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()  # by PID, this one child only
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"peers.mjs hung for 90 s\nstdout: {out}\nstderr: {err}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, f"peers.mjs exited {proc.returncode}\n{err}\n{out}"
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"peers.mjs printed no JSON\nstdout: {out}\nstderr: {err}"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    node_or_fail()
    srv = start_server(
        tmp_path_factory.mktemp("node-server"),
        env={
            "INCOGNITO_ROOMS_CAPACITY": str(CAPACITY),
            "INCOGNITO_ROOMS_EMPTY_GRACE_SECONDS": "0",
        },
    )
    try:
        res = run_peers(srv)
    finally:
        srv.stop()
    res["_server"] = {"room": srv.room, "key": srv.key}
    return res


def scenario(results: dict, name: str) -> dict:
    s = results["scenarios"].get(name)
    assert s is not None, f"scenario {name} did not run"
    assert "exception" not in s, f"scenario {name} failed in node:\n{s['exception']}"
    return s


def test_client_library_is_the_pinned_one(results):
    pinned = json.loads((JS / "package.json").read_text())["dependencies"]["socket.io-client"]
    assert re.fullmatch(r"4\.8\.\d+", pinned), f"pin an exact 4.8.x, not {pinned!r}"
    assert results["client"]["version"] == pinned


def test_four_peers_relay(results):
    s = scenario(results, "relay")
    created = s["created"]
    room = created["room"]
    assert created["ok"] is True and ROOM_RE.match(room)
    assert created["host"] == created["peer"] and created["peers"] == []
    assert created["capacity"] == CAPACITY and created["locked"] is False
    ids = s["ids"]
    assert all(PEER_RE.match(i) for i in ids.values()) and len(set(ids.values())) == 4
    assert not set(ids.values()) & set(s["sids"]), "peer ids must not be socket ids"
    # joins: host stays A; peers listed oldest first with their meta
    order = ["A", "B", "C", "D"]
    for i, ack in enumerate(s["joins"], start=1):
        assert ack["ok"] is True, ack
        assert ack["host"] == ids["A"]
        assert ack["peers"] == [{"peer": ids[n], "meta": f"meta-{n}"} for n in order[:i]], ack
    for i, name in enumerate(order):
        expect = [{"room": room, "peer": ids[n], "meta": f"meta-{n}", "resumed": False}
                  for n in order[i + 1:]]
        assert s["joinedSeen"][name] == expect, (name, s["joinedSeen"][name])

    assert s["messageAck"] == {"ok": True}
    for name in "ACD":
        got = s["messageReceived"][name]
        assert got["room"] == room and got["from"] == ids["B"], got
    assert s["messageEcho"] == [], "the sender got its own message"

    assert s["connectionAck"] == {"ok": True}
    assert s["connectionReceived"]["from"] == ids["B"]
    assert s["connectionReceived"]["room"] == room
    assert s["connectionElsewhere"] == {"A": [], "B": [], "C": []}, "a connection leaked"

    for event in ("connection/shareScreen", "connection/unshareScreen"):
        share = s["share"][event]
        assert share["ack"] == {"ok": True}
        assert set(share["received"]) == {"A", "B", "D"}
        for got in share["received"].values():
            assert got["from"] == ids["C"] and got["room"] == room, got
        assert share["echo"] == []

    assert s["leaveAck"] == {"ok": True}
    for name in "ABC":
        assert s["leftOnLeave"][name] == {"room": room, "peer": ids["D"], "reason": "left"}
    assert s["afterLeave"]["ok"] is False
    assert s["afterLeave"]["error"]["code"] == "not_in_room"
    for name in "AB":
        assert s["leftOnDisconnect"][name] == {
            "room": room, "peer": ids["C"], "reason": "disconnected"
        }
    # C ran on long-polling only; the others ended up on websocket (A upgraded from polling)
    assert s["transports"] == {"A": "websocket", "B": "websocket", "D": "websocket"}
    # no socket id anywhere in what the peers saw
    dump = json.dumps({k: v for k, v in s.items() if k != "sids"})
    for sid in s["sids"]:
        assert sid not in dump


def test_capacity(results):
    s = scenario(results, "capacity")
    assert s["created"]["capacity"] == CAPACITY
    assert [a["ok"] for a in s["joins"]] == [True] * (CAPACITY - 1)
    assert s["overflow"]["ok"] is False
    assert s["overflow"]["error"]["code"] == "room_full"
    assert s["overflowError"] == s["overflow"]["error"], "error event and ack differ"
    assert s["afterLeave"]["ok"] is True


def test_locked_room(results):
    s = scenario(results, "locked")
    assert s["guestLock"]["error"]["code"] == "not_host"
    assert s["guestLockError"] == s["guestLock"]["error"]
    assert s["lockAck"] == {"ok": True, "locked": True}
    for who in ("host", "guest"):
        assert s["lockedEvents"][who]["locked"] is True, s["lockedEvents"]
    assert s["lateJoin"]["error"]["code"] == "room_locked"
    assert s["lateJoinError"] == s["lateJoin"]["error"]
    assert s["unlockAck"] == {"ok": True, "locked": False}
    assert s["lateJoinAfterUnlock"]["ok"] is True


def test_unknown_room(results):
    s = scenario(results, "unknownRoom")
    assert s["join"]["ok"] is False and s["join"]["error"]["code"] == "room_not_found"
    assert s["errorEvent"] == s["join"]["error"]
    assert s["badId"]["error"]["code"] == "bad_request"
    assert s["unknownEvent"]["error"] == {
        "code": "unknown_event", "message": s["unknownEvent"]["error"]["message"],
        "event": "no-such-event",
    }


def test_kicked_peer(results):
    s = scenario(results, "kicked")
    target = s["target"]
    assert s["notHost"]["error"]["code"] == "not_host"
    assert s["removeAck"] == {"ok": True}
    room = s["removed"]["room"]
    assert s["removed"] == {"room": room}
    for key in ("leftAtHost", "leftAtOther"):
        assert s[key] == {"room": room, "peer": target, "reason": "removed"}, s[key]
    assert s["targetMessage"]["error"]["code"] == "not_in_room"
    assert s["targetConnection"]["error"]["code"] == "not_in_room"
    assert [e["code"] for e in s["targetErrors"]] == ["not_in_room", "not_in_room"]
    assert s["targetGotMessage"] == []
    assert s["toTarget"]["error"]["code"] == "peer_not_found"


def test_up_room(results):
    s = scenario(results, "upRoom")
    room = results["_server"]["room"]
    assert s["first"]["ok"] is True and s["first"]["room"] == room
    assert s["first"]["host"] == s["first"]["peer"], "the first joiner of the up room is host"
    assert s["second"]["host"] == s["first"]["peer"]
    assert s["second"]["peers"] == [{"peer": s["first"]["peer"], "meta": "m1"}]
    assert s["joinedAtFirst"] == {
        "room": room, "peer": s["second"]["peer"], "meta": "m2", "resumed": False
    }
