"""The web client in Debian's Firefox ESR (Marionette) with a Chromium on the other end:
a call both ways through the server's TURN relay, and a Tor-Browser-like Firefox (WebRTC and
camera off, resistFingerprinting) that gets plain words and the encrypted chat, not a blank page.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.browsers import FIREFOX_AUTOPLAY, FIREFOX_TOR_LIKE, ff_wait
from tests.support.webclient import NO_TURN, STATS_JS, new_participant, wait_media

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

AUTOPLAY = FIREFOX_AUTOPLAY
TOR_LIKE = FIREFOX_TOR_LIKE


async def ff_join(ff, url: str, name: str) -> None:
    await asyncio.to_thread(ff.navigate, url)
    await ff_wait(ff, "return document.body.dataset.screen === 'prejoin'")
    await asyncio.to_thread(ff.run, """
        const input = document.querySelector('#name');
        input.value = arguments[0];
        document.querySelector('#join').click();
        return true;""", name)
    await ff_wait(ff, "return document.body.dataset.screen === 'call'")


async def test_chromium_firefox_call_both_ways(turn_server, webchromium, firefox_marionette,
                                               shots):
    base = turn_server.base
    c = await new_participant(webchromium, base + "/", "Chromium Chris")
    await c.wait("document.body.dataset.screen === 'landing'")
    await c.page.click("#create-room")
    await c.wait("document.body.dataset.screen === 'prejoin'")
    url = c.page.url
    await c.join()
    ff = await asyncio.to_thread(firefox_marionette, AUTOPLAY)
    await ff_join(ff, url, "Firefox Fay")

    # Chromium decodes Firefox's video (frames rising) and gets its audio
    last = await wait_media([c], 1, audio=False)
    # Firefox decodes Chromium's video: framesDecoded rising between two samples
    first = await ff_wait(ff, f"const s = {STATS_JS}; return s().then((o) => "
                              "Object.values(o).some((x) => x.frames > 0) && o);")
    (peer, s0), = first.items()
    s1 = await ff_wait(ff, f"const s = {STATS_JS}; return s().then((o) => "
                           f"o[{peer!r}] && o[{peer!r}].frames > {s0['frames']} && "
                           f"o[{peer!r}].audioPackets > {s0['audioPackets']} && o);")
    assert s1[peer]["state"] == "connected"
    if not NO_TURN:
        for side in (s1[peer], next(iter(last["Chromium Chris"].values()))):
            assert (side["candidateType"], side["relayProtocol"]) == ("relay", "tcp"), side
    # names crossed, encrypted, both ways
    await c.wait("[...document.querySelectorAll('#grid .name')].some("
                 "(n) => n.textContent === 'Firefox Fay')")
    await ff_wait(ff, "return [...document.querySelectorAll('#grid .name')].some("
                      "(n) => n.textContent === 'Chromium Chris');")
    # chat both ways
    await c.page.click("#btn-chat")
    await c.page.fill("#chat-input", "hello Firefox")
    await c.page.press("#chat-input", "Enter")
    await ff_wait(ff, "return incognito.chat.some((m) => m.text === 'hello Firefox');")
    await asyncio.to_thread(ff.run, """
        document.querySelector('#btn-chat').click();
        document.querySelector('#chat-input').value = 'hello Chromium';
        document.querySelector('#chat-form').requestSubmit();
        return true;""")
    await c.wait("incognito.chat.some((m) => m.text === 'hello Chromium')")
    await asyncio.to_thread(ff.screenshot, shots / "firefox-call.png")
    assert await asyncio.to_thread(ff.run, "return incognito.csp;") == []
    assert await c.csp_violations() == []


async def test_tor_browser_like_firefox_gets_plain_words_and_chat(turn_server, webchromium,
                                                                  firefox_marionette, shots):
    ff = await asyncio.to_thread(firefox_marionette, TOR_LIKE)
    await asyncio.to_thread(ff.navigate, turn_server.url)
    await ff_wait(ff, "return document.body.dataset.screen === 'prejoin'")
    caps = await asyncio.to_thread(
        ff.run, "const b = document.querySelector('#prejoin-caps');"
                "return {hidden: b.hidden, text: b.textContent,"
                " join: document.querySelector('#join').textContent,"
                " rtc: typeof RTCPeerConnection, md: typeof navigator.mediaDevices};")
    assert caps["rtc"] == "undefined" and caps["md"] == "undefined", caps
    assert caps["hidden"] is False
    assert "Tor Browser" in caps["text"] and "WebRTC" in caps["text"], caps
    assert "chat" in caps["text"] and "onion relay" in caps["text"], caps
    # it cannot call, but it can watch and listen through the onion relay (MediaSource)
    assert caps["join"] == "Join"
    await asyncio.to_thread(ff.screenshot, shots / "tor-like-prejoin.png")

    # a Chromium in the same room; the Tor-like one watches through the relay and chats
    c = await new_participant(webchromium, turn_server.url, "Chromium Chris")
    await c.join()
    await asyncio.to_thread(ff.run, """
        document.querySelector('#name').value = 'Tor Tom';
        document.querySelector('#join').click(); return true;""")
    await ff_wait(ff, "return document.body.dataset.screen === 'call'")
    await c.wait("[...document.querySelectorAll('#grid .tile')].some((t) =>"
                 " t.querySelector('.name').textContent === 'Tor Tom'"
                 " && t.querySelector('.path').textContent === 'onion relay')")
    await c.page.click("#btn-chat")
    await c.page.fill("#chat-input", "can you read me")
    await c.page.press("#chat-input", "Enter")
    await ff_wait(ff, "return incognito.chat.some((m) => m.text === 'can you read me');")
    await asyncio.to_thread(ff.run, """
        document.querySelector('#chat-input').value = 'yes, through Tor';
        document.querySelector('#chat-form').requestSubmit(); return true;""")
    await c.wait("incognito.chat.some((m) => m.text === 'yes, through Tor')")
    # Chromium made no media link to a browser that has no WebRTC
    assert await c.js("incognito.mesh.links.size") == 0
    await asyncio.to_thread(ff.screenshot, shots / "tor-like-call.png")
    assert await asyncio.to_thread(ff.run, "return incognito.csp;") == []


async def test_tor_browser_like_firefox_without_javascript_reads_noscript(turn_server,
                                                                         firefox_marionette):
    ff = await asyncio.to_thread(firefox_marionette, {**TOR_LIKE, "javascript.enabled": False})
    await asyncio.to_thread(ff.navigate, turn_server.url)
    # with JavaScript off, <noscript> content becomes real elements
    def read() -> str:
        return ff.client.find_element("css selector", "noscript .card").text

    text = await asyncio.to_thread(read)
    assert "needs JavaScript" in text and "Safest" in text, text


async def test_firefox_that_cannot_reach_the_relay_switches_to_the_onion_relay(
        turn_server, webchromium, firefox_marionette):
    """Without ICE on loopback, Firefox gathers no candidate for the relay on 127.0.0.1: the
    same symptom as proxy-only mode behind Tor. The call goes on through the onion relay, both
    ways, and the page names the about:config fix for a direct call."""
    if NO_TURN:
        pytest.skip("needs the TURN relay")
    c = await new_participant(webchromium, turn_server.url, "Chromium Chris")
    await c.join()
    ff = await asyncio.to_thread(firefox_marionette,
                                 {**AUTOPLAY, "media.peerconnection.ice.loopback": False})
    await ff_join(ff, turn_server.url, "Firefox Fay")
    text = await ff_wait(ff, "const n = document.querySelector('[data-notice=ice]');"
                             "return n && n.textContent;")
    assert "proxy_only_if_behind_proxy" in text and "onion relay" in text, text
    ff_id = await ff_wait(ff, "return incognito.sig && incognito.sig.self;")
    c_id = await c.self_id()
    # Firefox plays Chromium, and Chromium plays Firefox's (fake) camera, through the relay
    await ff_wait(ff, "const p = incognito.peers.get(arguments[0]);"
                      " return p && p.relay && p.video.videoWidth > 0"
                      " && p.relay.stats.v.currentTime > 0.5 && p.relay.stats.a.currentTime > 0.5;",
                  c_id)
    await c.wait(f"(() => {{ const p = incognito.peers.get({ff_id!r});"
                 " return p && p.relay && p.video.videoWidth > 0"
                 " && p.relay.stats.v.currentTime > 0.5; })()", timeout=30)
    assert await c.js(f"document.querySelector('.tile[data-peer=\"{ff_id}\"] .path')"
                      ".textContent") == "onion relay"
    assert await c.js("incognito.mesh.links.size") == 0
