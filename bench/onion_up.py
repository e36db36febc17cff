"""Benchmark: `incognito-onion up` from process start to its room URL answering through SOCKS,
split into bootstrap, publication and first fetch, beside a bare stem launch + ADD_ONION on the
same private Tor network in the same run. Not a test: it prints numbers.

    .venv/bin/python bench/onion_up.py [--runs 3] [--turn] [--json]

Builds the private Tor network of tests/support/tornet.py (3 authorities + 2 relays, a client
tor whose SocksPort does every fetch, and its onion tor, unused here; ~12 s on 2 cores), then,
--runs times, alternating which goes first:

  up     `incognito-onion up --no-turn` (--turn: with its coturn) as a subprocess, launching its
         own tor pointed at the network (INCOGNITO_TOR_EXTRA_TORRC). Clock starts just before
         the process is started;
           bootstrap   -> the "tor [###...] 100%" progress line on stderr
           publication -> the room URL on stdout (up waits for every HSDir to answer)
           first fetch -> the first 200 for /r/<room> through the network's SocksPort
         Stopped by PID (SIGTERM, then SIGKILL of its process group) after each run.
  stem   the bare baseline: stem.process.launch_tor_with_config with the same torrc lines
         (clock starts before it), then Controller.from_port + authenticate +
         create_ephemeral_hidden_service({80: local HTTP server}, await_publication=True), which
         returns at the FIRST HSDir's ack; then the first 200 through the same SocksPort. The
         moment every HSDir had answered is recorded too (what `up` waits for).

Prints per-phase medians of both and up's overhead (absolute and % of stem). Fetches retry every
0.1 s (a client may meet "descriptor not found" just after publication); the attempt count and
the last SOCKS error are recorded. Everything binds to 127.0.0.1; every process started is
stopped by its PID, also on error, Ctrl-C or SIGTERM. --json prints one JSON object on stdout
(progress goes to stderr either way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402
import stem.control  # noqa: E402
import stem.process  # noqa: E402
from stem.control import EventType  # noqa: E402

from tests.support.onion_up import ONION_URL, Up  # noqa: E402
from tests.support.tornet import (  # noqa: E402
    SOCKS_ONION_ERRORS,
    TOR,
    TOR_GENCERT,
    TorNetwork,
    build_network,
    free_port,
)

BOOTSTRAP_TIMEOUT = 90.0
PUBLISH_TIMEOUT = 120.0
FETCH_TIMEOUT = 60.0
PHASES = ("bootstrap", "publication", "first_fetch", "total")
BAR_100 = re.compile(r"^tor \[[#.]+\] 100%")
BAR_ANY = re.compile(r"^tor \[[#.]+\] \d+%")
UP_REPORT = re.compile(r"onion published in (?P<pub>\d+(?:\.\d+)?) s \(launched tor; "
                       r"tor ready in (?P<ready>\d+(?:\.\d+)?) s")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- every process we start, stopped by PID whatever happens -----------------------------------

_UPS: list[TimedUp] = []
_TORS: list[subprocess.Popen] = []


def _stop_popen(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)


def stop_up(up: TimedUp) -> int | None:
    """SIGTERM to up (then SIGKILL to its process group), then anything it left, by PID."""
    kids = up.children()
    code = None
    with contextlib.suppress(Exception):
        code = up.stop(20)
    for kid in kids:
        with contextlib.suppress(psutil.Error):
            if kid.is_running() and kid.status() != psutil.STATUS_ZOMBIE:
                kid.kill()
    with contextlib.suppress(ValueError):
        _UPS.remove(up)
    return code


def stop_everything() -> None:
    for up in list(_UPS):
        stop_up(up)
    for proc in list(_TORS):
        with contextlib.suppress(Exception):
            _stop_popen(proc)
        _TORS.remove(proc)


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every finally


# -- up, its output lines timestamped ----------------------------------------------------------

class TimedUp(Up):
    """tests.support.onion_up.Up, noting when the bootstrap lines and the URL arrive."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.t0 = time.monotonic()
        self.t_first_progress: float | None = None
        self.t_bootstrapped: float | None = None
        self.t_url: float | None = None
        super().__init__(args, env)

    def _read(self, stream, into, is_stdout):
        for raw in stream:
            now = time.monotonic()
            line = raw.rstrip("\n")
            into.append(line)
            if is_stdout:
                if self.match is None:
                    m = ONION_URL.match(line.strip())
                    if m:
                        self.t_url = now
                        self.match = m
                        self.url_seen.set()
            else:
                if self.t_first_progress is None and BAR_ANY.match(line):
                    self.t_first_progress = now
                if self.t_bootstrapped is None and BAR_100.match(line):
                    self.t_bootstrapped = now
        if is_stdout:
            self.url_seen.set()


