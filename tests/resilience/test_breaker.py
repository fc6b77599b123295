"""The circuit breaker (SPEC §7.2): thresholds, probe gating, cancellation and its listeners."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.clock import FakeClock
from app.errors import CircuitOpen, OrderRejected, TransientError, UnknownOutcome
from app.resilience.breaker import BreakerSettings, BreakerState, BreakerStats, CircuitBreaker

RECOVERY = 30.0


def is_failure(exc: BaseException) -> bool:
    """The gateway's predicate in miniature: only transient errors and unknown outcomes count."""
    return isinstance(exc, TransientError | UnknownOutcome)


@dataclass
class Recorder:
    """Collects what the breaker's listeners are told."""

    changes: list[tuple[str, BreakerState, BreakerState, BreakerStats]] = field(
        default_factory=list)
    rejects: list[tuple[str, int, float]] = field(default_factory=list)

    def on_state_change(self, name: str, old: BreakerState, new: BreakerState,
                        stats: BreakerStats) -> None:
        self.changes.append((name, old, new, stats))

    def on_reject(self, name: str, count: int, retry_after: float) -> None:
        self.rejects.append((name, count, retry_after))

    @property
    def transitions(self) -> list[tuple[BreakerState, BreakerState]]:
        return [(old, new) for _, old, new, _ in self.changes]


def make(clock: FakeClock, rec: Recorder | None = None, **overrides: Any) -> CircuitBreaker:
    """A `trade` breaker with small thresholds (3 failures, 30 s, 1 probe, 2 successes)."""
    values: dict[str, Any] = {"failure_threshold": 3, "recovery_timeout": RECOVERY,
                              "half_open_max_calls": 1, "success_threshold": 2,
                              "reject_report_interval": 1.0}
    values.update(overrides)
    rec = rec or Recorder()
    return CircuitBreaker("trade", clock, BreakerSettings(**values), is_failure=is_failure,
                          on_state_change=rec.on_state_change, on_reject=rec.on_reject)


async def fail(breaker: CircuitBreaker, exc: Exception | None = None) -> None:
    """One guarded call that raises a failure (or `exc`); asserts that very exception came out."""
    error = exc or TransientError("boom", code=-1001)
    with pytest.raises(type(error)) as info:
        async with breaker:
            raise error
    assert info.value is error


async def succeed(breaker: CircuitBreaker) -> None:
    """One guarded call that returns normally."""
    async with breaker:
        pass


async def trip(breaker: CircuitBreaker) -> None:
    """Fail until the breaker is OPEN."""
    while breaker.state is not BreakerState.OPEN:
        await fail(breaker)


async def half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Trip the breaker and let the recovery timeout pass."""
    await trip(breaker)
    clock.advance(RECOVERY)
    assert breaker.state is BreakerState.HALF_OPEN


async def settle() -> None:
    """Let ready tasks run: a few loop iterations, no real time."""
    for _ in range(10):
        await asyncio.sleep(0)


class Blocker:
    """Guarded calls that park inside the breaker until released."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.release = asyncio.Event()
        self.inside = 0
        self.error: Exception | None = None

    async def call(self) -> None:
        async with self.breaker:
            self.inside += 1
            await self.release.wait()
            if self.error is not None:
                raise self.error

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.call())


# --------------------------------------------------------------------------- closed → open


async def test_opens_after_exactly_failure_threshold_failures() -> None:
    """Three consecutive failures open a threshold-3 breaker; two leave it closed."""
    breaker = make(FakeClock())
    await fail(breaker)
    await fail(breaker)
    assert breaker.state is BreakerState.CLOSED
    await fail(breaker)
    assert breaker.state is BreakerState.OPEN


async def test_success_resets_the_failure_count() -> None:
    """A success between failures restarts the count: fail, fail, ok, fail, fail stays closed."""
    breaker = make(FakeClock())
    await fail(breaker)
    await fail(breaker)
    await succeed(breaker)
    await fail(breaker)
    await fail(breaker)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.statistics().consecutive_failures == 2


async def test_tripping_call_raises_its_own_exception() -> None:
    """The call that opens the breaker propagates its own exception unchanged, not CircuitOpen."""
    breaker = make(FakeClock(), failure_threshold=1)
    error = UnknownOutcome("timeout after send", code=-1007)
    await fail(breaker, error)  # asserts `error` itself came out
    assert breaker.state is BreakerState.OPEN


# --------------------------------------------------------------------------- open


