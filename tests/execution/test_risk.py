"""The risk gate (SPEC §5.10) as a pure unit on the fake clock: each ``[risk]`` limit lets the
last signal within it through and rejects the first one past it, naming the rule and the
numbers; the trading state gates entries and closes, survives in its store and is switched by
the kill switches."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from app.clock import FakeClock
from app.domain import Signal, SignalError, SignalType
from app.execution.risk import (
    RiskGate,
    RiskLimits,
    StateChange,
    TradingState,
)
from app.observability.logging import AuditLogger

D = Decimal
MARK = D("50000")


class MemoryStore:
    def __init__(self) -> None:
        self.saved: StateChange | None = None

    async def load_trading_state(self) -> StateChange | None:
        return self.saved

    async def save_trading_state(self, change: StateChange) -> None:
        self.saved = change


def signal(kind: SignalType = SignalType.LONG_ENTRY, symbol: str = "BTCUSDT",
           qty: str = "0.1", leverage: int | None = None) -> Signal:
    return Signal(id=f"s-{kind.value}-{symbol}-{qty}", symbol=symbol, type=kind,
                  quantity=D(qty), take_profit=None, stop_loss=None, leverage=leverage,
                  margin_type=None, expires_at=2_000.0, source=None, received_at=1_000.0)


def gate(positions: Mapping[str, Decimal] | None = None, store: MemoryStore | None = None,
         clock: FakeClock | None = None, **limits: Any) -> RiskGate:
    held = dict(positions or {})
    log: AuditLogger = structlog.get_logger()
    return RiskGate(RiskLimits(**limits), store or MemoryStore(), clock or FakeClock(), log,
                    positions=lambda: held)


def refused(risk: RiskGate, sig: Signal, qty: str) -> str:
    with pytest.raises(SignalError) as caught:
        risk.check_entry(sig, D(qty), MARK)
    assert caught.value.field == "risk"
    return caught.value.detail


def test_no_limits_let_everything_through() -> None:
    gate().check_entry(signal(qty="1000"), D("1000"), MARK)


def test_max_order_notional_names_rule_and_numbers() -> None:
    risk = gate(max_order_notional=D("10000"))
    risk.check_entry(signal(qty="0.2"), D("0.2"), MARK)               # 10000.00: at the limit
    assert refused(risk, signal(qty="0.20001"), "0.20001") == (
        "max_order_notional: 10000.50 > 10000")


def test_max_position_notional_counts_the_position_after_the_order() -> None:
    risk = gate({"BTCUSDT": D("0.1")}, max_position_notional=D("10000"))
    risk.check_entry(signal(qty="0.1"), D("0.1"), MARK)               # 0.2 × 50000 = 10000
    assert refused(risk, signal(qty="0.11"), "0.11") == (
        "max_position_notional: BTCUSDT 10500.00 > 10000")
    # a SHORT entry against the long reduces it: allowed
    risk.check_entry(signal(SignalType.SHORT_ENTRY, qty="0.3"), D("0.3"), MARK)


def test_max_open_positions_counts_the_new_symbol_only() -> None:
    risk = gate({"BTCUSDT": D("0.1"), "ETHUSDT": D("-1")}, max_open_positions=3)
    risk.check_entry(signal(symbol="SOLUSDT"), D("0.1"), MARK)        # 3rd position
    risk.check_entry(signal(symbol="BTCUSDT"), D("0.1"), MARK)        # adds to an open one
    tight = gate({"BTCUSDT": D("0.1"), "ETHUSDT": D("-1")}, max_open_positions=2)
    assert refused(tight, signal(symbol="SOLUSDT"), "0.1") == "max_open_positions: 3 > 2"


def test_max_leverage() -> None:
    risk = gate(max_leverage=20)
    risk.check_entry(signal(leverage=20), D("0.1"), MARK)
    assert refused(risk, signal(leverage=21), "0.1") == "max_leverage: 21 > 20"


def test_max_orders_per_minute_counts_every_order_sent_in_the_last_60_s() -> None:
    clock = FakeClock()
    risk = gate(clock=clock, max_orders_per_minute=3)
    risk.order_sent()                                  # an entry
    risk.order_sent()                                  # its stop-loss
    risk.check_entry(signal(), D("0.1"), MARK)         # the third order: allowed
    clock.advance(30.0)
    risk.order_sent()
    assert refused(risk, signal(), "0.1") == "max_orders_per_minute: 4 > 3"
    clock.advance(30.0)                                # the first two leave the window
    assert risk.orders_last_minute() == 1
    risk.check_entry(signal(), D("0.1"), MARK)


async def test_trading_state_gates_entries_and_closes_and_is_stored() -> None:
    store = MemoryStore()
    risk = gate(store=store)
    with capture_logs() as logs:
        await risk.set_state(TradingState.REDUCING, "bad day", by="operator")
    assert logs[-1]["event"] == "trading_state_changed"
    assert logs[-1]["previous"] == "ACTIVE"
    assert logs[-1]["by"] == "operator"
    assert refused(risk, signal(), "0.1") == "trading state: REDUCING (bad day)"
    risk.check_close()
    await risk.set_state(TradingState.HALTED, "operator halt", by="operator")
    with pytest.raises(SignalError, match="trading state: HALTED"):
        risk.check_close()
    assert store.saved is not None
    assert store.saved.state is TradingState.HALTED
    restarted = gate(store=store)
    await restarted.restore()
    assert restarted.state is TradingState.HALTED
    assert restarted.change.reason == "operator halt"


async def test_a_store_that_fails_changes_nothing() -> None:
    class Broken(MemoryStore):
        async def save_trading_state(self, change: StateChange) -> None:
            raise OSError("disk full")

    risk = gate(store=Broken())
    with pytest.raises(OSError, match="disk full"):
        await risk.set_state(TradingState.HALTED, "x", by="operator")
    assert risk.state is TradingState.ACTIVE


async def test_two_auth_failures_in_a_row_halt() -> None:
    store = MemoryStore()
    risk = gate(store=store)
    risk.auth_result(refused=True)
    risk.auth_result(refused=False)              # a success in between resets the run
    risk.auth_result(refused=True)
    assert risk.state is TradingState.ACTIVE
    risk.auth_result(refused=True)
    assert risk.state is TradingState.HALTED
    assert risk.change.by == "kill switch"
    assert "API key refused 2 times in a row" in risk.change.reason
    await risk.aclose()
    assert store.saved is not None
    assert store.saved.state is TradingState.HALTED


async def test_daily_loss_switches_to_reducing_on_the_fill_that_reaches_it() -> None:
    risk = gate(max_daily_loss=D("100"))
    risk.daily_result(D("-90"), {"USDT": D("9.99"), "BNB": D("5")})
    assert risk.state is TradingState.ACTIVE
    assert risk.daily_loss == D("99.99")
    risk.daily_result(D("-90"), {"USDT": D("10")})
    assert risk.state is TradingState.REDUCING
    assert risk.change.reason == "max_daily_loss: 100.00 >= 100"
    # an operator's HALT is not softened by a later loss
    await risk.set_state(TradingState.ACTIVE, "resumed", by="operator")
    risk.daily_result(D("-90"), {"USDT": D("10")})            # no new loss: stays ACTIVE
    assert risk.state is TradingState.ACTIVE
    risk.daily_result(D("-95"), {"USDT": D("10")})            # a further loss: REDUCING again
    assert risk.state is TradingState.REDUCING
    await risk.set_state(TradingState.HALTED, "stop", by="operator")
    risk.daily_result(D("-500"), {})
    assert risk.state is TradingState.HALTED
    await risk.aclose()


def test_a_loss_already_past_the_limit_at_start_switches_nothing() -> None:
    risk = gate(max_daily_loss=D("100"))
    risk.daily_result(D("-200"), {}, at_start=True)
    assert risk.state is TradingState.ACTIVE
    assert risk.daily_loss == D("200")
