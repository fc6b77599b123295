"""Read-only answers: exchangeInfo, market data, positions, balance, account.

Field names, string-encoded decimals and per-version differences follow Binance's documented
shapes (research/binance-futures-api.md §7–8): v2 positionRisk lists every symbol with
lowercase ``marginType``; v3 lists only symbols with a position or open orders and has no
leverage/marginType fields.
"""

from __future__ import annotations

from decimal import Decimal

from app.sim.config import SimConfig, SymbolSpec
from app.sim.exchange import Exchange
from app.sim.models import BRACKETS, ZERO, Position, fixed, max_notional, ms
from app.sim.rules import Params, places

ORDER_TYPES = ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
               "TRAILING_STOP_MARKET"]
ACCOUNT_ALIAS = "SgsR"
FUNDING_INTERVAL_S = 8 * 3600


def interval_of(seconds: int) -> tuple[str, int]:
    """Binance's (interval, intervalNum) for a window length: 60 → (MINUTE, 1)."""
    for name, unit in (("DAY", 86400), ("HOUR", 3600), ("MINUTE", 60)):
        if seconds % unit == 0:
            return name, seconds // unit
    return "SECOND", seconds


def rate_limits(config: SimConfig) -> list[dict[str, object]]:
    lim = config.limits
    out: list[dict[str, object]] = []
    for kind, seconds, limit in (
        ("REQUEST_WEIGHT", lim.request_weight_interval_s, lim.request_weight),
        ("ORDERS", lim.orders_long_interval_s, lim.orders_long),
        ("ORDERS", lim.orders_short_interval_s, lim.orders_short),
    ):
        interval, num = interval_of(seconds)
        out.append({"rateLimitType": kind, "interval": interval, "intervalNum": num,
                    "limit": limit})
    return out


def _symbol_info(spec: SymbolSpec) -> dict[str, object]:
    def dec(value: Decimal) -> str:
        return f"{value:f}"

    return {
        "symbol": spec.symbol, "pair": spec.symbol, "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000, "onboardDate": 1569398400000, "status": spec.status,
        "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000",
        "baseAsset": spec.base_asset, "quoteAsset": spec.quote_asset,
        "marginAsset": spec.quote_asset, "pricePrecision": spec.price_precision,
        "quantityPrecision": spec.quantity_precision, "baseAssetPrecision": 8,
        "quotePrecision": 8, "underlyingType": "COIN", "underlyingSubType": [],
        "settlePlan": 0, "triggerProtect": "0.0500", "liquidationFee": "0.012500",
        "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": dec(spec.min_price),
             "maxPrice": dec(spec.max_price), "tickSize": dec(spec.tick_size)},
            {"filterType": "LOT_SIZE", "minQty": dec(spec.min_qty), "maxQty": dec(spec.max_qty),
             "stepSize": dec(spec.step_size)},
            {"filterType": "MARKET_LOT_SIZE", "minQty": dec(spec.min_qty),
             "maxQty": dec(spec.market_max_qty), "stepSize": dec(spec.step_size)},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MIN_NOTIONAL", "notional": dec(spec.min_notional)},
            {"filterType": "PERCENT_PRICE", "multiplierUp": dec(spec.multiplier_up),
             "multiplierDown": dec(spec.multiplier_down),
             "multiplierDecimal": str(places(spec.multiplier_up) or 4)},
        ],
        "orderTypes": ORDER_TYPES,
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        "permissionSets": ["GRID", "COPY"],
    }


def exchange_info(config: SimConfig, now: float) -> dict[str, object]:
    return {
        "timezone": "UTC",
        "serverTime": ms(now),
        "futuresType": "U_MARGINED",
        "rateLimits": rate_limits(config),
        "exchangeFilters": [],
        "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
        "symbols": [_symbol_info(spec) for spec in config.symbols],
    }


def _specs(ex: Exchange, params: Params) -> list[SymbolSpec]:
    spec = ex.state.spec(params, required=False)
    return [spec] if spec is not None else list(ex.state.symbols.values())


