"""Positions protected: naked positions and orphans under exchange-side events (SPEC §13).

Two variants of the in-process `Daemon`, one after the other in the same run, each against its
own fresh simulator process (``python -m app sim``, frozen marks, Binance's default limits:
weight 2400/min, orders 300/10 s and 1200/min) with the same seeded scenario and the same fault
plan: ``streams`` (the default configuration, ``stream.enabled = true``) and ``polling``
(``stream.enabled = false``: positions and orphans are seen by polling only). Both keep the
product default ``stream.fallback_poll_s`` = 5 s.

* Scenario (seeded, ``--signals`` signals, the same for both variants): five symbols (BTC, ETH,
  SOL, BNB, XRP), each with one side for the whole run (drawn per seed, both sides present) so
  that no trade ever flips a position. Steps every 0.1-0.3 s (mean 0.2 s; 0.05-0.25 s with
  ``--short``). 76 % of the steps are signals: an entry on a symbol the script believes flat
  (75 % with a stop-loss and a take-profit 3 % either side of the mark, 15 % stop-loss only,
  10 % bare), or on an open one an add (45 %; 85 % with a new stop-loss and take-profit around
  the current mark, i.e. a replacement) or a close (55 %; 80 % the whole position, 20 % one
  entry's quantity). 24 % are exchange-side events, drawn from rounds of 4 price jumps,
  2 liquidations, 2 web trades and 1 stream drop in a seeded order: a price jump
  (``POST /_sim/price``; 70 % on a symbol believed open with a stop-loss; 55 % to 1 % past
  that stop-loss, 25 % to 1 % past its take-profit, 20 % a 0.3-0.8 % move); a liquidation
  (``/_sim/liquidate`` of a symbol believed open; refused when it is flat); a web-UI trade
  (``/_sim/trade``, one entry's quantity on the symbol's side: it adds to a position, or opens
  a foreign one on a flat symbol); a stream drop (``/_sim/streams/drop``, ``block_s`` 0, 1 or
  2). The script tracks the marks itself (it alone moves them), so its brackets are valid when
  written; a signal that runs after a jump may be rejected for it, as in life.
* Faults (seeded plan): ``POST /fapi/v1/order``: ``partial_fill`` 15 % (``fill_ratio`` 0.3 —
  it hits reduce-only closes too), ``unknown_503`` and ``timeout_1007`` 3 % each (applied, then
  hidden from queries for 0.5 s), 10 ms latency on 30 %; ``POST /fapi/v1/algoOrder``:
  ``unknown_503`` and ``timeout_1007`` 3 % each (hidden 0.5 s); ``DELETE /fapi/v1/algoOrder``:
  ``unknown_503`` 3 % (the cancel applied, the answer lost).
* After the last step: wait until every signal is terminal (or ``--timeout``), then a settle
  period of ``fallback_poll_s`` + 2 s, then read ``GET /_sim/orders`` and ``GET /_sim/state``.

Measured from the exchange side only — the simulator's admin API, never execd's internals.
The timeline is rebuilt exactly (exchange milliseconds) from ``GET /_sim/orders``: every
accepted order with ``time`` (accepted) and ``update_time`` (last status change); a MARKET fill
changes the position at ``time`` by its ``executed_qty``; an algo order is open from ``time``
until ``update_time`` unless its status is still ``NEW``. The rebuilt final positions are
checked against ``GET /_sim/state`` (``ledger check``). A sampler reads ``GET /_sim/state``
every 100 ms for the REST weight and the stream connections. Definitions:

* **owed protection** (SPEC §5.9): a symbol's position from the fill of an execd entry whose
  signal carried a stop-loss (it opened or added to the position) until the position is flat
  (a flip would end it too; the scenario never flips). Web-UI trades that change the size of
  an owed position keep it owed; a position opened by a web trade on a flat symbol (or by a bare
  entry) is *foreign* and is not owed until an execd entry with a stop-loss adds to it.
* **naked position-seconds**: the sum over symbols of the time an owed position is non-zero
  and no execd ``STOP_MARKET`` ``closePosition`` algo order of the closing side is open
  (this includes the unavoidable entry-fill → stop-placed round trip). Also: naked episodes and
  the longest one.
* **positions left without a stop at the end**: owed positions with no such stop after the
  settle period. Foreign positions open at the end are counted separately.
* **orphan episode**: a maximal interval during which a symbol is flat and at least one execd
  protective algo order (``STOP_MARKET`` or ``TAKE_PROFIT_MARKET``) of it is open; its lifetime
  is the interval's length (to the end of the measurement if still open). p50/p99 by nearest
  rank over episodes; episodes still open at the end are also counted.
* **wrong flatten**: an order execd sent on its own to close a position — a client id of leg
  ``C`` (``app/execution/client_ids.py``) that belongs to an entry signal, or to no signal of
  the scenario; the asked closes are leg ``C`` of ``CLOSE_*`` signals — accepted at a moment
  the symbol was not naked: flat, or covered by an open execd stop-loss of the closing side
  (events of the same millisecond count in ledger order, cancellations first). A flatten of a
  naked position (the stop-loss could not be placed, e.g. -2021 after a price jump) is
  justified and counted apart.
* **duplicates**: client ids with more than one order in ``GET /_sim/orders`` (``triggered``
  rows excluded), as bench/chaos.py counts them.
* **REST weight used**: the sum over the simulator's clock-aligned weight windows of the last
  ``used_weight`` the sampler saw in each (an undercount by at most one sampling interval's
  weight per window); also the number of REST requests (``requests``). Admin routes are never
  metered.

Targets (SPEC §13, streams variant): 0 positions left without a stop, 0 wrong flattens,
0 duplicates, orphan p99 < 1 s; the polling variant is the baseline and has none. The script
prints and records all of them, but exits 1 only when the streams variant has a duplicate or
a position left without a stop (the orphan p99 and wrong flattens are reported as met / NOT
met without failing ``make bench``). Prints one table and writes ``bench/results/safety.json``.
Loopback only; stops by itself.

    python bench/safety.py [--signals N] [--seed N] [--only streams,polling] [--keep DIR]
                           [--short]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from lib.report import RESULTS_DIR, machine, save, text_table
from lib.simproc import duplicates, sim_toml, simulator

from app.config import Settings, load_settings
from app.daemon import Daemon
from app.domain import Leg, SignalState
from app.execution.client_ids import client_id

RESULTS = RESULTS_DIR / "safety.json"
SEED = 20261201
VARIANTS = ("streams", "polling")
TTL_S = 600
#: Binance's default limits (config/sim.toml): the weight figure is the product's.
SIM_LIMITS = {"request_weight": 2400, "request_weight_interval_s": 60,
              "orders_short": 300, "orders_short_interval_s": 10,
              "orders_long": 1200, "orders_long_interval_s": 60, "ban_after_429s": 3}
#: Daemon settings (dotted keys) common to both variants; the rest is the product default
#: (``stream.fallback_poll_s`` = 5 s, ``execution.resolve_window_s`` = 10 s, …).
DAEMON: dict[str, object] = {"execution.shutdown_timeout_s": 5.0}
VARIANT_SETTINGS: dict[str, dict[str, object]] = {
    "streams": {"stream.enabled": True}, "polling": {"stream.enabled": False}}
SAMPLE_S = 0.1
#: Share of the script's steps that are exchange-side events, and their mix (each round of the
#: cycle, in a seeded order, has every kind).
EVENT_SHARE = 0.24
EVENT_CYCLE = ["price"] * 4 + ["liquidate"] * 2 + ["trade"] * 2 + ["drop"]
BRACKET = Decimal("0.03")


@dataclass(frozen=True, slots=True)
class Sym:
    qty: str
    mark: str
    tick: str


#: Initial marks and ticks of config/sim.toml; quantities about twice the minimum notional, so
#: they stay valid after the script's price moves.
SYMBOLS = {"BTCUSDT": Sym("0.003", "65000.00", "0.10"),
           "ETHUSDT": Sym("0.050", "3200.00", "0.01"),
           "SOLUSDT": Sym("2", "150.0000", "0.0100"),
           "BNBUSDT": Sym("0.30", "600.000", "0.010"),
           "XRPUSDT": Sym("30.0", "0.6000", "0.0001")}


# ---------------------------------------------------------------------------- scenario
@dataclass(frozen=True, slots=True)
class Step:
    """One scripted action, ``at_s`` seconds after the variant's start."""

    at_s: float
    kind: str                   # signal | price | liquidate | trade | drop
    body: dict[str, Any]


