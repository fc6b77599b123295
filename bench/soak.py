"""Memory over a long run: RSS growth of the daemon's process over 100,000 signals (SPEC §13).

The simulator runs in its own process (``python -m app sim``, limits so generous that the
limiter never waits, a frozen mark; its memory is not counted). In this process one `Daemon`
(journal and INFO audit log on disk, watcher and lag probe running: `Daemon.serve`) executes
the signals as fast as it can: one feeder submits them through the in-process intake,
``daemon.service.accept(body, source="bench", wait=True)``, so the bounded queue
(``--queue`` places) bounds what is in flight. Five symbols in turn, per symbol an entry then
its close (``LONG_ENTRY``/``CLOSE_LONG``, then ``SHORT_ENTRY``/``CLOSE_SHORT``); one entry in
``--protect-every`` carries tp/sl, so protective orders are placed and cancelled too.

RSS is this process's ``VmRSS`` (``/proc/self/status``): after a warm-up and a ``gc.collect()``
(the baseline), at every 10,000 signals submitted, and at the end (``gc.collect()``); at each of
these points the queue is drained, so every position is flat. The simulator is never reset: it
indexes its orders, so a long history costs it nothing per request (bench/sim_history.py).
The warm-up lasts at least ``--warmup`` signals and
``--warmup-s`` seconds: the limiter keeps a log of the requests of the last rate-limit window
(60 s for the request weight), so its memory reaches its steady level only after one window.
Target: growth < 20 MB from baseline to end.
``--tracemalloc`` also diffs Python allocations from baseline to end (top 10 lines; it slows the
run several-fold). Exits 1 when the target is not met.

    python bench/soak.py [--signals N] [--short] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lib.report import RESULTS_DIR, machine, save
from lib.simproc import UNTHROTTLED, simulator
from lib.workload import QUANTITIES, brackets

from app.config import load_settings
from app.daemon import Daemon

TARGET_GROWTH_MB = 20.0
CHECKPOINT = 10_000
ROUND = 10          # signals in which every symbol gets an entry and its close
#: (entry, close) by cycle: long, then short.
CYCLE = (("LONG_ENTRY", "CLOSE_LONG"), ("SHORT_ENTRY", "CLOSE_SHORT"))


def rss_mb() -> float:
    """This process's resident set size (VmRSS), in MB (2^20 bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def bodies(brackets: dict[str, tuple[str, str]], protect_every: int) -> Iterator[dict[str, Any]]:
    """Endless signals: symbols in turn, per symbol entry then close, long then short."""
    symbols = list(QUANTITIES)
    i = 0
    while True:
        symbol = symbols[i % len(symbols)]
        step = i // len(symbols)
        entry, close = CYCLE[(step // 2) % 2]
        if step % 2:
            yield {"symbol": symbol, "type": close}
        else:
            body: dict[str, Any] = {"symbol": symbol, "type": entry,
                                    "quantity": QUANTITIES[symbol]}
            if protect_every and (step // 2) % protect_every == 0:
                up, down = brackets[symbol]
                long = entry == "LONG_ENTRY"
                body["take_profit"], body["stop_loss"] = (up, down) if long else (down, up)
            yield body
        i += 1


async def drained(daemon: Daemon) -> None:
    """Let the queue drain: every position is then flat, every protective order cancelled."""
    assert daemon.bus is not None
    assert await daemon.bus.drain(120), "the queue did not drain"


async def soak(url: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak; the measurements as a dict."""
    base = {"audit.log_dir": str(workdir / "audit"), "audit.console": False,
            "audit.level": "INFO", "journal.path": str(workdir / "journal.sqlite3"),
            "api.port": 0, "execution.queue_size": args.queue,
            "execution.max_concurrency": args.concurrency}
    settings = load_settings(overrides=base, environ={})
    async with Daemon(settings, exchange_url=url, out=io.StringIO()) as daemon:
        assert daemon.service is not None
        assert daemon.bus is not None
        assert daemon.journal is not None
        serving = asyncio.create_task(daemon.serve())
        feed = bodies(await brackets(daemon), args.protect_every)
        accept = daemon.service.accept
        warm_until = time.perf_counter() + args.warmup_s
        warmed = 0
        # Whole rounds (every symbol's entry and close), so every position is flat at a reset.
        while warmed < args.warmup or time.perf_counter() < warm_until or warmed % ROUND:
            await accept(next(feed), source="bench", wait=True)
            warmed += 1
        await drained(daemon)
        gc.collect()
        if args.tracemalloc:
            tracemalloc.start(10)
            before = tracemalloc.take_snapshot()
        start = time.perf_counter()
        baseline = rss_mb()
        rows = [{"signals": 0, "rss_mb": round(baseline, 2), "elapsed_s": 0.0}]
        for i in range(1, args.signals + 1):
            await accept(next(feed), source="bench", wait=True)
            if i % CHECKPOINT == 0 and i < args.signals:
                await drained(daemon)
                rows.append({"signals": i, "rss_mb": round(rss_mb(), 2),
                             "elapsed_s": round(time.perf_counter() - start, 2)})
        assert await daemon.bus.drain(120), "the queue did not drain"
        elapsed = time.perf_counter() - start
        gc.collect()
        end = rss_mb()
        rows.append({"signals": args.signals, "rss_mb": round(end, 2),
                     "elapsed_s": round(elapsed, 2)})
        top: list[str] = []
        if args.tracemalloc:
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            top = [str(stat) for stat in after.compare_to(before, "lineno")[:10]]
        counts = await daemon.journal.counts()
        queue_peak = daemon.bus.capacity
        daemon.request_stop("bench done")
        await serving
    return {"rows": rows, "warmed": warmed, "baseline_mb": baseline, "end_mb": end,
            "elapsed_s": elapsed, "journal_counts": counts, "queue": queue_peak,
            "tracemalloc_top10": top}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=100_000)
    parser.add_argument("--short", action="store_true", help="10,000 signals")
    parser.add_argument("--warmup", type=int, default=1_000, help="warm-up signals, at least")
    parser.add_argument("--warmup-s", type=float, default=65.0,
                        help="warm-up seconds, at least (one 60 s rate-limit window)")
    parser.add_argument("--queue", type=int, default=200, help="execution.queue_size")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="execution.max_concurrency")
    parser.add_argument("--protect-every", type=int, default=10, metavar="N",
                        help="one entry in N carries tp/sl (0: none)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="diff Python allocations from baseline to end (slow)")
    args = parser.parse_args()
    if args.short:
        args.signals = 10_000
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        async with simulator(Path(tmp) / "sim", UNTHROTTLED) as url:
            result = await soak(url, Path(tmp), args)
    load_after = os.getloadavg()[0]
    growth = result["end_mb"] - result["baseline_mb"]
    met = growth < TARGET_GROWTH_MB
    print(f"{args.signals:,} signals (after {result['warmed']:,} in {args.warmup_s:g} s of "
          "warm-up), in-process accept, "
          f"daemon vs simulator process, INFO audit on disk, queue {args.queue}")
    print(f"{'signals':>8}  {'RSS MB':>8}  {'growth MB':>9}  {'elapsed s':>9}")
    for row in result["rows"]:
        print(f"{row['signals']:>8,}  {row['rss_mb']:>8.1f}  "
              f"{row['rss_mb'] - result['baseline_mb']:>+9.1f}  {row['elapsed_s']:>9.1f}")
    rate = args.signals / result["elapsed_s"]
    print(f"growth {growth:+.1f} MB over {args.signals:,} signals ({rate:,.0f} signals/s); "
          f"target < {TARGET_GROWTH_MB:g} MB: {'met' if met else 'NOT met'}")
    print(f"journal: {result['journal_counts']}; load average {load_before:.2f} → "
          f"{load_after:.2f}")
    for line in result["tracemalloc_top10"]:
        print(f"  {line}")
    out_data = {
        "bench": "soak", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "signals": args.signals, "warmup_signals": result["warmed"],
        "warmup_s": args.warmup_s, "queue_size": args.queue,
        "max_concurrency": args.concurrency, "protect_every": args.protect_every,
        "intake": "daemon.service.accept (in-process, wait=True)",
        "rss_mb": result["rows"], "baseline_mb": round(result["baseline_mb"], 2),
        "end_mb": round(result["end_mb"], 2), "growth_mb": round(growth, 2),
        "elapsed_s": round(result["elapsed_s"], 2), "signals_per_s": round(rate, 1),
        "journal_counts": result["journal_counts"],
        "load_avg_1m": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "tracemalloc_top10": result["tracemalloc_top10"],
        "target_growth_mb": TARGET_GROWTH_MB, "met": met,
    }
    print(f"wrote {save(RESULTS_DIR / 'soak.json', out_data)}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
