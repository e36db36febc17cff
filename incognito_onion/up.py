"""``incognito-onion up``: start the web server, TURN and tor, open the room, print its URL,
serve until Ctrl-C or SIGTERM, then stop everything that was started, in reverse order.

With ``server.workers`` above 1 it first starts a private redis-server
(:mod:`redis_supervisor`), serves with the port bound ``reuse_port`` and starts the other server
processes (:mod:`worker`), which share rooms through that redis (:mod:`shared_rooms`)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from . import exitcodes, ids, room_link, room_tickets, runtime
from .config import Config
from .room_link import RoomLink
from .room_tickets import RoomTickets
from .signaling import IceProvider, no_turn_ice
from .web import create_app
from .worker import WorkerError, WorkerPool, make_signaling, turn_spec

log = logging.getLogger("incognito_onion.up")


class UpError(Exception):
    """A failure ``up`` explains in one line and exits with ``code``."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


@dataclass
class UpOptions:
    qr: str = "auto"  # auto: only when stdout is a terminal; always; never
    qr_png: Path | None = None


def room_url(base: str, room_id: str, key: str) -> str:
    """The link people open: room id in the path, the room key in the fragment, which
    browsers never send to the server."""
    return f"{base}/r/{room_id}#{key}"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _print_url(url: str, opts: UpOptions, out: TextIO) -> None:
    print(url, file=out, flush=True)
    show = opts.qr == "always" or (opts.qr == "auto" and out.isatty())
    if show or opts.qr_png:
        import segno

        code = segno.make(url, error="m")
        if show:
            code.terminal(out=out, compact=True)
        if opts.qr_png:
            code.save(str(opts.qr_png), scale=8, border=4)
            _say(f"QR code written to {opts.qr_png}")


async def _start_web(app: web.Application, host: str, port: int,
                     reuse_port: bool = False) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise UpError(f"port {port} on {host} is already in use; pick another with "
                          f"--port or server.port", exitcodes.BIND) from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL):
            raise UpError(f"cannot listen on {host}: no such address on this machine; "
                          f"check --host or server.host", exitcodes.BIND) from None
        if exc.errno == errno.EACCES:
            raise UpError(f"not allowed to listen on port {port}; use a port above 1023",
                          exitcodes.BIND) from None
        raise UpError(f"cannot listen on {host}:{port}: {exc.strerror}", exitcodes.BIND) \
            from None
    return runner


async def _start_turn(cfg: Config, state_dir: Path, stack: contextlib.AsyncExitStack
                      ) -> tuple[IceProvider, int, dict[str, Any]]:
    """Start the supervised coturn; return the ICE provider that issues credentials per peer."""
    from .turn import CoturnSupervisor, TurnError

    def on_event(event: Any) -> None:
        kind = getattr(event, "kind", "")
        if kind in ("exited", "restarted", "restart_failed", "warning"):
            _say(f"TURN: {getattr(event, 'message', event)}")

    sup = CoturnSupervisor(cfg, state_dir, on_event=on_event)
    try:
        await sup.start()
    except TurnError as exc:
        raise UpError(f"TURN: {exc}", exitcodes.TURN) from None
    stack.push_async_callback(sup.stop)
    policy = "relay" if cfg.turn.relay_only else "all"

    def provider(peer_id: str, host: str) -> dict[str, Any]:
        return {**sup.ice(peer_id, host), "iceTransportPolicy": policy}

    return provider, sup.port, turn_spec(sup, policy)


