"""Launch our own tor: a data directory under the state dir, a control socket (or a loopback
control port when the socket path would be too long) with cookie auth, no SocksPort unless
asked, ``__OwningControllerProcess`` so tor exits with us, and the expert's extra torrc lines.

We start tor with ``subprocess.Popen`` (never stem's ``launch_tor``: its timeout uses SIGALRM),
let it log to a file in its data directory, wait for the control endpoint, authenticate with the
cookie (stem then sends TAKEOWNERSHIP: tor exits when our control connection closes) and poll
``status/bootstrap-phase`` with progress reports and a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import attach
from .control import BootstrapProgress, Control, check_version, parse_version, wait_bootstrap
from .errors import (
    TorBinaryMissing,
    TorControlRefused,
    TorError,
    TorLaunchFailed,
    TorTooOld,
)

DATA_DIR_NAME = "tor-data"
#: sun_path is 108 bytes on Linux; keep a margin
MAX_SOCKET_PATH = 100
STOP_TIMEOUT = 5.0
#: tor log lines that say nothing useful on their own
_UNTELLING = ("see warnings above", "TestingTorNetwork is set", "Reading config failed",
              # a notice-level nag at every start as root; never why tor stopped
              "You are running Tor as root")


def find_binary(binary: str) -> str:
    """Absolute path of the tor executable, or :class:`TorBinaryMissing`."""
    name = binary or "tor"
    if os.sep in name:
        path = Path(name).expanduser()
        if not path.exists():
            raise TorBinaryMissing(f"tor executable {name} not found: install tor "
                                   f"(Debian: sudo apt install tor) or fix tor.binary")
        if not os.access(path, os.X_OK) or path.is_dir():
            raise TorBinaryMissing(f"tor executable {name} is not executable: fix tor.binary")
        return str(path)
    found = shutil.which(name)
    if not found:
        raise TorBinaryMissing(f"tor is not installed ({name!r} is not on PATH): install it "
                               f"(Debian: sudo apt install tor) or set tor.binary")
    return found


def binary_version(path: str) -> str:
    """Run ``tor --version``; raise :class:`TorTooOld` below MIN_VERSION. Blocking."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise TorLaunchFailed(f"{path} --version did not answer within 30s") from None
    except OSError as exc:
        raise TorBinaryMissing(f"cannot run {path}: {exc.strerror or exc}") from None
    version = parse_version(out.stdout)
    if version is None:
        raise TorTooOld(f"{path} did not report a tor version (is it tor?); incognito-onion "
                        f"needs tor 0.4.6.1 or newer")
    check_version(version, path)
    return str(version)


