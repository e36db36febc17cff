"""incognito_onion.runtime (event loop, JSON codec, GC tuning) and incognito_onion.fastpath
(emits without a task per recipient): the same behaviour as the stock libraries, faster."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import math
import os
import sys
from collections.abc import AsyncIterator

import pytest
import socketio
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from incognito_onion import runtime
from incognito_onion.fastpath import FastManager, fast_manager

OFF = runtime.OFF_ENV

# -- switches ------------------------------------------------------------------------------------


def test_knobs_are_on_unless_turned_off():
    assert runtime.disabled({}) == frozenset()
    assert runtime.disabled({OFF: "uvloop, ORJSON ,nonsense"}) == {"uvloop", "orjson"}
    assert runtime.disabled({OFF: "all"}) == runtime.KNOBS
    assert runtime.enabled("gc", {OFF: "uvloop"})
    assert not runtime.enabled("gc", {OFF: "gc"})
    with pytest.raises(ValueError):
        runtime.enabled("turbo", {})


# -- event loop ----------------------------------------------------------------------------------


def test_run_uses_uvloop_when_installed_and_asyncio_when_off():
    pytest.importorskip("uvloop")

    async def which() -> str:
        await asyncio.sleep(0)
        return runtime.loop_name()

    assert runtime.run(which(), env={}) == "uvloop"
    assert runtime.run(which(), env={OFF: "uvloop"}) == "asyncio"
    assert runtime.loop_factory({OFF: "all"}) is None


def test_run_leaves_the_default_policy_alone():
    before = type(asyncio.get_event_loop_policy())

    async def nothing() -> int:
        return 7

    assert runtime.run(nothing(), env={}) == 7
    assert type(asyncio.get_event_loop_policy()) is before


def test_run_propagates_exceptions():
    async def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        runtime.run(boom(), env={})


# -- JSON ----------------------------------------------------------------------------------------


def codecs():
    pytest.importorskip("orjson")
    return runtime.json_module({}), runtime.json_module({OFF: "orjson"})


def stdlib_loads(text):
    """What python-engineio's json module does (engineio.json.loads)."""
    import engineio.json

    return engineio.json.loads(text)


