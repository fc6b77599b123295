"""The composition root and lifecycle of the execd daemon (SPEC §3.2, §11.1).

This is the one place that builds things and wires them together: the clock, the audit log, the
exchange (the embedded simulator in ``sim`` mode), the gateway (limiter, breakers, retry), the
journal, the sender, protector and executor, the bus, the intake service and its sources, the
control API, all passed in explicitly. ``app/factory.py`` holds the builders and the settings
mapping it uses; no component builds another or reaches into another's attributes.

Lifecycle, top to bottom:

- start (`Daemon.__aenter__`): check credentials → the journal's lock and the journal → the API
  token → audit log (and a ``secret_file_exposed`` warning per key or token file others can
  read) → systemd notifier (under systemd: ``STATUS=`` lines and watchdog pings from here to
  the end) → exchange → gateway (time sync, exchangeInfo, limiter) → executor, bus, service →
  NATS source and reports (with ``intake.nats.url``; it pulls once intake opens) → control
  API (``/healthz`` says ``starting``) → restart recovery (§5.6) → intake opens →
  SIGTERM/SIGINT handlers → ``daemon_started`` → ``READY=1`` → ready lines on stdout;
- serve (`Daemon.serve`): the loop-lag probe and the spool tail run under one
  `asyncio.TaskGroup` until SIGTERM/SIGINT; then intake closes (HTTP 503, ``STOPPING=1``),
  queued and running signals get ``execution.shutdown_timeout_s`` to finish, and what is left
  stays in the journal, resumable at the next start;
- stop (`Daemon.__aexit__`): ``daemon_stopping`` → everything started, in reverse order →
  ``daemon_stopped`` → flush and close the audit log (bounded: a console nobody reads is left
  behind, the files are complete). Everything started is on one `AsyncExitStack`, so shutdown
  runs in reverse order of start-up even when start-up fails half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self, TextIO

from app import __version__
from app.clock import Clock, SystemClock
from app.config import (
    ConfigError,
    Settings,
    SystemdEnvironment,
    exposed_secret_files,
    resolve_api_token,
    sim_config_paths,
    systemd_environment,
)
from app.control.http_api import ControlApi
from app.exchange.symbols import SymbolRules, trading_rules
from app.execution.book import Book
from app.execution.operator import Operator, breaker_view
from app.execution.reconcile import recover
from app.execution.risk import RiskGate
from app.execution.settings import ExecutorSettings
from app.factory import (
    ExchangeParts,
    ExecutionParts,
    LiveParts,
    NatsParts,
    build_execution,
    build_live,
    build_notifier,
    build_risk,
    exchange_setup,
    executor_settings,
    first_signal_example,
    open_exchange,
    open_nats,
    startup_checks,
    ws_base_url,
)
from app.fd_limits import AcceptErrorReporter, NofileLimit, raise_nofile_limit
from app.intake.bus import SignalBus
from app.intake.service import Service
from app.intake.spool import SpoolTail
from app.journal import Journal
from app.journal_lock import JournalLock
from app.observability.alerts import ErrorMonitor
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger, LogHandle, configure_logging
from app.observability.metrics import LoopLagProbe, Metrics, gauges_from_status
from app.observability.notify import SystemdNotifier
from app.resilience.breaker import BreakerState
from app.runtime import freeze_startup_heap, thaw_heap, tune_interpreter
from app.sim import SimConfigError, SimServer, load_sim_config

__all__ = ["READY_PREFIX", "Daemon", "run"]

READY_PREFIX = "execd ready:"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Daemon:
    """The running daemon, as an async context manager.

    `exchange_url` (no ``/fapi``) names a running exchange and overrides the configured one; in
    ``sim`` mode without any URL the simulator is started in-process on a free loopback port.
    `spool` is the signal spool file to tail. `out` receives the ready lines (default stdout).
    `executor_settings` replaces the ``[execution]`` section's executor settings (benchmarks
    use it to run the seeds' blind-retry baseline; production never passes it); `on_decision`
    is also told every decision latency (seconds) the metrics histogram records (benchmarks
    keep the exact values). `owns_process` (``execd run`` only) leaves SIGTERM/SIGINT ignored
    once the daemon has stopped, for the last moments of the process. `systemd` (``execd run``
    under systemd) turns on the sd_notify protocol: ``READY=1`` when ``/healthz`` turns ready,
    ``STOPPING=1``, ``STATUS=`` lines and the watchdog keep-alive. Raises ConfigError when the
    mode's credentials are missing or the simulator config is invalid.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        exchange_url: str | None = None,
        spool: Path | None = None,
        clock: Clock | None = None,
        out: TextIO | None = None,
        executor_settings: ExecutorSettings | None = None,
        on_decision: Callable[[float], None] | None = None,
        owns_process: bool = False,
        systemd: SystemdEnvironment | None = None,
    ) -> None:
        self.settings = settings
        self._systemd = systemd
        self.notifier: SystemdNotifier | None = None
        self._owns_process = owns_process
        self._executor_settings = executor_settings
        self._on_decision = on_decision
        self.exchange_url = exchange_url
        self.spool = spool
        self.clock: Clock = SystemClock() if clock is None else clock
        self._out = sys.stdout if out is None else out
        self._stack = contextlib.AsyncExitStack()
        self._stop = asyncio.Event()
        self._stop_reason = "shutdown requested"
        self._started_at = self.clock.monotonic()
        self.log: AuditLogger | None = None
        self._audit: LogHandle | None = None
        self.exchange: ExchangeParts | None = None
        self.journal: Journal | None = None
        self.execution: ExecutionParts | None = None
        self.bus: SignalBus | None = None
        self.service: Service | None = None
        self.api: ControlApi | None = None
        self.recovery: dict[str, int] = {}
        self.live: LiveParts | None = None
        self.risk: RiskGate | None = None
        self.nats: NatsParts | None = None
        self._live_tasks: list[asyncio.Task[None]] = []
        self.metrics = Metrics()
        self.monitor: ErrorMonitor | None = None
        self.lag = LoopLagProbe(self.metrics.loop_lag.observe)
        self._stopping_logged = False
        self._signals_installed = False
        self._drain: dict[str, object] = {}
        self.nofile: NofileLimit | None = None

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            try:
                await self._stack.aclose()
            finally:
                self._release_stop_signals()
            raise
        return self

    async def _start(self) -> None:
        settings = self.settings
        credentials = settings.require_credentials()
        # Room for many connections before anything opens one (issue 14, finding 4).
        self.nofile = nofile = raise_nofile_limit()
        tune_interpreter()                     # the GIL's switch interval (app/runtime.py)
        # One daemon per journal (SPEC §5.6), before anything else is started or written.
        lock = JournalLock(settings.journal.path)
        await lock.acquire()
        self._stack.push_async_callback(lock.aclose)
        # The journal next: a file that cannot be used stops start-up before the exchange is
        # contacted or anything is logged (JournalUnreadable: one line, exit 1).
        self.journal = journal = Journal(settings.journal.path,
                                         synchronous=settings.journal.synchronous.value)
        await journal.open()
        self._stack.push_async_callback(journal.close)
        token = await asyncio.to_thread(resolve_api_token, settings, create=True)
        assert token is not None
        audit = configure_logging(
            settings.audit.log_dir,
            settings.audit.level,
            settings.audit.console,
            self.clock,
            secrets=(*settings.secret_values(), token),
            retention_days=settings.audit.retention_days,
        )
        self._stack.push_async_callback(audit.aclose)
        self._audit = audit
        self.log = log = audit.logger
        self._stack.callback(self._emit_stopped)
        for key, path, mode in await asyncio.to_thread(exposed_secret_files, settings):
            log.warning(AuditEvent.SECRET_FILE_EXPOSED, key=key, path=str(path),
                        mode=f"{mode:04o}")
        # Out of descriptors: one alert a minute instead of a traceback per accept() retry.
        fd_reporter = AcceptErrorReporter(log, self.clock, nofile=nofile)
        fd_reporter.install(asyncio.get_running_loop())
        self._stack.callback(fd_reporter.uninstall)
        audit.add_tap(self.metrics.tap)
        self.monitor = monitor = ErrorMonitor(settings.monitor, self.clock, log)
        audit.add_tap(monitor.tap)
        self._stack.push_async_callback(monitor.aclose)   # before the log closes: its POSTs
        if self._systemd is not None:   # from here to the end: STATUS lines, watchdog pings
            self.notifier = notifier = build_notifier(self._systemd, self.summary, self.clock,
                                                      log)
            notifier.open()
            self._stack.callback(notifier.close)
            self._stack.push_async_callback(_cancel, asyncio.create_task(
                notifier.run(), name="execd-notify"))

        embedded = self.exchange_url is None and settings.exchange.base_url() is None
        self.exchange_url = await self._start_exchange()
        # time sync, exchangeInfo, then the limiter from its rateLimits
        self.exchange = exchange = await self._stack.enter_async_context(open_exchange(
            exchange_setup(settings, credentials, self.exchange_url), self.clock, log))
        gateway, rules = exchange.gateway, exchange.symbols.get
        await startup_checks(gateway)          # the key works, one-way mode (SPEC §5.10)

        ex = settings.execution
        chosen = self._executor_settings or executor_settings(ex)
        book = Book(self.clock)
        self.risk = risk = build_risk(settings.risk, journal, book, self.clock, log)
        await risk.restore()                   # the trading state, before any signal runs
        self._stack.push_async_callback(risk.aclose)
        gateway.watch_auth(risk.auth_result)
        self.execution = execution = build_execution(
            gateway, rules, journal, self.clock, log, chosen,
            on_decision=self._observe_decision, book=book,
            max_mark_age_s=settings.stream.max_mark_age_s, risk=risk)
        self.live = live = build_live(gateway, book, execution, journal, self.clock, log,
                                      settings.stream,
                                      ws_base_url(settings, self.exchange_url), chosen,
                                      risk=risk)
        self._stack.push_async_callback(live.guard.aclose)
        await live.reports.load()
        self.bus = bus = SignalBus(execution.executor.execute, capacity=ex.queue_size,
                                   max_concurrency=ex.max_concurrency, log=log)
        self._stack.push_async_callback(bus.aclose)
        self.service = service = Service(
            journal, bus, self._symbol_checker(rules), self.clock, log,
            default_ttl_s=ex.default_ttl_s,
            mark_of=lambda symbol: book.mark(symbol, settings.stream.max_mark_age_s))
        self.nats = await self._stack.enter_async_context(   # pulls once intake opens
            open_nats(settings.intake.nats, service, journal, self.clock, log))
        self.metrics.set_gauge_source(lambda: gauges_from_status(self.status()))
        operator = Operator(risk, journal, gateway, gateway, execution.protector, rules,
                            self.clock, log,
                            breakers={g.value: b for g, b in exchange.breakers.items()},
                            queue=bus)
        self.api = api = ControlApi(service, journal, gateway, self.status, token=token,
                                    host=settings.api.host, port=settings.api.port,
                                    max_body_bytes=settings.api.max_body_bytes,
                                    max_connections=settings.api.max_connections,
                                    header_timeout_s=settings.api.header_timeout_s, log=log,
                                    clock=self.clock, operator=operator,
                                    registry=self.metrics.registry)
        await api.start()                      # /healthz answers "starting" during recovery
        self._stack.push_async_callback(api.close)
        self._stack.callback(service.close)    # first thing on the way down: refuse intake

        # The streams and the guard start before recovery: recovery's lookups settle on
        # their events, and the book is rebuilt (and every position checked) meanwhile.
        self._live_tasks = live.start(self._live_task_ended)
        self._stack.push_async_callback(_cancel, *self._live_tasks)
        self.recovery = await recover(journal, gateway, execution.sender, execution.executor,
                                      log)
        for record in await journal.non_terminal_signals():   # outcome still unknown
            bus.reserve_nowait()
            bus.push(record)
        freeze_startup_heap()                  # no full collection rescans start-up's objects
        self._stack.callback(thaw_heap)
        service.open()

        self._handle_stop_signals()
        self._started_at = self.clock.monotonic()
        log_file = audit.current_file().absolute()
        log.info(
            AuditEvent.DAEMON_STARTED,
            version=__version__,
            pid=os.getpid(),
            mode=settings.exchange.mode.value,
            exchange_url=self.exchange_url,
            embedded_sim=embedded,
            credentials=credentials.origin,
            log_file=str(log_file),
            api_url=api.url,
            journal=str(settings.journal.path),
            spool=str(self.spool) if self.spool else None,
            recovered=self.recovery,
            nofile=nofile.fields(),
        )
        if self.notifier is not None:
            self.notifier.ready()       # after service.open(): /healthz answers ready
        where = f"{self.exchange_url} (embedded simulator)" if embedded else self.exchange_url
        # A few short lines, once: not worth a thread, and operators and tests wait for them.
        print(
            f"{READY_PREFIX} mode {settings.exchange.mode}, exchange {where}, "
            f"control API {api.url}, audit log {log_file}",
            file=self._out,
            flush=True,
        )
        example = await first_signal_example(exchange)
        if example:
            print(f"  send a first signal:  {example}", file=self._out, flush=True)
        print("  watch what it does:   .venv/bin/execd logs -f    (Ctrl-C here stops execd)",
              file=self._out, flush=True)

    def _symbol_checker(self, rules: Callable[[str], SymbolRules]) -> Callable[[str], object]:
        """The accept path's symbol check; a symbol signalled is also watched on the
        mark-price stream, so its entries read the mark without an exchange call."""
        def check(symbol: str) -> SymbolRules:
            found = trading_rules(rules, symbol)
            if self.live is not None and self.live.market is not None:
                self.live.market.watch([symbol])
            return found
        return check

    def _live_task_ended(self, task: asyncio.Task[None]) -> None:
        """The guard and the streams run until shutdown: one that ends early is a bug, said
        loudly (the position poll and the protection checks stop with it)."""
        if task.cancelled() or self.log is None:
            return
        self.log.critical(AuditEvent.ALERT, kind="live_task_ended", task=task.get_name(),
                          error=repr(task.exception()))

    def _observe_decision(self, seconds: float) -> None:   # a first order is going out
        self.metrics.observe_decision(seconds)
        if self.bus is not None:
            self.bus.first_order_out()
        if self._on_decision is not None:
            self._on_decision(seconds)

    async def _start_exchange(self) -> str:
        """The exchange base URL: given, configured, or that of a simulator started here."""
        url = self.exchange_url or self.settings.exchange.base_url()
        if url is not None:
            return url
        paths = sim_config_paths(self.settings.exchange.sim_config)
        try:
            config = await asyncio.to_thread(load_sim_config, *paths)
        except SimConfigError as exc:
            raise ConfigError(f"exchange.sim_config: {exc}") from None
        server = SimServer(config, host="127.0.0.1", port=0)
        await self._stack.enter_async_context(server)
        return server.url

    def _handle_stop_signals(self) -> None:
        """SIGTERM/SIGINT request a stop; installed before the ready line so none is missed,
        and kept until the whole shutdown is over (`_release_stop_signals`): a second SIGTERM
        while the daemon drains or closes its journal must not kill it half-way."""
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        self._signals_installed = True

    def _release_stop_signals(self) -> None:
        """Give the stop signals back; when the daemon owns the process (``execd run``) they
        are ignored from here on, so one that arrives while the interpreter exits cannot turn
        a clean stop into death by SIGTERM."""
        if self._signals_installed:
            self._signals_installed = False
            loop = asyncio.get_running_loop()
            for sig in _STOP_SIGNALS:
                loop.remove_signal_handler(sig)
                if self._owns_process:
                    signal.signal(sig, signal.SIG_IGN)

    async def serve(self) -> None:
        """Run the workers until `request_stop()` (SIGTERM and SIGINT call it), then stop
        intake and let queued signals finish within ``execution.shutdown_timeout_s``."""
        assert self.execution is not None
        assert self.service is not None
        assert self.bus is not None
        assert self.journal is not None
        assert self.log is not None
        async with asyncio.TaskGroup() as workers:
            tasks = [workers.create_task(self.lag.run(), name="execd-loop-lag")]
            if self.spool is not None:
                tail = SpoolTail(self.spool, self.service, self.journal, self.clock, self.log)
                tasks.append(workers.create_task(tail.run(), name="execd-spool"))
            await self._stop.wait()
            self.service.close()
            if self.notifier is not None:
                self.notifier.stopping()
            for task in tasks:
                task.cancel()
        timeout = self.settings.execution.shutdown_timeout_s
        self._stopping_logged = True
        self.log.info(AuditEvent.DAEMON_STOPPING, reason=self._stop_reason,
                      in_flight=self.bus.pending, timeout_s=timeout)
        drained = await self.bus.drain(timeout)
        self._drain = {"drained": drained, "left_in_journal": self.bus.pending}
        await self.bus.aclose()

    def status(self) -> dict[str, object]:
        """The daemon's state for ``GET /v1/status`` and ``execd status``."""
        service, bus, exchange = self.service, self.bus, self.exchange
        return {
            "version": __version__,
            "pid": os.getpid(),
            "state": service.state.value if service is not None else "starting",
            "trading_state": self.risk.snapshot() if self.risk is not None else None,
            "uptime_s": round(self.clock.monotonic() - self._started_at, 3),
            "exchange": {"mode": self.settings.exchange.mode.value,
                         "base_url": self.exchange_url},
            "queue": dataclasses.asdict(bus.snapshot()) if bus is not None else None,
            "symbols": sorted(service.symbols) if service is not None else [],
            "limiter": ([dataclasses.asdict(b) for b in exchange.limiter.statistics()]
                        if exchange else []),
            "breakers": {name.value: breaker_view(b.statistics())
                         for name, b in exchange.breakers.items()} if exchange else {},
            "recovery": self.recovery,
            "api": self.api.connections() if self.api is not None else None,
            "nats": self.nats.status() if self.nats is not None else None,
            "journal": self.journal.status() if self.journal is not None else None,
            **(self.live.status() if self.live is not None else LiveParts.idle_status()),
            "errors": self.monitor.snapshot() if self.monitor is not None else None,
            "loop_lag": self.lag.statistics(),
            "audit": (dataclasses.asdict(self._audit.statistics())
                      if self._audit is not None else None),
        }

    def summary(self) -> str:
        """One line for systemd's ``STATUS=`` (``ready: mode=sim queue=0 positions=1``), read
        on every tick of the notifier: cheap, no I/O."""
        service, bus, live, exchange = self.service, self.bus, self.live, self.exchange
        line = (f"{service.state.value if service is not None else 'starting'}: "
                f"mode={self.settings.exchange.mode.value} "
                f"queue={bus.pending if bus is not None else 0} "
                f"positions={len(live.guard.positions_view()) if live is not None else 0}")
        opened = [name.value for name, breaker in (exchange.breakers.items() if exchange else ())
                  if breaker.state is not BreakerState.CLOSED]
        line += f" breakers_open={','.join(opened)}" if opened else ""
        return f"{line} journal=failed" if self.journal and self.journal.broken else line

    def request_stop(self, reason: str = "shutdown requested") -> None:
        """Ask `serve()` to return; the first reason given is the one audited."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.notifier is not None:
            self.notifier.stopping()
        if self.log is not None:
            if exc is not None:
                self.log.error(AuditEvent.DAEMON_STOPPING, reason="error", exc_info=exc)
            elif not self._stopping_logged:
                self.log.info(AuditEvent.DAEMON_STOPPING, reason=self._stop_reason)
        try:
            await self._stack.aclose()
        finally:
            self._release_stop_signals()

    def _emit_stopped(self) -> None:
        if self.log is not None:
            uptime = round(self.clock.monotonic() - self._started_at, 3)
            dropped = self._audit.statistics().console_dropped if self._audit else 0
            self.log.info(AuditEvent.DAEMON_STOPPED, uptime_s=uptime, **self._drain,
                          console_dropped=dropped)


def run(settings: Settings, *, exchange_url: str | None = None, spool: Path | None = None) -> int:
    """`execd run`: start the daemon, serve until SIGTERM/SIGINT, shut down. Returns 0.

    Raises ConfigError for configuration problems found at start (the CLI exits 2),
    JournalLocked when another daemon runs on the same journal and JournalUnreadable when its
    file cannot be used (the CLI exits 1 for both).
    """
    systemd = systemd_environment()     # NOTIFY_SOCKET, WATCHDOG_USEC: ConfigError if malformed
    return asyncio.run(_run(settings, exchange_url=exchange_url, spool=spool, systemd=systemd))


async def _run(settings: Settings, *, exchange_url: str | None, spool: Path | None,
               systemd: SystemdEnvironment | None) -> int:
    async with Daemon(settings, exchange_url=exchange_url, spool=spool,
                      owns_process=True, systemd=systemd) as daemon:
        await daemon.serve()
    return 0


async def _cancel(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
