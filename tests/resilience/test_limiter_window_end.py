"""The limiter at the edges of its windows, on the fake clock (SPEC §7.1): the end zone (a
request near a window's end is admitted and charged to both windows, never held while its
buckets have room), the opening (a request in a window's first straddle_s is charged to the
previous window too), a co-tenant seen in the first window, and the wait listener.

The property that no window of either counting model goes over a limit, at window ends too, is
in test_limiter.py; the one for a window's opening is here."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.clock import FakeClock
from app.resilience.limiter import BucketSpec, LimiterSettings, Priority, WeightLimiter
from tests.resilience.test_limiter import (
    END_GUARD,
    LIMIT,
    Recorder,
    W,
    make,
    replay,
    run_until,
    settle,
)

MINUTE_START = 1_767_225_600.0           # FakeClock's default: a minute's (and W's) start
NORMAL, CRITICAL = Priority.NORMAL, Priority.CRITICAL
OPENING = LimiterSettings().straddle_s           # a window's opening: its first straddle_s


async def test_a_normal_request_at_second_58_of_an_idle_minute_goes_at_once() -> None:
    """The 1-minute weight bucket as the gateway builds it: a mark-price read (weight 1,
    NORMAL) at second 58 of a minute with almost nothing spent is admitted at once, not held
    to the next minute (the 5 % end guard was a 3 s stall); the next minute starts with it
    counted."""
    clock = FakeClock()
    limiter = WeightLimiter([BucketSpec("weight:1m", 2400, 60.0)], clock)
    clock.advance(5.0)
    await limiter.acquire({"weight:1m": 5}, NORMAL)
    clock.advance(53.0)
    assert limiter.now() == MINUTE_START + 58.0
    admitted = await limiter.acquire({"weight:1m": 1}, NORMAL)
    assert admitted == MINUTE_START + 58.0                      # no wait at all
    assert clock.monotonic() == 58.0
    assert clock.sleepers == 0
    clock.advance(2.5)                                          # the next minute
    [stats] = limiter.statistics()
    assert (stats.carried, stats.own, stats.used) == (1, 1, 1)
    await limiter.close()


async def test_what_a_window_carries_stays_within_the_next_windows_pace() -> None:
    """In the end zone a paced bucket admits at once up to the next window's pace lead
    (floor(98 × 0.1) = 9); beyond it a request is paced in the next window, which starts with
    those 9 counted."""
    clock = FakeClock()
    limiter = make(clock)
    clock.advance(W - 0.3)                                      # the end zone: the last 0.5 s
    rec = Recorder(limiter)
    rec.submit(9)
    rec.submit(5)
    await settle()
    assert [c for _, c, _ in rec.admitted] == [9]
    await run_until(clock, 2 * W - 1)
    assert rec.admitted[1][1] == 5
    # 14 of 98 by the pace: (14 / 98 − 0.1) of the next window
    assert rec.admitted[1][0] - MINUTE_START == pytest.approx(W + (14 / 98 - 0.1) * W, abs=1e-3)
    assert limiter.statistics()[0].carried == 9
    await limiter.close()


async def test_critical_in_the_end_zone_is_charged_to_the_next_window_too() -> None:
    """CRITICAL is not paced, so nothing of its end zone holds it; what it spends there still
    counts in the next window (the exchange may count it there), also once the rolling cap
    has let it go."""
    clock = FakeClock()
    limiter = make(clock)
    clock.advance(W - 0.2)
    assert limiter.try_acquire({"w": 50}, CRITICAL) is not None
    clock.advance(0.5)                                          # the next window
    assert limiter.try_acquire({"w": 48}, CRITICAL) is not None
    clock.advance(W - 0.45)                                     # the 50 left the rolling span
    assert limiter.try_acquire({"w": 1}, CRITICAL) is None      # 50 + 48 = the budget
    clock.advance(0.2)
    assert limiter.try_acquire({"w": 1}, CRITICAL) is not None
    await limiter.close()


async def test_a_header_above_the_rest_of_our_own_cost_is_foreign() -> None:
    """A window's carried-in cost was most likely counted in the previous window: a header
    showing 30 after we sent 10 in this window means 20 of someone else's, not 11."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    clock.advance(W - 0.2)
    await limiter.acquire({"w": 9})                             # carried into the next window
    clock.advance(2.2)
    sent = await limiter.acquire({"w": 10})
    limiter.observe("w", 30, cost=10, sent_at=sent)
    [stats] = limiter.statistics()
    assert (stats.carried, stats.own, stats.server) == (9, 19, 30)
    assert stats.used == 19 + 20                                # own + the co-tenant's 20
    await limiter.close()


