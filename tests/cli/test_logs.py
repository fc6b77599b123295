"""``execd logs``: reading, filtering and following the audit files (app/cli/logs.py)."""

from __future__ import annotations

import argparse
import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from app.cli.logs import run_logs
from app.clock import FakeClock
from app.config import PROJECT_ROOT, Settings
from app.observability.audit import AuditEvent
from app.observability.logging import configure_logging

# 2026-11-30T01:00:00Z: "now" for --since, one hour after the day rotated.
NOW = 1_796_000_400.0
DAY1, DAY2 = "audit-20261129.jsonl", "audit-20261130.jsonl"
FOLLOW_TIMEOUT_S = 1.0
START_TIMEOUT_S = 20.0


def _event(ts: str, level: str, event: str, **fields: Any) -> dict[str, Any]:
    return {"ts": ts, "level": level, "event": event, **fields}


# A realistic run across UTC midnight: one signal on BTCUSDT, one on ETHUSDT, some trouble.
EVENTS_DAY1 = [
    _event("2026-11-29T22:00:00.000Z", "info", "daemon_started", version="0.1.0", mode="sim"),
    _event("2026-11-29T22:00:00.500Z", "debug", "balance_query", asset="USDT", available="1000"),
    _event("2026-11-29T23:30:00.000Z", "info", "signal_received", signal_id="s-1",
           symbol="BTCUSDT", source="http"),
    _event("2026-11-29T23:30:00.010Z", "info", "order_submitted", signal_id="s-1",
           symbol="BTCUSDT", client_order_id="x-s1-E", leg="E", side="BUY", quantity="0.01"),
    _event("2026-11-29T23:30:00.050Z", "info", "order_filled", signal_id="s-1", symbol="BTCUSDT",
           client_order_id="x-s1-E", leg="E", exchange_id=101, state="FILLED", adopted=False),
]
EVENTS_DAY2 = [
    _event("2026-11-30T00:30:00.000Z", "info", "order_placed", signal_id="s-2", symbol="ETHUSDT",
           client_order_id="x-s2-S", leg="S", exchange_id=202, state="NEW", adopted=False),
    _event("2026-11-30T00:30:01.000Z", "warning", "order_rejected", signal_id="s-2",
           symbol="ETHUSDT", client_order_id="x-s2-T", leg="T", code=-2021,
           message="Order would immediately trigger.", error_class="INVALID_REQUEST"),
    _event("2026-11-30T00:30:02.000Z", "error", "breaker_opened", group="orders",
           previous="closed", consecutive_opens=1),
    _event("2026-11-30T00:30:03.000Z", "critical", "position_unprotected", signal_id="s-2",
           symbol="ETHUSDT", reason="stop-loss rejected", action="flatten"),
]


