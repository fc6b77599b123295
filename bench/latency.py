"""Decision latency and event-loop lag of the whole daemon under a steady signal rate (SPEC §13).

The simulator runs in its own process (``python -m app sim``, limits so generous that the
limiter never waits, a frozen mark). In this process, for each rate, a fresh `Daemon` (its own
journal and INFO audit log on disk: the real pipeline, writer thread included) serves against
it, with its watcher and lag probe running (`Daemon.serve`).

* Feed: a paced feeder submits signals at a steady rate through the in-process intake,
  ``daemon.service.accept(body, source="bench", wait=True)`` (the HTTP API's path minus the
  HTTP parsing), each accept in a task of its own so a slow accept never delays the next one.
  Five symbols in turn; per symbol a ``LONG_ENTRY`` with tp/sl 2 % around the mark, then a
  ``CLOSE_LONG`` (which cancels the protective orders): every kind of order the daemon sends.
* Decision latency: signal dequeued → its first order on the wire, as the executor reports it
  through the daemon's ``on_decision`` hook (the metrics histogram gets the same values). It
  includes the journal writes and the one exchange read (mark price for an entry, position for
  a close) that come before the order.
* Loop lag: a probe task of this script asks to sleep 1 ms and records how late it wakes.
* Warm-up: 2 signals per symbol before measuring. Each rate runs ``--seconds`` of feed, then the
  queue drains; the samples cover feed and drain.

Targets: decision p99 < 2 ms at 50 signals/s; loop lag p99 < 5 ms at 100 signals/s. The load
average is recorded: on this shared 2-core machine, measure when it is below 1.5.
To find what dominates: ``--breakdown`` times each journal and exchange call awaited inside
the decisions, ``--profile`` runs the measured part under cProfile (this thread only) and prints
the top functions, ``--keep DIR`` keeps each daemon's journal and audit log. Exits 1 when a
target is not met.

    python bench/latency.py [--rates 50,100] [--seconds S] [--short] [--breakdown] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from lib.report import RESULTS_DIR, machine, save
from lib.simproc import UNTHROTTLED, simulator
from lib.workload import QUANTITIES, brackets

from app.config import load_settings
from app.daemon import Daemon
from app.execution.sender import DECISION_STARTED

TARGET_DECISION_P99_S = 0.002     # at 50 signals/s
TARGET_LAG_P99_S = 0.005          # at 100 signals/s
PROBE_S = 0.001


def make_daemon(workdir: Path, url: str, *,
                on_decision: Callable[[float], None] | None = None,
                **overrides: object) -> Daemon:
    """A daemon against `url` with its journal, token and INFO audit log under `workdir`;
    `on_decision` is told every decision latency."""
    base = {"audit.log_dir": str(workdir / "audit"), "audit.console": False,
            "audit.level": "INFO", "journal.path": str(workdir / "journal.sqlite3"),
            "api.port": 0}
    settings = load_settings(overrides=base | overrides, environ={})
    return Daemon(settings, exchange_url=url, out=io.StringIO(), on_decision=on_decision)


def bodies(prices: dict[str, tuple[str, str]]) -> Any:
    """Endless signals: per symbol an entry with tp/sl, then its close; symbols in turn."""
    symbols = list(QUANTITIES)
    i = 0
    while True:
        symbol = symbols[i % len(symbols)]
        if (i // len(symbols)) % 2 == 0:
            tp, sl = prices[symbol]
            yield {"symbol": symbol, "type": "LONG_ENTRY", "quantity": QUANTITIES[symbol],
                   "take_profit": tp, "stop_loss": sl}
        else:
            yield {"symbol": symbol, "type": "CLOSE_LONG"}
        i += 1


async def probe(samples: list[float], stop: asyncio.Event) -> None:
    """Sleep 1 ms again and again; record how late each wake-up is (seconds)."""
    now = time.perf_counter
    while not stop.is_set():
        start = now()
        await asyncio.sleep(PROBE_S)
        samples.append(max(0.0, now() - start - PROBE_S))


#: What the executor awaits between dequeue and the first order (``--breakdown`` times them).
JOURNAL_CALLS = ("set_signal_state", "intents_for", "put_intent")
EXCHANGE_CALLS = ("mark_price", "get_position")


def time_parts(daemon: Daemon, parts: dict[str, list[float]]) -> None:
    """Wrap the journal and exchange calls a decision awaits; record each call's wall time
    (seconds, loop scheduling included) made while a decision is open (`DECISION_STARTED`)."""
    now = time.perf_counter

    def timed(owner: object, name: str) -> None:
        original = getattr(owner, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if DECISION_STARTED.get() is None:
                return await original(*args, **kwargs)
            start = now()
            try:
                return await original(*args, **kwargs)
            finally:
                parts.setdefault(name, []).append(now() - start)

        setattr(owner, name, wrapper)

    assert daemon.exchange is not None
    for name in JOURNAL_CALLS:
        timed(daemon.journal, name)
    for name in EXCHANGE_CALLS:
        timed(daemon.exchange.gateway, name)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class RateRun:
    rate: int
    signals: int = 0
    feed_s: float = 0.0
    decisions: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    final_states: dict[str, int] = field(default_factory=dict)
    histogram_count: float = 0.0
    retries: float = 0.0
    daemon_lag: dict[str, float | int] = field(default_factory=dict)
    behind_max_ms: float = 0.0
    parts: dict[str, list[float]] = field(default_factory=dict)
    load_before: float = 0.0
    load_after: float = 0.0


async def run_rate(url: str, rate: int, seconds: float, profiler: cProfile.Profile | None,
                   keep: Path | None, breakdown: bool) -> RateRun:
    """One fresh daemon fed at `rate` signals/s for `seconds`; its files under `keep`/rate-N
    if given (kept), else in a temporary directory."""
    result = RateRun(rate, load_before=os.getloadavg()[0])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) if keep is None else keep / f"rate-{rate}"
        daemon = make_daemon(workdir, url, on_decision=result.decisions.append)
        async with daemon:
            assert daemon.service is not None
            assert daemon.bus is not None
            serving = asyncio.create_task(daemon.serve())
            service = daemon.service
            feed = bodies(await brackets(daemon))
            for _ in range(2 * 2 * len(QUANTITIES)):                  # warm-up
                await service.accept(next(feed), source="bench", wait=True)
            assert await daemon.bus.drain(30), "warm-up did not drain"

            result.decisions.clear()                                   # warm-up's
            if breakdown:
                time_parts(daemon, result.parts)
            stop = asyncio.Event()
            probing = asyncio.create_task(probe(result.lag, stop))
            count = int(rate * seconds)
            accepts: set[asyncio.Task[Any]] = set()
            if profiler is not None:
                profiler.enable()
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(count):
                due = start + i / rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    result.behind_max_ms = max(result.behind_max_ms, -delay * 1e3)
                task = asyncio.create_task(service.accept(next(feed), source="bench",
                                                          wait=True))
                accepts.add(task)
                task.add_done_callback(accepts.discard)
            result.feed_s = loop.time() - start
            await asyncio.gather(*accepts)
            assert await daemon.bus.drain(60), "the queue did not drain"
            stop.set()
            await probing
            if profiler is not None:
                profiler.disable()
            result.signals = count
            result.daemon_lag = daemon.lag.statistics()
            assert daemon.journal is not None
            result.final_states = await daemon.journal.counts()
            result.histogram_count = daemon.metrics.registry.get_sample_value(
                "execd_decision_latency_seconds_count") or 0.0
            result.retries = sum(
                sample.value for metric in daemon.metrics.registry.collect()
                if metric.name == "execd_retries" for sample in metric.samples
                if sample.name == "execd_retries_total")
            daemon.request_stop("bench done")
            await serving
        structlog.reset_defaults()
    result.load_after = os.getloadavg()[0]
    return result


def verdict(run: RateRun) -> str:
    checks = []
    if run.rate == 50:
        checks.append(percentile(run.decisions, 0.99) < TARGET_DECISION_P99_S)
    if run.rate == 100:
        checks.append(percentile(run.lag, 0.99) < TARGET_LAG_P99_S)
    if not checks:
        return "-"
    return "met" if all(checks) else "NOT met"


def breakdown_table(run: RateRun) -> str:
    """Per call inside the decisions: calls per decision, mean / p50 / p99 ms, share of the
    summed decision time."""
    total = sum(run.decisions) or float("nan")
    lines = [f"decision breakdown at {run.rate}/s ({len(run.decisions)} decisions, "
             f"mean {total / len(run.decisions) * 1e3:.2f} ms)",
             f"{'call':<18}{'per dec.':>9}{'mean ms':>9}{'p50 ms':>8}{'p99 ms':>8}{'share':>7}"]
    for name, values in sorted(run.parts.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"{name:<18}{len(values) / len(run.decisions):>9.2f}"
                     f"{sum(values) / len(values) * 1e3:>9.3f}"
                     f"{percentile(values, .5) * 1e3:>8.3f}{percentile(values, .99) * 1e3:>8.3f}"
                     f"{sum(values) / total:>7.0%}")
    rest = total - sum(sum(v) for v in run.parts.values())
    lines.append(f"{'(the rest)':<18}{'':>9}{rest / len(run.decisions) * 1e3:>9.3f}"
                 f"{'':>16}{rest / total:>7.0%}")
    return "\n".join(lines)


def summary(run: RateRun) -> dict[str, Any]:
    def ms(values: list[float]) -> dict[str, float | int]:
        return {"p50": round(percentile(values, 0.5) * 1e3, 3),
                "p99": round(percentile(values, 0.99) * 1e3, 3),
                "max": round(max(values, default=float("nan")) * 1e3, 3),
                "samples": len(values)}
    return {"rate": run.rate, "signals": run.signals, "feed_s": round(run.feed_s, 3),
            "feeder_behind_max_ms": round(run.behind_max_ms, 3),
            "decision_ms": ms(run.decisions), "loop_lag_ms": ms(run.lag),
            "metrics_histogram_count": run.histogram_count, "retries": run.retries,
            "daemon_lag_probe": run.daemon_lag, "journal_counts": run.final_states,
            "load_avg_1m": {"before": round(run.load_before, 2),
                            "after": round(run.load_after, 2)},
            "target": verdict(run)}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="50,100", help="signals per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="feed time per rate")
    parser.add_argument("--short", action="store_true", help="5 s per rate")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the measured part; print the top functions")
    parser.add_argument("--breakdown", action="store_true",
                        help="time the journal and exchange calls inside each decision")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep each daemon's journal and audit log under DIR")
    args = parser.parse_args()
    if args.short:
        args.seconds = 5.0
    rates = [int(r) for r in args.rates.split(",")]
    profiler = cProfile.Profile() if args.profile else None
    runs: list[RateRun] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with simulator(Path(tmp) / "sim", UNTHROTTLED) as url:
            for rate in rates:
                runs.append(await run_rate(url, rate, args.seconds, profiler, args.keep,
                                          args.breakdown))

    print(f"{args.seconds:g} s of feed per rate, in-process accept, daemon vs simulator process, "
          "INFO audit on disk")
    header = (f"{'rate/s':>6}  {'signals':>7}  {'decision p50/p99/max ms':>24}  "
              f"{'lag p50/p99/max ms':>20}  {'load':>9}  target")
    print(header)
    print("-" * len(header))
    for run in runs:
        d, lag = run.decisions, run.lag
        print(f"{run.rate:>6}  {run.signals:>7}  "
              f"{percentile(d, .5) * 1e3:>8.2f}/{percentile(d, .99) * 1e3:.2f}/"
              f"{max(d) * 1e3:<6.2f}  "
              f"{percentile(lag, .5) * 1e3:>6.2f}/{percentile(lag, .99) * 1e3:.2f}/"
              f"{max(lag) * 1e3:<6.2f}  "
              f"{run.load_before:>4.2f}/{run.load_after:<4.2f}  {verdict(run)}")
    print("targets: decision p99 < 2 ms at 50/s; loop lag p99 < 5 ms at 100/s; "
          "load = 1-min load average before/after")
    for run in runs:
        if run.parts:
            print(breakdown_table(run))
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
        print(text.getvalue())
    result = {
        "bench": "latency", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "seconds_per_rate": args.seconds, "intake": "daemon.service.accept (in-process)",
        "profiled": args.profile,
        "targets": {"decision_p99_ms_at_50": TARGET_DECISION_P99_S * 1e3,
                    "lag_p99_ms_at_100": TARGET_LAG_P99_S * 1e3},
        "runs": [summary(run) for run in runs],
        "met": all(verdict(run) != "NOT met" for run in runs),
    }
    print(f"wrote {save(RESULTS_DIR / 'latency.json', result)}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
