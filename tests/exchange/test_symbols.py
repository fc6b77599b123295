"""Symbol rules: exchangeInfo parsing, Decimal quantization, local order checks and the cache."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from app.clock import FakeClock
from app.exchange.symbol_cache import SymbolCache
from app.exchange.symbols import (
    RateLimit,
    SymbolRuleError,
    SymbolRules,
    UnknownSymbol,
    format_price,
    format_qty,
    parse_exchange_info,
)
from app.sim import SimConfig, SimServer

D = Decimal


def symbol_info(symbol: str, *, tick: str, min_price: str, max_price: str, step: str,
                min_qty: str, max_qty: str, market_max: str, notional: str, pp: int,
                qp: int, status: str = "TRADING") -> dict[str, Any]:
    """One exchangeInfo symbol object, shaped like Binance's (strings for filter numbers)."""
    return {
        "symbol": symbol, "pair": symbol, "contractType": "PERPETUAL", "status": status,
        "baseAsset": symbol.removesuffix("USDT"), "quoteAsset": "USDT", "marginAsset": "USDT",
        "pricePrecision": pp, "quantityPrecision": qp, "baseAssetPrecision": 8,
        "quotePrecision": 8, "triggerProtect": "0.0500", "liquidationFee": "0.012500",
        "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": min_price, "maxPrice": max_price,
             "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": min_qty, "maxQty": max_qty, "stepSize": step},
            {"filterType": "MARKET_LOT_SIZE", "minQty": min_qty, "maxQty": market_max,
             "stepSize": step},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MIN_NOTIONAL", "notional": notional},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500",
             "multiplierDown": "0.9500", "multiplierDecimal": "4"},
            {"filterType": "POSITION_RISK_CONTROL", "positionControlSide": "NONE"},
        ],
        "orderTypes": ["LIMIT", "MARKET"], "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
    }


def btc(**changes: Any) -> dict[str, Any]:
    return symbol_info("BTCUSDT", **{
        "tick": "0.10", "min_price": "556.80", "max_price": "4529764", "step": "0.001",
        "min_qty": "0.001", "max_qty": "1000", "market_max": "120", "notional": "100",
        "pp": 2, "qp": 3, **changes})


def eth() -> dict[str, Any]:
    return symbol_info("ETHUSDT", tick="0.01", min_price="39.86", max_price="306177",
                       step="0.001", min_qty="0.001", max_qty="10000", market_max="2000",
                       notional="20", pp=2, qp=3)


def sol() -> dict[str, Any]:
    return symbol_info("SOLUSDT", tick="0.0100", min_price="0.4200", max_price="6857",
                       step="1", min_qty="1", max_qty="1000000", market_max="5000",
                       notional="5", pp=4, qp=0)


def xrp() -> dict[str, Any]:
    return symbol_info("XRPUSDT", tick="0.0001", min_price="0.0143", max_price="100000",
                       step="0.1", min_qty="0.1", max_qty="10000000", market_max="2000000",
                       notional="5", pp=4, qp=1)


RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
]


def exchange_info(*symbols: dict[str, Any]) -> dict[str, Any]:
    return {"timezone": "UTC", "serverTime": 1_795_435_200_000, "futuresType": "U_MARGINED",
            "rateLimits": [dict(r) for r in RATE_LIMITS], "exchangeFilters": [], "assets": [],
            "symbols": list(symbols or (btc(), eth(), sol(), xrp()))}


def with_filter(info: dict[str, Any], filter_type: str, **fields: str) -> dict[str, Any]:
    for item in info["filters"]:
        if item["filterType"] == filter_type:
            item.update(fields)
    return info


BTC = SymbolRules.from_exchange_info(btc())
ETH = SymbolRules.from_exchange_info(eth())
SOL = SymbolRules.from_exchange_info(sol())
XRP = SymbolRules.from_exchange_info(xrp())
ALL = (BTC, ETH, SOL, XRP)


# --- parsing -----------------------------------------------------------------------------------


