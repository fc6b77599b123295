"""The gateway's call pipeline (SPEC §6.2, §7): limiter → breaker → python-binance →
per-request headers → classify → audit, and after a retryable failure the retry policy. The
typed operations (``gateway.py``) are built on it; it knows no endpoint but the one it is
given.

Reads retry every retryable class; order placement retries only what certainly did not reach
the matching engine (``TransientError``, ``RateLimited``, ``ClockSkew`` after a resync): an
``UnknownOutcome`` goes back to the caller, who looks the order up by its client id (SPEC §5.3).
The listeners (``on_*``) are what the composition root points the collaborators at.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from app.clock import Clock
from app.errors import (
    AuthError,
    ClockSkew,
    ExchangeError,
    IpBanned,
    RateLimited,
    TransientError,
    UnknownOutcome,
)
from app.exchange.classify import PRECISION_CODES, classify_exception
from app.exchange.client import CURRENT_CALL, BinanceClient, CallContext
from app.exchange.endpoints import BreakerGroup, Endpoint, Security
from app.exchange.limits import costs_for, header_names
from app.exchange.symbol_cache import SymbolCache
from app.exchange.timesync import TimeSync
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger
from app.resilience.breaker import BreakerState, BreakerStats, CircuitBreaker
from app.resilience.limiter import BucketSpec, Priority, WeightLimiter
from app.resilience.retry import RetryInfo, RetryPolicy, should_retry

T = TypeVar("T")

@dataclass(frozen=True, slots=True)
class _Route:
    """What every call of one endpoint needs, worked out once (per limiter configuration)."""

    endpoint: Endpoint
    #: Bucket → cost; shared by all calls of the route and never mutated.
    costs: dict[str, int]
    label: str
    breaker: CircuitBreaker


class CallPipeline:
    """Every exchange call goes through `_call`; see the module docstring."""

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
        await self._symbols.load("start")

    def use_limiter(self, limiter: WeightLimiter, buckets: list[BucketSpec]) -> None:
        """Limit every call from now on; ``buckets`` are the limiter's, from ``rateLimits``."""
        self._limiter = limiter
        self._buckets = buckets
        self._header_buckets = header_names(buckets)
        self._routes = {}

    @property
    def buckets(self) -> list[BucketSpec]:
        """The limiter's buckets as they are now (rebuilt when ``rateLimits`` change)."""
        return list(self._buckets)

    # ------------------------------------------------------------------ the pipeline
    #
    # This runs on every call, between stretches of aiohttp work that evict it from the CPU
    # caches, so each layer costs more than a tight loop shows (bench/overhead.py): the first
    # attempt is made here, not through the retry policy, which takes over only after a
    # retryable failure; the breaker is entered with its plain methods, not ``async with``.
    async def _call(self, endpoint: Endpoint, fn: Callable[[], Awaitable[T]], *,
                    has_symbol: bool = True, priority: Priority | None = None,
                    retry_if: Callable[[BaseException], bool] = should_retry,
                    deadline: float | None = None) -> T:
        """``fn()`` through the pipeline, retried as ``RetryPolicy.run`` would retry it. With
        ``deadline`` (``clock.time()``), a call admitted by the limiter at or after it is not
        sent: ``TimeoutError`` (an order whose signal expired while it waited, SPEC §13)."""
        if priority is None:
            priority = endpoint.priority
        try:
            return await self._once(endpoint, fn, has_symbol, priority, deadline)
        except Exception as exc:
            if not self._retry.may_retry(exc, retry_if):
                raise
            first = exc

        async def again() -> T:            # a coroutine function: tenacity awaits only those
            return await self._once(endpoint, fn, has_symbol, priority, deadline)

        return await self._retry.resume(endpoint.name, again, first, retry_if=retry_if)

    def _new_route(self, endpoint: Endpoint, has_symbol: bool) -> _Route:
        """Work out (and keep) what calls of ``endpoint`` need; ``_once`` looks it up."""
        costs = ({} if self._limiter is None
                 else costs_for(endpoint, self._buckets, has_symbol=has_symbol))
        route = _Route(endpoint, costs, endpoint.label, self._breakers[endpoint.group])
        self._routes[endpoint.name, has_symbol] = route
        return route

    async def _once(self, endpoint: Endpoint, fn: Callable[[], Awaitable[T]],
                    has_symbol: bool, priority: Priority, deadline: float | None = None) -> T:
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
        if deadline is not None and self._clock.time() >= deadline:
            raise TimeoutError(f"{route.label}: the deadline passed while it waited to be sent")
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
            self._symbols.refresh_on_precision_error()     # in the background: never waited for
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

