"""The simulator's HTTP front: one pipeline every ``/fapi`` request goes through.

Order of checks: route → scheduled outage (503, unmetered) → rate limits (429/418, counted per
IP and account) → key, signature and timestamp (SIGNED routes; the key alone for USER_STREAM
routes) → fault draw → handler → fault after applying. Admin routes (``/_sim/``) skip all of it
(see ``admin.py``); the websockets (``userstream.py``, ``marketstream.py``) are not metered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from decimal import Decimal
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from app.sim import errors
from app.sim.config import SimConfig
from app.sim.exchange import Exchange
from app.sim.faults import ActiveFaults, Decision, FaultKind, FaultPlan
from app.sim.limits import RateLimits
from app.sim.market import MarkWalk
from app.sim.marketstream import MarketStream
from app.sim.routes import ROUTE_TABLE, Call, Route
from app.sim.security import check_api_key, check_signed
from app.sim.userstream import UserStream
from app.sim.wsconn import CLOSE_GOING_AWAY, Gate

log = logging.getLogger("execd.sim")

UNKNOWN_503_MSG = "Unknown error, please check your request or try again later."
TIMEOUT_1007_MSG = (
    "Timeout waiting for response from backend server. Send status unknown; execution status "
    "unknown."
)
DISCONNECTED_MSG = "Internal error; unable to process your request. Please try again."
THROTTLED_MSG = (
    "Request throttled by system-level protection. Reduce-only/close-position orders are "
    "exempt. Please try again."
)
NOT_COUNTED = frozenset({FaultKind.THROTTLED_1008, FaultKind.SERVICE_UNAVAILABLE})


def json_response(payload: object, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, headers=headers,
                        content_type="application/json")


def error_response(error: errors.ApiError, headers: dict[str, str] | None = None) -> web.Response:
    merged = dict(headers or {})
    merged.update(error.headers)
    return json_response(error.body(), error.status, merged)


def fault_error(kind: FaultKind) -> errors.ApiError:
    """The answer a fault produces (Binance's texts; research §6)."""
    table = {
        FaultKind.HTTP_500: (500, -1000, "Request occur unknown error."),
        FaultKind.DISCONNECTED_1001: (503, -1001, DISCONNECTED_MSG),
        FaultKind.THROTTLED_1008: (503, -1008, THROTTLED_MSG),
        FaultKind.SERVICE_UNAVAILABLE: (503, -1000, "Service Unavailable."),
        FaultKind.UNKNOWN_503: (503, -1000, UNKNOWN_503_MSG),
        FaultKind.TIMEOUT_1007: (408, -1007, TIMEOUT_1007_MSG),
    }
    status, code, msg = table[kind]
    return errors.ApiError(status, code, msg)


class Simulator:
    """Exchange state plus the HTTP pipeline; build one per server (or per test)."""

    def __init__(self, config: SimConfig, *, clock: Callable[[], float] = time.time,
                 faults: FaultPlan | None = None, seed: int | None = None) -> None:
        self.config = config
        self.clock = clock
        self.exchange = Exchange(config, clock)
        self.gate = Gate()
        self.user = UserStream(config.streams, clock, self.gate)
        self.exchange.state.sink = self.user
        state = self.exchange.state
        self.market = MarketStream(config.streams, state.symbols, lambda: state.marks, clock,
                                   self.gate)
        self.limits = RateLimits(config)
        self.seed = config.market.seed if seed is None else seed
        self.walk = MarkWalk(self.exchange, config.market.volatility_per_minute, self.seed)
        self.faults = ActiveFaults.start(faults or FaultPlan(), clock())
        self.requests = 0

    def set_faults(self, plan: FaultPlan) -> None:
        self.faults = ActiveFaults.start(plan, self.clock())

    def reset(self) -> None:
        self.exchange.reset()
        self.limits.reset()
        self.walk.reseed(self.seed)
        self.faults = ActiveFaults.start(FaultPlan(), self.clock())
        self.requests = 0

    def set_mark(self, symbol: str, price: Decimal) -> None:
        """Move a mark by hand: orders it crosses trigger, its streams are pushed now."""
        self.exchange.set_mark(symbol, price)
        self.market.on_mark(symbol)

    def drop_streams(self, block_s: float) -> None:
        """Close every websocket now and refuse new ones for ``block_s`` seconds."""
        self.gate.block(block_s)
        self.user.close_all(CLOSE_GOING_AWAY, "dropped by the simulator")
        self.market.close_all(CLOSE_GOING_AWAY, "dropped by the simulator")

    def stream_counts(self) -> dict[str, int]:
        return {"user": self.user.connections, "market": self.market.connections}

    def tick(self) -> None:
        self.walk.step(self.clock())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = ROUTE_TABLE.get((request.method, request.path))
        if route is None:
            return json_response({"code": -5000, "msg": f"Path {request.path}, Method "
                                  f"{request.method} is invalid"}, 404)
        self.requests += 1
        now = self.clock()
        if self.faults.in_outage(now):
            return error_response(fault_error(FaultKind.SERVICE_UNAVAILABLE))
        raw_query = request.query_string
        raw_body = ""
        if request.can_read_body and request.content_type in (
                "application/x-www-form-urlencoded", "application/octet-stream", ""):
            raw_body = (await request.read()).decode("utf-8", errors="replace")
        params = dict(parse_qsl(raw_body, keep_blank_values=True))
        params.update(parse_qsl(raw_query, keep_blank_values=True))
        ip = request.remote or "unknown"
        weight = route.weight_for(params)
        try:
            headers = self.limits.admit(ip, weight, route.orders, now)
        except errors.ApiError as error:
            return error_response(error)
        try:
            if route.signed:
                check_signed(request.headers, params, raw_query, raw_body,
                             self.config.credentials, int(now * 1000))
            elif route.key_only:
                check_api_key(request.headers, self.config.credentials)
        except errors.ApiError as error:
            return error_response(error, headers)
        decision = self.faults.decide(f"{request.method} {request.path}")
        if decision.latency_s:
            await asyncio.sleep(decision.latency_s)
        if decision.fault in NOT_COUNTED:
            self.limits.refund(ip, weight, route.orders, now)
            headers = self.limits.headers(ip, now, orders=bool(route.orders))
        if decision.fault is not None and decision.fault in (
                FaultKind.HTTP_500, FaultKind.DISCONNECTED_1001, *NOT_COUNTED):
            return error_response(fault_error(decision.fault), headers)
        return await self._apply(request, route, params, headers, decision)

    async def _apply(self, request: web.Request, route: Route, params: dict[str, str],
                     headers: dict[str, str], decision: Decision) -> web.StreamResponse:
        now = self.clock()
        # delayed_visibility hides the new order from queries for a while; so does any other
        # applied fault given a visibility_delay_s (an unknown outcome that Binance also
        # reports as "does not exist" for a few seconds: the case exactly-once must survive).
        visible_at = now + decision.visibility_delay_s if decision.visibility_delay_s else 0.0
        try:
            payload = route.handler(Call(self.exchange, self.config, params, now, self.user,
                                         visible_at, decision.fill_ratio))
        except errors.ApiError as error:
            return error_response(error, headers)
        fault = decision.fault
        if fault in (FaultKind.UNKNOWN_503, FaultKind.TIMEOUT_1007):
            assert fault is not None
            return error_response(fault_error(fault), headers)
        if fault is FaultKind.RESET_AFTER_APPLY:
            return await _drop_connection(request)
        if fault is FaultKind.HANG:
            await asyncio.sleep(decision.hang_s)
        return json_response(payload, 200, headers)


async def _drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the socket without an answer: the client sees a reset / disconnect."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    # aiohttp needs a response object; nothing reaches the client any more.
    response = web.StreamResponse(status=500)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.prepare(request)
    return response
