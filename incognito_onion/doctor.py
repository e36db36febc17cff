"""``incognito-onion doctor``: checks everything ``incognito-onion up`` needs, without starting
anything, and prints one line per check::

    ok    config: /etc/incognito-onion/config.yaml
    fail  tor: tor is not installed ('tor' is not on PATH) ...; fix: apt-get install tor, ...
    skip  coturn: TURN is off (--no-turn or turn.enabled: false)

Status is ``ok``, ``warn`` (``up`` works, but something deserves a look), ``fail`` (``up`` would
stop) or ``skip`` (that part is turned off). Every warn and fail line ends with the exact fix.
The exit code is 0 when nothing failed, else the code ``up`` uses for the first failure's kind
(see :mod:`exitcodes`: 2 config, 3 state dir, 4 web port, 5 TURN, 1 other; tor's own finer
codes 20-39 from :mod:`incognito_onion.tor.errors`, 6 when this build has no tor support).

The checks are plain functions returning :class:`Check` values (no printing), so they can be
tested and reused; :func:`report` prints them. Where ``up`` has a function for a decision (the tor
binary lookup, tor's version floor, PoW support, client keys, TURN's binary name) the doctor calls
that same function, so the two cannot disagree.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from . import exitcodes
from .config import Config, ConfigError, load
from .state import default_state_dir

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
#: seconds for one external command (tor --version) or one control-port exchange
TIMEOUT = 10.0
#: state dir entries the doctor does not look into: tor manages its own data directory
TOR_DATA = "tor-data"
#: where Debian and source installs put tor, off a normal user's PATH
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin")

T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    """The outcome of one check. ``code``: the exit code of this kind of failure."""

    status: str
    name: str
    detail: str
    fix: str = ""
    code: int = exitcodes.OK

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name}: {self.detail}"
        if self.fix and self.status in (WARN, FAIL):
            text += f"; fix: {self.fix}"
        return text


def _sudo() -> str:
    return "" if os.geteuid() == 0 else "sudo "


def _apt(package: str) -> str:
    return f"{_sudo()}apt-get install {package}"


# --- config --------------------------------------------------------------------------------------

def config_fix(problem: str) -> str:
    """The fix for one config problem message (the message itself names the rule)."""
    head = problem.split(":", 1)[0]
    if head.startswith("INCOGNITO_"):
        return f"correct or unset the environment variable {head}"
    if head.startswith("--"):
        return f"correct the {head} flag"
    if problem.endswith("config file not found"):
        return ("create it (incognito-onion config defaults > FILE), or point --config / "
                "INCOGNITO_CONFIG at an existing file")
    if re.match(r"^[^:\s]+:\d+:", problem):
        file, line = problem.split(":", 2)[:2]
        return f"edit line {line} of {file} as the message says, then run incognito-onion doctor"
    return "edit the config as the message says, then run incognito-onion doctor"


def config_checks(problems: Sequence[str]) -> list[Check]:
    """One fail line per problem, with the very messages ``up`` prints."""
    return [Check(FAIL, "config", p, config_fix(p), exitcodes.CONFIG) for p in problems]


def config_ok(cfg: Config) -> Check:
    where = str(cfg.source) if cfg.source else "no config file: built-in defaults and environment"
    return Check(OK, "config", f"valid ({where})")


# --- state dir -----------------------------------------------------------------------------------

def check_state_dir(path: Path) -> list[Check]:
    """The state dir can be made or used, is 0700 and ours, and its files are 0600."""
    name = "state dir"
    p = Path(path).expanduser()
    other = "pick another with --state-dir (or state_dir in the config)"
    if not p.exists() and not p.is_symlink():
        parent = p.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            return [Check(FAIL, name, f"cannot create {p}: {parent} is a file, not a directory",
                          other, exitcodes.STATE)]
        if not os.access(parent, os.W_OK | os.X_OK):
            return [Check(FAIL, name, f"cannot create {p}: {parent} is not writable by this "
                          f"user", f"{_sudo()}install -d -m 700 -o {_user()} {p}, or {other}",
                          exitcodes.STATE)]
        return [Check(OK, name, f"{p} does not exist yet; up creates it (0700)")]
    if not p.is_dir():
        return [Check(FAIL, name, f"{p} is not a directory", f"move it away, or {other}",
                      exitcodes.STATE)]
    try:
        probe = tempfile.NamedTemporaryFile(dir=p, prefix=".doctor-", delete=True)  # noqa: SIM115
        probe.close()
    except OSError as exc:
        return [Check(FAIL, name, f"{p} is not writable ({exc.strerror or exc})",
                      f"{_sudo()}chown -R {_user()} {p}, or {other}", exitcodes.STATE)]
    out: list[Check] = []
    st = p.stat()
    mode = st.st_mode & 0o777
    if st.st_uid != os.geteuid():
        out.append(Check(WARN, name, f"{p} belongs to uid {st.st_uid}, not to this user "
                         f"(uid {os.geteuid()}); tor refuses a data directory it does not own",
                         f"{_sudo()}chown -R {_user()} {p}"))
    if mode & 0o077:
        out.append(Check(WARN, name, f"{p} is mode {mode:04o}, open to other users (up tightens "
                         f"it to 0700)", f"chmod 700 {p}"))
    for f, st_f in _state_files(p):
        secret = _is_secret(p, f)
        if st_f.st_mode & 0o077 and secret is not None:
            # up refuses (read_private) a secret others can read; a key coturn reads is a warning
            out.append(Check(FAIL if secret else WARN, name,
                             f"{f} is readable by other users (mode "
                             f"{st_f.st_mode & 0o777:04o})"
                             + (": up refuses to use it" if secret else ""),
                             f"chmod 600 {f}", exitcodes.STATE if secret else exitcodes.OK))
        if not os.access(f, os.R_OK):
            out.append(Check(FAIL if secret is not None else WARN, name, f"cannot read {f}",
                             f"{_sudo()}chown -R {_user()} {p}",
                             exitcodes.STATE if secret is not None else exitcodes.OK))
    if not out:
        out.append(Check(OK, name, f"{p} (0700, secrets 0600)"))
    return out


#: files up reads through state.read_private, which refuses them when others can read them
READ_PRIVATE = ("turn-secret", "onion_key", "room-tickets.key", "room-link")
#: other secrets: coturn reads the key itself
OTHER_SECRETS = ("turn-tls.key",)


def _is_secret(root: Path, f: Path) -> bool | None:
    """True: up refuses it when others can read it; False: a secret nothing refuses; None: not
    a secret (coturn's pid file and user db, tor's files)."""
    rel = f.relative_to(root).as_posix()
    if rel in READ_PRIVATE or (rel.startswith("client_keys/") and rel.endswith(".auth")):
        return True
    if rel in OTHER_SECRETS:
        return False
    return None


def _state_files(root: Path) -> list[tuple[Path, os.stat_result]]:
    """Regular files in the state dir, outside tor's data directory."""
    out: list[tuple[Path, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and TOR_DATA in dirnames:
            dirnames.remove(TOR_DATA)
        for fn in filenames:
            f = Path(dirpath) / fn
            try:
                st = f.lstat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((f, st))
    return sorted(out)


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


# --- the web server ------------------------------------------------------------------------------

def check_web_files(static_dir: Path) -> Check:
    """The browser client's files are where the server looks for them."""
    missing = [n for n in ("index.html", "room.html") if not (static_dir / n).is_file()]
    if missing:
        return Check(FAIL, "web client", f"{static_dir} lacks {', '.join(missing)}: the pages "
                     f"would be 404", "install from a checkout of the repository with "
                     "scripts/bootstrap-venv (an editable install keeps static/ beside the "
                     "package)", exitcodes.ERROR)
    return Check(OK, "web client", f"{static_dir}")


@dataclass(frozen=True)
class Listener:
    """One TCP port ``up`` will listen on."""

    name: str  # check name, e.g. "web port"
    key: str  # the setting, e.g. "server.port"
    host: str
    port: int
    how: str  # how to change it, e.g. "--port or server.port"
    code: int


def _wild(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")  # noqa: S104 - comparing, not binding


def overlaps(a: Listener, b: Listener) -> bool:
    """Would the two listeners collide (same port, same or wildcard address)?"""
    return a.port == b.port and (a.host == b.host or _wild(a.host) or _wild(b.host))


def bind_error(host: str, port: int) -> OSError | None:
    """Try to bind a TCP socket as the server would (SO_REUSEADDR); None if it works."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {exc.strerror}")
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(addr)
            except OSError as exc:
                return exc
    return None


def check_listeners(listeners: Sequence[Listener],
                    bind: Callable[[str, int], OSError | None] = bind_error) -> list[Check]:
    out: list[Check] = []
    for i, lst in enumerate(listeners):
        clash = next((o for o in listeners[:i] if overlaps(o, lst)), None)
        where = f"{lst.host}:{lst.port}"
        if clash is not None:
            out.append(Check(FAIL, lst.name, f"{lst.key} {where} is the same port as "
                             f"{clash.key}", f"give {lst.key} another port ({lst.how})",
                             lst.code))
            continue
        exc = bind(lst.host, lst.port)
        if exc is None:
            out.append(Check(OK, lst.name, f"{where} is free"))
        elif exc.errno == errno.EADDRINUSE:
            out.append(Check(FAIL, lst.name, f"{where} is already in use by another program "
                             f"(ss -ltnp 'sport = :{lst.port}' shows which)",
                             f"stop that program or pick another port with {lst.how}",
                             lst.code))
        elif exc.errno == errno.EACCES:
            out.append(Check(FAIL, lst.name, f"not allowed to listen on port {lst.port} "
                             f"as this user", f"use a port above 1023 ({lst.how}), or grant "
                             f"CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities="
                             f"CAP_NET_BIND_SERVICE)", lst.code))
        elif exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL, errno.EAFNOSUPPORT):
            out.append(Check(FAIL, lst.name, f"{lst.host} is not an address of this machine "
                             f"({exc.strerror or exc})",
                             f"set {lst.key.rsplit('.', 1)[0]} address to one this machine "
                             f"has, e.g. 127.0.0.1", lst.code))
        else:
            out.append(Check(FAIL, lst.name, f"cannot listen on {where}: "
                             f"{exc.strerror or exc}", f"pick another port with {lst.how}",
                             lst.code))
    return out


def web_listener(cfg: Config) -> Listener:
    return Listener("web port", "server.port", cfg.server.host, int(cfg.server.port),
                    "--port or server.port", exitcodes.BIND)


def check_web_exposure(cfg: Config) -> Check | None:
    """With tor on, a web server on a public address is reachable without tor too."""
    if not cfg.tor.enabled:
        return None
    host = cfg.server.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return Check(WARN, "web exposure", f"server.host is {host}: the server is reachable "
                 f"without tor as well as through the onion",
                 "set server.host to 127.0.0.1 unless you mean to serve clearnet too")


# --- TURN (coturn) -------------------------------------------------------------------------------

def parse_coturn_version(text: str) -> str | None:
    """``turnserver --version`` prints e.g. ``4.6.1``."""
    m = re.search(r"\b(\d+\.\d+\.\d+)\b", text or "")
    return m.group(1) if m else None


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str] | OSError:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return OSError(errno.ETIMEDOUT, f"no answer within {TIMEOUT:g}s")
    except OSError as exc:
        return exc


def check_coturn(cfg: Config) -> list[Check]:
    """coturn is installed (looked up as the supervisor does) and answers ``--version``."""
    t = cfg.turn
    if not t.enabled:
        return [Check(SKIP, "coturn", "TURN is off (--no-turn or turn.enabled: false)")]
    out: list[Check] = []
    name = str(t.binary)
    found = shutil.which(name)  # as the supervisor looks it up
    if found is None:
        out.append(Check(FAIL, "coturn", f"{name!r} is not installed (not on PATH)",
                         f"{_apt('coturn')}, or set turn.binary to its path, or turn TURN off "
                         f"(--no-turn or turn.enabled: false)", exitcodes.TURN))
    else:
        res = _run([found, "--version"])
        version = None if isinstance(res, OSError) else parse_coturn_version(res.stdout)
        if isinstance(res, OSError):
            out.append(Check(FAIL, "coturn", f"cannot run {found}: {res.strerror or res}",
                             f"reinstall it ({_apt('--reinstall coturn')}) or fix turn.binary",
                             exitcodes.TURN))
        elif version is None:
            out.append(Check(WARN, "coturn", f"{found} did not report a version (is it coturn?)",
                             "point turn.binary at coturn's turnserver"))
        else:
            out.append(Check(OK, "coturn", f"coturn {version} ({found})"))
    return out


def turn_listeners(cfg: Config) -> list[Listener]:
    t = cfg.turn
    if not t.enabled:
        return []
    out = [Listener("TURN port", "turn.port", t.listen_ip, int(t.port), "turn.port",
                    exitcodes.TURN)]
    if t.tls_port:
        out.append(Listener("TURN TLS port", "turn.tls_port", t.listen_ip, int(t.tls_port),
                            "turn.tls_port", exitcodes.TURN))
    return out


def check_turn_extras(cfg: Config) -> list[Check]:
    """The relay address exists; the TLS certificate is usable."""
    t = cfg.turn
    out: list[Check] = []
    family = socket.AF_INET6 if ":" in t.relay_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((t.relay_ip, 0))
            out.append(Check(OK, "TURN relay address", f"{t.relay_ip}"))
        except OSError as exc:
            out.append(Check(FAIL, "TURN relay address", f"turn.relay_ip {t.relay_ip} is not "
                             f"an address of this machine ({exc.strerror or exc})",
                             "set turn.relay_ip to an address this machine has (127.0.0.2 "
                             "works on Linux)", exitcodes.TURN))
    if t.tls_port:
        if t.tls_cert:
            out.append(check_pem(Path(t.tls_cert).expanduser(), Path(t.tls_key).expanduser()))
        else:
            out.append(Check(WARN, "TURN TLS certificate", "none set: up generates a "
                             "self-signed one, which browsers refuse for turns: URLs",
                             "set turn.tls_cert and turn.tls_key to a certificate for the TURN "
                             "host name (e.g. from Let's Encrypt)"))
    return out


def check_pem(cert: Path, key: Path) -> Check:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    name = "TURN TLS certificate"
    try:
        x509.load_pem_x509_certificates(cert.read_bytes())
    except OSError as exc:
        return Check(FAIL, name, f"cannot read turn.tls_cert {cert}: {exc.strerror}",
                     "fix the path or let this user read it", exitcodes.TURN)
    except ValueError:
        return Check(FAIL, name, f"turn.tls_cert {cert} is not a PEM certificate",
                     "point turn.tls_cert at the PEM certificate (fullchain)", exitcodes.TURN)
    try:
        load_pem_private_key(key.read_bytes(), password=None)
    except OSError as exc:
        return Check(FAIL, name, f"cannot read turn.tls_key {key}: {exc.strerror}",
                     "fix the path or let this user read it", exitcodes.TURN)
    except (ValueError, TypeError):
        return Check(FAIL, name, f"turn.tls_key {key} is not an unencrypted PEM private key",
                     "point turn.tls_key at the PEM key without a passphrase", exitcodes.TURN)
    return Check(OK, name, f"{cert}")


# --- tor -----------------------------------------------------------------------------------------

def tor_fix(kind: str, cfg: Config) -> str:
    """The fix for a :class:`~incognito_onion.tor.errors.TorError`, by its class name."""
    if kind == "TorBinaryMissing":
        return f"{_apt('tor')}, or set tor.binary to its path, or run with --no-tor"
    if kind == "TorTooOld":
        return ("install tor 0.4.6.1 or newer (Debian: bookworm-backports or "
                "deb.torproject.org)")
    if kind == "TorControlRefused":
        return (f"start tor with ControlPort/ControlSocket {cfg.tor.control}, correct "
                f"tor.control (--tor-control), or leave it empty to launch our own tor")
    if kind == "TorWrongPassword":
        return "set tor.control_password (--tor-password) to tor's control password"
    if kind == "TorCookieUnreadable":
        return (f"{_sudo()}adduser {_user()} debian-tor and log in again (systemd: "
                f"SupplementaryGroups=debian-tor), or use a control password")
    if kind == "TorNoClientKeys":
        return "incognito-onion keys add NAME (one per participant), or set tor.client_auth: false"
    if kind == "TorAuthFailed":
        return "check tor's CookieAuthentication / HashedControlPassword settings"
    return "see the message; run with --no-tor to serve without tor"


def _with_deadline(fn: Callable[[], T], timeout: float, on_timeout: Callable[[], None]) -> T:
    """Run a blocking call in a thread; on the deadline call ``on_timeout`` (which must unblock
    it, e.g. close a socket) and raise TimeoutError."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        on_timeout()
        th.join(2)
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_tor(cfg: Config, state_dir: Path) -> list[Check]:
    tc = cfg.tor
    if not tc.enabled:
        return [Check(SKIP, "tor", "publishing through tor is off (--no-tor or "
                      "tor.enabled: false)")]
    try:
        from .tor import attach, client_keys, errors, launch
        from .tor.errors import TorError
        from .tor.publish import probe_features
    except ImportError:
        return [Check(FAIL, "tor", "this build cannot publish through tor",
                      "run with --no-tor to serve on this machine only", exitcodes.TOR)]
    import stem.version

    out: list[Check] = []
    pow_module: bool | None = None
    version: stem.version.Version | None = None
    if not tc.control:
        try:
            path = launch.find_binary(tc.binary)
            version = stem.version.Version(launch.binary_version(path))
        except TorError as exc:
            return [Check(FAIL, "tor", _tor_binary_detail(tc.binary, exc),
                          _tor_binary_fix(tc.binary, exc, cfg), exc.exit_code)]
        pow_module = launch.has_module(path, "pow")
        out.append(Check(OK, "tor", f"tor {version} ({path}); client authorization supported"))
    else:
        check, version = _check_control(cfg, attach, errors)
        out.append(check)
        if version is None:
            return out
    if tc.pow_defense:
        feats = probe_features(version, pow_module)
        if feats.pow:
            out.append(Check(OK, "tor PoW defence", "supported (tor --list-modules: pow: yes)"
                             if pow_module else "supported by this tor version"))
        else:
            out.append(Check(WARN, "tor PoW defence", f"{feats.pow_reason}: the onion runs "
                             f"without the proof-of-work DoS defence",
                             "install tor 0.4.9.2 or newer (deb.torproject.org), or set "
                             "tor.pow_defense: false to silence this"))
    else:
        out.append(Check(SKIP, "tor PoW defence", "off (tor.pow_defense: false)"))
    if tc.client_auth:
        try:
            keys = client_keys.list_keys(state_dir)
        except Exception as exc:  # ClientKeyError or StateDirError: a damaged key file
            out.append(Check(FAIL, "tor client auth", str(exc),
                             "remove that file (incognito-onion keys remove NAME) and add the "
                             "key again", errors.TorNoClientKeys.exit_code))
        else:
            if keys:
                out.append(Check(OK, "tor client auth", f"{len(keys)} participant key"
                                 f"{'s' if len(keys) != 1 else ''}"))
            else:
                out.append(Check(FAIL, "tor client auth", "tor.client_auth is on but there is "
                                 "no participant key yet, so nobody could reach the onion",
                                 tor_fix("TorNoClientKeys", cfg),
                                 errors.TorNoClientKeys.exit_code))
    if tc.persistent_key:
        out.append(_check_onion_key(state_dir, errors.TorPublishFailed.exit_code))
    return out


def _tor_binary_detail(binary: str, exc: Exception) -> str:
    """A missing tor said plainly (the fix goes in the fix part of the line)."""
    if type(exc).__name__ != "TorBinaryMissing" or "cannot run" in str(exc):
        return str(exc)
    name = binary or "tor"
    if os.sep in name:
        return f"tor.binary {name} does not exist or is not executable"
    return f"tor is not installed ({name!r} is not on PATH)"


def _tor_binary_fix(binary: str, exc: Exception, cfg: Config) -> str:
    """Debian puts tor in /usr/sbin, which a normal user's PATH lacks: say so when it is there."""
    name = binary or "tor"
    if type(exc).__name__ == "TorBinaryMissing" and os.sep not in name:
        found = shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
        if found:
            return (f"set tor.binary: {found} (or INCOGNITO_TOR_BINARY={found}), or add "
                    f"{os.path.dirname(found)} to PATH")
    return tor_fix(type(exc).__name__, cfg)


def _check_onion_key(state_dir: Path, bad_key_code: int) -> Check:
    from .state import StateDirError
    from .tor.onion_key import OnionKeyError, key_path, load_key

    try:
        key = load_key(state_dir)
    except StateDirError as exc:  # others can read it
        return Check(FAIL, "onion key", str(exc), f"chmod 600 {key_path(state_dir)}",
                     exitcodes.STATE)
    except OnionKeyError as exc:
        return Check(FAIL, "onion key", str(exc), f"move {key_path(state_dir)} away (the onion "
                     f"address changes)", bad_key_code)
    except OSError as exc:
        return Check(FAIL, "onion key", f"cannot read {key_path(state_dir)}: "
                     f"{exc.strerror or exc}", f"{_sudo()}chown {_user()} "
                     f"{key_path(state_dir)}", exitcodes.STATE)
    if key is None:
        return Check(OK, "onion key", "none yet: the first run makes one and keeps it")
    return Check(OK, "onion key", f"kept: {key.address}")


def _check_control(cfg: Config, attach: Any, errors: Any) -> tuple[Check, Any]:
    """Connect and authenticate to the tor named by tor.control, as ``up`` would."""
    tc = cfg.tor
    name = "tor control"
    try:
        addr = attach.parse_control(tc.control)
    except ValueError as exc:
        return Check(FAIL, name, str(exc), "set tor.control to HOST:PORT or a socket path",
                     errors.TorControlRefused.exit_code), None
    try:
        controller = attach.connect(addr, tc.control_password or None, timeout=TIMEOUT)
    except errors.TorError as exc:
        return Check(FAIL, name, str(exc), tor_fix(type(exc).__name__, cfg),
                     exc.exit_code), None
    try:
        version, phase = _with_deadline(
            lambda: (controller.get_version(), controller.get_info("status/bootstrap-phase")),
            TIMEOUT, controller.close)
    except TimeoutError:
        return Check(FAIL, name, f"tor at {addr} did not answer GETINFO within {TIMEOUT:g}s",
                     "restart that tor", errors.TorDied.exit_code), None
    except Exception as exc:  # stem's ControllerError / SocketClosed
        return Check(FAIL, name, f"tor at {addr} failed a GETINFO: {exc}", "restart that tor",
                     errors.TorDied.exit_code), None
    finally:
        controller.close()
    from .tor.control import MIN_VERSION, parse_bootstrap_phase

    if version < MIN_VERSION:
        return Check(FAIL, name, f"tor at {addr} is tor {version}, older than {MIN_VERSION}",
                     tor_fix("TorTooOld", cfg), errors.TorTooOld.exit_code), None
    progress = parse_bootstrap_phase(phase)
    if progress.percent < 100:
        return Check(WARN, name, f"tor {version} at {addr}, authenticated; bootstrap at "
                     f"{progress.describe()}", "let tor finish bootstrapping (check its network "
                     "and log); up waits tor.bootstrap_timeout seconds"), version
    return Check(OK, name, f"tor {version} at {addr}, authenticated, bootstrapped"), version


# --- all together --------------------------------------------------------------------------------

def run_checks(cfg: Config, state_dir: Path, static_dir: Path | None = None) -> list[Check]:
    """Every check after the config's, in the order ``up`` meets the parts."""
    if static_dir is None:
        from .web import STATIC_DIR

        static_dir = STATIC_DIR
    checks = list(check_state_dir(state_dir))
    checks.append(check_web_files(static_dir))
    port_checks = check_listeners([web_listener(cfg), *turn_listeners(cfg)])
    checks.append(port_checks[0])
    exposure = check_web_exposure(cfg)
    if exposure is not None:
        checks.append(exposure)
    checks += check_coturn(cfg) + port_checks[1:]
    if cfg.turn.enabled:
        checks += check_turn_extras(cfg)
    checks += check_tor(cfg, state_dir)
    return checks


def exit_code(checks: Iterable[Check]) -> int:
    """0 when nothing failed; else the code of the first failure."""
    for c in checks:
        if c.status == FAIL:
            return c.code or exitcodes.ERROR
    return exitcodes.OK


def report(checks: Sequence[Check], out: TextIO | None = None) -> int:
    """Print one line per check and a verdict; return the exit code."""
    out = out or sys.stdout
    try:
        _print_report(checks, out)
    except BrokenPipeError:  # e.g. `doctor | head`: the reader left; still exit with the code
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    return exit_code(checks)


def _print_report(checks: Sequence[Check], out: TextIO) -> None:
    for c in checks:
        print(c.line(), file=out)
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    if fails:
        verdict = (f"{fails} problem{'s' if fails != 1 else ''} to fix before "
                   f"`incognito-onion up` can work")
    elif warns:
        verdict = (f"`incognito-onion up` should work ({warns} warning"
                   f"{'s' if warns != 1 else ''})")
    else:
        verdict = "`incognito-onion up` should work"
    print(f"doctor: {verdict}", file=out, flush=True)


# --- command line --------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    """The whole doctor from parsed arguments: loads the config itself, so a bad config is
    reported as a check (with ``up``'s messages) rather than stopping the command."""
    from .cli import _overrides

    try:
        try:
            cfg = load(args.config, overrides=_overrides(args))
        except ConfigError as exc:
            return report(config_checks(exc.problems) + [
                Check(SKIP, "other checks", "the config must be valid first")])
        state_dir = Path(cfg.state_dir) if cfg.state_dir else default_state_dir()
        return report([config_ok(cfg), *run_checks(cfg, state_dir)])
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED


def handler(args: argparse.Namespace, cfg: Config, state_dir: Path) -> int:
    """Entry through the CLI after it loaded the config and made the state dir."""
    return report([config_ok(cfg), *run_checks(cfg, state_dir)])


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from .cli import _common

    p = subparsers.add_parser(
        "doctor", help="check that `up` would work (tor, coturn, config, ports, state dir)",
        description="Check everything `incognito-onion up` needs without starting anything: "
                    "one line per check (ok, warn, fail, skip) with the fix for each problem. "
                    "Takes the same flags as `up`. Exits 0 only if `up` would work.")
    _common(p, top=False)
    p.add_argument("--no-tor", action="store_true", help="skip the tor checks (as up --no-tor)")
    p.add_argument("--no-turn", action="store_true",
                   help="skip the coturn checks (as up --no-turn)")
    p.add_argument("--host", metavar="H", help="address the web server would bind to")
    p.add_argument("--port", metavar="P", help="web server port")
    p.add_argument("--tor-control", metavar="HOST:PORT|SOCKET",
                   help="check attaching to this running tor (tor.control)")
    p.add_argument("--tor-password", metavar="PW", help="its control password")
    # handler: called by the CLI with the loaded config; before_config: a CLI that supports it
    # calls it before loading the config, so a bad config is one of the doctor's checks.
    p.set_defaults(handler=handler, before_config=run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m incognito_onion.doctor [flags]``: the doctor on its own."""
    from .cli import build_parser

    args = build_parser().parse_args(["doctor", *(sys.argv[1:] if argv is None else argv)])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
