"""`incognito-onion doctor`: ok on this machine; fail, with the right fix and a non-zero exit,
when tor is missing, the state dir is unusable, the config is bad, a port is taken, client keys
are missing, or an attached tor refuses us. Real tor and coturn binaries; loopback only."""

import errno
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from incognito_onion import doctor, exitcodes
from incognito_onion.config import load
from incognito_onion.tor import errors as tor_errors

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(ok|warn|fail|skip) {1,4} ?(?P<name>[^:]+): (?P<detail>.+)$")


def free_port():
    """A free port below the ephemeral range (32768 and up on Linux): a port the kernel hands
    out for bind(0) is in that range, and an outgoing connection anywhere on the machine could
    take it before the doctor tries it ("in use": a clean-clone CI run failed that way once)."""
    rnd = random.Random()
    for _ in range(200):
        port = rnd.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INCOGNITO_", "XDG_"))}
    env.update(extra)
    return env


def run(*args, module="incognito_onion", env=None, timeout=60):
    """`incognito-onion doctor ARGS` (module=incognito_onion) or the doctor on its own
    (module=incognito_onion.doctor, which also reports a bad config/state dir as checks)."""
    argv = [sys.executable, "-m", module, *(["doctor"] if module == "incognito_onion" else []),
            *args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                       env=env or clean_env(), cwd=ROOT)
    assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
    return p


def lines(p):
    out = [ln for ln in p.stdout.splitlines() if ln and not ln.startswith("doctor: ")]
    for ln in out:
        assert LINE.match(ln), f"not a check line: {ln!r}"
    return out


def find(p, status, name):
    hits = [ln for ln in lines(p) if ln.startswith(status + " ") and
            LINE.match(ln).group("name") == name]
    assert hits, f"no '{status} {name}' line in:\n{p.stdout}{p.stderr}"
    return hits[0]


@pytest.fixture
def cfg_file(tmp_path):
    """A config with the web and TURN ports on free ports and its own state dir."""
    def make(extra=""):
        path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
        path.write_text(f"server:\n  port: {free_port()}\nturn:\n  port: {free_port()}\n"
                        f"state_dir: \"{tmp_path / 'state'}\"\n{extra}")
        return path
    return make


# --- this machine ---------------------------------------------------------------------------------

def test_ok_on_this_machine(cfg_file):
    p = run("--config", str(cfg_file()))
    assert p.returncode == 0, p.stdout + p.stderr
    got = lines(p)
    assert all(ln.startswith("ok ") for ln in got), p.stdout
    names = [LINE.match(ln).group("name") for ln in got]
    for name in ("config", "state dir", "web client", "web port", "coturn", "TURN port",
                 "TURN relay address", "tor", "tor PoW defence"):
        assert name in names, p.stdout
    assert re.search(r"^ok +tor: tor 0\.\d+\.\d+\.\d+", p.stdout, re.M)
    assert re.search(r"^ok +coturn: coturn \d+\.\d+\.\d+", p.stdout, re.M)
    assert p.stdout.rstrip().endswith("doctor: `incognito-onion up` should work")


def test_disabled_parts_are_skipped(cfg_file):
    p = run("--config", str(cfg_file()), "--no-tor", "--no-turn")
    assert p.returncode == 0, p.stdout
    assert find(p, "skip", "tor") and find(p, "skip", "coturn")
    names = [LINE.match(ln).group("name") for ln in lines(p)]
    assert "TURN port" not in names and "tor PoW defence" not in names
    p = run("--config", str(cfg_file("tor:\n  enabled: false\n")))
    assert find(p, "skip", "tor")


def test_the_doctor_is_listed_in_the_help():
    p = subprocess.run([sys.executable, "-m", "incognito_onion", "--help"], capture_output=True,
                       text=True, timeout=30, cwd=ROOT)
    assert "doctor" in p.stdout


# --- tor missing ---------------------------------------------------------------------------------

