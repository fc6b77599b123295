"""The bus: strict order within a symbol, overlap across symbols, bounded places (SPEC §4.3)."""

from __future__ import annotations

import asyncio
import collections

import pytest

from app.domain import Leg, SignalError, SignalState
from app.execution.client_ids import client_id
from app.intake.bus import QueueFull, SignalBus
from app.intake.service import Service
from app.journal import Journal
from tests.simulator import Admin

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")
QTY = {"BTCUSDT": "0.002", "ETHUSDT": "0.050", "SOLUSDT": "1", "BNBUSDT": "0.20"}


async def test_per_symbol_order_kept_and_symbols_overlap(
        service: Service, bus: SignalBus, journal: Journal, admin: Admin) -> None:
    """200 signals alternating over 4 symbols: each symbol's orders reach the exchange in
    acceptance order, and different symbols' orders interleave in time."""
    ids: dict[str, list[str]] = collections.defaultdict(list)
    for i in range(200):
        symbol = SYMBOLS[i % 4]
        kind = "LONG_ENTRY" if (i // 4) % 2 == 0 else "CLOSE_LONG"
        body = {"id": f"ord-{i:03d}", "symbol": symbol, "type": kind}
        if kind == "LONG_ENTRY":
            body["quantity"] = QTY[symbol]
        accepted = await service.accept(body, source="test")
        assert accepted.created
        ids[symbol].append(body["id"])
    assert await bus.drain(120)
    for symbol in SYMBOLS:
        states = [(await journal.get_signal(i)).state for i in ids[symbol]]
        assert set(states) == {SignalState.DONE}
    rows = await admin.orders("order")
    by_symbol: dict[str, list[str]] = collections.defaultdict(list)
    for row in rows:
        by_symbol[row["symbol"]].append(row["client_id"])
    for symbol in SYMBOLS:
        # 25 entries then closes alternate: the sides follow acceptance order exactly.
        sides = [r["side"] for r in rows if r["symbol"] == symbol]
        assert sides == ["BUY", "SELL"] * 25, symbol
        expected = [client_id("xd", i, Leg.ENTRY if n % 2 == 0 else Leg.CLOSE)
                    for n, i in enumerate(ids[symbol])]
        assert by_symbol[symbol] == expected, symbol
    # Overlap: the first 20 orders on the wire already span more than one symbol.
    assert len({r["symbol"] for r in rows[:20]}) > 1


async def test_full_queue_refuses_before_journaling(journal: Journal, service: Service,
                                                    bus: SignalBus) -> None:
    """At capacity reserve_nowait raises QueueFull and nothing is journaled."""
    for _ in range(bus.capacity):
        bus.reserve_nowait()
    with pytest.raises(QueueFull):
        await service.accept({"id": "full-1", "symbol": "BTCUSDT", "type": "CLOSE_LONG"},
                             source="test")
    assert await journal.get_signal("full-1") is None
    waiter = asyncio.create_task(bus.reserve())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    bus.release()
    await asyncio.wait_for(waiter, 1)
    for _ in range(bus.capacity):
        bus.release()


async def test_a_known_id_is_a_duplicate_whatever_the_body_or_the_queue(
        service: Service, bus: SignalBus, journal: Journal,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A duplicate id returns the first record even if the new body would be invalid, or the
    queue is full. A new valid signal reads nothing from the journal before its accept (one
    journal trip on the way to HTTP 202, issue 16)."""
    reads: list[str] = []
    get_signal = journal.get_signal

    async def counted(signal_id: str) -> object:
        reads.append(signal_id)
        return await get_signal(signal_id)

    monkeypatch.setattr(journal, "get_signal", counted)
    first = await service.accept({"id": "dup-1", "symbol": "BTCUSDT", "type": "CLOSE_LONG"},
                                 source="test")
    assert first.created
    assert reads == []
    again = await service.accept({"id": "dup-1", "symbol": "NOPE", "type": "???"},
                                 source="test")
    assert not again.created
    assert again.record.signal == first.record.signal
    assert await bus.drain(10)
    for _ in range(bus.capacity):
        bus.reserve_nowait()
    try:
        full = await service.accept({"id": "dup-1", "symbol": "BTCUSDT", "type": "CLOSE_LONG"},
                                    source="test")
    finally:
        for _ in range(bus.capacity):
            bus.release()
    assert not full.created
    assert full.record.signal == first.record.signal


async def test_unknown_symbol_is_a_signal_error(service: Service, journal: Journal) -> None:
    with pytest.raises(SignalError) as caught:
        await service.accept({"id": "sym-1", "symbol": "DOGEUSDT", "type": "CLOSE_LONG"},
                             source="test")
    assert caught.value.field == "symbol"
    assert await journal.get_signal("sym-1") is None
