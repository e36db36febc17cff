"""incognito_onion/relay_link.py: the onion media relay's chunks between worker processes.

The message format on made-up input, then two links on a real redis-server (our supervisor's):
a chunk reaches only the workers it is published to, in order, byte for byte; a malformed
message is dropped without stopping the link; and when redis-server is killed (and restarted
by its supervisor) chunks are dropped meanwhile, never raised, and the link subscribes again by
itself.
"""

from __future__ import annotations

import os
import signal

import pytest

from incognito_onion import redis_wire, relay_link
from incognito_onion.media_relay import Chunk
from incognito_onion.relay_link import RelayLink, decode, encode
from incognito_onion.shared_rooms import redis_client
from tests.support.server import until

ROOM = "R" * 22


def chunk(seq: int, key: bool = False, stream: str = "v", size: int = 1000) -> Chunk:
    return Chunk("P" * 16, stream, seq, key, 1.7e12 + seq, bytes([seq % 256, 10, 0]) * size)


def test_a_chunk_survives_the_message_format_byte_for_byte():
    c = chunk(7, key=True)
    room, back = decode(encode(ROOM, c))
    assert room == ROOM and back == c
    # the data goes as it is (a newline in it is no problem), not as base64
    assert len(encode(ROOM, c)) < len(c.data) + 120


@pytest.mark.parametrize("raw", [
    b"no envelope at all",
    b"{not json}\n\x00",
    b'{"r":"R","s":"P","t":"v","q":1,"k":false}\n',  # no ts
    b'{"r":"R","s":"P","t":"x","q":1,"k":false,"ts":1}\n',  # no such stream
    b'{"r":"R","s":"P","t":"a","q":true,"k":false,"ts":1}\n',  # a bool is no seq
    b'{"r":"R","s":"P","t":"a","q":1,"k":1,"ts":1}\n',  # key must be a bool
    b'{"r":"R","s":"P","t":"a","q":1,"k":true,"ts":"now"}\n',
    b'{"r":1,"s":"P","t":"a","q":1,"k":true,"ts":1}\n',
    b'[1,2]\n',
])
def test_anything_else_on_the_channel_is_a_value_error(raw):
    with pytest.raises(ValueError):
        decode(raw)


@pytest.fixture
async def links(redis_sup):
    got: dict[str, list[tuple[str, Chunk]]] = {"w0": [], "w1": []}
    made = []
    for node in got:
        async def deliver(room, c, node=node):
            got[node].append((room, c))
        link = RelayLink(redis_sup.url, node, deliver)
        await link.start()
        made.append(link)
    try:
        await until(lambda: all(link.subscriptions == 1 for link in made),
                       what="both links subscribed")
        yield made, got
    finally:
        for link in made:
            await link.close()


async def test_chunks_reach_the_named_workers_only_in_order(links):
    (w0, w1), got = links
    for i in range(50):
        await w0.publish(["w1", "w0"], ROOM, chunk(i, key=i == 0))  # never to itself
    await until(lambda: len(got["w1"]) >= 50, what="50 chunks on w1")
    assert [c.seq for _, c in got["w1"]] == list(range(50))
    assert got["w1"][3] == (ROOM, chunk(3))
    assert got["w0"] == [] and w0.published == 50 and w1.received == 50


async def test_a_malformed_message_is_dropped_and_the_link_goes_on(links, caplog):
    (w0, w1), got = links
    r = redis_client(w0.url, decode=False)
    await r.publish(relay_link.channel("w1"), b"\xff garbage")
    await r.aclose()
    await w0.publish(["w1"], ROOM, chunk(1))
    await until(lambda: got["w1"], what="the chunk after the garbage")
    assert got["w1"] == [(ROOM, chunk(1))]
    assert "malformed media message" in caplog.text


async def test_the_link_comes_back_by_itself_after_redis_restarts(links, redis_sup):
    (w0, w1), got = links
    old = redis_sup.pid
    os.kill(old, signal.SIGKILL)
    await until(lambda: redis_sup.restarts == 1 and redis_sup.pid not in (None, old),
                   what="redis-server restarted by its supervisor")
    # meanwhile chunks are dropped, never raised
    await w0.publish(["w1"], ROOM, chunk(1))
    await until(lambda: w1.subscriptions == 2, timeout=5 * redis_wire.RETRY_SECONDS + 10,
                   what="the link subscribed again")
    got["w1"].clear()
    await w0.publish(["w1"], ROOM, chunk(2))
    await until(lambda: got["w1"], what="a chunk after the restart")
    assert got["w1"] == [(ROOM, chunk(2))]
