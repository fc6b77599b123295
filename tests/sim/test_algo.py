"""Algo (conditional) orders: placement, shapes, queries, cancels and triggering."""

from __future__ import annotations

from tests.sim.conftest import RawClient, open_long

ALGO_FIELDS = {
    "algoId", "clientAlgoId", "algoType", "orderType", "symbol", "side", "positionSide",
    "timeInForce", "quantity", "algoStatus", "triggerPrice", "price", "icebergQuantity",
    "selfTradePreventionMode", "workingType", "priceMatch", "closePosition", "priceProtect",
    "reduceOnly", "activatePrice", "callbackRate", "createTime", "updateTime", "triggerTime",
    "goodTillDate",
}


def stop(trigger: str = "60000.00", client_id: str = "t-sl", side: str = "SELL",
         order_type: str = "STOP_MARKET", **extra: str) -> dict[str, object]:
    return {"algoType": "CONDITIONAL", "symbol": "BTCUSDT", "side": side, "type": order_type,
            "triggerPrice": trigger, "closePosition": "true", "clientAlgoId": client_id,
            "workingType": "MARK_PRICE", "priceProtect": "true", **extra}


async def test_stop_market_algo_shape(raw: RawClient) -> None:
    """POST algoOrder answers the algo object: algoId, clientAlgoId, orderType, algoStatus."""
    await open_long(raw)
    answer = await raw.signed("POST", "/fapi/v1/algoOrder", stop())
    body = answer.body
    assert answer.status == 200
    assert set(body) == ALGO_FIELDS
    assert (body["clientAlgoId"], body["orderType"], body["algoStatus"]) == (
        "t-sl", "STOP_MARKET", "NEW")
    assert body["triggerPrice"] == "60000.00"
    assert body["closePosition"] is True
    assert body["algoId"] > 2**32


async def test_algo_query_adds_actual_fields(raw: RawClient) -> None:
    """GET algoOrder by clientAlgoId answers the object plus actualOrderId etc."""
    await open_long(raw)
    await raw.signed("POST", "/fapi/v1/algoOrder", stop())
    answer = await raw.signed("GET", "/fapi/v1/algoOrder", {"clientAlgoId": "t-sl"})
    assert answer.body["actualOrderId"] == ""
    assert {"actualPrice", "actualType", "actualQty"} <= set(answer.body)


async def test_legacy_endpoints_do_not_see_algo_orders(raw: RawClient) -> None:
    """GET order → -2013, DELETE order → -2011, openOrders omits them."""
    await open_long(raw)
    await raw.signed("POST", "/fapi/v1/algoOrder", stop())
    ids = {"symbol": "BTCUSDT", "origClientOrderId": "t-sl"}
    assert (await raw.signed("GET", "/fapi/v1/order", ids)).code == -2013
    assert (await raw.signed("DELETE", "/fapi/v1/order", ids)).code == -2011
    assert (await raw.signed("GET", "/fapi/v1/openOrders", {"symbol": "BTCUSDT"})).body == []
    algos = await raw.signed("GET", "/fapi/v1/openAlgoOrders", {"symbol": "BTCUSDT"})
    assert [a["clientAlgoId"] for a in algos.body] == ["t-sl"]


async def test_cancel_algo_order(raw: RawClient) -> None:
    """DELETE algoOrder answers Binance's shape (code as a string) and closes it."""
    await open_long(raw)
    placed = await raw.signed("POST", "/fapi/v1/algoOrder", stop())
    answer = await raw.signed("DELETE", "/fapi/v1/algoOrder", {"clientAlgoId": "t-sl"})
    assert answer.body == {"algoId": placed.body["algoId"], "clientAlgoId": "t-sl",
                           "code": "200", "msg": "success"}
    again = await raw.signed("DELETE", "/fapi/v1/algoOrder", {"clientAlgoId": "t-sl"})
    assert (again.status, again.code) == (400, -2011)


