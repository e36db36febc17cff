"""Onionbalance on the private Tor network (tests/support/tornet.py): one *front* onion address in
front of several *backend* onion services, set up as docs/self-hosting.md ("Several machines
behind one onion: Onionbalance") says.

- :func:`make_front_key`: the front's ed25519 key, PEM (what ``onionbalance-config`` writes).
- :func:`backend_tor_lines`: a backend's torrc lines (``HiddenServiceDir`` +
  ``HiddenServiceOnionbalanceInstance 1``; its ``ob_config`` is written before tor starts, as
  tor reads it once at start-up).
- :func:`start_onionbalance`: Debian's ``onionbalance`` daemon (package ``onionbalance``, from
  ``scripts/install-system-deps test``) against a tor it controls; started and stopped by PID.
- :func:`intro_point_keys`: which introduction points an onion's descriptor lists.
- :func:`socks_peer`: a :class:`Peer` whose socket.io websocket goes through a SocksPort.

Why a launcher instead of ``/usr/sbin/onionbalance`` itself: with ``--is-testnet`` Onionbalance
(0.2.2, and upstream's 0.2.4 alike) hardcodes chutney's voting interval of 20 s in four
methods of ``hs_v3/consensus.py``: the time-period length (24 rounds, 8 min), the SRV phase
(12 rounds, 4 min) and the start of the current and previous shared-random runs. tor computes
the same values from the consensus' own voting interval (hs_common.c
``get_time_period_length``: one shared-random run, 24 x the interval). Our network votes every
10 s, so tor's time periods last 4 min; an unadjusted Onionbalance blinds the front key for a
period tor does not use, and clients look for the descriptor under another blinded key
(SOCKS 0xF0, descriptor not found). :data:`LAUNCHER` replaces those four methods with the same
formulas over the live consensus' interval (fresh-until minus valid-after).

It also works around a loop: ``hashring.get_responsible_hsdirs`` (0.2.2 and upstream) never
returns when its hash ring has 4 HSDirs or fewer: the first replica takes them all, and the loop
for the second skips each one forever (logging "Ignoring already added HSDir!" at debug level:
370 MB in 90 s). Our network has 5 HSDirs, but Onionbalance builds its ring from the relays
whose microdescriptor its tor holds, and in a young network one is often missing for a minute
or more (seen: an authority's, named by every consensus for 40 s and never fetched): 2 runs
of 3 hung so. For such a ring
the launcher returns what the loop is after, every HSDir of the ring (tor's clients ask the
others, too). Then it runs Onionbalance's own ``main``; nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import Peer, _die_with_parent
from tests.support.tornet import Node, stop_process, wait_for

#: Debian's python, where the ``onionbalance`` package and its dependencies live
SYSTEM_PYTHON = "/usr/bin/python3"
ONIONBALANCE_PACKAGE = "/usr/lib/python3/dist-packages/onionbalance"

#: Run by SYSTEM_PYTHON with Onionbalance's own arguments (see the module docstring).
LAUNCHER = '''\
"""Onionbalance with its --is-testnet clock taken from the consensus (not chutney's 20 s) and
no endless loop over a hash ring of 4 HSDirs or fewer."""
import stem.util
from onionbalance import manager
from onionbalance.hs_v3 import hashring, params
from onionbalance.hs_v3.consensus import Consensus


def interval(self):
    doc = self.consensus
    return int((doc.fresh_until - doc.valid_after).total_seconds())


def current_srv_run(self):
    # a shared-random run is 24 voting rounds (tor: sr_state_get_start_time_of_current_...)
    start_of_round = stem.util.datetime_to_unix(self.consensus.valid_after)
    return int(start_of_round - (start_of_round // interval(self)) % 24 * interval(self))


responsible_hsdirs = hashring.get_responsible_hsdirs


def every_hsdir_of_a_small_ring(blinded_pubkey, is_first_descriptor):
    # with 4 HSDirs or fewer the first replica takes them all and the loop picking the
    # second's never ends; the answer it is after is every HSDir of the ring
    ring = hashring._get_hash_ring_for_descriptor(is_first_descriptor)
    if 0 < len(ring) <= params.HSDIR_SPREAD_STORE:
        return [node.get_hex_fingerprint() for node in ring.values()]
    return responsible_hsdirs(blinded_pubkey, is_first_descriptor)


Consensus.get_time_period_length = lambda self: 24 * interval(self) // 60
Consensus._get_srv_phase_duration = lambda self: 12 * interval(self) // 60
Consensus.get_start_time_of_current_srv_run = current_srv_run
Consensus.get_start_time_of_previous_srv_run = (
    lambda self: current_srv_run(self) - 24 * interval(self))
hashring.get_responsible_hsdirs = every_hsdir_of_a_small_ring
manager.main()
'''


def make_front_key(path: Path) -> str:
    """Write a new front key (PEM, 0600) to ``path``; return its address (``<56>.onion``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from stem.descriptor.hidden_service import HiddenServiceDescriptorV3

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return HiddenServiceDescriptorV3.address_from_identity_key(raw, suffix=True)


def backend_tor_lines(hs_dir: Path, front: str, web_port: int) -> list[str]:
    """torrc lines of one backend (as in docs/self-hosting.md); writes ``hs_dir/ob_config``."""
    hs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (hs_dir / "ob_config").write_text(f"MasterOnionAddress {front}\n")
    return ["SocksPort 0", f"HiddenServiceDir {hs_dir}", "HiddenServiceOnionbalanceInstance 1",
            f"HiddenServicePort 80 127.0.0.1:{web_port}"]


def backend_address(hs_dir: Path) -> str:
    """The backend's own address, once its tor has written ``hostname`` ('' before)."""
    with contextlib.suppress(OSError):
        return (hs_dir / "hostname").read_text().strip()
    return ""


@dataclass
class OnionbalanceDaemon:
    """A running ``onionbalance`` process (by PID) and its log."""

    proc: subprocess.Popen
    log: Path

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 25) -> str:
        return "\n".join(self.text().splitlines()[-n:])

    def assert_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"onionbalance exited with {self.proc.returncode}:\n"
                                 f"{self.log_tail()}")

    def published_both(self) -> bool:
        """Whether it has uploaded the front's two descriptors (this time period's and the
        next's) since a descriptor listed the intro points of two backends."""
        text = self.text()
        at = text.find("from 2 instances")
        if at < 0:
            return False
        later = text[at:]
        return all(f"Uploading {which} descriptor" in later for which in ("first", "second"))

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it lingers; reaped either way."""
        stop_process(self.proc)


def start_onionbalance(workdir: Path, front_key: Path, backends: list[str], tor: Node,
                       timeout: float = 30) -> OnionbalanceDaemon:
    """Write the config (the front key, the backends' addresses) and start the daemon on
    ``tor``'s control port (cookie auth); return once it says it is initialized."""
    config = workdir / "config.yaml"
    config.write_text("services:\n"
                      f"- key: {front_key}\n"
                      "  instances:\n"
                      + "".join(f"  - address: {b}\n    name: backend{i}\n"
                                for i, b in enumerate(backends)))
    launcher = workdir / "launch_onionbalance.py"
    launcher.write_text(LAUNCHER)
    log = workdir / "onionbalance.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONIONBALANCE_")}
    env["PYTHONUNBUFFERED"] = "1"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(launcher), "--is-testnet", "-i", "127.0.0.1",
             "-p", str(tor.control_port), "-c", str(config), "-v", "info"],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    daemon = OnionbalanceDaemon(proc, log)
    try:
        wait_for("onionbalance to start", lambda: "Onionbalance initialized" in daemon.text(),
                 timeout, [daemon])  # type: ignore[list-item]
    except BaseException:
        daemon.stop()
        raise
    return daemon