def test_parses_every_field_as_decimal_from_strings() -> None:
    """BTCUSDT's filters land in the matching fields, money as Decimal."""
    assert (BTC.symbol, BTC.status, BTC.base_asset, BTC.quote_asset) == (
        "BTCUSDT", "TRADING", "BTC", "USDT")
    assert (BTC.tick_size, BTC.min_price, BTC.max_price) == (D("0.10"), D("556.80"), D("4529764"))
    assert (BTC.step_size, BTC.min_qty, BTC.max_qty) == (D("0.001"), D("0.001"), D("1000"))
    assert (BTC.market_step_size, BTC.market_min_qty, BTC.market_max_qty) == (
        D("0.001"), D("0.001"), D("120"))
    assert (BTC.min_notional, BTC.multiplier_up, BTC.multiplier_down, BTC.max_num_orders) == (
        D("100"), D("1.0500"), D("0.9500"), 200)
    assert all(isinstance(v, Decimal) for v in (BTC.tick_size, BTC.step_size, BTC.min_notional))


def test_precisions_are_kept_but_are_not_the_grid() -> None:
    """pricePrecision/quantityPrecision are informative: SOLUSDT has 0 qty decimals, step 1."""
    assert (SOL.price_precision, SOL.quantity_precision) == (4, 0)
    assert (SOL.step_size, XRP.step_size) == (D("1"), D("0.1"))


def test_unknown_filter_types_are_ignored() -> None:
    """A filter type execd does not know (POSITION_RISK_CONTROL) changes nothing."""
    info = btc()
    info["filters"] = [f for f in info["filters"] if f["filterType"] != "POSITION_RISK_CONTROL"]
    info["filters"].append({"filterType": "SOMETHING_NEW", "anything": [1, 2.5, None]})
    assert SymbolRules.from_exchange_info(info) == BTC


@pytest.mark.parametrize("missing", ["PRICE_FILTER", "LOT_SIZE", "MARKET_LOT_SIZE",
                                     "MIN_NOTIONAL"])
def test_missing_required_filter_names_symbol_and_filter(missing: str) -> None:
    """A symbol without a required filter is a ValueError naming both."""
    info = btc()
    info["filters"] = [f for f in info["filters"] if f["filterType"] != missing]
    with pytest.raises(ValueError, match=f"BTCUSDT: exchangeInfo has no {missing} filter"):
        SymbolRules.from_exchange_info(info)


def test_float_filter_value_is_rejected() -> None:
    """A float in a filter would carry binary error into Decimal; parsing refuses it."""
    info = with_filter(btc(), "PRICE_FILTER")
    info["filters"][0]["tickSize"] = 0.1
    with pytest.raises(ValueError, match=r"BTCUSDT: PRICE_FILTER.tickSize is 0.1"):
        SymbolRules.from_exchange_info(info)


def test_zero_step_size_is_rejected() -> None:
    """A LOT_SIZE stepSize of 0 would make every quantity ambiguous; parsing refuses it."""
    with pytest.raises(ValueError, match=r"LOT_SIZE.stepSize is '0'"):
        SymbolRules.from_exchange_info(with_filter(btc(), "LOT_SIZE", stepSize="0"))


def test_optional_filters_absent_are_none() -> None:
    """Without PERCENT_PRICE and MAX_NUM_ORDERS the symbol still parses, those fields None."""
    info = btc()
    info["filters"] = [f for f in info["filters"]
                       if f["filterType"] not in ("PERCENT_PRICE", "MAX_NUM_ORDERS")]
    rules = SymbolRules.from_exchange_info(info)
    assert (rules.multiplier_up, rules.multiplier_down, rules.max_num_orders) == (None, None, None)


def test_malformed_symbol_is_left_out_with_its_reason() -> None:
    """One broken listing does not spoil the others; it is reported in `invalid`."""
    broken = sol()
    broken["filters"] = []
    info = parse_exchange_info(exchange_info(btc(), broken))
    assert list(info.rules) == ["BTCUSDT"]
    assert "no PRICE_FILTER" in info.invalid["SOLUSDT"]


def test_rate_limits_are_parsed_with_their_window() -> None:
    """Each rateLimits entry becomes a RateLimit whose window is in seconds."""
    info = parse_exchange_info(exchange_info())
    assert info.rate_limits == (RateLimit("REQUEST_WEIGHT", "MINUTE", 1, 2400),
                                RateLimit("ORDERS", "MINUTE", 1, 1200),
                                RateLimit("ORDERS", "SECOND", 10, 300))
    assert [r.window_s for r in info.rate_limits] == [60, 60, 10]


def test_unknown_rate_limit_interval_is_rejected() -> None:
    """A window execd cannot size is an error, not a guess."""
    info = exchange_info()
    info["rateLimits"][0]["interval"] = "FORTNIGHT"
    with pytest.raises(ValueError, match="rateLimits entry not understood"):
        parse_exchange_info(info)


