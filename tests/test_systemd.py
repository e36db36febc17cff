"""The systemd unit: `systemd-analyze verify` accepts it (Debian's systemd, from the test
profile of scripts/install-system-deps), its hardening scores well, and it really runs under that
hardening: a private systemd (PID 1 of its own pid, mount, network, uts, ipc and cgroup
namespaces, seeing only this test's units) starts the unit as written, `up` serves /healthz with
coturn as its child, the doctor and tor work inside the same sandbox, and `systemctl stop` ends
it cleanly.
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "incognito-onion.service"
VENV_BIN = ROOT / ".venv" / "bin" / "incognito-onion"
INSTALLED = "/opt/incognito-onion/.venv/bin/incognito-onion"
SYSTEMD = Path("/lib/systemd/systemd")

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze missing: scripts/install-system-deps "
                                          "test installs Debian's systemd")


def parse_unit(text):
    """[(section, key, value)] in order (systemd allows a key more than once)."""
    out, section = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def settings(section):
    found = {}
    for sec, key, value in parse_unit(UNIT.read_text()):
        if sec == section:
            found.setdefault(key, []).append(value)
    return found


def analyze(*args, timeout=60):
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "SYSTEMD_LOG_COLOR": "0",
                                                "SYSTEMD_PAGER": "cat"})


def test_unit_declares_the_hardening_and_layout():
    svc = settings("Service")
    one = {k: v[-1] for k, v in svc.items()}
    assert one["ExecStart"].split()[:2] == [INSTALLED, "up"]
    assert one["User"] == "incognito-onion" and one["Group"] == "incognito-onion"
    assert one["StateDirectory"] == "incognito-onion" and one["StateDirectoryMode"] == "0700"
    env = " ".join(svc["Environment"])
    assert "INCOGNITO_STATE_DIR=/var/lib/incognito-onion" in env
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
                       "CapabilityBoundingSet": "", "AmbientCapabilities": "",
                       "SystemCallFilter": "@system-service", "MemoryDenyWriteExecute": "yes",
                       "RestrictNamespaces": "yes", "LockPersonality": "yes",
                       "UMask": "0077", "KillMode": "mixed"}.items():
        assert one.get(key) == value, key
    families = set(one["RestrictAddressFamilies"].split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # exit codes that retrying cannot mend (exitcodes.CONFIG, STATE, BIND)
    from incognito_onion import exitcodes

    assert set(one["RestartPreventExitStatus"].split()) == {
        str(exitcodes.CONFIG), str(exitcodes.STATE), str(exitcodes.BIND)}
    assert settings("Install")["WantedBy"] == ["multi-user.target"]


@needs_analyze
def test_systemd_analyze_verify_passes_without_a_single_complaint(tmp_path):
    # The unit names the install location (/opt/incognito-onion); verify checks that ExecStart
    # exists, so check a copy that points at this checkout's equivalent, then the original.
    assert VENV_BIN.exists(), "run scripts/bootstrap-venv first"
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED, str(VENV_BIN)))
    p = analyze("verify", "--man=no", str(copy))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "" and p.stderr.strip() == "", p.stderr
    p = analyze("verify", "--man=no", str(UNIT))
    if Path(INSTALLED).exists():
        assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    else:  # its only complaint: the program is not installed on this machine
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert lines and all(f"Command {INSTALLED} is not executable" in ln for ln in lines), \
            p.stderr


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path):
    # the check above can fail: a typo in a directive is reported
    bad = tmp_path / UNIT.name
    bad.write_text(UNIT.read_text().replace(INSTALLED, str(VENV_BIN))
                   .replace("ProtectSystem=strict", "ProtectSystem=strickt"))
    p = analyze("verify", "--man=no", str(bad))
    assert "strickt" in p.stderr
    bad.write_text(UNIT.read_text().replace(INSTALLED, str(VENV_BIN))
                   .replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    p = analyze("verify", "--man=no", str(bad))
    assert "Unknown key 'NoNewPrivilege'" in p.stderr


@needs_analyze
def test_security_exposure_is_low():
    p = analyze("security", "--offline=yes", "--no-pager", str(UNIT))
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", p.stdout)
    assert m, p.stdout + p.stderr
    assert float(m.group(1)) <= 2.0, p.stdout


# --- the unit under a real systemd ---------------------------------------------------------------

BOOT = r"""
set -euo pipefail
repo=$1; work=$2
mount --make-rprivate /
mount -t tmpfs -o mode=755 tmpfs /run
# The test's work dir, bound (not copied: units and drop-ins it writes later must be seen by
# daemon-reload) before /tmp, where it lives, is covered below.
mkdir /run/t && mount --bind "$work" /run/t
# Nothing this systemd does may touch the host's files: fresh /tmp, /var/*, unit dir, /opt.
for d in /tmp /var/tmp /var/lib /var/log /var/cache /etc/systemd/system /opt; do
  mount -t tmpfs tmpfs "$d"
