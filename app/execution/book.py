"""The live book (SPEC §5.8): the account's open orders and algo orders by client id, its
positions by symbol and the last mark of each symbol with its age.

Fed by the streams' typed events in the order they arrive (Binance sends a connection's events
in ``E`` order), and rebuilt from REST (``positionRisk``, ``openOrders``, ``openAlgoOrders``)
at start, after every stream (re)connect and every ``stream.reconcile_interval_s``. A rebuild
fetches while events keep arriving: `begin_sync()` marks the start, and `sync()` then keeps
whatever an event changed since (the event is newer than the snapshot) and takes the rest
from the snapshot. The book holds no I/O and no policy: the guard (``guard.py``) reads it and
acts.

`wait(client_id, timeout)` lets the sender settle an unknown outcome the moment an event with
that client id arrives, instead of at its next lookup.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from app.clock import Clock, wait_event
from app.domain import Side
from app.exchange.models import AlgoState, OrderState, Position
from app.exchange.stream_events import (
    AlgoUpdate,
    MarkUpdate,
    OrderUpdate,
    PositionsUpdate,
    UserEvent,
)

__all__ = ["Book", "BookAlgo", "BookOrder", "BookPosition"]

#: How many orders' last stream word `Book.settled` remembers.
SETTLED_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class BookPosition:
    """A non-zero one-way position: ``amount`` signed (negative = short)."""

    symbol: str
    amount: Decimal
    entry_price: Decimal

    @property
    def side(self) -> Side:
        return Side.BUY if self.amount > 0 else Side.SELL


@dataclass(frozen=True, slots=True)
class BookOrder:
    """An open regular order."""

    symbol: str
    client_id: str
    side: Side
    order_type: str
    status: str
    quantity: Decimal
    filled_qty: Decimal


@dataclass(frozen=True, slots=True)
class BookAlgo:
    """An open conditional (algo) order."""

    symbol: str
    client_id: str
    side: Side
    order_type: str
    trigger_price: Decimal
    close_position: bool


class Book:
    """The live state. ``clock.monotonic()`` dates the marks."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.positions: dict[str, BookPosition] = {}
        self.orders: dict[str, BookOrder] = {}
        self.algos: dict[str, BookAlgo] = {}
        self._marks: dict[str, tuple[Decimal, float]] = {}
        self._touched: set[str] | None = None      # keys an event changed since begin_sync()
        self._waiters: dict[str, asyncio.Event] = {}
        #: The last word of the stream on recent orders by client id: a regular order's final
        #: state, an algo order's latest (bounded: the oldest are forgotten first).
        self._settled: OrderedDict[str, OrderState | AlgoState] = OrderedDict()
        # Whether positions follow the account by events (SPEC §5.8 "who reads it"): the user
        # stream is up and a REST rebuild begun while it was up has completed since.
        self._streaming = False
        self._sync_streaming = False
        self._followed = False
        # execd's regular orders whose final event has not arrived yet: client id → (symbol,
        # the sync generation in which REST answered for it, None before). Their fills may
        # not be in `positions` yet, so their symbol's position is read by REST meanwhile.
        self._inflight: dict[str, tuple[str, int | None]] = {}
        self._generation = 0

    # ------------------------------------------------------------------ events
    def apply(self, event: UserEvent) -> None:
        """One user-data event, in arrival order."""
        if isinstance(event, OrderUpdate):
            self._apply_order(event)
            if event.is_final:
                self._inflight.pop(event.client_id, None)   # its fill is in `positions` now
                self._settle(event.client_id, OrderState(
                    event.symbol, event.order_id, event.client_id, event.status, event.side,
                    event.order_type, event.quantity, event.filled_qty, event.avg_price,
                    event.reduce_only, event.trade_time_ms))
            self._wake(event.client_id)
        elif isinstance(event, AlgoUpdate):
            self._apply_algo(event)
            self._settle(event.client_algo_id, AlgoState(
                event.symbol, event.algo_id, event.client_algo_id, event.status, event.side,
                event.order_type, event.trigger_price, event.close_position,
                event.actual_order_id))
            self._wake(event.client_algo_id)
        elif isinstance(event, PositionsUpdate):
            for change in event.positions:
                self._touch(f"P:{change.symbol}")
                self._set_position(change.symbol, change.amount, change.entry_price)

    def apply_mark(self, update: MarkUpdate) -> None:
        self._marks[update.symbol] = (update.mark, self._clock.monotonic())

    def _apply_order(self, event: OrderUpdate) -> None:
        self._touch(f"O:{event.client_id}")
        if event.is_final:
            self.orders.pop(event.client_id, None)
            return
        self.orders[event.client_id] = BookOrder(
            event.symbol, event.client_id, event.side, event.order_type, event.status,
            event.quantity, event.filled_qty)

    def _apply_algo(self, event: AlgoUpdate) -> None:
        self._touch(f"A:{event.client_algo_id}")
        if not event.is_open:
            self.algos.pop(event.client_algo_id, None)
            return
        self.algos[event.client_algo_id] = BookAlgo(
            event.symbol, event.client_algo_id, event.side, event.order_type,
            event.trigger_price, event.close_position)

    def _set_position(self, symbol: str, amount: Decimal, entry_price: Decimal) -> None:
        if amount == 0:
            self.positions.pop(symbol, None)
        else:
            self.positions[symbol] = BookPosition(symbol, amount, entry_price)

    def _touch(self, key: str) -> None:
        if self._touched is not None:
            self._touched.add(key)

    # ------------------------------------------------------------------ rebuild
    def begin_sync(self) -> None:
        """A REST rebuild starts: from now on, what events change wins over its snapshot."""
        self._touched = set()
        self._generation += 1
        self._sync_streaming = self._streaming

    def sync(self, positions: Iterable[Position], orders: Iterable[OrderState] | None,
             algos: Iterable[AlgoState] | None, *, only: set[str] | None = None) -> None:
        """Replace the book by a REST snapshot taken after `begin_sync()`, keeping every
        position and order an event changed meanwhile. None: that part was not fetched;
        ``only``: the orders and algo orders fetched are those of these symbols alone (the
        positions are always the whole account's)."""
        touched = self._touched or set()
        self._touched = None
        if self._sync_streaming and self._streaming:
            self._followed = True
        for client_id, (_, answered) in list(self._inflight.items()):
            if answered is not None and answered < self._generation:
                del self._inflight[client_id]   # answered before this snapshot: it is in it
        _merge(self.positions, {p.symbol: BookPosition(p.symbol, p.amount, p.entry_price)
                                for p in positions if p.amount != 0}, "P", touched)

        def elsewhere(held: BookOrder | BookAlgo) -> bool:   # a symbol not fetched
            return only is not None and held.symbol not in only

        if orders is not None:
            _merge(self.orders, {o.client_id: BookOrder(o.symbol, o.client_id, o.side, o.type,
                                                        o.status, o.orig_qty, o.executed_qty)
                                 for o in orders if o.is_open}, "O", touched, elsewhere)
        if algos is not None:
            _merge(self.algos, {a.client_algo_id: BookAlgo(a.symbol, a.client_algo_id, a.side,
                                                           a.order_type, a.trigger_price,
                                                           a.close_position)
                                for a in algos if a.is_open}, "A", touched, elsewhere)

    def abandon_sync(self) -> None:
        """A rebuild failed: keep applying events as before."""
        self._touched = None

    def set_streaming(self, up: bool) -> None:
        """The user stream went up or down; down, positions are no longer followed until a
        rebuild begun while it is up completes."""
        self._streaming = up
        if not up:
            self._followed = False

    def expect_fill(self, client_id: str, symbol: str) -> None:
        """One of execd's regular orders is about to be sent."""
        self._inflight[client_id] = (symbol, None)

    def answered(self, client_id: str) -> None:
        """REST answered for it (a rebuild begun after this includes its fill)."""
        if client_id in self._inflight:
            self._inflight[client_id] = (self._inflight[client_id][0], self._generation)

    def forget(self, client_id: str) -> None:
        """It was certainly not placed (rejected, never sent)."""
        self._inflight.pop(client_id, None)

    # ------------------------------------------------------------------ reads
    def position(self, symbol: str) -> BookPosition | None:
        return self.positions.get(symbol)

    def followed_amount(self, symbol: str) -> Decimal | None:
        """The position's signed amount (0 when flat) when the book follows the account and
        no order of execd's on ``symbol`` awaits its fill event; None: read it by REST."""
        if not self._followed or any(s == symbol for s, _ in self._inflight.values()):
            return None
        found = self.positions.get(symbol)
        return found.amount if found is not None else Decimal(0)

    def amounts(self) -> dict[str, Decimal]:
        """Every non-zero position's signed amount by symbol."""
        return {symbol: p.amount for symbol, p in self.positions.items() if p.amount}

    def open_algos(self, symbol: str) -> list[BookAlgo]:
        return [a for a in self.algos.values() if a.symbol == symbol]

    def mark(self, symbol: str, max_age_s: float) -> Decimal | None:
        """The streamed mark of ``symbol`` if it is at most ``max_age_s`` old, else None."""
        found = self._marks.get(symbol)
        if found is None or self._clock.monotonic() - found[1] > max_age_s:
            return None
        return found[0]

    def mark_age_s(self, symbol: str) -> float | None:
        found = self._marks.get(symbol)
        return None if found is None else self._clock.monotonic() - found[1]

    def settled(self, client_id: str) -> OrderState | AlgoState | None:
        """What the stream last said of the order ``client_id``: a regular order once it
        ended (filled, cancelled, expired), an algo order in any state; None if nothing."""
        return self._settled.get(client_id)

    def _settle(self, client_id: str, state: OrderState | AlgoState) -> None:
        self._settled[client_id] = state
        self._settled.move_to_end(client_id)
        while len(self._settled) > SETTLED_KEPT:
            self._settled.popitem(last=False)

    # ------------------------------------------------------------------ waiting
    async def wait(self, client_id: str, within_s: float) -> bool:
        """Until an event about ``client_id`` arrives (True) or ``within_s`` seconds pass."""
        return await wait_event(self._waiters.setdefault(client_id, asyncio.Event()),
                                self._clock, within_s)

    def _wake(self, client_id: str) -> None:
        event = self._waiters.pop(client_id, None)
        if event is not None:
            event.set()


_V = TypeVar("_V", BookPosition, BookOrder, BookAlgo)


def _merge(held: dict[str, _V], fresh: dict[str, _V], tag: str, touched: set[str],
           elsewhere: Callable[[_V], bool] | None = None) -> None:
    """Make ``held`` what the snapshot ``fresh`` says, except for the keys an event changed
    since the snapshot was asked for (``"{tag}:{key}"`` in ``touched``: the event is newer)
    and the entries ``elsewhere`` says the snapshot did not cover."""
    known = {k for k, v in held.items() if elsewhere is None or not elsewhere(v)}
    for key in known | set(fresh):
        if f"{tag}:{key}" in touched:
            continue
        if key in fresh:
            held[key] = fresh[key]
        else:
            held.pop(key, None)
