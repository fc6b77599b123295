"""The journal's writer thread: order, errors, cancellation, stop."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest

from app.journal_thread import WriterThread


async def test_work_runs_in_order_on_one_thread_and_errors_reach_the_caller() -> None:
    thread = WriterThread("test-writer")
    ran: list[tuple[int, str]] = []

    def job(n: int) -> int:
        ran.append((n, threading.current_thread().name))
        return n * 10

    def fail() -> None:
        raise KeyError("no such signal")

    futures = [thread.submit(functools.partial(job, n)) for n in range(5)]
    thread.post(lambda: job(5))
    failing = thread.submit(fail)
    assert await asyncio.gather(*futures) == [0, 10, 20, 30, 40]
    with pytest.raises(KeyError, match="no such signal"):
        await failing
    assert ran == [(n, "test-writer") for n in range(6)]
    thread.stop()


async def test_a_caller_that_gave_up_before_its_work_started_skips_it() -> None:
    """As with an executor: cancelled before it started → never runs; the next one does."""
    thread = WriterThread("test-writer")
    release = threading.Event()
    ran: list[str] = []
    busy = thread.submit(lambda: release.wait(5))
    skipped = thread.submit(lambda: ran.append("skipped"))
    after = thread.submit(lambda: ran.append("after"))
    skipped.cancel()
    release.set()
    await busy
    await after
    assert ran == ["after"]
    thread.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        thread.submit(lambda: None)
