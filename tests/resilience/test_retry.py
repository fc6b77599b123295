"""Retry policies (SPEC §7.3): a pure predicate, backoff with jitter and Retry-After, and
`RetryPolicy.run` on tenacity with the injected clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence

import pytest

from app.clock import Clock, FakeClock
from app.errors import (
    AuthError,
    CircuitOpen,
    ClockSkew,
    InvalidRequest,
    IpBanned,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    TransientError,
    UnknownOutcome,
)
from app.resilience.retry import RetryInfo, RetryPolicy, RetrySettings, backoff_delay, should_retry

#: No jitter, so every delay is exact: 0.2, 0.4, 0.8, 1.6, 3.2, then capped at 5.0.
EXACT = RetrySettings(max_retries=3, initial_delay=0.2, backoff_factor=2.0, max_delay=5.0,
                      jitter=0.0)


class RecordingClock:
    """A `Clock` whose sleep records the duration, moves virtual time and returns at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_767_225_600.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)  # still a suspension point, like a real sleep


class Script:
    """An operation that raises the scripted errors in turn, then returns `value`."""

    def __init__(self, errors: Sequence[BaseException], value: str = "ok") -> None:
        self.errors = list(errors)
        self.value = value
        self.attempts = 0

    async def __call__(self) -> str:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


def always(make_error: Callable[[], BaseException]) -> tuple[Callable[[], Awaitable[str]],
                                                             list[BaseException]]:
    """An operation that fails every time with a fresh error; returns it and the errors raised."""
    raised: list[BaseException] = []

    async def fn() -> str:
        error = make_error()
        raised.append(error)
        raise error

    return fn, raised


def policy(clock: Clock, settings: RetrySettings = EXACT, infos: list[RetryInfo] | None = None,
           seed: int = 1) -> RetryPolicy:
    return RetryPolicy(settings, clock, on_retry=None if infos is None else infos.append,
                       rng=random.Random(seed))


def transient(n: int = 0) -> TransientError:
    return TransientError(f"disconnected #{n}", code=-1001)


# --------------------------------------------------------------------------- should_retry

RETRYABLE = [
    RateLimited("Too many requests.", code=-1003, http_status=429, retry_after=7),
    UnknownOutcome("Unknown error, please check your request.", http_status=503),
    TransientError("Internal error; unable to process your request.", code=-1001),
    ClockSkew("Timestamp for this request is outside of the recvWindow.", code=-1021),
]
NOT_RETRYABLE = [
    IpBanned("Way too many requests; IP banned.", http_status=418, retry_after=120),
    AuthError("Invalid API-key, IP, or permissions for action.", code=-2015),
    OrderRejected("Margin is insufficient.", code=-2019),
    OrderNotFound("Unknown order sent.", code=-2011),
    InvalidRequest("Mandatory parameter was not sent.", code=-1102),
    CircuitOpen("circuit 'trade' is open", retry_after=3.0),
    ValueError("not an exchange error"),
    asyncio.CancelledError(),
]


@pytest.mark.parametrize("exc", RETRYABLE, ids=lambda e: type(e).__name__)
def test_should_retry_retryable_classes(exc: BaseException) -> None:
    """RateLimited, UnknownOutcome, TransientError and ClockSkew are retried."""
    assert should_retry(exc) is True


@pytest.mark.parametrize("exc", NOT_RETRYABLE, ids=lambda e: type(e).__name__)
def test_should_retry_refuses_other_classes(exc: BaseException) -> None:
    """Bans, auth, rejections, lookups, bad requests, open circuits, non-exchange errors and
    cancellation are never retried."""
    assert should_retry(exc) is False


def test_should_retry_is_pure() -> None:
    """The answer depends on the error class alone: asked twice, same answer, error untouched."""
    exc = RateLimited("Too many requests.", code=-1003, retry_after=7)
    before = exc.fields()
    assert [should_retry(exc), should_retry(exc)] == [True, True]
    assert exc.fields() == before


# --------------------------------------------------------------------------- backoff_delay


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    """Without jitter, delay n is initial × factor^(n−1), capped at max_delay."""
    rng = random.Random(0)
    delays = [backoff_delay(EXACT, n, None, rng) for n in range(1, 8)]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


def test_backoff_jitter_stays_in_range() -> None:
    """Jitter adds a uniform draw in [0, jitter) on top of the capped exponential delay."""
    settings = RetrySettings(initial_delay=0.2, backoff_factor=2.0, max_delay=5.0, jitter=0.5)
    rng = random.Random(7)
    for attempt, base in [(1, 0.2), (3, 0.8), (10, 5.0)]:
        draws = [backoff_delay(settings, attempt, None, rng) - base for _ in range(200)]
        assert all(0.0 <= d < 0.5 for d in draws)
        assert len(set(draws)) > 1


