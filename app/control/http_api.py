"""The control API (SPEC §11.2): signals in, state and account operations out, over aiohttp.

Every answer is JSON (``/metrics`` excepted); every error is ``{"error": "<code>", "detail":
"...", ...}`` naming what is wrong. ``POST /v1/signals`` goes through `Service.accept`, the one
accept path, so its statuses are the service's outcomes: 202 accepted (journaled), 200 duplicate
(the body of ``GET /v1/signals/{id}``), 400 `SignalError`, 429 `QueueFull`, 503 `IntakeClosed`,
503 ``journal_busy`` with ``Retry-After`` (`JournalBusy`: the service audited it), 503
``journal_failed`` with ``Retry-After`` (`JournalFailed`: the journal or its disk failed; on any
other route it is audited here).

Auth is ``Authorization: Bearer <token>`` on everything under ``/v1/``; ``/healthz`` and
``/metrics`` are open. An empty token turns auth off, which the constructor allows on a loopback
address only (the config already demands a token elsewhere; this is defence in depth).

Bodies are never logged, nor is the ``Authorization`` header; aiohttp's access log is off. A
request body is read at most ``max_body_bytes + 1`` bytes at a time, whatever Content-Length
claims, so an oversized body costs no more memory than the limit.

Connections go through a `ConnectionGuard` (``app/control/connections.py``): at most
``max_connections`` open, request headers complete within ``header_timeout_s``; when the cap
acts, an ``alert`` (``kind=api_connections_full``, warning) says so at most once a minute.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import Final, Protocol, TypeVar

import orjson
import prometheus_client
from aiohttp import web

from app.clock import Clock, SystemClock
from app.config_schema import is_loopback
from app.control.connections import ConnectionGuard
from app.domain import (
    SYMBOL_RE,
    SYMBOL_RULE,
    SignalError,
    StateChange,
    TradingState,
)
from app.errors import ExchangeError, InvalidRequest
from app.exchange.models import Balance, CancelCounts, Position
from app.execution.operator import FlattenResult, NotCancelable
from app.intake.bus import QueueFull
from app.intake.reports import signal_view
from app.intake.service import IntakeClosed, IntakeState, Service, audit_journal_trouble
from app.journal import Journal, JournalBusy, JournalFailed, SignalRecord
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger
from app.observability.throttle import Throttle

__all__ = ["AccountPort", "ControlApi", "OperatorPort"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_T = TypeVar("_T")

_ASSET: Final = re.compile(r"[A-Z0-9]{2,16}")
_INVALID_SYMBOL_CODE: Final = -1121  # Binance: "Invalid symbol."
_PUBLIC: Final = frozenset({"/healthz", "/metrics"})
_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})
_BUSY_RETRY_S: Final = 1  # Retry-After of a journal_busy answer
_FAILED_RETRY_S: Final = 5  # of a journal_failed one: a full disk is not freed in a second
_FULL_REPORT_PERIOD_S: Final = 60.0


def _host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port: ``[::1]:8470`` → ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class AccountPort(Protocol):
    """The gateway as the control API sees it (SPEC §5.5)."""

    async def get_position(self, symbol: str) -> Position | None: ...

    async def get_account_balance(self, asset: str = "USDT") -> Balance: ...

    async def cancel_all_orders(self, symbol: str) -> CancelCounts: ...


class OperatorPort(Protocol):
    """The operator's commands (SPEC §5.10, ``execution/operator.py``)."""

    async def set_trading_state(self, state: TradingState, reason: str) -> StateChange: ...

    async def open_symbols(self) -> list[str]: ...

    async def flatten(self, symbols: Iterable[str]) -> list[FlattenResult]: ...

    async def cancel(self, signal_id: str) -> SignalRecord: ...

    def reset_breaker(self, group: str) -> dict[str, object]: ...

    def breaker_groups(self) -> list[str]: ...


