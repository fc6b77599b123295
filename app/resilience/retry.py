"""Retry policies on tenacity, built per call (a shared ``AsyncRetrying`` is not task-safe).

The decision is a pure function of the error (``should_retry``): only ``ExchangeError``
subclasses marked ``retryable`` are retried; ``CancelledError`` and every other exception
propagate at once. The wait is exponential with jitter, never shorter than the error's
``retry_after``. Sleeping goes through the injected clock, so tests never really sleep.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from app.clock import Clock
from app.errors import ExchangeError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """All durations in seconds. ``max_retries`` counts retries, not attempts."""

    max_retries: int = 3
    initial_delay: float = 0.2
    backoff_factor: float = 2.0
    max_delay: float = 5.0
    jitter: float = 0.1


@dataclass(frozen=True, slots=True)
class RetryInfo:
    """What a retry listener is told before each wait."""

    operation: str
    attempt: int
    max_attempts: int
    delay: float
    error: BaseException


RetryListener = Callable[[RetryInfo], None]


def should_retry(exc: BaseException) -> bool:
    """Pure: retry exactly the exchange errors whose class is marked retryable."""
    return isinstance(exc, ExchangeError) and exc.retryable


def backoff_delay(settings: RetrySettings, attempt: int, exc: BaseException | None,
                  rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    base = settings.initial_delay * settings.backoff_factor ** (attempt - 1)
    delay = min(settings.max_delay, base) + rng.uniform(0, settings.jitter)
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float) and retry_after > delay:
        return float(retry_after)
    return delay


class RetryPolicy:
    """``await policy.run("get_position", fn)`` calls ``fn()`` and retries per the settings."""

    def __init__(self, settings: RetrySettings, clock: Clock, *,
                 on_retry: RetryListener | None = None,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self._clock = clock
        self._on_retry = on_retry
        self._rng = rng or random.Random()

    async def run(self, operation: str, fn: Callable[[], Awaitable[T]], *,
                  retry_if: Callable[[BaseException], bool] = should_retry) -> T:
        """Call ``fn`` until it succeeds, raises something ``retry_if`` rejects, or the
        attempts run out (the last error is re-raised as it is).

        The first attempt runs without tenacity: nearly every call succeeds at once, and
        building a retrying object per call costs more CPU than the call's own bookkeeping.
        Only a retryable failure builds one (a fresh one: a shared instance is not task-safe).
        """
        try:
            return await fn()
        except Exception as exc:
            if not self.may_retry(exc, retry_if):
                raise
            first = exc
        return await self.resume(operation, fn, first, retry_if=retry_if)

    def may_retry(self, exc: BaseException,
                  retry_if: Callable[[BaseException], bool] = should_retry) -> bool:
        """Whether a first attempt that raised ``exc`` gets another: retries are allowed and
        ``retry_if`` accepts the error."""
        return self.settings.max_retries != 0 and retry_if(exc)

    async def resume(self, operation: str, fn: Callable[[], Awaitable[T]],
                     first: BaseException, *,
                     retry_if: Callable[[BaseException], bool] = should_retry) -> T:
        """What `run` does after its first attempt failed with ``first`` (for which
        `may_retry` holds): wait, notify and call ``fn`` again, as `run` would.

        For a caller that makes the first attempt itself, to spare the common case the extra
        closure and coroutine; ``run(op, fn)`` is that first attempt plus ``resume``. As for
        `run`, ``fn`` must be a coroutine function (tenacity awaits nothing else).
        """
        attempts = self.settings.max_retries + 1
        delay = backoff_delay(self.settings, 1, first, self._rng)
        self._notify(operation, 1, attempts, delay, first)
        await self._clock.sleep(delay)

        # Inside tenacity, its attempt 1 is our attempt 2.
        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome is not None else None
            return backoff_delay(self.settings, state.attempt_number + 1, exc, self._rng)

        def before_sleep(state: RetryCallState) -> None:
            if state.outcome is None:
                return
            error = state.outcome.exception()
            assert error is not None
            pause = state.next_action.sleep if state.next_action is not None else 0.0
            self._notify(operation, state.attempt_number + 1, attempts, pause, error)

        retrying = AsyncRetrying(
            retry=retry_if_exception(retry_if),
            stop=stop_after_attempt(attempts - 1),
            wait=wait,
            sleep=self._clock.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        return await retrying(fn)

    def _notify(self, operation: str, attempt: int, attempts: int, delay: float,
                error: BaseException) -> None:
        if self._on_retry is not None:
            self._on_retry(RetryInfo(operation, attempt, attempts, delay, error))
