"""The console copy of the audit log: a console that blocks never holds up the audit files or
their close; what it misses is counted and, once it takes lines again, told in one note."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.clock import FakeClock
from app.observability.audit import AuditEvent
from app.observability.console import ConsoleCopy
from app.observability.logging import configure_logging
from app.observability.writer import AuditWriter

ReadEvents = Callable[[Path], list[dict[str, Any]]]
WAIT_S = 10.0       # a bound for what happens at once, so a bug fails instead of hanging


class _BlockingConsole(io.StringIO):
    """A console whose write() blocks until `release` is set (a pipe nobody reads, a paused
    terminal); `writing` is set once a write is blocked, `noted` once a drop note arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()
        self.release = threading.Event()
        self.noted = threading.Event()
        self.writers: set[str] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread().name)
        self.writing.set()
        self.release.wait()
        written = super().write(text)
        if "missed" in text:
            self.noted.set()
        return written


def _line(n: int) -> bytes:
    return orjson.dumps({"ts": "2026-11-23T19:05:01.123Z", "level": "info",
                         "event": "signal_received", "n": n})


def test_a_blocked_console_holds_up_neither_the_file_nor_close(
        tmp_path: Path, read_events: ReadEvents) -> None:
    """The writer unit with a console whose write() blocks on an Event: every event reaches the
    file, close() returns with the file complete, the copies that did not fit the console's
    queue are counted; released, the console gets what was queued and one note."""
    console = _BlockingConsole()
    writer = AuditWriter(tmp_path, console=ConsoleCopy(console, capacity=10))
    writer.submit("20261123", _line(1))
    assert console.writing.wait(WAIT_S)            # line 1 is stuck in the console's write()
    for n in range(2, 101):
        writer.submit("20261123", _line(n))
    try:
        assert writer.close(console_timeout=0.1) is True
        assert [e["n"] for e in read_events(tmp_path / "audit-20261123.jsonl")] == \
            list(range(1, 101))
        stats = writer.statistics()
        # 1 in the blocked write, 10 queued, the other 89 dropped for the console only
        assert (stats.written, stats.write_errors, stats.console_dropped) == (100, 0, 89)
    finally:
        console.release.set()
    assert console.noted.wait(WAIT_S)
    lines = console.getvalue().splitlines()
    assert [orjson.loads(line)["n"] for line in lines[:11]] == list(range(1, 12))
    assert lines[11:] == ["execd: the console fell behind and missed 89 audit lines (89 this "
                          "run); the audit files have every event"]
    assert console.writers == {"execd-audit-console"}


def test_a_console_that_takes_lines_again_is_told_where_it_missed_some(
        tmp_path: Path) -> None:
    """Once the console takes lines again, a note saying how many it missed stands where they
    are missing: before the next line it gets."""
    console = _BlockingConsole()
    copy = ConsoleCopy(console, capacity=1)
    copy.offer(b"first")
    assert console.writing.wait(WAIT_S)
    for text in (b"queued", b"lost-1", b"lost-2"):
        copy.offer(text)
    assert copy.dropped == 2
    console.release.set()
    for _ in range(int(WAIT_S / 0.01)):        # until "queued" is taken off the queue
        if "queued" in console.getvalue():
            break
        threading.Event().wait(0.01)
    copy.offer(b"later")
    assert copy.close(WAIT_S) is True
    assert console.getvalue().splitlines() == [
        "first", "queued",
        "execd: the console fell behind and missed 2 audit lines (2 this run); the audit "
        "files have every event",
        "later"]


def test_emitting_through_the_pipeline_never_waits_for_the_console(
        tmp_path: Path, clock: FakeClock, read_events: ReadEvents) -> None:
    """configure_logging with a pretty console stuck in write(): emitting returns, the file
    gets everything, the drops are in the statistics; the console renders in its own thread."""
    console = _BlockingConsole()
    handle = configure_logging(tmp_path, "INFO", True, clock, console_stream=console,
                               console_queue=5)
    handle.logger.info(AuditEvent.SIGNAL_RECEIVED, n=1)
    assert console.writing.wait(WAIT_S)
    for n in range(2, 51):
        handle.logger.info(AuditEvent.SIGNAL_RECEIVED, n=n)
    try:
        assert handle.close() is True
        assert len(read_events(handle.current_file())) == 50
        assert handle.statistics().console_dropped == 50 - 1 - 5
    finally:
        console.release.set()
    assert console.noted.wait(WAIT_S)
    assert console.writers == {"execd-audit-console"}
    assert "signal_received" in console.getvalue()


def test_a_broken_console_is_given_up_and_the_file_goes_on(
        tmp_path: Path, read_events: ReadEvents) -> None:
    """A console whose write raises (its reader went away) is no longer written to; the file
    gets every event."""

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    writer = AuditWriter(tmp_path, console=ConsoleCopy(Broken()))
    for n in range(1, 21):
        writer.submit("20261123", _line(n))
    assert writer.close() is True
    assert len(read_events(tmp_path / "audit-20261123.jsonl")) == 20


def test_a_console_queue_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="console capacity must be at least 1, not 0"):
        configure_logging(tmp_path, "INFO", None, console_stream=io.StringIO(),
                          console_queue=0)
