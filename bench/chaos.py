"""Duplicates under faults: execd's exactly-once protocol beside the seeds' blind retry (SPEC §13).

The in-process `Daemon` runs against a simulator started here as a separate OS process
(``python -m app sim``) with small rate-limit windows (weight 400 per 2 s, orders 150 per 2 s),
so the limiter has work to do. Signals go through the daemon's accept path
(``daemon.service.accept(body, source="bench", wait=True)``), as the control API and the spool
feed it.

* Signals (``--signals``, seeded): per symbol (BTC, ETH, SOL, BNB, XRP) episodes of 1-3 entries
  of one side — 40 % with a stop-loss and a take-profit, 15 % with a stop-loss only, the rest
  bare, 10 % setting leverage — then a close (85 % of the whole position, 15 % with the summed
  quantity); the episodes of the symbols are interleaved at random. ``ttl_s`` = 600.
* Faults (seeded plan, ``POST /_sim/faults``): on ``POST /fapi/v1/order`` and
  ``POST /fapi/v1/algoOrder`` every fault kind of SPEC §10 — http_500, disconnected_1001,
  throttled_1008, service_unavailable (1.5 % each), unknown_503, timeout_1007,
  reset_after_apply (2 % each, the order then hidden from queries for 1 s), hang (1 %, 1.5 s
  against a 1 s request timeout, hidden 1 s), delayed_visibility (3 %, 2 s) — about 16 % of
  placements, plus 20 ms latency on 20 %; on the queries (GET order, GET algoOrder,
  DELETE algoOrder, positionRisk, premiumIndex) the eight not-visibility kinds at 1.5 % each
  (about 11 %); and an outage (every ``/fapi`` request 503) of 3 s, 15 s into the run
  (2 s, 4 s in with ``--short``).
* Policies, one after the other, each with a fresh simulator process, journal and audit log,
  the same signals and the same plan (same seed; which request draws which fault depends on
  timing, so the faults are equal in distribution, not request by request):
  ``execd`` (the unknown-outcome protocol: look the order up by client id, adopt or resend)
  and ``blind-retry`` (``ExecutorSettings(unknown_outcome_protocol=False)``: resend the POST on
  every unknown outcome, up to 3 sends, as the seeds designed it). Everything else — limiter,
  breakers, retry policy — is the same daemon.
* Measured after every accepted signal is terminal (or ``--timeout``): signals by final state
  (non-terminal = lost), client ids with more than one order in ``/_sim/orders`` (``triggered``
  rows excluded) and the extra orders, 429s and 418s (``/_sim/state`` ``throttled``),
  positions left without a live ``STOP_MARKET`` algo order on a symbol whose last episode asked
  for a stop-loss, wall time.

Target for execd: 0 duplicate client ids, 0 lost signals, 0 × 418. Prints one table and writes
``bench/results/chaos.json``. Loopback only; stops by itself.

    python bench/chaos.py [--signals N] [--seed N] [--only execd,blind-retry] [--keep DIR]
                          [--short]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import io
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from lib.report import RESULTS_DIR, machine, save, text_table
from lib.simproc import Admin, duplicates, sim_toml, simulator
from lib.workload import MARKETS, TTL_S, make_signals

from app import factory
from app.config import Settings, load_settings
from app.daemon import Daemon
from app.domain import SignalState
from app.execution.settings import ExecutorSettings

RESULTS = RESULTS_DIR / "chaos.json"
SEED = 20260707
POLICIES = ("execd", "blind-retry")
#: Simulator limits: small windows, so the daemon's limiter paces the run.
SIM_LIMITS = {"request_weight": 400, "request_weight_interval_s": 2,
              "orders_short": 150, "orders_short_interval_s": 2,
              "orders_long": 100_000, "orders_long_interval_s": 60, "ban_after_429s": 3}
#: Daemon settings (dotted keys) that let every fault resolve well within a signal's TTL.
DAEMON = {"exchange.request_timeout_s": 1.0, "execution.resolve_window_s": 4.0,
          "execution.default_ttl_s": float(TTL_S), "execution.shutdown_timeout_s": 5.0,
          "stream.fallback_poll_s": 2.0, "breaker.recovery_timeout_s": 1.0,
          "retry.initial_delay": 0.05, "retry.max_delay": 1.0, "retry.jitter": 0.02}


# ---------------------------------------------------------------------------- faults
def fault_plan(seed: int, *, outage_start_s: float, outage_s: float) -> dict[str, Any]:
    """Every fault kind of SPEC §10 on the placement endpoints, the not-visibility kinds on the
    queries, and one outage (module docstring)."""
    rules: list[dict[str, Any]] = []
    for endpoint in ("POST /fapi/v1/order", "POST /fapi/v1/algoOrder"):
        rules += [
            {"endpoint": endpoint, "fault": "latency", "probability": 0.2, "latency_ms": 20},
            *({"endpoint": endpoint, "fault": kind, "probability": 0.015}
              for kind in ("http_500", "disconnected_1001", "throttled_1008",
                           "service_unavailable")),
            *({"endpoint": endpoint, "fault": kind, "probability": 0.02,
               "visibility_delay_s": 1.0}
              for kind in ("unknown_503", "timeout_1007", "reset_after_apply")),
            {"endpoint": endpoint, "fault": "hang", "probability": 0.01, "hang_s": 1.5,
             "visibility_delay_s": 1.0},
            {"endpoint": endpoint, "fault": "delayed_visibility", "probability": 0.03,
             "visibility_delay_s": 2.0},
        ]
    for endpoint in ("GET /fapi/v1/order", "GET /fapi/v1/algoOrder", "DELETE /fapi/v1/algoOrder",
                     "GET /fapi/v3/positionRisk", "GET /fapi/v1/premiumIndex"):
        rules += [{"endpoint": endpoint, "fault": kind, "probability": 0.015,
                   **({"hang_s": 1.5} if kind == "hang" else {})}
                  for kind in ("http_500", "disconnected_1001", "throttled_1008",
                               "service_unavailable", "unknown_503", "timeout_1007",
                               "reset_after_apply", "hang")]
    return {"seed": seed, "rules": rules,
            "outages": [{"start_s": outage_start_s, "duration_s": outage_s}]}


# ---------------------------------------------------------------------------- one policy
def daemon_settings(workdir: Path) -> Settings:
    overrides: dict[str, object] = {
        "audit.log_dir": str(workdir / "audit"), "audit.console": False,
        "journal.path": str(workdir / "journal.sqlite3"), "api.port": 0, **DAEMON}
    return load_settings(overrides=overrides, environ={})


def executor_settings(policy: str, settings: Settings) -> ExecutorSettings:
    base = factory.executor_settings(settings.execution)
    if policy == "blind-retry":
        return dataclasses.replace(base, unknown_outcome_protocol=False)
    return base


async def wait_terminal(daemon: Daemon, deadline: float) -> int:
    """Poll the journal until no signal is left non-terminal or ``deadline`` (monotonic)
    passes; the number left."""
    assert daemon.journal is not None
    while True:
        left = len(await daemon.journal.non_terminal_signals())
        if left == 0 or time.monotonic() >= deadline:
            return left
        await asyncio.sleep(0.25)


def unprotected(signals: list[dict[str, Any]], states: dict[str, str],
                positions: list[dict[str, Any]], orders: list[dict[str, Any]]) -> list[str]:
    """Symbols with an open position and no live STOP_MARKET algo order whose position's
    episode asked for a stop-loss (an entry with ``stop_loss`` that ran — DONE or FAILED —
    since the symbol's last DONE close)."""
    wants: dict[str, bool] = {}
    for body in signals:
        state = states.get(body["id"])
        if body["type"].startswith("CLOSE"):
            if state == SignalState.DONE.value:
                wants[body["symbol"]] = False
        elif "stop_loss" in body and state in (SignalState.DONE.value, SignalState.FAILED.value):
            wants[body["symbol"]] = True
    stops = {r["symbol"] for r in orders if r["kind"] == "algo" and r["status"] == "NEW"
             and r["type"] == "STOP_MARKET"}
    return sorted(p["symbol"] for p in positions
                  if Decimal(p["positionAmt"]) != 0 and wants.get(p["symbol"])
                  and p["symbol"] not in stops)


def audit_counts(log_dir: Path) -> dict[str, int]:
    """How often the events that show the faults at work were emitted."""
    names = ("order_unknown_outcome", "order_resolved", "signal_deferred", "retry_attempt",
             "breaker_opened", "position_unprotected", "position_flattened", "rate_limit",
             "ip_banned", "api_error")
    counts = dict.fromkeys(names, 0)
    for path in sorted(log_dir.glob("audit-*.jsonl")):
        for line in path.read_bytes().splitlines():
            event = orjson.loads(line).get("event")
            if event in counts:
                counts[event] += 1
    return counts


async def run_policy(policy: str, signals: list[dict[str, Any]], plan: dict[str, Any],
                     workdir: Path, *, timeout_s: float) -> dict[str, Any]:
    """One policy against a fresh simulator and journal; its row of the table."""
    pdir = workdir / policy
    settings = daemon_settings(pdir)
    async with simulator(pdir, sim_toml(SIM_LIMITS)) as base, aiohttp.ClientSession() as session:
        admin = Admin(session, base)
        async with Daemon(settings, exchange_url=base, out=io.StringIO(),
                          executor_settings=executor_settings(policy, settings)) as daemon:
            assert daemon.service is not None
            assert daemon.journal is not None
            serving = asyncio.create_task(daemon.serve(), name="bench-daemon")
            await admin.post("faults", plan)
            began = time.monotonic()
            for body in signals:
                await daemon.service.accept(body, source="bench", wait=True)
            left = await wait_terminal(daemon, began + timeout_s)
            wall = time.monotonic() - began
            states: dict[str, str] = {}
            reasons: collections.Counter[str] = collections.Counter()
            for body in signals:
                record = await daemon.journal.get_signal(body["id"])
                states[body["id"]] = record.state.value if record is not None else "MISSING"
                if record is not None and record.state is SignalState.FAILED:
                    reasons[(record.reason or "")[:120]] += 1
            daemon.request_stop("bench finished")
            await serving
        await admin.post("faults", {"seed": 0, "rules": []})
        sim_state, orders = await admin.get("state"), await admin.get("orders")
    dup = duplicates(orders)
    by_state = collections.Counter(states.values())
    terminal = {s.value for s in SignalState if s.is_terminal}
    lost = sorted(i for i, s in states.items() if s not in terminal)
    naked = unprotected(signals, states, sim_state["positions"], orders)
    return {
        "policy": policy, "signals": len(signals),
        "states": {s: by_state.get(s, 0) for s in ("DONE", "REJECTED", "FAILED", "EXPIRED")},
        "failed_reasons": dict(reasons.most_common(10)),
        "lost": len(lost), "lost_ids": lost[:50], "left_at_timeout": left,
        "client_ids": len({r["client_id"] for r in orders if r["kind"] != "triggered"}),
        "orders": sum(1 for r in orders if r["kind"] != "triggered"),
        "duplicate_client_ids": len(dup), "extra_orders": sum(n - 1 for n in dup.values()),
        "duplicate_examples": dict(list(dup.items())[:10]),
        "throttled_429": sim_state["throttled"]["429"],
        "throttled_418": sim_state["throttled"]["418"],
        "open_positions": sum(1 for p in sim_state["positions"]
                              if Decimal(p["positionAmt"]) != 0),
        "unprotected_positions": len(naked), "unprotected_symbols": naked,
        "sim_requests": sim_state.get("requests"),
        "audit": audit_counts(pdir / "audit"),
        "wall_s": round(wall, 1),
    }


def met(row: dict[str, Any]) -> bool:
    return row["duplicate_client_ids"] == 0 and row["lost"] == 0 and row["throttled_418"] == 0


async def measure(signals: list[dict[str, Any]], plan: dict[str, Any], policies: list[str],
                  workdir: Path, *, timeout_s: float) -> list[dict[str, Any]]:
    rows = []
    for policy in policies:
        print(f"running {policy} ...", file=sys.stderr, flush=True)
        rows.append(await run_policy(policy, signals, plan, workdir, timeout_s=timeout_s))
    return rows


def run(n: int, *, seed: int = SEED, policies: tuple[str, ...] = POLICIES, short: bool = False,
        timeout_s: float = 900.0, keep: Path | None = None
        ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The whole bench without printing: (rows, fault plan). ``keep`` names a directory for
    the journals, audit logs and simulator logs, left in place (default: a temporary one)."""
    plan = fault_plan(seed, outage_start_s=4.0 if short else 15.0,
                      outage_s=2.0 if short else 3.0)
    signals = make_signals(n, seed, prefix="chaos")
    if keep is not None:
        return asyncio.run(measure(signals, plan, list(policies), keep,
                                   timeout_s=timeout_s)), plan
    with tempfile.TemporaryDirectory(prefix="execd-chaos-") as tmp:
        rows = asyncio.run(measure(signals, plan, list(policies), Path(tmp),
                                   timeout_s=timeout_s))
    return rows, plan


# ---------------------------------------------------------------------------- report
def table(rows: list[dict[str, Any]]) -> str:
    head = ["policy", "signals", "DONE", "REJECTED", "FAILED", "EXPIRED", "lost", "client ids",
            "dup ids", "extra orders", "429", "418", "open pos", "unprotected", "wall s",
            "target"]
    lines = [head]
    for row in rows:
        target = ("met" if met(row) else "NOT met") if row["policy"] == "execd" else "-"
        st = row["states"]
        lines.append([row["policy"], str(row["signals"]), str(st["DONE"]), str(st["REJECTED"]),
                      str(st["FAILED"]), str(st["EXPIRED"]), str(row["lost"]),
                      str(row["client_ids"]), str(row["duplicate_client_ids"]),
                      str(row["extra_orders"]), str(row["throttled_429"]),
                      str(row["throttled_418"]), str(row["open_positions"]),
                      str(row["unprotected_positions"]), f"{row['wall_s']:.1f}", target])
    return text_table(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signals", type=int, default=2000, help="signals per policy")
    parser.add_argument("--seed", type=int, default=SEED, help="signals and fault plan seed")
    parser.add_argument("--only", default="", help=f"comma list of {','.join(POLICIES)}")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds per policy before non-terminal signals count as lost")
    parser.add_argument("--short", action="store_true", help="300 signals (under a minute)")
    parser.add_argument("--out", default=str(RESULTS), help="JSON output path")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep journals and audit logs in DIR (one directory per policy)")
    args = parser.parse_args(argv)
    args.policies = [p for p in POLICIES if p in args.only.split(",")] if args.only \
        else list(POLICIES)
    if not args.policies or set(filter(None, args.only.split(","))) - set(POLICIES):
        parser.error(f"--only: choose from {','.join(POLICIES)}")
    if args.short:
        args.signals, args.timeout = 300, min(args.timeout, 120.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    began = time.time()
    rows, plan = run(args.signals, seed=args.seed, policies=tuple(args.policies),
                     short=args.short, timeout_s=args.timeout, keep=args.keep)
    report = table(rows)
    faults = sorted({r["fault"] for r in plan["rules"]})
    print(f"chaos bench: {args.signals} signals over {len(MARKETS)} symbols, seed {args.seed}; "
          f"sim limits weight {SIM_LIMITS['request_weight']}/"
          f"{SIM_LIMITS['request_weight_interval_s']}s, orders {SIM_LIMITS['orders_short']}/"
          f"{SIM_LIMITS['orders_short_interval_s']}s")
    print(f"faults: {', '.join(faults)} + outage {plan['outages'][0]['duration_s']:g} s at "
          f"{plan['outages'][0]['start_s']:g} s (~16 % of placements, ~11 % of queries); "
          f"request timeout {DAEMON['exchange.request_timeout_s']:g} s")
    print(report)
    for row in rows:
        audit = row["audit"]
        print(f"{row['policy']}: unknown outcomes {audit['order_unknown_outcome']}, "
              f"resolved {audit['order_resolved']}, deferred {audit['signal_deferred']}, "
              f"retries {audit['retry_attempt']}, breaker opened {audit['breaker_opened']}, "
              f"unprotected events {audit['position_unprotected']}, "
              f"flattened {audit['position_flattened']}")
        for reason, count in row["failed_reasons"].items():
            print(f"  FAILED x{count}: {reason}")
    execd = next((r for r in rows if r["policy"] == "execd"), None)
    ok = execd is not None and met(execd)
    if execd is not None:
        print(f"target (execd: 0 duplicate client ids, 0 lost, 0 x 418): "
              f"{'met' if ok else 'NOT met'}")
    written = save(Path(args.out), {
        "bench": "chaos", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(aiohttp=aiohttp.__version__),
        "parameters": {"signals": args.signals, "symbols": sorted(MARKETS), "seed": args.seed,
                       "ttl_s": TTL_S, "sim_limits": SIM_LIMITS, "daemon": DAEMON,
                       "fault_plan": plan, "short": args.short, "timeout_s": args.timeout},
        "targets": {"execd": {"duplicate_client_ids": 0, "lost": 0, "418": 0}},
        "met": ok, "duration_s": round(time.time() - began, 1),
        "table": report, "results": rows,
    })
    print(f"wrote {written} ({time.time() - began:.0f} s)")
    return 0 if ok or execd is None else 1


if __name__ == "__main__":
    sys.exit(main())