done
chmod 1777 /tmp /var/tmp
mkdir /opt/incognito-onion
mount --bind "$repo" /opt/incognito-onion
mount --bind /run/t/passwd /etc/passwd
mount --bind /run/t/group /etc/group
# Only this test's units exist (no sysinit.target chain, no tmpfiles, no journald).
export SYSTEMD_UNIT_PATH=/run/t/units
exec /lib/systemd/systemd --system --unit=idle.target --log-target=console --log-level=warning
"""

TARGETS = ("idle", "sysinit", "basic", "shutdown", "network-online", "multi-user", "sockets")


def _cgroup_dirs():
    base = Path("/sys/fs/cgroup")
    out = set()
    if base.is_dir():
        for hier in base.iterdir():
            if hier.is_dir():
                out.update(p for p in hier.rglob("*") if p.is_dir())
    return out


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class PrivateSystemd:
    """systemd as PID 1 of its own namespaces, loading units from ``work/units`` only."""

    def __init__(self, work):
        self.work = work
        self.units = work / "units"
        self.units.mkdir()
        for t in TARGETS:
            (self.units / f"{t}.target").write_text(f"[Unit]\nDescription={t}\n")
        (self.units / "system.slice").write_text("[Unit]\nDescription=system slice\n")
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        if not re.search(r"^incognito-onion:", passwd, re.M):
            passwd += "incognito-onion:x:64990:64990::/var/lib/incognito-onion:/usr/sbin/nologin\n"
            group += "incognito-onion:x:64990:\n"
        (work / "passwd").write_text(passwd)
        (work / "group").write_text(group)
        self.proc = None
        self.pid = None
        self._cgroups = set()

    def add_unit(self, name, text, dropin=""):
        (self.units / name).write_text(text)
        if dropin:
            d = self.units / f"{name}.d"
            d.mkdir(exist_ok=True)
            (d / "test.conf").write_text(dropin)

    def start(self):
        self._cgroups = _cgroup_dirs()
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--net", "--cgroup",
             "--mount-proc", "bash", "-c", BOOT, "boot", str(ROOT), str(self.work)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)

        def child():
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace")
                pytest.skip(f"cannot start a private systemd here: {out.strip()[:300]}")
            try:
                kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            except OSError:
                return None
            pids = kids.split()
            if not pids:
                return None
            exe = os.path.realpath(f"/proc/{pids[0]}/exe")
            return int(pids[0]) if exe.endswith("/systemd") else None

        self.pid = _wait(child, 15, "systemd to start")
        _wait(lambda: self.ctl("is-system-running").stdout.strip() in ("running", "degraded"),
              15, "systemd to be running")

    def run(self, *argv, ns=("-p", "-m"), timeout=30):
        return subprocess.run(["nsenter", "-t", str(self.pid), *ns, *argv], capture_output=True,
                              text=True, timeout=timeout)

    def ctl(self, *argv, timeout=30):
        return self.run("systemctl", "--no-pager", *argv, timeout=timeout)

    def path(self, inside):
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def show(self, unit, *props):
        p = self.ctl("show", unit, *(f"-p{x}" for x in props))
        return dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)

    def stop(self):
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)  # PID 1 of the namespace: all of it goes
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            self.proc.stdout.close()
        for d in sorted(_cgroup_dirs() - self._cgroups, key=lambda p: len(p.parts),
                        reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()


def _test_dropin(name):
    """What this test changes, and why: output to files (no journald here), no restart, and
    -- only where this machine keeps Python under /root or /home, which ProtectHome=yes hides --
    those directories bound read-only. Everything else is the unit as shipped."""
    lines = ["[Service]", f"StandardOutput=truncate:/run/{name}.out",
             f"StandardError=truncate:/run/{name}.err", "Restart=no"]
    hidden = []
    for p in {os.path.realpath(sys.base_prefix), str(ROOT)}:
        if p == "/root" or p.startswith(("/root/", "/home/")):
            hidden.append(p)
    if hidden:
        lines += ["ProtectHome=tmpfs", "BindReadOnlyPaths=" + " ".join(sorted(hidden))]
    return "\n".join(lines) + "\n"


def _variant(exec_start, extra=""):
    text = UNIT.read_text()
    return re.sub(r"^ExecStart=.*$", lambda _: f"ExecStart={exec_start}", text, count=1,
                  flags=re.M) + extra


@pytest.fixture
def private_systemd(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces and a private PID 1)")
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing (util-linux)")
    if not SYSTEMD.exists():
        pytest.skip("Debian's systemd is not installed (scripts/install-system-deps test)")
    sd = PrivateSystemd(tmp_path)
    try:
        yield sd
    finally:
        sd.stop()


@pytest.mark.timeout(120)
def test_unit_runs_under_its_own_hardening(private_systemd):
    sd = private_systemd
    # First without tor (this namespace has no network, so tor could not bootstrap), then
    # with it, to see up launch and drive tor inside the sandbox.
    sd.add_unit("incognito-onion.service", UNIT.read_text(),
                _test_dropin("io") + "Environment=INCOGNITO_TOR_ENABLED=false\n")
    sd.add_unit("io-doctor.service",
                _variant(f"{INSTALLED} doctor").replace("Type=simple", "Type=oneshot"),
                _test_dropin("doctor"))
    sd.start()

    # the doctor, inside the sandbox: tor and coturn run (--version) under the seccomp filter
    # and MemoryDenyWriteExecute, the state dir is usable
    p = sd.ctl("start", "io-doctor.service", timeout=60)
    out = sd.path("/run/doctor.out").read_text()
    assert p.returncode == 0, out + sd.path("/run/doctor.err").read_text()
    assert re.search(r"^ok +tor: tor \d", out, re.M) and re.search(r"^ok +coturn:", out, re.M)
    assert "fail" not in out

    # the service itself
    p = sd.ctl("start", "incognito-onion.service")
    assert p.returncode == 0, p.stderr

    def healthy():
        state = sd.show("incognito-onion.service", "ActiveState")["ActiveState"]
        if state in ("failed", "inactive"):
            raise AssertionError(f"service {state}: " + sd.path("/run/io.err").read_text())
        r = sd.run(sys.executable, str(ROOT / "deploy" / "healthcheck.py"), "--timeout", "2",
                   ns=("-n",))
        return r.returncode == 0

    _wait(healthy, 30, "/healthz inside the service's network")
    out = sd.path("/run/io.out").read_text()
    assert re.search(r"^http://127\.0\.0\.1:8080/r/[A-Za-z0-9_-]{22}#[A-Za-z0-9_-]{43}$", out,
                     re.M), out
    main_pid = sd.show("incognito-onion.service", "MainPID")["MainPID"]
    procs = sd.run("ps", "-o", "comm=", "--ppid", main_pid).stdout.split()
    assert "turnserver" in procs, procs  # coturn runs as up's child, inside the sandbox
    state = sd.path("/var/lib/incognito-onion")
    st = state.stat()
    assert st.st_mode & 0o777 == 0o700
    files = [f for f in state.iterdir() if f.is_file()]
    assert files and all(f.stat().st_mode & 0o077 == 0 for f in files)
    assert all(f.stat().st_uid == st.st_uid for f in files) and st.st_uid != 0

    p = sd.ctl("stop", "incognito-onion.service", timeout=40)
    assert p.returncode == 0
    info = sd.show("incognito-onion.service", "ExecMainStatus", "Result", "ActiveState")
    assert info == {"ExecMainStatus": "0", "Result": "success", "ActiveState": "inactive"}, info
    assert "turnserver" not in sd.run("ps", "-e", "-o", "comm=").stdout.split()

    # with tor: up launches it as its child inside the sandbox and drives it through its
    # control socket (bootstrap progress is read from there); with no network it stays early
    (sd.units / "incognito-onion.service.d" / "zz-tor.conf").write_text(
        "[Service]\nEnvironment=INCOGNITO_TOR_ENABLED=true\n")
    assert sd.ctl("daemon-reload").returncode == 0
    loaded = sd.show("incognito-onion.service", "DropInPaths", "Environment")
    assert loaded["DropInPaths"].split()[-1].endswith("/zz-tor.conf"), loaded
    assert loaded["Environment"].split()[-1] == "INCOGNITO_TOR_ENABLED=true", loaded
    assert sd.ctl("start", "incognito-onion.service").returncode == 0
    err = sd.path("/run/io.err")

    def tor_running():
        if sd.show("incognito-onion.service", "ActiveState")["ActiveState"] != "active":
            raise AssertionError("service stopped: " + err.read_text())
        main = sd.show("incognito-onion.service", "MainPID")["MainPID"]
        kids = sd.run("ps", "-o", "comm=", "--ppid", main).stdout.split()
        return "tor" in kids and re.search(r"^tor \[[.#]+\] \d+%", err.read_text(), re.M)

    try:
        _wait(tor_running, 30, "up to launch tor and report its bootstrap")
    except AssertionError as exc:
        main = sd.show("incognito-onion.service", "MainPID")["MainPID"]
        tree = sd.run("ps", "-e", "-o", "pid,ppid,comm").stdout
        raise AssertionError(f"{exc}\nmain pid {main}\n{tree}\n{err.read_text()}") from None
    datadir = sd.path("/var/lib/incognito-onion/tor-data")
    assert datadir.stat().st_mode & 0o777 == 0o700
    assert "tor: " not in err.read_text()  # no tor error or notice so far
    # stop: SIGKILL to the whole unit (up does not yet act on SIGTERM while tor bootstraps)
    assert sd.ctl("kill", "--signal=SIGKILL", "incognito-onion.service").returncode == 0
    _wait(lambda: sd.show("incognito-onion.service", "ActiveState")["ActiveState"]
          in ("inactive", "failed"), 15, "the unit to stop")
    left = sd.run("ps", "-e", "-o", "comm=").stdout.split()
    assert "tor" not in left and "turnserver" not in left
