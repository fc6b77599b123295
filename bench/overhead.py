"""CPU cost of the gateway stack over raw python-binance, on the same calls (SPEC §13).

The simulator runs in its own process (its CPU is not counted). In this process the same N
calls run once straight through python-binance's AsyncClient and once through the gateway
(limiter → breaker → retry → client → response hook → classification → audit pipeline, with
its writer thread). CPU seconds come from ``time.process_time()``, which counts every thread of
this process. Both clients stay open and blocks of calls alternate between them, so drift and
noise hit both alike; the means over all blocks are compared. Target: ratio ≤ 1.15.

    python bench/overhead.py [--calls N] [--rounds R] [--short]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from binance import AsyncClient
from lib.report import RESULTS_DIR, machine, save
from lib.simproc import simulator

from app.clock import SystemClock
from app.exchange.gateway import Gateway
from app.factory import ExchangeSetup, open_exchange
from app.observability.logging import configure_logging

TARGET = 1.15
SIM_CONFIG = ("[limits]\nrequest_weight = 10000000\norders_short = 10000000\n"
              "orders_long = 10000000\n[market]\nvolatility_per_minute = 0\n")


async def make_raw(url: str) -> AsyncClient:
    client = AsyncClient("sim-key", "sim-secret")
    client.FUTURES_URL = f"{url}/fapi"
    server = await client.futures_time()
    client.timestamp_offset = server["serverTime"] - int(time.time() * 1000)
    return client


async def raw_block(client: AsyncClient, calls: int) -> float:
    start = time.process_time()
    for i in range(calls):
        if i % 2:
            await client.futures_position_information(symbol="BTCUSDT")
        else:
            await client.futures_mark_price(symbol="BTCUSDT")
    return time.process_time() - start


async def gateway_block(gateway: Gateway, calls: int) -> float:
    start = time.process_time()
    for i in range(calls):
        if i % 2:
            await gateway.get_position("BTCUSDT")
        else:
            await gateway.mark_price("BTCUSDT")
    return time.process_time() - start


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per block")
    parser.add_argument("--rounds", type=int, default=20, help="blocks per path")
    parser.add_argument("--short", action="store_true", help="300 calls × 10 blocks")
    args = parser.parse_args()
    if args.short:
        args.calls, args.rounds = 300, 10
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with (simulator(workdir / "sim", SIM_CONFIG) as url,
                    contextlib.AsyncExitStack() as stack):
            handle = configure_logging(workdir / "logs", "INFO", console=False)
            exchange = await stack.enter_async_context(open_exchange(
                ExchangeSetup(base_url=url, api_key="sim-key", api_secret="sim-secret"),
                SystemClock(), handle.logger))
            gateway = exchange.gateway
            client = await make_raw(url)
            await raw_block(client, 200)                       # warm both paths
            await gateway_block(gateway, 200)
            raw: list[float] = []
            gw: list[float] = []
            for _ in range(args.rounds):                       # alternate blocks: same drift
                raw.append(await raw_block(client, args.calls) / args.calls)
                gw.append(await gateway_block(gateway, args.calls) / args.calls)
            close_start = time.process_time()
            await asyncio.to_thread(handle.close)              # audit lines on disk: counted
            gw[-1] += (time.process_time() - close_start) / args.calls
            await client.close_connection()
    raw_us, gw_us = statistics.fmean(raw) * 1e6, statistics.fmean(gw) * 1e6
    ratio = gw_us / raw_us
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"{args.rounds} alternating blocks of {args.calls} calls per path (mean), "
          f"endpoints: premiumIndex + positionRisk alternating")
    print(f"{'path':<26}{'CPU µs/call':>14}")
    print(f"{'raw python-binance':<26}{raw_us:>14.1f}")
    print(f"{'execd gateway':<26}{gw_us:>14.1f}")
    print(f"{'ratio':<26}{ratio:>14.3f}   target ≤ {TARGET} ({verdict})")
    result = {
        "bench": "overhead", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "calls": args.calls, "rounds": args.rounds,
        "raw_cpu_us_per_call": round(raw_us, 2), "gateway_cpu_us_per_call": round(gw_us, 2),
        "raw_blocks_us": [round(v * 1e6, 2) for v in raw],
        "gateway_blocks_us": [round(v * 1e6, 2) for v in gw],
        "ratio": round(ratio, 4), "target": TARGET, "met": ratio <= TARGET,
    }
    print(f"wrote {save(RESULTS_DIR / 'overhead.json', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
