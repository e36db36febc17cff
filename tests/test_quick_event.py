"""``Signaling.quick_event``: the relayed events handled without a coroutine (issue 8). Unit
tests on a real ``Signaling`` whose engine.io sockets are stand-ins recording what the fast
WebSocket loop would write; the live relay with the knob on and off is
``test_runtime.py::test_relay_is_the_same_with_each_fast_path_off``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from incognito_onion import fastpath
from incognito_onion.config import load
from incognito_onion.signaling import Signaling


class StandIn:
    """An engine.io socket as FastManager and the ack see it while fastpath._serve runs it:
    ``fast`` False makes its send_now refuse (a pong overdue), so the library's send runs."""

    def __init__(self, sid: str) -> None:
        self.sid, self.closed, self.fast = sid, False, True
        self.got: list[str] = []  # socket.io packets, by the fast path
        self.slow: list[str] = []  # ... by the library's send
        setattr(self, fastpath._SEND_NOW, self._send_now)

    def _send_now(self, pkt: Any) -> bool:
        if not self.fast:
            return False
        self.got.append(pkt.data)
        return True

    async def send(self, pkt: Any) -> None:
        self.slow.append(pkt.data)


async def _room(n: int = 4, **overrides: Any) -> tuple[Signaling, str, list[StandIn], list[str]]:
    """A Signaling with one room of ``n`` stand-in connections: (signaling, room id, sockets,
    peer ids), the host first."""
    cfg = load(path=None, env={}, overrides=overrides)
    sig = Signaling(cfg)
    socks, peers, room = [], [], ""
    for k in range(n):
        sock = StandIn(f"e{k}")
        sig.sio.eio.sockets[sock.sid] = sock
        sid = await sig.sio.manager.connect(sock.sid, "/")
        await sig._on_connect(sid, {"HTTP_HOST": "127.0.0.1"})
        reply = await (sig._on_event("create", sid, {}) if k == 0
                       else sig._on_event("join", sid, {"room": room}))
        assert reply["ok"], reply
        room = room or reply["room"]
        peers.append(reply["peer"] if "peer" in reply else reply["you"])
        socks.append(sock)
    for sock in socks:
        sock.got.clear()
    return sig, room, socks, peers


def _event(ack: int | None, name: str, payload: Any) -> str:
    return f"2{'' if ack is None else ack}{json.dumps([name, payload])}"


def _delivered(sock: StandIn) -> list[list[Any]]:
    return [json.loads(p[1:]) for p in sock.got if p.startswith("2")]


async def test_a_message_is_relayed_to_the_room_and_acked_without_a_coroutine():
    sig, room, socks, peers = await _room()
    quick = getattr(sig.sio.eio, fastpath.QUICK_EVENT_ATTR)
    assert quick(socks[1].sid, _event(7, "message", {"room": room, "data": "hi"})) is True
    assert socks[1].got == ['37[{"ok":true}]']  # the ack, to the sender only
    for sock in (socks[0], socks[2], socks[3]):
        assert _delivered(sock) == [["message", {"room": room, "from": peers[1], "data": "hi"}]]
    # no ack asked for: none sent
    assert quick(socks[1].sid, _event(None, "message", {"room": room, "data": "x"})) is True
    assert socks[1].got == ['37[{"ok":true}]']


async def test_connection_reaches_only_its_target_and_share_the_room():
    sig, room, socks, peers = await _room()
    quick = getattr(sig.sio.eio, fastpath.QUICK_EVENT_ATTR)
    assert quick(socks[0].sid, _event(1, "connection",
                                      {"room": room, "to": peers[2], "data": "sdp"})) is True
    assert _delivered(socks[2]) == [["connection", {"room": room, "from": peers[0],
                                                    "data": "sdp"}]]
    assert not socks[1].got and not socks[3].got
    assert quick(socks[3].sid, _event(2, "connection/shareScreen", {"room": room})) is True
    assert _delivered(socks[0])[-1] == ["connection/shareScreen",
                                        {"room": room, "from": peers[3], "data": None}]


