"""Fault tests of issue 8 with real Chromiums in a call through the real server and its coturn:
a browser whose processes are killed (its TCP connections close) and a browser that freezes
(SIGSTOP: its connections stay open and silent, so only the server's pings can tell) leave no
ghost tile behind, and both are dropped within the ping window
(``server.ping_interval + server.ping_timeout``, 10 s with the shipped defaults); the server
killed mid-call and started again: the call resumes by itself (restore tickets).

Each person runs in a Chromium of their own (``chromium_factory``), so one can be killed by PID
without touching the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import psutil
import pytest

from incognito_onion.schema import BY_PATH
from tests.support.browsers import _children, _descendants, browser_roots
from tests.support.webclient import (
    CHROMIUM_EXTRA,
    fake_video,
    new_participant,
    start_turn_server,
    stop_server,
    wait_media,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(240)]

PING_INTERVAL = BY_PATH["server.ping_interval"].default
PING_TIMEOUT = BY_PATH["server.ping_timeout"].default
WINDOW = PING_INTERVAL + PING_TIMEOUT
# how late the test itself may notice a change: it polls each page every 0.1 s through the
# debugger protocol, on a loaded 2-core machine
NOTICE = 1.0

TILES = ("JSON.stringify({tiles: [...document.querySelectorAll('#grid .tile')].map("
         "(t) => t.dataset.peer), peers: [...incognito.peers.keys()]})")


MESH = ("JSON.stringify({mesh: !!incognito.mesh, links: incognito.mesh ? [...incognito.mesh.links"
        ".keys()] : null, self: incognito.mesh && incognito.mesh.self, excluded: incognito.mesh"
        " ? [...incognito.mesh.excluded] : null, path: document.body.dataset.path})")


def tile(peer: str) -> str:
    return f"document.querySelector('#grid .tile[data-peer=\"{peer}\"]')"


async def launch(chromium_factory, y4m) -> tuple[object, set[int]]:
    """A Chromium of its own, and the PID of its browser process (the root of its tree; see
    ``browser_roots``: freezing the processes that merely appeared during the launch once froze
    the first browser's network service, and so the person who was meant to notice)."""
    before = _descendants()
    browser = await chromium_factory(
        extra_args=[*CHROMIUM_EXTRA, f"--use-file-for-fake-video-capture={y4m}"])
    roots = browser_roots(_descendants() - before, "chrom")
    assert len(roots) == 1, f"expected one new Chromium browser process, found {roots}"
    return browser, roots


def tree(pids: set[int]) -> set[int]:
    """The processes now: ``pids`` and all their descendants."""
    out = set(pids)
    for pid in pids:
        out |= {c.pid for c in _children(pid)}
    return {p for p in out if psutil.pid_exists(p)}


def signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def chromium_census(frozen: set[int], alice: set[int]) -> str:
    """Every Chromium process of the machine: pid, parent, state, type, and whose it is."""
    rows = []
    for q in psutil.process_iter(["pid", "ppid", "name", "status", "cmdline"]):
        if "chrom" not in (q.info["name"] or ""):
            continue
        kind = next((a[7:] for a in q.info["cmdline"] or [] if a.startswith("--type=")),
                    "browser")
        who = "bob" if q.pid in frozen else "alice" if q.pid in alice else "?"
        rows.append(f"{q.pid}<{q.info['ppid']} {q.info['status']} {kind} {who}")
    return "; ".join(rows)


async def gone_after(p, peer: str, others: int, t0: float, timeout: float) -> float:
    """Seconds from ``t0`` until ``p`` shows no tile of ``peer`` and ``others`` + 1 tiles."""
    await p.wait(f"!{tile(peer)} && document.querySelectorAll('#grid .tile').length === "
                 f"{others + 1} && incognito.peers.size === {others}", timeout=timeout,
                 why=TILES)
    return time.monotonic() - t0


async def test_killed_and_frozen_browsers_drop_out_within_the_ping_window(
        turn_server, chromium_factory, tmp_path_factory):
    assert not turn_server.env.get("INCOGNITO_SERVER_PING_INTERVAL")
    assert WINDOW <= 10, "the shipped ping window must be at most 10 s"
    y4m = fake_video(tmp_path_factory.getbasetemp() / "fake-camera-320x180.y4m")
    browsers = [await launch(chromium_factory, y4m) for _ in range(3)]
    parts = []
    for (browser, _), name in zip(browsers, ["Alice", "Bob", "Carol"], strict=True):
        p = await new_participant(browser, turn_server.url, name)
        await p.join()
        parts.append(p)
    a, b, c = parts
    await wait_media(parts, 2, audio=False)
    ids = [await p.self_id() for p in parts]
    for p in parts:
        assert await p.js("document.querySelectorAll('#grid .tile').length") == 3

    # 1. Carol's browser is killed (every process of it, by PID): its sockets close at once
    pids = tree(browsers[2][1])
    t0 = time.monotonic()
    signal_all(pids, signal.SIGKILL)
    killed = await asyncio.gather(gone_after(a, ids[2], 1, t0, WINDOW + 5),
                                  gone_after(b, ids[2], 1, t0, WINDOW + 5))
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(procs, timeout=5)  # SIGKILL is not instant for a busy process
    assert not [q.pid for q in alive if q.is_running() and q.status() != psutil.STATUS_ZOMBIE]
    print(f"\nkilled browser: tile gone at Alice after {killed[0]:.2f} s, at Bob after "
          f"{killed[1]:.2f} s (ping window {WINDOW:g} s)")
    assert max(killed) <= WINDOW + NOTICE

    # no ghost: Alice and Bob still talk (media and chat), and Carol's tile stays away
    await wait_media([a, b], 1, audio=False)
    await a.page.click("#btn-chat")
    await a.page.fill("#chat-input", "still two of us")
    await a.page.press("#chat-input", "Enter")
    await b.wait("incognito.chat.some((m) => m.text === 'still two of us')")
    for p in (a, b):
        assert await p.js(f"!{tile(ids[2])}") and await p.js("incognito.peers.size") == 1

    # 2. Bob's browser freezes (SIGSTOP): its TCP connections stay open, nothing answers the
    # server's pings; only the ping timeout can drop him
    pids = tree(browsers[1][1])
    t0 = time.monotonic()
    signal_all(pids, signal.SIGSTOP)
    try:
        frozen = await gone_after(a, ids[1], 0, t0, WINDOW + 10)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nChromium processes: "
                             f"{chromium_census(pids, tree(browsers[0][1]))}") from None
    finally:
        signal_all(pids, signal.SIGKILL)  # killed while stopped: nothing resumes
    print(f"frozen browser: tile gone at Alice after {frozen:.2f} s (ping window {WINDOW:g} s)")
    assert frozen <= WINDOW + NOTICE
    assert await a.js("document.querySelectorAll('#grid .tile').length") == 1
    await asyncio.sleep(0)  # let Playwright notice the dead browsers before teardown


