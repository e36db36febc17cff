"""Tor modules without a tor network: parsing, keys, torrc, ADD_ONION text, `keys` CLI."""

from __future__ import annotations

import argparse
import base64
import os
import stat

import pytest
import stem.version
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from incognito_onion import cli_keys, config
from incognito_onion.tor import client_keys, errors
from incognito_onion.tor.attach import ControlAddress, parse_control
from incognito_onion.tor.control import parse_bootstrap_phase, parse_version
from incognito_onion.tor.launch import MAX_SOCKET_PATH, build_torrc
from incognito_onion.tor.onion_key import (
    OnionKey,
    OnionKeyError,
    key_path,
    load_key,
    load_or_create_key,
    onion_address,
    public_key_of_seed,
)
from incognito_onion.tor.publish import add_onion_command, probe_features


def make_cfg(tmp_path, **overrides):
    empty = tmp_path / "empty-config.yaml"
    empty.write_text("")
    return config.load(empty, env={}, overrides=overrides)


# -- errors ----------------------------------------------------------------------------------

def test_every_error_has_its_own_exit_code_and_one_line_message():
    codes = [cls.exit_code for cls in errors.ALL_ERRORS]
    assert len(codes) == len(set(codes))
    assert all(20 <= c <= 39 for c in codes)
    err = errors.TorBootstrapTimeout("stuck at 5% (Connecting)", 5, "Connecting")
    assert str(err) == "stuck at 5% (Connecting)" and "\n" not in str(err)
    assert isinstance(errors.TorWrongPassword("x"), errors.TorAuthFailed)


# -- parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,expected", [
    ("127.0.0.1:9051", ControlAddress(host="127.0.0.1", port=9051)),
    ("9151", ControlAddress(host="127.0.0.1", port=9151)),
    ("localhost:9051", ControlAddress(host="localhost", port=9051)),
    ("[::1]:9051", ControlAddress(host="::1", port=9051)),
    ("/run/tor/control", ControlAddress(path="/run/tor/control")),
    ("unix:/run/tor/control", ControlAddress(path="/run/tor/control")),
])
def test_parse_control(spec, expected):
    assert parse_control(spec) == expected


@pytest.mark.parametrize("spec", ["nonsense", "host:", "host:99999", ":9051", "unix:"])
def test_parse_control_refuses_garbage(spec):
    with pytest.raises(ValueError, match="tor.control"):
        parse_control(spec)


def test_parse_bootstrap_phase():
    p = parse_bootstrap_phase('NOTICE BOOTSTRAP PROGRESS=14 TAG=handshake '
                              'SUMMARY="Handshaking with a relay"')
    assert (p.percent, p.tag, p.summary) == (14, "handshake", "Handshaking with a relay")
    w = parse_bootstrap_phase('WARN BOOTSTRAP PROGRESS=5 TAG=conn SUMMARY="Connecting to a relay"'
                              ' WARNING="Connection refused" REASON=CONNECTREFUSED COUNT=3 '
                              'RECOMMENDATION=warn HOSTID="$AAAA" HOSTADDR="127.0.0.1:1"')
    assert w.percent == 5 and w.warning == "Connection refused"
    assert "127.0.0.1" not in w.describe()  # tor's HOSTADDR never reaches our messages
    assert parse_bootstrap_phase("").percent == 0


def test_parse_version():
    assert str(parse_version("Tor version 0.4.9.11.\nThis build...")) == "0.4.9.11"
    assert parse_version("Tor version 0.4.9.2-alpha (git-abc).") == stem.version.Version(
        "0.4.9.2-alpha")
    assert parse_version("hello") is None


def test_features_follow_the_version():
    new = probe_features(stem.version.Version("0.4.9.11"))
    assert new.pow and new.max_streams and not new.pow_reason
    old = probe_features(stem.version.Version("0.4.8.12"))
    assert not old.pow and "0.4.9.2" in old.pow_reason
    no_module = probe_features(stem.version.Version("0.4.9.11"), pow_module=False)
    assert not no_module.pow and "pow: no" in no_module.pow_reason


# -- onion key ---------------------------------------------------------------------------------

def test_onion_key_public_key_matches_cryptography():
    for _ in range(4):
        seed = os.urandom(32)
        key = OnionKey.from_seed(seed)
        assert key.public_key == public_key_of_seed(seed)
        assert len(key.service_id) == 56 and key.address.endswith(".onion")
        assert OnionKey.from_tor(key.to_tor()) == key
    assert "secret" in repr(key) and key.to_tor() not in repr(key)


def test_onion_address_of_known_key():
    # a key tor itself made (ADD_ONION NEW:ED25519-V3) and the ServiceID tor reported for it
    key = OnionKey.from_tor("ED25519-V3:8LRwKgZyJG80t1l3+ein/k8LB/ROtrERbQIS8hVTRWji5XAhGWBw"
                            "qB+B6P8J97e8WD9+z9Bt5dcK7oAvBnK+qQ==")
    assert key.service_id == "2xbqtrbtoh2rcq5whhht5aeqhtx6nffi2rosjpqiwbkpvhqnuvictiid"
    assert onion_address(key.public_key) == key.service_id


