"""Runs coturn as a supervised child process.

Interface::

    sup = CoturnSupervisor(cfg, state_dir, on_event=callback)   # cfg: config.Config
    await sup.start()        # raises a TurnError subclass with a one-line message on failure
    sup.secret               # the static auth secret of this run (str)
    sup.port, sup.tls_port   # coturn's TCP and TLS ports (tls_port 0 = no TLS)
    sup.tls_fingerprint, sup.tls_spki  # of the TLS certificate in use (for logs and pinning)
    sup.pid                  # the running coturn's PID, or None
    sup.urls(host)           # ["turn:HOST:PORT?transport=tcp", (turns:...), *turn.public_urls]
    sup.ice_servers(peer_id, urls)  # RTCIceServer dicts, fresh credential (turn.credential_ttl)
    sup.ice(peer_id, host)   # {"iceServers", "iceTransportPolicy": "relay", "iceExpires"}: the
                             # signaling IceProvider; host as the browser reached us (port dropped)
    await sup.wait_ready(timeout)   # after a restart: until coturn serves again
    await sup.stop()         # SIGTERM, then SIGKILL after a grace period, by PID
    async with CoturnSupervisor(cfg, state_dir) as sup: ...   # start + stop

``start()`` writes coturn's config (0600, it holds the secret) to ``STATE/turnserver.conf``,
starts ``turnserver -c FILE`` in its own session (process group) with its log on a pipe, and
returns only once a real TURN Allocate with a credential from this run succeeds on the TCP
listener (and the TLS one, when on). If coturn dies later it is started again with exponential
backoff (0.1 s, 0.2 s, ... up to 30 s; back to 0.1 s once a child ran 30 s), and each step is
reported through ``on_event(TurnEvent)`` (a plain function or a coroutine function) and the
``incognito_onion.turn`` logger. Event kinds: ``started``, ``exited``, ``restarted``,
``restart_failed``, ``warning``, ``stopped``.

coturn's own log is read line by line: addresses and usernames are masked in everything we log,
and per-client lines (failed auth, refused peers) go to debug only.

With ``turn.enabled: false``, ``start()`` does nothing and ``sup.enabled`` is False.

The secret is new each run (``secrets.token_urlsafe(32)``), or with ``turn.persist_secret``
kept in ``STATE/turn-secret`` (0600) across runs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import inspect
import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..child_process import pdeathsig_prefix
from ..state import StateDirError, ensure_state_dir, read_private, write_private
from ..tasks import cancel_and_wait
from . import credentials
from .client import TurnClientError, probe
from .render import Paths, RenderError, render
from .tls import ensure_self_signed, fingerprint_sha256, spki_sha256

log = logging.getLogger("incognito_onion.turn")

CONF_NAME = "turnserver.conf"
SECRET_NAME = "turn-secret"  # noqa: S105 - a file name
PID_NAME = "turnserver.pid"
USERDB_NAME = "turn-userdb.sqlite"
PACKAGE = "coturn"
#: seconds a coturn left by a crashed run has to exit and free its ports once killed
STALE_EXIT_TIMEOUT = 10.0


class TurnError(Exception):
    """coturn could not be run; ``str()`` is one line for a person."""


class TurnBinaryMissing(TurnError):
    """The ``turnserver`` executable is not installed."""


class TurnConfigError(TurnError):
    """The turn.* settings (or the TLS files they name) cannot be used."""


class TurnStartError(TurnError):
    """coturn started but did not serve TURN (port taken, crashed, no answer)."""


@dataclass(frozen=True)
class TurnEvent:
    """Something the supervisor did or saw. ``message`` is one line for a person."""

    kind: str  # started | exited | restarted | restart_failed | warning | stopped
    message: str
    pid: int | None = None
    returncode: int | None = None
    restarts: int = 0
    delay: float | None = None  # seconds until the next start (exited, restart_failed)


# --- coturn's log -------------------------------------------------------------------------------

_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b")
# any run of hex digits, dots and colons with two colons or more (IPv6, with or without ::)
_IPV6 = re.compile(r"\[?(?<![\w.:])(?=[0-9A-Fa-f.:]*:[0-9A-Fa-f.]*:)[0-9A-Fa-f.:]+(?:%\w+)?\]?"
                   r"(?::\d{1,5})?")
_USER = re.compile(r"(user(?:name)?\s*[=:]?\s*)<[^>]*>", re.I)
_REALM_USER = re.compile(r"(realm\s*<[^>]*>\s*user\s*)<[^>]*>", re.I)
# Lines caused by clients (wrong credentials, refused peers, session churn): debug only, so a
# client cannot fill the operator's log.
_CLIENT_NOISE = re.compile(
    r"check_stun_auth|peer ip .* denied|session \d+|cannot find credentials|"
    r"wrong (?:message integrity|realm)|allocation|stale nonce|closed|refresh|"
    r"permission|channel|incoming packet|\bremote\b|tcp socket", re.I)
_TROUBLE = re.compile(r"\b(?:error|warning|cannot|can't|fail|unable)", re.I)
_BIND_FAIL = re.compile(r"cannot bind .*listener socket", re.I)


def scrub(line: str) -> str:
    """The line with IP addresses, ports with them, and usernames masked."""
    line = _REALM_USER.sub(r"\1<…>", line)
    line = _USER.sub(r"\1<…>", line)
    line = _IPV4.sub("<addr>", line)
    return _IPV6.sub("<addr>", line)


def classify(line: str) -> int:
    """The log level a (scrubbed) coturn line is worth."""
    if _BIND_FAIL.search(line):
        return logging.WARNING
    if _CLIENT_NOISE.search(line):
        return logging.DEBUG
    if _TROUBLE.search(line) and "allow_loopback_peers" not in line:
        return logging.WARNING
    return logging.DEBUG


# --- UDP services the relay could reach ---------------------------------------------------------

def exposed_udp_ports(relay_ip: str, min_port: int, max_port: int,
                      proc_net: Path = Path("/proc/net")) -> list[int]:
    """Local UDP ports outside the relay range that a datagram from the relay to ``relay_ip``
    would reach (sockets bound to that address or to the wildcard, not connected). A TURN user
    may send to ``relay_ip`` (it is the one allowed peer), so these are reachable through TURN."""
    want = ipaddress.ip_address(relay_ip)
    found: set[int] = set()
    for name in ("udp", "udp6"):
        try:
            rows = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            parts = row.split()
            if len(parts) < 3:
                continue
            local, remote = parts[1], parts[2]
            hexaddr, _, hexport = local.partition(":")
            port = int(hexport, 16)
            if min_port <= port <= max_port or int(remote.partition(":")[2], 16) != 0:
                continue
            addr = _proc_addr(hexaddr)
            if addr is None:
                continue
            mapped = getattr(addr, "ipv4_mapped", None)
            if addr == want or mapped == want or addr.is_unspecified:
                found.add(port)
    return sorted(found)


def _proc_addr(hexaddr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        raw = bytes.fromhex(hexaddr)
    except ValueError:
        return None
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    if len(raw) == 16:  # four host-order 32-bit words
        return ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return None


# --- the supervisor -----------------------------------------------------------------------------

class CoturnSupervisor:
    """Starts, watches, restarts and stops one coturn. See the module docstring."""

    def __init__(self, cfg: Any, state_dir: Path | str,
                 on_event: Callable[[TurnEvent], Any] | None = None, *,
                 command_prefix: Sequence[str] = (),
                 ready_timeout: float = 10.0,
                 stop_timeout: float = 3.0,
                 backoff_initial: float = 0.1,
                 backoff_max: float = 30.0,
                 stable_after: float = 30.0,
                 probe_host: str | None = None,
                 verbose: bool = False):
        """``command_prefix`` runs coturn under a wrapper (tests: ``ip netns exec NAME``);
        ``probe_host`` is where the readiness check connects (default ``turn.listen_ip``, or
        127.0.0.1 / ::1 when that is a wildcard); ``verbose`` adds coturn's per-session lines
        at debug level (still masked)."""
        self.cfg = cfg
        self.state_dir = Path(state_dir)
        self.on_event = on_event
        self.command_prefix = list(command_prefix)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.verbose = verbose
        t = cfg.turn
        self.enabled: bool = bool(t.enabled)
        self.listen_ip: str = t.listen_ip
        self.port: int = int(t.port)
        self.tls_port: int = int(t.tls_port)
        self.relay_ip: str = t.relay_ip
        self.probe_host = probe_host or _probe_host(t.listen_ip)
        self.conf_path = self.state_dir / CONF_NAME
        self.pidfile = self.state_dir / PID_NAME
        self.restarts = 0
        self.tls_fingerprint: str | None = None  # SHA-256 of the TLS certificate, AB:CD:..
        self.tls_spki: str | None = None  # base64 SHA-256 of its public key (pinning)
        self._secret: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stopping = False
        self._started_at = 0.0
        self._backoff = backoff_initial
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._bind_failure: str | None = None
        self._argv: list[str] = []

    # -- public ----------------------------------------------------------------------------------

    @property
    def secret(self) -> str:
        if self._secret is None:
            raise RuntimeError("CoturnSupervisor.secret is known after start()")
        return self._secret

    @property
    def pid(self) -> int | None:
        p = self._proc
        return p.pid if p is not None and p.returncode is None else None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def urls(self, host: str | None = None, port: int | None = None,
             tls_port: int | None = None) -> list[str]:
        """TURN URLs for browsers: ``host`` defaults to ``turn.listen_ip``; ``port``/``tls_port``
        to coturn's (give the onion's virtual ports when they differ); plus turn.public_urls."""
        return credentials.turn_urls(host or self.probe_host, port or self.port,
                                     self.tls_port if tls_port is None else tls_port,
                                     list(self.cfg.turn.public_urls))

    def ice_servers(self, peer_id: str, urls: Sequence[str] | None = None,
                    now: float | None = None) -> list[dict[str, Any]]:
        """RTCIceServer dicts for ``peer_id`` valid ``turn.credential_ttl`` seconds (``[]`` when
        TURN is off)."""
        if not self.enabled:
            return []
        return credentials.ice_servers(self.secret, peer_id, int(self.cfg.turn.credential_ttl),
                                       list(urls) if urls is not None else self.urls(), now)

    def ice(self, peer_id: str, host: str | None = None, *, port: int | None = None,
            tls_port: int | None = None, now: float | None = None) -> dict[str, Any]:
        """What the signaling server puts in ``create``/``join``/``ice`` acks for ``peer_id``:
        ``{"iceServers", "iceTransportPolicy": "relay", "iceExpires"}``. ``host`` is the name
        the browser reached us by (a Host header; its port is dropped), ``port``/``tls_port``
        the TURN ports as that browser sees them (default: coturn's own)."""
        if not self.enabled:
            return {"iceServers": [], "iceTransportPolicy": "all", "iceExpires": None}
        now = time.time() if now is None else now
        ttl = int(self.cfg.turn.credential_ttl)
        urls = self.urls(credentials.host_only(host) if host else None, port, tls_port)
        return {"iceServers": credentials.ice_servers(self.secret, peer_id, ttl, urls, now),
                "iceTransportPolicy": "relay", "iceExpires": int(now) + ttl}

    async def __aenter__(self) -> CoturnSupervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start coturn and return once it serves TURN. Raises :class:`TurnError`."""
        if not self.enabled or self._watcher is not None:
            return
        self._stopping = False
        binary = self._find_binary()
        try:
            ensure_state_dir(self.state_dir)
        except StateDirError as exc:
            raise TurnConfigError(str(exc)) from None
        try:
            self._secret = self._load_secret()
        except OSError as exc:
            raise TurnConfigError(f"cannot keep the TURN secret in {self.state_dir}: "
                                  f"{exc.strerror or exc}") from None
        paths = Paths(pidfile=self.pidfile, userdb=self.state_dir / USERDB_NAME,
                      **self._tls_paths())
        try:
            text = render(self.cfg, self._secret, paths, verbose=self.verbose)
        except RenderError as exc:
            raise TurnConfigError(f"TURN config: {exc}") from None
        await self._stop_stale()
        if not self.command_prefix:
            self._check_ports_free()
        try:
            write_private(self.conf_path, text)
        except OSError as exc:
            raise TurnConfigError(f"cannot write {self.conf_path}: {exc.strerror or exc}") from None
        self._argv = [*self.command_prefix, *pdeathsig_prefix(), binary, "-c", str(self.conf_path)]
        try:
            await self._spawn_and_wait()
        except BaseException:
            await self._kill_child()
            with contextlib.suppress(FileNotFoundError):
                self.conf_path.unlink()
            raise
        self._backoff = self.backoff_initial
        self._watcher = asyncio.create_task(self._watch(), name="coturn-watch")
        await self._emit(TurnEvent("started", f"coturn serving TURN over TCP on "
                                   f"{self.listen_ip}:{self.port}"
                                   + (f" and TLS on {self.tls_port}" if self.tls_port else "")
                                   + f" (pid {self.pid})", pid=self.pid))
        if self.tls_port and not self.cfg.turn.tls_cert:
            await self._emit(TurnEvent(
                "warning", f"TURN over TLS uses a generated self-signed certificate (SHA-256 "
                f"{self.tls_fingerprint}); browsers refuse it for turns: URLs unless told to "
                f"trust it: set turn.tls_cert and turn.tls_key to a real one", pid=self.pid))
        if not self.command_prefix:
            ports = exposed_udp_ports(self.relay_ip, int(self.cfg.turn.min_port),
                                      int(self.cfg.turn.max_port))
            if ports:
                await self._emit(TurnEvent(
                    "warning",
                    f"UDP ports {', '.join(map(str, ports))} on the relay address "
                    f"{self.relay_ip} are reachable by any TURN user; bind those services "
                    f"elsewhere or set turn.relay_ip to an address they do not listen on",
                    pid=self.pid))

    async def wait_ready(self, timeout: float) -> None:
        """Until coturn serves (again); raises TimeoutError."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def stop(self) -> None:
        """Stop coturn (SIGTERM, then SIGKILL) and the watcher; remove the config file."""
        self._stopping = True
        watcher, self._watcher = self._watcher, None
        await cancel_and_wait(watcher)
        had = self._proc is not None
        await self._kill_child()
        with contextlib.suppress(FileNotFoundError):
            self.conf_path.unlink()
        if had:
            await self._emit(TurnEvent("stopped", "coturn stopped", restarts=self.restarts))

    # -- starting --------------------------------------------------------------------------------

    def _find_binary(self) -> str:
        name = str(self.cfg.turn.binary)
        found = shutil.which(name)
        if found is None:
            raise TurnBinaryMissing(
                f"coturn's {name!r} was not found: install the Debian package {PACKAGE} "
                f"(sudo apt-get install {PACKAGE}), set turn.binary to its path, "
                f"or turn TURN off with turn.enabled: false")
        return found

    def _load_secret(self) -> str:
        if not self.cfg.turn.persist_secret:
            return secrets.token_urlsafe(32)
        path = self.state_dir / SECRET_NAME
        try:
            raw = read_private(path)
        except StateDirError as exc:
            raise TurnConfigError(str(exc)) from None
        if raw is not None:
            value = raw.decode("ascii", "replace").strip()
            if len(value) >= 16 and not any(c.isspace() for c in value):
                return value
        value = secrets.token_urlsafe(32)
        write_private(path, value + "\n")
        return value

    def _tls_paths(self) -> dict[str, Path]:
        if not self.tls_port:
            return {}
        t = self.cfg.turn
        if t.tls_cert:
            cert, key = Path(t.tls_cert).expanduser(), Path(t.tls_key).expanduser()
            _check_pem(cert, key)
        else:
            cert, key = ensure_self_signed(self.state_dir)
        with contextlib.suppress(ValueError, OSError):
            pem = cert.read_bytes()
            self.tls_fingerprint, self.tls_spki = fingerprint_sha256(pem), spki_sha256(pem)
        return {"tls_cert": cert, "tls_key": key}

    def _check_ports_free(self) -> None:
        ports = [("turn.port", self.port)] + ([("turn.tls_port", self.tls_port)]
                                               if self.tls_port else [])
        family = socket.AF_INET6 if ":" in self.listen_ip else socket.AF_INET
        for key, port in ports:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((self.listen_ip, port))
                except OSError as exc:
                    raise TurnConfigError(_bind_message(key, self.listen_ip, port, exc)) from None

    async def _stop_stale(self) -> None:
        """A coturn of ours (same config path, from its pidfile) still running: if its parent
        is gone (a crashed run) stop it; if its parent lives, another run uses this state dir."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return
        if str(self.conf_path).encode() not in cmdline:
            return
        if ppid > 1 and _comm(ppid) not in ("", "systemd", "init"):
            raise TurnConfigError(
                f"another process (pid {ppid}) runs coturn with the state dir {self.state_dir}; "
                f"stop it or use another state dir")
        log.warning("stopping a coturn left from an earlier run (pid %d)", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STALE_EXIT_TIMEOUT
        while _running(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # until it is dead (a zombie holds no ports)
        if self.command_prefix:
            return
        # and until its listeners are gone: a loaded machine (CI) has been seen to take longer
        # to tear down coturn's threads and sockets than to report the process gone, and the
        # port check that follows then refused to start with "port already in use"
        while True:
            try:
                self._check_ports_free()
                return
            except TurnConfigError:
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.05)

    async def _spawn_and_wait(self) -> None:
        """Start one child and wait until it serves; raises TurnStartError."""
        self._tail.clear()
        self._bind_failure = None
        self._ready.clear()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise TurnStartError(f"cannot run coturn ({self._argv[0]}): {exc.strerror}") from None
        self._proc = proc
        self._started_at = time.monotonic()
        self._reader = asyncio.create_task(self._read_log(proc), name="coturn-log")
        deadline = time.monotonic() + self.ready_timeout
        last = "no answer yet"
        checks = [(self.port, None)] + ([(self.tls_port, _tls_client())] if self.tls_port else [])
        while True:
            if proc.returncode is not None:
                raise TurnStartError(f"coturn exited at start ({_how(proc.returncode)})"
                                     f"{self._last_words()}")
            if self._bind_failure:
                raise TurnStartError(f"coturn cannot listen: {self._bind_failure}")
            try:
                for port, ctx in checks:
                    cred = credentials.issue(self.secret, "probe", 60)
                    await probe(self.probe_host, port, cred.username, cred.password, ssl=ctx,
                                timeout=1.0)
                break
            except TurnClientError as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise TurnStartError(
                    f"coturn did not serve TURN on {self.probe_host}:{self.port} within "
                    f"{self.ready_timeout:g} s (last try: {last}){self._last_words()}")
            await asyncio.sleep(0.05)  # poll interval of the readiness check
        self._ready.set()

    def _last_words(self) -> str:
        trouble = [ln for ln in self._tail if classify(ln) >= logging.WARNING]
        return f"; coturn said: {trouble[-1]}" if trouble else ""

    async def _read_log(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):  # an absurdly long line
                continue
            if not raw:
                return
            line = scrub(raw.decode("utf-8", "replace").rstrip())
            line = re.sub(r"^\d+: (?:\(\d+\): )?:? ?", "", line).strip()
            if not line:
                continue
            self._tail.append(line)
            if _BIND_FAIL.search(line) and self._bind_failure is None:
                self._bind_failure = line
            log.log(classify(line), "coturn: %s", line)

    async def _kill_child(self) -> None:
        proc, self._proc = self._proc, None
        self._ready.clear()
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_timeout)
            except TimeoutError:
                log.warning("coturn (pid %d) did not stop on SIGTERM; killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                await asyncio.wait_for(reader, 1.0)
            except (TimeoutError, asyncio.CancelledError):
                reader.cancel()

    # -- watching --------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while not self._stopping and self._proc is not None:
            proc = self._proc
            rc = await proc.wait()
            if self._stopping:
                return
            self._ready.clear()
            died = time.monotonic()
            ran = died - self._started_at
            if ran >= self.stable_after:
                self._backoff = self.backoff_initial
            self.restarts += 1
            await self._emit(TurnEvent(
                "exited", f"coturn exited ({_how(rc)}) after {ran:.1f} s; restarting in "
                f"{self._backoff:.2g} s (restart {self.restarts}){self._last_words()}",
                pid=proc.pid, returncode=rc, restarts=self.restarts, delay=self._backoff))
            await self._kill_child()  # collects the log reader
            while not self._stopping:
                await asyncio.sleep(self._backoff)  # the backoff itself
                self._backoff = min(self._backoff * 2, self.backoff_max)
                try:
                    await self._spawn_and_wait()
                    break
                except TurnError as exc:
                    await self._kill_child()
                    await self._emit(TurnEvent(
                        "restart_failed", f"coturn restart failed: {exc}; trying again in "
                        f"{self._backoff:.2g} s", restarts=self.restarts, delay=self._backoff))
            else:
                return
            await self._emit(TurnEvent(
                "restarted", f"coturn is back (pid {self.pid}), serving again "
                f"{time.monotonic() - died:.2f} s after it died", pid=self.pid,
                restarts=self.restarts))

    async def _emit(self, event: TurnEvent) -> None:
        level = logging.INFO if event.kind in ("started", "restarted", "stopped") \
            else logging.WARNING
        log.log(level, "%s", event.message)
        if self.on_event is None:
            return
        try:
            result = self.on_event(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("TURN on_event callback failed")


def _running(pid: int) -> bool:
    """Any thread of ``pid`` still alive (a zombie leader whose threads still exit holds its
    sockets until the last one is gone)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            if (task / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        except (OSError, IndexError):
            continue
    return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _probe_host(listen_ip: str) -> str:
    addr = ipaddress.ip_address(listen_ip)
    if addr.is_unspecified:
        return "::1" if addr.version == 6 else "127.0.0.1"
    return str(addr)


def _tls_client() -> ssl.SSLContext:
    # The readiness check proves the TLS listener answers TURN; the certificate may be our own
    # self-signed one, so it is not verified here.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx



def _how(rc: int | None) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-rc).name}"
        return f"killed by signal {-rc}"
    return f"exit code {rc}"


def _bind_message(key: str, ip: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"{key}: {ip}:{port} is already in use (another coturn?); "
                f"stop it or choose another port")
    if exc.errno == errno.EACCES:
        return (f"{key}: port {port} needs privileges; run as root, give coturn "
                f"CAP_NET_BIND_SERVICE (sudo setcap cap_net_bind_service=+ep $(which turnserver))"
                f", or use a port above 1023")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"turn.listen_ip: {ip} is not an address of this machine"
    return f"{key}: cannot listen on {ip}:{port}: {exc.strerror}"


def _check_pem(cert: Path, key: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        x509.load_pem_x509_certificates(cert.read_bytes())
    except OSError as exc:
        raise TurnConfigError(f"turn.tls_cert: cannot read {cert}: {exc.strerror}") from None
    except ValueError:
        raise TurnConfigError(f"turn.tls_cert: {cert} is not a PEM certificate") from None
    try:
        load_pem_private_key(key.read_bytes(), password=None)
    except OSError as exc:
        raise TurnConfigError(f"turn.tls_key: cannot read {key}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise TurnConfigError(
            f"turn.tls_key: {key} is not an unencrypted PEM private key") from None
