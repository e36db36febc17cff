"""Benchmark: glass-to-glass latency, frames/s received and bytes/s sent per participant, for 3
participants through the onion media relay over the private Tor network, beside the same call
over WebRTC through TURN on loopback.

    .venv/bin/python bench/relay_media.py [--scenario relay|webrtc|both] [--seconds 20]
                                          [--warmup 8] [--json]

Every sending page gets a camera whose picture is the time: an init script replaces the video of
``navigator.mediaDevices.getUserMedia`` with a ``canvas.captureStream(30)`` track on which
``Date.now()`` (mod 2^32) is drawn every frame as 40 black/white blocks (32 bits of time, 8
check bits). Every page samples its remote ``<video>`` elements with requestVideoFrameCallback,
draws each presented frame to a canvas, reads the blocks back and records now − drawn time (one
machine, one clock). Nothing else is injected: the app's own code (relay.js, the mesh,
signaling, encryption) carries the media.

- ``relay``: ``incognito-onion up`` (its own tor and coturn) on the private Tor network of
  tests/support/tornet.py; two Chromium senders that reach it only through the network's
  SocksPort (they call each other by WebRTC through the onion's TURN) and one Tor-Browser-like
  Firefox (no WebRTC, no camera: TOR_LIKE of tests/test_media_relay_browsers.py, SOCKS5 with
  remote DNS) that gets both through the onion media relay.
- ``webrtc``: ``up --no-tor`` with its coturn (relay-only ICE, TURN over TCP) on loopback, three
  Chromium participants, each sending to and receiving from both others.

Prints per participant and remote sender: glass-to-glass p50/p90 (ms, sample count), frames/s
presented (requestVideoFrameCallback) and decoded (getVideoPlaybackQuality), the path, and per
participant bytes/s sent (relay: ``incognito.sig.mediaStats.sentBytes``, ciphertext to the
server; WebRTC: outbound-rtp ``bytesSent`` over all links), over ``--seconds`` after
``--warmup``. Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from tests.support.browsers import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_FLAGS,
    FIREFOX,
    FIREFOX_AUTOPLAY,
    FIREFOX_TEST_PREFS,
    FIREFOX_TOR_LIKE,
    Firefox,
    _firefox_env,
    _kill_pids,
    _user_js,
    browser_roots,
    poll_page,
)
from tests.support.onion_up import Up  # noqa: E402
from tests.support.server import free_port  # noqa: E402
from tests.support.tornet import TOR, TOR_GENCERT, build_network  # noqa: E402
from tests.support.webclient import (  # noqa: E402
    CHROMIUM_EXTRA,
    new_participant,
    start_turn_server,
    stop_server,
    wait_media,
)

# The camera: a canvas whose picture carries Date.now(). 8 x 5 blocks of 40 x 36 px on 320 x 180:
# bits 0-31 the time in ms mod 2^32 (most significant first), bits 32-39 a check byte (XOR of
# the four time bytes, XOR 0x5A), so a frame torn or smeared by the codec is rejected, not read.
CODE_JS = r"""
const G2G_W = 320, G2G_H = 180, G2G_COLS = 8, G2G_ROWS = 5;
function g2gBits(t) {
  const b = [(t >>> 24) & 255, (t >>> 16) & 255, (t >>> 8) & 255, t & 255];
  const check = b[0] ^ b[1] ^ b[2] ^ b[3] ^ 0x5a;
  const bits = [];
  for (const x of [...b, check]) for (let i = 7; i >= 0; i--) bits.push((x >> i) & 1);
  return bits;
}
"""

CAMERA_JS = "(() => {" + CODE_JS + r"""
(() => {
  const md = navigator.mediaDevices;
  if (!md || typeof md.getUserMedia !== 'function') return;
  const real = md.getUserMedia.bind(md);
  let canvas = null;
  function draw() {
    const ctx = canvas.getContext('2d');
    const bits = g2gBits(Date.now() % 4294967296);
    const bw = G2G_W / G2G_COLS, bh = G2G_H / G2G_ROWS;
    for (let i = 0; i < bits.length; i++) {
      ctx.fillStyle = bits[i] ? '#fff' : '#000';
      ctx.fillRect((i % G2G_COLS) * bw, Math.floor(i / G2G_COLS) * bh, bw, bh);
    }
  }
  function camera() {
    if (!canvas) {
      canvas = document.createElement('canvas');
      canvas.width = G2G_W; canvas.height = G2G_H;
      draw();
      setInterval(draw, 1000 / 60);  // captureStream(30) takes at most 30 of them a second
    }
    return canvas.captureStream(30).getVideoTracks()[0];
  }
  md.getUserMedia = async (c) => {
    if (!c || !c.video) return real(c);
    const audio = c.audio ? (await real({ audio: c.audio })).getAudioTracks() : [];
    return new MediaStream([camera(), ...audio]);
  };
})();
})();
"""

# The sampler: every presented frame of every remote <video>, decoded; samples kept while on.
SAMPLER_JS = "(() => {" + CODE_JS + r"""
(() => {
  if (window.__g2g) return;
  const S = { on: false, peers: {} };
  window.__g2g = S;
  const canvas = document.createElement('canvas');
  canvas.width = G2G_W; canvas.height = G2G_H;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  function read(video) {
    ctx.drawImage(video, 0, 0, G2G_W, G2G_H);
    const px = ctx.getImageData(0, 0, G2G_W, G2G_H).data;
    const bw = G2G_W / G2G_COLS, bh = G2G_H / G2G_ROWS, bits = [];
    for (let i = 0; i < G2G_COLS * G2G_ROWS; i++) {
      const x0 = (i % G2G_COLS) * bw, y0 = Math.floor(i / G2G_COLS) * bh;
      let sum = 0, n = 0;
      for (let y = Math.round(y0 + bh / 4); y < y0 + 3 * bh / 4; y += 2) {
        for (let x = Math.round(x0 + bw / 4); x < x0 + 3 * bw / 4; x += 2) {
          const k = (y * G2G_W + x) * 4;
          sum += px[k] + px[k + 1] + px[k + 2]; n += 1;
        }
      }
      bits.push(sum / n / 3 > 127 ? 1 : 0);
    }
    let t = 0;
    for (let i = 0; i < 32; i++) t = t * 2 + bits[i];
    const want = g2gBits(t);
    for (let i = 32; i < 40; i++) if (want[i] !== bits[i]) return null;
    return t;
  }
  function sample(w, video, now, t) {
    const d = ((now % 4294967296) - t + 4294967296) % 4294967296;
    if (d >= 60000) { w.bad += 1; return; }
    w.samples.push(d);
    if (t !== w.lastT) w.distinct += 1;
    w.lastT = t;
  }
  function watch(id, video) {
    const w = S.peers[id] = S.peers[id] || { frames: 0, bad: 0, distinct: 0, lastT: -1,
      samples: [], gen: 0, lastCb: 0, armed: 0, video: null, polled: 0 };
    w.video = video;
    const gen = ++w.gen;
    w.armed = Date.now();
    const cb = () => {
      if (gen !== w.gen) return;
      w.lastCb = Date.now();
      if (S.on && video.videoWidth > 0) {
        w.frames += 1;
        let t = null;
        try { t = read(video); } catch (e) { t = null; }
        if (t === null) w.bad += 1; else sample(w, video, Date.now(), t);
      }
      video.requestVideoFrameCallback(cb);
    };
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(cb);
  }
  // Where requestVideoFrameCallback stays silent (headless Firefox does not fire it for these
  // videos): poll every 15 ms and count a frame whenever the drawn time changes.
  setInterval(() => {
    if (!S.on) return;
    const now = Date.now();
    for (const w of Object.values(S.peers)) {
      if (now - w.lastCb < 500 || !w.video || w.video.videoWidth === 0) continue;
      let t = null;
      try { t = read(w.video); } catch (e) { t = null; }
      if (t === null || t === w.lastT) continue;
      w.frames += 1;
      w.polled += 1;
      sample(w, w.video, Date.now(), t);
    }
  }, 15);
  setInterval(() => {
    const app = window.incognito;
    if (!app || !app.peers) return;
    for (const [id, p] of app.peers) {
      const w = S.peers[id];
      // a new element, or no callback for half a second (a new MediaSource may drop them): re-arm
      if (!w || w.video !== p.video
        || (Date.now() - w.lastCb > 500 && Date.now() - w.armed > 500)) watch(id, p.video);
    }
  }, 250);
  S.start = () => {
    for (const w of Object.values(S.peers)) {
      w.frames = 0; w.bad = 0; w.distinct = 0; w.samples = []; w.polled = 0;
    }
    S.on = true;
    return Date.now();
  };
})();
})();
"""

# One sample of what a page sent and played; an expression (a promise).
SNAPSHOT_JS = r"""
(async () => {
  const app = window.incognito, S = window.__g2g;
  const out = { t: Date.now(), relaySent: 0, rtcSent: 0, level: null, peers: {} };
  if (!app || !app.sig) return out;
  out.relaySent = app.sig.mediaStats.sentBytes;
  if (app.relaySender && app.relaySender.running) out.level = app.relaySender.stats.level;
  if (app.mesh) {
    for (const [, link] of app.mesh.links) {
      (await link.pc.getStats()).forEach((s) => {
        if (s.type === 'outbound-rtp') out.rtcSent += s.bytesSent || 0;
      });
    }
  }
  for (const [id, p] of app.peers) {
    const q = p.video.getVideoPlaybackQuality ? p.video.getVideoPlaybackQuality() : null;
    const w = S && S.peers[id];
    const path = p.tile.querySelector('.path');
    out.peers[id] = {
      name: p.name, path: path ? path.textContent : '', width: p.video.videoWidth,
      decoded: q ? q.totalVideoFrames - q.droppedVideoFrames : null,
      frames: w ? w.frames : 0, bad: w ? w.bad : 0, distinct: w ? w.distinct : 0,
      polled: w ? w.polled : 0,
      samples: w ? w.samples.slice() : [],
      chunkLatency: p.relay ? p.relay.stats.v.latencies.slice() : [],
    };
  }
  return out;
})()
"""

FF_TOR_LIKE = {**FIREFOX_TOR_LIKE, **FIREFOX_AUTOPLAY}  # as the tests' Tor Browser


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every finally


# -- processes, each stopped by PID ------------------------------------------------------------

def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _tree(pid: int) -> set[int]:
    try:
        return {pid} | {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def kill_pids(pids: set[int], grace: float = 3.0) -> None:
    _kill_pids(pids, grace)


class Chromiums:
    """Playwright Chromium browsers; every process each one started, noted by PID."""

    def __init__(self, pw: Any):
        self.pw = pw
        self.launched: list[tuple[Any, set[int]]] = []

    async def launch(self, args: list[str]) -> Any:
        before = _descendants()
        browser = await self.pw.chromium.launch(executable_path=CHROMIUM,
                                                args=[*CHROMIUM_FLAGS, *args])
        pids = browser_roots(_descendants() - before, "chrom")
        self.launched.append((browser, pids))
        CHROME_PIDS.update(pids)
        return browser

    async def close(self) -> None:
        for browser, pids in self.launched:
            for pid in list(pids):
                pids |= _tree(pid)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(browser.close(), 10)
            kill_pids({p for p in pids if psutil.pid_exists(p)})
            CHROME_PIDS.difference_update(pids)
        self.launched = []


def start_firefox(profile: Path, prefs: dict[str, Any], timeout: float = 60.0) -> Firefox:
    """Firefox ESR headless with a Marionette session (as tests/support/browsers.py does)."""
    binary = shutil.which(FIREFOX)
    if binary is None:
        raise RuntimeError("firefox-esr is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from marionette_driver.marionette import Marionette
    profile.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (profile / "user.js").write_text(_user_js({**FIREFOX_TEST_PREFS, **prefs,
                                               "marionette.port": port}))
    with open(profile.parent / f"{profile.name}.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, "--marionette", "--headless", "--no-remote", "--profile", str(profile)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=_firefox_env(profile))
    ff = Firefox(None, proc, profile, port, {proc.pid})
    FIREFOXES.append(ff)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"firefox exited with {proc.returncode} at start")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError("firefox: no Marionette") from None
            time.sleep(0.05)
    ff.client = Marionette(host="127.0.0.1", port=port)
    ff.client.start_session(timeout=max(1, int(deadline - time.monotonic())))
    ff.pids |= _tree(proc.pid)
    return ff


FIREFOXES: list[Firefox] = []
UPS: list[Up] = []
NETS: list[Any] = []
SERVERS: list[Any] = []
CHROME_PIDS: set[int] = set()


def stop_everything() -> None:
    """What a scenario did not stop itself (interrupted): browsers, up, servers, tor, by PID."""
    for pid in list(CHROME_PIDS):
        CHROME_PIDS.update(_tree(pid))
    kill_pids({p for p in CHROME_PIDS if psutil.pid_exists(p)})
    for ff in FIREFOXES:
        with contextlib.suppress(Exception):
            ff.close()
    for up in UPS:
        stop_up(up)
    for srv in SERVERS:
        with contextlib.suppress(Exception):
            stop_server(srv)
    for net in NETS:
        net.stop()


def stop_up(up: Up) -> None:
    kids = up.children()
    with contextlib.suppress(Exception):
        up.stop(20)
    kill_pids({k.pid for k in kids if k.is_running()})


# -- a participant, Chromium (Playwright) or Firefox (Marionette) ------------------------------

class Person:
    def __init__(self, name: str, page: Any = None, ff: Firefox | None = None):
        self.name, self.page, self.ff = name, page, ff
        self.id = ""

    async def js(self, expr: str) -> Any:
        if self.ff is not None:
            return await asyncio.to_thread(self.ff.run, "return " + expr.strip() + ";")
        return await self.page.evaluate(expr)

    async def wait(self, expr: str, timeout: float, what: str) -> Any:
        async def failure(last: Any) -> BaseException:
            return TimeoutError(f"{self.name}: no {what} within {timeout:g} s (last {last!r})")

        return await poll_page(lambda: self.js(expr), timeout, 0.3, failure)


async def chromium_person(browser: Any, url: str, name: str, timeout: float) -> Person:
    ctx = await browser.new_context(viewport={"width": 960, "height": 600},
                                    permissions=["camera", "microphone"])
    await ctx.add_init_script(CAMERA_JS)
    await ctx.add_init_script(SAMPLER_JS)
    p = await new_participant_ctx(ctx, url, name)
    await p.join(timeout=timeout)
    person = Person(name, page=p.page)
    person.id = await p.self_id()
    return person


async def new_participant_ctx(ctx: Any, url: str, name: str) -> Any:
    """tests.support.webclient.new_participant on a context we made (init scripts added)."""
    class _OneCtx:
        async def new_context(self, **_kw: Any) -> Any:
            return ctx
    return await new_participant(_OneCtx(), url, name)


async def firefox_person(ff: Firefox, url: str, name: str, timeout: float) -> Person:
    await asyncio.to_thread(ff.navigate, url)
    person = Person(name, ff=ff)
    await person.wait("document.body.dataset.screen === 'prejoin'", timeout, "pre-join screen")
    await asyncio.to_thread(ff.run, """
        document.querySelector('#name').value = arguments[0];
        document.querySelector('#join').click(); return true;""", name)
    await person.wait("document.body.dataset.screen === 'call'", timeout, "call screen")
    person.id = await person.wait("incognito.sig && incognito.sig.self", timeout, "peer id")
    await asyncio.to_thread(ff.run, SAMPLER_JS + "\nreturn true;")
    return person


# -- measuring ---------------------------------------------------------------------------------

def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def wait_frames(people: list[Person], senders: dict[str, str], timeout: float) -> None:
    """Until every person presents decodable frames from every sender (other than itself)."""
    deadline = time.monotonic() + timeout
    while True:
        for p in people:
            await p.js("(window.__g2g && window.__g2g.start(), true)")
        await asyncio.sleep(2)
        missing = []
        for p in people:
            snap = await p.js(SNAPSHOT_JS)
            for sid, sname in senders.items():
                if sid == p.id:
                    continue
                s = snap["peers"].get(sid)
                if not s or not s["samples"]:
                    missing.append(f"{p.name} <- {sname}: "
                                   + (json.dumps({k: v for k, v in s.items() if k not in (
                                       "samples", "chunkLatency")}) if s else "no tile"))
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("no decodable frames:\n" + "\n".join(missing))
        say("  waiting for frames: " + "; ".join(missing))


async def measure(people: list[Person], senders: dict[str, str], seconds: float) -> dict:
    started = {}
    for p in people:
        started[p.name] = await p.js("window.__g2g.start()")
    before = {p.name: await p.js(SNAPSHOT_JS) for p in people}
    await asyncio.sleep(seconds)
    after = {p.name: await p.js(SNAPSHOT_JS) for p in people}
    out: dict[str, Any] = {}
    for p in people:
        a, b = before[p.name], after[p.name]
        dt = (b["t"] - a["t"]) / 1000
        dt_frames = (b["t"] - started[p.name]) / 1000  # the sampler counts from start()
        row: dict[str, Any] = {
            "relay_bytes_per_s": round((b["relaySent"] - a["relaySent"]) / dt),
            "webrtc_bytes_per_s": round((b["rtcSent"] - a["rtcSent"]) / dt),
            "relay_ladder_level": b["level"], "from": {},
        }
        for sid, sname in senders.items():
            if sid == p.id or sid not in b["peers"]:
                continue
            s, s0 = b["peers"][sid], a["peers"].get(sid, {})
            decoded = (None if s["decoded"] is None or s0.get("decoded") is None
                       else round((s["decoded"] - s0["decoded"]) / dt, 1))
            lat = s["samples"]
            row["from"][sname] = {
                "path": s["path"], "width": s["width"],
                "g2g_p50_ms": _r(pct(lat, 0.5)), "g2g_p90_ms": _r(pct(lat, 0.9)),
                "g2g_max_ms": _r(max(lat) if lat else None), "samples": len(lat),
                "unreadable": s["bad"],
                "sampler": ("poll" if s["polled"] > s["frames"] / 2 else "rvfc"),
                "fps_presented": round(s["frames"] / dt_frames, 1),
                "fps_distinct": round(s["distinct"] / dt_frames, 1),
                "fps_decoded": decoded,
                "relay_chunk_latency_p50_ms": _r(pct(s["chunkLatency"], 0.5)),
            }
        out[p.name] = row
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x)


# -- the scenarios -----------------------------------------------------------------------------

async def run_relay(pw: Any, work: Path, args: argparse.Namespace) -> dict:
    from tests.test_tor_browsers import (
        chromium_create_room,
        chromium_tor_args,
        firefox_tor_prefs,
        launch_env,
    )

    if not (os.path.exists(TOR) and os.path.exists(TOR_GENCERT)):
        raise RuntimeError("tor and tor-gencert are needed (apt install tor)")
    say("relay: building the private Tor network...")
    net = build_network(work / "tornet")
    NETS.append(net)
    browsers = Chromiums(pw)
    up = None
    try:
        say(f"relay:   ready in {net.timings['ready']:.1f} s; starting up on it")
        up = Up(["--port", str(free_port()), "--state-dir", str(work / "onion-state")],
                launch_env(net))
        UPS.append(up)
        m = await asyncio.to_thread(up.wait_url, 150)
        socks = net.socks_port
        say(f"relay:   {m['host']} published; two Chromiums through SOCKS {socks}")
        cargs = [a for a in chromium_tor_args(socks, "-", m["host"])
                 if not a.startswith("--use-file-for-fake-video-capture")]
        browser = await browsers.launch(cargs)
        ctx = await browser.new_context(viewport={"width": 960, "height": 600},
                                        permissions=["camera", "microphone"])
        await ctx.add_init_script(CAMERA_JS)
        await ctx.add_init_script(SAMPLER_JS)

        class _OneCtx:
            async def new_context(self, **_kw: Any) -> Any:
                return ctx
        first, url = await chromium_create_room(_OneCtx(), m["base"], "Chromium One")
        await first.join(timeout=90)
        c1 = Person("Chromium One", page=first.page)
        c1.id = await first.self_id()
        c2 = await chromium_person(browser, url, "Chromium Two", 90)
        say("relay:   a Tor-Browser-like Firefox joins through SOCKS")
        ff = await asyncio.to_thread(start_firefox, work / "ff-profile",
                                     {**firefox_tor_prefs(socks, None), **FF_TOR_LIKE})
        f = await firefox_person(ff, url, "Tor Firefox", 90)
        people = [c1, c2, f]
        senders = {c1.id: c1.name, c2.id: c2.name}
        await wait_frames(people, senders, 120)
        say(f"relay:   media flows; warm-up {args.warmup:g} s, then {args.seconds:g} s measured")
        await asyncio.sleep(args.warmup)
        result = await measure(people, senders, args.seconds)
        return {"setup": ("up + its tor on the private Tor network; 2 Chromium senders and 1 "
                          "Tor-Browser-like Firefox (no WebRTC, no camera), all through the "
                          "SocksPort; Firefox gets both by the onion media relay, the Chromiums "
                          "each other by WebRTC through the onion TURN"),
                "participants": result}
    finally:
        await browsers.close()
        for ff in list(FIREFOXES):
            await asyncio.to_thread(ff.close)
            FIREFOXES.remove(ff)
        if up is not None:
            stop_up(up)
            UPS.remove(up)
        net.stop()
        NETS.remove(net)


async def run_webrtc(pw: Any, work: Path, args: argparse.Namespace) -> dict:
    say("webrtc: up --no-tor with coturn on loopback; three Chromiums")
    srv = start_turn_server(work / "webrtc", env={"INCOGNITO_ROOMS_EMPTY_GRACE_SECONDS": "0"})
    SERVERS.append(srv)
    browsers = Chromiums(pw)
    try:
        browser = await browsers.launch(CHROMIUM_EXTRA)
        people = []
        for name in ("Chromium A", "Chromium B", "Chromium C"):
            people.append(await chromium_person(browser, srv.url, name, 30))
        await wait_media([_Stats(p) for p in people], 2, timeout=60, audio=False)
        senders = {p.id: p.name for p in people}
        await wait_frames(people, senders, 60)
        say(f"webrtc: media flows; warm-up {args.warmup:g} s, then {args.seconds:g} s measured")
        await asyncio.sleep(args.warmup)
        result = await measure(people, senders, args.seconds)
        return {"setup": ("up --no-tor with coturn (relay-only ICE, TURN over TCP) on loopback; "
                          "3 Chromiums, a full WebRTC mesh"),
                "participants": result}
    finally:
        await browsers.close()
        stop_server(srv)
        SERVERS.remove(srv)


class _Stats:
    """What tests.support.webclient.wait_media needs of a participant."""

    def __init__(self, p: Person):
        self.name = p.name
        self._p = p

    async def stats(self) -> Any:
        from tests.support.webclient import STATS_JS
        return await self._p.page.evaluate(STATS_JS)


# -- output ------------------------------------------------------------------------------------

def print_report(results: dict, seconds: float) -> None:
    for scenario, r in results.items():
        print(f"\n== {scenario}: {r['setup']}")
        if "error" in r:
            print(f"   FAILED: {r['error']}")
            continue
        print(f"   {seconds:g} s window after warm-up. g2g = glass-to-glass (drawn -> presented)")
        print(f"   {'receiver':<14} {'<- sender':<14} {'path':<13} {'g2g p50':>8} {'p90':>6} "
              f"{'n':>5} {'bad':>4} {'fps pres':>8} {'distinct':>8} {'decoded':>7} {'w':>4} "
              f"{'chunk p50':>9} {'via':>4}")
        for name, row in r["participants"].items():
            for sender, s in row["from"].items():
                def f(x: Any, w: int) -> str:
                    return f"{'-' if x is None else x:>{w}}"
                print(f"   {name:<14} {sender:<14} {s['path'][:13]:<13} "
                      f"{f(s['g2g_p50_ms'], 8)} {f(s['g2g_p90_ms'], 6)} {s['samples']:>5} "
                      f"{s['unreadable']:>4} {s['fps_presented']:>8} {s['fps_distinct']:>8} "
                      f"{f(s['fps_decoded'], 7)} {s['width']:>4} "
                      f"{f(s['relay_chunk_latency_p50_ms'], 9)} {s['sampler']:>4}")
        print("   bytes/s sent (relay = ciphertext to the server; webrtc = outbound-rtp, all "
              "links)")
        for name, row in r["participants"].items():
            lvl = row["relay_ladder_level"]
            print(f"   {name:<14} relay {row['relay_bytes_per_s']:>8} B/s   webrtc "
                  f"{row['webrtc_bytes_per_s']:>8} B/s"
                  + ("" if lvl is None else f"   relay video ladder level {lvl}"))


async def main_async(args: argparse.Namespace) -> dict:
    from playwright.async_api import async_playwright

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-relay-media-") as tmp:
        work = Path(tmp)
        async with async_playwright() as pw:
            for scenario in (["relay", "webrtc"] if args.scenario == "both" else [args.scenario]):
                run = run_relay if scenario == "relay" else run_webrtc
                try:
                    results[scenario] = await run(pw, work, args)
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception as e:  # noqa: BLE001 - report it, go on with the next one
                    say(f"{scenario}: failed: {e}")
                    results[scenario] = {"setup": scenario, "error": str(e)}
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=["relay", "webrtc", "both"], default="both")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window (default 20)")
    ap.add_argument("--warmup", type=float, default=8.0,
                    help="seconds of media before the window (default 8)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args()
    if not os.path.exists(CHROMIUM):
        say(f"{CHROMIUM} is missing (Debian package chromium)")
        return 2
    # Ctrl-C and SIGTERM both raise KeyboardInterrupt wherever the loop is (also inside a
    # blocking step such as building the Tor network); stop_everything() then stops by PID
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigterm)
    try:
        results = asyncio.run(main_async(args))
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        stop_everything()
    if args.json:
        print(json.dumps({"seconds": args.seconds, "warmup": args.warmup,
                          "date": time.strftime("%Y-%m-%d"), "scenarios": results}, indent=2))
    else:
        print_report(results, args.seconds)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
