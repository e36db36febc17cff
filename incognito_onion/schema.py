"""Every setting of config.yaml: its type, default, bounds and the one-line comment shown to
self-hosters. Pure data plus rendering; loading and validation live in ``config.py``.

The shipped ``config/config.yaml`` is rendered from this table (``incognito-onion config
defaults``) and a test keeps the two identical, so the file can never drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One key of config.yaml."""

    path: str
    kind: str  # "int", "float", "bool", "str", "list", "choice"
    default: Any
    doc: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    secret: bool = False  # never echoed back in messages
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> str:
        """The environment variable that overrides this key (``server.port`` →
        ``INCOGNITO_SERVER_PORT``)."""
        return "INCOGNITO_" + self.path.upper().replace(".", "_")


def _s(path: str, kind: str, default: Any, doc: str, **kw: Any) -> Setting:
    return Setting(path, kind, default, doc, **kw)


SECTION_DOCS: dict[str, str] = {
    "server": "The web and signaling server.",
    "rooms": "Rooms: who can be in one and how long they live.",
    "limits": "Abuse limits per connection and per server.",
    "media": "Media budgets the browsers follow.",
    "turn": "TURN over TCP (coturn), so WebRTC works where only TCP passes.",
    "tor": "The Tor onion service that publishes the server and TURN.",
}

SETTINGS: tuple[Setting, ...] = (
    # server
    _s("server.host", "str", "127.0.0.1",
       "address the web server binds to; keep 127.0.0.1 when publishing through tor"),
    _s("server.port", "int", 8080, "TCP port of the web server", min=1, max=65535),
    _s("server.workers", "int", 1,
       "server processes sharing the port; above 1 they share rooms through a private "
       "redis-server (Debian package redis-server), websocket only",
       min=1, max=64),
    _s("server.redis_binary", "str", "redis-server",
       "the redis-server executable started when server.workers is above 1 (Debian package "
       "redis-server)"),
    _s("server.ping_interval", "float", 4.0,
       "seconds between socket.io pings to each browser", min=1, max=120),
    _s("server.ping_timeout", "float", 6.0,
       "seconds without an answer to a ping before a peer is dropped", min=1, max=120),
    _s("server.log_level", "choice", "info", "how much to log (never addresses, room ids or keys)",
       choices=("debug", "info", "warning", "error")),
    # rooms
    _s("rooms.capacity", "int", 6, "most people in one room", min=2, max=50),
    _s("rooms.max_rooms", "int", 1000, "most rooms this server holds at once", min=1,
       max=1_000_000),
    _s("rooms.per_connection", "int", 2, "most rooms one browser connection can be in at once",
       min=1, max=16),
    _s("rooms.empty_grace_seconds", "float", 20.0,
       "seconds an empty room lingers so a dropped person can come back (0 = dies at once)",
       min=0, max=3600),
    _s("rooms.keep_link", "bool", False,
       "keep the room link `up` prints (its room id and key) in the state dir, so it works "
       "again after a restart (same URL with tor.persistent_key); the room key then sits on "
       "disk: whoever takes the state dir can read that room's traffic if they also recorded "
       "it (false = new link each run, a saved one is deleted)"),
    # limits
    _s("limits.max_payload_bytes", "int", 65536,
       "largest encrypted payload (chat, SDP, ICE) in one event, in bytes", min=256,
       max=4 * 1024 * 1024),
    _s("limits.events_per_second", "float", 50.0, "sustained events per second per connection",
       min=1, max=100_000),
    _s("limits.event_burst", "int", 200, "events a connection may send in a burst above the rate",
       min=1, max=1_000_000),
    _s("limits.failed_joins_per_minute", "int", 10,
       "joins of rooms that do not exist one connection may try per minute (room ids cannot "
       "be guessed)", min=1, max=100_000),
    _s("limits.max_connections", "int", 10000, "most browser connections at once", min=1,
       max=1_000_000),
    _s("limits.connects_per_second", "float", 100.0,
       "new connections accepted per second (bursts of ten seconds' worth); over it a browser "
       "is asked to retry, so connections cannot be churned for fresh join budgets", min=1,
       max=100_000),
    # media
    _s("media.upload_kbps", "int", 2500,
       "total video+audio upload budget per person, split across their links, in kbit/s",
       min=100, max=100_000),
    _s("media.min_video_kbps", "int", 150,
       "below this share per link, video pauses and the call goes on audio-only, in kbit/s",
       min=30, max=10_000),
    _s("media.relay_room_kbps", "int", 8000,
       "onion media relay (for browsers without WebRTC): most kbit/s relayed out of one room",
       min=64, max=1_000_000),
    _s("media.relay_max_chunk_bytes", "int", 262144,
       "largest encrypted media chunk one relay event may carry, in bytes", min=4096,
       max=8 * 1024 * 1024),
    _s("media.relay_queue_chunks", "int", 24,
       "media chunks waiting per relay receiver; beyond that, video is dropped first",
       min=2, max=1000),
    _s("media.relay_max_delay_ms", "int", 1200,
       "a relayed media chunk older than this is dropped, not sent late, in milliseconds",
       min=100, max=30_000),
    _s("media.relay_window", "int", 4,
       "media chunks sent to a relay receiver and not yet acknowledged by it", min=1, max=64),
    # turn
    _s("turn.enabled", "bool", True, "run a TURN server (coturn) for WebRTC over TCP"),
    _s("turn.binary", "str", "turnserver", "the coturn executable (Debian package coturn)"),
    _s("turn.listen_ip", "str", "127.0.0.1", "address coturn's TCP listener binds to"),
    _s("turn.port", "int", 3478, "coturn's TURN-over-TCP port", min=1, max=65535),
    _s("turn.tls_port", "int", 0,
       "coturn's TURN-over-TLS port, e.g. 443 for firewalls that inspect traffic (0 = off)",
       min=0, max=65535),
    _s("turn.tls_cert", "str", "", "PEM certificate for TURN over TLS (\"\" = generate one)"),
    _s("turn.tls_key", "str", "", "PEM private key for TURN over TLS"),
    _s("turn.relay_ip", "str", "127.0.0.2",
       "address coturn relays media from; 127.0.0.2 keeps services on 127.0.0.1 out of reach"),
    _s("turn.min_port", "int", 49152, "lowest relay port", min=1024, max=65535),
    _s("turn.max_port", "int", 49407, "highest relay port", min=1024, max=65535),
    _s("turn.realm", "str", "incognito-onion", "TURN realm"),
    _s("turn.credential_ttl", "int", 3600,
       "seconds a TURN credential stays valid (refreshed before it runs out)", min=60,
       max=86400),
    _s("turn.user_quota", "int", 12, "most relay allocations per credential (0 = no limit)",
       min=0, max=100_000),
    _s("turn.total_quota", "int", 300, "most relay allocations in all (0 = no limit)", min=0,
       max=1_000_000),
    _s("turn.max_bps", "int", 0, "bandwidth cap per allocation in bytes/s (0 = no cap)", min=0,
       max=10_000_000_000),
    _s("turn.public_urls", "list", [],
       "extra TURN/TURNS URLs to hand to browsers, e.g. turns:turn.example.org:443?transport=tcp"),
    _s("turn.relay_only", "bool", True,
       "browsers use only TURN relays, so no participant learns another's address"),
    _s("turn.persist_secret", "bool", False,
       "keep the TURN secret in the state dir across restarts (false = new one each run)"),
    # tor
    _s("tor.enabled", "bool", True, "publish as an onion service (--no-tor turns this off)"),
    _s("tor.binary", "str", "tor", "the tor executable launched when not attaching"),
    _s("tor.control", "str", "",
       "attach to a running tor: HOST:PORT or /path/to/control.socket (\"\" = launch our own)"),
    _s("tor.control_password", "str", "", "control port password when attaching (\"\" = cookie)",
       secret=True),
    _s("tor.bootstrap_timeout", "float", 180.0, "seconds to wait for tor to bootstrap", min=5,
       max=3600),
    _s("tor.publish_timeout", "float", 120.0,
       "seconds to wait for the onion to be published", min=5, max=3600),
    _s("tor.persistent_key", "bool", False,
       "keep the onion key in the state dir so the address survives restarts"),
    _s("tor.client_auth", "bool", False,
       "only people holding a key from `incognito-onion keys add` can reach the onion"),
    _s("tor.pow_defense", "bool", True,
       "proof-of-work DoS defence when tor supports it (tor >= 0.4.9.2)"),
    _s("tor.max_streams", "int", 0, "most streams per circuit to the onion (0 = no limit)",
       min=0, max=65535),
    _s("tor.extra_torrc", "list", [], "extra torrc lines for the tor we launch (experts, tests)"),
    # top level
    _s("state_dir", "str", "",
       "where keys and secrets are kept (\"\" = $XDG_STATE_HOME/incognito-onion)"),
)

