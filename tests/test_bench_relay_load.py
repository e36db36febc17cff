"""bench/relay_load.py's rounds (``--repeat``) and issue 8's verdict on them.

The verdict is pure arithmetic over run results, tested here on made-up results; a small live
run checks that rounds run and are numbered (the numbers themselves are the benchmark's to
report, not asserted)."""

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _relay_load():
    spec = importlib.util.spec_from_file_location("relay_load", REPO / "bench" / "relay_load.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(server: str, rnd: int, p99: float, delivered: float = 3000.0, lost: int = 0,
         rate: float = 1.0, inside: float | None = None) -> dict:
    run = {"server": server, "round": rnd, "config": {"rate": rate},
           "latency_ms": {"p50": p99 / 3, "p99": p99}, "delivered_per_s": delivered,
           "lost": lost, "errors_total": 0}
    if inside is not None:  # --residence
        run["server_residence_ms"] = {"last_copy_ms": {"p50": inside / 4, "p99": inside}}
    return run


def test_verdict_is_on_the_medians_of_the_rounds_not_on_one_pair():
    rl = _relay_load()
    # ours loses round 1 by a little and wins rounds 2 and 3: the medians decide
    runs = [_run("ours", 1, 1.5), _run("node", 1, 1.4),
            _run("node", 2, 1.6), _run("ours", 2, 1.3),
            _run("ours", 3, 1.2), _run("node", 3, 1.5)]
    (v,) = rl.rounds_verdicts(runs)
    assert v["rounds"] == 3 and v["rounds_p99_ours_le_node"] == 2
    assert v["p99_ms"] == {"ours": 1.3, "node": 1.5}
    assert v["p99_le_node"] and v["throughput_ge_node"]
    assert "met" in rl.verdict_report([v]).splitlines()[-1]


def test_verdict_not_met_on_a_higher_median_p99_or_lower_throughput():
    rl = _relay_load()
    slower = [_run("ours", k, 2.0) for k in (1, 2, 3)] + [_run("node", k, 1.0) for k in (1, 2, 3)]
    (v,) = rl.rounds_verdicts(slower)
    assert not v["p99_le_node"] and v["rounds_p99_ours_le_node"] == 0
    assert rl.verdict_report([v]).splitlines()[-1].rstrip().endswith("not met")
    # a server that falls behind delivers less: its faster p99 does not make up for it
    behind = [_run("ours", 1, 1.0, delivered=2500, lost=30_000), _run("node", 1, 2.0)]
    (v,) = rl.rounds_verdicts(behind)
    assert v["p99_le_node"] and not v["throughput_ge_node"]
    assert v["rounds_lost_or_errors"] == {"ours": 1, "node": 0}


def test_verdict_per_rate_and_only_on_rounds_both_servers_ran():
    rl = _relay_load()
    runs = [_run("ours", 1, 1.0, rate=4), _run("node", 1, 2.0, rate=4),
            _run("ours", 2, 9.0, rate=4),  # its Node run never happened (interrupted)
            _run("ours", 1, 3.0), _run("node", 1, 2.0)]
    verdicts = rl.rounds_verdicts(runs)
    assert [(v["rate"], v["rounds"], v["p99_le_node"]) for v in verdicts] == [
        (1.0, 1, False), (4, 1, True)]


def test_verdict_adds_the_time_in_the_server_only_when_every_round_measured_it():
    rl = _relay_load()
    runs = [_run("ours", 1, 1.5, inside=1.0), _run("node", 1, 1.4, inside=1.2),
            _run("node", 2, 1.6, inside=1.1), _run("ours", 2, 1.3, inside=1.3)]
    (v,) = rl.rounds_verdicts(runs)
    assert v["in_server_p99_ms"] == {"ours": pytest.approx(1.15), "node": pytest.approx(1.15)}
    assert v["rounds_in_server_p99_ours_le_node"] == 1
    assert "1/2 rounds" in rl.verdict_report([v]).splitlines()[-1]
    runs[-1] = _run("ours", 2, 1.3)  # one run without the capture
    (v,) = rl.rounds_verdicts(runs)
    assert "in_server_p99_ms" not in v
    assert "in the server" not in rl.verdict_report([v])


def test_repeat_runs_numbered_rounds_against_the_real_server():
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "relay_load.py"), "--clients", "8", "--rate", "2",
         "--seconds", "1", "--warmup", "0.5", "--drain", "1", "--settle", "0.2", "--procs", "1",
         "--repeat", "2", "--json", "--quiet"],
        capture_output=True, text=True, timeout=180, check=True)
    result = json.loads(out.stdout)
    runs = result["sweep"]
    assert [(r["server"], r["round"]) for r in runs] == [("ours", 1), ("ours", 2)]
    assert all(r["lost"] == 0 and r["delivered"] == r["expected_deliveries"] > 0 for r in runs)
    assert result["verdicts"] == []  # one server: nothing to compare


def test_cpu_split_names_each_process_alive_through_the_window():
    rl = _relay_load()
    before = {1: ("server", 10.0), 2: ("worker", 4.0), 3: ("redis-server", 1.0)}
    after = {1: ("server", 12.0), 2: ("worker", 7.0), 3: ("redis-server", 1.5),
             4: ("worker", 0.5)}  # a worker restarted in the window: no figure for it
    assert rl.cpu_split(before, after, 10.0) == [
        ("worker", 30.0), ("server", 20.0), ("redis-server", 5.0)]


@pytest.fixture
def tree():
    """A process with a second thread and a child of its own, as `up` with workers is:
    (its pid, every thread id of both)."""
    code = ("import subprocess, sys, threading, time\n"
            "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(c.pid, flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        child = int(proc.stdout.readline())
        tids = [int(t) for pid in (proc.pid, child) for t in os.listdir(f"/proc/{pid}/task")]
        assert len(tids) >= 3
        yield proc.pid, tids
    finally:
        proc.kill()
        proc.wait()
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, 9)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs 2 CPUs")
def test_pin_moves_every_thread_of_the_server_tree_and_rejects_what_cannot_be_done(tree):
    rl = _relay_load()
    cpus = sorted(os.sched_getaffinity(0))
    server, rest = rl.pin_sets(1)
    assert server == {cpus[0]} and rest == set(cpus[1:])
    assert rl.pin_sets(0) is None
    for bad in (len(cpus), -1):
        with pytest.raises(SystemExit, match="--pin"):
            rl.pin_sets(bad)
    pid, tids = tree
    assert all(os.sched_getaffinity(t) == set(cpus) for t in tids)
    assert rl.pin_tree(pid, server) == len(tids)
    assert all(os.sched_getaffinity(t) == server for t in tids)


def test_batch_puts_every_thread_of_the_generator_tree_under_sched_batch(tree):
    rl = _relay_load()
    pid, tids = tree
    assert all(os.sched_getscheduler(t) == os.SCHED_OTHER for t in tids)
    assert rl.batch_tree(pid) == len(tids)
    assert all(os.sched_getscheduler(t) == os.SCHED_BATCH for t in tids)
