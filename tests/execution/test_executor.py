"""Each signal type end to end against the simulator, through the real gateway (SPEC §5.2)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from app.clock import SystemClock
from app.domain import IntentState, Leg, SignalState
from app.execution.settings import ExecutorSettings
from app.factory import ExchangeParts, build_execution
from app.journal import Journal, SignalRecord
from tests.execution.conftest import make_signal
from tests.simulator import Admin

Run = Callable[..., Any]

LONG = {"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
        "take_profit": "70000.0", "stop_loss": "60000.0"}


async def test_long_entry_with_protection(run: Run, admin: Admin, journal: Journal) -> None:
    """LONG_ENTRY: a market BUY, then a close-position stop-loss and take-profit (algo)."""
    record = await run(LONG)
    assert record.state is SignalState.DONE, record.reason
    assert await admin.position("BTCUSDT") == "0.010"
    rows = await admin.orders()
    assert [(r["kind"], r["type"], r["side"]) for r in rows] == [
        ("order", "MARKET", "BUY"), ("algo", "STOP_MARKET", "SELL"),
        ("algo", "TAKE_PROFIT_MARKET", "SELL")]
    assert rows[1]["trigger_price"] == "60000.00"
    assert rows[1]["close_position"] is True
    intents = {i.leg: i for i in await journal.intents_for(record.signal.id)}
    assert intents[Leg.ENTRY].state is IntentState.FILLED
    assert intents[Leg.STOP_LOSS].state is IntentState.PLACED
    assert intents[Leg.TAKE_PROFIT].state is IntentState.PLACED
    assert {r["client_id"] for r in rows} == {i.client_id for i in intents.values()}


async def test_short_entry_with_protection(run: Run, admin: Admin) -> None:
    """SHORT_ENTRY: a market SELL; the stop is above the mark and the take-profit below."""
    record = await run({"symbol": "ETHUSDT", "type": "SHORT_ENTRY", "quantity": "0.100",
                        "stop_loss": "3300.00", "take_profit": "3000.00"})
    assert record.state is SignalState.DONE, record.reason
    assert await admin.position("ETHUSDT") == "-0.100"
    algos = await admin.orders("algo")
    assert [(a["type"], a["side"]) for a in algos] == [("STOP_MARKET", "BUY"),
                                                        ("TAKE_PROFIT_MARKET", "BUY")]


async def test_quantity_is_quantized_down_to_the_step(run: Run, admin: Admin) -> None:
    """0.0109 BTC goes out as 0.010 (MARKET_LOT_SIZE step 0.001, rounded down)."""
    record = await run({"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.0109"})
    assert record.state is SignalState.DONE, record.reason
    assert [r["qty"] for r in await admin.orders()] == ["0.010"]


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"quantity": "0.001"}, "quantity", "MIN_NOTIONAL"),
    ({"quantity": "0.010", "stop_loss": "60000.05"}, "stop_loss", "PRICE_FILTER.tickSize"),
    ({"quantity": "0.010", "stop_loss": "66000.0"}, "stop_loss", "below the mark price"),
    ({"quantity": "0.010", "take_profit": "64000.0"}, "take_profit", "above the mark price"),
    ({"quantity": "500"}, "quantity", "MARKET_LOT_SIZE.maxQty"),
])
async def test_local_rule_violations_are_rejected_before_any_order(
        run: Run, admin: Admin, body: dict[str, str], field: str, words: str) -> None:
    """Filters and the mark side are checked locally: REJECTED naming the rule, no order."""
    record = await run({"symbol": "BTCUSDT", "type": "LONG_ENTRY", **body})
    assert record.state is SignalState.REJECTED
    assert record.reason.startswith(f"{field}:")
    assert words in record.reason
    assert await admin.orders() == []


async def test_unknown_symbol_is_rejected(run: Run, admin: Admin) -> None:
    """A symbol the exchange does not list is REJECTED on field symbol."""
    record = await run({"symbol": "DOGEUSDT", "type": "LONG_ENTRY", "quantity": "100"})
    assert record.state is SignalState.REJECTED
    assert record.reason.startswith("symbol:")


async def test_leverage_and_margin_type_set_once_per_symbol(run: Run, admin: Admin) -> None:
    """Two entries asking for leverage 5 and CROSSED: one call each (-4046 counts as success)."""
    body = {"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.002", "leverage": 5,
            "margin_type": "CROSSED"}
    with capture_logs() as logs:
        first = await run(body)
        second = await run(body)
    assert (first.state, second.state) == (SignalState.DONE, SignalState.DONE)
    events = [e["event"] for e in logs]
    assert events.count("leverage_set") == 1
    assert events.count("margin_type_set") == 1
    changed = next(e for e in logs if e["event"] == "margin_type_set")["changed"]
    assert changed is False                           # CROSSED already: -4046 = success
    state = await admin.get("state")
    assert state["positions"][0]["leverage"] == 5


async def test_close_when_flat_is_a_no_op(run: Run, admin: Admin) -> None:
    """CLOSE_LONG with no position: DONE with the reason, nothing sent."""
    record = await run({"symbol": "BTCUSDT", "type": "CLOSE_LONG"})
    assert record.state is SignalState.DONE
    assert "no LONG position" in record.reason
    assert await admin.orders() == []


async def test_close_of_the_other_side_is_a_no_op(run: Run, admin: Admin) -> None:
    """CLOSE_SHORT while long: DONE no-op, the long stays."""
    await run({"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010"})
    record = await run({"symbol": "BTCUSDT", "type": "CLOSE_SHORT"})
    assert record.state is SignalState.DONE
    assert "no SHORT position" in record.reason
    assert await admin.position("BTCUSDT") == "0.010"


async def test_partial_close_is_capped_and_reduce_only(run: Run, admin: Admin) -> None:
    """CLOSE_LONG of more than the position closes exactly the position, reduce-only."""
    await run({"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010"})
    half = await run({"symbol": "BTCUSDT", "type": "CLOSE_LONG", "quantity": "0.004"})
    assert half.state is SignalState.DONE
    assert await admin.position("BTCUSDT") == "0.006"
    rest = await run({"symbol": "BTCUSDT", "type": "CLOSE_LONG", "quantity": "1.000"})
    assert rest.state is SignalState.DONE
    assert await admin.position("BTCUSDT") == "0"
    closes = (await admin.orders())[1:]
    assert [(c["qty"], c["reduce_only"]) for c in closes] == [("0.004", True), ("0.006", True)]


async def test_close_cancels_the_protective_orders(run: Run, admin: Admin,
                                                   journal: Journal) -> None:
    """Closing the whole position cancels the symbol's stop-loss and take-profit."""
    entry = await run(LONG)
    record = await run({"symbol": "BTCUSDT", "type": "CLOSE_LONG"})
    assert record.state is SignalState.DONE, record.reason
    assert await admin.position("BTCUSDT") == "0"
    assert {a["status"] for a in await admin.orders("algo")} == {"CANCELED"}
    states = {i.leg: i.state for i in await journal.intents_for(entry.signal.id)}
    assert states[Leg.STOP_LOSS] is IntentState.CANCELLED
    assert states[Leg.TAKE_PROFIT] is IntentState.CANCELLED