def test_tor_not_on_path(cfg_file, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "turnserver").symlink_to(shutil.which("turnserver"))
    p = run("--config", str(cfg_file()), env=clean_env(PATH=str(bindir)))
    assert p.returncode == tor_errors.TorBinaryMissing.exit_code
    line = find(p, "fail", "tor")
    assert "tor is not installed ('tor' is not on PATH)" in line
    sbin = shutil.which("tor", path="/usr/sbin:/usr/local/sbin")
    if sbin:  # Debian's tor is reachable as /usr/sbin/tor, off a normal user's PATH
        assert f"fix: set tor.binary: {sbin}" in line and "to PATH" in line
    else:
        assert "fix: apt-get install tor" in line
    assert find(p, "ok", "coturn")  # the rest is still checked
    assert "problem to fix before `incognito-onion up` can work" in p.stdout


def test_tor_binary_that_does_not_exist(cfg_file):
    p = run("--config", str(cfg_file("tor:\n  binary: /nonexistent/tor\n")))
    assert p.returncode == tor_errors.TorBinaryMissing.exit_code
    line = find(p, "fail", "tor")
    assert "tor.binary /nonexistent/tor does not exist" in line
    assert "fix: apt-get install tor" in line


def test_coturn_missing_is_a_turn_failure(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"server:\n  port: {free_port()}\nturn:\n  port: {free_port()}\n"
                   f"  binary: no-such-turnserver\n")
    p = run("--config", str(cfg), "--no-tor", "--state-dir", str(tmp_path / "s"))
    assert p.returncode == exitcodes.TURN
    line = find(p, "fail", "coturn")
    assert "'no-such-turnserver' is not installed" in line
    assert "fix: apt-get install coturn" in line and "--no-turn" in line


# --- state dir -----------------------------------------------------------------------------------

