"""Async, time-limited use of a stem ``Controller`` (stem 1.8 is thread-based), tor version
checks, and waiting for bootstrap with progress reports.

Every blocking stem call goes through :meth:`Control.call`: it runs in a worker thread
(``asyncio.to_thread``) with a deadline; on a deadline the control connection is closed, which
unblocks the thread, and the caller gets :class:`TorDied` with a clear message.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import stem
import stem.control
import stem.version

from .errors import TorBootstrapTimeout, TorDied, TorError, TorTooOld

#: oldest tor we accept: v3-only ADD_ONION with ClientAuthV3 (and ONION_CLIENT_AUTH_ADD)
MIN_VERSION = stem.version.Version("0.4.6.1")
#: ADD_ONION accepts PoWDefensesEnabled= from this version on
POW_VERSION = stem.version.Version("0.4.9.2-alpha")
#: ADD_ONION accepts MaxStreams= from this version on
MAX_STREAMS_VERSION = stem.version.Version("0.2.7.2")
#: deadline for one ordinary control-port command
CALL_TIMEOUT = 30.0

T = TypeVar("T")

# stem logs every command it sends at TRACE and replies at DEBUG: ADD_ONION carries the onion's
# secret key and ONION_CLIENT_AUTH_ADD a client's. Never let that reach a log, whatever level
# the application's root logger is at.
logging.getLogger("stem").setLevel(logging.WARNING)


@dataclass(frozen=True)
class BootstrapProgress:
    """One step of tor's bootstrap, as tor reports it (``GETINFO status/bootstrap-phase``)."""

    percent: int
    tag: str
    summary: str
    warning: str = ""  # set when tor reports a problem (e.g. "Connection refused")
    relaunch: bool = False  # True while the watchdog restarts a tor that died

    def describe(self) -> str:
        text = f"{self.percent}% ({self.summary or self.tag or 'starting'})"
        if self.warning:
            text += f", tor warns: {self.warning}"
        return text


_KV = re.compile(r'([A-Z_]+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_bootstrap_phase(text: str) -> BootstrapProgress:
    """``NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"`` → BootstrapProgress."""
    fields: dict[str, str] = {}
    for key, value in _KV.findall(text or ""):
        if value.startswith('"'):
            try:
                value = shlex.split(value)[0]
            except ValueError:
                value = value.strip('"')
        fields[key] = value
    try:
        percent = int(fields.get("PROGRESS", "0"))
    except ValueError:
        percent = 0
    return BootstrapProgress(percent, fields.get("TAG", ""), fields.get("SUMMARY", ""),
                             fields.get("WARNING", ""))


def parse_version(text: str) -> stem.version.Version | None:
    """The version in ``tor --version`` output (``Tor version 0.4.9.11.``), or None."""
    m = re.search(r"Tor version (\d+\.\d+\.\d+(?:\.\d+)?(?:-[\w.]+)?)", text or "")
    if not m:
        return None
    try:
        return stem.version.Version(m.group(1).rstrip("."))
    except ValueError:
        return None


def check_version(version: stem.version.Version, where: str) -> None:
    if version < MIN_VERSION:
        raise TorTooOld(
            f"{where} is tor {version}, too old: incognito-onion needs tor {MIN_VERSION} or "
            f"newer (Debian: apt install tor from bookworm-backports or deb.torproject.org)")


async def notify(callback: Callable[[Any], Any] | None, value: Any) -> None:
    """Call a user callback (plain or async); its errors must not break tor handling."""
    if callback is None:
        return
    try:
        result = callback(value)
        if inspect.isawaitable(result):
            await result
    except Exception:  # noqa: S110 - a broken progress bar must not stop the service
        pass


class Control:
    """A stem Controller plus a way to explain its death (exit code, last log line)."""

    def __init__(self, controller: stem.control.Controller, where: str,
                 death_detail: Callable[[], str] | None = None):
        self.controller = controller
        self.where = where  # e.g. "the tor we launched", "tor at 127.0.0.1:9051"
        self._death_detail = death_detail

    def died(self, doing: str, why: str = "") -> TorDied:
        detail = self._death_detail() if self._death_detail else ""
        msg = f"{self.where} {why or 'closed its control connection'} while {doing}"
        if detail:
            msg += f" ({detail})"
        return TorDied(msg)

    def is_alive(self) -> bool:
        return self.controller.is_alive()

    async def call(self, doing: str, fn: Callable[..., T], *args: Any,
                   timeout: float = CALL_TIMEOUT, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` (a blocking stem call) off the event loop."""
        if not self.controller.is_alive():
            raise self.died(doing)
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), timeout)
        except TimeoutError:
            await asyncio.to_thread(self.controller.close)
            raise self.died(doing, f"did not answer within {timeout:.0f}s") from None
        except (stem.SocketClosed, stem.SocketError):
            raise self.died(doing) from None
        except stem.ControllerError as exc:  # an error reply, or a reply stem cannot parse
            raise TorError(f"{self.where} answered an error while {doing}: {exc}") from None

    async def msg(self, doing: str, command: str, timeout: float = CALL_TIMEOUT) -> Any:
        return await self.call(doing, self.controller.msg, command, timeout=timeout)

    async def get_info(self, doing: str, key: str) -> str:
        return await self.call(doing, self.controller.get_info, key)

    async def version(self) -> stem.version.Version:
        return await self.call("reading its version", self.controller.get_version)

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError, stem.ControllerError, OSError):
            await asyncio.wait_for(asyncio.to_thread(self.controller.close), 10)


async def wait_bootstrap(
    ctl: Control,
    timeout: float,
    on_progress: Callable[[BootstrapProgress], Any] | None = None,
    alive: Callable[[], bool] | None = None,
    relaunch: bool = False,
    poll: float = 0.25,
    configured: float | None = None,
) -> BootstrapProgress:
    """Poll ``status/bootstrap-phase`` until 100 %, reporting each change; raise
    :class:`TorBootstrapTimeout` with the last summary after ``timeout`` seconds, or
    :class:`TorDied` if tor goes away (``alive()`` false or the connection closes).
    ``configured`` is the timeout named in the message (when part was already spent)."""
    deadline = time.monotonic() + timeout
    last: BootstrapProgress | None = None
    while True:
        if alive is not None and not alive():
            raise ctl.died("bootstrapping")
        text = await ctl.get_info("bootstrapping", "status/bootstrap-phase")
        progress = parse_bootstrap_phase(text)
        if relaunch:
            progress = BootstrapProgress(progress.percent, progress.tag, progress.summary,
                                         progress.warning, True)
        if progress != last:
            last = progress
            await notify(on_progress, progress)
        if progress.percent >= 100:
            return progress
        if time.monotonic() >= deadline:
            raise TorBootstrapTimeout(
                f"tor did not finish bootstrapping within {configured or timeout:g}s: stuck at "
                f"{progress.describe()}; check the network (or a firewall), or raise "
                f"tor.bootstrap_timeout", progress.percent, progress.summary)
        await asyncio.sleep(min(poll, max(0.0, deadline - time.monotonic())))