@pytest.mark.parametrize("frame", [
    _event(1, "join", {"room": "x"}),  # not a relayed event: its own handler
    '21["message",{"room":',  # not JSON
    '21["message",{},{}]',  # two arguments
    '21[{"a":1},{}]',  # a name that is not a string
    '2/other,1["message",{}]',  # another namespace
])
async def test_anything_else_is_left_to_the_library_untouched(frame):
    """False and nothing sent, no token of the rate limit spent: the library's path then
    answers it, exactly as without the quick path."""
    sig, room, socks, _ = await _room()
    conn = sig.conns[sig.sio.manager.sid_from_eio_sid(socks[1].sid, "/")]
    tokens = conn.bucket.tokens
    quick = getattr(sig.sio.eio, fastpath.QUICK_EVENT_ATTR)
    assert quick(socks[1].sid, frame.replace("{room}", room)) is False
    assert not any(s.got for s in socks)
    assert conn.bucket.tokens == pytest.approx(tokens, abs=0.1)  # refilled a little, not spent


@pytest.mark.parametrize("frame", [
    _event(1, "message", {"room": "A" * 22, "data": "?"}),  # not in that room
    _event(1, "message", {"data": "?"}),  # no room
    _event(1, "connection", {"room": "{room}", "to": "B" * 16, "data": "?"}),  # no such peer
    _event(1, "message", {"room": "{room}", "data": "x" * 70_000}),  # too large
    _event(1, "message", "not an object"),
    _event(None, "message", {"room": "A" * 22, "data": "?"}),  # refused, no ack asked for
])
async def test_a_refused_relay_is_answered_as_the_library_answers_it(frame):
    """The error event and the ack the library's path sends, a token spent as there, and
    nothing relayed: the quick path answers it itself rather than have it parsed again."""
    answers = []
    for quick_on in (True, False):
        sig, room, socks, _ = await _room()
        conn = sig.conns[sig.sio.manager.sid_from_eio_sid(socks[1].sid, "/")]
        tokens = conn.bucket.tokens
        text = frame.replace("{room}", room)
        if quick_on:
            rest = getattr(sig.sio.eio, fastpath.QUICK_EVENT_ATTR)(socks[1].sid, text)
            assert rest is not True and rest is not False
            await rest
        else:
            await sig.sio._handle_eio_message(socks[1].sid, text)
        assert not any(s.got for s in (socks[0], socks[2], socks[3]))
        assert conn.bucket.tokens == pytest.approx(tokens - 1, abs=0.1)
        answers.append(socks[1].got)
    assert answers[0] == answers[1]
    assert answers[0][0].startswith('2["error",{"code":')
    assert len(answers[0]) == (1 if frame.startswith("2[") else 2)


async def test_rate_limited_and_unknown_connections_are_left_to_the_library():
    sig, room, socks, _ = await _room(**{"limits.events_per_second": 1.0,
                                         "limits.event_burst": 1})
    quick = getattr(sig.sio.eio, fastpath.QUICK_EVENT_ATTR)
    frame = _event(1, "message", {"room": room, "data": "x"})
    conn = sig.conns[sig.sio.manager.sid_from_eio_sid(socks[1].sid, "/")]
    conn.bucket.tokens = 0.0
    assert quick(socks[1].sid, frame) is False  # refused with rate_limited there
    assert quick("nobody", frame) is False  # never connected: closed there
    assert not any(s.got for s in socks)


async def test_sends_that_must_wait_come_back_as_a_coroutine_in_order():
    """A recipient whose send_now refuses (pong overdue) and a sender whose ack cannot go at
    once: the returned coroutine sends them the library's way."""
    sig, room, socks, peers = await _room()
    quick = getattr(sig.sio.eio, fastpath.QUICK_EVENT_ATTR)
    socks[2].fast = socks[1].fast = False
    rest = quick(socks[1].sid, _event(3, "message", {"room": room, "data": "w"}))
    assert rest is not True and rest is not False
    assert _delivered(socks[0]) == _delivered(socks[3]) == [
        ["message", {"room": room, "from": peers[1], "data": "w"}]]
    assert not socks[2].slow and not socks[1].slow
    await rest
    assert [json.loads(p[1:]) for p in socks[2].slow] == [
        ["message", {"room": room, "from": peers[1], "data": "w"}]]
    assert socks[1].slow == ['33[{"ok":true}]']


async def test_off_with_the_knob_or_with_shared_rooms(monkeypatch):
    monkeypatch.setenv("INCOGNITO_RUNTIME_OFF", "quickrelay")
    sig = Signaling(load(path=None, env={}))
    assert getattr(sig.sio.eio, fastpath.QUICK_EVENT_ATTR, None) is None
    monkeypatch.delenv("INCOGNITO_RUNTIME_OFF")

    class Shared:  # a room store elsewhere (redis): a member check waits
        shared = True

    sig = Signaling(load(path=None, env={}), rooms=Shared())
    assert getattr(sig.sio.eio, fastpath.QUICK_EVENT_ATTR, None) is None
