"""Time as a dependency: the `Clock` protocol, the real clock and a fake one for tests.

Everything in ``app/`` that measures or waits goes through a `Clock` handed in by the composition
root, never through ``time.monotonic``/``time.time``/``asyncio.sleep`` directly, so tests can move
time forward without sleeping (the idea of trio's ``MockClock.jump()``).

All times and durations are in seconds (floats). ``monotonic()`` is for deadlines, buckets and
timeouts; ``time()`` is wall-clock epoch time for exchange timestamps and the audit log.

This module imports nothing from ``app`` (SPEC §3.2).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock", "wait_event"]


class Clock(Protocol):
    """The seam between code and time. All values are seconds."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences are meaningful."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch (UTC)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds` (≤ 0 yields to the loop once)."""
        ...


class SystemClock:
    """The real clock: `time.monotonic`, `time.time` and `asyncio.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A clock that only moves when told to, for tests.

    `sleep()` parks the caller on a future until `advance()` carries the monotonic clock to or past
    its deadline; it never really sleeps. `sleep(0)` (or a negative duration) yields to the event
    loop once, like ``asyncio.sleep(0)``. `advance()` is synchronous: it resolves the due futures
    in deadline order (ties in the order the sleeps began), and the woken tasks run when the
    caller next yields to the loop (``await asyncio.sleep(0)``).
    """

    def __init__(self, start_time: float = 1_767_225_600.0, start_monotonic: float = 0.0) -> None:
        # 1_767_225_600 is 2026-01-01T00:00:00Z: a fixed, readable default epoch.
        self._wall_offset = start_time - start_monotonic
        self._now = start_monotonic
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), future))
        await future

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by `seconds` and wake every sleeper whose deadline passed.

        Raises ValueError for a negative step: a monotonic clock never goes backwards.
        """
        if seconds < 0:
            raise ValueError(f"cannot advance a clock by a negative step ({seconds})")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            # A sleeper cancelled while parked leaves a cancelled future behind; skip it.
            if not future.done():
                future.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many tasks are parked in `sleep()` right now (cancelled ones excluded)."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    def next_deadline(self) -> float | None:
        """The earliest pending wake-up on the monotonic clock, or None when nobody sleeps."""
        pending = [deadline for deadline, _, future in self._sleepers if not future.done()]
        return min(pending, default=None)

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._now}, time={self.time()}, sleepers={self.sleepers})"


async def wait_event(event: asyncio.Event, clock: Clock, seconds: float) -> bool:
    """Until ``event`` is set (True) or ``seconds`` pass on ``clock`` (False), whichever is
    first."""
    arrived = asyncio.ensure_future(event.wait())
    sleeping = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait((arrived, sleeping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        arrived.cancel()
        sleeping.cancel()
    return event.is_set()
