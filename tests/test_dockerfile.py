"""The Dockerfile, checked without a Docker engine: its structure through a Dockerfile parser
(dockerfile-parse), its build context against .dockerignore, its install path by running the very
script it runs (scripts/install-system-deps), its settings by loading the config the image would
load, and its HEALTHCHECK script against a live server."""

import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from incognito_onion.config import load

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


class Parsed:
    """The parse, taken once (DockerfileParser.structure re-parses on every access)."""

    def __init__(self, path):
        parser = DockerfileParser(path=str(path))
        self.structure = parser.structure
        self.baseimage = parser.baseimage


@pytest.fixture(scope="module")
def df():
    return Parsed(DOCKERFILE)


def instructions(df, name):
    return [i for i in df.structure if i["instruction"] == name]


def index_of(df, pred):
    for n, i in enumerate(df.structure):
        if pred(i):
            return n
    raise AssertionError("no such instruction")


def env_of(df):
    """ENV as the image sees it (later ENV wins; $PATH expanded against Debian's default)."""
    out = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for i in instructions(df, "ENV"):
        for tok in shlex.split(i["value"]):
            key, _, value = tok.partition("=")
            out[key] = re.sub(r"\$(\w+)|\$\{(\w+)\}",
                              lambda m: out.get(m.group(1) or m.group(2), ""), value)
    return out


def workdir(df):
    return instructions(df, "WORKDIR")[-1]["value"]


def test_base_image_is_debian_bookworm_slim(df):
    assert df.baseimage == "debian:bookworm-slim"
    assert len(instructions(df, "FROM")) == 1


def test_system_packages_come_from_the_install_script_only(df):
    runs = instructions(df, "RUN")
    install = [r for r in runs if "scripts/install-system-deps runtime" in r["value"]]
    assert len(install) == 1
    # no second copy of the apt steps anywhere in the file
    for r in runs:
        assert not re.search(r"\bapt(-get)?\s+(-\S+\s+)*install\b", r["value"]), r["value"]
        assert "dpkg -i" not in r["value"]
    # the script is in the image before it runs
    copy_at = index_of(df, lambda i: i["instruction"] == "COPY" and
                       "scripts/install-system-deps" in i["value"])
    run_at = index_of(df, lambda i: i is install[0])
    assert copy_at < run_at
    # the package is installed the way ./scripts/up installs it
    assert any("scripts/bootstrap-venv runtime" in r["value"] for r in runs)
    up = (ROOT / "scripts" / "up").read_text()
    assert '"$root/scripts/install-system-deps" runtime' in up
    assert '"$root/scripts/bootstrap-venv" runtime' in up


def test_runs_as_a_non_root_user(df):
    users = instructions(df, "USER")
    assert users, "no USER"
    user = users[-1]["value"].split(":")[0]
    assert user not in ("root", "0")
    made = [r for r in instructions(df, "RUN") if re.search(rf"useradd\b.*\b{user}\b",
                                                            r["value"], re.S)]
    assert made and "--system" in made[0]["value"]
    user_at = index_of(df, lambda i: i is users[-1])
    last_run = max(n for n, i in enumerate(df.structure) if i["instruction"] == "RUN")
    assert user_at > last_run  # nothing after it runs as root
    assert user_at < index_of(df, lambda i: i["instruction"] == "ENTRYPOINT")


def test_state_dir_is_a_private_volume(df):
    env = env_of(df)
    state = env["INCOGNITO_STATE_DIR"]
    volumes = instructions(df, "VOLUME")
    assert len(volumes) == 1 and json.loads(volumes[0]["value"]) == [state]
    user = instructions(df, "USER")[-1]["value"]
    assert any(re.search(rf"install -d -m 0700 -o {user} -g {user} {re.escape(state)}\b",
                         r["value"]) for r in instructions(df, "RUN"))
    # the volume is declared after the directory got its owner and mode (Docker copies both
    # into a new volume)
    assert index_of(df, lambda i: i is volumes[0]) > max(
        n for n, i in enumerate(df.structure) if i["instruction"] == "RUN")


def test_entrypoint_is_up_and_on_path(df):
    ep = instructions(df, "ENTRYPOINT")
    assert len(ep) == 1
    assert json.loads(ep[0]["value"]) == ["incognito-onion", "up"]  # exec form: gets SIGTERM
    venv_bin = f"{workdir(df)}/.venv/bin"  # where scripts/bootstrap-venv puts the venv
    assert env_of(df)["PATH"].split(":")[0] == venv_bin
    assert not instructions(df, "CMD")  # `docker run IMAGE --no-turn` passes flags to up


def test_the_image_config_binds_where_tor_inside_reaches_it(df, tmp_path):
    env = env_of(df)
    copies = {i["value"].split()[-1]: i["value"].split()[0] for i in instructions(df, "COPY")}
    source = copies[env["INCOGNITO_CONFIG"]]
    image_env = {k: v for k, v in env.items() if k.startswith("INCOGNITO_")}
    image_env["INCOGNITO_CONFIG"] = str(ROOT / source)
    cfg = load(env=image_env)
    assert cfg.server.host == "127.0.0.1"  # tor in the same container reaches it there
    assert cfg.tor.enabled and cfg.turn.enabled
    assert cfg.state_dir == env["INCOGNITO_STATE_DIR"]


