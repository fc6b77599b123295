"""The journal's durability model and its trouble (SPEC §5.6): acknowledging commits are fsynced
whatever ``synchronous`` says; a lock held by another process is `JournalBusy`; a full or
read-only disk is `JournalFailed`, and a failed fsync stops acknowledgements until a restart; a
file that is not a journal is `JournalUnreadable`, with a message that says what to do."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from decimal import Decimal
from pathlib import Path

import pytest

from app import journal_sync
from app.domain import (
    Intent,
    IntentState,
    Leg,
    OrderType,
    Side,
    Signal,
    StateChange,
    TradingState,
)
from app.journal import Journal, JournalBusy, JournalFailed, JournalUnreadable, NotDurable
from tests.test_journal import make_signal

#: PRAGMA synchronous as SQLite reports it.
LEVELS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def _signal(signal_id: str) -> Signal:
    return make_signal(signal_id)


def _intent(signal_id: str, client_id: str) -> Intent:
    return Intent(
        signal_id=signal_id, leg=Leg.ENTRY, client_id=client_id, symbol="BTCUSDT", side=Side.BUY,
        order_type=OrderType.MARKET, quantity=Decimal("0.01"), price=None, reduce_only=False,
        state=IntentState.SENDING, updated_at=1.0)


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


class FsyncLog:
    """``os.fsync`` as ``app.journal_sync`` calls it, recording the size of the file (the WAL)
    when each fsync started; `done` are those that completed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started: list[int] = []
        self.done: list[int] = []
        #: Cleared: the next fsync waits for it to be set (up to 10 s).
        self.gate = threading.Event()
        self.gate.set()
        real = os.fsync

        def fsync(fd: int) -> None:
            size = os.fstat(fd).st_size
            self.started.append(size)
            self.gate.wait(10)
            real(fd)
            self.done.append(size)

        monkeypatch.setattr(journal_sync.os, "fsync", fsync)


