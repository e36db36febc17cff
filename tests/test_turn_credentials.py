"""TURN REST credentials: known answer, expiry, the iceServers the browser gets."""

from __future__ import annotations

import pytest

from incognito_onion.turn.credentials import (
    expiry_of,
    host_only,
    ice_servers,
    is_valid,
    issue,
    make_password,
    make_username,
    turn_urls,
)

# computed independently: printf '%s' '1700000000:peerA' |
#   openssl dgst -sha1 -hmac 'not-a-real-secret' -binary | base64
KAT_SECRET, KAT_USER, KAT_PASSWORD = "not-a-real-secret", "1700000000:peerA", \
    "G0tyL3JydYnhWJtYwSkfnQ9a3No="


def test_known_answer():
    assert make_password(KAT_SECRET, KAT_USER) == KAT_PASSWORD
    assert make_password(KAT_SECRET.encode(), KAT_USER) == KAT_PASSWORD


def test_issue_encodes_expiry_and_peer():
    cred = issue(KAT_SECRET, "peerA", ttl=600, now=1699999400.7)
    assert cred.username == KAT_USER and cred.expires == 1700000000
    assert cred.password == KAT_PASSWORD
    assert expiry_of(cred.username) == 1700000000


def test_validity_window():
    cred = issue("s", "p", ttl=60, now=1000)
    assert is_valid("s", cred.username, cred.password, now=1000)
    assert is_valid("s", cred.username, cred.password, now=1060)
    assert not is_valid("s", cred.username, cred.password, now=1061)  # expired
    assert not is_valid("other", cred.username, cred.password, now=1000)  # wrong secret
    assert not is_valid("s", "p", cred.password, now=1000)  # no expiry


@pytest.mark.parametrize("peer", ["", "a:b", "a b", "x" * 129, "é"])
def test_bad_peer_ids_are_refused(peer):
    with pytest.raises(ValueError):
        make_username(peer, 1)


def test_ttl_must_be_positive():
    with pytest.raises(ValueError):
        issue("s", "p", ttl=0)


def test_turn_urls():
    assert turn_urls("abc.onion", 3478) == ["turn:abc.onion:3478?transport=tcp"]
    assert turn_urls("127.0.0.1", 3478, 443, ["turns:t.example.org:443?transport=tcp"]) == [
        "turn:127.0.0.1:3478?transport=tcp", "turns:127.0.0.1:443?transport=tcp",
        "turns:t.example.org:443?transport=tcp"]
    assert turn_urls("::1", 3478) == ["turn:[::1]:3478?transport=tcp"]
    assert turn_urls("h", 1, 0, ["turn:h:1?transport=tcp"]) == ["turn:h:1?transport=tcp"]


def test_ice_servers_shape():
    urls = turn_urls("h.onion", 3478)
    servers = ice_servers(KAT_SECRET, "peerA", 600, urls, now=1699999400)
    assert servers == [{"urls": urls, "username": KAT_USER, "credential": KAT_PASSWORD}]
    assert servers[0]["urls"] is not urls  # a copy the caller may change
    assert ice_servers(KAT_SECRET, "peerA", 600, [], now=0) == []


def test_each_peer_gets_its_own_credential():
    a = ice_servers("s", "peerA", 600, ["turn:h:1?transport=tcp"], now=0)[0]
    b = ice_servers("s", "peerB", 600, ["turn:h:1?transport=tcp"], now=0)[0]
    assert a["username"] != b["username"] and a["credential"] != b["credential"]


@pytest.mark.parametrize("header,host", [
    ("abc.onion", "abc.onion"), ("abc.onion:80", "abc.onion"), ("127.0.0.1:8080", "127.0.0.1"),
    ("[::1]:8080", "::1"), ("[::1]", "::1"), ("::1", "::1")])
def test_host_only(header, host):
    assert host_only(header) == host
