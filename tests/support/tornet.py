"""A private Tor network on 127.0.0.1, built from Debian's ``tor`` and ``tor-gencert``.

Session fixture ``tor_network``: 3 directory authorities + 2 relays (5 relays in all: onion
circuits need 4 distinct ones), a client tor (SocksPort with ExtendedErrors + ControlPort, and a
fixed circuit build timeout like the one a real client learns: CLIENT_CIRCUIT_BUILD_TIMEOUT) and
an onion-service tor (ControlPort, cookie auth) where tests publish onions in attach mode. Start-up
follows ../shared/notes/private-tor-network.md: authorities first, relays, wait for a consensus,
SIGHUP the relays, then the client tors; every wait is on a condition with a deadline. Every tor
is stopped by its PID at the end (and ``__OwningControllerProcess`` ends them if pytest dies).

Also :func:`start_offline_tor`: a single tor with ``DisableNetwork 1`` and a control port, for
the failure tests (wrong password, unreadable cookie, publication that never happens).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TOR = shutil.which("tor") or "/usr/sbin/tor"
TOR_GENCERT = shutil.which("tor-gencert") or "/usr/bin/tor-gencert"

# voting schedule: interval / vote delay / dist delay (seconds)
VOTING = (10, 2, 2)
FIRST_VOTE_AFTER = 3.0  # seconds after the authorities start
REQUIRED_FLAGS = {"Running", "Stable", "Fast", "Guard", "HSDir", "Valid"}
#: circuit build timeout of the network's client tor, fixed (LearnCircuitBuildTimeout 0). tor
#: learns this timeout from 100 circuits; the private network's client never builds that many,
#: so it would keep tor's initial 60 s, where a client on the real network soon learns a few
#: seconds. It matters when an onion service dies: a request sent in the instant the service
#: is killed can reach an introduction point that has not yet noticed, which forwards it and
#: acks; the client then waits for a RENDEZVOUS2 that never comes until it abandons the
#: rendezvous circuit at 3 x this timeout + 1 s (tor: circuit_expire_building), and only then
#: retries through the new descriptor: 181 s with 60 s, 10 s with 3 s (with 5 s, 16 s: a busy
#: 2-core machine pushed that past 30 s once). (tor warns that this is under its recommended
#: 10 s; circuits here build in milliseconds.)
CLIENT_CIRCUIT_BUILD_TIMEOUT = 3


class TorNetError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], object], timeout: float,
             procs: list[Node] | None = None, interval: float = 0.1) -> object:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds, or at
    once if one of ``procs`` exited."""
    deadline = time.monotonic() + timeout
    while True:
        for node in procs or ():
            node.assert_alive()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TorNetError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen | None, grace: float = 5) -> None:
    """SIGTERM by PID, SIGKILL if it is still there after ``grace`` seconds; reaped."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


@dataclass
class Node:
    nick: str
    datadir: Path
    torrc: list[str]
    or_port: int | None = None
    dir_port: int | None = None
    proc: subprocess.Popen | None = None
    fingerprint: str = ""
    v3ident: str = ""
    password: str | None = None
    _controller: object = None

    @property
    def log(self) -> Path:
        return self.datadir / "notice.log"

    def start(self) -> None:
        torrc = self.datadir / "torrc"
        torrc.write_text("\n".join(self.torrc) + "\n")
        out = open(self.datadir / "stdout.log", "wb")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [TOR, "-f", str(torrc), "--defaults-torrc", str(self.datadir / "empty")],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            out.close()

    def assert_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise TorNetError(f"tor {self.nick} exited with {self.proc.returncode}: "
                              f"{self.log_tail()}")

    def log_tail(self, n: int = 5) -> str:
        lines: list[str] = []
        for p in (self.datadir / "stdout.log", self.log):
            with contextlib.suppress(OSError):
                lines += p.read_text(errors="replace").splitlines()
        return " | ".join(lines[-n:])

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.close()
            self._controller = None
        stop_process(self.proc)

    @property
    def control_port(self) -> int:
        text = (self.datadir / "control.port").read_text()  # "PORT=127.0.0.1:N\n[UNIX_PORT=..]"
        line = next(ln for ln in text.splitlines() if ln.startswith("PORT="))
        return int(line.rpartition(":")[2])

    def has_control_port(self) -> bool:
        try:
            return bool((self.datadir / "control.port").read_text().strip())
        except OSError:
            return False

    def controller(self):
        """The fixture's own control connection, opened once and kept: stem sends TAKEOWNERSHIP
        on it (``__OwningControllerProcess`` is our pid), so tor exits when it closes."""
        import stem.control

        c = self._controller
        if c is None or not c.is_alive():
            c = stem.control.Controller.from_port("127.0.0.1", self.control_port)
            c.authenticate(password=self.password)
            self._controller = c
        return c


@dataclass
class TorNetwork:
    """What tests need to use the network."""

    root: Path
    authorities: list[Node]
    relays: list[Node]
    client: Node
    onion: Node
    dir_authority_lines: list[str]
    #: torrc lines a freshly launched tor needs to join this network (tor.extra_torrc)
    client_torrc_lines: list[str]
    socks_port: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def control_port(self) -> int:
        """Control port (cookie auth) of the tor where tests publish onions (attach mode)."""
        return self.onion.control_port

    @property
    def client_control_port(self) -> int:
        return self.client.control_port

    @property
    def nodes(self) -> list[Node]:
        return [*self.authorities, *self.relays, self.client, self.onion]

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):  # keep stopping the others
                node.stop()

    def start_tor(self, nick: str, datadir: Path, lines: list[str]) -> Node:
        """Start one more tor on this network (in a test, another machine's tor: onion services
        from a torrc, Onionbalance's tor) with what every node has (control port, cookie auth,
        ``__OwningControllerProcess``) plus ``lines``; not waited on (start several, then
        :meth:`wait_bootstrapped` each). The caller stops it: :meth:`Node.stop` (by PID)."""
        datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
        empty = datadir / "empty"
        empty.write_text("")
        node = Node(nick, datadir, [*_common(nick, datadir, empty), *self.dir_authority_lines,
                                    *lines])
        node.start()
        return node

    @staticmethod
    def wait_bootstrapped(node: Node, timeout: float = 60) -> None:
        """Until ``node`` (from :meth:`start_tor`) has bootstrapped; fails at once if it exits."""
        wait_for(f"{node.nick}'s control port", node.has_control_port, 10, [node])
        wait_for(f"{node.nick} to bootstrap", lambda: _bootstrapped(node), timeout, [node],
                 interval=0.25)


def _common(nick: str, dd: Path, empty: Path) -> list[str]:
    return [
        "TestingTorNetwork 1",
        f"DataDirectory {dd}",
        f"Nickname {nick}",
        "ShutdownWaitLength 0",
        "SafeLogging 0",
        f"Log notice file {dd / 'notice.log'}",
        "PathsNeededToBuildCircuits 0.67",
        "ClientUseIPv6 0",
        f"GeoIPFile {empty}",
        f"GeoIPv6File {empty}",
        f"__OwningControllerProcess {os.getpid()}",
        "ControlPort 127.0.0.1:auto",
        f"ControlPortWriteToFile {dd / 'control.port'}",
        "CookieAuthentication 1",
    ]


def _relay(port: int, empty: Path, exit_: bool) -> list[str]:
    lines = [
        "Address 127.0.0.1",
        f"ORPort 127.0.0.1:{port}",
        "SocksPort 0",
        "AssumeReachable 1",
        "ContactInfo incognito-onion-tests@localhost",
        f"ServerDNSResolvConfFile {empty}",
        "ServerDNSDetectHijacking 0",
    ]
    if exit_:
        lines += ["ExitRelay 1", "ExitPolicyRejectPrivate 0", "ExitPolicy accept 127.0.0.1:*",
                  "ExitPolicy reject *:*"]
    else:
        lines += ["ExitRelay 0"]
    return lines


def _voting_offset(start: float) -> int:
    """TestingV3AuthVotingStartOffset so the first vote falls ~FIRST_VOTE_AFTER s after
    ``start``: the consensus becomes valid at a multiple of the interval plus this offset, and
    votes are cast vote+dist delay before that."""
    interval, vote, dist = VOTING
    valid_after = start + FIRST_VOTE_AFTER + vote + dist
    return int(valid_after + 0.999) % interval


def _make_authority_keys(node: Node, empty: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
    keys = node.datadir / "keys"
    keys.mkdir(parents=True)
    gencert = subprocess.Popen(
        [TOR_GENCERT, "--create-identity-key", "--passphrase-fd", "0",
         "-i", str(keys / "authority_identity_key"), "-s", str(keys / "authority_signing_key"),
         "-c", str(keys / "authority_certificate"), "-m", "12",
         "-a", f"127.0.0.1:{node.dir_port}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert gencert.stdin is not None
    gencert.stdin.write(b"\n")
    gencert.stdin.close()
    gencert.stdin = None  # communicate() must not touch it again
    fpr = subprocess.Popen(
        [TOR, "--list-fingerprint", "-f", str(empty), "--defaults-torrc", str(empty),
         "--DataDirectory", str(node.datadir), "--ORPort", str(node.or_port),
         "--Nickname", node.nick,
         "--DirAuthority", "dummy orport=1 127.0.0.1:1 " + "0" * 40],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return gencert, fpr


def _finish_keys(node: Node, gencert: subprocess.Popen, fpr: subprocess.Popen) -> None:
    out, _ = gencert.communicate(timeout=60)
    if gencert.returncode != 0:
        raise TorNetError(f"tor-gencert for {node.nick} failed: {out.decode(errors='replace')}")
    cert = (node.datadir / "keys" / "authority_certificate").read_text()
    node.v3ident = next(line.split()[1] for line in cert.splitlines()
                        if line.startswith("fingerprint "))
    out, _ = fpr.communicate(timeout=60)
    if fpr.returncode != 0:
        raise TorNetError(f"tor --list-fingerprint for {node.nick} failed: "
                          f"{out.decode(errors='replace')}")
    last = out.decode().strip().splitlines()[-1]
    nick, _, fp = last.partition(" ")
    if nick != node.nick:
        raise TorNetError(f"unexpected --list-fingerprint output: {last}")
    node.fingerprint = fp.replace(" ", "")


def _consensus_served(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/tor/status-vote/current/consensus"
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (loopback)
            return r.status == 200 and b"network-status-version 3" in r.read(200)
    except OSError:
        return False


def _getinfo(node: Node, key: str) -> str | None:
    try:
        return node.controller().get_info(key)
    except Exception:
        return None


def _all_relays_usable(node: Node, count: int) -> bool:
    ns = _getinfo(node, "ns/all")
    if not ns:
        return False
    usable = 0
    for line in ns.splitlines():
        if line.startswith("s "):
            if set(line.split()[1:]) >= REQUIRED_FLAGS:
                usable += 1
    return usable >= count


def _bootstrapped(node: Node) -> bool:
    phase = _getinfo(node, "status/bootstrap-phase") or ""
    return "PROGRESS=100" in phase


def build_network(root: Path) -> TorNetwork:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    root.mkdir(parents=True, exist_ok=True)
    empty = root / "empty"
    empty.write_text("")

    def mk(nick: str, **kw: int) -> Node:
        dd = root / nick
        dd.mkdir(mode=0o700)
        (dd / "empty").write_text("")
        return Node(nick, dd, [], **kw)

    auths = [mk(f"auth{i}", or_port=free_port(), dir_port=free_port()) for i in range(3)]
    relays = [mk(f"relay{i}", or_port=free_port()) for i in range(2)]
    client = mk("client")
    onion = mk("onion")
    socks_port = free_port()
    net = TorNetwork(root, auths, relays, client, onion, [], [], socks_port, timings)
    try:
        started = [_make_authority_keys(a, empty) for a in auths]
        for a, (g, f) in zip(auths, started, strict=True):
            _finish_keys(a, g, f)
        timings["keys"] = time.monotonic() - t0

        net.dir_authority_lines = [
            f"DirAuthority {a.nick} orport={a.or_port} v3ident={a.v3ident} "
            f"127.0.0.1:{a.dir_port} {a.fingerprint}" for a in auths]
        net.client_torrc_lines = [
            "TestingTorNetwork 1", "PathsNeededToBuildCircuits 0.67", "ClientUseIPv6 0",
            f"GeoIPFile {empty}", f"GeoIPv6File {empty}", *net.dir_authority_lines]

        interval, vote, dist = VOTING
        offset = _voting_offset(time.time())
        for a in auths:
            a.torrc = [*_common(a.nick, a.datadir, empty), *_relay(a.or_port, empty, False),
                       f"DirPort 127.0.0.1:{a.dir_port}",
                       "AuthoritativeDirectory 1", "V3AuthoritativeDirectory 1",
                       f"TestingV3AuthInitialVotingInterval {interval}",
                       f"TestingV3AuthInitialVoteDelay {vote}",
                       f"TestingV3AuthInitialDistDelay {dist}",
                       f"V3AuthVotingInterval {interval}", f"V3AuthVoteDelay {vote}",
                       f"V3AuthDistDelay {dist}", "V3AuthNIntervalsValid 2",
                       "TestingDirAuthVoteExit *", "TestingDirAuthVoteGuard *",
                       "TestingDirAuthVoteHSDir *", "TestingMinExitFlagThreshold 0",
                       "TestingMinFastFlagThreshold 0", "AuthDirFastGuarantee 1",
                       "AuthDirVoteStableGuaranteeMinUptime 0",
                       "AuthDirVoteStableGuaranteeMTBF 0", "AuthDirMaxServersPerAddr 0",
                       f"TestingV3AuthVotingStartOffset {offset}",
                       *net.dir_authority_lines]
            a.start()
        wait_for("the authorities' DirPorts",
                 lambda: all(_port_open(a.dir_port) for a in auths), 30, auths)
        timings["authorities"] = time.monotonic() - t0

        for r in relays:
            r.torrc = [*_common(r.nick, r.datadir, empty), *_relay(r.or_port, empty, True),
                       *net.dir_authority_lines]
            r.start()
        wait_for("a consensus from an authority",
                 lambda: any(_consensus_served(a.dir_port) for a in auths), 60,
                 auths + relays, interval=0.25)
        timings["consensus"] = time.monotonic() - t0
        for r in relays:
            wait_for(f"{r.nick}'s control port", r.has_control_port, 10, [r])
            assert r.proc is not None
            r.proc.send_signal(signal.SIGHUP)
        for r in relays:
            wait_for(f"{r.nick} to have the directory info",
                     lambda r=r: _getinfo(r, "status/enough-dir-info") == "1", 60,
                     auths + relays, interval=0.25)
        timings["relays"] = time.monotonic() - t0

        client.torrc = [*_common("client", client.datadir, empty), *net.dir_authority_lines,
                        f"SocksPort 127.0.0.1:{socks_port} ExtendedErrors IsolateSOCKSAuth",
                        "LearnCircuitBuildTimeout 0",
                        f"CircuitBuildTimeout {CLIENT_CIRCUIT_BUILD_TIMEOUT}"]
        onion.torrc = [*_common("onion", onion.datadir, empty), *net.dir_authority_lines,
                       "SocksPort 0"]
        client.start()
        onion.start()
        everyone = auths + relays + [client, onion]
        for n in (client, onion):
            wait_for(f"{n.nick}'s control port", n.has_control_port, 10, [n])
            wait_for(f"{n.nick} to bootstrap", lambda n=n: _bootstrapped(n), 90, everyone,
                     interval=0.25)
        timings["bootstrap"] = time.monotonic() - t0
        for n in (client, onion):
            wait_for(f"{n.nick}'s consensus to list every relay as usable",
                     lambda n=n: _all_relays_usable(n, len(auths) + len(relays)), 90,
                     everyone, interval=0.5)
        timings["ready"] = time.monotonic() - t0
    except BaseException:
        net.stop()
        raise
    return net


def start_offline_tor(datadir: Path, password: str | None = None,
                      cookie: bool = True, control_socket: bool = False) -> Node:
    """A tor with no network (``DisableNetwork 1``) and a loopback control port (plus a control
    socket ``<datadir>/control.sock`` if asked): cookie auth and/or a password. Enough for
    control-port tests and for an onion that never publishes."""
    datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (datadir / "empty").write_text("")
    empty = datadir / "empty"
    lines = [ln for ln in _common("offline", datadir, empty)
             if ln not in ("CookieAuthentication 1", "TestingTorNetwork 1")]
    lines += ["DisableNetwork 1", "SocksPort 0", f"CookieAuthentication {int(cookie)}"]
    if control_socket:
        lines.append(f"ControlSocket unix:{datadir / 'control.sock'}")
    if password is not None:
        hashed = subprocess.run([TOR, "--quiet", "--hash-password", password],
                                capture_output=True, text=True, timeout=30, check=True)
        lines.append(f"HashedControlPassword {hashed.stdout.strip().splitlines()[-1]}")
    node = Node("offline", datadir, lines, password=password)
    node.start()
    wait_for("the offline tor's control port", node.has_control_port, 20, [node])
    node.controller()  # take ownership now, before a test hides the cookie
    return node


@pytest.fixture(scope="session")
def tor_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorNetwork]:
    """The private Tor network, built once per session (~20 s) and stopped at the end."""
    if not (os.path.exists(TOR) and os.path.exists(TOR_GENCERT)):
        pytest.skip("tor and tor-gencert are needed (apt install tor)")
    for attempt in range(3):
        root = tmp_path_factory.mktemp("tornet")
        try:
            net = build_network(root)  # stops what it started when it fails
            break
        except TorNetError as exc:
            # the ports are picked free, then bound by tor a moment later: on a busy machine
            # another program can take one in between; only that is worth another try
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture
def offline_tor(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Factory for :func:`start_offline_tor`; every tor it started is stopped afterwards."""
    started: list[Node] = []

    def make(name: str = "offline", **kw: object) -> Node:
        node = start_offline_tor(tmp_path / name, **kw)  # type: ignore[arg-type]
        started.append(node)
        return node

    try:
        yield make
    finally:
        for node in started:
            node.stop()


