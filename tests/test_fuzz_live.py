"""Property-based abuse of a live server: malformed, oversized, binary and wrong-typed events
through python-socketio, and raw malformed Engine.IO / Socket.IO frames over a bare websocket.

Properties: every event with an ack gets a well-formed answer (``{ok: true, ...}`` or
``{ok: false, error: {code, message, event}}`` with a documented code, never ``internal``), every
refusal also arrives as an ``error`` event, the server only drops a connection for a frame larger
than the payload limit, it stays up (healthz ok, an honest pair in another room still relays), and
its RSS does not keep growing.

One server and one event loop (in a thread) serve all examples, so the whole file stays well under
a minute.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import string
import threading
import time

import aiohttp
import psutil
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.support.server import LiveServer, Peer, RawSocketIO

MAX_PAYLOAD = 1024
PING_INTERVAL, PING_TIMEOUT = 4, 6  # the shipped defaults, pinned: the raw probe relies on them
SERVER_ENV = {
    # no rate limiting: every event must be judged on its content
    "INCOGNITO_LIMITS_EVENTS_PER_SECOND": "100000",
    "INCOGNITO_LIMITS_EVENT_BURST": "1000000",
    "INCOGNITO_LIMITS_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD),
    "INCOGNITO_ROOMS_EMPTY_GRACE_SECONDS": "0",
    "INCOGNITO_SERVER_PING_INTERVAL": str(PING_INTERVAL),
    "INCOGNITO_SERVER_PING_TIMEOUT": str(PING_TIMEOUT),
}
KNOWN_CODES = {
    "bad_request", "payload_too_large", "rate_limited", "unknown_event", "room_not_found",
    "room_full", "room_locked", "not_in_room", "already_in_room", "peer_not_found", "not_host",
    "too_many_rooms", "server_full",
}
EVENTS = ["create", "join", "message", "connection", "connection/shareScreen",
          "connection/unshareScreen", "leave", "lock", "remove", "ice"]
# names that mean something to the socket.io libraries rather than to our protocol
SPECIAL = ["connect", "disconnect", "connect_error", "disconnecting", "*", "newListener",
           "error", "__proto__", "constructor", ""]
RSS_GROWTH_LIMIT = 60 * 1024 * 1024
ACK_TIMEOUT = 2.0
# the ack of one of the five probes send_raw ends with (ack ids 990..994)
PROBE_ACK = re.compile(r"^4399[0-4](\[.*)\Z", re.S)


class LoopThread:
    """An asyncio loop in a thread, so sync hypothesis tests can drive async clients."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_all(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class World:
    """Server, honest pair, fuzzing client and statistics shared by every example."""

    def __init__(self, server: LiveServer, lt: LoopThread):
        self.server = server
        self.lt = lt
        self.fuzzer: Peer | None = None
        self.fuzz_room = ""
        self.fuzz_peer = ""
        self.honest: list[Peer] = []
        self.honest_room = ""
        self.stats = {"events": 0, "ok": 0, "refused": 0, "dropped_big": 0, "raw_frames": 0,
                      "raw_closed": 0, "raw_answered": 0}
        self.codes: dict[str, int] = {}
        self.problems: list[str] = []
        # event name -> how many problems it caused; a name that misbehaved twice is not sent
        # again, so one bug (say, a name that is never acknowledged) cannot eat the time budget
        # or hide the others
        self.bad_names: dict[str, int] = {}

    def problem(self, event: str, text: str) -> None:
        self.problems.append(f"{event!r}: {text}")
        self.bad_names[event] = self.bad_names.get(event, 0) + 1

    async def setup(self) -> None:
        a = await Peer(self.server.base, "honest-A").connect()
        b = await Peer(self.server.base, "honest-B").connect()
        self.honest = [a, b]
        self.honest_room = (await a.create())["room"]
        await b.join(self.honest_room)
        await self.reconnect_fuzzer()

    async def reconnect_fuzzer(self) -> None:
        if self.fuzzer is not None:
            await self.fuzzer.disconnect()
        f = Peer(self.server.base, "fuzzer")
        f.dropped = asyncio.Event()

        @f.sio.on("disconnect")
        async def _dropped(*_):
            f.dropped.set()

        await f.connect()
        self.fuzzer = f
        ack = await f.call("create", {})
        assert ack.get("ok") is True, ack
        self.fuzz_room, self.fuzz_peer = ack["room"], ack["peer"]

    async def honest_relay(self) -> None:
        a, b = self.honest
        data = "".join(random.choices(string.ascii_letters, k=32))
        ack = await a.call("message", {"room": self.honest_room, "data": data})
        assert ack == {"ok": True}, f"honest client refused: {ack!r}"
        await b.next("message", data=data, timeout=5)
        ack = await b.call("connection", {"room": self.honest_room,
                                          "to": a.peer_ids[self.honest_room], "data": data})
        assert ack == {"ok": True}, ack
        await a.next("connection", data=data, timeout=5)

    def check_ack(self, event: str, ack) -> bool:
        """Record problems with one ack; returns whether it was a refusal."""
        if not isinstance(ack, dict) or not isinstance(ack.get("ok"), bool):
            self.problem(event, f"malformed ack {ack!r:.300}")
            return False
        if ack["ok"]:
            self.stats["ok"] += 1
            return False
        err = ack.get("error")
        if not isinstance(err, dict) or set(err) != {"code", "message", "event"}:
            self.problem(event, f"malformed error {ack!r:.300}")
            return True
        self.codes[err["code"]] = self.codes.get(err["code"], 0) + 1
        if err["code"] not in KNOWN_CODES:
            self.problem(event, f"code {err['code']!r} ({err['message']})")
        self.stats["refused"] += 1
        return True

    async def send_events(self, batch: list[tuple[str, object]]) -> None:
        f = self.fuzzer
        for event, data in batch:
            if self.bad_names.get(event, 0) >= 2:
                continue
            self.stats["events"] += 1
            errors_before = len(f.seen("error"))
            fut = asyncio.get_running_loop().create_future()

            def cb(*args, fut=fut):
                if not fut.done():
                    fut.set_result(args[0] if len(args) == 1 else list(args))

            size = approx_size(data)
            await f.sio.emit(event, data, callback=cb)
            dropped = asyncio.ensure_future(f.dropped.wait())
            done, _ = await asyncio.wait({fut, dropped}, timeout=ACK_TIMEOUT,
                                         return_when=asyncio.FIRST_COMPLETED)
            dropped.cancel()
            if fut in done:
                refused = self.check_ack(event, fut.result())
                if refused and len(f.seen("error")) != errors_before + 1:
                    # the error event is queued before the ack on the same socket
                    self.problem(event, "refusal without a matching error event "
                                 f"({len(f.seen('error')) - errors_before} error events)")
            elif f.dropped.is_set():
                if size <= MAX_PAYLOAD:
                    self.problem(event, f"connection dropped for a {size}-byte event {data!r:.200}")
                self.stats["dropped_big"] += 1
                await self.reconnect_fuzzer()
                f = self.fuzzer
            else:
                self.problem(event, f"no ack in {ACK_TIMEOUT} s for {data!r:.200}")
                await self.reconnect_fuzzer()
                f = self.fuzzer

    async def send_raw(self, frames: list[str | bytes]) -> None:
        async with RawSocketIO(self.server) as raw:
            await raw.handshake()
            for frame in frames:
                self.stats["raw_frames"] += 1
                try:
                    await raw.send(frame)
                except (ConnectionResetError, aiohttp.ClientError, RuntimeError):
                    break
            # a probe: either the server still answers on this connection or it closed it.
            # Five tries with their own ack ids: a packet may have announced up to four binary
            # attachments, and the server takes whatever frames come next as those.
            try:
                for i in range(5):
                    await raw.ws.send_str(f"4299{i}" + json.dumps(["nonsense", {}]))
                # after an Engine.IO close packet from the client the session is over: the
                # probes go unanswered and python-engineio lets go of the websocket only when
                # its writer's wait for packets times out (ping_interval + ping_timeout)
                wait = 8 if not any(map(is_eio_close, frames)) else PING_INTERVAL + PING_TIMEOUT + 3
                deadline = asyncio.get_running_loop().time() + wait
                while True:
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0:
                        raise TimeoutError
                    frame = await raw.recv(timeout=left)
                    # closed: the websocket, or the Engine.IO session (a close packet)
                    if frame is None or frame == "1":
                        self.stats["raw_closed"] += 1
                        return
                    # only the probes' own acks (ids 990..994): a fuzzed frame may have asked
                    # for an ack with any id, "4399999..." included
                    m = PROBE_ACK.match(frame) if isinstance(frame, str) else None
                    if m is not None:
                        ack = json.loads(m.group(1))[0]
                        if not (isinstance(ack, dict) and ack.get("ok") is False
                                and ack["error"]["code"] == "unknown_event"):
                            self.problem("raw", f"probe: unexpected ack {ack!r:.200}")
                        self.stats["raw_answered"] += 1
                        return
            except (ConnectionResetError, aiohttp.ClientError, RuntimeError):
                self.stats["raw_closed"] += 1
            except TimeoutError:
                self.problem("raw", f"neither an answer nor a close after {frames!r:.300}")