def same(a, b) -> bool:
    """Equal, NaN included, and of the same types (1 vs 1.0 vs True)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def test_codec_names_and_fallback_when_off():
    fast, std = codecs()
    assert fast.name == "orjson"
    assert std.name == "json"


@pytest.mark.parametrize("text", [
    '["message",{"room":"AAAAAAAAAAAAAAAAAAAAAA","data":"xyz"}]',
    '{"a":"\\u00e9\\ud83d\\ude00","b":[1,2.5,null,true,false]}',
    '"\\ud800"',  # a lone surrogate escape: the stdlib takes it
    "[NaN, Infinity, -Infinity]",  # not JSON, but the stdlib takes it
    "[18446744073709551615, -9223372036854775808, 9223372036854775807]",
    "[1e308, 1e-320, 0.1, -0.0]",
])
def test_loads_matches_the_stdlib(text):
    fast, std = codecs()
    want = stdlib_loads(text)
    assert same(fast.loads(text), want)
    assert same(std.loads(text), want)
    assert same(fast.loads(text.encode("utf-8")), want)


@pytest.mark.parametrize("text", ["[12345678901234567890123]", "[1" + "0" * 99 + "]"])
def test_loads_gives_integers_past_64_bits_as_floats(text):
    """The documented difference: the stdlib gives an int; the protocol takes none that big
    (``seq`` must be an int up to 2**53)."""
    fast, _std = codecs()
    assert fast.loads(text) == [float(stdlib_loads(text)[0])]


def test_loads_takes_long_integers_as_floats_and_refuses_infinite_ones():
    fast, _std = codecs()
    assert fast.loads("[1" + "0" * 200 + "]") == [1e200]  # the stdlib: over 100 digits
    with pytest.raises(ValueError):
        fast.loads("[1" + "0" * 400 + "]")  # past a double: refused like the stdlib does


@pytest.mark.parametrize("text", [
    "", "[", "[1,]", "{'a':1}", '{"a":1', "nul", "[1e400]x",
    '"\\x"', "\x00",
])
def test_loads_refuses_what_the_stdlib_refuses(text):
    fast, _std = codecs()
    with pytest.raises(ValueError):
        stdlib_loads(text)
    with pytest.raises(ValueError):
        fast.loads(text)


@pytest.mark.parametrize("value", [
    {"room": "r", "from": "p", "data": "x" * 300},
    ["message", {"a": [1, 2.5, None, True, False, "é", "\U0001f600"]}],
    "\ud800",  # orjson refuses lone surrogates: the stdlib writes \ud800
    [2**70, -(2**70)],  # past 64 bits
    {1: "int key"},
    [],
    {},
])
def test_dumps_is_the_same_json(value):
    fast, std = codecs()
    out = fast.dumps(value, separators=(",", ":"))
    assert isinstance(out, str)
    assert same(json.loads(out), json.loads(json.dumps(value, separators=(",", ":"))))
    assert std.dumps(value, separators=(",", ":")) == json.dumps(value, separators=(",", ":"))
    assert " " not in fast.dumps({"a": [1, 2]})  # compact, as the libraries ask


def test_dumps_writes_non_finite_floats_as_null():
    """The one difference: the stdlib writes NaN/Infinity, which is not JSON (a browser's
    JSON.parse throws on it); orjson writes null. The server never sends one (``ts`` is
    checked finite; everything else it sends is strings, ids, bools and counts)."""
    fast, _std = codecs()
    assert fast.dumps([float("nan"), float("inf"), -float("inf"), 1.5]) == "[null,null,null,1.5]"


def test_dumps_refuses_what_the_stdlib_refuses():
    fast, _std = codecs()
    for bad in (b"bytes", {1, 2}, object()):
        with pytest.raises(TypeError):
            fast.dumps(bad)


def test_dumps_plain_is_orjson_alone_or_none():
    """What plain_packet relies on: orjson's compact JSON, None for bytes anywhere or for what
    only the stdlib writes (an integer past 64 bits), never an exception."""
    codec = runtime.json_module()
    if getattr(codec, "name", "") != "orjson":
        pytest.skip("orjson is not installed")
    out = codec.dumps_plain(["ev", {"a": 1, "b": [True, None]}])
    assert out == '["ev",{"a":1,"b":[true,null]}]'
    assert codec.dumps_plain(["ev", {"a": [b"\x00"]}]) is None
    assert codec.dumps_plain([2**70]) is None


def test_dumps_with_other_arguments_is_the_stdlib():
    fast, _std = codecs()
    assert fast.dumps({"b": 1, "a": 2}, sort_keys=True, indent=1) == json.dumps(
        {"b": 1, "a": 2}, sort_keys=True, indent=1, separators=(",", ":"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_round_trip_matches_the_stdlib(value):
    fast, _std = codecs()
    text = fast.dumps(value, separators=(",", ":"))
    assert same(fast.loads(text), stdlib_loads(json.dumps(value)))


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('[]{}",:0123456789.eE-+ntrufalsNI\\u\ud800 ')),
               max_size=40))
def test_any_text_loads_like_the_stdlib(text):
    fast, _std = codecs()
    try:
        want = stdlib_loads(text)
    except (ValueError, RecursionError):
        with pytest.raises(ValueError):
            fast.loads(text)
        return
    got = fast.loads(text)
    assert same(got, want) or (isinstance(want, int) and abs(want) >= 2**63
                                and got == float(want))


def test_socketio_packets_encode_the_same_with_the_codec():
    fast, _std = codecs()
    from socketio import packet

    class FastPacket(packet.Packet):
        json = fast

    data = ["message", {"room": "AAAAAAAAAAAAAAAAAAAAAA", "from": "BBBBBBBBBBBBBBBB",
                        "data": "xyz-_" * 50}]
    want = packet.Packet(packet.EVENT, namespace="/", data=data, id=7).encode()
    assert FastPacket(packet.EVENT, namespace="/", data=data, id=7).encode() == want
    assert FastPacket(encoded_packet=want).data == data


# -- garbage collector ---------------------------------------------------------------------------


def test_tune_gc_freezes_and_raises_the_young_threshold():
    before = gc.get_threshold()
    try:
        assert runtime.tune_gc({OFF: "gc"}) is False
        assert gc.get_threshold() == before
        assert runtime.tune_gc({}) is True
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == runtime.GC_THRESHOLDS
        # cycles made afterwards are still collected
        a: list = []
        a.append(a)
        del a
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


# -- fastpath: emits without a task per recipient ------------------------------------------------


class _FakeServer:
    """What a client manager uses of its server."""

    packet_class = socketio.packet.Packet

    def __init__(self, closed: set[str] = frozenset(), live: set[str] = frozenset()):
        """``live``: engine.io sids with an open socket object in ``eio.sockets`` (FastManager
        sends straight to it); the others only through ``_send_eio_packet``."""
        self.sent: list[tuple[str, str]] = []
        self.closed = closed
        import logging

        self.logger = logging.getLogger("test_runtime")
        server = self

        class _Sock:
            closed = False

            def __init__(self, eio_sid: str):
                self.eio_sid = eio_sid

            async def send(self, pkt):
                server.sent.append((self.eio_sid, pkt.encode()))

        class _Eio:
            n = 0

            def __init__(self):
                self.sockets = {e: _Sock(e) for e in live}

            def generate_id(self):
                _Eio.n += 1
                return f"sid{_Eio.n}"

        self.eio = _Eio()

    async def _send_eio_packet(self, eio_sid, pkt):
        if eio_sid in self.closed:
            from engineio.exceptions import SocketIsClosedError

            raise SocketIsClosedError()
        if eio_sid == "broken":
            raise RuntimeError("boom")
        self.sent.append((eio_sid, pkt.encode()))

    async def _send_packet(self, eio_sid, pkt):
        self.sent.append((eio_sid, "4" + pkt.encode()))


async def _manager(cls, server, eio_sids):
    m = cls()
    m.set_server(server)
    m.initialize()
    sids = {}
    for e in eio_sids:
        sid = await m.pre_connect(e, "/")
        await m.connect(sid, "/")
        await m.enter_room(sid, "/", "room")
        sids[e] = sid
    return m, sids


@pytest.mark.parametrize("kwargs", [
    {"room": "room"},
    {"to": "room"},
    {"room": None},  # everyone in the namespace
    {"room": "room", "data": ("a", 2)},  # a tuple: several arguments
    {"room": "room", "data": None},
    {"room": "room", "data": {"chunk": b"\x00\xff", "n": [1, b"x"]}},  # a binary event
    {"room": "nobody"},
    {"room": ["room", "other"]},
])
@pytest.mark.parametrize("live", [frozenset(), frozenset({"e1", "e3", "e4"})])
async def test_fast_emit_sends_what_the_library_sends(kwargs, live):
    kwargs = dict(kwargs)
    data = kwargs.pop("data", {"x": 1, "y": "é"})
    eios = ["e1", "e2", "e3", "e4"]
    results = []
    for cls in (socketio.AsyncManager, FastManager):
        server = _FakeServer(live=live if cls is FastManager else frozenset())
        m, sids = await _manager(cls, server, eios)
        await m.emit("message", data, "/", skip_sid=sids["e2"], **kwargs)
        await m.emit("joined", data, "/", skip_sid=[sids["e1"], sids["e3"]], **kwargs)
        await m.emit("single", data, "/", to=sids["e4"])
        await asyncio.sleep(0)
        results.append(sorted(server.sent, key=lambda s: s[0]))  # per recipient, in order
    assert results[0] == results[1]


async def test_fast_emit_goes_on_past_a_closed_or_broken_recipient():
    server = _FakeServer(closed={"e2"})
    m, sids = await _manager(FastManager, server, ["e1", "e2", "broken", "e4"])
    await m.emit("message", {"x": 1}, "/", room="room")
    assert sorted(e for e, _ in server.sent) == ["e1", "e4"]


async def test_fast_emit_with_callback_is_the_library_s():
    server = _FakeServer()
    m, sids = await _manager(FastManager, server, ["e1", "e2"])
    await m.emit("message", {"x": 1}, "/", to=sids["e1"], callback=lambda *a: None)
    assert len(server.sent) == 1 and server.sent[0][0] == "e1"
    assert m.callbacks[sids["e1"]]  # an ack id was registered


def test_fast_manager_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(OFF, "fastemit")
    assert fast_manager() is None
    monkeypatch.setenv(OFF, "")
    assert isinstance(fast_manager(), FastManager)


def relay_handlers(sio: socketio.AsyncServer, tag_sender: bool = False) -> None:
    """``join`` (enter a room) and ``message`` (relay to the room but the sender; with
    ``tag_sender`` the payload gets the sender's sid as ``from``), both acked ``{"ok": True}``."""

    @sio.on("join")
    async def join(sid, room):
        await sio.enter_room(sid, room)
        return {"ok": True}

    @sio.on("message")
    async def message(sid, payload):
        out = {"from": sid, **payload} if tag_sender else payload
        await sio.emit("message", out, room=payload["room"], skip_sid=sid)
        return {"ok": True}


async def test_fast_manager_relays_between_real_clients():
    """A python-socketio server on FastManager and the orjson codec, three real clients in a
    room over WebSocket: a room emit reaches the others, not the sender; acks still work."""
    fast, _std = codecs()
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=FastManager(), json=fast)
    try:
        app = web.Application()
        sio.attach(app)

        relay_handlers(sio, tag_sender=True)

        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        got: dict[int, list] = {0: [], 1: [], 2: []}
        clients = []
        try:
            for i in range(3):
                c = socketio.AsyncClient(reconnection=False)
                c.on("message", lambda p, i=i: got[i].append(p))
                await c.connect(f"http://127.0.0.1:{port}", transports=["websocket"])
                assert await c.call("join", "R", timeout=5) == {"ok": True}
                clients.append(c)
            ack = await clients[0].call("message", {"room": "R", "data": "é" * 10}, timeout=5)
            assert ack == {"ok": True}
            for _ in range(100):
                if got[1] and got[2]:
                    break
                await asyncio.sleep(0.02)
            assert [p["data"] for p in got[1]] == ["é" * 10]
            assert [p["data"] for p in got[2]] == ["é" * 10]
            assert got[0] == []
        finally:
            for c in clients:
                await c.disconnect()
            await runner.cleanup()
    finally:
        # json= sets a class attribute of the libraries' packet classes for the whole process
        import engineio.json
        import engineio.packet

        socketio.packet.Packet.json = engineio.json
        engineio.packet.Packet.json = engineio.json


# -- fastpath: the engine.io WebSocket loop -------------------------------------------------------


class _FastAdapter:
    """engine.io's aiohttp WebSocket adapter, running the handler through
    fastpath.websocket_handler (what signaling.QuickCloseWebSocket does)."""

    @staticmethod
    def make():
        from engineio.async_drivers import aiohttp as eio_aiohttp

        from incognito_onion import fastpath

        class Adapter(eio_aiohttp.WebSocket):
            async def __call__(self, environ):
                request = environ["aiohttp.request"]
                self._sock = web.WebSocketResponse(
                    max_msg_size=self.server.max_http_buffer_size, timeout=0.5)
                await self._sock.prepare(request)
                self.environ = environ
                await fastpath.websocket_handler(self.handler, self)
                return self._sock

        return Adapter


