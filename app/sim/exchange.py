"""The simulated USDⓈ-M account and matching: orders, algo orders, positions, balance.

One-way mode only. MARKET orders fill at once at the mark ± slippage; LIMIT orders rest until the
mark crosses their price; conditional (algo) orders trigger when the mark crosses their trigger
price and spawn a regular order (listed as ``triggered``). The server layer owns HTTP, security,
rate limits and faults; this module owns the trading rules and raises ``errors.ApiError``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from decimal import Decimal

from app.sim import errors
from app.sim.config import SimConfig, SymbolSpec
from app.sim.models import (
    CONDITIONAL_TYPES,
    ZERO,
    AlgoOrder,
    Ledger,
    Order,
    Position,
    Trade,
    max_notional,
)
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

TIME_IN_FORCE = frozenset({"GTC", "IOC", "FOK", "GTX", "GTD"})
WORKING_TYPES = frozenset({"MARK_PRICE", "CONTRACT_PRICE"})
MAX_OPEN_ORDERS_PER_SYMBOL = 200


class Exchange:
    """The account state. ``clock`` returns epoch seconds (injectable for tests)."""

    def __init__(self, config: SimConfig, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self.symbols: dict[str, SymbolSpec] = {s.symbol: s for s in config.symbols}
        self.reset()

    def reset(self) -> None:
        cfg = self._config
        self.marks: dict[str, Decimal] = {s.symbol: s.price for s in cfg.symbols}
        self.positions: dict[str, Position] = {
            s.symbol: Position(s, cfg.account.default_leverage) for s in cfg.symbols
        }
        self.wallet: Decimal = cfg.account.balance
        self.ledger = Ledger()
        self.orders: dict[int, Order] = {}
        self.algos: dict[int, AlgoOrder] = {}
        self.trades: list[Trade] = []
        self._order_ids = itertools.count(8_389_765_000_000)
        self._algo_ids = itertools.count(4_000_000_230_000_000)
        self._trade_ids = itertools.count(1_000_000)
        self._auto_ids = itertools.count(1)

    # ----------------------------------------------------------------- helpers
    def spec(self, params: Params, *, required: bool = True) -> SymbolSpec | None:
        symbol = params.get("symbol")
        if not symbol:
            if required:
                raise errors.mandatory("symbol")
            return None
        spec = self.symbols.get(symbol)
        if spec is None:
            raise errors.invalid_symbol()
        return spec

    def _spec(self, params: Params) -> SymbolSpec:
        spec = self.spec(params)
        assert spec is not None
        return spec

    def now(self) -> float:
        return self._clock()

    def available_balance(self) -> Decimal:
        """Wallet + unrealized PnL − initial margin of positions and open orders."""
        free = self.wallet
        for pos in self.positions.values():
            mark = self.marks[pos.spec.symbol]
            free += pos.unrealized(mark) - pos.initial_margin(mark)
        for order in self.orders.values():
            if order.is_open and not order.reduce_only:
                lev = self.positions[order.spec.symbol].leverage
                free -= (order.qty - order.executed_qty) * order.price / lev
        return free

    def _open_client_ids(self) -> set[str]:
        ids = {o.client_id for o in self.orders.values() if o.is_open}
        ids.update(a.client_algo_id for a in self.algos.values() if a.is_open)
        return ids

    def _auto_client_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._auto_ids):022d}"

    # ----------------------------------------------------------------- regular orders
    def place_order(self, params: Params, *, visible_at: float = 0.0) -> dict[str, object]:
        spec = self._spec(params)
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
        if client_id is not None and client_id in self._open_client_ids():
            raise errors.client_id_duplicated()
        reduce_only = bool_param(params, "reduceOnly") or False
        resp_type = params.get("newOrderRespType", "ACK")
        if resp_type not in ("ACK", "RESULT"):
            raise errors.bad(-1102, "Invalid value for parameter 'newOrderRespType'.")
        qty = decimal_param(params, "quantity")
        assert qty is not None
        check_quantity(spec, qty, market=order_type == "MARKET")
        mark = self.marks[spec.symbol]
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
        pos = self.positions[spec.symbol]
        if reduce_only:
            qty = self._reduce_only_qty(pos, side, qty)
        marketable = order_type == "MARKET" or (
            price >= mark if side == "BUY" else price <= mark
        )
        if order_type == "LIMIT":
            if tif == "GTX" and marketable:
                raise errors.post_only_rejected()
            if tif == "FOK" and not marketable:
                raise errors.fok_rejected()
            open_here = sum(1 for o in self.orders.values() if o.is_open and o.spec is spec)
            if open_here >= MAX_OPEN_ORDERS_PER_SYMBOL:
                raise errors.max_open_orders()
        if not reduce_only:
            self._check_margin(pos, side, qty, price or mark)
        now = self.now()
        order = Order(
            spec=spec, order_id=next(self._order_ids),
            client_id=client_id or self._auto_client_id("web_"), side=side, type=order_type,
            qty=qty, price=price, time_in_force=tif, reduce_only=reduce_only,
            close_position=False, created=now, updated=now, visible_at=visible_at,
        )
        self.orders[order.order_id] = order
        self.ledger.entries.append(order)
        if marketable:
            self._fill(order, self._fill_price(spec, side, mark))
        elif tif == "IOC":
            order.status = "EXPIRED"
        return order.to_json(ack=resp_type == "ACK")

    def _reduce_only_qty(self, pos: Position, side: str, qty: Decimal) -> Decimal:
        closes = (pos.amount > 0 and side == "SELL") or (pos.amount < 0 and side == "BUY")
        if not closes:
            raise errors.reduce_only_rejected()
        return min(qty, abs(pos.amount))

    def _check_margin(self, pos: Position, side: str, qty: Decimal, price: Decimal) -> None:
        signed = qty if side == "BUY" else -qty
        after = pos.amount + signed
        added = max(ZERO, abs(after) - abs(pos.amount))
        if added and added * price / pos.leverage > self.available_balance():
            raise errors.margin_insufficient()

    def _fill_price(self, spec: SymbolSpec, side: str, mark: Decimal) -> Decimal:
        slip = self._config.market.slippage
        raw = mark * (1 + slip) if side == "BUY" else mark * (1 - slip)
        return to_tick(spec, raw)

    def _fill(self, order: Order, price: Decimal, *, maker: bool = False) -> None:
        """Fill the rest of ``order`` at ``price``: position, realized PnL, fee, trade."""
        pos = self.positions[order.spec.symbol]
        qty = order.qty - order.executed_qty
        if order.reduce_only or order.close_position:
            closes = (pos.amount > 0 and order.side == "SELL") or (
                pos.amount < 0 and order.side == "BUY")
            qty = min(qty, abs(pos.amount)) if closes else ZERO
            if qty == 0:
                order.status = "EXPIRED"
                order.updated = self.now()
                return
        signed = qty if order.side == "BUY" else -qty
        realized = ZERO
        if pos.amount and (pos.amount > 0) != (signed > 0):
            closed = min(abs(signed), abs(pos.amount))
            direction = 1 if pos.amount > 0 else -1
            realized = closed * (price - pos.entry_price) * direction
        after = pos.amount + signed
        if after == 0:
            pos.entry_price = ZERO
        elif pos.amount == 0 or (pos.amount > 0) != (after > 0):
            pos.entry_price = price
        elif abs(after) > abs(pos.amount):
            pos.entry_price = (abs(pos.amount) * pos.entry_price + qty * price) / abs(after)
        pos.amount = after
        now = self.now()
        pos.updated = now
        fee_rate = self._config.account.maker_fee if maker else self._config.account.taker_fee
        fee = qty * price * fee_rate
        self.wallet += realized - fee
        order.executed_qty += qty
        order.cum_quote += qty * price
        order.status = "FILLED"
        order.updated = now
        self.trades.append(Trade(order.spec, next(self._trade_ids), order.order_id, order.side,
                                 price, qty, realized, fee, now, maker))

    def _find_order(self, params: Params, spec: SymbolSpec) -> Order | None:
        order_id = int_param(params, "orderId", required=False)
        client_id = params.get("origClientOrderId")
        if order_id is None and not client_id:
            raise errors.bad(
                -1102, "Param 'orderId' or 'origClientOrderId' must be sent, but both were "
                "empty/null!")
        now = self.now()
        if order_id is not None:
            found = self.orders.get(order_id)
            candidates: Iterable[Order] = [found] if found is not None else []
        else:
            candidates = (o for o in reversed(self.orders.values()) if o.client_id == client_id)
        for order in candidates:
            if order.spec is spec and order.visible_at <= now:
                return order
        return None

    def query_order(self, params: Params) -> dict[str, object]:
        order = self._find_order(params, self._spec(params))
        if order is None:
            raise errors.order_does_not_exist()
        return order.to_json(with_time=True)

    def query_open_order(self, params: Params) -> dict[str, object]:
        order = self._find_order(params, self._spec(params))
        if order is None or not order.is_open:
            raise errors.order_does_not_exist()
        return order.to_json(with_time=True)

    def cancel_order(self, params: Params) -> dict[str, object]:
        order = self._find_order(params, self._spec(params))
        if order is None or not order.is_open:
            raise errors.unknown_order()
        order.status = "CANCELED"
        order.updated = self.now()
        return order.to_json()

    def open_orders(self, params: Params) -> list[dict[str, object]]:
        spec = self.spec(params, required=False)
        now = self.now()
        return [o.to_json(with_time=True) for o in self.orders.values()
                if o.is_open and o.visible_at <= now and (spec is None or o.spec is spec)]

    def cancel_all_orders(self, params: Params) -> dict[str, object]:
        spec = self._spec(params)
        now = self.now()
        for order in self.orders.values():
            if order.is_open and order.spec is spec:
                order.status = "CANCELED"
                order.updated = now
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    def all_orders(self, params: Params) -> list[dict[str, object]]:
        spec = self._spec(params)
        from_id = int_param(params, "orderId", required=False) or 0
        limit = min(int_param(params, "limit", required=False) or 500, 1000)
        rows = [o for o in self.orders.values() if o.spec is spec and o.order_id >= from_id]
        return [o.to_json(with_time=True) for o in rows[:limit]]

    def user_trades(self, params: Params) -> list[dict[str, object]]:
        spec = self._spec(params)
        limit = min(int_param(params, "limit", required=False) or 500, 1000)
        rows = [t for t in self.trades if t.spec is spec]
        return [t.to_json() for t in rows[-limit:]]

    # ----------------------------------------------------------------- algo orders
    def place_algo(self, params: Params, *, visible_at: float = 0.0) -> dict[str, object]:
        algo_type = require(params, "algoType")
        if algo_type != "CONDITIONAL":
            raise errors.bad(-1102, "Invalid value for parameter 'algoType'.")
        spec = self._spec(params)
        side = side_param(params)
        order_type = require(params, "type")
        if order_type not in CONDITIONAL_TYPES:
            raise errors.invalid_order_type()
        position_side_param(params)
        client_id = client_id_param(params, "clientAlgoId")
        if client_id is not None and client_id in self._open_client_ids():
            raise errors.client_id_duplicated()
        working = params.get("workingType") or "CONTRACT_PRICE"
        if working not in WORKING_TYPES:
            raise errors.bad(-1102, "Invalid value for parameter 'workingType'.")
        close_position = bool_param(params, "closePosition") or False
        reduce_only_raw = bool_param(params, "reduceOnly")
        price_protect = bool_param(params, "priceProtect") or False
        mark = self.marks[spec.symbol]
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
        now = self.now()
        algo = AlgoOrder(
            spec=spec, algo_id=next(self._algo_ids),
            client_algo_id=client_id or self._auto_client_id("algo"), side=side,
            order_type=order_type, qty=qty, price=price, trigger_price=trigger,
            working_type=working, close_position=close_position, reduce_only=reduce_only,
            price_protect=price_protect, time_in_force=tif, created=now, updated=now,
            visible_at=visible_at, activate_price=activate, callback_rate=callback,
            activated=activate == 0, extreme=mark,
        )
        self.algos[algo.algo_id] = algo
        self.ledger.entries.append(algo)
        return algo.to_json()

    def _find_algo(self, params: Params) -> AlgoOrder | None:
        algo_id = int_param(params, "algoId", required=False)
        client_id = params.get("clientAlgoId")
        if algo_id is None and not client_id:
            raise errors.bad(
                -1102, "Param 'algoId' or 'clientAlgoId' must be sent, but both were empty/null!")
        now = self.now()
        if algo_id is not None:
            found = self.algos.get(algo_id)
            candidates: Iterable[AlgoOrder] = [found] if found is not None else []
        else:
            candidates = (a for a in reversed(self.algos.values())
                          if a.client_algo_id == client_id)
        for algo in candidates:
            if algo.visible_at <= now:
                return algo
        return None

    def query_algo(self, params: Params) -> dict[str, object]:
        algo = self._find_algo(params)
        if algo is None:
            raise errors.order_does_not_exist()
        return algo.to_json(detail=True)

    def cancel_algo(self, params: Params) -> dict[str, object]:
        algo = self._find_algo(params)
        if algo is None or not algo.is_open:
            raise errors.unknown_order()
        algo.status = "CANCELED"
        algo.updated = self.now()
        return {"algoId": algo.algo_id, "clientAlgoId": algo.client_algo_id,
                "code": "200", "msg": "success"}

    def open_algos(self, params: Params) -> list[dict[str, object]]:
        spec = self.spec(params, required=False)
        now = self.now()
        return [a.to_json(detail=True) for a in self.algos.values()
                if a.is_open and a.visible_at <= now and (spec is None or a.spec is spec)]

    def cancel_all_algos(self, params: Params) -> dict[str, object]:
        spec = self._spec(params)
        now = self.now()
        for algo in self.algos.values():
            if algo.is_open and algo.spec is spec:
                algo.status = "CANCELED"
                algo.updated = now
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    # ----------------------------------------------------------------- the market moves
    def set_mark(self, symbol: str, price: Decimal) -> None:
        """Move a mark price, then trigger algo orders and fill resting limits it crossed."""
        self.marks[symbol] = price
        spec = self.symbols[symbol]
        for algo in [a for a in self.algos.values() if a.is_open and a.spec is spec]:
            if self._algo_fires(algo, price):
                self._trigger(algo, price)
        for order in [o for o in self.orders.values() if o.is_open and o.spec is spec]:
            if (order.side == "BUY" and price <= order.price) or (
                    order.side == "SELL" and price >= order.price):
                self._fill(order, order.price, maker=True)

    def _algo_fires(self, algo: AlgoOrder, mark: Decimal) -> bool:
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
        now = self.now()
        algo.trigger_time = now
        algo.updated = now
        pos = self.positions[algo.spec.symbol]
        is_market = algo.order_type.endswith("MARKET")
        qty = abs(pos.amount) if algo.close_position else algo.qty
        closes = (pos.amount > 0 and algo.side == "SELL") or (
            pos.amount < 0 and algo.side == "BUY")
        if (algo.close_position or algo.reduce_only) and (not closes or qty == 0):
            algo.status = "EXPIRED"
            return
        order = Order(
            spec=algo.spec, order_id=next(self._order_ids), client_id=algo.client_algo_id,
            side=algo.side, type="MARKET" if is_market else "LIMIT", qty=qty,
            price=ZERO if is_market else algo.price, time_in_force=algo.time_in_force,
            reduce_only=algo.reduce_only, close_position=algo.close_position, created=now,
            updated=now, kind="triggered", stop_price=algo.trigger_price,
            orig_type=algo.order_type, working_type=algo.working_type,
        )
        self.orders[order.order_id] = order
        self.ledger.entries.append(order)
        algo.actual_order_id = order.order_id
        algo.status = "TRIGGERED"
        if is_market or (algo.side == "BUY" and algo.price >= mark) or (
                algo.side == "SELL" and algo.price <= mark):
            self._fill(order, self._fill_price(algo.spec, algo.side, mark) if is_market
                       else algo.price)
        if not order.is_open:
            algo.status = "FINISHED"
        algo.actual_price = order.avg_price
        algo.actual_qty = order.executed_qty

    # ----------------------------------------------------------------- account settings
    def set_leverage(self, params: Params) -> dict[str, object]:
        spec = self._spec(params)
        raw = require(params, "leverage")
        if not raw.isdigit() or not 1 <= int(raw) <= 125:
            raise errors.invalid_leverage(raw)
        pos = self.positions[spec.symbol]
        pos.leverage = int(raw)
        return {"leverage": pos.leverage, "maxNotionalValue": max_notional(pos.leverage),
                "symbol": spec.symbol}

    def set_margin_type(self, params: Params) -> dict[str, object]:
        spec = self._spec(params)
        margin_type = require(params, "marginType").upper()
        if margin_type not in ("ISOLATED", "CROSSED"):
            raise errors.invalid_margin_type()
        pos = self.positions[spec.symbol]
        if margin_type == pos.margin_type:
            raise errors.no_need_to_change_margin_type()
        if any(o.is_open and o.spec is spec for o in self.orders.values()) or any(
                a.is_open and a.spec is spec for a in self.algos.values()):
            raise errors.margin_type_open_orders()
        if pos.amount:
            raise errors.margin_type_position()
        pos.margin_type = margin_type
        return {"code": 200, "msg": "success"}

    def has_open_orders(self, spec: SymbolSpec) -> bool:
        return any(o.is_open and o.spec is spec for o in self.orders.values()) or any(
            a.is_open and a.spec is spec for a in self.algos.values())


def _crossed(order_type: str, side: str, trigger: Decimal, mark: Decimal) -> bool:
    """Whether a stop / take-profit with this trigger fires at this mark (Binance's rules)."""
    if order_type.startswith("STOP"):
        return mark >= trigger if side == "BUY" else mark <= trigger
    return mark <= trigger if side == "BUY" else mark >= trigger

