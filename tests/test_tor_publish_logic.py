"""publish(): the HS_DESC bookkeeping and ADD_ONION error handling, against a scripted fake
controller (the real thing is exercised in test_tor_network.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import stem
import stem.version

from incognito_onion.tor.control import Control
from incognito_onion.tor.errors import TorPublishFailed, TorPublishTimeout
from incognito_onion.tor.onion_key import OnionKey
from incognito_onion.tor.publish import probe_features, publish

NEW_TOR = probe_features(stem.version.Version("0.4.9.11"))


def ok(service_id):
    lines = [("250", "-", f"ServiceID={service_id}"), ("250", " ", "OK")]
    return SimpleNamespace(is_ok=lambda: True, content=lambda: lines)


def error(code, text):
    return SimpleNamespace(is_ok=lambda: False, content=lambda: [(code, " ", text)])


def ev(action, address, fp, reason=None):
    return SimpleNamespace(action=getattr(stem.HSDescAction, action), address=address,
                           directory_fingerprint=fp, directory=f"${fp}~relay", reason=reason)


class FakeController:
    """Answers ADD_ONION from a script and then fires the scripted HS_DESC events."""

    def __init__(self, replies, events=()):
        self.replies = list(replies)
        self.events = list(events)
        self.sent: list[str] = []
        self.listeners: list = []

    def is_alive(self):
        return True

    def add_event_listener(self, fn, *types):
        self.listeners.append(fn)

    def remove_event_listener(self, fn):
        self.listeners.remove(fn)

    def msg(self, command):
        self.sent.append(command)
        reply = self.replies.pop(0)
        if reply.is_ok():
            for event in self.events:
                for fn in list(self.listeners):
                    fn(event)
        return reply


async def run(fake, key, timeout=5.0, **kw):
    ctl = Control(fake, "fake tor")
    return await publish(ctl, key, {80: ("127.0.0.1", 8080)}, timeout=timeout,
                         features=NEW_TOR, **kw)


async def test_waits_for_every_hsdir():
    key = OnionKey.generate()
    sid = key.service_id
    fake = FakeController([ok(sid)], [
        ev("CREATED", sid, None), ev("UPLOAD", sid, "A"), ev("UPLOAD", sid, "B"),
        ev("UPLOAD", sid, "A"), ev("UPLOAD", "other" * 11 + "x", "C"),
        ev("UPLOADED", sid, "A"), ev("UPLOADED", "UNKNOWN", "B"),  # old tors: no address
        ev("UPLOADED", "other" * 11 + "x", "C"), ev("FAILED", sid, "A", "UPLOAD_REJECTED"),
    ])
    pub = await run(fake, key)
    assert pub.complete and pub.hsdirs_uploaded == 2 and pub.hsdirs_failed == 1
    assert pub.address == key.address and pub.pow
    assert "PoWDefensesEnabled=1" in fake.sent[0] and fake.listeners == []


async def test_partial_at_timeout_is_published_but_incomplete():
    key = OnionKey.generate()
    sid = key.service_id
    fake = FakeController([ok(sid)], [ev("UPLOAD", sid, "A"), ev("UPLOAD", sid, "B"),
                                      ev("UPLOADED", sid, "A")])
    pub = await run(fake, key, timeout=0.6)
    assert not pub.complete and pub.hsdirs_uploaded == 1
    assert any("had not answered" in n for n in pub.notes)


async def test_all_uploads_failed_times_out_with_the_reasons():
    key = OnionKey.generate()
    sid = key.service_id
    fake = FakeController([ok(sid)], [ev("UPLOAD", sid, "A"),
                                      ev("FAILED", sid, "A", "UPLOAD_REJECTED")])
    with pytest.raises(TorPublishTimeout, match="1 uploads failed: UPLOAD_REJECTED"):
        await run(fake, key, timeout=0.6)


async def test_pow_refused_is_retried_without_it():
    key = OnionKey.generate()
    sid = key.service_id
    fake = FakeController(
        [error("512", 'Unrecognized keyword argument "PoWDefensesEnabled"'), ok(sid)],
        [ev("UPLOAD", sid, "A"), ev("UPLOADED", sid, "A")])
    pub = await run(fake, key)
    assert "PoWDefensesEnabled" in fake.sent[0] and "PoWDefensesEnabled" not in fake.sent[1]
    assert not pub.pow and any("refused the proof-of-work" in n for n in pub.notes)


async def test_pow_unsupported_version_is_said():
    key = OnionKey.generate()
    sid = key.service_id
    fake = FakeController([ok(sid)], [ev("UPLOAD", sid, "A"), ev("UPLOADED", sid, "A")])
    ctl = Control(fake, "fake tor")
    old = probe_features(stem.version.Version("0.4.8.12"))
    pub = await publish(ctl, key, {80: ("127.0.0.1", 1)}, timeout=5, features=old)
    assert "PoWDefensesEnabled" not in fake.sent[0]
    assert not pub.pow and any("0.4.9.2" in n for n in pub.notes)


@pytest.mark.parametrize("reply,match", [
    (error("512", "Bad arguments to ADD_ONION: Cannot decode v3 client auth key"),
     "tor refused to create the onion service: 512 Bad arguments"),
    (error("550", "Onion address collision"), "already published by this tor"),
])
async def test_add_onion_errors(reply, match):
    fake = FakeController([reply])
    with pytest.raises(TorPublishFailed, match=match):
        await run(fake, OnionKey.generate())
    assert fake.listeners == []


async def test_unexpected_service_id_is_refused():
    fake = FakeController([ok("a" * 56)])
    with pytest.raises(TorPublishFailed, match="unexpected address"):
        await run(fake, OnionKey.generate())
