"""Parameter parsing and the exchange's filter rules (PRICE_FILTER, LOT_SIZE, MIN_NOTIONAL…).

The simulator's own copy, deliberately independent of the client's checks in ``app/exchange``:
if both shared one implementation, a bug in it would pass every test.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

from app.sim import errors
from app.sim.config import SymbolSpec

CLIENT_ID_RE = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
Params = Mapping[str, str]


def require(params: Params, name: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        raise errors.mandatory(name)
    return value


def decimal_param(params: Params, name: str, *, required: bool = True) -> Decimal | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise errors.mandatory(name)
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise errors.mandatory(name) from None
    if not value.is_finite():
        raise errors.mandatory(name)
    return value


def int_param(params: Params, name: str, *, required: bool = True) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise errors.mandatory(name)
        return None
    if not re.fullmatch(r"-?[0-9]{1,19}", raw):
        raise errors.illegal_chars(name)
    return int(raw)


def bool_param(params: Params, name: str) -> bool | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    lowered = raw.lower()
    if lowered not in ("true", "false"):
        raise errors.bad(-1102, f"Invalid value for parameter '{name}'.")
    return lowered == "true"


def side_param(params: Params) -> str:
    side = require(params, "side")
    if side not in ("BUY", "SELL"):
        raise errors.invalid_side()
    return side


def client_id_param(params: Params, name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not CLIENT_ID_RE.fullmatch(value):
        raise errors.client_id_invalid()
    return value


def position_side_param(params: Params) -> None:
    side = params.get("positionSide")
    if side not in (None, "", "BOTH"):
        raise errors.bad(-4061, "Order's position side does not match user's setting.")


def places(value: Decimal) -> int:
    """Number of decimals a value is written with, ignoring trailing zeros."""
    exponent = value.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def check_quantity(spec: SymbolSpec, qty: Decimal, *, market: bool) -> None:
    """LOT_SIZE (or MARKET_LOT_SIZE) and precision rules, in Binance's order of checks."""
    if qty <= 0:
        raise errors.qty_not_positive()
    if places(qty) > spec.quantity_precision:
        raise errors.precision_over()
    if (qty - spec.min_qty) % spec.step_size != 0:
        raise errors.qty_not_step()
    if qty < spec.min_qty:
        raise errors.qty_below_min()
    if qty > (spec.market_max_qty if market else spec.max_qty):
        raise errors.qty_above_max()


def check_price(spec: SymbolSpec, price: Decimal) -> None:
    """PRICE_FILTER and precision rules for a limit price or a trigger price."""
    if price <= 0:
        raise errors.bad(-4001, "Price less than 0.")
    if places(price) > spec.price_precision:
        raise errors.precision_over()
    if price < spec.min_price:
        raise errors.price_below_min()
    if price > spec.max_price:
        raise errors.price_above_max()
    if (price - spec.min_price) % spec.tick_size != 0:
        raise errors.price_not_tick()


def check_percent_price(spec: SymbolSpec, side: str, price: Decimal, mark: Decimal) -> None:
    """PERCENT_PRICE: a BUY limit at most mark × up, a SELL limit at least mark × down."""
    if side == "BUY":
        bound = (mark * spec.multiplier_up).quantize(spec.tick_size)
        if price > bound:
            raise errors.limit_price_too_high(f"{bound:f}")
    else:
        bound = (mark * spec.multiplier_down).quantize(spec.tick_size)
        if price < bound:
            raise errors.limit_price_too_low(f"{bound:f}")


def check_notional(spec: SymbolSpec, qty: Decimal, price: Decimal, reduce_only: bool) -> None:
    if not reduce_only and qty * price < spec.min_notional:
        raise errors.min_notional(f"{spec.min_notional.normalize():f}")


def to_tick(spec: SymbolSpec, price: Decimal) -> Decimal:
    """Round a computed price (a fill with slippage, a moved mark) to the tick grid."""
    steps = ((price - spec.min_price) / spec.tick_size).to_integral_value()
    return max(spec.min_price, spec.min_price + steps * spec.tick_size)
