"""The risk gate (SPEC §5.10) as the daemon assembles it, against the simulator: through the
real gateway, the real sender (which counts every order it sends, protective ones included)
and the real user-data stream (whose fills feed the daily loss)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog

from app.clock import SystemClock
from app.config_schema import RiskConfig, StreamConfig
from app.domain import SignalState, TradingState
from app.execution.book import Book
from app.execution.risk import RiskGate
from app.execution.settings import ExecutorSettings
from app.factory import ExchangeParts, ExecutionParts, build_execution, build_live, build_risk
from app.journal import Journal, SignalRecord
from app.sim import SimServer
from tests.execution.conftest import make_signal
from tests.execution.test_live import until
from tests.simulator import Admin

LONG = {"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
        "take_profit": "70000.0", "stop_loss": "60000.0"}


@dataclass
class Gated:
    journal: Journal
    execution: ExecutionParts
    risk: RiskGate
    admin: Admin

    async def run(self, body: dict[str, Any]) -> SignalRecord:
        record, _ = await self.journal.accept(make_signal(body), now=time.time())
        return await self.execution.executor.execute(record)


@pytest.fixture
def limits() -> RiskConfig:
    return RiskConfig()


@pytest.fixture
async def gated(sim: SimServer, exchange: ExchangeParts, tmp_path: Path, admin: Admin,
                limits: RiskConfig) -> AsyncIterator[Gated]:
    journal = Journal(tmp_path / "journal.sqlite3")
    await journal.open()
    settings = ExecutorSettings(resolve_window_s=1.0, busy_retry_s=0.05)
    clock, log = SystemClock(), structlog.get_logger()
    book = Book(clock)
    risk = build_risk(limits, journal, book, clock, log)
    await risk.restore()
    execution = build_execution(exchange.gateway, exchange.symbols.get, journal, clock, log,
                                settings, book=book, risk=risk)
    parts = build_live(exchange.gateway, book, execution, journal, clock, log,
                       StreamConfig(fallback_poll_s=60.0, reconcile_interval_s=60.0),
                       "ws" + sim.url.removeprefix("http"), settings, risk=risk)
    tasks = [asyncio.create_task(parts.guard.run())]
    tasks += [asyncio.create_task(s.run()) for s in (parts.user, parts.market) if s]
    try:
        user = parts.user
        assert user is not None
        await until(lambda: asyncio.sleep(0, user.connected), 5, "user stream up")
        await parts.reports.load()
        yield Gated(journal, execution, risk, admin)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await parts.guard.aclose()
        await parts.reports.aclose()
        await risk.aclose()
        await journal.close()


@pytest.mark.parametrize("limits", [RiskConfig(max_order_notional=Decimal("1000"))])
async def test_a_refused_entry_sends_nothing_and_names_rule_and_numbers(gated: Gated) -> None:
    done = await gated.run(LONG)                                       # 650.00: allowed
    assert done.state is SignalState.DONE, done.reason
    sent = len(await gated.admin.orders())
    refused = await gated.run(LONG | {"quantity": "0.016"})            # 1040.00
    assert refused.state is SignalState.REJECTED
    assert refused.reason == "risk: max_order_notional: 1040.00 > 1000"
    assert len(await gated.admin.orders()) == sent


@pytest.mark.parametrize("limits", [RiskConfig(max_orders_per_minute=6)])
async def test_max_orders_per_minute_counts_the_protective_orders(gated: Gated) -> None:
    """An entry with tp/sl is three orders; an add replaces both: three more. The third
    entry would be the 7th order of the minute. Counting entries alone, it would be the 3rd."""
    for _ in range(2):
        record = await gated.run(LONG)
        assert record.state is SignalState.DONE, record.reason
    assert gated.risk.orders_last_minute() == 6
    refused = await gated.run(LONG)
    assert refused.state is SignalState.REJECTED
    assert refused.reason == "risk: max_orders_per_minute: 7 > 6"


@pytest.mark.parametrize("limits", [RiskConfig(max_daily_loss=Decimal("40"))])
async def test_the_daily_loss_switches_to_reducing_on_the_fill_that_crosses_it(
        gated: Gated) -> None:
    """Long 0.010 at 65000, the mark falls to 60000: closing half loses 25 + fees (under 40),
    the other half takes the day past 40 — that fill switches trading to REDUCING."""
    assert (await gated.run(LONG | {"stop_loss": "50000.0"})).state is SignalState.DONE
    await gated.admin.post("price", {"symbol": "BTCUSDT", "price": "60000"})
    half = {"symbol": "BTCUSDT", "type": "CLOSE_LONG", "quantity": "0.005"}
    assert (await gated.run(half)).state is SignalState.DONE
    await until(lambda: asyncio.sleep(0, gated.risk.daily_loss > 25), 3, "first fill counted")
    assert gated.risk.state is TradingState.ACTIVE
    assert (await gated.run(half)).state is SignalState.DONE
    await until(lambda: asyncio.sleep(0, gated.risk.state is TradingState.REDUCING), 3,
                "REDUCING after the crossing fill")
    assert gated.risk.change.reason.startswith("max_daily_loss: 50.")
    assert (await gated.journal.load_trading_state()) == gated.risk.change
    refused = await gated.run(LONG)
    assert refused.state is SignalState.REJECTED
    assert refused.reason is not None
    assert refused.reason.startswith("risk: trading state: REDUCING (max_daily_loss: ")