def test_backoff_jitter_is_reproducible_with_a_seed() -> None:
    """Two generators with the same seed give the same delays."""
    settings = RetrySettings(jitter=0.1)
    first = [backoff_delay(settings, n, None, random.Random(42)) for n in range(1, 5)]
    second = [backoff_delay(settings, n, None, random.Random(42)) for n in range(1, 5)]
    assert first == second


def test_backoff_honours_a_longer_retry_after() -> None:
    """An error's retry_after longer than the backoff is used instead (Retry-After honoured)."""
    exc = RateLimited("Too many requests.", http_status=429, retry_after=7)
    assert backoff_delay(EXACT, 1, exc, random.Random(0)) == 7.0


def test_backoff_ignores_a_shorter_retry_after() -> None:
    """An error's retry_after shorter than the backoff does not shorten the wait."""
    exc = RateLimited("Too many requests.", http_status=429, retry_after=1)
    assert backoff_delay(EXACT, 4, exc, random.Random(0)) == pytest.approx(1.6)


def test_backoff_without_retry_after_uses_the_backoff() -> None:
    """An error whose retry_after is None gets the plain backoff."""
    assert backoff_delay(EXACT, 2, transient(), random.Random(0)) == pytest.approx(0.4)


# --------------------------------------------------------------------------- RetryPolicy.run


async def test_run_returns_the_value_without_retrying() -> None:
    """A call that succeeds at once is called once and never sleeps."""
    clock = RecordingClock()
    fn = Script([])
    assert await policy(clock).run("get_balance", fn) == "ok"
    assert fn.attempts == 1
    assert clock.slept == []


async def test_run_returns_the_value_after_retryable_failures() -> None:
    """Two transient failures then success: the value comes back after 3 attempts."""
    clock = RecordingClock()
    fn = Script([transient(1), transient(2)], value="position")
    assert await policy(clock).run("get_position", fn) == "position"
    assert fn.attempts == 3


async def test_run_reraises_the_last_error_after_max_retries() -> None:
    """An always-failing call is tried max_retries+1 times; the last error itself comes out."""
    clock = RecordingClock()
    fn, raised = always(lambda: transient(len(clock.slept)))
    with pytest.raises(TransientError) as info:
        await policy(clock).run("get_position", fn)
    assert len(raised) == EXACT.max_retries + 1
    assert info.value is raised[-1]


async def test_run_never_retries_a_non_retryable_error() -> None:
    """A rejection is raised after one attempt, with no sleep."""
    clock = RecordingClock()
    error = OrderRejected("Margin is insufficient.", code=-2019)
    fn = Script([error])
    with pytest.raises(OrderRejected) as info:
        await policy(clock).run("set_leverage", fn)
    assert info.value is error
    assert fn.attempts == 1
    assert clock.slept == []


async def test_run_with_zero_retries_tries_once() -> None:
    """max_retries=0 means a single attempt even for a retryable error."""
    clock = RecordingClock()
    fn, raised = always(transient)
    settings = RetrySettings(max_retries=0, jitter=0.0)
    with pytest.raises(TransientError):
        await policy(clock, settings).run("get_position", fn)
    assert len(raised) == 1


async def test_run_propagates_cancellation_after_one_attempt() -> None:
    """A CancelledError raised by the function is not retried: the task ends cancelled."""
    clock = RecordingClock()
    fn = Script([asyncio.CancelledError()])
    task = asyncio.create_task(policy(clock).run("get_position", fn))
    await asyncio.wait([task])
    assert task.cancelled()
    assert fn.attempts == 1
    assert clock.slept == []


async def test_run_cancelled_while_waiting_stops_retrying() -> None:
    """Cancelling the task during a backoff wait ends it cancelled with no further attempt."""
    clock = FakeClock()
    fn, raised = always(transient)
    task = asyncio.create_task(policy(clock).run("get_position", fn))
    for _ in range(5):
        await asyncio.sleep(0)
    assert clock.sleepers == 1
    task.cancel()
    await asyncio.wait([task])
    assert task.cancelled()
    assert len(raised) == 1


async def test_run_sleeps_the_backoff_delays() -> None:
    """Three retries sleep 0.2, 0.4 and 0.8 s (no jitter) through the injected clock."""
    clock = RecordingClock()
    fn, _ = always(transient)
    with pytest.raises(TransientError):
        await policy(clock).run("get_position", fn)
    assert clock.slept == pytest.approx([0.2, 0.4, 0.8])


async def test_run_sleeps_the_jittered_delays_of_its_rng() -> None:
    """With jitter, the sleeps are the seeded generator's delays, in order."""
    settings = RetrySettings(max_retries=3, initial_delay=0.2, backoff_factor=2.0, max_delay=5.0,
                             jitter=0.1)
    clock = RecordingClock()
    fn, _ = always(transient)
    with pytest.raises(TransientError):
        await policy(clock, settings, seed=99).run("get_position", fn)
    twin = random.Random(99)
    expected = [backoff_delay(settings, n, None, twin) for n in (1, 2, 3)]
    assert clock.slept == expected
    assert all(b <= s < b + 0.1 for s, b in zip(clock.slept, [0.2, 0.4, 0.8], strict=True))