async def _start_redis(cfg: Config, state_dir: Path, stack: contextlib.AsyncExitStack) -> Any:
    """Start the private redis-server the workers share rooms through."""
    from .redis_supervisor import EXIT_CODE, RedisError, RedisSupervisor

    sup = RedisSupervisor(cfg.server.redis_binary, state_dir,
                          on_event=lambda msg: _say(f"redis: {msg}"))
    try:
        await sup.start()
    except RedisError as exc:
        await sup.stop()
        raise UpError(f"redis: {exc}", EXIT_CODE) from None
    stack.push_async_callback(sup.stop)
    return sup


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(cfg: Config, state_dir: Path, opts: UpOptions | None = None,
                ready: Callable[[str], Awaitable[None] | None] | None = None) -> int:
    """Run until a stop signal. Returns an exit code; raises :class:`UpError` on failure."""
    opts = opts or UpOptions()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # whatever we or our children (coturn's pid file, tor, redis) write is ours alone
    umask = os.umask(0o077)
    try:
        return await _serve(cfg, state_dir, opts, stop, ready)
    finally:
        os.umask(umask)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _serve(cfg: Config, state_dir: Path, opts: UpOptions, stop: asyncio.Event,
                 ready: Callable[[str], Awaitable[None] | None] | None) -> int:
    saved = _saved_link(cfg, state_dir)  # before anything starts: a bad file stops us here
    async with contextlib.AsyncExitStack() as stack:
        workers = int(cfg.server.workers)
        redis = await _start_redis(cfg, state_dir, stack) if workers > 1 else None
        ice: IceProvider = no_turn_ice
        turn_port = None
        turn = None
        if cfg.turn.enabled:
            ice, turn_port, turn = await _start_turn(cfg, state_dir, stack)
        else:
            _say("TURN is off: browsers connect directly, so they learn each other's addresses")
        signaling = make_signaling(cfg, ice, redis.url if redis else None,
                                   _load_tickets(state_dir))
        app = create_app(signaling)
        runner = await _start_web(app, cfg.server.host, cfg.server.port, reuse_port=workers > 1)
        stack.push_async_callback(runner.cleanup)
        port = _bound_port(runner) or cfg.server.port
        room = await signaling.rooms.open_pinned(saved.room_id if saved else None)
        key = saved.key if saved else ids.new_room_key()
        if cfg.rooms.keep_link and saved is None:
            _keep_link(state_dir, RoomLink(room.id, key))
        if redis is not None:
            async def reopen() -> None:  # redis lost everything: the printed link works again
                await signaling.rooms.open_pinned(room.id)

            redis.on_restart = reopen
            pool = WorkerPool({"config": cfg.as_dict(), "redis": redis.url, "port": port,
                               "turn": turn, "tickets": signaling.tickets.hex()},
                              workers - 1, on_event=lambda m: _say(m))
            stack.push_async_callback(pool.stop)
            try:
                await pool.start()
            except WorkerError as exc:
                raise UpError(str(exc), exc.code) from None
            _say(f"{workers} server processes share port {port}; rooms are kept in a private "
                 f"redis-server (websocket only)")
        tor = None
        if cfg.tor.enabled:
            base, tor = await _start_tor(cfg, state_dir, port, turn_port, stack)
        else:
            base = f"http://{_url_host(_display_host(cfg.server.host))}:{port}"
            _say(f"serving on {base} (tor is off: only reachable from this machine or network)")
        url = room_url(base, room.id, key)
        runtime.tune_gc()  # everything started: what is alive now lives for good
        _say("Room link (the part after # is the room key; share the whole link only with "
             "the people you want in the call):")
        _print_url(url, opts, sys.stdout)
        _say("Press Ctrl-C to stop.")
        if ready is not None:
            result = ready(url)
            if asyncio.iscoroutine(result):
                await result
        lost = await _wait_stop_or_tor_lost(stop, tor)
        _say("stopping…")
        if lost is not None:
            raise UpError(f"tor: {lost}", getattr(lost, "exit_code", exitcodes.TOR))
    return exitcodes.OK


async def _wait_stop_or_tor_lost(stop: asyncio.Event, tor: Any) -> Exception | None:
    """Wait for a stop signal, or for tor's watchdog to give up (its error is returned)."""
    waiters = {asyncio.ensure_future(stop.wait())}
    if tor is not None:
        waiters.add(asyncio.ensure_future(tor.wait_failed()))
    done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in done:
        result = task.result()
        if isinstance(result, Exception):
            return result
    return None


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host  # noqa: S104


def _bound_port(runner: web.AppRunner) -> int | None:
    for site in runner.sites:
        server = getattr(site, "_server", None)
        for sock in getattr(server, "sockets", None) or []:
            return sock.getsockname()[1]
    return None


