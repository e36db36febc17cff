"""`incognito-onion up` with tor, as a child process: the fixture `up_factory` starts one with
free ports and its own state dir and stops it (and what it started) by PID."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

import aiohttp
import psutil
import pytest
from aiohttp_socks import ProxyConnector

from tests.support.server import _server_env, free_port, server_command

ONION_URL = re.compile(
    r"^(?P<base>http://(?P<host>[a-z2-7]{56}\.onion))/r/(?P<room>[A-Za-z0-9_-]{22})"
    r"#(?P<key>[A-Za-z0-9_-]{43})$")


class Up:
    """One `incognito-onion up` process, its output collected by a reader thread."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.env = env
        self.proc = subprocess.Popen([*server_command(), "up", *args], env=_server_env(env),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.url_seen = threading.Event()
        self.match: re.Match | None = None
        threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, True),
                         daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, False),
                         daemon=True).start()

    def _read(self, stream, into, is_stdout):
        for line in stream:
            into.append(line.rstrip("\n"))
            if is_stdout and self.match is None:
                m = ONION_URL.match(line.strip())
                if m:
                    self.match = m
                    self.url_seen.set()
        if is_stdout:
            self.url_seen.set()  # exited: stop waiting

    def wait_url(self, timeout: float) -> re.Match:
        assert self.url_seen.wait(timeout), f"no URL within {timeout}s: {self.stderr[-10:]}"
        assert self.match is not None, f"up exited ({self.proc.poll()}): {self.stderr[-10:]}"
        return self.match

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def up_factory(tmp_path):
    started: list[Up] = []

    def make(*args: str, env: dict[str, str] | None = None) -> Up:
        state = tmp_path / f"state{len(started)}"
        base_env = {"INCOGNITO_TURN_PORT": str(free_port()),
                    "INCOGNITO_TURN_MIN_PORT": "50100", "INCOGNITO_TURN_MAX_PORT": "50199"}
        up = Up(["--port", str(free_port()), "--state-dir", str(state), *args],
                {**base_env, **(env or {})})
        started.append(up)
        return up

    yield make
    for up in started:
        kids = up.children()
        up.stop()
        for kid in kids:  # tor and coturn went with it; make sure, by PID
            if kid.is_running() and kid.status() != psutil.STATUS_ZOMBIE:
                kid.kill()


def socks_session(socks_port: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=ProxyConnector.from_url(
        f"socks5://127.0.0.1:{socks_port}", rdns=True))
