"""Lookups and lists the order indexes serve (``app/sim/book.py``): by client id, open orders
apart from the history, per-symbol history and trades — the answers Binance gives, whatever
the history holds."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.sim.errors import ApiError
from app.sim.exchange import Exchange
from app.sim.models import Trade
from tests.sim.conftest import RawClient, SimClock, dec, open_long, quiet_config

BTC, ETH = "BTCUSDT", "ETHUSDT"


def limit(symbol: str = BTC, price: str = "64000.00", qty: str = "0.010",
          **extra: str) -> dict[str, str]:
    return {"symbol": symbol, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
            "quantity": qty, "price": price, **extra}


async def place(raw: RawClient, params: dict[str, str]) -> int:
    answer = await raw.signed("POST", "/fapi/v1/order", params)
    assert answer.status == 200, answer.body
    order_id: int = answer.body["orderId"]
    return order_id


async def market(raw: RawClient, symbol: str = BTC, client_id: str | None = None,
                 side: str = "BUY") -> int:
    params = {"symbol": symbol, "side": side, "type": "MARKET",
              "quantity": "0.010" if symbol == BTC else "0.100"}
    if client_id is not None:
        params["newClientOrderId"] = client_id
    return await place(raw, params)


async def query(raw: RawClient, client_id: str, symbol: str = BTC) -> dict[str, object]:
    answer = await raw.signed("GET", "/fapi/v1/order",
                              {"symbol": symbol, "origClientOrderId": client_id})
    assert answer.status == 200, answer.body
    body: dict[str, object] = answer.body
    return body


# ----------------------------------------------------------------- by client id

async def test_query_by_client_id_answers_the_latest_order_with_it(raw: RawClient) -> None:
    """A client id reused after its order filled names the newer order."""
    await market(raw, client_id="same")
    newer = await market(raw, client_id="same", side="SELL")
    assert (await query(raw, "same"))["orderId"] == newer


async def test_query_by_client_id_sees_only_the_requests_symbol(raw: RawClient) -> None:
    """The same client id on another symbol, even later, is not the one a query finds."""
    btc = await market(raw, client_id="same")
    await market(raw, ETH, client_id="same")
    assert (await query(raw, "same"))["orderId"] == btc


async def test_query_by_client_id_skips_an_order_not_yet_visible(raw: RawClient) -> None:
    """While the newer order is hidden (delayed_visibility), the older one is found."""
    older = await market(raw, client_id="same")
    plan = {"seed": 1, "rules": [{"endpoint": "POST /fapi/v1/order",
                                  "fault": "delayed_visibility", "probability": 1,
                                  "visibility_delay_s": 5}]}
    assert (await raw.admin("POST", "/_sim/faults", plan)).status == 200
    await market(raw, client_id="same", side="SELL")
    assert (await query(raw, "same"))["orderId"] == older


# ----------------------------------------------------------------- open orders

async def test_open_orders_of_every_symbol_in_acceptance_order(raw: RawClient) -> None:
    """openOrders without a symbol lists all symbols' open orders, oldest first."""
    await place(raw, limit(newClientOrderId="b-1"))
    await place(raw, limit(ETH, "3100.00", newClientOrderId="e-1"))
    await place(raw, limit(price="63000.00", newClientOrderId="b-2"))
    listed = await raw.signed("GET", "/fapi/v1/openOrders", {})
    assert [o["clientOrderId"] for o in listed.body] == ["b-1", "e-1", "b-2"]


async def test_cancel_all_leaves_other_symbols_open(raw: RawClient) -> None:
    """DELETE allOpenOrders for one symbol cancels only that symbol's open orders."""
    await place(raw, limit(newClientOrderId="b-1"))
    await place(raw, limit(ETH, "3100.00", newClientOrderId="e-1"))
    await raw.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": BTC})
    listed = await raw.signed("GET", "/fapi/v1/openOrders", {})
    assert [o["clientOrderId"] for o in listed.body] == ["e-1"]


async def test_canceled_limit_releases_its_margin(raw: RawClient) -> None:
    """A resting LIMIT holds margin in availableBalance until it is canceled."""
    async def available() -> Decimal:
        return dec((await raw.signed("GET", "/fapi/v2/balance", {})).body[0][
            "availableBalance"])

    before = await available()
    await place(raw, limit(newClientOrderId="held"))
    assert await available() == before - Decimal("64000") * Decimal("0.010") / 20
    await raw.signed("DELETE", "/fapi/v1/order", {"symbol": BTC, "origClientOrderId": "held"})
    assert await available() == before


