"""JSON → `Signal`: every rule of SPEC §4.1 that needs no exchange data.

Whether the symbol trades is checked by the accept path (`service.py`) with a callable the daemon
passes in, and where the mark price lies is the executor's; neither is here. This module imports
only `app.domain` (SPEC §3.2).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Final, TypeVar

import orjson

from app.domain import (
    SYMBOL_RE,
    SYMBOL_RULE,
    MarginType,
    Signal,
    SignalError,
    SignalType,
    plain_decimal,
)

__all__ = ["MAX_TTL_S", "decode_object", "parse_signal"]

#: The longest a signal may live, in seconds (``ttl_s``, or ``expires_at`` minus now).
MAX_TTL_S: Final = 86_400.0
_FIELDS: Final = ("id", "symbol", "type", "quantity", "take_profit", "stop_loss", "leverage",
                  "margin_type", "expires_at", "ttl_s", "source")
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_DECIMAL = re.compile(r"[0-9]{1,32}(?:\.[0-9]{1,18})?")
_DECIMAL_RULE: Final = ('must be a plain decimal string like "0.01": digits with an optional '
                        "point, at most 32 before and 18 after it, no sign or exponent")
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?")
_TIMESTAMP_RULE: Final = "must be an ISO-8601 UTC timestamp like 2026-11-23T19:05:01Z"
_TYPES: Final = ", ".join(SignalType)
_E = TypeVar("_E", bound=StrEnum)


def decode_object(raw: bytes) -> dict[str, object]:
    """A signal body as sent (a spool line, a NATS message) decoded to a JSON object;
    `SignalError` (field ``body``) when it is not UTF-8, not JSON or not an object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SignalError("body", f"is not UTF-8 (bad byte at {error.start})") from None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise SignalError("body", f"is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise SignalError("body", "must be a JSON object")
    return data


def parse_signal(data: object, *, now: float, default_ttl_s: float,
                 new_id: Callable[[], str]) -> Signal:
    """Validate a decoded JSON body into a `Signal` whose `received_at` is `now` (epoch seconds).

    Raises `SignalError` naming the first problem, checked in a fixed order: the body, unknown
    keys (alphabetically), then the fields as listed in SPEC §4.1, then `expires_at`/`ttl_s`
    against `now`. A JSON ``null`` counts as absent. `new_id()` is called only when the body
    has no id (and only once the body is valid); the default expiry is `now + default_ttl_s`.
    `Signal.to_json()` without ``received_at`` parses back to the same signal, up to millisecond
    time rounding.
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
    return Signal(
        id=new_id() if signal_id is None else signal_id,  # only for a valid signal
        symbol=symbol, type=kind, quantity=quantity, take_profit=take_profit,
        stop_loss=stop_loss, leverage=leverage, margin_type=margin_type,
        expires_at=expires_at, source=source, received_at=now,
    )


# --- field readers: each reads one field of a body whose keys are already known ---

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
        raise SignalError("stop_loss", f"must be below take_profit {plain_decimal(take_profit)} "
                                       "for LONG_ENTRY")
    if kind is SignalType.SHORT_ENTRY and stop_loss <= take_profit:
        raise SignalError("stop_loss", f"must be above take_profit {plain_decimal(take_profit)} "
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
