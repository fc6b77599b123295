"""The real python-binance AsyncClient against the simulator, pointed at it as SPEC §6.2 says.

These prove that the simulator speaks the dialect the gateway will use: form bodies, signatures
over decoded values, algo routing with clientAlgoId, v2/v3 paths and error mapping.
"""

from __future__ import annotations

import pytest
from binance import AsyncClient
from binance.exceptions import BinanceAPIException

from tests.sim.conftest import RawClient


async def test_market_order(binance: AsyncClient) -> None:
    """futures_create_order MARKET with newClientOrderId fills."""
    order = await binance.futures_create_order(
        symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.010",
        newClientOrderId="xdABC1E", newOrderRespType="RESULT")
    assert (order["status"], order["clientOrderId"], order["executedQty"]) == (
        "FILLED", "xdABC1E", "0.010")
    found = await binance.futures_get_order(symbol="BTCUSDT", origClientOrderId="xdABC1E")
    assert found["orderId"] == order["orderId"]


async def test_stop_market_routes_to_algo_endpoint_with_client_algo_id(
        binance: AsyncClient, raw: RawClient) -> None:
    """futures_create_order STOP_MARKET goes to /fapi/v1/algoOrder and keeps clientAlgoId."""
    await binance.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET",
                                       quantity="0.010")
    algo = await binance.futures_create_order(
        symbol="BTCUSDT", side="SELL", type="STOP_MARKET", triggerPrice="60000",
        closePosition="true", workingType="MARK_PRICE", priceProtect="true",
        clientAlgoId="xdABC1S")
    assert (algo["clientAlgoId"], algo["orderType"], algo["algoStatus"]) == (
        "xdABC1S", "STOP_MARKET", "NEW")
    rows = (await raw.admin("GET", "/_sim/orders")).body
    assert [(r["kind"], r["client_id"]) for r in rows][-1] == ("algo", "xdABC1S")
    fetched = await binance.futures_get_algo_order(clientAlgoId="xdABC1S")
    assert fetched["algoId"] == algo["algoId"]


async def test_explicit_algo_order_method(binance: AsyncClient) -> None:
    """futures_create_algo_order places a TAKE_PROFIT_MARKET conditional order."""
    await binance.futures_create_order(symbol="ETHUSDT", side="BUY", type="MARKET",
                                       quantity="0.100")
    algo = await binance.futures_create_algo_order(
        algoType="CONDITIONAL", symbol="ETHUSDT", side="SELL", type="TAKE_PROFIT_MARKET",
        triggerPrice="3500.00", closePosition="true", clientAlgoId="xdETH1T")
    assert algo["orderType"] == "TAKE_PROFIT_MARKET"


async def test_positions_v3_and_v2(binance: AsyncClient) -> None:
    """positionRisk v3 (the library's default) and v2 both show the position."""
    await binance.futures_create_order(symbol="BTCUSDT", side="SELL", type="MARKET",
                                       quantity="0.005")
    v3 = await binance.futures_position_information(symbol="BTCUSDT")
    v2 = await binance.futures_position_information(symbol="BTCUSDT", version=2)
    assert v3[0]["positionAmt"] == "-0.005"
    assert "leverage" not in v3[0]
    assert (v2[0]["positionAmt"], v2[0]["leverage"], v2[0]["marginType"]) == (
        "-0.005", "20", "cross")
    everything = await binance.futures_position_information(version=2)
    assert len(everything) == 5


async def test_balance_and_account(binance: AsyncClient) -> None:
    """futures_account_balance (v3) and futures_account (v2) answer USDT figures."""
    balance = await binance.futures_account_balance()
    assert balance[0]["asset"] == "USDT"
    assert balance[0]["balance"] == "10000.00000000"
    account = await binance.futures_account()
    assert account["totalWalletBalance"] == "10000.00000000"
    assert account["assets"][0]["asset"] == "USDT"


async def test_leverage_and_margin_type(binance: AsyncClient) -> None:
    """Leverage answers Binance's shape; the second identical margin type is -4046."""
    answer = await binance.futures_change_leverage(symbol="BTCUSDT", leverage=10)
    assert answer == {"leverage": 10, "maxNotionalValue": "70000000", "symbol": "BTCUSDT"}
    first = await binance.futures_change_margin_type(symbol="BTCUSDT", marginType="ISOLATED")
    assert first == {"code": 200, "msg": "success"}
    with pytest.raises(BinanceAPIException) as second:
        await binance.futures_change_margin_type(symbol="BTCUSDT", marginType="ISOLATED")
    assert (second.value.status_code, second.value.code) == (400, -4046)
    assert second.value.message == "No need to change margin type."


async def test_cancels(binance: AsyncClient) -> None:
    """Cancel a resting limit order, an algo order, and all algo orders of a symbol."""
    await binance.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET",
                                       quantity="0.010")
    await binance.futures_create_order(
        symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.010", price="64000",
        timeInForce="GTC", newClientOrderId="xdLIM")
    cancelled = await binance.futures_cancel_order(symbol="BTCUSDT",
                                                   origClientOrderId="xdLIM")
    assert cancelled["status"] == "CANCELED"
    await binance.futures_create_algo_order(
        algoType="CONDITIONAL", symbol="BTCUSDT", side="SELL", type="STOP_MARKET",
        triggerPrice="60000", closePosition="true", clientAlgoId="xdSL")
    answer = await binance.futures_cancel_algo_order(clientAlgoId="xdSL")
    assert answer["msg"] == "success"
    await binance.futures_create_algo_order(
        algoType="CONDITIONAL", symbol="BTCUSDT", side="SELL", type="STOP_MARKET",
        triggerPrice="60000", closePosition="true", clientAlgoId="xdSL2")
    done = await binance.futures_cancel_all_algo_open_orders(symbol="BTCUSDT")
    assert done["code"] == 200
    assert await binance.futures_get_open_algo_orders(symbol="BTCUSDT") == []


async def test_rejection_maps_to_binance_api_exception(binance: AsyncClient) -> None:
    """A rejected order surfaces as BinanceAPIException with the status and Binance code."""
    with pytest.raises(BinanceAPIException) as caught:
        await binance.futures_market_order(symbol="BTCUSDT", side="BUY", quantity="0.0015")
    assert (caught.value.status_code, caught.value.code) == (400, -1111)


async def test_market_data(binance: AsyncClient) -> None:
    """exchangeInfo, premiumIndex and time answer through the client."""
    info = await binance.futures_exchange_info()
    btc = next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")
    filters = {f["filterType"]: f for f in btc["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.10"
    assert filters["MIN_NOTIONAL"]["notional"] == "100"
    mark = await binance.futures_mark_price(symbol="BTCUSDT")
    assert mark["markPrice"] == "65000.00000000"
    assert "serverTime" in await binance.futures_time()
