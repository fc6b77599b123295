"""Regular orders: shapes as Binance documents them, and every rejection SPEC §10 lists."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.sim import SimConfig
from app.sim.config import SymbolSpec
from tests.sim.conftest import RawClient, dec, open_long, quiet_config

ORDER_FIELDS = {
    "orderId", "symbol", "status", "clientOrderId", "price", "avgPrice", "origQty",
    "executedQty", "cumQty", "cumQuote", "timeInForce", "type", "reduceOnly", "closePosition",
    "side", "positionSide", "stopPrice", "workingType", "priceProtect", "origType",
    "priceMatch", "selfTradePreventionMode", "goodTillDate", "updateTime",
}


@pytest.fixture
def sim_config() -> SimConfig:
    """Defaults plus a symbol whose step is coarser than its quantity precision (for -4023)."""
    base = quiet_config()
    coarse = replace(base.symbols[1], symbol="ETCUSDT", base_asset="ETC", step_size=dec("0.05"),
                     min_qty=dec("0.05"), min_notional=dec("5"), price=dec("20.00"),
                     min_price=dec("1.00"))
    return replace(base, symbols=(*base.symbols, coarse))


def market(side: str = "BUY", qty: str = "0.010", **extra: str) -> dict[str, object]:
    return {"symbol": "BTCUSDT", "side": side, "type": "MARKET", "quantity": qty, **extra}


def limit(side: str, price: str, qty: str = "0.010", **extra: str) -> dict[str, object]:
    return {"symbol": "BTCUSDT", "side": side, "type": "LIMIT", "quantity": qty,
            "price": price, "timeInForce": "GTC", **extra}


async def test_market_result_is_filled_with_string_decimals(raw: RawClient) -> None:
    """RESULT answers the final FILLED state; every number is a string with the precision."""
    answer = await raw.signed("POST", "/fapi/v1/order",
                              market(newClientOrderId="xd-1", newOrderRespType="RESULT"))
    body = answer.body
    assert answer.status == 200
    assert set(body) == ORDER_FIELDS
    assert body["status"] == "FILLED"
    assert body["clientOrderId"] == "xd-1"
    assert (body["origQty"], body["executedQty"], body["cumQty"]) == ("0.010",) * 3
    assert body["price"] == "0.00"
    assert body["avgPrice"] == "65006.50000"          # mark 65000 + 1 bp, on the 0.10 tick
    assert body["cumQuote"] == "650.06500"
    assert isinstance(body["orderId"], int)
    assert body["reduceOnly"] is False


async def test_market_ack_reports_new_although_filled(raw: RawClient) -> None:
    """The default ACK answer says NEW with zero executed, as Binance's does."""
    answer = await raw.signed("POST", "/fapi/v1/order", market(newClientOrderId="ack-1"))
    assert (answer.body["status"], answer.body["executedQty"]) == ("NEW", "0.000")
    query = await raw.signed("GET", "/fapi/v1/order",
                             {"symbol": "BTCUSDT", "origClientOrderId": "ack-1"})
    assert query.body["status"] == "FILLED"
    assert "time" in query.body
    assert "cumQty" not in query.body


async def test_limit_order_rests_and_cancels(raw: RawClient) -> None:
    """A GTC limit away from the mark stays NEW, is listed open, and cancels."""
    placed = await raw.signed("POST", "/fapi/v1/order", limit("BUY", "64000.00",
                                                                newClientOrderId="lim-1"))
    assert placed.body["status"] == "NEW"
    listed = await raw.signed("GET", "/fapi/v1/openOrders", {"symbol": "BTCUSDT"})
    assert [o["clientOrderId"] for o in listed.body] == ["lim-1"]
    cancelled = await raw.signed("DELETE", "/fapi/v1/order",
                                 {"symbol": "BTCUSDT", "origClientOrderId": "lim-1"})
    assert cancelled.body["status"] == "CANCELED"