class _ProgressBar:
    """tor's bootstrap as a bar with tor's own summary: redrawn in place on a terminal, one
    line per change otherwise (logs, pipes)."""

    def __init__(self, out: TextIO):
        self.out = out
        self.tty = out.isatty()
        self.last = ""

    def __call__(self, p: Any) -> None:
        width = 30
        filled = width * max(0, min(100, int(p.percent))) // 100
        what = "tor restarting" if getattr(p, "relaunch", False) else "tor"
        line = f"{what} [{'#' * filled}{'.' * (width - filled)}] {p.describe()}"
        if line == self.last:
            return
        self.last = line
        if self.tty:
            end = "\n" if p.percent >= 100 else ""
            print(f"\r\x1b[2K{line}", end=end, file=self.out, flush=True)
        else:
            print(line, file=self.out, flush=True)


@contextlib.contextmanager
def _state_errors() -> Iterator[None]:
    """A state file that cannot be used: its one-line message, exit code STATE."""
    from .state import StateDirError

    try:
        yield
    except (StateDirError, OSError) as exc:
        raise UpError(str(exc), exitcodes.STATE) from None


def _load_tickets(state_dir: Path) -> RoomTickets:
    """The restore-ticket secret from the state dir (made there on first use)."""
    with _state_errors():
        return room_tickets.load(state_dir)


def _saved_link(cfg: Config, state_dir: Path) -> RoomLink | None:
    """The link of an earlier run to print again (``rooms.keep_link``), or None for a new one.
    With the setting off a saved link is deleted: its room key must not stay on disk."""
    with _state_errors():
        if not cfg.rooms.keep_link:
            gone = room_link.forget(state_dir)
            if gone is not None:
                _say(f"rooms.keep_link is off: deleted the saved room link {gone} "
                     f"(a new link is printed)")
            return None
        saved = room_link.load(state_dir)
    if saved is not None:
        _say(f"rooms.keep_link: the room link saved in {room_link.path_in(state_dir)} is "
             f"printed again")
    if cfg.tor.enabled and not cfg.tor.persistent_key:
        _say("rooms.keep_link is on but tor.persistent_key is off: the room and its key stay, "
             "the onion address changes each run")
    return saved


def _keep_link(state_dir: Path, link: RoomLink) -> None:
    """Save a new link for the next runs (``rooms.keep_link``)."""
    with _state_errors():
        path = room_link.save(state_dir, link)
    _say(f"rooms.keep_link: the room link is saved in {path} (its key is on this disk; "
         f"delete the file to get a new link)")


async def _start_tor(cfg: Config, state_dir: Path, web_port: int, turn_port: int | None,
                     stack: contextlib.AsyncExitStack) -> tuple[str, Any]:
    """Launch or attach to tor and publish the web server (port 80) and TURN (its own port)
    as one onion. Returns the base URL and the service (to watch for a tor that is lost)."""
    from .state import StateDirError
    from .tor import TorError, TorService

    def on_event(event: Any) -> None:
        _say(f"tor: {event.message}")

    tor = TorService(cfg, state_dir, on_progress=_ProgressBar(sys.stderr), on_event=on_event)
    web_host = "127.0.0.1" if cfg.server.host in ("0.0.0.0", "::", "") else cfg.server.host  # noqa: S104
    ports: dict[int, tuple[str, int]] = {80: (web_host, web_port)}
    if turn_port is not None:
        ports[cfg.turn.port] = (cfg.turn.listen_ip, turn_port)
    try:
        await tor.start()
        stack.push_async_callback(tor.close)
        onion = await tor.publish(ports)
    except TorError as exc:
        await tor.close()
        raise UpError(f"tor: {exc}", getattr(exc, "exit_code", exitcodes.TOR)) from None
    except StateDirError as exc:
        await tor.close()
        raise UpError(str(exc), exitcodes.STATE) from None
    how = "attached to the running tor" if tor.mode == "attach" else "launched tor"
    extras = []
    if onion.client_auth:
        extras.append(f"client authorization: {onion.client_auth} key(s)")
    extras.append("proof-of-work defence on" if onion.pow else "no proof-of-work defence")
    _say(f"onion published in {onion.seconds:.1f} s ({how}; tor ready in "
         f"{onion.bootstrap_seconds:.1f} s; {', '.join(extras)})")
    for note in onion.notes:
        _say(f"tor: {note}")
    return f"http://{onion.address}", tor
