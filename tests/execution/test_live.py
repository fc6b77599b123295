"""Position truth (SPEC §5.8, §5.9) against the simulator, through the real gateway, the real
stream clients and the guard, as the daemon assembles them: adds that replace protection,
partial fills, an outage past the signal's TTL, a stop that fires, a liquidation, a web-UI
trade, a stream drop with events lost, and a journal that fails right after a fill."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from app.clock import SystemClock
from app.config_schema import StreamConfig
from app.domain import Intent, IntentState, Leg, SignalState
from app.execution.book import Book
from app.execution.settings import ExecutorSettings
from app.factory import (
    ExchangeParts,
    ExecutionParts,
    LiveParts,
    build_execution,
    build_live,
)
from app.journal import Journal, SignalRecord
from app.sim import SimServer
from tests.execution.conftest import make_signal
from tests.simulator import Admin

LONG = {"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
        "take_profit": "70000.0", "stop_loss": "60000.0"}


class FlakyJournal(Journal):
    """A journal whose writes fail while ``broken`` (as a full disk or a read-only file
    would), switched on by ``break_after_fill``: right after an entry is journaled FILLED
    would be, that write and every one after it fail."""

    broken = False
    break_on_fill = False

    async def put_intent(self, intent: Intent, *,
                         start: SignalRecord | None = None) -> None:
        if (self.break_on_fill and intent.leg is Leg.ENTRY
                and intent.state is IntentState.FILLED):
            self.break_on_fill = False
            self.broken = True
        if self.broken:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        await super().put_intent(intent, start=start)


@dataclass
class Live:
    exchange: ExchangeParts
    journal: FlakyJournal
    execution: ExecutionParts
    live: LiveParts
    admin: Admin

    async def run(self, body: dict[str, Any], *, ttl: float = 60.0) -> SignalRecord:
        record, _ = await self.journal.accept(make_signal(body, ttl=ttl), now=time.time())
        return await self.execution.executor.execute(record)


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll ``check`` every 20 ms; the seconds it took. Fails after ``within`` seconds."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def open_algos(admin: Admin, symbol: str = "BTCUSDT") -> list[dict[str, Any]]:
    return [a for a in await admin.orders("algo")
            if a["symbol"] == symbol and a["status"] == "NEW"]


@pytest.fixture
def stream_config() -> StreamConfig:
    """Polling set to 60 s: whatever happens within seconds was driven by the stream."""
    return StreamConfig(fallback_poll_s=60.0, reconcile_interval_s=60.0)


@pytest.fixture
async def live(sim: SimServer, exchange: ExchangeParts, tmp_path: Path, admin: Admin,
               stream_config: StreamConfig) -> AsyncIterator[Live]:
    journal = FlakyJournal(tmp_path / "journal.sqlite3")
    await journal.open()
    settings = ExecutorSettings(resolve_window_s=1.0, busy_retry_s=0.05)
    clock, log = SystemClock(), structlog.get_logger()
    book = Book(clock)
    execution = build_execution(exchange.gateway, exchange.symbols.get, journal, clock, log,
                                settings, book=book)
    parts = build_live(exchange.gateway, book, execution, journal, clock, log, stream_config,
                       "ws" + sim.url.removeprefix("http"), settings)
    tasks = [asyncio.create_task(parts.guard.run())]
    tasks += [asyncio.create_task(s.run()) for s in (parts.user, parts.market) if s]
    try:
        if parts.user is not None:
            await until(lambda: asyncio.sleep(0, parts.user is not None
                                              and parts.user.connected), 5, "user stream up")
        yield Live(exchange, journal, execution, parts, admin)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await parts.guard.aclose()
        await journal.close()


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def test_adding_twice_with_new_protection_keeps_one_stop(live: Live) -> None:
    """-4130 is enforced by the simulator: after two adds with new tp/sl there is exactly one
    stop and one take-profit, at the newest prices; never flattened, never unprotected."""
    with capture_logs() as logs:
        for sl, tp in (("60000.0", "70000.0"), ("61000.0", "71000.0"), ("62000.0", "72000.0")):
            record = await live.run(LONG | {"stop_loss": sl, "take_profit": tp})
            assert record.state is SignalState.DONE, record.reason
        await asyncio.sleep(0.3)                     # the guard's checks after the events
    assert await live.admin.position("BTCUSDT") == "0.030"
    algos = await open_algos(live.admin)
    assert sorted((a["type"], a["trigger_price"]) for a in algos) == [
        ("STOP_MARKET", "62000.00"), ("TAKE_PROFIT_MARKET", "72000.00")]
    assert not events(logs, "position_unprotected")
    assert not events(logs, "position_flattened")
    assert not events(logs, "protection_repaired")


async def test_partial_fills_are_protected_and_reported(live: Live) -> None:
    """30 % fills: each resulting position has its stop within 2 s; the signal says how much
    filled and its record carries ``filled_quantity``."""
    await live.admin.post("faults", {"seed": 1, "rules": [
        {"endpoint": "POST /fapi/v1/order", "fault": "partial_fill", "probability": 1,
         "fill_ratio": 0.3}]})
    bodies = [LONG, {"symbol": "ETHUSDT", "type": "SHORT_ENTRY", "quantity": "0.100",
                     "stop_loss": "3300.00", "take_profit": "3000.00"}]
    started = time.monotonic()
    records = await asyncio.gather(*(live.run(body) for body in bodies))
    for record, (symbol, filled) in zip(records, (("BTCUSDT", "0.003"), ("ETHUSDT", "0.030")),
                                        strict=True):
        assert record.state is SignalState.DONE, record.reason
        assert record.reason is not None
        assert record.reason.startswith(f"partially filled {filled} of ")
        stored = await live.journal.get_signal(record.signal.id)
        assert stored is not None
        assert stored.filled_quantity == Decimal(filled)
        assert [a["type"] for a in await open_algos(live.admin, symbol)] == [
            "STOP_MARKET", "TAKE_PROFIT_MARKET"]
    assert time.monotonic() - started < 2.0


async def test_an_outage_past_the_ttl_right_after_the_entry_settles_without_a_restart(
        live: Live) -> None:
    """The entry is applied but its answer lost, then the exchange is down for longer than
    the signal's TTL: the signal stays RUNNING ('outcome unknown'); once the exchange answers
    again the entry is found FILLED and protected — one order, no restart."""
    record, _ = await live.journal.accept(make_signal(LONG, ttl=1.0), now=time.time())
    # The websockets are down too (else the fill event would settle it at once): the entry
    # is applied, its answer lost and it stays hidden from lookups for 0.5 s; from 0.2 s on
    # every request meets an outage of 2.5 s, far past the 1 s TTL.
    user = live.live.user
    assert user is not None
    await live.admin.post("streams/drop", {"block_s": 4})
    await until(lambda: asyncio.sleep(0, not user.connected), 2, "stream down")
    await live.admin.post("faults", {
        "seed": 1, "outages": [{"start_s": 0.2, "duration_s": 2.5}],
        "rules": [{"endpoint": "POST /fapi/v1/order", "fault": "reset_after_apply",
                   "probability": 1, "visibility_delay_s": 0.5}]})
    running = asyncio.create_task(live.execution.executor.execute(record))
    await asyncio.sleep(2.0)                        # past the TTL, inside the outage
    assert await _has_orders(live.admin)            # the entry did reach the exchange
    assert not running.done()
    during = await live.journal.get_signal(record.signal.id)
    assert during is not None
    assert during.state is SignalState.RUNNING
    final = await asyncio.wait_for(running, 20)
    assert final.state is SignalState.DONE, final.reason
    assert [r["kind"] for r in await live.admin.orders()].count("order") == 1
    assert [a["type"] for a in await open_algos(live.admin)] == [
        "STOP_MARKET", "TAKE_PROFIT_MARKET"]


async def _has_orders(admin: Admin) -> bool:
    return bool(await admin.orders())


async def test_a_stop_that_fires_gets_its_take_profit_cancelled_within_a_second(
        live: Live) -> None:
    """Event-driven: polling is at 60 s, yet the take-profit goes within 1 s of the stop."""
    record = await live.run(LONG)
    assert record.state is SignalState.DONE, record.reason
    with capture_logs() as logs:
        await live.admin.post("price", {"symbol": "BTCUSDT", "price": "59990.0"})
        took = await until(lambda: _no_open_algos(live.admin), 1.0, "take-profit cancelled")
    assert took < 1.0
    statuses = {a["type"]: a["status"] for a in await live.admin.orders("algo")}
    assert statuses == {"STOP_MARKET": "FINISHED", "TAKE_PROFIT_MARKET": "CANCELED"}
    triggered = events(logs, "protective_triggered")
    assert [e["leg"] for e in triggered] == ["stop_loss"]
    states = {i.leg: i.state for i in await live.journal.intents_for(record.signal.id)}
    assert states[Leg.STOP_LOSS] is IntentState.FILLED
    assert states[Leg.TAKE_PROFIT] is IntentState.CANCELLED


async def _no_open_algos(admin: Admin) -> bool:
    return not await open_algos(admin)


async def test_a_liquidation_and_a_web_trade_are_reported_and_nothing_foreign_touched(
        live: Live) -> None:
    record = await live.run(LONG)
    assert record.state is SignalState.DONE, record.reason
    with capture_logs() as logs:
        await live.admin.post("trade", {"symbol": "ETHUSDT", "side": "BUY", "qty": "0.100"})
        await live.admin.post("trade", {"symbol": "BTCUSDT", "side": "BUY", "qty": "0.005"})
        await until(lambda: asyncio.sleep(0, len(events(logs, "position_foreign")) >= 2), 2,
                    "foreign trades reported")
        await live.admin.post("liquidate", {"symbol": "BTCUSDT"})
        await until(lambda: _no_open_algos(live.admin), 2, "BTC protection cleaned up")
        await asyncio.sleep(0.3)
    liquidated = events(logs, "position_liquidated")
    assert len(liquidated) == 1
    assert liquidated[0]["log_level"] == "critical"
    assert {e["symbol"] for e in events(logs, "position_foreign")} == {"ETHUSDT", "BTCUSDT"}
    # the ETH position is someone else's: no order of execd's on it, and it is still there
    assert await live.admin.position("ETHUSDT") == "0.100"
    assert all(r["symbol"] != "ETHUSDT" for r in await live.admin.orders()
               if r["client_id"].startswith("xd"))
    view = {p["symbol"]: p for p in live.live.guard.positions_view()}
    assert view["ETHUSDT"]["foreign"] is True
    assert not events(logs, "position_flattened")


async def test_a_stream_drop_that_loses_events_is_repaired_by_reconciliation(
        live: Live) -> None:
    """While the stream is down (refused for 1 s) the stop fires: the events are lost; after
    the reconnect the REST reconciliation finds the position flat and cancels the take-profit."""
    record = await live.run(LONG)
    assert record.state is SignalState.DONE, record.reason
    user = live.live.user
    assert user is not None
    await live.admin.post("streams/drop", {"block_s": 1})
    await until(lambda: asyncio.sleep(0, not user.connected), 2, "stream down")
    await live.admin.post("price", {"symbol": "BTCUSDT", "price": "59990.0"})
    assert await live.admin.position("BTCUSDT") == "0"
    await until(lambda: _no_open_algos(live.admin), 8, "take-profit cancelled after reconnect")
    assert user.connected


async def test_a_journal_failing_right_after_a_fill_is_critical_then_repaired(
        live: Live) -> None:
    """The entry filled but its journal write failed (a read-only file): critical
    ``position_unprotected`` at once; the flow keeps trying and, once the journal writes
    again, the position gets its stop (``protection_repaired``), with no restart."""
    live.journal.break_on_fill = True
    record, _ = await live.journal.accept(make_signal(LONG), now=time.time())
    with capture_logs() as logs:
        running = asyncio.create_task(live.execution.executor.execute(record))
        await until(lambda: asyncio.sleep(0, bool(events(logs, "position_unprotected"))), 5,
                    "critical alert")
        assert events(logs, "position_unprotected")[0]["log_level"] == "critical"
        assert await open_algos(live.admin) == []     # nothing placed while it is broken
        live.journal.broken = False
        final = await asyncio.wait_for(running, 15)
    assert final.state is SignalState.DONE, final.reason
    assert events(logs, "protection_repaired")
    assert [a["type"] for a in await open_algos(live.admin)] == [
        "STOP_MARKET", "TAKE_PROFIT_MARKET"]
    assert [r["kind"] for r in await live.admin.orders()].count("order") == 1


async def test_a_stop_cancelled_by_hand_is_placed_again(live: Live) -> None:
    """Someone cancels execd's stop in the web UI: the guard sees it on the stream and
    places it again at the last requested price (``protection_repaired``)."""
    record = await live.run(LONG)
    assert record.state is SignalState.DONE, record.reason
    stop = next(a for a in await open_algos(live.admin) if a["type"] == "STOP_MARKET")
    with capture_logs() as logs:
        await live.exchange.gateway.cancel_algo_order(stop["client_id"])
        await until(lambda: _stop_open(live.admin), 3, "stop placed again")
        await asyncio.sleep(0.2)
    repaired = events(logs, "protection_repaired")
    assert len(repaired) == 1
    algos = await open_algos(live.admin)
    assert sorted(a["type"] for a in algos) == ["STOP_MARKET", "TAKE_PROFIT_MARKET"]
    assert next(a for a in algos if a["type"] == "STOP_MARKET")["trigger_price"] == "60000.00"
    assert live.live.guard.naked_seconds_now() > 0


async def _stop_open(admin: Admin) -> bool:
    return any(a["type"] == "STOP_MARKET" for a in await open_algos(admin))



async def test_an_unknown_outcome_is_settled_by_the_stream_event(live: Live) -> None:
    """The entry is applied but answered 503 'Unknown error', and lookups by id say 'unknown
    order' for 5 s — longer than the 1 s resolve window, so lookups alone would resend it.
    The stream's ORDER_TRADE_UPDATE settles it: adopted, one order, protected."""
    await live.admin.post("faults", {"seed": 1, "rules": [
        {"endpoint": "POST /fapi/v1/order", "fault": "unknown_503", "probability": 1,
         "visibility_delay_s": 5}]})
    started = time.monotonic()
    with capture_logs() as logs:
        record = await live.run(LONG)
    assert record.state is SignalState.DONE, record.reason
    assert time.monotonic() - started < 2.0
    assert [e["outcome"] for e in events(logs, "order_resolved")] == ["found"]
    assert [r["kind"] for r in await live.admin.orders()].count("order") == 1