@pytest.fixture
async def fast_server(monkeypatch):
    """A python-socketio server on 127.0.0.1 whose WebSockets run fastpath's loop, a short
    ping window (1 + 1 s; python-socketio's client drops out below 1 s, with either loop), and
    a log of connects/disconnects and of which loop served them."""
    from incognito_onion import fastpath

    served = []
    real = fastpath._serve

    async def counting(sock, ws):
        served.append(sock.sid)
        await real(sock, ws)

    monkeypatch.setattr(fastpath, "_serve", counting)
    monkeypatch.delenv(OFF, raising=False)
    class Server(socketio.AsyncServer):
        def _engineio_server_class(self) -> type:
            # the server's own service task, which checks each client 24 times per
            # ping_timeout (the library's checks one client per ping_timeout / clients: here
            # once a second, which let a spared client's extra ping come ~2 s late)
            return fastpath.ServiceSlicedServer

    sio = Server(async_mode="aiohttp", client_manager=FastManager(),
                 ping_interval=1, ping_timeout=1, max_http_buffer_size=4096)
    sio.eio._async = {**sio.eio._async, "websocket": _FastAdapter.make()}
    events: list[tuple[str, str]] = []

    @sio.on("connect")
    async def on_connect(sid, environ):
        events.append(("connect", sid))

    @sio.on("disconnect")
    async def on_disconnect(sid, reason=None):
        events.append(("disconnect", sid))

    relay_handlers(sio)

    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield {"url": f"http://127.0.0.1:{port}", "events": events, "served": served, "sio": sio}
    await runner.cleanup()


async def _until(cond, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not cond():
        if loop.time() - t0 > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return loop.time() - t0


async def test_fast_loop_relays_and_answers_pings(fast_server):
    got: list = []
    clients = []
    try:
        for i in range(3):
            c = socketio.AsyncClient(reconnection=False)
            if i:
                c.on("message", lambda p: got.append(p))
            await c.connect(fast_server["url"], transports=["websocket"])
            assert await c.call("join", "R", timeout=5) == {"ok": True}
            clients.append(c)
        assert len(fast_server["served"]) == 3  # every one through the fast loop
        for n in range(20):
            await clients[0].call("message", {"room": "R", "n": n}, timeout=5)
        await _until(lambda: len(got) == 40, 5)
        assert sorted(p["n"] for p in got) == sorted(list(range(20)) * 2)
        await asyncio.sleep(2.5)  # over a ping window: the clients answer, nobody dropped
        assert all(c.connected for c in clients)
        assert [e for e, _ in fast_server["events"]].count("disconnect") == 0
    finally:
        for c in clients:
            await c.disconnect()
    await _until(lambda: [e for e, _ in fast_server["events"]].count("disconnect") == 3, 5)


async def _raw_connect(session, url: str):
    ws = await session.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket")
    opening = await ws.receive_str(timeout=5)
    assert opening.startswith("0{")
    await ws.send_str("40")
    assert (await ws.receive_str(timeout=5)).startswith("40")
    return ws


async def test_send_now_sends_at_once_only_what_needs_no_wait(fast_server):
    """fastpath.send_now: a packet on a socket the fast loop runs goes out at once; with its
    pong overdue or the socket closed, nothing is sent and the caller takes the coroutine path
    (which runs the library's ping-timeout check); a socket off the fast loop: always False."""
    import time
    from types import SimpleNamespace

    from engineio import packet as eio_packet

    from incognito_onion import fastpath

    got: list = []
    c = socketio.AsyncClient(reconnection=False)
    c.on("x", lambda n: got.append(n))
    await c.connect(fast_server["url"], transports=["websocket"])
    try:
        sock = fast_server["sio"].eio.sockets[c.eio.sid]

        def pkt(n: int):
            return eio_packet.Packet(eio_packet.MESSAGE, f'2["x",{n}]')

        assert fastpath.send_now(sock, pkt(1))
        await _until(lambda: got == [1], 5)
        saved, sock.last_ping = sock.last_ping, time.time() - 100  # a pong long overdue
        assert not fastpath.send_now(sock, pkt(2))
        sock.last_ping = saved
        assert fastpath.send_now(sock, pkt(3))
        await _until(lambda: got == [1, 3], 5)
    finally:
        await c.disconnect()
    await _until(lambda: not fastpath.send_now(sock, pkt(4)), 5)  # closed: never sent
    assert not fastpath.send_now(SimpleNamespace(), pkt(5))
    assert got == [1, 3]


async def test_fast_loop_drops_a_silent_client_after_the_ping_window(fast_server):
    """A client that never answers a ping is disconnected ping_interval + ping_timeout after
    its last frame, like the library's wait_for did (the lazy timer re-arms at the due time)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        ws = await _raw_connect(session, fast_server["url"])
        await _until(lambda: any(e == "connect" for e, _ in fast_server["events"]), 5)
        t = await _until(lambda: any(e == "disconnect" for e, _ in fast_server["events"]), 8)
        assert 1.5 < t < 1 + 1 + 2 + 1
        # the server closed the WebSocket (after a ping the client never answered)
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING):
                break
            assert msg.type == aiohttp.WSMsgType.TEXT and msg.data == "2"  # pings only
        await ws.close()


async def test_fast_loop_keeps_a_client_that_answers_pings(fast_server):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        ws = await _raw_connect(session, fast_server["url"])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        pings = 0
        while loop.time() - t0 < 3.5:
            msg = await ws.receive(timeout=3)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            if msg.data == "2":
                pings += 1
                await ws.send_str("3")
        assert pings >= 3
        assert [e for e, _ in fast_server["events"]].count("disconnect") == 0
        await ws.close()
    await _until(lambda: any(e == "disconnect" for e, _ in fast_server["events"]), 5)


async def _raw_until_ping(ws) -> None:
    while True:
        msg = await ws.receive_str(timeout=5)
        if msg == "2":
            return


async def test_fast_loop_a_frame_while_a_ping_waits_moves_the_pong_deadline(fast_server):
    """Like Node's engine.io: a client that sends a frame while the server waits for its pong
    is alive, and gets ping_timeout (1 s here) from that frame for the pong; a late pong then
    keeps the connection. Without the refresh the ack at 1.3 s after the ping would find the
    pong overdue and close."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        ws = await _raw_connect(session, fast_server["url"])
        await _raw_until_ping(ws)
        loop = asyncio.get_running_loop()
        t_ping = loop.time()
        await asyncio.sleep(0.7)
        await ws.send_str('42["join","R"]')  # no ack asked: nothing is sent back
        await asyncio.sleep(max(0.0, t_ping + 1.3 - loop.time()))
        await ws.send_str('421["join","R"]')  # a send to the client: the pong deadline check
        assert (await ws.receive_str(timeout=5)).startswith("431[")
        await ws.send_str("3")  # the pong, 1.3 s after the ping
        await _raw_until_ping(ws)  # the next ping comes: the connection lives on
        assert [e for e, _ in fast_server["events"]].count("disconnect") == 0
        await ws.send_str("3")
        await ws.close()


async def test_fast_loop_drops_a_client_that_sends_but_never_pongs(fast_server):
    """The refresh is once per ping: a client that keeps sending events but never answers a
    ping is still dropped, ping_timeout after its first frame following the ping."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        ws = await _raw_connect(session, fast_server["url"])
        await _raw_until_ping(ws)
        loop = asyncio.get_running_loop()
        t_ping = loop.time()
        closed_after = None
        n = 0
        while loop.time() - t_ping < 5:
            n += 1
            with contextlib.suppress(ConnectionResetError):
                await ws.send_str(f'42{n}["join","R"]')
            msg = await ws.receive(timeout=5)
            if msg.type != aiohttp.WSMsgType.TEXT or msg.data == "1":  # 1: engine.io CLOSE
                closed_after = loop.time() - t_ping
                break
            await asyncio.sleep(0.2)
        assert closed_after is not None, "never dropped"
        assert 1.0 < closed_after < 1 + 1 + 0.5
        await _until(lambda: any(e == "disconnect" for e, _ in fast_server["events"]), 5)
        await ws.close()


def _hold_until(sio) -> asyncio.Event:
    """A ``hold`` event whose handler waits for the returned event, run in its connection's
    loop as Signaling's handlers are: the connection's later frames wait, received and unread,
    as behind a busy server."""
    sio.async_handlers = False
    release = asyncio.Event()

    @sio.on("hold")
    async def hold(sid, *args):
        await release.wait()

    return release


async def test_fast_loop_keeps_a_client_whose_pong_waits_unread_on_the_server(fast_server):
    """A pong the server received but has not read yet (here behind a handler that waits, as
    under load behind the frames a busy server reads a few per turn) is not the client's
    lateness: the connection is kept past ping_timeout (1 s) for as long as it waits, the
    client is pinged meanwhile (its own check wants a ping every ping_interval +
    ping_timeout), and it lives on once the pongs are read. Without this the service task
    closed it at ~1 s."""
    import aiohttp

    sio = fast_server["sio"]
    release = _hold_until(sio)

    async with aiohttp.ClientSession() as session:
        ws = await _raw_connect(session, fast_server["url"])
        await _until(lambda: len(sio.eio.sockets) == 1, 5)
        sock = next(iter(sio.eio.sockets.values()))
        await _raw_until_ping(ws)
        await ws.send_str('42["hold"]')  # its handler holds the connection's later frames
        await ws.send_str("3")  # the pong: received, unread
        loop = asyncio.get_running_loop()
        held_at = loop.time()
        try:
            await _raw_until_ping(ws)  # pinged again while the pong waits
            # once the pong is overdue (ping_timeout, 1 s), well before the client's own
            # deadline (ping_interval + ping_timeout, 2 s)
            assert loop.time() - held_at < 1 + 0.5
            await ws.send_str("3")
            await asyncio.sleep(max(0.0, held_at + 2.5 - loop.time()))  # over 2x ping_timeout
            assert not sock.closed
            assert [e for e, _ in fast_server["events"]].count("disconnect") == 0
        finally:
            release.set()
        await _raw_until_ping(ws)  # the pong was read: the next ping comes
        await ws.send_str("3")
        assert [e for e, _ in fast_server["events"]].count("disconnect") == 0
        await ws.close()


async def test_fast_loop_pings_every_ping_interval_from_the_last_ping_not_from_its_pong(
        fast_server):
    """engine.io's protocol: a ping every ping_interval (1 s here). A pong read late (here
    0.7 s, behind a handler that waits) used to delay the next ping by as much (1.7 s after
    the last), eating into the client's own deadline of ping_interval + ping_timeout."""
    import aiohttp

    sio = fast_server["sio"]
    release = _hold_until(sio)

    async with aiohttp.ClientSession() as session:
        ws = await _raw_connect(session, fast_server["url"])
        loop = asyncio.get_running_loop()
        gaps = []
        await _raw_until_ping(ws)
        for _ in range(2):
            pinged = loop.time()
            await ws.send_str('42["hold"]')  # holds the pong behind it for 0.7 s
            await ws.send_str("3")
            try:
                await asyncio.sleep(0.7)
            finally:
                release.set()
            release.clear()
            await _raw_until_ping(ws)
            gaps.append(loop.time() - pinged)
        await ws.send_str("3")
        assert all(0.8 < gap < 1.35 for gap in gaps), gaps
        assert [e for e, _ in fast_server["events"]].count("disconnect") == 0
        await ws.close()