# -- fetching through the network's SocksPort --------------------------------------------------

async def _first_fetch(socks_port: int, url: str, deadline: float) -> dict:
    import aiohttp
    from aiohttp_socks import ProxyConnector, ProxyError

    t0 = time.monotonic()
    end = t0 + deadline
    attempts, last = 0, ""
    while time.monotonic() < end:
        attempts += 1
        connector = ProxyConnector.from_url(f"socks5://127.0.0.1:{socks_port}", rdns=True)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                timeout = aiohttp.ClientTimeout(total=max(1.0, min(30.0, end - time.monotonic())))
                async with session.get(url, timeout=timeout) as resp:
                    await resp.read()
                    if resp.status == 200:
                        return {"seconds": time.monotonic() - t0, "attempts": attempts,
                                "last_error": last}
                    last = f"HTTP {resp.status}"
        except ProxyError as exc:
            code = exc.error_code
            last = f"SOCKS {code:#x} {SOCKS_ONION_ERRORS.get(code, exc)}" if code else str(exc)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no 200 from {url.split('/')[2]} through SOCKS within {deadline:g}s "
                       f"({attempts} attempts; last: {last})")


def first_fetch(socks_port: int, url: str) -> dict:
    return asyncio.run(_first_fetch(socks_port, url, FETCH_TIMEOUT))


# -- one run of each ---------------------------------------------------------------------------

def run_up(net: TorNetwork, work: Path, n: int, turn: bool) -> dict:
    env = {"INCOGNITO_TOR_EXTRA_TORRC": json.dumps(net.client_torrc_lines),
           "INCOGNITO_TOR_BOOTSTRAP_TIMEOUT": str(BOOTSTRAP_TIMEOUT),
           "INCOGNITO_TOR_PUBLISH_TIMEOUT": str(PUBLISH_TIMEOUT)}
    args = ["--port", str(free_port()), "--state-dir", str(work / f"up-state{n}"),
            "--qr", "never"]
    if turn:
        env.update({"INCOGNITO_TURN_PORT": str(free_port()),
                    "INCOGNITO_TURN_MIN_PORT": "50100", "INCOGNITO_TURN_MAX_PORT": "50199"})
    else:
        args.append("--no-turn")
    up = TimedUp(args, env)
    _UPS.append(up)
    try:
        m = up.wait_url(BOOTSTRAP_TIMEOUT + PUBLISH_TIMEOUT + 30)
        fetch = first_fetch(net.socks_port, f"{m['base']}/r/{m['room']}")
        t_fetched = up.t_url + fetch["seconds"]
        assert up.t_bootstrapped is not None, f"no 100% progress line: {up.stderr[-10:]}"
        err = "\n".join(up.stderr)
        report = UP_REPORT.search(err)
        return {
            "start_to_first_progress": (up.t_first_progress or up.t_bootstrapped) - up.t0,
            "bootstrap": up.t_bootstrapped - up.t0,
            "publication": up.t_url - up.t_bootstrapped,
            "first_fetch": fetch["seconds"],
            "total": t_fetched - up.t0,
            "fetch_attempts": fetch["attempts"],
            "fetch_last_error": fetch["last_error"],
            "up_reported_tor_ready": float(report["ready"]) if report else None,
            "up_reported_published": float(report["pub"]) if report else None,
        }
    finally:
        code = stop_up(up)
        if code not in (0, None):
            say(f"  (up exited with {code}: {up.stderr[-3:]})")


