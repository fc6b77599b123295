"""The simulated account's mutable state objects and their Binance JSON shapes.

All prices and quantities are ``Decimal``; on the wire they are strings with the symbol's
precision, as Binance sends them (``"price": "65000.10"``, ``"origQty": "0.010"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from app.sim.config import SymbolSpec

ZERO = Decimal(0)
OPEN_STATUSES = frozenset({"NEW", "PARTIALLY_FILLED"})
CONDITIONAL_TYPES = frozenset(
    {"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"}
)


def fixed(value: Decimal, places: int) -> str:
    """``value`` as a fixed-point string with exactly ``places`` decimals."""
    return f"{value.quantize(Decimal(1).scaleb(-places)):f}"


def ms(seconds: float) -> int:
    return int(seconds * 1000)


# A simple leverage bracket table: (max leverage, notional cap), highest leverage first.
BRACKETS: tuple[tuple[int, int], ...] = (
    (125, 50_000), (100, 600_000), (50, 3_000_000), (20, 12_000_000), (10, 70_000_000),
    (5, 100_000_000), (4, 230_000_000), (3, 480_000_000), (2, 600_000_000), (1, 800_000_000),
)


def max_notional(leverage: int) -> str:
    """Largest position notional allowed at ``leverage`` (as Binance's string field)."""
    for lev, cap in BRACKETS:
        if leverage >= lev:
            return str(cap)
    return str(BRACKETS[-1][1])


@dataclass(slots=True)
class Order:
    """A regular (matching-engine) order; ``kind`` is ``order`` or ``triggered``."""

    spec: SymbolSpec
    order_id: int
    client_id: str
    side: str
    type: str
    qty: Decimal
    price: Decimal
    time_in_force: str
    reduce_only: bool
    close_position: bool
    created: float
    kind: str = "order"
    status: str = "NEW"
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    updated: float = 0.0
    visible_at: float = 0.0
    stop_price: Decimal = ZERO
    orig_type: str = ""
    working_type: str = "CONTRACT_PRICE"

    @property
    def id(self) -> int:
        return self.order_id

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def avg_price(self) -> Decimal:
        return self.cum_quote / self.executed_qty if self.executed_qty else ZERO

    def to_json(self, *, with_time: bool = False, ack: bool = False) -> dict[str, object]:
        pp, qp = self.spec.price_precision, self.spec.quantity_precision
        executed, quote, avg = (
            (ZERO, ZERO, ZERO) if ack else (self.executed_qty, self.cum_quote, self.avg_price)
        )
        body: dict[str, object] = {
            "orderId": self.order_id,
            "symbol": self.spec.symbol,
            "status": "NEW" if ack else self.status,
            "clientOrderId": self.client_id,
            "price": fixed(self.price, pp),
            "avgPrice": fixed(avg, max(pp, 5)),
            "origQty": fixed(self.qty, qp),
            "executedQty": fixed(executed, qp),
            "cumQty": fixed(executed, qp),
            "cumQuote": fixed(quote, max(pp, 5)),
            "timeInForce": self.time_in_force,
            "type": self.type,
            "reduceOnly": self.reduce_only,
            "closePosition": self.close_position,
            "side": self.side,
            "positionSide": "BOTH",
            "stopPrice": fixed(self.stop_price, pp),
            "workingType": self.working_type,
            "priceProtect": False,
            "origType": self.orig_type or self.type,
            "priceMatch": "NONE",
            "selfTradePreventionMode": "EXPIRE_MAKER",
            "goodTillDate": 0,
            "updateTime": ms(self.updated or self.created),
        }
        if with_time:
            del body["cumQty"]
            body["time"] = ms(self.created)
        return body


@dataclass(slots=True)
class AlgoOrder:
    """A conditional order of the Algo Order API (``/fapi/v1/algoOrder``)."""

    spec: SymbolSpec
    algo_id: int
    client_algo_id: str
    side: str
    order_type: str
    qty: Decimal
    price: Decimal
    trigger_price: Decimal
    working_type: str
    close_position: bool
    reduce_only: bool
    price_protect: bool
    time_in_force: str
    created: float
    activate_price: Decimal = ZERO
    callback_rate: Decimal = ZERO
    status: str = "NEW"
    updated: float = 0.0
    trigger_time: float = 0.0
    visible_at: float = 0.0
    actual_order_id: int | None = None
    actual_price: Decimal = ZERO
    actual_qty: Decimal = ZERO
    # Trailing stops: activated flag and the best mark seen since activation.
    activated: bool = False
    extreme: Decimal = ZERO

    @property
    def id(self) -> int:
        return self.algo_id

    @property
    def client_id(self) -> str:
        return self.client_algo_id

    @property
    def is_open(self) -> bool:
        return self.status == "NEW"

    def to_json(self, *, detail: bool = False) -> dict[str, object]:
        pp, qp = self.spec.price_precision, self.spec.quantity_precision
        body: dict[str, object] = {
            "algoId": self.algo_id,
            "clientAlgoId": self.client_algo_id,
            "algoType": "CONDITIONAL",
            "orderType": self.order_type,
            "symbol": self.spec.symbol,
            "side": self.side,
            "positionSide": "BOTH",
            "timeInForce": self.time_in_force,
            "quantity": fixed(self.qty, qp),
            "algoStatus": self.status,
            "triggerPrice": fixed(self.trigger_price, pp),
            "price": fixed(self.price, pp),
            "icebergQuantity": None,
            "selfTradePreventionMode": "EXPIRE_MAKER",
            "workingType": self.working_type,
            "priceMatch": "NONE",
            "closePosition": self.close_position,
            "priceProtect": self.price_protect,
            "reduceOnly": self.reduce_only,
            "activatePrice": fixed(self.activate_price, pp) if self.activate_price else "",
            "callbackRate": f"{self.callback_rate:f}" if self.callback_rate else "",
            "createTime": ms(self.created),
            "updateTime": ms(self.updated or self.created),
            "triggerTime": ms(self.trigger_time),
            "goodTillDate": 0,
        }
        if detail:
            body["actualOrderId"] = "" if self.actual_order_id is None else str(
                self.actual_order_id)
            body["actualPrice"] = fixed(self.actual_price, pp) if self.actual_price else ""
            body["actualType"] = "MARKET" if self.order_type.endswith("MARKET") else "LIMIT"
            body["actualQty"] = fixed(self.actual_qty, qp) if self.actual_qty else ""
        return body


@dataclass(slots=True)
class Position:
    """A one-way (``positionSide=BOTH``) position: signed amount, entry price, settings."""

    spec: SymbolSpec
    leverage: int
    margin_type: str = "CROSSED"
    amount: Decimal = ZERO
    entry_price: Decimal = ZERO
    updated: float = 0.0
    #: Realized PnL accumulated over the position's life (``cr`` in ``ACCOUNT_UPDATE``).
    realized: Decimal = ZERO

    def unrealized(self, mark: Decimal) -> Decimal:
        return self.amount * (mark - self.entry_price) if self.amount else ZERO

    def initial_margin(self, mark: Decimal) -> Decimal:
        return abs(self.amount) * mark / self.leverage


@dataclass(slots=True)
class Trade:
    spec: SymbolSpec
    trade_id: int
    order_id: int
    side: str
    price: Decimal
    qty: Decimal
    realized_pnl: Decimal
    commission: Decimal
    time: float
    maker: bool = False

    def to_json(self) -> dict[str, object]:
        pp, qp = self.spec.price_precision, self.spec.quantity_precision
        return {
            "buyer": self.side == "BUY",
            "commission": f"{self.commission.quantize(Decimal('0.00000001')):f}",
            "commissionAsset": "USDT",
            "id": self.trade_id,
            "maker": self.maker,
            "orderId": self.order_id,
            "price": fixed(self.price, pp),
            "qty": fixed(self.qty, qp),
            "quoteQty": fixed(self.price * self.qty, max(pp, 5)),
            "realizedPnl": f"{self.realized_pnl.quantize(Decimal('0.00000001')):f}",
            "side": self.side,
            "positionSide": "BOTH",
            "symbol": self.spec.symbol,
            "time": ms(self.time),
        }


@dataclass(slots=True)
class Ledger:
    """Every accepted order in acceptance order, for ``GET /_sim/orders``."""

    entries: list[Order | AlgoOrder] = field(default_factory=list)

    def rows(self) -> list[dict[str, object]]:
        """The admin rows; ``time`` is when the exchange accepted the order and
        ``update_time`` its last status change, both in epoch ms."""
        return [_row(entry) for entry in self.entries]


def _row(entry: Order | AlgoOrder) -> dict[str, object]:
    qp = entry.spec.quantity_precision
    if isinstance(entry, AlgoOrder):
        kind, kind_type, executed = "algo", entry.order_type, entry.actual_qty
        trigger: str | None = fixed(entry.trigger_price, entry.spec.price_precision)
    else:
        kind, kind_type, executed, trigger = entry.kind, entry.type, entry.executed_qty, None
    return {
        "kind": kind, "symbol": entry.spec.symbol, "id": entry.id,
        "client_id": entry.client_id, "type": kind_type, "side": entry.side,
        "status": entry.status, "qty": "0" if entry.close_position else fixed(entry.qty, qp),
        "executed_qty": fixed(executed, qp), "reduce_only": entry.reduce_only,
        "close_position": entry.close_position, "trigger_price": trigger,
        "time": ms(entry.created), "update_time": ms(entry.updated or entry.created),
    }
