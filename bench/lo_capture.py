"""How long relayed messages stay in the server, from the kernel's timestamps on loopback.

End-to-end relay latency (``relay_load.py``) also holds the load generators' own delays: at
1000 clients x 1 msg/s the generators' loop stalls (``lag p99``) are as large as the p99
itself, so which server has the lower p99 is decided by the generators more than by the
servers. This captures the packets to and from the server's port on ``lo`` (an AF_PACKET
socket, kernel timestamps: root or CAP_NET_RAW) and pairs each relayed ``message`` coming in
with the copies going out to the room (by the 24-character head every generator message
starts with): the time a message spends in the server, its process and the kernel's loopback
path in and out, the same for any server.

Run by ``relay_load.py --residence`` for its measured window; alone::

    python bench/lo_capture.py --port 8080 --seconds 20

WebSocket frames are parsed per TCP segment; a frame split across segments is skipped (at
light load a message is one segment; the count of skipped frames is reported).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import socket
import struct
import sys
import threading
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
SO_ATTACH_FILTER = 26
HEAD_CHARS = 24
_DATA_KEY = b'"data":"'


def ws_payloads(data: bytes) -> tuple[list[bytes], int]:
    """The payloads of the whole WebSocket frames in ``data`` (unmasked), and how many bytes
    at the end did not make a whole frame."""
    out: list[bytes] = []
    i, n = 0, len(data)
    while i + 2 <= n:
        b1 = data[i + 1]
        length = b1 & 0x7F
        j = i + 2
        if length == 126:
            if j + 2 > n:
                break
            length = struct.unpack_from("!H", data, j)[0]
            j += 2
        elif length == 127:
            if j + 8 > n:
                break
            length = struct.unpack_from("!Q", data, j)[0]
            j += 8
        mask = None
        if b1 & 0x80:
            if j + 4 > n:
                break
            mask = data[j:j + 4]
            j += 4
        if j + length > n:
            break
        payload = data[j:j + length]
        if mask is not None:
            key = (mask * (length // 4 + 1))[:length]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(
                length, "big")
        out.append(payload)
        i = j + length
    return out, n - i


def message_head(payload: bytes) -> bytes | None:
    """The generator's 24-character head of a socket.io ``message`` event's data, if any."""
    if not payload.startswith(b"42") or b'"message"' not in payload[:40]:
        return None
    k = payload.find(_DATA_KEY)
    if k < 0:
        return None
    head = payload[k + len(_DATA_KEY):k + len(_DATA_KEY) + HEAD_CHARS]
    return head if len(head) == HEAD_CHARS else None


def tcp_segment(frame: bytes) -> tuple[int, int, bytes] | None:
    """(source port, destination port, payload) of an Ethernet/IPv4/TCP frame, or None."""
    if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
        return None
    ip = 14
    ihl = (frame[ip] & 0x0F) * 4
    if frame[ip + 9] != 6:
        return None
    total = struct.unpack_from("!H", frame, ip + 2)[0]
    tcp = ip + ihl
    sport, dport = struct.unpack_from("!HH", frame, tcp)
    off = (frame[tcp + 12] >> 4) * 4
    return sport, dport, frame[tcp + off:ip + total]


def port_filter(port: int) -> list[tuple[int, int, int, int]]:
    """A classic BPF program for an AF_PACKET socket on lo: IPv4 TCP segments to or from
    ``port`` that carry data, each once (not the OUTGOING copy loopback also shows). In the
    kernel, so that the capture does not spend a Python call on each ACK, each duplicate and
    everyone else's traffic: it would load the machine it measures."""
    drop, accept = 21, 20
    prog = [
        (0x20, 0, 0, 0xFFFFF004),  # 0: A = packet type (SKF_AD_OFF + SKF_AD_PKTTYPE)
        (0x15, drop - 2, 0, PACKET_OUTGOING),  # 1
        (0x28, 0, 0, 12),  # 2: ethertype
        (0x15, 0, drop - 4, 0x0800),  # 3
        (0x30, 0, 0, 23),  # 4: IP protocol
        (0x15, 0, drop - 6, 6),  # 5: TCP
        (0x28, 0, 0, 20),  # 6: fragment offset
        (0x45, drop - 8, 0, 0x1FFF),  # 7
        (0xB1, 0, 0, 14),  # 8: X = IP header length
        (0x48, 0, 0, 14),  # 9: source port
        (0x15, 13 - 11, 0, port),  # 10
        (0x48, 0, 0, 16),  # 11: destination port
        (0x15, 0, drop - 13, port),  # 12
        (0x50, 0, 0, 26),  # 13: TCP data offset
        (0x74, 0, 0, 4),  # 14: >> 4
        (0x64, 0, 0, 2),  # 15: << 2 (bytes)
        (0x0C, 0, 0, 0),  # 16: + IP header length
        (0x07, 0, 0, 0),  # 17: X = A (both headers)
        (0x28, 0, 0, 16),  # 18: IP total length
        (0x2D, accept - 20, drop - 20, 0),  # 19: more than the headers: data
        (0x06, 0, 0, 0xFFFF),  # 20: accept
        (0x06, 0, 0, 0),  # 21: drop
    ]
    return prog


