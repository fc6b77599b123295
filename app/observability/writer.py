"""The audit writer thread: the only place that touches the audit files.

The event loop renders an event to bytes and calls `AuditWriter.submit()`, which only puts it on
a queue. A dedicated thread takes events off in batches (it lets them gather for `GATHER_S`
after the first of one), appends each to the file of its UTC day (``audit-YYYYMMDD.jsonl``, so
a day change starts a new file), hands it to the console copy
(`ConsoleCopy`, ``console.py``: a bounded queue and a thread of its own, so a console that blocks
never stops the files) and flushes once per batch. `close()` drains the queue, flushes, fsyncs
and joins the thread, then closes the console copy: after it returns every submitted event is on
disk — unless the disk itself stalled past `close`'s deadline (10 s), when it returns False
rather than hold the process forever.

Trade-off: the queue is unbounded. A stalled disk grows memory instead of dropping audit events or
blocking the loop; losing the audit trail silently would be worse for an operator.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import IO, Any

from app.observability.console import ConsoleCopy

__all__ = ["CLOSE_TIMEOUT_S", "CONSOLE_CLOSE_TIMEOUT_S", "GATHER_S", "AuditWriter", "WriterStats",
           "audit_file_name"]

_BATCH = 512
#: How long the thread lets events gather after the first of a batch (the file lags by that).
GATHER_S = 0.005
#: How long `close()` waits for the files (a drain, flush and fsync take milliseconds).
CLOSE_TIMEOUT_S = 10.0
#: How long `close()` then waits for the console copy: a blocked console is left behind.
CONSOLE_CLOSE_TIMEOUT_S = 1.0

# (UTC day as YYYYMMDD, rendered JSON line, event dict for a pretty console or None)
_Item = tuple[str, bytes, Mapping[str, Any] | None]


def audit_file_name(day: str) -> str:
    """The file name for UTC day `day` (``YYYYMMDD``)."""
    return f"audit-{day}.jsonl"


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters of the writer: events on disk, dropped after close, failed writes, and the
    console copies dropped because the console was behind (the files have those events)."""

    written: int
    dropped: int
    write_errors: int
    last_error: str | None
    console_dropped: int


class AuditWriter:
    """Append rendered events to daily files from a background thread, and hand each to the
    console copy.

    `console` receives a copy of every line written (or None: no console); the writer owns it
    and closes it. Audit files older than `retention_days` are deleted when a new day's file is
    opened.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        retention_days: int | None = None,
        console: ConsoleCopy | None = None,
    ) -> None:
        self.log_dir = log_dir
        self._retention_days = retention_days
        self._console = console
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        self._closing = threading.Event()
        self._file: IO[bytes] | None = None
        self._day: str | None = None
        self._written = 0
        self._dropped = 0
        self._errors = 0
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="execd-audit-writer", daemon=True)
        self._thread.start()

    @property
    def wants_event_dict(self) -> bool:
        """True when submit() needs the event dict (for a pretty console copy)."""
        return self._console is not None and self._console.wants_event_dict

    def submit(self, day: str, line: bytes, event: Mapping[str, Any] | None = None) -> None:
        """Queue one rendered event for UTC day `day`; never blocks, never touches the disk."""
        if self._closed:
            # Events emitted after shutdown began cannot be guaranteed on disk; count them.
            self._dropped += 1
            return
        self._queue.put((day, line, event))

    def close(self, timeout: float = CLOSE_TIMEOUT_S,
              console_timeout: float = CONSOLE_CLOSE_TIMEOUT_S) -> bool:
        """Write everything queued, fsync, close the file and join the thread (at most
        `timeout` s), then close the console copy (at most `console_timeout` s more: a blocked
        console never holds the process). True when the files are complete. Idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._closing.set()
        self._thread.join(timeout)
        complete = not self._thread.is_alive()
        if self._console is not None:
            if not complete:
                self._console.note(f"execd: the audit writer did not finish within {timeout} s; "
                                   f"{self._queue.qsize()} events may be missing from the files")
            self._console.close(console_timeout)
        return complete

    def statistics(self) -> WriterStats:
        return WriterStats(self._written, self._dropped, self._errors, self._last_error,
                           self._console.dropped if self._console is not None else 0)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            # Let the events a decision emits together come in: one wake-up and one flush for
            # all of them, and fewer trips for the GIL from this thread (issue 16).
            self._closing.wait(GATHER_S)
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item in batch:
                if item is None:
                    stopping = True
                else:
                    self._write(*item)
            self._flush(sync=stopping)
        self._close_file()

    def _write(self, day: str, line: bytes, event: Mapping[str, Any] | None) -> None:
        try:
            file = self._file if day == self._day and self._file is not None else self._open(day)
            file.write(line + b"\n")
            self._written += 1
        except OSError as exc:
            self._fail(exc)
        if self._console is not None:
            self._console.offer(line, event)     # never waits: a slow console drops copies

    def _open(self, day: str) -> IO[bytes]:
        self._close_file()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        file = (self.log_dir / audit_file_name(day)).open("ab")
        self._file, self._day = file, day
        self._prune(day)
        return file

    def _prune(self, today: str) -> None:
        if self._retention_days is None:
            return
        cutoff = _parse_day(today) - timedelta(days=self._retention_days)
        for path in self.log_dir.glob("audit-*.jsonl"):
            day = path.stem.removeprefix("audit-")
            if day.isdigit() and len(day) == 8 and _parse_day(day) < cutoff:
                path.unlink(missing_ok=True)

    def _flush(self, *, sync: bool) -> None:
        if self._file is not None:
            try:
                self._file.flush()
                if sync:
                    os.fsync(self._file.fileno())
            except OSError as exc:
                self._fail(exc)

    def _close_file(self) -> None:
        file, self._file, self._day = self._file, None, None
        if file is None:
            return
        try:
            file.flush()
            os.fsync(file.fileno())
        except OSError as exc:
            self._fail(exc)
        finally:
            with contextlib.suppress(OSError):
                file.close()

    def _fail(self, exc: OSError) -> None:
        """Count a failed write; the next event reopens the file (the disk may recover)."""
        self._errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        file, self._file, self._day = self._file, None, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    def __repr__(self) -> str:
        return (
            f"AuditWriter(dir={str(self.log_dir)!r}, day={self._day}, written={self._written}, "
            f"dropped={self._dropped}, errors={self._errors}, closed={self._closed})"
        )


def _parse_day(day: str) -> date:
    return date(int(day[:4]), int(day[4:6]), int(day[6:8]))
