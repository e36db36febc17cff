"""Loads config.yaml, the INCOGNITO_* environment and command-line overrides into one validated
:class:`Config`.

Bad values are refused with a message naming where the value came from, the key path and, for
the file, the line (``config.yaml:12: server.port: must be 1-65535, got "80a"``), so a
self-hoster can fix it without reading code. Precedence: CLI > environment > file > defaults.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .schema import BY_PATH, SETTINGS, Setting, defaults

CONFIG_ENV = "INCOGNITO_CONFIG"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(Exception):
    """One or more bad settings; ``str()`` is the message for a person, one problem a line."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Section:
    """Read-only attribute view of one config section (``cfg.server.port``)."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"Section({self._values!r})"


class Config:
    """Validated settings. ``cfg.get("server.port")`` or ``cfg.server.port``."""

    def __init__(self, values: Mapping[str, Any], source: Path | None = None):
        self._flat = dict(values)
        self.source = source
        sections: dict[str, dict[str, Any]] = {}
        for path, value in self._flat.items():
            head, _, leaf = path.rpartition(".")
            if head:
                sections.setdefault(head, {})[leaf] = value
        self._sections = {k: Section(v) for k, v in sections.items()}

    def get(self, path: str) -> Any:
        return self._flat[path]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._flat)

    def replace(self, **changes: Any) -> Config:
        """A copy with some flat keys changed (``replace(**{"server.port": 1})``); validated."""
        flat = dict(self._flat)
        problems: list[str] = []
        for path, value in changes.items():
            flat[path] = _check(BY_PATH[path], value, "override", problems)
        if problems:
            raise ConfigError(problems)
        return Config(flat, self.source)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._sections:
            return self._sections[name]
        if name in self._flat:
            return self._flat[name]
        raise AttributeError(name)


def default_config_path(env: Mapping[str, str] | None = None) -> Path | None:
    """The file used when ``--config`` is not given: ``$INCOGNITO_CONFIG``, else
    ``$XDG_CONFIG_HOME/incognito-onion/config.yaml`` if it exists, else none (defaults)."""
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    base = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    candidate = base / "incognito-onion" / "config.yaml"
    return candidate if candidate.exists() else None


def load(
    path: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the config: defaults, then the file, then ``INCOGNITO_*`` env, then ``overrides``
    (flat paths, from CLI flags). Raises :class:`ConfigError` listing every problem."""
    env = os.environ if env is None else env
    values = defaults()
    problems: list[str] = []
    source = Path(path) if path is not None else default_config_path(env)
    if source is not None:
        values.update(_from_file(source, problems))
    values.update(_from_env(env, problems))
    for key, raw in (overrides or {}).items():
        flag = "--" + key.rpartition(".")[2].replace("_", "-")
        values[key] = _check(BY_PATH[key], raw, f"{flag}: {key}", problems)
    _cross_checks(values, problems)
    if problems:
        raise ConfigError(problems)
    return Config(values, source)


