"""Fixtures: a real redis-server (Debian ``redis-server``) started by our own supervisor, on a
unix socket in a private temp state dir; stopped (and checked gone) at teardown. ``redis_sup``
is the supervisor itself (a test may kill its redis-server and see it restarted), ``redis_url``
its address."""

from __future__ import annotations

import pytest

from incognito_onion.redis_supervisor import RedisSupervisor


@pytest.fixture
async def redis_sup(tmp_path):
    (tmp_path / "state").mkdir(mode=0o700)
    sup = RedisSupervisor("redis-server", tmp_path / "state")
    await sup.start()
    try:
        yield sup
    finally:
        await sup.stop()
    assert sup.pid is None and not (tmp_path / "state" / "redis" / "redis.sock").exists()


@pytest.fixture
def redis_url(redis_sup):
    return redis_sup.url
