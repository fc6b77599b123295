"""File descriptors: raising the soft limit at start, and reporting exhaustion without a flood
(issue 14, finding 4).

`raise_nofile_limit()` lifts the soft ``RLIMIT_NOFILE`` toward the hard limit (at most
`NOFILE_CAP`); the daemon reports the result once, in ``daemon_started``.

`AcceptErrorReporter` is an event-loop exception handler. When the process runs out of
descriptors, asyncio's accept loop reports "socket.accept() out of system resource" through the
loop's exception handler at every retry, each with a traceback; other callbacks failing with
EMFILE/ENFILE do the same. The reporter turns all of those into one ``alert``
(``kind=fd_exhausted``, critical) per `period_s`, with the count of occurrences it covers, and
hands every other context to the handler that was installed before it (asyncio's default if
none). Time comes from the injected `Clock`.
"""

from __future__ import annotations

import asyncio
import errno
import resource
from dataclasses import dataclass
from typing import Any, Final

from app.clock import Clock
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger
from app.observability.throttle import Throttle

__all__ = ["NOFILE_CAP", "AcceptErrorReporter", "NofileLimit", "raise_nofile_limit"]

NOFILE_CAP: Final = 65536
_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE})
_ACCEPT_EXHAUSTED: Final = _EXHAUSTED | {errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_MESSAGE: Final = "socket.accept() out of system resource"

ExceptionHandler = Any   # asyncio's own alias is private: (loop, context) -> object


@dataclass(frozen=True, slots=True)
class NofileLimit:
    """The descriptor limits after `raise_nofile_limit`: ``before`` is the soft limit found;
    ``error`` says why it could not be raised (None when it was or did not need to be)."""

    before: int
    soft: int
    hard: int
    error: str | None = None

    def fields(self) -> dict[str, object]:
        return {"soft": self.soft, "hard": self.hard, "before": self.before,
                **({"error": self.error} if self.error else {})}


def raise_nofile_limit(cap: int = NOFILE_CAP) -> NofileLimit:
    """Raise the soft RLIMIT_NOFILE to ``min(hard, cap)`` when it is lower. Never lowers it,
    never raises: a refusal by the OS is returned in ``error``. A few syscalls, no I/O."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as error:
            return NofileLimit(soft, soft, hard, f"{type(error).__name__}: {error}")
        return NofileLimit(soft, target, hard)
    return NofileLimit(soft, soft, hard)


def _exhausted(context: dict[str, Any]) -> OSError | None:
    error = context.get("exception")
    if not isinstance(error, OSError):
        return None
    if error.errno in _EXHAUSTED:
        return error
    if error.errno in _ACCEPT_EXHAUSTED and context.get("message") == _ACCEPT_MESSAGE:
        return error
    return None


class AcceptErrorReporter:
    """The loop exception handler described in the module docstring. `install` it on the
    running loop, `uninstall` on the way down (the previous handler comes back)."""

    def __init__(self, log: AuditLogger, clock: Clock, *, period_s: float = 60.0,
                 nofile: NofileLimit | None = None) -> None:
        self._log = log
        self._throttle = Throttle(clock, period_s)
        self._period = period_s
        self._nofile = nofile
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: ExceptionHandler | None = None

    @property
    def total(self) -> int:
        """Occurrences seen since start (reported or not)."""
        return self._throttle.total

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def uninstall(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.get_exception_handler() is self:
            loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = _exhausted(context)
        if error is None:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        count = self._throttle.hit()
        if not count:
            return
        limit = self._nofile.soft if self._nofile is not None else None
        self._log.critical(
            AuditEvent.ALERT, kind="fd_exhausted",
            detail=f"out of file descriptors ({errno.errorcode.get(error.errno or 0, '?')}, "
                   f"limit {limit}): {context.get('message', 'an operation failed')}; "
                   f"reported at most once per {self._period:g} s",
            count=count, total=self._throttle.total, limit=limit)
