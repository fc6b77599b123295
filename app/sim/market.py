"""The mark price: a seeded geometric random walk per symbol, rounded to the tick.

Each step moves the mark by ``exp(N(0, σ·sqrt(dt/60)))`` with σ = ``volatility_per_minute`` and
``dt`` the seconds of (possibly fake) server time since the last step, then lets the exchange
trigger whatever the move crossed.
"""

from __future__ import annotations

import math
import random
from decimal import Decimal

from app.sim.exchange import Exchange
from app.sim.rules import to_tick


class MarkWalk:
    def __init__(self, exchange: Exchange, volatility_per_minute: float, seed: int) -> None:
        self._exchange = exchange
        self._volatility = volatility_per_minute
        self._rng = random.Random(seed)
        self._last: float | None = None

    def reseed(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._last = None

    def step(self, now: float) -> None:
        if self._last is None or now <= self._last:
            self._last = now if self._last is None else self._last
            return
        dt = now - self._last
        self._last = now
        if self._volatility <= 0:
            return
        sigma = self._volatility * math.sqrt(dt / 60)
        ex = self._exchange
        for symbol, spec in ex.state.symbols.items():
            factor = Decimal(repr(math.exp(self._rng.gauss(0.0, sigma))))
            moved = to_tick(spec, ex.state.marks[symbol] * factor)
            if moved != ex.state.marks[symbol]:
                ex.set_mark(symbol, moved)