def test_state_dir_under_a_regular_file(cfg_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    bad = blocker / "state"
    p = run("--config", str(cfg_file()), "--state-dir", str(bad),
            module="incognito_onion.doctor")
    assert p.returncode == exitcodes.STATE
    line = find(p, "fail", "state dir")
    assert f"{blocker} is a file, not a directory" in line
    assert "fix: pick another with --state-dir" in line
    # through the CLI: non-zero, and the same fix (the CLI checks the state dir first)
    p = run("--config", str(cfg_file()), "--state-dir", str(bad))
    assert p.returncode == exitcodes.STATE
    assert "--state-dir" in p.stdout + p.stderr


def test_state_dir_that_is_a_file(cfg_file, tmp_path):
    f = tmp_path / "state-file"
    f.write_text("x")
    p = run("--config", str(cfg_file()), "--state-dir", str(f), module="incognito_onion.doctor")
    assert p.returncode == exitcodes.STATE
    assert "is not a directory; fix: move it away" in find(p, "fail", "state dir")


def test_state_files_others_can_read(cfg_file, tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    for name in ("turn-secret", "room-link", "room-tickets.key"):
        secret = state / name
        secret.write_text("s3cret\n")
        secret.chmod(0o644)
        p = run("--config", str(cfg_file()))
        assert p.returncode == exitcodes.STATE, name
        line = find(p, "fail", "state dir")
        assert f"fix: chmod 600 {secret}" in line
        secret.chmod(0o600)
    assert run("--config", str(cfg_file())).returncode == 0
    # coturn's own files (pid, user db) carry no secret: no false alarm about them
    (state / "turnserver.pid").write_text("1\n")
    (state / "turnserver.pid").chmod(0o644)
    p = run("--config", str(cfg_file()))
    assert p.returncode == 0 and "secrets 0600" in find(p, "ok", "state dir")
    keys = state / "client_keys"
    keys.mkdir(mode=0o700)
    (keys / "bob.auth").write_text("descriptor:x25519:" + "A" * 52 + "\n")
    (keys / "bob.auth").chmod(0o640)
    p = run("--config", str(cfg_file()))
    assert p.returncode == exitcodes.STATE
    assert f"fix: chmod 600 {keys / 'bob.auth'}" in find(p, "fail", "state dir")


def test_open_state_dir_is_a_warning(cfg_file, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    p = run("--config", str(cfg_file()), module="incognito_onion.doctor")
    assert p.returncode == 0  # up tightens it itself
    assert f"fix: chmod 700 {state}" in find(p, "warn", "state dir")
    assert "1 warning" in p.stdout


def test_missing_state_dir_is_fine_and_not_created(cfg_file, tmp_path):
    p = run("--config", str(cfg_file()), "--state-dir", str(tmp_path / "new" / "state"),
            module="incognito_onion.doctor")
    assert p.returncode == 0, p.stdout
    assert "does not exist yet; up creates it" in find(p, "ok", "state dir")
    assert not (tmp_path / "new").exists()


# --- config --------------------------------------------------------------------------------------

def test_bad_config_fails_with_the_messages_of_up(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text('server:\n  port: "80a"\nturn:\n  prot: 3478\n')
    up = subprocess.run([sys.executable, "-m", "incognito_onion", "up", "--config", str(cfg),
                         "--state-dir", str(tmp_path / "s")], capture_output=True, text=True,
                        timeout=30, env=clean_env(), cwd=ROOT)
    up_msgs = [ln.removeprefix("incognito-onion: ") for ln in up.stderr.splitlines()]
    assert up.returncode == exitcodes.CONFIG and len(up_msgs) == 2

    p = run("--config", str(cfg), module="incognito_onion.doctor")
    assert p.returncode == exitcodes.CONFIG
    fails = [ln for ln in lines(p) if ln.startswith("fail ")]
    assert len(fails) == 2
    for msg, ln in zip(up_msgs, fails, strict=True):
        assert ln.startswith(f"fail  config: {msg}; fix: ")
    assert "fix: edit line 2 of config.yaml" in fails[0]
    assert "turn.prot: unknown key (did you mean turn.port?)" in fails[1]
    assert find(p, "skip", "other checks")

    # through the CLI: the same messages, exit 2
    p = run("--config", str(cfg))
    assert p.returncode == exitcodes.CONFIG
    for msg in up_msgs:
        assert msg in p.stdout + p.stderr


def test_bad_environment_and_flag(tmp_path):
    p = run("--port", "http", "--no-tor", module="incognito_onion.doctor",
            env=clean_env(INCOGNITO_ROOMS_CAPACITY="1"))
    assert p.returncode == exitcodes.CONFIG
    out = p.stdout
    assert "fail  config: INCOGNITO_ROOMS_CAPACITY: rooms.capacity: must be 2-50, got 1; " \
           "fix: correct or unset the environment variable INCOGNITO_ROOMS_CAPACITY" in out
    assert 'fail  config: --port: server.port: must be 1-65535, got "http"; ' \
           "fix: correct the --port flag" in out


def test_missing_config_file(tmp_path):
    p = run("--config", str(tmp_path / "nope.yaml"), module="incognito_onion.doctor")
    assert p.returncode == exitcodes.CONFIG
    assert "config defaults > FILE" in find(p, "fail", "config")


# --- ports ---------------------------------------------------------------------------------------

def test_web_port_in_use(cfg_file):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = run("--config", str(cfg_file()), "--port", str(port), "--no-tor")
    assert p.returncode == exitcodes.BIND
    line = find(p, "fail", "web port")
    assert f"127.0.0.1:{port} is already in use" in line
    assert "fix: stop that program or pick another port with --port or server.port" in line


def test_turn_port_in_use_and_clash(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"server:\n  port: {free_port()}\nturn:\n  port: {port}\n")
        p = run("--config", str(cfg), "--no-tor", "--state-dir", str(tmp_path / "s"))
    assert p.returncode == exitcodes.TURN
    assert f"127.0.0.1:{port} is already in use" in find(p, "fail", "TURN port")

    same = free_port()
    cfg.write_text(f"server:\n  port: {same}\nturn:\n  port: {same}\n")
    p = run("--config", str(cfg), "--no-tor", "--state-dir", str(tmp_path / "s"))
    assert p.returncode == exitcodes.TURN
    assert f"turn.port 127.0.0.1:{same} is the same port as server.port" in \
        find(p, "fail", "TURN port")


def test_address_not_on_this_machine(cfg_file):
    p = run("--config", str(cfg_file()), "--host", "192.0.2.123", "--no-tor", "--no-turn")
    assert p.returncode == exitcodes.BIND
    assert "192.0.2.123 is not an address of this machine" in find(p, "fail", "web port")


def test_public_host_with_tor_is_a_warning(cfg_file):
    p = run("--config", str(cfg_file()), "--host", "0.0.0.0", "--no-turn")
    assert p.returncode == 0, p.stdout
    assert "fix: set server.host to 127.0.0.1" in find(p, "warn", "web exposure")


# --- tor options ---------------------------------------------------------------------------------

def test_client_auth_needs_a_key(cfg_file, tmp_path):
    cfg = cfg_file("tor:\n  client_auth: true\n")
    p = run("--config", str(cfg), "--no-turn")
    assert p.returncode == tor_errors.TorNoClientKeys.exit_code
    assert "fix: incognito-onion keys add NAME" in find(p, "fail", "tor client auth")
    from incognito_onion.tor import client_keys

    client_keys.add(tmp_path / "state", "alice")
    p = run("--config", str(cfg), "--no-turn")
    assert p.returncode == 0, p.stdout
    assert "1 participant key" in find(p, "ok", "tor client auth")


def test_persistent_onion_key(cfg_file, tmp_path):
    cfg = cfg_file("tor:\n  persistent_key: true\n")
    p = run("--config", str(cfg), "--no-turn")
    assert p.returncode == 0 and "the first run makes one" in find(p, "ok", "onion key")
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)  # (an older CLI makes it before the doctor runs)
    (state / "onion_key").write_text("garbage\n")
    (state / "onion_key").chmod(0o600)
    p = run("--config", str(cfg), "--no-turn")
    assert p.returncode == tor_errors.TorPublishFailed.exit_code  # as up, for a bad key
    assert "not an onion key" in find(p, "fail", "onion key")


def test_turn_tls(cfg_file, tmp_path):
    tls = free_port()
    # (the config file has its turn: section already; TLS settings come from the environment)
    p = run("--config", str(cfg_file()), "--no-tor",
            env=clean_env(INCOGNITO_TURN_TLS_PORT=str(tls)))
    assert p.returncode == 0, p.stdout
    assert f"127.0.0.1:{tls} is free" in find(p, "ok", "TURN TLS port")
    assert "fix: set turn.tls_cert and turn.tls_key" in find(p, "warn", "TURN TLS certificate")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    p = run("--config", str(cfg_file()), "--no-tor",
            env=clean_env(INCOGNITO_TURN_TLS_PORT=str(tls), INCOGNITO_TURN_TLS_CERT=str(bad),
                          INCOGNITO_TURN_TLS_KEY=str(bad)))
    assert p.returncode == exitcodes.TURN
    assert "is not a PEM certificate" in find(p, "fail", "TURN TLS certificate")


# --- attaching to a running tor ------------------------------------------------------------------

@pytest.fixture(scope="module")
def running_tor(tmp_path_factory):
    """A tor with a password-protected control port, no network (it never bootstraps)."""
    tor = shutil.which("tor") or shutil.which("tor", path="/usr/sbin")
    if tor is None:
        pytest.fail("tor is not installed: scripts/install-system-deps test installs it")
    d = tmp_path_factory.mktemp("tor")
    hashed = subprocess.run([tor, "--quiet", "--hash-password", "right-password"],
                            capture_output=True, text=True, timeout=30).stdout.strip()
    assert hashed.startswith("16:"), hashed
    port = free_port()
    torrc = d / "torrc"
    torrc.write_text(f"DataDirectory {d / 'data'}\nControlPort 127.0.0.1:{port}\n"
                     f"HashedControlPassword {hashed}\nSocksPort 0\nDisableNetwork 1\n"
                     f"Log notice file {d / 'tor.log'}\n")
    proc = subprocess.Popen([tor, "-f", str(torrc), "--defaults-torrc", str(d / "none")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (d / "tor.log").read_text() if (d / "tor.log").exists() else ""
                    pytest.fail(f"tor did not open its control port: {log[-500:]}")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_attach_to_a_running_tor(cfg_file, running_tor):
    p = run("--config", str(cfg_file()), "--no-turn", "--tor-control", running_tor,
            "--tor-password", "right-password")
    assert p.returncode == 0, p.stdout
    line = find(p, "warn", "tor control")  # DisableNetwork: it never finishes bootstrapping
    assert f"at {running_tor}, authenticated; bootstrap at 0%" in line
    assert "let tor finish bootstrapping" in line
    names = [LINE.match(ln).group("name") for ln in lines(p)]
    assert "tor" not in names  # no binary needed when attaching
    assert find(p, "ok", "tor PoW defence")


def test_attach_with_a_wrong_or_missing_password(cfg_file, running_tor):
    p = run("--config", str(cfg_file()), "--no-turn", "--tor-control", running_tor,
            "--tor-password", "wrong")
    assert p.returncode == tor_errors.TorWrongPassword.exit_code
    assert "fix: set tor.control_password (--tor-password)" in find(p, "fail", "tor control")
    p = run("--config", str(cfg_file()), "--no-turn", "--tor-control", running_tor)
    assert p.returncode == tor_errors.TorWrongPassword.exit_code
    assert "needs a password" in find(p, "fail", "tor control")


def test_attach_to_nothing(cfg_file, tmp_path):
    port = free_port()
    p = run("--config", str(cfg_file()), "--no-turn", "--tor-control", f"127.0.0.1:{port}")
    assert p.returncode == tor_errors.TorControlRefused.exit_code
    line = find(p, "fail", "tor control")
    assert "connection refused" in line and "leave it empty to launch our own tor" in line
    p = run("--config", str(cfg_file()), "--no-turn", "--tor-control",
            str(tmp_path / "no.sock"))
    assert p.returncode == tor_errors.TorControlRefused.exit_code
    assert "no tor control socket" in find(p, "fail", "tor control")


# --- pure parts ----------------------------------------------------------------------------------

def L(host, port, key="k"):
    return doctor.Listener(key, key, host, port, "--x", exitcodes.BIND)


def test_overlaps():
    assert doctor.overlaps(L("127.0.0.1", 1), L("127.0.0.1", 1))
    assert doctor.overlaps(L("0.0.0.0", 1), L("127.0.0.1", 1))
    assert not doctor.overlaps(L("127.0.0.1", 1), L("127.0.0.2", 1))
    assert not doctor.overlaps(L("127.0.0.1", 1), L("127.0.0.1", 2))


def test_check_listeners_explains_each_bind_error():
    errs = {1: OSError(errno.EACCES, "Permission denied"),
            2: OSError(errno.EADDRINUSE, "Address already in use"), 3: None}
    got = doctor.check_listeners([L("127.0.0.1", 1, "a.port"), L("127.0.0.1", 2, "b.port"),
                                  L("127.0.0.1", 3, "c.port")],
                                 bind=lambda host, port: errs[port])
    assert [c.status for c in got] == ["fail", "fail", "ok"]
    assert "use a port above 1023" in got[0].fix and "CAP_NET_BIND_SERVICE" in got[0].fix
    assert "already in use" in got[1].detail


def test_line_format_and_exit_code():
    ok = doctor.Check("ok", "x", "fine", fix="ignored")
    bad = doctor.Check("fail", "y", "broken", "do this", exitcodes.TURN)
    worse = doctor.Check("fail", "z", "broken", "do that", exitcodes.TOR)
    assert ok.line() == "ok    x: fine"
    assert bad.line() == "fail  y: broken; fix: do this"
    assert doctor.exit_code([ok]) == 0
    assert doctor.exit_code([ok, bad, worse]) == exitcodes.TURN


def test_config_fix():
    assert doctor.config_fix('config.yaml:12: server.port: must be 1-65535, got "x"') == \
        "edit line 12 of config.yaml as the message says, then run incognito-onion doctor"
    assert "INCOGNITO_SERVER_PORT" in doctor.config_fix("INCOGNITO_SERVER_PORT: server.port: x")
    assert doctor.config_fix("--port: server.port: x") == "correct the --port flag"


def test_coturn_version_parsing():
    assert doctor.parse_coturn_version("4.6.1\n") == "4.6.1"
    assert doctor.parse_coturn_version("Coturn-4.5.2 'dan Eider'") == "4.5.2"
    assert doctor.parse_coturn_version("usage: ...") is None


def test_web_files(tmp_path):
    assert doctor.check_web_files(ROOT / "static").status == "ok"
    c = doctor.check_web_files(tmp_path)
    assert c.status == "fail" and "index.html, room.html" in c.detail


def test_run_checks_in_process(tmp_path):
    cfg = load(None, env={}, overrides={"server.port": free_port(), "turn.port": free_port(),
                                        "tor.enabled": False})
    checks = doctor.run_checks(cfg, tmp_path / "state")
    assert doctor.exit_code(checks) == 0, [c.line() for c in checks]
    assert [c.name for c in checks][:4] == ["state dir", "web client", "web port", "coturn"]
