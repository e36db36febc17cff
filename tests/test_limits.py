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


def test_bucket_spend_goes_into_debt_of_one_burst_and_earns_it_back():
    c = Clock()
    b = TokenBucket(rate=10, burst=5, clock=c)
    b.spend(3)
    assert b.tokens == 2
    b.spend(100)  # a penalty: debt of at most one burst
    assert b.tokens == -5 and not b.allow()
    c.t += 0.55  # 5.5 tokens earned: out of debt, not yet one to allow
    assert not b.allow()
    c.t += 0.06
    assert b.allow() and not b.allow()


def test_bucket_fill_grants_a_share_of_the_burst_and_the_rest_is_earned():
    c = Clock()
    b = TokenBucket(rate=10, burst=8, clock=c, fill=0.25)
    assert [b.allow() for _ in range(3)] == [True, True, False]
    c.t += 100
    assert sum(b.allow() for _ in range(50)) == 8
    assert TokenBucket(rate=10, burst=8, clock=c, fill=0.0).tokens == 0


def test_throttle_once_per_interval():
    c = Clock()
    t = Throttle(1.0, clock=c)
    assert t.ready() and not t.ready()
    c.t += 0.99
    assert not t.ready()
    c.t += 0.02
    assert t.ready()


async def test_turn_gate_lets_per_turn_through_each_turn_of_the_loop():
    """20 waiters at once on a gate of 4: 4 pass per turn of the event loop (counted by a
    callback that bumps a counter once per turn), every one passes, in five turns."""
    import asyncio
    import collections

    from incognito_onion.limits import TurnGate
    from tests.support.loop_turns import LoopTurns

    gate = TurnGate(4)
    passed_at: list[int] = []

    async def one():
        await gate.wait()
        passed_at.append(turns.n)

    with LoopTurns() as turns:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(20))), 5)
    per_turn = collections.Counter(passed_at)
    assert len(passed_at) == 20
    assert max(per_turn.values()) == 4 and len(per_turn) == 5, per_turn


async def test_turn_gate_waiters_sleep_until_released_first_come_first_served():
    """200 waiters on a gate of 4: they pass in the order they came, a cancelled one is
    skipped without taking a slot, and a waiter is not woken again and again while it waits:
    the loop's ready queue stays short (a gate that polled with ``sleep(0)`` put every waiter
    in it every turn, 200 task steps per turn for the whole storm)."""
    import asyncio

    from incognito_onion.limits import TurnGate
    from tests.support.loop_turns import LoopTurns

    gate = TurnGate(4)
    order: list[int] = []

    async def one(k: int):
        await gate.wait()
        order.append(k)

    with LoopTurns() as turns:
        tasks = [asyncio.ensure_future(one(k)) for k in range(200)]
        await asyncio.sleep(0)
        tasks[100].cancel()  # waiting: its slot goes to the next
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        last = turns.n
    assert order == [k for k in range(200) if k != 100]
    # [0]: on entering; [1]: the 200 starting
    assert max(turns.ready[2:]) < 20, turns.ready
    assert last < 60  # 199 / 4 turns and a few


async def test_turn_delay_resumes_after_n_turns_without_waking_waiters_each_turn():
    """100 waiters of 8 turns each: every one resumes 8-9 turns later, a cancelled one does
    not hold up the rest, and the waiters are in the loop's ready queue only when they start
    and when they resume, not in the turns between (8 x ``sleep(0)`` put all 100 in it in each
    of the 8 turns: 100 task steps per turn)."""
    import asyncio

    from incognito_onion.limits import TurnDelay
    from tests.support.loop_turns import LoopTurns

    delay = TurnDelay()
    waited: list[int] = []

    async def one():
        start = turns.n
        await delay.turns(8)
        waited.append(turns.n - start)

    with LoopTurns() as turns:
        tasks = [asyncio.ensure_future(one()) for _ in range(100)]
        await asyncio.sleep(0)
        tasks[7].cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert len(waited) == 99 and set(waited) <= {8, 9, 10}, sorted(set(waited))
    assert sum(n > 10 for n in turns.ready) <= 3, turns.ready


def test_turn_gate_and_delay_start_afresh_on_a_new_event_loop():
    """A loop that ended with the per-turn callback still to run (and a turn's pass taken)
    leaves nothing that stalls the next loop's waiters."""
    import asyncio

    from incognito_onion.limits import TurnDelay, TurnGate

    delay, gate = TurnDelay(), TurnGate(1)

    waiting = delay.turns(50)

    async def abandon():
        asyncio.get_running_loop().stop()  # after this turn: the callbacks below never run
        waiting.send(None)  # up to its wait: registered, the delay's callback scheduled
        await gate.wait()  # passes at once, and schedules the gate's callback

    old = asyncio.new_event_loop()
    old.run_until_complete(abandon())
    old.close()
    waiting.close()
    asyncio.run(asyncio.wait_for(delay.turns(3), 2))
    asyncio.run(asyncio.wait_for(gate.wait(), 2))


def test_allow_with_the_caller_s_clock_reading_is_allow():
    c1, c2 = Clock(), Clock()
    a = TokenBucket(rate=7, burst=3, clock=c1)
    b = TokenBucket(rate=7, burst=3, clock=c2)
    for step in [0, 0, 0, 0, 0.1, 0.05, 0, 0.5, 0, 0, 0, 0.01, 2, 0, 0, 0, 0]:
        c1.t += step
        c2.t += step
        assert a.allow() == b.allow(now=c2.t)
        assert a.tokens == b.tokens