def test_bad_onion_keys_are_refused():
    with pytest.raises(OnionKeyError):
        OnionKey.from_tor("RSA1024:abcd")
    with pytest.raises(OnionKeyError):
        OnionKey.from_tor("ED25519-V3:" + base64.b64encode(b"\xff" * 64).decode())


def test_persistent_key_is_stored_0600_and_reused(tmp_path):
    a = load_or_create_key(tmp_path, persistent=True)
    mode = stat.S_IMODE(key_path(tmp_path).stat().st_mode)
    assert mode == 0o600
    assert load_or_create_key(tmp_path, persistent=True) == a
    assert load_key(tmp_path) == a
    assert load_or_create_key(tmp_path, persistent=False) != a  # in memory only
    key_path(tmp_path).write_text("garbage")
    key_path(tmp_path).chmod(0o600)
    with pytest.raises(OnionKeyError, match="not an onion key"):
        load_key(tmp_path)


# -- ADD_ONION ---------------------------------------------------------------------------------

def test_add_onion_command_with_everything():
    key = OnionKey.generate()
    cmd = add_onion_command(key, {3478: ("127.0.0.1", 3479), 80: ("127.0.0.1", 8080)},
                            client_keys=["A" * 52, "B" * 52], pow_defense=True, max_streams=16)
    assert cmd == (f"ADD_ONION {key.to_tor()} Flags=DiscardPK,V3Auth,MaxStreamsCloseCircuit "
                   f"MaxStreams=16 PoWDefensesEnabled=1 Port=80,127.0.0.1:8080 "
                   f"Port=3478,127.0.0.1:3479 ClientAuthV3={'A' * 52} ClientAuthV3={'B' * 52}")


def test_add_onion_command_plain():
    key = OnionKey.generate()
    cmd = add_onion_command(key, {80: ("127.0.0.1", 8080)})
    assert cmd == f"ADD_ONION {key.to_tor()} Flags=DiscardPK Port=80,127.0.0.1:8080"
    with pytest.raises(ValueError):
        add_onion_command(key, {})
    with pytest.raises(ValueError):
        add_onion_command(key, {80: ("127.0.0.1 Port=1", 8080)})


# -- torrc -------------------------------------------------------------------------------------

def test_torrc_uses_a_control_socket_and_no_socks(tmp_path):
    plan = build_torrc(tmp_path, ["Foo 1"], owner_pid=4242)
    assert plan.control_socket == tmp_path / "control.sock"
    assert f"ControlSocket unix:{tmp_path / 'control.sock'}" in plan.lines
    assert "ControlPort 0" in plan.lines and "SocksPort 0" in plan.lines
    assert "CookieAuthentication 1" in plan.lines
    assert "__OwningControllerProcess 4242" in plan.lines
    assert plan.lines[-1] == "Foo 1"  # extra lines last: they win


def test_torrc_falls_back_to_a_port_for_long_paths(tmp_path):
    deep = tmp_path / ("d" * (MAX_SOCKET_PATH + 1))
    plan = build_torrc(deep)
    assert plan.control_socket is None
    assert "ControlPort 127.0.0.1:auto" in plan.lines
    assert f"ControlPortWriteToFile {deep / 'control.port'}" in plan.lines


def test_torrc_socks_port_when_asked(tmp_path):
    assert "SocksPort 9150" in build_torrc(tmp_path, socks_port=9150).lines
    lines = build_torrc(tmp_path, ["socksport 127.0.0.1:9999"]).lines
    assert not any(line.startswith("SocksPort") for line in lines)
    with pytest.raises(errors.TorLaunchFailed, match="single torrc line"):
        build_torrc(tmp_path, ["A 1\nB 2"])


# -- client keys -------------------------------------------------------------------------------

def test_client_keys_add_list_remove(tmp_path):
    k = client_keys.add(tmp_path, "alice")
    client_keys.add(tmp_path, "bob-2")
    path = tmp_path / "client_keys" / "alice.auth"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "client_keys").stat().st_mode) == 0o700
    assert path.read_text() == f"descriptor:x25519:{k.public}\n"
    assert k.private not in path.read_text()
    # the stored public half belongs to the printed private half
    raw = base64.b32decode(k.private + "====")
    pub = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    assert base64.b32encode(pub).decode().rstrip("=") == k.public
    assert [c.name for c in client_keys.list_keys(tmp_path)] == ["alice", "bob-2"]
    with pytest.raises(client_keys.ClientKeyError, match="exists already"):
        client_keys.add(tmp_path, "alice")
    with pytest.raises(client_keys.ClientKeyError, match="bad key name"):
        client_keys.add(tmp_path, "../evil")
    assert client_keys.remove(tmp_path, "alice") is True
    assert client_keys.remove(tmp_path, "alice") is False
    assert [c.name for c in client_keys.list_keys(tmp_path)] == ["bob-2"]