def is_eio_close(frame: str | bytes) -> bool:
    """Whether the server takes this frame for an Engine.IO close packet: python-engineio reads a
    text frame's packet type with ``int()`` of its first character (so ``"1..."``, and any other
    Unicode digit one)."""
    if not isinstance(frame, str) or not frame or frame[0] == "b":
        return False
    try:
        return int(frame[0]) == 1
    except ValueError:
        return False


def approx_size(data) -> int:
    def walk(x) -> int:
        if isinstance(x, bytes):
            return len(x)
        if isinstance(x, str):
            return len(x.encode("utf-8", "surrogatepass"))
        if isinstance(x, dict):
            return sum(walk(k) + walk(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return sum(walk(v) for v in x)
        return 8

    return walk(data)


# ------------------------------------------------------------------------------------------
# strategies

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=12,
)
big_strings = st.builds(
    lambda n, ch: ch * n,
    st.integers(MAX_PAYLOAD - 2, 6 * MAX_PAYLOAD),
    st.sampled_from(["x", "\u20ac", "\U0001f600", "\x00", "\\", '"']),
)
ids = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=14, max_size=24)


def field_values(world_ids: st.SearchStrategy) -> st.SearchStrategy:
    return (world_ids | ids | st.text(max_size=64) | big_strings | st.binary(max_size=256)
            | json_values | st.booleans())


