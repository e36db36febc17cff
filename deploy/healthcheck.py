"""Health check for containers and service managers: GET /healthz on the web server that
`incognito-onion up` runs, at the address and port its configuration gives (config file,
INCOGNITO_* environment, same rules as `up`). Exit 0 when it answers {"status": "ok"}, 1
otherwise, with one line saying why. Standard library plus incognito_onion's config loader; no
curl needed.

    python deploy/healthcheck.py [--timeout SECONDS]
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request


def target(host: str, port: int) -> str:
    """The URL to probe: a wildcard bind address is probed on loopback."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - comparing, not binding
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def main(argv: list[str]) -> int:
    timeout = 5.0
    if argv[:1] == ["--timeout"] and len(argv) == 2:
        timeout = float(argv[1])
    elif argv:
        print("usage: healthcheck.py [--timeout SECONDS]", file=sys.stderr)
        return 2
    try:
        from incognito_onion.config import ConfigError, load
    except ImportError as exc:
        print(f"unhealthy: incognito_onion is not importable ({exc})")
        return 1
    try:
        cfg = load()
    except ConfigError as exc:
        print(f"unhealthy: bad config: {exc.problems[0]}")
        return 1
    url = target(cfg.server.host, int(cfg.server.port))
    # a plain opener: no proxy from the environment (the server is local)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:  # noqa: S310 - http to ourselves
            body = json.loads(resp.read(4096) or b"{}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"unhealthy: {url}: {reason}")
        return 1
    if body.get("status") != "ok":
        print(f"unhealthy: {url} answered {body!r}")
        return 1
    print(f"healthy: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
