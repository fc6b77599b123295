"""The streams' typed events (SPEC §5.8, research/binance-futures-api.md §11): what the
user-data and mark-price websockets tell, parsed from Binance's JSON into frozen dataclasses
with Decimal money. Nothing past ``app/exchange`` sees a raw stream payload.

``parse_user_event`` and ``parse_mark_event`` return None for payloads execd does not use
(``TRADE_LITE``, ``MARGIN_CALL``, subscription answers …) and raise ``ValueError`` naming the
field for a payload of a known kind that is malformed (the stream reports it and goes on).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from app.domain import Side
from app.exchange.models import dec

__all__ = [
    "AlgoUpdate",
    "ListenKeyExpired",
    "MarkUpdate",
    "OrderUpdate",
    "PositionChange",
    "PositionsUpdate",
    "StreamKind",
    "StreamStatus",
    "UserEvent",
    "parse_mark_event",
    "parse_user_event",
    "wire_name",
]


class StreamKind(StrEnum):
    USER = "user"
    MARKET = "market"


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """``ORDER_TRADE_UPDATE``: a regular order changed (placed, traded, cancelled, expired).
    ``filled_qty`` is cumulative (``z``); ``last_qty``/``last_price`` the trade it reports
    (``l``/``L``, zero without one); ``commission`` and ``realized_pnl`` that trade's."""

    event_time_ms: int
    symbol: str
    client_id: str
    order_id: int
    side: Side
    order_type: str
    execution_type: str          # x: NEW, TRADE, CANCELED, EXPIRED, CALCULATED, AMENDMENT
    status: str                  # X: NEW, PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED, …
    quantity: Decimal
    filled_qty: Decimal
    avg_price: Decimal
    last_qty: Decimal
    last_price: Decimal
    commission: Decimal
    commission_asset: str
    realized_pnl: Decimal
    reduce_only: bool
    close_position: bool
    trade_time_ms: int
    trade_id: int = 0

    @property
    def is_trade(self) -> bool:
        return self.execution_type == "TRADE" and self.last_qty > 0

    @property
    def is_final(self) -> bool:
        return self.status in ("FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED")

    @property
    def is_liquidation(self) -> bool:
        return self.client_id.startswith(("autoclose-", "adl_autoclose",
                                          "settlement_autoclose-"))


@dataclass(frozen=True, slots=True)
class AlgoUpdate:
    """``ALGO_UPDATE``: a conditional (algo) order changed. ``status``: NEW, CANCELED,
    TRIGGERING, TRIGGERED, FINISHED, REJECTED, EXPIRED."""

    event_time_ms: int
    symbol: str
    client_algo_id: str
    algo_id: int
    side: Side
    order_type: str
    status: str
    trigger_price: Decimal
    close_position: bool
    actual_order_id: int | None

    @property
    def is_open(self) -> bool:
        return self.status in ("NEW", "TRIGGERING")

    @property
    def fired(self) -> bool:
        return self.status in ("TRIGGERED", "FINISHED")


@dataclass(frozen=True, slots=True)
class PositionChange:
    """One position of an ``ACCOUNT_UPDATE``: ``amount`` is signed (negative = short), 0 =
    flat."""

    symbol: str
    amount: Decimal
    entry_price: Decimal


@dataclass(frozen=True, slots=True)
class PositionsUpdate:
    """``ACCOUNT_UPDATE``: the positions that changed (only those), and why (``m``)."""

    event_time_ms: int
    reason: str
    positions: tuple[PositionChange, ...]


@dataclass(frozen=True, slots=True)
class ListenKeyExpired:
    event_time_ms: int


@dataclass(frozen=True, slots=True)
class MarkUpdate:
    """``markPriceUpdate``: ``mark`` of ``symbol`` at ``event_time_ms``."""

    event_time_ms: int
    symbol: str
    mark: Decimal


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """Not from Binance: the stream client's own news. ``connected`` True once a connection
    is up (after a (re)connect the book must be reconciled by REST: events sent while it was
    down are never replayed); False when it dropped, with the reason."""

    stream: StreamKind
    connected: bool
    reason: str = ""


UserEvent = OrderUpdate | AlgoUpdate | PositionsUpdate | ListenKeyExpired


def wire_name(event: UserEvent) -> str:
    """Binance's name of the event's kind (``e``): ``ORDER_TRADE_UPDATE`` …"""
    return _WIRE_NAMES[type(event)]


_WIRE_NAMES: dict[type, str] = {OrderUpdate: "ORDER_TRADE_UPDATE", AlgoUpdate: "ALGO_UPDATE",
                                PositionsUpdate: "ACCOUNT_UPDATE",
                                ListenKeyExpired: "listenKeyExpired"}


def _side(value: object, field: str) -> Side:
    try:
        return Side(str(value))
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not BUY or SELL") from None


