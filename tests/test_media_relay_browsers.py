"""The onion media relay in real browsers: a Tor-Browser-like Firefox (no WebRTC, no camera,
resistFingerprinting) in a room with two Chromium participants, through the real server
(`up --no-tor` with coturn) behind a recording proxy; and with two server processes, from a
Chromium whose connection the other process holds."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.browsers import FIREFOX_AUTOPLAY, FIREFOX_TOR_LIKE, ff_wait
from tests.support.server import start_server, worker_of
from tests.support.webclient import NO_TURN, Recorder, new_participant

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TOR_LIKE = {**FIREFOX_TOR_LIKE, **FIREFOX_AUTOPLAY}
EBML = b"\x1a\x45\xdf\xa3"

# What the page plays of each relay sender: {peer: {a: stats, v: stats, w: videoWidth}}
RELAY_JS = """
const out = {};
for (const [id, p] of incognito.peers) {
  if (!p.relay) continue;
  const s = p.relay.stats;
  s.w = p.video.videoWidth;
  const q = p.video.getVideoPlaybackQuality;
  s.frames = q ? p.video.getVideoPlaybackQuality().totalVideoFrames : 0;
  s.path = p.tile.querySelector('.path').textContent;
  s.why = p.tile.querySelector('.path').title;
  out[id] = s;
}
return out;
"""


async def ff_join(ff, url: str, name: str) -> str:
    await asyncio.to_thread(ff.navigate, url)
    await ff_wait(ff, "return document.body.dataset.screen === 'prejoin'")
    join = await asyncio.to_thread(ff.run, """
        document.querySelector('#name').value = arguments[0];
        const b = document.querySelector('#join'); const t = b.textContent; b.click(); return t;""",
        name)
    assert join == "Join"
    await ff_wait(ff, "return document.body.dataset.screen === 'call'")
    return await ff_wait(ff, "return incognito.sig && incognito.sig.self")


async def relay_stats(ff) -> dict:
    return await asyncio.to_thread(ff.run, RELAY_JS)


async def wait_playing(ff, senders: set[str], timeout: float = 60.0) -> dict:
    """Until Firefox plays video and audio of every sender, then until playback time and
    appended chunks of both rise past that first sample (a fresh stream may stall a moment
    while its first chunks are decoded). Returns the later sample."""
    body = RELAY_JS[:-len("return out;\n")]
    first = await ff_wait(ff, body + """
        const ids = arguments[0];
        return ids.every((id) => out[id] && out[id].v.readyState >= 2 && out[id].w > 0
          && out[id].a.readyState >= 2) && out;""", sorted(senders), timeout=timeout,
        what="relay video and audio from every sender")
    base = {p: {k: [first[p][k]["currentTime"], first[p][k]["appended"]] for k in "av"}
            for p in senders}
    return await ff_wait(ff, body + """
        const base = arguments[0];
        return Object.entries(base).every(([id, b]) => out[id] && ['a', 'v'].every((k) =>
          out[id][k].currentTime > b[k][0] && out[id][k].appended > b[k][1])) && out;""",
        base, timeout=30, what="relay playback time rising for every sender")


async def test_tor_like_firefox_sees_and_hears_two_chromiums_through_the_onion_relay(
        turn_server, recorder, webchromium, firefox_marionette, shots):
    url = recorder.base + turn_server.url[len(turn_server.base):]
    c1 = await new_participant(webchromium, url, "Chromium One")
    await c1.join()
    c2 = await new_participant(webchromium, url, "Chromium Two")
    await c2.join()
    ids = {await c1.self_id(), await c2.self_id()}
    ff = await asyncio.to_thread(firefox_marionette, TOR_LIKE)
    tor_id = await ff_join(ff, url, "Tor Tom")

    s = await wait_playing(ff, ids)
    for peer in ids:
        v, a = s[peer]["v"], s[peer]["a"]
        assert s[peer]["w"] == 320, s[peer]  # the fake camera's picture, decoded
        # the plaintext was WebM, from key chunks (a new recording each: init segment + key
        # frame); that it decoded to the camera's 320 px picture shows it was WebM
        assert v["keys"] >= 1 and a["keys"] >= 1, s[peer]
        assert s[peer]["path"] == "onion relay" and "no WebRTC" in s[peer]["why"]
    # ...and the server saw none of it in clear: every relayed binary frame is ciphertext
    deadline = time.monotonic() + 20
    while sum(len(f) for f in recorder.binary("up")) <= 20_000:  # the senders keep uploading
        assert time.monotonic() < deadline, sum(len(f) for f in recorder.binary("up"))
        await asyncio.sleep(0.2)
    frames = recorder.binary()
    assert len(frames) > 50, len(frames)
    assert not [f[:16] for f in frames if EBML in f]

    # the Chromiums say how each person is reached, and why
    for c in (c1, c2):
        await c.wait("(() => { const t = document.querySelector("
                     f"'.tile[data-peer=\"{tor_id}\"] .path');"
                     " return t && t.textContent === 'onion relay' && t.title; })()")
    if not NO_TURN:
        other = await c2.self_id()
        await c1.wait("(() => { const t = document.querySelector("
                      f"'.tile[data-peer=\"{other}\"] .path');"
                      " return t && t.textContent === 'TURN relay'; })()", timeout=30)
    # the Chromiums still have their WebRTC link to each other, none to Firefox
    assert await c1.js("incognito.mesh.links.size") == 1

    # chat from Tor Browser reaches both
    await asyncio.to_thread(ff.run, """
        document.querySelector('#btn-chat').click();
        document.querySelector('#chat-input').value = 'hello from Tor';
        document.querySelector('#chat-form').requestSubmit(); return true;""")
    for c in (c1, c2):
        await c.wait("incognito.chat.some((m) => m.text === 'hello from Tor')")
    # nothing failed to decrypt, nothing against the CSP
    assert await asyncio.to_thread(ff.run, "return incognito.sig.mediaStats.undecryptable;") == 0
    assert await asyncio.to_thread(ff.run, "return incognito.csp;") == []
    # watch-only: a small self-view in the corner, the grid's cells for the two who are seen
    assert await asyncio.to_thread(ff.run, """return [incognito.verdict.canSend,
        document.querySelector('#grid .tile.mini') !== null,
        document.querySelector('#grid').dataset.count];""") == [False, True, "2"]
    await asyncio.to_thread(ff.screenshot, shots / "tor-like-onion-relay.png")
    await c1.page.screenshot(path=str(shots / "chromium-with-onion-relay-peer.png"))

    # one Chromium leaves the room: the other keeps going, the relay stops for nobody else
    await c1.page.click("#btn-leave")
    await ff_wait(ff, f"return !incognito.peers.has({sorted(ids)[0]!r}) || "
                      f"!incognito.peers.has({sorted(ids)[1]!r});")


async def test_slow_onion_receiver_latency_stays_bounded_and_audio_goes_on(
        turn_server, recorder, webchromium, firefox_marionette):
    url = recorder.base + turn_server.url[len(turn_server.base):]
    c = await new_participant(webchromium, url, "Chromium Sender")
    await c.join()
    sender = await c.self_id()
    ff = await asyncio.to_thread(firefox_marionette, TOR_LIKE)
    tor_id = await ff_join(ff, url, "Slow Tor")
    await wait_playing(ff, {sender})

    # a thin link toward Firefox: room for the audio, far too little for the video
    mark = len(recorder.frames)
    t_mark = time.monotonic()
    await asyncio.sleep(4)
    sent_bytes = recorder.media_bytes(mark)
    rate = {k: v / (time.monotonic() - t_mark) for k, v in sent_bytes.items()}
    # audio goes out first: it gets what it needs, video gets 0.1 a + 0.2 v, less than it needs
    assert rate["v"] > 0.2 * rate["a"] > 0, rate  # (else that would not be too little)
    assert recorder.throttle(tor_id, 1.1 * rate["a"] + 0.2 * rate["v"]) == 1
    before = (await relay_stats(ff))[sender]
    t0 = time.time() * 1000
    await asyncio.sleep(12)
    after = (await relay_stats(ff))[sender]
    # audio kept arriving and playing
    assert after["a"]["appended"] - before["a"]["appended"] >= 30, (before["a"], after["a"])
    assert after["a"]["currentTime"] > before["a"]["currentTime"] + 5
    # what arrived was fresh: latency bounded (relay_max_delay_ms + a window in flight)
    lat = [x for x in after["a"]["latencies"]]
    assert lat and max(lat[-30:]) < 3000, lat
    assert after["a"]["lastTs"] > t0 + 9000, (after["a"]["lastTs"] - t0)
    # video could not keep up: the server dropped it and asked the sender for new recordings
    sent = await c.js("incognito.relaySender.stats")
    assert sent["v"]["restarts"] >= 2, sent
    # ...and, told so again and again, it sent less video (lower bitrate, rate and size)
    print(f"\nthe sender under a thin link: {sent}")
    assert sent["downs"] >= 1, sent
    # (unless it has already climbed back) it records smaller: a new recording's scaled clone
    # takes its size a moment after it starts (applyConstraints), so wait for it
    await c.wait("(() => { const s = incognito.relaySender.stats; return s.level === 0"
                 " || (0 < s.v.width && s.v.width < s.v.fullWidth); })()", timeout=10)
    # the link recovers: video plays again, and the sender climbs back to full quality
    recorder.throttle(tor_id, None)
    v0 = (await relay_stats(ff))[sender]["v"]
    await ff_wait(ff, RELAY_JS[:-len("return out;\n")] +
                  "const s = out[arguments[0]]; return s && s.v.appended > arguments[1] + 20 "
                  "&& s.v.currentTime > arguments[2] && s;",
                  sender, v0["appended"], v0["currentTime"], what="video after the link healed")
    await c.wait("incognito.relaySender.stats.level === 0"
                 " && incognito.relaySender.stats.ups >= 1", timeout=60)


@pytest.fixture
async def two_workers_recorder(tmp_path):
    """``up`` with two server processes (rooms and relay receivers in its redis-server), behind
    a recording proxy."""
    srv = start_server(tmp_path, env={"INCOGNITO_SERVER_WORKERS": "2"})
    rec = Recorder(srv.base)
    try:
        await rec.start()
        yield srv, rec
    finally:
        await rec.close()
        srv.stop()


async def test_tor_like_firefox_gets_media_from_a_chromium_on_another_worker(
        two_workers_recorder, webchromium, firefox_marionette):
    srv, rec = two_workers_recorder
    url = rec.base + srv.url[len(srv.base):]
    c = await new_participant(webchromium, url, "Chromium Sender")
    await c.join()
    sender = await c.self_id()
    held_by = worker_of(srv, rec.upstream_port(sender))
    ff = await asyncio.to_thread(firefox_marionette, TOR_LIKE)
    # the kernel hands each connection to either process: join again until Firefox's lands on
    # the other one (each try ~1/2)
    for attempt in range(12):
        if attempt:  # (the same URL again would only move within the page)
            await asyncio.to_thread(ff.navigate, "about:blank")
        tor_id = await ff_join(ff, url, f"Tor Elsewhere {attempt}")
        if worker_of(srv, rec.upstream_port(tor_id)) != held_by:
            print(f"\nFirefox on the other server process after {attempt + 1} join(s)")
            break
    else:
        pytest.fail("12 joins of Firefox all went to the sender's server process")
    s = await wait_playing(ff, {sender})
    assert s[sender]["w"] == 320, s[sender]  # the fake camera's picture, decoded
    assert s[sender]["v"]["keys"] >= 1 and s[sender]["a"]["keys"] >= 1, s[sender]
    assert s[sender]["path"] == "onion relay", s[sender]
    assert await asyncio.to_thread(ff.run, "return incognito.sig.mediaStats.undecryptable;") == 0
    await c.wait("(() => { const t = document.querySelector("
                 f"'.tile[data-peer=\"{tor_id}\"] .path');"
                 " return t && t.textContent === 'onion relay'; })()")