def test_kernel_unread_counts_what_a_socket_has_received_and_nobody_read():
    import socket
    from types import SimpleNamespace

    from incognito_onion import fastpath

    a, b = socket.socketpair()
    try:
        transport = SimpleNamespace(get_extra_info=lambda name: b if name == "socket" else None)
        assert fastpath.kernel_unread(transport) == 0
        a.sendall(b"3" * 10)  # a Unix socket pair: in b's buffer once sendall returns
        assert fastpath.kernel_unread(transport) == 10
        b.recv(4)
        assert fastpath.kernel_unread(transport) == 6
    finally:
        a.close()
        b.close()
    assert fastpath.kernel_unread(transport) == 0  # closed: unknown, not an error
    assert fastpath.kernel_unread(None) == 0


async def test_fast_loop_sees_aiohttp_s_received_frames(fast_server, monkeypatch):
    """The loop skips its extra turn per frame only when it can see aiohttp's queue of
    received frames (empty: the next read suspends anyway); a new aiohttp that keeps them
    elsewhere would quietly cost a turn per frame again, so this checks it is found."""
    from incognito_onion import fastpath

    seen = []
    real = fastpath.received_frames

    def spy(resp):
        buf = real(resp)
        seen.append(buf)
        return buf

    monkeypatch.setattr(fastpath, "received_frames", spy)
    c = socketio.AsyncClient(reconnection=False)
    await c.connect(fast_server["url"], transports=["websocket"])
    try:
        assert await c.call("join", "R", timeout=5) == {"ok": True}
        assert len(seen) == 1 and seen[0] is not None and len(seen[0]) == 0
    finally:
        await c.disconnect()


async def test_fast_loop_closes_on_a_too_large_frame(fast_server):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        ws = await _raw_connect(session, fast_server["url"])
        await ws.send_str('42["message",{"room":"R","data":"' + "x" * 5000 + '"}]')
        await _until(lambda: any(e == "disconnect" for e, _ in fast_server["events"]), 5)
        await ws.close()


async def test_fast_loop_can_be_turned_off(fast_server, monkeypatch):
    monkeypatch.setenv(OFF, "fastws")
    c = socketio.AsyncClient(reconnection=False)
    await c.connect(fast_server["url"], transports=["websocket"])
    assert await c.call("join", "R", timeout=5) == {"ok": True}
    await c.disconnect()
    assert fast_server["served"] == []


async def test_fast_loop_takes_one_frame_per_turn_of_the_event_loop(fast_server):
    """A flooding client's buffered frames do not hold the event loop: another client's event
    is handled while the flood is still being worked through (the library's task per read gave
    every connection a turn per frame)."""
    import aiohttp

    sio = fast_server["sio"]
    handled = {"flood": 0, "honest_at": None}
    flood_n = 3000

    @sio.on("noop")
    async def noop(sid, *args):
        handled["flood"] += 1

    @sio.on("ping_me")
    async def ping_me(sid, *args):
        handled["honest_at"] = handled["flood"]
        return "pong"

    honest = socketio.AsyncClient(reconnection=False)
    await honest.connect(fast_server["url"], transports=["websocket"])
    try:
        async with aiohttp.ClientSession() as session:
            ws = await _raw_connect(session, fast_server["url"])
            frame = '42["noop",{}]'
            for _ in range(flood_n):  # written at once: the server reads it in a few chunks
                await ws.send_str(frame)
            await asyncio.sleep(0.001)
            assert await honest.call("ping_me", timeout=10) == "pong"
            await _until(lambda: handled["flood"] == flood_n, 20)
            assert handled["honest_at"] < flood_n
            await ws.close()
    finally:
        await honest.disconnect()


