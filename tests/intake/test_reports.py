"""The report publisher (``app/intake/reports.py``) against a journal that fails: the journal is
real; the link is an in-memory stand-in for the NATS connection (its own behaviour is tested
against a real ``nats-server`` in tests/intake/test_nats.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from app.clock import FakeClock
from app.intake.reports import JOURNAL_RETRY_S, ReportPublisher
from app.journal import Journal
from tests.test_journal import make_signal
from tests.test_journal_durability import read_only

MARK = "reports:execd.reports"   # the journal offset that keeps the publisher's mark


class Link:
    """Publishes into a list; `connected` gates `wait_connected`."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.sent: list[tuple[str, str]] = []   # (Nats-Msg-Id, subject)

    async def wait_connected(self) -> None:
        await self.connected.wait()

    async def publish(self, subject: str, payload: bytes, headers: Mapping[str, str]) -> None:
        assert orjson.loads(payload)["id"] in headers["Nats-Msg-Id"]
        self.sent.append((headers["Nats-Msg-Id"], subject))

    async def flush(self) -> None:
        pass


async def until(condition: Any) -> None:
    """Poll `condition` every 5 ms until true, at most 10 s."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("not true within 10 s")


async def test_a_failing_journal_is_waited_out_and_the_reports_go_on(tmp_path: Path) -> None:
    """The journal's disk turns read-only, at start (the mark cannot be written) and again
    while a batch's mark is written after its flush: each time ``journal_failed`` (critical,
    ``source="nats-reports"``) is audited once, the task waits `JOURNAL_RETRY_S` and goes on —
    before, it ended and published nothing more until a restart. Each report is sent once, and
    the mark is written once the disk answers."""
    clock = FakeClock()
    async with Journal(tmp_path / "j.sqlite3") as journal:
        reports = ReportPublisher(journal, clock, structlog.get_logger(),
                                  subject="execd.reports")
        journal.add_listener(reports.on_change)
        link = Link()
        with capture_logs() as logs:
            async with read_only(journal):
                task = asyncio.create_task(reports.run(link))
                await until(lambda: clock.sleepers == 1)         # the first mark refused
            clock.advance(JOURNAL_RETRY_S)
            for _ in range(2000):                                # started: its mark stored
                if await journal.get_offset(MARK) is not None:
                    break
                await asyncio.sleep(0.005)
            record, _ = await journal.accept(make_signal("r-1"), now=clock.time() + 1)
            clock.advance(1.0)                                   # the next mark is due
            async with read_only(journal):
                link.connected.set()
                await until(lambda: clock.sleepers == 1)         # flushed; its mark refused
            assert link.sent == [("r-1:ACCEPTED", "execd.reports.BTCUSDT")]
            clock.advance(JOURNAL_RETRY_S)
            await journal.accept(make_signal("r-2"), now=clock.time() + 2)
            clock.advance(1.0)
            await until(lambda: len(link.sent) == 2)
            await asyncio.sleep(0.05)
        assert not task.done()
        assert link.sent == [("r-1:ACCEPTED", "execd.reports.BTCUSDT"),
                             ("r-2:ACCEPTED", "execd.reports.BTCUSDT")]
        failed = [e for e in logs if e["event"] == "journal_failed"]
        assert [(e["source"], e["log_level"]) for e in failed] == [
            ("nats-reports", "critical")] * 2
        assert "attempt to write a readonly database" in failed[0]["error"]
        await until(lambda: reports.statistics()["buffered"] == 0)
        assert await reports.drain(1.0)
        mark = await journal.get_offset(MARK)
        assert mark is not None
        assert mark >= int(record.updated_at * 1000)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