@dataclass(slots=True)
class Belief:
    """What the script believes of a symbol (it never reads the exchange)."""

    long: bool
    mark: Decimal
    base: Decimal
    tick: Decimal
    open: bool = False
    stop: Decimal | None = None
    take: Decimal | None = None


def _on_tick(price: Decimal, tick: Decimal, rounding: str) -> Decimal:
    return (price / tick).to_integral_value(rounding=rounding) * tick


def _bracket(b: Belief) -> tuple[Decimal, Decimal]:
    """(stop_loss, take_profit) `BRACKET` either side of the mark, off the mark's tick."""
    down = _on_tick(b.mark * (1 - BRACKET), b.tick, ROUND_FLOOR)
    up = _on_tick(b.mark * (1 + BRACKET), b.tick, ROUND_CEILING)
    return (down, up) if b.long else (up, down)


def _crossed(b: Belief) -> bool:
    """Whether the mark is past the last stop-loss or take-profit (one of them fired)."""
    below = (lambda p: b.mark <= p) if b.long else (lambda p: b.mark >= p)
    above = (lambda p: b.mark >= p) if b.long else (lambda p: b.mark <= p)
    return (b.stop is not None and below(b.stop)) or (b.take is not None and above(b.take))


def make_scenario(n_signals: int, seed: int, *, short: bool = False) -> list[Step]:
    """The seeded script (module docstring): ``n_signals`` signals with ids ``sf-00000``…
    interleaved with exchange-side events."""
    rng = random.Random(seed)
    symbols = sorted(SYMBOLS)
    sides = [True, False] + [rng.random() < 0.5 for _ in symbols[2:]]
    rng.shuffle(sides)
    beliefs = {s: Belief(long=side, mark=Decimal(SYMBOLS[s].mark), base=Decimal(SYMBOLS[s].mark),
                         tick=Decimal(SYMBOLS[s].tick)) for s, side in zip(symbols, sides,
                                                                           strict=True)}
    gap = (0.05, 0.25) if short else (0.1, 0.3)
    steps: list[Step] = []
    at, sent = 0.0, 0
    cycle: list[str] = []
    while sent < n_signals:
        at += rng.uniform(*gap)
        if rng.random() >= EVENT_SHARE:
            symbol = rng.choice(symbols)
            body = _signal(rng, beliefs[symbol], symbol)
            steps.append(Step(at, "signal", {"id": f"sf-{sent:05d}", **body, "ttl_s": TTL_S}))
            sent += 1
            continue
        if not cycle:                       # every kind in each round of EVENT_CYCLE
            cycle = rng.sample(EVENT_CYCLE, len(EVENT_CYCLE))
        kind = cycle.pop()
        opened = [s for s in symbols if beliefs[s].open]
        if kind == "price":
            armed = [s for s in opened if beliefs[s].stop is not None]
            pick = rng.choice(armed) if armed and rng.random() < 0.7 else rng.choice(symbols)
            steps.append(Step(at, "price", _jump(rng, beliefs, pick)))
        elif kind == "liquidate":
            symbol = rng.choice(opened or symbols)
            beliefs[symbol].open = False
            steps.append(Step(at, "liquidate", {"symbol": symbol}))
        elif kind == "trade":
            symbol = rng.choice(symbols)
            beliefs[symbol].open = True
            steps.append(Step(at, "trade", {"symbol": symbol,
                                            "side": "BUY" if beliefs[symbol].long else "SELL",
                                            "qty": SYMBOLS[symbol].qty}))
        else:
            steps.append(Step(at, "drop", {"block_s": rng.choice([0, 0, 1, 2])}))
    return steps


