"""bench/lo_capture.py: the WebSocket and packet parsing on made-up bytes, and one live
capture of a loopback exchange (an AF_PACKET socket: root or CAP_NET_RAW)."""

import importlib.util
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAD = b"AbCdEfGhIjKlMnOpQrStUvWx"  # a generator message's 24-character head


def _lo_capture():
    spec = importlib.util.spec_from_file_location("lo_capture", REPO / "bench" / "lo_capture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _frame(payload: bytes, masked: bool) -> bytes:
    n = len(payload)
    head = bytes([0x81]) + (bytes([n | (0x80 if masked else 0)]) if n < 126 else
                            bytes([126 | (0x80 if masked else 0)]) + struct.pack("!H", n))
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _message(room: str = "r", pad: int = 10) -> bytes:
    return b'421["message",{"room":"' + room.encode() + b'","data":"' + HEAD + b"x" * pad + b'"}]'


def test_whole_frames_are_read_unmasked_and_a_split_one_is_counted():
    lc = _lo_capture()
    big = _message(pad=300)  # a 16-bit length
    data = _frame(_message(), True) + _frame(big, False) + _frame(b"2", False)
    payloads, rest = lc.ws_payloads(data)
    assert payloads == [_message(), big, b"2"] and rest == 0
    cut = _frame(big, True)[:-5]
    payloads, rest = lc.ws_payloads(_frame(b"3", True) + cut)
    assert payloads == [b"3"] and rest == len(cut)


def test_the_head_of_a_message_event_and_nothing_else():
    lc = _lo_capture()
    assert lc.message_head(_message()) == HEAD
    assert lc.message_head(b'42["message",{"room":"r","from":"p","data":"' + HEAD + b'"}]') == HEAD
    assert lc.message_head(b'42["connection",{"data":"' + HEAD + b'"}]') is None
    assert lc.message_head(b'431[{"ok":true}]') is None
    assert lc.message_head(b'42["message",{"data":"short"}]') is None


def test_a_tcp_segment_s_ports_and_data():
    lc = _lo_capture()
    tcp = struct.pack("!HHIIBBHHH", 40000, 8080, 0, 0, 5 << 4, 0x18, 0, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + 5, 0, 0, 64, 6, 0,
                     b"\x7f\0\0\1", b"\x7f\0\0\1")
    eth = b"\0" * 12 + b"\x08\x00"
    assert lc.tcp_segment(eth + ip + tcp + b"hello" + b"\0" * 4) == (40000, 8080, b"hello")
    udp_ip = ip[:9] + b"\x11" + ip[10:]
    assert lc.tcp_segment(eth + udp_ip + tcp + b"hello") is None


def test_a_relayed_message_s_time_in_a_loopback_server_is_measured():
    """A fake server on 127.0.0.1 holds a masked message ~20 ms before sending its one copy
    back: the capture pairs them and measures at least the hold."""
    lc = _lo_capture()
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except PermissionError:
        pytest.skip("an AF_PACKET socket needs root or CAP_NET_RAW")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    ready, stop, result = threading.Event(), threading.Event(), {}
    t = threading.Thread(target=lambda: result.update(lc.capture(port, 30, 1, ready, stop)))
    t.start()
    try:
        assert ready.wait(10)
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
        client.sendall(_frame(_message(), True))
        got = b""
        while len(got) < len(_frame(_message(), True)):
            got += conn.recv(4096)
        held = time.monotonic()
        time.sleep(0.02)  # the server's residence, to be measured
        held = time.monotonic() - held
        conn.sendall(_frame(_message(), False))
        assert client.recv(4096)
        client.close()
        conn.close()
    finally:
        stop.set()
        t.join(10)
        srv.close()
    assert result["messages"] == 1 and result["seen_in"] == 1, result
    assert held * 1e3 <= result["first_copy_ms"]["p50"] < held * 1e3 + 50, (held, result)


def test_the_slowest_messages_are_told_apart_as_queued_or_alone():
    lc = _lo_capture()
    # 200 messages alone, 0.1 ms each, one slow one alone; then a burst of 3 where the last
    # waits behind the first two
    spans = [(i * 1000, i * 1000 + 100) for i in range(200)]
    spans.append((300_000, 305_000))  # alone and slow: the server's own delay
    spans += [(400_000, 404_000), (400_010, 404_500), (400_020, 405_000)]
    q = lc.queueing(spans)
    assert q["tail"] == 3  # the slowest 1 % of 204: >= the 202nd fastest (4.5 ms)
    assert q["tail_alone_share"] == round(1 / 3, 3)
    assert q["tail_ahead_p50"] == 1 and q["tail_ahead_max"] == 2
    assert q["all_alone_share"] == round(202 / 204, 3)
    assert lc.queueing([]) == {"tail": 0}
