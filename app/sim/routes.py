"""The simulator's endpoint table: method, path, weight, order count, security, handler.

Weights are the simulator's own copy of Binance's numbers (SPEC §6.1, research §3); they are
not imported from the client's table on purpose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.sim import views
from app.sim.config import SimConfig
from app.sim.exchange import Exchange
from app.sim.rules import Params
from app.sim.userstream import UserStream


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler gets: the account, the config, the parameters, the server time, when
    an order it creates becomes visible to queries (``delayed_visibility``), and the share of
    a MARKET order that fills (``partial_fill``; None: all of it)."""

    ex: Exchange
    cfg: SimConfig
    p: Params
    now: float
    user: UserStream
    visible_at: float = 0.0
    fill_ratio: float | None = None


Handler = Callable[[Call], object]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    weight: int
    signed: bool
    handler: Handler
    weight_without_symbol: int | None = None
    orders: int = 0
    weight_fn: Callable[[Params], int] | None = None
    #: USER_STREAM security: the API key, no signature.
    key_only: bool = False

    def weight_for(self, params: Params) -> int:
        if self.weight_fn is not None:
            return self.weight_fn(params)
        if self.weight_without_symbol is not None and not params.get("symbol"):
            return self.weight_without_symbol
        return self.weight


ROUTES: tuple[Route, ...] = (
    Route("GET", "/fapi/v1/ping", 1, False, lambda c: {}),
    Route("GET", "/fapi/v1/time", 1, False, lambda c: {"serverTime": int(c.now * 1000)}),
    Route("GET", "/fapi/v1/exchangeInfo", 1, False,
          lambda c: views.exchange_info(c.cfg, c.now)),
    Route("GET", "/fapi/v1/premiumIndex", 1, False,
          lambda c: views.premium_index(c.ex, c.p), weight_without_symbol=10),
    Route("GET", "/fapi/v1/ticker/price", 1, False,
          lambda c: views.ticker_price(c.ex, c.p), weight_without_symbol=2),
    Route("GET", "/fapi/v2/ticker/price", 1, False,
          lambda c: views.ticker_price(c.ex, c.p), weight_without_symbol=2),
    Route("GET", "/fapi/v1/ticker/24hr", 1, False,
          lambda c: views.ticker_24hr(c.ex, c.p), weight_without_symbol=40),
    Route("GET", "/fapi/v1/ticker/bookTicker", 2, False,
          lambda c: views.book_ticker(c.ex, c.p), weight_without_symbol=5),
    Route("GET", "/fapi/v1/depth", 10, False, lambda c: views.depth(c.ex, c.p),
          weight_fn=views.depth_weight),
    Route("GET", "/fapi/v1/commissionRate", 20, True,
          lambda c: views.commission_rate(c.ex, c.cfg, c.p)),
    Route("GET", "/fapi/v1/rateLimit/order", 1, True,
          lambda c: views.order_rate_limits(c.cfg)),
    Route("POST", "/fapi/v1/order", 0, True,
          lambda c: c.ex.orders.place(c.p, visible_at=c.visible_at, fill_ratio=c.fill_ratio),
          orders=1),
    Route("GET", "/fapi/v1/order", 1, True, lambda c: c.ex.orders.query(c.p)),
    Route("DELETE", "/fapi/v1/order", 1, True, lambda c: c.ex.orders.cancel(c.p)),
    Route("GET", "/fapi/v1/openOrder", 1, True, lambda c: c.ex.orders.query_open(c.p)),
    Route("GET", "/fapi/v1/openOrders", 1, True, lambda c: c.ex.orders.list_open(c.p),
       weight_without_symbol=40),
    Route("DELETE", "/fapi/v1/allOpenOrders", 1, True,
          lambda c: c.ex.orders.cancel_all(c.p)),
    Route("GET", "/fapi/v1/allOrders", 5, True, lambda c: c.ex.orders.history(c.p)),
    Route("GET", "/fapi/v1/userTrades", 5, True, lambda c: c.ex.orders.trades(c.p)),
    Route("POST", "/fapi/v1/algoOrder", 0, True,
          lambda c: c.ex.algos.place(c.p, visible_at=c.visible_at), orders=1),
    Route("GET", "/fapi/v1/algoOrder", 1, True, lambda c: c.ex.algos.query(c.p)),
    Route("DELETE", "/fapi/v1/algoOrder", 1, True, lambda c: c.ex.algos.cancel(c.p)),
    Route("GET", "/fapi/v1/openAlgoOrders", 1, True, lambda c: c.ex.algos.list_open(c.p),
       weight_without_symbol=40),
    Route("DELETE", "/fapi/v1/algoOpenOrders", 1, True,
          lambda c: c.ex.algos.cancel_all(c.p)),
    Route("POST", "/fapi/v1/leverage", 1, True, lambda c: c.ex.account.set_leverage(c.p)),
    Route("GET", "/fapi/v1/leverageBracket", 1, True,
          lambda c: views.leverage_bracket(c.ex, c.p)),
    Route("POST", "/fapi/v1/marginType", 1, True, lambda c: c.ex.account.set_margin_type(c.p)),
    Route("GET", "/fapi/v1/positionSide/dual", 30, True, lambda c: c.ex.account.position_mode()),
    Route("POST", "/fapi/v1/positionSide/dual", 1, True,
          lambda c: c.ex.account.set_position_mode(c.p)),
    Route("GET", "/fapi/v2/positionRisk", 5, True,
          lambda c: views.position_risk_v2(c.ex, c.p)),
    Route("GET", "/fapi/v3/positionRisk", 5, True,
          lambda c: views.position_risk_v3(c.ex, c.p)),
    Route("POST", "/fapi/v1/listenKey", 1, False, lambda c: c.user.create(), key_only=True),
    Route("PUT", "/fapi/v1/listenKey", 1, False, lambda c: c.user.keepalive(), key_only=True),
    Route("DELETE", "/fapi/v1/listenKey", 1, False, lambda c: c.user.delete(),
          key_only=True),
    Route("GET", "/fapi/v2/balance", 5, True, lambda c: views.balance(c.ex)),
    Route("GET", "/fapi/v3/balance", 5, True, lambda c: views.balance(c.ex)),
    Route("GET", "/fapi/v2/account", 5, True, lambda c: views.account(c.ex, 2)),
    Route("GET", "/fapi/v3/account", 5, True, lambda c: views.account(c.ex, 3)),
)

ROUTE_TABLE: dict[tuple[str, str], Route] = {(r.method, r.path): r for r in ROUTES}
