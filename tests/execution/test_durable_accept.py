"""A signal runs while its accept's fsync is under way, and nothing of it leaves the process
before that fsync is done (SPEC §5.6; issue 16's end-to-end time): the intake queues it at the
commit, the executor's first write to the exchange waits for `Journal.durable`. A failed fsync
sends nothing: the accept raises and the signal ends FAILED."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from structlog.testing import capture_logs

from app import journal_sync
from app.domain import IntentState, SignalState
from app.execution.executor import Executor
from app.journal import Journal, JournalFailed, NotDurable, SignalRecord
from tests.execution.conftest import make_signal
from tests.simulator import Admin

LONG = {"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010", "leverage": 7,
        "take_profit": "70000.0", "stop_loss": "60000.0"}
PLAIN = {k: v for k, v in LONG.items() if k != "leverage"}   # its first write: the entry


async def test_the_first_order_waits_for_the_accept_to_reach_the_disk(
        executor: Executor, journal: Journal, admin: Admin,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync is held: the signal is handed on at its commit and runs up to its first write
    to the exchange (a leverage change, here), then waits; once the fsync completes, the accept
    returns and the orders go out."""
    gate = threading.Event()
    real = os.fsync

    def held_fsync(fd: int) -> None:
        gate.wait(10)
        real(fd)

    monkeypatch.setattr(journal_sync.os, "fsync", held_fsync)
    committed: list[SignalRecord] = []
    handed_on = asyncio.Event()

    def on_commit(record: SignalRecord) -> None:
        committed.append(record)
        handed_on.set()

    accepting = asyncio.create_task(journal.accept(make_signal(LONG), now=time.time(),
                                                   on_commit=on_commit))
    await asyncio.wait_for(handed_on.wait(), 5)
    with capture_logs() as logs:
        running = asyncio.create_task(executor.execute(committed[0]))
        await asyncio.sleep(0.3)
        assert not accepting.done()
        assert not running.done()
        assert await admin.orders() == []
        assert "leverage_set" not in [e["event"] for e in logs]
        gate.set()
        record, created = await accepting
        final = await running
    assert created
    assert record == committed[0]
    assert final.state is SignalState.DONE, final.reason
    assert [r["type"] for r in await admin.orders()] == [
        "MARKET", "STOP_MARKET", "TAKE_PROFIT_MARKET"]


async def test_a_failed_fsync_sends_nothing_and_fails_the_signal(
        executor: Executor, journal: Journal, admin: Admin,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The accept's fsync fails: the accept raises (not acknowledged), the signal handed on at
    its commit sends no order and ends FAILED saying why; its entry intent, journaled SENDING
    meanwhile, is back to PENDING (never sent); the journal acknowledges no further signal
    until it is reopened (a later fsync proves nothing about the pages the failed one lost)."""
    real = os.fsync
    failures = [OSError(5, "Input/output error")]

    def failing_fsync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real(fd)

    monkeypatch.setattr(journal_sync.os, "fsync", failing_fsync)
    committed: list[SignalRecord] = []
    with pytest.raises(JournalFailed, match="Input/output error"):
        await journal.accept(make_signal(PLAIN), now=time.time(), on_commit=committed.append)
    with capture_logs() as logs:
        final = await executor.execute(committed[0])
    assert final.state is SignalState.FAILED
    assert "fsync failed" in str(final.reason), final.reason
    assert await admin.orders() == []
    assert [e["event"] for e in logs if e["event"].startswith(("order_", "leverage"))] == []
    assert [i.state for i in await journal.intents_for(final.signal.id)] == [
        IntentState.PENDING]
    with pytest.raises(NotDurable):                  # every time: a retry never sends it
        await journal.durable(committed[0].signal.id)
    again = await executor.execute(committed[0])     # handed on once more: still nothing
    assert again.state is SignalState.FAILED
    assert await admin.orders() == []

    refused = make_signal(LONG)
    with pytest.raises(JournalFailed, match="acknowledges nothing more"):
        await journal.accept(refused, now=time.time())
    assert await journal.get_signal(refused.id) is None
