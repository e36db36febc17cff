"""Real browsers for tests, offline: Debian's Chromium through Playwright and Debian's Firefox ESR
through Marionette (no geckodriver, no browser downloads).

Fixtures:

- ``chromium``: a Playwright (async API) ``Browser`` of /usr/bin/chromium with the offline,
  fake-media flags (:data:`CHROMIUM_FLAGS`). Use ``await chromium.new_context()`` per person.
- ``chromium_factory``: ``await chromium_factory(extra_args=[...])`` for more browsers or other
  flags (``--proxy-server=socks5://...``, ``--use-file-for-fake-video-capture=x.y4m``).
- ``firefox_marionette``: a factory, ``ff = firefox_marionette(prefs={...})`` (blocking: call it
  with ``await asyncio.to_thread(...)`` from async tests) giving a :class:`Firefox` with a
  Marionette session; ``ff.run(js, *args)`` runs ``js`` in the page (page globals visible,
  promises awaited). Default prefs: :data:`FIREFOX_TEST_PREFS` (fake media, no permission
  prompt, ICE on loopback), merged with ``prefs``.
- ``artifacts``: a directory for screenshots worth keeping ($INCOGNITO_TEST_ARTIFACTS, else
  the test's tmp_path/artifacts).

Each browser's processes (the browser and its children) are recorded by PID when it starts and
killed by PID at teardown if closing it left any behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

CHROMIUM = "/usr/bin/chromium"
FIREFOX = "firefox-esr"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]
FIREFOX_TEST_PREFS: dict[str, Any] = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.peerconnection.ice.loopback": True,
    "media.cubeb.backend": "alsa",  # into the null PCM of _ASOUNDRC: no sound card here
    # offline: nothing phones home (Marionette's recommended prefs do most of the rest)
    "browser.shell.checkDefaultBrowser": False,
    "app.update.disabledForTesting": True,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "extensions.update.enabled": False,
    "services.settings.server": "data:,#remote-settings-dummy/v1",
    "browser.aboutwelcome.enabled": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "network.dns.disablePrefetch": True,
    "network.http.speculative-parallel-limit": 0,
}


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _kill_pids(pids: set[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is left after ``grace`` seconds, each by PID."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)


FIREFOX_AUTOPLAY: dict[str, Any] = {"media.autoplay.default": 0,
                                    "media.autoplay.blocking_policy": 0}
#: Tor Browser's media settings: no WebRTC, no camera/microphone, resistFingerprinting
FIREFOX_TOR_LIKE: dict[str, Any] = {
    "media.peerconnection.enabled": False,
    "media.navigator.enabled": False,
    "privacy.resistFingerprinting": True,
}


async def poll_page(probe: Callable[[], Awaitable[Any]], timeout: float, interval: float,
                    failure: Callable[[Any], Awaitable[BaseException]]) -> Any:
    """Awaits ``probe()`` every ``interval`` seconds until it gives something truthy, and
    returns that; an exception from the probe (a page still loading, a navigation) counts as
    a falsy ``"error: ..."``. After ``timeout`` seconds raises ``await failure(last value)``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await probe()
        except Exception as e:
            last = f"error: {e}"
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise await failure(last)
        await asyncio.sleep(interval)


async def ff_wait(ff: Any, js: str, *args: Any, timeout: float = 45.0, what: str = "",
                  interval: float = 0.2) -> Any:
    """Polls ``js`` (a function body) in the Firefox page until it returns something truthy and
    returns that; fails after ``timeout`` seconds with the last value (or error) seen."""
    async def failure(last: Any) -> BaseException:
        return AssertionError(f"firefox: timed out waiting for {what or js!r} (last {last!r})")

    return await poll_page(lambda: asyncio.to_thread(ff.run, js, *args), timeout, interval,
                           failure)


# --- Chromium -----------------------------------------------------------------------------------

@pytest.fixture
async def chromium_factory() -> AsyncIterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    pw = await async_playwright().start()
    launched: list[tuple[Any, set[int]]] = []

    async def launch(extra_args: list[str] | tuple[str, ...] = (), **kwargs: Any):
        before = _descendants()
        browser = await pw.chromium.launch(executable_path=CHROMIUM,
                                           args=[*CHROMIUM_FLAGS, *extra_args], **kwargs)
        pids = browser_roots(_descendants() - before, "chrom")
        launched.append((browser, pids))
        return browser

    try:
        yield launch
    finally:
        for browser, pids in launched:
            for pid in list(pids):  # renderers and helpers started since launch
                pids |= {c.pid for c in _children(pid)}
            with contextlib.suppress(Exception):
                await asyncio.wait_for(browser.close(), 10)
            _kill_pids({p for p in pids if psutil.pid_exists(p)}, grace=2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pw.stop(), 10)


