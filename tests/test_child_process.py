"""incognito_onion.child_process: a supervised daemon dies with us, even by SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from incognito_onion import child_process


def test_prefix_is_empty_without_setpriv(monkeypatch):
    monkeypatch.setattr(child_process.shutil, "which", lambda _name: None)
    assert child_process.pdeathsig_prefix() == []


def test_a_child_dies_when_its_parent_is_killed():
    """A parent (python) starts ``sleep`` under the prefix and is SIGKILLed: the kernel sends
    the sleep SIGTERM, no cleanup code of the parent involved."""
    prefix = child_process.pdeathsig_prefix()
    if not prefix:
        pytest.skip("setpriv (util-linux) is not installed")
    code = ("import subprocess, sys; p = subprocess.Popen(sys.argv[1:]); "
            "print(p.pid, flush=True); p.wait()")
    parent = subprocess.Popen([sys.executable, "-c", code, *prefix, "sleep", "60"],
                              stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    try:
        # setpriv sets the death signal, then execs sleep: a parent killed before that would
        # leave an orphan however it was started (not what this test is about)
        deadline = time.monotonic() + 10
        while psutil.Process(child_pid).name() != "sleep":
            assert time.monotonic() < deadline, "setpriv never ran sleep"
            time.sleep(0.01)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
        deadline = time.monotonic() + 5
        while psutil.pid_exists(child_pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                if psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE:
                    break  # dead, waiting for init to reap it
            assert time.monotonic() < deadline, "the child outlived its killed parent"
            time.sleep(0.02)
    finally:
        if parent.poll() is None:
            parent.kill()
        if psutil.pid_exists(child_pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child_pid, signal.SIGKILL)