def test_client_key_lines():
    k = client_keys.generate("x")
    sid = "a" * 56
    assert k.browser_line(sid + ".onion") == f"{sid}:descriptor:x25519:{k.private}"
    assert len(k.private) == 52 and len(k.public) == 52
    assert base64.b64decode(k.tor_client_auth().removeprefix("x25519:")) == base64.b32decode(
        k.private + "====")


def _keys_parser():
    parser = argparse.ArgumentParser(prog="incognito-onion")
    sub = parser.add_subparsers(dest="command")
    cli_keys.register(sub)
    return parser


def test_keys_cli(tmp_path, capsys):
    parser = _keys_parser()
    cfg = make_cfg(tmp_path, **{"tor.persistent_key": True, "tor.client_auth": True})
    state = tmp_path / "state"

    args = parser.parse_args(["keys", "add", "alice"])
    assert args.func(args, cfg, state) == 0
    out = capsys.readouterr().out
    sid = load_key(state).service_id  # persistent key made so the line can name the onion
    priv = next(line.strip() for line in out.splitlines() if line.strip().startswith(sid))
    assert priv.startswith(f"{sid}:descriptor:x25519:")
    assert priv.rpartition(":")[2] not in (state / "client_keys" / "alice.auth").read_text()

    args = parser.parse_args(["keys", "add", "alice"])
    assert args.func(args, cfg, state) == 1
    assert "exists already" in capsys.readouterr().err

    args = parser.parse_args(["keys", "list"])
    assert args.func(args, cfg, state) == 0
    out = capsys.readouterr().out
    assert "alice" in out and "1 key;" in out

    args = parser.parse_args(["keys", "remove", "alice"])
    assert args.func(args, cfg, state) == 0
    args = parser.parse_args(["keys", "remove", "alice"])
    assert args.func(args, cfg, state) == 1
    assert "no key named" in capsys.readouterr().err

    args = parser.parse_args(["keys"])
    assert args.func(args, cfg, state) == 2


def test_keys_add_without_persistent_key_prints_the_bare_key(tmp_path, capsys):
    parser = _keys_parser()
    cfg = make_cfg(tmp_path)
    args = parser.parse_args(["keys", "add", "bob"])
    assert args.func(args, cfg, tmp_path / "s") == 0
    out = capsys.readouterr().out
    assert "persistent_key is off" in out and "client_auth is off" in out
    assert not key_path(tmp_path / "s").exists()


def test_keys_through_the_cli(tmp_path, capsys, monkeypatch):
    from incognito_onion import cli

    for name in list(os.environ):
        if name.startswith("INCOGNITO_"):
            monkeypatch.delenv(name)
    conf = tmp_path / "config.yaml"
    conf.write_text("tor:\n  persistent_key: true\n  client_auth: true\n")
    state = tmp_path / "state"
    base = ["--config", str(conf), "--state-dir", str(state)]
    assert cli.main([*base, "keys", "add", "carol"]) == 0
    out = capsys.readouterr().out
    sid = load_key(state).service_id
    assert f"{sid}:descriptor:x25519:" in out
    # flags after the subcommand work too
    assert cli.main(["keys", "list", "--config", str(conf), "--state-dir", str(state)]) == 0
    assert "carol" in capsys.readouterr().out
    assert cli.main([*base, "keys", "remove", "nobody"]) == 1
    assert "incognito-onion: no key named 'nobody'" in capsys.readouterr().err
    assert cli.main([*base, "keys"]) == 2


def test_last_problem_skips_the_root_nag_and_prefers_errors(tmp_path):
    """The message when tor dies names its last telling line, not the notice every root start
    leaves (the one seen after a kill -9, when tor had no time to say anything)."""
    from incognito_onion.tor.launch import LaunchedTor

    tor = LaunchedTor(process=None, datadir=tmp_path, plan=None)  # type: ignore[arg-type]
    (tmp_path / "tor.log").write_text(
        "Dec 01 00:00:00.000 [warn] You are running Tor as root. You don't need to, and you "
        "probably shouldn't.\n")
    assert tor.last_problem() == ""
    (tmp_path / "tor.stdout").write_text(
        "Dec 01 00:00:00.000 [warn] Could not bind to 127.0.0.1:9050: Address already in use.\n"
        "Dec 01 00:00:01.000 [err] Reading config failed--see warnings above.\n")
    assert tor.last_problem() == "Could not bind to 127.0.0.1:9050: Address already in use."


def test_a_relaunch_keeps_the_previous_runs_log(tmp_path):
    from incognito_onion.tor.launch import DATA_DIR_NAME, _prepare_datadir

    datadir = tmp_path / DATA_DIR_NAME
    datadir.mkdir(mode=0o700)
    (datadir / "tor.log").write_text("[err] why the last tor died\n")
    (datadir / "control.port").write_text("PORT=127.0.0.1:1\n")
    assert _prepare_datadir(tmp_path) == datadir
    assert not (datadir / "tor.log").exists() and not (datadir / "control.port").exists()
    assert (datadir / "tor.log.1").read_text() == "[err] why the last tor died\n"
