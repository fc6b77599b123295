"""The simulator's per-request cost with a long order history against an empty one.

Two simulators run in this process (``SimServer`` on loopback, frozen marks, limits no run
reaches): one starts with an empty history, the other with ``--history`` orders (default
100,000: over five symbols, nine in ten MARKET orders filled with their trade, one in ten a
LIMIT canceled, plus one algo order canceled per five orders), built in-process through the
``SimState`` change methods (``add_order``, ``record_fill``, ``set_order_status``,
``add_algo``, ``set_algo_status``) in a few seconds. Both also hold the same open state: three
resting LIMIT BUYs and a closePosition stop on BTCUSDT, far from the mark.

A cycle is the request mix a daemon sends, over HTTP, signed as Binance wants: a MARKET order
(BUY and SELL in turn), GET that order by client id, GET openOrders of the symbol, POST a
closePosition take-profit algo order and DELETE it, and a mark move (``POST /_sim/price``). Blocks
of ``--cycles`` cycles alternate between the two simulators (the first of each pair swaps every
round), so drift and noise hit both alike; the CPU time of this process
(``time.process_time()``: client and server) per request is compared over all blocks. Both
histories grow by the same measured orders. Target: the long history costs ≤ 1.10 × the empty
one per request.

    python bench/sim_history.py [--history N] [--cycles N] [--rounds R] [--short] [--out FILE]

To measure another checkout of the simulator (e.g. the code before a change), put it first on
the path: ``PYTHONPATH=/tmp/sim-before .venv/bin/python bench/sim_history.py --out /tmp/x.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import orjson
from lib.report import RESULTS_DIR, machine, save
from lib.simproc import JSON

import app.sim
from app.sim import SimConfig, SimServer
from app.sim.models import AlgoOrder, Order, Trade
from app.sim.state import SimState

TARGET = 1.10
#: The simulator measured: this checkout's, or the one PYTHONPATH puts first.
APP_SIM = str(Path(app.sim.__file__).resolve().parent)
RESULTS = RESULTS_DIR / "sim_history.json"
KEY, SECRET = "sim-key", "sim-secret"
SYMBOL = "BTCUSDT"
STEPS = ("POST order", "GET order", "GET openOrders", "POST algoOrder", "DELETE algoOrder",
         "POST /_sim/price")


def bench_config() -> SimConfig:
    """Defaults with limits no run reaches, a large balance and frozen marks."""
    base = SimConfig()
    huge = 1_000_000_000
    return replace(
        base,
        limits=replace(base.limits, request_weight=huge, orders_short=huge, orders_long=huge),
        account=replace(base.account, balance=Decimal(huge)),
        market=replace(base.market, volatility_per_minute=0.0, tick_interval_s=0.0))


def build_history(st: SimState, orders: int) -> None:
    """``orders`` closed orders (and one closed algo order per five) through the change
    methods, as if they had been traded: fast, and the same calls in every version."""
    specs = list(st.symbols.values())
    now = st.now()
    for i in range(orders):
        spec = specs[i % len(specs)]
        mark = st.marks[spec.symbol]
        side = "BUY" if i % 2 else "SELL"
        qty = spec.min_qty * 10
        if i % 10 == 9:
            order = Order(spec=spec, order_id=st.next_order_id(), client_id=f"hist-{i}",
                          side=side, type="LIMIT", qty=qty, price=mark, time_in_force="GTC",
                          reduce_only=False, close_position=False, created=now, updated=now)
            st.add_order(order)
            st.set_order_status(order, "CANCELED", now)
        else:
            order = Order(spec=spec, order_id=st.next_order_id(), client_id=f"hist-{i}",
                          side=side, type="MARKET", qty=qty, price=Decimal(0),
                          time_in_force="GTC", reduce_only=False, close_position=False,
                          created=now, updated=now)
            st.add_order(order)
            st.record_fill(order, Trade(spec, st.next_trade_id(), order.order_id, side, mark,
                                        qty, Decimal(0), Decimal(0), now))
        if i % 5 == 4:
            algo = AlgoOrder(spec=spec, algo_id=st.next_algo_id(), client_algo_id=f"halgo-{i}",
                             side="SELL", order_type="STOP_MARKET", qty=Decimal(0),
                             price=Decimal(0), trigger_price=mark * Decimal("0.9"),
                             working_type="MARK_PRICE", close_position=True,
                             reduce_only=False, price_protect=False, time_in_force="GTC",
                             created=now, updated=now)
            st.add_algo(algo)
            st.set_algo_status(algo, "CANCELED", now)


class Client:
    """Signed requests to one simulator (query + body, HMAC-SHA256, as Binance documents)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def signed(self, method: str, path: str, params: dict[str, str]) -> object:
        payload = urlencode({**params, "timestamp": str(int(time.time() * 1000))})
        signature = hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest()
        signed = f"{payload}&signature={signature}"
        url = f"{self.base}{path}"
        headers = {"X-MBX-APIKEY": KEY}
        if method == "GET":
            url, data = f"{url}?{signed}", None
        else:
            data = signed.encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        async with self.session.request(method, url, data=data, headers=headers) as resp:
            body = orjson.loads(await resp.read())
            if resp.status != 200:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {body}")
            return body

    async def price(self, price: str) -> object:
        async with self.session.post(f"{self.base}/_sim/price", data=orjson.dumps(
                {"symbol": SYMBOL, "price": price}), headers=JSON) as resp:
            if resp.status != 200:
                raise RuntimeError(f"/_sim/price: HTTP {resp.status}: {await resp.text()}")
            return orjson.loads(await resp.read())