def _from_file(path: Path, problems: list[str]) -> dict[str, Any]:
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(f"{path}: config file not found")
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot read config file: {exc.__class__.__name__}: {exc}")
        return {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark else name
        why = getattr(exc, "problem", None) or str(exc)
        problems.append(f"{where}: not valid YAML: {why}")
        return {}
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        problems.append(f"{name}:{root.start_mark.line + 1}: the file must be a mapping of "
                        "sections (server:, rooms:, ...)")
        return {}
    out: dict[str, Any] = {}
    _walk(root, "", name, out, problems)
    return out


def _walk(node: yaml.MappingNode, prefix: str, name: str, out: dict[str, Any],
          problems: list[str]) -> None:
    seen: set[str] = set()
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
        path = f"{prefix}{key}"
        if path in seen:
            problems.append(f"{name}:{line}: {path}: set twice")
            continue
        seen.add(path)
        if path in BY_PATH:
            try:
                value = yaml.SafeLoader(  # construct just this node, keeping YAML's typing
                    ""
                ).construct_object(value_node, deep=True)
            except yaml.YAMLError as exc:
                problems.append(f"{name}:{line}: {path}: not a valid value: {exc}")
                continue
            out[path] = _check(BY_PATH[path], value, f"{name}:{line}: {path}", problems)
        elif any(p.startswith(path + ".") for p in BY_PATH):
            if isinstance(value_node, yaml.MappingNode):
                _walk(value_node, path + ".", name, out, problems)
            elif not (isinstance(value_node, yaml.ScalarNode) and value_node.value in ("", "~",
                                                                                     "null")):
                problems.append(f"{name}:{line}: {path}: must be a section of keys, "
                                f"got {_show(value_node.value)}")
        else:
            problems.append(f"{name}:{line}: {path}: unknown key{_did_you_mean(path)}")


def _did_you_mean(path: str) -> str:
    names = list(BY_PATH) + sorted({p.split(".")[0] for p in BY_PATH})
    close = difflib.get_close_matches(path, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _from_env(env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in SETTINGS:
        if s.env in env:
            out[s.path] = _check(s, _parse_env(s, env[s.env]), f"{s.env}: {s.path}", problems)
    return out


def _parse_env(s: Setting, raw: str) -> Any:
    """Environment values are text; give them the type YAML would have given."""
    text = raw.strip()
    if s.kind == "bool":
        low = text.lower()
        return True if low in _TRUE else False if low in _FALSE else raw
    if s.kind == "int":
        try:
            return int(text)
        except ValueError:
            return raw
    if s.kind == "float":
        try:
            return float(text)
        except ValueError:
            return raw
    if s.kind == "list":
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                return raw
        return [line for line in (p.strip() for p in text.split("\n")) if line]
    return raw


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing"
    return json.dumps(value) if isinstance(value, (list, dict, int, float)) else repr(value)


def _check(s: Setting, value: Any, where: str, problems: list[str]) -> Any:
    """Validate one value; on failure add a message and return the default so checking goes on."""
    got = "(hidden)" if s.secret else _show(value)
    bad = None
    if s.kind in ("int", "float"):
        is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
        if s.kind == "int" and is_num and isinstance(value, float) and value.is_integer():
            value = int(value)
        ok_type = isinstance(value, int) if s.kind == "int" else is_num
        ok_type = ok_type and not isinstance(value, bool)
        rng = f"{_num(s.min)}-{_num(s.max)}"
        if not ok_type:
            bad = f"must be {'a whole number ' if s.kind == 'int' else 'a number '}{rng}"
            if s.kind == "int" and isinstance(value, str):
                bad = f"must be {rng}"
        elif (s.min is not None and value < s.min) or (s.max is not None and value > s.max):
            bad = f"must be {rng}"
        elif s.kind == "float":
            value = float(value)
    elif s.kind == "bool":
        if not isinstance(value, bool):
            bad = "must be true or false"
    elif s.kind == "str":
        if not isinstance(value, str):
            bad = "must be text (put it in quotes)"
    elif s.kind == "choice":
        if value not in s.choices:
            bad = "must be one of " + ", ".join(s.choices)
    elif s.kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            bad = "must be a list of text, e.g. [\"a\", \"b\"]"
    if bad is None and s.kind == "str":
        bad = _check_str(s, value)
    if bad is not None:
        problems.append(f"{where}: {bad}, got {got}")
        return s.default
    return value


def _check_str(s: Setting, value: str) -> str | None:
    if s.path in ("server.host", "turn.listen_ip", "turn.relay_ip"):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if s.path != "server.host" or not value or any(c.isspace() for c in value):
                return "must be an IP address"
    if "\n" in value or "\x00" in value:
        return "must be one line"
    return None


def _num(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)


def _cross_checks(values: dict[str, Any], problems: list[str]) -> None:
    if values["turn.min_port"] > values["turn.max_port"]:
        problems.append(f"turn.min_port: must not be above turn.max_port "
                        f"({values['turn.min_port']} > {values['turn.max_port']})")
    if bool(values["turn.tls_cert"]) != bool(values["turn.tls_key"]):
        problems.append("turn.tls_cert and turn.tls_key: give both or neither")
    if values["turn.tls_port"] and values["turn.tls_port"] == values["turn.port"]:
        problems.append("turn.tls_port: must differ from turn.port")
