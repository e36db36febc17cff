"""The web client in real Chromiums against the real server with its TURN relay.

Four people join one room made on the landing page; every one decodes video and hears sound
from each of the other three over relay/tcp; chat, mute, camera-off, screen share and leave show
at the peers; a recording proxy shows the server relayed no plaintext; the pages make no request
off their origin and trigger no CSP violation. Also: a wrong key, and a dropped socket.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.support.webclient import NO_TURN, new_participant, wait_media

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

NAMES = ["Alice Liddell", "Bob Marley", "Carol Danvers", "Dave Lister"]
CHAT = "the eagle lands at noon 7f3a9"


# what a failed wait on tiles reports
TILES = ("JSON.stringify({tiles: [...document.querySelectorAll('#grid .tile')].map("
         "(t) => t.dataset.peer), peers: [...incognito.peers.keys()], "
         "log: document.querySelector('#chat-log').textContent})")


def tile(peer: str) -> str:
    return f"document.querySelector('#grid .tile[data-peer=\"{peer}\"]')"


async def create_room(browser, base: str, name: str, **kw):
    p = await new_participant(browser, base + "/", name, **kw)
    await p.wait("document.body.dataset.screen === 'landing'")
    await p.page.click("#create-room")
    await p.wait("document.body.dataset.screen === 'prejoin'")
    return p, p.page.url


def assert_clean(parts, base: str) -> None:
    for p in parts:
        off = [u for u in p.requests if not (u.startswith(base + "/") or u.startswith("data:")
                                            or u.startswith("blob:"))]
        assert not off, f"{p.name} made requests off its origin: {off}"
        assert not p.errors, f"{p.name} page errors: {p.errors}"
        csp = [c for c in p.console if "Content Security Policy" in c or "Refused to" in c]
        assert not csp, f"{p.name}: CSP complaints in the console: {csp}"


async def test_four_person_call(turn_server, recorder, webchromium, shots):
    base = recorder.base
    a, url = await create_room(webchromium, base, NAMES[0])
    assert re.fullmatch(re.escape(base) + r"/r/[A-Za-z0-9_-]{22}#[A-Za-z0-9_-]{43}", url), url
    await a.wait("document.querySelector('#preview-video').videoWidth > 0")
    await a.page.screenshot(path=str(shots / "prejoin-desktop.png"))
    await a.join()
    b = await new_participant(webchromium, url, NAMES[1])
    c = await new_participant(webchromium, url, NAMES[2])
    d = await new_participant(webchromium, url, NAMES[3], viewport=(390, 844))
    await d.wait("document.body.dataset.screen === 'prejoin'")
    await d.wait("document.querySelector('#preview-video').videoWidth > 0")
    await d.page.screenshot(path=str(shots / "prejoin-390.png"))
    for p in (b, c, d):
        await p.join()
    parts = [a, b, c, d]

    # every one decodes video and hears sound from each of the other three, over TURN/TCP
    last = await wait_media(parts, 3)
    if not NO_TURN:
        for p in parts:
            for peer, s in last[p.name].items():
                got = (s["candidateType"], s["relayProtocol"])
                assert got == ("relay", "tcp"), (p.name, peer, s)

    # the per-peer connection quality shows, and someone's speaking lights their tile
    for p in parts:
        await p.wait("(() => { const q = [...document.querySelectorAll("
                     "'#grid .tile:not(.self) .quality')]; return q.length === 3 && "
                     "q.every((x) => x.dataset.level === 'good' && x.title.includes('round trip'))"
                     "})()")
    await a.wait("document.querySelectorAll('#grid .tile.speaking:not(.self)').length > 0",
                 timeout=10)
    if not NO_TURN:
        assert "via relay/tcp" in await a.js("document.querySelector("
                                             "'#grid .tile:not(.self) .quality').title")

    ids = {p.name: await p.self_id() for p in parts}
    for p in parts:
        assert await p.js("document.querySelectorAll('#grid .tile').length") == 4
        for other in parts:
            if other is p:
                continue
            await p.wait(f"{tile(ids[other.name])}.querySelector('.name').textContent === "
                         f"{other.name!r}")

    # chat: sent by Alice, arrives decrypted at the three others
    await a.page.click("#btn-chat")
    await a.page.fill("#chat-input", CHAT)
    await a.page.press("#chat-input", "Enter")
    for p in (b, c, d):
        await p.wait("(t) => incognito.chat.some((m) => m.text === t[0] && m.name === t[1])",
                     [CHAT, NAMES[0]])
        assert await p.js("document.querySelector('#chat-unread').hidden") is False
    await b.page.click("#btn-chat")
    await b.page.fill("#chat-input", "hello from Bob")
    await b.page.press("#chat-input", "Enter")
    await a.wait("incognito.chat.some((m) => m.text === 'hello from Bob')")

    # mute and camera off by Bob show at the peers
    await b.page.click("#btn-mic")
    await b.page.click("#btn-cam")
    for p in (a, c, d):
        await p.wait(f"{tile(ids[NAMES[1]])}.dataset.muted === 'true' && "
                     f"{tile(ids[NAMES[1]])}.dataset.camOff === 'true'")
        assert await p.js(f"!{tile(ids[NAMES[1]])}.querySelector('.avatar').hidden")

    await a.page.screenshot(path=str(shots / "call-4-desktop-chat.png"))
    await a.page.click("#btn-chat")  # close the panel for the plain grid shot
    await a.page.screenshot(path=str(shots / "call-4-desktop.png"))
    await d.page.screenshot(path=str(shots / "call-4-390.png"))
    await d.page.click("#btn-chat")
    await d.wait("!document.querySelector('#chat-panel').hidden")
    await d.page.screenshot(path=str(shots / "chat-390.png"))
    await d.page.click("#chat-close")

    # screen share by Carol replaces her camera track; the peers see the flag and new frames
    before = {p.name: (await p.stats())[ids[NAMES[2]]]["frames"] for p in (a, b, d)}
    await c.page.click("#btn-screen")
    await c.wait("!!incognito.screen", timeout=15)
    for p in (a, b, d):
        await p.wait(f"!{tile(ids[NAMES[2]])}.querySelector('.sharing').hidden")
        await p.wait(f"(n) => incognito.mesh.links.get({ids[NAMES[2]]!r}).pc.getStats().then("
                     "(r) => { let f = 0; r.forEach((s) => { if (s.type === 'inbound-rtp' && "
                     "s.kind === 'video') f += s.framesDecoded; }); return f > n + 5; })",
                     before[p.name])
    await a.page.screenshot(path=str(shots / "call-4-screenshare.png"))

    # the invite dialog shows the full link and a QR code
    await a.page.click("#btn-invite")
    assert await a.js("document.querySelector('#invite-link').value") == url
    assert await a.js("document.querySelector('#qr').width") > 100
    await a.page.screenshot(path=str(shots / "invite-desktop.png"))
    await a.page.keyboard.press("Escape")

    # leave removes the tile everywhere
    await d.page.click("#btn-leave")
    await d.wait("document.body.dataset.screen === 'ended'")
    for p in (a, b, c):
        await p.wait(f"!{tile(ids[NAMES[3]])} && "
                     "document.querySelectorAll('#grid .tile').length === 3")

    # the server relayed only ciphertext
    relayed = recorder.relayed()
    assert '"connection"' in relayed and '"message"' in relayed, "recorder saw no signaling"
    # (only strings long enough not to turn up by chance in kilobytes of base64)
    for secret in [CHAT, "hello from Bob", *NAMES, "a=fingerprint", "candidate:", "typ relay",
                   "m=video", '"description"', '"muted"', '"type":"chat"', "ice-ufrag"]:
        assert secret not in relayed, f"the server saw {secret!r} in clear"

    assert_clean(parts, base)
    for p in parts:
        assert await p.csp_violations() == [], p.name
        assert await p.js("document.querySelector('[data-notice=ice]') === null"), p.name


async def test_wrong_key_sees_notice_and_decrypts_nothing(turn_server, recorder, webchromium,
                                                         shots):
    base = recorder.base
    a, url = await create_room(webchromium, base, NAMES[0])
    await a.join()
    b = await new_participant(webchromium, url, NAMES[1])
    await b.join()
    await wait_media([a, b], 1, audio=False)
    wrong = url.split("#")[0] + "#" + "A" * 43
    m = await new_participant(webchromium, wrong, "Mallory")
    await m.join()
    for p in (a, b, m):
        await p.wait("document.querySelector('[data-notice=\"wrongkey\"]') !== null")
        text = await p.js("document.querySelector('[data-notice=\"wrongkey\"]').textContent")
        assert "wrong key" in text
    await a.page.click("#btn-chat")
    await a.page.fill("#chat-input", "not for Mallory")
    await a.page.press("#chat-input", "Enter")
    await b.wait("incognito.chat.some((m) => m.text === 'not for Mallory')")
    # Mallory got the message (counted as undecryptable) but shows nothing of it
    await m.wait("incognito.sig.undecryptable >= 2")
    assert await m.js("incognito.chat.length") == 0
    assert "Alice" not in await m.js("document.querySelector('#grid').textContent")
    # and no media link with Mallory ever gets anywhere
    stats = await m.stats()
    assert all(s["frames"] == 0 for s in stats.values()), stats
    await m.page.screenshot(path=str(shots / "wrong-key.png"))
    assert_clean([a, b, m], base)


async def test_socket_drop_rejoins_without_reload(turn_server, recorder, webchromium):
    base = recorder.base
    a, url = await create_room(webchromium, base, NAMES[0])
    await a.join()
    b = await new_participant(webchromium, url, NAMES[1])
    await b.join()
    await wait_media([a, b], 1, audio=False)
    await b.js("window.__noReload = 1")
    old = await b.self_id()
    # cut Bob's socket.io connection; socket.io reconnects and the client rejoins by itself
    await b.js("incognito.socket.io.engine.close()")
    await b.wait("document.querySelector('#conn-status').dataset.state !== 'connected'",
                 timeout=5)
    await b.wait("document.querySelector('#conn-status').dataset.state === 'connected' && "
                 "incognito.sig.active", timeout=20)
    assert await b.js("window.__noReload") == 1, "the page reloaded"
    new = await b.self_id()
    # the call goes on: fresh frames both ways, the others see one Bob (no ghost tile)
    await wait_media([a, b], 1, audio=False)
    await a.wait("(id) => document.querySelectorAll('#grid .tile').length === 2 && "
                 "!!document.querySelector(`#grid .tile[data-peer=\"${id}\"]`)", new,
                 why=TILES)
    assert await a.js("incognito.peers.size") == 1
    if new != old:
        assert await a.js(f"!{tile(old)}")
    assert_clean([a, b], base)


async def test_host_locks_the_room_and_removes_someone(turn_server, webchromium, shots):
    base = turn_server.base
    a = await new_participant(webchromium, base + "/", NAMES[0])
    await a.wait("document.body.dataset.screen === 'landing'")
    await a.page.screenshot(path=str(shots / "landing-desktop.png"))
    await a.page.click("#create-room")
    await a.wait("document.body.dataset.screen === 'prejoin'")
    url = a.page.url
    await a.join()
    b = await new_participant(webchromium, url, NAMES[1])
    await b.join()
    bob = await b.self_id()
    await a.wait(f"!!{tile(bob)}")
    # only the host has the lock button and remove buttons
    assert await a.js("!document.querySelector('#btn-lock').hidden")
    assert await b.js("document.querySelector('#btn-lock').hidden")
    assert await b.js("[...document.querySelectorAll('#grid .remove')].every((x) => x.hidden)")

    await a.page.click("#btn-lock")
    for p in (a, b):
        await p.wait("!document.querySelector('#lock-badge').hidden")
    c = await new_participant(webchromium, url, NAMES[2])
    await c.wait("document.body.dataset.screen === 'prejoin'")
    await c.page.fill("#name", NAMES[2])
    await c.page.click("#join")
    await c.wait("!document.querySelector('#prejoin-error').hidden")
    assert "locked" in await c.js("document.querySelector('#prejoin-error').textContent")
    assert await c.screen() == "prejoin"
    await a.page.click("#btn-lock")
    for p in (a, b):
        await p.wait("document.querySelector('#lock-badge').hidden")

    # remove Bob (the page asks to confirm)
    a.page.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
    await a.page.hover(f"#grid .tile[data-peer='{bob}']")
    await a.page.click(f"#grid .tile[data-peer='{bob}'] .remove")
    await b.wait("document.body.dataset.screen === 'ended'")
    assert "removed" in await b.js("document.querySelector('#ended-title').textContent")
    await a.wait(f"!{tile(bob)} && document.querySelectorAll('#grid .tile').length === 1")
    await b.page.screenshot(path=str(shots / "removed.png"))
    assert_clean([a, b, c], base)


@pytest.mark.faults
async def test_silently_lost_connection_resumes_the_same_peer(turn_server, recorder,
                                                             webchromium):
    """The network dies under Bob without a goodbye: his browser reconnects before the server
    notices, rejoins with its resume token and takes his peer over; Alice sees no one leave and
    the media link is never rebuilt."""
    base = recorder.base
    a, url = await create_room(webchromium, base, NAMES[0])
    await a.join()
    b = await new_participant(webchromium, url, NAMES[1])
    await b.join()
    await wait_media([a, b], 1, audio=False)
    await b.js("window.__noReload = 1")
    bob = await b.self_id()
    sid = await a.js(f"incognito.mesh.links.get({bob!r}).sid")
    assert await recorder.drop_silently(bob) == 1
    await b.wait("incognito.sig.rejoins === 1", timeout=20)
    assert await b.js("incognito.sig.resumes") == 1
    assert await b.self_id() == bob
    assert await b.js("window.__noReload") == 1
    await wait_media([a, b], 1, audio=False)
    assert await a.js(f"incognito.mesh.links.get({bob!r}).sid") == sid, "link was rebuilt"
    assert await a.js("incognito.peers.size") == 1
    log = await a.js("document.querySelector('#chat-log').textContent")
    assert "left" not in log, log
    # and encrypted messages still flow from the resumed peer (sequence numbers go on)
    await b.page.click("#btn-chat")
    await b.page.fill("#chat-input", "still here")
    await b.page.press("#chat-input", "Enter")
    await a.wait("incognito.chat.some((m) => m.text === 'still here')")


UFRAG = ("(peer) => { const d = incognito.mesh.links.get(peer).pc.currentLocalDescription;"
         " return d && d.sdp.match(/a=ice-ufrag:(\\S+)/)[1]; }")


async def test_ice_restart_from_both_sides_at_once_renegotiates(turn_server, webchromium):
    """Both ends restart ICE at the same moment (offer glare): perfect negotiation settles it,
    both get new ICE credentials and the media goes on."""
    a = await new_participant(webchromium, turn_server.url, NAMES[0])
    await a.join()
    b = await new_participant(webchromium, turn_server.url, NAMES[1])
    await b.join()
    await wait_media([a, b], 1, audio=False)
    ida, idb = await a.self_id(), await b.self_id()
    before = {"a": await a.js(UFRAG, idb), "b": await b.js(UFRAG, ida)}
    await asyncio.gather(a.js(f"incognito.mesh.links.get({idb!r}).pc.restartIce()"),
                         b.js(f"incognito.mesh.links.get({ida!r}).pc.restartIce()"))
    await a.wait(f"(u) => {{ const f = {UFRAG}; const l = incognito.mesh.links.get({idb!r});"
                 f" return f({idb!r}) !== u && l.pc.signalingState === 'stable'; }}",
                 before["a"])
    await b.wait(f"(u) => {{ const f = {UFRAG}; const l = incognito.mesh.links.get({ida!r});"
                 f" return f({ida!r}) !== u && l.pc.signalingState === 'stable'; }}",
                 before["b"])
    await wait_media([a, b], 1, audio=False)
    assert await a.js(f"incognito.mesh.links.get({idb!r}).pc.getTransceivers().length") == 2