@dataclass
class Side:
    """One simulator under test, its client and what was measured of it."""

    name: str
    client: Client
    cpu_per_request: list[float] = field(default_factory=list)
    wall: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


async def standing_orders(client: Client) -> None:
    """The open state both simulators share: resting limits and a stop, far from the mark."""
    for i, price in enumerate(("62000.00", "61900.00", "61800.00")):
        await client.signed("POST", "/fapi/v1/order", {
            "symbol": SYMBOL, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
            "quantity": "0.002", "price": price, "newClientOrderId": f"rest-{i}"})
    await client.signed("POST", "/fapi/v1/algoOrder", {
        "algoType": "CONDITIONAL", "symbol": SYMBOL, "side": "SELL", "type": "STOP_MARKET",
        "triggerPrice": "50000.00", "closePosition": "true", "clientAlgoId": "rest-sl"})


async def block(side: Side, cycles: int, ids: Callable[[], int]) -> None:
    """``cycles`` cycles of the request mix; CPU per request and wall time per step."""
    c = side.client
    wall = side.wall
    cpu_start = time.process_time()
    for _ in range(cycles):
        for name, step in zip(STEPS, mix(c, ids()), strict=True):
            start = time.perf_counter()
            await step()
            wall[name].append(time.perf_counter() - start)
    side.cpu_per_request.append((time.process_time() - cpu_start) / (cycles * len(STEPS)))


def mix(c: Client, n: int) -> tuple[Callable[[], Awaitable[object]], ...]:
    """Cycle ``n`` of the request mix, one callable per entry of ``STEPS``."""
    return (
        lambda: c.signed("POST", "/fapi/v1/order", {
            "symbol": SYMBOL, "side": "BUY" if n % 2 else "SELL", "type": "MARKET",
            "quantity": "0.002", "newClientOrderId": f"mix-{n}"}),
        lambda: c.signed("GET", "/fapi/v1/order", {"symbol": SYMBOL,
                                                   "origClientOrderId": f"mix-{n}"}),
        lambda: c.signed("GET", "/fapi/v1/openOrders", {"symbol": SYMBOL}),
        lambda: c.signed("POST", "/fapi/v1/algoOrder", {
            "algoType": "CONDITIONAL", "symbol": SYMBOL, "side": "SELL",
            "type": "TAKE_PROFIT_MARKET", "triggerPrice": "80000.00",
            "closePosition": "true", "clientAlgoId": f"mix-tp-{n}"}),
        lambda: c.signed("DELETE", "/fapi/v1/algoOrder", {"clientAlgoId": f"mix-tp-{n}"}),
        lambda: c.price("65010.00" if n % 2 else "65000.00"),
    )