def test_healthcheck_uses_python_on_healthz(df):
    hc = instructions(df, "HEALTHCHECK")
    assert len(hc) == 1
    value = hc[0]["value"]
    assert "--start-period=" in value and "--timeout=" in value
    cmd = json.loads(value.split("CMD", 1)[1].strip())
    assert cmd[0].endswith("/.venv/bin/python") and cmd[1].endswith("deploy/healthcheck.py")
    assert "curl" not in value and "wget" not in value
    script = cmd[1]
    copies = [i["value"].split() for i in instructions(df, "COPY")]
    dest_dir = workdir(df) + "/deploy/"
    assert any(c[:-1] == ["deploy/healthcheck.py"] and f"{workdir(df)}/{c[-1]}" == dest_dir
               for c in copies), copies
    assert script == dest_dir + "healthcheck.py"
    assert "/healthz" in (ROOT / "deploy" / "healthcheck.py").read_text()


# --- the build context ---------------------------------------------------------------------------

def _ignore_rules():
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:] if neg else line
        pat = pat.strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx += "(?:.*/)?"
                i += 3
            elif pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        rules.append((neg, re.compile(rx + "$")))
    return rules


def in_context(rel):
    """Docker's rule: the last matching pattern decides; a pattern matching a parent directory
    matches everything below it."""
    parts = rel.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for neg, rx in _ignore_rules():
        if any(rx.match(c) for c in candidates):
            included = neg
    return included


def test_every_copied_file_is_in_the_build_context(df):
    copied = []
    for i in instructions(df, "COPY"):
        *sources, _dest = i["value"].split()
        for src in sources:
            assert not src.startswith("--"), "no COPY --from/--chown expected"
            path = ROOT / src
            assert path.exists(), f"COPY {src}: not in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                if "__pycache__" in rel:
                    continue
                assert in_context(rel), f"{rel} is copied but .dockerignore leaves it out"
                copied.append(rel)
    assert "incognito_onion/cli.py" in copied and "static/index.html" in copied
    assert "scripts/install-system-deps" in copied
    # and what the image does not need stays out
    for rel in (".venv/bin/python", "tests/test_cli.py", ".git/HEAD", "node_modules/x",
                "incognito_onion/__pycache__/cli.cpython-311.pyc", "bench/README.md"):
        assert not in_context(rel), rel


def test_the_package_builds_from_what_is_copied(df):
    # pyproject's readme and package list are inside the context
    text = (ROOT / "pyproject.toml").read_text()
    readme = re.search(r'^readme = "([^"]+)"', text, re.M).group(1)
    assert in_context(readme)
    copied = " ".join(i["value"] for i in instructions(df, "COPY"))
    assert readme in copied and "pyproject.toml" in copied


# --- the install path, for real ------------------------------------------------------------------

def test_the_install_script_the_dockerfile_runs_is_idempotent(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("runs the installer as root, as the Dockerfile does")
    # any attempt to install would call apt-get: make that fail loudly
    stub = tmp_path / "apt-get"
    stub.write_text("#!/bin/sh\necho \"apt-get called: $*\" >&2\nexit 97\n")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    for profile in ("runtime", "test"):
        p = subprocess.run([str(ROOT / "scripts" / "install-system-deps"), profile],
                           capture_output=True, text=True, timeout=120, env=env)
        assert p.returncode == 0, f"{profile}: {p.stderr}"
        assert "apt-get called" not in p.stderr and "installing" not in p.stderr, p.stderr
    # and the stub really is what it would call: a missing package reaches it
    fake = tmp_path / "dpkg-query"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    p = subprocess.run([str(ROOT / "scripts" / "install-system-deps"), "runtime"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode != 0 and "apt-get called" in p.stderr


def test_the_install_script_refuses_a_bad_profile():
    p = subprocess.run([str(ROOT / "scripts" / "install-system-deps"), "everything"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "usage" in p.stderr


# --- the HEALTHCHECK script ----------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(env):
    return subprocess.run([sys.executable, str(ROOT / "deploy" / "healthcheck.py"),
                           "--timeout", "2"], capture_output=True, text=True, timeout=30,
                          env=env, cwd=ROOT)


def test_healthcheck_against_a_live_server(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCOGNITO_")}
    env.update(INCOGNITO_SERVER_PORT=str(port), INCOGNITO_STATE_DIR=str(tmp_path / "state"))
    p = _health(env)
    assert p.returncode == 1 and p.stdout.startswith("unhealthy: ") and "Traceback" not in \
        p.stdout + p.stderr
    server = subprocess.Popen([sys.executable, "-m", "incognito_onion", "up", "--no-tor",
                               "--no-turn", "--qr", "never"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            p = _health(env)
            if p.returncode == 0 or time.monotonic() > deadline or server.poll() is not None:
                break
            time.sleep(0.1)
        assert p.returncode == 0, p.stdout
        assert p.stdout.strip() == f"healthy: http://127.0.0.1:{port}/healthz"
        # a wildcard bind is probed on loopback
        p = _health({**env, "INCOGNITO_SERVER_HOST": "0.0.0.0"})
        assert p.returncode == 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
        server.stdout.close()
    assert server.returncode == 0
    p = _health(env)
    assert p.returncode == 1 and "Connection refused" in p.stdout
    p = _health({**env, "INCOGNITO_SERVER_PORT": "x"})
    assert p.returncode == 1 and "bad config" in p.stdout
