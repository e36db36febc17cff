"""coturn's config file, rendered from the :class:`~incognito_onion.config.Config`. Pure.

What it always says (see ../shared/notes/coturn.md):

- TURN over TCP only for the client leg: ``no-udp`` (no UDP listener), ``no-dtls``, and
  ``no-tls`` unless ``turn.tls_port`` is set; relayed media go over UDP between allocations, so
  ``no-tcp-relay`` and **never** ``no-udp-relay`` (browsers only ask for UDP allocations).
- REST credentials: ``use-auth-secret`` + ``static-auth-secret``, ``realm``.
- Hardening: ``no-cli``, ``no-multicast-peers``, ``fingerprint``, ``no-software-attribute``,
  ``stale-nonce``, ``no-rfc5780``, ``no-stun-backward-compatibility``, quotas, ``max-bps``.
- Peer rules against SSRF (:func:`peer_rules`): every private, loopback, link-local, CGNAT, ULA,
  multicast and otherwise special range is denied; ``allowed-peer-ip`` is the relay's own
  address only, which is how two allocations on this server reach each other. When the relay
  address is itself private or loopback nothing outside can be a peer anyway, so *every* other
  address is denied: the relay can then only talk to itself.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Special-purpose ranges a relay must never send to (RFC 6890 and friends). IPv4-mapped,
# NAT64 and 6to4 IPv6 ranges are here because they can embed any IPv4 address.
DENIED_V4: tuple[tuple[str, str], ...] = (
    ("0.0.0.0", "0.255.255.255"),  # noqa: S104 - "this network"; 0.0.0.0 reaches the local host
    ("10.0.0.0", "10.255.255.255"),
    ("100.64.0.0", "100.127.255.255"),  # CGNAT
    ("127.0.0.0", "127.255.255.255"),
    ("169.254.0.0", "169.254.255.255"),
    ("172.16.0.0", "172.31.255.255"),
    ("192.0.0.0", "192.0.0.255"),
    ("192.0.2.0", "192.0.2.255"),
    ("192.88.99.0", "192.88.99.255"),
    ("192.168.0.0", "192.168.255.255"),
    ("198.18.0.0", "198.19.255.255"),
    ("198.51.100.0", "198.51.100.255"),
    ("203.0.113.0", "203.0.113.255"),
    ("224.0.0.0", "255.255.255.255"),  # multicast, reserved, broadcast
)
DENIED_V6: tuple[tuple[str, str], ...] = (
    # coturn matches a range whose low end is :: (or 0.0.0.0) against addresses of *both*
    # families, so no IPv6 range here starts at :: (that would deny every IPv4 peer); :: itself
    # is refused by coturn anyway.
    ("::1", "::ffff:ffff"),  # loopback, IPv4-compatible
    ("::ffff:0:0", "::ffff:ffff:ffff"),  # IPv4-mapped
    ("64:ff9b::", "64:ff9b::ffff:ffff"),  # NAT64
    ("64:ff9b:1::", "64:ff9b:1:ffff:ffff:ffff:ffff:ffff"),
    ("100::", "100::ffff:ffff:ffff:ffff"),  # discard
    ("2001::", "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff"),  # TEREDO, benchmarking, ORCHID
    ("2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
    ("2002::", "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),  # 6to4
    ("fc00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),  # ULA
    ("fe80::", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),  # link-local
    ("fec0::", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),  # site-local
    ("ff00::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),  # multicast
)
ALL_V4 = ("0.0.0.0", "255.255.255.255")  # noqa: S104
ALL_V6 = ("::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")


class RenderError(ValueError):
    """The config cannot be turned into a safe coturn config; the message says which key."""


@dataclass(frozen=True)
class Paths:
    """Files coturn is pointed at (all in the state dir)."""

    pidfile: Path
    userdb: Path
    tls_cert: Path | None = None
    tls_key: Path | None = None


def is_public(ip: str) -> bool:
    """True when ``ip`` is outside every range in :data:`DENIED_V4`/:data:`DENIED_V6`."""
    addr = ipaddress.ip_address(ip)
    if addr.is_unspecified:
        return False
    ranges = DENIED_V4 if addr.version == 4 else DENIED_V6
    return not any(ipaddress.ip_address(a) <= addr <= ipaddress.ip_address(b) for a, b in ranges)


def peer_rules(relay_ip: str) -> list[str]:
    """``allowed-peer-ip``/``denied-peer-ip`` lines (and ``allow-loopback-peers`` when the relay
    itself is on loopback: coturn refuses loopback peers before it looks at the allow list)."""
    addr = ipaddress.ip_address(relay_ip)
    if addr.is_unspecified:
        raise RenderError("turn.relay_ip: must be one address, not 0.0.0.0 or ::")
    lines: list[str] = []
    if addr.is_loopback:
        lines.append("allow-loopback-peers")
    lines.append(f"allowed-peer-ip={addr}")
    lines += [f"denied-peer-ip={a}-{b}" for a, b in DENIED_V4 + DENIED_V6]
    if not is_public(relay_ip):
        # A relay on a private or loopback address can only usefully reach allocations on this
        # server: deny everything else too (public addresses included).
        lines += [f"denied-peer-ip={a}-{b}" for a, b in (ALL_V4, ALL_V6)]
    return lines


def _one_line(key: str, value: str) -> str:
    if any(c in value for c in "\r\n\x00") or value != value.strip():
        raise RenderError(f"{key}: must be one line without surrounding spaces")
    return value


def render(cfg: Any, secret: str, paths: Paths, *, verbose: bool = False) -> str:
    """coturn's config file text for ``cfg.turn``. ``secret`` is the static auth secret.
    ``verbose`` adds coturn's per-session lines (they carry peer addresses: debugging only)."""
    t = cfg.turn
    tls = bool(t.tls_port)
    if tls and (paths.tls_cert is None or paths.tls_key is None):
        raise RenderError("turn.tls_port is set but there is no certificate and key to use")
    if not secret or any(c.isspace() for c in secret):
        raise RenderError("TURN secret must be non-empty without spaces")
    try:
        ipaddress.ip_address(t.listen_ip)
    except ValueError:
        raise RenderError(f"turn.listen_ip: must be an IP address, got {t.listen_ip!r}") from None
    if t.min_port > t.max_port:
        raise RenderError("turn.min_port: must not be above turn.max_port")
    lines = [
        "# Written by incognito-onion for this run; edits are overwritten. Holds the TURN secret.",
        f"listening-ip={t.listen_ip}",
        f"listening-port={int(t.port)}",
        f"relay-ip={ipaddress.ip_address(t.relay_ip)}",
        f"min-port={int(t.min_port)}",
        f"max-port={int(t.max_port)}",
        "no-udp",
        "no-dtls",
        "no-tcp-relay",
    ]
    if tls:
        lines += [
            f"tls-listening-port={int(t.tls_port)}",
            f"cert={_one_line('turn.tls_cert', str(paths.tls_cert))}",
            f"pkey={_one_line('turn.tls_key', str(paths.tls_key))}",
            "no-tlsv1",
            "no-tlsv1_1",
        ]
    else:
        lines.append("no-tls")
    lines += [
        "use-auth-secret",
        f"static-auth-secret={secret}",
        f"realm={_one_line('turn.realm', t.realm)}",
        "fingerprint",
        "no-cli",
        "no-multicast-peers",
        "no-software-attribute",
        "no-rfc5780",
        "no-stun-backward-compatibility",
        "stale-nonce=600",
        f"user-quota={int(t.user_quota)}",
        f"total-quota={int(t.total_quota)}",
    ]
    if t.max_bps:
        lines.append(f"max-bps={int(t.max_bps)}")
    lines += peer_rules(t.relay_ip)
    lines += [
        f"pidfile={_one_line('pidfile', str(paths.pidfile))}",
        f"userdb={_one_line('userdb', str(paths.userdb))}",
        "log-file=stdout",
        "simple-log",
    ]
    if verbose:
        lines.append("verbose")
    for line in lines:
        if line.startswith("no-udp-relay"):  # pragma: no cover - guarded by the tests
            raise RenderError("no-udp-relay would break every browser")
    return "\n".join(lines) + "\n"
