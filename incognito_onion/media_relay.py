"""The onion media relay's routing logic, with no socket.io in it (docs/protocol.md, "Media
relay"). Pure and clock-injected, so it is unit-tested without a network.

A *sender* feeds encrypted WebM chunks of two streams, ``a`` (audio) and ``v`` (video). A chunk
marked ``key`` starts a new recording (a fresh WebM init segment and a key frame); every other
chunk only makes sense after all earlier chunks of its stream since that key chunk. The relay
never looks inside ``data``: it sees only the envelope (sender, stream, seq, key, size).

Each *receiver* (a participant who announced that it needs the relay) has a bounded queue:

- at most ``window`` chunks are in flight (sent and not yet acknowledged by the receiver), so a
  slow link never fills kernel or proxy buffers with media that would arrive late;
- at most ``max_chunks`` wait in the queue; beyond that, and for anything older than
  ``max_delay`` seconds, chunks are dropped: video before audio, stale non-key chunks first;
- dropping a chunk makes the rest of that stream useless until its next key chunk, so those are
  dropped too and the stream is marked *broken* for that receiver; the caller then asks the
  sender for a new key chunk (at most once per ``key_interval`` per stream);
- audio goes out before video.

A room has a bandwidth cap (bytes relayed out per second, all receivers together): video over
the cap is dropped (and the stream asks for a key chunk); audio may overdraw the cap by up to
one second's worth, so sound keeps priority.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

STREAMS = ("a", "v")
StreamKey = tuple[str, str]  # (sender peer id, stream)


@dataclass(slots=True)
class Chunk:
    sender: str
    stream: str  # "a" or "v"
    seq: int
    key: bool
    ts: float  # the sender's timestamp (ms), passed through untouched
    data: bytes
    arrived: float = 0.0  # server clock

    @property
    def skey(self) -> StreamKey:
        return (self.sender, self.stream)


@dataclass
class ReceiverQueue:
    """One receiver's queue. ``pop`` hands out what to send now; ``acked`` frees a slot."""

    max_chunks: int = 24
    max_delay: float = 1.2
    window: int = 4
    queue: deque[Chunk] = field(default_factory=deque)
    in_flight: int = 0
    broken: set[StreamKey] = field(default_factory=set)
    dropped: int = 0
    sent: int = 0
    draining: bool = False
    # the senders this receiver wants (None: all). A WebRTC participant wants only the peers
    # that have no WebRTC; the others reach it directly.
    only: frozenset[str] | None = None

    def push(self, chunk: Chunk) -> set[StreamKey]:
        """Queues ``chunk``; returns the streams that just broke (they need a key chunk)."""
        sk = chunk.skey
        if sk in self.broken and not chunk.key:
            self.dropped += 1
            return {sk}  # still waiting for a key chunk: ask again (the caller throttles)
        newly: set[StreamKey] = set()
        if chunk.key:
            self.broken.discard(sk)
            # a new recording supersedes whatever of the old one still waits
            before = len(self.queue)
            self.queue = deque(c for c in self.queue if c.skey != sk)
            self.dropped += before - len(self.queue)
        self.queue.append(chunk)
        while len(self.queue) > self.max_chunks:
            newly |= self._evict(self._victim())
        return newly

    def pop(self, now: float) -> tuple[Chunk | None, set[StreamKey]]:
        """The next chunk to send (or None: window full or nothing queued), and the streams
        that broke because stale chunks were dropped on the way."""
        newly: set[StreamKey] = set()
        while True:
            stale = next((i for i, c in enumerate(self.queue)
                          if now - c.arrived > self.max_delay), None)
            if stale is None:
                break
            newly |= self._evict(stale)
        if self.in_flight >= self.window or not self.queue:
            return None, newly
        idx = next((i for i, c in enumerate(self.queue) if c.stream == "a"), 0)
        chunk = self.queue[idx]
        del self.queue[idx]
        self.in_flight += 1
        self.sent += 1
        return chunk, newly

    def acked(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def reset_flight(self) -> None:
        """The receiver's connection was replaced (resume): acks of the old one never come."""
        self.in_flight = 0

    def break_stream(self, sk: StreamKey) -> bool:
        """Drops what waits of a stream and marks it broken (e.g. the room cap dropped one of
        its chunks). Returns True if it was not broken before."""
        before = len(self.queue)
        self.queue = deque(c for c in self.queue if c.skey != sk)
        self.dropped += before - len(self.queue)
        if sk in self.broken:
            return False
        self.broken.add(sk)
        return True

    def forget(self, sender: str) -> None:
        """A sender left: drop its chunks and state."""
        self.queue = deque(c for c in self.queue if c.sender != sender)
        self.broken = {sk for sk in self.broken if sk[0] != sender}

    def _victim(self) -> int:
        """Which chunk to drop when the queue is over its bound: the oldest non-key video chunk,
        else the oldest video chunk, else the oldest non-key audio chunk, else the oldest."""
        for want in ((lambda c: c.stream == "v" and not c.key), (lambda c: c.stream == "v"),
                     (lambda c: not c.key)):
            idx = next((i for i, c in enumerate(self.queue) if want(c)), None)
            if idx is not None:
                return idx
        return 0

    def _evict(self, idx: int) -> set[StreamKey]:
        """Drops chunk ``idx`` and the chunks of its stream after it up to the next key chunk
        of that stream; if no key chunk follows, the stream is broken."""
        victim = self.queue[idx]
        sk = victim.skey
        keep: deque[Chunk] = deque()
        dropping = True
        for i, c in enumerate(self.queue):
            if i < idx or c.skey != sk:
                keep.append(c)
            elif i == idx:
                continue
            elif dropping and c.key:
                dropping = False
                keep.append(c)
            elif dropping:
                continue
            else:
                keep.append(c)
        self.dropped += len(self.queue) - len(keep)
        self.queue = keep
        if dropping and sk not in self.broken:
            self.broken.add(sk)
            return {sk}
        return set()


class ByteBucket:
    """``rate`` bytes per second, ``burst`` bytes at once; may be overdrawn down to ``-burst``."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, n: float, overdraw: bool = False) -> bool:
        self._refill()
        floor = -self.burst if overdraw else 0.0
        if self.tokens - n >= floor:
            self.tokens -= n
            return True
        return False


@dataclass
class Routed:
    """What :meth:`RoomRelay.route` decided: receivers to drain, and key chunks to ask for
    (sender, stream)."""

    receivers: list[str] = field(default_factory=list)
    key_requests: set[StreamKey] = field(default_factory=set)
    capped: bool = False


class RoomRelay:
    """The relay state of one room: its receivers' queues and its bandwidth cap."""

    def __init__(self, *, room_kbps: int, max_chunks: int, max_delay: float, window: int,
                 key_interval: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.max_chunks = max_chunks
        self.max_delay = max_delay
        self.window = window
        self.key_interval = key_interval
        rate = room_kbps * 1000 / 8
        self.cap = ByteBucket(rate, rate, clock)  # one second's worth at once
        self.receivers: dict[str, ReceiverQueue] = {}
        self._key_asked: dict[StreamKey, float] = {}
        self.capped = 0

    def add_receiver(self, peer: str, only: frozenset[str] | None = None) -> ReceiverQueue:
        """Makes ``peer`` a receiver of every sender's media, or of ``only`` those senders'."""
        q = self.receivers.get(peer)
        if q is None:
            q = self.receivers[peer] = ReceiverQueue(self.max_chunks, self.max_delay, self.window)
        if only is not None and q.only != only:
            for sender in {c.sender for c in q.queue} - only:
                q.forget(sender)
        q.only = only
        return q

    def stop_receiving(self, peer: str) -> bool:
        """``peer`` no longer receives (its own chunks still go to the others)."""
        return self.receivers.pop(peer, None) is not None

    def wants(self) -> dict[str, frozenset[str] | None]:
        """Each receiver -> the senders it wants (None: all), for ``media/receivers``."""
        return {p: q.only for p, q in self.receivers.items()}

    def remove_peer(self, peer: str) -> bool:
        """A peer left (or stopped receiving): returns True if it was a receiver."""
        was = self.receivers.pop(peer, None) is not None
        for q in self.receivers.values():
            q.forget(peer)
        for sk in [sk for sk in self._key_asked if sk[0] == peer]:
            del self._key_asked[sk]
        return was

    def targets(self, sender: str) -> list[str]:
        return [p for p, q in self.receivers.items()
                if p != sender and (q.only is None or sender in q.only)]

    def route(self, chunk: Chunk) -> Routed:
        """Queues ``chunk`` for every receiver but its sender, within the room's cap."""
        chunk.arrived = self.clock()
        out = Routed(receivers=self.targets(chunk.sender))
        if not out.receivers:
            return out
        cost = len(chunk.data) * len(out.receivers)
        if not self.cap.take(cost, overdraw=chunk.stream == "a"):
            self.capped += 1
            out.capped = True
            for peer in out.receivers:
                self.receivers[peer].break_stream(chunk.skey)
            out.key_requests.add(chunk.skey)
            out.key_requests = self._throttle(out.key_requests)
            return out
        for peer in out.receivers:
            out.key_requests |= self.receivers[peer].push(chunk)
        out.key_requests = self._throttle(out.key_requests)
        return out

    def pop(self, peer: str) -> tuple[Chunk | None, set[StreamKey]]:
        q = self.receivers.get(peer)
        if q is None:
            return None, set()
        chunk, broke = q.pop(self.clock())
        return chunk, self._throttle(broke)

    def want_key(self, sk: StreamKey) -> bool:
        """Whether a key request for stream ``sk`` may go out now (one per ``key_interval``)."""
        return bool(self._throttle({sk}))

    def _throttle(self, sks: set[StreamKey]) -> set[StreamKey]:
        now = self.clock()
        out = set()
        for sk in sks:
            if now - self._key_asked.get(sk, float("-inf")) >= self.key_interval:
                self._key_asked[sk] = now
                out.add(sk)
        return out
