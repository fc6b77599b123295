"""The console copy of the audit log: a bounded, dropping queue and a thread of its own.

The audit writer thread hands each line it has written to the audit file to `ConsoleCopy.offer()`,
which only puts it on a bounded queue; a daemon thread (``execd-audit-console``) renders it
(pretty, when asked) and writes it to the console stream. A console that blocks — a full pipe
nobody reads, a paused terminal — therefore never holds up the audit files: once `capacity`
lines wait, further lines are dropped *for the console only* and counted (`dropped`). Where lines
went missing the console shows one note saying how many (before the next line it gets, or as
its last line when the copy closes); the count is also in ``/v1/status``
(``audit.console_dropped``), ``/metrics`` (``execd_console_dropped_total``) and the
``daemon_stopped`` event.

`close()` waits at most `timeout` seconds for the queue to drain: a console blocked for good
must not stop the process exiting, and its thread, a daemon thread, is left behind.
A console whose write raises (closed, or its reader went away) is given up: nothing more is
written to it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any, TextIO

__all__ = ["DEFAULT_CAPACITY", "ConsoleCopy", "PrettyRenderer"]

#: Lines held for a slow console before copies are dropped (a human reads far fewer).
DEFAULT_CAPACITY = 1000

PrettyRenderer = Callable[[Mapping[str, Any]], str]
# (rendered JSON line, event dict for a pretty console or None, lines dropped just before it);
# None wakes the thread to stop
_Item = tuple[bytes, Mapping[str, Any] | None, int]


class ConsoleCopy:
    """Copy audit lines to `stream` from a thread of its own, dropping what does not fit.

    `pretty`, when given, renders each copy from the event dict; otherwise the JSON line is
    copied as it is (also when the renderer fails). `offer()` is meant for one producer thread
    (the audit writer; a count may be off by one if `close()`'s note races a writer that
    missed its deadline).
    """

    def __init__(self, stream: TextIO, *, pretty: PrettyRenderer | None = None,
                 capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"console capacity must be at least 1, not {capacity}")
        self._stream: TextIO | None = stream
        self._pretty = pretty
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=capacity)
        self._dropped = 0
        self._gap = 0            # dropped since the last line queued (offer's thread only)
        self._noted = 0          # drops already told on the console (console thread only)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="execd-audit-console",
                                        daemon=True)
        self._thread.start()

    @property
    def wants_event_dict(self) -> bool:
        """True when `offer()` needs the event dict (a pretty console)."""
        return self._pretty is not None

    @property
    def dropped(self) -> int:
        """Lines not copied to the console because it was behind by `capacity` lines."""
        return self._dropped

    @property
    def pending(self) -> int:
        """Lines waiting for the console."""
        return self._queue.qsize()

    def offer(self, line: bytes, event: Mapping[str, Any] | None = None) -> None:
        """Queue one line for the console; never blocks (a full queue drops it, counted)."""
        if self._closed or self._stream is None:
            return
        try:
            self._queue.put_nowait((line, event, self._gap))
        except queue.Full:
            self._dropped += 1
            self._gap += 1
        else:
            self._gap = 0

    def note(self, text: str) -> None:
        """Queue one line of text (a note to the operator, not an audit event); never blocks."""
        self.offer(text.encode(), None)

    def close(self, timeout: float) -> bool:
        """Stop taking lines and wait up to `timeout` seconds for those queued to be written.

        True when the console thread finished; False when the console is still blocked (its
        daemon thread is left to the process's exit; it writes what is queued, and stops, if
        the console ever takes lines again). Idempotent.
        """
        if not self._closed:
            self._closed = True
            with contextlib.suppress(queue.Full):   # full: the thread stops once it drained
                self._queue.put_nowait(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is not None and self._stream is not None:
                line, event, gap = item
                self._write_note(gap)
                self._write(self._render(line, event))
            if self._closed and self._queue.empty():
                self._write_note(self._dropped - self._noted)    # lost after the last line
                return

    def _render(self, line: bytes, event: Mapping[str, Any] | None) -> str:
        if self._pretty is not None and event is not None:
            try:
                return self._pretty(event)
            except Exception:   # an odd value must not stop the console: show the JSON line
                pass
        return line.decode()

    def _write_note(self, missed: int) -> None:
        if missed > 0:
            self._noted += missed
            self._write(f"execd: the console fell behind and missed {missed} audit lines "
                        f"({self._noted} this run); the audit files have every event")

    def _write(self, text: str) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            stream.write(text + "\n")
            if self._queue.empty():
                stream.flush()
        except (OSError, ValueError):
            # A closed or broken console (e.g. the pipe reader went away): give up on it.
            self._stream = None

    def __repr__(self) -> str:
        return (f"ConsoleCopy(pending={self.pending}, dropped={self._dropped}, "
                f"closed={self._closed})")
