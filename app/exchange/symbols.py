"""Symbol rules from exchangeInfo: parsing, Decimal quantization, wire formatting, local checks.

Binance's grid rule (research/binance-futures-api.md §7) is ``(value - min) % step == 0`` for
PRICE_FILTER (``minPrice``/``tickSize``), LOT_SIZE and MARKET_LOT_SIZE (``minQty``/``stepSize``);
in PRICE_FILTER a 0 disables that rule. ``pricePrecision``/``quantityPrecision`` are informative
only: Binance says not to use them as tick or step sizes, and nothing here does.

Every number is a ``Decimal``; a float (or any other type) raises ``TypeError``, a NaN or an
infinity ``ValueError``. Grid arithmetic runs in an exact decimal context: an input that would need
rounding in an intermediate step (more than 100 significant digits) raises ``ValueError`` rather
than be rounded silently, since a rounded-up intermediate could push a quantity above the input.

The cache of these rules (expiry, refresh on precision errors) is `symbol_cache.SymbolCache`.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app.domain import SignalError

__all__ = [
    "ExchangeInfo",
    "RateLimit",
    "SymbolRuleError",
    "SymbolRules",
    "UnknownSymbol",
    "format_price",
    "format_qty",
    "parse_exchange_info",
    "trading_rules",
]

TRADING = "TRADING"
REQUIRED_FILTERS = ("PRICE_FILTER", "LOT_SIZE", "MARKET_LOT_SIZE", "MIN_NOTIONAL")
_INTERVAL_S = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}
_ZERO = Decimal(0)
_EXACT = decimal.Context(
    prec=100,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow, decimal.Inexact],
)


class SymbolRuleError(ValueError):
    """An order breaks one of the symbol's exchangeInfo rules; rejected before sending.

    ``rule`` names it (``"LOT_SIZE.minQty"``, ``"MARKET_LOT_SIZE.stepSize"``,
    ``"PRICE_FILTER.tickSize"``, ``"MIN_NOTIONAL"``, ``"STATUS"``, ``"QUANTITY.positive"``,
    ``"PRICE.positive"``…); ``detail`` is the message, with the symbol and the numbers.
    """

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.rule = rule
        self.detail = detail


class UnknownSymbol(KeyError):
    """The cache has no usable rules for this symbol (not listed, malformed, or not loaded)."""

    def __init__(self, symbol: str, known: int, reason: str | None = None) -> None:
        why = f": {reason}" if reason else " is not in exchangeInfo"
        super().__init__(f"unknown symbol {symbol!r}{why} ({known} symbols known)")
        self.symbol = symbol
        self.known = known

    def __str__(self) -> str:
        # KeyError's own __str__ would wrap the message in quotes.
        return str(self.args[0])


# ---------------------------------------------------------------------------------------------
# Decimal helpers


def _require(value: object, name: str) -> Decimal:
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} must be a Decimal, got {type(value).__name__} {value!r}")
    if not value.is_finite():
        raise ValueError(f"{name} must be finite, got {value}")
    return value


@contextmanager
def _exact() -> Iterator[None]:
    with decimal.localcontext(_EXACT):
        try:
            yield
        except decimal.DecimalException as exc:
            raise ValueError(f"cannot compute exactly on these decimals ({exc!r})") from exc


def _floor_steps(diff: Decimal, step: Decimal) -> tuple[Decimal, Decimal]:
    """``(n, r)`` with ``diff == n * step + r``, ``n`` integral and ``0 <= r < step``."""
    n = diff // step  # Decimal's // truncates toward zero; fix it up to a floor below.
    r = diff - n * step
    if r < 0:
        n -= 1
        r += step
    return n, r


def _plain(value: Decimal) -> str:
    """Fixed-point text without exponent or trailing zeros; exact (no context rounding)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def format_qty(qty: Decimal) -> str:
    """A quantity for the wire: ``Decimal("1E+1")`` → ``"10"``, ``Decimal("0.0100")`` → ``"0.01"``.

    Formats only; quantize with `SymbolRules.quantize_qty` first.
    """
    return _plain(_require(qty, "qty"))


def format_price(price: Decimal) -> str:
    """A price for the wire, as `format_qty` does it; quantize with `quantize_price` first."""
    return _plain(_require(price, "price"))


# ---------------------------------------------------------------------------------------------
# Parsing


def _field(symbol: str, where: str, obj: Mapping[str, Any], key: str) -> Any:
    if key not in obj:
        raise ValueError(f"{symbol}: exchangeInfo {where} has no {key!r}")
    return obj[key]