@pytest.mark.parametrize("configured", ["NORMAL", "FULL", "EXTRA"])
async def test_acknowledging_writes_are_on_the_disk_before_they_return(
        tmp_path: Path, configured: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """accept (HTTP 202, a spool line), set_offset and the trading state return only once their
    commit is on the disk. Under NORMAL the commit itself is not synced (it would make the
    writer thread, and every intent write queued behind it, wait for the disk): an fsync of the
    WAL that started after the commit — covering it whole — completes before the call returns.
    An intent write waits for no fsync. Under FULL and EXTRA every commit syncs itself."""
    fsyncs = FsyncLog(monkeypatch)
    path = tmp_path / "j.sqlite3"
    wal = Path(f"{path}-wal")
    async with Journal(path, synchronous=configured) as journal:
        seen = await _watch_commit_levels(journal)
        for acknowledge in (
                lambda: journal.accept(_signal("s1"), now=1.0, offset=("spool:x", 10)),
                lambda: journal.set_offset("spool:y", 20),
                lambda: journal.save_trading_state(StateChange(
                    TradingState.HALTED, "desk", 1.0, "test"))):
            before = len(fsyncs.done)
            await acknowledge()
            committed = wal.stat().st_size  # noqa: ASYNC240 (a test)
            if configured == "NORMAL":
                assert len(fsyncs.done) == before + 1
                assert fsyncs.done[-1] >= committed        # the WAL with this commit in it
            else:
                assert len(fsyncs.done) == before          # the commit synced itself
        before = len(fsyncs.done)
        await journal.put_intent(_intent("s1", "xdE1"))
        assert len(fsyncs.done) == before                  # no fsync on the decision path
    assert seen == [("offsets", configured), ("signals", configured), ("offsets", configured),
                    ("intents", configured)]


async def test_concurrent_acknowledgements_share_fsyncs_and_each_waits_for_one_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: 40 accepts that commit while an fsync runs share the next one; each still
    returns only after an fsync that covered the WAL as it was right after its own commit. A
    caller cancelled while it waits leaves the others unharmed."""
    fsyncs = FsyncLog(monkeypatch)
    path = tmp_path / "j.sqlite3"
    wal = Path(f"{path}-wal")
    async with Journal(path) as journal:
        await journal.accept(_signal("warm"), now=1.0)
        wal_sync = journal._wal_sync
        assert wal_sync is not None
        real_request = wal_sync.request
        covered: list[tuple[int, int]] = []   # (WAL size after the commit, synced at return)

        def request() -> Future[None]:       # on the writer thread, right after the commit
            committed = wal.stat().st_size
            synced = real_request()
            synced.add_done_callback(lambda _: covered.append((committed, fsyncs.done[-1])))
            return synced

        monkeypatch.setattr(wal_sync, "request", request)
        fsyncs.gate.clear()                      # the first fsync is slow: the rest queue up
        first = asyncio.ensure_future(journal.accept(_signal("first"), now=2.0))
        while not fsyncs.started:  # noqa: ASYNC110 - set on the sync thread
            await asyncio.sleep(0.001)
        cancelled = asyncio.ensure_future(journal.accept(_signal("gone"), now=2.0))
        rest = asyncio.gather(*(journal.accept(_signal(f"s{n}"), now=2.0) for n in range(40)))
        while (await journal.counts())["ACCEPTED"] < 43:  # noqa: ASYNC110 - committed,
            await asyncio.sleep(0.001)                     # none acknowledged yet
        assert not first.done()
        assert not rest.done()
        cancelled.cancel()
        fsyncs.gate.set()
        await asyncio.gather(first, rest)
        await asyncio.gather(cancelled, return_exceptions=True)
        counts = await journal.counts()
    assert len(covered) == 42                    # "gone" too: cancelled, its fsync went on
    assert all(synced >= committed for committed, synced in covered), covered
    assert len(fsyncs.done) == 3, fsyncs.done    # "warm", "first", then one for all the rest
    assert counts["ACCEPTED"] == 43


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


@asynccontextmanager
async def read_only(journal: Journal) -> AsyncIterator[None]:
    """The journal's disk turned read-only (as ext4 remounts one on errors): every write on the
    journal's connection fails with SQLITE_READONLY until the block ends (``query_only``)."""
    await journal._run(lambda conn: conn.execute("PRAGMA query_only = 1"))
    try:
        yield
    finally:
        await journal._run(lambda conn: conn.execute("PRAGMA query_only = 0"))


async def test_a_full_disk_is_journal_failed_and_the_journal_goes_on(tmp_path: Path) -> None:
    """The database may not grow (SQLite's ``max_page_count`` at its size: the disk is full):
    the accept that needs a page raises JournalFailed (an OperationalError) naming the file and
    the cause, and stores nothing; other statements go on; once there is room the same accept
    works. A read-only disk is the same failure."""
    path = tmp_path / "j.sqlite3"
    async with Journal(path) as journal:
        pages = await journal._run(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await journal._run(lambda c: c.execute(f"PRAGMA max_page_count = {pages}").fetchall())
        full = r"journal .*j\.sqlite3 failed: database or disk is full; nothing was written"

        async def fill() -> int:
            """Accept signals until one is refused."""
            for number in range(1000):
                await journal.accept(_signal(f"f{number}"), now=1.0)
            raise AssertionError("the journal never filled up")

        with pytest.raises(JournalFailed, match=full) as info:
            await fill()
        assert isinstance(info.value, sqlite3.OperationalError)
        number = (await journal.counts())["ACCEPTED"]
        refused = f"f{number}"
        assert await journal.get_signal(refused) is None
        assert number > 0
        await journal._run(lambda c: c.execute("PRAGMA max_page_count = 1000000").fetchall())
        _, created = await journal.accept(_signal(refused), now=2.0)
        assert created
        async with read_only(journal):
            with pytest.raises(JournalFailed, match="attempt to write a readonly database"):
                await journal.set_offset("spool:x", 10)
        await journal.set_offset("spool:x", 10)


async def test_a_failed_fsync_stops_acknowledgements_until_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The WAL's fsync fails once (EIO). The accept it was for raises JournalFailed (not
    acknowledged) and nothing of that signal may be sent (`durable` raises NotDurable). Every
    later acknowledging write is refused at once, though the disk answers again — the kernel
    may have dropped the pages it could not write, so a later fsync proves nothing about them —
    while the other writes go on. A restarted journal acknowledges again."""
    path = tmp_path / "j.sqlite3"
    real = os.fsync
    failing = [True]

    def fsync(fd: int) -> None:
        if failing and failing.pop():
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    async with Journal(path) as journal:
        assert journal.status()["acknowledging"] is True
        monkeypatch.setattr(journal_sync.os, "fsync", fsync)
        with pytest.raises(JournalFailed, match="the fsync that was to put this write on the "
                                                "disk failed") as info:
            await journal.accept(_signal("lost"), now=1.0)
        assert isinstance(info.value.__cause__, OSError)
        with pytest.raises(NotDurable):
            await journal.durable("lost")
        stopped = r"an fsync failed \(OSError\(5, 'Input/output error'\)\), so it acknowledges"
        for acknowledge in (lambda: journal.accept(_signal("later"), now=2.0),
                            lambda: journal.set_offset("spool:x", 10),
                            lambda: journal.save_trading_state(StateChange(
                                TradingState.HALTED, "desk", 2.0, "test"))):
            with pytest.raises(JournalFailed, match=stopped):
                await acknowledge()
        await journal.put_intent(_intent("lost", "xdE1"))        # not acknowledging: goes on
        known, created = await journal.accept(_signal("lost"), now=2.0)   # a read answers it
        assert (known.signal.id, created) == ("lost", False)
        assert await journal.get_signal("later") is None
        assert await journal.get_offset("spool:x") is None
        assert journal.broken == "OSError(5, 'Input/output error')"
        assert journal.status() == {"path": str(path), "synchronous": "NORMAL",
                                    "acknowledging": False, "broken": journal.broken}
    async with Journal(path) as journal:
        assert journal.broken is None
        _, created = await journal.accept(_signal("later"), now=3.0)
        assert created
        await journal.durable("later")


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


async def test_a_journal_on_a_disk_that_refuses_writes_says_so_at_start(tmp_path: Path) -> None:
    """A new journal that cannot be written (here a process whose files may not grow past 2 KB,
    ``RLIMIT_FSIZE``: the write fails as on a full disk) is `JournalUnreadable` saying the disk
    is full or failing — not to check permissions."""
    script = ("import resource, sys; from pathlib import Path; "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048)); "
              "from app.journal_db import connect\n"
              "try: connect(Path(sys.argv[1]), 'NORMAL')\n"
              "except Exception as error: print(type(error).__name__, error)")
    path = tmp_path / "journal.sqlite3"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(path), cwd=Path(__file__).parent.parent,
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    said = out.decode().strip()
    assert said.startswith(f"JournalUnreadable journal {path} cannot be written ("), said
    assert said.endswith("): the disk is full or failing; free space or check the disk "
                         "(df -h, dmesg), then start again"), said
