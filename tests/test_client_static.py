"""The web client's files: vendored libraries match their checksums and pinned versions, the
types check (tsc --checkJs), the DOM-free modules pass their node unit tests, and the pages
carry nothing the CSP would refuse (no inline script, style or event handler)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "static"
VENDOR = STATIC / "vendor"


def _npm_ready() -> None:
    """node_modules from package-lock.json (npm ci), once."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    if not (REPO / "node_modules" / "typescript" / "package.json").exists():
        subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=REPO,
                       check=True, capture_output=True, timeout=300)


def test_vendored_files_match_their_checksums():
    lines = (VENDOR / "SHA256SUMS").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert {"socket.io.esm.min.js", "socket.io-client.LICENSE", "qrcode.mjs",
            "qrcode-generator.LICENSE"} <= set(listed)
    on_disk = {p.name for p in VENDOR.iterdir()} - {"SHA256SUMS"}
    assert on_disk == set(listed), f"unlisted files in static/vendor: {on_disk - set(listed)}"


def test_vendored_versions_are_the_pinned_ones():
    pkg = json.loads((REPO / "package.json").read_text())
    lock = json.loads((REPO / "package-lock.json").read_text())
    versions = dict(line.split() for line in (VENDOR / "VERSIONS").read_text().splitlines())
    for name in ("socket.io-client", "qrcode-generator", "typescript"):
        pinned = pkg["devDependencies"][name]
        assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), f"{name} is not pinned exactly: {pinned}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == pinned
        if name in versions:
            assert versions[name] == pinned, name
    assert pkg["devDependencies"]["socket.io-client"].startswith("4.8.")
    head = (VENDOR / "socket.io.esm.min.js").read_text()[:200]
    assert f"Socket.IO v{versions['socket.io-client']}" in head
    assert "MIT" in (VENDOR / "socket.io-client.LICENSE").read_text()
    assert "MIT" in (VENDOR / "qrcode-generator.LICENSE").read_text()


def test_vendored_files_are_what_npm_ships():
    _npm_ready()
    r = subprocess.run([str(REPO / "scripts" / "vendor-socketio"), "--check"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_types_check():
    _npm_ready()
    r = subprocess.run(["npx", "--no-install", "tsc", "-p", "."], cwd=REPO, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr


def test_js_unit_tests_pass():
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    files = sorted(str(p) for p in (REPO / "tests" / "client_js").glob("*.test.mjs"))
    assert files
    r = subprocess.run(["node", "--test", *files], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert re.search(r"^# fail 0$", r.stdout, re.M) and not re.search(r"^# pass 0$", r.stdout,
                                                                      re.M)


class _Audit(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in a:
            if k == "style" or k.startswith("on"):
                self.problems.append(f"<{tag} {k}=...> (inline {k})")
        if tag == "script":
            if not a.get("src"):
                self.problems.append("<script> without src (inline script)")
            elif not a["src"].startswith("/static/"):
                self.problems.append(f"script from {a['src']}")
            self._in_script = True
        if tag == "style":
            self.problems.append("<style> element (inline style)")
        if tag == "link" and a.get("rel") == "stylesheet" and not a["href"].startswith("/static/"):
            self.problems.append(f"stylesheet from {a['href']}")
        for k in ("src", "href", "action"):
            v = a.get(k) or ""
            if re.match(r"(https?:)?//", v):
                self.problems.append(f"{tag} {k}={v} (off-origin)")


@pytest.mark.parametrize("page", ["index.html", "room.html"])
def test_pages_have_nothing_the_csp_refuses(page):
    audit = _Audit()
    audit.feed((STATIC / page).read_text())
    assert audit.problems == []


def test_landing_and_room_are_the_same_app():
    assert (STATIC / "index.html").read_text() == (STATIC / "room.html").read_text()


def test_modules_use_no_eval_or_inline_styles():
    for js in (STATIC / "js").glob("*.js"):
        text = js.read_text()
        assert not re.search(r"\beval\(|new Function\(|setAttribute\(['\"]style", text), js
        assert not re.search(r"\.innerHTML\s*=", text), f"{js}: build DOM, not HTML strings"
        assert not re.search(r"https?://[a-z0-9]", text), f"{js}: names an absolute URL"


def test_protocol_and_crypto_modules_never_touch_the_dom():
    for name in ("crypto.js", "signaling.js", "mesh.js", "capabilities.js"):
        text = (STATIC / "js" / name).read_text()
        assert not re.search(r"\b(document|window)\.", text), name