def _number(raw: Mapping[str, Any], key: str, where: str) -> Decimal:
    try:
        value = dec(raw.get(key))
    except (InvalidOperation, TypeError):
        value = None
    if value is None or not value.is_finite():     # "NaN" would raise on every comparison
        raise ValueError(f"{where}.{key}: {raw.get(key)!r} is not a number")
    return value


def _int(raw: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = raw.get(key, default)
    if value is None or isinstance(value, bool):
        raise ValueError(f"{where}.{key}: missing or not an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}.{key}: {value!r} is not an integer") from None


def _str(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}.{key}: missing or not a string")
    return value


def _object(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    if not isinstance(value, Mapping):
        raise ValueError(f"{key}: missing or not an object")
    return value


def _order_update(raw: Mapping[str, Any]) -> OrderUpdate:
    o = _object(raw, "o")
    return OrderUpdate(
        event_time_ms=_int(raw, "E", "event"), symbol=_str(o, "s", "o"),
        client_id=_str(o, "c", "o"), order_id=_int(o, "i", "o"), side=_side(o.get("S"), "o.S"),
        order_type=_str(o, "o", "o"), execution_type=_str(o, "x", "o"),
        status=_str(o, "X", "o"), quantity=_number(o, "q", "o"),
        filled_qty=_number(o, "z", "o"), avg_price=_number(o, "ap", "o"),
        last_qty=_number(o, "l", "o"), last_price=_number(o, "L", "o"),
        commission=_number(o, "n", "o"), commission_asset=str(o.get("N") or ""),
        realized_pnl=_number(o, "rp", "o"), reduce_only=bool(o.get("R", False)),
        close_position=bool(o.get("cp", False)), trade_time_ms=_int(o, "T", "o", 0),
        trade_id=_int(o, "t", "o", 0))


def _algo_update(raw: Mapping[str, Any]) -> AlgoUpdate:
    o = _object(raw, "o")
    actual = o.get("ai")
    return AlgoUpdate(
        event_time_ms=_int(raw, "E", "event"), symbol=_str(o, "s", "o"),
        client_algo_id=_str(o, "caid", "o"), algo_id=_int(o, "aid", "o"),
        side=_side(o.get("S"), "o.S"), order_type=_str(o, "o", "o"),
        status=_str(o, "X", "o"), trigger_price=_number(o, "tp", "o"),
        close_position=bool(o.get("cp", False)),
        actual_order_id=_int(o, "ai", "o") if actual not in (None, "", 0, "0") else None)


def _positions_update(raw: Mapping[str, Any]) -> PositionsUpdate:
    a = _object(raw, "a")
    rows = a.get("P") or []
    if not isinstance(rows, list):
        raise ValueError("a.P: not a list")
    changes = []
    for row in rows:
        if not isinstance(row, Mapping):
            raise ValueError("a.P[]: not an object")
        if row.get("ps", "BOTH") != "BOTH":
            continue                           # hedge-mode legs: execd trades one-way only
        changes.append(PositionChange(symbol=_str(row, "s", "a.P[]"),
                                      amount=_number(row, "pa", "a.P[]"),
                                      entry_price=_number(row, "ep", "a.P[]")))
    return PositionsUpdate(event_time_ms=_int(raw, "E", "event"), reason=str(a.get("m", "")),
                           positions=tuple(changes))


def parse_user_event(raw: object) -> UserEvent | None:
    """A user-data payload (a combined-stream envelope's ``data`` already unwrapped)."""
    if not isinstance(raw, Mapping):
        raise ValueError("event: not a JSON object")
    kind = raw.get("e")
    if kind == "ORDER_TRADE_UPDATE":
        return _order_update(raw)
    if kind == "ALGO_UPDATE":
        return _algo_update(raw)
    if kind == "ACCOUNT_UPDATE":
        return _positions_update(raw)
    if kind == "listenKeyExpired":
        return ListenKeyExpired(event_time_ms=_int(raw, "E", "event", 0))
    return None


def parse_mark_event(raw: object) -> list[MarkUpdate]:
    """A market-stream payload: one ``markPriceUpdate``, a list of them (``!markPrice@arr``)
    or a combined envelope ``{"stream", "data"}``; anything else → []."""
    if isinstance(raw, Mapping) and "stream" in raw and "data" in raw:
        raw = raw["data"]
    items = raw if isinstance(raw, list) else [raw]
    marks = []
    for item in items:
        if not isinstance(item, Mapping) or item.get("e") != "markPriceUpdate":
            continue
        mark = _number(item, "p", "markPriceUpdate")
        if mark <= 0:
            raise ValueError(f"markPriceUpdate.p: {item.get('p')!r} is not a positive price")
        marks.append(MarkUpdate(event_time_ms=_int(item, "E", "markPriceUpdate"),
                                symbol=_str(item, "s", "markPriceUpdate"), mark=mark))
    return marks
