"""File descriptors (issue 14, finding 4): the soft limit raised at start, and out-of-descriptor
errors from the loop turned into one ``alert`` a minute (fake clock) while every other error
still reaches the handler installed before."""

from __future__ import annotations

import asyncio
import errno
import resource
import subprocess
import sys
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from app.clock import FakeClock
from app.fd_limits import AcceptErrorReporter, NofileLimit, raise_nofile_limit
from app.observability.throttle import Throttle

ACCEPT = "socket.accept() out of system resource"


def accept_failed(code: int = errno.EMFILE) -> dict[str, Any]:
    return {"message": ACCEPT, "exception": OSError(code, "Too many open files")}


def test_the_throttle_reports_the_first_then_once_per_period_with_the_suppressed() -> None:
    clock = FakeClock()
    throttle = Throttle(clock, 60.0)
    assert [throttle.hit() for _ in range(5)] == [1, 0, 0, 0, 0]
    clock.advance(59.9)
    assert throttle.hit() == 0
    clock.advance(0.1)
    assert throttle.hit() == 6              # this one and the five suppressed
    assert throttle.total == 7
    with pytest.raises(ValueError, match="period_s"):
        Throttle(clock, 0)


async def test_accept_failures_become_one_alert_a_minute() -> None:
    clock = FakeClock()
    loop = asyncio.get_running_loop()
    reporter = AcceptErrorReporter(structlog.get_logger(), clock,
                                   nofile=NofileLimit(256, 256, 256))
    reporter.install(loop)
    try:
        with capture_logs() as logs:
            for _ in range(1000):           # a busy accept loop's worth of failures
                loop.call_exception_handler(accept_failed())
            clock.advance(60)
            loop.call_exception_handler(accept_failed(errno.ENFILE))
            loop.call_exception_handler({"message": "other", "exception":
                                         OSError(errno.EMFILE, "Too many open files")})
    finally:
        reporter.uninstall()
    assert [(e["kind"], e["log_level"], e["count"], e["limit"]) for e in logs] == [
        ("fd_exhausted", "critical", 1, 256), ("fd_exhausted", "critical", 1000, 256)]
    assert "EMFILE" in logs[0]["detail"]
    assert "ENFILE" in logs[1]["detail"]
    assert reporter.total == 1002
    assert loop.get_exception_handler() is None          # the previous one is back


async def test_other_errors_reach_the_previous_handler() -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    reporter = AcceptErrorReporter(structlog.get_logger(), FakeClock())
    reporter.install(loop)
    try:
        with capture_logs() as logs:
            other = {"message": "boom", "exception": RuntimeError("boom")}
            refused = {"message": ACCEPT, "exception": OSError(errno.ECONNABORTED, "aborted")}
            loop.call_exception_handler(other)
            loop.call_exception_handler(refused)
        assert seen == [other, refused]
        assert logs == []
    finally:
        reporter.uninstall()
        loop.set_exception_handler(None)


def test_the_soft_limit_is_raised_toward_the_hard_one() -> None:
    """In a child process (the limit is per process): soft 64, hard 512 → 512; a cap of 300
    stops it at 300; soft already at hard stays."""
    code = (
        "import resource\n"
        "from app.fd_limits import raise_nofile_limit\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 512))\n"
        "print(raise_nofile_limit(cap=300).fields())\n"
        "print(raise_nofile_limit().fields())\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["{'soft': 300, 'hard': 512, 'before': 64}",
                   "{'soft': 512, 'hard': 512, 'before': 300}", "(512, 512)"]


def test_a_soft_limit_at_or_above_the_cap_is_left_alone() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    found = raise_nofile_limit(cap=1)
    assert (found.before, found.soft, found.hard, found.error) == (soft, soft, hard, None)
