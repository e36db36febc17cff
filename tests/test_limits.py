from incognito_onion.limits import Throttle, TokenBucket


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def test_bucket_allows_burst_then_rate():
    c = Clock()
    b = TokenBucket(rate=10, burst=5, clock=c)
    assert [b.allow() for _ in range(6)] == [True] * 5 + [False]
    c.t += 0.1
    assert b.allow() and not b.allow()
    c.t += 100
    assert sum(b.allow() for _ in range(50)) == 5  # never more than the burst


def test_throttle_once_per_interval():
    c = Clock()
    t = Throttle(1.0, clock=c)
    assert t.ready() and not t.ready()
    c.t += 0.99
    assert not t.ready()
    c.t += 0.02
    assert t.ready()
