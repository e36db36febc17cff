"""Fixtures and helpers for the web client tests (tests/test_client_*.py).

- ``turn_server``: ``incognito-onion up --no-tor`` WITH its supervised coturn (TURN over TCP on
  127.0.0.1, relay-only ICE), on free ports, one per test module.
- ``recorder``: an HTTP + WebSocket reverse proxy in front of a server that records every byte
  the server relays (socket.io frames both ways), so a test can prove the server saw no
  plaintext. Browsers open the proxy's origin.
- ``webchromium``: a Chromium (``tests/support/browsers.py``'s ``chromium_factory``) with a small
  fake camera picture and autoplay allowed.
- :class:`Participant`: one person in a Playwright browser context: joins, reads getStats,
  records console messages, CSP violations and every request the page makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.browsers import poll_page
from tests.support.coturn import free_tcp_port, free_udp_range
from tests.support.server import (
    REPO,
    LiveServer,
    _server_env,
    free_port,
    server_command,
    spawn_up,
)

ARTIFACTS = REPO / "test-artifacts" / "webclient"

# --------------------------------------------------------------------------------------------
# the server, with TURN
# --------------------------------------------------------------------------------------------


def start_turn_server(tmp_path: Path, env: dict[str, str] | None = None,
                      timeout: float = 30.0) -> LiveServer:
    """``up --no-tor`` with coturn on a free TCP port and a free UDP relay range."""
    last = ""
    for _attempt in range(3):
        port = free_port()
        turn_port = free_tcp_port()
        lo, hi = free_udp_range(size=64)
        state_dir = tmp_path / f"state-{port}"
        state_dir.mkdir(parents=True, exist_ok=True)
        full_env = _server_env({
            "INCOGNITO_TURN_PORT": str(turn_port),
            "INCOGNITO_TURN_MIN_PORT": str(lo),
            "INCOGNITO_TURN_MAX_PORT": str(hi),
            **(env or {}),
        })
        cmd = [*server_command(), "up", "--no-tor", "--host", "127.0.0.1", "--port", str(port),
               "--state-dir", str(state_dir)]
        srv = spawn_up(cmd, full_env, port, state_dir, timeout, env)
        if srv.url:
            return srv
        stop_server(srv)
        last = srv.output()
        if "in use" not in last.lower():
            break
    raise AssertionError(f"server with TURN did not start:\n{last}")


def stop_server(srv: LiveServer) -> int | None:
    """SIGTERM the server (it stops its coturn), SIGKILL by PID after 15 s."""
    if srv.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(srv.proc.pid, signal.SIGTERM)
        try:
            srv.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait(5)
    for r in (srv._stdout, srv._stderr):
        if r is not None:
            r.join(5)
    return srv.proc.returncode


# WEBCLIENT_NO_TURN=1 runs the browser tests without coturn (direct loopback ICE), to tell a
# client bug from a TURN one; the relay-only assertions are then skipped.
NO_TURN = os.environ.get("WEBCLIENT_NO_TURN") == "1"


@pytest.fixture(scope="module")
def turn_server(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server with TURN per test module; the module's ``WEB_SERVER_ENV`` adds settings."""
    env = dict(getattr(request.module, "WEB_SERVER_ENV", {}) or {})
    if NO_TURN:
        env["INCOGNITO_TURN_ENABLED"] = "false"
    srv = start_turn_server(tmp_path_factory.mktemp("webserver"), env=env)
    try:
        yield srv
    finally:
        stop_server(srv)


# --------------------------------------------------------------------------------------------
# recording proxy
# --------------------------------------------------------------------------------------------

_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailers", "transfer-encoding", "upgrade", "host", "content-length",
        "content-encoding", "sec-websocket-key", "sec-websocket-version",
        "sec-websocket-extensions", "sec-websocket-accept"}


@dataclass
class _WsPair:
    ws: Any
    down: list[str] = field(default_factory=list)
    held: bool = False
    rate: float | None = None  # bytes/s toward the browser (None = as fast as it goes)
    binary_down: list[bytes] = field(default_factory=list)
    upstream_port: int = 0  # the local port of the proxy's connection to the server