@pytest.mark.parametrize("mode", ["earned", "fresh", "off", "deep"])
async def test_fast_loop_handles_a_modest_connection_s_buffered_frames_in_a_row(
        fast_server, monkeypatch, mode):
    """With a frame budget (Signaling sets one), frames already received for a connection that
    has kept to a modest rate are handled up to FRAMES_PER_TURN in a row (a turn per frame was
    the largest cost per frame at saturation); a connection that bursts as soon as it opens
    has earned no such right (one frame per turn, as the library's task per read gave);
    INCOGNITO_RUNTIME_OFF=batchread: one per turn always. (A backlog deeper than
    BATCH_MAX_BACKLOG, a burst sent at once, gets none either: test_attack's bursts.)
    Measured with a counter that a callback bumps once per loop turn."""
    import aiohttp

    from incognito_onion import fastpath
    from tests.support.loop_turns import LoopTurns

    if mode == "off":
        monkeypatch.setenv(OFF, "batchread")
    sio = fast_server["sio"]
    setattr(sio.eio, fastpath.FRAME_BUDGET_ATTR, (201, 800))  # Signaling's at the defaults
    n = fastpath.BATCH_MAX_BACKLOG - 2  # a shallow backlog (a deeper one: see "deep")
    turns_at: list[int] = []
    turns = LoopTurns()
    release = asyncio.Event()
    received: list = []  # the connection's deque of frames aiohttp received
    if mode == "deep":  # a backlog behind a handler that waits (as behind a busy server)
        n = fastpath.BATCH_MAX_BACKLOG + 40
        release = _hold_until(sio)
        real = fastpath.received_frames

        def spy(resp):
            received.append(real(resp))
            return received[-1]

        monkeypatch.setattr(fastpath, "received_frames", spy)

    @sio.on("noop")
    async def noop(sid, *args):
        turns_at.append(turns.n)

    async with aiohttp.ClientSession() as session:
        ws = await _raw_connect(session, fast_server["url"])
        if mode != "fresh":
            await asyncio.sleep(0.5)  # quiet: the right to frames in a row is earned
        with turns:
            if mode == "deep":
                await ws.send_str('42["hold"]')
            for _ in range(n):  # written at once, before the server's next turn
                await ws.send_str('42["noop",{}]')
            if mode == "deep":
                await _until(lambda: len(received[0]) == n, 10)
                release.set()
            await _until(lambda: len(turns_at) == n, 10)
        await ws.close()
    runs = sorted(collections.Counter(turns_at).values(), reverse=True)
    extra = sum(r - 1 for r in runs)  # frames handled in a turn after that turn's first
    assert max(runs) <= fastpath.FRAMES_PER_TURN, runs
    if mode == "earned":  # the right earned in the quiet half second: FRAMES_PER_TURN
        assert fastpath.FRAMES_PER_TURN - 1 <= extra <= fastpath.FRAMES_PER_TURN + 3, runs
    elif mode == "deep":  # DEEP_PER_TURN in a row, while the earned right lasts
        assert max(runs) == fastpath.DEEP_PER_TURN, runs
        assert fastpath.FRAMES_PER_TURN // 2 - 1 <= extra <= fastpath.FRAMES_PER_TURN // 2 + 2
    elif mode == "fresh":  # only what it earns (50/s) while its frames are worked off
        assert extra <= 3, runs
    else:
        assert extra == 0, runs


async def _burst_during_20_round_trips(url: str, frame: str, n: int, handled, seen_at: list,
                                      after_first=None) -> int:
    """Sends ``n`` copies of ``frame`` at once from a raw connection (the first alone, then
    ``after_first(honest client's engine.io sid)``), while an honest client makes 20 round trips
    (``ping_me``, whose handler appends ``handled()`` to ``seen_at``); returns how many of the
    burst's frames the server had handled by the last round trip."""
    import aiohttp

    seen_at.clear()
    honest = socketio.AsyncClient(reconnection=False)
    await honest.connect(url, transports=["websocket"])
    try:
        async with aiohttp.ClientSession() as session:
            ws = await _raw_connect(session, url)
            await ws.send_str(frame)
            await _until(lambda: handled() >= 1, 5)
            if after_first is not None:
                after_first(honest.eio.sid)
            for _ in range(n - 1):
                await ws.send_str(frame)
            for _ in range(20):
                assert await honest.call("ping_me", timeout=10) == "pong"
            await _until(lambda: handled() == n, 30)
            await ws.close()
    finally:
        await honest.disconnect()
    assert seen_at[-1] < n, "the burst was over before the honest calls"
    return seen_at[-1]


async def test_fast_loop_reads_a_connection_over_its_budget_at_low_priority(fast_server):
    """With a frame budget, a flood beyond it yields LOW_PRIORITY_TURNS turns per frame: while
    an honest client makes 20 round trips, the server works off far fewer of the flood's frames
    than without a budget (the honest events go first)."""
    from incognito_onion import fastpath

    sio = fast_server["sio"]
    handled = {"flood": 0}
    seen_at: list[int] = []

    @sio.on("noop")
    async def noop(sid, *args):
        handled["flood"] += 1

    @sio.on("ping_me")
    async def ping_me(sid, *args):
        seen_at.append(handled["flood"])
        return "pong"

    async def flood_frames_per_20_round_trips(budget) -> int:
        setattr(sio.eio, fastpath.FRAME_BUDGET_ATTR, budget)
        handled["flood"] = 0
        return await _burst_during_20_round_trips(
            fast_server["url"], '42["noop",{}]', 3000, lambda: handled["flood"], seen_at)

    free = await flood_frames_per_20_round_trips(None)
    low = await flood_frames_per_20_round_trips((10.0, 10))
    print(f"\nflood frames handled during 20 honest round trips: {free} without a budget, "
          f"{low} over a budget")
    assert low * 2 < free


async def test_fast_loop_reads_a_connection_whose_events_are_refused_at_low_priority(
        fast_server):
    """A burst within the frame budget (Signaling's defaults) is read at full priority, but
    the same burst of events that are refused (fastpath.charge_refusal, as Signaling does for
    every error reply) goes to low priority after REFUSALS_PER_BURST of them: while an honest
    client makes 20 round trips, far fewer of its frames are handled."""
    from incognito_onion import fastpath

    sio = fast_server["sio"]
    setattr(sio.eio, fastpath.FRAME_BUDGET_ATTR, (201, 800))
    handled = {"n": 0, "refuse": False}
    seen_at: list[int] = []
    burster: list = []

    @sio.on("bad")
    async def bad(sid, *args):
        handled["n"] += 1
        if handled["refuse"]:
            fastpath.charge_refusal(sio.eio, sio.manager.eio_sid_from_sid(sid, "/"))

    @sio.on("ping_me")
    async def ping_me(sid, *args):
        seen_at.append(handled["n"])
        return "pong"

    def find_burster(honest_sid: str) -> None:
        burster[:] = [s for s in sio.eio.sockets.values()
                      if getattr(s, fastpath._BUDGET_KEY, None) is not None
                      and s.sid != honest_sid and not s.closed]
        assert len(burster) == 1, burster

    async def burst_frames_per_20_round_trips(refuse: bool) -> int:
        handled.update(n=0, refuse=refuse)
        seen = await _burst_during_20_round_trips(
            fast_server["url"], '42["bad",{}]', 600, lambda: handled["n"], seen_at,
            find_burster)
        if refuse:  # deep in debt (one burst), where the refusals left it
            tokens = getattr(burster[0], fastpath._BUDGET_KEY).tokens
            assert tokens < 0, tokens
        return seen

    accepted = await burst_frames_per_20_round_trips(False)
    refused = await burst_frames_per_20_round_trips(True)
    print(f"\nburst frames handled during 20 honest round trips: {accepted} accepted, "
          f"{refused} refused")
    assert refused * 2 < accepted


async def test_fast_loop_a_new_connection_starts_with_a_share_of_its_frame_burst(fast_server):
    """FRESH_BUDGET of the burst at the start, the rest earned at the budget's rate: a client
    opened to flood or guess reaches low priority after a few refusals (see above)."""
    import aiohttp

    from incognito_onion import fastpath

    sio = fast_server["sio"]
    setattr(sio.eio, fastpath.FRAME_BUDGET_ATTR, (1.0, 800))  # earns 1 frame a second
    async with aiohttp.ClientSession() as session:
        ws = await _raw_connect(session, fast_server["url"])
        budgets = [getattr(s, fastpath._BUDGET_KEY) for s in sio.eio.sockets.values()
                   if not s.closed]
        assert len(budgets) == 1
        budget = budgets[0]
        assert budget.burst == 800
        # what it has read since (the "40" connect) taken, a few seconds of earnings added
        assert 800 * fastpath.FRESH_BUDGET - 3 <= budget.tokens <= 800 * fastpath.FRESH_BUDGET + 3
        await ws.close()


