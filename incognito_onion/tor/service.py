"""The one object the CLI uses to publish the server (and TURN) as an onion service.

    async with TorService(cfg, state_dir, on_progress=bar, on_event=say) as tor:
        onion = await tor.publish({80: ("127.0.0.1", web_port), 3478: ("127.0.0.1", turn_port)})
        print(onion.address, onion.seconds)
        await tor.wait_failed()   # returns only if tor died and could not be brought back

Launches our own tor (default) or attaches to one (``tor.control``), waits for bootstrap with
progress reports, publishes one ephemeral onion, and watches tor: if it dies (or the attached
tor's control connection drops) the watchdog relaunches / reconnects and republishes the same
address (the key stays in memory for the run, and in the state dir with tor.persistent_key),
reporting each step through ``on_event``. ``close()`` removes the onion and stops what we started.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stem.control

from ..tasks import cancel_and_wait
from . import attach, client_keys, launch
from .control import BootstrapProgress, Control, check_version, notify, wait_bootstrap
from .errors import TorControlRefused, TorError, TorNoClientKeys, TorPublishFailed
from .onion_key import OnionKey, OnionKeyError, load_or_create_key
from .publish import Features, probe_features, publish, unpublish

RELAUNCH_ATTEMPTS = 5
RELAUNCH_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass(frozen=True)
class TorEvent:
    """Something the person running the server should hear about.

    kinds: ``notice`` (e.g. PoW unsupported), ``tor_died``, ``republished``, ``retry``,
    ``gave_up``."""

    kind: str
    message: str


@dataclass(frozen=True)
class Onion:
    address: str  # 56 characters + ".onion"
    service_id: str
    seconds: float  # publication: ADD_ONION → every HSDir answered
    bootstrap_seconds: float  # launch/attach → tor at 100 %
    complete: bool  # every HSDir answered before the timeout
    pow: bool  # proof-of-work defence on
    client_auth: int  # how many client keys may reach it (0 = anyone)
    max_streams: int
    notes: tuple[str, ...] = ()


class TorService:
    def __init__(
        self,
        cfg: Any,
        state_dir: Path | str,
        on_progress: Callable[[BootstrapProgress], Any] | None = None,
        on_event: Callable[[TorEvent], Any] | None = None,
        *,
        socks_port: int | str = 0,
        relaunch_attempts: int = RELAUNCH_ATTEMPTS,
    ):
        self.cfg = cfg
        self.state_dir = Path(state_dir)
        self.on_progress = on_progress
        self.on_event = on_event
        self.socks_port = socks_port
        self.relaunch_attempts = relaunch_attempts
        self.mode = "attach" if cfg.tor.control else "launch"
        self.features: Features | None = None
        self.bootstrap_seconds = 0.0
        self.onion: Onion | None = None
        self.restarts = 0
        self._tor: launch.LaunchedTor | None = None
        self._ctl: Control | None = None
        self._key: OnionKey | None = None
        self._ports: dict[int, tuple[str, int]] = {}
        self._auth: list[str] = []
        self._lost = asyncio.Event()
        self._watchdog: asyncio.Task | None = None
        self._failed: asyncio.Future | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> TorService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pid(self) -> int | None:
        """PID of the tor we launched (None when attached)."""
        return self._tor.pid if self._tor is not None else None

    @property
    def controller(self) -> stem.control.Controller | None:
        return self._ctl.controller if self._ctl is not None else None

    async def start(self) -> None:
        """Launch or attach, and wait for bootstrap. Raises a :class:`TorError`."""
        self._failed = asyncio.get_running_loop().create_future()
        t0 = time.monotonic()
        await self._connect(relaunch=False)
        self.bootstrap_seconds = time.monotonic() - t0

    async def _connect(self, relaunch: bool) -> None:
        tor_cfg = self.cfg.tor
        pow_module: bool | None = None
        if self.mode == "launch":
            tor, ctl = await launch.launch(
                tor_cfg.binary, self.state_dir, extra_torrc=list(tor_cfg.extra_torrc),
                socks_port=self.socks_port, bootstrap_timeout=tor_cfg.bootstrap_timeout,
                on_progress=self.on_progress, relaunch=relaunch)
            self._tor, self._ctl = tor, ctl
            path = tor.process.args[0] if isinstance(tor.process.args, list) else None
            if path:
                pow_module = await asyncio.to_thread(launch.has_module, path, "pow")
        else:
            try:
                addr = attach.parse_control(tor_cfg.control)
            except ValueError as exc:
                raise TorControlRefused(str(exc)) from None
            controller = await asyncio.to_thread(
                attach.connect, addr, tor_cfg.control_password or None)
            ctl = Control(controller, f"tor at {addr}")
            self._ctl = ctl
            try:
                check_version(await ctl.version(), f"the tor at {addr}")
                await wait_bootstrap(ctl, tor_cfg.bootstrap_timeout, self.on_progress,
                                     relaunch=relaunch)
            except BaseException:
                await ctl.close()
                self._ctl = None
                raise
        assert self._ctl is not None
        self.features = probe_features(await self._ctl.version(), pow_module)
        self._lost.clear()
        loop = asyncio.get_running_loop()

        def status(controller: object, state: stem.control.State, _ts: float) -> None:
            if state == stem.control.State.CLOSED:  # stem's thread: hand over to the loop
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(self._connection_closed, controller)

        self._ctl.controller.add_status_listener(status, spawn=False)
        if not self._ctl.is_alive():
            self._lost.set()

    def _connection_closed(self, controller: object) -> None:
        # only the current connection counts, not one we closed ourselves while recovering
        if self._ctl is not None and self._ctl.controller is controller:
            self._lost.set()

    # -- publishing ------------------------------------------------------------------------
    async def publish(self, ports: Mapping[int, tuple[str, int]]) -> Onion:
        """Publish ``{onion_port: (host, port)}`` as one onion; returns once every HSDir
        answered. Starts the watchdog."""
        if self._ctl is None:
            raise TorError("TorService.publish() before start()")
        if self.onion is not None:
            raise TorError("TorService.publish() twice: one service publishes one onion")
        tor_cfg = self.cfg.tor
        self._ports = dict(ports)
        if tor_cfg.client_auth:
            try:
                keys = client_keys.list_keys(self.state_dir)
            except client_keys.ClientKeyError as exc:
                raise TorNoClientKeys(str(exc)) from None
            if not keys:
                raise TorNoClientKeys("tor.client_auth is on but there is no participant key "
                                      "yet: make one with `incognito-onion keys add NAME`")
            self._auth = [k.public for k in keys]
        else:
            self._auth = []
        if self._key is None:
            try:
                self._key = load_or_create_key(self.state_dir, tor_cfg.persistent_key)
            except OnionKeyError as exc:
                raise TorPublishFailed(str(exc)) from None
        self.onion = await self._publish_once()
        for note in self.onion.notes:
            await notify(self.on_event, TorEvent("notice", note))
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="tor-watchdog")
        return self.onion

    async def _publish_once(self) -> Onion:
        assert self._ctl is not None and self._key is not None and self.features is not None
        tor_cfg = self.cfg.tor
        pub = await publish(self._ctl, self._key, self._ports,
                            timeout=tor_cfg.publish_timeout, features=self.features,
                            client_keys=self._auth, pow_defense=tor_cfg.pow_defense,
                            max_streams=tor_cfg.max_streams)
        return Onion(pub.address, pub.service_id, pub.seconds, self.bootstrap_seconds,
                     pub.complete, pub.pow, len(self._auth),
                     tor_cfg.max_streams if self.features.max_streams else 0, tuple(pub.notes))

    # -- watchdog --------------------------------------------------------------------------
    def _tor_gone(self) -> bool:
        if self._lost.is_set():
            return True
        return self._tor is not None and not self._tor.alive()

    async def _wait_lost(self) -> None:
        while not self._tor_gone():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), 0.5)

    async def _watch(self) -> None:
        while not self._closed:
            await self._wait_lost()
            if self._closed:
                return
            detail = ""
            if self._tor is not None:
                # the control connection often drops a moment before the exit is visible
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(self._tor.process.wait, 2)
                detail = self._tor.death_detail()
            if self.mode == "launch":
                what = "tor exited unexpectedly" + (f" ({detail})" if detail else "")
                await notify(self.on_event, TorEvent("tor_died", what + "; relaunching it"))
            else:
                await notify(self.on_event, TorEvent(
                    "tor_died", "lost the connection to tor (it stopped or restarted); "
                                "reconnecting"))
            error = await self._recover()
            if error is not None:
                await notify(self.on_event, TorEvent(
                    "gave_up", f"could not bring tor back after {self.relaunch_attempts} "
                               f"attempts: {error}"))
                if self._failed is not None and not self._failed.done():
                    self._failed.set_result(error)
                return

    async def _drop(self) -> None:
        ctl, tor = self._ctl, self._tor
        self._ctl = self._tor = None
        if ctl is not None:
            await ctl.close()
        if tor is not None:
            await asyncio.to_thread(tor.stop)

    async def _recover(self) -> TorError | None:
        error: TorError | None = None
        for attempt in range(self.relaunch_attempts):
            await self._drop()
            t0 = time.monotonic()
            try:
                await self._connect(relaunch=True)
                boot = time.monotonic() - t0
                self.onion = await self._publish_once()
            except Exception as exc:  # the watchdog must keep going, and report
                error = exc if isinstance(exc, TorError) else TorError(
                    f"{type(exc).__name__}: {exc}")
                wait = RELAUNCH_BACKOFF[min(attempt, len(RELAUNCH_BACKOFF) - 1)]
                if attempt + 1 < self.relaunch_attempts:
                    await notify(self.on_event, TorEvent(
                        "retry", f"bringing tor back failed ({error}); retrying in {wait:g}s"))
                    await asyncio.sleep(wait)
                continue
            self.restarts += 1
            verb = "relaunched" if self.mode == "launch" else "reconnected"
            await notify(self.on_event, TorEvent(
                "republished", f"tor {verb} in {boot:.1f}s; the onion is published again at "
                               f"the same address ({self.onion.seconds:.1f}s)"))
            return None
        return error

    async def wait_failed(self) -> TorError:
        """Resolves only when the watchdog gave up bringing tor back (with the last error)."""
        if self._failed is None:
            raise TorError("TorService.wait_failed() before start()")
        return await asyncio.shield(self._failed)

    # -- shutdown --------------------------------------------------------------------------
    async def close(self) -> None:
        """Remove the onion, close the control connection, stop the tor we launched."""
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            with contextlib.suppress(Exception):  # (the watchdog's own failure: too late now)
                await cancel_and_wait(self._watchdog)
            self._watchdog = None
        if self._ctl is not None and self.onion is not None:
            await unpublish(self._ctl, self.onion.service_id)
        await self._drop()
        if self._failed is not None and not self._failed.done():
            self._failed.cancel()
