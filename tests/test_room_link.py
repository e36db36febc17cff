"""``rooms.keep_link``: the link ``up`` printed works again after a restart.

Unit tests of the saved file (format, validation, a corrupt or unreadable or world-readable
file, deletion when the setting is off) and of opening the pinned room under a saved id, then
real servers killed with SIGKILL and started again on the same port and state dir, with
python-socketio clients joining the printed room.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess

import psutil
import pytest

from incognito_onion import exitcodes, ids, room_link
from incognito_onion.config import load as load_config
from incognito_onion.logs import redact
from incognito_onion.room_link import RoomLink
from incognito_onion.rooms import Registry
from incognito_onion.state import StateDirError
from incognito_onion.up import UpError, _saved_link
from tests.support.server import (
    REPO,
    Peer,
    _server_env,
    free_port,
    server_command,
    spawn_up,
    start_server,
)

LINK = RoomLink("R" * 22, "K" * 43)
KEEP = {"INCOGNITO_ROOMS_KEEP_LINK": "true"}


def cfg(keep: bool, **env: str):
    return load_config(None, env={"INCOGNITO_ROOMS_KEEP_LINK": str(keep).lower(), **env})


# --- the file -----------------------------------------------------------------------------------

def test_a_link_round_trips_through_a_0600_file(tmp_path):
    assert room_link.load(tmp_path) is None
    path = room_link.save(tmp_path, LINK)
    assert path == tmp_path / "room-link"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"room": LINK.room_id, "key": LINK.key}
    assert room_link.load(tmp_path) == LINK
    fresh = RoomLink(ids.new_room_id(), ids.new_room_key())
    assert room_link.decode(room_link.encode(fresh).encode()) == fresh


@pytest.mark.parametrize("raw,why", [
    (b"", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b'{"room": "RRRRRRRRRRRRRRRRRRRRRR", "key": ', "not JSON"),
    (b'["a", "b"]', "not a"),
    (b'{"key": "' + b"K" * 43 + b'"}', "no room id of 22"),
    (b'{"room": "short", "key": "' + b"K" * 43 + b'"}', "no room id of 22"),
    (b'{"room": "' + b"R" * 22 + b'"}', "no room key of 43"),
    (b'{"room": "' + b"R" * 22 + b'", "key": "' + b"K/" * 20 + b'KKK"}', "no room key of 43"),
    (b'{"room": "' + b"R" * 22 + b'", "key": 5}', "no room key of 43"),
])
def test_a_bad_file_is_one_line_naming_it_and_the_fix(tmp_path, raw, why):
    path = tmp_path / "room-link"
    path.write_bytes(raw)
    path.chmod(0o600)
    with pytest.raises(StateDirError) as exc:
        room_link.load(tmp_path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: not a saved room link ({why}")
    assert "delete it" in msg and "\n" not in msg
    assert "K" * 20 not in msg  # never quotes the file: it may hold a key


def test_a_file_others_can_read_is_refused(tmp_path):
    path = room_link.save(tmp_path, LINK)
    path.chmod(0o644)
    with pytest.raises(StateDirError) as exc:
        room_link.load(tmp_path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: readable by other users (mode 0o644)")
    assert f"chmod 600 {path}" in msg and "delete it" in msg and LINK.key not in msg


def test_an_unreadable_file_is_one_line(tmp_path):
    (tmp_path / "room-link").mkdir(mode=0o700)  # unreadable even for root
    with pytest.raises(StateDirError) as exc:
        room_link.load(tmp_path)
    assert str(exc.value).startswith(f"{tmp_path / 'room-link'}: cannot read it (")
    assert "delete it" in str(exc.value)


def test_forget_deletes_only_what_is_there(tmp_path):
    assert room_link.forget(tmp_path) is None
    path = room_link.save(tmp_path, LINK)
    assert room_link.forget(tmp_path) == path and not path.exists()


def test_the_log_filter_blanks_a_saved_link():
    """Nothing logs the file; if anything ever did, logs.py's filter blanks id and key."""
    line = redact(f"saved {room_link.encode(LINK)}")
    assert LINK.room_id not in line and LINK.key not in line