def test_charge_refusal_ignores_connections_off_the_fast_path():
    from types import SimpleNamespace

    from incognito_onion import fastpath
    from incognito_onion.limits import TokenBucket

    budget = TokenBucket(100, 32)
    eio = SimpleNamespace(sockets={"a": SimpleNamespace(**{fastpath._BUDGET_KEY: budget}),
                                   "b": SimpleNamespace()})
    fastpath.charge_refusal(eio, "a")
    assert budget.tokens == 32 - 32 / fastpath.REFUSALS_PER_BURST
    for sid in ("b", "gone", None):  # the library's loop, a closed socket, no socket.io sid
        fastpath.charge_refusal(eio, sid)


async def test_signaling_charges_every_refusal(monkeypatch):
    """An event refused with an error, one over the rate limit and a malformed packet each
    charge their connection (by its engine.io sid); an accepted event does not."""
    from incognito_onion import signaling
    from incognito_onion.config import load

    charged: list = []
    monkeypatch.setattr(signaling, "charge_refusal", lambda eio, eio_sid: charged.append(eio_sid))
    sig = signaling.Signaling(load(path=None, env={}, overrides={"limits.event_burst": 3}))
    sid = await sig.sio.manager.connect("eio-1", "/")
    await sig._on_connect(sid, {"HTTP_HOST": "127.0.0.1"})
    created = await sig._on_event("create", sid, {})
    assert created["ok"] and charged == []
    refused = await sig._on_event("message", sid, {"room": "r" * 22, "data": "x"})
    assert refused["error"]["code"] == "not_in_room" and charged == ["eio-1"]
    assert (await sig._on_event("create", sid, {}))["ok"]  # the burst of 3 used up
    assert (await sig._on_event("create", sid, {}))["error"]["code"] == "rate_limited"
    assert charged == ["eio-1"] * 2
    sig._allow_error_reply(sid)  # a malformed packet
    assert charged == ["eio-1"] * 3


# -- fastpath: packets written straight to the socket ----------------------------------------------


async def test_fast_loop_keeps_the_order_of_direct_and_queued_frames(fast_server, monkeypatch):
    """Frames over DIRECT_MAX go through the writer task, the others straight to the socket
    when nothing is queued: mixed in one fast stream they still arrive in the order sent."""
    from incognito_onion import fastpath

    monkeypatch.setattr(fastpath, "DIRECT_MAX", 200)
    got: list[int] = []
    a = socketio.AsyncClient(reconnection=False)
    b = socketio.AsyncClient(reconnection=False)
    b.on("message", lambda p: got.append(p["n"]))
    try:
        for c in (a, b):
            await c.connect(fast_server["url"], transports=["websocket"])
            assert await c.call("join", "R", timeout=5) == {"ok": True}
        n = 400
        for i in range(n):  # no waiting for acks: the server's sends overtake its writer
            await a.emit("message", {"room": "R", "n": i, "pad": "x" * (20 if i % 3 else 900)})
        await _until(lambda: len(got) == n, 10)
        assert got == list(range(n))
    finally:
        await a.disconnect()
        await b.disconnect()


@pytest.mark.parametrize("off, busy, recent, writes", [
    ("", True, True, [30]), ("", True, False, [1, 29]), ("", False, True, [1, 29]),
    ("joinwindow", True, False, [30]), ("coalesce", True, True, [1] * 30)])
async def test_fast_loop_writes_a_turn_s_frames_to_one_connection_at_once(
        fast_server, monkeypatch, off, busy, recent, writes):
    """Frames sent to one connection within one turn of the event loop leave in one write (a
    write is a syscall: one per frame was a quarter of the relay's CPU under load), whole and
    in order. When the server was idle before the frame that sends them, or the connection
    was last sent a frame longer than JOIN_WINDOW before (gathering would join nothing), the
    first leaves at once and the rest together (``joinwindow`` off: only when idle); with
    ``coalesce`` off, one write each."""
    from incognito_onion import fastpath

    monkeypatch.setenv(OFF, off)  # read when the connection opens
    # busy: every frame follows the last within BUSY_GAP; idle: none does
    monkeypatch.setattr(fastpath, "BUSY_GAP", 1e9 if busy else 0.0)
    # light load (LIGHT_GAP), and recent: every frame follows the connection's last within
    # JOIN_WINDOW; else none does
    monkeypatch.setattr(fastpath, "LIGHT_GAP", 0.0)
    monkeypatch.setattr(fastpath, "JOIN_WINDOW", 1e9 if recent else 0.0)
    sio = fast_server["sio"]

    @sio.on("burst")
    async def burst(sid, n):
        transport = sio.get_environ(sid)["aiohttp.request"].transport
        seen: list[bytes] = []
        real = transport.write
        transport.write = lambda data: (seen.append(bytes(data)), real(data))[1]
        try:
            for i in range(n):  # sends never yield: all in this turn
                await sio.emit("message", {"n": i}, to=sid)
            await asyncio.sleep(0)  # the gathered frames' callback runs first in the next turn
            await asyncio.sleep(0)
        finally:
            del transport.write
        return [w.count(b'42["message"') for w in seen]

    got: list[int] = []
    c = socketio.AsyncClient(reconnection=False)
    c.on("message", lambda p: got.append(p["n"]))
    try:
        await c.connect(fast_server["url"], transports=["websocket"])
        assert await c.call("burst", 30, timeout=5) == writes
        await _until(lambda: len(got) == 30, 5)
        assert got == list(range(30))
    finally:
        await c.disconnect()