async def test_second_entry_replaces_protective_orders(run: Run, admin: Admin) -> None:
    """A new entry with tp/sl replaces the protective orders: each old leg is cancelled just
    before its replacement goes out (the simulator refuses a second closePosition stop of a
    side with -4130, as Binance may), and the position is never flattened for it."""
    await run(LONG)
    record = await run({**LONG, "stop_loss": "61000.0", "take_profit": "69000.0"})
    assert record.state is SignalState.DONE, record.reason
    algos = await admin.orders("algo")
    assert [(a["trigger_price"], a["status"]) for a in algos] == [
        ("60000.00", "CANCELED"), ("70000.00", "CANCELED"),
        ("61000.00", "NEW"), ("69000.00", "NEW")]
    assert await admin.position("BTCUSDT") == "0.020"


async def test_an_old_stop_that_cannot_be_cancelled_stays(run: Run, admin: Admin) -> None:
    """If the old stop cannot be cancelled, it stays (it covers the whole position), no second
    stop is tried (-4130) and the position is not flattened; the signal says so."""
    await run(LONG)
    await admin.post("faults", {"seed": 1, "rules": [
        {"endpoint": "DELETE /fapi/v1/algoOrder", "fault": "http_500", "probability": 1}]})
    record = await run({**LONG, "stop_loss": "61000.0", "take_profit": "69000.0"})
    assert record.state is SignalState.DONE, record.reason
    assert "stop-loss not replaced, the previous one stays" in (record.reason or "")
    algos = await admin.orders("algo")
    assert [(a["trigger_price"], a["status"]) for a in algos] == [
        ("60000.00", "NEW"), ("70000.00", "NEW")]
    assert await admin.position("BTCUSDT") == "0.020"


async def test_a_cancel_that_says_unknown_order_is_not_taken_for_done(
        run: Run, admin: Admin) -> None:
    """Protective orders the exchange does not show yet (-2011 to the cancel, -2013 to the
    lookup) are cancelled once it does, not journaled CANCELLED while they stay open on the
    exchange (an orphan stop there would later refuse the next one with -4130)."""
    await admin.post("faults", {"seed": 1, "rules": [
        {"endpoint": "POST /fapi/v1/algoOrder", "fault": "delayed_visibility",
         "probability": 1, "visibility_delay_s": 1.0}]})
    await run(LONG)
    record = await run({"symbol": "BTCUSDT", "type": "CLOSE_LONG"})
    assert record.state is SignalState.DONE, record.reason
    algos = await admin.orders("algo")
    assert [a["status"] for a in algos] == ["CANCELED", "CANCELED"]


async def test_a_partly_filled_entry_is_protected(run: Run, admin: Admin) -> None:
    """An entry that fills only in part (the rest expires) opened a real position: it gets
    its stop-loss and take-profit, and the signal ends DONE saying how much filled."""
    await admin.post("faults", {"seed": 1, "rules": [
        {"endpoint": "POST /fapi/v1/order", "fault": "partial_fill", "probability": 1,
         "fill_ratio": 0.5}]})
    record = await run(LONG)
    assert record.state is SignalState.DONE, record.reason
    assert record.reason == "partially filled 0.005 of 0.010 BTCUSDT; protected"
    assert await admin.position("BTCUSDT") == "0.005"
    algos = await admin.orders("algo")
    assert [(a["type"], a["status"]) for a in algos] == [
        ("STOP_MARKET", "NEW"), ("TAKE_PROFIT_MARKET", "NEW")]


async def test_decision_latency_is_reported_once_per_signal(
        exchange: ExchangeParts, journal: Journal, exec_settings: ExecutorSettings) -> None:
    """Dequeue → first order on the wire is reported once, for the entry only."""
    seen: list[float] = []
    executor = build_execution(exchange.gateway, exchange.symbols.get, journal, SystemClock(),
                               structlog.get_logger(), exec_settings,
                               on_decision=seen.append).executor

    async def run(body: dict[str, Any]) -> SignalRecord:
        record, _ = await journal.accept(make_signal(body), now=time.time())
        return await executor.execute(record)

    await run(LONG)
    assert len(seen) == 1
    assert 0 <= seen[0] < 5
    await run({"symbol": "BTCUSDT", "type": "CLOSE_LONG"})
    assert len(seen) == 2