async def test_what_was_carried_from_the_last_instant_may_show_in_the_next_window() -> None:
    """A request sent within straddle_s of a window's end may be counted in the next window
    (time sync): its cost showing in the next window's header is not someone else's."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    clock.advance(W - 0.05)
    await limiter.acquire({"w": 9})
    clock.advance(2.05)
    sent = await limiter.acquire({"w": 10})
    limiter.observe("w", 19, cost=10, sent_at=sent)             # the 9 counted here
    [stats] = limiter.statistics()
    assert (stats.carried, stats.used, stats.reserve) == (9, 19, 0)
    await limiter.close()


# ---------------------------------------------------------------------------- the opening
async def test_after_a_full_window_its_waiters_go_when_the_next_ones_opening_ends() -> None:
    """The exchange may count a request sent in a window's first straddle_s in the previous
    window (our exchange time may run ahead of its clock): after a window that spent its
    budget, a waiter for the next window goes at the end of that opening, not at its first
    instant (the bench's windows came up short: the simulator counted that burst in the full
    window before it)."""
    clock = FakeClock()
    limiter = make(clock)                                       # paced: 9 ahead of the pace
    assert limiter.try_acquire({"w": 98}, CRITICAL) is not None
    rec = Recorder(limiter)
    rec.submit(9)
    await run_until(clock, W + OPENING / 2)
    assert rec.admitted == []
    await run_until(clock, W + 1.0)
    assert rec.admitted[0][0] - MINUTE_START == pytest.approx(W + OPENING, abs=1e-3)
    await limiter.close()


async def test_the_opening_spends_what_the_previous_window_left() -> None:
    """After a window with room to spare a request goes at a window's first instant, and what
    the opening admits is charged to the previous window: once that has no room left, the
    rest waits for the opening's end."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    assert limiter.try_acquire({"w": 50}) is not None
    clock.advance(W)                                            # the next window's start
    assert limiter.try_acquire({"w": 30}) == MINUTE_START + W
    clock.advance(OPENING / 2)
    assert limiter.try_acquire({"w": 19}) is None               # 50 + 30 + 19 > 98
    assert limiter.try_acquire({"w": 18}) is not None           # 98: the previous one's budget
    clock.advance(OPENING / 2)
    assert limiter.try_acquire({"w": 19}) is not None           # 48 + 19 in this window
    await limiter.close()


