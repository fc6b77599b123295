"""Conditional (algo) orders of ``/fapi/v1/algoOrder``: place, query, cancel, open algo orders,
and triggering them when the mark crosses.

STOP / STOP_MARKET fire when the mark reaches the trigger against the position (SELL at mark ≤
trigger, BUY at ≥), TAKE_PROFIT / TAKE_PROFIT_MARKET the other way, trailing stops when the
mark retreats ``callbackRate`` % from its extreme since activation. A triggered algo spawns a
regular order (``kind`` ``triggered``, ``origType`` the algo's type) through ``orders.Orders``.
Algo orders live in their own id space.

One open ``closePosition`` order per symbol, type and side (-4130 for a second one). Closing a
position leaves its ``closePosition`` orders open, as Binance does without ``GTE_GTC``; such an
orphan that fires with nothing to close ends ``EXPIRED``.
"""

from __future__ import annotations

from decimal import Decimal

from app.sim import book, errors
from app.sim.account import reduces
from app.sim.config import SymbolSpec
from app.sim.models import CONDITIONAL_TYPES, ZERO, AlgoOrder, Order
from app.sim.orders import TIME_IN_FORCE, Orders
from app.sim.rules import (
    Params,
    bool_param,
    check_notional,
    check_price,
    check_quantity,
    client_id_param,
    decimal_param,
    position_side_param,
    require,
    side_param,
)
from app.sim.state import SimState

WORKING_TYPES = frozenset({"MARK_PRICE", "CONTRACT_PRICE"})


