"""The production peer rules with the relay on a real (non-loopback) address: coturn runs in a
network namespace of its own, its relay address on a veth, and we talk to it from here."""

from __future__ import annotations

import asyncio

import pytest

from incognito_onion.turn import issue
from incognito_onion.turn.client import TurnClient, TurnClientError
from tests.support.coturn import aioice_allocation, exchange, make_turn_config, turn_error_code

pytestmark = pytest.mark.slow

PRIVATE = ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1",
           "169.254.169.254", "0.0.0.0", "192.0.0.1", "198.18.0.1"]


async def _start(coturn_factory, netns, relay_ip):
    cfg = make_turn_config(listen_ip=relay_ip, relay_ip=relay_ip)
    return await coturn_factory(cfg, command_prefix=netns.exec_prefix)


async def _permission(sup, peer: str) -> int:
    """0 when CreatePermission for ``peer`` succeeds, else the STUN error code."""
    cred = issue(sup.secret, "p", ttl=60)
    async with TurnClient(sup.probe_host, sup.port, cred.username, cred.password) as c:
        await c.allocate()
        try:
            await c.create_permission(peer, 9)
        except TurnClientError as exc:
            return exc.code
        return 0


async def _relay_between_two_allocations(sup):
    cred = issue(sup.secret, "p", ttl=60)
    ta, pa = await aioice_allocation(sup.probe_host, sup.port, cred.username, cred.password)
    tb, pb = await aioice_allocation(sup.probe_host, sup.port, cred.username, cred.password)
    try:
        assert ta.get_extra_info("sockname")[0] == tb.get_extra_info("sockname")[0] \
            == sup.relay_ip
        await exchange(ta, pa, tb, pb)
    finally:
        ta.close()
        tb.close()


async def test_private_relay_refuses_every_other_address(coturn_factory, netns):
    sup = await _start(coturn_factory, netns, netns.inner_ip)
    # the namespace's side of the veth: a real private address, not loopback
    await _relay_between_two_allocations(sup)
    for peer in [*PRIVATE, netns.outer_ip, "8.8.8.8"]:
        assert await _permission(sup, peer) == 403, peer
    # aioice's path (ChannelBind on the first send) is refused the same way
    cred = issue(sup.secret, "p", ttl=60)
    t, p = await aioice_allocation(sup.probe_host, sup.port, cred.username, cred.password)
    try:
        t.sendto(b"x", (netns.outer_ip, 53))
        err = await asyncio.wait_for(p.errors.get(), 5)
        assert turn_error_code(err) == 403
    finally:
        t.close()


async def test_public_relay_refuses_private_ranges_allows_public_peers(coturn_factory, netns):
    public = "11.22.33.44"  # a public address, reachable only inside this namespace
    netns.add_address(public)
    sup = await _start(coturn_factory, netns, public)
    await _relay_between_two_allocations(sup)
    for peer in [*PRIVATE, netns.inner_ip, netns.outer_ip]:
        assert await _permission(sup, peer) == 403, peer
    # the special-range deny list must not catch ordinary public IPv4 peers
    assert await _permission(sup, "11.22.33.45") == 0
    assert await _permission(sup, "8.8.8.8") == 0
