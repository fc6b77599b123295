"""Signal bodies the benches send, for the simulator's default symbols (config/sim.toml).

* `make_signals`: the chaos workload (chaos, crash) — per symbol, episodes of 1-3 entries of one
  side (40 % with a stop-loss and a take-profit, 15 % with a stop-loss only, the rest bare,
  10 % setting leverage), then a close (85 % of the whole position, 15 % with the summed
  quantity); the episodes of the symbols interleaved at random; ``ttl_s`` = `TTL_S`.
* `QUANTITIES` and `brackets`: a steady stream's sizes and tp/sl prices (latency, soak).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.daemon import Daemon

TTL_S = 600
#: Quantities a little above each default symbol's minimum notional.
QUANTITIES = {"BTCUSDT": "0.002", "ETHUSDT": "0.01", "SOLUSDT": "1", "BNBUSDT": "0.02",
              "XRPUSDT": "10"}


@dataclass(frozen=True, slots=True)
class Market:
    qty: str
    mark: str
    tick: str

    def bracket(self, long: bool) -> tuple[str, str]:
        """(stop_loss, take_profit) 10 % either side of the (frozen) mark, on the tick grid."""
        mark, tick = Decimal(self.mark), Decimal(self.tick)
        below = (mark * Decimal("0.9") / tick).to_integral_value() * tick
        above = (mark * Decimal("1.1") / tick).to_integral_value() * tick
        return (str(below), str(above)) if long else (str(above), str(below))


#: Initial marks and ticks of config/sim.toml; the benches freeze the marks (volatility 0).
MARKETS = {"BTCUSDT": Market("0.002", "65000.00", "0.10"),
           "ETHUSDT": Market("0.050", "3200.00", "0.01"),
           "SOLUSDT": Market("1", "150.0000", "0.0100"),
           "BNBUSDT": Market("0.20", "600.000", "0.010"),
           "XRPUSDT": Market("20.0", "0.6000", "0.0001")}


def make_signals(n: int, seed: int, *, prefix: str) -> list[dict[str, Any]]:
    """``n`` signal bodies with ids ``{prefix}-00000``…: interleaved per-symbol episodes
    (module docstring), the same for the same ``seed``."""
    rng = random.Random(seed)
    queues: dict[str, list[dict[str, Any]]] = {s: [] for s in MARKETS}
    out: list[dict[str, Any]] = []
    while len(out) < n:
        symbol = rng.choice(sorted(MARKETS))
        if not queues[symbol]:
            queues[symbol] = episode(rng, symbol)
        body = queues[symbol].pop(0)
        out.append({"id": f"{prefix}-{len(out):05d}", **body, "ttl_s": TTL_S})
    return out


def episode(rng: random.Random, symbol: str) -> list[dict[str, Any]]:
    market = MARKETS[symbol]
    long = rng.random() < 0.5
    bodies: list[dict[str, Any]] = []
    entries = rng.randint(1, 3)
    for _ in range(entries):
        body: dict[str, Any] = {"symbol": symbol, "type": "LONG_ENTRY" if long else "SHORT_ENTRY",
                                "quantity": market.qty}
        draw = rng.random()
        sl, tp = market.bracket(long)
        if draw < 0.40:
            body |= {"stop_loss": sl, "take_profit": tp}
        elif draw < 0.55:
            body["stop_loss"] = sl
        if rng.random() < 0.10:
            body["leverage"] = 10
        bodies.append(body)
    close: dict[str, Any] = {"symbol": symbol, "type": "CLOSE_LONG" if long else "CLOSE_SHORT"}
    if rng.random() < 0.15:
        close["quantity"] = str(Decimal(market.qty) * entries)
    bodies.append(close)
    return bodies


async def brackets(daemon: Daemon) -> dict[str, tuple[str, str]]:
    """Per symbol of `QUANTITIES`, the prices 2 % above and 2 % below the (frozen) mark, on the
    tick grid: (take_profit, stop_loss) of a LONG_ENTRY, (stop_loss, take_profit) of a short."""
    assert daemon.exchange is not None
    out = {}
    for symbol in QUANTITIES:
        rules = daemon.exchange.symbols.get(symbol)
        mark = await daemon.exchange.gateway.mark_price(symbol)
        out[symbol] = (str(rules.quantize_price(mark * Decimal("1.02"))),
                       str(rules.quantize_price(mark * Decimal("0.98"))))
    return out
