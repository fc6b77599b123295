"""The journal's SQLite plumbing (``app/journal.py`` uses it, on its worker thread): opening and
configuring the database, write transactions, and what SQLite's errors mean for the journal.

- `connect`: WAL mode, a busy timeout, the configured ``synchronous``, foreign keys, no automatic
  checkpoints (``journal_sync`` runs them off the writer's thread), then the migration steps of
  ``journal_schema.MIGRATIONS`` (``PRAGMA user_version``). A file that is not a readable journal
  raises `JournalUnreadable`, whose message names the file and what to do.
- `transaction`: ``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception).
- `busy`: SQLITE_BUSY / SQLITE_LOCKED — another connection held the write lock past the busy
  timeout; the journal raises `JournalBusy` for it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from app.journal_schema import MIGRATIONS

__all__ = ["BUSY_TIMEOUT_MS", "JournalBusy", "JournalFailed", "JournalUnreadable", "busy",
           "connect", "failure", "fsync_failed", "transaction"]

BUSY_TIMEOUT_MS: Final = 5_000
_UNREADABLE: Final = (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)
_UNWRITABLE: Final = (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
#: SQLite's extended codes for a failed fsync of a file or of its directory.
_FSYNC_FAILED: Final = (1034, 1290)   # SQLITE_IOERR_FSYNC, SQLITE_IOERR_DIR_FSYNC


class JournalBusy(sqlite3.OperationalError):
    """Another connection held the journal's write lock past the busy timeout: nothing was
    written. A ``sqlite3.OperationalError``, so whoever handled those still does."""


class JournalFailed(sqlite3.OperationalError):
    """The journal could not do what was asked: the disk is full, an I/O error, an fsync that
    failed. Nothing new was acknowledged; the daemon goes on, and whoever asked asks again
    later. A ``sqlite3.OperationalError``, so whoever handled those still does."""


class JournalUnreadable(RuntimeError):
    """The journal file cannot be used (not SQLite, corrupt, unopenable, on a disk that refuses
    writes, a newer schema); the message names the file and what to do."""


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """Open the journal at `path` (creating its directories and schema, migrating an older
    one) with `synchronous` (NORMAL, FULL or EXTRA, already validated). Raises
    `JournalUnreadable` for a file that cannot be used, `sqlite3.OperationalError` (busy) when
    another process holds it locked past the busy timeout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: no implicit transactions; transaction() says BEGIN itself.
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise RuntimeError(f"journal {str(path)!r}: WAL mode unavailable ({mode})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA wal_autocheckpoint = 0")   # journal_sync checkpoints instead
        _migrate(conn, path)
    except sqlite3.DatabaseError as error:
        conn.close()
        if busy(error):
            raise
        if error.sqlite_errorcode & 0xFF in _UNREADABLE:
            raise JournalUnreadable(
                f"journal {path} is not a readable SQLite database ({error}): move it aside "
                "and restore from backup, or start with a new journal path") from None
        if error.sqlite_errorcode & 0xFF in _UNWRITABLE:
            raise JournalUnreadable(
                f"journal {path} cannot be written ({error}): the disk is full or failing; "
                "free space or check the disk (df -h, dmesg), then start again") from None
        raise JournalUnreadable(f"journal {path} cannot be opened ({error}): check the path, "
                                "its directory and their permissions") from None
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction: the write lock is taken up front, committed on success, rolled back
    on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def busy(error: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (any extended code): a lock held too long, not a fault."""
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def failure(error: sqlite3.DatabaseError, path: Path) -> sqlite3.DatabaseError:
    """What `error`, raised by a statement on `path`, is to the journal's callers: `JournalBusy`
    for a lock held too long, `JournalFailed` for the database or the disk failing (full, an I/O
    error, corrupt), else `error` itself (an integrity or programming error: a bug)."""
    if isinstance(error, (JournalBusy, JournalFailed)):
        return error
    if busy(error):
        return JournalBusy(f"journal {path} busy: another process holds its write lock "
                           f"({error})")
    if type(error) in (sqlite3.OperationalError, sqlite3.DatabaseError):
        return JournalFailed(f"journal {path} failed: {error}; nothing was written")
    return error


def fsync_failed(error: sqlite3.Error) -> bool:
    """A commit whose own fsync (``synchronous`` FULL or EXTRA) failed."""
    return getattr(error, "sqlite_errorcode", None) in _FSYNC_FAILED


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    with transaction(conn):
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise JournalUnreadable(f"journal {path} has schema version {version}; this execd "
                                    f"knows up to {len(MIGRATIONS)}: run a newer execd")
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number:d}")  # PRAGMA takes no parameters
