"""`Service.submit`, the in-process intake (README: a strategy in the daemon's process), over the
real journal, bus and executor against the simulator."""

from __future__ import annotations

from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from app.domain import SignalError, SignalState
from app.intake.bus import SignalBus
from app.intake.service import IntakeClosed, Service
from app.journal import Journal, JournalFailed
from tests.execution.conftest import make_signal
from tests.simulator import Admin
from tests.test_journal_durability import read_only

ENTRY = {"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010"}


async def test_submit_journals_queues_and_runs_a_signal_once(
        service: Service, journal: Journal, bus: SignalBus, admin: Admin) -> None:
    """A submitted signal is journaled ACCEPTED (source kept), runs to DONE with one order;
    the same id submitted again returns its record and runs nothing."""
    signal = replace(make_signal(ENTRY), source="strategy-a")
    record = await service.submit(signal)
    assert (record.signal.id, record.state) == (signal.id, SignalState.ACCEPTED)
    assert await bus.drain(30)
    again = await service.submit(signal)
    assert (again.signal.id, again.state) == (signal.id, SignalState.DONE)
    assert await bus.drain(30)
    assert len(await admin.orders()) == 1


async def test_submit_refuses_what_accept_refuses(
        service: Service, journal: Journal, bus: SignalBus) -> None:
    """A symbol that does not trade: `SignalError` naming it. A read-only journal:
    `JournalFailed`, audited once (``journal_failed``, the signal's source). Intake closed:
    `IntakeClosed`. Nothing is journaled or queued for any of them."""
    with pytest.raises(SignalError, match="symbol"):
        await service.submit(make_signal({**ENTRY, "symbol": "NOPEUSDT"}))
    failing = replace(make_signal(ENTRY), source="strategy-b")
    with capture_logs() as logs:
        async with read_only(journal):
            with pytest.raises(JournalFailed, match="attempt to write a readonly database"):
                await service.submit(failing)
    assert [(e["event"], e["source"], e["log_level"]) for e in logs
            if e["event"].startswith("journal_")] == [
        ("journal_failed", "strategy-b", "critical")]
    assert await journal.get_signal(failing.id) is None
    service.close()
    with pytest.raises(IntakeClosed):
        await service.submit(make_signal(ENTRY))
    assert bus.snapshot().pending == 0
