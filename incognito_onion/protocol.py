"""Envelope checks for client events (docs/protocol.md): shape and size only.

The server never looks inside ``data``/``meta``: they are the client's ciphertext. This module
turns whatever arrived into a dict of checked fields or a refusal with a stable code, so a
malformed event can never raise out of a handler.
"""

from __future__ import annotations

import math
from typing import Any

from .ids import HOST_TICKET_RE, PEER_ID_RE, RESTORE_TICKET_RE, RESUME_RE, ROOM_ID_RE
from .rooms import RoomError

# field kinds: "room", "peer", "resume", "opaque", "bool", "binary" (opaque bytes, the media
# relay's), "seq" (integer 0..2**53-1), "ms" (a finite number), "stream" ("a" or "v"),
# "peers" (a list of at most MAX_PEER_LIST peer ids); a trailing "?" marks optional
EVENTS: dict[str, dict[str, str]] = {
    "create": {"meta": "opaque?"},
    "join": {"room": "room", "meta": "opaque?", "resume": "resume?", "restore": "restore_ticket?",
             "hostRestore": "host_ticket?"},
    "message": {"room": "room", "data": "opaque"},
    "connection": {"room": "room", "to": "peer", "data": "opaque"},
    "connection/shareScreen": {"room": "room", "data": "opaque?"},
    "connection/unshareScreen": {"room": "room", "data": "opaque?"},
    "leave": {"room": "room"},
    "lock": {"room": "room", "locked": "bool"},
    "remove": {"room": "room", "peer": "peer"},
    "ice": {"room": "room"},
    "media/need": {"room": "room", "need": "bool", "from": "peers?"},
    "media": {"room": "room", "stream": "stream", "seq": "seq", "key": "bool", "ts": "ms",
              "data": "binary"},
    "media/keyframe": {"room": "room", "to": "peer", "stream": "stream"},
}

MAX_SEQ = 2**53 - 1
MAX_PEER_LIST = 64  # far above any room's capacity
STREAMS = ("a", "v")

# EVENTS as parse walks it: (name, kind, optional) per field, the "?" taken off once
_FIELDS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    event: tuple((name, kind.rstrip("?"), kind.endswith("?")) for name, kind in spec.items())
    for event, spec in EVENTS.items()}

_PATTERNS = {"room": ROOM_ID_RE, "peer": PEER_ID_RE, "resume": RESUME_RE,
             "host_ticket": HOST_TICKET_RE, "restore_ticket": RESTORE_TICKET_RE}


def utf8_len_over(text: str, limit: int) -> bool:
    """Whether ``text`` is more than ``limit`` UTF-8 bytes, without encoding short strings."""
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


def parse(event: Any, args: tuple[Any, ...], max_bytes: int,
          max_binary: int = 262144) -> tuple[str, dict[str, Any]]:
    """Check one client event; returns ``(event, fields)`` or raises :class:`RoomError`.
    ``max_bytes`` bounds text fields, ``max_binary`` binary ones."""
    if not isinstance(event, str) or event not in EVENTS:
        raise RoomError("unknown_event", "unknown event")
    if len(args) > 1:
        raise RoomError("bad_request", "send one object per event")
    payload = args[0] if args else ({} if event == "create" else None)
    if payload is None and event == "create":
        payload = {}
    if not isinstance(payload, dict):
        raise RoomError("bad_request", "the payload must be an object")
    out: dict[str, Any] = {}
    for name, kind, optional in _FIELDS[event]:
        value = payload.get(name)
        if value is None:
            if optional:
                continue
            raise RoomError("bad_request", f"missing field '{name}'")
        if kind == "bool":
            if not isinstance(value, bool):
                raise RoomError("bad_request", f"'{name}' must be true or false")
        elif kind == "binary":
            if not isinstance(value, (bytes, bytearray)):
                raise RoomError("bad_request", f"'{name}' must be binary")
            if len(value) > max_binary:
                raise RoomError("payload_too_large",
                                f"'{name}' is over the limit of {max_binary} bytes")
            value = bytes(value)
        elif kind == "seq":
            if type(value) is not int or not 0 <= value <= MAX_SEQ:
                raise RoomError("bad_request", f"'{name}' must be a whole number from 0")
        elif kind == "ms":
            if type(value) not in (int, float) or not math.isfinite(value):
                raise RoomError("bad_request", f"'{name}' must be a number")
        elif kind == "peers":
            if (not isinstance(value, list) or len(value) > MAX_PEER_LIST
                    or not all(isinstance(v, str) and PEER_ID_RE.match(v) for v in value)):
                raise RoomError("bad_request",
                                f"'{name}' must be a list of at most {MAX_PEER_LIST} peer ids")
            value = frozenset(value)
        elif kind == "stream":
            if value not in STREAMS:
                raise RoomError("bad_request", f"'{name}' must be \"a\" or \"v\"")
        elif not isinstance(value, str):
            raise RoomError("bad_request", f"'{name}' must be a string")
        elif kind == "opaque":
            if utf8_len_over(value, max_bytes):
                raise RoomError("payload_too_large",
                                f"'{name}' is over the limit of {max_bytes} bytes")
        elif not _PATTERNS[kind].match(value):
            raise RoomError("bad_request", f"'{name}' is not a valid id")
        out[name] = value
    return event, out
