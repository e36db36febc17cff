"""`incognito-onion up` end to end on the private Tor network: launch and attach both print an
onion room URL; the page, its headers and the signaling work through the onion; TURN's port is
published on the same onion; Ctrl-C/SIGTERM stops tor and coturn."""

from __future__ import annotations

import asyncio
import json
import re

import psutil
import pytest
import socketio
from python_socks.async_.asyncio import Proxy

from incognito_onion.turn.client import TurnClient, TurnClientError
from tests.support.onion_up import ONION_URL, socks_session
from tests.support.server import free_port
from tests.support.tornet import fetch_via_socks, socks_reply_code


async def turn_allocation_through_onion(server: dict, socks_port: int) -> None:
    """The credentials a browser got through the onion allocate a relay on the onion TURN."""
    url = server["urls"][0]  # turn:<onion>:<port>?transport=tcp
    host, _, port = url.removeprefix("turn:").partition("?")[0].rpartition(":")
    proxy = Proxy.from_url(f"socks5://127.0.0.1:{socks_port}", rdns=True)
    sock = await proxy.connect(dest_host=host, dest_port=int(port), timeout=60)
    async with TurnClient(host, int(port), server["username"], server["credential"],
                          sock=sock, timeout=60) as client:
        relay_host, relay_port = await client.allocate()
        assert relay_port > 0 and relay_host
    bad = await proxy.connect(dest_host=host, dest_port=int(port), timeout=60)
    with pytest.raises(TurnClientError) as exc:
        async with TurnClient(host, int(port), server["username"], "d3Jvbmc=", sock=bad,
                              timeout=60) as client:
            await client.allocate()
    assert exc.value.code == 401


async def signaling_through_onion(base: str, room: str, socks_port: int) -> None:
    """Two python-socketio clients reach each other only through the onion."""
    sessions = [socks_session(socks_port), socks_session(socks_port)]
    a = socketio.AsyncClient(http_session=sessions[0])
    b = socketio.AsyncClient(http_session=sessions[1])
    got: asyncio.Queue = asyncio.Queue()
    b.on("message", lambda d: got.put_nowait(("message", d)))
    b.on("connection", lambda d: got.put_nowait(("connection", d)))
    try:
        await a.connect(base, transports=["websocket"], wait_timeout=60)
        await b.connect(base, transports=["websocket"], wait_timeout=60)
        ra = await a.call("join", {"room": room, "meta": "ct-a"}, timeout=30)
        assert ra["ok"] and ra["host"] == ra["peer"]
        turn_urls = [u for s in ra["iceServers"] for u in s["urls"]]
        onion_host = base.removeprefix("http://")
        assert any(u.startswith(f"turn:{onion_host}:") for u in turn_urls), turn_urls
        assert ra["iceTransportPolicy"] == "relay"
        await turn_allocation_through_onion(ra["iceServers"][0], socks_port)
        rb = await b.call("join", {"room": room}, timeout=30)
        assert rb["ok"] and [p["peer"] for p in rb["peers"]] == [ra["peer"]]
        created = await a.call("create", {}, timeout=30)
        assert created["ok"] and created["room"] != room
        assert (await a.call("message", {"room": room, "data": "c2VjcmV0"}, timeout=30))["ok"]
        kind, data = await asyncio.wait_for(got.get(), 30)
        assert kind == "message" and data == {"room": room, "from": ra["peer"],
                                              "data": "c2VjcmV0"}
        await a.call("connection", {"room": room, "to": rb["peer"], "data": "sdp"}, timeout=30)
        kind, data = await asyncio.wait_for(got.get(), 30)
        assert kind == "connection" and data["from"] == ra["peer"] and data["data"] == "sdp"
    finally:
        for c in (a, b):
            await c.disconnect()
        for s in sessions:
            await s.close()


async def check_onion(m: re.Match, socks_port: int, turn_port_env: str) -> None:
    status, body, headers = await fetch_via_socks(socks_port, f"{m['base']}/r/{m['room']}")
    assert status == 200 and "<html" in body.lower()
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer"
    status, body, _ = await fetch_via_socks(socks_port, f"{m['base']}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    # the TURN port is published on the same onion (0 = SOCKS success)
    assert await socks_reply_code(socks_port, m["host"], int(turn_port_env)) == 0
    await signaling_through_onion(m["base"], m["room"], socks_port)


@pytest.mark.slow
async def test_up_launches_tor_and_serves_through_the_onion(tor_network, up_factory):
    up = up_factory(env={"INCOGNITO_TOR_EXTRA_TORRC": json.dumps(tor_network.client_torrc_lines),
                         "INCOGNITO_TOR_BOOTSTRAP_TIMEOUT": "90"})
    m = await asyncio.to_thread(up.wait_url, 150)
    err = "\n".join(up.stderr)
    assert re.search(r"tor \[[#.]{30}\] 100%", err), err  # the progress bar reached 100 %
    assert re.search(r"onion published in \d+\.\d s \(launched tor", err), err
    names = {p.name() for p in up.children()}
    assert {"tor", "turnserver"} <= names, names
    await check_onion(m, tor_network.socks_port, up.env["INCOGNITO_TURN_PORT"])
    kids = up.children()
    assert up.stop() == 0
    await asyncio.to_thread(psutil.wait_procs, kids, 10)
    assert not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    assert m["key"] not in err and m["room"] not in err  # no room id or key in the log


@pytest.mark.slow
async def test_up_attaches_to_a_running_tor(tor_network, up_factory):
    up = up_factory("--tor-control", f"127.0.0.1:{tor_network.control_port}")
    m = await asyncio.to_thread(up.wait_url, 120)
    assert "attached to the running tor" in "\n".join(up.stderr)
    assert "tor" not in {p.name() for p in up.children()}  # nothing launched
    await check_onion(m, tor_network.socks_port, up.env["INCOGNITO_TURN_PORT"])
    assert up.stop() == 0
    with tor_network.onion.controller() as ctl:  # the onion is gone from the attached tor
        onions = ctl.get_info("onions/current", "")
    assert m["host"].removesuffix(".onion") not in onions


@pytest.mark.slow
def test_up_with_a_dead_control_port_fails_clearly(up_factory):
    up = up_factory("--tor-control", f"127.0.0.1:{free_port()}")
    code = up.proc.wait(60)
    up.url_seen.wait(5)
    err = "\n".join(up.stderr)
    assert code not in (0, 1) and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("incognito-onion: tor: ")


def test_onion_url_shape():
    assert ONION_URL.match("http://" + "a" * 56 + ".onion/r/" + "B" * 22 + "#" + "c" * 43)
    assert not ONION_URL.match("http://" + "a" * 55 + ".onion/r/" + "B" * 22 + "#" + "c" * 43)