async def test_cancel_all_open_orders(raw: RawClient) -> None:
    """DELETE allOpenOrders cancels the symbol's open orders with Binance's answer."""
    await raw.signed("POST", "/fapi/v1/order", limit("BUY", "64000.00"))
    await raw.signed("POST", "/fapi/v1/order", limit("BUY", "63000.00"))
    answer = await raw.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": "BTCUSDT"})
    assert answer.body == {"code": 200, "msg": "The operation of cancel all open order is done."}
    assert (await raw.signed("GET", "/fapi/v1/openOrders", {"symbol": "BTCUSDT"})).body == []


async def test_reduce_only_close_caps_at_position(raw: RawClient) -> None:
    """A reduce-only SELL larger than the long closes exactly the position."""
    await open_long(raw, qty="0.010")
    answer = await raw.signed("POST", "/fapi/v1/order", market(
        "SELL", "0.050", reduceOnly="true", newOrderRespType="RESULT"))
    assert answer.body["executedQty"] == "0.010"
    state = await raw.admin("GET", "/_sim/state")
    assert state.body["positions"] == []


async def test_same_client_id_accepted_again_after_fill(raw: RawClient) -> None:
    """Binance rejects a reused id only while the first order is open: filled → accepted."""
    await open_long(raw, client_id="dup")
    again = await raw.signed("POST", "/fapi/v1/order", market(newClientOrderId="dup"))
    assert again.status == 200


REJECTIONS = [
    ("unknown symbol", {"symbol": "NOPEUSDT", "side": "BUY", "type": "MARKET",
                        "quantity": "1"}, -1121, "Invalid symbol."),
    ("bad side", market("HOLD"), -1117, "Invalid side."),
    ("bad type", {**market(), "type": "ICEBERG"}, -1116, "Invalid orderType."),
    ("missing quantity", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET"}, -1102,
     "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed."),
    ("qty precision", market(qty="0.0015"), -1111,
     "Precision is over the maximum defined for this asset."),
    ("price precision", limit("BUY", "64000.123"), -1111,
     "Precision is over the maximum defined for this asset."),
    ("price tick", limit("BUY", "64000.15"), -4014, "Price not increased by tick size."),
    ("qty step", {"symbol": "ETCUSDT", "side": "BUY", "type": "MARKET", "quantity": "1.02"},
     -4023, "Qty not increased by step size."),
    ("qty zero", market(qty="0"), -4003, "Quantity less than or equal to zero."),
    ("min notional", market(qty="0.001"), -4164,
     "Order's notional must be no smaller than 100 (unless you choose reduce only)."),
    ("margin", market(qty="100.000"), -2019, "Margin is insufficient."),
    ("reduce only when flat", market("SELL", reduceOnly="true"), -2022,
     "ReduceOnly Order is rejected."),
    ("client id chars", market(newClientOrderId="bad id!"), -4015,
     "Client order id is not valid."),
    ("client id length", market(newClientOrderId="x" * 37), -4015,
     "Client order id is not valid."),
    ("hedge side", market(positionSide="LONG"), -4061,
     "Order's position side does not match user's setting."),
]


