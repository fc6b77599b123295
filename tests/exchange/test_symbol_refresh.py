"""The exchangeInfo cache over weeks: the background refresh on expiry, what a failed one
leaves, and what its listeners hear (SPEC §6.2), on the fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal as D

import pytest

from app.clock import FakeClock
from app.exchange.symbol_cache import InfoRefresh, SymbolCache
from tests.exchange.test_symbols import BTC, FakeExchangeInfo, btc, eth, exchange_info, with_filter

TTL = 86_400.0
RETRY = 60.0


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


class Heard:
    """What the cache's two listeners were told."""

    def __init__(self) -> None:
        self.refreshes: list[InfoRefresh] = []
        self.failures: list[tuple[str, str, float]] = []

    def refresh(self, refresh: InfoRefresh) -> None:
        self.refreshes.append(refresh)

    def failure(self, cause: str, error: Exception, retry_in_s: float) -> None:
        self.failures.append((cause, str(error), retry_in_s))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fetch() -> FakeExchangeInfo:
    return FakeExchangeInfo()


@pytest.fixture
def heard() -> Heard:
    return Heard()


@pytest.fixture
async def cache(fetch: FakeExchangeInfo, clock: FakeClock, heard: Heard
                ) -> AsyncIterator[SymbolCache]:
    """A cache loaded at start, with its background refresh running (as open_exchange runs
    it)."""
    cache = SymbolCache(fetch, clock, ttl_s=TTL, retry_s=RETRY, on_refresh=heard.refresh,
                        on_failure=heard.failure)
    await cache.load("start")
    refresher = asyncio.create_task(cache.run())
    await settle()
    yield cache
    refresher.cancel()
    await asyncio.gather(refresher, return_exceptions=True)
    await cache.close()


async def test_expired_rules_are_reloaded_in_the_background(
        cache: SymbolCache, clock: FakeClock, fetch: FakeExchangeInfo, heard: Heard) -> None:
    """At ttl_s (24 h) the rules are fetched again by the refresh task, with nobody asking;
    not a second earlier."""
    fetch.answer = exchange_info(with_filter(btc(), "PRICE_FILTER", tickSize="1.00"), eth())
    clock.advance(TTL - 1)
    await settle()
    assert fetch.calls == 1
    clock.advance(1)
    await settle()
    assert fetch.calls == 2
    assert cache.get("BTCUSDT").tick_size == D("1.00")
    assert [r.cause for r in heard.refreshes] == ["start", "expiry"]
    assert heard.refreshes[1].removed == ["SOLUSDT", "XRPUSDT"]
    assert cache.age_s == 0.0
    clock.advance(TTL)                                   # and again a day later
    await settle()
    assert fetch.calls == 3


async def test_a_lookup_never_waits_for_the_reload(cache: SymbolCache, clock: FakeClock,
                                                   fetch: FakeExchangeInfo) -> None:
    """While the expiry reload hangs, the expired rules are served at once (get() is
    synchronous and never fetches); the new ones replace them when it lands."""
    fetch.gate = asyncio.Event()
    fetch.answer = exchange_info(with_filter(btc(), "PRICE_FILTER", tickSize="1.00"))
    clock.advance(TTL + 5)
    await settle()
    assert cache.statistics()["in_flight"] is True
    assert cache.expired
    assert cache.get("BTCUSDT") == BTC                   # stale, but served
    fetch.gate.set()
    await settle()
    assert cache.get("BTCUSDT").tick_size == D("1.00")


async def test_a_failed_refresh_keeps_the_rules_and_retries_later(
        cache: SymbolCache, clock: FakeClock, fetch: FakeExchangeInfo, heard: Heard) -> None:
    """A failing reload keeps the rules in use, is reported with its retry delay, and is tried
    again every retry_s (60 s), not sooner, until one succeeds."""
    fetch.error = ConnectionError("refused")
    clock.advance(TTL)
    await settle()
    assert fetch.calls == 2
    assert heard.failures == [("expiry", "refused", RETRY)]
    assert cache.get("BTCUSDT") == BTC
    clock.advance(RETRY - 1)
    await settle()
    assert fetch.calls == 2
    clock.advance(1)
    await settle()
    assert fetch.calls == 3                              # failed again
    fetch.error = None
    clock.advance(RETRY)
    await settle()
    assert fetch.calls == 4
    assert (cache.expired, cache.statistics()["failures"]) == (False, 2)
    assert [r.cause for r in heard.refreshes] == ["start", "expiry"]
    clock.advance(TTL - 1)                               # fresh again: next one in 24 h
    await settle()
    assert fetch.calls == 4


async def test_an_unusable_answer_is_a_failed_refresh(cache: SymbolCache, clock: FakeClock,
                                                      fetch: FakeExchangeInfo,
                                                      heard: Heard) -> None:
    """An answer that does not parse keeps the rules in use, like a failed fetch."""
    fetch.answer = {"rateLimits": []}
    clock.advance(TTL)
    await settle()
    assert [(cause, retry) for cause, _, retry in heard.failures] == [("expiry", RETRY)]
    assert cache.get("BTCUSDT") == BTC


async def test_a_listener_refusing_the_refresh_keeps_the_old_rules(
        fetch: FakeExchangeInfo, clock: FakeClock) -> None:
    """on_refresh runs before the new rules are served: when it raises (the gateway cannot
    use the new rate limits), the load fails and the previous rules stay."""
    refused: list[str] = []

    def listener(refresh: InfoRefresh) -> None:
        if refresh.previous is not None:
            raise ValueError("rateLimits has no REQUEST_WEIGHT entry")

    cache = SymbolCache(fetch, clock, on_refresh=listener,
                        on_failure=lambda cause, error, _: refused.append(str(error)))
    await cache.load("start")
    fetch.answer = exchange_info(with_filter(btc(), "PRICE_FILTER", tickSize="1.00"))
    with pytest.raises(ValueError, match="REQUEST_WEIGHT"):
        await cache.load()
    assert cache.get("BTCUSDT") == BTC
    assert refused == ["rateLimits has no REQUEST_WEIGHT entry"]


async def test_a_precision_refresh_is_not_waited_for(fetch: FakeExchangeInfo,
                                                     clock: FakeClock) -> None:
    """refresh_on_precision_error() starts the reload and returns at once (the rejected
    order's caller does not wait for exchangeInfo); the load lands later."""
    cache = SymbolCache(fetch, clock)
    await cache.load("start")
    clock.advance(60)
    fetch.gate = asyncio.Event()
    assert cache.refresh_on_precision_error() is True
    assert cache.statistics()["in_flight"] is True
    fetch.gate.set()
    await cache.join()
    assert cache.statistics()["loads"] == 2


async def test_refresh_says_what_changed(fetch: FakeExchangeInfo, clock: FakeClock,
                                         heard: Heard) -> None:
    """The listener hears the symbols added and removed and whether rateLimits changed."""
    cache = SymbolCache(fetch, clock, on_refresh=heard.refresh)
    await cache.load("start")
    await cache.load()
    answer = exchange_info(btc(), eth())
    answer["rateLimits"][0]["limit"] = 6000
    fetch.answer = answer
    await cache.load()
    first, same, changed = heard.refreshes
    assert (first.added, first.removed, first.rate_limits_changed) == ([], [], False)
    assert (same.added, same.removed, same.rate_limits_changed) == ([], [], False)
    assert (changed.removed, changed.rate_limits_changed) == (["SOLUSDT", "XRPUSDT"], True)
    assert changed.rate_limits[0].limit == 6000