async def test_open_refuses_with_remaining_recovery_time() -> None:
    """An open breaker raises CircuitOpen whose retry_after is the time left until half-open."""
    clock = FakeClock()
    breaker = make(clock)
    await trip(breaker)
    clock.advance(12.0)
    with pytest.raises(CircuitOpen) as info:
        await succeed(breaker)
    assert info.value.retry_after == pytest.approx(RECOVERY - 12.0)
    assert info.value.endpoint == "trade"


async def test_refused_call_body_never_runs() -> None:
    """A refused call's body is not executed."""
    breaker = make(FakeClock())
    await trip(breaker)
    ran = False
    with pytest.raises(CircuitOpen):
        async with breaker:
            ran = True
    assert not ran


async def test_half_open_only_after_recovery_timeout() -> None:
    """OPEN stays OPEN until recovery_timeout has passed on the clock, then becomes HALF_OPEN."""
    clock = FakeClock()
    breaker = make(clock)
    await trip(breaker)
    clock.advance(RECOVERY - 0.001)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.001)
    assert breaker.state is BreakerState.HALF_OPEN


# --------------------------------------------------------------------------- half-open


@pytest.mark.parametrize("max_calls", [1, 3])
async def test_half_open_admits_exactly_max_probes(max_calls: int) -> None:
    """Of N+2 concurrent calls in HALF_OPEN exactly half_open_max_calls=N get in; 2 are refused."""
    clock = FakeClock()
    breaker = make(clock, half_open_max_calls=max_calls)
    await half_open(breaker, clock)
    blocker = Blocker(breaker)
    tasks = [blocker.start() for _ in range(max_calls + 2)]
    await settle()
    assert blocker.inside == max_calls
    refused = [t for t in tasks if t.done()]
    assert len(refused) == 2
    assert all(isinstance(t.exception(), CircuitOpen) for t in refused)
    assert breaker.statistics().probes_in_flight == max_calls
    blocker.release.set()
    await asyncio.gather(*(t for t in tasks if t not in refused))


async def test_success_threshold_successes_close_half_open() -> None:
    """success_threshold successful probes close the breaker; one is not enough."""
    clock = FakeClock()
    breaker = make(clock)
    await half_open(breaker, clock)
    await succeed(breaker)
    assert breaker.state is BreakerState.HALF_OPEN
    await succeed(breaker)
    assert breaker.state is BreakerState.CLOSED


async def test_failed_probe_reopens() -> None:
    """Any failure in HALF_OPEN reopens the breaker, even after a successful probe."""
    clock = FakeClock()
    breaker = make(clock, success_threshold=3)
    await half_open(breaker, clock)
    await succeed(breaker)
    await fail(breaker)
    assert breaker.state is BreakerState.OPEN


async def test_failed_probe_restarts_recovery_timer() -> None:
    """After a failed probe at t, the breaker stays open until t + recovery_timeout."""
    clock = FakeClock()
    breaker = make(clock)
    await half_open(breaker, clock)  # half-open at t=30
    clock.advance(5.0)
    await fail(breaker)  # reopened at t=35
    assert breaker.retry_after() == pytest.approx(RECOVERY)
    clock.advance(RECOVERY - 0.001)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.001)
    assert breaker.state is BreakerState.HALF_OPEN


async def test_half_open_refusal_suggests_a_short_retry_after() -> None:
    """A call refused because the probe slots are full gets a positive retry_after."""
    clock = FakeClock()
    breaker = make(clock)
    await half_open(breaker, clock)
    blocker = Blocker(breaker)
    probe = blocker.start()
    await settle()
    with pytest.raises(CircuitOpen) as info:
        await succeed(breaker)
    assert info.value.retry_after is not None
    assert 0 < info.value.retry_after <= RECOVERY
    blocker.release.set()
    await probe


async def test_call_admitted_before_opening_does_not_count_in_half_open() -> None:
    """A call let in while CLOSED that ends in HALF_OPEN neither frees a probe slot nor counts."""
    clock = FakeClock()
    breaker = make(clock, success_threshold=1)
    straggler = Blocker(breaker)
    slow = straggler.start()
    await settle()
    await half_open(breaker, clock)
    prober = Blocker(breaker)
    probe = prober.start()
    await settle()
    straggler.release.set()
    await slow  # succeeds, but it was no probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.statistics().probes_in_flight == 1
    with pytest.raises(CircuitOpen):
        await succeed(breaker)
    prober.release.set()
    await probe
    assert breaker.state is BreakerState.CLOSED