def queueing(spans: list[tuple[int, int]]) -> dict:
    """Whether the slow messages waited behind others or alone. ``spans``: (in, last copy
    out) per message. A message's *ahead* is how many messages came in before it and had
    not all gone out when it came in. The tail (the slowest 1 %) made of messages with none
    ahead is the server's own wake-up and scheduling, or a pause; with many ahead it is
    queueing, where the cost per message decides."""
    import heapq
    order = sorted(spans)
    ends: list[int] = []
    ahead: list[int] = []
    for t_in, t_out in order:
        while ends and ends[0] <= t_in:
            heapq.heappop(ends)
        ahead.append(len(ends))
        heapq.heappush(ends, t_out)
    if not order:
        return {"tail": 0}
    took = sorted(t_out - t_in for t_in, t_out in order)
    cut = took[int(len(took) * 0.99)]
    tail = [a for (t_in, t_out), a in zip(order, ahead) if t_out - t_in >= cut]
    tail.sort()
    return {"tail": len(tail), "tail_alone_share": round(sum(a == 0 for a in tail) / len(tail), 3),
            "tail_ahead_p50": tail[len(tail) // 2], "tail_ahead_max": tail[-1],
            "all_alone_share": round(sum(a == 0 for a in ahead) / len(ahead), 3)}


def capture(port: int, seconds: float, expect_copies: int,
            ready: threading.Event | None = None, stop: threading.Event | None = None) -> dict:
    """Captures ``seconds`` of the server's traffic on ``port`` (or until ``stop`` is set;
    ``ready`` is set once capturing) and returns the residence statistics (ms): to the first
    copy out and to the last of ``expect_copies``."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # no packets until bound
    prog = port_filter(port)
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("HL", len(prog), ctypes.addressof(code)))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 2**20)
    sock.bind(("lo", ETH_P_ALL))  # CPython applies htons to it
    sock.settimeout(0.2)
    if ready is not None:
        ready.set()
    came: dict[bytes, int] = {}
    went: dict[bytes, list[int]] = {}
    split = segments = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            try:
                frame, anc, _, addr = sock.recvmsg(65600, 64)
            except TimeoutError:
                continue
            if addr[2] == PACKET_OUTGOING:  # loopback: each packet is seen out and in
                continue
            seg = tcp_segment(frame)
            if seg is None or not seg[2]:
                continue
            sport, dport, data = seg
            if port not in (sport, dport):
                continue
            ts = 0
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    ts = sec * 1_000_000_000 + nsec
            segments += 1
            payloads, rest = ws_payloads(data)
            split += rest > 0
            for payload in payloads:
                head = message_head(payload)
                if head is None:
                    continue
                if dport == port:
                    came.setdefault(head, ts)
                else:
                    went.setdefault(head, []).append(ts)
    finally:
        sock.close()
    first: list[float] = []
    last: list[float] = []
    spans: list[tuple[int, int]] = []
    for head, t_in in came.items():
        outs = went.get(head)
        if outs and len(outs) == expect_copies:
            first.append((min(outs) - t_in) / 1e6)
            last.append((max(outs) - t_in) / 1e6)
            spans.append((t_in, max(outs)))

    def stats(xs: list[float]) -> dict:
        xs.sort()
        if not xs:
            return {"p50": None, "p99": None, "max": None}
        return {"p50": round(xs[len(xs) // 2], 4), "p99": round(xs[int(len(xs) * 0.99)], 4),
                "max": round(xs[-1], 4)}

    return {"messages": len(first), "seen_in": len(came), "segments": segments,
            "segments_with_a_split_frame": split, "first_copy_ms": stats(first),
            "last_copy_ms": stats(last), "queueing": queueing(spans)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True, help="the server's TCP port on 127.0.0.1")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--copies", type=int, default=3,
                    help="copies a message makes (room size - 1; default 3)")
    args = ap.parse_args(argv)
    try:
        result = capture(args.port, args.seconds, args.copies)
    except PermissionError:
        print(json.dumps({"error": "needs root or CAP_NET_RAW (an AF_PACKET socket on lo)"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
