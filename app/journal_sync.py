"""The journal's disk work that the writer thread must not wait on (SPEC §5.6, §13): the fsync
that makes an acknowledging commit durable, and the WAL checkpoints.

Why: the journal has one writer thread, and the executor's intent write sits on the decision
path (SPEC §5.3: journaled before it is sent). A commit that fsyncs on that thread (an
acknowledged signal, under ``synchronous = FULL``) or an automatic checkpoint (SQLite runs one
inside the commit that fills the WAL past 1,000 pages: it copies them and syncs twice) made
every decision queued behind it wait for the disk.

- `WalSync.request` is a group commit. The writer commits at ``NORMAL`` (the frames are written
  to the WAL, no fsync) and, still on its thread, asks for an ``fsync`` of the WAL file that
  *starts after* the commit, made on a thread of its own (handed over thread to thread: no trip
  through the event loop between them); the acknowledging caller awaits it. An fsync flushes
  every written page of the file, so one covers every commit before it: requests that arrive
  while one runs share the next. Only then is the signal acknowledged — as durable as
  ``synchronous = FULL``, which syncs the same file at the same point.
- `WalSync.wrote` counts the journal's calls; every `CHECKPOINT_EVERY` it starts a ``PASSIVE``
  checkpoint on a third thread with its own connection (at most one at a time). ``PASSIVE``
  never takes the write lock, so the writer goes on meanwhile and does the bulk of the copying
  nobody waits for; the writer's own automatic checkpoints are off (``journal_db.connect``).
  Under steady writes such a checkpoint never quite catches up, and SQLite starts the WAL over
  only once every frame is back in the database: so when one finds the WAL `RESTART_FRAMES`
  long, `wrote` answers True and the journal queues `WalSync.catch_up` on its writer thread, a
  checkpoint of the few frames written meanwhile, after which the next commit starts the WAL
  over (it stays a few MB). With
  ``synchronous = NORMAL`` a checkpoint syncs the WAL before copying and the database after, as
  SQLite's own would.
- A failed fsync (``OSError``, or SQLite's own commit failing one under ``FULL``) breaks the
  WAL's promise for good: the kernel may have dropped the pages it could not write and will not
  say so again, so a later fsync that succeeds proves nothing about them — nor, once SQLite's
  recovery stops at the first missing frame, about any commit after them. From the first one
  on, `WalSync.check` refuses every acknowledging write (`JournalFailed`, naming it) until the
  process restarts; the journal's other writes go on (they may be lost anyway, SPEC §5.6).
- `PendingAccepts` lets a signal go on while its accept's fsync runs: the intake queues it
  right after the commit, and the executor's first write to the exchange waits for
  `PendingAccepts.durable` instead (SPEC §5.6: nothing leaves before its signal is on the disk).
  The fsync then overlaps the lane and the decision instead of preceding them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from pathlib import Path
from typing import Final

from app.journal_db import BUSY_TIMEOUT_MS, JournalFailed, fsync_failed

__all__ = ["CHECKPOINT_EVERY", "RESTART_FRAMES", "NotDurable", "PendingAccepts", "WalSync"]

#: Journal calls between two checkpoints (off the writer's thread: nobody waits for them).
CHECKPOINT_EVERY: Final = 100
#: A WAL this long (in pages, SQLite's own threshold: 4 MB) is started over (`catch_up`).
RESTART_FRAMES: Final = 1_000


class WalSync:
    """Group fsync of the WAL of the SQLite database at `path`, and its checkpoints, each on a
    thread of its own. ``await open()`` before use, ``await close()`` before the writer closes
    its connection (the writer's close then checkpoints the rest and removes the WAL)."""

    def __init__(self, path: Path, *, checkpoint_every: int = CHECKPOINT_EVERY) -> None:
        self._path = path
        self._wal = Path(f"{path}-wal")
        self._every = checkpoint_every
        self._fd: int | None = None
        self._sync_pool: ThreadPoolExecutor | None = None
        self._checkpoint_pool: ThreadPoolExecutor | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._lock = threading.Lock()          # the pool and the two below, from any thread
        self._syncing = False                  # the sync thread has work
        self._waiting: Future[None] | None = None   # those who need the next fsync
        self._checkpointing: asyncio.Future[int] | None = None
        self._calls = 0
        self._catch_up = False
        #: fsyncs completed and checkpoints run (for tests and the curious).
        self.syncs = 0
        self.checkpoints = 0
        #: The first fsync that failed, once one has (module docstring).
        self.broken: str | None = None

    def __repr__(self) -> str:
        return f"<WalSync {str(self._wal)!r} syncs={self.syncs} checkpoints={self.checkpoints}>"

    async def open(self) -> None:
        """Start the threads and the checkpointer's connection (the writer has created the
        database and its WAL already)."""
        self._sync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="execd-wal-sync")
        pool = self._checkpoint_pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="execd-checkpoint")
        self._checkpointer = await asyncio.get_running_loop().run_in_executor(
            pool, self._connect)

    async def close(self) -> None:
        """Close the checkpointer and the WAL file, each on its own thread once a running
        fsync (and the ones its waiters need) or checkpoint has ended: one worker per pool,
        so what is submitted last runs last. Idempotent."""
        loop = asyncio.get_running_loop()
        with self._lock:
            sync_pool, self._sync_pool = self._sync_pool, None   # no new requests
        checkpoint_pool, self._checkpoint_pool = self._checkpoint_pool, None   # nor checkpoints
        if checkpoint_pool is not None:
            await asyncio.shield(loop.run_in_executor(checkpoint_pool, self._disconnect))
            checkpoint_pool.shutdown(wait=False)
        if sync_pool is not None:
            await asyncio.shield(loop.run_in_executor(sync_pool, self._close_wal))
            sync_pool.shutdown(wait=False)

    def request(self) -> Future[None]:
        """From any thread (the writer's, right after an acknowledging commit): a future done
        once an fsync of the WAL that started after this call has completed — every commit made
        before the call is then on the disk — or failed with `JournalFailed` (the fsync's
        ``OSError`` its cause). Shared:
        await it shielded (``asyncio.shield(asyncio.wrap_future(...))``)."""
        with self._lock:
            if self._sync_pool is None:
                raise RuntimeError(f"{self._wal}: WAL sync is not open")
            if self._waiting is None:
                self._waiting = Future()
            waiting = self._waiting
            if not self._syncing:
                self._syncing = True
                self._sync_pool.submit(self._sync_all)
        return waiting

    def check(self) -> None:
        """Before an acknowledging write: raise `JournalFailed` once an fsync has failed."""
        if self.broken is not None:
            raise JournalFailed(f"journal {self._path}: an fsync failed ({self.broken}), so it "
                                "acknowledges nothing more: check the disk, then restart execd")

    def saw(self, error: sqlite3.Error) -> None:
        """A statement on the writer's connection raised `error`: a commit whose own fsync
        failed breaks the WAL's promise as one of ours would."""
        if fsync_failed(error) and self.broken is None:
            self.broken = f"{error} (a commit's own fsync)"

    def wrote(self) -> bool:
        """One more journal call; after `checkpoint_every` of them, a checkpoint (once the last
        one has ended). True once one has run: queue `catch_up` on the writer thread now."""
        self._calls += 1
        if self._catch_up:
            self._catch_up = False
            return True
        pool = self._checkpoint_pool
        if self._calls < self._every or self._checkpointing is not None or pool is None:
            return False
        self._calls = 0
        running = self._checkpointing = asyncio.get_running_loop().run_in_executor(
            pool, self._checkpoint)
        running.add_done_callback(self._checkpointed)
        return False

    @staticmethod
    def catch_up(conn: sqlite3.Connection) -> None:
        """On the writer thread, between two of its transactions: checkpoint what the last
        checkpoint left (nothing can be added meanwhile), so the next commit starts the WAL
        over. Trouble is left for the next round; the writer's commits report the disk's."""
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    # ------------------------------------------------------------------ plumbing
    def _sync_all(self) -> None:
        """On the sync thread: fsync for whoever waits, again while more arrive meanwhile."""
        while True:
            with self._lock:
                waiting, self._waiting = self._waiting, None
                if waiting is None:
                    self._syncing = False
                    return
            try:
                self._fsync()
            except Exception as error:   # the waiters get it; the thread must not stop
                self.broken = self.broken or repr(error)
                failed = JournalFailed(f"journal {self._path}: the fsync that was to put this "
                                       f"write on the disk failed ({error!r}): not acknowledged")
                failed.__cause__ = error
                _settle(waiting, failed)
            else:
                self.syncs += 1
                _settle(waiting, None)

    def _fsync(self) -> None:
        """On the sync thread: fsync the WAL (opened on first use: it exists once a commit
        has been written)."""
        if self._fd is None:
            self._fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
        os.fsync(self._fd)

    def _close_wal(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _disconnect(self) -> None:
        conn, self._checkpointer = self._checkpointer, None
        if conn is not None:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _checkpoint(self) -> int:
        """On the checkpoint thread: copy what it can; the WAL's length in frames."""
        conn = self._checkpointer
        if conn is None:
            return 0
        ((_, frames, _),) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return int(frames)

    def _checkpointed(self, running: asyncio.Future[int]) -> None:
        self._checkpointing = None
        if not running.cancelled() and running.exception() is None:
            self.checkpoints += 1
            self._catch_up = running.result() >= RESTART_FRAMES
        # A failed checkpoint (disk full, I/O error) is left for the next; the WAL only grows
        # meanwhile, and the writer's own commits report the disk's trouble.


class NotDurable(Exception):
    """The fsync that was to put a signal's accept on the disk failed: the signal was not
    acknowledged, and nothing it leads to may be sent."""


class PendingAccepts:
    """Signals whose accept is committed but whose acknowledging fsync has not completed yet,
    by id (on the event loop)."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[None]] = {}

    def add(self, signal_id: str, synced: asyncio.Future[None]) -> None:
        """`signal_id` is durable once `synced` (shared, never cancelled) is done. A successful
        one is forgotten then; a failed one is kept (rare: the disk failed), so that every
        later `durable` of the signal fails too."""
        self._waiting[signal_id] = synced

        def forget(done: asyncio.Future[None]) -> None:
            if (not done.cancelled() and done.exception() is None
                    and self._waiting.get(signal_id) is done):
                self._waiting.pop(signal_id, None)

        synced.add_done_callback(forget)

    async def durable(self, signal_id: str) -> None:
        """Return once the accept of `signal_id` is on the disk: at once for one that is not
        pending (synced already, or accepted by an earlier run). Raises `NotDurable`, every
        time, if its fsync failed."""
        synced = self._waiting.get(signal_id)
        if synced is None:
            return
        if not synced.done():
            await asyncio.wait([synced])           # not cancelled with the caller: shared
        error = None if synced.cancelled() else synced.exception()
        if synced.cancelled() or error is not None:
            raise NotDurable(f"the journal could not put signal {signal_id!r} on the disk "
                             f"(fsync failed: {error!r}); it was not acknowledged, and nothing "
                             "of it is sent")


def _settle(future: Future[None], error: Exception | None) -> None:
    """Complete a shared future (nobody can cancel it: its waiters shield it)."""
    with contextlib.suppress(InvalidStateError):
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
