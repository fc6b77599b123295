"""Rebuilding the limiter's buckets when exchangeInfo brings new rateLimits, without losing what
was spent (``WeightLimiter.reconfigure``), on the fake clock."""

from __future__ import annotations

import asyncio

import pytest

from app.clock import FakeClock
from app.resilience.limiter import BucketSpec, LimiterSettings, Priority, WeightLimiter
from tests.resilience.test_limiter import run_until, settle

W = 10.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def limiter(clock: FakeClock, *specs: BucketSpec) -> WeightLimiter:
    return WeightLimiter(list(specs), clock, LimiterSettings())


def spend(lim: WeightLimiter, costs: dict[str, int]) -> None:
    assert lim.try_acquire(costs, Priority.CRITICAL) is not None


async def test_a_new_limit_keeps_the_windows_count(clock: FakeClock) -> None:
    """Limit 100 → 60 in the same 10 s window: the 50 already spent still count, so only 8
    more fit (budget 58), not 58."""
    lim = limiter(clock, BucketSpec("w", 100, W, paced=False))
    clock.advance(2)
    spend(lim, {"w": 50})
    lim.reconfigure([BucketSpec("w", 60, W, paced=False)])
    [stats] = lim.statistics()
    assert (stats.limit, stats.budget, stats.used, stats.own) == (60, 58, 50, 50)
    assert lim.try_acquire({"w": 9}, Priority.CRITICAL) is None
    assert lim.try_acquire({"w": 8}, Priority.CRITICAL) is not None


async def test_the_server_count_and_a_pause_carry_too(clock: FakeClock) -> None:
    """The exchange's count from the headers and a 429 pause survive a new limit."""
    lim = limiter(clock, BucketSpec("w", 100, W, paced=False))
    clock.advance(1)
    sent = lim.try_acquire({"w": 10}, Priority.CRITICAL)
    assert sent is not None
    lim.observe("w", 70, cost=10, sent_at=sent)          # a co-tenant used 60
    lim.penalize(["w"], 3.0)
    lim.reconfigure([BucketSpec("w", 200, W, paced=False)])
    [stats] = lim.statistics()
    assert (stats.used, stats.server, stats.limit) == (70, 70, 200)
    assert stats.paused_until == pytest.approx(lim.now() + 3.0)


async def test_a_raised_limit_admits_waiters_at_once(clock: FakeClock) -> None:
    """Waiters held for the next window go as soon as a higher limit gives them room."""
    lim = limiter(clock, BucketSpec("w", 100, W, paced=False))
    clock.advance(1)
    spend(lim, {"w": 90})
    waiter = asyncio.create_task(lim.acquire({"w": 20}, Priority.CRITICAL))
    await settle()
    assert not waiter.done()
    lim.reconfigure([BucketSpec("w", 200, W, paced=False)])
    await settle()
    assert waiter.done()
    assert lim.used("w") == 110
    await lim.close()


async def test_a_changed_window_recounts_our_admissions_from_the_log(clock: FakeClock) -> None:
    """weight:10s becomes weight:20s: the new window [0, 20) holds what we admitted at 5 and
    12; the old window's count alone (7, since 10) would under-count it."""
    lim = limiter(clock, BucketSpec("w:10s", 100, W, paced=False))
    clock.advance(5)
    spend(lim, {"w:10s": 5})
    clock.advance(7)
    spend(lim, {"w:10s": 7})
    assert lim.used("w:10s") == 7
    clock.advance(1)
    lim.reconfigure([BucketSpec("w:20s", 100, 20.0, paced=False)], {"w:10s": "w:20s"})
    [stats] = lim.statistics()
    assert (stats.name, stats.used, stats.window_start) == (
        "w:20s", 12, pytest.approx(lim.now() // 20 * 20))


async def test_a_shorter_window_keeps_only_what_falls_in_it(clock: FakeClock) -> None:
    """weight:20s becomes weight:10s at t=13: of the admissions at 5 and 12 only the one at 12
    is in the new window [10, 20)."""
    lim = limiter(clock, BucketSpec("w:20s", 100, 20.0, paced=False))
    clock.advance(5)
    spend(lim, {"w:20s": 5})
    clock.advance(7)
    spend(lim, {"w:20s": 7})
    clock.advance(1)
    lim.reconfigure([BucketSpec("w:10s", 100, W, paced=False)], {"w:20s": "w:10s"})
    assert lim.used("w:10s") == 7


async def test_added_and_removed_buckets(clock: FakeClock) -> None:
    """A bucket the new limits add starts empty; one they drop is gone, and a waiter's cost in
    it no longer holds the waiter back."""
    lim = limiter(clock, BucketSpec("w", 100, W, paced=False),
                  BucketSpec("o", 10, W, paced=False))
    clock.advance(1)
    spend(lim, {"w": 1, "o": 9})
    waiter = asyncio.create_task(lim.acquire({"w": 1, "o": 5}, Priority.CRITICAL))
    await settle()
    assert not waiter.done()
    lim.reconfigure([BucketSpec("w", 100, W, paced=False),
                     BucketSpec("o2", 50, 60.0, paced=False)])
    await settle()
    assert waiter.done()
    assert {s.name: s.used for s in lim.statistics()} == {"w": 2, "o2": 0}


async def test_a_waiter_above_the_new_budget_fails(clock: FakeClock) -> None:
    """A queued request that no longer fits in the budget at all is failed with ValueError
    rather than left waiting for ever."""
    lim = limiter(clock, BucketSpec("w", 100, W, paced=False))
    clock.advance(1)
    spend(lim, {"w": 90})
    waiter = asyncio.create_task(lim.acquire({"w": 40}, Priority.CRITICAL))
    await settle()
    lim.reconfigure([BucketSpec("w", 30, W, paced=False)])
    with pytest.raises(ValueError, match=r"outside 0\.\.29 after the limits changed"):
        await waiter


async def test_an_unusable_limit_changes_nothing(clock: FakeClock) -> None:
    """A spec that leaves no budget is refused before anything is replaced."""
    lim = limiter(clock, BucketSpec("w", 100, W, paced=False))
    spend(lim, {"w": 10})
    with pytest.raises(ValueError, match="leaves no budget"):
        lim.reconfigure([BucketSpec("w", 200, W), BucketSpec("o", 0, W)])
    [stats] = lim.statistics()
    assert (stats.limit, stats.used) == (100, 10)


async def test_the_rebuilt_limiter_paces_by_the_new_budget(clock: FakeClock) -> None:
    """After a rebuild the paced bucket spreads the new budget (117) over the window: with 40
    spent, a NORMAL 20 goes when 60/117 − pace_lead of the window has passed (4.13 s; by the
    old budget of 98 it would be 5.12 s), woken by the timer."""
    lim = limiter(clock, BucketSpec("w", 100, W))
    start = lim.now()
    assert start % W == 0
    spend(lim, {"w": 40})
    lim.reconfigure([BucketSpec("w", 120, W)])
    admitted: list[float] = []

    async def go() -> None:
        admitted.append(await lim.acquire({"w": 20}, Priority.NORMAL))

    task = asyncio.create_task(go())
    await settle()
    assert admitted == []
    await run_until(clock, 9.0)
    assert task.done()
    assert admitted[0] - start == pytest.approx(W * (60 / 117 - 0.1), abs=1e-3)
    await lim.close()
