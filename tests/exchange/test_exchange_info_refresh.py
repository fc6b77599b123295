"""The exchange side over weeks, against the simulator through the real client: exchangeInfo
refreshed in the background at LOW priority, the limiter rebuilt from new rateLimits with its
counts kept, and ``exchange.connect_timeout_s`` applied (SPEC §6.2, §7.1)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import structlog
from pydantic import SecretStr
from structlog.testing import capture_logs

from app.clock import SystemClock
from app.config import Credentials, load_settings
from app.errors import TransientError
from app.factory import exchange_setup, open_exchange
from app.resilience.limiter import LimiterSettings
from app.resilience.retry import RetrySettings
from app.sim import SimServer
from tests.exchange.conftest import ExchangeFactory, setup_for


def refreshes(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == "exchange_info_refreshed"]


async def test_new_rate_limits_rebuild_the_limiter_keeping_counts(
        make_exchange: ExchangeFactory, sim: SimServer) -> None:
    """The exchange raises REQUEST_WEIGHT from 2400 to 3000 a minute: the next exchangeInfo
    load rebuilds the weight bucket with the new limit, and the weight already spent in this
    minute still counts."""
    exchange = await make_exchange()
    for _ in range(4):
        await exchange.gateway.get_position("BTCUSDT")           # weight 5 each
    spent = exchange.limiter.used("weight:1m")
    assert spent >= 20
    # The simulator has no admin call for new limits; its exchangeInfo reads its config on
    # each request, so a new config is what Binance publishing new limits looks like.
    simulator = sim.sim
    limits = dataclasses.replace(simulator.config.limits, request_weight=3000)
    simulator.config = dataclasses.replace(simulator.config, limits=limits)
    with capture_logs() as logs:
        await exchange.symbols.load()
    weight = {s.name: s for s in exchange.limiter.statistics()}["weight:1m"]
    assert (weight.limit, weight.used) == (3000, spent + 1)      # + exchangeInfo's own 1
    assert ("weight:1m", 3000, 60.0) in {(b.name, b.limit, b.interval_s)
                                         for b in exchange.buckets}
    [event] = refreshes(logs)
    assert (event["cause"], event["rate_limits_changed"], event["limiter_rebuilt"]) == (
        "request", True, True)
    assert "REQUEST_WEIGHT 3000/1 MINUTE" in event["rate_limits"]   # type: ignore[operator]
    await exchange.gateway.mark_price("BTCUSDT")                  # routes rebuilt: still works
    assert exchange.limiter.used("weight:1m") == spent + 2


async def test_unchanged_rate_limits_leave_the_limiter_alone(make_exchange: ExchangeFactory
                                                             ) -> None:
    """A reload with the same rateLimits rebuilds nothing and says so."""
    exchange = await make_exchange()
    with capture_logs() as logs:
        await exchange.symbols.load()
    [event] = refreshes(logs)
    assert (event["rate_limits_changed"], event["limiter_rebuilt"], event["symbols"]) == (
        False, False, 5)


async def test_exchange_info_is_fetched_at_low_priority(make_exchange: ExchangeFactory) -> None:
    """With LOW's share of the window next to nothing, the exchangeInfo reload queues while
    NORMAL calls (a signal's mark price) still go: it is a LOW request."""
    exchange = await make_exchange(limiter=LimiterSettings(low_share=1e-4))
    reload = asyncio.create_task(exchange.symbols.load())
    for _ in range(10):
        await asyncio.sleep(0)
    assert exchange.limiter.statistics()[0].waiting == 1           # the reload, queued
    await exchange.gateway.mark_price("BTCUSDT")
    assert not reload.done()
    assert "BTCUSDT" in exchange.symbols                           # the old rules serve
    reload.cancel()
    await exchange.symbols.close()
    with contextlib.suppress(asyncio.CancelledError):
        await reload


class Events:
    """A structlog processor that keeps every event (then drops it) and wakes a waiter."""

    def __init__(self) -> None:
        self.seen: list[dict[str, object]] = []
        self.arrived = asyncio.Event()

    def __call__(self, logger: object, method: str, event: dict[str, object]) -> object:
        self.seen.append(event)
        self.arrived.set()
        raise structlog.DropEvent

    async def wait_until(self, done: Callable[[list[dict[str, object]]], bool]) -> None:
        while not done(self.seen):
            self.arrived.clear()
            await self.arrived.wait()


async def test_the_exchange_side_refreshes_expired_rules_by_itself(sim: SimServer) -> None:
    """open_exchange starts the background refresh: with a 0.3 s expiry, exchangeInfo is
    loaded again with nobody asking (cause expiry)."""
    events = Events()
    log = structlog.wrap_logger(None, processors=[events])
    async with open_exchange(setup_for(sim.url, exchange_info_ttl_s=0.3), SystemClock(),
                             log) as exchange:
        async with asyncio.timeout(10):
            await events.wait_until(lambda seen: len(refreshes(seen)) >= 2)
        assert exchange.symbols.statistics()["loads"] >= 2
    assert [e["cause"] for e in refreshes(events.seen)][:2] == ["start", "expiry"]


# ------------------------------------------------------------------ exchange.connect_timeout_s

@contextlib.asynccontextmanager
async def silent_tls_server() -> AsyncIterator[str]:
    """An https URL whose server accepts TCP connections and never answers: the TLS handshake
    never completes, so only a connect timeout ends a request to it."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_connect_timeout_ends_a_connection_that_never_completes() -> None:
    """exchange.connect_timeout_s reaches aiohttp: against a server that never completes the
    handshake, start-up fails with a connect timeout (classified TransientError: nothing was
    sent), not after the 30 s request timeout."""
    setup = setup_for("https://127.0.0.1:1", timeout_s=30.0, connect_timeout_s=0.2,
                      retry=RetrySettings(max_retries=0))

    async def start(url: str) -> None:
        async with asyncio.timeout(10):                          # far below the 30 s
            async with open_exchange(dataclasses.replace(setup, base_url=url), SystemClock(),
                                     structlog.get_logger()):
                pass

    async with silent_tls_server() as url:
        with pytest.raises(TransientError, match="no connection") as raised:
            await start(url)
    assert isinstance(raised.value.__cause__, aiohttp.ConnectionTimeoutError)


def test_connect_timeout_is_taken_from_the_configuration() -> None:
    """exchange.connect_timeout_s in the configuration is the exchange side's connect
    timeout."""
    settings = load_settings(overrides={"exchange.connect_timeout_s": 1.5}, environ={})
    credentials = Credentials(SecretStr("k"), SecretStr("s"), "test")
    setup = exchange_setup(settings, credentials, "http://127.0.0.1:1")
    assert (setup.connect_timeout_s, setup.timeout_s) == (1.5, 10.0)
