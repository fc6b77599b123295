"""The journal's durability model and its trouble (SPEC §5.6): acknowledging commits are fsynced
whatever ``synchronous`` says; a lock held by another process is `JournalBusy`; a file that is not
a journal is `JournalUnreadable`, with a message that says what to do."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest

from app.domain import Intent, IntentState, Leg, OrderType, Side, Signal
from app.journal import Journal, JournalBusy, JournalUnreadable
from tests.test_journal import make_signal

#: PRAGMA synchronous as SQLite reports it.
LEVELS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def _signal(signal_id: str) -> Signal:
    return make_signal(signal_id)


async def _watch_commit_levels(journal: Journal) -> list[tuple[str, str]]:
    """Temporary triggers on the journal's own connection that read ``PRAGMA synchronous``
    inside each write transaction (the level its commit runs at): (table, level) pairs."""
    seen: list[tuple[str, str]] = []

    def install(conn: sqlite3.Connection) -> None:
        def level(table: str) -> int:
            (value,) = conn.execute("PRAGMA synchronous").fetchone()
            seen.append((table, LEVELS[value]))
            return 0

        conn.create_function("commit_level", 1, level)
        for table in ("signals", "intents", "offsets"):
            conn.execute(f"CREATE TEMP TRIGGER level_{table} AFTER INSERT ON main.{table} "
                         f"BEGIN SELECT commit_level('{table}'); END")

    await journal._run(install)  # the journal's worker thread owns the connection
    return seen


@pytest.mark.parametrize(("configured", "acknowledging", "other"),
                         [("NORMAL", "FULL", "NORMAL"), ("FULL", "FULL", "FULL"),
                          ("EXTRA", "EXTRA", "EXTRA")])
async def test_acknowledging_commits_are_fsynced_whatever_the_level(
        tmp_path: Path, configured: str, acknowledging: str, other: str) -> None:
    """accept (HTTP 202, a spool line) and set_offset commit at FULL at least, even on a
    NORMAL connection; an intent write keeps the configured level, restored after each
    acknowledging commit."""
    async with Journal(tmp_path / "j.sqlite3", synchronous=configured) as journal:
        seen = await _watch_commit_levels(journal)
        await journal.accept(_signal("s1"), now=1.0, offset=("spool:x", 10))
        await journal.set_offset("spool:y", 20)
        await journal.put_intent(Intent(
            signal_id="s1", leg=Leg.ENTRY, client_id="xdE1", symbol="BTCUSDT", side=Side.BUY,
            order_type=OrderType.MARKET, quantity=Decimal("0.01"), price=None,
            reduce_only=False, state=IntentState.SENDING, updated_at=1.0))
        (after,) = await journal._run(
            lambda conn: conn.execute("PRAGMA synchronous").fetchone())
    assert seen == [("offsets", acknowledging), ("signals", acknowledging),
                    ("offsets", acknowledging), ("intents", other)]
    assert LEVELS[after] == configured


@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Another process's writer: ``BEGIN IMMEDIATE`` held on `path` from a separate
    connection in its own thread until the block ends."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            taken.set()
            release.wait(60)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    thread = threading.Thread(target=hold, name="test-journal-lock")
    thread.start()
    try:
        assert taken.wait(10)
        yield
    finally:
        release.set()
        thread.join(10)


async def test_a_lock_held_elsewhere_is_journal_busy_and_changes_nothing(
        tmp_path: Path) -> None:
    """Past the busy timeout an accept raises JournalBusy (still an OperationalError), naming
    the file; nothing was written, and the same accept works once the lock is gone."""
    path = tmp_path / "j.sqlite3"
    async with Journal(path) as journal:
        busy = (r"journal .*j\.sqlite3 busy: another process holds its write lock "
                r"\(database is locked\)")
        with write_lock(path), pytest.raises(JournalBusy, match=busy):
            await journal.accept(_signal("s1"), now=1.0)
        assert isinstance(JournalBusy("x"), sqlite3.OperationalError)
        assert await journal.get_signal("s1") is None
        _, created = await journal.accept(_signal("s1"), now=2.0)
    assert created


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b"\x00" * 5000])
async def test_a_file_that_is_not_a_journal_is_unreadable_with_advice(
        tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "journal.sqlite3"
    await asyncio.to_thread(path.write_bytes, content)
    with pytest.raises(JournalUnreadable) as info:
        await Journal(path).open()
    message = str(info.value)
    assert str(path) in message
    assert "not a readable SQLite database (file is not a database)" in message
    assert "move it aside and restore from backup, or start with a new journal path" in message
    assert await asyncio.to_thread(path.read_bytes) == content      # left as it was
