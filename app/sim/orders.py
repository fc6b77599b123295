"""Regular orders (``/fapi/v1/order`` and its lists): place, query, cancel, open orders, all
orders, user trades, and fills.

MARKET orders fill at once at the mark ± slippage; LIMIT orders rest until the mark crosses
their price (``on_mark``). Conditional types belong to ``algos`` (-4120 here). Raises
``errors.ApiError`` for every rule Binance enforces.
"""

from __future__ import annotations

from decimal import Decimal

from app.sim import book, errors
from app.sim.account import Account, reduces
from app.sim.config import SymbolSpec
from app.sim.models import CONDITIONAL_TYPES, ZERO, Order, Position, Trade
from app.sim.rules import (
    Params,
    bool_param,
    check_notional,
    check_percent_price,
    check_price,
    check_quantity,
    client_id_param,
    decimal_param,
    int_param,
    position_side_param,
    require,
    side_param,
    to_tick,
)
from app.sim.state import SimState

TIME_IN_FORCE = frozenset({"GTC", "IOC", "FOK", "GTX", "GTD"})
MAX_OPEN_ORDERS_PER_SYMBOL = 200


class Orders:
    """The regular-order endpoints and the fill engine, over the shared ``SimState``."""

    def __init__(self, state: SimState, account: Account) -> None:
        self._state = state
        self._account = account

    def place(self, params: Params, *, visible_at: float = 0.0,
              fill_ratio: float | None = None) -> dict[str, object]:
        """``POST /fapi/v1/order`` (MARKET, LIMIT). ``visible_at``: server time before which
        queries do not see the new order (fault ``delayed_visibility``). ``fill_ratio`` (fault
        ``partial_fill``): a MARKET order fills that share of its quantity, rounded down to the
        step but at least one step, and the rest expires."""
        st = self._state
        spec = st.require_spec(params)
        side = side_param(params)
        order_type = require(params, "type")
        if order_type in CONDITIONAL_TYPES:
            raise errors.use_algo_api()
        if order_type not in ("MARKET", "LIMIT"):
            raise errors.invalid_order_type()
        position_side_param(params)
        for legacy in ("closePosition", "stopPrice", "activationPrice", "callbackRate"):
            if params.get(legacy):
                raise errors.not_required(legacy)
        client_id = client_id_param(params, "newClientOrderId")
        if client_id is not None and st.client_id_open(client_id):
            raise errors.client_id_duplicated()
        reduce_only = bool_param(params, "reduceOnly") or False
        resp_type = params.get("newOrderRespType", "ACK")
        if resp_type not in ("ACK", "RESULT"):
            raise errors.bad(-1102, "Invalid value for parameter 'newOrderRespType'.")
        qty = decimal_param(params, "quantity")
        assert qty is not None
        check_quantity(spec, qty, market=order_type == "MARKET")
        mark = st.marks[spec.symbol]
        tif = "GTC"
        price = ZERO
        if order_type == "LIMIT":
            tif = require(params, "timeInForce")
            if tif not in TIME_IN_FORCE:
                raise errors.invalid_time_in_force()
            limit = decimal_param(params, "price")
            assert limit is not None
            check_price(spec, limit)
            check_percent_price(spec, side, limit, mark)
            price = limit
        elif params.get("price"):
            raise errors.not_required("price")
        check_notional(spec, qty, price or mark, reduce_only)
        if reduce_only:
            qty = _reduce_only_qty(st.positions[spec.symbol], side, qty)
        marketable = order_type == "MARKET" or (
            price >= mark if side == "BUY" else price <= mark
        )
        if order_type == "LIMIT":
            if tif == "GTX" and marketable:
                raise errors.post_only_rejected()
            if tif == "FOK" and not marketable:
                raise errors.fok_rejected()
            if st.orders.open_count(spec) >= MAX_OPEN_ORDERS_PER_SYMBOL:
                raise errors.max_open_orders()
        if not reduce_only:
            self._account.check_margin(spec, side, qty, price or mark)
        now = st.now()
        order = Order(
            spec=spec, order_id=st.next_order_id(),
            client_id=client_id or st.auto_client_id("web_"), side=side, type=order_type,
            qty=qty, price=price, time_in_force=tif, reduce_only=reduce_only,
            close_position=False, created=now, updated=now, visible_at=visible_at,
        )
        st.add_order(order)
        if marketable:
            part = None
            if fill_ratio is not None and order_type == "MARKET":
                part = max(spec.step_size, _floor_to_step(spec, qty * Decimal(str(fill_ratio))))
            self.fill(order, self.fill_price(spec, side, mark), qty=part)
        elif tif == "IOC":
            st.set_order_status(order, "EXPIRED", now)
        return order.to_json(ack=resp_type == "ACK")

    def query(self, params: Params) -> dict[str, object]:
        """``GET /fapi/v1/order``; -2013 if unknown (or not yet visible)."""
        order = self._find(params)
        if order is None:
            raise errors.order_does_not_exist()
        return order.to_json(with_time=True)

    def query_open(self, params: Params) -> dict[str, object]:
        """``GET /fapi/v1/openOrder``; -2013 unless the order is open."""
        order = self._find(params)
        if order is None or not order.is_open:
            raise errors.order_does_not_exist()
        return order.to_json(with_time=True)

    def cancel(self, params: Params) -> dict[str, object]:
        """``DELETE /fapi/v1/order``; -2011 unless the order is open."""
        order = self._find(params)
        if order is None or not order.is_open:
            raise errors.unknown_order()
        self._state.set_order_status(order, "CANCELED", self._state.now())
        return order.to_json()

    def list_open(self, params: Params) -> list[dict[str, object]]:
        """``GET /fapi/v1/openOrders``, for one symbol or all."""
        return [o.to_json(with_time=True)
                for o in book.list_open(self._state, self._state.orders, params)]

    def cancel_all(self, params: Params) -> dict[str, object]:
        """``DELETE /fapi/v1/allOpenOrders`` for one symbol."""
        st = self._state
        return book.cancel_all(st, st.orders, params,
                               lambda order, now: st.set_order_status(order, "CANCELED", now))

    def history(self, params: Params) -> list[dict[str, object]]:
        """``GET /fapi/v1/allOrders``: from ``orderId`` on, at most ``limit`` (≤ 1000); without
        ``orderId`` the most recent ``limit`` orders, oldest first (as Binance answers)."""
        st = self._state
        spec = st.require_spec(params)
        from_id = int_param(params, "orderId", required=False)
        limit = min(int_param(params, "limit", required=False) or 500, 1000)
        if from_id is None:
            rows = st.orders.recent(spec, limit)
        else:
            rows = st.orders.history(spec, from_id, limit)
        return [o.to_json(with_time=True) for o in rows]

    def trades(self, params: Params) -> list[dict[str, object]]:
        """``GET /fapi/v1/userTrades``: the last ``limit`` (≤ 1000) trades of a symbol."""
        st = self._state
        spec = st.require_spec(params)
        limit = min(int_param(params, "limit", required=False) or 500, 1000)
        return [t.to_json() for t in st.trades_of(spec)[-limit:]]

    # ----------------------------------------------------------------- fills
    def on_mark(self, spec: SymbolSpec, mark: Decimal) -> None:
        """Fill, as maker at their own price, the resting limits of ``spec`` that ``mark``
        crossed."""
        for order in self._state.orders.open(spec):
            if (order.side == "BUY" and mark <= order.price) or (
                    order.side == "SELL" and mark >= order.price):
                self.fill(order, order.price, maker=True)

    def fill_price(self, spec: SymbolSpec, side: str, mark: Decimal) -> Decimal:
        """Where a MARKET order fills: the mark moved against the taker by the slippage."""
        slip = self._state.config.market.slippage
        raw = mark * (1 + slip) if side == "BUY" else mark * (1 - slip)
        return to_tick(spec, raw)

    def fill(self, order: Order, price: Decimal, *, maker: bool = False,
             qty: Decimal | None = None) -> None:
        """Fill the rest of ``order`` at ``price`` (or only ``qty`` of it, and the rest
        expires): position, realized PnL, fee, trade. A reduce-only or close-position order
        fills at most the position and the rest expires; with nothing to reduce it expires."""
        st = self._state
        pos = st.positions[order.spec.symbol]
        rest = order.qty - order.executed_qty
        qty = rest if qty is None else min(qty, rest)
        if order.reduce_only or order.close_position:
            qty = min(qty, abs(pos.amount)) if reduces(pos, order.side) else ZERO
            if qty == 0:
                st.set_order_status(order, "EXPIRED", st.now())
                return
        now = st.now()
        realized, fee = self._account.settle(order.spec, order.side, qty, price,
                                             maker=maker, now=now)
        st.record_fill(order, Trade(order.spec, st.next_trade_id(), order.order_id, order.side,
                                    price, qty, realized, fee, now, maker))
        if order.is_open and (qty < rest):
            st.set_order_status(order, "EXPIRED", now)   # the part that did not fill

    def _find(self, params: Params) -> Order | None:
        """The visible order of the request's symbol named by ``orderId`` or (the latest with)
        ``origClientOrderId``; -1102 if neither is sent."""
        st = self._state
        return book.find(st, st.orders, params, "orderId", "origClientOrderId",
                         st.require_spec(params))


def _floor_to_step(spec: SymbolSpec, qty: Decimal) -> Decimal:
    """``qty`` rounded down to the symbol's step size."""
    return (qty // spec.step_size) * spec.step_size


def _reduce_only_qty(pos: Position, side: str, qty: Decimal) -> Decimal:
    """A reduce-only order's quantity capped at the position; -2022 if it would not reduce."""
    if not reduces(pos, side):
        raise errors.reduce_only_rejected()
    return min(qty, abs(pos.amount))