async def test_probe_from_an_earlier_half_open_does_not_free_a_new_slot() -> None:
    """A probe that outlives its half-open period does not release a slot of the next one."""
    clock = FakeClock()
    breaker = make(clock, half_open_max_calls=2)
    await half_open(breaker, clock)
    old = Blocker(breaker)
    old_probe = old.start()
    await settle()
    assert old.inside == 1
    await fail(breaker)  # the other probe fails: reopened, `old_probe` still in flight
    clock.advance(RECOVERY)
    assert breaker.state is BreakerState.HALF_OPEN
    new = Blocker(breaker)
    new_probes = [new.start(), new.start()]
    await settle()
    assert new.inside == 2
    old.release.set()
    await old_probe
    assert breaker.statistics().probes_in_flight == 2
    with pytest.raises(CircuitOpen):
        await succeed(breaker)
    new.release.set()
    await asyncio.gather(*new_probes)


# --------------------------------------------------------------------------- cancellation


async def test_cancellations_are_never_failures() -> None:
    """failure_threshold cancellations inside the guard leave it CLOSED with no failures."""
    breaker = make(FakeClock())
    for _ in range(3):
        task = Blocker(breaker).start()
        await settle()
        task.cancel()
        await asyncio.wait([task])
        assert task.cancelled()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.statistics().consecutive_failures == 0


async def test_cancellation_propagates_through_the_guard() -> None:
    """A CancelledError raised inside the guard comes out of it: the task ends cancelled."""
    breaker = make(FakeClock())

    async def cancelled_inside() -> None:
        async with breaker:
            raise asyncio.CancelledError

    task = asyncio.create_task(cancelled_inside())
    await asyncio.wait([task])
    assert task.cancelled()


async def test_cancelled_probe_frees_its_slot() -> None:
    """A probe cancelled in HALF_OPEN frees its slot: the next call is admitted as a probe."""
    clock = FakeClock()
    breaker = make(clock)
    await half_open(breaker, clock)
    probe = Blocker(breaker).start()
    await settle()
    with pytest.raises(CircuitOpen):
        await succeed(breaker)
    probe.cancel()
    await asyncio.wait([probe])
    assert probe.cancelled()
    assert breaker.state is BreakerState.HALF_OPEN
    await succeed(breaker)
    assert breaker.statistics().consecutive_successes == 1


# --------------------------------------------------------------------------- non-failures


async def test_non_failure_exception_resets_failure_count() -> None:
    """A rejection propagates unchanged and counts as a success: the failure count goes to 0."""
    breaker = make(FakeClock())
    await fail(breaker)
    await fail(breaker)
    await fail(breaker, OrderRejected("Margin is insufficient.", code=-2019))
    assert breaker.statistics().consecutive_failures == 0
    await fail(breaker)
    await fail(breaker)
    assert breaker.state is BreakerState.CLOSED


async def test_non_failure_exceptions_close_half_open() -> None:
    """success_threshold rejections in HALF_OPEN prove the service answers and close it."""
    clock = FakeClock()
    breaker = make(clock)
    await half_open(breaker, clock)
    await fail(breaker, OrderRejected("Order would immediately trigger.", code=-2021))
    await fail(breaker, OrderRejected("Order would immediately trigger.", code=-2021))
    assert breaker.state is BreakerState.CLOSED


# --------------------------------------------------------------------------- listeners


async def test_state_listener_called_once_per_transition() -> None:
    """The listener sees each transition exactly once, in order, with the new state's stats."""
    clock = FakeClock()
    rec = Recorder()
    breaker = make(clock, rec)
    await half_open(breaker, clock)
    await fail(breaker)
    clock.advance(RECOVERY)
    _ = breaker.state
    await succeed(breaker)
    await succeed(breaker)
    c, o, h = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
    assert rec.transitions == [(c, o), (o, h), (h, o), (o, h), (h, c)]
    assert all(name == "trade" for name, _, _, _ in rec.changes)
    assert all(stats.state is new for _, _, new, stats in rec.changes)


async def test_state_listener_not_called_without_a_change() -> None:
    """Successes while closed, failures below the threshold and refusals while open emit nothing."""
    clock = FakeClock()
    rec = Recorder()
    breaker = make(clock, rec)
    await succeed(breaker)
    await fail(breaker)
    assert rec.changes == []
    await fail(breaker)
    await fail(breaker)
    for _ in range(5):
        with pytest.raises(CircuitOpen):
            await succeed(breaker)
        _ = breaker.state
    assert rec.transitions == [(BreakerState.CLOSED, BreakerState.OPEN)]


async def test_opened_listener_stats_carry_the_recovery_time() -> None:
    """The stats handed to the listener on opening show the full recovery time ahead."""
    clock = FakeClock()
    rec = Recorder()
    breaker = make(clock, rec)
    await trip(breaker)
    (_, _, _, stats), = rec.changes
    assert stats.retry_after == pytest.approx(RECOVERY)
    assert stats.consecutive_opens == 1