async def test_cancel_all_algo_orders(raw: RawClient) -> None:
    """DELETE algoOpenOrders cancels every open conditional order of the symbol."""
    await open_long(raw)
    await raw.signed("POST", "/fapi/v1/algoOrder", stop())
    await raw.signed("POST", "/fapi/v1/algoOrder", stop(
        "70000.00", "t-tp", order_type="TAKE_PROFIT_MARKET"))
    answer = await raw.signed("DELETE", "/fapi/v1/algoOpenOrders", {"symbol": "BTCUSDT"})
    assert answer.body["code"] == 200
    assert (await raw.signed("GET", "/fapi/v1/openAlgoOrders", {})).body == []


async def test_stop_that_would_trigger_at_once_answers_2021(raw: RawClient) -> None:
    """A SELL stop above the mark would fire immediately: -2021."""
    await open_long(raw)
    answer = await raw.signed("POST", "/fapi/v1/algoOrder", stop("66000.00"))
    assert (answer.status, answer.body) == (400, {"code": -2021,
                                                  "msg": "Order would immediately trigger."})


async def test_take_profit_that_would_trigger_at_once_answers_2021(raw: RawClient) -> None:
    """A SELL take-profit below the mark would fire immediately: -2021."""
    answer = await raw.signed("POST", "/fapi/v1/algoOrder", stop(
        "64000.00", order_type="TAKE_PROFIT_MARKET"))
    assert answer.code == -2021


async def test_duplicate_client_algo_id_while_open(raw: RawClient) -> None:
    """An open algo order's clientAlgoId cannot be reused: -4116."""
    await raw.signed("POST", "/fapi/v1/algoOrder", stop())
    answer = await raw.signed("POST", "/fapi/v1/algoOrder", stop("59000.00"))
    assert answer.code == -4116


async def test_close_position_forbids_quantity(raw: RawClient) -> None:
    """closePosition=true with a quantity answers -1106 naming 'quantity'."""
    answer = await raw.signed("POST", "/fapi/v1/algoOrder", stop(quantity="0.010"))
    assert answer.body == {"code": -1106, "msg": "Parameter 'quantity' sent when not required."}


async def test_trigger_price_on_tick(raw: RawClient) -> None:
    """A trigger price off the tick grid answers -4014."""
    answer = await raw.signed("POST", "/fapi/v1/algoOrder", stop("60000.05"))
    assert answer.code == -4014


async def test_stop_triggers_when_mark_crosses_and_closes_position(raw: RawClient) -> None:
    """Mark ≤ trigger fires the SELL stop: the long is closed, the take-profit stays open."""
    await open_long(raw, qty="0.020")
    await raw.signed("POST", "/fapi/v1/algoOrder", stop())
    await raw.signed("POST", "/fapi/v1/algoOrder",
                     stop("70000.00", "t-tp", order_type="TAKE_PROFIT_MARKET"))
    moved = await raw.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": "59990.0"})
    assert moved.status == 200
    state = await raw.admin("GET", "/_sim/state")
    assert state.body["positions"] == []
    sl = await raw.signed("GET", "/fapi/v1/algoOrder", {"clientAlgoId": "t-sl"})
    assert sl.body["algoStatus"] == "FINISHED"
    assert sl.body["actualOrderId"] != ""
    assert sl.body["actualQty"] == "0.020"
    tp = await raw.signed("GET", "/fapi/v1/algoOrder", {"clientAlgoId": "t-tp"})
    assert tp.body["algoStatus"] == "NEW"      # the orphan the daemon must cancel
    rows = (await raw.admin("GET", "/_sim/orders")).body
    triggered = [r for r in rows if r["kind"] == "triggered"]
    assert len(triggered) == 1
    assert triggered[0]["client_id"] == "t-sl"
    assert (triggered[0]["qty"], triggered[0]["executed_qty"]) == ("0", "0.020")
    assert triggered[0]["side"] == "SELL"


async def test_triggered_order_visible_on_legacy_endpoint(raw: RawClient) -> None:
    """The spawned market order is a regular order, found by its actualOrderId."""
    await open_long(raw)
    await raw.signed("POST", "/fapi/v1/algoOrder", stop())
    await raw.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": "59000.0"})
    sl = await raw.signed("GET", "/fapi/v1/algoOrder", {"clientAlgoId": "t-sl"})
    order = await raw.signed("GET", "/fapi/v1/order", {
        "symbol": "BTCUSDT", "orderId": sl.body["actualOrderId"]})
    assert order.body["status"] == "FILLED"
    assert order.body["origType"] == "STOP_MARKET"
    assert order.body["type"] == "MARKET"


