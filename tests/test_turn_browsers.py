"""Real browsers through the supervised coturn, relay only: Chromium <-> Chromium and
Chromium <-> Firefox. The test page is served on 127.0.0.1 and the test process carries the
offer and answer between the two pages (non-trickle: SDP after ICE gathering completes)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
from aiohttp import web

from tests.support.coturn import free_tcp_port

pytestmark = pytest.mark.slow

PAGE = """<!doctype html>
<meta charset="utf-8"><title>turn test</title>
<video id="remote" autoplay playsinline muted width="320" height="240"></video>
<script>
window.pcs = [];
window.pc = null;
async function setup(iceServers, policy) {
  const stream = await navigator.mediaDevices.getUserMedia(
    {video: {width: 320, height: 240}, audio: false});
  pc = new RTCPeerConnection({iceServers, iceTransportPolicy: policy});
  pcs.push(pc);
  stream.getTracks().forEach(t => pc.addTrack(t, stream));
  pc.ontrack = e => {
    const v = document.getElementById('remote');
    v.srcObject = e.streams[0];
    v.play().catch(() => {});
  };
  return true;
}
function gathered() {
  return new Promise(resolve => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') resolve();
    });
  });
}
async function makeOffer() {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered();
  return pc.localDescription.sdp;
}
async function takeOffer(sdp) {
  await pc.setRemoteDescription({type: 'offer', sdp});
  await pc.setLocalDescription(await pc.createAnswer());
  await gathered();
  return pc.localDescription.sdp;
}
async function takeAnswer(sdp) {
  await pc.setRemoteDescription({type: 'answer', sdp});
  return true;
}
function connected(ms) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const check = () => {
      const s = pc.iceConnectionState;
      if (s === 'connected' || s === 'completed') return resolve(performance.now() - t0);
      if (s === 'failed' || performance.now() - t0 > ms) return reject(new Error('ice ' + s));
      setTimeout(check, 20);
    };
    check();
  });
}
async function stats() {
  const report = await pc.getStats();
  let pair = null, inbound = null;
  report.forEach(s => {
    if (s.type === 'transport' && s.selectedCandidatePairId)
      pair = report.get(s.selectedCandidatePairId);
  });
  if (!pair) report.forEach(s => {
    if (s.type === 'candidate-pair' && s.selected) pair = s;  // Firefox
  });
  report.forEach(s => {
    if (s.type === 'inbound-rtp' && (s.kind || s.mediaType) === 'video') inbound = s;
  });
  const cand = id => {
    const c = id && report.get(id);
    return c ? {type: c.candidateType, relayProtocol: c.relayProtocol || null,
                protocol: c.protocol, address: c.address || c.ip || null} : null;
  };
  return {
    local: pair ? cand(pair.localCandidateId) : null,
    remote: pair ? cand(pair.remoteCandidateId) : null,
    framesDecoded: inbound ? (inbound.framesDecoded || 0) : 0,
    packetsReceived: inbound ? (inbound.packetsReceived || 0) : 0,
  };
}
function closeAll() { pcs.forEach(p => p.close()); return true; }
</script>
"""


@pytest.fixture
async def page_url():
    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/"
    await runner.cleanup()


class ChromiumSide:
    name = "chromium"
    progress = "framesDecoded"

    def __init__(self, page):
        self.page = page

    async def call(self, fn: str, *args: Any) -> Any:
        return await self.page.evaluate(f"(a) => {fn}(...a)", list(args))


class FirefoxSide:
    name = "firefox"
    progress = "packetsReceived"

    def __init__(self, ff):
        self.ff = ff

    async def call(self, fn: str, *args: Any) -> Any:
        return await asyncio.to_thread(self.ff.run, f"return {fn}(...arguments)", *args)


async def _chromium_side(browser, url: str) -> ChromiumSide:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(url)
    return ChromiumSide(page)


async def _firefox_side(firefox_marionette, url: str) -> FirefoxSide:
    ff = await asyncio.to_thread(firefox_marionette)
    await asyncio.to_thread(ff.navigate, url)
    return FirefoxSide(ff)


async def _call(sup, a, b, urls=None, relay_protocol="tcp") -> float:
    """Connect a and b relay-only through ``sup`` (its TURN-TCP URL unless ``urls``); check the
    path and that media flow. Returns the connection setup time in seconds."""
    urls = urls or sup.urls()[:1]
    for side, peer in ((a, "peerA"), (b, "peerB")):
        await side.call("setup", sup.ice_servers(peer, urls), "relay")
    t0 = time.monotonic()
    offer = await a.call("makeOffer")
    answer = await b.call("takeOffer", offer)
    await a.call("takeAnswer", answer)
    for sdp in (offer, answer):  # nobody learns anybody's address: relay candidates only
        cands = [ln for ln in sdp.splitlines() if ln.startswith("a=candidate:")]
        assert cands and all(" typ relay " in c for c in cands), cands
    await asyncio.gather(a.call("connected", 10000), b.call("connected", 10000))
    setup = time.monotonic() - t0
    for side in (a, b):
        first = await side.call("stats")
        assert first["local"] == {**first["local"], "type": "relay",
                                  "relayProtocol": relay_protocol}, (side.name, first)
        assert first["remote"]["type"] == "relay", (side.name, first)
        await _rising(side)
    return setup


async def _rising(side, timeout: float = 10.0) -> None:
    """Two samples of the side's counter (framesDecoded / packetsReceived), the second higher."""
    deadline = time.monotonic() + timeout
    first = await _sample(side, lambda v: v > 0, deadline)
    await _sample(side, lambda v: v > first, deadline)