async def test_rejections_are_reported_sampled() -> None:
    """Refusals within reject_report_interval give one report; the next carries the count."""
    clock = FakeClock()
    rec = Recorder()
    breaker = make(clock, rec, reject_report_interval=1.0)
    await trip(breaker)
    for _ in range(10):
        with pytest.raises(CircuitOpen):
            await succeed(breaker)
    assert rec.rejects == [("trade", 1, pytest.approx(RECOVERY))]
    clock.advance(1.0)
    with pytest.raises(CircuitOpen):
        await succeed(breaker)
    assert rec.rejects[1:] == [("trade", 10, pytest.approx(RECOVERY - 1.0))]
    assert breaker.statistics().rejected == 11


# --------------------------------------------------------------------------- consecutive opens


async def test_consecutive_opens_counts_reopens() -> None:
    """open → half-open → failed probe makes consecutive_opens 2."""
    clock = FakeClock()
    breaker = make(clock)
    await trip(breaker)
    assert breaker.consecutive_opens == 1
    clock.advance(RECOVERY)
    await fail(breaker)
    assert breaker.consecutive_opens == 2


async def test_consecutive_opens_resets_on_close() -> None:
    """Closing the breaker resets consecutive_opens to 0."""
    clock = FakeClock()
    breaker = make(clock)
    await half_open(breaker, clock)
    await succeed(breaker)
    await succeed(breaker)
    assert breaker.consecutive_opens == 0


# --------------------------------------------------------------------------- introspection


async def test_statistics_show_the_live_state() -> None:
    """statistics() reports state, counters and retry_after as they are now."""
    clock = FakeClock()
    breaker = make(clock)
    await fail(breaker)
    await fail(breaker)
    stats = breaker.statistics()
    assert (stats.name, stats.state) == ("trade", BreakerState.CLOSED)
    assert stats.consecutive_failures == 2
    await fail(breaker)
    clock.advance(10.0)
    stats = breaker.statistics()
    assert stats.state is BreakerState.OPEN
    assert stats.opened_at == 0.0
    assert stats.retry_after == pytest.approx(20.0)
    assert stats.consecutive_opens == 1


async def test_statistics_show_half_open_once_recovery_passed() -> None:
    """Once recovery_timeout has passed, statistics() says HALF_OPEN without a call in between."""
    clock = FakeClock()
    breaker = make(clock)
    await trip(breaker)
    clock.advance(RECOVERY)
    stats = breaker.statistics()
    assert stats.state is BreakerState.HALF_OPEN
    assert stats.retry_after == 0.0


async def test_repr_shows_the_live_state() -> None:
    """repr names the breaker, its state, failures and time to half-open."""
    clock = FakeClock()
    breaker = make(clock)
    await fail(breaker)
    assert repr(breaker) == "<CircuitBreaker 'trade' CLOSED failures=1 probes=0 retry_after=0.00s>"
    await fail(breaker)
    await fail(breaker)
    clock.advance(5.0)
    assert "OPEN" in repr(breaker)
    assert "retry_after=25.00s" in repr(breaker)
    clock.advance(RECOVERY)
    assert "HALF_OPEN" in repr(breaker)


async def test_statistics_count_calls_failures_rejections_and_opens() -> None:
    clock = FakeClock(start_time=1_000.0)
    breaker = make(clock)
    await succeed(breaker)
    await trip(breaker)                                  # 3 failures
    with pytest.raises(CircuitOpen):
        await succeed(breaker)
    stats = breaker.statistics()
    assert (stats.calls, stats.failures, stats.rejected, stats.opens) == (4, 3, 1, 1)
    assert stats.last_opened == clock.time()


async def test_an_operator_reset_closes_at_once_and_an_old_probe_decides_nothing() -> None:
    clock = FakeClock()
    rec = Recorder()
    breaker = make(clock, rec)
    await half_open(breaker, clock)
    probe = breaker.enter()                              # a probe in flight at the reset
    assert breaker.reset() is BreakerState.HALF_OPEN
    assert breaker.state is BreakerState.CLOSED
    assert breaker.retry_after() == 0.0
    breaker.exit(TransientError("late", code=-1001), probe)   # the old probe fails: ignored
    assert breaker.state is BreakerState.CLOSED
    await succeed(breaker)
    assert rec.transitions[-1] == (BreakerState.OPEN, BreakerState.HALF_OPEN)  # no listener call
