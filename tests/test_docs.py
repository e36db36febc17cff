"""The docs cannot drift from the code: the config reference is regenerated from the schema and
compared; every setting, environment variable, command, file path, link and YAML example the
guides mention exists and is valid."""

import re
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from incognito_onion import docs_gen, doctor
from incognito_onion.cli import build_parser
from incognito_onion.config import CONFIG_ENV, load
from incognito_onion.schema import BY_PATH, SECTION_DOCS, SETTINGS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GUIDES = [DOCS / "self-hosting.md", DOCS / "browsers.md", DOCS / "config-reference.md"]


# --- the generated reference ---------------------------------------------------------------------

def test_config_reference_is_generated_from_the_schema():
    current = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    assert current == docs_gen.render_reference(), \
        "docs/config-reference.md is stale: run scripts/gen-config-reference"


def test_the_check_script_agrees_and_can_fail(tmp_path, monkeypatch):
    p = subprocess.run([str(ROOT / "scripts" / "gen-config-reference"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    stale = tmp_path / "config-reference.md"
    stale.write_text(docs_gen.render_reference().replace("`8080`", "`8081`"))
    monkeypatch.setattr(docs_gen, "REFERENCE_PATH", stale)
    assert docs_gen.main(["--check"]) == 1
    assert docs_gen.main(["--write"]) == 0
    assert docs_gen.main(["--check"]) == 0
    assert stale.read_text() == docs_gen.render_reference()


def test_reference_lists_every_setting_once_in_schema_order():
    text = (DOCS / "config-reference.md").read_text()
    rows = re.findall(r"^\| `([a-z_.]+)` \| ", text, re.M)
    assert rows == [s.path for s in SETTINGS]
    for s in SETTINGS:
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| `{s.path}` |"))
        assert f"`{s.env}`" in row and s.doc.replace("|", "\\|") in row
    for doc in SECTION_DOCS.values():
        assert doc in text


def test_reference_rows_follow_the_rules():
    rows = {ln.split("`")[1]: ln for ln in (DOCS / "config-reference.md").read_text()
            .splitlines() if ln.startswith("| `") and "`INCOGNITO_" in ln}
    assert "| 1-65535 |" in rows["server.port"]
    assert "`debug`, `info`, `warning`, `error`" in rows["server.log_level"]
    assert "*(secret: never shown)*" in rows["tor.control_password"]
    assert "| `true` |" in rows["tor.pow_defense"]


def test_reference_flags_are_the_parsers():
    text = (DOCS / "config-reference.md").read_text()
    up = next(a for a in build_parser()._actions if hasattr(a, "choices") and
              isinstance(a.choices, dict) and "up" in a.choices).choices["up"]
    flags = {max(a.option_strings, key=len) for a in up._actions
             if a.option_strings and "--help" not in a.option_strings}
    documented = set(re.findall(r"^\| `(--[a-z-]+)", text, re.M))
    assert documented == flags


# --- the guides ----------------------------------------------------------------------------------

def _code(text):
    """Fenced blocks and inline code spans."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return blocks + re.findall(r"`([^`\n]+)`", prose)


def _slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


@pytest.mark.parametrize("doc", GUIDES, ids=lambda p: p.name)
def test_links_resolve(doc):
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.exists(), f"{doc.name}: broken link {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", dest.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{doc.name}: no #{anchor} in {dest}"


@pytest.mark.parametrize("doc", GUIDES, ids=lambda p: p.name)
def test_environment_variables_and_settings_exist(doc):
    text = doc.read_text()
    envs = {s.env for s in SETTINGS} | {CONFIG_ENV}
    for name in re.findall(r"\bINCOGNITO_[A-Z_]+", text):
        assert name.rstrip("_") in envs, f"{doc.name}: unknown variable {name}"
    for span in _code(text):
        for m in re.finditer(r"(?<![\w.:/=-])((?:server|rooms|limits|media|turn|tor)\.[a-z_]+)"
                             r"(?![\w.-])", span):
            assert m.group(1) in BY_PATH, f"{doc.name}: unknown setting {m.group(1)}"


SUB = {"up": None, "doctor": None, "keys": {"add", "list", "remove"},
       "config": {"defaults", "check", "show"}}


@pytest.mark.parametrize("doc", GUIDES, ids=lambda p: p.name)
def test_commands_exist(doc):
    parser_text = build_parser().format_help()
    for name in SUB:
        assert name in parser_text
    found = 0
    for span in _code(doc.read_text()):
        for m in re.finditer(r"(?:^|`|bin/|\$ |exec \S+ )incognito-onion ([a-z]+)(?: ([a-z]+))?",
                             span, re.M):
            cmd, sub = m.group(1), m.group(2)
            assert cmd in SUB, f"{doc.name}: no command 'incognito-onion {cmd}'"
            if SUB[cmd] is not None and sub is not None:
                assert sub in SUB[cmd], f"{doc.name}: no 'incognito-onion {cmd} {sub}'"
            found += 1
    if doc.name == "self-hosting.md":
        assert found >= 5


@pytest.mark.parametrize("doc", GUIDES, ids=lambda p: p.name)
def test_repository_paths_exist(doc):
    for path in re.findall(r"(?<![\w-])((?:scripts|deploy|config|docs|static|incognito_onion)"
                           r"/[\w./-]*[\w])", doc.read_text()):
        assert (ROOT / path).exists(), f"{doc.name}: {path} does not exist"


def test_yaml_examples_are_valid_config(tmp_path):
    text = (DOCS / "self-hosting.md").read_text()
    blocks = re.findall(r"^ *```yaml\n(.*?)^ *```", text, re.M | re.S)
    assert blocks
    for n, block in enumerate(blocks):
        lines = block.splitlines()
        indent = min(len(ln) - len(ln.lstrip()) for ln in lines if ln.strip())
        f = tmp_path / f"example{n}.yaml"
        f.write_text("\n".join(ln[indent:] for ln in lines) + "\n")
        yaml.safe_load(f.read_text())
        load(f, env={})  # raises ConfigError on a wrong key or value


def test_doctor_example_matches_the_doctor(tmp_path):
    text = (DOCS / "self-hosting.md").read_text()
    example = re.search(r"\$ \.venv/bin/incognito-onion doctor\n(.*?)^```", text,
                        re.M | re.S).group(1).splitlines()
    line = re.compile(r"^(ok|warn|fail|skip) +(?P<name>[^:]+): ")

    def free():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    cfg = load(None, env={}, overrides={"server.port": free(), "turn.port": free()})
    real = {c.name for c in doctor.run_checks(cfg, tmp_path / "s")}
    for ln in example[:-1]:
        m = line.match(ln)
        assert m, ln
        assert m.group("name") == "config" or m.group("name") in real, ln
    assert example[-1].startswith("doctor: ")


def test_browsers_page_matches_what_the_page_tells_people():
    page = (DOCS / "browsers.md").read_text()
    client = (ROOT / "static" / "js" / "capabilities.js").read_text()
    pref = "media.peerconnection.ice.proxy_only_if_behind_proxy"
    assert pref in client and f"{pref} = false" in page
    for browser in ("Tor Browser", "Mullvad Browser", "Firefox", "Chromium", "Phones"):
        assert f"## {browser}" in page
    assert 'chromium --proxy-server="socks5://127.0.0.1:9050"' in page