_MEDIA_EVENT = re.compile(r'^451-(?:/[^,]*,)?\d*\["media",\{.*"stream":"([av])"')


class Recorder:
    """Reverse proxy to ``upstream`` that keeps every socket.io payload in ``frames``."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.frames: list[tuple[str, str]] = []  # (direction, text)
        self.base = ""
        self._runner: Any = None
        self._session: Any = None
        self._pairs: list[_WsPair] = []
        self._released = asyncio.Event()

    async def drop_silently(self, peer: str) -> int:
        """Cuts the browser side of the WebSocket(s) of peer ``peer`` (found by its join ack)
        while keeping the server side open and silent, like a network that died without a FIN:
        the browser reconnects at once, the server has not noticed yet, so the browser's
        ``join`` with its resume token takes its old peer over. Returns how many were cut."""
        pairs = self._pairs_of(peer)
        for pair in pairs:
            pair.held = True
            await pair.ws.close()
        return len(pairs)

    def _pairs_of(self, peer: str) -> list[_WsPair]:
        """The open WebSockets of peer ``peer`` (found by its join ack)."""
        own = re.compile(r'"peer":\s*"' + re.escape(peer) + r'",\s*"host"')
        return [pair for pair in self._pairs
                if not pair.ws.closed and any(own.search(t) for t in pair.down)]

    def throttle(self, peer: str, bytes_per_s: float | None) -> int:
        """Slows what the server sends to peer ``peer``'s browser to ``bytes_per_s`` (a thin
        link: the proxy reads from the server only as fast as that, so the server feels the
        backpressure); None lifts it. Returns how many WebSockets it applies to."""
        pairs = self._pairs_of(peer)
        for pair in pairs:
            pair.rate = bytes_per_s
        return len(pairs)

    def upstream_port(self, peer: str) -> int:
        """The local port of the proxy's open connection to the server for peer ``peer``'s
        WebSocket (to find which server process holds it)."""
        ports = [pair.upstream_port for pair in self._pairs_of(peer)]
        assert len(ports) == 1, (peer, ports)
        return ports[0]

    def binary(self, direction: str | None = None) -> list[bytes]:
        """Every binary WebSocket frame relayed (both ways, or ``up`` / ``down``)."""
        return [t.encode("latin-1") for d, t in self.frames
                if d.endswith("-bin") and (direction is None or d.startswith(direction))]

    def media_bytes(self, since: int = 0) -> dict[str, int]:
        """Bytes of relay media sent up by the browsers, per stream (``a``, ``v``), counting
        each chunk's event frame and its binary attachment, from ``frames[since:]`` on."""
        out = {"a": 0, "v": 0}
        stream = None
        for d, t in self.frames[since:]:
            if d == "up":
                m = _MEDIA_EVENT.match(t)
                stream = m and m.group(1)
                if stream:
                    out[stream] += len(t)
            elif d == "up-bin" and stream:
                out[stream] += len(t)
                stream = None
        return out

    def relayed(self) -> str:
        return "\n".join(t for _, t in self.frames)

    async def start(self) -> str:
        import aiohttp
        from aiohttp import web

        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.base = f"http://127.0.0.1:{port}"
        return self.base

    async def close(self) -> None:
        self._released.set()
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()

    async def _handle(self, request: Any) -> Any:
        import aiohttp
        from aiohttp import WSMsgType, web

        url = self.upstream + request.rel_url.path_qs
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Host"] = request.host
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            pair = _WsPair(ws)
            self._pairs.append(pair)
            # each WebSocket from a local port of its own choosing: with several server
            # processes the kernel picks one by the connection's ports, and a port the
            # kernel hands out again after a close lands on the same process again
            port = free_port()
            async with aiohttp.ClientSession(
                    auto_decompress=False,
                    connector=aiohttp.TCPConnector(local_addr=("127.0.0.1", port))) as session, \
                    session.ws_connect(url.replace("http", "ws", 1), headers=headers) as up:
                pair.upstream_port = port
                async def pump(src: Any, dst: Any, tag: str) -> None:
                    with contextlib.suppress(Exception):
                        async for msg in src:
                            if tag == "down" and pair.rate:
                                size = len(msg.data) if isinstance(msg.data, (str, bytes)) else 0
                                await asyncio.sleep(size / pair.rate)
                            if msg.type == WSMsgType.TEXT:
                                self.frames.append((tag, msg.data))
                                if tag == "down":
                                    pair.down.append(msg.data)
                                await dst.send_str(msg.data)
                            elif msg.type == WSMsgType.BINARY:
                                self.frames.append((tag + "-bin", msg.data.decode("latin-1")))
                                await dst.send_bytes(msg.data)
                            else:
                                break
                    if not pair.held:
                        await dst.close()

                await asyncio.gather(pump(ws, up, "up"), pump(up, ws, "down"),
                                     return_exceptions=True)
                if pair.held:  # the server must not notice: keep its side open, silent
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._released.wait(), 60)
            return ws
        body = await request.read()
        if request.path.startswith("/socket.io/") and body:
            self.frames.append(("up", body.decode("utf-8", "replace")))
        async with self._session.request(request.method, url, headers=headers, data=body,
                                         allow_redirects=False) as resp:
            data = await resp.read()
            if request.path.startswith("/socket.io/"):
                self.frames.append(("down", data.decode("utf-8", "replace")))
            out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
            return web.Response(status=resp.status, body=data, headers=out_headers)


