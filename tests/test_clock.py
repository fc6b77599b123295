"""The clock seam: the fake clock moves only when told to and wakes sleepers in deadline order."""

from __future__ import annotations

import asyncio

import pytest

from app.clock import Clock, FakeClock, SystemClock, wait_event


async def _settle() -> None:
    """Let woken tasks run: a few loop iterations, no real time."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_clocks_satisfy_the_protocol() -> None:
    """Both clocks can stand where a Clock is expected."""
    clocks: list[Clock] = [SystemClock(), FakeClock()]
    assert all(isinstance(c.monotonic(), float) for c in clocks)


def test_fake_clock_starts_where_told() -> None:
    """start_time and start_monotonic set the two clocks independently."""
    clock = FakeClock(start_time=1_000.0, start_monotonic=5.0)
    assert (clock.time(), clock.monotonic()) == (1_000.0, 5.0)


def test_advance_moves_both_clocks() -> None:
    """advance() adds the same step to wall and monotonic time."""
    clock = FakeClock(start_time=1_000.0, start_monotonic=5.0)
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic()) == (1_002.5, 7.5)


def test_advance_rejects_negative_steps() -> None:
    """A monotonic clock never goes backwards."""
    with pytest.raises(ValueError, match="negative"):
        FakeClock().advance(-1)


async def test_sleep_waits_for_advance() -> None:
    """A sleeper stays parked until advance() reaches its deadline, not before."""
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(10))
    await _settle()
    clock.advance(9.999)
    await _settle()
    assert not task.done()
    clock.advance(0.001)
    await _settle()
    assert task.done()


async def test_sleepers_wake_in_deadline_order() -> None:
    """One big advance wakes due sleepers ordered by deadline, not by when they slept."""
    clock = FakeClock()
    woke: list[int] = []

    async def sleeper(seconds: int) -> None:
        await clock.sleep(seconds)
        woke.append(seconds)

    tasks = [asyncio.create_task(sleeper(s)) for s in (3, 1, 2, 10)]
    await _settle()
    clock.advance(5)
    await _settle()
    assert woke == [1, 2, 3]
    assert clock.sleepers == 1
    tasks[-1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_sleep_zero_yields_once() -> None:
    """sleep(0) lets another ready task run, without needing advance()."""
    clock = FakeClock()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    await clock.sleep(0)
    assert ran == ["other"]
    await task


async def test_cancelled_sleeper_is_not_counted() -> None:
    """Cancelling a parked sleeper removes it from the pending count and next deadline."""
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(4))
    await _settle()
    assert clock.next_deadline() == 4.0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert (clock.sleepers, clock.next_deadline()) == (0, None)
    clock.advance(10)


async def test_system_clock_sleep_zero_returns() -> None:
    """The real clock's sleep(0) completes immediately and time moves forward."""
    clock = SystemClock()
    before = clock.monotonic()
    await clock.sleep(0)
    assert clock.monotonic() >= before


async def test_wait_event_returns_on_the_event_or_after_the_time() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    waiting = asyncio.create_task(wait_event(event, clock, 5.0))
    await asyncio.sleep(0)
    event.set()
    assert await waiting is True
    late = asyncio.create_task(wait_event(asyncio.Event(), clock, 5.0))
    for _ in range(3):
        await asyncio.sleep(0)
    clock.advance(5.0)
    assert await late is False
