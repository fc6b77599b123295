"""The journal's checkpoints run off its writer thread (``app/journal_sync.py``): the writer's
automatic ones are off, and the WAL still does not grow without bound; a failed fsync breaks the
WAL's promise without stopping its thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app import journal_sync
from app.journal import Journal, JournalFailed
from app.journal_sync import CHECKPOINT_EVERY
from tests.test_journal import make_signal


async def test_checkpoints_run_on_their_own_thread_and_keep_the_wal_small(
        tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    async with Journal(path) as journal:
        (autocheckpoint,) = await journal._run(
            lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone())
        assert autocheckpoint == 0
        wal_sync = journal._wal_sync
        assert wal_sync is not None
        for n in range(15 * CHECKPOINT_EVERY):   # ~8 MB of WAL without a checkpoint
            await journal.accept(make_signal(f"s{n}"), now=1.0)
        checkpoints = wal_sync.checkpoints
        size = Path(f"{path}-wal").stat().st_size  # noqa: ASYNC240 (a test)
        assert (await journal.counts())["ACCEPTED"] == 15 * CHECKPOINT_EVERY
    assert checkpoints >= 10, (checkpoints, size)
    assert size < 6 * 1024 * 1024, size            # started over at ~4 MB
    assert not Path(f"{path}-wal").exists()  # noqa: ASYNC240 - the writer's close removed it


async def test_a_failed_fsync_fails_the_acknowledgement_and_the_sync_thread_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk error on the fsync reaches the accept that waited for it as `JournalFailed`
    (the signal is not acknowledged). The sync thread goes on (its next fsync completes), but
    the WAL is marked broken: the journal acknowledges nothing more until it is reopened
    (tests/test_journal_durability.py)."""
    real = journal_sync.os.fsync
    failures = [OSError(5, "Input/output error")]

    def fsync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real(fd)

    async with Journal(tmp_path / "j.sqlite3") as journal:
        monkeypatch.setattr(journal_sync.os, "fsync", fsync)
        with pytest.raises(JournalFailed, match="Input/output error"):
            await journal.accept(make_signal("s1"), now=1.0)
        wal_sync = journal._wal_sync
        assert wal_sync is not None
        assert wal_sync.broken == "OSError(5, 'Input/output error')"
        syncs = wal_sync.syncs
        await asyncio.wrap_future(wal_sync.request())
        assert wal_sync.syncs == syncs + 1
        with pytest.raises(JournalFailed, match="acknowledges nothing more"):
            await journal.accept(make_signal("s2"), now=1.0)
