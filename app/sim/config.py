"""The simulator's settings: a frozen tree loaded from one or more TOML files.

``load_sim_config(base, overlay, ...)`` merges the files in order (later keys win), then checks
every key: an unknown key or a wrong type is a :class:`SimConfigError` naming its dotted path.
The shape of ``[credentials]``, ``[limits]``, ``[account]``, ``[market]`` and ``[streams]`` is a
fixed contract (SPEC §10); ``[ban]`` and ``[[symbols]]`` are the simulator's own.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, get_type_hints


class SimConfigError(ValueError):
    """A simulator config file is malformed; the message names the key."""


@dataclass(frozen=True, slots=True)
class Credentials:
    api_key: str = "sim-key"
    api_secret: str = "sim-secret"


@dataclass(frozen=True, slots=True)
class Limits:
    request_weight: int = 2400
    request_weight_interval_s: int = 60
    orders_short: int = 300
    orders_short_interval_s: int = 10
    orders_long: int = 1200
    orders_long_interval_s: int = 60
    ban_after_429s: int = 3


@dataclass(frozen=True, slots=True)
class Ban:
    """IP bans for clients that keep going after 429s: first ban, growth factor, cap."""

    initial_s: float = 120.0
    factor: float = 2.0
    max_s: float = 259200.0


@dataclass(frozen=True, slots=True)
class Account:
    balance: Decimal = Decimal("10000")
    default_leverage: int = 20
    taker_fee: Decimal = Decimal("0.0005")
    maker_fee: Decimal = Decimal("0.0002")


@dataclass(frozen=True, slots=True)
class Market:
    volatility_per_minute: float = 0.002
    seed: int = 1
    tick_interval_s: float = 0.1
    slippage: Decimal = Decimal("0.0001")


@dataclass(frozen=True, slots=True)
class Streams:
    """The websockets (SPEC §10): listenKey validity, server pings, the pong timeout and the
    connection age limit, in seconds (small values make fast tests)."""

    listen_key_validity_s: float = 3600.0
    ping_interval_s: float = 180.0
    pong_timeout_s: float = 600.0
    max_connection_s: float = 86400.0

    def __post_init__(self) -> None:
        for name in ("listen_key_validity_s", "ping_interval_s", "pong_timeout_s",
                     "max_connection_s"):
            if getattr(self, name) <= 0:
                raise SimConfigError(f"streams.{name}: must be positive")


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One USDⓈ-M perpetual with the filters Binance publishes in exchangeInfo."""

    symbol: str
    base_asset: str
    price: Decimal
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    market_max_qty: Decimal
    min_notional: Decimal
    price_precision: int
    quantity_precision: int
    min_price: Decimal
    max_price: Decimal
    multiplier_up: Decimal = Decimal("1.0500")
    multiplier_down: Decimal = Decimal("0.9500")
    quote_asset: str = "USDT"
    status: str = "TRADING"


def _sym(symbol: str, price: str, tick: str, step: str, min_qty: str, max_qty: str,
         market_max: str, notional: str, pp: int, qp: int, min_price: str,
         max_price: str) -> SymbolSpec:
    return SymbolSpec(
        symbol=symbol, base_asset=symbol.removesuffix("USDT"), price=Decimal(price),
        tick_size=Decimal(tick), step_size=Decimal(step), min_qty=Decimal(min_qty),
        max_qty=Decimal(max_qty), market_max_qty=Decimal(market_max),
        min_notional=Decimal(notional), price_precision=pp, quantity_precision=qp,
        min_price=Decimal(min_price), max_price=Decimal(max_price),
    )


DEFAULT_SYMBOLS: tuple[SymbolSpec, ...] = (
    _sym("BTCUSDT", "65000.00", "0.10", "0.001", "0.001", "1000", "120", "100", 2, 3,
         "556.80", "4529764"),
    _sym("ETHUSDT", "3200.00", "0.01", "0.001", "0.001", "10000", "2000", "20", 2, 3,
         "39.86", "306177"),
    _sym("SOLUSDT", "150.0000", "0.0100", "1", "1", "1000000", "5000", "5", 4, 0,
         "0.4200", "6857"),
    _sym("BNBUSDT", "600.000", "0.010", "0.01", "0.01", "100000", "2000", "5", 3, 2,
         "6.600", "100000"),
    _sym("XRPUSDT", "0.6000", "0.0001", "0.1", "0.1", "10000000", "2000000", "5", 4, 1,
         "0.0143", "100000"),
)


