"""The journal's offsets (SPEC §4.2): named read positions it acknowledges, such as a spool
file's (with the identity of the file it is in) or the NATS reports' flushed mark. A part of
`app.journal.Journal`, which runs these on its worker thread (`_run`, `_run_acknowledging`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import TypeVar

from app.journal_db import transaction
from app.journal_rows import set_offset_row

__all__ = ["OffsetStore"]

_T = TypeVar("_T")


class OffsetStore:
    """The offsets table's operations; `Journal` provides `_run` and `_run_acknowledging`
    (fsynced before it returns: an offset acknowledges what was read before it)."""

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        raise NotImplementedError

    async def _run_acknowledging(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        raise NotImplementedError

    async def get_offset(self, name: str) -> int | None:
        """The stored read offset called `name` (e.g. a spool file), or None."""
        def work(conn: sqlite3.Connection) -> int | None:
            row = conn.execute("SELECT value FROM offsets WHERE name = ?", (name,)).fetchone()
            return None if row is None else int(row[0])

        return await self._run(work)

    async def get_offset_file(self, name: str) -> str | None:
        """The identity of the file the offset `name` was read in (as given to `set_offset`),
        or None when none was stored."""
        def work(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT file FROM offsets WHERE name = ?", (name,)).fetchone()
            return None if row is None else row[0]

        return await self._run(work)

    async def set_offset(self, name: str, value: int, *, file: str | None = None) -> None:
        """Store the read offset `name` (≥ 0, else ``ValueError``), committed and fsynced
        before return. `file`, if given, is the identity of the file it is in, stored beside
        it; without it the stored identity stays."""
        await self.set_offsets({name: (value, file)})

    async def set_offsets(self, offsets: Mapping[str, tuple[int, str | None]]) -> None:
        """Store several offsets, name → (value, file) as for `set_offset`, in one
        transaction: all or none (``ValueError`` for a bad value, and none is stored)."""
        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):   # then fsynced: it acknowledges
                for name, (value, file) in offsets.items():
                    set_offset_row(conn, name, value, file)

        await self._run_acknowledging(work)
