"""Public market data: exchangeInfo filters, premiumIndex, tickers, depth, their weights."""

from __future__ import annotations

from tests.sim.conftest import RawClient


async def test_exchange_info_shape(raw: RawClient) -> None:
    """Top-level keys, symbol keys and string-encoded filters as Binance publishes them."""
    body = (await raw.public("/fapi/v1/exchangeInfo")).body
    assert {"timezone", "serverTime", "futuresType", "rateLimits", "exchangeFilters",
            "assets", "symbols"} <= set(body)
    btc = next(s for s in body["symbols"] if s["symbol"] == "BTCUSDT")
    assert (btc["status"], btc["contractType"], btc["pricePrecision"],
            btc["quantityPrecision"]) == ("TRADING", "PERPETUAL", 2, 3)
    filters = {f["filterType"]: f for f in btc["filters"]}
    assert filters["PRICE_FILTER"] == {"filterType": "PRICE_FILTER", "minPrice": "556.80",
                                       "maxPrice": "4529764", "tickSize": "0.10"}
    assert filters["LOT_SIZE"]["stepSize"] == "0.001"
    assert filters["MARKET_LOT_SIZE"]["maxQty"] == "120"
    assert filters["MIN_NOTIONAL"] == {"filterType": "MIN_NOTIONAL", "notional": "100"}
    assert filters["MAX_NUM_ORDERS"]["limit"] == 200
    eth = next(s for s in body["symbols"] if s["symbol"] == "ETHUSDT")
    eth_filters = {f["filterType"]: f for f in eth["filters"]}
    assert (eth_filters["PRICE_FILTER"]["tickSize"], eth_filters["MIN_NOTIONAL"]["notional"]) \
        == ("0.01", "20")
    assert {s["symbol"] for s in body["symbols"]} >= {
        "BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"}


async def test_premium_index_with_and_without_symbol(raw: RawClient) -> None:
    """One object with a symbol (weight 1), a list of all without (weight 10)."""
    one = await raw.public("/fapi/v1/premiumIndex", {"symbol": "ETHUSDT"})
    assert one.body["markPrice"] == "3200.00000000"
    assert isinstance(one.body["nextFundingTime"], int)
    assert one.headers["x-mbx-used-weight-1m"] == "1"
    every = await raw.public("/fapi/v1/premiumIndex")
    assert len(every.body) == 5
    assert every.headers["x-mbx-used-weight-1m"] == "11"


async def test_ticker_price(raw: RawClient) -> None:
    """ticker/price answers symbol, price string and time."""
    body = (await raw.public("/fapi/v1/ticker/price", {"symbol": "BTCUSDT"})).body
    assert set(body) == {"symbol", "price", "time"}
    assert body["price"] == "65000.00"


async def test_ticker_24hr_and_book_ticker(raw: RawClient) -> None:
    """24hr and bookTicker answer around the mark, for the tools that ask for them."""
    day = (await raw.public("/fapi/v1/ticker/24hr", {"symbol": "BTCUSDT"})).body
    assert day["lastPrice"] == "65000.00"
    book = (await raw.public("/fapi/v1/ticker/bookTicker", {"symbol": "BTCUSDT"})).body
    assert (book["bidPrice"], book["askPrice"]) == ("64999.90", "65000.10")


async def test_depth_weight_follows_limit(raw: RawClient) -> None:
    """depth costs 2 for limit ≤ 50 and 10 for the default 500."""
    small = await raw.public("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": 5})
    assert small.headers["x-mbx-used-weight-1m"] == "2"
    assert small.body["bids"][0][0] == "64999.90"
    default = await raw.public("/fapi/v1/depth", {"symbol": "BTCUSDT"})
    assert default.headers["x-mbx-used-weight-1m"] == "12"


async def test_ping_and_dual_side(raw: RawClient) -> None:
    """ping answers {}; positionSide/dual says one-way mode."""
    assert (await raw.public("/fapi/v1/ping")).body == {}
    dual = await raw.signed("GET", "/fapi/v1/positionSide/dual")
    assert dual.body == {"dualSidePosition": False}
