"""The server time offset is sampled again every ``interval_s`` (SPEC §6.2), on the fake clock."""

from __future__ import annotations

import asyncio

import pytest
import structlog
from structlog.testing import capture_logs

from app.clock import FakeClock
from app.exchange.timesync import TimeSync
from app.factory import open_exchange
from app.sim import SimServer
from tests.exchange.conftest import setup_for
from tests.exchange.test_symbol_refresh import settle


async def test_run_samples_every_interval_and_survives_a_failed_sample() -> None:
    """No sample before the first interval (the gateway took one at start); one per interval
    after; a failing fetch keeps the offset in use and the loop going."""
    clock = FakeClock()
    answers: list[int | Exception] = [2_000, RuntimeError("exchange down"), 2_000]
    synced: list[int] = []

    async def fetch() -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return round(clock.time() * 1000) + answer

    sync = TimeSync(fetch, clock, interval_s=300.0,
                    on_sync=lambda offset, rtt, samples: synced.append(offset))
    task = asyncio.create_task(sync.run())
    await settle()
    clock.advance(299.0)
    await settle()
    assert synced == []
    clock.advance(1.0)
    await settle()
    assert synced == [2_000]
    assert sync.offset_ms == 2_000
    clock.advance(300.0)             # the fetch fails: the offset stays
    await settle()
    assert synced == [2_000]
    assert sync.offset_ms == 2_000
    assert not task.done()
    clock.advance(300.0)
    await settle()
    assert synced == [2_000, 2_000]
    assert answers == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_exchange_side_samples_again_every_five_minutes(sim: SimServer) -> None:
    """`open_exchange` runs `TimeSync.run`: one ``time_synced`` at start, one more after 300 s
    of the (fake) clock, through the gateway; closing the exchange side stops it."""
    clock = FakeClock()

    def synced(logs: list[dict[str, object]]) -> int:
        return sum(1 for e in logs if e["event"] == "time_synced")

    with capture_logs() as logs:
        async with open_exchange(setup_for(sim.url), clock, structlog.get_logger()):
            assert synced(logs) == 1
            await asyncio.sleep(0.05)        # the task parks in its sleep (from fake t = 0)
            clock.advance(299.0)
            await asyncio.sleep(0.05)
            assert synced(logs) == 1
            clock.advance(1.0)
            for _ in range(500):             # the sample's round trip to the simulator
                if synced(logs) == 2:
                    break
                await asyncio.sleep(0.01)
            assert synced(logs) == 2
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "execd-time-sync"]