def test_answer_without_symbols_is_rejected() -> None:
    """An answer missing the symbols array is unusable as a whole."""
    with pytest.raises(ValueError, match="without 'symbols' and 'rateLimits'"):
        parse_exchange_info({"rateLimits": []})


# --- quantize_qty ------------------------------------------------------------------------------


@pytest.mark.parametrize(("rules", "qty", "expected"), [
    (BTC, "0.0019", "0.001"),
    (BTC, "1.23456789", "1.234"),
    (ETH, "0.0109", "0.010"),
    (SOL, "2.9", "2"),
    (SOL, "17", "17"),
    (XRP, "10.17", "10.1"),
    (XRP, "10.1", "10.1"),
])
def test_quantize_qty_rounds_down_to_the_step(rules: SymbolRules, qty: str, expected: str) -> None:
    """Quantities drop to the step grid below them, never to the nearest."""
    result = rules.quantize_qty(D(qty), market=False)
    assert isinstance(result, Decimal)
    assert result == D(expected)


def test_quantize_qty_below_the_first_step_is_zero() -> None:
    """Below minQty on a grid anchored at 0 the only value not above the input is 0."""
    assert BTC.quantize_qty(D("0.0009999"), market=False) == 0


def test_quantize_qty_uses_market_lot_size_for_market_orders() -> None:
    """MARKET orders follow MARKET_LOT_SIZE's step, limit orders LOT_SIZE's."""
    rules = SymbolRules.from_exchange_info(
        with_filter(btc(), "MARKET_LOT_SIZE", stepSize="0.01", minQty="0.01"))
    assert rules.quantize_qty(D("0.129"), market=True) == D("0.12")
    assert rules.quantize_qty(D("0.129"), market=False) == D("0.129")


def test_quantize_qty_grid_starts_at_min_qty() -> None:
    """Binance's grid is minQty + k × step, which differs from k × step when minQty is odd."""
    rules = SymbolRules.from_exchange_info(
        with_filter(btc(), "LOT_SIZE", minQty="0.003", stepSize="0.002"))
    assert rules.quantize_qty(D("0.006"), market=False) == D("0.005")


def test_quantize_qty_is_exact_beyond_the_default_precision() -> None:
    """30 significant digits would round up in the default 28-digit context; here they don't."""
    assert BTC.quantize_qty(D("0.005999999999999999999999999999999"), market=False) == D("0.005")


def test_quantize_qty_rejects_a_negative_quantity() -> None:
    """Orders carry a side and a positive quantity; a negative one is a caller bug."""
    with pytest.raises(ValueError, match="must not be negative"):
        BTC.quantize_qty(D("-0.1"), market=False)


def test_quantize_qty_rejects_nan() -> None:
    """A NaN has no place on a grid."""
    with pytest.raises(ValueError, match="finite"):
        BTC.quantize_qty(D("NaN"), market=False)


# --- quantize_price ----------------------------------------------------------------------------


@pytest.mark.parametrize(("price", "side", "expected"), [
    ("65000.04", None, "65000.0"),
    ("65000.05", None, "65000.1"),
    ("65000.06", None, "65000.1"),
    ("65000.09", "BUY", "65000.0"),
    ("65000.01", "SELL", "65000.1"),
    ("65000.10", "BUY", "65000.1"),
    ("65000.10", "SELL", "65000.1"),
])
def test_quantize_price_to_the_tick(price: str, side: str | None, expected: str) -> None:
    """Nearest tick by default (ties up); BUY rounds down and SELL up, never a worse price."""
    result = BTC.quantize_price(D(price), side=side)
    assert isinstance(result, Decimal)
    assert result == D(expected)


def test_quantize_price_grid_starts_at_min_price() -> None:
    """The tick grid is minPrice + k × tick, as Binance checks it."""
    rules = SymbolRules.from_exchange_info(
        with_filter(btc(), "PRICE_FILTER", minPrice="0.05", tickSize="0.1"))
    assert rules.quantize_price(D("1.0"), side="BUY") == D("0.95")


def test_quantize_price_keeps_the_price_when_tick_is_zero() -> None:
    """A tickSize of 0 disables the tick rule."""
    rules = SymbolRules.from_exchange_info(with_filter(btc(), "PRICE_FILTER", tickSize="0"))
    assert rules.quantize_price(D("65000.123")) == D("65000.123")


