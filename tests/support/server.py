"""Fixtures that run the real signaling server: ``incognito-onion up --no-tor --no-turn``.

Every server runs as its own subprocess bound to 127.0.0.1 on a free port with its own
``--state-dir``. :func:`start_server` waits for the room URL line that ``up`` prints (a condition
with a timeout, never a fixed sleep) and returns a :class:`LiveServer`; ``stop()`` sends SIGTERM,
kills by PID if the server does not exit in time, and asserts the exit code.

Fixtures:

- ``live_server``: one server per test. Environment overrides come from the
  ``@pytest.mark.server_env({...})`` marker.
- ``shared_server``: one server per test module. Environment overrides come from a module-level
  ``SERVER_ENV = {...}`` dict in the test module.
- ``server_factory``: ``server_factory(env=..., extra_args=...)`` starts more servers in a test;
  all of them are stopped at teardown.

Every process started here is also recorded in a module-level registry and killed by PID at
interpreter exit, so a crashed or interrupted test run leaves nothing behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# http://127.0.0.1:P/r/<room 22 chars>#<key 43 chars>, alone on its line (modulo whitespace).
URL_RE = re.compile(
    r"^\s*(?P<url>(?P<base>http://127\.0\.0\.1:(?P<port>\d+))/r/(?P<room>[A-Za-z0-9_-]{22})"
    r"#(?P<key>[A-Za-z0-9_-]{43}))\s*$"
)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

# PIDs of every server still running; killed at exit whatever happened to the test.
_RUNNING: dict[int, subprocess.Popen] = {}
_RUNNING_LOCK = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command() -> list[str]:
    """How to run the CLI: the venv's console script, else ``python -m incognito_onion``."""
    script = Path(sys.executable).parent / "incognito-onion"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "incognito_onion"]


def _kill_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _kill_all_at_exit() -> None:
    with _RUNNING_LOCK:
        procs = list(_RUNNING.values())
        _RUNNING.clear()
    for proc in procs:
        if proc.poll() is None:
            _kill_pid(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)


atexit.register(_kill_all_at_exit)


