"""Restart recovery (SPEC §5.6): a journal left mid-flight is resolved before intake opens."""

from __future__ import annotations

import dataclasses
import time
from decimal import Decimal

import structlog
from structlog.testing import capture_logs

from app.domain import Intent, IntentState, Leg, OrderType, Side, Signal, SignalState
from app.exchange.gateway import Gateway
from app.execution.client_ids import client_id
from app.execution.reconcile import recover
from app.execution.settings import ExecutorSettings
from app.factory import ExchangeParts, ExecutionParts
from app.journal import Journal
from tests.execution.conftest import execution_for, make_signal
from tests.simulator import Admin


def entry_intent(signal_id: str, symbol: str, qty: str, state: IntentState) -> Intent:
    return Intent(signal_id=signal_id, leg=Leg.ENTRY, client_id=client_id("xd", signal_id,
                  Leg.ENTRY), symbol=symbol, side=Side.BUY, order_type=OrderType.MARKET,
                  quantity=Decimal(qty), price=None, reduce_only=False, state=state,
                  updated_at=time.time())


async def running_entry(journal: Journal) -> tuple[Signal, Intent]:
    """A BTCUSDT LONG_ENTRY (0.010, stop-loss 60000) journaled RUNNING with its entry intent
    SENDING: the state a crash right after the entry left leaves behind."""
    now = time.time()
    signal = make_signal({"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
                          "stop_loss": "60000.0"})
    await journal.accept(signal, now=now)
    await journal.set_signal_state(signal.id, SignalState.RUNNING, reason=None, now=now)
    intent = entry_intent(signal.id, "BTCUSDT", "0.010", IntentState.SENDING)
    await journal.put_intent(intent)
    return signal, intent


async def test_sending_intents_are_adopted_or_sent_once(
        gateway: Gateway, journal: Journal, execution: ExecutionParts, admin: Admin) -> None:
    """Applied SENDING intents are adopted, unapplied ones sent once, protection completed,
    expired signals never sent."""
    now = time.time()
    applied = make_signal({"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
                           "stop_loss": "60000.0", "take_profit": "70000.0"})
    lost = make_signal({"symbol": "ETHUSDT", "type": "LONG_ENTRY", "quantity": "0.100"})
    expired = make_signal({"symbol": "SOLUSDT", "type": "LONG_ENTRY", "quantity": "1"})
    expired = dataclasses.replace(expired, expires_at=now - 1)
    for signal in (applied, lost, expired):
        await journal.accept(signal, now=now)
        await journal.set_signal_state(signal.id, SignalState.RUNNING, reason=None, now=now)
    # The crash happened after the BTC entry reached the exchange but before its answer was
    # journaled; the ETH and SOL entries were journaled SENDING but never left.
    btc = entry_intent(applied.id, "BTCUSDT", "0.010", IntentState.SENDING)
    await journal.put_intent(btc)
    await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"), btc.client_id)
    await journal.put_intent(entry_intent(lost.id, "ETHUSDT", "0.100", IntentState.SENDING))
    await journal.put_intent(entry_intent(expired.id, "SOLUSDT", "1", IntentState.SENDING))

    with capture_logs() as logs:
        summary = await recover(journal, gateway, execution.sender, execution.executor,
                                structlog.get_logger())
    assert (summary["adopted"], summary["not_found"]) == (1, 2)
    assert (await journal.get_signal(applied.id)).state is SignalState.DONE
    assert (await journal.get_signal(lost.id)).state is SignalState.DONE
    assert (await journal.get_signal(expired.id)).state is SignalState.EXPIRED
    rows = await admin.orders()
    by_client = [r["client_id"] for r in rows]
    assert by_client.count(btc.client_id) == 1                 # adopted, not resent
    assert by_client.count(client_id("xd", lost.id, Leg.ENTRY)) == 1
    assert client_id("xd", expired.id, Leg.ENTRY) not in by_client
    algos = [r for r in rows if r["kind"] == "algo"]
    assert {a["type"] for a in algos} == {"STOP_MARKET", "TAKE_PROFIT_MARKET"}
    events = [e["event"] for e in logs]
    assert events[0] == "reconcile_started"
    assert events.count("order_reconciled") == 3
    assert events[-1] == "reconcile_finished"


async def test_filled_entry_without_protection_gets_it(
        gateway: Gateway, journal: Journal, execution: ExecutionParts, admin: Admin) -> None:
    """A RUNNING entry whose fill was journaled but whose stop was not placed is protected."""
    signal, intent = await running_entry(journal)
    placed = await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"), intent.client_id)
    await journal.put_intent(intent.with_state(IntentState.FILLED,
                                               exchange_id=str(placed.order_id)))
    await recover(journal, gateway, execution.sender, execution.executor,
                  structlog.get_logger())
    assert (await journal.get_signal(signal.id)).state is SignalState.DONE
    algos = await admin.orders("algo")
    assert [(a["type"], a["status"]) for a in algos] == [("STOP_MARKET", "NEW")]
    assert len(await admin.orders("order")) == 1