@pytest.mark.parametrize("early", [True, False])
async def test_a_long_turn_that_joins_little_writes_what_it_gathered_early(monkeypatch, early):
    """In a long turn (many frames handled in a row), what was gathered leaves when the next
    frame starts once the first gathered frame has waited FLUSH_AFTER, instead of at the end
    of the turn, unless gathering is joining several frames per connection (saturation,
    where joining keeps the server up) or the ``earlyflush`` knob is off."""
    import types

    from incognito_onion import fastpath

    clock = [100.0]
    monkeypatch.setattr(fastpath, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(fastpath, "_load", fastpath._Load())
    monkeypatch.setattr(fastpath, "_flushes", [])
    monkeypatch.setattr(fastpath, "_flush_loop", [])
    load, loop, written = fastpath._load, asyncio.get_running_loop(), []
    load.early = early

    def gather(conn: str, frames: int = 1) -> None:  # what put() does when it gathers
        fastpath._flush_soon(lambda: written.append(conn), loop)
        load.gathered += frames

    def next_frame(after_ms: float) -> None:  # what handle() does when a frame starts
        clock[0] += after_ms / 1000
        load.frame()

    next_frame(0)
    gather("a")
    next_frame(fastpath.FLUSH_AFTER * 1000 / 2)
    gather("b")
    assert written == []
    next_frame(fastpath.FLUSH_AFTER * 1000 * 0.6)  # 1.1 x FLUSH_AFTER after "a" was gathered
    assert written == (["a", "b"] if early else [])
    await asyncio.sleep(0)  # the turn's own callback: what is left
    assert written == ["a", "b"]
    assert fastpath._flushes == [] and load.gathered == 0

    # a turn that joins several frames per connection keeps them for one write at its end
    next_frame(0)
    gather("c", frames=3)
    next_frame(fastpath.FLUSH_AFTER * 1000 * 3)
    assert written == ["a", "b"]
    await asyncio.sleep(0)
    assert written == ["a", "b", "c"]


async def test_light_load_is_told_by_the_average_gap_between_frames(monkeypatch):
    """Light load (frames on average more than LIGHT_GAP apart, where gathering for sparse
    connections is confined to JOIN_WINDOW, see test_fast_loop_writes...) is told by a
    moving average of the gaps between frames: a bunch of frames close together does not
    end it, a steady stream faster than LIGHT_GAP does, and it comes back when the stream
    slows down; an idle minute counts as no more than a second."""
    import types

    from incognito_onion import fastpath

    clock = [100.0]
    monkeypatch.setattr(fastpath, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    load = fastpath._Load()

    def frames(n: int, gap_ms: float) -> None:
        for _ in range(n):
            clock[0] += gap_ms / 1000
            load.frame()

    def light() -> bool:
        return load.light >= fastpath.LIGHT_GAP

    frames(1000, 1.0)  # 1 000 frames/s
    assert light()
    frames(8, 0.01)  # a bunch, each frame "busy"
    assert light() and load.busy
    frames(400, fastpath.LIGHT_GAP * 1000 / 3)  # a steady stream three times faster
    assert not light()
    frames(400, fastpath.LIGHT_GAP * 1000 * 3)
    assert light()
    clock[0] += 60
    load.frame()
    assert load.light < 0.02  # (1 s - ~1 ms) / 64 more, not (60 s - ...) / 64
    frames(400, fastpath.LIGHT_GAP * 1000 / 3)
    assert not light()


def _ws_frame(text: str) -> bytes:
    """A masked client text frame (RFC 6455 5.2)."""
    import struct

    data = text.encode()
    mask = os.urandom(4)
    n = len(data)
    head = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0xFE, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def _ws_frames(reader: asyncio.StreamReader) -> AsyncIterator[tuple[int, bytes]]:
    """The server's (unmasked) frames, as (opcode, payload) pairs."""
    import struct

    while True:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        yield b0 & 0x0F, await reader.readexactly(n)


async def test_fast_loop_a_reader_that_stops_reading_holds_up_nobody(fast_server):
    """A client that stops reading (its socket buffers full) makes the server queue its
    packets, never wait for it: the sender's acks and the other receiver's relays keep coming,
    and when it reads again it gets every packet, in order."""
    import base64
    import socket
    import urllib.parse

    url = urllib.parse.urlsplit(fast_server["url"])
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: fills soon
    raw.connect((url.hostname, url.port))
    reader, writer = await asyncio.open_connection(sock=raw)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {url.netloc}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert b" 101 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    frames = _ws_frames(reader)
    assert (await asyncio.wait_for(anext(frames), 5))[1].startswith(b"0{")
    writer.write(_ws_frame("40"))
    assert (await asyncio.wait_for(anext(frames), 5))[1].startswith(b"40")
    writer.write(_ws_frame('420["join","R"]'))
    assert (await asyncio.wait_for(anext(frames), 5))[1] == b'430[{"ok":true}]'
    # from here on the raw client reads nothing

    got: list[int] = []
    a = socketio.AsyncClient(reconnection=False)
    b = socketio.AsyncClient(reconnection=False)
    b.on("message", lambda p: got.append(p["n"]))
    n, pad = 2500, "y" * 3000  # ~7.5 MB to the stalled client, far past every buffer
    try:
        for c in (a, b):
            await c.connect(fast_server["url"], transports=["websocket"])
            assert await c.call("join", "R", timeout=5) == {"ok": True}
        for i in range(n):
            await a.emit("message", {"room": "R", "n": i, "pad": pad})
        assert await a.call("message", {"room": "R", "n": n, "pad": ""}, timeout=10) == {
            "ok": True}
        await _until(lambda: len(got) == n + 1, 15)
        assert got == list(range(n + 1))

        # now it reads: everything, in order (pings may come in between; it never answers
        # them, but the 1 + 1 s ping window is far from over)
        seen: list[int] = []
        while len(seen) < n + 1:
            op, payload = await asyncio.wait_for(anext(frames), 10)
            if payload.startswith(b'42["message"'):
                seen.append(json.loads(payload[2:])[1]["n"])
        assert seen == list(range(n + 1))
    finally:
        await a.disconnect()
        await b.disconnect()
        writer.close()


async def test_fast_loop_with_permessage_deflate(fast_server):
    """A connection that negotiated compression (this test server's WebSocketResponse allows
    it) has every frame written by aiohttp's writer, which keeps the compressor's state."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"{fast_server['url']}/socket.io/?EIO=4&transport=websocket", compress=15)
        assert ws.compress == 15
        assert (await ws.receive_str(timeout=5)).startswith("0{")
        await ws.send_str("40")
        assert (await ws.receive_str(timeout=5)).startswith("40")
        await ws.send_str('421["join","R"]')
        assert (await ws.receive_str(timeout=5)).startswith("431[")
        for i in range(20):
            await ws.send_str(f'42{i + 2}["message",{{"room":"R","n":{i}}}]')
            assert await ws.receive_str(timeout=5) == f'43{i + 2}[{{"ok":true}}]'
        await ws.close()


async def test_the_server_declines_permessage_deflate(live_server):
    """Our server never compresses: what goes through is end-to-end encrypted and does not
    compress, and a compressed connection could not take the direct writes."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"{live_server.base}/socket.io/?EIO=4&transport=websocket", compress=15)
        assert ws.compress == 0
        assert (await ws.receive_str(timeout=5)).startswith("0{")
        await ws.close()


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text() | st.binary(),
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=4), kids, max_size=4), max_leaves=12))
def test_has_binary_matches_the_library(value):
    from incognito_onion.fastpath import has_binary

    assert has_binary(value) == socketio.packet.Packet.data_is_binary(value)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text() | st.binary(),
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=4), kids, max_size=4), max_leaves=12),
       st.none() | st.integers(min_value=0, max_value=10**6))
def test_plain_packets_encode_like_the_library(value, ack_id):
    from incognito_onion.fastpath import plain_packet

    codec = runtime.json_module()
    for kind in (socketio.packet.EVENT, socketio.packet.ACK):
        data = ["ev", value] if kind == socketio.packet.EVENT else [value]
        got = plain_packet(kind, data, codec, ack_id)
        packet = socketio.packet.Packet(kind, data=data, id=ack_id)
        if socketio.packet.Packet.data_is_binary(data):
            assert got is None
        else:
            packet.json = codec
            assert got == packet.encode()


@pytest.mark.parametrize("off", ["", "quickrelay", "fastevent", "fastws,fastemit,fastevent"])
async def test_relay_is_the_same_with_each_fast_path_off(server_factory, off):
    """The real server relays, acks and refuses alike whichever fast paths
    ``INCOGNITO_RUNTIME_OFF`` turns off (the library's paths are the reference)."""
    from tests.support.server import Peer

    srv = server_factory(env={OFF: off} if off else None)
    a, b = Peer(srv.base, "a"), Peer(srv.base, "b")
    await a.connect()
    await b.connect()
    try:
        room = (await a.call("create", {}))["room"]
        assert (await b.call("join", {"room": room}))["ok"] is True
        for i in range(5):
            assert await a.call("message", {"room": room, "data": f"m{i}"}) == {"ok": True}
        ack = await a.call("message", {"room": "x" * 22, "data": "?"})
        assert ack["ok"] is False and ack["error"]["code"] == "not_in_room", ack
        ack = await a.call("nonsense", {})
        assert ack["ok"] is False and ack["error"]["code"] == "unknown_event", ack
        got = [(await b.next("message"))["data"] for _ in range(5)]
        assert got == [f"m{i}" for i in range(5)]
        assert not a.seen("message")  # never back to the sender
    finally:
        await a.disconnect()
        await b.disconnect()
        srv.stop()


# -- fastpath: frames handled in the read callback (syncread) -----------------------------------


