"""scripts/bootstrap-venv picks the interpreter the project installs (Debian's python3) over
whatever python3 comes first on PATH, so that tests, benchmarks and the shipped product run
on one interpreter (bench/README.md, fourteenth session: a hand-built python3 without
profile-guided optimisation relays a message with ~10 % more instructions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bootstrap-venv"


def which(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), "--which"], env=env, capture_output=True,
                          text=True, timeout=60)


def base_of(python: str) -> str:
    """The real interpreter behind ``python`` (a venv's base, a shim's target)."""
    return subprocess.run(
        [python, "-c", "import os, sys; print(os.path.realpath("
                       "getattr(sys, '_base_executable', sys.executable)))"],
        capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def debian_python_qualifies() -> bool:
    probe = "import sys, ensurepip; sys.exit(sys.version_info < (3, 11))"
    return (Path("/usr/bin/python3").exists()
            and subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True,
                               timeout=60).returncode == 0)


def test_python_variable_wins() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    out = which(env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == sys.executable


def test_debian_python_before_path() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    out = which(env)
    assert out.returncode == 0, out.stderr
    expected = "/usr/bin/python3" if debian_python_qualifies() else "python3"
    assert out.stdout.strip() == expected


def test_the_suite_runs_on_the_chosen_interpreter() -> None:
    """The venv this suite runs in was made with the interpreter bootstrap-venv picks: a venv
    left from another one is made anew, not kept."""
    out = which(dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert base_of(sys.executable) == base_of(out.stdout.strip())


def test_too_old_python_is_refused_clearly(tmp_path: Path) -> None:
    old = tmp_path / "python-old"
    old.write_text("#!/bin/sh\n"
                   "[ \"$1\" = --version ] && { echo 'Python 3.9.2'; exit 0; }\n"
                   "exit 1\n")
    old.chmod(0o755)
    out = which({**os.environ, "PYTHON": str(old)})
    assert out.returncode == 1
    assert "needs Python 3.11 or newer" in out.stderr and "Python 3.9.2" in out.stderr
    assert "Traceback" not in out.stderr