@pytest.fixture
async def chromium(chromium_factory):
    return await chromium_factory()


def browser_roots(new: set[int], word: str) -> set[int]:
    """Of the processes that appeared while a browser started, its own main process: one named
    ``word`` whose parent is not. The other browsers running meanwhile spawn GPU and utility
    processes too; taking those as the new browser's froze or killed the wrong person."""
    roots = set()
    for pid in new:
        with contextlib.suppress(psutil.Error):
            if _is_browser_pid(pid, word) and not _is_browser_pid(psutil.Process(pid).ppid(),
                                                                  word):
                roots.add(pid)
    return roots


def _is_browser_pid(pid: int, word: str) -> bool:
    try:
        return word in psutil.Process(pid).name().lower()
    except psutil.Error:
        return False


# --- Firefox ------------------------------------------------------------------------------------

@dataclass
class Firefox:
    """A Firefox ESR with a Marionette session (``client``)."""

    client: Any
    proc: subprocess.Popen
    profile: Path
    port: int
    pids: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def run(self, js: str, *args: Any, timeout: float = 30.0) -> Any:
        """Run ``js`` (a function body; ``arguments`` holds ``args``) in the page's own global
        scope and return its result; a returned promise is awaited."""
        return self.client.execute_script(js, script_args=list(args), sandbox=None,
                                          new_sandbox=False, script_timeout=int(timeout * 1000))

    def navigate(self, url: str) -> None:
        self.client.navigate(url)

    def screenshot(self, path: Path) -> Path:
        import base64

        path.write_bytes(base64.b64decode(self.client.screenshot(format="base64")))
        return path

    def close(self) -> None:
        self.pids |= {c.pid for c in _children(self.proc.pid)}
        with contextlib.suppress(Exception):
            self.client.delete_session()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        _kill_pids({p for p in self.pids if psutil.pid_exists(p)}, grace=2)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user_js(prefs: dict[str, Any]) -> str:
    import json

    return "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())


# A test machine has no sound card and no sound server: without an output device Firefox's media
# elements stop with "OnMediaSinkAudioError" and audio never plays. ALSA's null PCM is a sink
# that plays in real time into nothing (cubeb's ALSA backend, selected by pref above).
_ASOUNDRC = "pcm.!default { type null }\nctl.!default { type hw card 0 }\n"


def _firefox_env(profile: Path) -> dict[str, str]:
    home = profile / "home"
    home.mkdir(exist_ok=True)
    (home / ".asoundrc").write_text(_ASOUNDRC)
    return {**os.environ, "HOME": str(home)}


@pytest.fixture
def firefox_marionette(tmp_path: Path) -> Iterator[Any]:
    binary = shutil.which(FIREFOX)
    if binary is None:
        pytest.skip("firefox-esr is not installed (Debian package firefox-esr)")
    try:
        with warnings.catch_warnings():  # mozinfo and mozrunner use deprecated modules
            warnings.simplefilter("ignore", DeprecationWarning)
            from marionette_driver.marionette import Marionette
    except ImportError:
        pytest.skip("marionette-driver is not installed (pip install marionette-driver)")
    started: list[Firefox] = []

    def start(prefs: dict[str, Any] | None = None, *, args: list[str] | tuple[str, ...] = (),
              timeout: float = 60.0) -> Firefox:
        profile = tmp_path / f"firefox-profile-{len(started)}"
        profile.mkdir()
        port = _free_port()
        (profile / "user.js").write_text(
            _user_js({**FIREFOX_TEST_PREFS, **(prefs or {}), "marionette.port": port}))
        log = open(profile.parent / f"{profile.name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [binary, "--marionette", "--headless", "--no-remote", "--profile", str(profile),
             *args], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=_firefox_env(profile))
        log.close()
        ff = Firefox(None, proc, profile, port, {proc.pid})
        started.append(ff)
        deadline = time.monotonic() + timeout
        while True:  # wait for Marionette's port, or the process to die
            if proc.poll() is not None:
                raise RuntimeError(f"firefox exited with {proc.returncode} at start; see "
                                   f"{profile.parent / (profile.name + '.log')}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"firefox: no Marionette on port {port} after "
                                       f"{timeout:g} s") from None
                time.sleep(0.05)
        ff.client = Marionette(host="127.0.0.1", port=port)
        ff.client.start_session(timeout=max(1, int(deadline - time.monotonic())))
        ff.pids |= {c.pid for c in _children(proc.pid)}
        return ff

    yield start
    for ff in started:
        ff.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    base = os.environ.get("INCOGNITO_TEST_ARTIFACTS")
    path = Path(base) if base else tmp_path / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path
