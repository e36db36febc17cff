"""coturn config rendering: the options that must be there, the ones that must never be."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from types import SimpleNamespace

import pytest

from incognito_onion.config import Config
from incognito_onion.schema import defaults
from incognito_onion.turn.render import (
    DENIED_V4,
    DENIED_V6,
    Paths,
    RenderError,
    is_public,
    peer_rules,
    render,
)

PATHS = Paths(pidfile=Path("/s/turnserver.pid"), userdb=Path("/s/db"))
TLS_PATHS = Paths(pidfile=Path("/s/turnserver.pid"), userdb=Path("/s/db"),
                  tls_cert=Path("/s/c.pem"), tls_key=Path("/s/k.pem"))


def cfg(**turn) -> Config:
    return Config(defaults()).replace(**{f"turn.{k}": v for k, v in turn.items()})


def options(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_defaults_render_tcp_only_relay_with_rest_auth():
    lines = options(render(cfg(), "s3cret", PATHS))
    for must in ("listening-ip=127.0.0.1", "listening-port=3478", "relay-ip=127.0.0.2",
                 "min-port=49152", "max-port=49407", "no-udp", "no-dtls", "no-tls",
                 "no-tcp-relay", "use-auth-secret", "static-auth-secret=s3cret",
                 "realm=incognito-onion", "fingerprint", "no-cli", "no-multicast-peers",
                 "no-software-attribute", "stale-nonce=600", "user-quota=12",
                 "total-quota=300", "log-file=stdout", "simple-log",
                 "pidfile=/s/turnserver.pid", "userdb=/s/db"):
        assert must in lines, must
    # never: that refuses the UDP allocations browsers ask for ("442 UDP Transport")
    assert not any(ln.startswith("no-udp-relay") for ln in lines)
    assert not any(ln.startswith(("tls-listening-port", "cert=", "pkey=")) for ln in lines)
    assert not any(ln.startswith("max-bps") for ln in lines)  # 0 = no cap
    assert "verbose" not in lines  # per-session lines carry peer addresses
    assert len(lines) == len(set(lines))


def test_tls_adds_listener_and_files_and_drops_no_tls():
    lines = options(render(cfg(tls_port=5349), "x", TLS_PATHS))
    assert "tls-listening-port=5349" in lines
    assert "cert=/s/c.pem" in lines and "pkey=/s/k.pem" in lines
    assert "no-tls" not in lines and "no-dtls" in lines and "no-udp" in lines
    assert "no-tlsv1" in lines and "no-tlsv1_1" in lines
    assert not any(ln.startswith("no-udp-relay") for ln in lines)


def test_tls_without_files_is_refused():
    with pytest.raises(RenderError, match="certificate"):
        render(cfg(tls_port=5349), "x", PATHS)


def test_quota_bandwidth_and_realm_follow_config():
    lines = options(render(cfg(user_quota=3, total_quota=7, max_bps=125000, realm="r.example"),
                           "x", PATHS))
    assert {"user-quota=3", "total-quota=7", "max-bps=125000", "realm=r.example"} <= set(lines)


def test_loopback_relay_allows_only_itself():
    lines = options(render(cfg(), "x", PATHS))
    assert "allow-loopback-peers" in lines  # coturn refuses loopback peers before the allow list
    assert [ln for ln in lines if ln.startswith("allowed-peer-ip")] == ["allowed-peer-ip=127.0.0.2"]
    denied = {ln.split("=", 1)[1] for ln in lines if ln.startswith("denied-peer-ip=")}
    for rng in ("127.0.0.0-127.255.255.255", "10.0.0.0-10.255.255.255",
                "172.16.0.0-172.31.255.255", "192.168.0.0-192.168.255.255",
                "100.64.0.0-100.127.255.255", "169.254.0.0-169.254.255.255",
                "0.0.0.0-0.255.255.255", "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::ffff:0:0-::ffff:ffff:ffff",
                # a relay on loopback can only serve allocations here: deny every other address
                "0.0.0.0-255.255.255.255", "::1-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"):
        assert rng in denied, rng


def test_public_relay_denies_special_ranges_but_not_the_internet():
    rules = peer_rules("198.41.0.4")
    assert "allow-loopback-peers" not in rules
    assert "allowed-peer-ip=198.41.0.4" in rules
    assert "denied-peer-ip=0.0.0.0-255.255.255.255" not in rules
    assert "denied-peer-ip=10.0.0.0-10.255.255.255" in rules
    assert "denied-peer-ip=::1-::ffff:ffff" in rules


def test_private_relay_is_not_loopback_but_self_only():
    rules = peer_rules("10.9.8.7")
    assert "allow-loopback-peers" not in rules
    assert rules[0] == "allowed-peer-ip=10.9.8.7"
    assert "denied-peer-ip=0.0.0.0-255.255.255.255" in rules


def test_no_ipv6_deny_range_starts_at_unspecified():
    # coturn treats a range starting at :: as covering IPv4 too (it would deny every IPv4 peer)
    for lo, hi in DENIED_V6:
        assert not ipaddress.ip_address(lo).is_unspecified
        assert ipaddress.ip_address(lo) <= ipaddress.ip_address(hi)
    for lo, hi in DENIED_V4:
        assert ipaddress.ip_address(lo) <= ipaddress.ip_address(hi)


@pytest.mark.parametrize("ip,public", [
    ("8.8.8.8", True), ("198.41.0.4", True), ("2606:4700::1", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.20.0.1", False), ("192.168.1.1", False),
    ("100.100.0.1", False), ("169.254.1.1", False), ("0.1.2.3", False), ("224.0.0.1", False),
    ("::1", False), ("::", False), ("fd00::1", False), ("fe80::1", False),
    ("::ffff:127.0.0.1", False), ("64:ff9b::a00:1", False), ("2002:a00:1::", False),
])
def test_is_public(ip, public):
    assert is_public(ip) is public


def test_unspecified_relay_is_refused():
    with pytest.raises(RenderError, match="relay_ip"):
        peer_rules("0.0.0.0")


@pytest.mark.parametrize("realm", ["a\nverbose", "a\rb", " padded"])
def test_line_injection_is_refused(realm):
    # config.py already refuses newlines; render must not rely on that
    turn = SimpleNamespace(**{**cfg().turn._values, "realm": realm})
    with pytest.raises(RenderError, match="turn.realm"):
        render(SimpleNamespace(turn=turn), "x", PATHS)


def test_secret_with_spaces_is_refused():
    with pytest.raises(RenderError, match="secret"):
        render(cfg(), "two words", PATHS)
