"""Cheaper paths through python-socketio/python-engineio for the relay's hot loop (issue 8).

Emits
-----
``socketio.AsyncManager.emit`` sends an event to each recipient in a task of its own
(``asyncio.create_task`` per recipient, then ``asyncio.wait`` on them all): for a message
relayed to a room of 4 that is 3 tasks, 3 futures and a wait, which under relay load made
``create_task``/``wait`` some of the hottest code of the server. Sending to a recipient is
putting an already-encoded packet on its unbounded engine.io queue, which never blocks, so
:class:`FastManager` does the same sends one after the other in the emitting coroutine: the
same packets in the same order, the event encoded once per emit as before.

Only emits without an ack callback take this path (``callback`` emits go through the
library's, unchanged). A recipient that cannot be sent to (its socket closed meanwhile) is
skipped, like the library's tasks did, and never fails the emit for the others.

The WebSocket loop
------------------
engine.io's WebSocket handler (``AsyncSocket._websocket_handler``) reads every frame through
``asyncio.wait_for(ensure_future(ws.wait()), ping_interval + ping_timeout)`` and its writer
waits for every batch through ``asyncio.wait_for(queue.get(), ...)``: per frame in each
direction a task, a future, a timer and their callbacks, ~17 % of the server's CPU under relay
load once uvloop had made the rest cheap. :func:`websocket_handler` runs the same loop (a
connection that opened as a WebSocket; an upgrade from long-polling keeps the library's) with
the read timeout kept by one lazily re-armed timer: a frame costs a clock read. Past that:

- a packet is written straight to the socket by the coroutine sending it whenever that keeps
  the order and cannot wait (see :func:`_serve`), instead of a queue put and a wake-up of the
  connection's writer task per frame; the writer still takes what cannot go straight;
- the frames one connection is sent within one turn of the loop leave in one write, made by
  one callback for every connection at the start of the next turn (knob ``coalesce``): a
  write is a syscall, the largest single cost per frame. While the server is idle between
  frames, or at light load for a connection sent nothing lately, the first of them leaves at
  once: there is nothing to join it with; in a long turn that joins little, what was
  gathered leaves after ``FLUSH_AFTER``;
- a connection at a modest rate that fell behind a busy server has up to
  ``FRAMES_PER_TURN`` of its already-received frames handled in a row (knob ``batchread``),
  ``DEEP_PER_TURN`` once far behind, a burst or a flood one per turn: each turn costs a task
  step through the request's whole coroutine stack;
- while the connection's task waits with nothing to read, the frames just parsed are handled
  in aiohttp's read callback (knob ``syncread``) as that task, without a wake-up of it per
  frame; what must wait goes back to the task (see ``on_parsed`` in :func:`_serve`);
- a text MESSAGE frame (every socket.io packet) goes to engine.io's ``message`` handler without
  an engine.io ``Packet``, whose decode first tried the text as JSON;
- engine.io's pings run on a timer per connection, not a task sleeping out each interval;
- a frame read while a ping waits for its pong gives the pong ``ping_timeout`` from then (once
  per ping, as Node's engine.io does): a busy client's pong queues behind its other frames;
  nor is a pong overdue while anything the client sent waits unread on our side (it may be
  there).

What happens on a timeout, a close, a too-large frame, an error is what the library does. One
addition: a connection that sends frames faster than its budget (``FRAME_BUDGET_ATTR``, set by
``Signaling`` well above what its event rate limit lets through) is read at low priority, so a
flood delays the flooder, not everyone else.

Together with ``signaling.GuardedServer._plain_event`` (socket.io events on ``/`` without the
library's packet objects) this took the server's CPU at 1000 relaying clients from 33 % to
~20 % of a core, and its saturation throughput from ~27 000 to ~72 000 deliveries/s
(bench/README.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import importlib.metadata
import inspect
import struct
import termios
import time
from collections.abc import Callable, Coroutine
from typing import Any

import engineio
import socketio
from aiohttp import WSMsgType
from aiohttp.web import WebSocketResponse
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket
from socketio import packet as sio_packet

from . import runtime
from .limits import TokenBucket, TurnDelay


def has_binary(data: Any) -> bool:
    """Whether ``data`` holds bytes anywhere (socket.io then sends it as a binary event):
    ``socketio.packet.Packet.data_is_binary``, which builds a list per level and never stops
    early, was a few per cent of the relay's CPU."""
    t = type(data)
    if t is str or t is int or t is float or t is bool or data is None:
        return False  # the common leaves, without the isinstance checks below
    if isinstance(data, dict):
        items = data.values()
    elif isinstance(data, list):
        items = data
    else:
        return isinstance(data, (bytes, bytearray))
    for x in items:  # a loop, not any() over a generator: a relayed event is a dict of str
        t = type(x)
        if t is str or t is int or t is float or t is bool or x is None:
            continue
        if has_binary(x):
            return True
    return False


def plain_packet(packet_type: int, data: list, json: Any, id: int | None = None) -> str | None:
    """The socket.io packet ``packet_type`` (EVENT or ACK) on ``/`` carrying ``data``, as
    ``socketio.packet.Packet(...).encode()`` gives it, without building the packet and its
    binary scan; None when ``data`` holds bytes (a binary packet: the library's to build).
    With the orjson codec, orjson's own refusal of bytes is the scan (``dumps_plain``): most
    packets hold none, and walking them first was the largest self time of a refusal."""
    head = str(packet_type) if id is None else f"{packet_type}{id}"
    plain = getattr(json, "dumps_plain", None)
    if plain is not None:
        text = plain(data)
        if text is not None:
            return head + text
    if has_binary(data):
        return None
    return head + json.dumps(data, separators=(",", ":"))