def premium_index(ex: Exchange, params: Params) -> object:
    now = ex.state.now()
    next_funding = (int(now) // FUNDING_INTERVAL_S + 1) * FUNDING_INTERVAL_S
    rows = [{
        "symbol": spec.symbol,
        "markPrice": fixed(ex.state.marks[spec.symbol], 8),
        "indexPrice": fixed(ex.state.marks[spec.symbol], 8),
        "estimatedSettlePrice": fixed(ex.state.marks[spec.symbol], 8),
        "lastFundingRate": "0.00010000",
        "interestRate": "0.00010000",
        "nextFundingTime": next_funding * 1000,
        "time": ms(now),
    } for spec in _specs(ex, params)]
    return rows[0] if params.get("symbol") else rows


def ticker_price(ex: Exchange, params: Params) -> object:
    marks = ex.state.marks
    rows = [{"symbol": spec.symbol, "price": fixed(marks[spec.symbol], spec.price_precision),
             "time": ms(ex.state.now())} for spec in _specs(ex, params)]
    return rows[0] if params.get("symbol") else rows


def leverage_bracket(ex: Exchange, params: Params) -> object:
    def brackets() -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        floor = 0
        for i, (lev, cap) in enumerate(BRACKETS, start=1):
            out.append({"bracket": i, "initialLeverage": lev, "notionalCap": cap,
                        "notionalFloor": floor, "maintMarginRatio": 0.004 * i, "cum": 0.0})
            floor = cap
        return out

    rows = [{"symbol": spec.symbol, "notionalCoef": 1.0, "brackets": brackets()}
            for spec in _specs(ex, params)]
    return rows[0] if params.get("symbol") else rows


def _money(value: Decimal) -> str:
    return fixed(value, 8)


def _position_numbers(ex: Exchange, pos: Position) -> dict[str, str]:
    mark = ex.state.marks[pos.spec.symbol]
    pp = pos.spec.price_precision
    notional = pos.amount * mark
    margin = pos.initial_margin(mark)
    isolated = margin if pos.margin_type == "ISOLATED" else ZERO
    liquidation = ZERO
    if pos.amount:
        # Rough liquidation price: the entry moved against the position by 1/leverage.
        move = pos.entry_price / pos.leverage
        liquidation = pos.entry_price - move if pos.amount > 0 else pos.entry_price + move
    return {
        "positionAmt": fixed(pos.amount, pos.spec.quantity_precision),
        "entryPrice": fixed(pos.entry_price, max(pp, 8)),
        "breakEvenPrice": fixed(pos.entry_price, max(pp, 8)),
        "markPrice": fixed(mark, 8),
        "unRealizedProfit": _money(pos.unrealized(mark)),
        "liquidationPrice": fixed(max(liquidation, ZERO), 8),
        "isolatedMargin": _money(isolated),
        "notional": _money(notional),
        "isolatedWallet": _money(isolated),
        "initialMargin": _money(margin),
        "maintMargin": _money(abs(notional) * Decimal("0.004")),
    }


def position_risk_v2(ex: Exchange, params: Params) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for spec in _specs(ex, params):
        pos = ex.state.positions[spec.symbol]
        n = _position_numbers(ex, pos)
        rows.append({
            "symbol": spec.symbol, "positionAmt": n["positionAmt"],
            "entryPrice": n["entryPrice"], "breakEvenPrice": n["breakEvenPrice"],
            "markPrice": n["markPrice"], "unRealizedProfit": n["unRealizedProfit"],
            "liquidationPrice": n["liquidationPrice"], "leverage": str(pos.leverage),
            "maxNotionalValue": max_notional(pos.leverage),
            "marginType": "isolated" if pos.margin_type == "ISOLATED" else "cross",
            "isolatedMargin": n["isolatedMargin"], "isAutoAddMargin": "false",
            "positionSide": "BOTH", "notional": n["notional"],
            "isolatedWallet": n["isolatedWallet"], "updateTime": ms(pos.updated),
        })
    return rows


def position_risk_v3(ex: Exchange, params: Params) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for spec in _specs(ex, params):
        pos = ex.state.positions[spec.symbol]
        if not pos.amount and not ex.state.has_open_orders(spec):
            continue
        n = _position_numbers(ex, pos)
        rows.append({
            "symbol": spec.symbol, "positionSide": "BOTH", "positionAmt": n["positionAmt"],
            "entryPrice": n["entryPrice"], "breakEvenPrice": n["breakEvenPrice"],
            "markPrice": n["markPrice"], "unRealizedProfit": n["unRealizedProfit"],
            "liquidationPrice": n["liquidationPrice"], "isolatedMargin": n["isolatedMargin"],
            "notional": n["notional"], "marginAsset": "USDT",
            "isolatedWallet": n["isolatedWallet"], "initialMargin": n["initialMargin"],
            "maintMargin": n["maintMargin"], "positionInitialMargin": n["initialMargin"],
            "openOrderInitialMargin": "0", "adl": 0, "bidNotional": "0", "askNotional": "0",
            "updateTime": ms(pos.updated),
        })
    return rows


def _totals(ex: Exchange) -> dict[str, Decimal]:
    st = ex.state
    unrealized = sum((p.unrealized(st.marks[s]) for s, p in st.positions.items()), ZERO)
    margin = sum((p.initial_margin(st.marks[s]) for s, p in st.positions.items()), ZERO)
    maint = sum((abs(p.amount) * st.marks[s] * Decimal("0.004")
                 for s, p in st.positions.items()), ZERO)
    available = ex.account.available_balance()
    return {"wallet": st.wallet, "unrealized": unrealized, "margin": margin, "maint": maint,
            "available": available, "withdraw": max(ZERO, min(available, st.wallet))}


def balance(ex: Exchange) -> list[dict[str, object]]:
    t = _totals(ex)
    return [{
        "accountAlias": ACCOUNT_ALIAS, "asset": "USDT", "balance": _money(t["wallet"]),
        "crossWalletBalance": _money(t["wallet"]), "crossUnPnl": _money(t["unrealized"]),
        "availableBalance": _money(t["available"]), "maxWithdrawAmount": _money(t["withdraw"]),
        "marginAvailable": True, "updateTime": ms(ex.state.now()),
    }]


def account(ex: Exchange, version: int) -> dict[str, object]:
    t = _totals(ex)
    totals = {
        "totalInitialMargin": _money(t["margin"]), "totalMaintMargin": _money(t["maint"]),
        "totalWalletBalance": _money(t["wallet"]),
        "totalUnrealizedProfit": _money(t["unrealized"]),
        "totalMarginBalance": _money(t["wallet"] + t["unrealized"]),
        "totalPositionInitialMargin": _money(t["margin"]),
        "totalOpenOrderInitialMargin": _money(ZERO),
        "totalCrossWalletBalance": _money(t["wallet"]),
        "totalCrossUnPnl": _money(t["unrealized"]),
        "availableBalance": _money(t["available"]),
        "maxWithdrawAmount": _money(t["withdraw"]),
    }
    asset = {
        "asset": "USDT", "walletBalance": _money(t["wallet"]),
        "unrealizedProfit": _money(t["unrealized"]),
        "marginBalance": _money(t["wallet"] + t["unrealized"]),
        "maintMargin": _money(t["maint"]), "initialMargin": _money(t["margin"]),
        "positionInitialMargin": _money(t["margin"]), "openOrderInitialMargin": _money(ZERO),
        "crossWalletBalance": _money(t["wallet"]), "crossUnPnl": _money(t["unrealized"]),
        "availableBalance": _money(t["available"]), "maxWithdrawAmount": _money(t["withdraw"]),
        "marginAvailable": True, "updateTime": ms(ex.state.now()),
    }
    positions: list[dict[str, object]] = []
    for symbol, pos in ex.state.positions.items():
        if version == 3 and not pos.amount and not ex.state.has_open_orders(pos.spec):
            continue
        n = _position_numbers(ex, pos)
        row: dict[str, object] = {
            "symbol": symbol, "positionSide": "BOTH", "positionAmt": n["positionAmt"],
            "unrealizedProfit": n["unRealizedProfit"], "isolatedMargin": n["isolatedMargin"],
            "notional": n["notional"], "isolatedWallet": n["isolatedWallet"],
            "initialMargin": n["initialMargin"], "maintMargin": n["maintMargin"],
            "updateTime": ms(pos.updated),
        }
        if version == 2:
            row.update({
                "leverage": str(pos.leverage), "entryPrice": n["entryPrice"],
                "breakEvenPrice": n["breakEvenPrice"],
                "maxNotional": max_notional(pos.leverage),
                "positionInitialMargin": n["initialMargin"], "openOrderInitialMargin": "0",
                "isolated": pos.margin_type == "ISOLATED", "bidNotional": "0",
                "askNotional": "0",
            })
        positions.append(row)
    body: dict[str, object] = dict(totals)
    if version == 2:
        body.update({"feeTier": 0, "feeBurn": True, "canTrade": True, "canDeposit": True,
                     "canWithdraw": True, "updateTime": 0, "multiAssetsMargin": False,
                     "tradeGroupId": -1})
    body["assets"] = [asset]
    body["positions"] = positions
    return body


def ticker_24hr(ex: Exchange, params: Params) -> object:
    """A flat day: open = high = low = last = the mark (the simulator keeps no candles)."""
    now = ms(ex.state.now())
    rows = []
    for spec in _specs(ex, params):
        last = fixed(ex.state.marks[spec.symbol], spec.price_precision)
        rows.append({
            "symbol": spec.symbol, "priceChange": fixed(ZERO, spec.price_precision),
            "priceChangePercent": "0.000", "weightedAvgPrice": last, "lastPrice": last,
            "lastQty": fixed(spec.min_qty, spec.quantity_precision), "openPrice": last,
            "highPrice": last, "lowPrice": last, "volume": "0", "quoteVolume": "0",
            "openTime": now - 86_400_000, "closeTime": now, "firstId": 0, "lastId": 0,
            "count": 0,
        })
    return rows[0] if params.get("symbol") else rows


def _quotes(ex: Exchange, spec: SymbolSpec) -> tuple[str, str]:
    mark = ex.state.marks[spec.symbol]
    pp = spec.price_precision
    return fixed(mark - spec.tick_size, pp), fixed(mark + spec.tick_size, pp)


def book_ticker(ex: Exchange, params: Params) -> object:
    rows = []
    for spec in _specs(ex, params):
        bid, ask = _quotes(ex, spec)
        size = fixed(spec.market_max_qty, spec.quantity_precision)
        rows.append({"symbol": spec.symbol, "bidPrice": bid, "bidQty": size, "askPrice": ask,
                     "askQty": size, "time": ms(ex.state.now())})
    return rows[0] if params.get("symbol") else rows


DEPTH_LIMITS = {5: 2, 10: 2, 20: 2, 50: 2, 100: 5, 500: 10, 1000: 20}


def depth_weight(params: Params) -> int:
    raw = params.get("limit") or "500"
    return DEPTH_LIMITS.get(int(raw), 10) if raw.isdigit() else 10


def depth(ex: Exchange, params: Params) -> object:
    """A thin book of one level each side, one tick around the mark."""
    spec = ex.state.require_spec(params)
    bid, ask = _quotes(ex, spec)
    size = fixed(spec.market_max_qty, spec.quantity_precision)
    now = ms(ex.state.now())
    return {"lastUpdateId": now, "E": now, "T": now, "bids": [[bid, size]],
            "asks": [[ask, size]]}


def commission_rate(ex: Exchange, cfg: SimConfig, params: Params) -> object:
    spec = ex.state.require_spec(params)
    return {"symbol": spec.symbol, "makerCommissionRate": f"{cfg.account.maker_fee:f}",
            "takerCommissionRate": f"{cfg.account.taker_fee:f}"}


def order_rate_limits(cfg: SimConfig) -> list[dict[str, object]]:
    return [r for r in rate_limits(cfg) if r["rateLimitType"] == "ORDERS"]