@pytest.mark.parametrize("off", ["", "syncread"])
async def test_fast_loop_handles_frames_in_the_read_callback_in_order(fast_server, monkeypatch,
                                                                      off):
    """With syncread, a frame is handled in aiohttp's read callback (no task runs the
    handler) while the connection's task waits with nothing to read; a handler that has to
    wait is finished by that task, and the frames behind it wait their turn: a burst of
    alternating waiting and quick events is handled exactly in the order sent. Off: every
    frame in the connection's task."""
    import aiohttp

    if off:
        monkeypatch.setenv(OFF, off)
    sio = fast_server["sio"]
    sio.async_handlers = False  # as Signaling's server: handlers run in the reading code
    order: list[int] = []
    in_task: list[bool] = []

    @sio.on("quick")
    async def quick(sid, n):
        frame = sys._getframe()
        names = set()
        while frame is not None:
            names.add(frame.f_code.co_name)
            frame = frame.f_back
        in_task.append("on_parsed" not in names)
        order.append(n)

    @sio.on("slow")
    async def slow(sid, n):
        # a handler that waits, in a timeout (which needs a current task, as redis' client
        # does), one in three times until the timeout fires
        assert asyncio.current_task() is not None
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(0.005 if n % 9 else 1)
        except TimeoutError:
            n = -n - 1000
        order.append(n)

    n = 60
    async with aiohttp.ClientSession() as session:
        ws = await _raw_connect(session, fast_server["url"])
        await ws.send_str('42["quick",-1]')
        await _until(lambda: order == [-1], 5)
        for i in range(n):  # written at once: parsed in one or a few reads
            await ws.send_str(f'42["{"slow" if i % 3 == 0 else "quick"}",{i}]')
        await _until(lambda: len(order) == n + 1, 10)
        await ws.send_str('42["quick",-2]')
        await _until(lambda: len(order) == n + 2, 5)
        await ws.close()
    assert order == [-1, *(i if i % 9 else -i - 1000 for i in range(n)), -2]
    if off:
        assert all(in_task)
    else:  # the first and the last quick events came alone, to a parked task
        assert in_task[0] is False and in_task[-1] is False


async def test_fast_loop_reads_in_the_callback_until_the_client_closes(fast_server):
    """A client that closes, or drops its TCP connection, while the connection's task is
    parked: the server sees it at once (disconnect handler), not at the ping timeout."""
    import aiohttp

    events = fast_server["events"]
    async with aiohttp.ClientSession() as session:
        ws = await _raw_connect(session, fast_server["url"])
        await _until(lambda: [e for e, _ in events].count("connect") == 1, 5)
        await ws.close()
        waited = await _until(lambda: [e for e, _ in events].count("disconnect") == 1, 1.5)
        ws = await _raw_connect(session, fast_server["url"])
        await _until(lambda: [e for e, _ in events].count("connect") == 2, 5)
        ws._writer.transport.abort()  # no close frame: the TCP connection ends
        waited = max(waited, await _until(
            lambda: [e for e, _ in events].count("disconnect") == 2, 1.5))
    assert waited < 1.0  # the ping window is 1 + 1 s


async def test_fast_loop_answers_websocket_pings_between_frames_read_in_the_callback(
        fast_server):
    """A WebSocket-level ping (not engine.io's) reaching a parked connection goes to aiohttp's
    receive, which answers it; the frames after it are still handled, in order."""
    import aiohttp

    sio = fast_server["sio"]
    sio.async_handlers = False
    order: list[int] = []

    @sio.on("quick")
    async def quick(sid, n):
        order.append(n)

    pongs = []
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"{fast_server['url']}/socket.io/?EIO=4&transport=websocket", autoping=False)
        assert (await ws.receive_str(timeout=5)).startswith("0{")
        await ws.send_str("40")
        assert (await ws.receive_str(timeout=5)).startswith("40")
        for round_ in range(3):
            await ws.send_str(f'42["quick",{2 * round_}]')
            await ws.ping(f"hi{round_}".encode())
            await ws.send_str(f'42["quick",{2 * round_ + 1}]')
            await _until(lambda: len(order) == 2 * round_ + 2, 5)
            while True:  # the pong, past engine.io's own pings (answered)
                msg = await ws.receive(timeout=5)
                if msg.type is aiohttp.WSMsgType.PONG:
                    pongs.append(msg.data)
                    break
                if msg.type is aiohttp.WSMsgType.TEXT and msg.data == "2":
                    await ws.send_str("3")
        await ws.close()
    assert order == list(range(6))
    assert pongs == [b"hi0", b"hi1", b"hi2"]


def test_rest_of_a_handler_finishes_in_the_task_and_classifies_errors():
    """fastpath._Rest: a coroutine started outside a task (it yielded a future) is finished
    by the task awaiting it, with the value it is sent; its errors are what ``failed`` says;
    a cancel goes through to it."""
    from engineio import exceptions as eio_exceptions

    from incognito_onion import fastpath

    async def main():
        loop = asyncio.get_running_loop()
        seen = []

        async def handler(fut, then=None):
            seen.append(await fut)
            await asyncio.sleep(0)
            if then is not None:
                raise then

        def failed(err):
            seen.append(type(err).__name__)
            return fastpath._STOP if isinstance(err, eio_exceptions.SocketIsClosedError) \
                else None

        async def started(then=None):
            fut = loop.create_future()
            coro = handler(fut, then)
            rest = fastpath._Rest(coro, coro.send(None), failed)
            loop.call_soon(fut.set_result, "value")
            return await rest

        assert await started() is None
        assert await started(ValueError("x")) is None
        assert await started(eio_exceptions.SocketIsClosedError()) is fastpath._STOP
        assert seen == ["value", "value", "ValueError", "value", "SocketIsClosedError"]

        fut = loop.create_future()
        coro = handler(fut)
        task = asyncio.ensure_future(fastpath._Rest(coro, coro.send(None), failed))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert coro.cr_frame is None  # the handler itself was cancelled and ended

    runtime.run(main())


# -- fastpath: engine.io's service task in slices ------------------------------------------------


class _SweptSocket:
    """What the service task sees of an engine.io socket: closed/closing, check_ping_timeout."""

    def __init__(self, sid: str, closed: bool = False, closing: bool = False) -> None:
        self.sid, self.closed, self.closing, self.checks = sid, closed, closing, 0

    async def check_ping_timeout(self) -> bool:
        self.checks += 1
        return True


async def test_service_task_sweeps_every_client_once_per_ping_timeout_in_slices(monkeypatch):
    """ServiceSlicedServer's sweep: each open client checked once per ping_timeout, closed
    ones forgotten, closing ones left alone; it waits SERVICE_SLICES times per pass (not once
    per client), and stops at once when told to."""
    from incognito_onion import fastpath

    eio = fastpath.ServiceSlicedServer(async_mode="aiohttp", ping_timeout=0.3)
    socks = {f"s{i}": _SweptSocket(f"s{i}") for i in range(100)}
    socks["gone"] = _SweptSocket("gone", closed=True)
    socks["leaving"] = _SweptSocket("leaving", closing=True)
    eio.sockets = dict(socks)
    waits = []
    real_wait_for = asyncio.wait_for

    async def counting_wait_for(aw, timeout):
        waits.append(timeout)
        return await real_wait_for(aw, timeout)

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    monkeypatch.setattr(asyncio, "wait_for", counting_wait_for)  # what fastpath calls
    task = asyncio.ensure_future(eio._service_task())
    await _until(lambda: all(socks[f"s{i}"].checks >= 2 for i in range(100)), 5)
    monkeypatch.undo()
    took = loop.time() - t0
    eio.service_task_event.set()
    await real_wait_for(task, 1)  # stops within one slice's pause
    assert "gone" not in eio.sockets and "leaving" in eio.sockets
    assert socks["leaving"].checks == 0
    # two passes at least, each over ~ping_timeout: checked about once per ping_timeout
    assert all(socks[f"s{i}"].checks <= 1 + took / 0.3 + 1 for i in range(100))
    assert waits and all(abs(w - 0.3 / fastpath.SERVICE_SLICES) < 1e-9 for w in waits)
    assert len(waits) <= (took / 0.3 + 1) * fastpath.SERVICE_SLICES + 1  # not one per client
