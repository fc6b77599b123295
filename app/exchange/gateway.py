"""The one component that talks HTTP to the exchange (SPEC §6).

Every call goes limiter → breaker → python-binance → per-request headers → classify → audit;
after a retryable failure a retry policy (built per call) takes over. Reads retry every
retryable class; order placement retries only what certainly did not reach the matching engine
(``TransientError``, ``RateLimited``, ``ClockSkew`` after a resync): an ``UnknownOutcome`` goes
back to the caller, who looks the order up by its client id (SPEC §5.3) instead of resending
blindly.

The gateway builds none of its collaborators: the composition root (``app/factory.py``) builds
the python-binance client, time sync, symbol cache, breakers and retry policy, points their
listeners at the gateway's ``on_*`` methods, and passes them in. Lifecycle: ``await
gateway.start()`` syncs time and loads exchangeInfo (those two calls precede the limiter, which
is configured from exchangeInfo ``rateLimits``); the factory then hands the gateway its limiter
(``use_limiter``) and every call is limited from there on. Whoever built a collaborator closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from app.clock import Clock
from app.domain import MarginType, OrderType, Side
from app.errors import (
    AuthError,
    ClockSkew,
    ExchangeError,
    InvalidRequest,
    IpBanned,
    OrderNotFound,
    RateLimited,
    TransientError,
    UnknownOutcome,
)
from app.exchange import endpoints as ep
from app.exchange.classify import classify_exception
from app.exchange.client import CURRENT_CALL, BinanceClient, CallContext
from app.exchange.endpoints import BreakerGroup, Endpoint, Security
from app.exchange.limits import costs_for, header_names
from app.exchange.models import (
    AlgoState,
    Balance,
    CancelCounts,
    MarginChange,
    OrderState,
    Position,
)
from app.exchange.symbol_cache import SymbolCache
from app.exchange.symbols import RateLimit, format_price, format_qty
from app.exchange.timesync import TimeSync
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger
from app.resilience.breaker import BreakerState, BreakerStats, CircuitBreaker
from app.resilience.limiter import BucketSpec, Priority, WeightLimiter
from app.resilience.retry import RetryInfo, RetryPolicy, should_retry

T = TypeVar("T")

#: Rejections that may mean our exchangeInfo is stale: reload it (rate-limited).
PRECISION_CODES = frozenset({-1111, -4014, -4023})


def is_breaker_failure(exc: BaseException) -> bool:
    """Failures that say the exchange is unwell; rejections and rate limits are not."""
    return isinstance(exc, TransientError | UnknownOutcome)


def placement_may_retry(exc: BaseException) -> bool:
    """An order request may be sent again only if it certainly did not execute (§5.3.4)."""
    return isinstance(exc, TransientError | RateLimited | ClockSkew)


@dataclass(frozen=True, slots=True)
class _Route:
    """What every call of one endpoint needs, worked out once (per limiter configuration)."""

    endpoint: Endpoint
    #: Bucket → cost; shared by all calls of the route and never mutated.
    costs: dict[str, int]
    label: str
    breaker: CircuitBreaker


class Gateway:
    """Typed exchange operations; see the module docstring for the pipeline."""

    def __init__(self, client: BinanceClient, timesync: TimeSync, symbols: SymbolCache,
                 breakers: Mapping[BreakerGroup, CircuitBreaker], retry: RetryPolicy,
                 clock: Clock, log: AuditLogger, *, session_reset_after: int = 3) -> None:
        """``session_reset_after``: consecutive connection-level failures before the HTTP
        session is replaced."""
        self._client = client
        self._timesync = timesync
        self._symbols = symbols
        self._breakers = breakers
        self._retry = retry
        self._clock = clock
        self._log = log
        self._session_reset_after = session_reset_after
        self._limiter: WeightLimiter | None = None
        self._buckets: list[BucketSpec] = []
        self._header_buckets: dict[str, str] = {}
        #: (endpoint name, has_symbol) → its route; emptied whenever the buckets change.
        self._routes: dict[tuple[str, bool], _Route] = {}
        self._transport_failures = 0
        self._reset_pending: str | None = None
        self._on_auth: Callable[[bool], None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Sync time and load exchangeInfo (unlimited: the limiter comes from its answer)."""
        await self._timesync.sync()
        await self._symbols.load()

    def use_limiter(self, limiter: WeightLimiter, buckets: list[BucketSpec]) -> None:
        """Limit every call from now on; ``buckets`` are the limiter's, from ``rateLimits``."""
        self._limiter = limiter
        self._buckets = buckets
        self._header_buckets = header_names(buckets)
        self._routes = {}

    # ------------------------------------------------------------------ the pipeline
    #
    # This runs on every call, between stretches of aiohttp work that evict it from the CPU
    # caches, so each layer costs more than a tight loop shows (bench/overhead.py): the first
    # attempt is made here, not through the retry policy, which takes over only after a
    # retryable failure; the breaker is entered with its plain methods, not ``async with``.
    async def _call(self, endpoint: Endpoint, fn: Callable[[], Awaitable[T]], *,
                    has_symbol: bool = True, priority: Priority | None = None,
                    retry_if: Callable[[BaseException], bool] = should_retry) -> T:
        """``fn()`` through the pipeline, retried as ``RetryPolicy.run`` would retry it."""
        if priority is None:
            priority = endpoint.priority
        try:
            return await self._once(endpoint, fn, has_symbol, priority)
        except Exception as exc:
            if not self._retry.may_retry(exc, retry_if):
                raise
            first = exc

        async def again() -> T:            # a coroutine function: tenacity awaits only those
            return await self._once(endpoint, fn, has_symbol, priority)

        return await self._retry.resume(endpoint.name, again, first, retry_if=retry_if)

    def _new_route(self, endpoint: Endpoint, has_symbol: bool) -> _Route:
        """Work out (and keep) what calls of ``endpoint`` need; ``_once`` looks it up."""
        costs = ({} if self._limiter is None
                 else costs_for(endpoint, self._buckets, has_symbol=has_symbol))
        route = _Route(endpoint, costs, endpoint.label, self._breakers[endpoint.group])
        self._routes[endpoint.name, has_symbol] = route
        return route

    async def _once(self, endpoint: Endpoint, fn: Callable[[], Awaitable[T]],
                    has_symbol: bool, priority: Priority) -> T:
        route = self._routes.get((endpoint.name, has_symbol))
        if route is None or route.endpoint is not endpoint:
            route = self._new_route(endpoint, has_symbol)
        limiter = self._limiter
        if limiter is not None:
            admitted = limiter.try_acquire(route.costs, priority)
            sent_at = (admitted if admitted is not None
                       else await limiter.acquire(route.costs, priority))
        else:
            sent_at = self._timesync.server_time()
        if self._reset_pending is not None:
            await self._reset_session(self._reset_pending)
        breaker = route.breaker
        probe = breaker.enter()
        try:
            token = CURRENT_CALL.set(CallContext(route.label, route.costs, sent_at))
            try:
                result = await fn()
            except Exception as exc:
                error = classify_exception(exc, endpoint=route.label,
                                           now=self._timesync.server_time())
                if error is None:
                    raise
                await self._after_error(endpoint, error, exc)
                raise error from exc
            finally:
                CURRENT_CALL.reset(token)
        except BaseException as outcome:   # cancellation too: `exit` never counts it
            breaker.exit(outcome, probe)
            raise
        breaker.exit(None, probe)
        self._transport_failures = 0
        if self._on_auth is not None and endpoint.security is Security.SIGNED:
            self._on_auth(False)
        return result

    def watch_auth(self, listener: Callable[[bool], None]) -> None:
        """``listener(refused)`` after every signed call that got an answer: True when the
        exchange refused the API key (`AuthError`), False when it took it."""
        self._on_auth = listener

    def on_response(self, call: CallContext) -> None:
        """Every HTTP response (errors included): feed the exchange's counters to the limiter."""
        limiter = self._limiter
        if limiter is None:
            return
        headers = call.headers
        refused = call.status in (429, 418)    # the exchange counted nothing for these
        for header, bucket in self._header_buckets.items():
            value = headers.get(header)
            if value is not None and value.isdigit():
                cost = 0 if refused else call.costs.get(bucket, 0)
                limiter.observe(bucket, int(value), cost=cost, sent_at=call.sent_at)

    async def _after_error(self, endpoint: Endpoint, error: ExchangeError,
                           cause: BaseException) -> None:
        level = {"info": 20, "warning": 30, "error": 40, "critical": 50}[error.severity]
        self._log.log(level, AuditEvent.API_ERROR, operation=endpoint.name, **error.fields())
        if self._on_auth is not None and endpoint.security is Security.SIGNED:
            if isinstance(error, AuthError):
                self._on_auth(True)
            elif error.http_status is not None:
                self._on_auth(False)        # the key was taken; the request was refused
        if isinstance(error, RateLimited):
            self._penalize(error)
        elif isinstance(error, IpBanned):
            wait = error.retry_after if error.retry_after is not None else 120.0
            if self._limiter is not None:
                self._limiter.ban(self._timesync.server_time() + wait)
            self._log.critical(AuditEvent.IP_BANNED, endpoint=endpoint.label, retry_after=wait,
                               message=error.message)
        elif isinstance(error, ClockSkew):
            self._timesync.reset()
            await self._timesync.sync()
        elif error.code in PRECISION_CODES:
            await self._symbols.refresh_on_precision_error()
        connection_level = isinstance(error, TransientError | UnknownOutcome) and (
            error.http_status is None)
        if connection_level:
            self._transport_failures += 1
            if self._transport_failures >= self._session_reset_after:
                self._reset_pending = (f"{self._transport_failures} connection failures in "
                                       f"a row ({error.error_class})")
        del cause

    def _penalize(self, error: RateLimited) -> None:
        orders = error.code == -1015
        names = [b.name for b in self._buckets if b.name.startswith("orders:") == orders]
        wait = error.retry_after
        if wait is None:
            now = self._timesync.server_time()
            wait = max((b.interval_s - now % b.interval_s for b in self._buckets
                        if b.name in names), default=1.0)
        if self._limiter is not None:
            self._limiter.penalize(names, wait)
        self._log.warning(AuditEvent.RATE_LIMIT, endpoint=error.endpoint, buckets=names,
                          retry_after=wait, code=error.code)

    async def _reset_session(self, reason: str) -> None:
        self._reset_pending = None
        self._transport_failures = 0
        await self._client.reset_session()
        self._log.warning(AuditEvent.SESSION_RESET, reason=reason)

    # ------------------------------------------------------------------ listeners
    def on_retry(self, info: RetryInfo) -> None:
        error = info.error
        self._log.info(AuditEvent.RETRY_ATTEMPT, operation=info.operation, attempt=info.attempt,
                       max_attempts=info.max_attempts, delay=round(info.delay, 3),
                       error_class=type(error).__name__, code=getattr(error, "code", None))

    def on_breaker_change(self, name: str, old: BreakerState, new: BreakerState,
                           stats: BreakerStats) -> None:
        event = {BreakerState.OPEN: AuditEvent.BREAKER_OPENED,
                 BreakerState.HALF_OPEN: AuditEvent.BREAKER_HALF_OPEN,
                 BreakerState.CLOSED: AuditEvent.BREAKER_CLOSED}[new]
        log = self._log.error if new is BreakerState.OPEN else self._log.warning
        log(event, group=name, previous=old.name.lower(),
            consecutive_opens=stats.consecutive_opens)
        if new is BreakerState.OPEN and stats.consecutive_opens >= 2:
            self._reset_pending = f"breaker {name} reopened {stats.consecutive_opens} times"

    def on_breaker_reject(self, name: str, count: int, retry_after: float) -> None:
        self._log.warning(AuditEvent.BREAKER_REJECTED, group=name, rejected=count,
                          retry_after=round(retry_after, 3))

    def on_rate_warning(self, bucket: str, used: int, limit: int) -> None:
        self._log.warning(AuditEvent.RATE_LIMIT_WARNING, bucket=bucket, used=used, limit=limit)

    def on_time_synced(self, offset_ms: int, rtt_s: float, samples: int) -> None:
        self._client.timestamp_offset = offset_ms
        self._log.info(AuditEvent.TIME_SYNCED, offset_ms=offset_ms, rtt_ms=round(rtt_s * 1000, 2),
                       samples=samples)

    # ------------------------------------------------------------------ market data
    async def server_time_ms(self) -> int:
        raw = await self._call(ep.SERVER_TIME, self._client.futures_time)
        return int(raw["serverTime"])

    async def exchange_info(self) -> Mapping[str, Any]:
        """The raw exchangeInfo answer; ``self._symbols`` holds it parsed and cached."""
        info: Mapping[str, Any] = await self._call(ep.EXCHANGE_INFO,
                                                   self._client.futures_exchange_info)
        return info

    def on_exchange_info(self, symbols: int, rate_limits: list[RateLimit]) -> None:
        self._log.info(AuditEvent.EXCHANGE_INFO_REFRESHED, symbols=symbols, rate_limits=[
            f"{r.rate_limit_type} {r.limit}/{r.interval_num} {r.interval}" for r in rate_limits])

    async def mark_price(self, symbol: str) -> Decimal:
        raw = await self._call(ep.MARK_PRICE, lambda: self._client.futures_mark_price(
            symbol=symbol))
        return Decimal(str(raw["markPrice"]))

    # ------------------------------------------------------------------ orders
    async def place_order(self, symbol: str, side: Side, quantity: Decimal, client_id: str, *,
                          reduce_only: bool = False, order_type: OrderType = OrderType.MARKET,
                          price: Decimal | None = None, time_in_force: str | None = None,
                          priority: Priority | None = None) -> OrderState:
        """Place a regular order (MARKET by default) with ``newOrderRespType=RESULT``.

        Raises ``UnknownOutcome`` when the answer is lost: the order may exist; look it up
        with ``get_order(symbol, client_id)`` before sending it again.
        """
        params: dict[str, Any] = {
            "symbol": symbol, "side": side.value, "type": order_type.value,
            "quantity": format_qty(quantity), "newClientOrderId": client_id,
            "newOrderRespType": "RESULT",
        }
        if reduce_only:
            params["reduceOnly"] = "true"
        if price is not None:
            params["price"] = format_price(price)
            params["timeInForce"] = time_in_force or "GTC"
        raw = await self._call(ep.PLACE_ORDER,
                               lambda: self._client.futures_create_order(**params),
                               priority=priority, retry_if=placement_may_retry)
        return OrderState.from_wire(raw)

    async def get_order(self, symbol: str, client_id: str, *,
                        priority: Priority | None = None) -> OrderState | None:
        """The order with this client id, or None if the exchange does not (yet) know it."""
        try:
            raw = await self._call(ep.GET_ORDER, lambda: self._client.futures_get_order(
                symbol=symbol, origClientOrderId=client_id), priority=priority)
        except OrderNotFound:
            return None
        return OrderState.from_wire(raw)

    async def cancel_order(self, symbol: str, client_id: str) -> OrderState | None:
        """Cancel an open order; None if it is unknown or no longer open (-2011)."""
        try:
            raw = await self._call(ep.CANCEL_ORDER, lambda: self._client.futures_cancel_order(
                symbol=symbol, origClientOrderId=client_id))
        except OrderNotFound:
            return None
        state = OrderState.from_wire(raw)
        self._log.info(AuditEvent.ORDER_CANCELLED, symbol=symbol, client_order_id=client_id)
        return state

    async def open_orders(self, symbol: str | None = None) -> list[OrderState]:
        """The open orders of ``symbol``, or of the whole account (weight 40) without one."""
        params = {} if symbol is None else {"symbol": symbol}
        raw = await self._call(ep.OPEN_ORDERS, lambda: self._client.futures_get_open_orders(
            **params), has_symbol=symbol is not None)
        return [OrderState.from_wire(r) for r in raw]

    async def place_algo_order(self, symbol: str, side: Side, order_type: OrderType,
                               trigger_price: Decimal, client_algo_id: str, *,
                               quantity: Decimal | None = None,
                               priority: Priority | None = None) -> AlgoState:
        """A conditional order on the Algo Order API (closePosition unless ``quantity``).

        Raises ``UnknownOutcome`` when the answer is lost: look it up with
        ``get_algo_order(client_algo_id)`` before sending it again.
        """
        if order_type not in (OrderType.STOP_MARKET, OrderType.TAKE_PROFIT_MARKET):
            raise InvalidRequest(f"{order_type} is not a conditional order type",
                                 endpoint=ep.PLACE_ALGO.label)
        params: dict[str, Any] = {
            "algoType": "CONDITIONAL", "symbol": symbol, "side": side.value,
            "type": order_type.value, "triggerPrice": format_price(trigger_price),
            "workingType": "MARK_PRICE", "priceProtect": "true", "clientAlgoId": client_algo_id,
        }
        if quantity is None:
            params["closePosition"] = "true"
        else:
            params["quantity"] = format_qty(quantity)
            params["reduceOnly"] = "true"
        raw = await self._call(ep.PLACE_ALGO,
                               lambda: self._client.futures_create_algo_order(**params),
                               priority=priority, retry_if=placement_may_retry)
        return AlgoState.from_wire(raw)

    async def get_algo_order(self, client_algo_id: str, *,
                             priority: Priority | None = None) -> AlgoState | None:
        try:
            raw = await self._call(ep.GET_ALGO, lambda: self._client.futures_get_algo_order(
                clientAlgoId=client_algo_id), priority=priority)
        except OrderNotFound:
            return None
        return AlgoState.from_wire(raw)

    async def cancel_algo_order(self, client_algo_id: str) -> bool:
        """Cancel an open algo order; False if it is unknown or no longer open. Audited at
        debug: the executor reports the decision (``order_cancelled`` with its reason)."""
        try:
            await self._call(ep.CANCEL_ALGO, lambda: self._client.futures_cancel_algo_order(
                clientAlgoId=client_algo_id))
        except OrderNotFound:
            return False
        self._log.debug(AuditEvent.ORDER_CANCELLED, client_order_id=client_algo_id, algo=True)
        return True

    async def open_algo_orders(self, symbol: str | None = None) -> list[AlgoState]:
        """The open algo orders of ``symbol``, or of the whole account (weight 40)."""
        params = {} if symbol is None else {"symbol": symbol}
        raw = await self._call(ep.OPEN_ALGOS, lambda: self._client.futures_get_open_algo_orders(
            **params), has_symbol=symbol is not None)
        return [AlgoState.from_wire(r) for r in raw]

    async def cancel_all_orders(self, symbol: str) -> CancelCounts:
        """Cancel every regular and algo order of ``symbol``; counts what was open."""
        regular, algos = await asyncio.gather(self.open_orders(symbol),
                                              self.open_algo_orders(symbol))
        if regular:
            await self._call(ep.CANCEL_ALL_ORDERS,
                             lambda: self._client.futures_cancel_all_open_orders(symbol=symbol))
        if algos:
            await self._call(ep.CANCEL_ALL_ALGOS,
                             lambda: self._client.futures_cancel_all_algo_open_orders(
                                 symbol=symbol))
        counts = CancelCounts(regular=len(regular), algo=len(algos))
        self._log.info(AuditEvent.ORDER_CANCELLED, symbol=symbol, all=True,
                       regular=counts.regular, algo=counts.algo)
        return counts

    # ------------------------------------------------------------------ account
    async def set_leverage(self, symbol: str, leverage: int) -> int:
        raw = await self._call(ep.SET_LEVERAGE, lambda: self._client.futures_change_leverage(
            symbol=symbol, leverage=leverage))
        value = int(raw["leverage"])
        self._log.info(AuditEvent.LEVERAGE_SET, symbol=symbol, leverage=value)
        return value

    async def hedge_mode(self) -> bool:
        """Whether the account is in hedge (dual-side) position mode: a signed call, so it
        also proves the API key (SPEC §5.10 start-up checks)."""
        answer = await self._call(ep.POSITION_MODE, self._client.futures_get_position_mode,
                                  has_symbol=False)
        return bool(answer.get("dualSidePosition"))

    async def set_margin_type(self, symbol: str, margin_type: MarginType) -> MarginChange:
        """Set the margin type; -4046 ("No need to change") is success, ``changed=False``."""
        try:
            await self._call(ep.SET_MARGIN_TYPE, lambda: self._client.futures_change_margin_type(
                symbol=symbol, marginType=margin_type.value))
            change = MarginChange(margin_type, changed=True)
        except InvalidRequest as error:
            if error.code != -4046:
                raise
            change = MarginChange(margin_type, changed=False)
        self._log.info(AuditEvent.MARGIN_TYPE_SET, symbol=symbol,
                       margin_type=margin_type.value, changed=change.changed)
        return change

    async def get_position(self, symbol: str, *, priority: Priority | None = None
                           ) -> Position | None:
        """The open position of ``symbol``, or None when flat."""
        rows = await self._call(ep.POSITION_RISK, lambda: self._client.futures_position_information(
            symbol=symbol), priority=priority)
        position = next((Position.from_wire(r) for r in rows if r.get("symbol") == symbol
                         and Decimal(str(r.get("positionAmt") or "0")) != 0), None)
        self._log.debug(AuditEvent.POSITION_QUERY, symbol=symbol,
                       amount=str(position.amount) if position else "0")
        return position

    async def positions(self, *, priority: Priority = Priority.LOW) -> list[Position]:
        """Every open (non-zero) position of the account, for reconciliation (weight 5)."""
        rows = await self._call(ep.POSITION_RISK, self._client.futures_position_information,
                                has_symbol=False, priority=priority)
        return [p for p in map(Position.from_wire, rows) if p.amount != 0]

    async def get_account_balance(self, asset: str = "USDT") -> Balance:
        rows = await self._call(ep.BALANCE, self._client.futures_account_balance)
        for row in rows:
            if row.get("asset") == asset:
                balance = Balance.from_wire(row)
                self._log.debug(AuditEvent.BALANCE_QUERY, asset=asset,
                               available=str(balance.available))
                return balance
        raise InvalidRequest(f"no {asset} balance in the account", endpoint=ep.BALANCE.label)

    # ------------------------------------------------------------------ user-data stream keys
    # The listenKey is a credential: it is passed to python-binance and returned, never logged.
    async def new_listen_key(self) -> str:
        """``POST listenKey``: the account's active key (extended), or a new one."""
        key = await self._call(ep.NEW_LISTEN_KEY, self._client.futures_stream_get_listen_key)
        return str(key)

    async def keepalive_listen_key(self, key: str) -> None:
        """``PUT listenKey``: extend ``key`` by 60 min. Raises ``InvalidRequest`` with
        ``code == -1125`` when the key no longer exists (get a new one)."""
        await self._call(ep.KEEPALIVE_LISTEN_KEY,
                         lambda: self._client.futures_stream_keepalive(listenKey=key))

    async def close_listen_key(self, key: str) -> None:
        """``DELETE listenKey``: ends the stream of every process sharing the account."""
        await self._call(ep.CLOSE_LISTEN_KEY,
                         lambda: self._client.futures_stream_close(listenKey=key))
