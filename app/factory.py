"""Builds the daemon's components and wires them together; `app/daemon.py` is its only caller
in `app` (SPEC §3.2), and tests build their components through it too.

Two kinds of thing live here:

- **Settings mapping**, in one place: each component's own settings class from its section of
  the validated configuration (``[retry]`` → `RetrySettings`, ``[breaker]`` →
  `BreakerSettings`, ``[rate_limit]`` → `LimiterSettings`, ``[execution]`` →
  `ExecutorSettings`, ``[stream]`` → `StreamSettings`, ``[exchange]`` plus credentials →
  `ExchangeSetup`).
- **Builders**: `open_exchange` (the python-binance client, time sync, symbol cache, breakers,
  retry policy, gateway, and the limiter from exchangeInfo ``rateLimits``) and
  `build_execution` (the exactly-once sender, the protector, the executor), `build_notifier`
  (systemd's ``NOTIFY_SOCKET`` and watchdog → `SystemdNotifier`). Each component is
  given its collaborators; the listeners that must call back into the gateway are closures over
  it, bound here and nowhere else. Whatever is built here with something to close is closed by
  the exit stack it was built on, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from app.clock import Clock
from app.config import ConfigError, Credentials, Settings, SystemdEnvironment
from app.config_schema import (
    BreakerConfig,
    ExchangeMode,
    ExecutionConfig,
    NatsConfig,
    RateLimitConfig,
    RetryConfig,
    RiskConfig,
    StreamConfig,
)
from app.exchange.classify import is_breaker_failure
from app.exchange.client import BinanceClient
from app.exchange.endpoints import BreakerGroup
from app.exchange.gateway import Gateway
from app.exchange.limits import buckets_from_rate_limits
from app.exchange.streams import MarketStream, StreamSettings, UserStream
from app.exchange.symbol_cache import SymbolCache
from app.exchange.symbols import SymbolRules
from app.exchange.timesync import TimeSync
from app.execution.book import Book
from app.execution.executor import Executor
from app.execution.guard import AccountReads, Guard, GuardSettings
from app.execution.ports import ExchangePort
from app.execution.protect import Protector
from app.execution.reports import AccountReports
from app.execution.risk import RiskGate, RiskLimits
from app.execution.sender import OrderSender
from app.execution.settings import ExecutorSettings
from app.intake.nats import NatsSettings, NatsSource
from app.intake.reports import ReportPublisher
from app.intake.service import Service
from app.journal import Journal
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger
from app.observability.notify import SystemdNotifier, unix_address
from app.resilience.breaker import BreakerSettings, CircuitBreaker
from app.resilience.limiter import BucketSpec, LimiterSettings, WeightLimiter
from app.resilience.retry import RetryPolicy, RetrySettings

__all__ = [
    "ExchangeParts",
    "ExchangeSetup",
    "ExecutionParts",
    "LiveParts",
    "NatsParts",
    "breaker_settings",
    "build_execution",
    "build_live",
    "build_notifier",
    "exchange_setup",
    "executor_settings",
    "limiter_settings",
    "nats_settings",
    "open_exchange",
    "open_nats",
    "retry_settings",
    "stream_settings",
    "ws_base_url",
]


# ---------------------------------------------------------------------------- settings mapping
def limiter_settings(config: RateLimitConfig) -> LimiterSettings:
    return LimiterSettings(headroom=config.headroom, low_share=config.low_share,
                           warning_threshold=config.warning_threshold)


def breaker_settings(config: BreakerConfig) -> BreakerSettings:
    return BreakerSettings(failure_threshold=config.failure_threshold,
                           recovery_timeout=config.recovery_timeout_s,
                           half_open_max_calls=config.half_open_max_calls,
                           success_threshold=config.success_threshold)


def retry_settings(config: RetryConfig) -> RetrySettings:
    return RetrySettings(max_retries=config.max_retries, initial_delay=config.initial_delay,
                         backoff_factor=config.backoff_factor, max_delay=config.max_delay,
                         jitter=config.jitter)


def executor_settings(config: ExecutionConfig) -> ExecutorSettings:
    return ExecutorSettings(client_id_prefix=config.client_id_prefix,
                            resolve_window_s=config.resolve_window_s,
                            on_unprotected=config.on_unprotected)


#: Binance's websocket bases (research/binance-futures-api.md §11).
WS_URLS: Mapping[ExchangeMode, str] = {ExchangeMode.TESTNET: "wss://fstream.binancefuture.com",
                                       ExchangeMode.LIVE: "wss://fstream.binance.com"}


def ws_base_url(settings: Settings, exchange_url: str) -> str:
    """The websocket base: ``stream.ws_url``, else Binance's for testnet/live, else (sim) the
    simulator's own URL with a ws scheme."""
    if settings.stream.ws_url:
        return settings.stream.ws_url
    if settings.exchange.mode in WS_URLS and exchange_url == settings.exchange.base_url():
        return WS_URLS[settings.exchange.mode]
    return "ws" + exchange_url.removeprefix("http")


