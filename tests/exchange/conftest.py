"""Fixtures: a started exchange side (gateway, limiter, breakers…, built by the daemon's
factory) against the simulator of tests/conftest.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
import structlog

from app.clock import SystemClock
from app.exchange.gateway import Gateway
from app.factory import ExchangeParts, ExchangeSetup, open_exchange
from app.resilience.breaker import BreakerSettings
from app.resilience.retry import RetrySettings
from app.sim import SimServer

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
    """Start an exchange side against ``sim``; keyword arguments override `ExchangeSetup`
    (``breaker`` included: the default recovers after 0.5 s)."""
    async with contextlib.AsyncExitStack() as stack:
        async def factory(**overrides: Any) -> ExchangeParts:
            fields = {"breaker": BreakerSettings(recovery_timeout=0.5), **overrides}
            return await stack.enter_async_context(open_exchange(
                setup_for(sim.url, **fields), SystemClock(), structlog.get_logger()))

        yield factory


@pytest.fixture
async def exchange(make_exchange: ExchangeFactory) -> ExchangeParts:
    return await make_exchange()


@pytest.fixture
def gateway(exchange: ExchangeParts) -> Gateway:
    return exchange.gateway