def test_quantize_price_rejects_an_unknown_side() -> None:
    """Only BUY, SELL or no side are meaningful."""
    with pytest.raises(ValueError, match="side must be"):
        BTC.quantize_price(D("65000"), side="LONG")


# --- check_order -------------------------------------------------------------------------------


def test_check_order_accepts_a_valid_market_order() -> None:
    """0.002 BTC at mark 65000 is on the step, in range and above 100 USDT notional."""
    BTC.check_order(D("0.002"), D("65000"), market=True, reduce_only=False)


def test_check_order_accepts_a_valid_limit_order() -> None:
    """1 ETH at 3200.01 is on the tick and step and above 20 USDT."""
    ETH.check_order(D("1"), D("3200.01"), market=False, reduce_only=False)


HALTED = SymbolRules.from_exchange_info(btc(status="SETTLING"))


@pytest.mark.parametrize(("rules", "qty", "price", "market", "rule"), [
    (HALTED, "0.01", "65000", True, "STATUS"),
    (BTC, "0", "65000", True, "QUANTITY.positive"),
    (SOL, "0.5", "150", False, "LOT_SIZE.minQty"),
    (SOL, "0.5", "150", True, "MARKET_LOT_SIZE.minQty"),
    (BTC, "1001", "65000", False, "LOT_SIZE.maxQty"),
    (BTC, "121", "65000", True, "MARKET_LOT_SIZE.maxQty"),
    (BTC, "0.0015", "65000", False, "LOT_SIZE.stepSize"),
    (XRP, "10.15", "0.6", True, "MARKET_LOT_SIZE.stepSize"),
    (BTC, "0.01", "0", True, "PRICE.positive"),
    (BTC, "0.5", "500.0", False, "PRICE_FILTER.minPrice"),
    (BTC, "0.01", "4529764.1", False, "PRICE_FILTER.maxPrice"),
    (BTC, "0.01", "65000.05", False, "PRICE_FILTER.tickSize"),
    (ETH, "0.001", "3200", True, "MIN_NOTIONAL"),
])
def test_check_order_names_the_broken_rule(rules: SymbolRules, qty: str, price: str,
                                           market: bool, rule: str) -> None:
    """Each violation raises SymbolRuleError carrying the rule's name."""
    with pytest.raises(SymbolRuleError) as caught:
        rules.check_order(D(qty), D(price), market=market, reduce_only=False)
    assert caught.value.rule == rule


def test_min_notional_message_shows_the_numbers() -> None:
    """The message says notional, qty, mark and the minimum, so an operator can act on it."""
    with pytest.raises(SymbolRuleError, match=r"^BTCUSDT notional 50 \(qty 0.001 × mark 50000\) "
                                              r"is below MIN_NOTIONAL 100$"):
        BTC.check_order(D("0.001"), D("50000.0"), market=True, reduce_only=False)


def test_symbol_rule_error_is_a_value_error() -> None:
    """Callers catching ValueError for bad input also catch rule violations."""
    assert issubclass(SymbolRuleError, ValueError)


def test_reduce_only_is_exempt_from_min_notional() -> None:
    """A reduce-only close below MIN_NOTIONAL is allowed (Binance exempts it too)."""
    BTC.check_order(D("0.001"), D("50000"), market=True, reduce_only=True)


def test_reduce_only_still_obeys_lot_size() -> None:
    """The notional exemption does not extend to the quantity grid."""
    with pytest.raises(SymbolRuleError) as caught:
        BTC.check_order(D("0.0015"), D("65000"), market=True, reduce_only=True)
    assert caught.value.rule == "MARKET_LOT_SIZE.stepSize"


def test_market_order_mark_need_not_be_on_the_tick() -> None:
    """A mark price is not an order price: PRICE_FILTER does not apply to MARKET orders."""
    BTC.check_order(D("0.002"), D("65000.12345678"), market=True, reduce_only=False)


def test_zero_price_filter_values_disable_their_rules() -> None:
    """minPrice, maxPrice and tickSize of 0 each switch their check off."""
    rules = SymbolRules.from_exchange_info(
        with_filter(btc(), "PRICE_FILTER", minPrice="0", maxPrice="0", tickSize="0"))
    rules.check_order(D("0.001"), D("123456789.123"), market=False, reduce_only=False)


