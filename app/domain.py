"""Execution vocabulary shared by the layers: frozen values and enums, no I/O.

This module imports nothing from ``app`` (SPEC §3.2). It holds the exchange enums, the
`Signal` a strategy sends (SPEC §4.1) with its serialised shapes, and the `Intent`, one exchange
order a signal needs (SPEC §5). Validating a client's JSON into a `Signal` is intake's job
(`app.intake.validate`). Money is `Decimal`, never float; times are epoch seconds (UTC) as float,
supplied by the caller (the module never reads a clock).
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Final, Literal, TypeVar


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class MarginType(StrEnum):
    ISOLATED = "ISOLATED"
    CROSSED = "CROSSED"


class OnUnprotected(StrEnum):
    """What to do with a position whose stop-loss could not be placed (SPEC §5.4)."""

    FLATTEN = "flatten"
    ALERT = "alert"


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP_MARKET = "STOP_MARKET"
    TAKE_PROFIT_MARKET = "TAKE_PROFIT_MARKET"


class SignalType(StrEnum):
    LONG_ENTRY = "LONG_ENTRY"
    SHORT_ENTRY = "SHORT_ENTRY"
    CLOSE_LONG = "CLOSE_LONG"
    CLOSE_SHORT = "CLOSE_SHORT"

    @property
    def is_entry(self) -> bool:
        return self in (SignalType.LONG_ENTRY, SignalType.SHORT_ENTRY)

    @property
    def order_side(self) -> Side:
        """The side of the MARKET order that executes this signal."""
        buys = (SignalType.LONG_ENTRY, SignalType.CLOSE_SHORT)
        return Side.BUY if self in buys else Side.SELL

    @property
    def position_sign(self) -> int:
        """+1 if the signal opens or closes a long position, -1 for a short one."""
        return 1 if self in (SignalType.LONG_ENTRY, SignalType.CLOSE_LONG) else -1


class Leg(StrEnum):
    """The role of an intent within its signal; the last character of its client id."""

    ENTRY = "E"
    STOP_LOSS = "S"
    TAKE_PROFIT = "T"
    CLOSE = "C"


class SignalState(StrEnum):
    """SPEC §5.7: ``ACCEPTED → RUNNING → DONE | REJECTED | FAILED | EXPIRED``, and
    ``ACCEPTED → CANCELED`` (an operator took it back before it started)."""

    ACCEPTED = "ACCEPTED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    REJECTED = "REJECTED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        return self not in (SignalState.ACCEPTED, SignalState.RUNNING)


class IntentState(StrEnum):
    """Where one exchange order stands (SPEC §5.3)."""

    PENDING = "PENDING"  # journaled, not yet sent
    SENDING = "SENDING"  # being sent, or sent with the outcome not yet known
    PLACED = "PLACED"  # accepted and open on the exchange (e.g. a protective algo order)
    FILLED = "FILLED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"

    @property
    def is_terminal(self) -> bool:
        return self in (IntentState.FILLED, IntentState.REJECTED, IntentState.CANCELLED,
                        IntentState.EXPIRED)

    @property
    def is_live(self) -> bool:
        """Open on the exchange: it can still fire, and must be cancelled when flat."""
        return self is IntentState.PLACED


class TradingState(StrEnum):
    """What execd may send (SPEC §5.10); the metric value is `level`."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"

    @property
    def level(self) -> int:
        return _LEVELS[self]


_LEVELS = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


@dataclass(frozen=True, slots=True)
class StateChange:
    """The trading state as last set: by whom, why and when (epoch seconds)."""

    state: TradingState
    reason: str
    since: float
    by: str

    def view(self) -> dict[str, object]:
        return {"state": self.state.value, "reason": self.reason,
                "since": format_timestamp(self.since),
                "by": self.by}