def _decimal(symbol: str, where: str, obj: Mapping[str, Any], key: str, *,
             positive: bool = False) -> Decimal:
    raw = _field(symbol, where, obj, key)
    # Binance sends filter numbers as strings; a float here would already carry binary error.
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise ValueError(f"{symbol}: {where}.{key} is {raw!r}, expected a decimal string")
    try:
        value = Decimal(raw)
    except decimal.InvalidOperation:
        raise ValueError(f"{symbol}: {where}.{key} is {raw!r}, not a decimal") from None
    if not value.is_finite() or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{symbol}: {where}.{key} is {raw!r}, expected a finite value {bound}")
    return value


def _int(symbol: str, where: str, obj: Mapping[str, Any], key: str) -> int:
    raw = _field(symbol, where, obj, key)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError(f"{symbol}: {where}.{key} is {raw!r}, expected an integer")
    return raw


def _text(symbol: str, obj: Mapping[str, Any], key: str) -> str:
    raw = _field(symbol, "symbol", obj, key)
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"{symbol}: symbol.{key} is {raw!r}, expected a non-empty string")
    return raw


@dataclass(frozen=True, slots=True)
class SymbolRules:
    """One symbol's trading rules, parsed from its exchangeInfo object.

    ``min_price``/``max_price``/``tick_size`` of 0 disable that PRICE_FILTER rule, as on Binance.
    ``multiplier_up``/``multiplier_down`` (PERCENT_PRICE) and ``max_num_orders`` are kept for
    callers but not checked here (a PERCENT_PRICE check needs the side and the mark); they are
    None when the symbol does not publish that filter.
    """

    symbol: str
    status: str
    base_asset: str
    quote_asset: str
    price_precision: int
    quantity_precision: int
    tick_size: Decimal
    min_price: Decimal
    max_price: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    market_step_size: Decimal
    market_min_qty: Decimal
    market_max_qty: Decimal
    min_notional: Decimal
    multiplier_up: Decimal | None = None
    multiplier_down: Decimal | None = None
    max_num_orders: int | None = None

    @classmethod
    def from_exchange_info(cls, data: Mapping[str, Any]) -> SymbolRules:
        """Parse one entry of exchangeInfo ``symbols``.

        Unknown filter types are ignored. Raises ValueError naming the symbol and the filter when
        PRICE_FILTER, LOT_SIZE, MARKET_LOT_SIZE or MIN_NOTIONAL is missing or malformed.
        """
        symbol = data.get("symbol")
        if not isinstance(symbol, str) or not symbol:
            raise ValueError(f"exchangeInfo symbol object without a 'symbol': {symbol!r}")
        raw_filters = data.get("filters")
        if not isinstance(raw_filters, list):
            raise ValueError(f"{symbol}: exchangeInfo symbol has no 'filters' list")
        filters: dict[str, Mapping[str, Any]] = {}
        for item in raw_filters:
            if isinstance(item, Mapping) and isinstance(item.get("filterType"), str):
                filters.setdefault(item["filterType"], item)
        missing = [name for name in REQUIRED_FILTERS if name not in filters]
        if missing:
            raise ValueError(f"{symbol}: exchangeInfo has no {', '.join(missing)} filter")

        def dec(name: str, key: str, *, positive: bool = False) -> Decimal:
            return _decimal(symbol, name, filters[name], key, positive=positive)

        percent = filters.get("PERCENT_PRICE")
        max_orders = filters.get("MAX_NUM_ORDERS")
        return cls(
            symbol=symbol,
            status=_text(symbol, data, "status"),
            base_asset=_text(symbol, data, "baseAsset"),
            quote_asset=_text(symbol, data, "quoteAsset"),
            price_precision=_int(symbol, "symbol", data, "pricePrecision"),
            quantity_precision=_int(symbol, "symbol", data, "quantityPrecision"),
            tick_size=dec("PRICE_FILTER", "tickSize"),
            min_price=dec("PRICE_FILTER", "minPrice"),
            max_price=dec("PRICE_FILTER", "maxPrice"),
            step_size=dec("LOT_SIZE", "stepSize", positive=True),
            min_qty=dec("LOT_SIZE", "minQty"),
            max_qty=dec("LOT_SIZE", "maxQty", positive=True),
            market_step_size=dec("MARKET_LOT_SIZE", "stepSize", positive=True),
            market_min_qty=dec("MARKET_LOT_SIZE", "minQty"),
            market_max_qty=dec("MARKET_LOT_SIZE", "maxQty", positive=True),
            min_notional=dec("MIN_NOTIONAL", "notional"),
            multiplier_up=None if percent is None else _decimal(
                symbol, "PERCENT_PRICE", percent, "multiplierUp", positive=True),
            multiplier_down=None if percent is None else _decimal(
                symbol, "PERCENT_PRICE", percent, "multiplierDown", positive=True),
            max_num_orders=None if max_orders is None else _int(
                symbol, "MAX_NUM_ORDERS", max_orders, "limit"),
        )

    @property
    def trading(self) -> bool:
        return self.status == TRADING

    def _lot(self, market: bool) -> tuple[str, Decimal, Decimal, Decimal]:
        if market:
            return ("MARKET_LOT_SIZE", self.market_min_qty, self.market_max_qty,
                    self.market_step_size)
        return "LOT_SIZE", self.min_qty, self.max_qty, self.step_size

    def quantize_qty(self, qty: Decimal, *, market: bool) -> Decimal:
        """Round `qty` DOWN onto the ``minQty + k × stepSize`` grid (MARKET_LOT_SIZE if `market`).

        Never rounds up: the result never exceeds `qty`, so it never asks for more than the
        caller or the position allows. It does not clamp to ``maxQty``; a value below ``minQty``
        comes back below it (0 at the lowest), and `check_order` rejects both. Raises TypeError
        for a non-Decimal, ValueError for a negative or non-finite `qty`.
        """
        _require(qty, "qty")
        if qty < 0:
            raise ValueError(f"{self.symbol} quantity {_plain(qty)} must not be negative")
        _, low, _, step = self._lot(market)
        with _exact():
            steps, _ = _floor_steps(qty - low, step)
            result = low + steps * step
        return result if result > 0 else _ZERO

    def quantize_price(self, price: Decimal, *, side: str | None = None) -> Decimal:
        """Move `price` onto the ``minPrice + k × tickSize`` grid.

        Without `side`: the nearest tick, a tie going up. With `side`, the conservative direction
        for a limit price, so the order never trades at a worse price than asked: ``"BUY"`` rounds
        down, ``"SELL"`` rounds up. Unchanged when ``tickSize`` is 0 (rule disabled). Does not
        clamp to min/max price; `check_order` rejects those. Raises TypeError for a non-Decimal,
        ValueError for a non-positive or non-finite `price` or another side.
        """
        _require(price, "price")
        if price <= 0:
            raise ValueError(f"{self.symbol} price {_plain(price)} must be above 0")
        if side not in (None, "BUY", "SELL"):
            raise ValueError(f"side must be 'BUY', 'SELL' or None, got {side!r}")
        if self.tick_size == 0:
            return price
        tick = self.tick_size
        with _exact():
            steps, rest = _floor_steps(price - self.min_price, tick)
            if (side is None and rest * 2 >= tick) or (side == "SELL" and rest > 0):
                steps += 1
            return self.min_price + steps * tick

    def check_order(self, qty: Decimal, price_or_mark: Decimal, *, market: bool,
                    reduce_only: bool) -> None:
        """Check an order against these rules before it is sent; raise SymbolRuleError if not.

        `price_or_mark` is the limit price, or the mark price for a MARKET order. The checks, in
        order: status TRADING; qty > 0; (MARKET_)LOT_SIZE minQty, maxQty, stepSize; price > 0;
        for non-market orders PRICE_FILTER minPrice, maxPrice, tickSize (a 0 disables each);
        MIN_NOTIONAL (qty × price/mark), from which reduce-only orders are exempt. Raises
        TypeError for non-Decimal numbers.
        """
        _require(qty, "qty")
        _require(price_or_mark, "price_or_mark")
        sym, price = self.symbol, price_or_mark
        if not self.trading:
            raise SymbolRuleError("STATUS", f"{sym} is {self.status}, not {TRADING}")
        if qty <= 0:
            raise SymbolRuleError("QUANTITY.positive",
                                  f"{sym} quantity {_plain(qty)} must be above 0")
        lot, low, high, step = self._lot(market)
        if qty < low:
            raise SymbolRuleError(f"{lot}.minQty", f"{sym} quantity {_plain(qty)} is below "
                                  f"{lot}.minQty {_plain(low)}")
        if qty > high:
            raise SymbolRuleError(f"{lot}.maxQty", f"{sym} quantity {_plain(qty)} is above "
                                  f"{lot}.maxQty {_plain(high)}")
        with _exact():
            off_step = (qty - low) % step != 0
        if off_step:
            raise SymbolRuleError(f"{lot}.stepSize", f"{sym} quantity {_plain(qty)} is not "
                                  f"minQty {_plain(low)} + a multiple of {lot}.stepSize "
                                  f"{_plain(step)}")
        what = "mark" if market else "price"
        if price <= 0:
            raise SymbolRuleError("PRICE.positive", f"{sym} {what} {_plain(price)} must be above 0")
        if not market:
            self._check_price(price)
        if reduce_only:
            return
        with _exact():
            notional = qty * price
        if notional < self.min_notional:
            raise SymbolRuleError("MIN_NOTIONAL", f"{sym} notional {_plain(notional)} (qty "
                                  f"{_plain(qty)} × {what} {_plain(price)}) is below "
                                  f"MIN_NOTIONAL {_plain(self.min_notional)}")

    def _check_price(self, price: Decimal) -> None:
        sym, shown = self.symbol, _plain(price)
        if self.min_price and price < self.min_price:
            raise SymbolRuleError("PRICE_FILTER.minPrice", f"{sym} price {shown} is below "
                                  f"PRICE_FILTER.minPrice {_plain(self.min_price)}")
        if self.max_price and price > self.max_price:
            raise SymbolRuleError("PRICE_FILTER.maxPrice", f"{sym} price {shown} is above "
                                  f"PRICE_FILTER.maxPrice {_plain(self.max_price)}")
        if self.tick_size:
            with _exact():
                off_tick = (price - self.min_price) % self.tick_size != 0
            if off_tick:
                raise SymbolRuleError("PRICE_FILTER.tickSize", f"{sym} price {shown} is not "
                                      f"minPrice {_plain(self.min_price)} + a multiple of "
                                      f"PRICE_FILTER.tickSize {_plain(self.tick_size)}")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One entry of exchangeInfo ``rateLimits``: ``limit`` per ``interval_num`` × ``interval``.

    ``rate_limit_type`` is Binance's name (``REQUEST_WEIGHT`` per IP, ``ORDERS`` per account).
    """

    rate_limit_type: str
    interval: str
    interval_num: int
    limit: int

    @property
    def window_s(self) -> int:
        """The window length in seconds."""
        return _INTERVAL_S[self.interval] * self.interval_num

    @classmethod
    def from_exchange_info(cls, data: Mapping[str, Any]) -> RateLimit:
        """Parse one ``rateLimits`` entry; ValueError for a malformed one or an unknown interval."""
        where = "rateLimits"
        kind = _field(where, "entry", data, "rateLimitType")
        interval = _field(where, "entry", data, "interval")
        if not isinstance(kind, str) or interval not in _INTERVAL_S:
            raise ValueError(f"rateLimits entry not understood: {dict(data)!r}")
        num, limit = _int(where, kind, data, "intervalNum"), _int(where, kind, data, "limit")
        if num <= 0 or limit <= 0:
            raise ValueError(f"rateLimits entry not understood: {dict(data)!r}")
        return cls(kind, interval, num, limit)


@dataclass(frozen=True, slots=True)
class ExchangeInfo:
    """A parsed exchangeInfo answer: usable rules, symbols that failed to parse, rate limits."""

    rules: Mapping[str, SymbolRules]
    invalid: Mapping[str, str]
    rate_limits: tuple[RateLimit, ...]


def parse_exchange_info(data: Mapping[str, Any]) -> ExchangeInfo:
    """Parse a whole exchangeInfo answer.

    A symbol whose object is malformed is left out and listed in ``invalid`` with the reason:
    one odd listing must not stop trading on the others. A missing or malformed ``symbols`` or
    ``rateLimits`` array raises ValueError: then nothing is usable.
    """
    symbols, limits = data.get("symbols"), data.get("rateLimits")
    if not isinstance(symbols, list) or not isinstance(limits, list):
        raise ValueError("exchangeInfo answer without 'symbols' and 'rateLimits' lists")
    rules: dict[str, SymbolRules] = {}
    invalid: dict[str, str] = {}
    for item in symbols:
        if not isinstance(item, Mapping):
            raise ValueError(f"exchangeInfo 'symbols' holds a non-object: {item!r}")
        try:
            parsed = SymbolRules.from_exchange_info(item)
        except ValueError as exc:
            invalid[str(item.get("symbol"))] = str(exc)
        else:
            rules[parsed.symbol] = parsed
    rate_limits = tuple(RateLimit.from_exchange_info(entry) for entry in limits)
    return ExchangeInfo(rules=rules, invalid=invalid, rate_limits=rate_limits)


def trading_rules(lookup: Callable[[str], SymbolRules], symbol: str) -> SymbolRules:
    """The rules of ``symbol`` from ``lookup``; ``SignalError`` on field ``symbol`` when the
    exchange does not list it or it is not TRADING (SPEC §4.1). Intake and the executor both
    check this, at acceptance and again just before the first order."""
    try:
        rules = lookup(symbol)
    except UnknownSymbol:
        raise SignalError("symbol", f"{symbol} is not a symbol of this exchange") from None
    if not rules.trading:
        raise SignalError("symbol", f"{symbol} is {rules.status}, not {TRADING}")
    return rules