@dataclass(frozen=True, slots=True)
class SimConfig:
    credentials: Credentials = field(default_factory=Credentials)
    limits: Limits = field(default_factory=Limits)
    ban: Ban = field(default_factory=Ban)
    account: Account = field(default_factory=Account)
    market: Market = field(default_factory=Market)
    streams: Streams = field(default_factory=Streams)
    symbols: tuple[SymbolSpec, ...] = DEFAULT_SYMBOLS


def load_sim_config(*paths: Path | None) -> SimConfig:
    """Merge TOML files in order (missing paths given as None are skipped) into a SimConfig."""
    merged: dict[str, Any] = {}
    for path in paths:
        if path is None:
            continue
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SimConfigError(f"{path}: file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SimConfigError(f"{path}: invalid TOML: {exc}") from exc
        _merge(merged, data)
    return sim_config_from_mapping(merged)


def sim_config_from_mapping(data: Mapping[str, Any]) -> SimConfig:
    """Build a SimConfig from a parsed mapping; unknown keys and wrong types name their path."""
    known = {f.name for f in fields(SimConfig)}
    for key in data:
        if key not in known:
            raise SimConfigError(f"{key}: unknown key")
    kwargs: dict[str, Any] = {}
    for f in fields(SimConfig):
        if f.name not in data:
            continue
        if f.name == "symbols":
            kwargs["symbols"] = _symbols(data["symbols"])
        else:
            cls = get_type_hints(SimConfig)[f.name]
            kwargs[f.name] = _section(cls, data[f.name], f.name)
    return SimConfig(**kwargs)


def _merge(into: dict[str, Any], data: Mapping[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _section(cls: type[Any], raw: object, path: str) -> Any:
    if not isinstance(raw, dict):
        raise SimConfigError(f"{path}: must be a table")
    assert is_dataclass(cls)
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key in raw:
        if key not in names:
            raise SimConfigError(f"{path}.{key}: unknown key")
    values = {key: _coerce(hints[key], value, f"{path}.{key}") for key, value in raw.items()}
    return cls(**values)


def _symbols(raw: object) -> tuple[SymbolSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise SimConfigError("symbols: must be a non-empty array of tables")
    specs: list[SymbolSpec] = []
    required = {f.name for f in fields(SymbolSpec)} - {
        "multiplier_up", "multiplier_down", "quote_asset", "status", "base_asset"}
    for i, item in enumerate(raw):
        path = f"symbols[{i}]"
        if not isinstance(item, dict):
            raise SimConfigError(f"{path}: must be a table")
        missing = sorted(required - set(item))
        if missing:
            raise SimConfigError(f"{path}.{missing[0]}: required key missing")
        item = dict(item)
        item.setdefault("base_asset", str(item["symbol"]).removesuffix("USDT"))
        specs.append(_section(SymbolSpec, item, path))
    return tuple(specs)


def _coerce(kind: object, value: object, path: str) -> object:
    if kind is Decimal:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise SimConfigError(f"{path}: must be a decimal string")
        try:
            result = Decimal(str(value))
        except InvalidOperation as exc:
            raise SimConfigError(f"{path}: not a decimal: {value!r}") from exc
        if not result.is_finite() or result < 0:
            raise SimConfigError(f"{path}: must be a finite, non-negative decimal")
        return result
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SimConfigError(f"{path}: must be an integer")
        if value < 0 or (value == 0 and not path.endswith("precision")):
            raise SimConfigError(f"{path}: must be positive")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SimConfigError(f"{path}: must be a number")
        if value < 0:
            raise SimConfigError(f"{path}: must not be negative")
        return float(value)
    if kind is str:
        if not isinstance(value, str) or not value:
            raise SimConfigError(f"{path}: must be a non-empty string")
        return value
    raise SimConfigError(f"{path}: unsupported type")  # pragma: no cover