async def test_close_position_stop_on_flat_account_expires(raw: RawClient) -> None:
    """A close-position stop that fires with nothing to close expires without an order."""
    await raw.signed("POST", "/fapi/v1/algoOrder", stop())
    await raw.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": "59000.0"})
    sl = await raw.signed("GET", "/fapi/v1/algoOrder", {"clientAlgoId": "t-sl"})
    assert sl.body["algoStatus"] == "EXPIRED"
    rows = (await raw.admin("GET", "/_sim/orders")).body
    assert [r["kind"] for r in rows] == ["algo"]


async def test_take_profit_for_short(raw: RawClient) -> None:
    """A BUY take-profit fires when the mark falls to it and closes the short."""
    await raw.signed("POST", "/fapi/v1/order", {
        "symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.010"})
    await raw.signed("POST", "/fapi/v1/algoOrder", stop(
        "60000.00", "t-tp", side="BUY", order_type="TAKE_PROFIT_MARKET"))
    await raw.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": "60000.0"})
    assert (await raw.admin("GET", "/_sim/state")).body["positions"] == []


async def test_trailing_stop_fires_after_pullback(raw: RawClient) -> None:
    """A SELL trailing stop follows the high and fires on a callbackRate pullback."""
    await open_long(raw)
    answer = await raw.signed("POST", "/fapi/v1/algoOrder", {
        "algoType": "CONDITIONAL", "symbol": "BTCUSDT", "side": "SELL",
        "type": "TRAILING_STOP_MARKET", "quantity": "0.010", "reduceOnly": "true",
        "callbackRate": "1", "clientAlgoId": "t-trail"})
    assert answer.status == 200, answer.body
    for price in ("66000.0", "67000.0", "66500.0"):
        await raw.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": price})
    assert len((await raw.admin("GET", "/_sim/state")).body["positions"]) == 1
    await raw.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": "66320.0"})
    assert (await raw.admin("GET", "/_sim/state")).body["positions"] == []


# ----------------------------------------------------------------- -4130

CLOSE_POSITION_EXISTS = {
    "code": -4130,
    "msg": "An open stop or take profit order with GTE and closePosition in the direction is "
           "existing.",
}


async def algo_status(raw: RawClient, client_id: str) -> str:
    answer = await raw.signed("GET", "/fapi/v1/algoOrder", {"clientAlgoId": client_id})
    assert answer.status == 200, answer.body
    status: str = answer.body["algoStatus"]
    return status


async def place(raw: RawClient, params: dict[str, object]) -> None:
    answer = await raw.signed("POST", "/fapi/v1/algoOrder", params)
    assert answer.status == 200, answer.body


async def test_second_close_position_stop_of_a_side_answers_4130(raw: RawClient) -> None:
    """A second open closePosition STOP_MARKET of the same side: HTTP 400, -4130."""
    await open_long(raw)
    await place(raw, stop())
    answer = await raw.signed("POST", "/fapi/v1/algoOrder", stop("59000.00", "t-sl-2"))
    assert (answer.status, answer.body) == (400, CLOSE_POSITION_EXISTS)


async def test_second_close_position_take_profit_of_a_side_answers_4130(
        raw: RawClient) -> None:
    """The same rule holds for TAKE_PROFIT_MARKET."""
    await open_long(raw)
    await place(raw, stop("70000.00", "t-tp", order_type="TAKE_PROFIT_MARKET"))
    answer = await raw.signed("POST", "/fapi/v1/algoOrder", stop(
        "71000.00", "t-tp-2", order_type="TAKE_PROFIT_MARKET"))
    assert answer.body == CLOSE_POSITION_EXISTS


async def test_close_position_stop_and_take_profit_side_by_side(raw: RawClient) -> None:
    """A closePosition stop-loss and take-profit of the same side are both accepted."""
    await open_long(raw)
    await place(raw, stop())
    await place(raw, stop("70000.00", "t-tp", order_type="TAKE_PROFIT_MARKET"))
    listed = await raw.signed("GET", "/fapi/v1/openAlgoOrders", {"symbol": "BTCUSDT"})
    assert [a["clientAlgoId"] for a in listed.body] == ["t-sl", "t-tp"]


