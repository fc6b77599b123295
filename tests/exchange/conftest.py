"""Fixtures: the simulator on a loopback port (real clock) and a started exchange side (gateway,
limiter, breakers…, built by the daemon's factory) against it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest
import structlog

from app.clock import SystemClock
from app.exchange.gateway import Gateway
from app.factory import ExchangeParts, ExchangeSetup, open_exchange
from app.resilience.breaker import BreakerSettings
from app.resilience.retry import RetrySettings
from app.sim import SimConfig, SimServer


def sim_config(**limits: int) -> SimConfig:
    base = SimConfig()
    return replace(base, market=replace(base.market, volatility_per_minute=0.0,
                                        tick_interval_s=0.0),
                   limits=replace(base.limits, **limits))


@pytest.fixture
def config() -> SimConfig:
    return sim_config()


@pytest.fixture
async def sim(config: SimConfig) -> AsyncIterator[SimServer]:
    async with SimServer(config) as server:
        yield server


class Admin:
    """The simulator's /_sim/ admin API."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def get(self, path: str) -> Any:
        async with self.session.get(f"{self.base}/_sim/{path}") as resp:
            return orjson.loads(await resp.read())

    async def post(self, path: str, body: object) -> Any:
        async with self.session.post(f"{self.base}/_sim/{path}", data=orjson.dumps(body)) as resp:
            assert resp.status == 200, await resp.text()
            return orjson.loads(await resp.read())

    async def orders(self, kind: str | None = None) -> list[dict[str, Any]]:
        """``/_sim/orders``, optionally only one ``kind`` (order, algo, triggered)."""
        rows: list[dict[str, Any]] = await self.get("orders")
        return [r for r in rows if kind is None or r["kind"] == kind]

    async def position(self, symbol: str) -> str:
        """The position amount of ``symbol`` as the simulator shows it ("0" when flat)."""
        state = await self.get("state")
        return next((p["positionAmt"] for p in state["positions"] if p["symbol"] == symbol),
                    "0")


@pytest.fixture
async def admin(sim: SimServer) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as session:
        yield Admin(session, sim.url)


ExchangeFactory = Callable[..., Awaitable[ExchangeParts]]


def setup_for(url: str, **overrides: Any) -> ExchangeSetup:
    """The tests' exchange setup against a simulator at ``url``: short timeouts, fast retries;
    keyword arguments override `ExchangeSetup` fields."""
    setup = ExchangeSetup(
        base_url=url, api_key="sim-key", api_secret="sim-secret", timeout_s=2.0,
        retry=RetrySettings(max_retries=2, initial_delay=0.01, max_delay=0.05, jitter=0.0))
    return replace(setup, **overrides)


@pytest.fixture
async def make_exchange(sim: SimServer) -> AsyncIterator[ExchangeFactory]:
    """Start an exchange side against ``sim``; keyword arguments override `ExchangeSetup`."""
    async with contextlib.AsyncExitStack() as stack:
        async def factory(**overrides: Any) -> ExchangeParts:
            return await stack.enter_async_context(open_exchange(
                setup_for(sim.url, breaker=BreakerSettings(recovery_timeout=0.5), **overrides),
                SystemClock(), structlog.get_logger()))

        yield factory


@pytest.fixture
async def exchange(make_exchange: ExchangeFactory) -> ExchangeParts:
    return await make_exchange()


@pytest.fixture
def gateway(exchange: ExchangeParts) -> Gateway:
    return exchange.gateway