async def test_a_killed_server_comes_back_and_the_call_resumes_by_itself(
        webchromium, tmp_path):
    """The server process (and with it its coturn) is killed mid-call and started again on the
    same port and state dir: both pages reconnect, bring the room back with its restore ticket
    and rebuild their peer connections through the new coturn, without a reload: no ghost tile,
    video both ways again, chat again."""
    srv = start_turn_server(tmp_path)
    try:
        parts = [await new_participant(webchromium, srv.url, n) for n in ("Alice", "Bob")]
        for p in parts:
            await p.join()
        a, b = parts
        await wait_media(parts, 1, audio=False)
        before = [await p.self_id() for p in parts]
        host = a if await a.js("incognito.sig.host === incognito.sig.self") else b
        await host.page.click("#btn-lock")
        for p in parts:
            await p.wait("incognito.sig.locked === true")
        coturn = [q for q in psutil.Process(srv.pid).children(recursive=True)
                  if "turnserver" in q.name()]
        assert coturn, "no coturn under the server"

        t0 = time.monotonic()
        srv.kill()
        _, alive = psutil.wait_procs(coturn, timeout=10)  # it dies with up (pdeathsig)
        assert not alive, f"coturn outlived the killed server: {[q.pid for q in alive]}"
        for p in parts:  # the pages notice: reconnecting, not a blank screen
            await p.wait("incognito.sig && document.body.dataset.screen === 'call' && "
                         "!incognito.sig.socket.connected", timeout=10)
        srv = srv.relaunch()

        now = []
        for p, old in zip(parts, before, strict=True):
            await p.wait(f"incognito.sig.socket.connected && incognito.sig.rejoins >= 1 && "
                         f"incognito.sig.self && incognito.sig.self !== '{old}' && "
                         f"incognito.peers.size === 1", timeout=30, why=TILES)
            now.append(await p.self_id())
        back = time.monotonic() - t0
        assert await a.js("[...incognito.peers.keys()]") == [now[1]]
        assert await b.js("[...incognito.peers.keys()]") == [now[0]]
        try:
            await wait_media(parts, 1, audio=False)
        except AssertionError as exc:
            state = [f"{p.name}: {await p.js(MESH)}; console: {p.console[-15:]}"
                     for p in parts]
            raise AssertionError(f"{exc}\n" + "\n".join(state)) from None
        resumed = time.monotonic() - t0
        for p in parts:  # no ghost: two tiles, none of the peer ids from before the crash
            assert await p.js("document.querySelectorAll('#grid .tile').length") == 2
            for old in before:
                assert await p.js(f"!{tile(old)}")
            assert await p.screen() == "call"
        stats = await a.stats()
        assert stats[now[1]]["candidateType"] == "relay", stats  # through the new coturn
        # host and lock: whoever was back first, the host of before is host again (its host
        # ticket) and locked the room again (the other got in with its ticket); no page is
        # left saying the lock is gone
        lost = ("(() => { const n = document.querySelector('[data-notice=\"lock-lost\"]');"
                " return n ? n.textContent : ''; })()")
        await host.wait("incognito.sig.host === incognito.sig.self")
        host_id = await host.self_id()
        for p in parts:
            await p.wait(f"incognito.sig.host === '{host_id}' && incognito.sig.locked === true")
            await p.wait(f"{lost} === ''")
        await a.page.click("#btn-chat")
        await a.page.fill("#chat-input", "we are back")
        await a.page.press("#chat-input", "Enter")
        await b.wait("incognito.chat.some((m) => m.text === 'we are back')")
        print(f"\nserver killed: both back in the room {back:.2f} s later, video both ways "
              f"again after {resumed:.2f} s; the host is host again and the room locked")
    finally:
        stop_server(srv)
