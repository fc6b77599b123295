"""bench/safety.py, short (SPEC §13 "positions protected"): 50 signals over 5 symbols with partial
fills, unknown outcomes, price jumps, liquidations, web-UI trades and stream drops, for execd
with the streams and execd polling only; plus the exchange-side measurement on a hand-made
ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from app.domain import Leg
from app.execution.client_ids import client_id
from tests.test_chaos_short import load_bench


@pytest.fixture(autouse=True)
def _clean_structlog() -> Iterator[None]:
    """The daemon configures structlog globally: reset it after the test."""
    yield
    structlog.reset_defaults()


def _row(kind: str, symbol: str, cid: str, type_: str, side: str, status: str, *, t: int,
         updated: int | None = None, qty: str = "0", executed: str = "0",
         close_position: bool = False) -> dict[str, Any]:
    return {"kind": kind, "symbol": symbol, "id": 0, "client_id": cid, "type": type_,
            "side": side, "status": status, "qty": qty, "executed_qty": executed,
            "reduce_only": kind != "order", "close_position": close_position,
            "trigger_price": None, "time": t, "update_time": updated or t}


def test_the_measurement_on_a_hand_made_ledger() -> None:
    """Naked time, orphan lifetime, wrong and justified flattens, foreign positions."""
    safety = load_bench("safety")
    signals = [{"id": "a", "symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.003",
                "stop_loss": "60000", "take_profit": "70000"},
               {"id": "b", "symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.003",
                "stop_loss": "60000"},
               {"id": "c", "symbol": "ETHUSDT", "type": "LONG_ENTRY", "quantity": "0.050",
                "stop_loss": "3000"}]
    e, s, t, c = ({sig["id"]: client_id("xd", sig["id"], leg) for sig in signals}
                  for leg in (Leg.ENTRY, Leg.STOP_LOSS, Leg.TAKE_PROFIT, Leg.CLOSE))
    rows = [
        # a: filled at 1000, stop and take-profit at 1100 (naked 0.1 s); the stop fires at
        # 2000, the take-profit is cancelled at 2500 (an orphan of 0.5 s).
        _row("order", "BTCUSDT", e["a"], "MARKET", "BUY", "FILLED", t=1000, qty="0.003",
             executed="0.003"),
        _row("algo", "BTCUSDT", s["a"], "STOP_MARKET", "SELL", "FINISHED", t=1100,
             updated=2000, close_position=True),
        _row("algo", "BTCUSDT", t["a"], "TAKE_PROFIT_MARKET", "SELL", "CANCELED", t=1100,
             updated=2500, close_position=True),
        _row("triggered", "BTCUSDT", s["a"], "MARKET", "SELL", "FILLED", t=2000,
             qty="0.003", executed="0.003"),
        # b: filled at 3000, its stop at 3050, flattened at 3100 though covered (wrong); the
        # stop then stays open on a flat symbol until the end (an orphan open at the end).
        _row("order", "BTCUSDT", e["b"], "MARKET", "BUY", "FILLED", t=3000, qty="0.003",
             executed="0.003"),
        _row("algo", "BTCUSDT", s["b"], "STOP_MARKET", "SELL", "NEW", t=3050,
             close_position=True),
        _row("order", "BTCUSDT", c["b"], "MARKET", "SELL", "FILLED", t=3100, qty="0.003",
             executed="0.003"),
        # c: filled partly at 4000, no stop ever (naked to the end), flattened at 4500
        # (justified: naked), which fills only part of it: left without a stop at the end.
        _row("order", "ETHUSDT", e["c"], "MARKET", "BUY", "EXPIRED", t=4000, qty="0.050",
             executed="0.015"),
        _row("order", "ETHUSDT", c["c"], "MARKET", "SELL", "EXPIRED", t=4500, qty="0.015",
             executed="0.004"),
        # a foreign web trade on a flat symbol: not owed.
        _row("order", "SOLUSDT", "web_1", "MARKET", "BUY", "FILLED", t=4600, qty="2",
             executed="2"),
    ]
    got = safety.analyse(rows, signals, end_ms=6000)
    assert got["naked_episodes"] == 3                  # 0.1 s (a), 0.05 s (b), 2 s (c)
    assert got["naked_position_s"] == pytest.approx(0.1 + 0.05 + 2.0)
    assert got["left_without_stop"] == 1
    assert got["left_without_stop_symbols"] == ["ETHUSDT"]
    assert got["foreign_symbols"] == ["SOLUSDT"]
    assert got["orphan_episodes"] == 2                 # 0.5 s, and 2.9 s still open at the end
    assert got["orphans_open_at_end"] == 1
    assert got["orphan_p50_s"] == pytest.approx(0.5)
    assert got["orphan_p99_s"] == pytest.approx(2.9)
    assert got["flattens"] == 2
    assert got["wrong_flattens"] == 1
    assert got["wrong_flatten_details"][0]["signal"] == "b"
    assert got["events"]["stop_loss_fired"] == 1
    assert got["events"]["execd_partial_fill"] == 2
    assert got["final_positions"] == {"ETHUSDT": "0.011", "SOLUSDT": "2"}


def test_the_scenario_is_seeded_and_has_every_event() -> None:
    safety = load_bench("safety")
    steps = safety.make_scenario(50, safety.SEED, short=True)
    assert steps == safety.make_scenario(50, safety.SEED, short=True)
    kinds = {s.kind for s in steps}
    assert kinds == {"signal", "price", "liquidate", "trade", "drop"}
    signals = [s.body for s in steps if s.kind == "signal"]
    assert len(signals) == 50
    assert len({s["symbol"] for s in signals}) == 5
    assert {s["type"] for s in signals} >= {"LONG_ENTRY", "SHORT_ENTRY", "CLOSE_LONG",
                                            "CLOSE_SHORT"}


@pytest.mark.timeout(180)
async def test_positions_protected_with_streams_and_polling(tmp_path: Path) -> None:
    """Streams variant: 0 duplicates, 0 positions left without a stop, 0 wrong flattens; the
    polling variant completes. The orphan p99 target is reported by the bench, not asserted
    here."""
    safety = load_bench("safety")
    steps = safety.make_scenario(50, safety.SEED, short=True)
    rows = await safety.measure(steps, safety.fault_plan(safety.SEED), list(safety.VARIANTS),
                                tmp_path, timeout_s=60)
    by_variant = {row["variant"]: row for row in rows}
    streams, polling = by_variant["streams"], by_variant["polling"]
    assert streams["duplicate_client_ids"] == 0, streams["duplicate_examples"]
    assert streams["left_without_stop"] == 0, streams["left_without_stop_symbols"]
    assert streams["wrong_flattens"] == 0, streams["wrong_flatten_details"]
    for row in (streams, polling):
        assert row["non_terminal"] == 0, row["states"]
        assert row["ledger_check"] == "ok"
        events = row["events"]
        assert events.get("liquidation", 0) > 0
        assert events.get("web_trade", 0) > 0
        assert events.get("execd_partial_fill", 0) > 0
    assert polling["stream_enabled"] is False
    assert streams["stream_enabled"] is True