def has_module(path: str, module: str) -> bool | None:
    """``tor --list-modules`` says ``pow: yes``? None when tor cannot tell."""
    try:
        out = subprocess.run([path, "--list-modules"], capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.stdout.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == module:
            return value.strip() == "yes"
    return None


def _has_option(lines: Sequence[str], option: str) -> bool:
    return any(line.split(None, 1)[:1] == [option.lower()]
               for line in (raw.strip().lower() for raw in lines))


@dataclass
class TorrcPlan:
    lines: list[str]
    control_socket: Path | None
    control_port_file: Path | None


def build_torrc(datadir: Path, extra_torrc: Sequence[str] = (), socks_port: int | str = 0,
                owner_pid: int | None = None) -> TorrcPlan:
    """The torrc for our tor. ``extra_torrc`` lines come last (tor keeps the last value of a
    single-valued option); our ``SocksPort 0`` is left out when they set a SocksPort."""
    for line in extra_torrc:
        if "\n" in line or "\r" in line or "\x00" in line:
            raise TorLaunchFailed("tor.extra_torrc: each entry must be a single torrc line")
    sock = datadir / "control.sock"
    use_socket = len(str(sock)) <= MAX_SOCKET_PATH and not any(
        c.isspace() or c in "\"\\" for c in str(sock))
    lines = [
        f"DataDirectory {datadir}",
        f"Log notice file {datadir / 'tor.log'}",
        "CookieAuthentication 1",
        f"CookieAuthFile {datadir / 'control_auth_cookie'}",
        f"__OwningControllerProcess {owner_pid or os.getpid()}",
    ]
    if use_socket:
        lines += ["ControlPort 0", f"ControlSocket unix:{sock}"]
        port_file = None
    else:
        port_file = datadir / "control.port"
        lines += ["ControlPort 127.0.0.1:auto", f"ControlPortWriteToFile {port_file}"]
    if not _has_option(extra_torrc, "SocksPort"):
        lines.append(f"SocksPort {socks_port or 0}")
    lines += [line.strip() for line in extra_torrc if line.strip()]
    return TorrcPlan(lines, sock if use_socket else None, port_file)


@dataclass
class LaunchedTor:
    """A tor process we started; we stop it by its PID."""

    process: subprocess.Popen
    datadir: Path
    plan: TorrcPlan
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.datadir / "tor.log"

    def alive(self) -> bool:
        return self.process.poll() is None

    def control_address(self) -> attach.ControlAddress | None:
        if self.plan.control_socket is not None:
            return (attach.ControlAddress(path=str(self.plan.control_socket))
                    if self.plan.control_socket.exists() else None)
        assert self.plan.control_port_file is not None
        try:
            text = self.plan.control_port_file.read_text()  # PORT=127.0.0.1:N\n[UNIX_PORT=...]
        except OSError:
            return None
        line = next((ln for ln in text.splitlines() if ln.startswith("PORT=")), "")
        host, _, port = line[5:].rpartition(":")
        if not host or not port.isdigit():
            return None  # not written yet (or half written)
        return attach.ControlAddress(host=host, port=int(port))

    def _log_lines(self) -> list[str]:
        lines: list[str] = []
        for path in (self.datadir / "tor.stdout", self.log_path):
            with contextlib.suppress(OSError):
                lines += path.read_text(errors="replace").splitlines()
        return lines

    def last_problem(self) -> str:
        """tor's last telling [err] (else [warn]) line, without its timestamp; "" if none."""
        lines = self._log_lines()
        for level in ("[err]", "[warn]"):
            for line in reversed(lines):
                text = line.partition(level)[2].strip()
                if level in line and not any(skip in text for skip in _UNTELLING):
                    return text
        return ""

    def data_dir_in_use(self) -> bool:
        return any("another Tor process is running" in line for line in self._log_lines())

    def death_detail(self) -> str:
        code = self.process.poll()
        parts = []
        if code is not None:
            parts.append(f"exit code {code}" if code >= 0 else f"killed by signal {-code}")
        problem = self.last_problem()
        if problem and code is not None:
            parts.append(f"last tor message: {problem}")
        return "; ".join(parts)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps. Blocking."""
        if self.process.poll() is None:
            try:
                self.process.terminate()
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
            except ProcessLookupError:
                pass
        else:
            self.process.wait()


def _datadir_locked(datadir: Path) -> bool:
    """Does a running tor hold this data directory's lock (tor flock()s ``<datadir>/lock``)?"""
    try:
        fd = os.open(datadir / "lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases our probe lock
    return False


def _prepare_datadir(state_dir: Path) -> Path:
    datadir = Path(state_dir) / DATA_DIR_NAME
    datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
    datadir.chmod(0o700)
    if _datadir_locked(datadir):
        raise TorLaunchFailed(f"another tor is using {datadir}: is another incognito-onion "
                              f"running with this state dir? (pick another with --state-dir)")
    for stale in ("control.sock", "control.port"):
        with contextlib.suppress(FileNotFoundError):
            (datadir / stale).unlink()
    # this run's log starts empty (its errors are read back from it), the previous run's is
    # kept as *.1: after tor died and was relaunched, the reason is still there to read
    for log_name in ("tor.log", "tor.stdout"):
        with contextlib.suppress(FileNotFoundError):
            (datadir / log_name).replace(datadir / f"{log_name}.1")
    return datadir


def start_process(binary: str, state_dir: Path, extra_torrc: Sequence[str] = (),
                  socks_port: int | str = 0) -> LaunchedTor:
    """Check the binary and its version, write the torrc and start tor. Blocking."""
    path = find_binary(binary)
    binary_version(path)
    datadir = _prepare_datadir(state_dir)
    plan = build_torrc(datadir, extra_torrc, socks_port)
    torrc = datadir / "torrc"
    torrc.write_text("\n".join(plan.lines) + "\n")
    defaults = datadir / "torrc-defaults"
    defaults.write_text("")
    out = open(datadir / "tor.stdout", "wb")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            [path, "-f", str(torrc), "--defaults-torrc", str(defaults)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, not tor: we stop it in order
        )
    except OSError as exc:
        raise TorBinaryMissing(f"cannot run {path}: {exc.strerror or exc}") from None
    finally:
        out.close()
    return LaunchedTor(proc, datadir, plan)


def _early_exit_error(tor: LaunchedTor) -> TorError:
    if tor.data_dir_in_use():
        return TorLaunchFailed(f"another tor is using {tor.datadir}: is another incognito-onion "
                               f"running with this state dir? (pick another with --state-dir)")
    problem = tor.last_problem()
    why = f": {problem}" if problem else f" (exit code {tor.process.returncode})"
    return TorLaunchFailed(f"tor exited at start{why}")


async def launch(
    binary: str,
    state_dir: Path,
    *,
    extra_torrc: Sequence[str] = (),
    socks_port: int | str = 0,
    bootstrap_timeout: float = 180.0,
    on_progress: Callable[[BootstrapProgress], Any] | None = None,
    relaunch: bool = False,
) -> tuple[LaunchedTor, Control]:
    """Start tor and wait until it has bootstrapped. Returns the process and an authenticated
    control connection. On any failure the tor we started is stopped before raising."""
    starting = asyncio.ensure_future(
        asyncio.to_thread(start_process, binary, state_dir, extra_torrc, socks_port))
    try:
        tor = await asyncio.shield(starting)
    except asyncio.CancelledError:  # cancelled while Popen ran: stop what it started
        with contextlib.suppress(Exception):
            started = await starting
            await asyncio.to_thread(started.stop)
        raise
    ctl: Control | None = None
    try:
        deadline = time.monotonic() + bootstrap_timeout
        addr = None
        while addr is None:
            if not tor.alive():
                raise _early_exit_error(tor)
            addr = tor.control_address()
            if addr is None:
                if time.monotonic() > deadline:
                    raise TorLaunchFailed(f"tor did not open its control port within "
                                          f"{bootstrap_timeout:g}s")
                await asyncio.sleep(0.05)
        while True:
            try:
                controller = await asyncio.to_thread(attach.connect, addr, None)
                break
            except TorControlRefused:
                # the socket can exist a moment before tor listens on it
                if not tor.alive():
                    raise _early_exit_error(tor) from None
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
            except TorError:
                if not tor.alive():
                    raise _early_exit_error(tor) from None
                raise
        ctl = Control(controller, "the tor we launched", tor.death_detail)
        check_version(await ctl.version(), "the tor we launched")
        remaining = max(0.0, deadline - time.monotonic())
        await wait_bootstrap(ctl, remaining, on_progress, tor.alive, relaunch=relaunch,
                             configured=bootstrap_timeout)
        return tor, ctl
    except BaseException:
        if ctl is not None:
            await ctl.close()
        await asyncio.to_thread(tor.stop)
        raise
