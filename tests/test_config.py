"""Config loading: precedence, and one clear message per class of bad value."""

from pathlib import Path

import pytest

from incognito_onion import config, schema
from incognito_onion.config import ConfigError, load

ROOT = Path(__file__).resolve().parent.parent


def problems(tmp_path, text, env=None, overrides=None):
    p = tmp_path / "config.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load(p, env=env or {}, overrides=overrides)
    return exc.value.problems


def test_shipped_config_is_the_rendered_schema():
    """config/config.yaml lists every setting with its default (regenerate with
    `incognito-onion config defaults > config/config.yaml`)."""
    shipped = (ROOT / "config" / "config.yaml").read_text()
    assert shipped == schema.render_yaml()
    cfg = load(ROOT / "config" / "config.yaml", env={})
    assert cfg.as_dict() == schema.defaults()
    for s in schema.SETTINGS:
        assert s.doc and s.path.rpartition(".")[2] + ":" in shipped


def test_defaults_without_file(tmp_path):
    cfg = load(None, env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert cfg.server.port == 8080 and cfg.rooms.capacity == 6 and cfg.source is None


def test_precedence_cli_over_env_over_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("server:\n  port: 9000\nrooms:\n  capacity: 4\n")
    cfg = load(p, env={})
    assert cfg.server.port == 9000 and cfg.rooms.capacity == 4
    cfg = load(p, env={"INCOGNITO_SERVER_PORT": "9100"})
    assert cfg.server.port == 9100 and cfg.rooms.capacity == 4
    cfg = load(p, env={"INCOGNITO_SERVER_PORT": "9100"}, overrides={"server.port": 9200})
    assert cfg.server.port == 9200
    cfg = load(None, env={config.CONFIG_ENV: str(p)})
    assert cfg.server.port == 9000


def test_example_message_names_file_line_key(tmp_path):
    text = "# comment\nserver:\n  host: \"127.0.0.1\"\n  port: \"80a\"\n"
    assert problems(tmp_path, text) == ['config.yaml:4: server.port: must be 1-65535, got "80a"']


@pytest.mark.parametrize("text,expected", [
    ("server:\n  port: 70000\n", 'config.yaml:2: server.port: must be 1-65535, got 70000'),
    ("server:\n  port: 1.5\n", "config.yaml:2: server.port: must be a whole number 1-65535, "
                               "got 1.5"),
    ("server:\n  port: true\n", "config.yaml:2: server.port: must be a whole number 1-65535, "
                                "got true"),
    ("tor:\n  enabled: \"yes\"\n", 'config.yaml:2: tor.enabled: must be true or false, got "yes"'),
    ("server:\n  log_level: loud\n", 'config.yaml:2: server.log_level: must be one of debug, '
                                     'info, warning, error, got "loud"'),
    ("tor:\n  extra_torrc: \"x\"\n", 'config.yaml:2: tor.extra_torrc: must be a list of text, '
                                     'e.g. ["a", "b"], got "x"'),
    ("server:\n  host: [1]\n", "config.yaml:2: server.host: must be text (put it in quotes), "
                               "got [1]"),
    ("turn:\n  relay_ip: nothere\n", 'config.yaml:2: turn.relay_ip: must be an IP address, '
                                     'got "nothere"'),
    ("server:\n  prot: 1\n", "config.yaml:2: server.prot: unknown key (did you mean "
                             "server.port?)"),
    ("colour: red\n", "config.yaml:1: colour: unknown key"),
    ("server: 5\n", "config.yaml:1: server: must be a section of keys, got \"5\""),
    ("server:\n  port: 1\n  port: 2\n", "config.yaml:3: server.port: set twice"),
    ("- a\n- b\n", "config.yaml:1: the file must be a mapping of sections (server:, rooms:, ...)"),
    ("server:\n  port: [\n", None),  # YAML syntax
])
def test_each_bad_value_class_has_its_message(tmp_path, text, expected):
    got = problems(tmp_path, text)
    assert len(got) == 1
    if expected is None:
        assert got[0].startswith("config.yaml:") and "not valid YAML" in got[0]
    else:
        assert got[0] == expected


def test_secret_values_are_not_echoed(tmp_path):
    got = problems(tmp_path, "tor:\n  control_password: 12345\n")
    assert got == ["config.yaml:2: tor.control_password: must be text (put it in quotes), "
                   "got (hidden)"]


def test_env_and_cli_errors_name_their_source(tmp_path):
    got = problems(tmp_path, "", env={"INCOGNITO_ROOMS_CAPACITY": "lots",
                                      "INCOGNITO_TURN_ENABLED": "perhaps"},
                   overrides={"server.port": "x"})
    assert 'INCOGNITO_ROOMS_CAPACITY: rooms.capacity: must be 2-50, got "lots"' in got
    assert 'INCOGNITO_TURN_ENABLED: turn.enabled: must be true or false, got "perhaps"' in got
    assert '--port: server.port: must be 1-65535, got "x"' in got


def test_env_types(tmp_path):
    cfg = load(None, env={"XDG_CONFIG_HOME": str(tmp_path), "INCOGNITO_TOR_ENABLED": "off",
                          "INCOGNITO_TOR_EXTRA_TORRC": '["A 1", "B 2"]',
                          "INCOGNITO_LIMITS_EVENTS_PER_SECOND": "7"})
    assert cfg.tor.enabled is False and cfg.tor.extra_torrc == ["A 1", "B 2"]
    assert cfg.limits.events_per_second == 7.0


def test_cross_checks(tmp_path):
    got = problems(tmp_path, "turn:\n  min_port: 50000\n  max_port: 49999\n  tls_cert: a.pem\n")
    assert any("turn.min_port: must not be above turn.max_port" in g for g in got)
    assert any("give both or neither" in g for g in got)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load(tmp_path / "nope.yaml", env={})
    assert exc.value.problems == [f"{tmp_path / 'nope.yaml'}: config file not found"]


def test_empty_file_is_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("# nothing\n")
    assert load(p, env={}).as_dict() == schema.defaults()
