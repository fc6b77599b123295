"""The declarative endpoint table (SPEC §6.1): every exchange call execd makes, with its cost.

Weights follow Binance's current USDⓈ-M spec (research/binance-futures-api.md §3). ``orders`` is
the cost on the account's order-count buckets. ``group`` names the circuit breaker, ``priority``
the limiter priority a call gets unless the caller says otherwise (a stop-loss placement is
CRITICAL, an entry NORMAL, both on POST order).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from app.resilience.limiter import Priority


class Security(StrEnum):
    NONE = "NONE"
    SIGNED = "SIGNED"
    #: Binance's USER_STREAM: the API-key header, no signature (the listenKey calls).
    USER_STREAM = "USER_STREAM"


class BreakerGroup(StrEnum):
    TRADE = "trade"
    ACCOUNT = "account"
    MARKET = "market"


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    method: str
    path: str
    security: Security
    weight: int
    group: BreakerGroup
    priority: Priority
    orders: int = 0
    #: Weight when called without ``symbol`` (None: the same).
    weight_without_symbol: int | None = None
    #: Places an order: an unknown outcome is resolved by lookup, never by a blind resend.
    places_order: bool = False

    def weight_for(self, has_symbol: bool) -> int:
        if not has_symbol and self.weight_without_symbol is not None:
            return self.weight_without_symbol
        return self.weight

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


S, N, U = Security.SIGNED, Security.NONE, Security.USER_STREAM
T, A, M = BreakerGroup.TRADE, BreakerGroup.ACCOUNT, BreakerGroup.MARKET
CRIT, NORM, LOW = Priority.CRITICAL, Priority.NORMAL, Priority.LOW

PLACE_ORDER = Endpoint("place_order", "POST", "/fapi/v1/order", S, 0, T, NORM, orders=1,
                       places_order=True)
GET_ORDER = Endpoint("get_order", "GET", "/fapi/v1/order", S, 1, T, LOW)
CANCEL_ORDER = Endpoint("cancel_order", "DELETE", "/fapi/v1/order", S, 1, T, CRIT)
CANCEL_ALL_ORDERS = Endpoint("cancel_all_orders", "DELETE", "/fapi/v1/allOpenOrders", S, 1, T,
                             CRIT)
OPEN_ORDERS = Endpoint("open_orders", "GET", "/fapi/v1/openOrders", S, 1, T, LOW,
                       weight_without_symbol=40)
PLACE_ALGO = Endpoint("place_algo_order", "POST", "/fapi/v1/algoOrder", S, 0, T, CRIT,
                      orders=1, places_order=True)
GET_ALGO = Endpoint("get_algo_order", "GET", "/fapi/v1/algoOrder", S, 1, T, LOW)
CANCEL_ALGO = Endpoint("cancel_algo_order", "DELETE", "/fapi/v1/algoOrder", S, 1, T, CRIT)
CANCEL_ALL_ALGOS = Endpoint("cancel_all_algo_orders", "DELETE", "/fapi/v1/algoOpenOrders", S,
                            1, T, CRIT)
OPEN_ALGOS = Endpoint("open_algo_orders", "GET", "/fapi/v1/openAlgoOrders", S, 1, T, LOW,
                      weight_without_symbol=40)
SET_LEVERAGE = Endpoint("set_leverage", "POST", "/fapi/v1/leverage", S, 1, A, NORM)
SET_MARGIN_TYPE = Endpoint("set_margin_type", "POST", "/fapi/v1/marginType", S, 1, A, NORM)
POSITION_MODE = Endpoint("position_mode", "GET", "/fapi/v1/positionSide/dual", S, 30, A, NORM)
POSITION_RISK = Endpoint("position_risk", "GET", "/fapi/v3/positionRisk", S, 5, A, LOW)
BALANCE = Endpoint("balance", "GET", "/fapi/v3/balance", S, 5, A, LOW)
ACCOUNT = Endpoint("account", "GET", "/fapi/v3/account", S, 5, A, LOW)
EXCHANGE_INFO = Endpoint("exchange_info", "GET", "/fapi/v1/exchangeInfo", N, 1, M, LOW)
SERVER_TIME = Endpoint("server_time", "GET", "/fapi/v1/time", N, 1, M, NORM)
MARK_PRICE = Endpoint("mark_price", "GET", "/fapi/v1/premiumIndex", N, 1, M, NORM,
                      weight_without_symbol=10)
TICKER_PRICE = Endpoint("ticker_price", "GET", "/fapi/v1/ticker/price", N, 1, M, LOW,
                        weight_without_symbol=2)
NEW_LISTEN_KEY = Endpoint("new_listen_key", "POST", "/fapi/v1/listenKey", U, 1, A, NORM)
KEEPALIVE_LISTEN_KEY = Endpoint("keepalive_listen_key", "PUT", "/fapi/v1/listenKey", U, 1, A,
                                NORM)
CLOSE_LISTEN_KEY = Endpoint("close_listen_key", "DELETE", "/fapi/v1/listenKey", U, 1, A, NORM)

ENDPOINTS: tuple[Endpoint, ...] = (
    PLACE_ORDER, GET_ORDER, CANCEL_ORDER, CANCEL_ALL_ORDERS, OPEN_ORDERS, PLACE_ALGO, GET_ALGO,
    CANCEL_ALGO, CANCEL_ALL_ALGOS, OPEN_ALGOS, SET_LEVERAGE, SET_MARGIN_TYPE, POSITION_MODE,
    POSITION_RISK,
    BALANCE, ACCOUNT, EXCHANGE_INFO, SERVER_TIME, MARK_PRICE, TICKER_PRICE, NEW_LISTEN_KEY,
    KEEPALIVE_LISTEN_KEY, CLOSE_LISTEN_KEY,
)
BY_ROUTE: dict[tuple[str, str], Endpoint] = {(e.method, e.path): e for e in ENDPOINTS}
