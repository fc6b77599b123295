"""An async circuit breaker with one-probe half-open and honest cancellation handling.

``CLOSED → OPEN`` after ``failure_threshold`` consecutive failures; ``OPEN → HALF_OPEN`` once
``recovery_timeout`` seconds have passed on the injected clock; ``HALF_OPEN`` admits at most
``half_open_max_calls`` concurrent probes, closes after ``success_threshold`` successes and
reopens on any failure. ``CancelledError`` (any ``BaseException`` that is not an ``Exception``)
is never counted and always propagates; it frees the probe slot it held.

In HALF_OPEN only the current probes decide: a call admitted before the breaker opened, or a
probe of an earlier half-open period, neither frees a slot nor counts when it ends.

What counts as a failure is the caller's predicate. A call that raises a non-failure exception
(a rejection, say) proves the service answered, so it counts as a success.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType

from app.clock import Clock
from app.errors import CircuitOpen


class BreakerState(IntEnum):
    """Numeric values are the metric's encoding (SPEC §9): 0 closed, 1 half-open, 2 open."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 5
    recovery_timeout: float = 30.0
    half_open_max_calls: int = 1
    success_threshold: int = 2
    #: Minimum seconds between two ``on_reject`` notifications (refusals are sampled).
    reject_report_interval: float = 1.0


# For `enter` / `exit`, which run on every call: ``BreakerState.CLOSED`` looked up on the class
# takes ``EnumType``'s slow attribute path (~0.1 µs).
_CLOSED = BreakerState.CLOSED

StateListener = Callable[[str, BreakerState, BreakerState, "BreakerStats"], None]
RejectListener = Callable[[str, int, float], None]


@dataclass(frozen=True, slots=True)
class BreakerStats:
    name: str
    state: BreakerState
    consecutive_failures: int
    consecutive_successes: int
    probes_in_flight: int
    opened_at: float | None
    retry_after: float
    consecutive_opens: int
    rejected: int
    #: Since start: calls whose outcome was recorded, failures among them, times opened, and
    #: when it last opened (``clock.time()``, epoch seconds; None: never).
    calls: int = 0
    failures: int = 0
    opens: int = 0
    last_opened: float | None = None