class _LineReader(threading.Thread):
    """Drains one pipe of the server so it never blocks, keeping every line."""

    def __init__(self, stream, name: str, on_line=None):
        super().__init__(name=name, daemon=True)
        self.stream = stream
        self.lines: list[str] = []
        self.on_line = on_line

    def run(self) -> None:
        try:
            for raw in iter(self.stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.lines.append(line)
                if self.on_line is not None:
                    self.on_line(line)
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                self.stream.close()


@dataclass
class LiveServer:
    """A running ``incognito-onion up`` process and what it printed."""

    url: str
    base: str
    room: str
    key: str
    port: int
    proc: subprocess.Popen
    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    cmd: list[str] = field(default_factory=list)  # how it was started (for relaunch)
    full_env: dict[str, str] = field(default_factory=dict)
    _stdout: _LineReader | None = None
    _stderr: _LineReader | None = None
    returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/socket.io/?EIO=4&transport=websocket"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """Everything the server printed so far (for assertion messages)."""
        out = "\n".join(self._stdout.lines) if self._stdout else ""
        err = "\n".join(self._stderr.lines) if self._stderr else ""
        return f"--- stdout ---\n{out}\n--- stderr ---\n{err}"

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL by PID (a crash: nothing is cleaned up by the server) and reap it."""
        _kill_pid(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=timeout)
        self.returncode = self.proc.returncode
        with _RUNNING_LOCK:
            _RUNNING.pop(self.proc.pid, None)

    def relaunch(self, timeout: float = START_TIMEOUT) -> LiveServer:
        """The same command again (same port, state dir and environment), once this one is
        gone: the server coming back after a crash or a restart."""
        assert self.proc.poll() is not None, "relaunch() needs the old process gone"
        srv = spawn_up(self.cmd, self.full_env, self.port, self.state_dir, timeout, self.env)
        if srv.url:
            return srv
        srv.stop(timeout=5, check=False)
        raise AssertionError(f"the relaunched server did not print its room URL\n"
                             f"{srv.output()}")

    def stop(self, timeout: float = STOP_TIMEOUT, check: bool = True) -> int:
        """SIGTERM, wait, SIGKILL by PID if needed; assert a clean exit 0 when ``check``."""
        if self.returncode is not None:
            return self.returncode
        killed = False
        was_running = self.proc.poll() is None
        if was_running:
            _kill_pid(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                killed = True
                _kill_pid(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.returncode = self.proc.returncode
        with _RUNNING_LOCK:
            _RUNNING.pop(self.proc.pid, None)
        for reader in (self._stdout, self._stderr):
            if reader is not None:
                reader.join(timeout=5)
        if check:
            assert was_running, (
                f"server pid {self.pid} had already exited with {self.returncode} before stop()\n"
                + self.output()
            )
            assert not killed, (
                f"server pid {self.pid} ignored SIGTERM for {timeout}s and was killed\n"
                + self.output()
            )
            assert self.returncode == 0, (
                f"server pid {self.pid} exited {self.returncode} on SIGTERM (expected 0)\n"
                + self.output()
            )
        return self.returncode


def spawn_up(cmd: list[str], full_env: dict[str, str], port: int, state_dir: Path,
             timeout: float = START_TIMEOUT,
             env: Mapping[str, str] | None = None) -> LiveServer:
    """Run ``cmd`` (an ``up`` command line) and wait until it prints its room URL, it exits or
    ``timeout`` passes; the :class:`LiveServer` has ``url`` set only in the first case."""
    found = threading.Event()
    match: dict[str, re.Match] = {}

    def on_line(line: str) -> None:
        if not found.is_set():
            m = URL_RE.match(line)
            if m:
                match["m"] = m
                found.set()

    proc = subprocess.Popen(
        cmd,
        cwd=str(REPO),
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a ^C on pytest must not reach it; we stop it ourselves
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    with _RUNNING_LOCK:
        _RUNNING[proc.pid] = proc
    out = _LineReader(proc.stdout, f"server-{proc.pid}-stdout", on_line)
    err = _LineReader(proc.stderr, f"server-{proc.pid}-stderr")
    out.start()
    err.start()
    srv = LiveServer(url="", base="", room="", key="", port=port, proc=proc,
                     state_dir=state_dir, env=dict(env or {}), cmd=list(cmd),
                     full_env=dict(full_env), _stdout=out, _stderr=err)
    deadline = time.monotonic() + timeout
    while not found.is_set() and proc.poll() is None and time.monotonic() < deadline:
        found.wait(0.05)
    if found.is_set():
        m = match["m"]
        srv.url, srv.base = m["url"], m["base"]
        srv.room, srv.key = m["room"], m["key"]
        assert int(m["port"]) == port, f"server printed port {m['port']}, asked for {port}"
    return srv


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the test process dies (Linux ``prctl``), so a
    pytest killed by a timeout or a signal cannot leave a server behind."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _server_env(env: Mapping[str, str] | None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("INCOGNITO_")}
    base["PYTHONUNBUFFERED"] = "1"
    base["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    # loopback only: never let a proxy setting route the server's own traffic anywhere
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        base.pop(k, None)
    for k, v in (env or {}).items():
        base[str(k)] = str(v)
    return base


def start_server(
    tmp_path: Path,
    env: Mapping[str, str] | None = None,
    extra_args: Iterable[str] = (),
    timeout: float = START_TIMEOUT,
) -> LiveServer:
    """Start ``incognito-onion up --no-tor --no-turn`` on 127.0.0.1 and wait for its room URL.

    Retries once on a different port if the first one was taken between :func:`free_port` and
    the bind (the server then exits early without printing the URL).
    """
    last_error: str = ""
    for _attempt in range(2):
        port = free_port()
        state_dir = Path(tmp_path) / f"state-{port}"
        state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            *server_command(),
            "up",
            "--no-tor",
            "--no-turn",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--state-dir",
            str(state_dir),
            *extra_args,
        ]
        srv = spawn_up(cmd, _server_env(env), port, state_dir, timeout, env)
        if srv.url:
            return srv
        proc = srv.proc
        exited = proc.poll() is not None
        srv.stop(timeout=5, check=False)
        last_error = (
            f"server {'exited with ' + str(proc.returncode) if exited else 'timed out'} "
            f"before printing its room URL ({' '.join(cmd)})\n{srv.output()}"
        )
        if not exited:
            break  # a hang is not a port clash; don't retry
        if "address already in use" not in srv.output().lower():
            break
    raise AssertionError(last_error)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "server_env(env): INCOGNITO_* environment for the live_server fixture"
    )


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    """Start extra servers inside one test; all are stopped (exit code checked) at teardown."""
    started: list[LiveServer] = []

    def make(env: Mapping[str, str] | None = None, extra_args: Iterable[str] = ()) -> LiveServer:
        srv = start_server(tmp_path / f"srv{len(started)}", env=env, extra_args=extra_args)
        started.append(srv)
        return srv

    yield make
    errors = []
    for srv in started:
        try:
            srv.stop()
        except AssertionError as e:  # stop every server before failing
            errors.append(str(e))
    assert not errors, "\n\n".join(errors)


@pytest.fixture
def live_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    """A fresh server for one test; ``@pytest.mark.server_env({...})`` sets its environment."""
    marker = request.node.get_closest_marker("server_env")
    env = dict(marker.args[0]) if marker and marker.args else {}
    srv = start_server(tmp_path, env=env)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def shared_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """One server for a whole test module; its environment is the module's ``SERVER_ENV``."""
    env = dict(getattr(request.module, "SERVER_ENV", {}) or {})
    srv = start_server(tmp_path_factory.mktemp("shared-server"), env=env)
    try:
        yield srv
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------------
# A python-socketio client that records every server event, for tests, the fuzzer and the bench.
# --------------------------------------------------------------------------------------------


class Peer:
    """One python-socketio ``AsyncClient`` plus a log of every event the server sent it.

    ``await peer.next("joined", room=...)`` waits (with a timeout) for the next event of that name
    whose payload matches the given fields, consuming it; ``peer.seen(...)`` looks at the whole
    log without waiting (use after a fence, see :func:`fence`).
    """

    def __init__(self, base: str, name: str = "peer"):
        import socketio  # local: only tests that talk socket.io pay for the import

        self.base = base
        self.name = name
        self.sio = socketio.AsyncClient(reconnection=False)
        self.log: list[tuple[str, object]] = []
        self._pending: list[tuple[str, object]] = []
        self._cond: object | None = None
        self.peer_ids: dict[str, str] = {}  # room -> my peer id
        self.resume: dict[str, str] = {}  # room -> my resume token

        @self.sio.on("*")
        async def _any(event, *args):
            payload = args[0] if len(args) == 1 else (list(args) if args else None)
            self.log.append((event, payload))
            self._pending.append((event, payload))
            cond = self._get_cond()
            async with cond:
                cond.notify_all()

        @self.sio.on("connect_error")
        async def _connect_error(*args):  # reserved: the catch-all does not see it
            await _any("connect_error", *args)

    def _get_cond(self):
        import asyncio

        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    @property
    def sid(self) -> str | None:
        return self.sio.get_sid()

    @property
    def eio_sid(self) -> str | None:
        return getattr(self.sio.eio, "sid", None)

    async def connect(self, timeout: float = 10.0) -> Peer:
        await self.sio.connect(
            self.base, transports=["websocket"], wait_timeout=timeout, retry=False
        )
        return self

    async def disconnect(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()

    async def call(self, event: str, data=None, timeout: float = 5.0):
        """Emit with an acknowledgement and return the ack payload."""
        return await self.sio.call(event, data, timeout=timeout)

    async def emit(self, event: str, data=None) -> None:
        await self.sio.emit(event, data)

    @staticmethod
    def _matches(payload: object, fields: Mapping[str, object]) -> bool:
        if not fields:
            return True
        if not isinstance(payload, dict):
            return False
        return all(payload.get(k) == v for k, v in fields.items())

    async def next(self, event: str, /, timeout: float = 5.0, **fields):
        """Wait for (and consume) the next ``event`` whose payload has ``fields``."""
        import asyncio

        cond = self._get_cond()

        def find():
            for i, (ev, payload) in enumerate(self._pending):
                if ev == event and self._matches(payload, fields):
                    del self._pending[i]
                    return True, payload
            return False, None

        async def wait():
            async with cond:
                while True:
                    ok, payload = find()
                    if ok:
                        return payload
                    await cond.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no {event!r} {fields or ''} within {timeout}s; got {self.log!r}"
            ) from None

    def seen(self, event: str, /, **fields) -> list:
        """Every payload of ``event`` with ``fields`` received so far."""
        return [p for ev, p in self.log if ev == event and self._matches(p, fields)]

    # convenience wrappers for the protocol's happy path

    async def create(self, meta: str | None = None) -> dict:
        ack = await self.call("create", {} if meta is None else {"meta": meta})
        assert isinstance(ack, dict) and ack.get("ok") is True, f"{self.name}: create -> {ack!r}"
        self.peer_ids[ack["room"]] = ack["peer"]
        self.resume[ack["room"]] = ack["resume"]
        return ack

    async def join(self, room: str, meta: str | None = None, resume: str | None = None) -> dict:
        ack = await self.try_join(room, meta, resume)
        assert isinstance(ack, dict) and ack.get("ok") is True, f"{self.name}: join -> {ack!r}"
        return ack

    async def try_join(self, room: str, meta: str | None = None, resume: str | None = None):
        payload: dict = {"room": room}
        if meta is not None:
            payload["meta"] = meta
        if resume is not None:
            payload["resume"] = resume
        ack = await self.call("join", payload)
        if isinstance(ack, dict) and ack.get("ok") is True:
            self.peer_ids[ack["room"]] = ack["peer"]
            self.resume[ack["room"]] = ack["resume"]
        return ack


_fence_counter = 0


async def fence(sender: Peer, receiver: Peer, room: str, timeout: float = 5.0) -> None:
    """Make sure ``receiver`` has every event the server queued for it before now.

    ``sender`` sends a ``connection`` to ``receiver`` and we wait until it arrives. The server
    writes to each socket in order, so whatever it queued for ``receiver`` earlier (an echo, a
    stray broadcast) has been received by then: after a fence, "not in receiver.log" means "never
    sent".
    """
    global _fence_counter
    _fence_counter += 1
    token = f"fence-{_fence_counter}"
    ack = await sender.call(
        "connection", {"room": room, "to": receiver.peer_ids[room], "data": token}
    )
    assert isinstance(ack, dict) and ack.get("ok") is True, f"fence connection -> {ack!r}"
    await receiver.next("connection", timeout=timeout, room=room, data=token)


class RawSocketIO:
    """A hand-driven Socket.IO v5 / Engine.IO v4 client over one aiohttp websocket, for frames
    no well-behaved client library would send."""

    def __init__(self, server: LiveServer):
        self.server = server
        self.http = None
        self.ws = None
        self.frames: list[str | bytes] = []
        self._next_id = 1

    async def __aenter__(self) -> RawSocketIO:
        import aiohttp

        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.server.ws_url, max_msg_size=0)
        return self

    async def __aexit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        await self.http.close()

    async def recv(self, timeout: float = 5.0) -> str | bytes | None:
        """The next frame (answering engine.io pings on the way); ``None`` once closed."""
        import asyncio

        import aiohttp

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), max(0.0, deadline - loop.time()))
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "2":
                    await self.ws.send_str("3")
                    continue
                self.frames.append(msg.data)
                return msg.data
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.frames.append(msg.data)
                return msg.data
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return None

    async def handshake(self) -> None:
        """Engine.IO open, then connect the default namespace."""
        opened = await self.recv()
        assert isinstance(opened, str) and opened.startswith("0{"), opened
        await self.ws.send_str("40")
        while True:
            frame = await self.recv()
            assert frame is not None, "closed during the namespace connect"
            if isinstance(frame, str) and frame.startswith("40"):
                return

    async def send(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)

    async def call(self, event: str, *args, timeout: float = 5.0):
        """Emit ``42<id>[event, *args]`` and return the ack's first argument."""
        import json

        ack_id = self._next_id
        self._next_id += 1
        await self.ws.send_str(f"42{ack_id}" + json.dumps([event, *args]))
        prefix = f"43{ack_id}["
        while True:
            frame = await self.recv(timeout)
            if frame is None:
                raise AssertionError(f"connection closed while waiting for the ack of {event!r}")
            if isinstance(frame, str) and frame.startswith(prefix):
                values = json.loads(frame[len(prefix) - 1:])
                return values[0] if values else None


def server_procs(srv: LiveServer) -> list:
    """``up`` and its worker processes (``server.workers`` above 1), as psutil processes."""
    import psutil

    parent = psutil.Process(srv.pid)
    kids = [p for p in parent.children() if "incognito_onion.worker" in " ".join(p.cmdline())]
    return [parent, *kids]


def worker_of(srv: LiveServer, client_port: int) -> int:
    """The PID of the server process holding the TCP connection from local port
    ``client_port`` (the kernel hands each new connection to any of the workers)."""
    for proc in server_procs(srv):
        for c in proc.net_connections(kind="tcp"):
            if c.laddr.port == srv.port and c.raddr and c.raddr.port == client_port:
                return proc.pid
    raise AssertionError(f"no server process holds the connection from port {client_port}")


async def until(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Waits until ``cond()`` is true, checking every 20 ms; fails naming ``what`` after
    ``timeout`` seconds."""
    import asyncio

    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
