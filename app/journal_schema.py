"""The journal's SQLite schema, as migration steps (``app/journal.py`` applies them).

Each step is one transaction; its index + 1 is the ``PRAGMA user_version`` it leaves behind. A
released step is never edited, only followed by new ones.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MIGRATIONS"]

# Each migration is one transaction; its index + 1 is the user_version it leaves behind.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE signals (
            id          TEXT PRIMARY KEY,
            seq         INTEGER NOT NULL UNIQUE,  -- acceptance order, 1, 2, 3, ...
            symbol      TEXT NOT NULL,
            state       TEXT NOT NULL,
            reason      TEXT,
            accepted_at REAL NOT NULL,
            updated_at  REAL NOT NULL,
            body        TEXT NOT NULL             -- JSON of Signal.to_record()
        )""",
        "CREATE INDEX signals_state ON signals (state, seq)",
        "CREATE INDEX signals_symbol ON signals (symbol, seq)",
        """CREATE TABLE intents (
            seq           INTEGER PRIMARY KEY,    -- order first journaled; kept by upserts
            client_id     TEXT NOT NULL UNIQUE,
            signal_id     TEXT NOT NULL REFERENCES signals (id),
            leg           TEXT NOT NULL,
            symbol        TEXT NOT NULL,
            side          TEXT NOT NULL,
            order_type    TEXT NOT NULL,
            quantity      TEXT,
            price         TEXT,
            reduce_only   INTEGER NOT NULL,
            state         TEXT NOT NULL,
            exchange_id   TEXT,
            error_code    INTEGER,
            error_message TEXT,
            updated_at    REAL NOT NULL
        )""",
        "CREATE INDEX intents_signal ON intents (signal_id)",
        "CREATE INDEX intents_state ON intents (state, symbol)",
        "CREATE TABLE offsets (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    ),
    (
        # SPEC §5.9: how much of an entry filled; §5.8: every fill, as the exchange reported it.
        "ALTER TABLE signals ADD COLUMN filled_quantity TEXT",
        """CREATE TABLE fills (
            client_id        TEXT NOT NULL,
            trade_id         INTEGER NOT NULL,
            symbol           TEXT NOT NULL,
            side             TEXT NOT NULL,
            quantity         TEXT NOT NULL,
            price            TEXT NOT NULL,
            commission       TEXT NOT NULL,
            commission_asset TEXT NOT NULL,
            realized_pnl     TEXT NOT NULL,
            time             REAL NOT NULL,           -- epoch seconds (the trade's time)
            PRIMARY KEY (client_id, trade_id)
        )""",
        "CREATE INDEX fills_time ON fills (time)",
    ),
    (
        # SPEC §4.2 item 4: which file a spool offset is in ("st_dev:st_ino"), so a rotated or
        # replaced spool is told apart from the one the offset was read in. NULL: not known.
        "ALTER TABLE offsets ADD COLUMN file TEXT",
    ),
    (
        # SPEC §5.10: the trading state survives restarts (one row, the latest change).
        """CREATE TABLE trading_state (
            id         INTEGER PRIMARY KEY CHECK (id = 1),
            state      TEXT NOT NULL,
            reason     TEXT NOT NULL,
            since      REAL NOT NULL,
            changed_by TEXT NOT NULL
        )""",
    ),
)
