"""Several server processes on one port (``server.workers`` above 1).

``up`` serves in its own process like with one worker, with the port bound ``reuse_port``, and
starts ``server.workers - 1`` more processes (``python -m incognito_onion.worker``) that bind the
same port the same way: the kernel spreads new connections over them. All of them keep rooms in
the private redis-server ``up`` started (:mod:`shared_rooms`) and pass events through
python-socketio's ``AsyncRedisManager``; socket.io runs websocket-only, since the requests of one
long-polling session may reach different processes.

A child reads its settings as one JSON line on standard input (the validated config, the redis
URL, the bound port, the restore-ticket secret and, with TURN, the secret its TURN credentials
are made from; nothing of this is on a command line or in the environment), prints ``ready``
once it listens, and stops on SIGTERM or when its standard input closes (``up`` went away, even
if killed). ``up`` restarts a child that dies; the peers it held are removed by the others'
sweep (:mod:`shared_rooms`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import exitcodes, runtime
from .config import Config
from .redis_events import BatchedRedisManager
from .relay_link import RelayLink
from .room_tickets import RoomTickets
from .signaling import IceProvider, Signaling, no_turn_ice
from .tasks import cancel_and_wait

log = logging.getLogger("incognito_onion.worker")

READY = "ready"
START_TIMEOUT = 30.0
CHANNEL = "incognito-onion"


def make_signaling(cfg: Config, ice: IceProvider, redis_url: str | None,
                   tickets: RoomTickets | None = None) -> Signaling:
    """One process's signaling: rooms in this process, or (``redis_url``) shared by all.
    ``tickets``: the server's restore tickets (the same secret in every process)."""
    if redis_url is None:
        return Signaling(cfg, ice=ice, tickets=tickets)
    from .shared_rooms import SharedRooms

    manager = BatchedRedisManager(redis_url, channel=CHANNEL, json=runtime.json_module(),
                                  logger=logging.getLogger("incognito_onion.socketio"))
    rooms = SharedRooms.from_url(
        redis_url, node=manager.host_id, capacity=cfg.rooms.capacity,
        max_rooms=cfg.rooms.max_rooms, per_connection=cfg.rooms.per_connection,
        empty_grace=cfg.rooms.empty_grace_seconds)
    sig = Signaling(cfg, ice=ice, rooms=rooms, client_manager=manager, tickets=tickets)
    # the onion media relay's chunks to the receivers other workers hold
    sig.link = RelayLink(redis_url, manager.host_id, sig.relay_from_worker)
    return sig


def turn_spec(sup: Any, policy: str) -> dict[str, Any]:
    """What a child needs to issue the same TURN credentials as ``up``'s supervisor."""
    return {"secret": sup.secret, "port": sup.port, "tls_port": sup.tls_port,
            "probe_host": sup.probe_host, "policy": policy}


def turn_ice(cfg: Config, spec: dict[str, Any]) -> IceProvider:
    """The ICE provider of a child: ``CoturnSupervisor.ice`` from the shared secret."""
    from .turn import credentials

    ttl = int(cfg.turn.credential_ttl)

    def provider(peer_id: str, host: str) -> dict[str, Any]:
        now = time.time()
        urls = credentials.turn_urls(credentials.host_only(host) if host else spec["probe_host"],
                                     spec["port"], spec["tls_port"], list(cfg.turn.public_urls))
        return {"iceServers": credentials.ice_servers(spec["secret"], peer_id, ttl, urls, now),
                "iceTransportPolicy": spec["policy"], "iceExpires": int(now) + ttl}

    return provider


class WorkerError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class _Child:
    def __init__(self, index: int):
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None


class WorkerPool:
    """Starts the child workers, waits until each listens, restarts one that dies (with a
    growing delay), stops them all."""

    def __init__(self, spec: dict[str, Any], count: int,
                 on_event: Callable[[str], None] | None = None):
        self.spec = spec
        self.children = [_Child(i + 1) for i in range(count)]
        self.on_event = on_event or (lambda _m: None)
        self._stopping = False
        self._watchers: list[asyncio.Task] = []
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.children if c.proc is not None]

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        await asyncio.gather(*(self._spawn(c, timeout) for c in self.children))
        self._watchers = [asyncio.create_task(self._watch(c)) for c in self.children]

    async def _spawn(self, child: _Child, timeout: float) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "incognito_onion.worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=None, start_new_session=True)
        child.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps({**self.spec, "index": child.index}) + "\n").encode())
        await proc.stdin.drain()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        except TimeoutError:
            line = b""
        if line.decode().strip() != READY:
            rc = proc.returncode
            if rc is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                rc = await proc.wait()
            code = rc if rc in (exitcodes.BIND, exitcodes.CONFIG) else exitcodes.ERROR
            raise WorkerError(f"server process {child.index} did not start "
                              f"(exit code {rc}); see the lines above", code)

    async def _watch(self, child: _Child) -> None:
        delay = 1.0
        while not self._stopping:
            assert child.proc is not None
            rc = await child.proc.wait()
            if self._stopping:
                return
            self.on_event(f"server process {child.index} exited ({rc}); restarting it (its "
                          f"people reconnect)")
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._spawn(child, START_TIMEOUT)
                self.restarts += 1
                delay = 1.0
            except (WorkerError, OSError) as exc:
                self.on_event(f"server process {child.index} could not be restarted: {exc}")
                delay = min(delay * 2, 30.0)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._watchers:
            await cancel_and_wait(task)
        procs = [c.proc for c in self.children if c.proc is not None]
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()


# -- the child ---------------------------------------------------------------------------------

async def _child(cfg: Config, spec: dict[str, Any]) -> int:
    from .up import UpError, _start_web
    from .web import create_app

    ice = turn_ice(cfg, spec["turn"]) if spec.get("turn") else no_turn_ice
    signaling = make_signaling(cfg, ice, spec["redis"],
                               RoomTickets(bytes.fromhex(spec["tickets"])))
    app = create_app(signaling)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:  # up closes it, or died: stop
        with contextlib.suppress(OSError):
            while os.read(0, 4096):  # the raw fd: no buffer lock held at interpreter exit
                pass
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, name="parent-watch", daemon=True).start()
    try:
        runner = await _start_web(app, cfg.server.host, int(spec["port"]), reuse_port=True)
    except UpError as exc:
        print(f"incognito-onion: server process {spec.get('index')}: {exc}", file=sys.stderr,
              flush=True)
        return exc.code
    try:
        runtime.tune_gc()
        print(READY, flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
    return exitcodes.OK


def main() -> int:
    from . import logs

    spec = json.loads(sys.stdin.buffer.readline() or b"{}")
    if "config" not in spec:
        print("incognito-onion: this module is started by `incognito-onion up` "
              "(server.workers above 1), not by hand", file=sys.stderr)
        return exitcodes.ERROR
    cfg = Config(spec["config"])
    logs.setup(cfg.server.log_level)
    try:
        return runtime.run(_child(cfg, spec))
    except KeyboardInterrupt:
        return exitcodes.OK
    except Exception as exc:
        print(f"incognito-onion: server process {spec.get('index')}: unexpected failure "
              f"({type(exc).__name__}: {logs.redact(str(exc))})", file=sys.stderr, flush=True)
        return exitcodes.ERROR


if __name__ == "__main__":
    sys.exit(main())
