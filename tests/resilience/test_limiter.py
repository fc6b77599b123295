"""The weight limiter, with a FakeClock and no real sleeping (SPEC §7.1)."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.clock import FakeClock
from app.resilience.limiter import BucketSpec, LimiterSettings, Priority, WeightLimiter

W = 10.0
LIMIT = 100
#: Just past the next window's opening (its first straddle_s): after a full window, waiters
#: for the next one go there (a request in the opening may count in the full window).
OPENED = W + LimiterSettings().straddle_s + 0.001


def make(clock: FakeClock, *, limit: int = LIMIT, interval: float = W, paced: bool = True,
         **kw: float) -> WeightLimiter:
    return WeightLimiter([BucketSpec("w", limit, interval, paced)], clock,
                         LimiterSettings(**kw))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def run_until(clock: FakeClock, target: float) -> None:
    """Advance the fake clock to ``target`` (monotonic) one timer deadline at a time."""
    while True:
        await settle()
        deadline = clock.next_deadline()
        if deadline is None or deadline > target:
            break
        clock.advance(max(0.0, deadline - clock.monotonic()))
    clock.advance(max(0.0, target - clock.monotonic()))
    await settle()


class Recorder:
    def __init__(self, limiter: WeightLimiter) -> None:
        self.limiter = limiter
        self.admitted: list[tuple[float, int, Priority]] = []
        self.tasks: list[asyncio.Task[None]] = []

    def submit(self, cost: int, priority: Priority = Priority.NORMAL) -> asyncio.Task[None]:
        async def go() -> None:
            at = await self.limiter.acquire({"w": cost}, priority)
            self.admitted.append((at, cost, priority))
        task = asyncio.get_running_loop().create_task(go())
        self.tasks.append(task)
        return task


def max_in_any_window(admitted: list[tuple[float, int, Priority]], length: float,
                      end_zone: float = 0.0) -> tuple[int, int]:
    """(max cost in an aligned window, max cost in a rolling window) of ``length``. With an
    ``end_zone`` (seconds), a cost admitted that close to a window's end may be counted by the
    exchange in either window: it is counted in both."""
    aligned: dict[int, int] = {}
    for at, cost, _ in admitted:
        index = math.floor(at / length)
        aligned[index] = aligned.get(index, 0) + cost
        if math.floor((at + end_zone) / length) != index:
            aligned[index + 1] = aligned.get(index + 1, 0) + cost
    rolling = 0
    for at, _, _ in admitted:
        rolling = max(rolling, sum(c for t, c, _ in admitted if at - length < t <= at))
    return max(aligned.values(), default=0), rolling


END_GUARD = LimiterSettings().end_guard
arrivals = st.lists(
    st.tuples(st.floats(0, 4, allow_nan=False), st.integers(1, 40),
              st.sampled_from(list(Priority)),
              # None: after the gap; else this share of W before the next window's start
              # (the end zone is its last END_GUARD)
              st.none() | st.floats(0, 2 * END_GUARD, allow_nan=False)),
    min_size=1, max_size=60)


async def arrive(clock: FakeClock, limiter: WeightLimiter, gap: float,
                 before_end: float | None) -> None:
    """Advance by ``gap``, or to ``before_end`` × W before the next window's start."""
    if before_end is None:
        await run_until(clock, clock.monotonic() + gap)
        return
    now = limiter.now()
    at = (math.floor(now / W) + 1 - before_end) * W
    if at < now:
        at += W
    await run_until(clock, clock.monotonic() + (at - now))


def replay(pattern: list[tuple[float, int, Priority, float | None]], *, paced: bool,
           phase: float) -> list[tuple[float, int, Priority]]:
    """Run ``pattern`` on a fresh limiter started ``phase`` seconds into a window; every
    waiter is admitted eventually. Returns the admissions (time, cost, priority)."""

    async def scenario() -> list[tuple[float, int, Priority]]:
        clock = FakeClock(start_time=1_767_225_600.0 + phase)
        limiter = make(clock, paced=paced)
        rec = Recorder(limiter)
        for gap, cost, priority, before_end in pattern:
            await arrive(clock, limiter, gap, before_end)
            rec.submit(cost, priority)
        await run_until(clock, clock.monotonic() + 200)
        assert len(rec.admitted) == len(pattern), "every waiter is admitted eventually"
        await limiter.close()
        return rec.admitted

    return asyncio.run(scenario())


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=arrivals, paced=st.booleans(), phase=st.floats(0, 9.99))
def test_no_arrival_pattern_exceeds_the_limit_in_any_window(
        pattern: list[tuple[float, int, Priority, float | None]], paced: bool,
        phase: float) -> None:
    """Admitted cost never exceeds the limit in any window of either counting model: aligned
    windows (a cost admitted in a window's end zone counted in both that window and the next,
    as the exchange may count it in either) and rolling windows of the same length. Arrivals
    are drawn at window ends too, and the limiter starts at any phase of a window."""
    admitted = replay(pattern, paced=paced, phase=phase)
    aligned, rolling = max_in_any_window(admitted, W, END_GUARD * W)
    assert aligned <= LIMIT
    assert rolling <= LIMIT


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=arrivals, paced=st.booleans(), phase=st.floats(0, 9.99),
       idle=st.floats(2 * W, 3 * W, allow_nan=False), cost=st.integers(1, 9),
       priority=st.sampled_from([Priority.NORMAL, Priority.CRITICAL]))
