"""One daemon per journal (SPEC §5.6): an exclusive lock on a file beside the journal.

Two daemons on one journal would both resume and execute its signals: every order twice. The
daemon takes the lock before restart recovery and holds it until it exits. It is an advisory
``flock`` on ``<journal>.lock``, which the kernel releases when the process ends however it
ends (``kill -9`` included), so a stale lock file of a dead process never blocks a start; the
holder writes its pid into the file so the refused daemon can name it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["JournalLock", "JournalLocked"]


class JournalLocked(Exception):
    """Another live process holds the journal's lock."""

    def __init__(self, path: Path, holder: int | None) -> None:
        who = f"pid {holder}" if holder is not None else "another process"
        super().__init__(f"the journal {path} is in use by {who} (lock {path}.lock): one "
                         "daemon per journal; stop that one or give this one another "
                         "journal.path")
        self.holder = holder


class JournalLock:
    """``await acquire()`` takes the lock (raising `JournalLocked`), ``release()`` gives it
    back; the file is opened and locked on a worker thread, never on the event loop."""

    def __init__(self, journal_path: Path) -> None:
        self.journal_path = journal_path
        self.path = journal_path.with_name(journal_path.name + ".lock")
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"<JournalLock {str(self.path)!r} {'held' if self._fd is not None else 'free'}>"

    async def acquire(self) -> None:
        self._fd = await asyncio.to_thread(self._take)

    def _take(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise JournalLocked(self.journal_path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    async def aclose(self) -> None:
        """`release` on a worker thread."""
        await asyncio.to_thread(self.release)

    def release(self) -> None:
        """Give the lock back (idempotent). The file stays: removing it could let a third
        process lock a new file while a second still waits on the old one."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