def _jump(rng: random.Random, beliefs: dict[str, Belief], symbol: str) -> dict[str, Any]:
    b = beliefs[symbol]
    draw = rng.random()
    sign = 1 if b.long else -1
    if b.open and b.stop is not None and draw < 0.55:
        target = b.stop * (1 - sign * Decimal("0.01"))
    elif b.open and b.take is not None and draw < 0.80:
        target = b.take * (1 + sign * Decimal("0.01"))
    else:
        move = Decimal(str(round(rng.uniform(0.003, 0.008), 4)))
        up = rng.random() < 0.5 if abs(b.mark / b.base - 1) < Decimal("0.05") else b.mark < b.base
        target = b.mark * (1 + move if up else 1 - move)
    b.mark = _on_tick(target, b.tick, ROUND_FLOOR)
    if _crossed(b):
        b.open, b.stop, b.take = False, None, None
    return {"symbol": symbol, "price": str(b.mark)}


def _signal(rng: random.Random, b: Belief, symbol: str) -> dict[str, Any]:
    qty = SYMBOLS[symbol].qty
    entry = "LONG_ENTRY" if b.long else "SHORT_ENTRY"
    if b.open and rng.random() >= 0.45:
        close: dict[str, Any] = {"symbol": symbol,
                                 "type": "CLOSE_LONG" if b.long else "CLOSE_SHORT"}
        if rng.random() < 0.20:
            close["quantity"] = qty
        else:
            b.open, b.stop, b.take = False, None, None
        return close
    body: dict[str, Any] = {"symbol": symbol, "type": entry, "quantity": qty}
    draw = rng.random()
    stop, take = _bracket(b)
    if b.open:                                  # an add: a replacement, or bare
        if draw < 0.85:
            body |= {"stop_loss": str(stop), "take_profit": str(take)}
            b.stop, b.take = stop, take
    elif draw < 0.75:
        body |= {"stop_loss": str(stop), "take_profit": str(take)}
        b.stop, b.take = stop, take
    elif draw < 0.90:
        body["stop_loss"] = str(stop)
        b.stop, b.take = stop, None
    else:
        b.stop, b.take = None, None
    b.open = True
    return body