# --- what up does with it -------------------------------------------------------------------------

def test_off_deletes_a_saved_link_and_says_so(tmp_path, capsys):
    path = room_link.save(tmp_path, LINK)
    assert _saved_link(cfg(False), tmp_path) is None
    assert not path.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"deleted the saved room link {path}" in err
    assert _saved_link(cfg(False), tmp_path) is None
    assert capsys.readouterr().err == ""  # nothing to delete: nothing said


def test_on_gives_the_saved_link_and_notes_a_changing_onion(tmp_path, capsys):
    assert _saved_link(cfg(True), tmp_path) is None  # none yet: up makes and saves one
    room_link.save(tmp_path, LINK)
    assert _saved_link(cfg(True), tmp_path) == LINK
    err = capsys.readouterr().err
    assert "printed again" in err and "tor.persistent_key is off" in err
    assert LINK.key not in err and LINK.room_id not in err
    assert _saved_link(cfg(True, INCOGNITO_TOR_PERSISTENT_KEY="true"), tmp_path) == LINK
    assert "persistent_key" not in capsys.readouterr().err


def test_a_bad_file_is_an_up_error_of_the_state_kind(tmp_path):
    (tmp_path / "room-link").write_text("garbage")
    (tmp_path / "room-link").chmod(0o600)
    with pytest.raises(UpError) as exc:
        _saved_link(cfg(True), tmp_path)
    assert exc.value.code == exitcodes.STATE and "delete it" in str(exc.value)


def test_the_pinned_room_opens_under_a_saved_id():
    reg = Registry()
    room = reg.open_pinned(LINK.room_id)
    assert room.id == LINK.room_id and room.pinned
    assert reg.get(LINK.room_id) is room
    assert reg.open_pinned(LINK.room_id) is room  # already open: the same room
    assert reg.open_pinned().id != LINK.room_id


# --- a real server, killed and started again ----------------------------------------------

async def _join(srv, room: str, name: str) -> dict:
    p = Peer(srv.base, name)
    try:
        await p.connect()
        return await p.try_join(room, meta=f"meta-{name}")
    finally:
        await p.disconnect()


def _only_in_the_url_line(srv) -> None:
    """The room id and key appear nowhere but in the printed link (logs.py redaction aside,
    nothing says them)."""
    stdout = srv._stdout.lines
    assert [ln for ln in stdout if srv.room in ln or srv.key in ln] == [srv.url]
    assert not [ln for ln in srv._stderr.lines if srv.room in ln or srv.key in ln]


def _saved(srv) -> RoomLink:
    path = srv.state_dir / "room-link"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return room_link.load(srv.state_dir)


@pytest.mark.faults
async def test_the_kept_link_survives_a_kill(tmp_path):
    srv = start_server(tmp_path, env=KEEP)
    try:
        assert _saved(srv) == RoomLink(srv.room, srv.key)
        before = srv.url
        p = Peer(srv.base, "in-call")
        await p.connect()
        ack_before = await p.join(srv.room, meta="m")
        assert ack_before["room"] == srv.room
        srv.kill()
        await p.disconnect()
        srv = srv.relaunch()
        assert srv.url == before
        assert "printed again" in "\n".join(srv._stderr.lines)
        ack = await _join(srv, srv.room, "late")  # had only the link, was in no call
        assert ack.get("ok") is True and ack["room"] == srv.room, ack
        back = Peer(srv.base, "back")  # what the in-call page sends on reconnect
        try:
            await back.connect()
            again = await back.call("join", {"room": srv.room, "meta": "m",
                                             "resume": ack_before["resume"],
                                             "restore": ack_before["restore"]})
        finally:
            await back.disconnect()
        assert again.get("ok") is True and again["room"] == srv.room, again
        _only_in_the_url_line(srv)
    finally:
        srv.stop()