@pytest.fixture
async def recorder(turn_server: LiveServer) -> AsyncIterator[Recorder]:
    rec = Recorder(turn_server.base)
    await rec.start()
    try:
        yield rec
    finally:
        await rec.close()


# --------------------------------------------------------------------------------------------
# browsers
# --------------------------------------------------------------------------------------------

CHROMIUM_EXTRA = ["--autoplay-policy=no-user-gesture-required",
                  "--auto-accept-this-tab-capture",
                  "--auto-select-desktop-capture-source=Entire screen"]


def fake_video(path: Path, width: int = 320, height: int = 180, frames: int = 30) -> Path:
    """A small looping Y4M picture (a moving bar) for Chromium's fake camera: cheap to encode."""
    if path.exists():
        return path
    header = f"YUV4MPEG2 W{width} H{height} F15:1 Ip A1:1 C420jpeg\n".encode()
    chunks = [header]
    cw, ch = width // 2, height // 2
    for i in range(frames):
        y = bytearray(b"\x50" * (width * height))
        x0 = (i * width // frames) % width
        for row in range(height):
            start = row * width + x0
            y[start:start + min(24, width - x0)] = b"\xe0" * min(24, width - x0)
        chunks += [b"FRAME\n", bytes(y), bytes([150]) * (cw * ch), bytes([115]) * (cw * ch)]
    path.write_bytes(b"".join(chunks))
    return path


@pytest.fixture
async def webchromium(chromium_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    y4m = fake_video(tmp_path_factory.getbasetemp() / "fake-camera-320x180.y4m")
    return await chromium_factory(
        extra_args=[*CHROMIUM_EXTRA, f"--use-file-for-fake-video-capture={y4m}"])


@pytest.fixture
def shots() -> Path:
    """Screenshots kept for people to look at: test-artifacts/webclient/ (gitignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


# Runs before any page script: records CSP violations where the test can read them.
CSP_WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""

# Per-link media facts from getStats, keyed by remote peer id.
STATS_JS = """
async () => {
  const app = globalThis.incognito;
  const out = {};
  if (!app || !app.mesh) return out;
  for (const [peer, link] of app.mesh.links) {
    const byId = new Map();
    (await link.pc.getStats()).forEach((s) => byId.set(s.id, s));
    let frames = 0, packets = 0, energy = 0, audioPackets = 0, pair = null;
    for (const s of byId.values()) {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        frames += s.framesDecoded || 0; packets += s.packetsReceived || 0;
      }
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        energy += s.totalAudioEnergy || 0; audioPackets += s.packetsReceived || 0;
      }
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        pair = byId.get(s.selectedCandidatePairId);
      }
    }
    if (!pair) for (const s of byId.values()) {
      const chosen = s.selected || (s.nominated && s.state === 'succeeded');
      if (s.type === 'candidate-pair' && chosen) pair = s;
    }
    const local = pair ? byId.get(pair.localCandidateId) : null;
    out[peer] = {
      state: link.pc.connectionState, frames, packets, energy, audioPackets,
      candidateType: local ? local.candidateType : null,
      relayProtocol: local ? (local.relayProtocol || null) : null,
    };
  }
  return out;
}
"""


@dataclass
class Participant:
    page: Any
    name: str
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    async def js(self, expr: str, arg: Any = None) -> Any:
        return await self.page.evaluate(expr, arg)

    async def wait(self, expr: str, arg: Any = None, timeout: float = 20.0,
                   why: str = "document.body.dataset.screen") -> Any:
        """Polls ``expr`` (an expression, or a function of ``arg``) until it is truthy.
        (Playwright's wait_for_function evaluates strings with eval, which the page's CSP
        refuses; page.evaluate goes through the debugger protocol.)"""
        async def failure(last: Any) -> BaseException:
            return AssertionError(f"{self.name}: timed out after {timeout:g} s waiting for "
                                  f"{expr} (last: {last!r}); {why}: "
                                  f"{await self.page.evaluate(why)}")

        return await poll_page(lambda: self.page.evaluate(expr, arg), timeout, 0.1, failure)

    async def screen(self) -> str:
        return await self.js("document.body.dataset.screen || ''")

    async def join(self, name: str | None = None, timeout: float = 20.0) -> None:
        await self.wait("document.body.dataset.screen === 'prejoin'", timeout=timeout)
        await self.page.fill("#name", name or self.name)
        await self.page.click("#join")
        await self.wait("document.body.dataset.screen === 'call'", timeout=timeout)

    async def self_id(self) -> str:
        return await self.js("incognito.sig && incognito.sig.self")

    async def stats(self) -> dict[str, dict[str, Any]]:
        return await self.js(STATS_JS)

    async def csp_violations(self) -> list[str]:
        return await self.js("window.__csp || []")


async def new_participant(browser: Any, url: str, name: str, *,
                          viewport: tuple[int, int] = (1280, 800)) -> Participant:
    ctx = await browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                    permissions=["camera", "microphone"])
    await ctx.add_init_script(CSP_WATCH)
    page = await ctx.new_page()
    p = Participant(page, name)
    page.on("console", lambda m: p.console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: p.errors.append(str(e)))
    page.on("request", lambda r: p.requests.append(r.url))
    await page.goto(url)
    return p


async def wait_media(parts: list[Participant], expect_peers: int, timeout: float = 45.0,
                     audio: bool = True) -> dict[str, dict[str, dict[str, Any]]]:
    """Waits until every participant decodes video (and, with ``audio``, gets audio energy)
    rising between two getStats samples from each of ``expect_peers`` others, over a TURN relay.
    Returns the last samples, or raises AssertionError with what was missing."""
    deadline = time.monotonic() + timeout
    first: dict[str, dict[str, dict[str, Any]]] = {}
    last: dict[str, dict[str, dict[str, Any]]] = {}
    while True:
        missing = []
        for p in parts:
            now = await p.stats()
            before = first.setdefault(p.name, now)
            last[p.name] = now
            ok_peers = 0
            for peer, s in now.items():
                b = before.get(peer)
                if b is None:
                    before[peer] = s
                    continue
                rising = s["frames"] > b["frames"] and s["frames"] > 0
                if audio:
                    rising = rising and s["energy"] > b["energy"]
                if rising and s["state"] == "connected":
                    ok_peers += 1
            if ok_peers < expect_peers:
                missing.append(f"{p.name}: {ok_peers}/{expect_peers} {json.dumps(now)}")
        if not missing:
            return last
        if time.monotonic() > deadline:
            raise AssertionError("media did not flow:\n" + "\n".join(missing))
        await asyncio.sleep(0.5)
