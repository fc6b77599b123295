"""The journal's fills (SPEC §5.8, §5.10): every trade of execd's orders as the exchange
reported it, and the sums read from them (today's realized PnL, the daily loss). A part of
`app.journal.Journal`, which runs these on its worker thread (`_run`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, TypeVar

from app.domain import Side
from app.journal_db import transaction

__all__ = ["Fill", "FillLedger"]

_T = TypeVar("_T")
_FILL_COLUMNS: Final = ("client_id, trade_id, symbol, side, quantity, price, commission, "
                        "commission_asset, realized_pnl, time")
_PLACES: Final = ", ".join("?" * 10)


@dataclass(frozen=True, slots=True)
class Fill:
    """One trade of an order, as the exchange reported it (an ``ORDER_TRADE_UPDATE``)."""

    client_id: str
    trade_id: int
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    commission: Decimal
    commission_asset: str
    realized_pnl: Decimal
    time: float


class FillLedger:
    """The fills table's operations; `Journal` provides `_run`."""

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        raise NotImplementedError

    # ------------------------------------------------------------------ fills
    async def add_fill(self, fill: Fill) -> bool:
        """Journal one trade; False if it was already journaled (a replayed event)."""
        added, _ = await self._run(lambda conn: _add_fill(conn, fill, listing=False))
        return added

    async def add_fill_listing(self, fill: Fill) -> tuple[bool, list[Fill]]:
        """`add_fill`, and the order's journaled trades (`fills_for`) read right after it, in
        one trip: the last trade of an order that is then reported."""
        return await self._run(lambda conn: _add_fill(conn, fill, listing=True))

    async def fills_for(self, client_id: str) -> list[Fill]:
        """The journaled trades of one order, oldest first."""
        return await self._run(lambda conn: _fills_for(conn, client_id))

    async def day_result(self, since: float
                         ) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
        """Realized PnL by symbol and commissions by asset of the fills at or after ``since``
        (epoch seconds): today's PnL and the daily loss of SPEC §5.10."""
        def work(conn: sqlite3.Connection) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
            pnl, paid = dict[str, Decimal](), dict[str, Decimal]()
            for symbol, realized, commission, asset in conn.execute(
                    "SELECT symbol, realized_pnl, commission, commission_asset FROM fills "
                    "WHERE time >= ?", (since,)):
                pnl[symbol] = pnl.get(symbol, Decimal(0)) + Decimal(realized)
                paid[asset] = paid.get(asset, Decimal(0)) + Decimal(commission)
            return pnl, paid

        return await self._run(work)


def _add_fill(conn: sqlite3.Connection, fill: Fill, *, listing: bool) -> tuple[bool, list[Fill]]:
    row = (fill.client_id, fill.trade_id, fill.symbol, fill.side.value, str(fill.quantity),
           str(fill.price), str(fill.commission), fill.commission_asset, str(fill.realized_pnl),
           fill.time)
    with transaction(conn):
        added = conn.execute(f"INSERT INTO fills ({_FILL_COLUMNS}) VALUES ({_PLACES}) "
                             "ON CONFLICT DO NOTHING", row).rowcount == 1
    return added, (_fills_for(conn, fill.client_id) if listing else [])


def _fills_for(conn: sqlite3.Connection, client_id: str) -> list[Fill]:
    rows = conn.execute(f"SELECT {_FILL_COLUMNS} FROM fills WHERE client_id = ? "
                        "ORDER BY time, trade_id", (client_id,))
    return [Fill(c, t, sym, Side(side), Decimal(q), Decimal(p), Decimal(n), asset, Decimal(rp),
                 time) for c, t, sym, side, q, p, n, asset, rp, time in rows]