def test_an_idle_limiter_holds_nothing_at_any_moment_of_a_window(
        pattern: list[tuple[float, int, Priority, float | None]], paced: bool, phase: float,
        idle: float, cost: int, priority: Priority) -> None:
    """Whatever came before, after a window or more with nothing admitted a request within the
    pace lead (9 of 98) is admitted at once, wherever it falls in a window: its end zone too."""

    async def scenario() -> None:
        clock = FakeClock(start_time=1_767_225_600.0 + phase)
        limiter = make(clock, paced=paced)
        rec = Recorder(limiter)
        for gap, spent, prio, before_end in pattern:
            await arrive(clock, limiter, gap, before_end)
            rec.submit(spent, prio)
        await run_until(clock, clock.monotonic() + 200)
        await run_until(clock, clock.monotonic() + idle)
        assert limiter.try_acquire({"w": cost}, priority) == limiter.now()
        await limiter.close()

    asyncio.run(scenario())


async def test_headroom_is_never_used() -> None:
    """With headroom 0.02 a limit of 100 admits at most 98 per window."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    rec = Recorder(limiter)
    for _ in range(100):
        rec.submit(1)
    await settle()
    assert len(rec.admitted) == 98
    await limiter.close()


async def test_fifo_within_a_priority() -> None:
    """Waiters of one priority that become admissible together go in arrival order."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    rec = Recorder(limiter)
    rec.submit(90)
    await settle()
    for cost in (8, 7, 6, 5):                        # only 8 left: all wait for the next window
        rec.submit(cost)
    await settle()
    assert [c for _, c, _ in rec.admitted] == [90, 8]
    await run_until(clock, OPENED)
    assert [c for _, c, _ in rec.admitted] == [90, 8, 7, 6, 5]
    await limiter.close()


async def test_fifo_is_kept_while_the_head_can_still_fit_this_window() -> None:
    """A head held only by pacing within the window is not overtaken, however small the rest."""
    clock = FakeClock()
    limiter = make(clock, pace_lead=0.1)
    rec = Recorder(limiter)
    rec.submit(9)                                     # the pace lead: floor(98 × 0.1) = 9
    await settle()
    rec.submit(20)                                    # paced: fits at 0.196 of the window
    rec.submit(1)                                     # alone it would fit at once
    await run_until(clock, 1.9)
    assert [c for _, c, _ in rec.admitted] == [9]
    await run_until(clock, 2.1)
    assert [c for _, c, _ in rec.admitted] == [9, 20, 1]
    await limiter.close()


async def test_deferred_head_does_not_block_smaller_requests_that_fit() -> None:
    """Skip-ahead: a head that cannot fit before the next window lets later waiters of its
    priority that fit now go, in arrival order."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    rec = Recorder(limiter)
    rec.submit(90)
    await settle()
    for cost in (40, 1, 9, 2, 3):                     # 8 left: 1, 2 and 3 fit, 40 and 9 do not
        rec.submit(cost)
    await settle()
    assert [c for _, c, _ in rec.admitted] == [90, 1, 2, 3]
    await limiter.close()


async def test_deferred_head_is_served_first_when_the_window_rolls() -> None:
    """The head passed over by skip-ahead keeps its place: it goes first in the next window,
    before the waiters queued behind it, and before those that arrive after the roll."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    rec = Recorder(limiter)
    rec.submit(90)
    await settle()
    rec.submit(60)
    rec.submit(9)
    rec.submit(5)
    await settle()
    assert [c for _, c, _ in rec.admitted] == [90, 5]
    await run_until(clock, W + 0.001)                          # the next window's opening
    rec.submit(1)
    await run_until(clock, OPENED)
    assert [c for _, c, _ in rec.admitted] == [90, 5, 60, 9, 1]
    await limiter.close()


