"""The exchangeInfo cache: every symbol's rules and the rate limits, with expiry (SPEC §6.2).

The rules are served from memory and never wait for a fetch (`get` is synchronous): when they
are ``ttl_s`` (24 h) old, `run` reloads them in the background, and a precision/filter rejection
(-1111, -4014, -4023) starts a rate-limited background reload; until a reload succeeds the rules
in place are served, expired or not. A failed reload keeps them and is tried again ``retry_s``
later. Concurrent callers share one in-flight fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.clock import Clock
from app.exchange.symbols import (
    ExchangeInfo,
    RateLimit,
    SymbolRules,
    UnknownSymbol,
    parse_exchange_info,
)

__all__ = ["ExchangeInfoFetch", "FailureListener", "InfoRefresh", "RefreshListener",
           "SymbolCache"]

ExchangeInfoFetch = Callable[[], Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True, slots=True)
class InfoRefresh:
    """One successful load, as its listener sees it before the new rules are served.

    ``cause``: ``start``, ``expiry`` (the rules were ``ttl_s`` old), ``precision_error`` or
    ``request`` (someone called `SymbolCache.load`). ``previous`` is None at the first load."""

    cause: str
    info: ExchangeInfo
    previous: ExchangeInfo | None

    @property
    def symbols(self) -> int:
        return len(self.info.rules)

    @property
    def rate_limits(self) -> list[RateLimit]:
        return list(self.info.rate_limits)

    @property
    def added(self) -> list[str]:
        """Symbols usable now that were not before (empty at the first load)."""
        if self.previous is None:
            return []
        return sorted(set(self.info.rules) - set(self.previous.rules))

    @property
    def removed(self) -> list[str]:
        """Symbols usable before that are gone (delisted, or now malformed)."""
        if self.previous is None:
            return []
        return sorted(set(self.previous.rules) - set(self.info.rules))

    @property
    def rate_limits_changed(self) -> bool:
        """True when the previous load had other ``rateLimits`` (False at the first load)."""
        return self.previous is not None and (
            set(self.previous.rate_limits) != set(self.info.rate_limits))


RefreshListener = Callable[[InfoRefresh], None]
#: ``(cause, error, retry_in_s)``: a load failed, the rules in place stay; the background
#: refresh (`SymbolCache.run`) tries again in ``retry_in_s`` seconds.
FailureListener = Callable[[str, Exception, float], None]


class SymbolCache:
    """The rules of every symbol and the rate limits, from exchangeInfo, with expiry.

    `fetch` returns the decoded exchangeInfo answer (the factory passes the gateway's call, at
    LOW priority). All durations are seconds on ``clock.monotonic()``. `get` never checks expiry
    and never fetches: rules stay usable while they are being reloaded or a reload fails.

    Listeners: `on_refresh` hears each successful load *before* its rules are served; if it
    raises (the gateway cannot use the new ``rateLimits``), the load fails like a failed fetch
    and the previous rules stay. `on_failure` hears each failed load, whoever started it.
    """

    def __init__(self, fetch: ExchangeInfoFetch, clock: Clock, *, ttl_s: float = 86_400.0,
                 min_refresh_interval_s: float = 60.0, retry_s: float = 60.0,
                 on_refresh: RefreshListener | None = None,
                 on_failure: FailureListener | None = None) -> None:
        if ttl_s <= 0 or min_refresh_interval_s < 0 or retry_s <= 0:
            raise ValueError("ttl_s and retry_s must be > 0 and min_refresh_interval_s >= 0")
        self._fetch = fetch
        self._clock = clock
        self.ttl_s = ttl_s
        self.min_refresh_interval_s = min_refresh_interval_s
        self.retry_s = retry_s
        self._on_refresh = on_refresh
        self._on_failure = on_failure
        self._info: ExchangeInfo | None = None
        self._loaded_at: float | None = None
        self._attempted_at: float | None = None
        self._last_failed = False
        self._inflight: asyncio.Task[None] | None = None
        self._loads = 0
        self._failures = 0

    async def load(self, cause: str = "request") -> None:
        """Fetch exchangeInfo now and swap in the new rules; join a fetch already in flight.

        Raises whatever the fetch raises, or ValueError for an unusable answer; the previous
        rules stay in place on failure. A cancelled caller does not cancel the shared fetch.
        """
        await asyncio.shield(self._start(cause))

    async def ensure_fresh(self) -> bool:
        """Load when nothing is loaded or the rules are older than ``ttl_s``; True if it did.
        For callers that can afford to wait; the decision path calls `get` only."""
        if not self._in_flight() and not self.expired:
            return False
        await self.load("expiry")
        return True

    def refresh_on_precision_error(self) -> bool:
        """Start a reload in the background after a precision/filter rejection (-1111, -4014,
        -4023), rate-limited; the caller does not wait for it.

        At most one fetch starts per ``min_refresh_interval_s`` (counted from the start of the
        last fetch, whatever its cause), so a misbehaving order cannot hammer exchangeInfo. A
        fetch in flight is joined. True when a fetch was started or joined. Its failure goes to
        `on_failure`.
        """
        if not self._in_flight():
            last = self._attempted_at
            if last is not None and self._clock.monotonic() - last < self.min_refresh_interval_s:
                return False
        self._start("precision_error")
        return True

    async def run(self) -> None:
        """Keep the rules fresh until cancelled: reload them once they are ``ttl_s`` old; after
        a failed reload (audited through `on_failure`), again every ``retry_s`` until one
        succeeds. Nobody waits for these reloads: `get` serves the rules in place meanwhile."""
        while True:
            await self._clock.sleep(self.next_refresh_in())
            if self.expired:
                with contextlib.suppress(Exception):   # on_failure has reported it
                    await self.load("expiry")

    def next_refresh_in(self) -> float:
        """Seconds until `run` reloads: when the rules turn ``ttl_s`` old, or ``retry_s`` after
        the start of a failed attempt, whichever is later (0 when due, or nothing is loaded)."""
        now = self._clock.monotonic()
        due = now if self._loaded_at is None else self._loaded_at + self.ttl_s
        if self._last_failed and self._attempted_at is not None:
            due = max(due, self._attempted_at + self.retry_s)
        return max(0.0, due - now)

    async def close(self) -> None:
        """Cancel a fetch in flight and wait for it to end (daemon shutdown)."""
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def join(self) -> None:
        """Wait for the fetch in flight, if any, to end; its outcome is not raised here."""
        task = self._inflight
        if task is not None and not task.done():
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

    def _start(self, cause: str) -> asyncio.Task[None]:
        """The fetch in flight, or a new one started for ``cause``."""
        task = self._inflight
        if task is None or task.done():
            self._attempted_at = self._clock.monotonic()
            task = asyncio.get_running_loop().create_task(self._load_once(cause),
                                                          name="exchange-info-load")
            task.add_done_callback(self._load_done)
            self._inflight = task
        return task

    async def _load_once(self, cause: str) -> None:
        try:
            info = parse_exchange_info(await self._fetch())
            if self._on_refresh is not None:
                self._on_refresh(InfoRefresh(cause, info, self._info))
        except Exception as error:
            self._failures += 1
            self._last_failed = True
            if self._on_failure is not None:
                self._on_failure(cause, error, self.next_refresh_in())
            raise
        self._info = info
        self._loaded_at = self._clock.monotonic()
        self._last_failed = False
        self._loads += 1

    def _load_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None
        # Every joined caller sees the outcome through shield(); mark it retrieved here so a
        # fetch whose callers were all cancelled (or a background one nobody awaits) does not
        # log "exception was never retrieved".
        if not task.cancelled():
            task.exception()
