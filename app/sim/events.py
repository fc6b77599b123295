"""The user-data and market stream events, in Binance's shapes (SPEC §10 "Streams",
research/binance-futures-api.md §11): pure functions from the simulator's objects to payloads.

Field names and value sets are Binance's; decimals are strings; ``E`` (event time) and ``T``
(transaction time) are milliseconds. Fields Binance sends only when they apply are left out
until then: ``n``/``N`` (commission) on order events that carry no trade; ``ai ap aq act`` on
algo events before the algo order triggered.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from app.sim.config import SymbolSpec
from app.sim.models import ZERO, AlgoOrder, Order, Position, Trade, fixed, ms

#: ``ACCOUNT_UPDATE`` reasons (``a.m``) the simulator produces.
REASON_ORDER = "ORDER"
REASON_MARGIN_TYPE_CHANGE = "MARGIN_TYPE_CHANGE"

#: Funding every 8 h at 00:00, 08:00, 16:00 UTC; the simulator's rate is a constant.
FUNDING_INTERVAL_MS = 8 * 3600 * 1000
FUNDING_RATE = "0.00010000"


def _plain(value: Decimal) -> str:
    """A decimal as Binance writes event amounts: plain, no exponent (``"0"``, ``"1.25"``)."""
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def order_trade_update(order: Order, execution: str, now: float,
                       trade: Trade | None = None) -> dict[str, object]:
    """``ORDER_TRADE_UPDATE``: ``execution`` (``x``) is NEW, TRADE, CANCELED or EXPIRED;
    ``trade`` is the fill a TRADE event reports (``l L t n N m rp``)."""
    spec = order.spec
    pp, qp = spec.price_precision, spec.quantity_precision
    o: dict[str, object] = {
        "s": spec.symbol,
        "c": order.client_id,
        "S": order.side,
        "o": order.type,
        "f": order.time_in_force,
        "q": fixed(order.qty, qp),
        "p": fixed(order.price, pp),
        "ap": fixed(order.avg_price, max(pp, 5)),
        "sp": fixed(order.stop_price, pp),
        "x": execution,
        "X": order.status,
        "i": order.order_id,
        "l": fixed(trade.qty if trade else ZERO, qp),
        "z": fixed(order.executed_qty, qp),
        "L": fixed(trade.price if trade else ZERO, pp),
        "T": ms(trade.time if trade else (order.updated or order.created)),
        "t": trade.trade_id if trade else 0,
        "b": "0",
        "a": "0",
        "m": trade.maker if trade else False,
        "R": order.reduce_only,
        "wt": order.working_type,
        "ot": order.orig_type or order.type,
        "ps": "BOTH",
        "cp": order.close_position,
        "rp": _plain(trade.realized_pnl.quantize(Decimal("0.00000001"))) if trade else "0",
        "pP": False,
        "si": 0,
        "ss": 0,
        "V": "EXPIRE_MAKER",
        "pm": "NONE",
        "gtd": 0,
    }
    if trade is not None:
        o["N"] = "USDT"
        o["n"] = _plain(trade.commission.quantize(Decimal("0.00000001")))
    transaction = o["T"]
    return {"e": "ORDER_TRADE_UPDATE", "E": ms(now), "T": transaction, "o": o}


def algo_update(algo: AlgoOrder, now: float, reason: str = "") -> dict[str, object]:
    """``ALGO_UPDATE`` for the algo order's current status (``X``): NEW, CANCELED, TRIGGERED,
    FINISHED, EXPIRED. ``reason`` is ``rm`` (why the system ended it)."""
    spec = algo.spec
    pp, qp = spec.price_precision, spec.quantity_precision
    o: dict[str, object] = {
        "caid": algo.client_algo_id,
        "aid": algo.algo_id,
        "at": "CONDITIONAL",
        "o": algo.order_type,
        "s": spec.symbol,
        "S": algo.side,
        "ps": "BOTH",
        "f": algo.time_in_force,
        "q": fixed(algo.qty, qp),
        "X": algo.status,
        "tp": fixed(algo.trigger_price, pp),
        "p": fixed(algo.price, pp),
        "V": "EXPIRE_MAKER",
        "wt": algo.working_type,
        "pm": "NONE",
        "cp": algo.close_position,
        "pP": algo.price_protect,
        "R": algo.reduce_only,
        "tt": ms(algo.trigger_time),
        "gtd": 0,
        "rm": reason,
    }
    if algo.actual_order_id is not None:
        o["ai"] = str(algo.actual_order_id)
        o["ap"] = fixed(algo.actual_price, pp)
        o["aq"] = fixed(algo.actual_qty, qp)
        o["act"] = "MARKET" if algo.order_type.endswith("MARKET") else "LIMIT"
    return {"e": "ALGO_UPDATE", "T": ms(algo.updated or algo.created), "E": ms(now), "o": o}


def account_update(reason: str, wallet: Decimal, positions: Iterable[Position],
                   marks: dict[str, Decimal], now: float, *,
                   balance_change: Decimal = ZERO) -> dict[str, object]:
    """``ACCOUNT_UPDATE`` with the USDT balance and the ``positions`` that changed."""
    rows = []
    for pos in positions:
        spec: SymbolSpec = pos.spec
        mark = marks[spec.symbol]
        rows.append({
            "s": spec.symbol,
            "pa": fixed(pos.amount, spec.quantity_precision),
            "ep": fixed(pos.entry_price, max(spec.price_precision, 8)),
            "bep": fixed(pos.entry_price, max(spec.price_precision, 8)),
            "cr": _plain(pos.realized.quantize(Decimal("0.00000001"))),
            "up": _plain(pos.unrealized(mark).quantize(Decimal("0.00000001"))),
            "mt": "isolated" if pos.margin_type == "ISOLATED" else "cross",
            "iw": "0",
            "ps": "BOTH",
        })
    balance = _plain(wallet.quantize(Decimal("0.00000001")))
    return {"e": "ACCOUNT_UPDATE", "E": ms(now), "T": ms(now), "a": {
        "m": reason,
        "B": [{"a": "USDT", "wb": balance, "cw": balance, "bc": _plain(balance_change)}],
        "P": rows,
    }}


def listen_key_expired(key: str, now: float) -> dict[str, object]:
    return {"e": "listenKeyExpired", "E": ms(now), "listenKey": key}


def mark_price_update(spec: SymbolSpec, mark: Decimal, now: float) -> dict[str, object]:
    """``markPriceUpdate``: the index price is the mark (the simulator has one price)."""
    now_ms = ms(now)
    price = fixed(mark, spec.price_precision)
    return {"e": "markPriceUpdate", "E": now_ms, "s": spec.symbol, "p": price, "i": price,
            "P": price, "r": FUNDING_RATE,
            "T": (now_ms // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS}
