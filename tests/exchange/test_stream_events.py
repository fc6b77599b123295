"""The stream payload parsers: Binance's JSON → typed events, and malformed payloads → a
ValueError naming the field (never another exception, which would kill a stream)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from app.domain import Side
from app.exchange.stream_events import (
    AlgoUpdate,
    ListenKeyExpired,
    MarkUpdate,
    OrderUpdate,
    PositionsUpdate,
    parse_mark_event,
    parse_user_event,
)

ORDER: dict[str, Any] = {"e": "ORDER_TRADE_UPDATE", "E": 11, "T": 10, "o": {
    "s": "BTCUSDT", "c": "xdE1", "S": "SELL", "o": "MARKET", "q": "0.010", "ap": "65000.5",
    "x": "TRADE", "X": "FILLED", "i": 7, "l": "0.010", "z": "0.010", "L": "65000.5",
    "n": "0.325", "N": "USDT", "rp": "1.5", "R": True, "cp": False, "T": 10}}
ALGO: dict[str, Any] = {"e": "ALGO_UPDATE", "E": 12, "T": 12, "o": {
    "caid": "xdS1", "aid": 40, "s": "BTCUSDT", "S": "SELL", "o": "STOP_MARKET",
    "X": "TRIGGERED", "tp": "60000.00", "cp": True, "ai": "8389765000001"}}
ACCOUNT: dict[str, Any] = {"e": "ACCOUNT_UPDATE", "E": 13, "T": 13, "a": {"m": "ORDER", "P": [
    {"s": "BTCUSDT", "pa": "-0.010", "ep": "65000.5", "ps": "BOTH"},
    {"s": "ETHUSDT", "pa": "1", "ep": "3000", "ps": "LONG"}]}}


def with_o(event: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**event, "o": {**event["o"], **changes}}


def test_order_update() -> None:
    """Every field of ORDER_TRADE_UPDATE that execd uses, Decimal money."""
    update = parse_user_event(ORDER)
    assert update == OrderUpdate(
        event_time_ms=11, symbol="BTCUSDT", client_id="xdE1", order_id=7, side=Side.SELL,
        order_type="MARKET", execution_type="TRADE", status="FILLED", quantity=Decimal("0.010"),
        filled_qty=Decimal("0.010"), avg_price=Decimal("65000.5"), last_qty=Decimal("0.010"),
        last_price=Decimal("65000.5"), commission=Decimal("0.325"), commission_asset="USDT",
        realized_pnl=Decimal("1.5"), reduce_only=True, close_position=False, trade_time_ms=10)
    assert update.is_trade
    assert update.is_final


def test_algo_update() -> None:
    update = parse_user_event(ALGO)
    assert isinstance(update, AlgoUpdate)
    assert (update.client_algo_id, update.algo_id, update.actual_order_id, update.fired) == (
        "xdS1", 40, 8389765000001, True)


def test_account_update_keeps_one_way_positions() -> None:
    """Hedge-mode legs (ps LONG/SHORT) are left out: execd trades one-way."""
    update = parse_user_event(ACCOUNT)
    assert isinstance(update, PositionsUpdate)
    assert [(p.symbol, p.amount) for p in update.positions] == [("BTCUSDT", Decimal("-0.010"))]


def test_listen_key_expired_and_unused_kinds() -> None:
    assert parse_user_event({"e": "listenKeyExpired", "E": 5, "listenKey": "k"}) == (
        ListenKeyExpired(5))
    assert parse_user_event({"e": "TRADE_LITE", "E": 1}) is None
    assert parse_user_event({"result": None, "id": 1}) is None


@pytest.mark.parametrize(("payload", "field"), [
    ([ORDER], "event"),
    ({**ORDER, "o": "x"}, "o"),
    ({**ORDER, "E": "soon"}, "event.E"),
    (with_o(ORDER, q="lots"), "o.q"),
    (with_o(ORDER, q="NaN"), "o.q"),
    (with_o(ORDER, ap=1.5), "o.ap"),             # a float on the money path
    (with_o(ORDER, S="HOLD"), "o.S"),
    (with_o(ORDER, c=""), "o.c"),
    (with_o(ORDER, i=None), "o.i"),
    (with_o(ALGO, tp="Infinity"), "o.tp"),
    (with_o(ALGO, ai="x"), "o.ai"),
    ({**ACCOUNT, "a": {"P": "x"}}, "a.P"),
    ({**ACCOUNT, "a": {"P": [{"s": "BTCUSDT", "pa": "?"}]}}, "a.P[].pa"),
])
def test_malformed_user_payloads_name_the_field(payload: object, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_user_event(payload)


def test_mark_event_forms() -> None:
    """One update, the combined envelope, a list; other payloads give no marks."""
    raw = {"e": "markPriceUpdate", "E": 3, "s": "BTCUSDT", "p": "65000.10"}
    mark = MarkUpdate(3, "BTCUSDT", Decimal("65000.10"))
    assert parse_mark_event(raw) == [mark]
    assert parse_mark_event({"stream": "btcusdt@markPrice@1s", "data": raw}) == [mark]
    assert parse_mark_event([raw, raw]) == [mark, mark]
    assert parse_mark_event({"result": None, "id": 1}) == []
    assert parse_mark_event("hello") == []


@pytest.mark.parametrize("price", ["abc", "NaN", "-Infinity", "0", "-1", None, 1.5])
def test_malformed_marks_raise_value_error(price: object) -> None:
    with pytest.raises(ValueError, match=r"markPriceUpdate\.p"):
        parse_mark_event({"e": "markPriceUpdate", "E": 3, "s": "BTCUSDT", "p": price})