class _Problem(Exception):
    """An answer other than success, raised from a handler and rendered by the middleware."""

    def __init__(self, status: int, body: Mapping[str, object],
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers


class ControlApi:
    """The control API server. ``start()`` binds (``port=0`` picks a free port), ``close()``
    stops it. Raises ``ValueError`` for a non-loopback ``host`` with an empty ``token``, and
    for limits out of range."""

    def __init__(self, service: Service, journal: Journal, exchange: AccountPort,
                 status: Callable[[], Mapping[str, object]], *, token: str,
                 host: str = "127.0.0.1", port: int = 8470, max_body_bytes: int = 65536,
                 max_connections: int = 256, header_timeout_s: float = 10.0,
                 log: AuditLogger, clock: Clock | None = None,
                 operator: OperatorPort | None = None,
                 registry: prometheus_client.CollectorRegistry | None = None) -> None:
        if not token and not is_loopback(host):
            raise ValueError(f"refusing to serve the control API on {host!r} without a token")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        self._service = service
        self._journal = journal
        self._exchange = exchange
        self._status = status
        self._operator = operator
        self._token = token.encode()
        self._host = host
        self._port = port
        self._max_body = max_body_bytes
        self._log = log
        self._guard = ConnectionGuard(max_connections=max_connections,
                                      header_timeout_s=header_timeout_s, on_full=self._full)
        self._full_reports = Throttle(SystemClock() if clock is None else clock,
                                      _FULL_REPORT_PERIOD_S)
        self._server: asyncio.AbstractServer | None = None
        self._registry = prometheus_client.CollectorRegistry() if registry is None else registry
        self._runner: web.AppRunner | None = None
        self._app = web.Application(middlewares=[self._errors], client_max_size=max_body_bytes)
        self._app.router.add_get("/healthz", self._healthz)
        self._app.router.add_get("/metrics", self._metrics)
        self._app.router.add_post("/v1/signals", self._post_signal)
        self._app.router.add_get("/v1/signals/{id}", self._get_signal)
        self._app.router.add_get("/v1/status", self._get_status)
        self._app.router.add_get("/v1/positions/{symbol}", self._get_position)
        self._app.router.add_get("/v1/balance", self._get_balance)
        self._app.router.add_post("/v1/cancel-all/{symbol}", self._cancel_all)
        if operator is not None:
            self._app.router.add_delete("/v1/signals/{id}", self._delete_signal)
            self._app.router.add_post("/v1/trading-state", self._post_trading_state)
            self._app.router.add_post("/v1/flatten", self._post_flatten)
            self._app.router.add_post("/v1/breakers/{group}/reset", self._reset_breaker)

    def __repr__(self) -> str:
        where = self.url if self._runner is not None else "not started"
        return f"<ControlApi {where}>"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Bind and serve. Raises ``OSError`` if the address is taken."""
        if self._runner is not None:
            raise RuntimeError("control API already started")
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        assert runner.server is not None
        try:  # aiohttp's TCPSite, with the guard in front of its protocol factory
            self._server = await asyncio.get_running_loop().create_server(
                self._guard.wrap(runner.server), self._host, self._port)
        except BaseException:
            await runner.cleanup()
            raise
        self._port = self._server.sockets[0].getsockname()[1]
        self._runner = runner

    async def close(self) -> None:
        """Stop listening; requests in flight get up to 5 s to finish. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def connections(self) -> dict[str, int | float]:
        """The connection guard's figures: open, the limits, refused, evicted, timed out."""
        return self._guard.statistics()

    def _full(self, kind: str) -> None:
        count = self._full_reports.hit()
        if count:
            stats = self._guard.statistics()
            self._log.warning(AuditEvent.ALERT, kind="api_connections_full",
                              detail=f"the control API reached api.max_connections "
                                     f"({stats['max_connections']}): {kind} a connection",
                              count=count, evicted=stats["evicted"], refused=stats["refused"])

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    # ------------------------------------------------------------------ middleware
    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._guard.request_started(request.transport)
        try:
            self._check_host(request)
            if request.path not in _PUBLIC and request.match_info.http_exception is None:
                self._authorize(request)
            return await handler(request)
        except _Problem as problem:
            return _json(problem.status, problem.body, problem.headers)
        except web.HTTPException as error:  # the router's 404 / 405
            return _routing_error(request, error)
        except JournalFailed as failed:
            audit_journal_trouble(self._log, failed, source="http", journal=self._journal)
            return _journal_failed(failed)
        except Exception as error:
            self._log.error(AuditEvent.API_REQUEST_FAILED, method=request.method,
                            path=request.path, error_class=type(error).__name__, exc_info=True)
            return _json(500, {"error": "internal_error",
                               "detail": f"unexpected {type(error).__name__}; see the audit log"})
        finally:
            self._guard.request_finished(request.transport)

    def _check_host(self, request: web.Request) -> None:
        """SPEC §11.2 host check, on every path (``/healthz`` and ``/metrics`` too): a
        ``Host`` that is not a loopback name or address, nor the configured ``api.host``, is
        refused (421), so a web page cannot reach the API through DNS rebinding. A wildcard
        bind (``0.0.0.0``, ``::``) accepts any host: the token guards it."""
        if self._host in _WILDCARD_HOSTS:
            return
        name = _host_name(request.headers.get("Host", ""))
        if name and (is_loopback(name) or name == self._host.lower()):
            return
        raise _Problem(421, {"error": "misdirected_request",
                             "detail": f"Host {name or '(none)'!r} is not this API's: use "
                                       f"127.0.0.1, localhost or the configured api.host"})

    def _authorize(self, request: web.Request) -> None:
        if not self._token:
            return
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        try:  # aiohttp decodes headers as UTF-8 with surrogateescape: this gives the raw bytes
            given = credentials.strip().encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            given = b""
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self._token):
            raise _Problem(401, {"error": "unauthorized",
                                 "detail": "send Authorization: Bearer <token>"},
                           {"WWW-Authenticate": "Bearer"})

    # ------------------------------------------------------------------ open endpoints
    async def _healthz(self, request: web.Request) -> web.Response:
        state = self._service.state
        if state is IntakeState.READY and (broken := self._journal.broken) is not None:
            return _json(503, {"status": "journal_failed",
                               "detail": f"an fsync of the journal failed ({broken}): no signal "
                                         "is accepted until execd is restarted"})
        return _json(200 if state is IntakeState.READY else 503, {"status": state.value})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=prometheus_client.generate_latest(self._registry),
                            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    # ------------------------------------------------------------------ signals
    async def _post_signal(self, request: web.Request) -> web.Response:
        data = await self._json_body(request)
        try:
            accepted = await self._service.accept(data, source="http")
        except SignalError as error:
            raise _Problem(400, error.body()) from None
        except QueueFull as error:
            seconds = max(1, math.ceil(error.retry_after))
            raise _Problem(429, {"error": "queue_full", "detail": str(error),
                                 "retry_after": seconds, "capacity": error.capacity},
                           {"Retry-After": str(seconds)}) from None
        except IntakeClosed as error:
            raise _Problem(503, {"error": error.state.value, "detail": str(error)}) from None
        except JournalBusy:
            raise _Problem(503, {"error": "journal_busy", "retry_after": _BUSY_RETRY_S,
                                 "detail": "journal busy: another process holds its write "
                                           "lock; nothing was accepted, send it again"},
                           {"Retry-After": str(_BUSY_RETRY_S)}) from None
        except JournalFailed as failed:   # the service audited it
            return _journal_failed(failed)
        if accepted.created:
            # Journaled. The answer waits for the signal's first order (≤ 5 ms) when its lane
            # runs it now: the order is what is urgent, and answering (and the client waking up
            # to read it) would compete with the decision for the loop and the CPU (issue 16).
            await self._service.turn_taken(accepted.record.signal.id)
            return _json(202, signal_view(accepted.record, []))
        intents = await self._journal.intents_for(accepted.record.signal.id)
        return _json(200, signal_view(accepted.record, intents))

    async def _read_body(self, request: web.Request) -> bytes:
        too_big = _Problem(413, {"error": "body_too_large",
                                 "detail": f"the body must be at most {self._max_body} bytes",
                                 "limit": self._max_body})
        if request.content_length is not None and request.content_length > self._max_body:
            raise too_big
        body = bytearray()
        while chunk := await request.content.read(self._max_body + 1 - len(body)):
            body += chunk
            if len(body) > self._max_body:
                raise too_big
        return bytes(body)

    async def _get_signal(self, request: web.Request) -> web.Response:
        signal_id = request.match_info["id"]
        journal = self._journal
        record = await journal.get_signal(signal_id)
        if record is None:
            raise _Problem(404, {"error": "not_found", "detail": f"no signal {signal_id!r}"})
        return _json(200, signal_view(record, await journal.intents_for(signal_id)))

    # ------------------------------------------------------------------ operator commands
    async def _delete_signal(self, request: web.Request) -> web.Response:
        assert self._operator is not None
        signal_id = request.match_info["id"]
        try:
            record = await self._operator.cancel(signal_id)
        except KeyError:
            raise _Problem(404, {"error": "not_found",
                                 "detail": f"no signal {signal_id!r}"}) from None
        except NotCancelable as error:
            raise _Problem(409, {"error": "not_cancelable", "state": error.record.state.value,
                                 "detail": f"{error}: only an ACCEPTED signal that has not "
                                           "started can be cancelled"}) from None
        return _json(200, signal_view(record, []))

    async def _post_trading_state(self, request: web.Request) -> web.Response:
        assert self._operator is not None
        body = await self._json_object(request)
        state, reason = body.get("state"), body.get("reason", "")
        if not isinstance(state, str) or state not in TradingState.__members__:
            raise _Problem(400, {"error": "invalid_request", "field": "state",
                                 "detail": "must be one of "
                                           f"{', '.join(TradingState.__members__)}"})
        if not isinstance(reason, str) or len(reason) > 500:
            raise _Problem(400, {"error": "invalid_request", "field": "reason",
                                 "detail": "must be a string of at most 500 characters"})
        change = await self._operator.set_trading_state(TradingState(state),
                                                         reason or "operator")
        return _json(200, change.view())

    async def _post_flatten(self, request: web.Request) -> web.Response:
        assert self._operator is not None
        body = await self._json_object(request)
        symbols, everything = body.get("symbols"), body.get("all")
        if everything is True and symbols is None:
            wanted = await self._exchange_call(None, self._operator.open_symbols())
        elif (everything in (None, False) and isinstance(symbols, list) and symbols
              and all(isinstance(s, str) and SYMBOL_RE.fullmatch(s) for s in symbols)):
            wanted = symbols
        else:
            raise _Problem(400, {"error": "invalid_request", "field": "symbols",
                                 "detail": 'send {"symbols": ["BTCUSDT", ...]} (each '
                                           f'{SYMBOL_RULE}) or {{"all": true}}'})
        try:
            results = await self._exchange_call(None, self._operator.flatten(wanted))
        except SignalError as error:
            raise _Problem(400, {"error": "invalid_symbol", "field": error.field,
                                 "detail": error.detail}) from None
        return _json(200, {"results": [r.view() for r in results]})

    async def _reset_breaker(self, request: web.Request) -> web.Response:
        assert self._operator is not None
        group = request.match_info["group"]
        try:
            stats = self._operator.reset_breaker(group)
        except KeyError:
            groups = ", ".join(self._operator.breaker_groups())
            raise _Problem(404, {"error": "not_found", "field": "group",
                                 "detail": f"no breaker {group!r}: one of {groups}"}) from None
        return _json(200, {"group": group, **stats})

    async def _json_body(self, request: web.Request) -> object:
        try:
            return orjson.loads(await self._read_body(request))
        except orjson.JSONDecodeError as error:
            raise _Problem(400, {"error": "invalid_json", "detail": str(error)}) from None

    async def _json_object(self, request: web.Request) -> dict[str, object]:
        data = await self._json_body(request)
        if not isinstance(data, dict):
            raise _Problem(400, {"error": "invalid_json", "detail": "the body must be a JSON "
                                                                    "object"})
        return data

    # ------------------------------------------------------------------ state and account
    async def _get_status(self, request: web.Request) -> web.Response:
        return _json(200, self._status())

    async def _get_position(self, request: web.Request) -> web.Response:
        symbol = _symbol(request)
        position = await self._exchange_call(symbol, self._exchange.get_position(symbol))
        # An operator asked: at INFO (the gateway logs its own frequent queries at DEBUG).
        self._log.info(AuditEvent.POSITION_QUERY, symbol=symbol, by="operator",
                       amount=str(position.amount) if position is not None else "0")
        if position is None:
            return _json(200, {"symbol": symbol, "amount": "0"})
        return _json(200, {"symbol": position.symbol, "amount": position.amount,
                           "side": position.side.value, "entry_price": position.entry_price,
                           "mark_price": position.mark_price,
                           "unrealized_pnl": position.unrealized_pnl,
                           "update_time_ms": position.update_time_ms})

    async def _get_balance(self, request: web.Request) -> web.Response:
        asset = request.query.get("asset", "USDT")
        if _ASSET.fullmatch(asset) is None:
            raise _Problem(400, {"error": "invalid_asset", "field": "asset",
                                 "detail": "must be 2-16 characters of A-Z 0-9"})
        balance = await self._exchange_call(None, self._exchange.get_account_balance(asset))
        self._log.info(AuditEvent.BALANCE_QUERY, asset=asset, by="operator",
                       available=str(balance.available))
        return _json(200, {"asset": balance.asset, "wallet": balance.wallet,
                           "available": balance.available,
                           "unrealized_pnl": balance.unrealized_pnl})

    async def _cancel_all(self, request: web.Request) -> web.Response:
        symbol = _symbol(request)
        counts = await self._exchange_call(symbol, self._exchange.cancel_all_orders(symbol))
        return _json(200, {"symbol": symbol, "regular": counts.regular, "algo": counts.algo})

    async def _exchange_call(self, symbol: str | None, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except InvalidRequest as error:
            if symbol is not None and error.code == _INVALID_SYMBOL_CODE:
                raise _Problem(400, {"error": "invalid_symbol", "field": "symbol",
                                     "detail": f"{symbol} is not a symbol of this exchange"}
                               ) from None
            raise _Problem(502, _exchange_error(error)) from None
        except ExchangeError as error:
            raise _Problem(502, _exchange_error(error)) from None


# ---------------------------------------------------------------------- helpers

def _symbol(request: web.Request) -> str:
    symbol = request.match_info["symbol"]
    if SYMBOL_RE.fullmatch(symbol) is None:
        raise _Problem(400, {"error": "invalid_symbol", "field": "symbol",
                             "detail": SYMBOL_RULE})
    return symbol


def _exchange_error(error: ExchangeError) -> dict[str, object]:
    return {"error": "exchange_error", "detail": error.message, "error_class": error.error_class,
            "message": error.message, "code": error.code, "retry_after": error.retry_after}


def _routing_error(request: web.Request, error: web.HTTPException) -> web.Response:
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        return _json(405, {"error": "method_not_allowed",
                           "detail": f"{request.method} {request.path}: allowed {allowed}"},
                     {"Allow": allowed})
    if isinstance(error, web.HTTPNotFound):
        return _json(404, {"error": "not_found", "detail": f"no endpoint {request.path}"})
    return _json(error.status, {"error": (error.reason or "error").lower().replace(" ", "_"),
                                "detail": error.text or error.reason})


def _journal_failed(failed: JournalFailed) -> web.Response:
    return _json(503, {"error": "journal_failed", "retry_after": _FAILED_RETRY_S,
                       "detail": f"{failed}; nothing was acknowledged: send it again later "
                                 "(a signal id the journal kept answers with its record)"},
                 {"Retry-After": str(_FAILED_RETRY_S)})


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f")  # never "1E-7"
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json(status: int, body: Mapping[str, object],
          headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, headers=headers, content_type="application/json",
                        body=orjson.dumps(dict(body), default=_default,
                                          option=orjson.OPT_NON_STR_KEYS))