def _stem_config(net: TorNetwork, datadir: Path, control_port: int) -> dict:
    """The same torrc lines `up` gets (tor.extra_torrc), as stem's config dict."""
    config: dict[str, str | list[str]] = {
        "DataDirectory": str(datadir),
        "ControlPort": f"127.0.0.1:{control_port}",
        "CookieAuthentication": "1",
        "SocksPort": "0",
    }
    for line in net.client_torrc_lines:
        key, _, value = line.partition(" ")
        if key in config:
            old = config[key]
            config[key] = [*(old if isinstance(old, list) else [old]), value]
        else:
            config[key] = value
    return config


def run_stem(net: TorNetwork, work: Path, n: int, http_port: int) -> dict:
    datadir = work / f"stem-tor{n}"
    datadir.mkdir(mode=0o700)
    control_port = free_port()
    config = _stem_config(net, datadir, control_port)
    t0 = time.monotonic()
    # stem kills the tor it started if this raises (timeout, Ctrl-C); SIGALRM: main thread only
    proc = stem.process.launch_tor_with_config(
        config, tor_cmd=TOR, completion_percent=100, timeout=BOOTSTRAP_TIMEOUT,
        take_ownership=True)
    t_boot = time.monotonic()
    _TORS.append(proc)
    hs_events: list[tuple[float, str, str | None, str]] = []
    try:
        with stem.control.Controller.from_port("127.0.0.1", control_port) as ctl:
            ctl.authenticate()

            def on_hs_desc(event) -> None:
                hs_events.append((time.monotonic(), str(event.action), event.address,
                                  event.directory_fingerprint or event.directory or "?"))

            ctl.add_event_listener(on_hs_desc, EventType.HS_DESC)
            resp = ctl.create_ephemeral_hidden_service(
                {80: f"127.0.0.1:{http_port}"}, key_type="NEW", key_content="ED25519-V3",
                await_publication=True, timeout=PUBLISH_TIMEOUT)
            t_pub = time.monotonic()
            fetch = first_fetch(net.socks_port, f"http://{resp.service_id}.onion/")
            # off the clock: when had every HSDir answered? (what `up` waits for)
            mine = [e for e in hs_events if e[2] == resp.service_id]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                mine = [e for e in hs_events if e[2] == resp.service_id]
                uploads = sum(e[1] == "UPLOAD" for e in mine)
                answers = sum(e[1] in ("UPLOADED", "FAILED") for e in mine)
                if uploads and answers >= uploads:
                    break
                time.sleep(0.1)
            answers_at = [e[0] for e in mine if e[1] in ("UPLOADED", "FAILED")]
            ctl.remove_event_listener(on_hs_desc)
            with contextlib.suppress(Exception):
                ctl.remove_ephemeral_hidden_service(resp.service_id)
        return {
            "bootstrap": t_boot - t0,
            "publication": t_pub - t_boot,
            "first_fetch": fetch["seconds"],
            "total": t_pub + fetch["seconds"] - t0,
            "fetch_attempts": fetch["attempts"],
            "fetch_last_error": fetch["last_error"],
            "add_onion_to_first_hsdir": t_pub - t_boot,
            "all_hsdirs_answered_after_bootstrap": (max(answers_at) - t_boot
                                                    if answers_at else None),
            "hsdirs": sum(e[1] == "UPLOADED" for e in mine),
        }
    finally:
        _stop_popen(proc)
        with contextlib.suppress(ValueError):
            _TORS.remove(proc)


# -- the trivial local HTTP server the stem onion publishes ------------------------------------

class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b"<!doctype html><title>hello</title><p>hello\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


# -- report -------------------------------------------------------------------------------------

def medians(runs: list[dict]) -> dict[str, float]:
    return {p: statistics.median(r[p] for r in runs) for p in PHASES}


