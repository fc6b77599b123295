"""``execd logs``: read, filter and follow the audit log (SPEC §8, §11.1).

The audit files are ``audit-YYYYMMDD.jsonl`` in ``audit.log_dir``, one per UTC day; reading them
in name order is reading them in time order. Filters combine (AND): ``--event`` (one name or a
comma-separated list), ``--symbol``, ``--signal`` (the ``signal_id``), ``--level`` (that level and
above) and ``--since`` (an age such as ``90s``, ``10m``, ``2h``, ``1d``, or an ISO timestamp; UTC
when it has no offset). ``--json`` prints the matching lines exactly as stored and nothing else;
otherwise each event is one line ``HH:MM:SS.mmm LEVEL event key=value …`` (UTC), context first,
coloured only on a terminal.

A line that is not a JSON object (a torn line still being written, a hand edit) is skipped. With
``-f`` a last line without its newline is held until the newline arrives, and the newest file is
polled every `POLL_INTERVAL_S` seconds; when a newer day's file appears the current one is read
to its end and the newer one is followed. This is the CLI's own process, so it simply sleeps
between polls; the daemon is never involved.

Exit codes: 0 ok (even when nothing matched; Ctrl-C while following), 1 runtime failure (no log
directory, unreadable file), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import orjson

from app.config import Settings
from app.domain import format_timestamp

__all__ = ["POLL_INTERVAL_S", "LogFilter", "UsageError", "parse_since", "run_logs"]

#: Seconds between two looks at the log directory while following.
POLL_INTERVAL_S = 0.2

LEVELS = ("debug", "info", "warning", "error", "critical")
_RANK = {name: rank for rank, name in enumerate(LEVELS)} | {"warn": 2, "fatal": 4}
_CONTEXT = ("signal_id", "symbol", "client_order_id", "leg")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_FILE = re.compile(r"audit-(\d{8})\.jsonl")
_CHUNK = 1 << 20
_PLAIN = re.compile(r"[\w.:/@+,-]+")
# ANSI SGR codes: dim, green, yellow, red, bold red.
_LEVEL_COLORS = {"debug": "2", "info": "32", "warning": "33", "error": "31", "critical": "1;31"}


class UsageError(ValueError):
    """A flag value is unusable; the message names the flag."""


def parse_since(value: str, now: float) -> float:
    """The epoch cutoff for ``--since``: `now` minus an age (``90s``, ``10m``, ``2h``, ``1d``) or
    an ISO-8601 timestamp (UTC unless it carries an offset). Raises UsageError."""
    text = value.strip()
    if match := _AGE.fullmatch(text):
        return now - float(match[1]) * _UNITS[match[2]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since: expected an age like 90s, 10m, 2h, 1d or an ISO timestamp (got {value!r})"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which events to show; every given criterion must hold. `since` is an epoch cutoff."""

    events: frozenset[str] | None = None
    symbol: str | None = None
    signal: str | None = None
    min_level: int = 0
    since: float | None = None
    _since_ts: str | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.since is not None:
            # `ts` is always YYYY-MM-DDTHH:MM:SS.mmmZ, so the strings compare as the instants do.
            object.__setattr__(self, "_since_ts", format_timestamp(self.since))

    @classmethod
    def from_args(cls, args: argparse.Namespace, now: float) -> LogFilter:
        """Build the filter from parsed ``execd logs`` flags. Raises UsageError."""
        events = None
        if args.event is not None:
            events = frozenset(name.strip() for name in args.event.split(",") if name.strip())
            if not events:
                raise UsageError("--event: expected an event name or a comma-separated list")
        min_level = 0
        if args.level is not None:
            rank = _RANK.get(args.level.strip().lower())
            if rank is None:
                raise UsageError(
                    f"--level: unknown level {args.level!r} (expected one of {', '.join(LEVELS)})"
                )
            min_level = rank
        since = None if args.since is None else parse_since(args.since, now)
        return cls(events, args.symbol, args.signal, min_level, since)

    def wants_day(self, day: str) -> bool:
        """False when the whole UTC day `day` (``YYYYMMDD``) is before the ``since`` cutoff."""
        if self.since is None:
            return True
        start = datetime(int(day[:4]), int(day[4:6]), int(day[6:8]), tzinfo=UTC)
        return (start + timedelta(days=1)).timestamp() > self.since

    def matches(self, event: Mapping[str, Any]) -> bool:
        if self.events is not None and event.get("event") not in self.events:
            return False
        if self.symbol is not None and event.get("symbol") != self.symbol:
            return False
        if self.signal is not None and event.get("signal_id") != self.signal:
            return False
        if self.min_level and _RANK.get(str(event.get("level", "")).lower(), -1) < self.min_level:
            return False
        return self._since_ts is None or str(event.get("ts", "")) >= self._since_ts


def run_logs(
    args: argparse.Namespace,
    settings: Settings,
    *,
    out: TextIO | None = None,
    now: Callable[[], float] | None = None,
) -> int:
    """Run ``execd logs`` with parsed `args`; print to `out` (stdout). Returns the exit code.

    `now` gives the epoch seconds ``--since AGE`` counts back from (``time.time``). With
    ``args.follow`` this returns only on Ctrl-C (0) or a runtime failure (1).
    """
    stream = sys.stdout if out is None else out
    try:
        log_filter = LogFilter.from_args(args, (now or time.time)())
    except UsageError as exc:
        print(f"execd logs: {exc}", file=sys.stderr)
        return 2
    printer = _Printer(stream, raw=args.json, color=_isatty(stream))
    reader = _Reader(settings.audit.log_dir, log_filter, printer)
    try:
        if args.follow:
            reader.follow()
            return 0
        return reader.read_all()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        _silence(stream)  # the reader went away (``| head``): nothing left to say
        return 0
    except OSError as exc:
        print(f"execd logs: cannot read {settings.audit.log_dir}: {exc}", file=sys.stderr)
        return 1


