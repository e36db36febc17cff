"""Fixtures for a real, supervised coturn (Debian package coturn).

- ``turn_config(**overrides)``: a validated :class:`Config` with free loopback ports for TURN
  (keys without the ``turn.`` prefix: ``turn_config(tls_port=free_tcp_port())``).
- ``coturn``: a started :class:`CoturnSupervisor` on 127.0.0.1 (events in ``coturn.events``).
- ``coturn_factory``: ``await coturn_factory(cfg=None, **kwargs)`` starts more (kwargs go to
  the supervisor, e.g. ``command_prefix``); all are stopped at teardown.
- ``netns``: a network namespace with a veth pair to this one (skips when ``ip netns`` is not
  permitted); see :class:`NetNs`.

Every coturn is stopped by PID at teardown, and a test fails if one is still alive after.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from incognito_onion.config import Config
from incognito_onion.schema import defaults
from incognito_onion.turn import CoturnSupervisor, TurnEvent


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_udp_range(host: str = "127.0.0.1", size: int = 32) -> tuple[int, int]:
    """A block of ``size`` UDP ports nobody holds now, for coturn's relay range."""
    for _ in range(200):
        base = random.randrange(40000, 60000 - size)
        socks = []
        try:
            for p in range(base, base + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base, base + size - 1
    raise RuntimeError("no free UDP port range for coturn")


def make_turn_config(**overrides: Any) -> Config:
    """Defaults plus free ports, plus ``overrides`` (``port=...``, ``relay_ip=...``)."""
    lo, hi = free_udp_range()
    values: dict[str, Any] = {"turn.port": free_tcp_port(), "turn.min_port": lo,
                              "turn.max_port": hi}
    values.update({f"turn.{k}": v for k, v in overrides.items()})
    return Config(defaults()).replace(**values)


@pytest.fixture
def turn_config():
    return make_turn_config


def coturn_available() -> bool:
    return shutil.which("turnserver") is not None


requires_coturn = pytest.mark.skipif(
    not coturn_available(), reason="coturn's turnserver is not installed (Debian package coturn)")


class _Recorder(list):
    def __call__(self, event: TurnEvent) -> None:
        self.append(event)


@pytest.fixture
async def coturn_factory(tmp_path: Path) -> AsyncIterator[Any]:
    if not coturn_available():
        pytest.skip("coturn's turnserver is not installed (Debian package coturn)")
    started: list[CoturnSupervisor] = []
    pids: set[int] = set()

    async def start(cfg: Config | None = None, **kwargs: Any) -> CoturnSupervisor:
        events = _Recorder()
        state = tmp_path / f"state{len(started)}"
        sup = CoturnSupervisor(cfg or make_turn_config(), state, on_event=events, **kwargs)
        sup.events = events  # type: ignore[attr-defined]
        started.append(sup)
        await sup.start()
        pids.add(sup.pid)
        return sup

    yield start
    for sup in started:
        if sup.pid:
            pids.add(sup.pid)
        pids.update(e.pid for e in sup.events if e.pid)  # type: ignore[attr-defined]
        await sup.stop()
    alive = [p for p in pids if p and _alive(p)]
    for p in alive:  # belt and braces: never leave a coturn behind
        os.kill(p, 9)
    assert not alive, f"coturn still running after stop(): {alive}"


@pytest.fixture
async def coturn(coturn_factory) -> CoturnSupervisor:
    return await coturn_factory()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# --- network namespaces -------------------------------------------------------------------------

@dataclass
class NetNs:
    """A namespace ``name`` joined to this one by a veth pair on a /24 of 10.x: ``inner_ip``
    inside, ``outer_ip`` here. ``add_address(ip)`` puts one more address on the inner end."""

    name: str
    inner_ip: str
    outer_ip: str
    inner_dev: str
    outer_dev: str
    extra: list[str] = field(default_factory=list)

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, *args: str) -> None:
        _ip(*self.exec_prefix, *args)

    def add_address(self, ip: str, prefix: int = 24) -> None:
        """Another address inside (e.g. a 'public' one); reachable from here via the veth."""
        self.run("ip", "addr", "add", f"{ip}/{prefix}", "dev", self.inner_dev)
        _ip("ip", "route", "add", f"{ip}/32", "dev", self.outer_dev)
        self.extra.append(ip)


def _ip(*args: str) -> None:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip() or proc.returncode}")


@pytest.fixture
def netns() -> Iterator[NetNs]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed")
    tag = secrets.token_hex(3)
    name, outer, inner = f"io-turn-{tag}", f"iot{tag}o", f"iot{tag}i"
    subnet = f"10.{random.randrange(100, 250)}.{random.randrange(0, 255)}"
    try:
        _ip("ip", "netns", "add", name)
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"cannot create a network namespace (needs root or CAP_NET_ADMIN): {exc}")
    try:
        _ip("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("ip", "link", "set", inner, "netns", name)
        _ip("ip", "addr", "add", f"{subnet}.1/24", "dev", outer)
        _ip("ip", "link", "set", outer, "up")
        ns = NetNs(name, f"{subnet}.2", f"{subnet}.1", inner, outer)
        ns.run("ip", "addr", "add", f"{subnet}.2/24", "dev", inner)
        ns.run("ip", "link", "set", inner, "up")
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


# --- a real TURN client (aioice) ----------------------------------------------------------------

class Peer(asyncio.DatagramProtocol):
    """The application side of an aioice TURN allocation: what arrives, and failed sends."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.errors.put_nowait(exc)


async def aioice_allocation(host: str, port: int, username: str, password: str, *,
                            ssl: Any = None, timeout: float = 5.0):
    """A UDP relay allocation over TURN-TCP (or TLS) with aioice: ``(transport, Peer)``.
    ``transport.get_extra_info('sockname')`` is the relayed address; close with
    ``transport.close()``."""
    from aioice.turn import create_turn_endpoint

    return await asyncio.wait_for(
        create_turn_endpoint(Peer, (host, port), username, password, transport="tcp", ssl=ssl),
        timeout)


def turn_error_code(exc: BaseException) -> int | None:
    """The STUN error code of an aioice failure (401, 403, ...), or None."""
    response = getattr(exc, "response", None)
    return response.error_code if response is not None else None


async def exchange(ta, pa: Peer, tb, pb: Peer, timeout: float = 5.0) -> None:
    """Datagrams both ways between two aioice allocations, relayed by coturn: each side sends
    until the other has received (the first datagram can beat the other side's permission,
    which is installed by its own first send). Fails if the relay does not deliver in time."""
    ra, rb = ta.get_extra_info("sockname"), tb.get_extra_info("sockname")
    deadline = asyncio.get_running_loop().time() + timeout
    got_a = got_b = False
    while not (got_a and got_b):
        if not got_b:
            ta.sendto(b"to b", rb)
        if not got_a:
            tb.sendto(b"to a", ra)
        for queue, expect in ((pb.received, (b"to b", ra)), (pa.received, (b"to a", rb))):
            try:
                item = await asyncio.wait_for(queue.get(), 0.1)
            except TimeoutError:
                continue
            assert item == expect, item
            if expect[0] == b"to b":
                got_b = True
            else:
                got_a = True
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"relay between {ra} and {rb} delivered a->b {got_b}, b->a {got_a}"
    assert pa.errors.empty() and pb.errors.empty()
