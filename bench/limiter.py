"""Rate-limit use under saturation: execd's WeightLimiter beside the anchor designs (SPEC §13).

Rebuilds the experiment of ``research/limiter-anchors.md`` against our own simulator, started
here as a separate OS process (``python -m app sim``) with small windows (L = 300 per W = 5 s).

* Workload: 16 workers; each draws a weight from {1, 5, 10, 20} with its own seeded RNG
  (seed 20260101·1000 + worker id, so every policy sees the same sequence), asks its limiter,
  then sends a real request of that weight: ``GET /fapi/v1/time`` (1), signed
  ``GET /fapi/v2/balance`` (5), ``GET /fapi/v1/premiumIndex`` (10),
  ``GET /fapi/v1/depth?symbol=BTCUSDT&limit=1000`` (20). On a 429 (or 418) the worker sleeps
  ``Retry-After`` and goes on.
* Latency: the simulator's fault plan adds 20 ms plus four independent 10 ms draws at p = 0.5
  to every request (20–60 ms, mean 40, seeded), *after* the request is counted (``--latency``).
* Each policy: ``POST /_sim/reset`` (and the fault plan again), workers start at phase 0.5 of a
  window, warm-up is the rest of that window plus one full window, then ``--windows`` measured
  full windows. Policies run one after another in one run, each with its own ClientSession.
* Shared-IP rows: a second, unthrottled client in a **separate process** (this script with
  ``--foreign-client``) sends one signed weight-5 request every W/12 (20 % of L), ignoring 429s.
* Metrics, per measured window: weight admitted (own, foreign, IP total = the largest header
  value of the window's 200s), weight refused, 429s and 418s per client (counted client-side,
  cross-checked against the simulator's ``/_sim/state`` counters), limiter wait p50/p99.
* Targets (SPEC §13): alone ≥ 97.5 % of L; shared, the IP's total ≥ 95 %; in both, no 429 and
  no 418 for either process, the warm-up included.

Prints one table and writes ``bench/results/limiter.json``. Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import math
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from lib.report import RESULTS_DIR, ROOT, machine, save
from lib.simproc import simulator
from yarl import URL

from app.clock import SystemClock
from app.resilience.limiter import (
    BucketSpec,
    LimiterSettings,
    Priority,
    WeightLimiter,
)

SCRIPT = Path(__file__).resolve()
LIMIT = 300
WINDOW_S = 5
SIM_TOML = (f"[limits]\nrequest_weight = {LIMIT}\nrequest_weight_interval_s = {WINDOW_S}\n"
            "ban_after_429s = 1000\n\n[market]\nvolatility_per_minute = 0\n")
WORKERS = 16
WEIGHTS = (1, 5, 10, 20)
SEED = 20260101
API_KEY = "sim-key"
API_SECRET = b"sim-secret"
HEADER = f"x-mbx-used-weight-{WINDOW_S}s"
FOREIGN_WEIGHT = 5
FOREIGN_PER_WINDOW = 12
RESULTS = RESULTS_DIR / "limiter.json"
TARGETS = {"alone": "use>=97.5% 0x429 0x418", "shared": "IP>=95% 0x429 both"}  # incl. warm-up
LATENCY_PLANS: dict[str, dict[str, Any]] = {
    "none": {"seed": SEED, "rules": []},
    "fixed": {"seed": SEED, "rules": [
        {"endpoint": "*", "fault": "latency", "probability": 1, "latency_ms": 40}]},
    "spread": {"seed": SEED, "rules": [
        {"endpoint": "*", "fault": "latency", "probability": 1, "latency_ms": 20},
        *({"endpoint": "*", "fault": "latency", "probability": 0.5, "latency_ms": 10}
          for _ in range(4))]},
}
LATENCY_TEXT = {"none": "loopback only (no added latency)",
                "fixed": "40 ms after counting (sim fault plan, endpoint *)",
                "spread": "20-60 ms after counting (sim fault plan: 20 + 4 x 10 ms at p=0.5)"}


# ---------------------------------------------------------------------------- the wire
@dataclass(slots=True)
class Rec:
    """One request as a client saw it. Times are local epoch seconds (the simulator's clock)."""

    weight: int
    ask: float
    sent: float
    recv: float
    status: int
    used: int | None
    window: int = 0


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    used: int | None
    retry_after: float
    banned_until_ms: int | None


def request_url(base: str, weight: int, offset_s: float) -> URL:
    if weight == 1:
        return URL(f"{base}/fapi/v1/time")
    if weight == 5:
        query = f"timestamp={int((time.time() + offset_s) * 1000)}"
        sig = hmac.new(API_SECRET, query.encode(), hashlib.sha256).hexdigest()
        return URL(f"{base}/fapi/v2/balance?{query}&signature={sig}", encoded=True)
    if weight == 10:
        return URL(f"{base}/fapi/v1/premiumIndex")
    if weight == 20:
        return URL(f"{base}/fapi/v1/depth?symbol=BTCUSDT&limit=1000", encoded=True)
    raise ValueError(f"no request of weight {weight}")


async def send(session: aiohttp.ClientSession, base: str, weight: int,
               offset_s: float) -> Answer:
    try:
        async with session.get(request_url(base, weight, offset_s),
                               headers={"X-MBX-APIKEY": API_KEY}) as resp:
            body = await resp.read()
            raw = resp.headers.get(HEADER)
            banned = None
            if resp.status == 418:
                found = re.search(rb"banned until (\d+)", body)
                banned = int(found.group(1)) if found else None
            return Answer(resp.status, int(raw) if raw is not None else None,
                          float(resp.headers.get("Retry-After", "0") or 0), banned)
    except (aiohttp.ClientError, TimeoutError):
        return Answer(-1, None, 0.0, None)


async def sync_offset(session: aiohttp.ClientSession, base: str, samples: int = 5) -> float:
    """Median of ``serverTime − local midpoint`` (seconds), as app/exchange/timesync does."""
    found = []
    for _ in range(samples):
        before = time.time()
        async with session.get(f"{base}/fapi/v1/time") as resp:
            server = (await resp.json())["serverTime"] / 1000
        found.append(server - (before + time.time()) / 2)
    found.sort()
    return found[len(found) // 2]


# ---------------------------------------------------------------------------- policies
class Policy:
    """A limiter under test: ``acquire`` before sending, ``done`` after each answer."""

    name = "?"

    async def acquire(self, weight: int) -> float:
        return 0.0

    def done(self, weight: int, token: float, answer: Answer) -> None:
        pass

    async def close(self) -> None:
        pass


class ExecdPolicy(Policy):
    name = "execd"

    def __init__(self, settings: LimiterSettings, offset_s: float) -> None:
        self.limiter = WeightLimiter([BucketSpec("weight", LIMIT, float(WINDOW_S))],
                                     SystemClock(), settings, offset=lambda: offset_s)

    async def acquire(self, weight: int) -> float:
        await self.limiter.acquire({"weight": weight}, Priority.NORMAL)
        return self.limiter.now()

    def done(self, weight: int, token: float, answer: Answer) -> None:
        # As app/exchange/gateway.py does: every response feeds observe(); a refused one
        # (429/418) was not counted by the exchange, so it costs 0.
        refused = answer.status in (429, 418)
        if answer.used is not None:
            self.limiter.observe("weight", answer.used, cost=0 if refused else weight,
                                 sent_at=token)
        if answer.status == 429:
            self.limiter.penalize(["weight"], answer.retry_after)
        elif answer.status == 418:
            until = answer.banned_until_ms / 1000 if answer.banned_until_ms else None
            self.limiter.ban(until or self.limiter.now() + answer.retry_after)

    async def close(self) -> None:
        await self.limiter.close()


class SeedThresholdPolicy(Policy):
    """The seeds' RequestWeightTracker: keep the last header; at ≥ 90 % of L, sleep until the
    next window boundary by the local clock, then send. No local accounting."""

    name = "seed-threshold"

    def __init__(self) -> None:
        self.last = 0

    async def acquire(self, weight: int) -> float:
        if self.last >= 0.9 * LIMIT:
            now = time.time()
            await asyncio.sleep((math.floor(now / WINDOW_S) + 1) * WINDOW_S - now)
        return 0.0

    def done(self, weight: int, token: float, answer: Answer) -> None:
        if answer.used is not None:
            self.last = answer.used


class AiolimiterPolicy(Policy):
    name = "aiolimiter"

    def __init__(self) -> None:
        from aiolimiter import AsyncLimiter

        self.limiter = AsyncLimiter(LIMIT, WINDOW_S)

    async def acquire(self, weight: int) -> float:
        await self.limiter.acquire(weight)
        return 0.0


def aiolimiter_version() -> str | None:
    try:
        from importlib.metadata import version

        import aiolimiter  # noqa: F401
        return version("aiolimiter")
    except ImportError:
        return None


# ---------------------------------------------------------------------------- one run
@dataclass(slots=True)
class Run:
    base: str
    policy: Policy
    end: float
    records: list[Rec]
    offset_s: float
    stopping: bool = False


async def worker(index: int, run: Run, session: aiohttp.ClientSession,
                 waiting: list[bool]) -> None:
    rng = random.Random(SEED * 1000 + index)
    while not run.stopping:
        weight = rng.choice(WEIGHTS)
        ask = time.time()
        waiting[index] = True
        token = await run.policy.acquire(weight)
        waiting[index] = False
        sent = time.time()
        if run.stopping or sent >= run.end:
            return
        answer = await send(session, run.base, weight, run.offset_s)
        run.records.append(Rec(weight, ask, sent, time.time(), answer.status, answer.used))
        run.policy.done(weight, token, answer)
        if answer.status in (429, 418):
            waiting[index] = True
            await asyncio.sleep(min(answer.retry_after, max(0.0, run.end - time.time())))
            waiting[index] = False


async def sleep_until(at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.time()))


async def sim_counters(admin: aiohttp.ClientSession, base: str) -> dict[str, int]:
    async with admin.get(f"{base}/_sim/state") as resp:
        state = await resp.json()
    return {k: int(v) for k, v in state["throttled"].items()}


async def reset_sim(admin: aiohttp.ClientSession, base: str, latency: str) -> None:
    async with admin.post(f"{base}/_sim/reset") as resp:
        resp.raise_for_status()
    plan = LATENCY_PLANS[latency]
    if plan["rules"]:
        async with admin.post(f"{base}/_sim/faults", json=plan) as resp:
            resp.raise_for_status()


async def run_policy(name: str, make: Callable[[float], Policy], shared: bool, base: str,
                     admin: aiohttp.ClientSession, args: argparse.Namespace) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        # Sync under the same latency, then reset again so the sync's weight (outside any
        # limiter) does not show up as someone else's use in the first window.
        await reset_sim(admin, base, args.latency)
        offset_s = await sync_offset(session, base)
        await reset_sim(admin, base, args.latency)
        lead = 2.0 if shared else 0.3  # time for the foreign process to start
        k0 = math.ceil((time.time() + lead) / WINDOW_S - args.phase)
        start = (k0 + args.phase) * WINDOW_S
        first = k0 + 2 if args.phase > 0 else k0 + 1
        m0, m1 = first * WINDOW_S, (first + args.windows) * WINDOW_S
        foreign = await start_foreign(base, start, m1) if shared else None
        await sleep_until(start)
        run = Run(base, make(offset_s), m1, [], offset_s)
        waiting = [False] * WORKERS
        tasks = [asyncio.create_task(worker(i, run, session, waiting)) for i in range(WORKERS)]
        await sleep_until(m0)
        at_m0 = await sim_counters(admin, base)
        await sleep_until(m1)
        at_m1 = await sim_counters(admin, base)
        run.stopping = True
        for i, task in enumerate(tasks):
            if waiting[i]:
                task.cancel()
        await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await run.policy.close()
    foreign_records = await foreign.collect() if foreign is not None else []
    result = analyze(run.records, foreign_records, first, args.windows)
    result.update(policy=name, shared=shared, offset_ms=round(offset_s * 1000, 2),
                  start=start, measured_from=m0, measured_to=m1,
                  sim_429_measured=at_m1["429"] - at_m0["429"],
                  sim_418_measured=at_m1["418"] - at_m0["418"],
                  sim_429_run=at_m1["429"], sim_418_run=at_m1["418"])
    return result


# ---------------------------------------------------------------------------- foreign process
@dataclass(slots=True)
class Foreign:
    proc: asyncio.subprocess.Process

    async def collect(self) -> list[Rec]:
        try:
            out, _ = await asyncio.wait_for(self.proc.communicate(), timeout=15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            return []
        return [Rec(**row) for row in json.loads(out or b"[]")]


async def start_foreign(base: str, start: float, end: float) -> Foreign:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--foreign-client", base,
        "--foreign-start", repr(start), "--foreign-end", repr(end),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    return Foreign(proc)


async def foreign_client(base: str, start: float, end: float) -> None:
    """Another process on the same IP: one weight-5 request every W/12, 429s ignored."""
    period = WINDOW_S / FOREIGN_PER_WINDOW
    records: list[Rec] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        offset_s = await sync_offset(session, base, samples=3)

        async def one(at: float) -> None:
            sent = time.time()
            answer = await send(session, base, FOREIGN_WEIGHT, offset_s)
            records.append(Rec(FOREIGN_WEIGHT, at, sent, time.time(), answer.status,
                               answer.used))

        pending: set[asyncio.Task[None]] = set()
        boundary = math.floor(start / WINDOW_S) * WINDOW_S
        slot = math.ceil((start - boundary) / period - 0.5)
        while (at := boundary + (slot + 0.5) * period) < end:
            await sleep_until(at)
            task = asyncio.create_task(one(at))
            pending.add(task)
            task.add_done_callback(pending.discard)
            slot += 1
        if pending:
            await asyncio.wait(pending, timeout=10)
    sys.stdout.write(json.dumps([asdict(r) for r in records]))


# ---------------------------------------------------------------------------- analysis
def assign_windows(records: list[Rec]) -> None:
    """The server window each request was counted in. Sent and answered in one window: that
    one. Sent in k, answered in k + 1 (the server counts on arrival, then the latency runs):
    in k if its header is at least the highest value k had shown before it was sent (plus its
    own weight for a 200), else in k + 1, whose count is still small just after the boundary.
    """
    settled: dict[int, list[tuple[float, int]]] = {}
    for r in records:
        k_sent, k_recv = math.floor(r.sent / WINDOW_S), math.floor(r.recv / WINDOW_S)
        r.window = k_sent
        if k_sent == k_recv and r.used is not None:
            settled.setdefault(k_sent, []).append((r.recv, r.used))
    for r in records:
        k_sent = math.floor(r.sent / WINDOW_S)
        if k_sent == math.floor(r.recv / WINDOW_S) or r.used is None:
            continue
        before = max((u for t, u in settled.get(k_sent, []) if t <= r.sent), default=0)
        need = before + (r.weight if r.status == 200 else 0)
        if before > 0 and r.used < need:
            r.window = k_sent + 1


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def client_windows(records: list[Rec], first: int, count: int) -> list[dict[str, int]]:
    rows = [{"admitted": 0, "refused": 0, "n429": 0, "n418": 0, "errors": 0}
            for _ in range(count)]
    for r in records:
        i = r.window - first
        if not 0 <= i < count:
            continue
        row = rows[i]
        if r.status == 200:
            row["admitted"] += r.weight
        elif r.status == 429:
            row["refused"] += r.weight
            row["n429"] += 1
        elif r.status == 418:
            row["n418"] += 1
        else:
            row["errors"] += 1
    return rows


def analyze(own: list[Rec], foreign: list[Rec], first: int, count: int) -> dict[str, Any]:
    assign_windows(own + foreign)
    mine = client_windows(own, first, count)
    theirs = client_windows(foreign, first, count)
    ip_total = [0] * count
    for r in own + foreign:
        if r.status == 200 and r.used is not None and 0 <= r.window - first < count:
            ip_total[r.window - first] = max(ip_total[r.window - first], r.used)
    cap = LIMIT * count
    m0, m1 = first * WINDOW_S, (first + count) * WINDOW_S
    waits = [(r.sent - r.ask) * 1000 for r in own if m0 <= r.sent < m1]
    by_weight = {w: percentile([(r.sent - r.ask) * 1000 for r in own
                                if m0 <= r.sent < m1 and r.weight == w], 99) for w in WEIGHTS}

    def total(rows: list[dict[str, int]], key: str) -> int:
        return sum(row[key] for row in rows)

    return {
        "use_pct": round(100 * total(mine, "admitted") / cap, 2),
        "ip_use_pct": round(100 * sum(ip_total) / cap, 2),
        "own_min_window": min(row["admitted"] for row in mine),
        "own_max_window": max(row["admitted"] for row in mine),
        "own_max_sent": max(row["admitted"] + row["refused"] for row in mine),
        "ip_min_window": min(ip_total),
        "ip_max_window": max(ip_total),
        "own_429": total(mine, "n429"),
        "foreign_429": total(theirs, "n429"),
        "own_418": total(mine, "n418"),
        "foreign_418": total(theirs, "n418"),
        "own_429_warmup": sum(1 for r in own if r.window < first and r.status == 429),
        "foreign_429_warmup": sum(1 for r in foreign if r.window < first and r.status == 429),
        "own_418_warmup": sum(1 for r in own if r.window < first and r.status == 418),
        "errors": total(mine, "errors") + total(theirs, "errors"),
        "wait_p50_ms": percentile(waits, 50),
        "wait_p99_ms": percentile(waits, 99),
        "wait_mean_ms": sum(waits) / len(waits) if waits else None,
        "wait_p99_ms_by_weight": {str(w): v for w, v in by_weight.items()},
        "requests_measured": len(waits),
        "accounting_mismatch": max(abs(ip_total[i] - mine[i]["admitted"] - theirs[i]["admitted"])
                                   for i in range(count)),
        "windows": [{"own": mine[i], "foreign": theirs[i], "ip_total": ip_total[i]}
                    for i in range(count)],
    }


# ---------------------------------------------------------------------------- report
def settings_from(text: str) -> LimiterSettings:
    known = {f.name for f in fields(LimiterSettings)}
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, raw = part.partition("=")
        if key not in known:
            raise SystemExit(f"--execd-settings: unknown field {key!r} (known: {sorted(known)})")
        values[key] = float(raw)
    return LimiterSettings(**values)  # type: ignore[arg-type]


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verdict(row: dict[str, Any]) -> str:
    """The row's target: its use, and no 429 (no 418 either) for either process, warm-up
    included (Binance counts 429s per IP, whoever caused them, from the first request)."""
    refused = row["own_429"] + row["own_429_warmup"] + row["own_418"] + row["own_418_warmup"]
    if row["shared"]:
        refused += row["foreign_429"] + row["foreign_429_warmup"] + row["foreign_418"]
        ok = row["ip_use_pct"] >= 95 and refused == 0
    else:
        ok = row["use_pct"] >= 97.5 and refused == 0
    return "met" if ok else "MISSED"


def table(rows: list[dict[str, Any]], windows: int) -> str:
    head = ["policy", "use %", "IP %", "own min/max", "max sent", "IP min/max",
            f"429 own+for ({windows}w)", "429 warm-up", "418", "wait p50/p99 ms", "target", ""]
    lines = [head]
    for row in rows:
        if "missing" in row:
            lines.append([row["policy"], row["missing"], *[""] * (len(head) - 2)])
            continue
        target = ""
        if row["policy"].startswith("execd"):
            target = TARGETS["shared" if row["shared"] else "alone"]
        lines.append([
            row["policy"], fmt(row["use_pct"], 1),
            fmt(row["ip_use_pct"], 1) if row["shared"] else "-",
            f"{row['own_min_window']}/{row['own_max_window']}", str(row["own_max_sent"]),
            f"{row['ip_min_window']}/{row['ip_max_window']}",
            f"{row['own_429']}+{row['foreign_429']}" if row["shared"] else str(row["own_429"]),
            f"{row['own_429_warmup']}+{row['foreign_429_warmup']}" if row["shared"]
            else str(row["own_429_warmup"]),
            f"{row['own_418'] + row['own_418_warmup']}+{row['foreign_418']}",
            f"{fmt(row['wait_p50_ms'])}/{fmt(row['wait_p99_ms'])}",
            target, verdict(row) if target else "",
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        cells = [c.ljust(w) if i == 0 or i >= len(head) - 2 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


POLICIES = ("execd", "seed-threshold", "aiolimiter", "execd-shared", "seed-threshold-shared")


async def measure(args: argparse.Namespace, settings: LimiterSettings, workdir: Path
                  ) -> list[dict[str, Any]]:
    makers: dict[str, Callable[[float], Policy]] = {
        "execd": lambda off: ExecdPolicy(settings, off),
        "seed-threshold": lambda off: SeedThresholdPolicy(),
        "aiolimiter": lambda off: AiolimiterPolicy(),
    }
    chosen = [p for p in POLICIES if p in args.only.split(",")] if args.only else list(POLICIES)
    rows: list[dict[str, Any]] = []
    async with simulator(workdir / "sim", SIM_TOML) as base, \
            aiohttp.ClientSession() as admin:
        for name in chosen:
            shared = name.endswith("-shared")
            kind = name.removesuffix("-shared")
            if kind == "aiolimiter" and aiolimiter_version() is None:
                rows.append({"policy": name, "shared": shared,
                             "missing": "not installed (pip install aiolimiter)"})
                continue
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows.append(await run_policy(name, makers[kind], shared, base, admin, args))
    return rows


def limiter_revision() -> str | None:
    """The last commit of the limiter's code (limiter.py and its window arithmetic,
    window.py), with "+dirty" if either has local changes."""
    files = ("app/resilience/limiter.py", "app/resilience/window.py")

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    try:
        rev = git("log", "-1", "--format=%h", "--", *files)
        dirty = git("status", "--porcelain", "--", *files)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def main(args: argparse.Namespace) -> int:
    settings = settings_from(args.execd_settings)
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="execd-bench-") as tmp:
        rows = asyncio.run(measure(args, settings, Path(tmp)))
    report = table(rows, args.windows)
    print(f"limiter bench: L={LIMIT} per W={WINDOW_S}s, {WORKERS} workers, weights {WEIGHTS}, "
          f"{args.windows} measured windows after warm-up, start phase {args.phase}")
    print(f"latency: {LATENCY_TEXT[args.latency]}; foreign client (shared rows): separate "
          f"process, weight {FOREIGN_WEIGHT} every W/{FOREIGN_PER_WINDOW}, ignores 429s")
    print(f"execd settings: {settings} (app/resilience/limiter.py at {limiter_revision()})")
    print(report)
    print("use % = own weight admitted / (L x windows); IP % = IP total (largest header value of "
          "each window); 418 = own (incl. warm-up) + foreign")
    written = save(Path(args.out), {
        "bench": "limiter",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(aiohttp=aiohttp.__version__, aiolimiter=aiolimiter_version(),
                           limiter_revision=limiter_revision()),
        "parameters": {"limit": LIMIT, "window_s": WINDOW_S, "workers": WORKERS,
                       "weights": WEIGHTS, "seed": SEED, "windows": args.windows,
                       "phase": args.phase, "latency": LATENCY_TEXT[args.latency],
                       "latency_plan": LATENCY_PLANS[args.latency],
                       "foreign": {"weight": FOREIGN_WEIGHT, "per_window": FOREIGN_PER_WINDOW,
                                   "mode": "separate process"},
                       "execd_settings": asdict(settings), "ban_after_429s": 1000},
        "targets": {"alone": {"use_pct": 97.5, "429": 0, "418": 0},
                    "shared": {"ip_use_pct": 95, "429_own": 0, "429_foreign": 0},
                    "429_and_418_include_warm_up": True},
        "duration_s": round(time.time() - began, 1),
        "table": report,
        "results": rows,
    })
    print(f"wrote {written} ({time.time() - began:.0f} s)")
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=6, help="measured windows (default 6)")
    parser.add_argument("--short", action="store_true", help="5 measured windows")
    parser.add_argument("--phase", type=float, default=0.5, help="start phase in [0, 1)")
    parser.add_argument("--latency", choices=sorted(LATENCY_PLANS), default="spread")
    parser.add_argument("--only", default="", help=f"comma list of {','.join(POLICIES)}")
    parser.add_argument("--execd-settings", default="", metavar="K=V,...",
                        help="LimiterSettings overrides for the execd rows")
    parser.add_argument("--out", default=str(RESULTS), help="JSON output path")
    parser.add_argument("--foreign-client", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--foreign-start", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--foreign-end", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.only.split(","))) - set(POLICIES)
    if unknown:
        parser.error(f"--only: unknown policies {sorted(unknown)}")
    if args.short:
        args.windows = 5
    if args.windows < 1 or not 0 <= args.phase < 1:
        parser.error("--windows must be ≥ 1 and --phase in [0, 1)")
    return args


def entry(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.foreign_client:
        asyncio.run(foreign_client(args.foreign_client, args.foreign_start, args.foreign_end))
        return 0
    return main(args)


if __name__ == "__main__":
    sys.exit(entry())