async def test_a_close_sizes_from_the_book_without_an_exchange_read(live: Live) -> None:
    """SPEC §5.8: once the book follows the account, a close takes its size from the book's
    position: no position read before its order; while the entry's fill event has not come in
    yet, the book says so and one REST read is made instead."""
    book = live.live.book
    assert (await live.run(LONG)).state is SignalState.DONE
    await until(lambda: asyncio.sleep(0, book.followed_amount("BTCUSDT") == Decimal("0.010")),
                5, "the book follows the position")
    with capture_logs() as logs:
        record = await live.run({"symbol": "BTCUSDT", "type": "CLOSE_LONG"})
    assert record.state is SignalState.DONE, record.reason
    names = [e["event"] for e in logs]
    first_order = names.index("order_submitted")
    assert "position_query" not in names[:first_order], names[:first_order]
    assert await live.admin.position("BTCUSDT") == "0"


async def test_a_position_whose_fill_event_is_still_to_come_is_read_by_rest(live: Live) -> None:
    book = live.live.book
    await until(lambda: asyncio.sleep(0, book.followed_amount("BTCUSDT") is not None), 5,
                "the book follows the account")
    book.expect_fill("xd-in-flight", "BTCUSDT")
    assert book.followed_amount("BTCUSDT") is None
    assert book.followed_amount("ETHUSDT") == Decimal(0)
    book.forget("xd-in-flight")
    assert book.followed_amount("BTCUSDT") == Decimal(0)