class FastManager(socketio.AsyncManager):
    """``socketio.AsyncManager`` whose callback-less emits run without a task per recipient;
    :meth:`emit_now` is the same emit without a coroutine, for the relay's synchronous path
    (``Signaling.quick_event``)."""

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None,
                   **kwargs: Any) -> None:
        if callback is not None:
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                               callback=callback, to=to, **kwargs)
            return
        rest = self.emit_now(event, data, namespace, to or room, skip_sid)
        if rest is not None:
            await rest

    def emit_now(self, event: str, data: Any, namespace: str, room: Any,
                 skip_sid: Any = None) -> Coroutine[Any, Any, None] | None:
        """Sends the event to ``room`` (a room name or a sid) at once where the fast WebSocket
        loop takes the packets (:func:`send_now`); returns the coroutine of the sends that
        have to wait (recipients off that loop, or whose socket is closing), to await in
        order, or None when everything went."""
        if namespace not in self.rooms:
            return None
        if isinstance(data, tuple):  # a tuple is several arguments, anything else one
            args = list(data)
        elif data is not None:
            args = [data]
        else:
            args = []
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        if type(room) is str:
            # get_participants without its copy and generator: the list is built at once
            members = self.rooms.get(namespace, {}).get(room)
            members = getattr(members, "_fwdm", members) or {}  # bidict's plain dict
            recipients = [eio_sid for sid, eio_sid in members.items() if sid not in skip]
        else:
            recipients = [eio_sid for sid, eio_sid in self.get_participants(namespace, room)
                          if sid not in skip]
        if not recipients:
            return None
        data = [event, *args]
        plain = (plain_packet(sio_packet.EVENT, data, self.server.packet_class.json)
                 if namespace == "/" else None)
        if plain is not None:
            encoded = [plain]
        else:
            encoded = self.server.packet_class(sio_packet.EVENT, namespace=namespace,
                                               data=data).encode()
            if not isinstance(encoded, list):
                encoded = [encoded]
        eio_pkts = [eio_packet.Packet(eio_packet.MESSAGE, p) for p in encoded]
        sockets = self.server.eio.sockets
        waiting: list[tuple[str, Any, list[eio_packet.Packet]]] | None = None
        for eio_sid in recipients:
            sock = sockets.get(eio_sid)
            fast = (sock.__dict__.get(_SEND_NOW)
                    if sock is not None and not sock.closed else None)
            for i, p in enumerate(eio_pkts):
                if fast is None or not fast(p):
                    # this packet and the ones after it the library's way (a socket gone or
                    # closed: the library's path says so)
                    waiting = waiting or []
                    waiting.append((eio_sid, sock, eio_pkts[i:]))
                    break
        return None if waiting is None else self._send_waiting(waiting)

    async def _send_waiting(self, waiting: list[tuple[str, Any, list[eio_packet.Packet]]]
                            ) -> None:
        """The sends :meth:`emit_now` could not make at once, one recipient after the other
        (AsyncServer._send_eio_packet -> send_packet -> socket.send less two calls)."""
        for eio_sid, sock, pkts in waiting:
            for p in pkts:
                try:
                    if sock is None or sock.closed:
                        await self.server._send_eio_packet(eio_sid, p)
                    else:
                        await sock.send(p)
                except eio_exceptions.SocketIsClosedError:
                    break  # closing: the library's task would have failed the same way
                except Exception:  # never the other recipients' problem
                    with contextlib.suppress(Exception):
                        self.server.logger.exception("emit to one recipient failed")
                    break


#: turns of the engine.io service task (:class:`ServiceSlicedServer`) per ping_timeout
SERVICE_SLICES = 24


