"""The command line: failures are one clear line and a distinct exit code, never a traceback."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from incognito_onion import __version__, exitcodes

ROOT = Path(__file__).resolve().parent.parent


def run(*args, env=None, timeout=30):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("INCOGNITO_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "incognito_onion", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=ROOT)


def no_traceback(proc):
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def test_version_and_help():
    p = run("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"incognito-onion {__version__}"
    p = run("--help")
    assert p.returncode == 0 and "up" in p.stdout and "config" in p.stdout
    p = run("up", "--help")
    for flag in ("--no-tor", "--host", "--port", "--config", "--state-dir"):
        assert flag in p.stdout


def test_bad_config_exits_2_naming_file_line_and_key(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("server:\n  port: \"80a\"\n")
    p = run("up", "--no-tor", "--config", str(cfg), "--state-dir", str(tmp_path / "s"))
    assert p.returncode == exitcodes.CONFIG
    assert p.stderr.strip() == 'incognito-onion: config.yaml:2: server.port: must be 1-65535, ' \
                               'got "80a"'
    no_traceback(p)


def test_bad_env_and_flag_values_exit_2(tmp_path):
    p = run("up", "--no-tor", "--port", "http", "--state-dir", str(tmp_path),
            env={"INCOGNITO_ROOMS_CAPACITY": "1"})
    assert p.returncode == exitcodes.CONFIG
    assert '--port: server.port: must be 1-65535, got "http"' in p.stderr
    assert "INCOGNITO_ROOMS_CAPACITY: rooms.capacity: must be 2-50, got 1" in p.stderr
    no_traceback(p)


def test_config_check_and_defaults(tmp_path):
    p = run("config", "check", "--config", str(ROOT / "config" / "config.yaml"))
    assert p.returncode == 0 and p.stdout.startswith("ok: ")
    p = run("config", "defaults")
    assert p.stdout == (ROOT / "config" / "config.yaml").read_text()
    p = run("config", "show", env={"INCOGNITO_TOR_CONTROL_PASSWORD": "hunter2"})
    assert "hunter2" not in p.stdout and "tor.control_password = '(hidden)'" in p.stdout


def test_port_in_use_exits_4(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = run("up", "--no-tor", "--no-turn", "--port", str(port), "--state-dir",
                str(tmp_path))
    assert p.returncode == exitcodes.BIND
    assert f"port {port} on 127.0.0.1 is already in use" in p.stderr
    no_traceback(p)


def test_unknown_host_exits_4(tmp_path):
    p = run("up", "--no-tor", "--no-turn", "--host", "192.0.2.123", "--port", "18999",
            "--state-dir", str(tmp_path))
    assert p.returncode == exitcodes.BIND and "no such address" in p.stderr
    no_traceback(p)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unusable_state_dir_exits_3(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    p = run("up", "--no-tor", "--state-dir", str(locked / "sub"))
    assert p.returncode == exitcodes.STATE and "--state-dir" in p.stderr


def test_state_dir_that_is_a_file_exits_3(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    p = run("up", "--no-tor", "--no-turn", "--state-dir", str(f / "sub"))
    assert p.returncode == exitcodes.STATE
    assert "cannot use it" in p.stderr and "--state-dir" in p.stderr
    no_traceback(p)
