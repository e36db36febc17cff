"""Fixture: a real redis-server (Debian ``redis-server``) started by our own supervisor, on a
unix socket in a private temp state dir; stopped (and checked gone) at teardown."""

from __future__ import annotations

import pytest

from incognito_onion.redis_supervisor import RedisSupervisor


@pytest.fixture
async def redis_url(tmp_path):
    (tmp_path / "state").mkdir(mode=0o700)
    sup = RedisSupervisor("redis-server", tmp_path / "state")
    await sup.start()
    try:
        yield sup.url
    finally:
        await sup.stop()
    assert sup.pid is None and not (tmp_path / "state" / "redis" / "redis.sock").exists()
