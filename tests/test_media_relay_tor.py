"""The onion media relay end to end through the private Tor network: a Tor-Browser-like Firefox
(no WebRTC, no camera, resistFingerprinting, SOCKS5 with remote DNS) opens the onion room URL
with two Chromium participants that also reach the room only through Tor (they call each other
through the onion TURN). Firefox sees and hears both through the relay, and its chat reaches
them; nothing of Firefox's goes around the proxy.

(What the server saw of the media, ciphertext only, is shown on loopback behind a recording
proxy in test_media_relay_browsers.py: through Tor there is no place to record it but the
server itself.)"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.browsers import ff_wait
from tests.support.webclient import new_participant
from tests.test_media_relay_browsers import TOR_LIKE, ff_join, wait_playing
from tests.test_tor_browsers import (  # noqa: F401  (onion_up is a fixture)
    chromium_create_room,
    chromium_tor_args,
    connections,
    fake_video,
    firefox_pids,
    firefox_tor_prefs,
    off_proxy,
    onion_up,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_tor_browser_like_firefox_through_tor_sees_and_hears_two_chromiums(
        tor_network, onion_up, chromium_factory, firefox_marionette, tmp_path_factory,  # noqa: F811
        artifacts):
    _, m = onion_up
    socks = tor_network.socks_port
    y4m = fake_video(tmp_path_factory.getbasetemp() / "fake-camera-320x180.y4m")
    args = chromium_tor_args(socks, y4m, m["host"])
    c1, url = await chromium_create_room(await chromium_factory(extra_args=args), m["base"],
                                         "Chromium One")
    await c1.join(timeout=60)
    c2 = await new_participant(await chromium_factory(extra_args=args), url, "Chromium Two")
    await c2.join(timeout=60)
    ids = {await c1.self_id(), await c2.self_id()}

    prefs = {**firefox_tor_prefs(socks, None), **TOR_LIKE}
    assert prefs["privacy.resistFingerprinting"] is True  # as Tor Browser
    ff = await asyncio.to_thread(firefox_marionette, prefs)
    tor_id = await ff_join(ff, url, "Tor Tom")
    caps = await ff_wait(ff, "return {rtc: typeof RTCPeerConnection,"
                             " md: typeof navigator.mediaDevices, vd: typeof VideoDecoder};")
    # what Tor Browser lacks: WebRTC, camera access, WebCodecs
    assert caps == {"rtc": "undefined", "md": "undefined", "vd": "undefined"}, caps

    s = await wait_playing(ff, ids, timeout=90)
    for peer in ids:
        assert s[peer]["w"] == 320, s[peer]  # the fake camera's picture, decoded
        assert s[peer]["v"]["keys"] >= 1 and s[peer]["a"]["keys"] >= 1, s[peer]
        assert s[peer]["path"] == "onion relay", s[peer]
        assert s[peer]["v"]["errors"] == 0 and s[peer]["a"]["errors"] == 0, s[peer]

    # and shows it: no avatar over a picture that plays (a sender's WebRTC budget may pause
    # its WebRTC video; the relay still carries it)
    shown = await ff_wait(ff, "const ids = arguments[0]; return ids.every((id) =>"
                              " incognito.peers.get(id).tile.dataset.camOff === 'false') && ids;",
                          sorted(ids), timeout=10, what="both Chromiums' video shown")
    assert shown
    # Firefox's chat reaches both Chromiums
    await asyncio.to_thread(ff.run, """
        document.querySelector('#btn-chat').click();
        document.querySelector('#chat-input').value = 'hello through Tor';
        document.querySelector('#chat-form').requestSubmit(); return true;""")
    for c in (c1, c2):
        await c.wait("incognito.chat.some((m) => m.text === 'hello through Tor')", timeout=60)
        label = await c.js(f"document.querySelector('.tile[data-peer=\"{tor_id}\"] .path')"
                           ".textContent")
        assert label == "onion relay", label
    # the Chromiums keep their WebRTC link (through the onion TURN) to each other only
    assert await c1.js("incognito.mesh.links.size") == 1
    assert await asyncio.to_thread(ff.run, "return incognito.sig.mediaStats.undecryptable;") == 0
    assert await asyncio.to_thread(ff.run, "return incognito.csp;") == []
    ff_conns = connections(firefox_pids(ff))
    assert not off_proxy(ff_conns, socks, (ff.port,)), off_proxy(ff_conns, socks, (ff.port,))
    await asyncio.to_thread(ff.screenshot, artifacts / "tor-browser-like-through-tor.png")