# --- Decimal only ------------------------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda: BTC.quantize_qty(0.01, market=False),  # type: ignore[arg-type]
    lambda: BTC.quantize_price(65000.0),  # type: ignore[arg-type]
    lambda: BTC.check_order(0.01, D("65000"), market=True,  # type: ignore[arg-type]
                            reduce_only=False),
    lambda: BTC.check_order(D("0.01"), 65000.0, market=True,  # type: ignore[arg-type]
                            reduce_only=False),
    lambda: format_qty(0.01),  # type: ignore[arg-type]
    lambda: format_price(65000.0),  # type: ignore[arg-type]
], ids=["quantize_qty", "quantize_price", "check_qty", "check_price", "format_qty",
        "format_price"])
def test_float_input_raises_type_error(call: Any) -> None:
    """Floats never enter money arithmetic: every entry point refuses them."""
    with pytest.raises(TypeError, match="must be a Decimal, got float"):
        call()


# --- wire format -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "text"), [
    ("1E+1", "10"), ("0.0100", "0.01"), ("65000.10", "65000.1"), ("0", "0"), ("0E-8", "0"),
    ("1.23E-7", "0.000000123"), ("-0", "0"), ("120", "120"),
    ("0.005999999999999999999999999999999", "0.005999999999999999999999999999999"),
])
def test_format_gives_plain_decimal_text(value: str, text: str) -> None:
    """No exponent, no trailing zeros, no rounding: what python-binance sends with str()."""
    assert format_qty(D(value)) == text
    assert format_price(D(value)) == text


# --- properties --------------------------------------------------------------------------------

amounts = st.decimals(min_value=D(0), max_value=D("20000000"), places=9,
                      allow_nan=False, allow_infinity=False)


@given(rules=st.sampled_from(ALL), qty=amounts, market=st.booleans())
def test_quantized_qty_is_on_the_grid_and_never_above_the_input(
        rules: SymbolRules, qty: Decimal, market: bool) -> None:
    """Round-down lands on minQty + k × step, at most one step below the input."""
    low, step = ((rules.market_min_qty, rules.market_step_size) if market
                 else (rules.min_qty, rules.step_size))
    result = rules.quantize_qty(qty, market=market)
    assert isinstance(result, Decimal)
    assert result <= qty
    if qty >= low:
        assert (result - low) % step == 0
        assert qty - result < step


@given(rules=st.sampled_from(ALL), price=amounts.filter(lambda p: p > 0),
       side=st.sampled_from([None, "BUY", "SELL"]))
def test_quantized_price_is_on_the_grid_in_the_asked_direction(
        rules: SymbolRules, price: Decimal, side: str | None) -> None:
    """Nearest is within half a tick; BUY never rises, SELL never falls."""
    result = rules.quantize_price(price, side=side)
    assert (result - rules.min_price) % rules.tick_size == 0
    assert abs(result - price) < rules.tick_size
    if side is None:
        assert abs(result - price) <= rules.tick_size / 2
    elif side == "BUY":
        assert result <= price
    else:
        assert result >= price


@st.composite
def in_range_orders(draw: st.DrawFn) -> tuple[SymbolRules, Decimal, Decimal, bool, str | None]:
    """A symbol, a raw qty within its lot limits, a raw price within PRICE_FILTER, and a side."""
    rules = draw(st.sampled_from(ALL))
    market = draw(st.booleans())
    low, high = ((rules.market_min_qty, rules.market_max_qty) if market
                 else (rules.min_qty, rules.max_qty))
    qty = draw(st.decimals(min_value=low, max_value=high, places=9))
    price = draw(st.decimals(min_value=rules.min_price, max_value=rules.max_price, places=9))
    return rules, qty, price, market, draw(st.sampled_from([None, "BUY", "SELL"]))


@given(order=in_range_orders())
def test_check_order_accepts_every_quantized_in_range_value(
        order: tuple[SymbolRules, Decimal, Decimal, bool, str | None]) -> None:
    """What the quantizers produce passes the checks whenever it is within the limits."""
    rules, qty, price, market, side = order
    q = rules.quantize_qty(qty, market=market)
    p = rules.quantize_price(price, side=side)
    assume(p <= rules.max_price and q * p >= rules.min_notional)
    rules.check_order(q, p, market=market, reduce_only=False)


# --- the cache ---------------------------------------------------------------------------------


