"""TURN REST credentials (coturn ``use-auth-secret``), pure functions.

A credential is ``username = "<expiry unix time>:<peer id>"`` and
``credential = base64(HMAC-SHA1(secret, username))``; coturn recomputes the HMAC from its
``static-auth-secret`` and refuses a username whose expiry has passed. Nothing is stored on the
server: a credential is valid until it expires, which is why the TTL is short and the signaling
server hands out fresh ones before the old run out (``ice`` event).

``ice_servers(secret, peer_id, ttl, urls, now)`` gives the ``RTCConfiguration.iceServers`` list
a browser should use; ``turn_urls(host, port, tls_port, extra)`` builds the URL list.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import time
from dataclasses import dataclass
from typing import Any

_PEER_RE = re.compile(r"^[A-Za-z0-9_.@+=-]{1,128}$")


@dataclass(frozen=True)
class Credential:
    """One TURN REST credential."""

    username: str
    password: str
    expires: int  # unix time


def make_username(peer_id: str, expires: int) -> str:
    """``"<expires>:<peer_id>"``; the peer id must not contain ``:`` (coturn's separator)."""
    if not _PEER_RE.match(peer_id):
        raise ValueError("TURN peer id must be 1-128 characters of [A-Za-z0-9_.@+=-]")
    return f"{int(expires)}:{peer_id}"


def make_password(secret: str | bytes, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)), as coturn computes it."""
    key = secret.encode() if isinstance(secret, str) else secret
    return base64.b64encode(hmac.new(key, username.encode(), hashlib.sha1).digest()).decode()


def issue(secret: str | bytes, peer_id: str, ttl: int, now: float | None = None) -> Credential:
    """A credential for ``peer_id`` valid for ``ttl`` seconds from ``now`` (default: the clock)."""
    if ttl <= 0:
        raise ValueError("TURN credential ttl must be positive")
    now = time.time() if now is None else now
    expires = int(now) + int(ttl)
    username = make_username(peer_id, expires)
    return Credential(username, make_password(secret, username), expires)


def expiry_of(username: str) -> int | None:
    """The expiry encoded in a REST username, or None if it has none."""
    head, sep, _ = username.partition(":")
    if not sep or not head.isdigit():
        return None
    return int(head)


def is_valid(secret: str | bytes, username: str, password: str,
             now: float | None = None) -> bool:
    """What coturn checks: the HMAC matches and the expiry is not in the past."""
    expires = expiry_of(username)
    if expires is None:
        return False
    now = time.time() if now is None else now
    if expires < now:
        return False
    return hmac.compare_digest(make_password(secret, username), password)


def _host(host: str) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def host_only(host: str) -> str:
    """The host part of a Host header value: ``abc.onion:80`` -> ``abc.onion``,
    ``[::1]:8080`` -> ``::1``, ``127.0.0.1`` -> ``127.0.0.1``."""
    host = host.strip()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def turn_urls(host: str, port: int, tls_port: int = 0, extra: list[str] | tuple[str, ...] = (),
              ) -> list[str]:
    """The URLs for this server: ``turn:HOST:PORT?transport=tcp``, then
    ``turns:HOST:TLS_PORT?transport=tcp`` when TLS is on, then ``extra`` (e.g.
    ``turn.public_urls``), without duplicates."""
    urls = [f"turn:{_host(host)}:{int(port)}?transport=tcp"]
    if tls_port:
        urls.append(f"turns:{_host(host)}:{int(tls_port)}?transport=tcp")
    for u in extra:
        if u not in urls:
            urls.append(u)
    return urls


def ice_servers(secret: str | bytes, peer_id: str, ttl: int, urls: list[str] | tuple[str, ...],
                now: float | None = None) -> list[dict[str, Any]]:
    """The ``RTCConfiguration.iceServers`` list for one peer: one entry holding every URL with a
    fresh credential (``[]`` when there are no URLs)."""
    if not urls:
        return []
    cred = issue(secret, peer_id, ttl, now)
    return [{"urls": list(urls), "username": cred.username, "credential": cred.password}]