async def test_critical_is_not_held_by_the_opening() -> None:
    """CRITICAL is not held by the opening (its caps keep it safe under either counting
    model); what it spends there is charged to the previous window all the same."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    assert limiter.try_acquire({"w": 90}) is not None
    clock.advance(W + 0.01)
    assert limiter.try_acquire({"w": 10}, CRITICAL) is not None
    assert limiter.try_acquire({"w": 1}) is None                # 90 + 10 behind it
    clock.advance(OPENING)
    assert limiter.try_acquire({"w": 1}) is not None
    await limiter.close()


def counted_in_both(admitted: list[tuple[float, int, Priority]], opening: float) -> int:
    """The most cost in one aligned window of W when every cost admitted in a window's end
    zone counts in the next window too and every cost admitted in a window's first
    ``opening`` seconds counts in the previous window too."""
    aligned: dict[int, int] = {}
    for at, cost, _ in admitted:
        index = math.floor(at / W)
        for k in {index, math.floor((at + END_GUARD * W) / W), math.floor((at - opening) / W)}:
            aligned[k] = aligned.get(k, 0) + cost
    return max(aligned.values(), default=0)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=st.lists(
    st.tuples(st.floats(0, 4, allow_nan=False), st.integers(1, 40),
              st.sampled_from([NORMAL, Priority.LOW]),
              # None: after the gap; else this share of W before the next window's start
              # (negative: after it, in its opening)
              st.none() | st.floats(-2 * OPENING / W, 2 * END_GUARD, allow_nan=False)),
    min_size=1, max_size=60), paced=st.booleans(), phase=st.floats(0, 9.99))
def test_no_window_takes_more_than_the_limit_counting_both_edges_twice(
        pattern: list[tuple[float, int, Priority, float | None]], paced: bool,
        phase: float) -> None:
    """Below CRITICAL, no arrival pattern puts more than the limit in an aligned window even
    when every admission near a window's edge is counted in both windows it touches: the end
    zone's in the next window, the opening's in the previous one."""
    assert counted_in_both(replay(pattern, paced=paced, phase=phase), OPENING) <= LIMIT


# ---------------------------------------------------------------------------- co-tenants
async def test_a_first_window_projects_a_cotenant_at_its_rate_so_far() -> None:
    """With no past window to go by, a co-tenant seen early is projected over the window at
    its rate (over at least half a window), so its later requests still find room."""
    clock = FakeClock()
    limiter = make(clock, paced=False, foreign_margin=0.0)
    clock.advance(2.0)
    sent = await limiter.acquire({"w": 5})
    limiter.observe("w", 15, cost=5, sent_at=sent)              # 10 foreign by 0.2 of W
    assert limiter.statistics()[0].reserve == 10 + 16           # 20 a window, 0.8 left
    clock.advance(6.0)
    sent = await limiter.acquire({"w": 5})
    limiter.observe("w", 50, cost=5, sent_at=sent)              # 40 foreign by 0.8 of W
    assert limiter.statistics()[0].reserve == 50                # 40 + 50 × 0.2
    await limiter.close()


async def test_the_margin_is_kept_for_the_rest_of_the_window_only() -> None:
    """What the headers have shown a co-tenant using is not an estimate: late in a window the
    reserve is that, plus the co-tenant's rate over what is left with foreign_margin (10 %)
    on top, not its whole window's estimate plus 10 % (the bench's shared IP lost 3 a window
    to that)."""
    clock = FakeClock()
    limiter = make(clock, paced=False)
    clock.advance(9.0)
    sent = await limiter.acquire({"w": 10})
    limiter.observe("w", 37, cost=10, sent_at=sent)             # 27 foreign by 0.9 of W
    clock.advance(W)                                            # its rate: 30 a window
    assert limiter.statistics()[0].reserve == 33                # 30 + 10 %, nothing seen
    sent = await limiter.acquire({"w": 5})
    limiter.observe("w", 32, cost=5, sent_at=sent)              # 27 again by 0.9 of W
    assert limiter.statistics()[0].reserve == 31                # 27 + 30 × 0.1 × 1.1
    assert limiter.try_acquire({"w": 62}) is not None           # 5 + 62 = 98 − 31
    await limiter.close()


# ---------------------------------------------------------------------------- waits
class Waits:
    def __init__(self) -> None:
        self.seen: list[tuple[Priority, float, bool]] = []

    def __call__(self, priority: Priority, waited: float, had_room: bool) -> None:
        self.seen.append((priority, waited, had_room))


async def test_the_wait_listener_hears_every_admission() -> None:
    """on_wait hears each admitted request: 0 s with room for one admitted at once (by
    try_acquire too); for a waiter, its wait and whether its buckets had room when it asked —
    here a 1 that fit but queued behind a paced 20 (room; once the 20 went, it waited for the
    pace too), and a 20 held by a spent budget (no room) to the end of the next window's
    opening (the window before it has no room for it either)."""
    clock = FakeClock()
    waits = Waits()
    limiter = WeightLimiter([BucketSpec("w", 100, W)], clock, LimiterSettings(),
                            on_wait=waits)
    await limiter.acquire({"w": 5})
    assert limiter.try_acquire({"w": 1}, CRITICAL) is not None
    rec = Recorder(limiter)
    rec.submit(20)                                              # paced: 26 / 98 − 0.1
    rec.submit(1)                                               # fits now, but FIFO
    await run_until(clock, W - 1)
    assert waits.seen[:2] == [(NORMAL, 0.0, True), (CRITICAL, 0.0, True)]
    assert [(p, pytest.approx(w, abs=1e-3), r) for p, w, r in waits.seen[2:]] == [
        (NORMAL, (26 / 98 - 0.1) * W, False), (NORMAL, (27 / 98 - 0.1) * W, True)]
    await limiter.close()
    clock = FakeClock()
    spent = Waits()
    limiter = WeightLimiter([BucketSpec("w", 100, W, paced=False)], clock,
                            LimiterSettings(), on_wait=spent)
    await limiter.acquire({"w": 90})
    Recorder(limiter).submit(20)                # 8 left: the next window, after its opening
    await run_until(clock, W + 1)
    assert spent.seen == [(NORMAL, 0.0, True),
                          (NORMAL, pytest.approx(W + OPENING, abs=1e-3), False)]
    await limiter.close()


async def test_without_a_listener_nothing_is_measured() -> None:
    """on_wait is off by default; it can be set on a running limiter."""
    clock = FakeClock()
    limiter = make(clock)
    assert limiter.on_wait is None
    await limiter.acquire({"w": 1})
    waits = Waits()
    limiter.on_wait = waits
    await limiter.acquire({"w": 1})
    assert waits.seen == [(NORMAL, 0.0, True)]
    await asyncio.sleep(0)
    await limiter.close()
