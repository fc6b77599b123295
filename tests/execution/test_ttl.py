"""A signal past its TTL is never executed, whatever the queue or the breaker did to it;
within its TTL it waits out an exchange that certainly refused the work (SPEC §4.1, §5.3.4)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from app.clock import SystemClock
from app.domain import SignalState
from app.execution.executor import Executor
from app.execution.settings import ExecutorSettings
from app.factory import ExchangeParts, open_exchange
from app.journal import Journal, SignalRecord
from app.resilience.breaker import BreakerSettings, BreakerState
from app.resilience.retry import RetrySettings
from app.sim import SimServer
from tests.execution.conftest import execution_for, make_signal, setup_for
from tests.simulator import Admin

ENTRY = {"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
         "stop_loss": "60000.0", "take_profit": "70000.0"}


def outage(duration_s: float) -> dict[str, Any]:
    return {"seed": 1, "rules": [], "outages": [{"start_s": 0, "duration_s": duration_s}]}


async def accept(journal: Journal, body: dict[str, Any], *, ttl: float) -> SignalRecord:
    record, _ = await journal.accept(make_signal(body, ttl=ttl), now=time.time())
    return record


async def test_signal_expired_in_the_queue_is_never_sent(
        executor: Executor, journal: Journal, admin: Admin) -> None:
    """Dequeued after its TTL: EXPIRED with the reason, no request to the exchange."""
    signal = dataclasses.replace(make_signal(ENTRY), expires_at=time.time() - 1)
    record, _ = await journal.accept(signal, now=time.time())
    with capture_logs() as logs:
        final = await executor.execute(record)
    assert final.state is SignalState.EXPIRED
    assert final.reason == "expired before execution"
    assert [e["event"] for e in logs] == ["signal_expired"]
    assert await admin.orders() == []


async def test_outage_within_the_ttl_is_waited_out(
        executor: Executor, journal: Journal, admin: Admin) -> None:
    """503 "Service Unavailable." certainly did not execute: the signal waits and runs once."""
    await admin.post("faults", outage(1.0))
    record = await accept(journal, ENTRY, ttl=20)
    with capture_logs() as logs:
        final = await executor.execute(record)
    assert final.state is SignalState.DONE, final.reason
    assert "signal_deferred" in [e["event"] for e in logs]
    rows = await admin.orders()
    assert [r["kind"] for r in rows] == ["order", "algo", "algo"]


async def test_outage_past_the_ttl_expires_without_sending(
        executor: Executor, journal: Journal, admin: Admin) -> None:
    """The exchange refuses work until after the TTL: EXPIRED, and nothing is ever sent."""
    await admin.post("faults", outage(30.0))
    record = await accept(journal, ENTRY, ttl=1.0)
    final = await executor.execute(record)
    assert final.state is SignalState.EXPIRED, final.reason
    assert time.time() >= record.signal.expires_at
    await admin.post("faults", {"seed": 1, "rules": []})
    assert await admin.orders() == []


@pytest.fixture
async def fragile(sim: SimServer) -> AsyncIterator[ExchangeParts]:
    """An exchange side whose breakers open after two failures and stay open for a minute."""
    async with open_exchange(setup_for(
            sim.url, retry=RetrySettings(max_retries=0, initial_delay=0.01, max_delay=0.05,
                                         jitter=0.0),
            breaker=BreakerSettings(failure_threshold=2, recovery_timeout=60.0)),
            SystemClock(), structlog.get_logger()) as parts:
        yield parts


async def test_open_breaker_past_the_ttl_expires_without_sending(
        fragile: ExchangeParts, journal: Journal, admin: Admin) -> None:
    """A short outage opens the breakers for a minute; the exchange is back but the signal's
    TTL ends while the breaker still refuses: EXPIRED, never sent afterwards."""
    executor = execution_for(fragile.gateway, fragile, journal,
                             ExecutorSettings(busy_retry_s=0.05)).executor
    await admin.post("faults", outage(0.5))
    first = await executor.execute(await accept(journal, ENTRY, ttl=1.5))
    assert first.state is SignalState.EXPIRED, first.reason
    assert any(b.state is BreakerState.OPEN for b in fragile.breakers.values())
    second = await executor.execute(await accept(journal, ENTRY, ttl=1.0))
    assert second.state is SignalState.EXPIRED, second.reason
    assert await admin.orders() == []
