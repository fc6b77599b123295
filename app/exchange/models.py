"""Typed answers of the gateway, parsed from Binance's JSON: Decimal money, enums, no dicts.

Conversion to and from the wire happens here and in ``gateway.py`` only (STYLE: enums for
exchange vocabulary; nothing past ``app/exchange`` sees ``"true"`` strings or raw dicts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app.domain import MarginType, Side


def dec(value: object) -> Decimal:
    """A wire number (always a string at Binance) as Decimal; "" and None read as 0."""
    if value is None or value == "":
        return Decimal(0)
    if isinstance(value, float):
        raise TypeError("refusing a float on the money path")
    return Decimal(str(value))


@dataclass(frozen=True, slots=True)
class OrderState:
    symbol: str
    order_id: int
    client_id: str
    status: str
    side: Side
    type: str
    orig_qty: Decimal
    executed_qty: Decimal
    avg_price: Decimal
    reduce_only: bool
    update_time_ms: int

    @property
    def is_filled(self) -> bool:
        return self.status == "FILLED"

    @property
    def is_open(self) -> bool:
        return self.status in ("NEW", "PARTIALLY_FILLED")

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> OrderState:
        return cls(
            symbol=str(raw["symbol"]), order_id=int(raw["orderId"]),
            client_id=str(raw["clientOrderId"]), status=str(raw["status"]),
            side=Side(raw["side"]), type=str(raw["type"]), orig_qty=dec(raw.get("origQty")),
            executed_qty=dec(raw.get("executedQty")), avg_price=dec(raw.get("avgPrice")),
            reduce_only=bool(raw.get("reduceOnly", False)),
            update_time_ms=int(raw.get("updateTime") or raw.get("time") or 0),
        )


@dataclass(frozen=True, slots=True)
class AlgoState:
    symbol: str
    algo_id: int
    client_algo_id: str
    status: str
    side: Side
    order_type: str
    trigger_price: Decimal
    close_position: bool
    actual_order_id: int | None

    @property
    def is_open(self) -> bool:
        return self.status == "NEW"

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> AlgoState:
        actual = raw.get("actualOrderId")
        return cls(
            symbol=str(raw["symbol"]), algo_id=int(raw["algoId"]),
            client_algo_id=str(raw["clientAlgoId"]), status=str(raw["algoStatus"]),
            side=Side(raw["side"]), order_type=str(raw["orderType"]),
            trigger_price=dec(raw.get("triggerPrice")),
            close_position=bool(raw.get("closePosition", False)),
            actual_order_id=int(actual) if actual not in (None, "") else None,
        )


@dataclass(frozen=True, slots=True)
class Position:
    """A one-way position: ``amount`` is signed (negative = short)."""

    symbol: str
    amount: Decimal
    entry_price: Decimal
    mark_price: Decimal
    unrealized_pnl: Decimal
    update_time_ms: int

    @property
    def side(self) -> Side:
        return Side.BUY if self.amount > 0 else Side.SELL

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> Position:
        return cls(
            symbol=str(raw["symbol"]), amount=dec(raw.get("positionAmt")),
            entry_price=dec(raw.get("entryPrice")), mark_price=dec(raw.get("markPrice")),
            unrealized_pnl=dec(raw.get("unRealizedProfit")),
            update_time_ms=int(raw.get("updateTime") or 0),
        )


@dataclass(frozen=True, slots=True)
class Balance:
    asset: str
    wallet: Decimal
    available: Decimal
    unrealized_pnl: Decimal

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> Balance:
        return cls(asset=str(raw["asset"]), wallet=dec(raw.get("balance")),
                   available=dec(raw.get("availableBalance")),
                   unrealized_pnl=dec(raw.get("crossUnPnl")))


@dataclass(frozen=True, slots=True)
class CancelCounts:
    """What ``cancel_all_orders`` cancelled: regular and algo (conditional) orders."""

    regular: int
    algo: int


@dataclass(frozen=True, slots=True)
class MarginChange:
    margin_type: MarginType
    changed: bool
