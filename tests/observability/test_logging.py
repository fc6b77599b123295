"""The audit pipeline end to end: structlog → redaction → writer thread → daily JSONL files."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from app.clock import FakeClock
from app.domain import format_timestamp
from app.observability.audit import AuditEvent
from app.observability.logging import configure_logging, get_audit_logger

ReadEvents = Callable[[Path], list[dict[str, Any]]]


class _FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_timestamp_is_utc_iso_with_milliseconds() -> None:
    """ts is UTC ISO-8601 with exactly three fraction digits and a Z."""
    assert format_timestamp(1_795_460_701.123) == "2026-11-23T19:05:01.123Z"


def test_events_land_in_the_file_of_their_utc_day(
    tmp_path: Path, clock: FakeClock, read_events: ReadEvents
) -> None:
    """An emitted event is one JSON line with ts, level and event, in audit-YYYYMMDD.jsonl."""
    with configure_logging(tmp_path, "INFO", False, clock) as handle:
        handle.logger.info(AuditEvent.DAEMON_STARTED, mode="sim")
    expected = {"ts": "2026-11-23T19:05:01.123Z", "level": "info", "event": "daemon_started"}
    assert read_events(tmp_path / "audit-20261123.jsonl") == [{**expected, "mode": "sim"}]


def test_current_file_names_todays_file(tmp_path: Path, clock: FakeClock) -> None:
    """LogHandle.current_file() is the file today's events go to."""
    with configure_logging(tmp_path, "INFO", False, clock) as handle:
        assert handle.current_file() == tmp_path / "audit-20261123.jsonl"


def test_bound_context_is_merged(tmp_path: Path, clock: FakeClock, read_events: ReadEvents) -> None:
    """Context bound with structlog contextvars appears in every event."""
    with (
        configure_logging(tmp_path, "INFO", False, clock) as handle,
        structlog.contextvars.bound_contextvars(signal_id="s-1", symbol="BTCUSDT"),
    ):
        handle.logger.info(AuditEvent.ORDER_PLACED, leg="E")
    (event,) = read_events(handle.current_file())
    assert (event["signal_id"], event["symbol"], event["leg"]) == ("s-1", "BTCUSDT", "E")


def test_events_below_the_level_are_dropped(
    tmp_path: Path, clock: FakeClock, read_events: ReadEvents
) -> None:
    """At WARNING, info events are not written and warnings are."""
    with configure_logging(tmp_path, "WARNING", False, clock) as handle:
        handle.logger.info(AuditEvent.TIME_SYNCED)
        handle.logger.warning(AuditEvent.RATE_LIMIT_WARNING)
    assert [e["event"] for e in read_events(handle.current_file())] == ["rate_limit_warning"]


def test_close_leaves_every_event_on_disk(
    tmp_path: Path, clock: FakeClock, read_events: ReadEvents
) -> None:
    """After close(), N of N emitted events are in the file, in emission order."""
    count = 5_000
    handle = configure_logging(tmp_path, "INFO", False, clock)
    for n in range(count):
        handle.logger.info(AuditEvent.SIGNAL_RECEIVED, n=n)
    handle.close()
    assert [e["n"] for e in read_events(handle.current_file())] == list(range(count))
    assert handle.statistics().written == count


async def test_aclose_flushes_from_the_event_loop(
    tmp_path: Path, clock: FakeClock, read_events: ReadEvents
) -> None:
    """async with / aclose() also leaves every event on disk."""
    async with configure_logging(tmp_path, "INFO", False, clock) as handle:
        handle.logger.info(AuditEvent.DAEMON_STOPPED)
    assert len(read_events(handle.current_file())) == 1


def test_a_day_change_starts_a_new_file(
    tmp_path: Path, read_events: ReadEvents
) -> None:
    """Events on either side of UTC midnight go to two files, named by their own day."""
    clock = FakeClock(start_time=1_795_478_399.5)  # 2026-11-23T23:59:59.500Z
    with configure_logging(tmp_path, "INFO", False, clock) as handle:
        handle.logger.info(AuditEvent.TIME_SYNCED, n=1)
        clock.advance(1.0)
        handle.logger.info(AuditEvent.TIME_SYNCED, n=2)
    before = read_events(tmp_path / "audit-20261123.jsonl")
    after = read_events(tmp_path / "audit-20261124.jsonl")
    assert ([e["n"] for e in before], [e["n"] for e in after]) == ([1], [2])
    assert after[0]["ts"] == "2026-11-24T00:00:00.500Z"