BY_PATH: dict[str, Setting] = {s.path: s for s in SETTINGS}


def defaults() -> dict[str, Any]:
    """Flat ``{path: default}`` for every setting."""
    return {s.path: s.default for s in SETTINGS}


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_yaml() -> str:
    """The commented config.yaml with every default, as shipped in ``config/config.yaml``."""
    out = [
        "# incognito-onion configuration. Every setting is listed with its default.",
        "# Precedence: command-line flags > INCOGNITO_* environment > this file > defaults.",
        "# Each key's environment variable is INCOGNITO_ + its path in capitals with _ for .",
        "# (server.port -> INCOGNITO_SERVER_PORT).",
        "# Check a file with `incognito-onion config check`.",
        "",
    ]
    section = None
    for s in SETTINGS:
        head, _, leaf = s.path.rpartition(".")
        if head != section:
            if head:
                out += ["", f"# {SECTION_DOCS[head]}", f"{head}:"]
            else:
                out += [""]
            section = head
        indent = "  " if head else ""
        extra = ""
        if s.kind == "choice":
            extra = f" ({', '.join(s.choices)})"
        elif s.min is not None and s.kind in ("int", "float"):
            extra = f" ({_num(s.min)}-{_num(s.max)})"
        out.append(f"{indent}{leaf}: {_yaml_scalar(s.default)}  # {s.doc}{extra}")
    return "\n".join(out).strip("\n") + "\n"


def _num(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)