async def test_skip_ahead_never_passes_a_higher_priority() -> None:
    """Skip-ahead stays within one priority: NORMAL waits while a deferred CRITICAL head does."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    rec = Recorder(limiter)
    rec.submit(90)
    await settle()
    rec.submit(20, Priority.CRITICAL)
    rec.submit(1, Priority.NORMAL)
    rec.submit(2, Priority.CRITICAL)
    await settle()
    assert [(c, p) for _, c, p in rec.admitted] == [(90, Priority.NORMAL),
                                                     (2, Priority.CRITICAL)]
    await run_until(clock, OPENED)
    assert [(c, p) for _, c, p in rec.admitted][2:] == [(20, Priority.CRITICAL),
                                                         (1, Priority.NORMAL)]
    await limiter.close()


async def test_skip_ahead_passes_a_head_held_by_a_paused_bucket() -> None:
    """A head waiting on a paused bucket does not hold up same-priority requests that do not
    use that bucket; those that do use it wait too."""
    clock = FakeClock()
    limiter = WeightLimiter([BucketSpec("w", 100, 10, paced=False),
                             BucketSpec("o", 10, 10, paced=False)], clock)
    limiter.penalize(["o"], 10.0)
    order = asyncio.get_running_loop().create_task(limiter.acquire({"w": 1, "o": 1}))
    await settle()
    query = asyncio.get_running_loop().create_task(limiter.acquire({"w": 1}))
    other_order = asyncio.get_running_loop().create_task(limiter.acquire({"o": 1, "w": 5}))
    await settle()
    assert query.done()
    assert not order.done()
    assert not other_order.done()
    await run_until(clock, 10.001)
    assert order.done()
    assert other_order.done()
    await limiter.close()


async def test_priorities_served_critical_then_normal_then_low() -> None:
    """When room appears, CRITICAL goes before NORMAL before LOW, whatever the arrival order."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    rec = Recorder(limiter)
    rec.submit(98)
    await settle()
    rec.submit(10, Priority.LOW)
    rec.submit(10, Priority.NORMAL)
    rec.submit(10, Priority.CRITICAL)
    await run_until(clock, W + 0.5)
    assert [p for _, _, p in rec.admitted[1:]] == [Priority.CRITICAL, Priority.NORMAL,
                                                   Priority.LOW]
    await limiter.close()


async def test_low_share_caps_low_priority() -> None:
    """LOW may use at most low_share of a window's budget."""
    clock = FakeClock()
    limiter = make(clock, paced=False, low_share=0.5)
    rec = Recorder(limiter)
    for _ in range(60):
        rec.submit(1, Priority.LOW)
    await settle()
    assert sum(c for _, c, _ in rec.admitted) == 49          # floor(98 × 0.5)
    rec.submit(10, Priority.NORMAL)
    await settle()
    assert rec.admitted[-1][1:] == (10, Priority.NORMAL)
    await limiter.close()


async def test_pacing_spreads_the_budget_over_the_window() -> None:
    """A saturating client gets pace_lead of the budget at once, the rest spread over time."""
    clock = FakeClock()
    limiter = make(clock, pace_lead=0.1, end_guard=0.05)
    rec = Recorder(limiter)
    for _ in range(200):
        rec.submit(1)
    await settle()
    assert len(rec.admitted) == 9                             # floor(98 × 0.1)
    await run_until(clock, 5.0)
    assert 55 <= len(rec.admitted) <= 60                      # ~ (0.5 + 0.1) × 98
    await run_until(clock, W - 0.01)
    assert len(rec.admitted) == 98
    times = [t - 1_767_225_600.0 for t, _, _ in rec.admitted]
    assert max(times) <= W * 0.95                             # nothing in the end guard
    await limiter.close()


async def test_critical_is_not_paced() -> None:
    """CRITICAL requests may use the whole budget at once (caps still apply)."""
    clock = FakeClock()
    limiter = make(clock)
    rec = Recorder(limiter)
    for _ in range(100):
        rec.submit(1, Priority.CRITICAL)
    await settle()
    assert len(rec.admitted) == 98
    await limiter.close()


