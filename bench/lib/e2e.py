"""End-to-end time, signal → order on the exchange, of execd and of a hand-written loop (SPEC §13).

Each sender runs in a process of its own, as a real signal source or a real script would, so
neither shares an event loop with the daemon under test:

* ``execd``: POSTs each signal body to the daemon's control API over HTTP (one keep-alive
  session, the token from ``EXECD_BENCH_TOKEN``), each POST in a task of its own;
* ``hand``: the loop a trader would write with python-binance's ``AsyncClient`` against the same
  simulator — read the mark (``futures_mark_price``), check the stop-loss and take-profit
  against it, place the ``MARKET`` order (a close: ``reduceOnly``, the entry's quantity); no
  journal, no limiter, no retries, no protective orders; each signal in a task of its own;
* ``hand-journal``: the same loop keeping the two records SPEC §5.6 and §5.3 make execd keep
  before an order leaves, in the cheapest way a script could (SQLite in WAL mode, called on its
  event loop, which execd must not do): the signal, committed and fsynced (``synchronous =
  FULL``) first, then, after the mark, the order's intent (committed, not fsynced) — so what
  durability alone costs a hand-written loop is measured beside what it costs execd. Not a SPEC
  target: an informative baseline (issue 16).

Each reads the same bodies (a JSON file), paces them at ``rate`` from ``start_at`` (epoch seconds:
body i is due at ``start_at + i / rate``) and prints one JSON object: when each was sent (epoch
seconds, `time.time()` just before the request), by signal id or client order id. `end_to_end`
then takes the simulator's ledger (``GET /_sim/orders``: ``time`` = when it accepted the order,
epoch ms, truncated — + 0.5 ms is the unbiased estimate) minus the send time: one machine, one
clock. ``python -m lib.e2e {execd,hand,hand-journal} URL BODIES RATE START_AT``
(``PYTHONPATH=bench``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from .report import ROOT

TOKEN_ENV = "EXECD_BENCH_TOKEN"


async def paced(bodies: list[dict[str, Any]], rate: float, start_at: float,
                send: Callable[[int, dict[str, Any]], Coroutine[Any, Any, None]]) -> float:
    """Run ``send(i, body)`` for each body in a task of its own, body i at
    ``start_at + i / rate`` (epoch seconds); wait for all. Returns how far behind the
    schedule the pacer fell at worst (seconds)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + (start_at - time.time())
    tasks: list[asyncio.Task[None]] = []
    behind = 0.0
    for i, body in enumerate(bodies):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            behind = max(behind, -delay)
        tasks.append(asyncio.create_task(send(i, body)))
    await asyncio.gather(*tasks)
    return behind


async def post_signals(url: str, bodies: list[dict[str, Any]], rate: float,
                       start_at: float) -> dict[str, Any]:
    import aiohttp
    headers = {"Authorization": f"Bearer {os.environ[TOKEN_ENV]}",
               "Content-Type": "application/json"}
    sent: dict[str, float] = {}
    status: dict[str, int] = {}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{url}/healthz") as resp:          # open a connection
            await resp.read()

        async def send(i: int, body: dict[str, Any]) -> None:
            data = orjson.dumps(body)
            sent[body["id"]] = time.time()
            async with session.post(f"{url}/v1/signals", data=data) as resp:
                await resp.read()
                status[str(resp.status)] = status.get(str(resp.status), 0) + 1

        behind = await paced(bodies, rate, start_at, send)
    return {"sent": sent, "status": status, "behind_max_ms": behind * 1e3}


#: Client order id prefixes of the hand loops' orders (the simulator's ledger tells them apart).
HAND_PREFIX = {"hand": "hand-", "hand-journal": "hjnl-"}