class FakeExchangeInfo:
    """An exchangeInfo endpoint stand-in: counts calls, can hold them open or fail them."""

    def __init__(self, answer: dict[str, Any] | None = None) -> None:
        self.answer = answer or exchange_info()
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None

    async def __call__(self) -> Mapping[str, Any]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.answer


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fetch() -> FakeExchangeInfo:
    return FakeExchangeInfo()


@pytest.fixture
def cache(fetch: FakeExchangeInfo, clock: FakeClock) -> SymbolCache:
    return SymbolCache(fetch, clock)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_load_makes_every_symbol_and_the_rate_limits_available(
        cache: SymbolCache) -> None:
    """After load() the rules of each listed symbol and the rateLimits are served."""
    await cache.load()
    assert cache.get("ETHUSDT") == ETH
    assert cache.symbols == ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")
    assert [r.rate_limit_type for r in cache.rate_limits] == ["REQUEST_WEIGHT", "ORDERS",
                                                              "ORDERS"]


def test_get_before_load_raises_unknown_symbol(cache: SymbolCache) -> None:
    """Nothing is known until the first load, and the error says so."""
    with pytest.raises(UnknownSymbol, match=r"not been loaded yet \(0 symbols known\)"):
        cache.get("BTCUSDT")


async def test_unknown_symbol_is_a_key_error_counting_known_symbols(cache: SymbolCache) -> None:
    """A symbol exchangeInfo does not list raises UnknownSymbol (a KeyError) with the count."""
    await cache.load()
    with pytest.raises(KeyError) as caught:
        cache.get("DOGEUSDT")
    assert str(caught.value) == "unknown symbol 'DOGEUSDT' is not in exchangeInfo (4 symbols known)"


async def test_malformed_symbol_lookup_gives_the_reason(clock: FakeClock) -> None:
    """Asking for a symbol that failed to parse tells why it is unusable."""
    broken = xrp()
    broken["filters"] = [f for f in broken["filters"] if f["filterType"] != "MIN_NOTIONAL"]
    cache = SymbolCache(FakeExchangeInfo(exchange_info(btc(), broken)), clock)
    await cache.load()
    with pytest.raises(UnknownSymbol, match="no MIN_NOTIONAL filter"):
        cache.get("XRPUSDT")


async def test_ensure_fresh_loads_the_first_time(cache: SymbolCache,
                                                 fetch: FakeExchangeInfo) -> None:
    """With nothing loaded, ensure_fresh() fetches."""
    assert await cache.ensure_fresh() is True
    assert fetch.calls == 1


async def test_ensure_fresh_reloads_only_after_the_ttl(cache: SymbolCache, clock: FakeClock,
                                                       fetch: FakeExchangeInfo) -> None:
    """Rules younger than ttl_s (24 h) are kept; at ttl_s they are fetched again."""
    await cache.load()
    clock.advance(86_399)
    assert await cache.ensure_fresh() is False
    clock.advance(1)
    assert await cache.ensure_fresh() is True
    assert fetch.calls == 2


async def test_reload_replaces_the_rules(cache: SymbolCache, fetch: FakeExchangeInfo) -> None:
    """A changed tick size published by the exchange is picked up on reload."""
    await cache.load()
    fetch.answer = exchange_info(with_filter(btc(), "PRICE_FILTER", tickSize="1.00"))
    await cache.load()
    assert cache.get("BTCUSDT").tick_size == D("1.00")


async def test_precision_refresh_is_rate_limited(cache: SymbolCache, clock: FakeClock,
                                                 fetch: FakeExchangeInfo) -> None:
    """After a fetch, refresh_on_precision_error() waits min_refresh_interval_s (60 s)."""
    await cache.load()
    clock.advance(59.9)
    assert cache.refresh_on_precision_error() is False
    clock.advance(0.1)
    assert cache.refresh_on_precision_error() is True
    await cache.join()
    assert fetch.calls == 2


async def test_precision_refresh_counts_a_failed_fetch(cache: SymbolCache,
                                                       fetch: FakeExchangeInfo) -> None:
    """A failing exchangeInfo is not hammered: the failed attempt starts the interval too."""
    fetch.error = ConnectionError("refused")
    assert cache.refresh_on_precision_error() is True       # started in the background
    await cache.join()
    assert cache.refresh_on_precision_error() is False
    assert (fetch.calls, cache.statistics()["failures"]) == (1, 1)