async def test_an_entry_makes_one_journal_write_before_its_order(
        live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC §13 decision latency: the signal turns RUNNING in the same transaction as its
    first intent; nothing else is written (or read from the exchange) before the order."""
    from app.execution.sender import DECISION_STARTED

    writes: list[str] = []
    for name in ("set_signal_state", "put_intent", "set_filled_quantity"):
        original = getattr(live.journal, name)

        def counted(*args: Any, _name: str = name, _original: Any = original,
                    **kwargs: Any) -> Any:
            if DECISION_STARTED.get() is not None:
                writes.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(live.journal, name, counted)
    record = await live.run(LONG)
    assert record.state is SignalState.DONE, record.reason
    assert writes == ["put_intent"]


async def test_an_entry_held_past_its_ttl_expires_and_frees_its_lane(live: Live) -> None:
    """The limiter holds the entry (a 429's pause) until after the signal's TTL: the order is
    not sent and the signal ends EXPIRED — not taken for a journal failure (TimeoutError is an
    OSError), which alerted 'position unprotected' and retried for ever."""
    limiter = live.exchange.limiter
    with capture_logs() as logs:
        limiter.penalize([b.name for b in live.exchange.buckets], 1.5)
        record = await asyncio.wait_for(live.run(LONG, ttl=0.5), 10)
    assert record.state is SignalState.EXPIRED, record.reason
    assert await live.admin.orders() == []
    assert events(logs, "position_unprotected") == []


async def test_an_entry_is_execds_in_the_status_as_soon_as_it_fills(
        live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """The status's ``foreign`` flag comes from the guard's check of the symbol, which waits
    for the executor to finish protecting the position; the entry's own fill event marks the
    position execd's at once. (A CI run caught `/v1/status` showing execd's fresh entry as
    foreign while its stop was being placed.)"""
    gateway = live.exchange.gateway
    original = gateway.place_algo_order
    seen: list[object] = []

    async def place(*args: Any, **kwargs: Any) -> Any:
        if not seen:                                   # the stop-loss, the executor's lock held
            await until(lambda: asyncio.sleep(0, live.live.book.position("BTCUSDT")
                                              is not None), 2, "the fill in the book")
            view = {p["symbol"]: p for p in live.live.guard.positions_view()}
            seen.append(view["BTCUSDT"]["foreign"])
        return await original(*args, **kwargs)

    monkeypatch.setattr(gateway, "place_algo_order", place)
    record = await live.run(LONG)
    assert record.state is SignalState.DONE, record.reason
    assert seen == [False]