async def test_close_position_stops_of_both_sides_coexist(raw: RawClient) -> None:
    """A SELL and a BUY closePosition STOP_MARKET are different directions: both accepted."""
    await place(raw, stop())
    await place(raw, stop("70000.00", "t-sl-buy", side="BUY"))


async def test_close_position_stop_beside_a_quantity_stop(raw: RawClient) -> None:
    """A reduce-only stop with a quantity does not count: the closePosition one is accepted."""
    await open_long(raw)
    await place(raw, {**stop(), "closePosition": "", "quantity": "0.010",
                      "reduceOnly": "true", "clientAlgoId": "t-sl-qty"})
    await place(raw, stop())


async def test_close_position_stop_accepted_after_the_first_was_canceled(
        raw: RawClient) -> None:
    """Once the first closePosition stop is canceled, a new one is accepted."""
    await open_long(raw)
    await place(raw, stop())
    await raw.signed("DELETE", "/fapi/v1/algoOrder", {"clientAlgoId": "t-sl"})
    await place(raw, stop("59000.00", "t-sl-2"))


async def test_close_position_stop_accepted_after_the_first_triggered(raw: RawClient) -> None:
    """Once the first closePosition stop has triggered, a new one is accepted."""
    await open_long(raw)
    await place(raw, stop())
    await raw.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": "59990.0"})
    assert await algo_status(raw, "t-sl") == "FINISHED"
    await open_long(raw, client_id="t-entry-2")
    await place(raw, stop("59000.00", "t-sl-2"))


# ----------------------------------------------------------------- orphans

async def test_position_closed_by_an_order_leaves_close_position_algos_open(
        raw: RawClient) -> None:
    """Closing the long with a MARKET order leaves its closePosition stop and take-profit NEW."""
    await open_long(raw)
    await place(raw, stop())
    await place(raw, stop("70000.00", "t-tp", order_type="TAKE_PROFIT_MARKET"))
    closed = await raw.signed("POST", "/fapi/v1/order", {
        "symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.010",
        "reduceOnly": "true"})
    assert closed.status == 200, closed.body
    assert (await raw.admin("GET", "/_sim/state")).body["positions"] == []
    assert [await algo_status(raw, cid) for cid in ("t-sl", "t-tp")] == ["NEW", "NEW"]


async def test_position_liquidated_leaves_close_position_algos_open(raw: RawClient) -> None:
    """A liquidation (/_sim/liquidate) leaves the closePosition stop NEW."""
    await open_long(raw)
    await place(raw, stop())
    liquidated = await raw.admin("POST", "/_sim/liquidate", {"symbol": "BTCUSDT"})
    assert liquidated.status == 200, liquidated.body
    assert await algo_status(raw, "t-sl") == "NEW"


async def test_orphan_stop_firing_flat_expires_without_a_position(raw: RawClient) -> None:
    """An orphaned closePosition stop that fires with no position ends EXPIRED, no order."""
    await open_long(raw)
    await place(raw, stop())
    await raw.signed("POST", "/fapi/v1/order", {
        "symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.010",
        "reduceOnly": "true"})
    await raw.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": "59000.0"})
    assert await algo_status(raw, "t-sl") == "EXPIRED"
    assert (await raw.admin("GET", "/_sim/state")).body["positions"] == []
    rows = (await raw.admin("GET", "/_sim/orders")).body
    assert [r["kind"] for r in rows] == ["order", "algo", "order"]


async def test_orphan_take_profit_after_the_stop_fired_expires(raw: RawClient) -> None:
    """The take-profit left by a triggered stop-loss expires when it fires later, flat."""
    await open_long(raw)
    await place(raw, stop())
    await place(raw, stop("70000.00", "t-tp", order_type="TAKE_PROFIT_MARKET"))
    await raw.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": "59990.0"})
    await raw.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": "70000.0"})
    assert await algo_status(raw, "t-tp") == "EXPIRED"
    assert (await raw.admin("GET", "/_sim/state")).body["positions"] == []
