"""Issue 8: several machines behind one onion address with Onionbalance, on the private Tor
network (docs/self-hosting.md, "Several machines behind one onion: Onionbalance").

Two "machines", each a real ``incognito-onion up --no-tor --no-turn`` on its own loopback port
and state dir (the same ``room-tickets.key`` copied into both, 0600) behind its own tor with a
``HiddenServiceDir`` backend (``HiddenServiceOnionbalanceInstance 1``, ``ob_config`` naming the
front); a third tor under Debian's ``onionbalance`` daemon, which publishes the front address
with both backends' introduction points. Everything a client does goes through the network's
client SocksPort to the front address:

- the page and ``/healthz`` come through it, the front's descriptor (fetched and decrypted)
  lists two intro points of each backend and no others, and socket.io reaches a backend through
  it (a backend is told apart by the room its own ``up`` printed, which only that server knows);
- the use case the docs give: a call made on the backend the front led to (X) survives X's
  machine dying (its server and its tor killed by PID): a ``join`` with the room's restore
  ticket, through the same front address, reaches the other backend (Y) and the room comes
  back there under its id. So both backends answer at the front address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from incognito_onion import room_tickets
from tests.support.onionbalance import (
    ONIONBALANCE_PACKAGE,
    SYSTEM_PYTHON,
    OnionbalanceDaemon,
    backend_address,
    backend_tor_lines,
    connect_via_socks,
    intro_point_keys,
    make_front_key,
    start_onionbalance,
)
from tests.support.server import LiveServer, Peer, start_server
from tests.support.tornet import Node, TorNetwork, fetch_via_socks, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.filterwarnings("ignore:setDaemon:DeprecationWarning")]

#: seconds: Onionbalance publishes one or two consensuses (10 s each) after it has both
#: backends' descriptors, which they upload a second or two after bootstrapping
PUBLISH_TIMEOUT = 90
#: seconds: Onionbalance refetches the backends' descriptors every 20 s on a testnet
INTRO_MATCH_TIMEOUT = 60


@dataclass
class Backend:
    """One machine: its web server and its tor (backend onion ``address``)."""

    name: str
    server: LiveServer
    tor: Node
    address: str


@dataclass
class Balanced:
    """The front address, the two backends and the daemon publishing the front."""

    net: TorNetwork
    front: str
    backends: list[Backend]
    daemon: OnionbalanceDaemon
    daemon_tor: Node
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://{self.front}"

    @contextlib.contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        """Prints :meth:`logs` when the block fails, and lets the failure through."""
        try:
            yield
        except BaseException:
            print(self.logs())
            raise

    def logs(self) -> str:
        """What to read when something failed: the daemon, every tor, every server."""
        parts = [f"--- onionbalance ({self.daemon.log}) ---\n{self.daemon.log_tail(40)}"]
        for node in (self.daemon_tor, *(b.tor for b in self.backends)):
            parts.append(f"--- tor {node.nick} ---\n{node.log_tail(15).replace(' | ', chr(10))}")
        parts += [f"--- server {b.name} ---\n{b.server.output()[-3000:]}" for b in self.backends]
        return "\n".join(parts)


def _shared_state_dirs(root: Path) -> tuple[Path, Path]:
    """Two state dirs holding the same ``room-tickets.key`` (0600), as the docs tell a
    self-hoster to copy it onto every spare."""
    a, b = root / "state-a", root / "state-b"
    for d in (a, b):
        d.mkdir(mode=0o700)
    room_tickets.load(a)  # makes the secret (0600)
    shutil.copyfile(a / room_tickets.SECRET_NAME, b / room_tickets.SECRET_NAME)
    os.chmod(b / room_tickets.SECRET_NAME, 0o600)
    return a, b


@pytest.fixture(scope="module")
def balanced(tor_network: TorNetwork, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Balanced]:
    """Built once for the module (13-17 s on the running network, most of it waiting for
    Onionbalance to publish); every process it started is stopped by PID at the end, also
    after a failure (the logs are printed then)."""
    if not (os.path.exists(SYSTEM_PYTHON) and os.path.isdir(ONIONBALANCE_PACKAGE)):
        pytest.skip("Onionbalance is needed: scripts/install-system-deps test "
                    "(Debian package onionbalance)")
    net = tor_network
    root = tmp_path_factory.mktemp("onionbalance")
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    servers: list[LiveServer] = []
    tors: list[Node] = []
    daemon: OnionbalanceDaemon | None = None
    bal: Balanced | None = None
    try:
        state_dirs = _shared_state_dirs(root)
        for name, state in zip("ab", state_dirs, strict=True):
            # start_server's own --state-dir comes first on the command line; ours wins
            srv = start_server(root / f"server-{name}", extra_args=["--state-dir", str(state)])
            srv.state_dir = state
            servers.append(srv)
        front_key = root / "front.key"
        front = make_front_key(front_key)
        hs_dirs = []
        for name, srv in zip("ab", servers, strict=True):
            datadir = root / f"tor-{name}"
            datadir.mkdir(mode=0o700)
            hs_dirs.append(datadir / "hs")
            tors.append(net.start_tor(f"backend{name.upper()}", datadir,
                                      backend_tor_lines(hs_dirs[-1], front, srv.port)))
        (root / "tor-ob").mkdir(mode=0o700)
        tors.append(net.start_tor("balancer", root / "tor-ob", ["SocksPort 0"]))
        for node in tors:
            net.wait_bootstrapped(node)
        timings["tors bootstrapped"] = time.monotonic() - t0
        addresses = [str(wait_for(f"backend {i}'s hostname", lambda d=d: backend_address(d),
                                  10, tors)) for i, d in enumerate(hs_dirs)]
        (root / "ob").mkdir()
        daemon = start_onionbalance(root / "ob", front_key, addresses, tors[2])
        timings["onionbalance started"] = time.monotonic() - t0
        backends = [Backend(name, srv, tor, addr) for name, srv, tor, addr
                    in zip("AB", servers, tors[:2], addresses, strict=True)]
        bal = Balanced(net, front, backends, daemon, tors[2], timings)
        wait_for("onionbalance to publish the front descriptor with both backends' intro points",
                 daemon.published_both, PUBLISH_TIMEOUT, [daemon, *tors])  # type: ignore[list-item]
        timings["front published"] = time.monotonic() - t0
        yield bal
    except BaseException:
        if bal is not None:
            print(bal.logs())
        elif daemon is not None:
            print(daemon.log_tail(40))
        else:
            for node in tors:
                print(f"--- tor {node.nick} --- {node.log_tail(15)}")
        raise
    finally:
        if daemon is not None:
            daemon.stop()
        for node in tors:
            node.stop()
        errors = []
        for srv in servers:
            try:
                srv.stop()
            except AssertionError as exc:  # stop them all before failing
                errors.append(str(exc))
        print(f"onionbalance timings (s since the fixture started): {timings}")
        assert not errors, "\n\n".join(errors)


async def which_backend(peer: Peer, bal: Balanced) -> Backend:
    """The backend ``peer`` is connected to: the one whose ``up`` room it can join (rooms live
    in one server; a room another server printed is ``room_not_found``)."""
    for backend in bal.backends:
        ack = await peer.try_join(backend.server.room)
        if isinstance(ack, dict) and ack.get("ok"):
            return backend
    raise AssertionError(f"{peer.name} is on neither backend")


async def front_and_backend_intros(bal: Balanced, deadline: float = INTRO_MATCH_TIMEOUT
                                   ) -> tuple[set[bytes], list[set[bytes]]]:
    """The intro point keys of the front's and each backend's descriptor, as the client tor
    fetches them, once the front's include two of each backend's current ones (or the last
    fetch when ``deadline`` passes). Why a wait: a backend's descriptors for the current and
    the next time period carry different intro points, and this network's time period is
    minutes long, so across a rotation the client fetches a backend descriptor whose intro
    points the front does not copy yet; Onionbalance refetches (every 20 s on a testnet) and
    republishes."""
    end = time.monotonic() + deadline
    while True:
        front = await asyncio.to_thread(intro_point_keys, bal.net.client, bal.front)
        own = [await asyncio.to_thread(intro_point_keys, bal.net.client, b.address)
               for b in bal.backends]
        if [len(front & keys) for keys in own] == [2, 2] or time.monotonic() > end:
            return front, own
        await asyncio.sleep(2)


async def test_the_front_address_lists_both_backends_and_serves_the_page(balanced: Balanced):
    bal = balanced
    socks = bal.net.socks_port
    with bal.logs_on_failure():
        t = time.monotonic()
        status, body, headers = await fetch_via_socks(socks, bal.base + "/", deadline=60,
                                                      attempt=20, fresh_circuits=True,
                                                      username="page")
        bal.timings["first page through the front"] = time.monotonic() - t
        assert status == 200 and "<title>incognito-onion" in body, (status, body[:300])
        assert "default-src 'self'" in headers.get("Content-Security-Policy", "")
        status, body, _ = await fetch_via_socks(socks, bal.base + "/healthz", deadline=30,
                                                attempt=20, fresh_circuits=True,
                                                username="health")
        assert status == 200 and json.loads(body) == {"status": "ok"}

        # what Onionbalance is for: the front's descriptor lists intro points of both
        # backends, two of each (N_INTROS_PER_INSTANCE), and no others
        front, own = await front_and_backend_intros(bal)
        assert [len(front & keys) for keys in own] == [2, 2], (len(front), [len(k) for k in own])
        assert front <= own[0] | own[1]

        # a socket.io connection through the front lands on one of them (the failover test
        # shows the other answering once the one it reached is gone)
        peer = await connect_via_socks(bal.base, socks, "first", deadline=60)
        try:
            reached = await which_backend(peer, bal)
        finally:
            await peer.disconnect()
        print(f"first socket.io connection reached {reached.name}; timings: {bal.timings}")


@pytest.mark.faults
async def test_a_call_comes_back_on_the_other_backend_when_one_machine_dies(
        balanced: Balanced):
    """The machine a client reached through the front (X) dies; the call comes back on the
    other (Y) through the same address. Which one X is, the client tor decides: on this
    5-relay network its picks among the front's intro points are not independent (one
    backend got every connection for 20-35 s in 3 of 16 runs, once for over 120 s, with
    nothing failing in its log), so the test takes whichever answers rather than waiting
    for a given one."""
    bal = balanced
    with bal.logs_on_failure():
        host = await connect_via_socks(bal.base, bal.net.socks_port, "host", deadline=60)
        try:
            x = await which_backend(host, bal)
            made = await host.create()
        finally:
            await host.disconnect()
        y = next(b for b in bal.backends if b is not x)
        room, ticket = made["room"], made["restore"]

        # rooms are not shared: Y does not know it, and without the ticket it stays unknown
        direct = await Peer(y.server.base, "direct").connect()
        try:
            ack = await direct.try_join(room)
            assert (ack.get("error") or {}).get("code") == "room_not_found", ack
        finally:
            await direct.disconnect()

        # X's machine dies: its server and its tor, SIGKILL by PID
        t = time.monotonic()
        x.server.kill()
        assert x.tor.proc is not None
        os.kill(x.tor.proc.pid, signal.SIGKILL)
        x.tor.proc.wait(10)

        # up to 150 s: the front's descriptor keeps listing X's intro points (Onionbalance
        # copies X's last descriptor while HSDirs still serve it), and the client tor has been
        # seen to spend over 60 s (3 tries of 20 s, all timed out; CI-like full run) before a
        # rendezvous through Y, as it sticks to one backend's intro points (see above)
        back = await connect_via_socks(bal.base, bal.net.socks_port, "back", deadline=150,
                                       attempt=30)
        try:
            bal.timings[f"front answers after {x.name} died"] = time.monotonic() - t
            wrong = ticket[:-1] + ("A" if ticket[-1] != "A" else "B")
            ack = await back.call("join", {"room": room, "restore": wrong})
            assert (ack.get("error") or {}).get("code") == "room_not_found", ack
            ack = await back.call("join", {"room": room, "restore": ticket})
            assert ack.get("ok") is True and ack["room"] == room, ack
            assert ack["host"] == ack["peer"], "the first one back is host"
            bal.timings[f"room back on {y.name}"] = time.monotonic() - t
            # it is Y that answered (the only server left, and the one that knows Y's room)
            assert (await which_backend(back, bal)) is y
        finally:
            await back.disconnect()
        print(f"failover timings: {bal.timings}")