class SignalError(ValueError):
    """A signal body broke a rule of SPEC §4.1; `field` names the field, `detail` the rule."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail

    def body(self) -> dict[str, str]:
        """The JSON error body the control API answers with."""
        return {"error": "invalid_signal", "field": self.field, "detail": self.detail}


SYMBOL_RE: Final = re.compile(r"[A-Z0-9]{2,32}")
SYMBOL_RULE: Final = "must be 2-32 characters of A-Z 0-9"
_E = TypeVar("_E", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class Signal:
    """A validated trading instruction (SPEC §4.1). Times are epoch seconds, UTC.

    Three shapes, for three readers:

    - `app.intake.validate.parse_signal` takes what a client sends and enforces every rule of
      §4.1 that needs no exchange data (whether the symbol trades and where the mark price lies
      are checked later).
    - `to_json` is the public shape (control API, audit): the client's fields with `ttl_s`
      resolved into `expires_at`, times as ISO-8601 with milliseconds, plus `received_at`.
      `received_at` is not a client field, so a client cannot back-date a signal; drop it to feed
      the body back to `parse_signal` (which then yields the same signal, up to millisecond time
      rounding and the new `received_at`).
    - `to_record` / `from_record` are for the journal: full fidelity, times as floats.
    """

    id: str
    symbol: str
    type: SignalType
    quantity: Decimal | None
    take_profit: Decimal | None
    stop_loss: Decimal | None
    leverage: int | None
    margin_type: MarginType | None
    expires_at: float
    source: str | None
    received_at: float

    def is_expired(self, now: float) -> bool:
        """True once `now` (epoch seconds) has reached `expires_at`: never execute it then."""
        return now >= self.expires_at

    def check_sides(self, mark: Decimal) -> None:
        """SPEC §4.1: an entry's stop-loss and take-profit lie on the right side of ``mark``
        (LONG: sl < mark < tp; SHORT: tp < mark < sl); `SignalError` names the field."""
        long = self.type.position_sign > 0
        for field, price in (("stop_loss", self.stop_loss), ("take_profit", self.take_profit)):
            if price is None:
                continue
            below = (field == "stop_loss") == long
            if below and price >= mark:
                raise SignalError(field, f"must be below the mark price {mark} for "
                                            f"{self.type.value}")
            if not below and price <= mark:
                raise SignalError(field, f"must be above the mark price {mark} for "
                                            f"{self.type.value}")

    def to_json(self) -> dict[str, object]:
        """The public shape: decimals as strings, times as ISO-8601 UTC, None fields omitted."""
        out = {key: value for key, value in self.to_record().items() if value is not None}
        out["expires_at"] = format_timestamp(self.expires_at)
        out["received_at"] = format_timestamp(self.received_at)
        return out

    def to_record(self) -> dict[str, object]:
        """The journal's shape: every field, decimals as strings, times as float epoch seconds."""
        return {
            "id": self.id,
            "symbol": self.symbol,
            "type": self.type.value,
            "quantity": _decimal_or_none(self.quantity),
            "take_profit": _decimal_or_none(self.take_profit),
            "stop_loss": _decimal_or_none(self.stop_loss),
            "leverage": self.leverage,
            "margin_type": None if self.margin_type is None else self.margin_type.value,
            "expires_at": self.expires_at,
            "source": self.source,
            "received_at": self.received_at,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> Signal:
        """Rebuild a signal from `to_record` output, as it was: the §4.1 rules are not re-run
        (a journaled signal may be long expired). Raises `ValueError` on a malformed record."""
        def text(key: str) -> str | None:
            value = record.get(key)
            if value is None or isinstance(value, str):
                return value
            raise ValueError(f"signal record: {key} must be a string, got {value!r}")

        def number(key: str) -> float:
            value = record.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            raise ValueError(f"signal record: {key} must be a number, got {value!r}")

        def required(key: str) -> str:
            value = text(key)
            if value is None:
                raise ValueError(f"signal record: {key} is missing")
            return value

        def decimal(key: str) -> Decimal | None:
            value = text(key)
            if value is None:
                return None
            try:
                return Decimal(value)
            except ArithmeticError:  # decimal.InvalidOperation is not a ValueError
                raise ValueError(f"signal record: {key} is not a decimal: {value!r}") from None

        def member(key: str, enum: type[_E]) -> _E | None:
            value = text(key)
            if value is None or value in enum.__members__:
                return None if value is None else enum(value)
            raise ValueError(f"signal record: {key} is not a {enum.__name__}: {value!r}")

        leverage = record.get("leverage")
        if leverage is not None and (not isinstance(leverage, int) or isinstance(leverage, bool)):
            raise ValueError(f"signal record: leverage must be an integer, got {leverage!r}")
        kind = member("type", SignalType)
        if kind is None:
            raise ValueError("signal record: type is missing")
        return cls(
            id=required("id"),
            symbol=required("symbol"),
            type=kind,
            quantity=decimal("quantity"),
            take_profit=decimal("take_profit"),
            stop_loss=decimal("stop_loss"),
            leverage=leverage,
            margin_type=member("margin_type", MarginType),
            expires_at=number("expires_at"),
            source=text("source"),
            received_at=number("received_at"),
        )


class _Keep(Enum):
    KEEP = "KEEP"


_KEEP: Final = _Keep.KEEP


@dataclass(frozen=True, slots=True)
class Intent:
    """One exchange order a signal needs (SPEC §2), identified by its deterministic client id.

    `quantity` is None for close-position algo orders; `price` is the trigger price of an algo
    leg. `updated_at` is epoch seconds of the last state change.
    """

    signal_id: str
    leg: Leg
    client_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal | None
    price: Decimal | None
    reduce_only: bool
    state: IntentState
    exchange_id: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    updated_at: float = 0.0

    @property
    def is_algo(self) -> bool:
        """Placed through the algo-order endpoints (SPEC §5.4), not the regular order ones."""
        return self.order_type in (OrderType.STOP_MARKET, OrderType.TAKE_PROFIT_MARKET)

    def with_state(self, state: IntentState, *,
                   exchange_id: str | Literal[_Keep.KEEP] | None = _KEEP,
                   error_code: int | Literal[_Keep.KEEP] | None = _KEEP,
                   error_message: str | Literal[_Keep.KEEP] | None = _KEEP,
                   now: float | None = None) -> Intent:
        """A copy in `state`. Fields not passed keep their value (pass None to clear one);
        `updated_at` becomes `now` when given."""
        return replace(
            self,
            state=state,
            exchange_id=self.exchange_id if exchange_id is _KEEP else exchange_id,
            error_code=self.error_code if error_code is _KEEP else error_code,
            error_message=self.error_message if error_message is _KEEP else error_message,
            updated_at=self.updated_at if now is None else now,
        )


# --- text forms, shared with the layers that print these values ---

def plain_decimal(value: Decimal) -> str:
    """Fixed-point text, exact: str(Decimal("0.0000001")) would be "1E-7", which §4.1 refuses."""
    return format(value, "f")


def _decimal_or_none(value: Decimal | None) -> str | None:
    return None if value is None else plain_decimal(value)


def format_timestamp(epoch_s: float) -> str:
    """`epoch_s` seconds as UTC ISO-8601 with milliseconds, rounded to the nearest one:
    ``2026-11-23T19:05:01.123Z``. Raises ValueError for NaN or infinity.

    The audit log stamps every event with it, hence `time.gmtime` (a third of the cost of
    building a `datetime`); it reads no clock."""
    if not math.isfinite(epoch_s):
        raise ValueError(f"not a finite time: {epoch_s}")
    seconds, millis = divmod(round(epoch_s * 1000), 1000)
    return f"{_whole_second(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=4)
def _whole_second(seconds: int) -> str:
    """``2026-11-23T19:05:01`` of a whole epoch second: every event of a second shares it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