class _Cursor:
    """A read position in one audit file; a last line without its newline waits in `pending`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._pending = b""

    def lines(self) -> Iterator[bytes]:
        """The complete lines appended since the last call (a vanished file has none)."""
        try:
            file = self.path.open("rb")
        except FileNotFoundError:
            return
        with file:
            if os.fstat(file.fileno()).st_size < self._offset:  # truncated: start again
                self._offset, self._pending = 0, b""
            file.seek(self._offset)
            while chunk := file.read(_CHUNK):
                self._offset += len(chunk)
                *complete, self._pending = (self._pending + chunk).split(b"\n")
                yield from complete

    def rest(self) -> bytes:
        """The held partial line, given up on (the file is finished)."""
        rest, self._pending = self._pending, b""
        return rest


class _Reader:
    def __init__(self, log_dir: Path, log_filter: LogFilter, printer: _Printer) -> None:
        self._dir = log_dir
        self._filter = log_filter
        self._printer = printer

    def read_all(self) -> int:
        if not self._dir.is_dir():
            print(f"execd logs: no audit log directory {self._dir}", file=sys.stderr)
            return 1
        for path in self._files():
            if self._filter.wants_day(_day(path)):
                self._drain(_Cursor(path), final=True)
        return 0

    def follow(self) -> None:
        """Print what matches, then keep printing new matching lines; returns only by raising."""
        if not self._dir.is_dir():
            print(f"execd logs: waiting for {self._dir} to appear", file=sys.stderr)
        cursor: _Cursor | None = None
        while True:
            files = self._files() if self._dir.is_dir() else []
            if cursor is None:
                for path in files[:-1]:  # the past days, read once
                    if self._filter.wants_day(_day(path)):
                        self._drain(_Cursor(path), final=True)
                cursor = _Cursor(files[-1]) if files else None
            newer = [path for path in files if cursor and path.name > cursor.path.name]
            if cursor is not None:
                self._drain(cursor, final=bool(newer))
            if newer:  # the day rotated: the old file is complete, move to the next one
                cursor = _Cursor(newer[0])
                continue
            time.sleep(POLL_INTERVAL_S)

    def _files(self) -> list[Path]:
        return sorted(p for p in self._dir.iterdir() if _FILE.fullmatch(p.name) and p.is_file())

    def _drain(self, cursor: _Cursor, *, final: bool) -> None:
        for line in cursor.lines():
            self._show(line)
        if final:
            self._show(cursor.rest())
        self._printer.flush()

    def _show(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            return
        if isinstance(event, dict) and self._filter.matches(event):
            self._printer.emit(line, event)


class _Printer:
    """Raw lines (``--json``) or one readable line per event, with a date line per UTC day."""

    def __init__(self, out: TextIO, *, raw: bool, color: bool) -> None:
        self._out = out
        self._raw = raw
        self._color = color
        self._day: str | None = None

    def emit(self, line: bytes, event: Mapping[str, Any]) -> None:
        if self._raw:
            self._out.write(line.decode() + "\n")
            return
        ts = str(event.get("ts", ""))
        if ts[:10] != self._day:
            self._day = ts[:10]
            self._out.write(self._paint(f"-- {_clean(self._day) or '?'} (UTC) --", "2") + "\n")
        self._out.write(self.render(event) + "\n")

    def render(self, event: Mapping[str, Any]) -> str:
        level = str(event.get("level", "?")).lower()
        head = [
            self._paint(_clean(str(event.get("ts", ""))[11:23]).ljust(12), "2"),
            self._paint(_clean(level.upper()).ljust(8), _LEVEL_COLORS.get(level, "0")),
            self._paint(_clean(str(event.get("event", ""))).ljust(22), "1"),
        ]
        keys = [k for k in _CONTEXT if k in event]
        keys += [k for k in event if k not in _CONTEXT and k not in ("ts", "level", "event")]
        pairs = [
            f"{self._paint(_clean(str(k)), '36')}={_value(event[k])}"
            for k in keys
            if k != "exception"
        ]
        text = " ".join(head + pairs).rstrip()
        if "exception" in event:  # a traceback reads best as the block it is
            lines = str(event["exception"]).splitlines()
            text += "".join("\n    " + _clean(line) for line in lines)
        return text

    def flush(self) -> None:
        self._out.flush()

    def _paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self._color else text


def _value(value: object) -> str:
    """A field value on one line: bare when plain, else JSON; never a terminal control code."""
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return value
    if isinstance(value, bool) or value is None:
        return orjson.dumps(value).decode()
    if isinstance(value, int | float):
        return repr(value)
    try:
        return _clean(orjson.dumps(value, default=str).decode())
    except TypeError:  # e.g. an int beyond 64 bits inside a list
        return _clean(repr(value))


def _clean(text: str) -> str:
    """`text` with every non-printable character escaped (log fields may come from outside)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def _day(path: Path) -> str:
    return path.name[6:14]


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False


def _silence(stream: TextIO) -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    if stream is sys.stdout:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