async def test_position_risk_v3_lists_a_flat_symbol_only_while_an_algo_is_open(
        raw: RawClient) -> None:
    """v3 positionRisk shows a flat symbol with an open algo order, and drops it after."""
    placed = await raw.signed("POST", "/fapi/v1/algoOrder", {
        "algoType": "CONDITIONAL", "symbol": BTC, "side": "SELL", "type": "STOP_MARKET",
        "triggerPrice": "60000.00", "closePosition": "true", "clientAlgoId": "t-sl"})
    assert placed.status == 200, placed.body
    rows = (await raw.signed("GET", "/fapi/v3/positionRisk", {})).body
    assert [r["symbol"] for r in rows] == [BTC]
    await raw.signed("DELETE", "/fapi/v1/algoOrder", {"clientAlgoId": "t-sl"})
    assert (await raw.signed("GET", "/fapi/v3/positionRisk", {})).body == []


# ----------------------------------------------------------------- history

async def test_all_orders_from_order_id_in_id_order_up_to_limit(raw: RawClient) -> None:
    """allOrders answers the symbol's orders from orderId on, in id order, at most limit."""
    ids = [await market(raw, side="BUY" if i % 2 else "SELL") for i in range(4)]
    await market(raw, ETH)
    answer = await raw.signed("GET", "/fapi/v1/allOrders",
                              {"symbol": BTC, "orderId": ids[1], "limit": 2})
    assert [o["orderId"] for o in answer.body] == ids[1:3]


async def test_all_orders_without_order_id_are_the_most_recent(raw: RawClient) -> None:
    """allOrders without orderId answers the symbol's most recent limit orders, oldest first."""
    ids = [await market(raw, side="BUY" if i % 2 else "SELL") for i in range(4)]
    await market(raw, ETH)
    answer = await raw.signed("GET", "/fapi/v1/allOrders", {"symbol": BTC, "limit": 2})
    assert [o["orderId"] for o in answer.body] == ids[2:]


async def test_user_trades_are_the_symbols_last_trades(raw: RawClient) -> None:
    """userTrades answers the last limit trades of the symbol, oldest first."""
    ids = [await market(raw, side="BUY" if i % 2 else "SELL") for i in range(3)]
    await market(raw, ETH)
    answer = await raw.signed("GET", "/fapi/v1/userTrades", {"symbol": BTC, "limit": 2})
    assert [t["orderId"] for t in answer.body] == ids[1:]


# ----------------------------------------------------------------- in process

@pytest.fixture
def exchange() -> Exchange:
    return Exchange(quiet_config(), SimClock())


def test_partially_filled_order_is_still_open(exchange: Exchange) -> None:
    """A PARTIALLY_FILLED order is listed open and keeps its client id taken (-4116)."""
    exchange.orders.place(limit(newClientOrderId="part"))
    st = exchange.state
    order = st.orders.latest("part", st.now())
    assert order is not None
    st.record_fill(order, Trade(order.spec, st.next_trade_id(), order.order_id, "BUY",
                                order.price, Decimal("0.004"), Decimal(0), Decimal(0),
                                st.now()))
    listed = exchange.orders.list_open({"symbol": BTC})
    assert [(o["clientOrderId"], o["status"]) for o in listed] == [("part", "PARTIALLY_FILLED")]
    with pytest.raises(ApiError) as caught:
        exchange.orders.place(limit(price="63000.00", newClientOrderId="part"))
    assert caught.value.code == -4116


def test_max_open_orders_counts_only_open_orders(exchange: Exchange) -> None:
    """The 201st open LIMIT of a symbol answers -2025; one canceled makes room again."""
    for i in range(200):
        exchange.orders.place(limit(qty="0.002", newClientOrderId=f"lim-{i}"))
    with pytest.raises(ApiError) as caught:
        exchange.orders.place(limit(qty="0.002"))
    assert caught.value.code == -2025
    exchange.orders.cancel({"symbol": BTC, "origClientOrderId": "lim-0"})
    exchange.orders.place(limit(qty="0.002"))


async def test_history_outlives_open_state(raw: RawClient) -> None:
    """A filled order leaves openOrders but stays in allOrders and answers its query."""
    await open_long(raw, client_id="gone")
    assert (await raw.signed("GET", "/fapi/v1/openOrders", {"symbol": BTC})).body == []
    history = await raw.signed("GET", "/fapi/v1/allOrders", {"symbol": BTC})
    assert [o["clientOrderId"] for o in history.body] == ["gone"]
    assert (await query(raw, "gone"))["status"] == "FILLED"
