"""Benchmark: the Python cost of relaying one message, without sockets. Not a test: it prints
numbers.

    .venv/bin/python bench/relay_path.py [--messages 50000] [--rooms-of 4] [--size 256]
                                         [--repeat 5] [--refused] [--json]

End to end (``relay_load.py``) a small change to the hot path hides in a shared machine's
noise (±5 % CPU between identical runs on the 2-core machines these sessions get). This drives
the server's own code in one process, on uvloop as ``up`` runs it: a real ``Signaling`` (its
``GuardedServer``, ``FastManager`` and room registry) whose engine.io sockets are stand-ins that
take each packet the way the fast WebSocket loop does (``fastpath.ws_frame`` builds the frame)
and keep it instead of writing it. Each message is the text frame a browser sends (``42`` +
``["message",{room,data}]`` with an ack id), handed to the engine.io ``message`` handler as
``fastpath._serve`` hands it (to ``Signaling.quick_event`` first): parse, checks, rate limit,
room look-up, the emit to the room's other members, the ack. What it leaves out: reading and
writing sockets (a quarter to a third of the server's CPU under relay load, the kernel's) and
the event loop's wake-ups.

Prints CPU µs per message (process time, the best of ``--repeat`` runs) and messages/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from incognito_onion import fastpath, runtime  # noqa: E402
from incognito_onion.config import load  # noqa: E402
from incognito_onion.signaling import Signaling  # noqa: E402


class StandInSocket:
    """What FastManager.emit and the ack see of an engine.io socket the fast loop runs."""

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.closed = False
        self.frames = 0
        setattr(self, fastpath._SEND_NOW, self._send_now)

    def _send_now(self, pkt: Any) -> bool:
        fastpath.ws_frame(pkt)
        self.frames += 1
        return True


async def _setup(rooms_of: int, rooms: int) -> tuple[Signaling, list[tuple[str, str]]]:
    """A Signaling with ``rooms`` rooms of ``rooms_of`` stand-in connections each; returns the
    senders: (engine.io sid, room id), one per room."""
    cfg = load(path=None, env={}, overrides={"limits.events_per_second": 1e5,
                                             "limits.event_burst": 10**6})
    sig = Signaling(cfg)
    sio = sig.sio
    senders = []
    for r in range(rooms):
        room = ""
        for k in range(rooms_of):
            eio_sid = f"e{r}-{k}"
            sio.eio.sockets[eio_sid] = StandInSocket(eio_sid)
            sid = await sio.manager.connect(eio_sid, "/")
            await sig._on_connect(sid, {"HTTP_HOST": "127.0.0.1"})
            if k == 0:
                reply = await sig._on_event("create", sid, {})
                room = reply["room"]
                senders.append((eio_sid, room))
            else:
                reply = await sig._on_event("join", sid, {"room": room})
            assert reply["ok"], reply
    return sig, senders


async def _run(messages: int, rooms_of: int, size: int, repeat: int,
               refused: bool = False) -> dict[str, Any]:
    rooms = 64
    sig, senders = await _setup(rooms_of, rooms)
    handler = sig.sio.eio.handlers["message"]
    # tried first, as fastpath._serve does (None: INCOGNITO_RUNTIME_OFF=quickrelay)
    quick = getattr(sig.sio.eio, fastpath.QUICK_EVENT_ATTR, None)
    # refused: each sender names the next sender's room, which it is not in (not_in_room: an
    # error event and the ack); else its own room (the 3 others and the ack)
    frames = [f'2{n}["message",'
              f'{json.dumps({"room": senders[(n + refused) % rooms][1], "data": "x" * size})}]'
              for n in range(rooms)]
    for sock in sig.sio.eio.sockets.values():
        sock.frames = 0  # the setup's own (welcomes, arrivals)
    per_run = []
    for _ in range(repeat):
        t0 = time.process_time()
        for i in range(messages):
            k = i % rooms
            taken = quick(senders[k][0], frames[k]) if quick is not None else False
            if taken is False:
                await handler(senders[k][0], frames[k])
            elif taken is not True:
                await taken
        per_run.append((time.process_time() - t0) / messages)
    sent = sum(s.frames for s in sig.sio.eio.sockets.values())
    # rooms_of - 1 deliveries and one ack each, or an error event and the ack
    expected = repeat * messages * (2 if refused else rooms_of)
    assert sent == expected, (sent, expected)
    best = min(per_run)
    return {"messages": messages, "rooms_of": rooms_of, "size": size, "repeat": repeat,
            "refused": refused,
            "us_per_message": round(best * 1e6, 2),
            "us_per_message_runs": [round(x * 1e6, 2) for x in per_run],
            "messages_per_s": round(1 / best), "knobs_off": sorted(runtime.disabled())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=50_000, help="messages per run")
    ap.add_argument("--rooms-of", type=int, default=4, help="connections per room")
    ap.add_argument("--size", type=int, default=256, help="characters of data per message")
    ap.add_argument("--repeat", type=int, default=5, help="runs; the best is reported")
    ap.add_argument("--refused", action="store_true",
                    help="messages to a room the sender is not in: the cost of a refusal")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args()
    runtime.tune_gc()
    result = runtime.run(_run(args.messages, args.rooms_of, args.size, args.repeat,
                              args.refused))
    if args.json:
        print(json.dumps(result))
        return
    what = "refusal path" if args.refused else "relay path"
    print(f"{what} (no sockets): {result['us_per_message']} µs CPU per message, best of "
          f"{args.repeat} (runs: {result['us_per_message_runs']}); "
          f"{result['messages_per_s']} messages/s on one core; rooms of {args.rooms_of}, "
          f"{args.size}-char data; knobs off: {result['knobs_off'] or 'none'}")


if __name__ == "__main__":
    main()