async def test_a_partly_filled_entry_is_protected_at_restart_never_sent_again(
        gateway: Gateway, journal: Journal, execution: ExecutionParts, admin: Admin) -> None:
    """A RUNNING entry journaled EXPIRED after a partial fill (the crash came before its
    protection): recovery looks up how much filled, protects that, and sends no second
    entry."""
    signal, intent = await running_entry(journal)
    await admin.post("faults", {"seed": 1, "rules": [
        {"endpoint": "POST /fapi/v1/order", "fault": "partial_fill", "probability": 1}]})
    placed = await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"), intent.client_id)
    await admin.post("faults", {"seed": 1, "rules": []})
    await journal.put_intent(intent.with_state(IntentState.EXPIRED,
                                               exchange_id=str(placed.order_id)))
    await recover(journal, gateway, execution.sender, execution.executor,
                  structlog.get_logger())
    record = await journal.get_signal(signal.id)
    assert record is not None
    assert (record.state, record.reason) == (
        SignalState.DONE, "partially filled 0.005 of 0.010 BTCUSDT; protected")
    assert len(await admin.orders("order")) == 1
    assert [(a["type"], a["status"]) for a in await admin.orders("algo")] == [
        ("STOP_MARKET", "NEW")]


async def test_a_lost_intent_row_never_becomes_a_second_order(
        gateway: Gateway, journal: Journal, execution: ExecutionParts, admin: Admin) -> None:
    """A power cut under ``synchronous=NORMAL`` may lose the last intent writes, not the
    acknowledged signal (SPEC §5.6): RUNNING and ACCEPTED entries whose entry order is on the
    exchange but not in the journal. Recovery looks every leg up by its deterministic id
    first: the entry is adopted (one order), the missing stop placed, the signal DONE."""
    now = time.time()
    running = make_signal({"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
                           "stop_loss": "60000.0"})
    accepted = make_signal({"symbol": "ETHUSDT", "type": "LONG_ENTRY", "quantity": "0.100",
                            "stop_loss": "2000.0"})
    stopped = make_signal({"symbol": "SOLUSDT", "type": "LONG_ENTRY", "quantity": "1",
                           "stop_loss": "100.0"})
    for signal in (running, accepted, stopped):
        await journal.accept(signal, now=now)
        await gateway.place_order(signal.symbol, Side.BUY, signal.quantity or Decimal(0),
                                  client_id("xd", signal.id, Leg.ENTRY))
    for signal in (running, stopped):
        await journal.set_signal_state(signal.id, SignalState.RUNNING, reason=None, now=now)
    # SOL's stop-loss was placed too: its row is lost as well.
    await gateway.place_algo_order("SOLUSDT", Side.SELL, OrderType.STOP_MARKET,
                                   Decimal("100.0"), client_id("xd", stopped.id, Leg.STOP_LOSS))

    with capture_logs() as logs:
        await recover(journal, gateway, execution.sender, execution.executor,
                      structlog.get_logger())
    for signal in (running, accepted, stopped):
        record = await journal.get_signal(signal.id)
        assert record is not None
        assert (record.state, record.reason) == (
            SignalState.DONE, f"entry filled: {signal.quantity} {signal.symbol}; protected")
        entry = client_id("xd", signal.id, Leg.ENTRY)
        assert [r["client_id"] for r in await admin.orders("order")].count(entry) == 1
    algos = await admin.orders("algo")
    assert sorted((a["symbol"], a["type"]) for a in algos) == [
        ("BTCUSDT", "STOP_MARKET"), ("ETHUSDT", "STOP_MARKET"), ("SOLUSDT", "STOP_MARKET")]
    adopted = [(e["leg"], e["state"]) for e in logs if e["event"] == "order_reconciled"
               and e.get("cause") == "not_journaled"]
    assert sorted(adopted) == [("E", "FILLED")] * 3 + [("S", "PLACED")]


async def test_nothing_is_sent_while_a_lost_row_cannot_be_looked_up(
        gateway: Gateway, journal: Journal, exchange: ExchangeParts, admin: Admin) -> None:
    """The lookup of a leg the journal does not show sent fails (503 on every order lookup):
    recovery sends nothing for that signal and leaves it RUNNING, ``outcome unknown``."""
    execution = execution_for(gateway, exchange, journal,
                              ExecutorSettings(resolve_window_s=0.3, busy_retry_s=0.05))
    signal = make_signal({"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
                          "stop_loss": "60000.0"})
    await journal.accept(signal, now=time.time())
    entry = client_id("xd", signal.id, Leg.ENTRY)
    await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"), entry)
    await admin.post("faults", {"seed": 1, "rules": [
        {"endpoint": "GET /fapi/v1/order", "fault": "service_unavailable", "probability": 1}]})
    await recover(journal, gateway, execution.sender, execution.executor,
                  structlog.get_logger())
    await admin.post("faults", {"seed": 1, "rules": []})
    record = await journal.get_signal(signal.id)
    assert record is not None
    assert (record.state, record.reason) == (SignalState.RUNNING, "outcome unknown")
    assert [r["client_id"] for r in await admin.orders()] == [entry]
