"""Crash safety: ``kill -9`` of the daemon at random moments under a stream of signals (SPEC §13).

One simulator process (``python -m app sim``, 10-40 ms of latency on every request, a few
unknown outcomes on placements) outlives every daemon. Each round starts ``python -m app run``
against it with the same journal, audit directory and control-API port, and a client POSTs
signals to ``/v1/signals`` at ``--rate`` per second over 4 concurrent streams (the chaos
bench's workload: entries with and without tp/sl and closes over 5 symbols, ``ttl_s`` 600).
At a random moment (seeded RNG) the daemon gets SIGKILL: in one round out of five during
start-up (0.5-4 s after the spawn: in restart recovery, or soon after the ready line if it came
first), otherwise 0.05-2.5 s after its ready line, while signals are being posted and executed.

The client, like any careful client:

* counts a signal *acknowledged* on 202 (accepted) or 200 (already known);
* on connection refused (the daemon is down) keeps the signal for the next round;
* when the answer is lost in the kill (connection reset or closed mid-request) records the
  signal as *unknown* — it may or may not be in the journal — and POSTs it again, with the same
  id, once the next daemon is up: 200 means the kill came after the journal commit, 202 that
  it came before.

After the last round a final daemon finishes everything (it is given ``--timeout`` seconds)
and is stopped with SIGTERM. Then the journal and ``/_sim/orders`` are checked: signals lost
(acknowledged but not terminal, or missing from the journal) and client ids with more than one
order (``triggered`` rows excluded). Targets: 0 and 0.

Prints one table and writes ``bench/results/crash.json``. Loopback only; stops by itself.

    python bench/crash.py [--rounds N] [--rate N] [--seed N] [--short]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import orjson
from lib.daemonproc import DaemonProc, daemon_env, open_log
from lib.report import RESULTS_DIR, machine, save
from lib.simproc import Admin, duplicates, free_port, sim_toml, simulator
from lib.workload import MARKETS, make_signals

from app.domain import SignalState
from app.journal import Journal

RESULTS = RESULTS_DIR / "crash.json"
SEED = 20260808
TOKEN = "crash-bench-token"
READY_TIMEOUT_S = 60.0
#: Concurrent POST streams sharing the rate, as several strategies would.
STREAMS = 4
#: Roomy limits: this bench is about crashes, not throttling (the chaos bench does that).
SIM_LIMITS = {"request_weight": 6000, "request_weight_interval_s": 10,
              "orders_short": 2000, "orders_short_interval_s": 10,
              "orders_long": 100_000, "orders_long_interval_s": 60, "ban_after_429s": 3}
DAEMON_ENV = {"EXECD_EXECUTION__RESOLVE_WINDOW_S": "2", "EXECD_EXECUTION__DEFAULT_TTL_S": "600",
              "EXECD_EXECUTION__SHUTDOWN_TIMEOUT_S": "5", "EXECD_EXCHANGE__REQUEST_TIMEOUT_S": "2",
              "EXECD_BREAKER__RECOVERY_TIMEOUT_S": "1", "EXECD_STREAM__FALLBACK_POLL_S": "2"}


def fault_plan(seed: int) -> dict[str, Any]:
    """10-40 ms on every request (so orders are in flight when the kill comes) and 2 % of
    placements answered with an unknown outcome after being applied."""
    return {"seed": seed, "rules": [
        {"endpoint": "*", "fault": "latency", "probability": 1, "latency_ms": 10},
        *({"endpoint": "*", "fault": "latency", "probability": 0.5, "latency_ms": 10}
          for _ in range(6)),
        *({"endpoint": endpoint, "fault": "unknown_503", "probability": 0.02,
           "visibility_delay_s": 0.5}
          for endpoint in ("POST /fapi/v1/order", "POST /fapi/v1/algoOrder")),
    ]}


# ---------------------------------------------------------------------------- the client
@dataclass(slots=True)
class Client:
    """The signal stream as one careful client sees it."""

    session: aiohttp.ClientSession
    url: str
    bodies: list[dict[str, Any]]
    next_index: int = 0
    acked: set[str] = field(default_factory=set)
    unknown: dict[str, dict[str, Any]] = field(default_factory=dict)
    ever_unknown: set[str] = field(default_factory=set)
    unknown_found: int = 0          # re-POSTed after a lost answer: 200, it was journaled
    unknown_new: int = 0            # re-POSTed after a lost answer: 202, it was not
    retry: list[dict[str, Any]] = field(default_factory=list)
    queue_full: int = 0

    async def post(self, body: dict[str, Any]) -> str:
        """``acked``, ``down`` (connection refused: not sent) or ``unknown`` (answer lost)."""
        while True:
            try:
                async with self.session.post(self.url, data=orjson.dumps(body)) as resp:
                    if resp.status == 429:
                        self.queue_full += 1
                        await asyncio.sleep(float(resp.headers.get("Retry-After", "0.2")))
                        continue
                    if resp.status == 503:
                        return "down"
                    if resp.status not in (200, 202):
                        raise RuntimeError(f"POST {body['id']}: {resp.status} "
                                           f"{await resp.text()}")
                    if body["id"] in self.unknown:
                        del self.unknown[body["id"]]
                        if resp.status == 200:
                            self.unknown_found += 1
                        else:
                            self.unknown_new += 1
                    self.acked.add(body["id"])
                    return "acked"
            except aiohttp.ClientConnectorError:
                return "down"
            except (aiohttp.ClientError, TimeoutError):
                self.unknown[body["id"]] = body
                self.ever_unknown.add(body["id"])
                return "unknown"

    async def resend_unknown(self) -> None:
        for body in list(self.unknown.values()):
            if await self.post(body) == "down":
                return

    async def stream(self, rate: float, stop: asyncio.Event) -> None:
        """POST the next signals at ``rate`` per second until ``stop`` or the daemon is gone."""
        interval = 1 / rate
        due = time.monotonic()
        while not stop.is_set():
            if self.retry:
                body = self.retry.pop(0)
            else:
                body = self.bodies[self.next_index]
                self.next_index += 1
            outcome = await self.post(body)
            if outcome == "down":
                self.retry.insert(0, body)
                return
            if outcome == "unknown":
                return
            due += interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))


# ---------------------------------------------------------------------------- the run
@dataclass(slots=True)
class Round:
    kill_at: str                    # "start-up" or "running"
    delay_s: float
    acked_total: int
    unknown_now: int
    up_s: float


async def one_round(rng: random.Random, client: Client, env: dict[str, str], base: str,
                    rate: float, stderr: TextIO) -> Round:
    began = time.monotonic()
    daemon = await DaemonProc.spawn(env, base, stderr)
    try:
        if rng.random() < 0.2:
            delay = rng.uniform(0.5, 4.0)       # during start-up / restart recovery
            if not await daemon.wait_ready(delay):
                await daemon.kill()
                return Round("start-up", round(delay, 3), len(client.acked),
                             len(client.unknown), round(time.monotonic() - began, 2))
            delay = rng.uniform(0.05, 0.5)      # it was quicker: kill soon after
        else:
            delay = rng.uniform(0.05, 2.5)
            if not await daemon.wait_ready(READY_TIMEOUT_S):
                raise RuntimeError("daemon not ready in time")
        await client.resend_unknown()
        stop = asyncio.Event()
        posting = [asyncio.create_task(client.stream(rate / STREAMS, stop))
                   for _ in range(STREAMS)]
        await asyncio.sleep(delay)
        await daemon.kill()                     # SIGKILL while the streams are running
        stop.set()
        await asyncio.gather(*posting)
        return Round("running", round(delay, 3), len(client.acked), len(client.unknown),
                     round(time.monotonic() - began, 2))
    finally:
        await daemon.kill()


async def finish(client: Client, env: dict[str, str], base: str, stderr: TextIO,
                 timeout_s: float) -> tuple[int, float]:
    """The last daemon: re-POST what is unknown, let everything finish (or ``timeout_s``),
    SIGTERM. (its exit code, seconds it took)."""
    began = time.monotonic()
    daemon = await DaemonProc.spawn(env, base, stderr)
    try:
        if not await daemon.wait_ready(READY_TIMEOUT_S):
            raise RuntimeError("final daemon not ready in time")
        await client.resend_unknown()
        for body in client.retry:               # refused when the daemon died: send now
            await client.post(body)
        client.retry.clear()
        pending = set(client.acked)
        deadline = began + timeout_s
        while pending and time.monotonic() < deadline:
            states = await asyncio.gather(*(signal_state(client, i) for i in sorted(pending)))
            pending = {i for i, s in zip(sorted(pending), states, strict=True)
                       if s is None or not SignalState(s).is_terminal}
            if pending:
                await asyncio.sleep(0.5)
        code = await daemon.terminate()
    finally:
        await daemon.kill()
    return code, time.monotonic() - began


async def signal_state(client: Client, signal_id: str) -> str | None:
    url = client.url.rsplit("/", 1)[0] + f"/signals/{signal_id}"
    async with client.session.get(url) as resp:
        if resp.status != 200:
            return None
        state: str = orjson.loads(await resp.read())["state"]
        return state


async def journal_states(path: Path, ids: set[str]) -> dict[str, str]:
    async with Journal(path) as journal:
        states = {}
        for signal_id in sorted(ids):
            record = await journal.get_signal(signal_id)
            if record is not None:
                states[signal_id] = record.state.value
        return states


async def crash_run(rounds: int, *, seed: int = SEED, rate: float = 40.0,
                    timeout_s: float = 300.0, workdir: Path) -> dict[str, Any]:
    """The whole bench in ``workdir``; the result object (without the table)."""
    rng = random.Random(seed)
    bodies = make_signals(20_000, seed, prefix="crash")
    port = free_port()
    env = daemon_env(workdir, port, TOKEN, DAEMON_ENV)
    began = time.monotonic()
    async with simulator(workdir / "sim", sim_toml(SIM_LIMITS)) as base, \
            aiohttp.ClientSession() as admin_session, \
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"},
                                  timeout=aiohttp.ClientTimeout(total=30),
                                  # a new connection per request: a lost answer is never a
                                  # stale keep-alive connection to a daemon killed before
                                  connector=aiohttp.TCPConnector(force_close=True)) as session, \
            open_log(workdir / "daemon.stderr") as stderr:
        admin = Admin(admin_session, base)
        await admin.post("faults", fault_plan(seed))
        client = Client(session, f"http://127.0.0.1:{port}/v1/signals", bodies)
        history = []
        for n in range(rounds):
            history.append(await one_round(rng, client, env, base, rate, stderr))
            print(f"round {n + 1}/{rounds}: killed during {history[-1].kill_at} after "
                  f"{history[-1].delay_s:.2f} s; acked {history[-1].acked_total}, "
                  f"unknown {history[-1].unknown_now}", file=sys.stderr, flush=True)
        exit_code, finish_s = await finish(client, env, base, stderr, timeout_s)
        await admin.post("faults", {"seed": 0, "rules": []})
        orders = await admin.get("orders")
        sim_state = await admin.get("state")
    wall = time.monotonic() - began
    sent = {b["id"] for b in bodies[:client.next_index]} | client.ever_unknown
    states = await journal_states(workdir / "data" / "journal.sqlite3", sent)
    terminal = {s.value for s in SignalState if s.is_terminal}
    missing = sorted(i for i in client.acked if i not in states)
    stuck = sorted(i for i in client.acked if i in states and states[i] not in terminal)
    unknown_left = sorted(client.unknown)
    dup = duplicates(orders)
    return {
        "rounds": rounds,
        "kills": collections.Counter(r.kill_at for r in history),
        "signals_posted": len(sent),
        "acknowledged": len(client.acked),
        "unknown_answers": len(client.ever_unknown),
        "unknown_were_journaled": client.unknown_found,
        "unknown_were_not": client.unknown_new,
        "unknown_left": len(unknown_left),
        "unknown_left_terminal": sum(1 for i in unknown_left if states.get(i) in terminal),
        "queue_full_429": client.queue_full,
        "journaled": len(states),
        "states": dict(collections.Counter(states.values())),
        "lost": len(missing) + len(stuck), "lost_missing": missing[:50],
        "lost_not_terminal": stuck[:50],
        "orders": sum(1 for r in orders if r["kind"] != "triggered"),
        "duplicate_client_ids": len(dup), "extra_orders": sum(n - 1 for n in dup.values()),
        "duplicate_examples": dict(list(dup.items())[:10]),
        "throttled_429": sim_state["throttled"]["429"],
        "throttled_418": sim_state["throttled"]["418"],
        "final_exit_code": exit_code, "finish_s": round(finish_s, 1),
        "wall_s": round(wall, 1),
        "history": [{"kill_at": r.kill_at, "delay_s": r.delay_s, "acked": r.acked_total,
                     "unknown": r.unknown_now, "up_s": r.up_s} for r in history],
    }


def met(result: dict[str, Any]) -> tuple[bool, bool]:
    """(0 lost, 0 duplicated)."""
    return result["lost"] == 0, result["duplicate_client_ids"] == 0


def table(result: dict[str, Any]) -> str:
    lost_ok, dup_ok = met(result)
    kills = result["kills"]
    rows = [
        ("rounds (kill -9)", f"{result['rounds']} ({kills.get('running', 0)} while running, "
                             f"{kills.get('start-up', 0)} during start-up)"),
        ("signals posted", str(result["signals_posted"])),
        ("acknowledged (202/200)", str(result["acknowledged"])),
        ("answers lost in a kill", f"{result['unknown_answers']} (re-POSTed: "
                                   f"{result['unknown_were_journaled']} already journaled, "
                                   f"{result['unknown_were_not']} not)"),
        ("journaled", f"{result['journaled']}  "
                      + " ".join(f"{k} {v}" for k, v in sorted(result["states"].items()))),
        ("orders on the exchange", str(result["orders"])),
        ("signals lost", f"{result['lost']}   target 0: {'met' if lost_ok else 'NOT met'}"),
        ("duplicate client ids", f"{result['duplicate_client_ids']} (extra orders "
                                 f"{result['extra_orders']})   target 0: "
                                 f"{'met' if dup_ok else 'NOT met'}"),
        ("429 / 418", f"{result['throttled_429']} / {result['throttled_418']}"),
        ("final daemon", f"exit {result['final_exit_code']}, finished in "
                         f"{result['finish_s']:.1f} s"),
        ("wall time", f"{result['wall_s']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="kill -9 rounds (default 20)")
    parser.add_argument("--rate", type=float, default=40.0, help="signals POSTed per second")
    parser.add_argument("--seed", type=int, default=SEED, help="kill moments and signals")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds the final daemon gets to finish everything")
    parser.add_argument("--short", action="store_true", help="3 rounds")
    parser.add_argument("--out", default=str(RESULTS), help="JSON output path")
    args = parser.parse_args(argv)
    if args.short:
        args.rounds = 3
    if args.rounds < 1 or args.rate <= 0:
        parser.error("--rounds must be ≥ 1 and --rate > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="execd-crash-") as tmp:
        result = asyncio.run(crash_run(args.rounds, seed=args.seed, rate=args.rate,
                                       timeout_s=args.timeout, workdir=Path(tmp)))
    report = table(result)
    print(f"crash bench: {args.rounds} x kill -9 at random moments (seed {args.seed}), "
          f"signals POSTed at {args.rate:g}/s over {len(MARKETS)} symbols; one simulator "
          "process (10-40 ms latency, 2 % unknown outcomes on placements) outlives the daemons")
    print(report)
    ok = all(met(result))
    written = save(Path(args.out), {
        "bench": "crash", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(aiohttp=aiohttp.__version__),
        "parameters": {"rounds": args.rounds, "rate": args.rate, "seed": args.seed,
                       "sim_limits": SIM_LIMITS, "daemon_env": DAEMON_ENV,
                       "fault_plan": fault_plan(args.seed), "short": args.short,
                       "timeout_s": args.timeout},
        "targets": {"lost": 0, "duplicate_client_ids": 0}, "met": ok,
        "duration_s": round(time.time() - began, 1), "table": report, "result": result,
    })
    print(f"wrote {written} ({time.time() - began:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