async def test_server_header_raises_the_local_count() -> None:
    """Another process on the IP, seen only through headers, reduces what we admit: what it
    has used, and (no past window showing it) as much again for the rest of the window, at
    the rate seen so far, with the margin on that rest."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    clock.advance(5.0)                                          # half the window
    rec = Recorder(limiter)
    rec.submit(10)
    await settle()
    limiter.observe("w", 30, cost=10, sent_at=limiter.now())   # someone else used 20
    assert limiter.used("w") == 30
    for _ in range(60):
        rec.submit(1)
    await settle()
    assert limiter.statistics()[0].reserve == 42                # 20 + 20 and its 10 %
    assert sum(c for _, c, _ in rec.admitted) == 98 - 42
    await limiter.close()


async def test_straddling_header_is_not_counted_as_foreign() -> None:
    """A header above our own count, for a request sent within straddle_s of the window's
    start, is taken for the previous window's total: no foreign use now or later."""
    clock = FakeClock()
    limiter = make(clock, paced=False, straddle_s=0.1)
    clock.advance(0.05)
    await limiter.acquire({"w": 10})
    limiter.observe("w", 95, cost=10, sent_at=limiter.now())
    assert limiter.used("w") == 10
    stats = limiter.statistics()[0]
    assert (stats.server, stats.reserve, stats.straddled) == (0, 0, 1)
    rec = Recorder(limiter)
    for _ in range(88):
        rec.submit(1)
    await settle()
    assert len(rec.admitted) == 88                             # 10 + 88 = the whole budget
    await run_until(clock, W + 0.001)
    assert limiter.statistics()[0].reserve == 0                # nor in the next window
    await limiter.close()


async def test_header_after_the_straddle_span_counts_as_foreign() -> None:
    """The same header for a request sent after straddle_s is the exchange's count."""
    clock = FakeClock()
    limiter = make(clock, paced=False, straddle_s=0.1)
    clock.advance(0.15)
    await limiter.acquire({"w": 10})
    limiter.observe("w", 95, cost=10, sent_at=limiter.now())
    assert limiter.used("w") == 95
    assert limiter.statistics()[0].straddled == 0
    await limiter.close()


async def test_equal_header_values_credit_our_cost_first() -> None:
    """A refused response showing the same value as our admitted one is not foreign use."""
    clock = FakeClock()
    limiter = make(clock, paced=False, foreign_margin=0.0)
    clock.advance(1.0)
    await limiter.acquire({"w": 5})
    limiter.observe("w", 20, cost=0, sent_at=limiter.now())   # a 429 answered first
    limiter.observe("w", 20, cost=5, sent_at=limiter.now())
    await run_until(clock, W + 0.001)
    assert limiter.statistics()[0].reserve == 30               # 15 foreign by 0.5 of W, not 20
    await limiter.close()


async def test_foreign_usage_of_past_windows_is_reserved() -> None:
    """Foreign cost attributed from a finished window's headers is reserved in the next one."""
    clock = FakeClock()
    # The first response comes from the window's first instant; the straddle rule (tested on
    # its own below) would set it aside.
    limiter = make(clock, paced=False, foreign_margin=0.0, straddle_s=0.0)
    sent = limiter.now()
    for i in range(5):                                         # own 5 × 4, foreign 6 per gap
        await limiter.acquire({"w": 4})
        clock.advance(1.8)
        limiter.observe("w", (i + 1) * 10, cost=4, sent_at=sent + i * 1.8)
    await run_until(clock, 2 * W + 0.001)                      # own log expired too
    stats = {s.name: s for s in limiter.statistics()}
    assert stats["w"].reserve == 42                             # 30 foreign by 0.72 of W
    rec = Recorder(limiter)
    for _ in range(98):
        rec.submit(1)
    await settle()
    assert len(rec.admitted) == 98 - stats["w"].reserve
    await limiter.close()


async def test_429_pauses_the_bucket_until_retry_after() -> None:
    """penalize() holds every request of the bucket until Retry-After has passed."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    limiter.penalize(["w"], 3.0)
    rec = Recorder(limiter)
    rec.submit(1, Priority.CRITICAL)
    await run_until(clock, 2.9)
    assert rec.admitted == []
    await run_until(clock, 3.1)
    assert len(rec.admitted) == 1
    await limiter.close()


async def test_418_stops_everything_until_the_ban_ends() -> None:
    """ban() blocks every bucket and priority until the ban's end time."""
    clock = FakeClock()
    limiter = WeightLimiter([BucketSpec("w", 100, 10), BucketSpec("o", 10, 10, paced=False)],
                            clock)
    limiter.ban(limiter.now() + 120)
    rec = Recorder(limiter)
    task = asyncio.get_running_loop().create_task(
        limiter.acquire({"o": 1}, Priority.CRITICAL))
    rec.submit(1, Priority.CRITICAL)
    await run_until(clock, 119)
    assert rec.admitted == []
    assert not task.done()
    await run_until(clock, 121)
    assert len(rec.admitted) == 1
    assert task.done()
    await limiter.close()


