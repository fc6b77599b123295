"""The durable store: signals, their intents and spool offsets, in SQLite (SPEC §4.3, §5.3, §5.6).

Every statement runs on one dedicated thread (``journal_thread``), so statements are serialized
and the event loop never waits on the disk (the WAL's fsyncs and checkpoints run on threads of
their own, ``journal_sync``); each public coroutine is one transaction on that thread, complete
before it returns. Writes use ``BEGIN IMMEDIATE``, so a read-then-write (the duplicate check of
`Journal.accept`, the terminal guard) is atomic, even against another process on the same file.

Durability (SPEC §5.6): the database runs in WAL mode. Every committed transaction survives a
crash of the process (``kill -9``): the commit is in the WAL file before the call returns. What a
power loss or kernel crash may lose depends on ``synchronous`` (``journal.synchronous``):

- The commits that acknowledge something are always on the disk before they return, whatever
  the setting: `Journal.accept` (a signal → HTTP 202, a spool line, a NATS ack), `set_offset` (a
  spool read position) and `save_trading_state`. Under ``NORMAL`` the commit itself is not
  synced (the writer thread would wait for the disk, and every intent write behind it): it then
  awaits a group fsync of the WAL that started after it (``journal_sync.WalSync``).
- Every other write (intents, signal states, fills, filled quantities) follows the setting. Under
  ``NORMAL`` (the default) a power cut may lose the last of them, never corrupt the file; that is
  safe because client ids are deterministic: restart recovery looks up by id every leg the journal
  does not show sent before sending anything (``execution/reconcile.adopt_unjournaled``).
  ``FULL`` fsyncs every commit; ``EXTRA`` also syncs the directory.

Trouble: a write lock another process holds past the busy timeout raises `JournalBusy` (nothing
was written; try again); a file that is not a readable journal raises `JournalUnreadable` at
``open`` with a message saying what to do; any other failure of the database or the disk (full,
an I/O error) raises `JournalFailed` (rolled back: try again later). After a failed fsync it
acknowledges nothing more until restarted (``journal_sync``).

Storage: decimals as TEXT (``str(Decimal)``, exact), enums as their string values, the signal as
the JSON of `Signal.to_record` beside indexed columns. The schema is versioned with
``PRAGMA user_version``; ``journal_schema.MIGRATIONS`` lists the steps, never edited once
released, only extended.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import replace
from decimal import Decimal
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Final, TypeVar

import orjson

from app.domain import Intent, IntentState, Leg, Signal, SignalState, StateChange, TradingState
from app.journal_db import (
    JournalBusy,
    JournalFailed,
    JournalUnreadable,
    connect,
    failure,
    transaction,
)
from app.journal_fills import Fill, FillLedger
from app.journal_offsets import OffsetStore
from app.journal_rows import (
    INTENT_COLUMNS,
    SIGNAL_COLUMNS,
    SignalEnded,
    SignalRecord,
    as_text,
    insert_signal,
    install_start,
    intent_from_row,
    intent_row,
    intents_of,
    marks,
    record_from_row,
    select_signal,
    set_offset_row,
    start_intent,
    upsert_intent,
)
from app.journal_sync import NotDurable, PendingAccepts, WalSync
from app.journal_thread import WriterThread

__all__ = ["Fill", "Journal", "JournalBusy", "JournalFailed", "JournalUnreadable", "NotDurable",
           "SignalEnded", "SignalRecord"]

_T = TypeVar("_T")
_SYNCHRONOUS: Final = ("NORMAL", "FULL", "EXTRA")
_PROTECTIVE: Final = (Leg.STOP_LOSS.value, Leg.TAKE_PROFIT.value)
_NON_TERMINAL: Final = tuple(s.value for s in SignalState if not s.is_terminal)



class Journal(FillLedger, OffsetStore):
    """The SQLite journal at `path`. Open it (``await open()`` or ``async with``) before use.

    Every method but the constructor is a coroutine whose database work runs on the journal's
    own thread. Calling one on a journal that is not open raises ``RuntimeError``.
    """

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        """No I/O here. `synchronous` is NORMAL, FULL or EXTRA (see the module docstring);
        anything else raises ``ValueError``."""
        mode = synchronous.upper()
        if mode not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, "
                             f"got {synchronous!r}")
        self.path = path
        self.synchronous = mode
        #: NORMAL commits are not fsynced: an acknowledging one then awaits a group fsync.
        self._group_sync = mode == "NORMAL"
        self._wal_sync: WalSync | None = None
        self._thread: WriterThread | None = None
        self._conn: sqlite3.Connection | None = None
        self._listeners: list[Callable[[SignalRecord], None]] = []
        self._pending = PendingAccepts()

    def __repr__(self) -> str:
        state = "open" if self._conn is not None else "closed"
        return f"<Journal {str(self.path)!r} {state} synchronous={self.synchronous}>"

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        """Create the parent directories, the database and its schema (migrating an older one).
        Raises ``RuntimeError`` if already open or if the file was written by a newer schema."""
        if self._thread is not None:
            raise RuntimeError("journal is already open")
        thread = self._thread = WriterThread("execd-journal")
        try:
            self._conn = await thread.submit(self._connect)
            wal_sync = WalSync(self.path)
            await wal_sync.open()
            self._wal_sync = wal_sync
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Wait for queued work, close the database. Idempotent."""
        thread, conn, wal_sync = self._thread, self._conn, self._wal_sync
        if thread is None:
            return
        self._thread = self._conn = self._wal_sync = None
        try:
            if wal_sync is not None:   # first: the writer's close then removes the WAL
                await wal_sync.close()
            if conn is not None:
                # Shielded: a cancelled close must still close the connection.
                await asyncio.shield(thread.submit(conn.close))
        finally:
            thread.stop()              # the thread is idle now; it ends on its own

    async def __aenter__(self) -> Journal:
        await self.open()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    def add_listener(self, listener: Callable[[SignalRecord], None]) -> None:
        """Call ``listener(record)`` on the event loop after every committed change of a
        signal's state (a new signal accepted, `set_signal_state` writing, a first intent
        starting its signal), in commit order.
        It must be quick and must not raise (the execution reports buffer the record)."""
        self._listeners.append(listener)

    def _changed(self, record: SignalRecord) -> None:
        for listener in self._listeners:
            listener(record)

    def status(self) -> dict[str, object]:
        """For ``GET /v1/status``: the file, its ``synchronous``, whether it acknowledges."""
        return {"path": str(self.path), "synchronous": self.synchronous,
                "acknowledging": self.broken is None, "broken": self.broken}

    @property
    def broken(self) -> str | None:
        """Why the journal acknowledges nothing more until restarted (the first fsync that
        failed, module docstring), or None while it does."""
        return None if self._wal_sync is None else self._wal_sync.broken

    # ------------------------------------------------------------------ signals
    async def accept(self, signal: Signal, *, now: float,
                     offset: tuple[str, int] | None = None,
                     on_commit: Callable[[SignalRecord], None] | None = None,
                     ) -> tuple[SignalRecord, bool]:
        """Journal `signal` as ACCEPTED with the next sequence number, on the disk before this
        returns; True if new. A known id returns its existing record and False, unchanged.

        `offset` = (name, value), if given, is stored in the same transaction (new or duplicate),
        so a spool line is never both accepted and re-read after a crash (SPEC §4.2).
        `on_commit(record)` is called for a new signal once it is committed, before the fsync
        that acknowledges it has completed (the intake queues it then): until `durable` says
        so, nothing the signal leads to may leave the process. While the journal acknowledges
        nothing (`broken`), a known id without an offset is still answered, by a read.
        """
        if self.broken is not None and offset is None and (
                known := await self.get_signal(signal.id)) is not None:
            return known, False
        values = (signal.id, signal.symbol, now, now, orjson.dumps(signal.to_record()).decode())

        def insert(conn: sqlite3.Connection) -> tuple[SignalRecord, bool]:
            seq = insert_signal(conn, values)
            if seq is None:
                existing = select_signal(conn, signal.id)
                assert existing is not None            # signals are never deleted
                return existing, False
            return SignalRecord(signal, SignalState.ACCEPTED, None, seq, now, now), True

        def work(conn: sqlite3.Connection) -> tuple[SignalRecord, bool]:
            # Then fsynced: it acknowledges. Without an offset, one statement (a transaction by
            # itself): one trip through the GIL on this thread, not five (issue 16).
            if offset is None:
                return insert(conn)
            with transaction(conn):
                set_offset_row(conn, *offset)
                return insert(conn)

        def committed(result: tuple[SignalRecord, bool],
                      synced: asyncio.Future[None] | None) -> None:
            record, created = result
            if created:
                if synced is not None:
                    self._pending.add(record.signal.id, synced)
                self._changed(record)
                if on_commit is not None:
                    on_commit(record)

        return await self._run_acknowledging(work, committed)

    async def durable(self, signal_id: str) -> None:
        """Return once the accept of `signal_id` is on the disk (at once if it is); raise
        ``NotDurable``, every time, if its fsync failed (see `accept`'s ``on_commit``)."""
        await self._pending.durable(signal_id)

    async def get_signal(self, signal_id: str) -> SignalRecord | None:
        """The journaled record of `signal_id`, or None."""
        return await self._run(lambda conn: select_signal(conn, signal_id))

    async def set_signal_state(self, signal_id: str, state: SignalState, *, reason: str | None,
                               now: float, expect: SignalState | None = None) -> SignalRecord:
        """Move a signal to `state` with `reason`; `updated_at` becomes `now`. Returns the new
        record. Raises ``KeyError`` for an unknown id and ``ValueError`` for a move SPEC §5.7
        forbids: out of a terminal state, or back to ACCEPTED. Setting a terminal signal to the
        state it already has changes nothing (its first reason stands) and returns the record.
        With `expect`, a signal found in another state is returned unchanged (the check and
        the move are one transaction: an operator's cancel and the executor's start race).
        """
        record, _ = await self._set_signal_state(signal_id, state, reason, now, expect)
        return record

    async def end_signal(self, signal_id: str, state: SignalState, *, reason: str,
                         now: float) -> tuple[SignalRecord, list[Intent]]:
        """`set_signal_state` to a terminal `state`, and the signal's intents (`intents_for`)
        read right after, in one trip (the executor's last word on a signal)."""
        return await self._set_signal_state(signal_id, state, reason, now, None,
                                            listing=True)

    async def _set_signal_state(self, signal_id: str, state: SignalState, reason: str | None,
                                now: float, expect: SignalState | None, *,
                                listing: bool = False) -> tuple[SignalRecord, list[Intent]]:
        def move(conn: sqlite3.Connection) -> SignalRecord:
            with transaction(conn):
                old = select_signal(conn, signal_id)
                if old is None:
                    raise KeyError(signal_id)
                if (old.state.is_terminal and state is old.state) or (
                        expect is not None and old.state is not expect):
                    return old
                if old.state.is_terminal or (state is SignalState.ACCEPTED
                                             and old.state is not SignalState.ACCEPTED):
                    raise ValueError(f"signal {signal_id!r}: cannot move from "
                                     f"{old.state.value} to {state.value}")
                conn.execute("UPDATE signals SET state = ?, reason = ?, updated_at = ? "
                             "WHERE id = ?", (state.value, reason, now, signal_id))
            return SignalRecord(old.signal, state, reason, old.seq, old.accepted_at, now,
                                old.filled_quantity)

        def work(conn: sqlite3.Connection) -> tuple[SignalRecord, list[Intent]]:
            return move(conn), (intents_of(conn, signal_id) if listing else [])

        record, intents = await self._run(work)
        if record.updated_at == now and record.state is state:   # written, not left as it was
            self._changed(record)
        return record, intents

    async def signals_updated_since(self, since: float) -> list[SignalRecord]:
        """Signals whose state last changed at or after `since` (seconds), oldest change
        first: what the execution reports publish again after a restart."""
        sql = (f"SELECT {SIGNAL_COLUMNS} FROM signals WHERE updated_at >= ? "
               "ORDER BY updated_at, seq")
        return await self._run(
            lambda conn: [record_from_row(row) for row in conn.execute(sql, (since,))])

    async def non_terminal_signals(self) -> list[SignalRecord]:
        """Signals still ACCEPTED or RUNNING, in acceptance order: what recovery resumes."""
        sql = (f"SELECT {SIGNAL_COLUMNS} FROM signals WHERE state IN "
               f"({marks(_NON_TERMINAL)}) ORDER BY seq")
        return await self._run(
            lambda conn: [record_from_row(row) for row in conn.execute(sql, _NON_TERMINAL)])

    async def counts(self) -> dict[str, int]:
        """Signals per state, every state present (0 when none)."""
        def work(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT state, COUNT(*) FROM signals GROUP BY state")
            return {state.value: 0 for state in SignalState} | dict(rows.fetchall())

        return await self._run(work)

    # ------------------------------------------------------------------ intents
    async def put_intent(self, intent: Intent, *, start: SignalRecord | None = None) -> None:
        """Insert or update the intent keyed by its client id, committed before this returns.
        Raises ``KeyError`` if its signal is not journaled and ``ValueError`` if the client id
        already belongs to another signal or leg, or a decimal is not finite.

        ``start``: the signal's ``ACCEPTED`` record, for its first order — in the same
        transaction the signal becomes ``RUNNING`` (one journal trip before the order, not
        two), and the ``RUNNING`` record the listeners hear of is made from it, not read back;
        a signal found ended (an operator's cancel) raises `SignalEnded` and nothing is
        written."""
        for value in (intent.quantity, intent.price):
            if value is not None and not value.is_finite():
                raise ValueError(f"intent {intent.client_id!r}: not a finite decimal: {value}")
        row = intent_row(intent)

        def work(conn: sqlite3.Connection) -> SignalRecord | None:
            if start is None:        # one statement, its own transaction: the fewest trips
                upsert_intent(conn, intent, row)
                return None
            if not start_intent(conn, intent, row):    # one statement too
                return None                            # it was RUNNING already
            return replace(start, state=SignalState.RUNNING, reason=None,
                           updated_at=intent.updated_at)

        started = await self._run(work)
        if started is not None:
            self._changed(started)

    async def get_intent(self, client_id: str) -> Intent | None:
        """The intent with `client_id`, or None."""
        sql = f"SELECT {INTENT_COLUMNS} FROM intents WHERE client_id = ?"
        rows = await self._intents(sql, (client_id,))
        return rows[0] if rows else None

    async def intents_for(self, signal_id: str) -> list[Intent]:
        """The signal's intents in leg order (E, S, T, C); within a leg (a stop-loss placed
        again by the guard) in the order first journaled, the latest last."""
        return await self._run(lambda conn: intents_of(conn, signal_id))

    async def intents_in_states(self, states: Iterable[IntentState]) -> list[Intent]:
        """Every intent in one of `states`, in the order first journaled."""
        values = tuple(sorted({state.value for state in states}))
        if not values:
            return []
        sql = (f"SELECT {INTENT_COLUMNS} FROM intents WHERE state IN ({marks(values)}) "
               "ORDER BY seq")
        return await self._intents(sql, values)

    async def live_protective(self, symbol: str) -> list[Intent]:
        """Stop-loss and take-profit intents PLACED (open on the exchange) for `symbol`, oldest
        (first journaled) first."""
        sql = (f"SELECT {INTENT_COLUMNS} FROM intents WHERE state = ? AND symbol = ? "
               "AND leg IN (?, ?) ORDER BY seq")
        return await self._intents(sql, (IntentState.PLACED.value, symbol, *_PROTECTIVE))

    async def last_filled(self, symbol: str
                          ) -> tuple[Intent, SignalRecord | None, list[Intent]] | None:
        """The last entry or close of ``symbol`` that filled, whole or in part (an entry that
        ended with a ``filled_quantity``), by the order first journaled; None if none did. An
        entry comes with its signal and its stop-loss intents (the latest last): the guard's
        question (SPEC §5.9), in one trip to the journal's thread."""
        columns = ", ".join(f"i.{c.strip()}" for c in INTENT_COLUMNS.split(","))
        sql = (f"SELECT {columns} FROM intents i JOIN signals s ON s.id = i.signal_id "
               "WHERE i.symbol = ? AND i.leg IN (?, ?) AND (i.state = ? OR "
               "(i.leg = ? AND s.filled_quantity IS NOT NULL AND s.filled_quantity != '0')) "
               "ORDER BY i.seq DESC LIMIT 1")
        params = (symbol, Leg.ENTRY.value, Leg.CLOSE.value, IntentState.FILLED.value,
                  Leg.ENTRY.value)

        def work(conn: sqlite3.Connection
                 ) -> tuple[Intent, SignalRecord | None, list[Intent]] | None:
            row = conn.execute(sql, params).fetchone()
            if row is None:
                return None
            last = intent_from_row(row)
            if last.leg is not Leg.ENTRY:
                return last, None, []
            stops = conn.execute(f"SELECT {INTENT_COLUMNS} FROM intents WHERE signal_id = ? "
                                 "AND leg = ? ORDER BY seq", (last.signal_id, Leg.STOP_LOSS.value))
            return (last, select_signal(conn, last.signal_id),
                    [intent_from_row(r) for r in stops])

        return await self._run(work)

    async def live_protective_all(self) -> list[Intent]:
        """`live_protective` over every symbol (the orphan watcher's view), oldest first."""
        sql = (f"SELECT {INTENT_COLUMNS} FROM intents WHERE state = ? AND leg IN (?, ?) "
               "ORDER BY seq")
        return await self._intents(sql, (IntentState.PLACED.value, *_PROTECTIVE))

    async def set_filled_quantity(self, signal_id: str, quantity: Decimal) -> None:
        """Record how much of the signal's entry filled."""
        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("UPDATE signals SET filled_quantity = ? WHERE id = ?",
                             (as_text(quantity), signal_id))

        await self._run(work)

    # ------------------------------------------------------------------ trading state
    async def load_trading_state(self) -> StateChange | None:
        """The trading state as last saved (SPEC §5.10), or None before the first change."""
        def work(conn: sqlite3.Connection) -> StateChange | None:
            row = conn.execute("SELECT state, reason, since, changed_by FROM trading_state "
                               "WHERE id = 1").fetchone()
            return None if row is None else StateChange(TradingState(row[0]), row[1],
                                                        float(row[2]), row[3])

        return await self._run(work)

    async def save_trading_state(self, change: StateChange) -> None:
        """Replace the saved trading state, committed (fsynced: an operator was told it
        changed) before return."""
        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):   # then fsynced: it acknowledges
                conn.execute("INSERT OR REPLACE INTO trading_state (id, state, reason, since, "
                             "changed_by) VALUES (1, ?, ?, ?, ?)",
                             (change.state.value, change.reason, change.since, change.by))

        await self._run_acknowledging(work)

    # ------------------------------------------------------------------ plumbing
    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        thread, conn = self._thread, self._conn
        if thread is None or conn is None:
            raise RuntimeError(f"journal {str(self.path)!r} is not open")
        wal_sync = self._wal_sync
        if wal_sync is not None and wal_sync.wrote():
            thread.post(partial(wal_sync.catch_up, conn))   # first; nobody waits
        try:
            return await thread.submit(partial(work, conn))
        except sqlite3.DatabaseError as error:
            if wal_sync is not None:
                wal_sync.saw(error)
            if (meant := failure(error, self.path)) is error:
                raise
            raise meant from error

    async def _run_acknowledging(
            self, work: Callable[[sqlite3.Connection], _T],
            committed: Callable[[_T, asyncio.Future[None] | None], None] | None = None) -> _T:
        """`_run` for a write that acknowledges: on the disk once this returns. Under NORMAL
        the writer thread asks for a group fsync of the WAL right after the commit (handed to
        the sync thread directly, ``journal_sync``); FULL and EXTRA synced the commit.
        `committed(result, synced)` runs on the loop between the commit and the fsync's end
        (``synced``: done with it; None when the commit synced itself)."""
        if self._wal_sync is not None:
            self._wal_sync.check()
        wal_sync = self._wal_sync if self._group_sync else None

        def then_sync(conn: sqlite3.Connection) -> tuple[_T, Future[None] | None]:
            result = work(conn)
            return result, (None if wal_sync is None else wal_sync.request())

        result, request = await self._run(then_sync)
        synced = None if request is None else asyncio.wrap_future(request)
        if committed is not None:
            committed(result, synced)
        if synced is not None:   # shared with other callers: a cancelled one leaves it be
            await asyncio.shield(synced)
        return result

    async def _intents(self, sql: str, params: Sequence[object]) -> list[Intent]:
        return await self._run(
            lambda conn: [intent_from_row(row) for row in conn.execute(sql, params)])

    def _connect(self) -> sqlite3.Connection:
        """On the worker thread: connect, configure, migrate; the view that starts a
        signal (`journal_rows.install_start`)."""
        conn = connect(self.path, self.synchronous)
        install_start(conn)
        return conn