class HandJournal:
    """The hand-written loop's journal (``hand-journal``): one SQLite file in WAL mode, used
    synchronously on the loop, as a script would."""

    def __init__(self, path: Path) -> None:
        import sqlite3
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("CREATE TABLE signals (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
        self._conn.execute("CREATE TABLE intents (client_id TEXT PRIMARY KEY, "
                           "signal_id TEXT NOT NULL, state TEXT NOT NULL)")

    def signal(self, body: dict[str, Any]) -> None:
        """Committed and fsynced (SPEC §5.6: on the disk before anything it leads to)."""
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute("INSERT INTO signals VALUES (?, ?)",
                           (body["id"], orjson.dumps(body).decode()))

    def intent(self, client_id: str, signal_id: str) -> None:
        """Committed before the order is sent (SPEC §5.3), not fsynced (SPEC §5.6 allows it)."""
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute("INSERT INTO intents VALUES (?, ?, 'SENDING')", (client_id, signal_id))

    def close(self) -> None:
        self._conn.close()


async def hand_loop(url: str, bodies: list[dict[str, Any]], rate: float,
                    start_at: float, *, journal: HandJournal | None = None) -> dict[str, Any]:
    """The ``hand`` loop, or with `journal` the ``hand-journal`` one (module docstring)."""
    from binance import AsyncClient
    client = AsyncClient("sim-key", "sim-secret")
    client.FUTURES_URL = f"{url}/fapi"
    server = await client.futures_time()
    client.timestamp_offset = server["serverTime"] - int(time.time() * 1000)
    await client.futures_mark_price(symbol=bodies[0]["symbol"])     # open a connection
    sent: dict[str, float] = {}
    status: dict[str, int] = {}
    entered: dict[str, str] = {}
    prefix = HAND_PREFIX["hand" if journal is None else "hand-journal"]

    async def send(i: int, body: dict[str, Any]) -> None:
        symbol, cid = body["symbol"], f"{prefix}{body['id']}"
        sent[cid] = time.time()
        if journal is not None:
            journal.signal(body)
        mark = Decimal((await client.futures_mark_price(symbol=symbol))["markPrice"])
        if body["type"] == "LONG_ENTRY":
            if not Decimal(body["stop_loss"]) < mark < Decimal(body["take_profit"]):
                status["skipped"] = status.get("skipped", 0) + 1
                return
            entered[symbol] = body["quantity"]
            order = {"side": "BUY", "quantity": body["quantity"]}
        else:
            order = {"side": "SELL", "quantity": entered[symbol], "reduceOnly": "true"}
        if journal is not None:
            journal.intent(cid, body["id"])
        await client.futures_create_order(symbol=symbol, type="MARKET", newClientOrderId=cid,
                                          **order)
        status["placed"] = status.get("placed", 0) + 1

    try:
        behind = await paced(bodies, rate, start_at, send)
    finally:
        await client.close_connection()
    return {"sent": sent, "status": status, "behind_max_ms": behind * 1e3}


async def run_sender(kind: str, url: str, bodies_file: Path, rate: float, start_at: float,
                     token: str = "") -> dict[str, Any]:
    """Run the ``kind`` sender (``execd`` or ``hand``) in a process of its own; its result."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench"), TOKEN_ENV: token}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lib.e2e", kind, url, str(bodies_file), str(rate), repr(start_at),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} sender failed: {err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = orjson.loads(out)
    return result


def end_to_end(sent: Mapping[str, float], rows: list[dict[str, Any]],
               key: Callable[[str], str | None]) -> list[float]:
    """Seconds from each send to the first ledger row whose ``key(client_id)`` is its id
    (rows ``key`` maps to None are skipped); sends without a row are left out."""
    reached = exchange_times(sent, rows, key)
    return [reached[k] - sent[k] for k in sent if k in reached]


def exchange_times(sent: Mapping[str, float], rows: list[dict[str, Any]],
                   key: Callable[[str], str | None]) -> dict[str, float]:
    """Id → when the simulator accepted its first order (epoch seconds, the ledger's ms +
    0.5), for the ids of `sent` that have a row (see `end_to_end`)."""
    first: dict[str, int] = {}
    for row in rows:
        if row.get("kind") == "triggered":
            continue
        k = key(str(row["client_id"]))
        if k is not None and k in sent and (k not in first or row["time"] < first[k]):
            first[k] = int(row["time"])
    return {k: (ms + 0.5) / 1e3 for k, ms in first.items()}


def main() -> None:
    kind, url, bodies_file, rate, start_at = sys.argv[1:6]
    bodies = json.loads(Path(bodies_file).read_text(encoding="utf-8"))
    if kind == "hand-journal":
        with tempfile.TemporaryDirectory() as tmp:
            journal = HandJournal(Path(tmp) / "hand.db")
            try:
                result = asyncio.run(hand_loop(url, bodies, float(rate), float(start_at),
                                               journal=journal))
            finally:
                journal.close()
    else:
        run = {"execd": post_signals, "hand": hand_loop}[kind]
        result = asyncio.run(run(url, bodies, float(rate), float(start_at)))
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