async def test_waiters_are_woken_by_one_timer_not_polling() -> None:
    """While waiting for a window, the limiter parks exactly one timer on the clock."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    rec = Recorder(limiter)
    for _ in range(150):
        rec.submit(1)
    await settle()
    assert clock.sleepers == 1
    assert clock.next_deadline() == pytest.approx(W, abs=1e-3)
    await run_until(clock, OPENED)
    assert len(rec.admitted) == 150
    await limiter.close()


async def test_cancelled_waiter_leaves_the_queue() -> None:
    """A cancelled acquire is removed and the waiter behind it moves up."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    rec = Recorder(limiter)
    rec.submit(98)
    await settle()
    first = rec.submit(50)
    rec.submit(10)
    await settle()
    first.cancel()
    await run_until(clock, OPENED)
    assert [c for _, c, _ in rec.admitted] == [98, 10]
    await limiter.close()


async def test_warning_once_per_window() -> None:
    """on_warning fires once when the window's use crosses warning_threshold."""
    clock = FakeClock()
    seen: list[tuple[str, int, int]] = []
    limiter = WeightLimiter([BucketSpec("w", 100, 10, paced=False)], clock,
                            on_warning=lambda *a: seen.append(a))
    for _ in range(90):
        await limiter.acquire({"w": 1})
    assert seen == [("w", 80, 100)]
    await limiter.close()


async def test_cost_larger_than_budget_is_rejected() -> None:
    """A request that can never fit raises ValueError instead of waiting forever."""
    limiter = make(FakeClock())
    with pytest.raises(ValueError, match="outside"):
        await limiter.acquire({"w": 99})
    await limiter.close()


async def test_acquire_returns_the_admission_time() -> None:
    """acquire returns the exchange time it admitted at, also for a waiter admitted later."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    assert await limiter.acquire({"w": 90}) == limiter.now()
    late = asyncio.get_running_loop().create_task(limiter.acquire({"w": 20}))
    await run_until(clock, W + 0.5)
    assert late.done()
    assert math.floor(late.result() / W) == math.floor(limiter.now() / W)  # the next window
    assert late.result() <= limiter.now()
    await limiter.close()


async def test_try_acquire_admits_only_what_acquire_would_admit_at_once() -> None:
    """try_acquire admits when nothing holds the request, else returns None and queues
    nothing: not past a waiter ahead, not over the budget."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    assert limiter.try_acquire({"w": 90}) == limiter.now()
    assert limiter.try_acquire({"w": 20}) is None                  # only 8 left
    waiter = asyncio.get_running_loop().create_task(limiter.acquire({"w": 20}))
    await settle()
    assert limiter.try_acquire({"w": 1}) is None                   # would pass the waiter
    assert limiter.statistics()[0].own == 90
    assert limiter.statistics()[0].waiting == 1
    waiter.cancel()
    await settle()
    assert limiter.try_acquire({"w": 1}) is not None
    assert limiter.statistics()[0].own == 91
    await limiter.close()


def test_repr_shows_live_state() -> None:
    """repr names each bucket's use and the waiting count."""
    limiter = make(FakeClock())
    assert "w=0/100" in repr(limiter)
    assert "waiting=0" in repr(limiter)


async def test_greedy_cotenant_cannot_starve_us() -> None:
    """However much foreign use the headers showed, max_reserve leaves us part of the budget,
    the estimate decays once the co-tenant goes quiet, and CRITICAL reserves only what is seen."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    limiter.observe("w", 98, cost=0, sent_at=limiter.now())       # someone took everything
    await run_until(clock, W + 0.001)
    rec = Recorder(limiter)
    for _ in range(98):
        rec.submit(1)
    await settle()
    assert len(rec.admitted) >= 9                                   # ≥ 10 % of 98
    crit = Recorder(limiter)
    for _ in range(98):
        crit.submit(1, Priority.CRITICAL)
    await settle()
    assert len(rec.admitted) + len(crit.admitted) == 98             # nothing seen this window
    for _ in rec.tasks + crit.tasks:
        _.cancel()
    await run_until(clock, 8 * W + 0.001)                           # quiet windows: decay
    assert next(s for s in limiter.statistics()).reserve < 98 * 0.2
    await limiter.close()
