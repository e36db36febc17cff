"""Benchmark: WebRTC through the supervised coturn (TURN over TCP, relay only) vs direct, on
loopback. Not a test: it prints numbers.

    .venv/bin/python bench/turn.py [--runs 10] [--mb 32]

Measures, with Debian's Chromium driven by Playwright (two RTCPeerConnections in one page,
candidates handed over in the page):
  1. connection setup time (createOffer -> both ICE+DTLS 'connected'), relay-only through
     TURN-TCP vs direct host candidates on 127.0.0.1;
  2. throughput of one RTCDataChannel over each path (A -TCP-> coturn -UDP-> coturn -TCP-> B);
and, without a browser, the raw relayed throughput of one TURN link (Send indications from
one allocation to another, both over TCP) with incognito_onion.turn.client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web  # noqa: E402

from incognito_onion.config import Config  # noqa: E402
from incognito_onion.schema import defaults  # noqa: E402
from incognito_onion.turn import CoturnSupervisor, issue  # noqa: E402
from incognito_onion.turn.client import TurnClient  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    # direct runs need host candidates on loopback, with real addresses (no mDNS names)
    "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
]

PAGE = """<!doctype html><meta charset="utf-8"><title>turn bench</title><script>
let pcs = [], chans = [];
function closeAll() { pcs.forEach(p => p.close()); pcs = []; chans = []; }
function waitOpen(ch) {
  return new Promise(r => ch.readyState === 'open' ? r() : ch.addEventListener('open', r));
}
function waitConnected(pc) {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (pc.connectionState === 'connected') resolve();
      else if (pc.connectionState === 'failed') reject(new Error('failed'));
    };
    pc.addEventListener('connectionstatechange', check);
    check();
  });
}
async function selected(pc) {
  const r = await pc.getStats();
  let out = null;
  r.forEach(s => {
    if (s.type === 'transport' && s.selectedCandidatePairId) {
      const p = r.get(s.selectedCandidatePairId), l = r.get(p.localCandidateId);
      out = l.candidateType + (l.relayProtocol ? '/' + l.relayProtocol : '') + ' ' + l.protocol;
    }
  });
  return out;
}
async function connectPair(config) {
  closeAll();
  const a = new RTCPeerConnection(config), b = new RTCPeerConnection(config);
  pcs = [a, b];
  a.onicecandidate = e => e.candidate && b.addIceCandidate(e.candidate);
  b.onicecandidate = e => e.candidate && a.addIceCandidate(e.candidate);
  const got = new Promise(r => b.ondatachannel = e => r(e.channel));
  const ca = a.createDataChannel('bench', {ordered: true});
  const t0 = performance.now();
  await a.setLocalDescription(await a.createOffer());
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(await b.createAnswer());
  await a.setRemoteDescription(b.localDescription);
  await Promise.all([waitConnected(a), waitConnected(b)]);
  const ms = performance.now() - t0;
  const cb = await got;
  await Promise.all([waitOpen(ca), waitOpen(cb)]);
  chans = [ca, cb];
  return {ms, path: await selected(a)};
}
async function blast(megabytes) {
  const [ca, cb] = chans, chunk = new Uint8Array(16 * 1024), total = megabytes * 1024 * 1024;
  let received = 0;
  const done = new Promise(r => cb.onmessage = e => {
    received += e.data.byteLength || e.data.size || 0;
    if (received >= total) r();
  });
  ca.bufferedAmountLowThreshold = 1024 * 1024;
  const t0 = performance.now();
  for (let sent = 0; sent < total; sent += chunk.length) {
    if (ca.bufferedAmount > 4 * 1024 * 1024)
      await new Promise(r => ca.addEventListener('bufferedamountlow', r, {once: true}));
    ca.send(chunk);
  }
  await done;
  return (received / 1e6) / ((performance.now() - t0) / 1000);
}
</script>"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve_page() -> tuple[web.AppRunner, str]:
    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/"


