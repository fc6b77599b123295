"""Broker intake (SPEC §13): signals over NATS JetStream, beside the HTTP path, and through
``kill -9`` restarts of the daemon.

One simulator process (unthrottled, frozen marks, 5-10 ms on every request) and one
``nats-server -js`` (the dev extra's binary) outlive every daemon. A stream ``REPORTS`` keeps
everything published on ``execd.reports.>``, so every report the daemons ever sent is read back
at the end.

1. **Throughput**, one daemon (``execd run --nats``): ``--signals`` entries over 4 symbols
   POSTed to ``/v1/signals`` by 16 concurrent clients and as many published to
   ``execd.signals``, in eight alternating turns after a warm-up of 8 signals a path; for
   each path, signals per second from the first send of a turn to its last ``DONE`` report,
   over its turns. Target: NATS ≥ HTTP.
2. **Crash safety**: a producer publishes at ``--rate`` per second (a third of the signals
   without an id: theirs is ``nats-EXECD-{seq}``) while the daemon gets SIGKILL ``--rounds``
   times at seeded random moments (one round in five during start-up, else 0.2-2.5 s after
   its ready line), each time restarted on the same journal. Then a last daemon finishes and
   is stopped with SIGTERM. Checked: every published signal terminal in the journal (lost:
   target 0), one order per client id on the exchange (duplicated: target 0), a final report
   for every signal (missing reports: target 0; repeats are counted, not a failure: reports
   are at least once).

Prints one table and writes ``bench/results/nats.json``. Loopback only; stops by itself.

    python bench/broker.py [--rounds N] [--rate N] [--signals N] [--seed N] [--short]

``--short`` (``make bench``): 300 signals a path and 5 rounds; the full run (``make
bench-full``) 1000 and 20.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib.metadata
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import nats
import orjson
from lib.daemonproc import DaemonProc, daemon_env, open_log
from lib.natsproc import NatsServer
from lib.report import RESULTS_DIR, machine, save, text_table
from lib.simproc import UNTHROTTLED, Admin, duplicates, free_port, simulator

from app.domain import SignalState
from app.intake.nats import still_running
from app.journal import Journal

RESULTS = RESULTS_DIR / "nats.json"
SEED = 20261203
TOKEN = "nats-bench-token"
READY_TIMEOUT_S = 60.0
HTTP_CLIENTS = 16
QUANTITIES = {"BTCUSDT": "0.002", "ETHUSDT": "0.01", "SOLUSDT": "1", "BNBUSDT": "0.02"}
SYMBOLS = tuple(QUANTITIES)
DAEMON_ENV = {"EXECD_EXECUTION__DEFAULT_TTL_S": "600", "EXECD_EXECUTION__SHUTDOWN_TIMEOUT_S": "5",
              "EXECD_EXCHANGE__REQUEST_TIMEOUT_S": "2", "EXECD_STREAM__ENABLED": "false",
              "EXECD_EXECUTION__QUEUE_SIZE": "10000", "EXECD_AUDIT__LEVEL": "INFO",
              # what a killed daemon had pulled comes back after the ack wait: 5 s, not 30
              "EXECD_INTAKE__NATS__ACK_WAIT_S": "5"}
LATENCY = {"seed": 1, "rules": [
    {"endpoint": "*", "fault": "latency", "probability": 1, "latency_ms": 5},
    {"endpoint": "*", "fault": "latency", "probability": 0.5, "latency_ms": 5}]}
TERMINAL = frozenset(s.value for s in SignalState if s.is_terminal)


def entry(signal_id: str | None, i: int) -> dict[str, Any]:
    symbol = SYMBOLS[i % len(SYMBOLS)]
    body = {"symbol": symbol, "type": "LONG_ENTRY", "quantity": QUANTITIES[symbol],
            "ttl_s": 600}
    return body if signal_id is None else {"id": signal_id, **body}


async def ready(daemon: DaemonProc) -> None:
    if not await daemon.wait_ready(READY_TIMEOUT_S):
        raise TimeoutError(f"no ready line within {READY_TIMEOUT_S:g} s")


class Reports:
    """DONE reports as they arrive (core subscription), to time the paths."""

    def __init__(self) -> None:
        self.done: set[str] = set()
        self._changed = asyncio.Event()

    async def got(self, msg: Any) -> None:
        body = orjson.loads(msg.data)
        if body["state"] == "DONE":
            self.done.add(body["id"])
            self._changed.set()

    async def wait_all(self, ids: set[str], within_s: float) -> None:
        async with asyncio.timeout(within_s):
            while not ids <= self.done:
                self._changed.clear()
                await self._changed.wait()


async def wait_stream(nc: Any) -> None:
    """Until the daemon has created the signals stream (its first connection)."""
    js = nc.jetstream()
    for _ in range(600):
        with contextlib.suppress(Exception):
            await js.stream_info("EXECD")
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the daemon never created the stream EXECD")


# ---------------------------------------------------------------------------- throughput
async def via_http(ids: list[str], reports: Reports, api: str) -> float:
    """Seconds from the first POST to the last DONE report, `HTTP_CLIENTS` POSTing at once."""
    pending = collections.deque(enumerate(ids))

    async def post_all(session: aiohttp.ClientSession) -> None:
        while pending:
            i, signal_id = pending.popleft()
            async with session.post(f"{api}/v1/signals",
                                    data=orjson.dumps(entry(signal_id, i))) as resp:
                if resp.status not in (200, 202):
                    raise RuntimeError(f"POST answered {resp.status}: {await resp.text()}")

    began = time.perf_counter()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        await asyncio.gather(*(post_all(session) for _ in range(HTTP_CLIENTS)))
    await reports.wait_all(set(ids), 300)
    return time.perf_counter() - began


async def via_nats(ids: list[str], reports: Reports, nc: Any) -> float:
    """Seconds from the first publish to the last DONE report (asynchronous publishes)."""
    js = nc.jetstream()
    began = time.perf_counter()
    for i, signal_id in enumerate(ids):
        await js.publish_async("execd.signals", orjson.dumps(entry(signal_id, i)))
    await js.publish_async_completed()
    await reports.wait_all(set(ids), 300)
    return time.perf_counter() - began


async def throughput(n: int, nc: Any, reports: Reports, api: str) -> dict[str, Any]:
    """Both paths against the same daemon, in turns (NATS, HTTP, HTTP, NATS, twice: neither
    always runs on the fuller book or the busier moment), `n` signals a path in all; signals
    per second over its turns."""
    # warm-up, not counted: the first orders of each symbol, connections, caches
    await via_nats([f"warm-n-{i}" for i in range(8)], reports, nc)
    await via_http([f"warm-h-{i}" for i in range(8)], reports, api)
    seconds = {"http": 0.0, "nats": 0.0}
    turns = ("nats", "http", "http", "nats") * 2
    each: list[tuple[str, float]] = []
    for turn, path in enumerate(turns):
        ids = [f"{path}{turn}-{i:05d}" for i in range(n // 4)]
        if path == "http":
            each.append((path, await via_http(ids, reports, api)))
        else:
            each.append((path, await via_nats(ids, reports, nc)))
        seconds[path] += each[-1][1]
    total = 4 * (n // 4)
    return {"signals": total, "http_s": round(seconds["http"], 3),
            "nats_s": round(seconds["nats"], 3),
            "http_per_s": round(total / seconds["http"], 1),
            "nats_per_s": round(total / seconds["nats"], 1),
            "turns_s": [[path, round(s, 3)] for path, s in each]}


# ---------------------------------------------------------------------------- crash rounds
class Producer:
    """Publishes signals at `rate`; a third without an id (theirs derived from the stream
    sequence the publish acknowledgement gives)."""

    def __init__(self, nc: Any, rate: float) -> None:
        self.js = nc.jetstream()
        self.rate = rate
        self.ids: list[str] = []

    async def run(self) -> None:
        i = 0
        while True:
            still_running()   # nats-py may swallow the cancellation (app.intake.nats)
            given = f"crash-{i:05d}" if i % 3 else None
            ack = await self.js.publish("execd.signals", orjson.dumps(entry(given, i)))
            self.ids.append(given or f"nats-{ack.stream}-{ack.seq}")
            i += 1
            await asyncio.sleep(1 / self.rate)


async def crash_rounds(rounds: int, rng: random.Random, env: dict[str, str], base: str,
                       stderr: TextIO, nc: Any, rate: float) -> dict[str, Any]:
    producer = Producer(nc, rate)
    task = asyncio.create_task(producer.run())
    kills: collections.Counter[str] = collections.Counter()
    try:
        for n in range(rounds):
            daemon = await DaemonProc.spawn(env, base, stderr)
            if n % 5 == 4:
                await asyncio.sleep(rng.uniform(0.2, 1.5))
                kills["start-up"] += 1
            else:
                await ready(daemon)
                await asyncio.sleep(rng.uniform(0.2, 2.5))
                kills["running"] += 1
            await daemon.kill()
            print(f"round {n + 1}/{rounds}: published {len(producer.ids)}", file=sys.stderr,
                  flush=True)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {"ids": producer.ids, "kills": dict(kills)}


async def finish(env: dict[str, str], base: str, stderr: TextIO, ids: set[str],
                 done: Reports, within_s: float) -> tuple[int, float]:
    """A last daemon until every signal reported a final state; then SIGTERM."""
    began = time.monotonic()
    daemon = await DaemonProc.spawn(env, base, stderr)
    await ready(daemon)
    with contextlib.suppress(TimeoutError):
        await done.wait_all(ids, within_s)
    return await daemon.terminate(), time.monotonic() - began


async def stored_reports(nc: Any) -> list[dict[str, Any]]:
    """Everything the REPORTS stream kept."""
    js = nc.jetstream()
    sub = await js.pull_subscribe("execd.reports.>", stream="REPORTS")
    out: list[dict[str, Any]] = []
    while True:
        try:
            batch = await sub.fetch(1000, timeout=2)
        except TimeoutError:   # nats-py's own (a subclass) or asyncio's
            return out
        if not batch:          # nats-py may also answer an empty list
            return out
        out += [orjson.loads(m.data) for m in batch]
        for m in batch:
            await m.ack()


async def journal_states(path: Path) -> dict[str, str]:
    journal = Journal(path)
    await journal.open()
    try:
        return {r.signal.id: r.state.value for r in await journal.signals_updated_since(0)}
    finally:
        await journal.close()


async def nats_run(*, signals: int, rounds: int, rate: float, seed: int,
                   workdir: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    began = time.monotonic()
    async with simulator(workdir / "sim", UNTHROTTLED) as base, \
            NatsServer(workdir / "nats") as server, \
            aiohttp.ClientSession() as admin_session, \
            open_log(workdir / "daemon.stderr") as stderr:
        admin = Admin(admin_session, base)
        await admin.post("faults", LATENCY)
        nc = await nats.connect(server.url)
        try:
            await nc.jetstream().add_stream(name="REPORTS", subjects=["execd.reports.>"],
                                            duplicate_window=120)
            done = Reports()
            await nc.subscribe("execd.reports.>", cb=done.got)
            port = free_port()
            env = daemon_env(workdir, port, TOKEN,
                             DAEMON_ENV | {"EXECD_INTAKE__NATS__URL": server.url})
            daemon = await DaemonProc.spawn(env, base, stderr)
            await ready(daemon)
            await wait_stream(nc)
            speed = await throughput(signals, nc, done, f"http://127.0.0.1:{port}")
            await daemon.terminate()
            crash = await crash_rounds(rounds, rng, env, base, stderr, nc, rate)
            published = set(crash["ids"])
            exit_code, finish_s = await finish(env, base, stderr, published, done, 300)
            kept = await stored_reports(nc)
        finally:
            await nc.close()
        orders = await admin.get("orders")
    states = await journal_states(workdir / "data" / "journal.sqlite3")
    lost = sorted(i for i in published if states.get(i) not in TERMINAL)
    final = {b["id"] for b in kept if b["state"] in TERMINAL}
    missing_reports = sorted(published - final)
    per_report = collections.Counter((b["id"], b["state"]) for b in kept)
    dup = duplicates(orders)
    by_client = {o["client_id"] for o in orders if o["kind"] == "order"}
    return {
        "throughput": speed,
        "rounds": rounds, "kills": crash["kills"], "published": len(published),
        "derived_ids": sum(1 for i in published if i.startswith("nats-EXECD-")),
        "states": dict(collections.Counter(states[i] for i in published if i in states)),
        "lost": len(lost), "lost_examples": lost[:20],
        "orders": sum(1 for o in orders if o["kind"] != "triggered"),
        "entry_client_ids": len(by_client),
        "duplicate_client_ids": len(dup), "duplicate_examples": dict(list(dup.items())[:10]),
        "reports_kept": len(kept), "reports_repeated": sum(n - 1 for n in per_report.values()),
        "missing_final_reports": len(missing_reports),
        "missing_examples": missing_reports[:20],
        "final_exit_code": exit_code, "finish_s": round(finish_s, 1),
        "wall_s": round(time.monotonic() - began, 1),
    }


def met(result: dict[str, Any]) -> dict[str, bool]:
    t = result["throughput"]
    return {"nats_at_least_http": t["nats_per_s"] >= t["http_per_s"],
            "lost": result["lost"] == 0, "duplicated": result["duplicate_client_ids"] == 0,
            "reports": result["missing_final_reports"] == 0}


def table(result: dict[str, Any]) -> str:
    ok = met(result)
    t = result["throughput"]

    def verdict(key: str) -> str:
        return "met" if ok[key] else "NOT met"

    rows = [
        ["what", "figure", "target"],
        ["HTTP → DONE", f"{t['http_per_s']} signals/s ({t['signals']} in {t['http_s']} s)", ""],
        ["NATS → DONE", f"{t['nats_per_s']} signals/s ({t['signals']} in {t['nats_s']} s)",
         f"≥ HTTP: {verdict('nats_at_least_http')}"],
        ["kill -9 rounds", f"{result['rounds']} ({result['kills'].get('running', 0)} running, "
                           f"{result['kills'].get('start-up', 0)} start-up)", ""],
        ["signals published", f"{result['published']} ({result['derived_ids']} without id)", ""],
        ["journal states", " ".join(f"{k} {v}" for k, v in sorted(result["states"].items())),
         ""],
        ["signals lost", str(result["lost"]), f"0: {verdict('lost')}"],
        ["duplicate client ids", str(result["duplicate_client_ids"]),
         f"0: {verdict('duplicated')}"],
        ["final reports missing", str(result["missing_final_reports"]),
         f"0: {verdict('reports')}"],
        ["reports kept (repeats)", f"{result['reports_kept']} ({result['reports_repeated']})",
         ""],
        ["final daemon", f"exit {result['final_exit_code']}, {result['finish_s']} s", ""],
        ["wall time", f"{result['wall_s']} s", ""],
    ]
    return text_table(rows)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="kill -9 rounds (default 20)")
    parser.add_argument("--rate", type=float, default=40.0, help="signals published per second")
    parser.add_argument("--signals", type=int, default=1000, help="signals per throughput path")
    parser.add_argument("--seed", type=int, default=SEED, help="kill moments")
    parser.add_argument("--short", action="store_true", help="300 signals a path, 5 rounds")
    parser.add_argument("--out", default=str(RESULTS), help="JSON output path")
    args = parser.parse_args(argv)
    if args.short:
        args.signals, args.rounds = 300, 5
    if args.rounds < 1 or args.rate <= 0 or args.signals < 1:
        parser.error("--rounds and --signals must be ≥ 1, --rate > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="execd-nats-") as tmp:
        result = asyncio.run(nats_run(signals=args.signals, rounds=args.rounds, rate=args.rate,
                                      seed=args.seed, workdir=Path(tmp)))
    report = table(result)
    print(f"nats bench: {args.signals} signals per path (HTTP: {HTTP_CLIENTS} concurrent "
          f"clients; NATS: one publisher), then {args.rounds} x kill -9 while a producer "
          f"publishes {args.rate:g}/s (seed {args.seed}); simulator 5-10 ms per request")
    print(report)
    ok = all(met(result).values())
    written = save(Path(args.out), {
        "bench": "nats", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(nats_py=importlib.metadata.version("nats-py")),
        "parameters": {"signals": args.signals, "rounds": args.rounds, "rate": args.rate,
                       "seed": args.seed, "short": args.short, "daemon_env": DAEMON_ENV},
        "targets": {"nats_per_s": "≥ http_per_s", "lost": 0, "duplicate_client_ids": 0,
                    "missing_final_reports": 0},
        "met": ok, "duration_s": round(time.time() - began, 1), "table": report,
        "result": result,
    })
    print(f"wrote {written} ({time.time() - began:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
