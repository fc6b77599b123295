"""One daemon per journal (SPEC §5.6): the lock file beside the journal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.journal_lock import JournalLock, JournalLocked


async def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    journal = tmp_path / "data" / "journal.sqlite3"
    first, second = JournalLock(journal), JournalLock(journal)
    await first.acquire()
    try:
        with pytest.raises(JournalLocked, match=f"pid {os.getpid()}") as refused:
            await second.acquire()
        assert refused.value.holder == os.getpid()
        assert "journal.path" in str(refused.value)
        assert first.path == tmp_path / "data" / "journal.sqlite3.lock"
        assert (first.path.stat().st_mode & 0o777) == 0o600
    finally:
        await first.aclose()
    await second.acquire()                      # released: the next one may take it
    await second.aclose()
    await second.aclose()                       # idempotent


async def test_a_lock_file_left_behind_does_not_block(tmp_path: Path) -> None:
    """A stale file (a pid of a process long gone) is no lock: only a live flock is."""
    journal = tmp_path / "journal.sqlite3"
    (tmp_path / "journal.sqlite3.lock").write_text("999999\n")
    lock = JournalLock(journal)
    await lock.acquire()
    assert "held" in repr(lock)
    await lock.aclose()
    assert (tmp_path / "journal.sqlite3.lock").read_text() == f"{os.getpid()}\n"
