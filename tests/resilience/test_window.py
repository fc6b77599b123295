"""One bucket's window arithmetic, driven directly: no clock, no event loop (SPEC §7.1).

The limiter's behaviour as a whole is specified in test_limiter.py; these pin the seam."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.resilience.window import Bucket, BucketSpec, LimiterSettings, Priority

W = 10.0
T0 = 1000.0                    # the start of window 100 of a W-second bucket


def make(limit: int = 100, **kw: float) -> Bucket:
    bucket = Bucket(BucketSpec("w", limit, W), LimiterSettings(**kw))
    bucket.roll(T0)
    return bucket


def test_budget_leaves_the_headroom_unused() -> None:
    """The budget is the limit less its headroom, rounded down."""
    assert make(100).budget == 98
    assert make(100, headroom=0.1).budget == 90


def test_a_limit_with_no_budget_left_is_refused() -> None:
    """A limit that the headroom rounds down to nothing raises ValueError."""
    with pytest.raises(ValueError, match="leaves no budget"):
        Bucket(BucketSpec("w", 1, W), LimiterSettings(headroom=0.5))


def test_pacing_delays_a_cost_ahead_of_the_pace_and_critical_skips_it() -> None:
    """At a window's start a cost above pace_lead of the budget waits for the pace to reach
    it; CRITICAL goes now."""
    bucket = make()
    assert bucket.ready_at(5, Priority.NORMAL, T0) == T0
    assert bucket.ready_at(20, Priority.NORMAL, T0) == pytest.approx(T0 + (20 / 98 - 0.1) * W)
    assert bucket.ready_at(20, Priority.CRITICAL, T0) == T0


def test_a_header_just_after_the_window_start_is_set_aside() -> None:
    """Straddle rule: a value above our own count for a request sent within straddle_s of
    the window's start is not taken as this window's, nor as foreign use."""
    bucket = make()
    assert not bucket.record(250, 5, T0 + 0.05, T0 + 0.2)
    assert (bucket.straddled, bucket.server, bucket.live_foreign) == (1, 0, 0)
    assert bucket.record(250, 5, T0 + 0.5, T0 + 0.6)
    assert (bucket.server, bucket.live_foreign) == (250, 250)


def test_a_refused_response_at_our_value_is_not_foreign_use() -> None:
    """Among equal header values our own cost is credited first, so a tie never shows up as
    foreign use in the finished window's estimate."""
    bucket = make()
    bucket.own = 10
    bucket.record(10, 0, T0 + 1.0, T0 + 1.1)         # refused, same value as ours
    bucket.record(10, 10, T0 + 1.0, T0 + 1.1)
    bucket.roll(T0 + W)
    assert bucket.foreign_estimate == 0.0


def test_foreign_use_is_scaled_to_the_whole_window() -> None:
    """A finished window's foreign cost is scaled from where our last response was counted."""
    bucket = make()
    bucket.own = 10
    bucket.record(25, 10, T0 + W / 2, T0 + W / 2)      # 15 foreign by half-way
    bucket.roll(T0 + W)
    assert bucket.foreign_estimate == pytest.approx(30.0)


def test_the_reserve_is_capped_and_critical_reserves_only_live_use() -> None:
    """However much foreign use a past window showed, the reserve stays within max_reserve of
    the budget; CRITICAL reserves only what the current window's headers show."""
    bucket = make()
    bucket.record(500, 1, T0 + 1.0, T0 + 1.0)
    bucket.roll(T0 + W)
    assert bucket.reserve() == math.ceil(98 * 0.9)
    assert bucket.reserve(Priority.CRITICAL) == 0


@settings(max_examples=300, deadline=None)
@given(responses=st.lists(st.tuples(st.integers(0, 150), st.integers(0, 12),
                                    st.floats(1.0, W - 0.001)), max_size=60),
       carried_late=st.integers(0, 20))
def test_foreign_use_of_a_window_is_the_sorted_attribution(
        responses: list[tuple[int, int, float]], carried_late: int) -> None:
    """What a finished window's headers say of co-tenants, kept response by response as they
    come (by header value), is what ordering all of them at the end gives: by value, the
    costlier first among equal values, our cost credited as it goes (``carried_late`` first);
    scaled from our last response."""
    bucket = make(limit=1000)
    bucket.carried_late = carried_late
    for used, cost, at in responses:
        bucket.record(used, cost, T0 + at, T0 + at)
    own_before, foreign, last_at = carried_late, 0, T0
    for used, cost, at in sorted(responses, key=lambda r: (r[0], -r[1])):
        own_before += cost
        foreign = max(foreign, used - own_before)
        last_at = max(last_at, T0 + at)
    expected = min(foreign / max((last_at - T0) / W, 0.5), 1000.0) if responses else 0.0
    assert bucket.foreign_of_window() == pytest.approx(expected)