async def browser_bench(sup: CoturnSupervisor, runs: int, mb: int) -> dict[str, dict]:
    from playwright.async_api import async_playwright

    runner, url = await serve_page()
    results: dict[str, dict] = {}
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = await (await browser.new_context()).new_page()
                await page.goto(url)
                configs = {
                    "TURN-TCP relay": lambda: {"iceServers": sup.ice_servers("bench"),
                                               "iceTransportPolicy": "relay"},
                    "direct (loopback)": lambda: {"iceServers": [], "iceTransportPolicy": "all"},
                }
                for name, make in configs.items():
                    times, paths = [], set()
                    for _ in range(runs + 1):  # the first run warms up and is dropped
                        r = await asyncio.wait_for(page.evaluate("c => connectPair(c)", make()),
                                                   20)
                        times.append(r["ms"])
                        paths.add(r["path"])
                    times = times[1:]
                    mbps = await asyncio.wait_for(page.evaluate("m => blast(m)", mb), 120)
                    await page.evaluate("closeAll()")
                    results[name] = {"times": times, "paths": paths, "mbps": mbps}
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
    return results


async def raw_turn_bench(sup: CoturnSupervisor, mb: int, size: int = 1200,
                         window: int = 256) -> tuple[float, float]:
    """MB/s delivered from one allocation to another by Send indications, and the loss ratio.
    The sender keeps at most ``window`` datagrams in flight (both ends are in this process), as
    a UDP sender with congestion control would; a datagram not there after 0.5 s is lost."""
    cred = issue(sup.secret, "bench", 600)
    host = sup.probe_host
    async with TurnClient(host, sup.port, cred.username, cred.password) as a, \
            TurnClient(host, sup.port, cred.username, cred.password) as b:
        ra, rb = await a.allocate(), await b.allocate()
        await a.create_permission(rb[0])
        await b.create_permission(ra[0])
        count = mb * 1024 * 1024 // size
        payload = bytes(size)
        got = lost = 0
        progress = asyncio.Event()

        async def receive() -> None:
            nonlocal got
            while True:
                await b.received.get()
                got += 1
                progress.set()

        receiver = asyncio.create_task(receive())
        t0 = time.monotonic()
        for i in range(count):
            while i - got - lost >= window:
                progress.clear()
                try:
                    await asyncio.wait_for(progress.wait(), 0.5)
                except TimeoutError:
                    lost = i - got
            a.send(rb[0], rb[1], payload)
            if i % 32 == 0:
                await a.drain()
        await a.drain()
        while got + lost < count:
            progress.clear()
            try:
                await asyncio.wait_for(progress.wait(), 0.5)
            except TimeoutError:
                lost = count - got
        elapsed = time.monotonic() - t0
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
        return got * size / 1e6 / elapsed, 1 - got / count


def fmt(times: list[float]) -> str:
    times = sorted(times)
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return f"median {statistics.median(times):6.1f} ms   p90 {p90:6.1f} ms   " \
           f"min {times[0]:6.1f} ms"


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="connections per path (default 10)")
    ap.add_argument("--mb", type=int, default=32, help="megabytes per throughput run")
    ap.add_argument("--no-browser", action="store_true", help="only the raw TURN throughput")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    cfg = Config(defaults()).replace(**{"turn.port": free_port(), "turn.min_port": 50500,
                                        "turn.max_port": 50599, "turn.user_quota": 0})
    with tempfile.TemporaryDirectory(prefix="turn-bench-") as state:
        async with CoturnSupervisor(cfg, state) as sup:
            print(f"coturn pid {sup.pid} on 127.0.0.1:{sup.port} (TURN over TCP)")
            if not args.no_browser:
                res = await browser_bench(sup, args.runs, args.mb)
                print(f"\nconnection setup, Chromium <-> Chromium, {args.runs} runs each "
                      f"(createOffer -> ICE+DTLS connected):")
                for name, r in res.items():
                    print(f"  {name:18} {fmt(r['times'])}   path: {', '.join(sorted(r['paths']))}")
                print(f"\nRTCDataChannel throughput, {args.mb} MB one way:")
                for name, r in res.items():
                    print(f"  {name:18} {r['mbps']:7.1f} MB/s")
            mbps, loss = await raw_turn_bench(sup, args.mb)
            print(f"\nraw TURN relay, one link (Send indications over TCP, 1200-byte datagrams, "
                  f"{args.mb} MB, 256 in flight): {mbps:.1f} MB/s delivered, {loss:.1%} lost")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
