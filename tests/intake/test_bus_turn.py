"""A signal's turn on the bus (issue 16): `turn_taken` returns once the signal's first order is
handed to the exchange or its execution is over; at once for a signal that waits behind another
of its symbol; never later than its bound. Pure asyncio: the executor is a stub."""

from __future__ import annotations

import asyncio
import time

import structlog

from app.domain import SignalState
from app.intake.bus import SignalBus
from app.journal import SignalRecord
from tests.execution.conftest import make_signal


def record(symbol: str = "BTCUSDT") -> SignalRecord:
    signal = make_signal({"symbol": symbol, "type": "CLOSE_LONG"})
    return SignalRecord(signal, SignalState.ACCEPTED, None, 1, 0.0, 0.0)


class Stub:
    """An executor whose signals each wait for `go`, then send their first order (or not),
    then wait for `end`."""

    def __init__(self) -> None:
        self.bus: SignalBus | None = None
        self.go = asyncio.Event()
        self.end = asyncio.Event()
        self.send = True

    async def execute(self, _: SignalRecord) -> None:
        await self.go.wait()
        if self.send:
            assert self.bus is not None
            self.bus.first_order_out()
        await self.end.wait()


def bus_for(stub: Stub) -> SignalBus:
    bus = SignalBus(stub.execute, capacity=10, max_concurrency=4, log=structlog.get_logger())
    stub.bus = bus
    return bus


async def queued(bus: SignalBus, rec: SignalRecord) -> None:
    bus.reserve_nowait()
    bus.push(rec)
    await asyncio.sleep(0)            # the lane takes it


async def test_turn_ends_when_the_first_order_goes_out() -> None:
    stub = Stub()
    bus = bus_for(stub)
    rec = record()
    await queued(bus, rec)
    waiter = asyncio.create_task(bus.turn_taken(rec.signal.id, within_s=5))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    stub.go.set()
    await asyncio.wait_for(waiter, 1)          # long before its 5 s bound
    assert bus.is_executing(rec.signal.id)     # still executing: only its turn is over
    await bus.turn_taken(rec.signal.id, within_s=5)   # once out, it returns at once
    stub.end.set()
    assert await bus.drain(1)


async def test_turn_ends_when_the_execution_ends_without_an_order() -> None:
    stub = Stub()
    stub.send = False
    stub.end.set()
    bus = bus_for(stub)
    rec = record()
    await queued(bus, rec)
    waiter = asyncio.create_task(bus.turn_taken(rec.signal.id, within_s=5))
    await asyncio.sleep(0)
    stub.go.set()
    await asyncio.wait_for(waiter, 1)
    assert await bus.drain(1)


async def test_a_signal_waiting_behind_another_or_done_returns_at_once() -> None:
    stub = Stub()
    bus = bus_for(stub)
    first, second = record(), record()
    await queued(bus, first)
    await queued(bus, second)           # same symbol: behind the first
    await asyncio.wait_for(bus.turn_taken(second.signal.id, within_s=5), 0.5)
    await asyncio.wait_for(bus.turn_taken("never-seen", within_s=5), 0.5)
    stub.go.set()
    stub.end.set()
    assert await bus.drain(1)


async def test_turn_taken_is_bounded() -> None:
    stub = Stub()
    bus = bus_for(stub)
    rec = record()
    await queued(bus, rec)
    started = time.monotonic()
    await bus.turn_taken(rec.signal.id, within_s=0.02)
    assert 0.015 < time.monotonic() - started < 1
    stub.go.set()
    stub.end.set()
    assert await bus.drain(1)
