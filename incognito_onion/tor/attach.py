"""Connect to a tor that is already running (the system tor, Tor Browser's) through its control
port (``HOST:PORT``) or control socket (``/path/to/socket``), with a password or cookie auth.

Each failure becomes one :class:`TorError` subclass with a message that says what to do: nothing
listening, something that is not tor, wrong or missing password, unreadable cookie, tor too old.
Blocking (stem is thread-based): call :func:`connect` through ``asyncio.to_thread``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import stem
import stem.connection
import stem.control

from .errors import (
    TorAuthFailed,
    TorControlRefused,
    TorCookieUnreadable,
    TorWrongPassword,
)

PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class ControlAddress:
    """Where a control port is: a TCP ``host``/``port``, or a unix socket ``path``."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_socket(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_control(spec: str) -> ControlAddress:
    """``127.0.0.1:9051``, ``localhost:9051``, ``9051``, ``[::1]:9051``, ``/run/tor/control``,
    ``unix:/run/tor/control`` → :class:`ControlAddress`. Raises ValueError with a message."""
    text = spec.strip()
    if text.startswith("unix:"):
        text = text[5:]
        if not text:
            raise ValueError("tor.control: unix: needs a path")
        return ControlAddress(path=str(Path(text).expanduser()))
    if text.startswith(("/", "~", ".")):
        return ControlAddress(path=str(Path(text).expanduser()))
    if text.isdigit():
        host, port_text = "127.0.0.1", text
    elif text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"tor.control: expected HOST:PORT or a socket path, got {spec!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"tor.control: bad port in {spec!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"tor.control: port must be 1-65535 in {spec!r}")
    if not host:
        raise ValueError(f"tor.control: missing host in {spec!r}")
    return ControlAddress(host=host, port=port)


def _resolve_ipv4(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            raise TorControlRefused(f"cannot resolve tor's control host {host!r}") from None
        return infos[0][4][0]
    if ip.version != 4:
        raise TorControlRefused("tor's control port must be on an IPv4 address or a unix "
                                "socket (stem 1.8 does not speak IPv6 control ports)")
    return str(ip)


def probe(addr: ControlAddress, timeout: float = PROBE_TIMEOUT) -> None:
    """Check that tor's control protocol answers at ``addr`` (PROTOCOLINFO), with a timeout,
    before handing it to stem (whose sockets have none)."""
    try:
        if addr.is_socket:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(addr.path)
            except BaseException:
                s.close()
                raise
        else:
            s = socket.create_connection((_resolve_ipv4(addr.host), addr.port), timeout=timeout)
    except FileNotFoundError:
        raise TorControlRefused(
            f"no tor control socket at {addr}: is tor running with ControlSocket {addr}?"
        ) from None
    except PermissionError:
        raise TorControlRefused(
            f"permission denied on tor's control socket {addr}: add your user to the group "
            f"that owns it (Debian: sudo adduser $USER debian-tor, then log in again)"
        ) from None
    except ConnectionRefusedError:
        raise TorControlRefused(
            f"connection refused at {addr}: is tor running with ControlPort {addr}? "
            f"(or leave tor.control empty to launch our own tor)") from None
    except TimeoutError:
        raise TorControlRefused(f"tor's control port {addr} did not accept a connection within "
                                f"{timeout:g}s") from None
    except OSError as exc:
        raise TorControlRefused(f"cannot connect to tor's control port {addr}: "
                                f"{exc.strerror or exc}") from None
    with s:
        try:
            s.sendall(b"PROTOCOLINFO 1\r\n")
            data = b""
            while not data.endswith(b"250 OK\r\n") and len(data) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
                if not b"250-PROTOCOLINFO".startswith(data[:16]):
                    break  # not tor: no need to wait for more
        except TimeoutError:
            raise TorControlRefused(f"{addr} accepted a connection but did not answer tor's "
                                    f"control protocol within {timeout:g}s: is it tor's "
                                    f"control port?") from None
        except OSError as exc:
            raise TorControlRefused(f"{addr} closed the connection ({exc.strerror or exc}): "
                                    f"is it tor's control port?") from None
    if not data.startswith(b"250-PROTOCOLINFO"):
        raise TorControlRefused(f"{addr} does not speak tor's control protocol: is it tor's "
                                f"ControlPort (not its SocksPort)?")


def connect(spec: str | ControlAddress, password: str | None = None,
            timeout: float = PROBE_TIMEOUT) -> stem.control.Controller:
    """Connect and authenticate (NULL, SAFECOOKIE, COOKIE or PASSWORD, whatever tor offers).
    Blocking. Raises a :class:`TorError` subclass; never returns an unauthenticated one."""
    addr = parse_control(spec) if isinstance(spec, str) else spec
    probe(addr, timeout)
    try:
        if addr.is_socket:
            controller = stem.control.Controller.from_socket_file(addr.path)
        else:
            controller = stem.control.Controller.from_port(_resolve_ipv4(addr.host), addr.port)
    except stem.SocketError as exc:
        raise TorControlRefused(f"cannot connect to tor's control port {addr}: {exc}") from None
    try:
        authenticate(controller, addr, password)
    except BaseException:
        controller.close()
        raise
    return controller


def authenticate(controller: stem.control.Controller, addr: ControlAddress | str,
                 password: str | None) -> None:
    try:
        controller.authenticate(password=password or None)
    except stem.connection.MissingPassword:
        raise TorWrongPassword(f"tor's control port {addr} needs a password: set "
                               f"tor.control_password (or --tor-password)") from None
    except (stem.connection.IncorrectPassword, stem.connection.PasswordAuthFailed):
        raise TorWrongPassword(f"tor's control port {addr} refused the password: check "
                               f"tor.control_password (or --tor-password)") from None
    except (stem.connection.UnreadableCookieFile, stem.connection.NoAuthCookie) as exc:
        path = getattr(exc, "cookie_path", "") or "(unknown path)"
        why = "it does not exist" if not os.path.exists(path) else "permission denied"
        raise TorCookieUnreadable(
            f"cannot read tor's auth cookie {path} ({why}): add your user to the group that "
            f"can read it (Debian: sudo adduser $USER debian-tor, then log in again) or use "
            f"a control password") from None
    except (stem.connection.IncorrectCookieValue, stem.connection.CookieAuthFailed,
            stem.connection.IncorrectCookieSize):
        raise TorCookieUnreadable(f"tor at {addr} rejected its own auth cookie: the cookie "
                                  f"file belongs to another tor; restart tor") from None
    except stem.connection.AuthenticationFailure as exc:
        raise TorAuthFailed(f"tor's control port {addr} refused authentication: {exc}") from None
    except (stem.SocketClosed, stem.SocketError, stem.ProtocolError) as exc:
        raise TorControlRefused(f"tor's control port {addr} closed the connection during "
                                f"authentication: {exc}") from None
