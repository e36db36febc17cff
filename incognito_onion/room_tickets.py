"""Restore tickets: how a call outlives the server process.

Rooms live in memory (or in a redis-server without persistence), so a server that is killed or
restarted forgets them, while the browsers in a call keep their room id and key and reconnect.
Each peer gets, with its ``create``/``join`` answer, a ticket: an HMAC of the room id under a
secret of this server (kept 0600 in the state dir, so it survives restarts). A ``join`` of a room
the server does not know that shows a valid ticket opens the room again under the same id, so the
call resumes by itself; without a valid ticket it is an ordinary ``room_not_found`` (and spends
one of the connection's failed joins), so room ids stay impossible to probe or plant.

A ticket proves only "someone in this room was told this id by this server": the holder already
had the room id, and the key that makes the room's messages readable never reaches the server.

Generations: when the host removes someone, the room's ticket changes (its generation goes up)
and the others are told the new one (``restore`` event), so the removed peer keeps a ticket of an
older generation. A room opened again knows the generation of the tickets shown so far, takes the
highest, and a ticket older than that does not pass its lock (``rooms.admit``): a removed peer
cannot use its ticket to get back into a room its host locked again. (An unlocked room lets in
anyone who has the link, ticket or not: what keeps people out is the lock.) A generation-0
ticket is 22 base64url characters; a later one is ``<generation>.<22 characters>``.

Host tickets: whoever comes back first to a room that came back is its host, which need not be
the host of before (who may have locked the room, and alone may remove people). So the host also
holds a host ticket, ``<epoch>.<HMAC of room id and epoch>``, where the epoch counts the host
hand-overs of the room (``rooms.Room.host_epoch``): each new host is told a ticket of a higher
epoch. A join showing a host ticket of a higher epoch than the room's makes the joiner host; a
room that came back knows no epoch, so the first ticket shown wins, and the latest host of
before, coming back, takes over from any earlier one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

from .ids import HOST_TICKET_RE, RESTORE_TICKET_RE
from .state import StateDirError, read_private, write_private

SECRET_NAME = "room-tickets.key"  # noqa: S105 (a file name)
SECRET_BYTES = 32
TICKET_BYTES = 16  # 22 base64url characters, the shape of a resume token


class RoomTickets:
    """Issues and checks restore tickets under one secret."""

    def __init__(self, secret: bytes | None = None):
        self.secret = secret if secret is not None else secrets.token_bytes(SECRET_BYTES)
        if len(self.secret) < 16:
            raise ValueError("the ticket secret must be at least 16 bytes")

    def _tag(self, message: str) -> str:
        """The HMAC-SHA256 of ``message`` under the secret, cut to 22 base64url characters."""
        mac = hmac.new(self.secret, message.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()[:TICKET_BYTES]).rstrip(b"=").decode()

    def issue(self, room_id: str, generation: int = 0) -> str:
        if not generation:
            return self._tag("restore-room:" + room_id)
        return f"{generation}." + self._tag(f"restore-room:{generation}:{room_id}")

    def generation(self, room_id: str, ticket: object) -> int | None:
        """The generation of a valid restore ticket of ``room_id``, else None."""
        if not isinstance(ticket, str) or not RESTORE_TICKET_RE.match(ticket):
            return None
        head, dot, _tag = ticket.partition(".")
        generation = int(head) if dot else 0
        return generation if hmac.compare_digest(self.issue(room_id, generation), ticket) \
            else None

    def valid(self, room_id: str, ticket: object) -> bool:
        return self.generation(room_id, ticket) is not None

    def issue_host(self, room_id: str, epoch: int) -> str:
        return f"{epoch}." + self._tag(f"host:{epoch}:{room_id}")

    def host_epoch(self, room_id: str, ticket: object) -> int | None:
        """The epoch of a valid host ticket of ``room_id``, else None."""
        if not isinstance(ticket, str) or not HOST_TICKET_RE.match(ticket):
            return None
        epoch = int(ticket.partition(".")[0])
        return epoch if hmac.compare_digest(self.issue_host(room_id, epoch), ticket) else None

    def hex(self) -> str:
        """The secret, for a worker process of the same server (sent on its stdin)."""
        return self.secret.hex()


def load(state_dir: Path | str) -> RoomTickets:
    """The tickets of this server: its secret from the state dir, made there (0600) the first
    time. Raises :class:`StateDirError` when the file is unusable (e.g. readable by others)."""
    path = Path(state_dir) / SECRET_NAME
    raw = read_private(path)
    if raw is not None:
        try:  # not hex, or too short for RoomTickets: both ValueError
            return RoomTickets(bytes.fromhex(raw.decode("ascii").strip()))
        except ValueError:
            pass
        raise StateDirError(f"{path}: not a ticket secret (64 hex digits); delete it and a new "
                            f"one is made (open calls then cannot come back after a restart)")
    tickets = RoomTickets()
    write_private(path, tickets.hex() + "\n")
    return tickets