def event_strategy(world: World) -> st.SearchStrategy:
    real_ids = st.sampled_from([world.fuzz_room, world.fuzz_peer, world.honest_room,
                                *(p.peer_ids[world.honest_room] for p in world.honest)])
    names = st.sampled_from(EVENTS) | st.sampled_from(SPECIAL) | st.text(max_size=50)
    envelope = st.dictionaries(
        st.sampled_from(["room", "to", "peer", "data", "meta", "resume", "locked"])
        | st.text(max_size=8),
        field_values(real_ids),
        max_size=6,
    )
    payload = (envelope | json_values | st.binary(max_size=512) | big_strings
               | st.tuples(envelope, json_values)
               | st.lists(json_values, min_size=2, max_size=5).map(tuple)
               | st.builds(lambda v: {"data": {"deep": [[[v]]] * 10}}, json_values))
    return st.tuples(names, payload)


packet_types = st.sampled_from(["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", ""])
raw_text_frames = st.one_of(
    st.text(max_size=120),
    st.builds(lambda t, ns, i, body: "4" + t + ns + i + body, packet_types,
              st.sampled_from(["", "/", "/x,", "/admin,", ","]),
              st.sampled_from(["", "1", "99999999999999999999", "-1", "01"]),
              st.text(max_size=80) | json_values.map(json.dumps)),
    json_values.map(lambda v: "42" + json.dumps(v)),
    st.tuples(st.sampled_from(EVENTS + ["x"]), json_values).map(
        lambda ev: "42" + json.dumps(list(ev))),
    # binary event announcing attachments that never come, or the wrong number of them
    st.builds(lambda n, ev: f"45{n}-" + json.dumps([ev, {"_placeholder": True, "num": 0}]),
              st.sampled_from(["1", "2", "0", "999", "-1", "x"]), st.sampled_from(EVENTS)),
    st.sampled_from(["2", "3", "5", "6", "1", "40", "41", "40/nope,", "43", "430[]",
                     "42[]", "42[null]", "42[1]", "42{}", '42["message"', "4" * 50]),
    st.integers(MAX_PAYLOAD, 40 * MAX_PAYLOAD).map(
        lambda n: '42["message",{"room":"' + "x" * n + '"}]'),
)
raw_frames = st.one_of(raw_text_frames, raw_text_frames, st.binary(max_size=300))


# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(shared_server: LiveServer):
    lt = LoopThread()
    w = World(shared_server, lt)
    try:
        lt.run(w.setup())
        yield w
    finally:
        async def close_all():
            for p in [*w.honest, *([w.fuzzer] if w.fuzzer else [])]:
                await p.disconnect()

        try:
            lt.run(close_all(), 15)
        finally:
            lt.close()


def settle_rss(proc: psutil.Process) -> int:
    return proc.memory_info().rss


