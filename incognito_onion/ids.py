"""Random identifiers and their shapes. Every id comes from ``secrets``; none is derived from a
socket id or an address, so nothing the server hands out links a peer to a connection."""

from __future__ import annotations

import re
import secrets

ROOM_ID_BYTES = 16  # 128 bits: unguessable, not enumerable
PEER_ID_BYTES = 12  # 96 bits, unique per join
RESUME_BYTES = 16
ROOM_KEY_BYTES = 32  # 256-bit room key, only ever in the URL fragment

ROOM_ID_RE = re.compile(r"\A[A-Za-z0-9_-]{22}\Z")
PEER_ID_RE = re.compile(r"\A[A-Za-z0-9_-]{16}\Z")
RESUME_RE = re.compile(r"\A[A-Za-z0-9_-]{22}\Z")
# a restore ticket (room_tickets.py): 22 base64url characters, after "<generation>." past the
# first generation
RESTORE_TICKET_RE = re.compile(r"\A(?:[1-9][0-9]{0,8}\.)?[A-Za-z0-9_-]{22}\Z")
# a host ticket (room_tickets.py): host epoch, a dot, 22 base64url characters
HOST_TICKET_RE = re.compile(r"\A[1-9][0-9]{0,8}\.[A-Za-z0-9_-]{22}\Z")
ROOM_KEY_RE = re.compile(r"\A[A-Za-z0-9_-]{43}\Z")


def new_room_id() -> str:
    return secrets.token_urlsafe(ROOM_ID_BYTES)


def new_peer_id() -> str:
    return secrets.token_urlsafe(PEER_ID_BYTES)


def new_resume_token() -> str:
    return secrets.token_urlsafe(RESUME_BYTES)


def new_room_key() -> str:
    """A fresh room key for the URL fragment. Made locally by ``up`` (or by the creator's
    browser) and never sent to the server."""
    return secrets.token_urlsafe(ROOM_KEY_BYTES)
