"""The no-sockets relay benchmark (bench/relay_path.py) runs and counts every packet: a smoke
test, so that the tool stays usable (its numbers are not asserted: benchmarks report them)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_relay_path_bench_runs_and_delivers_every_packet():
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "relay_path.py"), "--messages", "300",
         "--repeat", "2", "--json"],
        capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    # the script itself asserts that each message reached the room's 3 others and was acked
    assert result["messages"] == 300 and result["rooms_of"] == 4
    assert len(result["us_per_message_runs"]) == 2 and result["us_per_message"] > 0