class Algos:
    """The algo-order endpoints and the trigger engine, over the shared ``SimState``."""

    def __init__(self, state: SimState, orders: Orders) -> None:
        self._state = state
        self._orders = orders

    def place(self, params: Params, *, visible_at: float = 0.0) -> dict[str, object]:
        """``POST /fapi/v1/algoOrder`` (``algoType=CONDITIONAL``). ``visible_at``: server time
        before which queries do not see the new algo order (fault ``delayed_visibility``)."""
        st = self._state
        algo_type = require(params, "algoType")
        if algo_type != "CONDITIONAL":
            raise errors.bad(-1102, "Invalid value for parameter 'algoType'.")
        spec = st.require_spec(params)
        side = side_param(params)
        order_type = require(params, "type")
        if order_type not in CONDITIONAL_TYPES:
            raise errors.invalid_order_type()
        position_side_param(params)
        client_id = client_id_param(params, "clientAlgoId")
        if client_id is not None and st.client_id_open(client_id):
            raise errors.client_id_duplicated()
        working = params.get("workingType") or "CONTRACT_PRICE"
        if working not in WORKING_TYPES:
            raise errors.bad(-1102, "Invalid value for parameter 'workingType'.")
        close_position = bool_param(params, "closePosition") or False
        reduce_only_raw = bool_param(params, "reduceOnly")
        price_protect = bool_param(params, "priceProtect") or False
        mark = st.marks[spec.symbol]
        qty = ZERO
        if close_position:
            if order_type not in ("STOP_MARKET", "TAKE_PROFIT_MARKET"):
                raise errors.not_required("closePosition")
            if params.get("quantity"):
                raise errors.not_required("quantity")
            if reduce_only_raw is not None:
                raise errors.not_required("reduceOnly")
        else:
            qty_raw = decimal_param(params, "quantity")
            assert qty_raw is not None
            check_quantity(spec, qty_raw, market=order_type.endswith("MARKET"))
            qty = qty_raw
        reduce_only = bool(reduce_only_raw)
        tif = params.get("timeInForce") or "GTC"
        if tif not in TIME_IN_FORCE:
            raise errors.invalid_time_in_force()
        price = ZERO
        if order_type in ("STOP", "TAKE_PROFIT"):
            limit = decimal_param(params, "price")
            assert limit is not None
            check_price(spec, limit)
            price = limit
        trigger = ZERO
        activate = ZERO
        callback = ZERO
        if order_type == "TRAILING_STOP_MARKET":
            callback_raw = decimal_param(params, "callbackRate")
            assert callback_raw is not None
            if not Decimal("0.1") <= callback_raw <= Decimal("20"):
                raise errors.bad(-2007, "Invalid callBack rate.")
            callback = callback_raw
            activate_raw = decimal_param(params, "activatePrice", required=False)
            if activate_raw is not None:
                check_price(spec, activate_raw)
                if (side == "BUY" and activate_raw >= mark) or (
                        side == "SELL" and activate_raw <= mark):
                    raise errors.would_immediately_trigger()
                activate = activate_raw
        else:
            trigger_raw = decimal_param(params, "triggerPrice")
            assert trigger_raw is not None
            check_price(spec, trigger_raw)
            trigger = trigger_raw
            if _crossed(order_type, side, trigger, mark):
                raise errors.would_immediately_trigger()
        if not close_position and not reduce_only:
            check_notional(spec, qty, price or trigger or mark, False)
        if close_position and st.close_position_algo_open(spec, order_type, side):
            raise errors.close_position_exists()
        now = st.now()
        algo = AlgoOrder(
            spec=spec, algo_id=st.next_algo_id(),
            client_algo_id=client_id or st.auto_client_id("algo"), side=side,
            order_type=order_type, qty=qty, price=price, trigger_price=trigger,
            working_type=working, close_position=close_position, reduce_only=reduce_only,
            price_protect=price_protect, time_in_force=tif, created=now, updated=now,
            visible_at=visible_at, activate_price=activate, callback_rate=callback,
            activated=activate == 0, extreme=mark,
        )
        st.add_algo(algo)
        return algo.to_json()

    def query(self, params: Params) -> dict[str, object]:
        """``GET /fapi/v1/algoOrder``; -2013 if unknown (or not yet visible)."""
        algo = self._find(params)
        if algo is None:
            raise errors.order_does_not_exist()
        return algo.to_json(detail=True)

    def cancel(self, params: Params) -> dict[str, object]:
        """``DELETE /fapi/v1/algoOrder``; -2011 unless the algo order is open."""
        algo = self._find(params)
        if algo is None or not algo.is_open:
            raise errors.unknown_order()
        self._state.set_algo_status(algo, "CANCELED", self._state.now())
        return {"algoId": algo.algo_id, "clientAlgoId": algo.client_algo_id,
                "code": "200", "msg": "success"}

    def list_open(self, params: Params) -> list[dict[str, object]]:
        """``GET /fapi/v1/openAlgoOrders``, for one symbol or all."""
        return [a.to_json(detail=True)
                for a in book.list_open(self._state, self._state.algos, params)]

    def cancel_all(self, params: Params) -> dict[str, object]:
        """``DELETE /fapi/v1/algoOpenOrders`` for one symbol."""
        st = self._state
        return book.cancel_all(st, st.algos, params,
                               lambda algo, now: st.set_algo_status(algo, "CANCELED", now))

    # ----------------------------------------------------------------- triggers
    def on_mark(self, spec: SymbolSpec, mark: Decimal) -> None:
        """Trigger the open algo orders of ``spec`` that ``mark`` fires."""
        for algo in self._state.algos.open(spec):
            if self._fires(algo, mark):
                self._trigger(algo, mark)

    def _fires(self, algo: AlgoOrder, mark: Decimal) -> bool:
        """Whether ``mark`` fires ``algo``; a trailing stop also tracks its extreme here."""
        if algo.order_type != "TRAILING_STOP_MARKET":
            return _crossed(algo.order_type, algo.side, algo.trigger_price, mark)
        if not algo.activated:
            reached = mark <= algo.activate_price if algo.side == "BUY" else (
                mark >= algo.activate_price)
            if not reached:
                return False
            algo.activated = True
            algo.extreme = mark
        rate = algo.callback_rate / 100
        if algo.side == "SELL":
            algo.extreme = max(algo.extreme, mark)
            return mark <= algo.extreme * (1 - rate)
        algo.extreme = min(algo.extreme, mark)
        return mark >= algo.extreme * (1 + rate)

    def _trigger(self, algo: AlgoOrder, mark: Decimal) -> None:
        """Spawn the algo's regular order and fill it if it can; a reduce-only or
        close-position algo with nothing to reduce expires instead."""
        st = self._state
        now = st.now()
        algo.trigger_time = now
        algo.updated = now
        pos = st.positions[algo.spec.symbol]
        is_market = algo.order_type.endswith("MARKET")
        qty = abs(pos.amount) if algo.close_position else algo.qty
        if (algo.close_position or algo.reduce_only) and (
                not reduces(pos, algo.side) or qty == 0):
            st.set_algo_status(algo, "EXPIRED", now, "no position to reduce")
            return
        order = Order(
            spec=algo.spec, order_id=st.next_order_id(), client_id=algo.client_algo_id,
            side=algo.side, type="MARKET" if is_market else "LIMIT", qty=qty,
            price=ZERO if is_market else algo.price, time_in_force=algo.time_in_force,
            reduce_only=algo.reduce_only, close_position=algo.close_position, created=now,
            updated=now, kind="triggered", stop_price=algo.trigger_price,
            orig_type=algo.order_type, working_type=algo.working_type,
        )
        st.add_order(order)
        algo.actual_order_id = order.order_id
        st.set_algo_status(algo, "TRIGGERED", now)
        if is_market or (algo.side == "BUY" and algo.price >= mark) or (
                algo.side == "SELL" and algo.price <= mark):
            self._orders.fill(order, self._orders.fill_price(algo.spec, algo.side, mark)
                              if is_market else algo.price)
        algo.actual_price = order.avg_price
        algo.actual_qty = order.executed_qty
        if not order.is_open:
            st.set_algo_status(algo, "FINISHED", now)

    def _find(self, params: Params) -> AlgoOrder | None:
        """The visible algo order named by ``algoId`` or (the latest with) ``clientAlgoId``;
        -1102 if neither is sent."""
        return book.find(self._state, self._state.algos, params, "algoId", "clientAlgoId")


def _crossed(order_type: str, side: str, trigger: Decimal, mark: Decimal) -> bool:
    """Whether a stop / take-profit with this trigger fires at this mark (Binance's rules)."""
    if order_type.startswith("STOP"):
        return mark >= trigger if side == "BUY" else mark <= trigger
    return mark <= trigger if side == "BUY" else mark >= trigger
