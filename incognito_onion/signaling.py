"""The socket.io side of the server: connection bookkeeping, limits, and turning room logic
into emits. A blind relay: payloads are routed, never read, never logged."""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import socketio
from aiohttp.web import WebSocketResponse
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as _eio_aiohttp

from . import runtime
from .config import Config
from .fastpath import (
    FRAME_BUDGET_ATTR,
    QUICK_EVENT_ATTR,
    FastManager,
    ServiceSlicedServer,
    charge_refusal,
    fast_manager,
    plain_packet,
    send_now,
)
from .fastpath import websocket_handler as fast_websocket_handler
from .limits import Throttle, TokenBucket
from .media_relay import Chunk, RoomRelay, StreamKey
from .protocol import parse
from .relay_link import RelayLink
from .room_tickets import RoomTickets
from .rooms import Departure, Joined, Registry, Room, RoomError
from .shared_rooms import LocalRooms

log = logging.getLogger("incognito_onion.signaling")

# (peer id, host name the browser reached us by) -> {iceServers, iceTransportPolicy, iceExpires}
IceProvider = Callable[[str, str], dict[str, Any]]
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(:\d{1,5})?$")


def no_turn_ice(_peer_id: str, _host: str) -> dict[str, Any]:
    """ICE settings when the server runs without TURN: browsers may connect directly."""
    return {"iceServers": [], "iceTransportPolicy": "all", "iceExpires": None}


RESERVED_EVENTS = frozenset({"connect", "disconnect", "connect_error", "disconnecting",
                             "newListener", "removeListener"})
# Event names python-socketio gives a meaning of its own: "*" names the catch-all handler (an
# event called "*" would be handed to it without its name, every argument shifted by one, so the
# payload became the socket to act for and to answer), "connect"/"disconnect" name the
# connection handlers. Sent by a client they are just names the protocol does not know.
LIBRARY_EVENT_NAMES = RESERVED_EVENTS | {"*"}
MAX_ATTACHMENTS = 4  # binary attachments one socket.io packet may announce
_BINARY_HEADER = re.compile(r"^[56](\d{1,6})-")
# a text EVENT packet on the default namespace: type 2, an optional ack id, a JSON array
_PLAIN_EVENT = re.compile(r"2(\d{1,15})?\[")
# the events Signaling.quick_event relays without a coroutine, and the ack they get
QUICK_EVENTS = frozenset({"message", "connection", "connection/shareScreen",
                          "connection/unshareScreen"})
_OK = {"ok": True}


# How long closing a WebSocket waits for the client's close frame (aiohttp's default: 10 s).
WS_CLOSE_TIMEOUT = 0.5


class QuickCloseWebSocket(_eio_aiohttp.WebSocket):
    """engine.io's aiohttp WebSocket adapter, closing with a short wait for the client's close
    frame. When a client stops answering (a frozen browser, a network gone without a FIN),
    engine.io's ping timeout closes its socket, and the ``disconnect`` that takes the peer out
    of its room comes only once that close returns: with aiohttp's 10 s the others kept a dead
    peer's tile for the ping window plus up to 10 s. (Same body as the library's ``__call__``,
    which gives no way to pass the timeout; python-engineio 4.x.)"""

    async def __call__(self, environ: dict) -> Any:
        request = environ["aiohttp.request"]
        # compress=False: no permessage-deflate (aiohttp's default accepts the browser's offer).
        # What goes through is end-to-end encrypted, which does not compress: deflating every
        # frame was CPU for nothing (Node's socket.io has it off by default too)
        self._sock = WebSocketResponse(max_msg_size=self.server.max_http_buffer_size,
                                       timeout=WS_CLOSE_TIMEOUT, compress=False)
        await self._sock.prepare(request)
        self.environ = environ
        await fast_websocket_handler(self.handler, self)
        return self._sock