def test_fuzz_live(world: World, shared_server: LiveServer):
    started = time.monotonic()
    proc = psutil.Process(shared_server.pid)
    rnd = random.Random(1234)

    # warm-up: every code path once, plenty of times, so allocator pools and caches are filled
    warm = []
    for i in range(600):
        ev = rnd.choice(EVENTS + ["nope"])
        warm.append((ev, rnd.choice([
            {"room": world.fuzz_room, "data": "x" * rnd.randint(0, 2 * MAX_PAYLOAD)},
            {"room": world.honest_room, "to": world.fuzz_peer, "data": str(i)},
            {"room": 5}, "junk", b"\x00" * 64, ({}, {}), {"room": world.fuzz_room},
        ])))
    world.lt.run(world.send_events(warm), 60)
    world.lt.run(world.honest_relay())
    rss0 = settle_rss(proc)
    fds0 = proc.num_fds()

    strategy = event_strategy(world)

    # no shrinking: the problems are collected per event (and named in the failure), and a
    # shrink on a live server could take minutes
    @settings(max_examples=120, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(strategy, min_size=1, max_size=12))
    def fuzz_events(batch):
        world.lt.run(world.send_events(batch), 60)
        assert shared_server.alive(), "server died\n" + shared_server.output()

    @settings(max_examples=60, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.lists(raw_frames, min_size=1, max_size=10))
    # a string where the event array belongs, with an ack id whose digits start like the
    # probes' (the server took it for event "\u00f2"; the probe then misread its ack)
    @example(['4299999999999999999999"\\u00f2\\u00cd\\u00fa"', "4299" + json.dumps("x"),
              '450-["join", {"_placeholder": true, "num": 0}]'])
    def fuzz_raw(frames):
        import os
        t = time.monotonic()
        if os.environ.get("FUZZ_DEBUG"):
            print("RAW", repr(frames)[:300], "cpu", proc.cpu_percent(), flush=True)
        world.lt.run(world.send_raw(frames), 30)
        if os.environ.get("FUZZ_DEBUG"):
            print("  took", round(time.monotonic() - t, 2), flush=True)
        assert shared_server.alive(), "server died\n" + shared_server.output()

    fuzz_events()
    world.lt.run(world.honest_relay())
    fuzz_raw()
    world.lt.run(world.honest_relay())

    # soak: a few thousand more events of the same kinds, then look at memory
    soak = []
    for _ in range(2500):
        n = rnd.randint(0, 3 * MAX_PAYLOAD)
        soak.append((rnd.choice(EVENTS + ["nope", "x" * 60]), rnd.choice([
            {"room": world.fuzz_room, "data": "\u20ac" * (n // 3)},
            {"room": world.honest_room, "to": rnd.choice(["A" * 16, world.fuzz_peer]),
             "data": "y" * n},
            {"room": "".join(rnd.choices(string.ascii_letters, k=22)), "data": "z"},
            {"meta": b"\x01" * n}, [1, 2, {"a": [None] * 20}], ({"room": 1}, "extra"),
            {"room": world.fuzz_room, "locked": rnd.choice([True, False, "x"])},
        ])))
    world.lt.run(world.send_events(soak), 120)
    assert not world.problems, (
        f"{len(world.problems)} problems, by event name {world.bad_names}:\n"
        + "\n".join(world.problems[:30])
    )

    # the server is up and serving, and an honest pair still relays
    async def healthz():
        async with aiohttp.ClientSession() as http, http.get(shared_server.base + "/healthz") as r:
            return r.status, await r.json()

    status, body = world.lt.run(healthz())
    assert status == 200 and body.get("status") == "ok", body
    world.lt.run(world.honest_relay())
    assert shared_server.alive()

    # it answered refusals, of the kinds expected
    assert world.stats["refused"] > 1000, (world.stats, world.codes)
    for code in ("bad_request", "unknown_event", "payload_too_large"):
        assert world.codes.get(code, 0) > 0, (code, world.codes)
    assert world.stats["raw_frames"] > 100, world.stats

    # memory: bounded growth after the warm-up
    rss1 = settle_rss(proc)
    growth = rss1 - rss0
    assert growth < RSS_GROWTH_LIMIT, (
        f"server RSS grew {growth / 2**20:.1f} MiB over {world.stats['events']} events "
        f"({rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB)"
    )

    # sockets: the raw connections were closed, no descriptor leak
    deadline = time.monotonic() + 15
    while proc.num_fds() > fds0 + 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.num_fds() <= fds0 + 20, f"server fds {fds0} -> {proc.num_fds()}"
    print(f"fuzz: {world.stats} codes={world.codes} rss {rss0 / 2**20:.1f} -> "
          f"{rss1 / 2**20:.1f} MiB in {time.monotonic() - started:.1f} s")
