"""The audit writer thread: the only place that touches the audit files and the console.

The event loop renders an event to bytes and calls `AuditWriter.submit()`, which only puts it on
a queue. A dedicated thread takes events off in batches, appends each to the file of its UTC day
(``audit-YYYYMMDD.jsonl``, so a day change starts a new file), writes the console copy, and
flushes once per batch. `close()` drains the queue, flushes, fsyncs and joins the thread: after
it returns every submitted event is on disk.

Trade-off: the queue is unbounded. A stalled disk grows memory instead of dropping audit events or
blocking the loop; losing the audit trail silently would be worse for an operator.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import IO, Any, TextIO

__all__ = ["AuditWriter", "WriterStats", "audit_file_name"]

_BATCH = 512

# (UTC day as YYYYMMDD, rendered JSON line, event dict for a pretty console or None)
_Item = tuple[str, bytes, Mapping[str, Any] | None]
PrettyRenderer = Callable[[Mapping[str, Any]], str]


def audit_file_name(day: str) -> str:
    """The file name for UTC day `day` (``YYYYMMDD``)."""
    return f"audit-{day}.jsonl"


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters of the writer: events on disk, dropped after close, failed writes."""

    written: int
    dropped: int
    write_errors: int
    last_error: str | None


class AuditWriter:
    """Append rendered events to daily files (and the console) from a background thread.

    `console` is the stream for console copies or None for none; `pretty`, when given, renders the
    console copy from the event dict (in the writer thread), otherwise the JSON line is copied.
    Audit files older than `retention_days` are deleted when a new day's file is opened.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        retention_days: int | None = None,
        console: TextIO | None = None,
        pretty: PrettyRenderer | None = None,
    ) -> None:
        self.log_dir = log_dir
        self._retention_days = retention_days
        self._console = console
        self._pretty = pretty
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
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
        return self._console is not None and self._pretty is not None

    def submit(self, day: str, line: bytes, event: Mapping[str, Any] | None = None) -> None:
        """Queue one rendered event for UTC day `day`; never blocks, never touches the disk."""
        if self._closed:
            # Events emitted after shutdown began cannot be guaranteed on disk; count them.
            self._dropped += 1
            return
        self._queue.put((day, line, event))

    def close(self) -> None:
        """Write everything queued, fsync, close the file and join the thread. Idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def statistics(self) -> WriterStats:
        return WriterStats(self._written, self._dropped, self._errors, self._last_error)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
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
            text = self._pretty(event) if self._pretty and event is not None else line.decode()
            try:
                self._console.write(text + "\n")
            except (OSError, ValueError):
                # A closed or broken console (e.g. the pipe reader went away) must not stop the
                # file; give up on the console only.
                self._console = None

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
        if self._console is not None:
            try:
                self._console.flush()
            except (OSError, ValueError):
                self._console = None

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
