"""At most one report per period of something that can happen thousands of times a second.

`Throttle.hit()` counts one occurrence and says whether to report now, and how many
occurrences the report covers: the first occurrence is reported at once, later ones only once
``period_s`` has passed since the last report, covering every occurrence suppressed meanwhile.
Time comes from the injected `Clock`.
"""

from __future__ import annotations

from app.clock import Clock

__all__ = ["Throttle"]


class Throttle:
    """Rate-limits reports to one per ``period_s`` (see the module docstring)."""

    def __init__(self, clock: Clock, period_s: float) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self._clock = clock
        self._period = period_s
        self._last: float | None = None
        self._pending = 0
        self.total = 0

    def hit(self) -> int:
        """Count one occurrence. Returns how many occurrences to report now (this one and the
        ones suppressed since the last report), or 0 to stay quiet."""
        self.total += 1
        self._pending += 1
        now = self._clock.monotonic()
        if self._last is not None and now - self._last < self._period:
            return 0
        self._last = now
        count, self._pending = self._pending, 0
        return count