async def test_failed_reload_keeps_the_previous_rules(cache: SymbolCache,
                                                      fetch: FakeExchangeInfo) -> None:
    """A reload that fails raises, and the rules already loaded stay usable."""
    await cache.load()
    fetch.error = ConnectionError("refused")
    with pytest.raises(ConnectionError):
        await cache.load()
    assert cache.get("BTCUSDT") == BTC
    assert cache.statistics()["failures"] == 1


async def test_concurrent_loads_share_one_fetch(cache: SymbolCache,
                                                fetch: FakeExchangeInfo) -> None:
    """Callers arriving while a fetch is in flight join it instead of fetching again."""
    fetch.gate = asyncio.Event()
    callers = [asyncio.create_task(c) for c in (
        cache.load(), cache.load(), cache.ensure_fresh())]
    await _settle()
    assert cache.refresh_on_precision_error() is True        # joins the fetch in flight
    fetch.gate.set()
    await asyncio.gather(*callers)
    assert fetch.calls == 1
    assert len(cache) == 4


async def test_concurrent_callers_all_see_the_failure(cache: SymbolCache,
                                                      fetch: FakeExchangeInfo) -> None:
    """A shared fetch that fails fails every caller that joined it."""
    fetch.gate = asyncio.Event()
    fetch.error = ConnectionError("refused")
    callers = [asyncio.create_task(cache.load()) for _ in range(3)]
    await _settle()
    fetch.gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError] * 3
    assert fetch.calls == 1


async def test_cancelled_caller_does_not_cancel_the_shared_fetch(
        cache: SymbolCache, fetch: FakeExchangeInfo) -> None:
    """One caller giving up leaves the fetch running for the others."""
    fetch.gate = asyncio.Event()
    quitter = asyncio.create_task(cache.load())
    stayer = asyncio.create_task(cache.load())
    await _settle()
    quitter.cancel()
    await _settle()
    fetch.gate.set()
    await stayer
    assert quitter.cancelled()
    assert "BTCUSDT" in cache


async def test_close_cancels_a_fetch_in_flight(cache: SymbolCache,
                                               fetch: FakeExchangeInfo) -> None:
    """close() ends a pending fetch so shutdown leaves no task behind."""
    fetch.gate = asyncio.Event()
    caller = asyncio.create_task(cache.load())
    await _settle()
    await cache.close()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cache.statistics()["in_flight"] is False


async def test_listener_hears_each_successful_load(fetch: FakeExchangeInfo,
                                                   clock: FakeClock) -> None:
    """on_refresh gets the symbol count and the rate limits after every load, not on failure."""
    heard: list[tuple[int, list[RateLimit]]] = []
    cache = SymbolCache(fetch, clock,
                        on_refresh=lambda r: heard.append((r.symbols, r.rate_limits)))
    await cache.load()
    await cache.load()
    fetch.error = ConnectionError("refused")
    with pytest.raises(ConnectionError):
        await cache.load()
    assert len(heard) == 2
    assert heard[0] == (4, list(parse_exchange_info(exchange_info()).rate_limits))


async def test_repr_shows_live_state(cache: SymbolCache, clock: FakeClock) -> None:
    """The repr tells how many symbols are held and how old they are."""
    await cache.load()
    clock.advance(30)
    assert repr(cache) == ("SymbolCache(symbols=4, invalid=0, rate_limits=3, age_s=30.0, "
                           "loads=1, failures=0, in_flight=False, ttl_s=86400.0)")


# --- against the simulator ---------------------------------------------------------------------


async def test_loads_the_simulators_exchange_info_over_http() -> None:
    """The cache parses the simulator's real exchangeInfo answer fetched with aiohttp."""
    async with SimServer(SimConfig()) as srv, aiohttp.ClientSession() as session:

        async def fetch() -> Mapping[str, Any]:
            async with session.get(f"{srv.url}/fapi/v1/exchangeInfo") as resp:
                resp.raise_for_status()
                body: Mapping[str, Any] = await resp.json()
                return body

        cache = SymbolCache(fetch, FakeClock())
        await cache.load()
    btc_rules, eth_rules = cache.get("BTCUSDT"), cache.get("ETHUSDT")
    assert (btc_rules.tick_size, btc_rules.step_size, btc_rules.min_notional) == (
        D("0.10"), D("0.001"), D("100"))
    assert (eth_rules.tick_size, eth_rules.min_notional) == (D("0.01"), D("20"))
    assert RateLimit("REQUEST_WEIGHT", "MINUTE", 1, 2400) in cache.rate_limits
    assert cache.invalid == {}
