"""How long requests wait in the daemon's limiter, and whether their buckets had room (SPEC §13,
"decision latency, all the time": no request whose buckets have room waits more than 5 ms).

`LimiterWaits.install(limiter)` wraps the methods the gateway's call pipeline uses on that one
`WeightLimiter` instance (``try_acquire``, then ``acquire`` when it returned None); app/ is not
changed. Each request is timed from its first ask to its admission. Its buckets *had room* when
it asked if ``try_acquire`` admitted it at once, or else if, by the limiter's own statistics at
that moment (nothing is spent by a refused ``try_acquire``), no bucket it uses was paused or
banned and each had ``used + cost ≤ budget − reserve``: a request held only by pacing, the end
guard of a window or a queue is one that had room. The exchange second of the minute at which
it asked is kept, to look at the ends of minutes.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.resilience.limiter import WeightLimiter

#: Set while a wrapped ``acquire`` runs: its own first ``try_acquire`` is not a new ask.
_IN_ACQUIRE: contextvars.ContextVar[bool] = contextvars.ContextVar("_IN_ACQUIRE", default=False)


#: (seconds waited, had room, second of the minute at which it asked, exchange time). A plain
#: tuple of floats and a bool: the garbage collector stops tracking it (not a NamedTuple's
#: subclass), so ~27,000 of them in a full run do not lengthen the daemon's collections in
#: this process.
Wait = tuple[float, bool, float]


@dataclass
class LimiterWaits:
    limiter: WeightLimiter
    waits: list[Wait] = field(default_factory=list)
    active: bool = False
    #: (costs, perf_counter at the ask, had room, second of minute) of a refused try_acquire,
    #: for the ``acquire`` that follows it in the same task without a suspension between.
    _pending: tuple[Mapping[str, int], float, bool, float] | None = None

    @classmethod
    def install(cls, limiter: WeightLimiter) -> LimiterWaits:
        self = cls(limiter)
        try_acquire, acquire = limiter.try_acquire, limiter.acquire
        now = time.perf_counter

        def timed_try(costs: Mapping[str, int], *args: Any) -> float | None:
            if _IN_ACQUIRE.get() or not self.active:
                return try_acquire(costs, *args)
            start = now()
            admitted = try_acquire(costs, *args)
            if admitted is not None:
                self.waits.append((now() - start, True, admitted % 60.0))
            else:
                self._pending = (costs, start, self.had_room(costs),
                                 limiter.now() % 60.0)
            return admitted

        async def timed_acquire(costs: Mapping[str, int], *args: Any) -> float:
            pending, self._pending = self._pending, None
            if not self.active:
                return await acquire(costs, *args)
            if pending is not None and pending[0] is costs:
                _, start, room, second = pending
            else:
                start, room, second = now(), self.had_room(costs), limiter.now() % 60.0
            token = _IN_ACQUIRE.set(True)
            try:
                admitted = await acquire(costs, *args)
            finally:
                _IN_ACQUIRE.reset(token)
            self.waits.append((now() - start, room, second))
            return admitted

        # Instance attributes: the pipeline holds this very object and looks them up per call.
        limiter.try_acquire = timed_try          # type: ignore[method-assign,assignment]
        limiter.acquire = timed_acquire          # type: ignore[method-assign,assignment]
        return self

    def had_room(self, costs: Mapping[str, int]) -> bool:
        """Every bucket ``costs`` uses can take its cost within its budget now (pacing, the
        end guard and queues aside)."""
        at = self.limiter.now()
        stats = {s.name: s for s in self.limiter.statistics()}
        for name, cost in costs.items():
            s = stats.get(name)
            if s is None or not cost:
                continue
            if s.paused_until > at or s.used + cost > s.budget - s.reserve:
                return False
        return True

    def with_room(self, minute_end_s: float | None = None) -> list[float]:
        """Waits (seconds) of requests that had room; only those asked at or after
        ``minute_end_s`` seconds into a minute if given."""
        return [seconds for seconds, room, second in self.waits
                if room and (minute_end_s is None or second >= minute_end_s)]

    def without_room(self) -> int:
        return sum(not room for _, room, _ in self.waits)
