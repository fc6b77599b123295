"""How the journal's rows map to domain records and back (``app/journal.py`` and
``app/journal_fills.py`` use it): the column lists, `SignalRecord`, intents to rows and back,
decimals as exact TEXT; and the one-row statements the journal's transactions share (an intent
upserted, a signal started, an offset stored)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import orjson

from app.domain import Intent, IntentState, Leg, OrderType, Side, Signal, SignalState

__all__ = ["INTENT_COLUMNS", "SIGNAL_COLUMNS", "SignalEnded", "SignalRecord", "as_decimal",
           "as_text", "install_start", "intent_from_row", "intent_row", "marks",
           "record_from_row", "select_signal", "set_offset_row", "start_intent",
           "upsert_intent"]

SIGNAL_COLUMNS: Final = "body, state, reason, seq, accepted_at, updated_at, filled_quantity"
INTENT_COLUMNS: Final = ("signal_id, leg, client_id, symbol, side, order_type, quantity, price, "
                         "reduce_only, state, exchange_id, error_code, error_message, updated_at")


@dataclass(frozen=True, slots=True)
class SignalRecord:
    """A journaled signal and where it stands. `seq` is its place in acceptance order (from 1);
    times are epoch seconds as given by the caller."""

    signal: Signal
    state: SignalState
    reason: str | None
    seq: int
    accepted_at: float
    updated_at: float
    #: How much of the entry filled, once known (SPEC §5.9: set for a partial fill too).
    filled_quantity: Decimal | None = None


def select_signal(conn: sqlite3.Connection, signal_id: str) -> SignalRecord | None:
    row = conn.execute(f"SELECT {SIGNAL_COLUMNS} FROM signals WHERE id = ?",
                       (signal_id,)).fetchone()
    return None if row is None else record_from_row(row)


def insert_signal(conn: sqlite3.Connection, values: Sequence[object]) -> int | None:
    """Insert a new signal, ``ACCEPTED``, with the next sequence number, in one statement (a
    transaction by itself outside one): its ``seq``, or None when the id is journaled already
    (nothing is written). `values`: id, symbol, accepted_at, updated_at, body."""
    rows = conn.execute(_INSERT_SIGNAL, values).fetchall()   # all: the statement ends, commits
    return int(rows[0][0]) if rows else None


def record_from_row(row: Sequence[Any]) -> SignalRecord:
    body, state, reason, seq, accepted_at, updated_at, filled = row
    return SignalRecord(Signal.from_record(orjson.loads(body)), SignalState(state), reason, seq,
                        accepted_at, updated_at, as_decimal(filled))


def intent_row(intent: Intent) -> tuple[object, ...]:
    return (intent.signal_id, intent.leg.value, intent.client_id, intent.symbol,
            intent.side.value, intent.order_type.value, as_text(intent.quantity),
            as_text(intent.price), int(intent.reduce_only), intent.state.value, intent.exchange_id,
            intent.error_code, intent.error_message, intent.updated_at)


def intent_from_row(row: Sequence[Any]) -> Intent:
    (signal_id, leg, client_id, symbol, side, order_type, quantity, price, reduce_only, state,
     exchange_id, error_code, error_message, updated_at) = row
    return Intent(
        signal_id=signal_id, leg=Leg(leg), client_id=client_id, symbol=symbol, side=Side(side),
        order_type=OrderType(order_type), quantity=as_decimal(quantity), price=as_decimal(price),
        reduce_only=bool(reduce_only), state=IntentState(state), exchange_id=exchange_id,
        error_code=error_code, error_message=error_message, updated_at=updated_at,
    )


def as_text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)  # str() round-trips a Decimal exactly


def as_decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def marks(values: Sequence[object]) -> str:
    """SQL placeholders for `values`: ``?, ?, ?``."""
    return ", ".join("?" * len(values))


#: How an intent's row is upserted under its client id: only by its own signal and leg.
_UPSERT: Final = (
    "ON CONFLICT (client_id) DO UPDATE SET symbol = excluded.symbol, "
    "side = excluded.side, order_type = excluded.order_type, "
    "quantity = excluded.quantity, price = excluded.price, "
    "reduce_only = excluded.reduce_only, state = excluded.state, "
    "exchange_id = excluded.exchange_id, error_code = excluded.error_code, "
    "error_message = excluded.error_message, updated_at = excluded.updated_at "
    "WHERE intents.signal_id = excluded.signal_id AND intents.leg = excluded.leg")
#: A new signal with the next seq; a known id conflicts and is left as it is (no row back).
#: ``WHERE true``: SQLite's rule for an upsert on ``INSERT … SELECT``.
_INSERT_SIGNAL: Final = (
    "INSERT INTO signals (id, seq, symbol, state, reason, accepted_at, updated_at, body) "
    f"SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, '{SignalState.ACCEPTED.value}', NULL, ?3, ?4, "
    "?5 FROM signals WHERE true ON CONFLICT (id) DO NOTHING RETURNING seq")
_ENDED: Final = "execd: signal ended"
_TAKEN: Final = "execd: client id taken"


def upsert_intent(conn: sqlite3.Connection, intent: Intent, row: Sequence[object]) -> None:
    """Insert the intent or update it under its client id; a client id of another signal or
    leg is left as it is (`ValueError`), an unknown signal is `KeyError` (its foreign key)."""
    try:
        changed = conn.execute(
            f"INSERT INTO intents ({INTENT_COLUMNS}) VALUES ({marks(row)}) {_UPSERT}",
            row).rowcount
    except sqlite3.IntegrityError as error:
        if "FOREIGN KEY" in str(error):
            raise KeyError(intent.signal_id) from None
        raise
    if changed == 0:
        raise _taken(conn, intent)


def _taken(conn: sqlite3.Connection, intent: Intent) -> ValueError:
    signal_id, leg = conn.execute("SELECT signal_id, leg FROM intents WHERE client_id = ?",
                                  (intent.client_id,)).fetchone()
    return ValueError(
        f"client id {intent.client_id!r} belongs to signal {signal_id!r} leg {leg}, not "
        f"signal {intent.signal_id!r} leg {intent.leg.value}")


def install_start(conn: sqlite3.Connection) -> None:
    """On the writer's connection: the temp view `start_intent` writes through. Inserting an
    intent into it starts its signal in one statement (atomic by itself): a signal that ended
    aborts it, an ``ACCEPTED`` one becomes ``RUNNING``, and the intent is upserted as by
    `upsert_intent`. One statement instead of a transaction of four: each statement hands the
    GIL to a busy event loop and back (issue 16)."""
    new = ", ".join(f"NEW.{column.strip()}" for column in INTENT_COLUMNS.split(","))
    conn.execute(f"CREATE TEMP VIEW IF NOT EXISTS start_intent AS SELECT {INTENT_COLUMNS} "
                 "FROM intents")
    conn.execute(
        "CREATE TEMP TRIGGER IF NOT EXISTS start_intent_insert INSTEAD OF INSERT ON "
        "start_intent BEGIN "
        f"SELECT RAISE(ABORT, '{_ENDED}') FROM signals WHERE id = NEW.signal_id "
        f"AND state NOT IN ('{SignalState.ACCEPTED.value}', '{SignalState.RUNNING.value}'); "
        f"SELECT RAISE(ABORT, '{_TAKEN}') FROM intents WHERE client_id = NEW.client_id "
        "AND (signal_id != NEW.signal_id OR leg != NEW.leg); "
        f"UPDATE signals SET state = '{SignalState.RUNNING.value}', reason = NULL, "
        f"updated_at = NEW.updated_at WHERE id = NEW.signal_id "
        f"AND state = '{SignalState.ACCEPTED.value}'; "
        f"INSERT INTO intents ({INTENT_COLUMNS}) VALUES ({new}) {_UPSERT}; END")


def start_intent(conn: sqlite3.Connection, intent: Intent, row: Sequence[object]) -> bool:
    """Journal the signal's first intent and start the signal (`install_start`): True if it
    moved ``ACCEPTED`` → ``RUNNING``, False if it was ``RUNNING``. An ended signal is
    `SignalEnded`, an unknown one `KeyError`, a client id of another signal or leg
    `ValueError`; then nothing is written."""
    before = conn.total_changes
    try:
        conn.execute(f"INSERT INTO start_intent VALUES ({marks(row)})", row)
    except sqlite3.IntegrityError as error:
        text = str(error)
        if _ENDED in text:
            ended = select_signal(conn, intent.signal_id)
            assert ended is not None
            raise SignalEnded(ended) from None
        if _TAKEN in text:
            raise _taken(conn, intent) from None
        if "FOREIGN KEY" in text:
            raise KeyError(intent.signal_id) from None
        raise
    return conn.total_changes - before >= 2     # the intent only: it was RUNNING already


class SignalEnded(Exception):
    """A signal meant to start had ended already (an operator cancelled it); `record` is it."""

    def __init__(self, record: SignalRecord) -> None:
        super().__init__(f"signal {record.signal.id!r} is {record.state.value}")
        self.record = record


def set_offset_row(conn: sqlite3.Connection, name: str, value: int,
                   file: str | None = None) -> None:
    """Store the offset `name` (an integer ≥ 0, else `ValueError`); a None `file` keeps the
    stored one."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"offset {name!r} must be an integer ≥ 0, got {value!r}")
    conn.execute("INSERT INTO offsets (name, value, file) VALUES (?, ?, ?) "
                 "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                 "file = COALESCE(excluded.file, offsets.file)", (name, value, file))


_LEG_ORDER: Final = {leg: rank for rank, leg in enumerate(Leg)}  # E, S, T, C


def intents_of(conn: sqlite3.Connection, signal_id: str) -> list[Intent]:
    """A signal's intents in leg order (E, S, T, C), each leg in the order first journaled
    (`Journal.intents_for`, on the writer's thread)."""
    rows = conn.execute(f"SELECT {INTENT_COLUMNS} FROM intents WHERE signal_id = ? "
                        "ORDER BY seq", (signal_id,))
    return sorted((intent_from_row(row) for row in rows), key=lambda i: _LEG_ORDER[i.leg])