@asynccontextmanager
async def simulators(history: int) -> AsyncIterator[tuple[Side, Side, float]]:
    """The empty and the long-history simulator with their clients; and the build time (s)."""
    async with AsyncExitStack() as stack:
        sides = []
        build_s = 0.0
        for name, size in (("empty", 0), (f"{history:,} orders", history)):
            server = await stack.enter_async_context(SimServer(bench_config()))
            start = time.perf_counter()
            build_history(server.sim.exchange.state, size)
            if size:
                build_s = time.perf_counter() - start
            session = await stack.enter_async_context(aiohttp.ClientSession())
            side = Side(name, Client(session, server.url))
            await standing_orders(side.client)
            sides.append(side)
        yield sides[0], sides[1], build_s


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=100_000, help="orders in the history")
    parser.add_argument("--cycles", type=int, default=100, help="cycles of the mix per block")
    parser.add_argument("--rounds", type=int, default=20, help="blocks per simulator")
    parser.add_argument("--short", action="store_true", help="50 cycles × 8 blocks")
    parser.add_argument("--out", default=str(RESULTS), help="JSON output path")
    args = parser.parse_args()
    if args.short:
        args.cycles, args.rounds = 50, 8
    counter = itertools.count()
    async with simulators(args.history) as (empty, full, build_s):
        for side in (empty, full):                                  # warm both paths
            await block(side, max(args.cycles // 5, 5), lambda: next(counter))
            side.cpu_per_request.clear()
            side.wall.clear()
        for r in range(args.rounds):                                # alternate: same drift
            for side in ((empty, full) if r % 2 == 0 else (full, empty)):
                await block(side, args.cycles, lambda: next(counter))
    empty_us = statistics.fmean(empty.cpu_per_request) * 1e6
    full_us = statistics.fmean(full.cpu_per_request) * 1e6
    ratio = full_us / empty_us
    met = ratio <= TARGET
    where = APP_SIM
    print(f"{args.rounds} alternating blocks of {args.cycles} cycles per simulator, "
          f"{len(STEPS)} requests a cycle; history built in {build_s:.1f} s; app.sim from "
          f"{where}")
    print(f"{'request':<20}{'wall µs p50 empty':>19}{'p50 ' + full.name:>22}")
    for name in STEPS:
        print(f"{name:<20}{statistics.median(empty.wall[name]) * 1e6:>19.0f}"
              f"{statistics.median(full.wall[name]) * 1e6:>22.0f}")
    print(f"{'CPU µs/request':<20}{empty_us:>19.1f}{full_us:>22.1f}")
    print(f"ratio {ratio:.3f}   target ≤ {TARGET} ({'met' if met else 'NOT met'})")
    result = {
        "bench": "sim_history", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(aiohttp=aiohttp.__version__), "app_sim": str(where),
        "history": args.history, "cycles": args.cycles, "rounds": args.rounds,
        "requests_per_cycle": len(STEPS), "build_s": round(build_s, 2),
        "empty_cpu_us_per_request": round(empty_us, 2),
        "history_cpu_us_per_request": round(full_us, 2),
        "empty_blocks_us": [round(v * 1e6, 2) for v in empty.cpu_per_request],
        "history_blocks_us": [round(v * 1e6, 2) for v in full.cpu_per_request],
        "wall_p50_us": {name: {"empty": round(statistics.median(empty.wall[name]) * 1e6, 1),
                               "history": round(statistics.median(full.wall[name]) * 1e6, 1)}
                        for name in STEPS},
        "ratio": round(ratio, 4), "target": TARGET, "met": met,
    }
    print(f"wrote {save(Path(args.out), result)}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