def fault_plan(seed: int) -> dict[str, Any]:
    """Partial fills and unknown outcomes (module docstring)."""
    hidden = {"visibility_delay_s": 0.5}
    rules: list[dict[str, Any]] = [
        {"endpoint": "POST /fapi/v1/order", "fault": "latency", "probability": 0.3,
         "latency_ms": 10},
        {"endpoint": "POST /fapi/v1/order", "fault": "partial_fill", "probability": 0.15,
         "fill_ratio": 0.3},
        *({"endpoint": endpoint, "fault": kind, "probability": 0.03, **hidden}
          for endpoint in ("POST /fapi/v1/order", "POST /fapi/v1/algoOrder")
          for kind in ("unknown_503", "timeout_1007")),
        {"endpoint": "DELETE /fapi/v1/algoOrder", "fault": "unknown_503", "probability": 0.03},
    ]
    return {"seed": seed, "rules": rules, "outages": []}


# ---------------------------------------------------------------------------- measurement
def _percentile(values: list[float], p: float) -> float | None:
    """Nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass(slots=True)
class _Track:
    amount: Decimal = Decimal(0)
    owed: bool = False
    #: Open execd protective algo orders: client id → (type, side).
    algos: dict[str, tuple[str, str]] = field(default_factory=dict)
    naked_since: int | None = None
    orphan_since: int | None = None

    def covered(self) -> bool:
        side = "SELL" if self.amount > 0 else "BUY"
        return any(t == "STOP_MARKET" and s == side for t, s in self.algos.values())

    def naked(self) -> bool:
        return self.amount != 0 and self.owed and not self.covered()

    def orphaned(self) -> bool:
        return self.amount == 0 and bool(self.algos)


def analyse(rows: list[dict[str, Any]], signals: list[dict[str, Any]], *, end_ms: int,
            prefix: str = "xd") -> dict[str, Any]:
    """The exchange-side figures of one variant from ``GET /_sim/orders`` (module docstring).
    ``signals`` are the scenario's signal bodies, ``end_ms`` the end of the measurement."""
    by_id = {s["id"]: s for s in signals}
    entries_with_sl = {client_id(prefix, s["id"], Leg.ENTRY) for s in signals
                       if "stop_loss" in s and not s["type"].startswith("CLOSE")}
    leg_of: dict[str, tuple[str, Leg]] = {client_id(prefix, sid, leg): (sid, leg)
                                          for sid in by_id for leg in Leg}
    protective = {cid for cid, (_, leg) in leg_of.items()
                  if leg in (Leg.STOP_LOSS, Leg.TAKE_PROFIT)}
    events: list[tuple[int, int, int, str, dict[str, Any]]] = []
    for seq, row in enumerate(rows):
        cid = row["client_id"]
        if row["kind"] == "algo":
            if cid not in protective:
                continue
            if row["status"] != "NEW":
                if row["update_time"] <= row["time"]:
                    continue                           # never open for a millisecond
                events.append((row["update_time"], 0, seq, "algo_closed", row))
            events.append((row["time"], 1, seq, "algo_open", row))
        else:
            events.append((row["time"], 1, seq, "order", row))
    events.sort(key=lambda e: e[:3])
    tracks: dict[str, _Track] = collections.defaultdict(_Track)
    naked: list[tuple[float, str, int]] = []              # (seconds, symbol, start ms)
    orphans: list[tuple[float, str, int]] = []           # (seconds, symbol, start ms)
    flattens: list[dict[str, Any]] = []
    counts: collections.Counter[str] = collections.Counter()
    i = 0
    while i < len(events):
        t = events[i][0]
        touched: set[str] = set()
        while i < len(events) and events[i][0] == t:
            _, _, _, what, row = events[i]
            i += 1
            symbol, cid = row["symbol"], row["client_id"]
            track = tracks[symbol]
            touched.add(symbol)
            if what == "algo_closed":
                track.algos.pop(cid, None)
            elif what == "algo_open":
                track.algos[cid] = (row["type"], row["side"])
            else:
                _order(row, track, leg_of, by_id, entries_with_sl, flattens, counts, t,
                       prefix=prefix)
        for symbol in touched:
            track = tracks[symbol]
            if track.naked() and track.naked_since is None:
                track.naked_since = t
            elif not track.naked() and track.naked_since is not None:
                naked.append(((t - track.naked_since) / 1000, symbol, track.naked_since))
                track.naked_since = None
            if track.orphaned() and track.orphan_since is None:
                track.orphan_since = t
            elif not track.orphaned() and track.orphan_since is not None:
                orphans.append(((t - track.orphan_since) / 1000, symbol, track.orphan_since))
                track.orphan_since = None
    naked_open = orphans_open = 0
    for symbol, track in tracks.items():
        if track.naked_since is not None:
            naked.append((max(0, end_ms - track.naked_since) / 1000, symbol, track.naked_since))
            naked_open += 1
        if track.orphan_since is not None:
            orphans.append((max(0, end_ms - track.orphan_since) / 1000, symbol,
                            track.orphan_since))
            orphans_open += 1
    naked = sorted((n for n in naked if n[0] > 0), reverse=True)
    orphan_longest = sorted((o for o in orphans if o[0] > 0), reverse=True)[:5]
    orphans = [o[0] for o in orphans if o[0] > 0]
    left = sorted(s for s, tr in tracks.items() if tr.naked())
    foreign = sorted(s for s, tr in tracks.items() if tr.amount != 0 and not tr.owed)
    wrong = [f for f in flattens if not f["justified"]]
    return {
        "naked_position_s": round(sum(n[0] for n in naked), 3), "naked_episodes": len(naked),
        "naked_max_s": round(naked[0][0] if naked else 0.0, 3),
        "naked_longest": [{"symbol": sym, "start_ms": start, "seconds": round(sec, 3)}
                          for sec, sym, start in naked[:5]],
        "left_without_stop": len(left), "left_without_stop_symbols": left,
        "naked_open_at_end": naked_open,
        "foreign_open_at_end": len(foreign), "foreign_symbols": foreign,
        "orphan_episodes": len(orphans),
        "orphan_p50_s": _round(_percentile(orphans, 50)),
        "orphan_p99_s": _round(_percentile(orphans, 99)),
        "orphan_max_s": _round(max(orphans, default=None)),
        "orphans_open_at_end": orphans_open,
        "orphan_longest": [{"symbol": sym, "start_ms": start, "seconds": round(sec, 3)}
                           for sec, sym, start in orphan_longest],
        "flattens": len(flattens), "wrong_flattens": len(wrong),
        "wrong_flatten_details": wrong[:20],
        "justified_flatten_details": [f for f in flattens if f["justified"]][:20],
        "events": dict(sorted(counts.items())),
        "final_positions": {s: str(tr.amount) for s, tr in sorted(tracks.items())
                            if tr.amount != 0},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _order(row: dict[str, Any], track: _Track, leg_of: dict[str, tuple[str, Leg]],
           by_id: dict[str, dict[str, Any]], entries_with_sl: set[str],
           flattens: list[dict[str, Any]], counts: collections.Counter[str], t: int, *,
           prefix: str) -> None:
    """One regular (or triggered) order of the ledger, at its acceptance: counted, checked if
    it is a flatten, and applied to the position."""
    cid = row["client_id"]
    executed = Decimal(row["executed_qty"])
    known = leg_of.get(cid)
    if row["kind"] == "triggered":
        name = {Leg.STOP_LOSS: "stop_loss_fired", Leg.TAKE_PROFIT: "take_profit_fired"}.get(
            known[1] if known else Leg.ENTRY, "foreign_trigger")
        counts[name if executed else f"{name}_nothing_to_close"] += 1
    elif cid.startswith("web_"):
        counts["web_trade"] += 1
    elif cid.startswith("autoclose-"):
        counts["liquidation"] += 1
    elif known is not None or cid.startswith(prefix):
        leg = known[1] if known else Leg.CLOSE          # an execd id of no scenario signal
        counts[f"execd_{leg.name.lower()}"] += 1
        if row["status"] == "EXPIRED" and 0 < executed < Decimal(row["qty"]):
            counts["execd_partial_fill"] += 1
        asked = known is not None and by_id[known[0]]["type"].startswith("CLOSE")
        if leg is Leg.CLOSE and not asked:
            flattens.append({"symbol": row["symbol"], "client_id": cid,
                             "signal": known[0] if known else None, "time": t,
                             "position": str(track.amount), "owed": track.owed,
                             "stop_open": track.covered() if track.amount else None,
                             "executed_qty": row["executed_qty"],
                             "justified": track.naked()})
    else:
        counts["foreign_order"] += 1
    if not executed:
        return
    before = track.amount
    track.amount += executed if row["side"] == "BUY" else -executed
    if track.amount == 0 or (before != 0 and (track.amount > 0) != (before > 0)):
        track.owed = False
    if cid in entries_with_sl and row["kind"] == "order":
        track.owed = True


# ---------------------------------------------------------------------------- one variant
class Sampler:
    """``GET /_sim/state`` every `SAMPLE_S`: the REST weight per window, requests, streams."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base
        self.weight_closed = 0
        self.weight_now = 0
        self.windows = 0
        self.requests = 0
        self.samples = 0
        self.max_streams = {"user": 0, "market": 0}
        self.zero_user_samples = 0

    async def sample(self) -> None:
        async with self.session.get(f"{self.base}/_sim/state") as resp:
            state = orjson.loads(await resp.read())
        used = next(int(v) for k, v in state["used_weight"].items() if k != "by_ip")
        if used < self.weight_now:
            self.weight_closed += self.weight_now
            self.windows += 1
        self.weight_now = used
        self.requests = int(state["requests"])
        streams = state.get("streams", {})
        for name in self.max_streams:
            self.max_streams[name] = max(self.max_streams[name], int(streams.get(name, 0)))
        self.zero_user_samples += int(streams.get("user", 0)) == 0
        self.samples += 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_S)
        await self.sample()

    @property
    def weight(self) -> int:
        return self.weight_closed + self.weight_now


def daemon_settings(variant: str, workdir: Path) -> Settings:
    overrides: dict[str, object] = {
        "audit.log_dir": str(workdir / "audit"), "audit.console": False,
        "journal.path": str(workdir / "journal.sqlite3"), "api.port": 0, **DAEMON,
        **VARIANT_SETTINGS[variant]}
    return load_settings(overrides=overrides, environ={})


async def _admin(session: aiohttp.ClientSession, base: str, path: str,
                 body: object) -> tuple[int, Any]:
    async with session.post(f"{base}/_sim/{path}", data=orjson.dumps(body),
                            headers={"Content-Type": "application/json"}) as resp:
        return resp.status, orjson.loads(await resp.read())


def audit_counts(log_dir: Path) -> dict[str, int]:
    """execd's own view, for the report only (no figure is computed from it)."""
    names = ("order_unknown_outcome", "order_resolved", "position_unprotected",
             "position_flattened", "protective_placed", "order_cancelled", "api_error")
    counts = dict.fromkeys(names, 0)
    for path in sorted(log_dir.glob("audit-*.jsonl")):
        for line in path.read_bytes().splitlines():
            event = orjson.loads(line).get("event")
            if event in counts:
                counts[event] += 1
    return counts


async def run_variant(variant: str, steps: list[Step], plan: dict[str, Any], workdir: Path,
                      *, timeout_s: float) -> dict[str, Any]:
    """One variant against a fresh simulator and journal; its column of the table."""
    vdir = workdir / variant
    settings = daemon_settings(variant, vdir)
    signals = [s.body for s in steps if s.kind == "signal"]
    settle_s = settings.stream.fallback_poll_s + 2.0
    admin_answers: collections.Counter[str] = collections.Counter()
    async with simulator(vdir, sim_toml(SIM_LIMITS)) as base, aiohttp.ClientSession() as session:
        sampler = Sampler(session, base)
        stop_sampling = asyncio.Event()
        async with Daemon(settings, exchange_url=base, out=io.StringIO()) as daemon:
            assert daemon.service is not None
            assert daemon.journal is not None
            serving = asyncio.create_task(daemon.serve(), name="bench-daemon")
            status, answer = await _admin(session, base, "faults", plan)
            if status != 200:
                raise RuntimeError(f"fault plan refused: {answer}")
            sampling = asyncio.create_task(sampler.run(stop_sampling), name="bench-sampler")
            began = time.monotonic()
            for step in steps:
                await asyncio.sleep(max(0.0, began + step.at_s - time.monotonic()))
                if step.kind == "signal":
                    await daemon.service.accept(step.body, source="bench", wait=True)
                    continue
                path = {"price": "price", "liquidate": "liquidate", "trade": "trade",
                        "drop": "streams/drop"}[step.kind]
                status, _ = await _admin(session, base, path, step.body)
                admin_answers[f"{step.kind} {'ok' if status == 200 else 'refused'}"] += 1
            scripted_s = time.monotonic() - began
            left = await _wait_terminal(daemon, began + scripted_s + timeout_s)
            await asyncio.sleep(settle_s)
            async with session.get(f"{base}/_sim/state") as resp:
                state = orjson.loads(await resp.read())
            async with session.get(f"{base}/_sim/orders") as resp:
                rows = orjson.loads(await resp.read())
            end_ms = int(time.time() * 1000)
            wall = time.monotonic() - began
            stop_sampling.set()
            await sampling
            states = collections.Counter[str]()
            for body in signals:
                record = await daemon.journal.get_signal(body["id"])
                states[record.state.value if record is not None else "MISSING"] += 1
            daemon.request_stop("bench finished")
            await serving
    figures = analyse(rows, signals, end_ms=end_ms,
                      prefix=settings.execution.client_id_prefix)
    actual = {p["symbol"]: str(Decimal(p["positionAmt"])) for p in state["positions"]
              if Decimal(p["positionAmt"]) != 0}
    rebuilt = {s: str(Decimal(a)) for s, a in figures["final_positions"].items()}
    dup = duplicates(rows)
    terminal = {s.value for s in SignalState if s.is_terminal}
    return {
        "variant": variant, "stream_enabled": settings.stream.enabled,
        "fallback_poll_s": settings.stream.fallback_poll_s, "signals": len(signals),
        "states": dict(sorted(states.items())),
        "non_terminal": sum(n for s, n in states.items() if s not in terminal),
        "left_at_timeout": left,
        **figures,
        "ledger_check": "ok" if actual == rebuilt else f"MISMATCH sim {actual} rebuilt {rebuilt}",
        "duplicate_client_ids": len(dup), "extra_orders": sum(n - 1 for n in dup.values()),
        "duplicate_examples": dict(list(dup.items())[:10]),
        "rest_weight": sampler.weight, "weight_windows": sampler.windows + 1,
        "rest_requests": sampler.requests, "orders": len(rows),
        "throttled_429": state["throttled"]["429"], "throttled_418": state["throttled"]["418"],
        "max_streams": sampler.max_streams,
        "admin": dict(sorted(admin_answers.items())),
        "audit": audit_counts(vdir / "audit"),
        "scripted_s": round(scripted_s, 1), "settle_s": settle_s, "wall_s": round(wall, 1),
    }


async def _wait_terminal(daemon: Daemon, deadline: float) -> int:
    assert daemon.journal is not None
    while True:
        left = len(await daemon.journal.non_terminal_signals())
        if left == 0 or time.monotonic() >= deadline:
            return left
        await asyncio.sleep(0.25)


async def measure(steps: list[Step], plan: dict[str, Any], variants: list[str], workdir: Path,
                  *, timeout_s: float) -> list[dict[str, Any]]:
    rows = []
    for variant in variants:
        print(f"running {variant} ...", file=sys.stderr, flush=True)
        rows.append(await run_variant(variant, steps, plan, workdir, timeout_s=timeout_s))
    return rows


# ---------------------------------------------------------------------------- report
#: (label, key, target for the streams variant or None)
LINES: list[tuple[str, str, str | None]] = [
    ("signals (DONE/REJECTED/FAILED/EXPIRED, non-terminal)", "states", None),
    ("naked position-seconds", "naked_position_s", None),
    ("naked episodes / longest s", "naked_episodes", None),
    ("positions left without a stop at the end", "left_without_stop", "0"),
    ("foreign positions open at the end (not owed)", "foreign_open_at_end", None),
    ("orphan episodes (open at the end)", "orphan_episodes", None),
    ("orphan lifetime p50 s", "orphan_p50_s", None),
    ("orphan lifetime p99 s", "orphan_p99_s", "< 1"),
    ("orphan lifetime max s", "orphan_max_s", None),
    ("flattens by execd (justified)", "flattens", None),
    ("wrong flattens", "wrong_flattens", "0"),
    ("duplicate client ids", "duplicate_client_ids", "0"),
    ("REST weight used", "rest_weight", None),
    ("REST requests", "rest_requests", None),
    ("stops fired / take-profits fired", "events", None),
    ("liquidations / web trades / partial fills", "events", None),
    ("user-stream connections seen (max)", "max_streams", None),
    ("ledger check (rebuilt = /_sim/state)", "ledger_check", None),
    ("wall s (scripted part)", "wall_s", None),
]


def met(row: dict[str, Any]) -> dict[str, bool]:
    """Every target of the streams variant → met."""
    p99 = row["orphan_p99_s"]
    return {"left_without_stop": row["left_without_stop"] == 0,
            "wrong_flattens": row["wrong_flattens"] == 0,
            "duplicate_client_ids": row["duplicate_client_ids"] == 0,
            "orphan_p99_s": p99 is None or p99 < 1.0}


def failing(row: dict[str, Any]) -> bool:
    """What makes the script exit 1 (module docstring)."""
    return row["duplicate_client_ids"] > 0 or row["left_without_stop"] > 0


def _cell(label: str, key: str, row: dict[str, Any]) -> str:
    ev = row["events"]
    if key == "states":
        st = row["states"]
        return "/".join(str(st.get(s, 0)) for s in ("DONE", "REJECTED", "FAILED", "EXPIRED")) \
            + f", {row['non_terminal']}"
    if key == "naked_episodes":
        return f"{row['naked_episodes']} / {row['naked_max_s']:.3f}"
    if key == "orphan_episodes":
        return f"{row['orphan_episodes']} ({row['orphans_open_at_end']})"
    if key == "flattens":
        return f"{row['flattens']} ({row['flattens'] - row['wrong_flattens']})"
    if key == "events" and label.startswith("stops"):
        return f"{ev.get('stop_loss_fired', 0)} / {ev.get('take_profit_fired', 0)}"
    if key == "events":
        return (f"{ev.get('liquidation', 0)} / {ev.get('web_trade', 0)} / "
                f"{ev.get('execd_partial_fill', 0)}")
    if key == "max_streams":
        return str(row["max_streams"]["user"])
    if key == "wall_s":
        return f"{row['wall_s']:.1f} ({row['scripted_s']:.1f})"
    if key == "ledger_check":
        return "ok" if row["ledger_check"] == "ok" else "MISMATCH"
    value = row[key]
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    by_variant = {r["variant"]: r for r in rows}
    streams = by_variant.get("streams")
    checks = met(streams) if streams else {}
    head = ["metric", *by_variant, "target (streams)"]
    lines = [head]
    for label, key, target in LINES:
        cells = [_cell(label, key, by_variant[v]) for v in by_variant]
        mark = ""
        if target is not None:
            mark = f"{target}: " + ("-" if not streams else
                                    "met" if checks[key] else "NOT met")
        lines.append([label, *cells, mark])
    return text_table(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signals", type=int, default=300, help="signals per variant")
    parser.add_argument("--seed", type=int, default=SEED, help="scenario and fault plan seed")
    parser.add_argument("--only", default="", help=f"comma list of {','.join(VARIANTS)}")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds after the script for every signal to end")
    parser.add_argument("--short", action="store_true", help="50 signals (~25 s per variant)")
    parser.add_argument("--out", default=str(RESULTS), help="JSON output path")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep journals, audit logs and simulator logs in DIR")
    args = parser.parse_args(argv)
    chosen = [v for v in args.only.split(",") if v]
    if set(chosen) - set(VARIANTS):
        parser.error(f"--only: choose from {','.join(VARIANTS)}")
    args.variants = [v for v in VARIANTS if v in chosen] if chosen else list(VARIANTS)
    if args.short:
        args.signals, args.timeout = 50, min(args.timeout, 60.0)
    return args


def run(n: int, *, seed: int = SEED, variants: tuple[str, ...] = VARIANTS, short: bool = False,
        timeout_s: float = 120.0, keep: Path | None = None
        ) -> tuple[list[dict[str, Any]], list[Step], dict[str, Any]]:
    """The whole bench without printing: (rows, scenario, fault plan)."""
    steps = make_scenario(n, seed, short=short)
    plan = fault_plan(seed)
    if keep is not None:
        return asyncio.run(measure(steps, plan, list(variants), keep,
                                   timeout_s=timeout_s)), steps, plan
    with tempfile.TemporaryDirectory(prefix="execd-safety-") as tmp:
        rows = asyncio.run(measure(steps, plan, list(variants), Path(tmp), timeout_s=timeout_s))
    return rows, steps, plan


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    began = time.time()
    rows, steps, plan = run(args.signals, seed=args.seed, variants=tuple(args.variants),
                            short=args.short, timeout_s=args.timeout, keep=args.keep)
    kinds = collections.Counter(s.kind for s in steps)
    report = table(rows)
    print(f"safety bench: {kinds['signal']} signals over {len(SYMBOLS)} symbols, seed "
          f"{args.seed}; scripted events: {kinds['price']} price jumps, {kinds['liquidate']} "
          f"liquidations, {kinds['trade']} web trades, {kinds['drop']} stream drops; "
          f"faults: partial_fill 15 % (ratio 0.3), unknown outcomes 6 % of placements")
    print(report)
    for row in rows:
        audit = row["audit"]
        print(f"{row['variant']} (stream.enabled={row['stream_enabled']}, fallback_poll_s="
              f"{row['fallback_poll_s']:g}): execd audit — unknown outcomes "
              f"{audit['order_unknown_outcome']}, unprotected {audit['position_unprotected']}, "
              f"flattened {audit['position_flattened']}; admin {row['admin']}")
        longest = ", ".join(f"{n['symbol']} {n['seconds']:.3f} s" for n in row["naked_longest"][:3])
        print(f"  longest naked episodes: {longest or '-'}")
        orphans = ", ".join(f"{o['symbol']} {o['seconds']:.3f} s at {o['start_ms']}"
                            for o in row["orphan_longest"][:3])
        print(f"  longest orphan episodes: {orphans or '-'}")
        for detail in row["wrong_flatten_details"]:
            print(f"  WRONG FLATTEN {detail}")
        if row["left_without_stop"]:
            print(f"  LEFT WITHOUT A STOP: {row['left_without_stop_symbols']}")
    streams = next((r for r in rows if r["variant"] == "streams"), None)
    fail = streams is not None and failing(streams)
    if streams is not None:
        checks = met(streams)
        print("targets (streams): " + ", ".join(f"{k} {'met' if v else 'NOT met'}"
                                                for k, v in checks.items())
              + ("; exit 1 (a duplicate or a position left without a stop)" if fail else ""))
    written = save(Path(args.out), {
        "bench": "safety", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(aiohttp=aiohttp.__version__),
        "parameters": {"signals": args.signals, "symbols": sorted(SYMBOLS), "seed": args.seed,
                       "steps": dict(kinds), "sim_limits": SIM_LIMITS, "daemon": DAEMON,
                       "variants": VARIANT_SETTINGS, "fault_plan": plan, "short": args.short,
                       "timeout_s": args.timeout, "sample_s": SAMPLE_S},
        "targets": {"streams": {"left_without_stop": 0, "wrong_flattens": 0,
                                "duplicate_client_ids": 0, "orphan_p99_s": "< 1"}},
        "met": met(streams) if streams else None, "failed": fail,
        "duration_s": round(time.time() - began, 1), "table": report, "results": rows,
    })
    print(f"wrote {written} ({time.time() - began:.0f} s)")
    return 1 if fail else 0


if __name__ == "__main__":
    sys.exit(main())