@pytest.mark.faults
async def test_without_keep_link_a_relaunch_prints_a_new_link_and_the_file_goes(tmp_path):
    srv = start_server(tmp_path, env=KEEP)
    old = srv
    try:
        srv.kill()
        env = {k: v for k, v in srv.full_env.items() if k != "INCOGNITO_ROOMS_KEEP_LINK"}
        srv = spawn_up(srv.cmd, env, srv.port, srv.state_dir)
        assert srv.url, srv.output()
        assert srv.url != old.url and srv.room != old.room and srv.key != old.key
        assert not (srv.state_dir / "room-link").exists()
        said = [ln for ln in srv._stderr.lines if "deleted the saved room link" in ln]
        assert len(said) == 1 and old.key not in said[0], srv.output()
        ack = await _join(srv, old.room, "old-link")
        assert ack["error"]["code"] == "room_not_found", ack
        srv.kill()
        srv = srv.relaunch()  # off, no file: a new link each run, nothing saved
        assert srv.url != old.url and not (srv.state_dir / "room-link").exists()
    finally:
        srv.stop()


@pytest.mark.parametrize("content,mode,expected", [
    ("{not json", 0o600, "not a saved room link (not JSON)"),
    ('{"room": "x", "key": "y"}', 0o600, "not a saved room link (no room id of 22"),
    (room_link.encode(LINK), 0o644, "readable by other users"),
])
def test_up_refuses_a_bad_saved_link_in_one_line(tmp_path, content, mode, expected):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "room-link").write_text(content)
    (state / "room-link").chmod(mode)
    p = subprocess.run([*server_command(), "up", "--no-tor", "--no-turn", "--port",
                        str(free_port()), "--state-dir", str(state)],
                       env=_server_env(KEEP), cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == exitcodes.STATE, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(state / "room-link") in lines[0], \
        p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


@pytest.mark.faults
async def test_two_workers_keep_the_link_and_redis_reopens_it(tmp_path):
    srv = start_server(tmp_path, env={**KEEP, "INCOGNITO_SERVER_WORKERS": "2"})
    try:
        before = srv.url
        children = psutil.Process(srv.pid).children(recursive=True)
        assert len(children) >= 2, children  # a worker and redis-server
        srv.kill()
        _, alive = psutil.wait_procs(children, timeout=15)  # they die with up
        assert not alive, f"outlived the killed up: {[c.pid for c in alive]}"
        srv = srv.relaunch()
        assert srv.url == before
        for i in range(4):  # new connections, spread by the kernel over both workers
            ack = await _join(srv, srv.room, f"late{i}")
            assert ack.get("ok") is True, ack
        redis = next(c for c in psutil.Process(srv.pid).children(recursive=True)
                     if "redis-server" in c.name())
        redis.kill()
        redis.wait(timeout=10)
        await _wait_joinable(srv)  # up's redis.on_restart opened the saved id again
        _only_in_the_url_line(srv)
    finally:
        srv.stop()


async def _wait_joinable(srv, timeout: float = 20.0) -> None:
    """Until a join of the printed room succeeds (redis is being restarted meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    ack: object = None
    while loop.time() < deadline:
        try:
            ack = await _join(srv, srv.room, "after-redis")
            if isinstance(ack, dict) and ack.get("ok"):
                return
        except Exception as exc:  # the worker may be between redis connections
            ack = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"the printed room did not come back after redis restarted: {ack!r}")


def test_nothing_is_saved_by_default(tmp_path):
    srv = start_server(tmp_path)
    try:
        assert not (srv.state_dir / "room-link").exists()
        assert not [ln for ln in srv._stderr.lines if "keep_link" in ln]
    finally:
        srv.stop()
    assert not os.path.exists(srv.state_dir / "room-link")
