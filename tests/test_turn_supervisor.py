"""The supervised coturn, for real: credentials, TLS, restarts, errors, logs, cleanup."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import ssl
import time

import pytest
from aioice import stun

from incognito_onion.turn import (
    CoturnSupervisor,
    TurnBinaryMissing,
    TurnConfigError,
    TurnStartError,
    issue,
)
from incognito_onion.turn.client import TurnClient, TurnClientError
from incognito_onion.turn.supervisor import exposed_udp_ports, scrub
from tests.support.coturn import (
    aioice_allocation,
    exchange,
    free_tcp_port,
    make_turn_config,
    turn_error_code,
)

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def _refused(sup, username: str, password: str) -> int | None:
    with pytest.raises(stun.TransactionFailed) as info:
        await aioice_allocation(sup.probe_host, sup.port, username, password)
    return turn_error_code(info.value)


async def test_real_turn_client_credentials(coturn):
    fresh = issue(coturn.secret, "alice", ttl=60)
    transport, _ = await aioice_allocation(coturn.probe_host, coturn.port, fresh.username,
                                           fresh.password)
    try:
        host, port = transport.get_extra_info("sockname")
        assert host == coturn.cfg.turn.relay_ip and port > 0
        assert coturn.cfg.turn.min_port <= port <= coturn.cfg.turn.max_port
    finally:
        transport.close()

    expired = issue(coturn.secret, "alice", ttl=60, now=time.time() - 120)
    assert await _refused(coturn, expired.username, expired.password) == 401
    wrong = issue("not-the-secret", "alice", ttl=60)
    assert await _refused(coturn, wrong.username, wrong.password) == 401
    # the right HMAC for another username is no good either
    assert await _refused(coturn, "9999999999:mallory", fresh.password) == 401


async def test_ice_servers_from_the_supervisor_work(coturn):
    servers = coturn.ice_servers("bob")
    assert servers[0]["urls"] == [f"turn:127.0.0.1:{coturn.port}?transport=tcp"]
    transport, _ = await aioice_allocation(coturn.probe_host, coturn.port,
                                           servers[0]["username"], servers[0]["credential"])
    transport.close()


async def test_ice_provider_for_signaling(coturn):
    ice = coturn.ice("dave", "abc.onion:80", now=1000)
    assert ice["iceTransportPolicy"] == "relay" and ice["iceExpires"] == 1000 + 3600
    (server,) = ice["iceServers"]
    assert server["urls"] == [f"turn:abc.onion:{coturn.port}?transport=tcp"]
    assert server["username"] == "4600:dave"
    assert coturn.ice("dave", "[::1]:8080", port=3478)["iceServers"][0]["urls"] == [
        "turn:[::1]:3478?transport=tcp"]


async def test_two_allocations_relay_to_each_other(coturn):
    cred = issue(coturn.secret, "p", ttl=60)
    ta, pa = await aioice_allocation(coturn.probe_host, coturn.port, cred.username,
                                     cred.password)
    tb, pb = await aioice_allocation(coturn.probe_host, coturn.port, cred.username,
                                     cred.password)
    try:
        ra, rb = ta.get_extra_info("sockname"), tb.get_extra_info("sockname")
        assert ra != rb and ra[0] == rb[0] == coturn.cfg.turn.relay_ip
        await exchange(ta, pa, tb, pb)
    finally:
        ta.close()
        tb.close()


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.0.0.3", "10.0.0.1", "192.168.1.1", "172.16.0.1",
                                  "100.64.0.1", "169.254.169.254", "0.0.0.0", "8.8.8.8"])
async def test_loopback_relay_reaches_nothing_but_itself(coturn, peer):
    cred = issue(coturn.secret, "p", ttl=60)
    async with TurnClient(coturn.probe_host, coturn.port, cred.username, cred.password) as c:
        await c.allocate()
        with pytest.raises(TurnClientError) as info:
            await c.create_permission(peer, 53)
        assert info.value.code == 403


async def test_dedicated_loopback_relay_address(coturn_factory):
    # relay on 127.0.0.2: services bound to 127.0.0.1 are out of reach, allocations still meet
    sup = await coturn_factory(make_turn_config(relay_ip="127.0.0.2"))
    cred = issue(sup.secret, "p", ttl=60)
    ta, pa = await aioice_allocation(sup.probe_host, sup.port, cred.username, cred.password)
    tb, pb = await aioice_allocation(sup.probe_host, sup.port, cred.username, cred.password)
    try:
        assert ta.get_extra_info("sockname")[0] == tb.get_extra_info("sockname")[0] == "127.0.0.2"
        await exchange(ta, pa, tb, pb)
    finally:
        ta.close()
        tb.close()
    async with TurnClient(sup.probe_host, sup.port, cred.username, cred.password) as c:
        await c.allocate()
        with pytest.raises(TurnClientError) as info:
            await c.create_permission("127.0.0.1", 53)
        assert info.value.code == 403


@pytest.mark.faults
async def test_kill_coturn_it_is_back_within_2s(coturn):
    old = coturn.pid
    cred = issue(coturn.secret, "p", ttl=60)
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    # a new allocation succeeds as soon as coturn is back; try until it does (2 s budget)
    while True:
        try:
            transport, _ = await aioice_allocation(coturn.probe_host, coturn.port,
                                                   cred.username, cred.password, timeout=0.5)
            break
        except (TimeoutError, OSError, stun.TransactionError):
            assert time.monotonic() - t0 < 2.0, "coturn not back within 2 s"
            await asyncio.sleep(0.02)
    back = time.monotonic() - t0
    transport.close()
    assert back < 2.0
    await coturn.wait_ready(1)
    assert coturn.pid and coturn.pid != old and not _alive(old)
    # warnings (e.g. another process's UDP socket seen at start) may come in between
    events = [e for e in coturn.events if e.kind != "warning"]
    kinds = [e.kind for e in events]
    assert kinds[:3] == ["started", "exited", "restarted"], kinds
    exited = events[1]
    assert exited.returncode == -signal.SIGKILL and "SIGKILL" in exited.message
    assert coturn.restarts == 1


async def test_restarts_back_off(coturn_factory):
    sup = await coturn_factory(backoff_initial=0.05)
    for _ in range(3):
        pid = sup.pid
        os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(_until(lambda p=pid: sup.pid not in (None, p) and sup.ready), 5)
    delays = [e.delay for e in sup.events if e.kind == "exited"]
    assert delays == [0.05, 0.1, 0.2], delays


async def _until(cond):
    while not cond():
        await asyncio.sleep(0.01)


async def test_stop_stops_by_pid_and_removes_config(coturn_factory, tmp_path):
    sup = await coturn_factory()
    pid, conf = sup.pid, sup.conf_path
    assert conf.exists()
    await sup.stop()
    assert not _alive(pid)
    assert not conf.exists()
    assert sup.events[-1].kind == "stopped"


async def test_async_with_and_coroutine_callback(tmp_path):
    seen = []

    async def on_event(event):
        if event.kind != "warning":  # environment-dependent (see test_turn_browsers)
            seen.append(event.kind)

    async with CoturnSupervisor(make_turn_config(), tmp_path / "s", on_event=on_event) as sup:
        pid = sup.pid
        assert pid and sup.ready
    assert not _alive(pid)
    assert seen == ["started", "stopped"]


async def test_config_file_is_private_and_secret_fresh_per_run(coturn_factory):
    a = await coturn_factory()
    b = await coturn_factory()
    assert a.secret != b.secret and len(a.secret) >= 40
    st = a.conf_path.stat()
    assert st.st_mode & 0o777 == 0o600
    assert f"static-auth-secret={a.secret}" in a.conf_path.read_text()
    assert a.conf_path.parent.stat().st_mode & 0o777 == 0o700
    assert not (a.state_dir / "turn-secret").exists()


async def test_persisted_secret_survives_restart(tmp_path):
    cfg = make_turn_config(persist_secret=True)
    async with CoturnSupervisor(cfg, tmp_path / "s") as sup:
        first = sup.secret
    path = tmp_path / "s" / "turn-secret"
    assert path.stat().st_mode & 0o777 == 0o600
    async with CoturnSupervisor(cfg, tmp_path / "s") as sup:
        assert sup.secret == first
        cred = issue(first, "p", ttl=60)
        transport, _ = await aioice_allocation(sup.probe_host, sup.port, cred.username,
                                               cred.password)
        transport.close()


async def test_tls_listener_with_generated_certificate(coturn_factory):
    sup = await coturn_factory(make_turn_config(tls_port=free_tcp_port()))
    cert, key = sup.state_dir / "turn-tls.crt", sup.state_dir / "turn-tls.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert sup.tls_fingerprint and len(sup.tls_fingerprint.split(":")) == 32
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False  # the generated certificate names "incognito-onion"
    cred = issue(sup.secret, "p", ttl=60)
    transport, _ = await aioice_allocation(sup.probe_host, sup.tls_port, cred.username,
                                           cred.password, ssl=ctx)
    transport.close()
    assert sup.urls("x.onion")[1] == f"turns:x.onion:{sup.tls_port}?transport=tcp"
    warning = [e.message for e in sup.events if e.kind == "warning" and "self-signed" in e.message]
    assert warning and sup.tls_fingerprint in warning[0] and "turn.tls_cert" in warning[0]


async def test_bad_tls_files_are_a_clear_error(tmp_path):
    bad = tmp_path / "c.pem"
    bad.write_text("not a certificate")
    cfg = make_turn_config(tls_port=free_tcp_port(), tls_cert=str(bad), tls_key=str(bad))
    with pytest.raises(TurnConfigError, match="turn.tls_cert: .* is not a PEM certificate"):
        await CoturnSupervisor(cfg, tmp_path / "s").start()


async def test_missing_binary_names_the_package(tmp_path):
    cfg = make_turn_config(binary="turnserver-not-installed")
    with pytest.raises(TurnBinaryMissing) as info:
        await CoturnSupervisor(cfg, tmp_path / "s").start()
    msg = str(info.value)
    assert "coturn" in msg and "apt-get install coturn" in msg and "\n" not in msg


async def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        cfg = make_turn_config(port=s.getsockname()[1])
        with pytest.raises(TurnConfigError, match="already in use"):
            await CoturnSupervisor(cfg, tmp_path / "s").start()


async def test_child_that_exits_at_start_is_reported(tmp_path):
    cfg = make_turn_config(binary="false")
    with pytest.raises(TurnStartError, match="exited at start"):
        await CoturnSupervisor(cfg, tmp_path / "s", ready_timeout=5).start()


async def test_child_that_never_serves_times_out(tmp_path):
    script = tmp_path / "fake-turnserver"
    script.write_text("#!/bin/sh\necho 'ERROR: nothing to see'\nexec sleep 30\n")
    script.chmod(0o755)
    sup = CoturnSupervisor(make_turn_config(binary=str(script)), tmp_path / "s",
                           ready_timeout=0.5)
    with pytest.raises(TurnStartError, match=r"did not serve TURN .*within 0.5 s.*nothing to see"):
        await sup.start()
    assert sup.pid is None  # the fake was stopped


async def test_disabled_does_nothing(tmp_path):
    sup = CoturnSupervisor(make_turn_config(enabled=False), tmp_path / "s")
    await sup.start()
    assert sup.pid is None and sup.ice_servers("p") == []
    assert sup.ice("p", "h") == {"iceServers": [], "iceTransportPolicy": "all",
                                 "iceExpires": None}
    await sup.stop()


async def test_logs_mask_peer_addresses(coturn_factory, caplog):
    caplog.set_level(logging.DEBUG, logger="incognito_onion.turn")
    sup = await coturn_factory(verbose=True)  # per-session lines, which carry addresses
    cred = issue(sup.secret, "carol", ttl=60)
    transport, _ = await aioice_allocation(sup.probe_host, sup.port, cred.username,
                                           cred.password)
    inner = transport._TurnTransport__inner_protocol.transport
    client_port = inner.get_extra_info("sockname")[1]
    transport.close()
    wrong = issue("nope", "carol", ttl=60)
    with pytest.raises(stun.TransactionFailed):
        await aioice_allocation(sup.probe_host, sup.port, wrong.username, wrong.password)
    await asyncio.wait_for(_until(lambda: any("session" in r.getMessage()
                                              for r in caplog.records)), 5)
    coturn_lines = [r for r in caplog.records if r.getMessage().startswith("coturn: ")]
    assert any("<addr>" in r.getMessage() for r in coturn_lines)
    for r in coturn_lines:  # masked at every level, so at info and above too
        text = r.getMessage()
        assert str(client_port) not in text, text
        assert "carol" not in text, text
        assert not re.search(r"\d+\.\d+\.\d+\.\d+", text), text
    # client-caused lines (bad credentials) never reach warning level
    assert not [r for r in coturn_lines if r.levelno >= logging.WARNING
                and "credentials" in r.getMessage()]


def test_scrub():
    assert scrub("remote 192.168.1.9:5000 x") == "remote <addr> x"
    assert scrub("peer [2001:db8::1]:3478") == "peer <addr>"
    assert scrub("peer fe80::1%eth0 denied") == "peer <addr> denied"
    assert scrub("realm <r> user <1700000000:abc>: x") == "realm <r> user <…>: x"
    assert scrub("Version Coturn-4.6.1 'Gorst'") == "Version Coturn-4.6.1 'Gorst'"


async def test_exposed_udp_ports_are_reported(coturn_factory):
    cfg = make_turn_config()
    relay = cfg.turn.relay_ip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((relay, 0))
        port = s.getsockname()[1]
        assert port in exposed_udp_ports(relay, cfg.turn.min_port, cfg.turn.max_port)
        assert port not in exposed_udp_ports(relay, port, port)  # inside the relay range
        assert port not in exposed_udp_ports("127.0.0.9", 1, 2)  # bound elsewhere
        sup = await coturn_factory(cfg)
        warnings = [e.message for e in sup.events if e.kind == "warning"]
        assert warnings and str(port) in warnings[0] and "turn.relay_ip" in warnings[0]


async def test_second_run_on_the_same_state_dir_is_refused(coturn):
    cfg = make_turn_config()  # other ports, same state dir
    with pytest.raises(TurnConfigError, match="another process .* runs coturn"):
        await CoturnSupervisor(cfg, coturn.state_dir).start()
    assert coturn.pid and _alive(coturn.pid)


@pytest.mark.faults
async def test_coturn_orphaned_by_a_crashed_run_is_replaced(tmp_path):
    cfg = make_turn_config()
    state = tmp_path / "s"
    async with CoturnSupervisor(cfg, state) as sup:
        conf = sup.conf_path.read_text()
    # what a crashed run leaves: its coturn, reparented to init, with our config and pidfile
    sup.conf_path.write_text(conf)
    sup.conf_path.chmod(0o600)
    sup.pidfile.unlink()
    os.system(f"sh -c 'turnserver -c {sup.conf_path} >/dev/null 2>&1 &'")
    await asyncio.wait_for(_until(lambda: sup.pidfile.exists()
                                  and sup.pidfile.read_text().strip().isdigit()), 5)
    orphan = int(sup.pidfile.read_text())
    try:
        async with CoturnSupervisor(cfg, state) as again:
            assert again.pid != orphan and not _alive(orphan)
    finally:
        if _alive(orphan):
            os.kill(orphan, signal.SIGKILL)
