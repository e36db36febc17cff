from pathlib import Path

import pytest

from incognito_onion.protocol import EVENTS, parse, utf8_len_over
from incognito_onion.rooms import RoomError

ROOM = "A" * 22
PEER = "b" * 16


def code(event, *args, limit=100):
    with pytest.raises(RoomError) as exc:
        parse(event, args, limit)
    return exc.value.code


def test_valid_events_parse():
    assert parse("create", (), 100) == ("create", {})
    assert parse("join", ({"room": ROOM, "meta": "m", "x": 1},), 100) == (
        "join", {"room": ROOM, "meta": "m"})
    assert parse("connection", ({"room": ROOM, "to": PEER, "data": "d"},), 100)[1]["to"] == PEER
    assert parse("lock", ({"room": ROOM, "locked": False},), 100)[1]["locked"] is False


@pytest.mark.parametrize("event,args,expected", [
    ("nope", ({},), "unknown_event"),
    (123, ({},), "unknown_event"),
    ("join", ("x",), "bad_request"),
    ("join", ({},), "bad_request"),
    ("join", ({"room": "short"},), "bad_request"),
    ("join", ({"room": ROOM}, {"room": ROOM}), "bad_request"),
    ("message", ({"room": ROOM, "data": b"bytes"},), "bad_request"),
    ("message", ({"room": ROOM, "data": 5},), "bad_request"),
    ("message", ({"room": ROOM, "data": "x" * 101},), "payload_too_large"),
    ("message", ({"room": ROOM, "data": "é" * 51},), "payload_too_large"),
    ("connection", ({"room": ROOM, "to": "../../", "data": "x"},), "bad_request"),
    ("lock", ({"room": ROOM, "locked": "yes"},), "bad_request"),
    ("remove", ({"room": ROOM, "peer": ["x"]},), "bad_request"),
    ("join", ({"room": ROOM, "resume": 7},), "bad_request"),
])
def test_malformed_events_are_refused_with_a_code(event, args, expected):
    assert code(event, *args) == expected


def test_every_documented_event_is_known():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    for name in EVENTS:
        assert f"`{name}`" in doc


def test_utf8_length():
    assert not utf8_len_over("a" * 10, 10)
    assert utf8_len_over("a" * 11, 10)
    assert utf8_len_over("€" * 4, 10)  # 12 bytes
    assert not utf8_len_over("€" * 3, 10)