class GuardedServer(socketio.AsyncServer):
    """``AsyncServer`` that answers a malformed socket.io packet with a ``bad_request`` error
    instead of an exception in the library, refuses packets announcing more binary attachments
    than the protocol uses (which would otherwise buffer without bound), hands events named like
    the library's own handlers to the catch-all handler like any other unknown name, and closes
    a connection that sends an event on a namespace it is not in."""

    #: events on ``/`` through :meth:`_plain_event` (``INCOGNITO_RUNTIME_OFF=fastevent``: off)
    plain_events = True

    def _engineio_server_class(self) -> type:
        """engine.io's server with a cheaper service task (fastpath.ServiceSlicedServer;
        ``INCOGNITO_RUNTIME_OFF=service``: the library's)."""
        if runtime.enabled("service"):
            return ServiceSlicedServer
        return super()._engineio_server_class()

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        plain = None
        if type(data) is str and data[:1] == "2" and self.plain_events \
                and eio_sid not in self._binary_packet:
            plain = _PLAIN_EVENT.match(data)
        elif isinstance(data, str) and data[:1] in ("5", "6"):
            m = _BINARY_HEADER.match(data)
            if m is None or int(m.group(1)) > MAX_ATTACHMENTS:
                await self._malformed(eio_sid, "too many binary attachments")
                return
        try:
            if plain is None or not await self._plain_event(eio_sid, data, plain):
                await super()._handle_eio_message(eio_sid, data)
        except Exception:
            self._binary_packet.pop(eio_sid, None)
            await self._malformed(eio_sid, "malformed packet")

    async def _plain_event(self, eio_sid: str, data: str, m: re.Match[str]) -> bool:
        """The common packet, an event on ``/`` (what every relayed message is), handed to the
        catch-all handler and acked without the library's packet object and its five layers
        of dispatch: the same checks and the same outcome, at a fraction of the cost. Returns
        False, having done nothing, for anything else, which then takes the library's path."""
        try:
            payload = self.packet_class.json.loads(data[m.end() - 1:])
        except Exception:
            return False  # malformed: the library's path answers it
        if not (type(payload) is list and payload and isinstance(payload[0], str)):
            return False
        event = payload[0]
        handlers = self.handlers.get("/")
        if not handlers or (event in handlers and event not in LIBRARY_EVENT_NAMES):
            return False  # a handler of its own: the library calls it
        catch_all = handlers.get("*")
        sid = self.manager.sid_from_eio_sid(eio_sid, "/")
        if catch_all is None or sid is None or not self.manager.is_connected(sid, "/"):
            return False
        reply = catch_all(event, sid, *payload[1:])
        if inspect.isawaitable(reply):
            reply = await reply
        if m.group(1) is not None:
            await self._ack(eio_sid, "/", int(m.group(1)), reply)
        return True

    async def _handle_event(self, eio_sid: str, namespace: Any, id: Any, data: Any) -> None:
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            # An event on a namespace this connection is not in (never connected to it, or left
            # it with a disconnect packet): there is no socket to answer on, and the library
            # would drop it without a word. Like Socket.IO's reference server ("invalid
            # state"), close the connection.
            await self.eio.disconnect(eio_sid)
            return
        # An event's payload is a non-empty array headed by the event's name. The library would
        # take anything else as one (a JSON string is indexed character by character: its first
        # character became the event's name, the others its arguments).
        if not (isinstance(data, list) and data and isinstance(data[0], str)):
            await self._malformed(eio_sid, "malformed packet", namespace, id)
            return
        await super()._handle_event(eio_sid, namespace, id, data)

    async def _handle_event_internal(self, server: Any, sid: str, eio_sid: str, data: list,
                                     namespace: str, id: Any) -> None:
        if data[0] not in LIBRARY_EVENT_NAMES:
            await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
            return
        # never the handler registered under that name: the catch-all, with the name first
        handler = self.handlers.get(namespace, {}).get("*")
        if handler is None:
            return
        reply = handler(data[0], sid, *data[1:])
        if inspect.isawaitable(reply):
            reply = await reply
        if id is not None:
            await self._ack(eio_sid, namespace, id, reply)

    async def _ack(self, eio_sid: str, namespace: str, id: Any, reply: Any) -> None:
        rest = self.ack_now(eio_sid, namespace, id, reply)
        if rest is not None:
            await rest

    def ack_now(self, eio_sid: str, namespace: str, id: Any, reply: Any
                ) -> Coroutine[Any, Any, Any] | None:
        """Sends the ack at once where the fast WebSocket loop takes it (fastpath.send_now);
        else returns the coroutine that sends it, to await."""
        data = [] if reply is None else [reply]
        encoded = (plain_packet(socketio.packet.ACK, data, self.packet_class.json, id)
                   if namespace == "/" else None)
        if encoded is None:  # another namespace, or bytes in the reply: a binary ack
            return self._send_packet(eio_sid, self.packet_class(
                socketio.packet.ACK, namespace=namespace, id=id, data=data))
        pkt = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        sock = self.eio.sockets.get(eio_sid)
        if sock is None or sock.closed:
            return self.eio.send_packet(eio_sid, pkt)  # gone: the library's path says so
        if send_now(sock, pkt):
            return None
        return sock.send(pkt)  # send_packet less its lookup and call

    async def _malformed(self, eio_sid: str, message: str, namespace: Any = None,
                         id: Any = None) -> None:
        """Answers a packet that could not be taken as an event (in its ack too, when the packet
        asked for one), within the connection's rate limit."""
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is not None:
            hook = getattr(self, "on_malformed", None)
            if hook is None or hook(sid):
                err = {"code": "bad_request", "message": message, "event": "?"}
                await self.emit("error", err, to=sid, namespace=namespace)
                if id is not None:
                    await self._ack(eio_sid, namespace, id, {"ok": False, "error": err})


