"""Audit logging: structlog configured for JSON lines on disk, written off the event loop.

`configure_logging()` installs this processor chain (structlog's configuration is process-global
by nature; nothing else here is):

1. ``merge_contextvars``: bound context (``signal_id``, ``symbol``, ``client_order_id``, ``leg``)
2. ``add_log_level``: the ``level`` key (``info``, ``warning``, ...)
3. a timestamper: ``ts`` as UTC ISO-8601 with milliseconds, from the injected clock's ``time()``
4. ``format_exc_info``: ``exc_info`` becomes an ``exception`` string (so it can be redacted)
5. the `Redactor` (``redact.py``): keys, secrets, signatures, ``Authorization`` values
6. the taps: listeners registered with `LogHandle.add_tap` (metrics, the error monitor) see each
   redacted event dict, synchronously on the emitting thread — they must be cheap and must not
   raise (a tap that raises is reported on stderr once and removed);
7. rendering with orjson to one JSON line (``ts``, ``level``, ``event`` first), handed to the
   `AuditWriter` thread (``writer.py``), which appends it to ``audit-YYYYMMDD.jsonl`` for the UTC
   day of ``ts`` and hands a copy to the console (`ConsoleCopy`, ``console.py``).

Console: ``console=None`` ("auto") is pretty on a TTY and JSON lines otherwise; ``True`` is always
pretty; ``False`` turns it off. The console copy has its own bounded queue and thread: a console
that blocks (a full pipe nobody reads) loses copies, counted in `LogHandle.statistics()`
(``console_dropped``), never audit lines, and never delays the files or shutdown. Emit events
through `LogHandle.logger` (bound once, the cheap path) or `get_audit_logger()`:
``log.info(AuditEvent.DAEMON_STARTED, mode="sim")``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO, cast

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from app.clock import Clock, SystemClock
from app.domain import format_timestamp
from app.observability.console import DEFAULT_CAPACITY, ConsoleCopy
from app.observability.redact import Redactor
from app.observability.writer import AuditWriter, WriterStats, audit_file_name

__all__ = [
    "AuditLogger",
    "EventTap",
    "LogHandle",
    "configure_logging",
    "get_audit_logger",
]

AuditLogger = FilteringBoundLogger
#: A listener of every audit event that passes the level filter (see `LogHandle.add_tap`).
EventTap = Callable[[Mapping[str, Any]], None]

_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


class LogHandle:
    """The configured audit log: its logger, its files, and the writer thread to close.

    `close()` (or leaving the ``with``/``async with`` block) blocks until every event emitted so
    far is on disk (bounded: see `AuditWriter.close`); `aclose()` does the same from a worker
    thread so the event loop stays free.
    """

    def __init__(self, logger: AuditLogger, writer: AuditWriter, clock: Clock,
                 taps: _Taps | None = None) -> None:
        self.logger = logger
        self._writer = writer
        self._clock = clock
        self._taps = taps if taps is not None else _Taps()

    def add_tap(self, tap: EventTap) -> None:
        """Call ``tap(event)`` for every event emitted from now on (after redaction, before
        rendering; ``event`` has ``event``, ``level``, ``ts`` and the fields)."""
        self._taps.add(tap)

    def remove_tap(self, tap: EventTap) -> None:
        self._taps.remove(tap)

    @property
    def log_dir(self) -> Path:
        return self._writer.log_dir

    def file_for(self, epoch: float) -> Path:
        """The audit file that an event stamped at `epoch` lands in."""
        day = format_timestamp(epoch)[:10].replace("-", "")
        return self._writer.log_dir / audit_file_name(day)

    def current_file(self) -> Path:
        """The audit file for events emitted now."""
        return self.file_for(self._clock.time())

    def statistics(self) -> WriterStats:
        return self._writer.statistics()

    def close(self) -> bool:
        """Flush and close; True when every event emitted is on disk."""
        return self._writer.close()

    async def aclose(self) -> bool:
        return await asyncio.to_thread(self._writer.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"LogHandle({self._writer!r})"


def configure_logging(
    log_dir: Path,
    level: str = "INFO",
    console: bool | None = None,
    clock: Clock | None = None,
    *,
    secrets: Iterable[str] = (),
    retention_days: int | None = None,
    console_stream: TextIO | None = None,
    console_queue: int = DEFAULT_CAPACITY,
) -> LogHandle:
    """Configure structlog for the audit log and start its writer thread.

    `level` is a level name (DEBUG … CRITICAL); lower events cost almost nothing. `secrets` are
    literal values (API key, secret, token) masked wherever they appear. `console_stream`
    defaults to ``sys.stderr``; `console_queue` is how many lines wait for a slow console before
    its copies are dropped. Raises ValueError for an unknown level or a `console_queue` below 1.
    Creates `log_dir` lazily, in the writer thread. Call `LogHandle.close()` before the process
    exits.
    """
    threshold = _LEVELS.get(level.upper())
    if threshold is None:
        raise ValueError(f"unknown log level {level!r}")
    clock = SystemClock() if clock is None else clock
    stream = sys.stderr if console_stream is None else console_stream
    pretty = None
    if console is not False and (console is True or stream.isatty()):
        pretty = _PrettyConsole(colors=stream.isatty())
    taps = _Taps()
    copy = None if console is False else ConsoleCopy(stream, pretty=pretty,
                                                     capacity=console_queue)
    writer = AuditWriter(log_dir, retention_days=retention_days, console=copy)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _Timestamper(clock),
            structlog.processors.format_exc_info,
            Redactor(secrets),
            taps,
            _Renderer(writer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_SinkFactory(writer),
        # Not cached: tests and restarts reconfigure, and the hot path binds once anyway.
        cache_logger_on_first_use=False,
    )
    return LogHandle(get_audit_logger(), writer, clock, taps)


def get_audit_logger() -> AuditLogger:
    """A logger bound to the current configuration (call after `configure_logging`).

    Bind it once and keep it: calls through structlog's lazy proxy cost several times more.
    """
    return cast(AuditLogger, structlog.get_logger().bind())


class _Timestamper:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event_dict["ts"] = format_timestamp(self._clock.time())
        return event_dict


class _Taps:
    """The tap processor: hands each event to the registered listeners, unchanged."""

    def __init__(self) -> None:
        self._taps: tuple[EventTap, ...] = ()

    def add(self, tap: EventTap) -> None:
        self._taps = (*self._taps, tap)

    def remove(self, tap: EventTap) -> None:
        self._taps = tuple(t for t in self._taps if t is not tap)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        for tap in self._taps:
            try:
                tap(event_dict)
            except Exception as error:  # a broken listener must not lose the audit event
                self.remove(tap)
                print(f"execd: audit tap {tap!r} removed after {error!r}", file=sys.stderr)
        return event_dict


class _Renderer:
    """Render to one JSON line and return the writer's arguments (structlog passes a dict
    returned by the last processor as keyword arguments to the logger method)."""

    def __init__(self, writer: AuditWriter) -> None:
        self._keep_dict = writer.wants_event_dict

    def __call__(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> dict[str, Any]:
        ts = str(event_dict.pop("ts"))
        ordered = {
            "ts": ts,
            "level": event_dict.pop("level", method_name),
            "event": event_dict.pop("event", ""),
            **event_dict,
        }
        try:
            line = orjson.dumps(ordered, option=_JSON_OPTIONS)
        except TypeError:
            # e.g. an int beyond 64 bits: keep the event, as strings (already redacted).
            line = orjson.dumps({str(k): str(v) for k, v in ordered.items()})
        day = ts[:10].replace("-", "")
        return {"day": day, "line": line, "event": ordered if self._keep_dict else None}


class _Sink:
    """What structlog calls a logger: every level method just queues the rendered line."""

    def __init__(self, writer: AuditWriter) -> None:
        self._writer = writer

    def msg(self, day: str, line: bytes, event: Mapping[str, Any] | None) -> None:
        self._writer.submit(day, line, event)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _SinkFactory:
    def __init__(self, writer: AuditWriter) -> None:
        self._sink = _Sink(writer)

    def __call__(self, *args: Any) -> _Sink:
        return self._sink


class _PrettyConsole:
    """structlog's ConsoleRenderer over the already-redacted event (runs in the console
    thread)."""

    def __init__(self, *, colors: bool) -> None:
        self._renderer = structlog.dev.ConsoleRenderer(colors=colors, timestamp_key="ts")

    def __call__(self, event: Mapping[str, Any]) -> str:
        return self._renderer(None, "msg", {
            k: _printable(v, _CONTROL_BUT_LINES if k in _MULTILINE else _CONTROL)
            for k, v in event.items()})


#: C0 controls (ESC included), DEL and C1 controls: a value holding them (a signal id, an
#: exchange message) must not drive the operator's terminal, nor fake a line of its own.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Fields whose lines are the point (a traceback): escaped but for newlines and tabs.
_MULTILINE = frozenset({"exception", "stack"})
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(value: Any, control: re.Pattern[str]) -> Any:
    """A string value with the characters ``control`` matches escaped (``\\x1b``); other
    values as they are."""
    if isinstance(value, str) and control.search(value):
        return control.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    return value
