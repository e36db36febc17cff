"""Every way tor can fail gives its own error class, exit code and a one-line message (real tor,
no network needed: tors here run with DisableNetwork or point at a dead loopback authority)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import pytest

from incognito_onion import config
from incognito_onion.tor import (
    TorBinaryMissing,
    TorBootstrapTimeout,
    TorControlRefused,
    TorCookieUnreadable,
    TorDied,
    TorLaunchFailed,
    TorPublishTimeout,
    TorService,
    TorTooOld,
    TorWrongPassword,
    attach,
)
from incognito_onion.tor.control import Control, wait_bootstrap
from incognito_onion.tor.onion_key import OnionKey
from incognito_onion.tor.publish import probe_features, publish
from tests.support.tornet import TOR, free_port

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:setDaemon:DeprecationWarning"),
              pytest.mark.timeout(120)]

if not os.path.exists(TOR):
    pytest.skip("tor is not installed", allow_module_level=True)


def make_cfg(tmp_path, **overrides):
    empty = tmp_path / "empty-config.yaml"
    empty.write_text("")
    return config.load(empty, env={}, overrides=overrides)


def dead_network_torrc() -> list[str]:
    """A tor that can only try one authority on a closed loopback port: it never bootstraps and
    never touches anything but 127.0.0.1."""
    port = free_port()
    return ["TestingTorNetwork 1", "ClientUseIPv6 0",
            f"DirAuthority dead orport={port} v3ident={'A' * 40} 127.0.0.1:{port} {'B' * 40}"]


def assert_one_line(err: Exception) -> str:
    text = str(err)
    assert text and "\n" not in text and "Traceback" not in text
    return text


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def start_service(cfg, state_dir, **kw):
    service = TorService(cfg, state_dir, **kw)
    try:
        await service.start()
    finally:
        await service.close()


# -- launch mode ---------------------------------------------------------------------------

async def test_binary_missing(tmp_path):
    cfg = make_cfg(tmp_path, **{"tor.binary": "/nonexistent/tor"})
    with pytest.raises(TorBinaryMissing) as info:
        await start_service(cfg, tmp_path / "state")
    assert "not found" in assert_one_line(info.value) and "apt install tor" in str(info.value)
    assert info.value.exit_code == 21


async def test_binary_missing_from_path(tmp_path, monkeypatch):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    with pytest.raises(TorBinaryMissing, match="not installed .* not on PATH"):
        await start_service(make_cfg(tmp_path), tmp_path / "state")


async def test_binary_too_old(tmp_path):
    fake = tmp_path / "old-tor"
    fake.write_text("#!/bin/sh\necho 'Tor version 0.3.5.8.'\n")
    fake.chmod(0o755)
    with pytest.raises(TorTooOld) as info:
        await start_service(make_cfg(tmp_path, **{"tor.binary": str(fake)}), tmp_path / "s")
    assert "0.3.5.8" in assert_one_line(info.value) and "0.4.6.1" in str(info.value)
    assert info.value.exit_code == 22


async def test_bad_torrc_line_is_tors_own_message(tmp_path):
    cfg = make_cfg(tmp_path, **{"tor.extra_torrc": ["NoSuchOptionAnywhere 1"]})
    with pytest.raises(TorLaunchFailed) as info:
        await start_service(cfg, tmp_path / "state")
    text = assert_one_line(info.value)
    assert "NoSuchOptionAnywhere" in text and text.startswith("tor exited at start: ")
    assert info.value.exit_code == 23


async def test_bootstrap_timeout_names_where_it_is_stuck(tmp_path):
    cfg = make_cfg(tmp_path, **{"tor.extra_torrc": dead_network_torrc(),
                                "tor.bootstrap_timeout": 5})
    progress = []
    t0 = time.monotonic()
    with pytest.raises(TorBootstrapTimeout) as info:
        await start_service(cfg, tmp_path / "state", on_progress=progress.append)
    elapsed = time.monotonic() - t0
    text = assert_one_line(info.value)
    assert "within 5s" in text and f"stuck at {info.value.percent}%" in text
    assert info.value.percent < 100 and progress and progress[-1].percent < 100
    assert info.value.exit_code == 28
    assert 4.5 < elapsed < 20
    tor_log = (tmp_path / "state" / "tor-data" / "tor.log").read_text()
    assert "Bootstrapped" in tor_log


async def test_tor_dying_during_bootstrap(tmp_path):
    pidfile = tmp_path / "tor.pid"
    cfg = make_cfg(tmp_path, **{"tor.extra_torrc": [*dead_network_torrc(), f"PidFile {pidfile}"],
                                "tor.bootstrap_timeout": 60})
    killed = []

    def on_progress(_p):
        if not killed:
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    t0 = time.monotonic()
    with pytest.raises(TorDied) as info:
        await start_service(cfg, tmp_path / "state", on_progress=on_progress)
    assert killed and time.monotonic() - t0 < 20
    assert "killed by signal 9" in assert_one_line(info.value)
    assert info.value.exit_code == 31


async def test_cancelling_start_stops_the_tor_we_launched(tmp_path):
    """Ctrl-C during bootstrap: the tor we started is stopped (by PID), nothing is left."""
    pidfile = tmp_path / "tor.pid"
    cfg = make_cfg(tmp_path, **{"tor.extra_torrc": [*dead_network_torrc(), f"PidFile {pidfile}"],
                                "tor.bootstrap_timeout": 60})
    seen = asyncio.Event()
    service = TorService(cfg, tmp_path / "state", on_progress=lambda p: seen.set())
    task = asyncio.create_task(service.start())
    await asyncio.wait_for(seen.wait(), 30)
    pid = int(pidfile.read_text())
    assert not pid_gone(pid)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await service.close()
    assert pid_gone(pid)


# -- attach mode ---------------------------------------------------------------------------

async def test_control_port_refused(tmp_path):
    port = free_port()
    cfg = make_cfg(tmp_path, **{"tor.control": f"127.0.0.1:{port}"})
    with pytest.raises(TorControlRefused) as info:
        await start_service(cfg, tmp_path / "state")
    assert "connection refused" in assert_one_line(info.value)
    assert info.value.exit_code == 24


async def test_control_socket_missing(tmp_path):
    cfg = make_cfg(tmp_path, **{"tor.control": str(tmp_path / "no-such-socket")})
    with pytest.raises(TorControlRefused, match="no tor control socket"):
        await start_service(cfg, tmp_path / "state")


def test_not_a_tor_control_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer_http():
            conn, _ = server.accept()
            with conn:
                conn.recv(100)
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        import threading
        t = threading.Thread(target=answer_http)
        t.start()
        with pytest.raises(TorControlRefused, match="does not speak tor's control protocol"):
            attach.connect(f"127.0.0.1:{port}", timeout=5)
        t.join(5)

        # something that accepts and never answers: a clear timeout, not a hang
        t0 = time.monotonic()
        with pytest.raises(TorControlRefused, match="did not answer"):
            attach.connect(f"127.0.0.1:{port}", timeout=1)
        assert time.monotonic() - t0 < 5


def test_wrong_and_missing_password(offline_tor):
    node = offline_tor("pw", password="correct horse", cookie=False)
    spec = f"127.0.0.1:{node.control_port}"
    with pytest.raises(TorWrongPassword) as info:
        attach.connect(spec, "wrong")
    assert "refused the password" in assert_one_line(info.value)
    assert info.value.exit_code == 26
    with pytest.raises(TorWrongPassword, match="needs a password"):
        attach.connect(spec, None)
    controller = attach.connect(spec, "correct horse")
    try:
        assert controller.is_authenticated()
    finally:
        controller.close()


def test_unreadable_cookie(offline_tor):
    node = offline_tor("cookie")
    cookie = node.datadir / "control_auth_cookie"
    assert cookie.exists()
    cookie.unlink()
    with pytest.raises(TorCookieUnreadable) as info:
        attach.connect(f"127.0.0.1:{node.control_port}")
    text = assert_one_line(info.value)
    assert str(cookie) in text and "does not exist" in text
    assert info.value.exit_code == 27


async def test_attach_bootstrap_timeout_and_publication_timeout(offline_tor):
    """An attached tor with no network: bootstrap never ends; an onion never gets uploaded."""
    node = offline_tor("nonet")
    controller = await asyncio.to_thread(attach.connect, f"127.0.0.1:{node.control_port}")
    ctl = Control(controller, "tor at test")
    try:
        with pytest.raises(TorBootstrapTimeout, match="within 0.5s: stuck at"):
            await wait_bootstrap(ctl, 0.5)
        features = probe_features(await ctl.version())
        t0 = time.monotonic()
        with pytest.raises(TorPublishTimeout) as info:
            await publish(ctl, OnionKey.generate(), {80: ("127.0.0.1", 1)}, timeout=2,
                          features=features)
        assert 1.9 < time.monotonic() - t0 < 10
        text = assert_one_line(info.value)
        assert "not published within 2s" in text and "tor.publish_timeout" in text
        assert info.value.exit_code == 29
    finally:
        await ctl.close()


async def test_second_tor_on_the_same_state_dir(tmp_path):
    cfg = make_cfg(tmp_path, **{"tor.extra_torrc": dead_network_torrc(),
                                "tor.bootstrap_timeout": 60})
    seen = asyncio.Event()
    first = TorService(cfg, tmp_path / "state", on_progress=lambda p: seen.set())
    task = asyncio.create_task(first.start())
    try:
        await asyncio.wait_for(seen.wait(), 30)
        with pytest.raises(TorLaunchFailed, match="another incognito-onion running"):
            await start_service(cfg, tmp_path / "state")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await first.close()


def test_attach_through_a_control_socket(offline_tor):
    node = offline_tor("sock", control_socket=True)
    sock = node.datadir / "control.sock"
    controller = attach.connect(str(sock))
    try:
        assert controller.is_authenticated()
        assert controller.get_info("version")
    finally:
        controller.close()


async def test_long_state_dir_uses_a_loopback_control_port(tmp_path):
    """A socket path over ~100 bytes cannot be bound: we fall back to ControlPort auto."""
    state = tmp_path / ("deep-" * 20) / "state"
    cfg = make_cfg(tmp_path, **{"tor.extra_torrc": dead_network_torrc(),
                                "tor.bootstrap_timeout": 60})
    seen = asyncio.Event()
    service = TorService(cfg, state, on_progress=lambda p: seen.set())
    task = asyncio.create_task(service.start())
    try:
        await asyncio.wait_for(seen.wait(), 30)  # connected and authenticated (cookie)
        port_file = (state / "tor-data" / "control.port").read_text()
        assert port_file.startswith("PORT=127.0.0.1:")
        assert not (state / "tor-data" / "control.sock").exists()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await service.close()
