"""A stop-loss the exchange refuses leaves the position unprotected (SPEC §5.4)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from structlog.testing import capture_logs

from app.domain import OrderType, Side, SignalState
from app.exchange.gateway import Gateway
from app.exchange.models import AlgoState
from app.execution.executor import Executor
from app.execution.settings import ExecutorSettings, OnUnprotected
from app.factory import ExchangeParts
from app.journal import Journal
from app.resilience.limiter import Priority
from tests.execution.conftest import execution_for, make_signal
from tests.simulator import Admin


class MarketMovesBeforeTheStop:
    """The real gateway, except that the market drops through the stop just before the stop
    is sent: the simulator then answers -2021 "Order would immediately trigger"."""

    def __init__(self, gateway: Gateway, admin: Admin, price: str) -> None:
        self._gateway = gateway
        self._admin = admin
        self._price = price

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)

    async def place_algo_order(self, symbol: str, side: Side, order_type: OrderType,
                               trigger_price: Decimal, client_algo_id: str, *,
                               quantity: Decimal | None = None,
                               priority: Priority | None = None,
                               deadline: float | None = None) -> AlgoState:
        await self._admin.post("price", {"symbol": symbol, "price": self._price})
        return await self._gateway.place_algo_order(symbol, side, order_type, trigger_price,
                                                    client_algo_id, quantity=quantity,
                                                    priority=priority, deadline=deadline)


def executor_for(port: Any, exchange: ExchangeParts, journal: Journal,
                 settings: ExecutorSettings) -> Executor:
    return execution_for(port, exchange, journal, settings).executor


async def test_stop_that_would_trigger_flattens_the_position(
        exchange: ExchangeParts, journal: Journal, admin: Admin,
        exec_settings: ExecutorSettings) -> None:
    """-2021 on the stop-loss: position_unprotected, then a reduce-only close (flatten)."""
    executor = executor_for(MarketMovesBeforeTheStop(exchange.gateway, admin, "59000.0"), exchange,
                            journal, exec_settings)
    signal = make_signal({"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
                          "stop_loss": "60000.0", "take_profit": "70000.0"})
    record, _ = await journal.accept(signal, now=signal.received_at)
    with capture_logs() as logs:
        final = await executor.execute(record)
    assert final.state is SignalState.FAILED
    assert "-2021" in final.reason or "immediately trigger" in final.reason
    assert "flattened" in final.reason
    assert await admin.position("BTCUSDT") == "0"
    events = [e["event"] for e in logs]
    assert "position_unprotected" in events
    assert "position_flattened" in events
    unprotected = next(e for e in logs if e["event"] == "position_unprotected")
    assert unprotected["log_level"] == "critical"
    closes = [r for r in await admin.orders("order") if r["reduce_only"]]
    assert len(closes) == 1


async def test_alert_mode_leaves_the_position_and_reports(
        exchange: ExchangeParts, journal: Journal, admin: Admin,
        exec_settings: ExecutorSettings) -> None:
    """on_unprotected = alert: the position stays open, the signal FAILED with the reason."""
    settings = ExecutorSettings(on_unprotected=OnUnprotected.ALERT,
                                 resolve_window_s=exec_settings.resolve_window_s)
    executor = executor_for(MarketMovesBeforeTheStop(exchange.gateway, admin, "59000.0"), exchange,
                            journal, settings)
    signal = make_signal({"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
                          "stop_loss": "60000.0"})
    record, _ = await journal.accept(signal, now=signal.received_at)
    final = await executor.execute(record)
    assert final.state is SignalState.FAILED
    assert "left open" in final.reason
    assert await admin.position("BTCUSDT") == "0.010"


async def test_a_flattening_close_that_fills_in_part_is_followed_by_one_for_the_rest(
        exchange: ExchangeParts, journal: Journal, admin: Admin,
        exec_settings: ExecutorSettings) -> None:
    """Every market order fills 90 % (at least one step): the entry 0.009, the first close
    0.008 of it, the next the last 0.001 — each close under its own client id, and flat."""
    await admin.post("faults", {"seed": 1, "rules": [
        {"endpoint": "POST /fapi/v1/order", "fault": "partial_fill", "probability": 1,
         "fill_ratio": 0.9}]})
    executor = executor_for(MarketMovesBeforeTheStop(exchange.gateway, admin, "59000.0"),
                            exchange, journal, exec_settings)
    signal = make_signal({"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
                          "stop_loss": "60000.0"})
    record, _ = await journal.accept(signal, now=signal.received_at)
    final = await executor.execute(record)
    assert final.state is SignalState.FAILED
    assert "flattened" in final.reason
    assert await admin.position("BTCUSDT") == "0"
    closes = [r for r in await admin.orders("order") if r["reduce_only"]]
    assert [r["executed_qty"] for r in closes] == ["0.008", "0.001"]
    assert len({r["client_id"] for r in closes}) == 2
