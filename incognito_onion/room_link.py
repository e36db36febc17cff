"""``rooms.keep_link``: the room ``up`` prints, kept across restarts.

Off (the default), ``up`` opens its room under a fresh id with a fresh key every run, so a
restart makes the link it printed before useless to anyone not already in a call. On, the room's
id and key are kept 0600 in the state dir as ``room-link`` (JSON ``{"room": id, "key": key}``)
and the next ``up`` opens the room again under that id and prints the same link; with
``tor.persistent_key`` the whole URL stays the same.

The price: the room key, which otherwise exists only in the link, sits on the server's disk.
Whoever takes the state dir can read that room's traffic if they also recorded it. So with the
setting off a saved link is deleted at the next start.

:func:`encode` and :func:`decode` are pure; :func:`load`, :func:`save` and :func:`forget` do the
file I/O and raise :class:`StateDirError` with a one-line message naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import ids
from .state import StateDirError, read_private, write_private

FILE_NAME = "room-link"
_FIX = "delete it and the next start prints a new link (the old one then stops working)"


@dataclass(frozen=True)
class RoomLink:
    """What makes the printed link: the room id (path) and the room key (fragment)."""

    room_id: str
    key: str


def encode(link: RoomLink) -> str:
    return json.dumps({"room": link.room_id, "key": link.key}) + "\n"


def decode(raw: bytes) -> RoomLink:
    """The link in a saved file; ``ValueError`` says what is wrong, never quoting the file
    (it holds a key)."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError('not a {"room": ..., "key": ...} object')
    room_id, key = doc.get("room"), doc.get("key")
    if not isinstance(room_id, str) or not ids.ROOM_ID_RE.match(room_id):
        raise ValueError("no room id of 22 base64url characters")
    if not isinstance(key, str) or not ids.ROOM_KEY_RE.match(key):
        raise ValueError("no room key of 43 base64url characters")
    return RoomLink(room_id, key)


def path_in(state_dir: Path | str) -> Path:
    return Path(state_dir) / FILE_NAME


def load(state_dir: Path | str) -> RoomLink | None:
    """The saved link, or None when there is none yet."""
    path = path_in(state_dir)
    try:
        raw = read_private(path)
    except StateDirError as exc:  # readable by others: the key may have been read already
        raise StateDirError(f"{exc}; or, if someone may have read it, {_FIX}") from None
    except OSError as exc:
        raise StateDirError(f"{path}: cannot read it ({exc.strerror or exc}); {_FIX}") from None
    if raw is None:
        return None
    try:
        return decode(raw)
    except ValueError as exc:
        raise StateDirError(f"{path}: not a saved room link ({exc}); {_FIX}") from None


def save(state_dir: Path | str, link: RoomLink) -> Path:
    path = path_in(state_dir)
    try:
        return write_private(path, encode(link))
    except OSError as exc:
        raise StateDirError(f"{path}: cannot write it ({exc.strerror or exc}); check the "
                            f"state dir's permissions or turn rooms.keep_link off") from None


def forget(state_dir: Path | str) -> Path | None:
    """Delete a saved link (``rooms.keep_link`` is off: the key must not stay on disk).
    Returns the path when there was one."""
    path = path_in(state_dir)
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateDirError(f"{path}: rooms.keep_link is off but the saved room link cannot be "
                            f"deleted ({exc.strerror or exc}); delete it by hand") from None
    return path
