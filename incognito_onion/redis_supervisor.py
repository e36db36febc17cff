"""A private redis-server for the workers of one ``incognito-onion up`` (``server.workers`` above
1): started before the workers, restarted if it dies, stopped when ``up`` stops.

It listens on a unix socket only (``--port 0``), in ``STATE/redis/`` (0700) or, when that path is
too long for a unix socket, in a private 0700 directory under the system's temporary directory
(removed on stop). Nothing is written to disk: no RDB snapshots, no append-only file. Its log
(warnings only) is kept in memory for error messages, never written out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import exitcodes
from .child_process import pdeathsig_prefix
from .tasks import cancel_and_wait

log = logging.getLogger("incognito_onion.redis")

PACKAGE = "redis-server"
EXIT_CODE = exitcodes.REDIS  # what `up` exits with when redis cannot be run
SOCKET_NAME = "redis.sock"
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux, with its terminating NUL
START_TIMEOUT = 10.0


class RedisError(Exception):
    """redis-server could not be run; ``str()`` is one line for a person."""


class RedisBinaryMissing(RedisError):
    """The ``redis-server`` executable is not installed."""


def find_binary(name: str) -> str:
    """The redis-server executable, or :class:`RedisBinaryMissing` naming the Debian package."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if found is None:
        raise RedisBinaryMissing(
            f"redis-server ({name!r}) was not found, and server.workers above 1 needs it: "
            f"install the Debian package {PACKAGE} (sudo apt-get install {PACKAGE}), set "
            f"server.redis_binary to its path, or set server.workers: 1")
    return found


def argv(binary: str, socket_path: Path, data_dir: Path) -> list[str]:
    """redis-server's command line: a unix socket only, nothing persisted, quiet; a
    subscriber (a worker reading the others' events) may fall 256 MB behind before redis cuts
    it off (the default, 32 MB, cut off a worker seconds behind under load, and every event
    waiting for it was lost)."""
    return [binary, "--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700",
            "--dir", str(data_dir), "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--supervised", "no", "--databases", "1", "--loglevel", "warning", "--logfile", "",
            "--pidfile", "", "--protected-mode", "yes",
            "--client-output-buffer-limit", "pubsub 256mb 128mb 60"]


class RedisSupervisor:
    """``await start()`` → ``url`` is ``unix://…``; ``on_restart`` runs after each restart."""

    def __init__(self, binary: str, state_dir: Path,
                 on_restart: Callable[[], Awaitable[None]] | None = None,
                 on_event: Callable[[str], None] | None = None):
        self.binary_name = binary
        self.state_dir = Path(state_dir)
        self.on_restart = on_restart
        self.on_event = on_event or (lambda _msg: None)
        self.socket_path: Path | None = None
        self._tmp: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task | None = None
        self._reader: asyncio.Task | None = None
        self._stopping = False
        self.restarts = 0
        self.tail: collections.deque[str] = collections.deque(maxlen=8)

    @property
    def url(self) -> str:
        assert self.socket_path is not None
        return f"unix://{self.socket_path}?db=0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _place(self) -> Path:
        """The directory for the socket: ``STATE/redis`` unless that path is too long."""
        d = self.state_dir / "redis"
        if len(str(d / SOCKET_NAME)) > MAX_SOCKET_PATH:
            self._tmp = Path(tempfile.mkdtemp(prefix="incognito-redis-"))
            d = self._tmp
        try:
            d.mkdir(mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)
        except OSError as exc:
            raise RedisError(f"cannot make the directory for redis's socket ({d}): "
                             f"{exc.strerror}") from None
        return d

    async def start(self) -> None:
        binary = find_binary(self.binary_name)
        d = self._place()
        self.socket_path = d / SOCKET_NAME
        self._argv = pdeathsig_prefix() + argv(binary, self.socket_path, d)
        await self._spawn()
        self._watcher = asyncio.create_task(self._watch())

    async def _spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # type: ignore[union-attr]
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise RedisError(f"cannot run redis-server ({self._argv[0]}): {exc.strerror}") \
                from None
        self._reader = asyncio.create_task(self._read(self._proc))
        await self._wait_ready()

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            self.tail.append(line.decode("utf-8", "replace").rstrip())

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.returncode is not None:
                break
            if await _ping(self.socket_path):
                return
            await asyncio.sleep(0.05)
        proc = self._proc
        why = "exited" if proc is not None and proc.returncode is not None else \
            f"did not answer within {START_TIMEOUT:.0f} s"
        await self._kill()
        last = next((ln for ln in reversed(self.tail) if ln.strip()), "")
        raise RedisError(f"redis-server {why}" + (f": {last}" if last else ""))

    async def _watch(self) -> None:
        delay = 0.5
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            rc = await proc.wait()
            if self._stopping:
                return
            self.on_event(f"redis-server exited ({rc}); restarting it (open rooms are lost)")
            await asyncio.sleep(delay)
            try:
                await self._spawn()
            except RedisError as exc:
                self.on_event(f"redis-server could not be restarted: {exc}")
                delay = min(delay * 2, 30.0)
                continue
            self.restarts += 1
            delay = 0.5
            if self.on_restart is not None:
                try:
                    await self.on_restart()
                except Exception as exc:
                    self.on_event(f"after the redis restart: {type(exc).__name__}")

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):  # (the reader's own failure: too late now)
                await cancel_and_wait(self._reader)
            self._reader = None

    async def stop(self) -> None:
        self._stopping = True
        await cancel_and_wait(self._watcher)
        self._watcher = None
        await self._kill()
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


async def _ping(path: Any) -> bool:
    """A RESP PING on the unix socket answered +PONG."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 1)
        return line.startswith(b"+PONG")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


