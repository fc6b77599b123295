"""The simulated USDⓈ-M exchange: one shared account state and the components that act on it.

One-way mode only. The server layer owns HTTP, security, rate limits and faults; the trading
rules live in four modules that share one ``SimState`` and raise ``errors.ApiError``:

- ``state``: symbols, marks, positions, wallet, orders, algo orders, trades, ids, and the few
  methods every order change goes through (``book`` indexes the orders: by id, by client id,
  per-symbol history, open ones apart, so no request scans the history);
- ``account``: leverage, margin type, available balance, margin checks, settling fills;
- ``orders``: regular MARKET / LIMIT orders and fills;
- ``algos``: conditional (algo) orders and their triggers.

This module builds them and moves the mark, the one event that touches both kinds of order.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from app.sim.account import Account
from app.sim.algos import Algos
from app.sim.config import SimConfig
from app.sim.orders import Orders
from app.sim.state import SimState


class Exchange:
    """The account: ``state`` (the data), ``account``, ``orders`` and ``algos`` (the endpoints
    that change it). ``clock`` returns epoch seconds (injectable for tests)."""

    def __init__(self, config: SimConfig, clock: Callable[[], float]) -> None:
        self.state = SimState(config, clock)
        self.account = Account(self.state)
        self.orders = Orders(self.state, self.account)
        self.algos = Algos(self.state, self.orders)

    def reset(self) -> None:
        """Back to the configured start (marks, positions, wallet; no orders)."""
        self.state.reset()

    def set_mark(self, symbol: str, price: Decimal) -> None:
        """Move a mark price, then trigger algo orders and fill resting limits it crossed."""
        self.state.marks[symbol] = price
        spec = self.state.symbols[symbol]
        self.algos.on_mark(spec, price)
        self.orders.on_mark(spec, price)