class _StuckConsole(io.StringIO):
    """A console whose writes block until released, recording which thread wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()
        self.release = threading.Event()
        self.writers: set[str] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread().name)
        self.writing.set()
        self.release.wait(timeout=10)
        return super().write(text)


def test_emitting_never_waits_for_io(
    tmp_path: Path, clock: FakeClock, read_events: ReadEvents
) -> None:
    """With the console stuck in I/O, emitting still returns; the console is written by its own
    thread (tests/observability/test_console.py: nor does it hold up the file)."""
    console = _StuckConsole()
    handle = configure_logging(tmp_path, "INFO", True, clock, console_stream=console)
    handle.logger.info(AuditEvent.SIGNAL_RECEIVED, n=1)
    assert console.writing.wait(timeout=10)
    for n in range(2, 101):
        handle.logger.info(AuditEvent.SIGNAL_RECEIVED, n=n)
    console.release.set()
    handle.close()
    assert console.writers == {"execd-audit-console"}
    assert len(read_events(handle.current_file())) == 100


def test_old_files_are_pruned_by_retention(tmp_path: Path, clock: FakeClock) -> None:
    """Opening today's file deletes audit files older than retention_days, nothing else."""
    old, recent, other = (
        tmp_path / "audit-20261001.jsonl",
        tmp_path / "audit-20261120.jsonl",
        tmp_path / "notes.txt",
    )
    for path in (old, recent, other):
        path.write_text("x\n")
    with configure_logging(tmp_path, "INFO", False, clock, retention_days=30) as handle:
        handle.logger.info(AuditEvent.DAEMON_STARTED)
    assert (old.exists(), recent.exists(), other.exists()) == (False, True, True)


def test_events_after_close_are_counted_not_written(tmp_path: Path, clock: FakeClock) -> None:
    """An event emitted after close() is dropped and counted, and nothing raises."""
    handle = configure_logging(tmp_path, "INFO", False, clock)
    handle.close()
    handle.logger.info(AuditEvent.ALERT)
    assert handle.statistics().dropped == 1


def test_console_gets_json_lines_when_not_a_tty(tmp_path: Path, clock: FakeClock) -> None:
    """console=auto on a non-TTY stream copies each event as a JSON line."""
    stream = io.StringIO()
    with configure_logging(tmp_path, "INFO", None, clock, console_stream=stream) as handle:
        handle.logger.info(AuditEvent.DAEMON_STARTED, mode="sim")
    assert orjson.loads(stream.getvalue())["event"] == "daemon_started"


def test_console_is_pretty_on_a_tty(tmp_path: Path, clock: FakeClock) -> None:
    """console=auto on a TTY renders with structlog's ConsoleRenderer, not JSON."""
    stream = _FakeTty()
    with configure_logging(tmp_path, "INFO", None, clock, console_stream=stream) as handle:
        handle.logger.info(AuditEvent.DAEMON_STARTED, mode="sim")
    text = stream.getvalue()
    assert "daemon_started" in text
    assert not text.startswith("{")


def test_console_can_be_disabled(tmp_path: Path, clock: FakeClock) -> None:
    """console=False writes nothing to the console stream but still writes the file."""
    stream = _FakeTty()
    with configure_logging(tmp_path, "INFO", False, clock, console_stream=stream) as handle:
        handle.logger.info(AuditEvent.DAEMON_STARTED)
    assert stream.getvalue() == ""
    assert handle.current_file().is_file()


def test_get_audit_logger_uses_the_current_configuration(
    tmp_path: Path, clock: FakeClock, read_events: ReadEvents
) -> None:
    """A logger from get_audit_logger() writes through the configured pipeline."""
    with configure_logging(tmp_path, "INFO", False, clock) as handle:
        get_audit_logger().info(AuditEvent.ALERT, reason="test")
    assert read_events(handle.current_file())[0]["reason"] == "test"


def test_unknown_level_is_rejected(tmp_path: Path) -> None:
    """configure_logging refuses a level name it does not know."""
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging(tmp_path, "LOUD", False)


def test_taps_see_every_event_redacted_and_a_broken_tap_is_removed(
        tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]) -> None:
    """A tap gets each event that passes the level, after redaction; one that raises is
    dropped and the event is still written."""
    seen: list[dict[str, object]] = []
    with configure_logging(tmp_path, "INFO", console=False, clock=clock,
                           secrets=["hunter2-secret"]) as handle:
        handle.add_tap(lambda event: seen.append(dict(event)))

        def broken(event: object) -> None:
            raise RuntimeError("boom")

        handle.add_tap(broken)
        handle.logger.debug("order_placed", note="below the level")
        handle.logger.info("order_placed", note="key hunter2-secret")
        handle.logger.info("order_filled")
    assert [e["event"] for e in seen] == ["order_placed", "order_filled"]
    assert "hunter2-secret" not in str(seen)
    assert "audit tap" in capsys.readouterr().err
    lines = handle.current_file().read_bytes().splitlines()
    assert len(lines) == 2


def test_the_pretty_console_escapes_control_characters() -> None:
    """A value holding an escape sequence or a newline (a signal id, an exchange message)
    cannot drive the operator's terminal or fake a log line; a traceback keeps its lines."""
    from app.observability.logging import _PrettyConsole

    line = _PrettyConsole(colors=False)({
        "ts": "2026-12-03T00:00:00.000Z", "level": "warning", "event": "signal_rejected",
        "signal_id": "evil\x1b[2J\x1b[31m", "message": "one\nfake_event level=critical",
        "exception": "Traceback\n  File x\x1b[0m"})
    assert "\x1b" not in line
    assert "evil\\x1b[2J\\x1b[31m" in line
    assert "one\nfake_event" not in line
    assert "x0afake_event" in line
    assert "Traceback\n  File x\\x1b[0m" in line