# -- reaching onions through the network's SocksPort ------------------------------------------

SOCKS_ONION_ERRORS = {
    0xF0: "descriptor not found", 0xF1: "descriptor invalid", 0xF2: "introduction failed",
    0xF3: "rendezvous failed", 0xF4: "missing client authorization",
    0xF5: "wrong client authorization", 0xF6: "bad address", 0xF7: "introduction timed out",
}


async def socks_reply_code(socks_port: int, host: str, port: int, timeout: float = 60,
                           username: str = "") -> int:
    """Open a SOCKS5 CONNECT to ``host:port`` (name resolved by tor) and return the reply code
    (0 = connected; 0xF4 = missing client authorization, ...). Raw, so the exact code shows."""
    import asyncio
    import struct

    async def run() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", socks_port)
        try:
            if username:
                writer.write(b"\x05\x01\x02")
                await writer.drain()
                assert await reader.readexactly(2) == b"\x05\x02"
                u = username.encode()
                writer.write(b"\x01" + bytes([len(u)]) + u + b"\x01x")
                await writer.drain()
                assert (await reader.readexactly(2))[1] == 0
            else:
                writer.write(b"\x05\x01\x00")
                await writer.drain()
                assert await reader.readexactly(2) == b"\x05\x00"
            h = host.encode()
            writer.write(b"\x05\x01\x00\x03" + bytes([len(h)]) + h + struct.pack(">H", port))
            await writer.drain()
            reply = await reader.readexactly(2)
            return reply[1]
        finally:
            writer.close()

    return await asyncio.wait_for(run(), timeout)


