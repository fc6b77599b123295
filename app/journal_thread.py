"""The journal's writer thread: one thread, its work run in the order it was handed over.

`WriterThread.submit(fn)` returns an asyncio future for ``fn()``'s result, run on the thread;
`post(fn)` runs ``fn()`` there with nobody waiting for it. Everything handed over runs in order,
one at a time, so one SQLite connection is only ever used from that thread.

Why not ``loop.run_in_executor`` with a one-worker ``ThreadPoolExecutor``: each trip there makes
a ``concurrent.futures.Future`` (with a ``threading.Condition``), chains it to an asyncio future
and settles both. On the reference machine a trip cost ~90 µs of event-loop CPU and ~130 µs
end to end, against ~37 and ~57 µs here, and a signal makes about a dozen journal trips
(``docs/benchmarks.md``). The behaviour kept from the executor: a future cancelled before its
work started skips the work; once started the work runs to its end and its result is dropped;
an exception (any ``BaseException``) is raised to the awaiting caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["WriterThread"]

_T = TypeVar("_T")
_Job = tuple[asyncio.Future[Any] | None, Callable[[], Any]]


class WriterThread:
    """A started thread running the callables handed to it, in order, until `stop`."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<WriterThread {self._thread.name!r} {state}>"

    def submit(self, fn: Callable[[], _T]) -> asyncio.Future[_T]:
        """On the loop: run ``fn()`` on the thread after everything handed over before; the
        future gets its result or its exception. Raises ``RuntimeError`` once stopped."""
        if self._stopped:
            raise RuntimeError(f"{self._thread.name}: stopped")
        future: asyncio.Future[_T] = self._loop.create_future()
        self._jobs.put((future, fn))
        return future

    def post(self, fn: Callable[[], object]) -> None:
        """`submit` without an answer: what ``fn`` returns or raises is dropped."""
        if self._stopped:
            raise RuntimeError(f"{self._thread.name}: stopped")
        self._jobs.put((None, fn))

    def stop(self) -> None:
        """No more work is taken; what was handed over still runs, then the thread ends."""
        if not self._stopped:
            self._stopped = True
            self._jobs.put(None)

    # ------------------------------------------------------------------ on the thread
    def _work(self) -> None:
        jobs = self._jobs
        while (job := jobs.get()) is not None:
            future, fn = job
            if future is not None and future.cancelled():
                continue                       # the caller gave up before it started
            try:
                result, error = fn(), None
            except BaseException as exc:       # handed to the caller, whatever it is
                result, error = None, exc
            if future is None:
                continue
            with contextlib.suppress(RuntimeError):   # a closed loop: nobody is waiting
                self._loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