async def test_run_honours_retry_after() -> None:
    """A 429 with retry_after=7 makes the first sleep 7.0 s; later waits follow the backoff."""
    clock = RecordingClock()
    fn = Script([RateLimited("Too many requests.", code=-1003, http_status=429, retry_after=7),
                 transient(2), transient(3)])
    assert await policy(clock).run("get_position", fn) == "ok"
    assert clock.slept == pytest.approx([7.0, 0.4, 0.8])


async def test_run_waits_on_the_fake_clock() -> None:
    """The retry parks on the injected clock: no second attempt until the clock is advanced."""
    clock = FakeClock()
    fn = Script([transient()])
    task = asyncio.create_task(policy(clock).run("get_position", fn))
    for _ in range(5):
        await asyncio.sleep(0)
    assert fn.attempts == 1
    assert clock.next_deadline() == pytest.approx(0.2)
    clock.advance(0.199)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    clock.advance(0.001)
    assert await task == "ok"
    assert fn.attempts == 2


async def test_on_retry_reports_each_retry() -> None:
    """on_retry gets RetryInfo(operation, attempt, max_attempts, delay, error) once per retry."""
    clock = RecordingClock()
    infos: list[RetryInfo] = []
    limited = RateLimited("Too many requests.", code=-1003, http_status=429, retry_after=7)
    errors = [limited, transient(2), transient(3), transient(4)]
    with pytest.raises(TransientError):
        await policy(clock, infos=infos).run("get_position", Script(errors))
    assert infos == [
        RetryInfo("get_position", 1, 4, 7.0, limited),
        RetryInfo("get_position", 2, 4, 0.4, errors[1]),
        RetryInfo("get_position", 3, 4, 0.8, errors[2]),
    ]


async def test_on_retry_not_called_without_a_retry() -> None:
    """A non-retryable failure and an immediate success report nothing."""
    clock = RecordingClock()
    infos: list[RetryInfo] = []
    retry = policy(clock, infos=infos)
    await retry.run("get_balance", Script([]))
    with pytest.raises(AuthError):
        await retry.run("get_balance", Script([AuthError("Invalid API-key.", code=-2015)]))
    assert infos == []


async def test_one_policy_serves_concurrent_calls_independently() -> None:
    """20 concurrent always-failing runs on one policy each raise their own last error after
    max_retries+1 attempts; none returns None."""
    clock = RecordingClock()
    retry = policy(clock, RetrySettings(max_retries=3, initial_delay=0.01, jitter=0.01))
    calls = [always(lambda i=i: transient(i)) for i in range(20)]
    results = await asyncio.gather(*(retry.run(f"op{i}", fn) for i, (fn, _) in enumerate(calls)),
                                   return_exceptions=True)
    for result, (_, raised) in zip(results, calls, strict=True):
        assert len(raised) == 4
        assert result is raised[-1]


async def test_one_policy_concurrent_calls_on_the_fake_clock() -> None:
    """20 concurrent runs parked on one FakeClock all retry fully and raise their own error."""
    clock = FakeClock()
    retry = policy(clock, RetrySettings(max_retries=3, initial_delay=0.2, jitter=0.1))
    calls = [always(lambda i=i: transient(i)) for i in range(20)]
    tasks = [asyncio.create_task(retry.run(f"op{i}", fn)) for i, (fn, _) in enumerate(calls)]
    while not all(t.done() for t in tasks):
        for _ in range(5):
            await asyncio.sleep(0)
        deadline = clock.next_deadline()
        if deadline is not None:
            clock.advance(deadline - clock.monotonic())
    for task, (_, raised) in zip(tasks, calls, strict=True):
        assert len(raised) == 4
        assert task.exception() is raised[-1]


async def test_concurrent_runs_report_retries_as_their_own() -> None:
    """Concurrent runs on one policy report each retry under their own operation and error."""
    clock = RecordingClock()
    infos: list[RetryInfo] = []
    retry = policy(clock, RetrySettings(max_retries=2, initial_delay=0.01, jitter=0.01), infos)
    calls = {f"op{i}": always(lambda i=i: transient(i)) for i in range(10)}
    await asyncio.gather(*(retry.run(op, fn) for op, (fn, _) in calls.items()),
                         return_exceptions=True)
    for op, (_, raised) in calls.items():
        mine = [info for info in infos if info.operation == op]
        assert [info.attempt for info in mine] == [1, 2]
        assert [info.error for info in mine] == raised[:2]