async def _sample(side, ok, deadline: float) -> int:
    while True:
        value = (await side.call("stats"))[side.progress]
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"{side.name}: {side.progress} stuck at {value}"
        await asyncio.sleep(0.05)


@pytest.mark.faults
async def test_chromium_to_chromium_relay_only_and_after_coturn_restart(
        coturn, chromium, page_url, artifacts):
    a = await _chromium_side(chromium, page_url)
    b = await _chromium_side(chromium, page_url)
    await _call(coturn, a, b)
    await b.page.screenshot(path=str(artifacts / "chromium-remote-video.png"))

    # kill coturn mid-run: it comes back within 2 s, and a new call connects
    old = coturn.pid
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    await asyncio.wait_for(_until(lambda: coturn.pid not in (None, old) and coturn.ready), 2.0)
    assert time.monotonic() - t0 < 2.0
    for side in (a, b):
        await side.call("closeAll")
    await _call(coturn, a, b)
    # (a "warning" may come in between: e.g. a UDP port some other program has open on the
    # relay address; the lifecycle is what counts here)
    kinds = [e.kind for e in coturn.events if e.kind != "warning"]
    assert kinds[:3] == ["started", "exited", "restarted"], kinds


async def test_chromium_to_firefox_relay_only(coturn, chromium, firefox_marionette, page_url):
    a = await _chromium_side(chromium, page_url)
    b = await _firefox_side(firefox_marionette, page_url)
    await _call(coturn, a, b)


async def test_chromium_turns_with_the_generated_certificate(coturn_factory, chromium_factory,
                                                            page_url, turn_config):
    # Chromium checks a TURNS certificate; trust exactly this generated key by its SPKI hash
    sup = await coturn_factory(turn_config(tls_port=free_tcp_port()))
    browser = await chromium_factory([f"--ignore-certificate-errors-spki-list={sup.tls_spki}"])
    a = await _chromium_side(browser, page_url)
    b = await _chromium_side(browser, page_url)
    await _call(sup, a, b, urls=[sup.urls()[1]], relay_protocol="tls")


async def _until(cond):
    while not cond():
        await asyncio.sleep(0.01)