async def _in_turn(*coros: Coroutine[Any, Any, Any]) -> None:
    """Awaits ``coros`` one after the other."""
    for coro in coros:
        await coro


@dataclass
class _Conn:
    bucket: TokenBucket
    host: str  # the host name this browser reached us by (an onion, or 127.0.0.1)
    failed_joins: TokenBucket  # joins of unknown rooms: room ids must not be enumerable
    throttle: Throttle = field(default_factory=Throttle)
    # several workers: room id -> its peer id there, as this connection's own create or join
    # left it (Signaling._known_member)
    rooms: dict[str, str] = field(default_factory=dict)


class Signaling:
    """Owns the ``socketio.AsyncServer`` and the room :class:`Registry`."""

    def __init__(self, cfg: Config, registry: Registry | None = None,
                 ice: IceProvider = no_turn_ice, rooms: Any = None,
                 client_manager: Any = None, tickets: RoomTickets | None = None):
        self.cfg = cfg
        self.ice = ice
        # restore tickets (room_tickets.py): a call outlives a restart of the server when the
        # secret is kept in the state dir (up does); by default valid for this process only
        self.tickets = tickets or RoomTickets()
        self.registry = registry or Registry(
            capacity=cfg.rooms.capacity,
            max_rooms=cfg.rooms.max_rooms,
            per_connection=cfg.rooms.per_connection,
            empty_grace=cfg.rooms.empty_grace_seconds,
        )
        # where room state lives: this process, or Redis shared by every worker (several
        # workers: shared_rooms.SharedRooms, with client_manager an AsyncRedisManager)
        self.rooms = rooms if rooms is not None else LocalRooms(self.registry)
        self.shared = bool(getattr(self.rooms, "shared", False))
        if self.shared:
            self.rooms.on_forgotten = self.forget_known_members
        self.max_bytes: int = cfg.limits.max_payload_bytes
        self.media = {"uploadKbps": cfg.media.upload_kbps,
                      "minVideoKbps": cfg.media.min_video_kbps}
        self.max_chunk: int = cfg.media.relay_max_chunk_bytes
        self.relays: dict[str, RoomRelay] = {}  # room id -> media relay state (onion relay)
        # several workers: chunks to and from the other workers' relay receivers (worker.py)
        self.link: RelayLink | None = None
        self.conns: dict[str, _Conn] = {}
        # new sessions per second, server-wide (per process): a connection brings a fresh
        # failed-join budget, so without this a guesser could churn connections for budgets
        rate = cfg.limits.connects_per_second
        self.new_sessions = TokenBucket(rate, max(1, int(10 * rate)))
        self._busy_note = Throttle(60.0)
        self.sio = GuardedServer(
            async_mode="aiohttp",
            # several workers: events cross processes through Redis; websocket only, since the
            # requests of one long-polling session could reach different workers
            client_manager=client_manager if client_manager is not None else fast_manager(),
            transports=["websocket"] if client_manager is not None else None,
            # one event at a time per connection, in order: the library's default starts a task
            # per event as fast as frames arrive, so a flooding client queued unbounded work
            # (memory) ahead of everyone else's events (latency); handled in turn, a client can
            # only send as fast as its own events are served (TCP backpressure)
            async_handlers=False,
            # orjson when installed (the same JSON; INCOGNITO_RUNTIME_OFF=orjson: the stdlib)
            json=runtime.json_module(),
            ping_interval=cfg.server.ping_interval,
            ping_timeout=cfg.server.ping_timeout,
            # a whole packet may carry a few opaque fields (or one media chunk); anything
            # bigger is cut off by engine.io before it is parsed
            max_http_buffer_size=max(2 * self.max_bytes, self.max_chunk) + 16 * 1024,
            # our own loggers: the library's default ones add a handler that bypasses
            # the redacting filter
            logger=logging.getLogger("incognito_onion.socketio"),
            engineio_logger=logging.getLogger("incognito_onion.engineio"),
        )
        self.sio.eio._async = {**self.sio.eio._async, "websocket": QuickCloseWebSocket}
        self.sio.plain_events = runtime.enabled("fastevent")
        # frames of one connection beyond this are read at low priority (fastpath): twice its
        # event budget in frames (a media event is two frames: header and binary attachment),
        # doubled again so that a sender at its full event rate is never slowed; a flood runs
        # at thousands of frames a second
        setattr(self.sio.eio, FRAME_BUDGET_ATTR,
                (4 * cfg.limits.events_per_second + 1, 4 * cfg.limits.event_burst))
        self.sio.on_malformed = self._allow_error_reply
        if (rooms is None and type(self.sio.manager) is FastManager and self.sio.plain_events
                and runtime.enabled("quickrelay")):
            setattr(self.sio.eio, QUICK_EVENT_ATTR, self.quick_event)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("*", self._on_event)
        self._handlers = {
            "create": self._create,
            "join": self._join,
            "message": self._message,
            "connection": self._connection,
            "connection/shareScreen": self._share,
            "connection/unshareScreen": self._share,
            "leave": self._leave,
            "lock": self._lock,
            "remove": self._remove,
            "ice": self._ice,
            "media/need": self._media_need,
            "media": self._media,
            "media/keyframe": self._media_keyframe,
        }

    # -- start and stop ------------------------------------------------------------------------
    async def start(self) -> None:
        """Before the first client: the rooms' store, and with several workers the other
        workers' events (a worker that joined a client before it listened would miss what the
        others said to that client's room) and the media link between workers."""
        await self.rooms.start()
        manager = self.sio.manager
        if hasattr(manager, "start"):  # redis_events.BatchedRedisManager (several workers)
            await manager.start()
        if self.link is not None:
            await self.link.start()

    async def close(self) -> None:
        """After the last client, in the reverse order, while redis is still there (up stops
        it after the workers)."""
        if self.link is not None:
            await self.link.close()
        await self.rooms.close()
        manager = self.sio.manager
        if hasattr(manager, "close"):
            await manager.close()

    # -- connection life -----------------------------------------------------------------------
    async def _on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        if len(self.conns) >= self.cfg.limits.max_connections:
            raise socketio.exceptions.ConnectionRefusedError("server_full")
        m = _HOST_RE.match(str(environ.get("HTTP_HOST", "")))
        host = m.group(1).strip("[]") if m else self.cfg.server.host
        per_minute = self.cfg.limits.failed_joins_per_minute
        self.conns[sid] = _Conn(TokenBucket(self.cfg.limits.events_per_second,
                                            self.cfg.limits.event_burst), host,
                                TokenBucket(per_minute / 60, per_minute))

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        self.conns.pop(sid, None)
        try:
            await self.announce_departures(await self.rooms.disconnect(sid))
        except Exception:  # never let bookkeeping kill the server
            log.exception("error while handling a disconnect")

    def admit_session(self) -> bool:
        """Whether a new engine.io session may open now (``limits.connects_per_second``)."""
        if self.new_sessions.allow():
            return True
        if self._busy_note.ready():
            log.warning("new connections over limits.connects_per_second: asked to retry")
        return False

    def _allow_error_reply(self, sid: str) -> bool:
        """Malformed packets count against the rate limit like events do."""
        conn = self.conns.get(sid)
        self._charge(sid)
        return conn is not None and conn.bucket.allow()

    # -- dispatch ------------------------------------------------------------------------------
    async def _on_event(self, event: Any, sid: str, *args: Any) -> dict[str, Any]:
        name = event if isinstance(event, str) and len(event) <= 40 else "?"
        conn = self.conns.get(sid)
        try:
            if conn is None:
                raise RoomError("not_in_room", "not connected")
            if not conn.bucket.allow():
                self._charge(sid)
                if conn.throttle.ready():
                    err = {"code": "rate_limited", "event": name,
                           "message": "too many events; slow down"}
                    await self.sio.emit("error", err, to=sid)
                return {"ok": False, "error": {"code": "rate_limited", "event": name,
                                               "message": "too many events; slow down"}}
            event, fields = parse(event, args, self.max_bytes, self.max_chunk)
            reply = await self._handlers[event](sid, event, fields)
            return {"ok": True, **reply}
        except RoomError as exc:
            return await self._refuse(sid, name, exc.code, exc.message)
        except Exception:
            log.exception("bug while handling an event")
            return await self._refuse(sid, name, "internal", "the server hit a bug")

    def quick_event(self, eio_sid: str, text: str) -> Any:
        """The relayed events (QUICK_EVENTS) from a connection the fast WebSocket loop runs,
        handled in the read callback without a coroutine: the same checks, emit and ack as
        ``GuardedServer._plain_event`` -> :meth:`_on_event` -> :meth:`_message` and the
        others, without their eight coroutines and the library's dispatch. Why: at 1 000
        clients x 1 msg/s each message runs on cold caches, and the interpreter's time per
        layer, not any one step, kept our p99 level with Node's (bench/README.md).

        Returns False, having done nothing, for anything else (another event, a packet that
        is not one event with one argument, a connection not on ``/`` or over its rate
        limit: the library's path then answers it, as it would have), True when done, or the
        coroutine of what has to wait: sends to a recipient off the fast loop or closing, or
        a refusal (the event's own checks failed), answered as :meth:`_on_event` answers it.
        One process only (rooms in this process's registry, ``FastManager``): with several
        workers a member check or an emit goes through redis, which waits."""
        sio = self.sio
        m = _PLAIN_EVENT.match(text)
        if m is None or eio_sid in sio._binary_packet:
            return False
        try:
            payload = sio.packet_class.json.loads(text[m.end() - 1:])
            if type(payload) is not list or len(payload) != 2:
                return False
            event = payload[0]
            if type(event) is not str or event not in QUICK_EVENTS:
                return False
            manager = sio.manager
            sid = manager.sid_from_eio_sid(eio_sid, "/")
            conn = self.conns.get(sid) if sid is not None else None
            if conn is None or not conn.bucket.has() or not manager.is_connected(sid, "/"):
                return False  # not connected, or over the rate limit: refused there
        except Exception:  # malformed: the library's path answers it
            return False
        conn.bucket.allow()
        ack_id = None if m.group(1) is None else int(m.group(1))
        try:
            event, f = parse(event, payload[1:], self.max_bytes, self.max_chunk)
            room, peer = self.registry.member(f["room"], sid)
            to = self.rooms.target(room, f["to"]).sid if event == "connection" else None
        except RoomError as exc:
            # refused here, not handed back: the library's path would parse and check it all
            # again, and a flood of refused events is what an attack sends
            return self._refused(eio_sid, sid, event, exc.code, exc.message, ack_id)
        except Exception:
            log.exception("bug while handling an event")
            return self._refused(eio_sid, sid, event, "internal", "the server hit a bug",
                                 ack_id)
        envelope = {"room": room.id, "from": peer.id, "data": f.get("data")}
        rest = (manager.emit_now(event, envelope, "/", room.id, sid) if to is None
                else manager.emit_now(event, envelope, "/", to))
        ack = None if ack_id is None else sio.ack_now(eio_sid, "/", ack_id, _OK)
        if rest is None:
            return True if ack is None else ack
        return rest if ack is None else _in_turn(rest, ack)

    async def _refused(self, eio_sid: str, sid: str, event: str, code: str, message: str,
                       ack_id: int | None) -> None:
        """:meth:`quick_event`'s refusal: the error event, and the ack when one was asked
        for, as :meth:`_on_event` and ``GuardedServer._plain_event`` send them."""
        reply = await self._refuse(sid, event, code, message)
        if ack_id is not None:
            await self.sio._ack(eio_sid, "/", ack_id, reply)

    def _charge(self, sid: str) -> None:
        """A refused event lowers its connection's read priority (fastpath.charge_refusal)."""
        charge_refusal(self.sio.eio, self.sio.manager.eio_sid_from_sid(sid, "/"))

    async def _refuse(self, sid: str, event: str, code: str, message: str) -> dict[str, Any]:
        self._charge(sid)
        err = {"code": code, "message": message, "event": event}
        await self.sio.emit("error", err, to=sid)
        return {"ok": False, "error": err}

    # -- events --------------------------------------------------------------------------------
    def _ice_for(self, sid: str, peer_id: str) -> dict[str, Any]:
        conn = self.conns.get(sid)
        return dict(self.ice(peer_id, conn.host if conn else self.cfg.server.host))

    async def _welcome(self, sid: str, room: Room, peer_id: str, resume: str
                       ) -> dict[str, Any]:
        note = await self._receivers_note(room.id)
        return {
            "room": room.id,
            "peer": peer_id,
            "host": room.host,
            "resume": resume,
            "restore": self.tickets.issue(room.id, room.ticket_gen),
            **self._host_ticket(room, peer_id),
            "locked": room.locked,
            "capacity": room.capacity,
            "peers": [{"peer": p.id, "meta": p.meta} for p in room.others(peer_id)],
            **self._ice_for(sid, peer_id),
            "media": self.media,
            "mediaRelay": note["peers"],
            "mediaRelayFrom": note["from"],
        }

    def _host_ticket(self, room: Room, peer_id: str) -> dict[str, str]:
        """``{"hostRestore": ticket}`` for the host of ``room`` (room_tickets.py), else {}."""
        if room.host != peer_id or not room.host_epoch:
            return {}
        return {"hostRestore": self.tickets.issue_host(room.id, room.host_epoch)}

    async def _create(self, sid: str, _ev: str, f: dict[str, Any]) -> dict[str, Any]:
        joined = await self.rooms.create(sid, f.get("meta", ""))
        await self.sio.enter_room(sid, joined.room.id)
        self.conns[sid].rooms[joined.room.id] = joined.peer.id
        log.info("room created (%d open)", await self.rooms.count())
        return await self._welcome(sid, joined.room, joined.peer.id, joined.peer.resume)

    async def _join(self, sid: str, _ev: str, f: dict[str, Any]) -> dict[str, Any]:
        conn = self.conns[sid]
        if not conn.failed_joins.has():
            raise RoomError("rate_limited", "too many joins of rooms that do not exist; wait")
        # a valid restore ticket (its generation) also passes the lock of a room just opened
        # again from one
        ticket = (self.tickets.generation(f["room"], f["restore"]) if "restore" in f
                  else None)
        # a valid host ticket of a later host hand-over than the room knows makes the joiner
        # host (the host of before a restart, back after someone else)
        claim = (self.tickets.host_epoch(f["room"], f["hostRestore"])
                 if "hostRestore" in f else None)
        try:
            joined = await self.rooms.join(f["room"], sid, f.get("meta", ""), f.get("resume"),
                                           ticket, claim)
        except RoomError as exc:
            if exc.code != "room_not_found":
                raise
            joined = await self._restore(sid, conn, f, ticket, claim)
        room, peer = joined.room, joined.peer
        if joined.replaced_sid is not None:
            await self.sio.leave_room(joined.replaced_sid, room.id)
            relay = self.relays.get(room.id)
            q = relay.receivers.get(peer.id) if relay else None
            if q is not None:  # acks owed by the old connection will never come
                q.reset_flight()
        await self.sio.enter_room(sid, room.id)
        conn.rooms[room.id] = peer.id
        await self.sio.emit("joined", {"room": room.id, "peer": peer.id, "meta": peer.meta,
                                       "resumed": joined.resumed},
                            room=room.id, skip_sid=sid)
        if joined.host_changed:
            await self.sio.emit("host", {"room": room.id, "peer": peer.id}, room=room.id,
                                skip_sid=sid)
        log.debug("peer joined a room (%d peers in it)", len(room.peers))
        return await self._welcome(sid, room, peer.id, peer.resume)

    async def _restore(self, sid: str, conn: _Conn, f: dict[str, Any], ticket: int | None,
                       claim: int | None) -> Joined:
        """A join of a room this server does not know: with a valid restore ticket the room
        opens again under its id (the server restarted under a call), else ``room_not_found``
        at the price of one failed join."""
        if ticket is None:
            conn.failed_joins.allow()
            raise RoomError("room_not_found", "no such room (it may have ended)")
        try:
            joined = await self.rooms.create(sid, f.get("meta", ""), room_id=f["room"],
                                             host_claim=claim, ticket=ticket)
        except RoomError as exc:
            if exc.code != "room_exists":
                raise
            # someone else brought it back first: an ordinary join (never a resume: this
            # server issued no resume token for it before its restart)
            return await self.rooms.join(f["room"], sid, f.get("meta", ""), None, ticket, claim)
        log.info("a room came back after a server restart (%d open)", await self.rooms.count())
        return joined

    def _known_member(self, sid: str, room_id: str) -> str | None:
        """Several workers: the peer id ``sid`` has in ``room_id`` without asking redis, when
        this process saw it create or join that room and socket.io still has it in the
        room's local membership. Every way out of a room takes it out of that membership on
        the process holding the connection (its own leave or disconnect; a host's removal or
        a resume elsewhere, through the redis manager's leave_room), and when redis forgot
        this process (redis restarted, or others took it for dead and removed its people:
        :meth:`forget_known_members`) nothing is known any more. So only a broadcast to the
        room saves its redis read this way."""
        conn = self.conns.get(sid)
        peer_id = conn.rooms.get(room_id) if conn is not None else None
        if peer_id is None:
            return None
        if sid in self.sio.manager.rooms.get("/", {}).get(room_id, ()):
            return peer_id
        del conn.rooms[room_id]
        return None

    def forget_known_members(self) -> None:
        """Redis lost what this process's connections are in (see :meth:`_known_member`)."""
        for conn in self.conns.values():
            conn.rooms.clear()

    async def _sender(self, sid: str, room_id: str) -> str:
        """The peer id ``sid`` sends as in ``room_id`` (``not_in_room`` if it is not there)."""
        if self.shared:
            known = self._known_member(sid, room_id)
            if known is not None:
                return known
        _room, peer = await self.rooms.member(room_id, sid)
        return peer.id

    # the relayed events go to the client manager directly: AsyncServer.emit adds only a debug
    # log line and a call, per message of every call
    async def _message(self, sid: str, ev: str, f: dict[str, Any]) -> dict[str, Any]:
        rid = f["room"]
        sender = await self._sender(sid, rid)
        await self.sio.manager.emit(ev, {"room": rid, "from": sender, "data": f["data"]},
                                    "/", room=rid, skip_sid=sid)
        return {}

    async def _share(self, sid: str, ev: str, f: dict[str, Any]) -> dict[str, Any]:
        rid = f["room"]
        sender = await self._sender(sid, rid)
        await self.sio.manager.emit(ev, {"room": rid, "from": sender, "data": f.get("data")},
                                    "/", room=rid, skip_sid=sid)
        return {}

    async def _connection(self, sid: str, ev: str, f: dict[str, Any]) -> dict[str, Any]:
        room, peer = await self.rooms.member(f["room"], sid)
        target = self.rooms.target(room, f["to"])
        await self.sio.manager.emit(ev, {"room": room.id, "from": peer.id, "data": f["data"]},
                                    "/", room=target.sid)
        return {}

    async def _leave(self, sid: str, _ev: str, f: dict[str, Any]) -> dict[str, Any]:
        dep = await self.rooms.leave(f["room"], sid)
        await self.sio.leave_room(sid, dep.room.id)
        await self._announce_departure(dep)
        return {}

    async def _lock(self, sid: str, _ev: str, f: dict[str, Any]) -> dict[str, Any]:
        room = await self.rooms.lock(f["room"], sid, f["locked"])
        await self.sio.emit("locked", {"room": room.id, "locked": room.locked}, room=room.id)
        return {"locked": room.locked}

    async def _remove(self, sid: str, _ev: str, f: dict[str, Any]) -> dict[str, Any]:
        dep = await self.rooms.remove(f["room"], sid, f["peer"])
        await self.sio.leave_room(dep.peer.sid, dep.room.id)
        await self.sio.emit("removed", {"room": dep.room.id}, to=dep.peer.sid)
        await self._announce_departure(dep)
        if dep.tickets_changed and not dep.room_closed:  # the removed one's no longer passes
            await self.sio.emit("restore", {"room": dep.room.id, "restore": self.tickets.issue(
                dep.room.id, dep.room.ticket_gen)}, room=dep.room.id)
        return {}

    async def _ice(self, sid: str, _ev: str, f: dict[str, Any]) -> dict[str, Any]:
        _room, peer = await self.rooms.member(f["room"], sid)
        return self._ice_for(sid, peer.id)

    async def announce_departures(self, deps: list[Departure]) -> None:
        """Tells the rooms about peers that left (a disconnect, or the sweep's: a stopped
        worker's peers)."""
        for dep in deps:
            await self._announce_departure(dep)

    async def _announce_departure(self, dep: Departure) -> None:
        rid = dep.room.id
        relay = self.relays.get(rid)
        was_receiver = relay.remove_peer(dep.peer.id) if relay else False
        was_receiver = was_receiver or dep.relay_receiver  # (several workers: on another one)
        if relay is not None and (dep.room_closed or not relay.receivers):
            del self.relays[rid]
        if was_receiver and not dep.room_closed:
            await self._announce_receivers(rid)
        if dep.room_closed:
            log.info("room closed (%d open)", await self.rooms.count())
            return
        await self.sio.emit("left", {"room": rid, "peer": dep.peer.id, "reason": dep.reason},
                            room=rid)
        if dep.new_host is not None:
            await self.sio.emit("host", {"room": rid, "peer": dep.new_host}, room=rid)
            heir = dep.room.peers.get(dep.new_host)
            ticket = self._host_ticket(dep.room, dep.new_host)
            if heir is not None and ticket:  # only the new host may hold it
                await self.sio.emit("host-restore", {"room": rid, **ticket}, to=heir.sid)

    # -- media relay (docs/protocol.md "Media relay") ------------------------------------------
    # Each worker relays to the receivers whose connections it holds (self.relays: their queues
    # and windows); with several workers the room's receivers are listed in redis, and a chunk
    # also goes to the workers holding the others (relay_link).
    async def _receivers(self, room_id: str) -> dict[str, frozenset[str] | None]:
        """Every relay receiver of the room (on any worker) -> the senders it wants (None:
        all)."""
        if self.shared:
            return {p: only for p, (_node, only) in
                    (await self.rooms.relay_receivers(room_id)).items()}
        relay = self.relays.get(room_id)
        return relay.wants() if relay else {}

    async def _announce_receivers(self, room_id: str) -> None:
        await self.sio.emit("media/receivers", await self._receivers_note(room_id),
                            room=room_id)

    async def _receivers_note(self, room_id: str) -> dict[str, Any]:
        """``{room, peers, from}``: who receives through the relay; ``from`` maps the receivers
        that want only some senders to those senders (a sender records only when wanted)."""
        receivers = await self._receivers(room_id)
        return {"room": room_id, "peers": list(receivers),
                "from": {p: sorted(only) for p, only in receivers.items() if only is not None}}

    async def _media_need(self, sid: str, _ev: str, f: dict[str, Any]) -> dict[str, Any]:
        room, peer = await self.rooms.member(f["room"], sid)
        m = self.cfg.media
        relay = self.relays.get(room.id)
        only = f.get("from")
        if f["need"]:
            if relay is None:
                relay = self.relays[room.id] = RoomRelay(
                    room_kbps=m.relay_room_kbps, max_chunks=m.relay_queue_chunks,
                    max_delay=m.relay_max_delay_ms / 1000, window=m.relay_window)
            q = relay.receivers.get(peer.id)
            changed = q is None or q.only != only
            relay.add_receiver(peer.id, only).reset_flight()
            if self.shared:
                await self.rooms.set_receiver(room.id, sid, only)
        else:
            # it stops receiving; what it sends others still goes out
            changed = relay is not None and relay.stop_receiving(peer.id)
            if relay is not None and not relay.receivers:
                del self.relays[room.id]
            if self.shared:
                await self.rooms.drop_receiver(room.id, peer.id)
        note = await self._receivers_note(room.id)
        if changed:
            log.debug("media relay receivers changed (%d)", len(note["peers"]))
            await self.sio.emit("media/receivers", note, room=room.id)
        return {"receivers": note["peers"], "from": note["from"]}

    async def _media(self, sid: str, _ev: str, f: dict[str, Any]) -> dict[str, Any]:
        link = self.link
        if link is None:
            room, peer = await self.rooms.member(f["room"], sid)
            elsewhere = {}
        else:  # several workers: the room and its receivers in one round trip to redis
            room, peer, receivers = await self.rooms.member_and_receivers(f["room"], sid)
            elsewhere = {p: node for p, (node, only) in receivers.items()  # other workers'
                         if node != link.node and p != peer.id
                         and (only is None or peer.id in only) and p in room.peers}
        chunk = Chunk(peer.id, f["stream"], f["seq"], f["key"], f["ts"], f["data"])
        relayed = 0
        if link is not None and elsewhere:
            await link.publish(set(elsewhere.values()), room.id, chunk)
            relayed += len(elsewhere)
        relay = self.relays.get(room.id)
        if relay is not None:
            relayed += await self._route(room, relay, chunk)
        return {"relayed": relayed}

    async def relay_from_worker(self, room_id: str, chunk: Chunk) -> None:
        """A chunk another worker's sender sent, for this worker's receivers (relay_link)."""
        relay = self.relays.get(room_id)
        room = await self.rooms.room(room_id) if relay is not None else None
        if relay is None or room is None or chunk.sender not in room.peers:
            return
        await self._route(room, relay, chunk)

    async def _route(self, room: Room, relay: RoomRelay, chunk: Chunk) -> int:
        """Queues ``chunk`` for this worker's receivers and sends what their windows allow;
        returns how many it was queued for (0 when the room's cap dropped it)."""
        routed = relay.route(chunk)
        await self._ask_keys(room, routed.key_requests)
        for target in routed.receivers:
            await self._drain(room, relay, target)
        return 0 if routed.capped else len(routed.receivers)

    async def _media_keyframe(self, sid: str, _ev: str, f: dict[str, Any]) -> dict[str, Any]:
        room, peer = await self.rooms.member(f["room"], sid)
        target = self.rooms.target(room, f["to"])
        relay = self.relays.get(room.id)
        if relay is not None and relay.want_key((target.id, f["stream"])):
            await self.sio.emit("media/keyframe", {"room": room.id, "from": peer.id,
                                                   "stream": f["stream"]}, to=target.sid)
        return {}

    async def _ask_keys(self, room: Room, wanted: set[StreamKey]) -> None:
        for sender, stream in wanted:
            p = room.peers.get(sender)
            if p is not None:
                await self.sio.emit("media/keyframe", {"room": room.id, "from": None,
                                                       "stream": stream}, to=p.sid)

    async def _drain(self, room: Room, relay: RoomRelay, target: str) -> None:
        """Sends what the receiver's window allows; acks call this again."""
        q = relay.receivers.get(target)
        peer = room.peers.get(target)
        if q is None or peer is None or q.draining:
            return
        if self.link is not None and peer.node != self.link.node:
            # it came back on another worker (a resume), which relays to it from now on
            relay.stop_receiving(target)
            return
        q.draining = True
        try:
            while True:
                chunk, broke = relay.pop(target)
                await self._ask_keys(room, broke)
                if chunk is None:
                    return
                payload = {"room": room.id, "from": chunk.sender, "stream": chunk.stream,
                           "seq": chunk.seq, "key": chunk.key, "ts": chunk.ts,
                           "data": chunk.data}
                # (several workers: this one holds the connection; nothing through redis)
                await self.sio.emit("media", payload, to=peer.sid,
                                    callback=functools.partial(self._media_acked, room.id,
                                                               target, q),
                                    ignore_queue=self.shared)
        except Exception:
            log.exception("error while relaying media")
        finally:
            q.draining = False

    async def _media_acked(self, room_id: str, target: str, q: Any, *_: Any) -> None:
        relay = self.relays.get(room_id)
        if relay is None or relay.receivers.get(target) is not q:
            return
        q.acked()
        room = await self.rooms.room(room_id)
        if room is not None:
            await self._drain(room, relay, target)
