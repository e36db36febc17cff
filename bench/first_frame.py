"""Benchmark: time from page open to the first remote frame decoded, 4 Chromium peers on
loopback through the real server and its coturn (relay-only, TURN over TCP).

    .venv/bin/python bench/first_frame.py [--runs 5] [--peers 4]

For each run, N pages open the room link at once, join from the pre-join screen as soon as it
shows, and the script polls getStats every 50 ms. Per participant it records the time to the
first decoded frame from any peer ("first") and from every other peer ("all"), and prints
p50/p90 over runs × participants. Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.browsers import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402
from tests.support.webclient import (  # noqa: E402
    CHROMIUM_EXTRA,
    STATS_JS,
    fake_video,
    start_turn_server,
    stop_server,
)


async def one_page(browser, url: str, name: str, peers: int, timeout: float) -> tuple[float,
                                                                                        float]:
    ctx = await browser.new_context(viewport={"width": 640, "height": 400},
                                    permissions=["camera", "microphone"])
    page = await ctx.new_page()
    t0 = time.perf_counter()
    await page.goto(url)
    while await page.evaluate("document.body.dataset.screen") != "prejoin":
        await asyncio.sleep(0.02)
    t_prejoin = time.perf_counter() - t0
    await page.fill("#name", name)
    await page.click("#join")
    while await page.evaluate("document.body.dataset.screen") != "call":
        await asyncio.sleep(0.02)
    PHASES.append((t_prejoin, time.perf_counter() - t0))
    first = None
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        stats = await page.evaluate(STATS_JS)
        decoded = [s for s in stats.values() if s["frames"] > 0]
        now = time.perf_counter() - t0
        if decoded and first is None:
            first = now
        if len(decoded) >= peers - 1:
            return ctx, first, now
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{name}: not every peer decoded within {timeout} s")


PHASES: list[tuple[float, float]] = []


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    from playwright.async_api import async_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench-first-frame-"))
    y4m = fake_video(tmp / "cam.y4m")
    srv = start_turn_server(tmp, env={"INCOGNITO_ROOMS_EMPTY_GRACE_SECONDS": "0"})
    firsts: list[float] = []
    alls: list[float] = []
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM,
                args=[*CHROMIUM_FLAGS, *CHROMIUM_EXTRA, f"--use-file-for-fake-video-capture={y4m}"])
            try:
                for run in range(args.runs):
                    results = await asyncio.gather(*(
                        one_page(browser, srv.url, f"p{i}", args.peers, args.timeout)
                        for i in range(args.peers)))
                    for ctx, first, everyone in results:
                        firsts.append(first)
                        alls.append(everyone)
                    print(f"run {run + 1}: first frame " + ", ".join(
                        f"{r[1]:.2f}" for r in results) + " s; from all peers " + ", ".join(
                        f"{r[2]:.2f}" for r in results) + " s", flush=True)
                    for ctx, _, _ in results:  # everyone leaves: the room is free again
                        await ctx.close()
            finally:
                await browser.close()
    finally:
        stop_server(srv)
    print(f"\n{args.peers} Chromium peers, {args.runs} runs, relay-only TURN over TCP on "
          f"loopback ({len(firsts)} samples)")
    print(f"page open -> pre-join screen:          p50 "
          f"{statistics.median(p[0] for p in PHASES):.2f} s")
    print(f"page open -> in the call (joined):     p50 "
          f"{statistics.median(p[1] for p in PHASES):.2f} s")
    print(f"page open -> first remote frame:       p50 {statistics.median(firsts):.2f} s  "
          f"p90 {pct(firsts, 0.9):.2f} s")
    print(f"page open -> frames from every peer:   p50 {statistics.median(alls):.2f} s  "
          f"p90 {pct(alls, 0.9):.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