class ServiceSlicedServer(engineio.AsyncServer):
    """``engineio.AsyncServer`` whose service task (the sweep that drops clients whose pong is
    overdue and forgets closed sockets) goes through the clients in SERVICE_SLICES slices per
    ``ping_timeout``. The library's waits ``ping_timeout / len(sockets)`` between two clients,
    each wait an ``asyncio.wait_for`` (a task, a timer, a ``TimeoutError`` raised and caught):
    ~330 a second at 2000 clients, for a sweep that looks at each client once per
    ping_timeout either way."""

    async def _service_task(self) -> None:
        loop = asyncio.get_running_loop()
        self.service_task_event = self.create_event()
        stop = self.service_task_event
        while not stop.is_set():
            pause = self.ping_timeout / (SERVICE_SLICES if self.sockets else 1)
            try:
                clients = list(self.sockets.values())
                per_slice = max(1, -(-len(clients) // SERVICE_SLICES))
                for start in range(0, max(len(clients), 1), per_slice):
                    for sock in clients[start:start + per_slice]:
                        if sock.closed:
                            self.sockets.pop(sock.sid, None)
                        elif not sock.closing:
                            await sock.check_ping_timeout()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=pause)
                    if stop.is_set():
                        break
            except (SystemExit, KeyboardInterrupt, asyncio.CancelledError, GeneratorExit):
                self.logger.info("service task canceled")
                break
            except Exception:
                if loop.is_closed():
                    self.logger.info("event loop is closed, exiting service task")
                    break
                self.logger.exception("service task exception")


def fast_manager() -> FastManager | None:
    """The client manager for a one-process server: :class:`FastManager`, or ``None`` (the
    library's default) when ``INCOGNITO_RUNTIME_OFF`` turns ``fastemit`` off."""
    return FastManager() if runtime.enabled("fastemit") else None


# -- the engine.io WebSocket loop ----------------------------------------------------------------

def _engineio_version() -> str:
    try:
        return importlib.metadata.version("python-engineio")
    except importlib.metadata.PackageNotFoundError:
        return ""


#: the engine.io server attribute holding ``(frames per second, burst)`` of one connection
#: beyond which its frames are read at low priority (set by :class:`Signaling`)
FRAME_BUDGET_ATTR = "incognito_frame_budget"
#: the engine.io server attribute holding a synchronous handler of socket.io packets (set by
#: ``Signaling``: its relayed events), tried before engine.io's ``message`` handler:
#: ``quick(eio_sid, text)`` returns False having done nothing (the ``message`` handler's then),
#: True when it handled the packet, or the coroutine of the rest of its handling, which waits
QUICK_EVENT_ATTR = "incognito_quick_event"
#: turns of the event loop a connection over its frame budget waits before its next frame
LOW_PRIORITY_TURNS = 8
_LOW_WAIT = TurnDelay()  # one wake-up per wait, not a task step per turn
#: refused events (errors) that use up a connection's whole frame burst (:func:`charge_refusal`)
REFUSALS_PER_BURST = 16
#: the share of its frame burst a new connection starts with (the rest earned at the budget's
#: rate): an honest client opens with a few dozen frames (create or join, SDP, ICE), while a
#: connection opened to flood or guess has, with its refusals charged, run out after a handful
#: (test_attack's 100 clients bursting refused events at once, each with a whole burst, were
#: read at full priority for 16 refusals each: the honest pair's p99 tail)
FRESH_BUDGET = 0.25
_BUDGET_KEY = "_incognito_budget"  # the socket's frame budget, for charge_refusal
_SEND_NOW = "_incognito_send_now"  # the socket's send_now while _serve runs it
#: frames of one connection (within its budget) handled in a row before the others get a
#: turn, when more are already received (INCOGNITO_RUNTIME_OFF=batchread: one)
FRAMES_PER_TURN = 16
#: frames handled in a row are for a connection under this fraction (1/N) of its frame budget,
#: earned at that rate from an empty start: a connection that bursts as soon as it opens (many
#: at once made one turn long: test_attack's 100 bursting clients, each FRAMES_PER_TURN in a
#: row, took the honest p99 to ~50-70 ms) has none, one that has kept to a modest rate a while
#: gets up to FRAMES_PER_TURN
BATCH_RATE_DIVISOR = 4
#: nor for a connection with more than this many frames received and waiting: a burst sent
#: at once (many clients bursting together made every turn long) rather than a connection at
#: its own pace that fell behind a busy server
BATCH_MAX_BACKLOG = 2 * FRAMES_PER_TURN
#: frames in a row (within what it earned) for a connection with a deeper backlog: one per
#: turn made such a connection a trap past saturation, where turns come slower than a client
#: at 28 msg/s sends (1 000 clients on 2 cores): once 32 frames behind it fell further behind
#: for good, seconds behind, and was closed with its pong unread (5-15 % of deliveries lost in
#: about half the runs, the max latency 3-8 s); two catch up at the rate the right is earned
#: (BATCH_RATE_DIVISOR), and test_attack's bursts cost the honest p99 nothing measurable
DEEP_PER_TURN = 2

# python-engineio 4 (checked against 4.15's AsyncSocket._websocket_handler); any other major
# version: the library's own loop
_ENGINEIO_OK = _engineio_version().startswith("4.")


class _Deadline:
    """A timeout on the waits of one task, re-armed lazily: ``begin()`` before a wait and
    ``end()`` after it cost a clock read, the timer fires at most once per ``timeout`` and then
    cancels the task only if it has been waiting for ``timeout`` seconds (asyncio.wait_for's
    effect, without its task and timer per wait)."""

    __slots__ = ("loop", "timeout", "task", "since", "waiting", "handle", "expired")

    def __init__(self, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.task = asyncio.current_task()
        self.since = self.loop.time()
        self.waiting = False
        self.expired = False
        self.handle = self.loop.call_at(self.since + timeout, self._check)

    def begin(self) -> None:
        self.since = self.loop.time()
        self.waiting = True

    def end(self) -> None:
        self.waiting = False

    def _check(self) -> None:
        now = self.loop.time()
        due = self.since + self.timeout
        if self.waiting and now >= due:
            self.expired = True
            self.task.cancel()
            return
        self.handle = self.loop.call_at(due if self.waiting else now + self.timeout,
                                        self._check)

    def cancel(self) -> None:
        self.handle.cancel()


#: frames up to this size may be written straight to the socket by the coroutine sending them
#: (see :func:`_serve`); bigger ones (media chunks) go through the writer task
DIRECT_MAX = 16 * 1024


#: direct writes (see :func:`_serve`) while the transport holds less than this unsent; more
#: (a reader slower than what it is sent) and packets wait on the queue for the writer task,
#: which waits for aiohttp's flow control
DIRECT_BUFFERED = 64 * 1024

#: the server is busy when a frame is handled less than BUSY_GAP s after the previous one
#: started (see _serve's put)
BUSY_GAP = 0.0002
#: ... and then, at light load (frames coming on average more than LIGHT_GAP s apart), a frame is
#: gathered for a connection only if it was sent one less than JOIN_WINDOW s before (knob
#: ``joinwindow``): frames further apart hardly ever meet in one turn, so gathering them joins
#: nothing and costs a callback and the rest of a turn's delay. Why: at 1000 clients x 1 msg/s (3
#: frames a second to each connection, plus acks) the generators' frames come in bunches, so the
#: server is often "busy" for a moment, while each message sends its 4 frames to 4 different
#: connections: nothing to join (bench/README.md). Under more load, everything is gathered while
#: busy: there turns last longer, and writing a connection's first frame of a turn at once and the
#: rest at its end (two writes where one did) took the p99 at 1000 x 16 msg/s from 139-164 to
#: 199-287 ms. LIGHT_GAP is BUSY_GAP (under 5 000 frames/s): at 0.4 ms (2 500 frames/s) 1000 x
#: 4 msg/s counted as heavy and gathered everything, and 0.2 ms gave, in 6 alternating pairs
#: there, the lower p50 in 6 (0.37-0.51 against 0.43-0.73 ms), the lower p99 in 4, the same CPU.
LIGHT_GAP = 0.0002
JOIN_WINDOW = 0.02
#: the weight of the latest gap in the moving average of the gaps between frames
GAP_WEIGHT = 1 / 64

#: in a long turn of the loop, the frames gathered so far leave as soon as the first of them
#: has waited FLUSH_AFTER s (checked when the next frame's handling starts) ...
FLUSH_AFTER = 0.001
#: ... as long as gathering joins no more than this many frames per connection so far. Why:
#: at 2000 clients x 4 msg/s the generators' stalls release their sends together, turns of
#: 5-26 ms (p99) handle hundreds of frames, and each connection is sent about one of them:
#: waiting for the end of the turn joined nothing and delayed every delivery by the rest of
#: the turn (p99 2-18 ms). Past saturation a connection is sent many frames per turn, and
#: joining them is what keeps the server up there (bench/README.md): then no early flush.
FLUSH_JOIN = 1.5


class _Load:
    """The whole server's frames as ``_serve``'s ``handle`` sees them start: whether the
    server is busy, whether its load is light (LIGHT_GAP), and a count that tells one frame's
    handling from the next; and the frames gathered this turn (see FLUSH_AFTER): since when,
    and how many."""

    __slots__ = ("last", "busy", "frames", "gathered_at", "gathered", "early", "light")

    def __init__(self) -> None:
        self.last, self.busy, self.frames = 0.0, False, 0
        self.gathered_at, self.gathered = 0.0, 0
        self.light = 1.0  # moving average of the gaps between frames (see LIGHT_GAP)
        self.early = True  # knob earlyflush, read when a connection opens

    def frame(self) -> None:
        now = time.monotonic()
        gap = now - self.last
        self.busy = gap < BUSY_GAP
        self.light += (min(gap, 1.0) - self.light) * GAP_WEIGHT
        self.last = now
        self.frames += 1
        if _flushes and self.early and now - self.gathered_at > FLUSH_AFTER \
                and self.gathered <= FLUSH_JOIN * len(_flushes):
            _flush_all()  # a long turn that joins little: what it gathered goes now


_load = _Load()

#: the connections with frames gathered this turn, for the loop they run on
_flushes: list[Callable[[], None]] = []
_flush_loop: list[asyncio.AbstractEventLoop] = []


def _flush_all() -> None:
    batch = _flushes[:]
    _flushes.clear()
    _load.gathered = 0
    for flush in batch:
        with contextlib.suppress(Exception):  # one broken transport is not the others' problem
            flush()


def _flush_soon(flush: Callable[[], None], loop: asyncio.AbstractEventLoop) -> None:
    """Runs ``flush`` at the start of the next turn of ``loop`` (the running one: passed in,
    because ``asyncio.get_running_loop()`` costs a getpid() per call), with every other
    connection's (one callback for all of them)."""
    if not _flush_loop or _flush_loop[0] is not loop:  # another loop (tests): start afresh
        _flush_loop[:] = [loop]
        _flushes.clear()
    if not _flushes:
        loop.call_soon(_flush_all)  # with nothing gathered by then (an early flush): a no-op
        _load.gathered_at = _load.last
    _flushes.append(flush)


_FRAME = "_incognito_ws_frame"  # a Packet's cached frame: one emit reaches a whole room


def ws_frame(pkt: eio_packet.Packet) -> bytes | None:
    """``pkt`` as an unmasked server WebSocket frame (RFC 6455 5.2, as aiohttp's writer builds
    it), or None when it is over DIRECT_MAX. Kept on the packet, which an emit sends to every
    recipient."""
    frame = pkt.__dict__.get(_FRAME)
    if frame is None:
        data = pkt.encode()
        if type(data) is str:
            data = data.encode()
            opcode = 0x81  # FIN, text
        else:
            opcode = 0x82  # FIN, binary
        n = len(data)
        if n > DIRECT_MAX:
            return None
        frame = (struct.pack("!BB", opcode, n) if n < 126 else
                 struct.pack("!BBH", opcode, 126, n)) + data
        setattr(pkt, _FRAME, frame)
    return frame


def send_now(sock: Any, pkt: eio_packet.Packet) -> bool:
    """Sends ``pkt`` on engine.io socket ``sock`` at once, without the coroutine of its
    ``send``, when :func:`_serve` runs the socket and nothing has to wait (it is open, no pong
    overdue); False, having sent nothing, otherwise: then ``await sock.send(pkt)``. A relay
    sends to every recipient and acks the sender: a coroutine per packet saved."""
    fast = sock.__dict__.get(_SEND_NOW)
    return fast is not None and fast(pkt)


def charge_refusal(eio: Any, eio_sid: str | None) -> None:
    """Charges the connection ``eio_sid`` for a refused event (an error reply) with a share of
    its frame budget (1/``REFUSALS_PER_BURST`` of its burst, into debt of up to one burst).

    Why: a refusal costs the server as much as a relay, and a client whose events keep being
    refused is guessing room ids or flooding rooms it is not in (test_attack's 100 clients
    bursting at once, each within its frame budget, were handled at full priority, one frame
    each per turn, and every honest relay waited behind a hundred error replies). Charged,
    such a client is read at low priority after a handful of refusals; an honest client's
    rare error costs it nothing it would notice. Connections off the fast path: nothing."""
    sock = eio.sockets.get(eio_sid) if eio_sid is not None else None
    budget = getattr(sock, _BUDGET_KEY, None)
    if budget is not None:
        budget.spend(budget.burst / REFUSALS_PER_BURST)


def received_frames(resp: Any) -> collections.deque[Any] | None:
    """The deque of frames aiohttp has received for ``resp`` (a prepared WebSocketResponse)
    and not yet handed out, or None where aiohttp keeps them elsewhere (another version):
    empty means the next ``receive()`` suspends."""
    buffer = getattr(getattr(resp, "_reader", None), "_buffer", None)
    return buffer if isinstance(buffer, collections.deque) else None


def kernel_unread(transport: Any) -> int:
    """Bytes the kernel has received on ``transport``'s socket and nobody has read yet (0 when
    that cannot be known): what a client sent that waits on our side, not on the client's."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError, TypeError):
        return 0
    return struct.unpack("i", buf)[0]


_STOP = object()  # a frame's outcome: the connection ends
_LOW = object()  # its pace: the connection is over its frame budget (low priority)
_YIELD = object()  # its pace: the other connections' turn first
_TEXT, _BINARY = WSMsgType.TEXT, WSMsgType.BINARY
# asyncio's own bookkeeping of the running task (C-accelerated), for on_parsed in _serve;
# private: a Python without them reads in the connection's task (no syncread)
_enter_task = getattr(asyncio.tasks, "_enter_task", None)
_leave_task = getattr(asyncio.tasks, "_leave_task", None)


class _Rest:
    """The rest of a frame's handler that had to wait, for the connection's task to await:
    the coroutine was started by :func:`_serve` outside any task (from the read callback) and
    yielded ``yielded``; awaiting this hands that and what follows to the awaiting task, as
    ``await coro`` would have from the start. Its result is None, or ``_STOP`` when the
    handler's error ends the connection (``failed`` classifies errors, as the library's
    loop does)."""

    __slots__ = ("coro", "yielded", "failed")

    def __init__(self, coro: Any, yielded: Any, failed: Callable[[Exception], Any]) -> None:
        self.coro, self.yielded, self.failed = coro, yielded, failed

    def __await__(self) -> Any:
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                try:
                    sent = yield yielded
                except BaseException as exc:  # thrown in by the task: a cancel
                    yielded = coro.throw(exc)
                else:
                    yielded = coro.send(sent)
            except StopIteration:
                return None
            except Exception as err:
                return self.failed(err)


class _DispatchingParser:
    """Stands in for aiohttp's WebSocket parser on a connection's protocol: parses through
    it, then calls ``after`` (:func:`_serve`'s synchronous read of what was parsed)."""

    __slots__ = ("parser", "after")

    def __init__(self, parser: Any, after: Callable[[], None]) -> None:
        self.parser, self.after = parser, after

    def feed_data(self, data: Any) -> Any:
        result = self.parser.feed_data(data)
        self.after()
        return result

    def feed_eof(self) -> None:
        self.parser.feed_eof()
        self.after()


def _read_now(queue: Any) -> Any:
    """The next message of aiohttp's WebSocketDataQueue ``queue``, which holds one: its
    ``read()`` returns at once then (and keeps the queue's accounting and flow control)."""
    coro = queue.read()
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()  # cannot happen with a message buffered; never leave a read waiting
    raise RuntimeError("WebSocket read would wait")


async def _serve(sock: AsyncSocket, ws: Any) -> None:
    """``AsyncSocket._websocket_handler`` for a connection that opened as a WebSocket.

    Sending: the library puts every packet on the socket's queue and a writer task per
    connection takes it off and writes it: per frame a queue put, a wake-up of that task and
    its deadline. Writing to a transport never blocks (it buffers), so a packet is written right
    away by the coroutine that sends it, when that keeps the order and cannot wait: nothing is
    queued or being written by the writer, the transport's buffer is empty (everything earlier
    is in the kernel) and the frame is small, so that writing it cannot reach aiohttp's flow
    control, which would make the sender (a relay to a whole room) wait for this one reader.
    Anything else goes through the queue and the writer, as in the library; a slow reader thus
    gets its packets queued, never slows the others.
    """
    server = sock.server
    sock.connected = True
    sock.upgraded = True
    timeout = server.ping_interval + server.ping_timeout
    max_size = server.max_http_buffer_size
    queue = sock.queue
    rate_burst = getattr(server, FRAME_BUDGET_ATTR, None)
    budget = TokenBucket(*rate_burst, fill=FRESH_BUDGET) if rate_burst else None
    setattr(sock, _BUDGET_KEY, budget)
    per_turn = FRAMES_PER_TURN if runtime.enabled("batchread") else 1
    deep_per_turn = min(per_turn, DEEP_PER_TURN)  # with more than BATCH_MAX_BACKLOG received
    # frames in a row only for a connection at a modest rate, which is behind because the
    # whole server is busy (many such connections), not because it floods: a flood gets one
    # frame per turn well before it runs out of its budget; earned, not granted (see
    # BATCH_RATE_DIVISOR)
    batch = (TokenBucket(rate_burst[0] / BATCH_RATE_DIVISOR, FRAMES_PER_TURN, fill=0.0)
             if rate_burst and per_turn > 1 else None)
    request = getattr(ws, "environ", {}).get("aiohttp.request")
    transport = conn = getattr(request, "transport", None)
    resp = getattr(ws, "_sock", None)  # the aiohttp WebSocketResponse engine.io's adapter holds
    # what put reads of the queue and of aiohttp's response per frame, without the Python
    # calls of queue.empty() and resp.closed (a few per relayed message): their own state
    queued = getattr(queue, "_queue", None)
    if not isinstance(resp, WebSocketResponse) or resp.compress \
            or type(getattr(resp, "_closed", None)) is not bool \
            or not isinstance(queued, collections.deque):
        # compressed frames (aiohttp's writer keeps the compressor's state), or a library
        # whose queue or response keeps that state elsewhere: everything through the writer
        transport = None
    writing = False  # the writer task is between taking packets off the queue and writing them
    check_ping_timeout = sock.check_ping_timeout
    ping_timeout = server.ping_timeout

    received = received_frames(resp)
    in_a_row = 0  # frames handled since this connection last let the others have a turn
    loop = asyncio.get_running_loop()
    pending: list[bytes] = []  # frames for this turn's one write (see put)
    gather = runtime.enabled("coalesce")
    _load.early = runtime.enabled("earlyflush")
    direct_at = -1  # _load.frames when put last wrote straight away
    sent_at = -1.0  # _load.last when put last took a frame (see JOIN_WINDOW)
    window = JOIN_WINDOW if runtime.enabled("joinwindow") else float("inf")

    def flush() -> None:
        """Writes the frames ``put`` gathered this turn of the loop, in one write."""
        if pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            if not transport.is_closing():
                transport.write(data)

    def put(pkt: eio_packet.Packet) -> None:
        """Writes ``pkt`` now or gathers it for this turn's write, when that keeps the order
        and cannot wait, else queues it for the writer (the queue is unbounded: never waits
        either).

        A write is a syscall (uvloop tries the socket at once); under load a connection is
        sent several frames per turn of the loop (relays from its room, acks, a ping), so they
        are joined and written once, by one callback for every connection at the start of the
        next turn (:func:`_flush_soon`): the delay is the rest of the current turn. Not when
        the server is idle between frames (``_load``): there the first frame a frame's handling
        sends this connection goes out at once, and only what follows it is gathered. Gathering
        everything cost ~0.2 ms of p99 relay latency and 3-5 % more CPU at 1 000 clients
        sending 1 message/s (bench/README.md), where almost every turn writes one frame per
        connection: a callback more per message and the write a turn later, for nothing to
        join. Nor, at light load, for a connection last sent a frame more than JOIN_WINDOW
        before. Nor in a long turn that joins little: there what was gathered leaves once the
        first frame has waited FLUSH_AFTER (``_Load.frame``)."""
        nonlocal direct_at, sent_at
        if pending:
            frame = ws_frame(pkt)
            if frame is not None:
                pending.append(frame)
                _load.gathered += 1
                sent_at = _load.last
                return
            flush()  # a big frame: everything before it first, then the writer's way
        elif not writing and transport is not None and not queued \
                and transport.get_write_buffer_size() < DIRECT_BUFFERED \
                and not transport.is_closing() and not resp._closed:
            frame = ws_frame(pkt)
            if frame is not None:
                last, sent_at = sent_at, _load.last
                if gather and (direct_at == _load.frames
                               or (_load.busy and (_load.light < LIGHT_GAP
                                                   or sent_at - last < window))):
                    pending.append(frame)
                    _load.gathered += 1
                    _flush_soon(flush, loop)
                else:
                    direct_at = _load.frames
                    transport.write(frame)
                return
        queue.put_nowait(pkt)

    def unread_spares() -> bool:
        """The outstanding ping's pong is overdue: True, and the pong due ping_timeout from
        now, if anything the client sent waits unread on our side (parsed by aiohttp, or in
        the kernel), where the pong may be.

        The server, not the client, is late then: this loop reads a busy connection a frame
        or two per turn, one over its budget less often, and a handler that waits holds its
        connection's later frames. Past saturation (1 000 clients x 28 msg/s, 2 cores) a
        connection's reads fell seconds behind, and the server closed it with its pong among
        the ~200 frames it had received and not read: 5-15 % of the deliveries lost in about
        half the runs (bench/README.md). A client that sends nothing and never answers is
        dropped as before, and one that keeps sending but never answers as soon as the server
        has caught up with it.

        The client is sent a ping again, too: the next ping would wait for the pong to be read,
        and engine.io's clients give up on a server whose pings stop for ping_interval +
        ping_timeout. Its answer is one more pong (the first read schedules the next ping, the
        other is ignored)."""
        nonlocal pinged_at
        if received or kernel_unread(conn) > 0:
            sock.last_ping = pinged_at = time.time()
            put(eio_packet.Packet(eio_packet.PING))
            return True
        return False

    def send_now(pkt: eio_packet.Packet) -> bool:
        """``send`` without a coroutine when it needs no wait (see :func:`send_now`): False,
        having sent nothing, when the socket is closed or its pong is overdue."""
        if sock.closed:
            return False
        last_ping = sock.last_ping
        if last_ping and time.time() - last_ping > ping_timeout and not unread_spares():
            return False
        put(pkt)
        return True

    async def checked_ping_timeout() -> bool:
        """``AsyncSocket.check_ping_timeout`` (engine.io's service task and ``send`` call it),
        sparing a client whose pong may wait unread (``unread_spares``)."""
        last_ping = sock.last_ping
        if not sock.closed and last_ping and time.time() - last_ping > ping_timeout:
            unread_spares()
        return await check_ping_timeout()

    async def send(pkt: eio_packet.Packet) -> None:
        # AsyncSocket.send: check_ping_timeout() inline, no debug log line
        if send_now(pkt):
            return
        if sock.closed:
            raise eio_exceptions.SocketIsClosedError()
        await check_ping_timeout()  # closes the socket, as the library's send does
        if sock.closed:
            queue.put_nowait(None)  # and the WebSocket now: the writer closes it

    # engine.io's pings (AsyncSocket.schedule_ping/_send_ping): the same schedule, a timer
    # instead of a task sleeping out the interval, per ping of every connection
    ping_timer: list[asyncio.TimerHandle] = []
    pinged_at = 0.0  # time.time() when this loop last sent a ping (0: not yet)

    refreshed = False  # the outstanding ping's deadline was moved by a frame (see the loop)

    def ping_now() -> None:
        nonlocal refreshed, pinged_at
        ping_timer.clear()
        refreshed = False
        if not sock.closing and not sock.closed:
            sock.last_ping = pinged_at = time.time()
            put(eio_packet.Packet(eio_packet.PING))

    def schedule_ping() -> None:
        """The next ping ping_interval after the last one went out, as engine.io's protocol
        has it, not after its pong was read (the library's): under load a pong read late,
        behind the client's other frames, delayed the next ping by as much, and engine.io's
        clients give up on a server whose pings stop for ping_interval + ping_timeout (a pong
        read 5.9 s late left the client 0.1 s)."""
        last_ping = sock.last_ping
        if last_ping:
            sock.last_ping = None
            since = time.time() - (pinged_at or last_ping)  # the first ping: the library's
            ping_timer.append(loop.call_later(max(0.0, server.ping_interval - since), ping_now))

    async def writer() -> None:
        nonlocal writing
        while True:
            # no deadline of its own here: sends skip the queue, so a quiet queue says nothing;
            # the reader's deadline ends a connection whose client went silent
            first = await queue.get()
            queue.task_done()
            flush()  # gathered before anything queued (put flushes before queueing)
            if first is None:
                break
            packets = [first]
            while not queue.empty():
                pkt = queue.get_nowait()
                queue.task_done()
                if pkt is None:
                    queue.put_nowait(None)
                    break
                packets.append(pkt)
            writing = True
            try:
                for pkt in packets:
                    await ws.send(pkt.encode())
            except Exception:
                break
            finally:
                writing = False
        await ws.close()

    sock.send = send  # type: ignore[method-assign]  # this socket's packets: see above
    sock.check_ping_timeout = checked_ping_timeout  # type: ignore[method-assign]
    setattr(sock, _SEND_NOW, send_now)
    sock.schedule_ping = schedule_ping  # type: ignore[method-assign]
    writer_task = asyncio.ensure_future(writer())
    server.logger.info("%s: Upgrade to websocket successful", sock.sid)
    deadline = _Deadline(timeout)
    on_message = server.handlers.get("message")
    if not inspect.iscoroutinefunction(on_message):
        on_message = None  # the library's path calls it as it should
    quick = getattr(server, QUICK_EVENT_ATTR, None) if on_message is not None else None
    wait = ws.wait
    if isinstance(resp, WebSocketResponse):
        async def wait() -> Any:
            # engine.io's adapter's wait(), one call less
            msg = await resp.receive()
            data = msg.data
            if type(data) is not str and type(data) is not bytes:
                raise OSError()
            return data

    def failed(err: Exception) -> Any:
        """A frame's handler raised ``err``: what the library's loop does about it."""
        if isinstance(err, eio_exceptions.UnknownPacketError):
            return None
        if isinstance(err, eio_exceptions.SocketIsClosedError):
            server.logger.info("Receive error -- socket is closed")
            return _STOP
        server.logger.error("Unknown receive error", exc_info=err)
        return None

    def handle(data: Any) -> Any:
        """Handles one frame as far as it goes without waiting: None when done, ``_STOP``
        when the connection ends, else the :class:`_Rest` of its handler, which waited."""
        nonlocal refreshed
        _load.frame()
        if data is None or len(data) > max_size:
            # closed by the client; too large (the library: ValueError, then the same)
            return _STOP
        if not refreshed and sock.last_ping and data != "3":
            # a frame while a ping waits for its pong: the client is alive, so, like
            # Node's engine.io (once per ping), the pong is due ping_timeout from now.
            # Under load the pong queues behind the client's other frames, in the
            # kernel and in our one-frame-per-turn reads; without this a busy server
            # dropped busy clients whose pongs were merely late.
            sock.last_ping = time.time()
            refreshed = True
        if data == "3":  # PONG: AsyncSocket.receive's, without its debug log line
            schedule_ping()
            return _STOP if sock.closed else None
        try:
            if on_message is not None and type(data) is str and data[:1] == "4":
                # a text MESSAGE (every socket.io packet): AsyncSocket.receive ->
                # server._trigger_event('message') without the Packet, whose decode tries
                # the text as JSON first (socket.io packets are not: they start with a
                # digit), a debug log line and two wrappers; a relayed event without even a
                # coroutine (QUICK_EVENT_ATTR)
                text = data[1:]
                taken = quick(sock.sid, text) if quick is not None else False
                if taken is True:
                    return _STOP if sock.closed else None
                coro = on_message(sock.sid, text) if taken is False else taken
            else:
                coro = sock.receive(eio_packet.Packet(encoded_packet=data))
            # started here, not awaited: most handlers finish without waiting, and then
            # cost no task step (see on_parsed)
            yielded = coro.send(None)
        except StopIteration:
            outcome = None
        except Exception as err:
            outcome = failed(err)
        else:
            return _Rest(coro, yielded, failed)
        # closed by the server meanwhile (a disconnect, a ping timeout found by engine.io's
        # service task): a client that keeps sending would otherwise hold the WebSocket
        # open; the library's writer closed it after its queue wait
        return _STOP if sock.closed else outcome

    def pace() -> Any:
        """After a frame: ``_LOW`` (the connection is over its frame budget: its next frame
        waits LOW_PRIORITY_TURNS turns), ``_YIELD`` (the others' turn first) or None (its
        next frame now, when one is received).

        At most FRAMES_PER_TURN frames per turn of the event loop: a frame already
        buffered is returned without suspending, so a flooding client's backlog would
        otherwise be handled in one go while every other connection waits (handling a
        connection's whole burst in a row took the honest p99 under test_attack's floods
        from ~9 ms to 120-380 ms); one per turn, as the library's task per read gave,
        made every frame of a busy connection pay a turn (a task step through the whole
        request's coroutine stack), the largest cost per frame at saturation once writes
        were coalesced. A connection sending faster than its budget waits
        LOW_PRIORITY_TURNS turns: the loop then serves the connections within theirs
        (honest ones) first, and the flood's frames wait in the kernel's buffers, which
        cost nothing. Nothing received yet (most frames, below saturation): the next read
        suspends and gives everyone else their turn anyway, so no extra turn.

        Every frame read spends the right to frames in a row: a connection read faster
        than BATCH_RATE_DIVISOR allows (a backlog of a burst or a flood worked off one
        per turn) runs out of it, one behind at its modest own pace keeps it."""
        nonlocal in_a_row
        # one clock reading for both buckets (no budget, no batch: none)
        now = budget.clock() if budget is not None else 0.0
        earned = batch is not None and batch.allow(now=now)
        if budget is not None and not budget.allow(now=now):
            in_a_row = 0
            return _LOW
        if received is None:
            return _YIELD
        if received:
            if earned and in_a_row < (per_turn if len(received) <= BATCH_MAX_BACKLOG
                                      else deep_per_turn) - 1:
                in_a_row += 1  # the next one in this turn
                return None
            in_a_row = 0
            return _YIELD
        in_a_row = 0
        return None

    # Reading: with aiohttp's reader (knob syncread), the frames parsed from what the socket
    # just gave are handled right in the read callback while the connection's task waits
    # with nothing to read ("parked"), instead of waking that task for each: per frame a
    # future, a task step through the request's coroutine stack and the reader's, ~1/5 of
    # the cost of a relayed frame. The task takes over (is woken with what to do) for what
    # has to wait or must not run in the callback: a handler that waited (it awaits the
    # rest), the others' turn (pace), close, ping, error and end of stream frames (aiohttp's
    # receive), a closed socket. Frames of one connection are handled in order either way:
    # the callback reads only while the task is parked, and the task parks only when
    # nothing is left to read.
    frames = getattr(resp, "_reader", None)  # aiohttp's queue of parsed frames
    protocol = getattr(request, "protocol", None)
    parser = getattr(protocol, "_payload_parser", None)
    sync = (runtime.enabled("syncread") and _enter_task is not None and _leave_task is not None
            and received is not None and frames is not None
            and parser is not None and parser is getattr(resp, "_parser", None))
    parked: asyncio.Future[Any] | None = None  # the parked task waits on it

    def unpark(why: Any = None) -> None:
        nonlocal parked
        fut, parked = parked, None
        if fut is not None and not fut.done():
            fut.set_result(why)

    task = deadline.task

    def on_parsed() -> None:
        """Handles the frames just parsed while the task is parked (see above), as the
        connection's task: the handlers see it as ``asyncio.current_task()``, as they did
        when it ran them (``asyncio.timeout``, which redis' client uses, needs a task; its
        cancel then reaches the rest of the handler, which that task awaits)."""
        if parked is None:
            return  # the task runs, or will: it reads them
        _enter_task(loop, task)
        try:
            deadline.begin()  # something came: the connection is alive (the wait goes on)
            while received and not resp.closed:  # closed: aiohttp's close reads the rest
                msg = received[0][0]
                if msg.type is not _TEXT and msg.type is not _BINARY:
                    break  # aiohttp's receive handles it
                outcome = handle(_read_now(frames).data)
                if outcome is not None:
                    unpark(outcome)
                    return
                why = pace()
                if why is not None:
                    unpark(why)
                    return
            if received or frames.is_eof() or sock.closed or resp.closed:
                unpark()
        except Exception:
            server.logger.exception("Unknown receive error")
            unpark(_STOP)
        finally:
            _leave_task(loop, task)

    if sync:
        protocol._payload_parser = _DispatchingParser(parser, on_parsed)
    writer_task.add_done_callback(lambda _: unpark(_STOP))  # it ended: it closed the WebSocket

    try:
        while True:
            deadline.begin()
            try:
                woke = (sync and not received and not frames.is_eof() and not resp.closed
                        and not writer_task.done())
                if woke:
                    parked = loop.create_future()
                    data = await parked  # woken by on_parsed with what to do
                else:
                    data = await wait()
            except asyncio.CancelledError:
                # timed out, or cancelled from outside (the server stopping): the library ends
                # the loop either way, and closes below
                if deadline.expired:
                    deadline.task.uncancel()  # ours: the task is not being cancelled
                break
            except Exception:
                break
            finally:
                deadline.end()
                parked = None
            if woke and type(data) is not _Rest:
                if data is _STOP:
                    break
                # the pace of the frames on_parsed handled: the others' turn was this wake-up
                why = None if data is _YIELD else data
            else:
                outcome = data if woke else handle(data)
                if outcome is not None and outcome is not _STOP:
                    outcome = await outcome  # the rest of a handler that waited
                if outcome is _STOP or sock.closed:
                    break
                why = pace()
            if why is _LOW:
                await _LOW_WAIT.turns(LOW_PRIORITY_TURNS)
            elif why is _YIELD:
                await asyncio.sleep(0)
    finally:
        if sync and protocol._payload_parser is not None:
            protocol._payload_parser = parser
        deadline.cancel()
        sock.__dict__.pop("send", None)  # the library's send (the queue) from here on
        sock.__dict__.pop(_SEND_NOW, None)
        sock.__dict__.pop("schedule_ping", None)
        sock.__dict__.pop("check_ping_timeout", None)
        for timer in ping_timer:
            timer.cancel()
    flush()
    await queue.put(None)  # unlock the writer so it can exit
    await writer_task
    await sock.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)


def _supported(handler: Callable[[Any], Any]) -> AsyncSocket | None:
    sock = getattr(handler, "__self__", None)
    if (type(sock) is not AsyncSocket or sock.connected or sock.upgrading
            or getattr(handler, "__func__", None) is not AsyncSocket._websocket_handler
            or not _ENGINEIO_OK):
        return None
    return sock


async def websocket_handler(handler: Callable[[Any], Any], ws: Any) -> None:
    """``await handler(ws)``, where ``handler`` is the engine.io socket's bound
    ``_websocket_handler`` that engine.io gives its WebSocket adapter: through
    :func:`_serve` when this is a connection opened as a WebSocket on a python-engineio 4 socket
    (and ``INCOGNITO_RUNTIME_OFF`` does not name ``fastws``), else the library's own."""
    sock = _supported(handler) if runtime.enabled("fastws") else None
    if sock is None:
        await handler(ws)
    else:
        await _serve(sock, ws)
