"""The ``/_sim/`` admin API: loopback only, no auth, never metered, rate-limited or faulted.

It refuses browser-originated requests (SPEC §11.2), so a web page cannot drive it through
DNS rebinding or a cross-site form: a request with an ``Origin`` header answers 403, and a
POST/PUT/PATCH/DELETE answers 415 when it carries a body that is not declared
``application/json``, or declares one of the types a browser sends cross-origin without
asking first (``text/plain``, a form), body or not. A bodiless POST without a ``Content-Type``
or with aiohttp's default ``application/octet-stream`` (``POST /_sim/reset``) is served.

This contract is fixed (SPEC §10) because tools outside the test suite drive it:
``POST /_sim/price``, ``POST /_sim/faults``, ``GET /_sim/faults``, ``GET /_sim/orders``,
``GET /_sim/state``, ``POST /_sim/reset``, ``POST /_sim/trade``, ``POST /_sim/liquidate``,
``POST /_sim/streams/drop``, ``POST /_sim/listen-key/expire``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation

import orjson
from aiohttp import web

from app.sim import errors
from app.sim.faults import FaultPlanError, fault_plan_from_mapping
from app.sim.manual import liquidate, web_trade
from app.sim.models import fixed
from app.sim.server import Simulator, json_response

AdminHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: What a page may POST cross-origin without a CORS preflight (the Fetch standard's list).
_BROWSER_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded",
                            "multipart/form-data"})


def _problem(detail: str, status: int = 400) -> web.Response:
    return json_response({"error": detail}, status)


def _loopback(remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _browser_refusal(request: web.Request) -> web.Response | None:
    """403 for an ``Origin`` header, 415 for a write whose body is not JSON (module docstring);
    None for a request the admin API serves."""
    if "Origin" in request.headers:
        return _problem("the admin API refuses browser-originated requests: this one has an "
                        "Origin header", 403)
    if request.method not in _WRITES:
        return None
    declared = request.headers.get("Content-Type")
    given = request.content_type if declared is not None else "none"
    if given == "application/json":
        return None
    if request.body_exists or given in _BROWSER_TYPES:
        return _problem(f"Content-Type must be application/json for a body (got {given}); "
                        "the admin API refuses what a browser could send cross-origin", 415)
    return None


async def _json_body(request: web.Request) -> object:
    raw = await request.read()
    try:
        return orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(
            text=orjson.dumps({"error": f"body is not valid JSON: {exc}"}).decode(),
            content_type="application/json") from None


def admin_routes(sim: Simulator) -> list[web.RouteDef]:
    """Route definitions for the admin API, bound to ``sim``."""

    def guarded(handler: AdminHandler) -> AdminHandler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            if not _loopback(request.remote):
                return _problem("the admin API answers loopback clients only", 403)
            refusal = _browser_refusal(request)
            if refusal is not None:
                return refusal
            return await handler(request)
        return wrapper

    async def set_price(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _problem("body must be an object with symbol and price")
        symbol = body.get("symbol")
        if symbol not in sim.exchange.state.symbols:
            return _problem(f"symbol: unknown symbol {symbol!r}")
        raw = body.get("price")
        if not isinstance(raw, str | int | float) or isinstance(raw, bool):
            return _problem("price: must be a decimal string")
        try:
            price = Decimal(str(raw))
        except InvalidOperation:
            return _problem(f"price: not a decimal: {raw!r}")
        if not price.is_finite() or price <= 0:
            return _problem("price: must be a positive decimal")
        sim.set_mark(symbol, price)
        st = sim.exchange.state
        return json_response({"symbol": symbol, "price": fixed(
            st.marks[symbol], st.symbols[symbol].price_precision)})

    async def set_faults(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _problem("plan: must be an object")
        try:
            plan = fault_plan_from_mapping(body)
        except FaultPlanError as exc:
            return _problem(str(exc))
        sim.set_faults(plan)
        return json_response(plan.to_json())

    async def get_faults(request: web.Request) -> web.StreamResponse:
        return json_response(sim.faults.plan.to_json())

    async def orders(request: web.Request) -> web.StreamResponse:
        return json_response(sim.exchange.state.ledger.rows())

    async def state(request: web.Request) -> web.StreamResponse:
        return json_response(snapshot(sim))

    async def reset(request: web.Request) -> web.StreamResponse:
        sim.reset()
        return json_response({"status": "reset"})

    async def trade(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _problem("body must be an object with symbol, side and qty")
        fields = {}
        for name in ("symbol", "side", "qty"):
            value = body.get(name)
            if not isinstance(value, str) or not value:
                return _problem(f"{name}: required, a string")
            fields[name] = value
        try:
            return json_response(web_trade(sim.exchange, fields["symbol"], fields["side"],
                                           fields["qty"]))
        except errors.ApiError as error:
            return _problem(f"{error.code}: {error.msg}")

    async def force_close(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        symbol = body.get("symbol") if isinstance(body, dict) else None
        if symbol not in sim.exchange.state.symbols:
            return _problem(f"symbol: unknown symbol {symbol!r}")
        try:
            return json_response(liquidate(sim.exchange, str(symbol)))
        except errors.ApiError as error:
            return _problem(f"{error.code}: {error.msg}")

    async def drop_streams(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        raw = body.get("block_s", 0) if isinstance(body, dict) else None
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw <= 3600:
            return _problem("block_s: must be a number of seconds from 0 to 3600")
        counts = sim.stream_counts()
        sim.drop_streams(float(raw))
        return json_response({"dropped": counts, "block_s": raw})

    async def expire_listen_key(request: web.Request) -> web.StreamResponse:
        sim.user.expire_now()
        return json_response({"status": "expired"})

    return [
        web.post("/_sim/price", guarded(set_price)),
        web.post("/_sim/faults", guarded(set_faults)),
        web.get("/_sim/faults", guarded(get_faults)),
        web.get("/_sim/orders", guarded(orders)),
        web.get("/_sim/state", guarded(state)),
        web.post("/_sim/reset", guarded(reset)),
        web.post("/_sim/trade", guarded(trade)),
        web.post("/_sim/liquidate", guarded(force_close)),
        web.post("/_sim/streams/drop", guarded(drop_streams)),
        web.post("/_sim/listen-key/expire", guarded(expire_listen_key)),
    ]


def snapshot(sim: Simulator) -> dict[str, object]:
    """``GET /_sim/state``: open positions, balance, marks, limits and throttling counts."""
    st = sim.exchange.state
    now = sim.clock()
    positions = []
    for symbol, pos in st.positions.items():
        if not pos.amount:
            continue
        spec = pos.spec
        positions.append({
            "symbol": symbol,
            "positionAmt": fixed(pos.amount, spec.quantity_precision),
            "entryPrice": fixed(pos.entry_price, max(spec.price_precision, 8)),
            "unRealizedProfit": fixed(pos.unrealized(st.marks[symbol]), 8),
            "leverage": pos.leverage,
            "marginType": pos.margin_type,
        })
    return {
        "positions": positions,
        "balance": {"asset": "USDT", "walletBalance": fixed(st.wallet, 8),
                    "availableBalance": fixed(sim.exchange.account.available_balance(), 8)},
        "mark": {s: fixed(p, st.symbols[s].price_precision) for s, p in st.marks.items()},
        "used_weight": sim.limits.used_weight(now),
        "order_count": sim.limits.order_counts(now),
        "throttled": {"429": sim.limits.count_429, "418": sim.limits.count_418},
        "bans": sim.limits.bans(now),
        "requests": sim.requests,
        "streams": sim.stream_counts(),
    }