@pytest.mark.parametrize(("params", "code", "msg"),
                         [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
async def test_order_rejections(raw: RawClient, params: dict[str, object], code: int,
                                msg: str) -> None:
    """Each rule answers HTTP 400 with Binance's code and message, and places nothing."""
    answer = await raw.signed("POST", "/fapi/v1/order", params)
    assert (answer.status, answer.body) == (400, {"code": code, "msg": msg})
    assert (await raw.admin("GET", "/_sim/orders")).body == []


@pytest.mark.parametrize("order_type", ["STOP", "STOP_MARKET", "TAKE_PROFIT",
                                        "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"])
async def test_conditional_types_on_legacy_endpoint_answer_4120(
        raw: RawClient, order_type: str) -> None:
    """Since 2025-12 conditional types on /fapi/v1/order answer -4120."""
    answer = await raw.signed("POST", "/fapi/v1/order", {
        "symbol": "BTCUSDT", "side": "SELL", "type": order_type, "quantity": "0.010",
        "stopPrice": "60000", "price": "60000", "timeInForce": "GTC"})
    assert (answer.status, answer.body) == (400, {
        "code": -4120, "msg": "Order type not supported for this endpoint. Please use the "
        "Algo Order API endpoints instead."})


async def test_duplicate_client_id_among_open_orders(raw: RawClient) -> None:
    """A client id in use by an open order answers -4116."""
    await raw.signed("POST", "/fapi/v1/order", limit("BUY", "64000.00", newClientOrderId="o1"))
    answer = await raw.signed("POST", "/fapi/v1/order",
                              limit("BUY", "63000.00", newClientOrderId="o1"))
    assert (answer.status, answer.body) == (400, {"code": -4116,
                                                  "msg": "ClientOrderId is duplicated."})


async def test_percent_price_bounds_limit_orders(raw: RawClient) -> None:
    """A BUY limit above mark × multiplierUp answers -4016."""
    answer = await raw.signed("POST", "/fapi/v1/order", limit("BUY", "70000.00"))
    assert answer.body == {"code": -4016, "msg": "Limit price can't be higher than 68250.00."}


async def test_post_only_that_would_take_is_rejected(raw: RawClient) -> None:
    """A GTX limit that would cross the mark answers -5022."""
    answer = await raw.signed("POST", "/fapi/v1/order",
                              {**limit("BUY", "65100.00"), "timeInForce": "GTX"})
    assert answer.body["code"] == -5022


async def test_query_unknown_order_answers_2013(raw: RawClient) -> None:
    """GET order for an unknown client id answers 400 -2013."""
    answer = await raw.signed("GET", "/fapi/v1/order",
                              {"symbol": "BTCUSDT", "origClientOrderId": "never"})
    assert (answer.status, answer.body) == (400, {"code": -2013,
                                                  "msg": "Order does not exist."})


async def test_cancel_unknown_order_answers_2011(raw: RawClient) -> None:
    """DELETE order for an unknown or filled order answers 400 -2011."""
    await open_long(raw, client_id="filled")
    for client_id in ("never", "filled"):
        answer = await raw.signed("DELETE", "/fapi/v1/order",
                                  {"symbol": "BTCUSDT", "origClientOrderId": client_id})
        assert (answer.status, answer.body) == (400, {"code": -2011,
                                                      "msg": "Unknown order sent."})


async def test_leverage_out_of_range_answers_4028(raw: RawClient) -> None:
    """Leverage outside 1–125 answers -4028 naming the value."""
    answer = await raw.signed("POST", "/fapi/v1/leverage", {"symbol": "BTCUSDT",
                                                            "leverage": 200})
    assert (answer.status, answer.body) == (400, {"code": -4028,
                                                  "msg": "Leverage 200 is not valid"})


async def test_margin_type_unchanged_answers_4046(raw: RawClient) -> None:
    """Setting the margin type it already has answers -4046."""
    answer = await raw.signed("POST", "/fapi/v1/marginType",
                              {"symbol": "BTCUSDT", "marginType": "CROSSED"})
    assert (answer.status, answer.body) == (400, {"code": -4046,
                                                  "msg": "No need to change margin type."})


async def test_margin_type_with_open_orders_answers_4047(raw: RawClient) -> None:
    """Changing margin type with an open order answers -4047."""
    await raw.signed("POST", "/fapi/v1/order", limit("BUY", "64000.00"))
    answer = await raw.signed("POST", "/fapi/v1/marginType",
                              {"symbol": "BTCUSDT", "marginType": "ISOLATED"})
    assert (answer.status, answer.body) == (400, {
        "code": -4047, "msg": "Margin type cannot be changed if there exists open orders."})


async def test_margin_type_with_position_answers_4048(raw: RawClient) -> None:
    """Changing margin type with a position answers -4048."""
    await open_long(raw)
    answer = await raw.signed("POST", "/fapi/v1/marginType",
                              {"symbol": "BTCUSDT", "marginType": "ISOLATED"})
    assert (answer.status, answer.body) == (400, {
        "code": -4048, "msg": "Margin type cannot be changed if there exists position."})


async def test_unknown_path_answers_404(raw: RawClient) -> None:
    """A path the API does not have answers 404 with a JSON error."""
    answer = await raw.public("/fapi/v1/nothing")
    assert answer.status == 404
    assert answer.body["code"] == -5000


def test_symbol_spec_is_frozen() -> None:
    """Symbol specs are immutable values."""
    spec: SymbolSpec = SimConfig().symbols[0]
    with pytest.raises(AttributeError):
        spec.symbol = "X"  # type: ignore[misc]


async def test_partial_fill_fills_the_ratio_and_expires_the_rest(raw: RawClient) -> None:
    """fault partial_fill: a MARKET order fills fill_ratio of its quantity (rounded down to the
    step), the rest expires: EXPIRED with executedQty = the filled part, and that is the
    position."""
    plan = {"seed": 1, "rules": [{"endpoint": "POST /fapi/v1/order", "fault": "partial_fill",
                                  "probability": 1, "fill_ratio": 0.3}]}
    assert (await raw.admin("POST", "/_sim/faults", plan)).status == 200
    answer = await raw.signed("POST", "/fapi/v1/order", market(
        qty="0.015", newClientOrderId="t-part", newOrderRespType="RESULT"))
    assert answer.status == 200, answer.body
    assert (answer.body["status"], answer.body["origQty"], answer.body["executedQty"]) == (
        "EXPIRED", "0.015", "0.004")
    query = await raw.signed("GET", "/fapi/v1/order", {"symbol": "BTCUSDT",
                                                       "origClientOrderId": "t-part"})
    assert (query.body["status"], query.body["executedQty"]) == ("EXPIRED", "0.004")
    state = await raw.admin("GET", "/_sim/state")
    assert state.body["positions"][0]["positionAmt"] == "0.004"


async def test_partial_fill_fills_at_least_one_step(raw: RawClient) -> None:
    """A ratio that rounds to nothing still fills one step."""
    plan = {"seed": 1, "rules": [{"endpoint": "POST /fapi/v1/order", "fault": "partial_fill",
                                  "probability": 1, "fill_ratio": 0.01}]}
    assert (await raw.admin("POST", "/_sim/faults", plan)).status == 200
    answer = await raw.signed("POST", "/fapi/v1/order", market(
        qty="0.010", newOrderRespType="RESULT"))
    assert (answer.body["status"], answer.body["executedQty"]) == ("EXPIRED", "0.001")


@pytest.mark.parametrize("ratio", [0, 1, 1.5, "half"])
async def test_partial_fill_ratio_out_of_range_is_refused(raw: RawClient, ratio: object) -> None:
    """fill_ratio must be a number strictly between 0 and 1; the plan names the field."""
    plan = {"seed": 1, "rules": [{"endpoint": "POST /fapi/v1/order", "fault": "partial_fill",
                                  "probability": 1, "fill_ratio": ratio}]}
    answer = await raw.admin("POST", "/_sim/faults", plan)
    assert answer.status == 400
    assert "rules[0].fill_ratio" in answer.body["error"]


async def test_position_mode_is_reported_and_changed_as_binance_does(raw: RawClient) -> None:
    """``positionSide/dual``: one-way at start; a change answers success, the same mode
    again -4059, a change with a position -4068."""
    answer = await raw.signed("GET", "/fapi/v1/positionSide/dual")
    assert (answer.status, answer.body) == (200, {"dualSidePosition": False})
    answer = await raw.signed("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": "true"})
    assert (answer.status, answer.body) == (200, {"code": 200, "msg": "success"})
    assert (await raw.signed("GET", "/fapi/v1/positionSide/dual")).body == {
        "dualSidePosition": True}
    answer = await raw.signed("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": "true"})
    assert answer.body == {"code": -4059, "msg": "No need to change position side."}
    await raw.signed("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": "false"})
    await raw.signed("POST", "/fapi/v1/order", market())
    answer = await raw.signed("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": "true"})
    assert answer.body == {"code": -4068,
                           "msg": "Position side cannot be changed if there exists position."}