def intro_point_keys(node: Node, address: str, timeout: float = 30) -> set[bytes]:
    """The auth keys of the introduction points in ``address``'s descriptor, as ``node`` (a
    client tor) fetches it from an HSDir now (HSFETCH), decrypted with stem. A front
    descriptor's are the backends' own keys (Onionbalance copies their intro points)."""
    import stem
    from stem.descriptor.hidden_service import HiddenServiceDescriptorV3

    onion = address.removesuffix(".onion")

    def fetch() -> object:
        try:
            return node.controller().get_hidden_service_descriptor(onion, timeout=10)
        except stem.DescriptorUnavailable:
            # that HSDir has none (Onionbalance uploads the front to 4 of the 5 here); tor
            # asks another next time
            return None

    desc = wait_for(f"{address}'s descriptor from an HSDir", fetch, timeout, [node], 1.0)
    # stem 1.8 parses what HSFETCH brings as a v2 descriptor; the text is v3
    v3 = HiddenServiceDescriptorV3(desc.get_bytes())  # type: ignore[attr-defined]
    return {ip.auth_key_cert.key for ip in v3.decrypt(onion).introduction_points}


def socks_peer(base: str, socks_port: int, user: str) -> Peer:
    """A :class:`Peer` whose websocket goes through the SocksPort, tor resolving the onion;
    its own SOCKS username puts it on circuits of its own (IsolateSOCKSAuth), so each new
    peer makes an introduction of its own."""
    import aiohttp
    from aiohttp_socks import ProxyConnector

    peer = Peer(base, name=user)
    proxy = f"socks5://{user}:x@127.0.0.1:{socks_port}"
    peer.sio.eio.http_factory = lambda: aiohttp.ClientSession(
        connector=ProxyConnector.from_url(proxy, rdns=True))
    return peer


async def connect_via_socks(base: str, socks_port: int, name: str, deadline: float,
                            attempt: float = 20) -> Peer:
    """Connect a :func:`socks_peer` to ``base``, a new SOCKS username (new circuits) per try,
    until one connects or ``deadline`` seconds pass; each try gets ``attempt`` seconds."""
    end = time.monotonic() + deadline
    tries = 0
    last: BaseException | None = None
    while time.monotonic() < end:
        tries += 1
        peer = socks_peer(base, socks_port, f"{name}-{tries}")
        try:
            await asyncio.wait_for(peer.connect(attempt),
                                   max(1.0, min(attempt, end - time.monotonic())))
            return peer
        except Exception as exc:  # socketio/aiohttp/SOCKS errors and timeouts alike
            last = exc
            with contextlib.suppress(Exception):
                await peer.disconnect()
            http = peer.sio.eio.http  # a try cut short leaves its session open
            if http is not None and not http.closed:
                await http.close()
            await asyncio.sleep(0.2)
    raise AssertionError(f"{name}: no socket.io connection to {base} through SOCKS within "
                         f"{deadline:g}s ({tries} tries): {last!r}")

