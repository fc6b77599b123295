"""Server time offset: measured at start, every ``interval_s`` (`TimeSync.run`), and again on
-1021.

Each sample is ``server_ms − local midpoint of the round trip``; the offset in use is the median
of the last ``samples`` samples, so one slow round trip does not move it. python-binance never
resyncs on its own; the gateway copies ``offset_ms`` into the client's ``timestamp_offset``.
"""

from __future__ import annotations

import contextlib
import statistics
from collections import deque
from collections.abc import Awaitable, Callable

from app.clock import Clock

SyncListener = Callable[[int, float, int], None]


class TimeSync:
    def __init__(self, fetch_server_ms: Callable[[], Awaitable[int]], clock: Clock, *,
                 samples: int = 5, interval_s: float = 300.0,
                 on_sync: SyncListener | None = None) -> None:
        self._fetch = fetch_server_ms
        self._clock = clock
        self._samples: deque[int] = deque(maxlen=samples)
        self.interval_s = interval_s
        self._on_sync = on_sync
        self.offset_ms = 0

    @property
    def offset_s(self) -> float:
        return self.offset_ms / 1000

    def server_time(self) -> float:
        """Exchange time in seconds, by the local clock and the current offset."""
        return self._clock.time() + self.offset_s

    async def sync(self) -> int:
        """Take one sample and return the new offset (ms). Exchange errors propagate."""
        before = self._clock.time()
        server_ms = await self._fetch()
        after = self._clock.time()
        rtt = after - before
        self._samples.append(round(server_ms - (before + after) / 2 * 1000))
        self.offset_ms = round(statistics.median(self._samples))
        if self._on_sync is not None:
            self._on_sync(self.offset_ms, rtt, len(self._samples))
        return self.offset_ms

    async def run(self) -> None:
        """Take a sample every ``interval_s`` until cancelled (SPEC §6.2: at start, which the
        gateway does, and every 5 minutes). A failed sample leaves the offset in use; the call's
        failure is audited where it happened (the gateway's ``api_error``), and the next try is
        one interval later. Nobody waits for these samples."""
        while True:
            await self._clock.sleep(self.interval_s)
            with contextlib.suppress(Exception):
                await self.sync()

    def reset(self) -> None:
        """Forget old samples (after -1021 the clock may have jumped)."""
        self._samples.clear()
