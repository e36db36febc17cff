"""Real browsers whose only route is Tor: `incognito-onion up` launched on the private Tor
network (tests/support/tornet.py), participants that reach it only through the network's
SocksPort, a WebRTC call through the onion's TURN port.

- two Chromiums (``--proxy-server=socks5://``; every host name goes to tor, none is resolved
  here) and then a Firefox (SOCKS5 prefs, remote DNS,
  ``media.peerconnection.ice.proxy_only_if_behind_proxy=false``) with a Chromium hold a call:
  every link's selected local candidate is relay over TCP with the onion's TURN url, frames are
  decoded both ways, and the browsers' processes hold no TCP connection except to the SocksPort
  (and, for Firefox, Marionette's own port);
- a Firefox with its default (proxy-only) WebRTC settings is told in plain words what to change;
- ``keys add`` + client authorization: tor refuses the onion without the key (SOCKS 0xF4), the
  room page loads once the client tor has it;
- killing the tor `up` launched: the same address answers through SOCKS again within 30 s and
  `up` says tor was relaunched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from incognito_onion.tor import client_keys
from tests.support.browsers import ff_wait
from tests.support.onion_up import Up
from tests.support.server import free_port, server_command
from tests.support.tornet import fetch_via_socks, socks_reply_code
from tests.support.webclient import (
    CHROMIUM_EXTRA,
    STATS_JS,
    Participant,
    fake_video,
    new_participant,
    wait_media,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240),
              pytest.mark.filterwarnings("ignore:setDaemon:DeprecationWarning")]

URL_WAIT = 150  # launch + bootstrap + publication on the private network: ~5 s in practice

# Per-link route facts from getStats: the selected pair's local candidate (type, protocol to the
# relay, the TURN url it came from, Firefox's `proxied`) and the remote candidate's type.
ROUTE_JS = """
async () => {
  const out = {};
  const app = globalThis.incognito;
  if (!app || !app.mesh) return out;
  for (const [peer, link] of app.mesh.links) {
    const byId = new Map();
    (await link.pc.getStats()).forEach((s) => byId.set(s.id, s));
    let pair = null;
    for (const s of byId.values()) {
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        pair = byId.get(s.selectedCandidatePairId);
      }
    }
    if (!pair) for (const s of byId.values()) {
      if (s.type === 'candidate-pair' && (s.selected || (s.nominated && s.state === 'succeeded'))) {
        pair = s;
      }
    }
    const local = pair ? byId.get(pair.localCandidateId) : null;
    const remote = pair ? byId.get(pair.remoteCandidateId) : null;
    const locals = [...byId.values()].filter((s) => s.type === 'local-candidate');
    out[peer] = {
      state: link.pc.connectionState,
      local: local ? {type: local.candidateType, protocol: local.protocol,
                      relayProtocol: local.relayProtocol || null, url: local.url || null,
                      proxied: local.proxied || null} : null,
      remote: remote ? {type: remote.candidateType} : null,
      localTypes: locals.map((s) => s.candidateType + '/' + (s.relayProtocol || s.protocol)),
      iceServers: link.pc.getConfiguration().iceServers.flatMap((s) => [].concat(s.urls)),
      policy: link.pc.getConfiguration().iceTransportPolicy,
    };
  }
  return out;
}
"""


# --------------------------------------------------------------------------------------------
# `up` on the private network, shared by the browser tests of this module
# --------------------------------------------------------------------------------------------


def launch_env(tor_network, **extra: str) -> dict[str, str]:
    return {"INCOGNITO_TURN_PORT": str(free_port()),
            "INCOGNITO_TURN_MIN_PORT": "50200", "INCOGNITO_TURN_MAX_PORT": "50299",
            "INCOGNITO_TOR_EXTRA_TORRC": json.dumps(tor_network.client_torrc_lines),
            "INCOGNITO_TOR_BOOTSTRAP_TIMEOUT": "90", **extra}


def stop_up(up: Up) -> None:
    kids = up.children()
    up.stop()
    for kid in kids:  # tor and coturn went with it; make sure, by PID
        with contextlib.suppress(psutil.Error):
            if kid.is_running() and kid.status() != psutil.STATUS_ZOMBIE:
                kid.kill()


@pytest.fixture(scope="module")
def onion_up(tor_network, tmp_path_factory) -> Iterator[tuple[Up, re.Match]]:
    """One `up` (launched tor + coturn) for the browser tests; each test makes its own room."""
    state = tmp_path_factory.mktemp("onion-up")
    up = Up(["--port", str(free_port()), "--state-dir", str(state / "state")],
            launch_env(tor_network))
    try:
        m = up.wait_url(URL_WAIT)
        yield up, m
    finally:
        stop_up(up)


# --------------------------------------------------------------------------------------------
# browsers behind the SocksPort
# --------------------------------------------------------------------------------------------


def chromium_tor_args(socks_port: int, y4m, onion: str) -> list[str]:
    return [*CHROMIUM_EXTRA, f"--use-file-for-fake-video-capture={y4m}",
            # Chromium does not count http://*.onion as a secure context (Firefox and Tor
            # Browser do): without this, no WebCrypto and no camera
            f"--unsafely-treat-insecure-origin-as-secure=http://{onion}",
            f"--proxy-server=socks5://127.0.0.1:{socks_port}",
            # no name is resolved here: a local lookup fails, so only tor (SOCKS5 with the host
            # name) can resolve anything, .onion included
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


def firefox_tor_prefs(socks_port: int, proxy_only: bool | None) -> dict[str, Any]:
    prefs: dict[str, Any] = {
        "network.proxy.type": 1,
        "network.proxy.socks": "127.0.0.1",
        "network.proxy.socks_port": socks_port,
        "network.proxy.socks_version": 5,
        "network.proxy.socks_remote_dns": True,
        "network.proxy.no_proxies_on": "",
        "network.dns.blockDotOnion": False,
        "dom.securecontext.allowlist_onions": True,
        "media.autoplay.default": 0,
        "media.autoplay.blocking_policy": 0,
    }
    if proxy_only is not None:
        prefs["media.peerconnection.ice.proxy_only_if_behind_proxy"] = proxy_only
    return prefs


def descendants(pred) -> set[int]:
    out = set()
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if pred(p):
                out.add(p.pid)
    return out


def chromium_pids() -> set[int]:
    return descendants(lambda p: "chrom" in p.name().lower())


def firefox_pids(ff) -> set[int]:
    pids = {ff.proc.pid}
    with contextlib.suppress(psutil.Error):
        pids |= {c.pid for c in psutil.Process(ff.proc.pid).children(recursive=True)}
    return pids


def connections(pids: set[int]) -> list[tuple[int, str, Any]]:
    """Every inet socket the processes hold: (pid, process name, psutil sconn)."""
    out = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            name = proc.name()
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        out += [(pid, name, c) for c in conns]
    return out


def off_proxy(conns, socks_port: int, control_ports: tuple[int, ...] = ()) -> list[str]:
    """The sockets that could carry anything past tor: a TCP socket connected or listening
    anywhere but the SocksPort (or the browser's own control port, Marionette), a UDP socket
    connected to anything. (Unconnected UDP sockets are listed by :func:`udp_bound`.)"""
    bad = []
    for pid, name, c in conns:
        if c.type == socket.SOCK_STREAM:
            if c.raddr and c.raddr.ip == "127.0.0.1" and c.raddr.port == socks_port:
                continue
            if c.laddr and c.laddr.ip == "127.0.0.1" and c.laddr.port in control_ports:
                continue  # Marionette's listener and our connection to it
            if not c.raddr and c.status in (psutil.CONN_NONE, psutil.CONN_CLOSE):
                continue  # neither connected nor listening
        elif not c.raddr:
            continue
        bad.append(f"{name}[{pid}] {c.type.name} {c.laddr} -> {c.raddr} {c.status}")
    return bad


def udp_bound(conns) -> list[str]:
    return sorted({f"{c.laddr.ip}:{'5353' if c.laddr.port == 5353 else '*'}"
                   for _, _, c in conns if c.type == socket.SOCK_DGRAM})


def conns_to(conns, socks_port: int) -> list:
    return [c for _, _, c in conns
            if c.type == socket.SOCK_STREAM and c.raddr and c.raddr.port == socks_port]


async def chromium_create_room(browser, base: str, name: str) -> tuple[Participant, str]:
    p = await new_participant(browser, base + "/", name)
    await p.wait("document.body.dataset.screen === 'landing'", timeout=60,
                 why="document.body.innerText")
    await p.page.click("#create-room")
    await p.wait("document.body.dataset.screen === 'prejoin'", timeout=60)
    return p, p.page.url


async def ff_join(ff, url: str, name: str) -> None:
    await asyncio.to_thread(ff.navigate, url)
    await ff_wait(ff, "return document.body.dataset.screen === 'prejoin'", timeout=60)
    await asyncio.to_thread(ff.run, """
        document.querySelector('#name').value = arguments[0];
        document.querySelector('#join').click();
        return true;""", name)
    await ff_wait(ff, "return document.body.dataset.screen === 'call'")


def assert_onion_relay(routes: dict[str, dict], onion: str, who: str) -> None:
    """Every link: selected local candidate relay over TCP, from the onion's TURN server; the
    remote end a relay too (or peer-reflexive, the same address learned first from its
    checks); only the onion's TURN in the configuration; relay-only policy."""
    assert routes, f"{who}: no media link"
    for peer, r in routes.items():
        assert r["state"] == "connected", (who, peer, r)
        assert r["policy"] == "relay", (who, peer, r)
        assert r["iceServers"] and all(u.startswith(f"turn:{onion}:") and
                                       u.endswith("?transport=tcp") for u in r["iceServers"]), r
        local = r["local"]
        assert (local["type"], local["relayProtocol"]) == ("relay", "tcp"), (who, peer, r)
        if local["url"] is not None:  # Chromium says which TURN server the candidate came from
            assert local["url"].startswith(f"turn:{onion}:"), (who, peer, r)
        # the remote end's relay candidate, or the same address learned from its checks
        # before its candidate was signaled (peer-reflexive: seen once in a full run); each
        # side's own route is asserted relay-only above, so that address is its TURN relay
        assert r["remote"]["type"] in ("relay", "prflx"), (who, peer, r)


# --------------------------------------------------------------------------------------------
# the headline: a call through the onion with nothing but tor's SocksPort
# --------------------------------------------------------------------------------------------


async def test_two_chromiums_call_through_the_onion_turn(tor_network, onion_up,
                                                         chromium_factory, tmp_path_factory,
                                                         artifacts):
    _, m = onion_up
    socks = tor_network.socks_port
    y4m = fake_video(tmp_path_factory.getbasetemp() / "fake-camera-320x180.y4m")
    b1 = await chromium_factory(extra_args=chromium_tor_args(socks, y4m, m["host"]))
    b2 = await chromium_factory(extra_args=chromium_tor_args(socks, y4m, m["host"]))
    a, url = await chromium_create_room(b1, m["base"], "Alice Onion")
    assert re.fullmatch(re.escape(m["base"]) + r"/r/[A-Za-z0-9_-]{22}#[A-Za-z0-9_-]{43}", url)
    await a.join(timeout=60)
    b = await new_participant(b2, url, "Bob Onion")
    await b.join(timeout=60)
    await wait_media([a, b], 1, timeout=60, audio=False)  # frames rising, both ways
    for p in (a, b):
        routes = await p.js(ROUTE_JS)
        assert_onion_relay(routes, m["host"], p.name)
        assert all(r["local"]["url"] for r in routes.values()), routes  # Chromium names it
    conns = connections(chromium_pids())
    assert not off_proxy(conns, socks), off_proxy(conns, socks)
    # the page, the socket.io WebSocket and the TURN connection, each through the SocksPort
    assert len(conns_to(conns, socks)) >= 3 * 2, conns
    await a.page.screenshot(path=str(artifacts / "tor-chromium-call.png"))
    for p in (a, b):
        assert not p.errors, p.errors
        assert all(u.startswith(m["base"] + "/") or u.startswith(("data:", "blob:"))
                   for u in p.requests), p.requests


async def test_chromium_without_the_onion_secure_flag_gets_words(tor_network, onion_up,
                                                                 chromium_factory):
    """Chromium does not count http://*.onion as a secure context: no WebCrypto, no camera.
    The page must not pretend: it says it cannot encrypt here, and offers no join."""
    _, m = onion_up
    args = [f"--proxy-server=socks5://127.0.0.1:{tor_network.socks_port}",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
    p = await new_participant(await chromium_factory(extra_args=args),
                              f"{m['base']}/r/{m['room']}#{m['key']}", "Plain Chromium")
    await p.wait("document.body.dataset.screen === 'fatal'", timeout=60)
    seen = await p.js("({secure: isSecureContext, subtle: !!crypto.subtle,"
                      " body: document.body.innerText})")
    assert seen["secure"] is False and seen["subtle"] is False, seen
    text = seen["body"]
    assert "cannot encrypt" in text, text
    # what to change: another browser, or the Chromium flag for this very address
    assert "Tor Browser" in text, text
    assert f"--unsafely-treat-insecure-origin-as-secure=http://{m['host']}" in text, text


async def test_firefox_and_chromium_call_through_the_onion_turn(tor_network, onion_up,
                                                                chromium_factory,
                                                                firefox_marionette,
                                                                tmp_path_factory, artifacts):
    _, m = onion_up
    socks = tor_network.socks_port
    y4m = fake_video(tmp_path_factory.getbasetemp() / "fake-camera-320x180.y4m")
    c, url = await chromium_create_room(
        await chromium_factory(extra_args=chromium_tor_args(socks, y4m, m["host"])),
        m["base"], "Chromium Chris")
    await c.join(timeout=60)
    ff = await asyncio.to_thread(firefox_marionette, firefox_tor_prefs(socks, False))
    await ff_join(ff, url, "Firefox Fay")
    await wait_media([c], 1, timeout=60, audio=False)  # Chromium decodes Firefox
    # Firefox decodes Chromium: framesDecoded rising between two samples
    first = await ff_wait(ff, f"const s = {STATS_JS}; return s().then((o) => "
                              "Object.values(o).some((x) => x.frames > 0) && o);")
    (peer, s0), = first.items()
    await ff_wait(ff, f"const s = {STATS_JS}; return s().then((o) => "
                      f"o[{peer!r}] && o[{peer!r}].frames > {s0['frames']} && o);")
    ff_routes = await ff_wait(ff, f"const r = {ROUTE_JS}; return r();")
    assert_onion_relay(ff_routes, m["host"], "Firefox")
    # (Firefox 153 no longer reports a candidate's `proxied` in its stats; that the TURN
    # connection went through the proxy is shown by the sockets below)
    assert_onion_relay(await c.js(ROUTE_JS), m["host"], c.name)
    ff_conns = connections(firefox_pids(ff))
    assert not off_proxy(ff_conns, socks, (ff.port,)), off_proxy(ff_conns, socks, (ff.port,))
    assert len(conns_to(ff_conns, socks)) >= 2, ff_conns  # page/WebSocket and TURN
    c_conns = connections(chromium_pids())
    assert not off_proxy(c_conns, socks), off_proxy(c_conns, socks)
    await asyncio.to_thread(ff.screenshot, artifacts / "tor-firefox-call.png")


async def test_firefox_in_proxy_only_mode_falls_back_to_the_onion_relay(
        tor_network, onion_up, chromium_factory, firefox_marionette, tmp_path_factory):
    """Tor Browser's and Mullvad Browser's setting (proxy-only mode once the page came through a
    proxy) gathers no ICE candidate at all behind Tor. The call does not die: that person
    switches to the onion relay at once (sees, hears and is seen by the others through the
    page's own connection), and the page names the about:config pref for a direct call."""
    _, m = onion_up
    socks = tor_network.socks_port
    y4m = fake_video(tmp_path_factory.getbasetemp() / "fake-camera-320x180.y4m")
    c, url = await chromium_create_room(
        await chromium_factory(extra_args=chromium_tor_args(socks, y4m, m["host"])),
        m["base"], "Chromium Chris")
    await c.join(timeout=60)
    ff = await asyncio.to_thread(firefox_marionette, firefox_tor_prefs(socks, True))
    await ff_join(ff, url, "Firefox Mullvad")
    text = await ff_wait(ff, "const n = document.querySelector('[data-notice=ice]');"
                             "return n && n.textContent;")
    assert "media.peerconnection.ice.proxy_only_if_behind_proxy" in text, text
    assert "false" in text and "about:config" in text and "onion relay" in text, text
    print(f"\nthe page says: {text}")
    ff_id = await ff_wait(ff, "return incognito.sig && incognito.sig.self;")
    c_id = await c.self_id()
    # Firefox plays Chromium's video and sound from the relay, playback time rising
    play = ("const p = incognito.peers.get(arguments[0]); const s = p && p.relay && p.relay.stats;"
            " return s && p.video.videoWidth > 0 && s.v.readyState >= 2 && s.a.readyState >= 2"
            " && {v: s.v.currentTime, a: s.a.currentTime, w: p.video.videoWidth};")
    first = await ff_wait(ff, play, c_id, timeout=60)
    await ff_wait(ff, play.replace("&& {v:", "&& s.v.currentTime > arguments[1]"
                                   " && s.a.currentTime > arguments[2] && {v:"),
                  c_id, first["v"], first["a"])
    # Chromium plays Firefox's camera from the relay (Firefox sends only through the onion)
    cplay = ("(() => { const p = incognito.peers.get(" + json.dumps(ff_id) + ");"
             " const s = p && p.relay && p.relay.stats;"
             " return s && p.video.videoWidth > 0 && s.v.readyState >= 2 && s.v.currentTime; })()")
    t0 = await c.wait(cplay, timeout=60)
    await c.wait(f"{cplay} > {t0}", timeout=20)
    for who, page in (("Firefox", None), ("Chromium", c)):
        js = ("document.querySelector('.tile[data-peer=\"%s\"] .path').textContent"
              % (c_id if page is None else ff_id))
        label = (await asyncio.to_thread(ff.run, "return " + js + ";") if page is None
                 else await page.js(js))
        assert label == "onion relay", (who, label)
    # WebRTC gathered nothing and is closed; nothing of the call went around the proxy
    assert await asyncio.to_thread(ff.run, "return incognito.mesh === null;")
    ff_conns = connections(firefox_pids(ff))
    assert not off_proxy(ff_conns, socks, (ff.port,)), off_proxy(ff_conns, socks, (ff.port,))


# --------------------------------------------------------------------------------------------
# client authorization, end to end through the CLI
# --------------------------------------------------------------------------------------------


async def test_client_auth_keys_add_then_up(tor_network, up_factory, tmp_path):
    state = tmp_path / "auth-state"
    env = launch_env(tor_network, INCOGNITO_TOR_PERSISTENT_KEY="true",
                     INCOGNITO_TOR_CLIENT_AUTH="true")
    added = subprocess.run([*server_command(), "keys", "add", "carol", "--state-dir", str(state)],
                           env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    line = re.search(r"^\s*([a-z2-7]{56}):descriptor:x25519:([A-Z2-7]{52})\s*$", added.stdout,
                     re.M)
    assert line, added.stdout  # what a participant pastes into Tor Browser
    service_id, private = line.groups()
    up = up_factory("--state-dir", str(state), env=env)
    m = await asyncio.to_thread(up.wait_url, URL_WAIT)
    assert m["host"] == f"{service_id}.onion"  # the persistent key's address
    assert "client authorization: 1 key(s)" in "\n".join(up.stderr), up.stderr
    code = await socks_reply_code(tor_network.socks_port, m["host"], 80, username="no-key")
    assert code == 0xF4, hex(code)  # tor: missing client authorization
    client = tor_network.client.controller()
    reply = client.msg(f"ONION_CLIENT_AUTH_ADD {service_id} "
                       f"{client_keys.tor_client_auth(private)}")
    assert reply.content()[0][0] in ("250", "251", "252"), str(reply)
    try:
        status, body, _ = await fetch_via_socks(tor_network.socks_port,
                                                f"{m['base']}/r/{m['room']}", deadline=30,
                                                username="with-key")
        assert status == 200 and "<html" in body.lower()
    finally:
        client.msg(f"ONION_CLIENT_AUTH_REMOVE {service_id}")


# --------------------------------------------------------------------------------------------
# tor dies while serving
# --------------------------------------------------------------------------------------------


@pytest.mark.faults
async def test_killed_tor_is_relaunched_and_the_address_answers_again(tor_network, up_factory):
    up = up_factory(env=launch_env(tor_network))
    m = await asyncio.to_thread(up.wait_url, URL_WAIT)
    page = f"{m['base']}/r/{m['room']}"
    assert (await fetch_via_socks(tor_network.socks_port, page, deadline=30))[0] == 200
    tors = [p for p in up.children() if p.name() == "tor"]
    assert len(tors) == 1, tors
    t0 = time.monotonic()
    tors[0].kill()
    # tries of 10 s on circuits of their own: one full run's single 30 s try hung on a
    # circuit built while the old tor was going (the same 30 s bound as before)
    status, body, _ = await fetch_via_socks(tor_network.socks_port, page, deadline=30,
                                            username="after-the-kill", attempt=10,
                                            fresh_circuits=True)
    back = time.monotonic() - t0
    assert status == 200 and "<html" in body.lower()
    assert back < 30, back
    err = "\n".join(up.stderr)
    # (with tor's last words, whatever they were, when it left any)
    assert re.search(r"tor: tor exited unexpectedly \(killed by signal 9(; last tor message: "
                     r"[^\n]*)?\); relaunching it", err), err
    assert re.search(r"tor: tor relaunched in \d+\.\d+s; the onion is published again at the "
                     r"same address", err), err
    new = [p for p in up.children() if p.name() == "tor"]
    assert len(new) == 1 and new[0].pid != tors[0].pid, new
    assert up.proc.poll() is None  # still serving
    print(f"\nthe onion answered again {back:.1f} s after tor was killed")