def print_report(result: dict) -> None:
    up_m, stem_m, over = result["median"]["up"], result["median"]["stem"], result["overhead"]
    net = result["network"]
    print(f"private Tor network ready in {net['ready']:.1f} s "
          f"(consensus {net['consensus']:.1f} s); {result['runs']} runs each, "
          f"up {'with' if result['turn'] else 'without'} TURN\n")
    print(f"{'median, seconds':24}{'up':>9}{'bare stem':>11}{'overhead':>11}")
    labels = {"bootstrap": "bootstrap (start->100%)", "publication": "publication",
              "first_fetch": "first fetch (SOCKS)", "total": "total start->200"}
    for p in PHASES:
        pct = over[p]["percent"]
        print(f"{labels[p]:24}{up_m[p]:9.2f}{stem_m[p]:11.2f}{over[p]['seconds']:+11.2f}"
              f"{'' if pct is None else f'{pct:+8.0f}%':>9}")
    print("\nper run (bootstrap / publication / first fetch = total, fetch attempts):")
    for name in ("up", "stem"):
        for i, r in enumerate(result["per_run"][name]):
            extra = ""
            if name == "up":
                extra = (f"  [up says: tor ready {r['up_reported_tor_ready']} s, "
                         f"published in {r['up_reported_published']} s; first progress line "
                         f"{r['start_to_first_progress']:.2f} s]")
            else:
                allh = r["all_hsdirs_answered_after_bootstrap"]
                extra = (f"  [first HSDir ack {r['add_onion_to_first_hsdir']:.2f} s, all "
                         f"{r['hsdirs']} HSDir uploads answered "
                         f"{'?' if allh is None else f'{allh:.2f}'} s after 100%]")
            err = f", last miss: {r['fetch_last_error']}" if r["fetch_last_error"] else ""
            print(f"  {name:4} #{i + 1}: {r['bootstrap']:.2f} / {r['publication']:.2f} / "
                  f"{r['first_fetch']:.2f} = {r['total']:.2f} s, {r['fetch_attempts']} "
                  f"attempt(s){err}{extra}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    ap.add_argument("--turn", action="store_true",
                    help="run up with its coturn (default --no-turn, like the stem baseline)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if not (os.path.exists(TOR) and os.path.exists(TOR_GENCERT)):
        say("tor and tor-gencert are needed (apt install tor)")
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)

    net: TorNetwork | None = None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    results: dict[str, list[dict]] = {"up": [], "stem": []}
    try:
        with tempfile.TemporaryDirectory(prefix="onion-up-bench-") as tmp:
            work = Path(tmp)
            say("building the private Tor network...")
            net = build_network(work / "tornet")
            say(f"  ready in {net.timings['ready']:.1f} s; SocksPort 127.0.0.1:{net.socks_port}")
            for i in range(args.runs):
                order = ("up", "stem") if i % 2 == 0 else ("stem", "up")
                for name in order:
                    if name == "up":
                        r = run_up(net, work, i, args.turn)
                    else:
                        r = run_stem(net, work, i, httpd.server_address[1])
                    results[name].append(r)
                    say(f"  run {i + 1} {name:4}: bootstrap {r['bootstrap']:.2f} s, publication "
                        f"{r['publication']:.2f} s, first fetch {r['first_fetch']:.2f} s, "
                        f"total {r['total']:.2f} s")
            network_timings = dict(net.timings)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        stop_everything()
        if net is not None:
            net.stop()
        httpd.shutdown()
        httpd.server_close()

    up_m, stem_m = medians(results["up"]), medians(results["stem"])
    overhead = {p: {"seconds": up_m[p] - stem_m[p],
                    "percent": (100 * (up_m[p] - stem_m[p]) / stem_m[p]) if stem_m[p] else None}
                for p in PHASES}
    result = {"runs": args.runs, "turn": args.turn, "network": network_timings,
              "median": {"up": up_m, "stem": stem_m}, "overhead": overhead,
              "per_run": results}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
