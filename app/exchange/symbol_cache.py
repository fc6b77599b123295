"""The exchangeInfo cache: every symbol's rules and the rate limits, with expiry (SPEC §6.2).

Reloads after ``ttl_s`` (24 h) or, rate-limited, after a precision/filter rejection (-1111,
-4014, -4023); concurrent callers share one in-flight fetch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from app.clock import Clock
from app.exchange.symbols import (
    ExchangeInfo,
    RateLimit,
    SymbolRules,
    UnknownSymbol,
    parse_exchange_info,
)

__all__ = ["ExchangeInfoFetch", "RefreshListener", "SymbolCache"]

ExchangeInfoFetch = Callable[[], Awaitable[Mapping[str, Any]]]
RefreshListener = Callable[[int, list[RateLimit]], None]


class SymbolCache:
    """The rules of every symbol and the rate limits, from exchangeInfo, with expiry.

    `fetch` returns the decoded exchangeInfo answer (the gateway passes its call). All durations
    are seconds on ``clock.monotonic()``. `get` never checks expiry: rules stay usable while a
    reload fails; callers run `ensure_fresh` where they can afford to wait. `on_refresh` is
    called with the symbol count and the rate limits after each successful load, after the new
    rules are in place; if it raises, the load call that triggered it raises too.
    """

    def __init__(self, fetch: ExchangeInfoFetch, clock: Clock, *, ttl_s: float = 86_400.0,
                 min_refresh_interval_s: float = 60.0,
                 on_refresh: RefreshListener | None = None) -> None:
        if ttl_s <= 0 or min_refresh_interval_s < 0:
            raise ValueError("ttl_s must be > 0 and min_refresh_interval_s >= 0")
        self._fetch = fetch
        self._clock = clock
        self.ttl_s = ttl_s
        self.min_refresh_interval_s = min_refresh_interval_s
        self._on_refresh = on_refresh
        self._info: ExchangeInfo | None = None
        self._loaded_at: float | None = None
        self._attempted_at: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._loads = 0
        self._failures = 0

    async def load(self) -> None:
        """Fetch exchangeInfo now and swap in the new rules; join a fetch already in flight.

        Raises whatever the fetch raises, or ValueError for an unusable answer; the previous
        rules stay in place on failure. A cancelled caller does not cancel the shared fetch.
        """
        task = self._inflight
        if task is None or task.done():
            self._attempted_at = self._clock.monotonic()
            task = asyncio.get_running_loop().create_task(self._load_once(),
                                                          name="exchange-info-load")
            task.add_done_callback(self._load_done)
            self._inflight = task
        await asyncio.shield(task)

    async def ensure_fresh(self) -> bool:
        """Load when nothing is loaded or the rules are older than ``ttl_s``; True if it did."""
        if not self._in_flight() and not self.expired:
            return False
        await self.load()
        return True

    async def refresh_on_precision_error(self) -> bool:
        """Reload after a precision/filter rejection (-1111, -4014, -4023), rate-limited.

        At most one fetch starts per ``min_refresh_interval_s`` (counted from the start of the
        last fetch, whatever its cause), so a misbehaving order cannot hammer exchangeInfo. A
        fetch in flight is joined. True when a fetch was started or joined.
        """
        if not self._in_flight():
            last = self._attempted_at
            if last is not None and self._clock.monotonic() - last < self.min_refresh_interval_s:
                return False
        await self.load()
        return True

    async def close(self) -> None:
        """Cancel a fetch in flight and wait for it to end (daemon shutdown)."""
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    def get(self, symbol: str) -> SymbolRules:
        """The rules of `symbol`; UnknownSymbol if not loaded, not listed or malformed."""
        info = self._info
        if info is None:
            raise UnknownSymbol(symbol, 0, "exchangeInfo has not been loaded yet")
        rules = info.rules.get(symbol)
        if rules is None:
            raise UnknownSymbol(symbol, len(info.rules), info.invalid.get(symbol))
        return rules

    @property
    def rate_limits(self) -> list[RateLimit]:
        """The ``rateLimits`` of the last load ([] before the first)."""
        return [] if self._info is None else list(self._info.rate_limits)

    @property
    def symbols(self) -> tuple[str, ...]:
        return () if self._info is None else tuple(sorted(self._info.rules))

    @property
    def invalid(self) -> Mapping[str, str]:
        """Symbols left out of the last load, with the reason."""
        return {} if self._info is None else dict(self._info.invalid)

    @property
    def expired(self) -> bool:
        """True before the first load and once the rules are ``ttl_s`` old."""
        age = self.age_s
        return age is None or age >= self.ttl_s

    @property
    def age_s(self) -> float | None:
        """Seconds since the last successful load, None before it."""
        if self._loaded_at is None:
            return None
        return self._clock.monotonic() - self._loaded_at

    def statistics(self) -> dict[str, object]:
        return {
            "symbols": 0 if self._info is None else len(self._info.rules),
            "invalid": 0 if self._info is None else len(self._info.invalid),
            "rate_limits": len(self.rate_limits),
            "age_s": self.age_s,
            "loads": self._loads,
            "failures": self._failures,
            "in_flight": self._in_flight(),
        }

    def __contains__(self, symbol: object) -> bool:
        return self._info is not None and symbol in self._info.rules

    def __len__(self) -> int:
        return 0 if self._info is None else len(self._info.rules)

    def __repr__(self) -> str:
        stats = ", ".join(f"{key}={value!r}" for key, value in self.statistics().items())
        return f"SymbolCache({stats}, ttl_s={self.ttl_s})"

    def _in_flight(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    async def _load_once(self) -> None:
        try:
            info = parse_exchange_info(await self._fetch())
        except Exception:
            self._failures += 1
            raise
        self._info = info
        self._loaded_at = self._clock.monotonic()
        self._loads += 1
        if self._on_refresh is not None:
            self._on_refresh(len(info.rules), list(info.rate_limits))

    def _load_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None
        # Every joined caller sees the outcome through shield(); mark it retrieved here so a
        # fetch whose callers were all cancelled does not log "exception was never retrieved".
        if not task.cancelled():
            task.exception()