class CircuitBreaker:
    """Guard calls with ``async with breaker:``; refused calls raise ``CircuitOpen``."""

    def __init__(
        self,
        name: str,
        clock: Clock,
        settings: BreakerSettings = BreakerSettings(),
        *,
        is_failure: Callable[[BaseException], bool] = lambda exc: True,
        on_state_change: StateListener | None = None,
        on_reject: RejectListener | None = None,
    ) -> None:
        self.name = name
        self._clock = clock
        self._s = settings
        self._is_failure = is_failure
        self._on_state_change = on_state_change
        self._on_reject = on_reject
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._successes = 0
        self._probes = 0
        self._opened_at: float | None = None
        #: Bumped on every OPEN → HALF_OPEN; a probe carries the period it was admitted in.
        self._half_open_period = 0
        #: Per task, the probe periods (None: not a probe) of its open ``async with`` guards.
        self._guards: dict[asyncio.Task[object] | None, list[int | None]] = {}
        self._consecutive_opens = 0
        self._rejected = 0
        self._calls = 0
        self._failures_total = 0
        self._opens = 0
        self._last_opened: float | None = None
        self._unreported_rejects = 0
        self._last_reject_report = float("-inf")

    @property
    def state(self) -> BreakerState:
        self._maybe_half_open()
        return self._state

    @property
    def consecutive_opens(self) -> int:
        """Times the breaker opened without closing in between (2 = reopened after a probe)."""
        return self._consecutive_opens

    def retry_after(self) -> float:
        if self._state is not BreakerState.OPEN or self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._s.recovery_timeout - self._clock.monotonic())

    # ------------------------------------------------------------------ the guard
    async def __aenter__(self) -> CircuitBreaker:
        probe = self.enter()
        self._guards.setdefault(asyncio.current_task(), []).append(probe)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        task = asyncio.current_task()
        stack = self._guards[task]
        probe = stack.pop()
        if not stack:
            del self._guards[task]
        self.exit(exc, probe)

    def enter(self) -> int | None:
        """Admit a call or raise CircuitOpen.

        Returns a probe token (pass it to `exit`) when the call is a half-open probe, else None.
        """
        if self._state is _CLOSED:
            return None
        self._maybe_half_open()            # OPEN → HALF_OPEN; nothing here turns CLOSED
        if self._state is BreakerState.HALF_OPEN and self._probes < self._s.half_open_max_calls:
            self._probes += 1
            return self._half_open_period
        self._reject()
        raise CircuitOpen(f"circuit {self.name!r} is {self._state.name.lower()}",
                          retry_after=self.retry_after() or self._s.recovery_timeout / 10,
                          endpoint=self.name)

    def exit(self, exc: BaseException | None, probe: int | None = None) -> None:
        """Record a call's outcome; ``exc`` is what it raised (None on success), ``probe`` is
        what `enter` returned for it."""
        self._calls += 1
        if exc is None and probe is None and self._state is _CLOSED:
            self._failures = 0             # the common case: what `_record_success` does
            return
        current_probe = probe is not None and probe == self._half_open_period
        if current_probe:
            self._probes -= 1
        if exc is not None and not isinstance(exc, Exception):
            return  # cancellation and friends: never counted
        if self._state is BreakerState.HALF_OPEN and not current_probe:
            return  # admitted before this half-open period: only its probes decide
        if exc is not None and self._is_failure(exc):
            self._record_failure()
        else:
            self._record_success()

    # ------------------------------------------------------------------ transitions
    def _record_failure(self) -> None:
        self._failures_total += 1
        self._successes = 0
        if self._state is BreakerState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._state is BreakerState.CLOSED and self._failures >= self._s.failure_threshold:
            self._open()

    def _record_success(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._successes += 1
            if self._successes >= self._s.success_threshold:
                self._failures = 0
                self._successes = 0
                self._consecutive_opens = 0
                self._transition(BreakerState.CLOSED)
        elif self._state is BreakerState.CLOSED:
            self._failures = 0

    def _open(self) -> None:
        self._opens += 1
        self._last_opened = self._clock.time()
        self._opened_at = self._clock.monotonic()
        self._failures = 0
        self._successes = 0
        self._consecutive_opens += 1
        self._transition(BreakerState.OPEN)

    def _maybe_half_open(self) -> None:
        if self._state is BreakerState.OPEN and self.retry_after() <= 0:
            self._probes = 0
            self._successes = 0
            self._half_open_period += 1
            self._transition(BreakerState.HALF_OPEN)

    def _transition(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old is not new and self._on_state_change is not None:
            self._on_state_change(self.name, old, new, self.statistics())

    def _reject(self) -> None:
        self._rejected += 1
        self._unreported_rejects += 1
        now = self._clock.monotonic()
        if self._on_reject is not None and (
                now - self._last_reject_report >= self._s.reject_report_interval):
            self._on_reject(self.name, self._unreported_rejects, self.retry_after())
            self._unreported_rejects = 0
            self._last_reject_report = now

    # ------------------------------------------------------------------ introspection
    def statistics(self) -> BreakerStats:
        self._maybe_half_open()  # the live state: OPEN turns HALF_OPEN lazily, on first look
        return BreakerStats(
            name=self.name, state=self._state, consecutive_failures=self._failures,
            consecutive_successes=self._successes, probes_in_flight=self._probes,
            opened_at=self._opened_at, retry_after=self.retry_after(),
            consecutive_opens=self._consecutive_opens, rejected=self._rejected,
            calls=self._calls, failures=self._failures_total, opens=self._opens,
            last_opened=self._last_opened,
        )

    def reset(self) -> BreakerState:
        """An operator's close (they know the exchange is back): CLOSED at once with fresh
        counts; probes still in flight no longer decide anything. The state listener is not
        called (the caller reports it, with its reason); returns the state it had."""
        self._maybe_half_open()
        previous = self._state
        self._state = BreakerState.CLOSED
        self._failures = self._successes = self._probes = 0
        self._consecutive_opens = 0
        self._opened_at = None
        self._half_open_period += 1
        return previous

    def __repr__(self) -> str:
        self._maybe_half_open()
        return (f"<CircuitBreaker {self.name!r} {self._state.name} failures={self._failures} "
                f"probes={self._probes} retry_after={self.retry_after():.2f}s>")
