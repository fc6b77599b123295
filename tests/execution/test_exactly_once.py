"""Exactly once under injected faults (SPEC §5.3, DEVELOPERS non-negotiable 5).

Both order endpoints answer 30 % of requests with an unknown outcome *after applying* the
order — 503 "Unknown error", -1007, or a dropped connection — and the order then stays
invisible to queries for a while; another 10 % are applied and invisible for 3 s. 300 signals
over 3 symbols must all end terminal with exactly one accepted order per client id. The same
run with the lookup protocol switched off (a test-only seam) must show duplicates: the test
can fail.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import replace
from typing import Any

import pytest

from app.domain import SignalState
from app.execution.settings import ExecutorSettings
from app.factory import ExchangeParts
from app.journal import Journal
from tests.execution.conftest import execution_for, make_signal
from tests.simulator import Admin

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
QTY = {"BTCUSDT": "0.002", "ETHUSDT": "0.050", "SOLUSDT": "1"}
STOPS = {"BTCUSDT": ("60000.0", "70000.0"), "ETHUSDT": ("3000.00", "3400.00"),
         "SOLUSDT": ("140.0000", "160.0000")}
PER_SYMBOL = 100


def plan(hidden_s: float) -> dict[str, Any]:
    rules = []
    for endpoint in ("POST /fapi/v1/order", "POST /fapi/v1/algoOrder"):
        for fault in ("unknown_503", "timeout_1007", "reset_after_apply"):
            rules.append({"endpoint": endpoint, "fault": fault, "probability": 0.1,
                          "visibility_delay_s": hidden_s})
        rules.append({"endpoint": endpoint, "fault": "delayed_visibility", "probability": 0.1,
                      "visibility_delay_s": 3})
    return {"seed": 20261123, "rules": rules}


def bodies(symbol: str) -> list[dict[str, Any]]:
    """Alternating entries and closes; every third entry carries a stop and a take-profit."""
    out: list[dict[str, Any]] = []
    for i in range(PER_SYMBOL):
        if i % 2 == 0:
            body: dict[str, Any] = {"symbol": symbol, "type": "LONG_ENTRY",
                                    "quantity": QTY[symbol]}
            if i % 6 == 0:
                body["stop_loss"], body["take_profit"] = STOPS[symbol]
            out.append(body)
        else:
            out.append({"symbol": symbol, "type": "CLOSE_LONG"})
    return out


@pytest.fixture
def lanes(exchange: ExchangeParts, journal: Journal) -> Any:
    async def run_all(settings: ExecutorSettings) -> list[SignalState]:
        executor = execution_for(exchange.gateway, exchange, journal, settings).executor

        async def lane(symbol: str) -> list[SignalState]:
            states = []
            for body in bodies(symbol):
                record, _ = await journal.accept(make_signal(body, ttl=600), now=time.time())
                states.append((await executor.execute(record)).state)
            return states

        results = await asyncio.gather(*(lane(s) for s in SYMBOLS))
        return [state for lane_states in results for state in lane_states]

    return run_all


def duplicates(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = collections.Counter(r["client_id"] for r in rows if r["kind"] != "triggered")
    return {cid: n for cid, n in counts.items() if n > 1}


@pytest.mark.timeout(300)
async def test_one_order_per_client_id_under_unknown_outcomes(
        lanes: Any, admin: Admin, exec_settings: ExecutorSettings) -> None:
    """300 signals, 30 % unknown outcomes + hidden orders: all terminal, zero duplicates."""
    await admin.post("faults", plan(hidden_s=1.0))
    states = await lanes(replace(exec_settings, resolve_window_s=6.0))
    assert len(states) == 3 * PER_SYMBOL
    assert all(s.is_terminal for s in states)
    assert collections.Counter(states)[SignalState.DONE] == len(states)
    rows = await admin.orders()
    assert duplicates(rows) == {}
    assert len({r["client_id"] for r in rows}) >= 3 * PER_SYMBOL * 0.5


@pytest.mark.timeout(120)
async def test_blind_retry_seam_shows_duplicates(
        lanes: Any, admin: Admin, exec_settings: ExecutorSettings) -> None:
    """The same faults without the lookup protocol double-place orders: the test can fail."""
    await admin.post("faults", plan(hidden_s=1.0))
    await lanes(replace(exec_settings, unknown_outcome_protocol=False))
    assert len(duplicates(await admin.orders())) > 10


@pytest.mark.timeout(60)
async def test_failed_lookups_never_license_a_resend(
        exchange: ExchangeParts, journal: Journal, admin: Admin,
        exec_settings: ExecutorSettings) -> None:
    """The entry is applied but its answer is lost and it stays hidden for 1 s; then the
    exchange goes down for longer than the resolve window. Lookups that fail prove nothing:
    execd keeps looking instead of resending, and adopts the order once the exchange is back."""
    await admin.post("faults", {"seed": 1, "rules": [
        {"endpoint": "POST /fapi/v1/order", "fault": "reset_after_apply", "probability": 1,
         "visibility_delay_s": 1.0}],
        "outages": [{"start_s": 0.6, "duration_s": 3.0}]})
    executor = execution_for(exchange.gateway, exchange, journal,
                             replace(exec_settings, resolve_window_s=1.0)).executor
    record, _ = await journal.accept(make_signal(
        {"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010"}, ttl=30),
        now=time.time())
    final = await executor.execute(record)
    assert final.state is SignalState.DONE, final.reason
    rows = await admin.orders("order")
    assert len(rows) == 1
    assert await admin.position("BTCUSDT") == "0.010"