def nats_settings(config: NatsConfig) -> NatsSettings:
    assert config.url is not None
    return NatsSettings(url=config.url, stream=config.stream, subject=config.subject,
                        durable=config.durable, fetch_batch=config.fetch_batch,
                        ack_wait_s=config.ack_wait_s, nak_delay_s=config.nak_delay_s)


def guard_settings(config: StreamConfig) -> GuardSettings:
    return GuardSettings(reconcile_interval_s=config.reconcile_interval_s,
                         fallback_poll_s=config.fallback_poll_s,
                         max_mark_age_s=config.max_mark_age_s, streaming=config.enabled)


def stream_settings(config: StreamConfig) -> StreamSettings:
    """The stream clients' timings; reconnect backoff and rotation keep their defaults."""
    return StreamSettings(keepalive_s=config.keepalive_s)


@dataclass(frozen=True, slots=True)
class ExchangeSetup:
    """What `open_exchange` needs: where the exchange is, the keys, and each part's settings.
    Times are seconds."""

    base_url: str
    api_key: str
    api_secret: str
    recv_window_ms: int = 5000
    timeout_s: float = 10.0
    #: Establishing a new connection (TCP and TLS), within ``timeout_s``.
    connect_timeout_s: float = 3.0
    limiter: LimiterSettings = field(default_factory=LimiterSettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    #: Consecutive connection-level failures before the HTTP session is replaced.
    session_reset_after: int = 3
    #: exchangeInfo expiry (then reloaded in the background), the least time between reloads
    #: forced by precision errors, and the wait before a failed reload is tried again.
    exchange_info_ttl_s: float = 86_400.0
    exchange_info_min_refresh_s: float = 60.0
    exchange_info_retry_s: float = 60.0

    def __repr__(self) -> str:  # the keys never leave (DEVELOPERS.md non-negotiable 6)
        return f"ExchangeSetup(base_url={self.base_url!r}, api_key=***, api_secret=***)"


def exchange_setup(settings: Settings, credentials: Credentials, base_url: str) -> ExchangeSetup:
    """The exchange side's settings from the daemon's configuration."""
    return ExchangeSetup(
        base_url=base_url,
        api_key=credentials.api_key.get_secret_value(),
        api_secret=credentials.api_secret.get_secret_value(),
        recv_window_ms=settings.exchange.recv_window_ms,
        timeout_s=settings.exchange.request_timeout_s,
        connect_timeout_s=settings.exchange.connect_timeout_s,
        limiter=limiter_settings(settings.rate_limit),
        breaker=breaker_settings(settings.breaker),
        retry=retry_settings(settings.retry),
    )


# ---------------------------------------------------------------------------- builders
@dataclass(frozen=True, slots=True)
class ExchangeParts:
    """The started exchange side, as the daemon (status, metrics) and tests hold it."""

    gateway: Gateway
    client: BinanceClient
    timesync: TimeSync
    symbols: SymbolCache
    breakers: Mapping[BreakerGroup, CircuitBreaker]
    limiter: WeightLimiter

    @property
    def buckets(self) -> list[BucketSpec]:
        """The limiter's buckets now (from the last ``rateLimits``)."""
        return self.gateway.buckets


@contextlib.asynccontextmanager
async def open_exchange(setup: ExchangeSetup, clock: Clock,
                        log: AuditLogger) -> AsyncIterator[ExchangeParts]:
    """Build the exchange side, start it (time sync, exchangeInfo), give the gateway its
    limiter, and start the background exchangeInfo refresh (`SymbolCache.run`) and time sync
    (`TimeSync.run`, every 5 minutes); close everything on exit. Raises what the first calls
    raise (`ExchangeError`)."""
    async with contextlib.AsyncExitStack() as stack:
        gateway: Gateway   # bound below: the listeners call into it only once it exists
        client = BinanceClient(setup.api_key, setup.api_secret, base_url=setup.base_url,
                               recv_window_ms=setup.recv_window_ms, timeout_s=setup.timeout_s,
                               connect_timeout_s=setup.connect_timeout_s,
                               on_response=lambda call: gateway.on_response(call))
        stack.push_async_callback(client.close_connection)
        timesync = TimeSync(lambda: gateway.server_time_ms(), clock,
                            on_sync=lambda *sync: gateway.on_time_synced(*sync))
        symbols = SymbolCache(lambda: gateway.exchange_info(), clock,
                              ttl_s=setup.exchange_info_ttl_s,
                              min_refresh_interval_s=setup.exchange_info_min_refresh_s,
                              retry_s=setup.exchange_info_retry_s,
                              on_refresh=lambda refresh: gateway.on_exchange_info(refresh),
                              on_failure=lambda *failed: gateway.on_exchange_info_failed(*failed))
        stack.push_async_callback(symbols.close)
        breakers = {
            group: CircuitBreaker(group.value, clock, setup.breaker,
                                  is_failure=is_breaker_failure,
                                  on_state_change=lambda *c: gateway.on_breaker_change(*c),
                                  on_reject=lambda *r: gateway.on_breaker_reject(*r))
            for group in BreakerGroup
        }
        retry = RetryPolicy(setup.retry, clock, on_retry=lambda info: gateway.on_retry(info))
        gateway = Gateway(client, timesync, symbols, breakers, retry, clock, log,
                          session_reset_after=setup.session_reset_after)
        await gateway.start()
        buckets = buckets_from_rate_limits(symbols.rate_limits)
        limiter = WeightLimiter(buckets, clock, setup.limiter,
                                offset=lambda: timesync.offset_ms / 1000,  # = offset_s
                                on_warning=gateway.on_rate_warning)
        stack.push_async_callback(limiter.close)
        gateway.use_limiter(limiter, buckets)
        refresher = asyncio.create_task(symbols.run(), name="execd-exchange-info")
        stack.push_async_callback(_cancel, refresher)
        resync = asyncio.create_task(timesync.run(), name="execd-time-sync")
        stack.push_async_callback(_cancel, resync)
        yield ExchangeParts(gateway, client, timesync, symbols, breakers, limiter)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class ExecutionParts:
    sender: OrderSender
    protector: Protector
    executor: Executor


def build_execution(exchange: ExchangePort, rules: Callable[[str], SymbolRules],
                    journal: Journal, clock: Clock, log: AuditLogger,
                    settings: ExecutorSettings, *,
                    on_decision: Callable[[float], None] | None = None,
                    book: Book | None = None, max_mark_age_s: float = 2.0,
                    risk: RiskGate | None = None) -> ExecutionParts:
    """The sender, the protector that uses it, and the executor that uses both. With the
    live ``book``, the sender settles unknown outcomes on its events and entries read marks
    from it while they are at most ``max_mark_age_s`` old; with ``risk``, entries and closes
    pass its gate and every order sent is counted by it."""
    sender = OrderSender(exchange, journal, clock, log, settings, on_decision=on_decision,
                         on_sent=None if risk is None else risk.order_sent, events=book)
    protector = Protector(exchange, sender, journal, clock, log, settings)
    marks = None if book is None else (lambda symbol: book.mark(symbol, max_mark_age_s))
    executor = Executor(exchange, rules, sender, protector, journal, clock, log, settings,
                        marks=marks, risk=risk,
                        positions=None if book is None else book.followed_amount)
    return ExecutionParts(sender, protector, executor)


@dataclass(frozen=True, slots=True)
class LiveParts:
    """The live state: the book, the account's reports, the guard that keeps the protection
    invariant on the book, and the streams that feed it (None with ``stream.enabled =
    false``)."""

    book: Book
    reports: AccountReports
    guard: Guard
    user: UserStream | None
    market: MarketStream | None

    def status(self) -> dict[str, object]:
        """Positions (every non-zero one on the account, SPEC §11.2), the streams, time
        without a stop and today's realized PnL, for ``/v1/status``."""
        def stream(client: UserStream | MarketStream | None) -> dict[str, object]:
            if client is None:
                return {"state": "off"}
            stats = client.statistics()
            age = stats.get("last_event_age_s")
            return {"state": "connected" if client.connected else "down",
                    "last_event_age_s": round(age, 3) if age is not None else None,
                    "connects": stats.get("connects"), "drops": stats.get("drops")}

        guard = self.guard
        return {
            "positions": guard.positions_view(),
            "streams": {"user": stream(self.user), "market": stream(self.market),
                        "events": self.user.statistics()["events"] if self.user else {}},
            "protection": {"unprotected_seconds_total": round(guard.naked_seconds_now(), 3)},
            "realized_pnl_today": self.reports.realized_pnl_today(),
        }

    def start(self, ended: Callable[[asyncio.Task[None]], None]) -> list[asyncio.Task[None]]:
        """Run the guard and the streams as tasks (until cancelled); ``ended`` is told if
        one ends by itself."""
        tasks = [asyncio.create_task(self.guard.run(), name="execd-guard")]
        tasks += [asyncio.create_task(stream.run(), name=f"execd-{stream!r:.20}")
                  for stream in (self.user, self.market) if stream is not None]
        for task in tasks:
            task.add_done_callback(ended)
        return tasks

    @staticmethod
    def idle_status() -> dict[str, object]:
        """`status` before the live parts exist."""
        return {"positions": [], "streams": None, "protection": None, "realized_pnl_today": {}}


def build_risk(config: RiskConfig, journal: Journal, book: Book, clock: Clock,
               log: AuditLogger) -> RiskGate:
    """The risk gate over the book's positions, its trading state kept in the journal."""
    limits = RiskLimits(config.max_order_notional, config.max_position_notional,
                        config.max_open_positions, config.max_orders_per_minute,
                        config.max_leverage, config.max_daily_loss)
    return RiskGate(limits, journal, clock, log, positions=book.amounts)


def build_live(gateway: Gateway, book: Book, execution: ExecutionParts, journal: Journal,
               clock: Clock, log: AuditLogger, config: StreamConfig, ws_base: str,
               executor: ExecutorSettings, *, risk: RiskGate | None = None) -> LiveParts:
    """The guard over ``book``, and (when enabled) the user-data and mark-price streams whose
    events it receives. The streams' listenKey calls go through the gateway (limiter,
    breaker, retry). ``risk`` gets the day's result after every fill."""
    reads: AccountReads = gateway
    reports = AccountReports(journal, clock, log, executor.client_id_prefix,
                             on_day_result=None if risk is None else risk.daily_result)
    if not config.enabled:
        guard = Guard(book, reports, reads, execution.sender, execution.protector, journal,
                      clock, log, executor, guard_settings(config))
        return LiveParts(book, reports, guard, None, None)
    timings = stream_settings(config)
    # The market stream's ups and downs are audited by the stream and shown by its status;
    # nothing acts on them (a stale mark is simply not used).
    market = MarketStream(ws_base, book.apply_mark, lambda status: None, clock, log, timings)
    guard = Guard(book, reports, reads, execution.sender, execution.protector, journal, clock,
                  log, executor, guard_settings(config), watch=market.watch)
    user = UserStream(ws_base, gateway, guard.on_user_event, clock, log, timings)
    return LiveParts(book, reports, guard, user, market)


def build_notifier(systemd: SystemdEnvironment, summary: Callable[[], str], clock: Clock,
                   log: AuditLogger) -> SystemdNotifier:
    """The systemd notifier for ``NOTIFY_SOCKET``; its watchdog keep-alive at half of
    ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises. Raises ConfigError naming
    ``NOTIFY_SOCKET`` when it is no unix socket address."""
    try:
        address = unix_address(systemd.notify_socket)
    except ValueError as exc:
        raise ConfigError(f"NOTIFY_SOCKET: {exc}") from None
    watchdog_s = systemd.watchdog_usec / 2e6 if systemd.watchdog_usec else None
    return SystemdNotifier(address, summary, clock, log, watchdog_s=watchdog_s)


HEDGE_MODE = ("the futures account is in hedge mode (dual-side positions); execd trades "
              "one-way positions only: switch Position Mode to One-way (with no open positions "
              "or orders) and start again")


async def startup_checks(gateway: Gateway) -> None:
    """SPEC §5.10: one signed call proves the key (its `AuthError` ends start-up; the CLI
    names the key's permissions and IP whitelist) and the account must be in one-way mode
    (`ConfigError` otherwise: exit 2)."""
    if await gateway.hedge_mode():
        raise ConfigError(HEDGE_MODE)


@dataclass(frozen=True, slots=True)
class NatsParts:
    """The NATS source and the execution reports it carries (SPEC §4.2 item 5)."""

    source: NatsSource
    reports: ReportPublisher

    def status(self) -> dict[str, object]:
        return self.source.status() | {"reports": self.reports.statistics()}


#: At shutdown, how long the reports still buffered get to reach the server (seconds).
REPORTS_DRAIN_S = 5.0


@contextlib.asynccontextmanager
async def open_nats(config: NatsConfig, service: Service, journal: Journal, clock: Clock,
                    log: AuditLogger) -> AsyncIterator[NatsParts | None]:
    """With ``intake.nats.url`` set: the report publisher (told every journaled state change
    from here on) and the NATS source, both running as tasks (the source pulls once intake
    opens, connecting in the background, forever). Yields None when NATS is off. On exit the
    buffered reports get `REPORTS_DRAIN_S`, then both stop."""
    if config.url is None:
        yield None
        return
    reports = ReportPublisher(journal, clock, log, subject=config.reports_subject,
                              capacity=config.report_buffer)
    journal.add_listener(reports.on_change)
    source = NatsSource(nats_settings(config), service, clock, log,
                        on_rejected=reports.rejected)
    tasks = [asyncio.create_task(source.run(), name="execd-nats"),
             asyncio.create_task(reports.run(source), name="execd-nats-reports")]

    def ended(task: asyncio.Task[None]) -> None:   # both run until cancelled: a bug, said loudly
        if not task.cancelled():
            log.critical(AuditEvent.ALERT, kind="nats_task_ended", task=task.get_name(),
                         error=repr(task.exception()))

    for task in tasks:
        task.add_done_callback(ended)
    try:
        yield NatsParts(source, reports)
        await reports.drain(REPORTS_DRAIN_S)
    finally:
        for task in reversed(tasks):
            await _cancel(task)


async def first_signal_example(exchange: ExchangeParts) -> str | None:
    """The ready lines' exact command for a first signal, tp/sl 2 % around the current mark
    (None if the mark cannot be read: only a hint, never a reason to fail start-up)."""
    try:
        rules = exchange.symbols.get("BTCUSDT")
        mark = await exchange.gateway.mark_price("BTCUSDT")
    except Exception:
        return None
    tp = rules.quantize_price(mark * Decimal("1.02"))
    sl = rules.quantize_price(mark * Decimal("0.98"))
    return f".venv/bin/execd signal LONG_ENTRY BTCUSDT --qty 0.01 --tp {tp} --sl {sl} --wait"
