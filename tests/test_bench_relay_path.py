"""The no-sockets relay benchmark (bench/relay_path.py) runs and counts every packet: a smoke
test, so that the tool stays usable (its numbers are not asserted: benchmarks report them)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("refused", [False, True])
def test_relay_path_bench_runs_and_delivers_every_packet(refused):
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "relay_path.py"), "--messages", "300",
         "--repeat", "2", "--json", *(["--refused"] if refused else [])],
        capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    assert result["refused"] is refused
    # the script itself asserts that each message reached the room's 3 others and was acked
    # (refused: that each got an error event and its ack)
    assert result["messages"] == 300 and result["rooms_of"] == 4
    assert len(result["us_per_message_runs"]) == 2 and result["us_per_message"] > 0
