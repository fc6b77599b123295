"""Execution vocabulary shared by the layers: frozen values and enums, no I/O.

This module imports nothing from ``app`` (SPEC §3.2). It holds the exchange enums, the
`Signal` a strategy sends (SPEC §4.1) with its validation, and the `Intent`, one exchange order a
signal needs (SPEC §5). Money is `Decimal`, never float; times are epoch seconds (UTC) as float,
supplied by the caller (the module never reads a clock).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
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
    """SPEC §5.7: ``ACCEPTED → RUNNING → DONE | REJECTED | FAILED | EXPIRED``."""

    ACCEPTED = "ACCEPTED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    REJECTED = "REJECTED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"

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


class SignalError(ValueError):
    """A signal body broke a rule of SPEC §4.1; `field` names the field, `detail` the rule."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail

    def body(self) -> dict[str, str]:
        """The JSON error body the control API answers with."""
        return {"error": "invalid_signal", "field": self.field, "detail": self.detail}


MAX_TTL_S: Final = 86_400.0
_FIELDS: Final = ("id", "symbol", "type", "quantity", "take_profit", "stop_loss", "leverage",
                  "margin_type", "expires_at", "ttl_s", "source")
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
SYMBOL_RE: Final = re.compile(r"[A-Z0-9]{2,32}")
SYMBOL_RULE: Final = "must be 2-32 characters of A-Z 0-9"
_DECIMAL = re.compile(r"[0-9]{1,32}(?:\.[0-9]{1,18})?")
_DECIMAL_RULE: Final = ('must be a plain decimal string like "0.01": digits with an optional '
                        "point, at most 32 before and 18 after it, no sign or exponent")
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?")
_TIMESTAMP_RULE: Final = "must be an ISO-8601 UTC timestamp like 2026-11-23T19:05:01Z"
_TYPES: Final = ", ".join(SignalType)
_E = TypeVar("_E", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class Signal:
    """A validated trading instruction (SPEC §4.1). Times are epoch seconds, UTC.

    Three shapes, for three readers:

    - `from_json` takes what a client sends and enforces every rule of §4.1 that needs no
      exchange data (whether the symbol trades and where the mark price lies are the executor's).
    - `to_json` is the public shape (control API, audit): `from_json`'s fields with `ttl_s`
      resolved into `expires_at`, times as ISO-8601 with milliseconds, plus `received_at`.
      `received_at` is not a client field, so a client cannot back-date a signal; drop it to feed
      the body back to `from_json` (which then yields the same signal, up to millisecond time
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

    @classmethod
    def from_json(cls, data: object, *, now: float, default_ttl_s: float,
                  new_id: Callable[[], str]) -> Signal:
        """Validate a decoded JSON body; `received_at` is `now`.

        Raises `SignalError` naming the first problem, checked in a fixed order: the body, unknown
        keys (alphabetically), then the fields as listed in SPEC §4.1, then `expires_at`/`ttl_s`
        against `now`. A JSON ``null`` counts as absent. `new_id()` is called only when the body
        has no id; the default expiry is `now + default_ttl_s`.
        """
        if not isinstance(data, dict):
            raise SignalError("body", "must be a JSON object")
        unknown = sorted(str(key) for key in data if key not in _FIELDS)
        if unknown:
            raise SignalError(unknown[0], "unknown field")
        body: dict[str, object] = data

        signal_id = _string(body, "id", _ID, "must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        symbol = _string(body, "symbol", SYMBOL_RE, SYMBOL_RULE)
        if symbol is None:
            raise SignalError("symbol", "is required")
        kind = _enum(body, "type", SignalType, f"must be one of {_TYPES}")
        if kind is None:
            raise SignalError("type", f"is required: one of {_TYPES}")

        quantity = _decimal(body, "quantity")
        if quantity is None and kind.is_entry:
            raise SignalError("quantity", f"is required for {kind.value}")
        take_profit = _decimal(body, "take_profit")
        stop_loss = _decimal(body, "stop_loss")
        if not kind.is_entry:
            for name, price in (("take_profit", take_profit), ("stop_loss", stop_loss)):
                if price is not None:
                    raise SignalError(name, "only allowed on entries")
        if take_profit is not None and stop_loss is not None:
            _check_bracket(kind, take_profit, stop_loss)

        leverage = _leverage(body)
        margin_type = _enum(body, "margin_type", MarginType, "must be ISOLATED or CROSSED")
        expires_at = _expiry(body, now, default_ttl_s)
        source = _source(body)
        return cls(
            id=new_id() if signal_id is None else signal_id,  # only for a valid signal
            symbol=symbol, type=kind, quantity=quantity, take_profit=take_profit,
            stop_loss=stop_loss, leverage=leverage, margin_type=margin_type,
            expires_at=expires_at, source=source, received_at=now,
        )

    def to_json(self) -> dict[str, object]:
        """The public shape: decimals as strings, times as ISO-8601 UTC, None fields omitted."""
        out = {key: value for key, value in self.to_record().items() if value is not None}
        out["expires_at"] = _iso_ms(self.expires_at)
        out["received_at"] = _iso_ms(self.received_at)
        return out

    def to_record(self) -> dict[str, object]:
        """The journal's shape: every field, decimals as strings, times as float epoch seconds."""
        return {
            "id": self.id,
            "symbol": self.symbol,
            "type": self.type.value,
            "quantity": _plain_or_none(self.quantity),
            "take_profit": _plain_or_none(self.take_profit),
            "stop_loss": _plain_or_none(self.stop_loss),
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


# --- from_json helpers: each reads one field of a body whose keys are already known ---

def _string(body: dict[str, object], name: str, pattern: re.Pattern[str] | None,
            rule: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SignalError(name, "must be a string")
    if pattern is not None and pattern.fullmatch(value) is None:
        raise SignalError(name, rule)
    return value


def _enum(body: dict[str, object], name: str, enum: type[_E], rule: str) -> _E | None:
    value = _string(body, name, None, rule)
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError:
        raise SignalError(name, rule) from None


def _decimal(body: dict[str, object], name: str) -> Decimal | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        # Refused, not converted: a JSON number may already have lost digits in the decoder.
        raise SignalError(name, 'must be a string holding a decimal like "0.01", not a JSON '
                                f"{'number' if isinstance(value, int | float) else 'value'}")
    if _DECIMAL.fullmatch(value) is None:
        raise SignalError(name, _DECIMAL_RULE)
    number = Decimal(value)
    if number <= 0:
        raise SignalError(name, "must be greater than 0")
    return number


def _check_bracket(kind: SignalType, take_profit: Decimal, stop_loss: Decimal) -> None:
    if kind is SignalType.LONG_ENTRY and stop_loss >= take_profit:
        raise SignalError("stop_loss", f"must be below take_profit {_plain(take_profit)} "
                                       "for LONG_ENTRY")
    if kind is SignalType.SHORT_ENTRY and stop_loss <= take_profit:
        raise SignalError("stop_loss", f"must be above take_profit {_plain(take_profit)} "
                                       "for SHORT_ENTRY")


def _leverage(body: dict[str, object]) -> int | None:
    value = body.get("leverage")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise SignalError("leverage", "must be an integer from 1 to 125")
    if not 1 <= value <= 125:
        raise SignalError("leverage", "must be from 1 to 125")
    return value


def _expiry(body: dict[str, object], now: float, default_ttl_s: float) -> float:
    expires_at, ttl_s = body.get("expires_at"), body.get("ttl_s")
    if expires_at is not None and ttl_s is not None:
        raise SignalError("ttl_s", "give expires_at or ttl_s, not both")
    if ttl_s is not None:
        if not isinstance(ttl_s, int | float) or isinstance(ttl_s, bool):
            raise SignalError("ttl_s", "must be a number of seconds")
        if not 0 < ttl_s <= MAX_TTL_S:  # also refuses NaN
            raise SignalError("ttl_s", f"must be greater than 0 and at most {MAX_TTL_S:.0f}")
        return now + ttl_s
    text = _string(body, "expires_at", _TIMESTAMP, _TIMESTAMP_RULE)
    if text is None:
        return now + default_ttl_s
    at = _timestamp(text)
    if at <= now:
        raise SignalError("expires_at", "already expired")
    if at - now > MAX_TTL_S:
        raise SignalError("expires_at", f"must be at most {MAX_TTL_S:.0f} s from now")
    return at


def _timestamp(text: str) -> float:
    shape = _TIMESTAMP.fullmatch(text)
    zone = None if shape is None else shape["zone"]  # _string already checked the shape
    if zone is None:
        raise SignalError("expires_at", "has no time zone: end it with Z (UTC)")
    if zone not in ("Z", "+00:00", "-00:00"):
        raise SignalError("expires_at", "must be in UTC: end it with Z or +00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError as error:  # shape fine, calendar not: month 13, 25 o'clock, Feb 30
        raise SignalError("expires_at", f"is not a valid date and time ({error})") from None


def _source(body: dict[str, object]) -> str | None:
    value = _string(body, "source", None, "must be a string")
    if value is not None and not (1 <= len(value) <= 64 and value.isprintable()):
        raise SignalError("source", "must be 1-64 printable characters")
    return value


# --- output helpers ---

def _plain(value: Decimal) -> str:
    """Fixed-point text: str(Decimal("0.0000001")) would be "1E-7", which from_json refuses."""
    return format(value, "f")


def _plain_or_none(value: Decimal | None) -> str | None:
    return None if value is None else _plain(value)


def _iso_ms(epoch_s: float) -> str:
    """Epoch seconds as ISO-8601 UTC with milliseconds, rounded to the nearest one."""
    if not math.isfinite(epoch_s):
        raise ValueError(f"not a finite time: {epoch_s}")
    millis = round(epoch_s * 1000)
    whole = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=millis)
    return f"{whole:%Y-%m-%dT%H:%M:%S}.{millis % 1000:03d}Z"