async def fetch_via_socks(socks_port: int, url: str, deadline: float = 60,
                          username: str = "", attempt: float = 30.0,
                          fresh_circuits: bool = False) -> tuple[int, str, dict[str, str]]:
    """GET ``url`` through the SocksPort (rdns: tor resolves the onion); retried until it
    answers or ``deadline`` seconds pass (a client may hold a stale descriptor for a moment
    after a republish). Each try gets at most ``attempt`` seconds; ``fresh_circuits`` gives each
    try a SOCKS username of its own, so tor isolates it onto new circuits instead of waiting
    on one that hangs. Returns (status, body, headers)."""
    import asyncio

    import aiohttp
    from aiohttp_socks import ProxyConnector, ProxyError

    end = time.monotonic() + deadline
    last: Exception | None = None
    tries = 0
    while time.monotonic() < end:
        tries += 1
        user = f"{username or 'try'}-{tries}" if fresh_circuits else username
        proxy = f"socks5://{user + ':x@' if user else ''}127.0.0.1:{socks_port}"
        connector = ProxyConnector.from_url(proxy, rdns=True)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                timeout = aiohttp.ClientTimeout(
                    total=max(1.0, min(attempt, end - time.monotonic())))
                async with session.get(url, timeout=timeout) as resp:
                    return resp.status, await resp.text(), dict(resp.headers)
        except (TimeoutError, aiohttp.ClientError, ProxyError, OSError) as exc:
            last = exc
            await asyncio.sleep(0.5)
    raise TorNetError(f"could not fetch through SOCKS within {deadline:g}s ({tries} tries): "
                      f"{last!r}")
