"""The simulated account's shared state, and the few methods every order change goes through.

One ``SimState`` per exchange holds the symbols and their marks, the one-way positions, the USDT
wallet, regular orders and algo orders (each kind in a ``book.Book``: by id, by client id, open
ones per symbol, history per symbol), trades per symbol, the acceptance ledger and the id
sequences. The components in ``orders``, ``algos`` and ``account`` keep no state of their own.

Orders and algo orders enter the account only through ``add_order`` / ``add_algo``, change
status only through ``set_order_status`` / ``set_algo_status``, and fill only through
``record_fill``; positions and the wallet change only in ``account.Account`` (``settle``,
``set_leverage``, ``set_margin_type``). Whatever must see every account change hooks in there:
these methods keep the books' open indexes current, and each publishes its user-data event
(``events``) to the ``sink`` — the user stream — when a connection is listening (events nobody
listens to are lost, as on Binance).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Protocol

from app.sim import errors, events
from app.sim.book import Book
from app.sim.config import SimConfig, SymbolSpec
from app.sim.models import AlgoOrder, Ledger, Order, Position, Trade
from app.sim.rules import Params


class EventSink(Protocol):
    """Where account events go (the user-data stream)."""

    @property
    def listening(self) -> bool:
        """Whether any connection would receive an event now (else none is built)."""
        ...

    def publish(self, event: dict[str, object]) -> None: ...


class SimState:
    """The account's data. ``clock`` returns epoch seconds (injectable for tests)."""

    def __init__(self, config: SimConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self.sink: EventSink | None = None
        self.symbols: dict[str, SymbolSpec] = {s.symbol: s for s in config.symbols}
        self.reset()

    def reset(self) -> None:
        """Back to the configured start: initial marks, flat positions, no orders or trades."""
        cfg = self.config
        self.marks: dict[str, Decimal] = {s.symbol: s.price for s in cfg.symbols}
        self.positions: dict[str, Position] = {
            s.symbol: Position(s, cfg.account.default_leverage) for s in cfg.symbols
        }
        self.wallet: Decimal = cfg.account.balance
        self.dual_side = False          # position mode: hedge (True) or one-way
        self.ledger = Ledger()
        self.orders: Book[Order] = Book()
        self.algos: Book[AlgoOrder] = Book()
        self._trades: dict[str, list[Trade]] = {s.symbol: [] for s in cfg.symbols}
        # Open closePosition algo ids per (symbol, type, side): -4130 without a scan.
        self._close_position: dict[tuple[str, str, str], set[int]] = {}
        self._order_ids = itertools.count(8_389_765_000_000)
        self._algo_ids = itertools.count(4_000_000_230_000_000)
        self._trade_ids = itertools.count(1_000_000)
        self._auto_ids = itertools.count(1)

    def now(self) -> float:
        """Server time in epoch seconds."""
        return self._clock()

    # ----------------------------------------------------------------- lookups
    def spec(self, params: Params, *, required: bool = True) -> SymbolSpec | None:
        """The symbol named by ``params`` (None if absent and not required); raises -1102 when
        required and absent, -1121 when unknown."""
        symbol = params.get("symbol")
        if not symbol:
            if required:
                raise errors.mandatory("symbol")
            return None
        spec = self.symbols.get(symbol)
        if spec is None:
            raise errors.invalid_symbol()
        return spec

    def require_spec(self, params: Params) -> SymbolSpec:
        """The symbol named by ``params``; raises as ``spec`` does when it is absent."""
        spec = self.spec(params)
        assert spec is not None
        return spec

    def client_id_open(self, client_id: str) -> bool:
        """Whether an open order or open algo order uses ``client_id`` (-4116 on reuse)."""
        return self.orders.client_id_open(client_id) or self.algos.client_id_open(client_id)

    def has_open_orders(self, spec: SymbolSpec) -> bool:
        """Whether ``spec`` has an open order or open algo order."""
        return bool(self.orders.open_count(spec) or self.algos.open_count(spec))

    def close_position_algo_open(self, spec: SymbolSpec, order_type: str, side: str) -> bool:
        """Whether an open ``closePosition`` algo order of this symbol, type and side exists."""
        return bool(self._close_position.get((spec.symbol, order_type, side)))

    def trades_of(self, spec: SymbolSpec) -> list[Trade]:
        """The trades of ``spec`` in time order (the state's own list: read it, don't keep
        it)."""
        return self._trades[spec.symbol]

    # ----------------------------------------------------------------- ids
    def auto_client_id(self, prefix: str) -> str:
        """A client id for a request that sent none (``web_…``, ``algo…``)."""
        return f"{prefix}{next(self._auto_ids):022d}"

    def next_order_id(self) -> int:
        return next(self._order_ids)

    def next_algo_id(self) -> int:
        return next(self._algo_ids)

    def next_trade_id(self) -> int:
        return next(self._trade_ids)

    # ----------------------------------------------------------------- changes
    def _listening(self) -> bool:
        return self.sink is not None and self.sink.listening

    def _publish(self, event: dict[str, object]) -> None:
        assert self.sink is not None
        self.sink.publish(event)

    def add_order(self, order: Order) -> None:
        """Accept a new regular order: into the book and the ledger (``x`` NEW)."""
        self.orders.add(order)
        self.ledger.entries.append(order)
        if self._listening():
            self._publish(events.order_trade_update(order, "NEW", self.now()))

    def set_order_status(self, order: Order, status: str, now: float) -> None:
        """Move ``order`` to ``status`` (``CANCELED``, ``EXPIRED``) at server time ``now``."""
        order.status = status
        order.updated = now
        self.orders.update(order)
        if self._listening():
            self._publish(events.order_trade_update(order, status, now))

    def record_fill(self, order: Order, trade: Trade) -> None:
        """Book ``trade`` against ``order``, which is then ``FILLED`` (or ``PARTIALLY_FILLED``
        while some quantity is left). The position and wallet side of the fill is
        ``Account.settle``, which comes first: the ``ACCOUNT_UPDATE`` published here shows the
        position after the trade, then the ``ORDER_TRADE_UPDATE`` (``x`` TRADE)."""
        order.executed_qty += trade.qty
        order.cum_quote += trade.qty * trade.price
        order.status = "FILLED" if order.executed_qty >= order.qty else "PARTIALLY_FILLED"
        order.updated = trade.time
        self.orders.update(order)
        self._trades[order.spec.symbol].append(trade)
        if self._listening():
            self.publish_account(events.REASON_ORDER, [self.positions[order.spec.symbol]],
                                 trade.time)
            self._publish(events.order_trade_update(order, "TRADE", trade.time, trade))

    def publish_account(self, reason: str, positions: Iterable[Position], now: float) -> None:
        """An ``ACCOUNT_UPDATE`` with the wallet and ``positions`` (``Account`` calls it for
        changes that are not fills)."""
        if self._listening():
            self._publish(events.account_update(reason, self.wallet, positions, self.marks,
                                                now))

    def add_algo(self, algo: AlgoOrder) -> None:
        """Accept a new algo order: into the book and the ledger (``ALGO_UPDATE`` NEW)."""
        self._index_algo(algo, new=True)
        self.ledger.entries.append(algo)
        if self._listening():
            self._publish(events.algo_update(algo, self.now()))

    def set_algo_status(self, algo: AlgoOrder, status: str, now: float,
                        reason: str = "") -> None:
        """Move ``algo`` to ``status`` (``CANCELED``, ``TRIGGERED``, ``FINISHED``, ``EXPIRED``)
        at server time ``now``; ``reason`` says why the system ended it."""
        algo.status = status
        algo.updated = now
        self._index_algo(algo)
        if self._listening():
            self._publish(events.algo_update(algo, now, reason))

    def _index_algo(self, algo: AlgoOrder, *, new: bool = False) -> None:
        if new:
            self.algos.add(algo)
        else:
            self.algos.update(algo)
        if algo.close_position:
            ids = self._close_position.setdefault(
                (algo.spec.symbol, algo.order_type, algo.side), set())
            if algo.is_open:
                ids.add(algo.algo_id)
            else:
                ids.discard(algo.algo_id)