def _line(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def _write(path: Path, events: list[dict[str, Any]], *, tail: bytes = b"") -> None:
    with path.open("ab") as file:
        file.write(b"".join(_line(e) + b"\n" for e in events) + tail)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Two days of audit files, the newer one written first (order must come from the names)."""
    directory = tmp_path / "audit"
    directory.mkdir()
    _write(directory / DAY2, EVENTS_DAY2)
    _write(directory / DAY1, EVENTS_DAY1)
    return directory


def _settings(log_dir: Path) -> Settings:
    return Settings.model_validate({"audit": {"log_dir": log_dir}})


def _args(**flags: Any) -> argparse.Namespace:
    defaults: dict[str, Any] = dict(follow=False, event=None, symbol=None, signal=None, level=None,
                                    since=None, json=False)
    return argparse.Namespace(**(defaults | flags))


def _run(log_dir: Path, **flags: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = run_logs(_args(**flags), _settings(log_dir), out=out, now=lambda: NOW)
    return code, out.getvalue()


def _events(log_dir: Path, **flags: Any) -> list[str]:
    """The event names shown with --json and these filters."""
    code, text = _run(log_dir, json=True, **flags)
    assert code == 0
    return [orjson.loads(line)["event"] for line in text.splitlines()]


def _names(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


# --- reading and filtering -------------------------------------------------------------------


def test_without_filters_every_event_is_shown_in_day_order(log_dir: Path) -> None:
    """All events of all files, oldest day first, whatever order the files were written in."""
    assert _events(log_dir) == _names(EVENTS_DAY1 + EVENTS_DAY2)


def test_event_filter_is_an_exact_name(log_dir: Path) -> None:
    """--event order_placed shows that event only; a prefix such as "order" matches nothing."""
    assert _events(log_dir, event="order_placed") == ["order_placed"]
    assert _events(log_dir, event="order") == []


def test_event_filter_takes_a_comma_separated_list(log_dir: Path) -> None:
    """--event a,b shows events named a or b."""
    assert _events(log_dir, event="order_filled, order_rejected") == [
        "order_filled", "order_rejected"]


def test_symbol_filter(log_dir: Path) -> None:
    """--symbol shows only events bound to that symbol."""
    assert _events(log_dir, symbol="ETHUSDT") == [
        "order_placed", "order_rejected", "position_unprotected"]


def test_signal_filter_matches_signal_id(log_dir: Path) -> None:
    """--signal ID shows the events whose signal_id is ID."""
    assert _events(log_dir, signal="s-1") == ["signal_received", "order_submitted", "order_filled"]


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("debug", _names(EVENTS_DAY1 + EVENTS_DAY2)),
        ("warning", ["order_rejected", "breaker_opened", "position_unprotected"]),
        ("ERROR", ["breaker_opened", "position_unprotected"]),
        ("critical", ["position_unprotected"]),
    ],
)
def test_level_is_a_threshold(log_dir: Path, level: str, expected: list[str]) -> None:
    """--level L shows L and every more severe level (case-insensitive)."""
    assert _events(log_dir, level=level) == expected


def test_filters_combine(log_dir: Path) -> None:
    """Every given filter must hold."""
    flags = dict(symbol="ETHUSDT", level="warning", signal="s-2", since="45m")
    assert _events(log_dir, **flags) == ["order_rejected", "position_unprotected"]
    assert _events(log_dir, **flags, event="order_placed") == []


def test_since_age_spans_the_day_files(log_dir: Path) -> None:
    """--since 2h at 01:00 shows yesterday's events after 23:00 and today's."""
    assert _events(log_dir, since="2h") == _names(EVENTS_DAY1[2:] + EVENTS_DAY2)


@pytest.mark.parametrize("age", ["120m", "7200s", "2.0h"])
def test_since_units(log_dir: Path, age: str) -> None:
    """Seconds, minutes and hours (fractions too) mean the same cutoff."""
    assert _events(log_dir, since=age) == _names(EVENTS_DAY1[2:] + EVENTS_DAY2)


def test_since_accepts_an_iso_timestamp(log_dir: Path) -> None:
    """--since with a timestamp (UTC when it has no offset) is an absolute cutoff."""
    assert _events(log_dir, since="2026-11-30T00:30:01") == _names(EVENTS_DAY2[1:])
    assert _events(log_dir, since="2026-11-30T01:30:01+01:00") == _names(EVENTS_DAY2[1:])


def test_since_skips_older_day_files_by_name(log_dir: Path) -> None:
    """A file whose whole UTC day is before the cutoff is not read at all."""
    misdated = _event("2026-11-30T00:45:00.000Z", "info", "time_synced", offset_ms=3)
    _write(log_dir / "audit-20261128.jsonl", [misdated])
    assert "time_synced" not in _events(log_dir, since="1d")
    assert "time_synced" in _events(log_dir, since="3d")


@pytest.mark.parametrize("value", ["10x", "ten minutes", "", "-5m", "2026-13-01"])
def test_bad_since_is_a_usage_error(
    log_dir: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unparseable --since exits 2 with a message naming the flag."""
    assert _run(log_dir, since=value) == (2, "")
    assert "--since" in capsys.readouterr().err


def test_unknown_level_is_a_usage_error(log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--level loud exits 2, naming the flag and the known levels."""
    assert _run(log_dir, level="loud") == (2, "")
    err = capsys.readouterr().err
    assert "--level" in err
    assert "debug, info, warning, error, critical" in err


def test_empty_event_list_is_a_usage_error(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--event with no name in it exits 2."""
    assert _run(log_dir, event=" , ") == (2, "")
    assert "--event" in capsys.readouterr().err


def test_nothing_matching_is_still_success(log_dir: Path) -> None:
    """A filter that matches nothing prints nothing and exits 0."""
    assert _run(log_dir, symbol="DOGEUSDT") == (0, "")


def test_missing_log_dir_is_a_runtime_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without -f, a log directory that does not exist exits 1 with a message."""
    assert _run(tmp_path / "nowhere") == (1, "")
    assert "nowhere" in capsys.readouterr().err


def test_json_prints_the_stored_lines_exactly(tmp_path: Path) -> None:
    """--json echoes each matching line byte for byte, and nothing else."""
    stored = [
        b'{"ts":"2026-11-30T00:00:01.000Z","level":"info","event":"order_placed","symbol":"X"}',
        b'{"ts": "2026-11-30T00:00:02.000Z", "level": "info", "event": "order_placed", "n": 1.50}',
    ]
    (tmp_path / DAY2).write_bytes(b"\n".join(stored) + b"\n")
    assert _run(tmp_path, json=True, event="order_placed") == (0, "\n".join(
        s.decode() for s in stored) + "\n")


def test_lines_that_are_not_json_objects_are_skipped(tmp_path: Path) -> None:
    """Garbage, non-object JSON and a torn last line are skipped silently."""
    good = _event("2026-11-30T00:00:01.000Z", "info", "order_placed")
    (tmp_path / DAY2).write_bytes(
        b"not json\n[1, 2]\n\n" + _line(good) + b'\n{"ts":"2026-11-30T00:00:02.0'
    )
    assert _events(tmp_path) == ["order_placed"]


def test_reads_what_the_audit_pipeline_writes(tmp_path: Path) -> None:
    """Events written by configure_logging (bound context and all) are found and filtered."""
    clock = FakeClock(start_time=NOW - 60)
    try:
        with configure_logging(tmp_path, "DEBUG", False, clock) as handle:
            with structlog.contextvars.bound_contextvars(signal_id="s-9", symbol="BTCUSDT"):
                handle.logger.info(AuditEvent.ORDER_PLACED, client_order_id="x-s9-S", leg="S")
            handle.logger.warning(AuditEvent.RATE_LIMIT_WARNING, bucket="orders_10s", used=250)
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
    assert _events(tmp_path, signal="s-9", since="5m") == ["order_placed"]
    assert _events(tmp_path, level="warning") == ["rate_limit_warning"]


# --- pretty output ---------------------------------------------------------------------------


class _FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_pretty_line_has_time_level_event_then_context_first(log_dir: Path) -> None:
    """One line per event: HH:MM:SS.mmm LEVEL event, the bound context, then the fields."""
    code, text = _run(log_dir, event="order_filled")
    assert code == 0
    banner, line = text.splitlines()
    assert banner == "-- 2026-11-29 (UTC) --"
    assert line.split()[:3] == ["23:30:00.050", "INFO", "order_filled"]
    assert line.split()[3:] == [
        "signal_id=s-1", "symbol=BTCUSDT", "client_order_id=x-s1-E", "leg=E",
        "exchange_id=101", "state=FILLED", "adopted=false",
    ]


def test_pretty_output_marks_each_utc_day(log_dir: Path) -> None:
    """Times carry no date, so a date line opens each UTC day."""
    _, text = _run(log_dir, since="2h", level="info")
    banners = [line for line in text.splitlines() if line.startswith("--")]
    assert banners == ["-- 2026-11-29 (UTC) --", "-- 2026-11-30 (UTC) --"]
    assert len(text.splitlines()) == 2 + 7


def test_pretty_quotes_values_with_spaces(log_dir: Path) -> None:
    """A value with spaces is shown JSON-quoted so the key=value pairs stay parseable."""
    _, text = _run(log_dir, event="order_rejected")
    assert 'message="Order would immediately trigger."' in text
    assert "code=-2021" in text


def test_pretty_is_plain_off_a_terminal_and_coloured_on_one(log_dir: Path) -> None:
    """ANSI colour only when the output is a TTY."""
    _, plain = _run(log_dir)
    assert "\x1b[" not in plain
    tty = _FakeTty()
    assert run_logs(_args(level="critical"), _settings(log_dir), out=tty) == 0
    assert "\x1b[1;31mCRITICAL" in tty.getvalue()
    assert "position_unprotected" in tty.getvalue()


def test_pretty_escapes_terminal_control_characters(tmp_path: Path) -> None:
    """Field values from outside cannot send escape sequences to the operator's terminal."""
    hostile = _event("2026-11-30T00:00:01.000Z", "warning", "signal_rejected",
                     detail="bad\x1b[2Jfield\x9b", **{"k\x1b": "v"})
    _write(tmp_path / DAY2, [hostile])
    _, shown = _run(tmp_path)
    assert "\x1b" not in shown
    assert "\x9b" not in shown
    assert "bad\\u001b[2Jfield\\u009b" in shown


def test_pretty_shows_an_exception_as_an_indented_block(tmp_path: Path) -> None:
    """A traceback in `exception` follows its event line, indented."""
    failed = _event("2026-11-30T00:00:01.000Z", "error", "api_request_failed", method="POST",
                    exception="Traceback (most recent call last):\nValueError: boom")
    _write(tmp_path / DAY2, [failed])
    _, text = _run(tmp_path)
    assert text.splitlines()[1:] == [
        "00:00:01.000 ERROR    api_request_failed     method=POST",
        "    Traceback (most recent call last):",
        "    ValueError: boom",
    ]


# --- following (a real process) --------------------------------------------------------------


class _Follower:
    """``python -m app logs ARGS`` with its stdout lines delivered to a queue."""

    def __init__(self, log_dir: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EXECD_", "BINANCE_"))}
        env["EXECD_AUDIT__LOG_DIR"] = str(log_dir)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "logs", *args],
            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put((time.monotonic(), raw.decode().rstrip("\n")))

    def next_event(self, timeout: float) -> tuple[float, dict[str, Any]]:
        """(arrival time, event) of the next line, or fail after `timeout` seconds."""
        try:
            arrived, line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no line within {timeout} s")
        return arrived, orjson.loads(line)

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; the exit code and stderr."""
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, err.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def follow(tmp_path: Path) -> Iterator[type[_Follower]]:
    """Start followers; kill any still running at the end of the test."""
    started: list[_Follower] = []

    class _Tracked(_Follower):
        def __init__(self, log_dir: Path, *args: str) -> None:
            super().__init__(log_dir, *args)
            started.append(self)

    yield _Tracked
    for follower in started:
        follower.kill()


def _placed(ts: str, n: int) -> dict[str, Any]:
    return _event(ts, "info", "order_placed", symbol="BTCUSDT", client_order_id=f"x-{n}", leg="S")


def test_follow_shows_a_new_matching_event_within_a_second(
    tmp_path: Path, follow: type[_Follower]
) -> None:
    """-f prints a newly appended matching event within 1 s; other events stay hidden."""
    path = tmp_path / DAY1
    _write(path, [_placed("2026-11-29T23:00:00.000Z", 0)])
    follower = follow(tmp_path, "-f", "--event", "order_placed", "--json")
    assert follower.next_event(START_TIMEOUT_S)[1]["client_order_id"] == "x-0"  # now following

    _write(path, [_event("2026-11-29T23:00:01.000Z", "info", "order_filled")])
    _write(path, [_placed("2026-11-29T23:00:02.000Z", 1)])
    written = time.monotonic()
    arrived, event = follower.next_event(FOLLOW_TIMEOUT_S)
    assert event["client_order_id"] == "x-1"  # order_filled, written first, was not shown
    latency = arrived - written
    print(f"follow latency: {latency * 1000:.0f} ms")
    assert latency < FOLLOW_TIMEOUT_S
    assert follower.interrupt() == (0, "")


def test_follow_moves_to_the_next_days_file(tmp_path: Path, follow: type[_Follower]) -> None:
    """When the next UTC day's file appears, its events are followed."""
    _write(tmp_path / DAY1, [_placed("2026-11-29T23:59:59.000Z", 0)])
    follower = follow(tmp_path, "-f", "--event", "order_placed", "--json")
    assert follower.next_event(START_TIMEOUT_S)[1]["client_order_id"] == "x-0"

    _write(tmp_path / DAY1, [_placed("2026-11-29T23:59:59.900Z", 1)])
    _write(tmp_path / DAY2, [_placed("2026-11-30T00:00:00.100Z", 2)])
    assert follower.next_event(FOLLOW_TIMEOUT_S)[1]["client_order_id"] == "x-1"
    assert follower.next_event(FOLLOW_TIMEOUT_S)[1]["client_order_id"] == "x-2"
    _write(tmp_path / DAY2, [_placed("2026-11-30T00:00:01.000Z", 3)])
    assert follower.next_event(FOLLOW_TIMEOUT_S)[1]["client_order_id"] == "x-3"


def test_follow_holds_a_partial_line_until_its_newline(
    tmp_path: Path, follow: type[_Follower]
) -> None:
    """A line being written is printed once, whole, when its newline arrives."""
    path = tmp_path / DAY1
    _write(path, [_placed("2026-11-29T23:00:00.000Z", 0)])
    follower = follow(tmp_path, "-f", "--json")
    follower.next_event(START_TIMEOUT_S)
    line = _line(_placed("2026-11-29T23:00:01.000Z", 1))
    _write(path, [], tail=line[:20])
    # The follower polls every 0.2 s; give it several polls over the torn line.
    with pytest.raises(queue.Empty):
        follower.lines.get(timeout=0.6)
    _write(path, [], tail=line[20:] + b"\n")
    assert follower.next_event(FOLLOW_TIMEOUT_S)[1]["client_order_id"] == "x-1"


def test_follow_waits_for_a_missing_log_dir(tmp_path: Path, follow: type[_Follower]) -> None:
    """With -f a log directory that does not exist yet is waited for."""
    log_dir = tmp_path / "later"
    follower = follow(log_dir, "-f", "--json")
    assert follower.proc.stderr is not None
    assert b"waiting for" in follower.proc.stderr.readline()  # started, and waiting
    log_dir.mkdir()
    _write(log_dir / DAY2, [_placed("2026-11-30T00:00:00.100Z", 1)])
    assert follower.next_event(FOLLOW_TIMEOUT_S)[1]["client_order_id"] == "x-1"


def test_ctrl_c_exits_zero_quietly(tmp_path: Path, follow: type[_Follower]) -> None:
    """SIGINT while following ends the process with 0 and nothing on stderr."""
    _write(tmp_path / DAY2, [_placed("2026-11-30T00:00:00.100Z", 1)])
    follower = follow(tmp_path, "-f", "--json")
    follower.next_event(START_TIMEOUT_S)
    assert follower.interrupt() == (0, "")
