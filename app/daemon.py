"""The composition root and lifecycle of the execd daemon (SPEC §3.2, §11.1).

This is the one place that builds things and wires them together: the clock, the audit log, the
exchange (the embedded simulator in ``sim`` mode) and, in later issues, the limiter, breakers,
gateway, journal, executor, bus and intake sources, all passed in explicitly.

Lifecycle, top to bottom:

- start (`Daemon.__aenter__`): check credentials → audit log → exchange → SIGTERM/SIGINT
  handlers → ``daemon_started`` → ready line on stdout;
- serve (`Daemon.serve`): workers run under one `asyncio.TaskGroup` until SIGTERM/SIGINT;
- stop (`Daemon.__aexit__`): ``daemon_stopping`` → stop the exchange → ``daemon_stopped`` →
  flush and close the audit log. Everything started is registered on one `AsyncExitStack`, so
  shutdown runs in reverse order of start-up even when start-up fails half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from types import TracebackType
from typing import Self, TextIO

from app import __version__
from app.clock import Clock, SystemClock
from app.config import ConfigError, Credentials, Settings, sim_config_paths
from app.exchange.gateway import Gateway, GatewaySettings
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger, configure_logging
from app.resilience.breaker import BreakerSettings
from app.resilience.limiter import LimiterSettings
from app.resilience.retry import RetrySettings
from app.sim import SimConfigError, SimServer, load_sim_config

__all__ = ["READY_PREFIX", "Daemon", "run"]

READY_PREFIX = "execd ready:"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Daemon:
    """The running daemon, as an async context manager.

    `exchange_url` (no ``/fapi``) names a running exchange and overrides the configured one; in
    ``sim`` mode without any URL the simulator is started in-process on a free loopback port.
    `spool` is the signal spool file to tail (intake lands in a later issue). `out` receives the
    ready line (default stdout). Raises ConfigError when the mode's credentials are missing or
    the simulator config is invalid.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        exchange_url: str | None = None,
        spool: Path | None = None,
        clock: Clock | None = None,
        out: TextIO | None = None,
    ) -> None:
        self.settings = settings
        self.exchange_url = exchange_url
        self.spool = spool
        self.clock: Clock = SystemClock() if clock is None else clock
        self._out = sys.stdout if out is None else out
        self._stack = contextlib.AsyncExitStack()
        self._stop = asyncio.Event()
        self._stop_reason = "shutdown requested"
        self._started_at = self.clock.monotonic()
        self.log: AuditLogger | None = None
        self.gateway: Gateway | None = None

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        settings = self.settings
        credentials = settings.require_credentials()
        audit = configure_logging(
            settings.audit.log_dir,
            settings.audit.level,
            settings.audit.console,
            self.clock,
            secrets=settings.secret_values(),
            retention_days=settings.audit.retention_days,
        )
        self._stack.push_async_callback(audit.aclose)
        self.log = log = audit.logger
        self._stack.callback(self._emit_stopped)

        embedded = self.exchange_url is None and settings.exchange.base_url() is None
        self.exchange_url = await self._start_exchange()
        self.gateway = gateway = Gateway(gateway_settings(settings, credentials,
                                                          self.exchange_url), self.clock, log)
        self._stack.push_async_callback(gateway.close)
        await gateway.start()  # time sync, exchangeInfo, limiter from its rateLimits
        # Later issues: journal, executor, bus, control API.

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
            spool=str(self.spool) if self.spool else None,
        )
        where = f"{self.exchange_url} (embedded simulator)" if embedded else self.exchange_url
        # One short line, once: not worth a thread, and operators and tests wait for it.
        print(
            f"{READY_PREFIX} mode {settings.exchange.mode}, exchange {where}, "
            f"audit log {log_file}",
            file=self._out,
            flush=True,
        )

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
        """SIGTERM/SIGINT request a stop; installed before the ready line so none is missed."""
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self.request_stop, sig.name)
            self._stack.callback(loop.remove_signal_handler, sig)

    async def serve(self) -> None:
        """Run the workers until `request_stop()` (SIGTERM and SIGINT call it)."""
        # Later issues start the executor, bus, spool tail and control API in this group;
        # after the stop request they stop intake and drain within shutdown_timeout_s.
        async with asyncio.TaskGroup():
            await self._stop.wait()

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
        if self.log is not None:
            if exc is None:
                self.log.info(AuditEvent.DAEMON_STOPPING, reason=self._stop_reason)
            else:
                self.log.error(AuditEvent.DAEMON_STOPPING, reason="error", exc_info=exc)
        await self._stack.aclose()

    def _emit_stopped(self) -> None:
        if self.log is not None:
            uptime = round(self.clock.monotonic() - self._started_at, 3)
            self.log.info(AuditEvent.DAEMON_STOPPED, uptime_s=uptime)


def gateway_settings(settings: Settings, credentials: Credentials, base_url: str
                     ) -> GatewaySettings:
    """The gateway's settings from the daemon's configuration."""
    rl, br, rt = settings.rate_limit, settings.breaker, settings.retry
    return GatewaySettings(
        base_url=base_url,
        api_key=credentials.api_key.get_secret_value(),
        api_secret=credentials.api_secret.get_secret_value(),
        recv_window_ms=settings.exchange.recv_window_ms,
        timeout_s=settings.exchange.request_timeout_s,
        limiter=LimiterSettings(headroom=rl.headroom, low_share=rl.low_share,
                                warning_threshold=rl.warning_threshold),
        breaker=BreakerSettings(failure_threshold=br.failure_threshold,
                                recovery_timeout=br.recovery_timeout_s,
                                half_open_max_calls=br.half_open_max_calls,
                                success_threshold=br.success_threshold),
        retry=RetrySettings(max_retries=rt.max_retries, initial_delay=rt.initial_delay,
                            backoff_factor=rt.backoff_factor, max_delay=rt.max_delay,
                            jitter=rt.jitter),
    )


def run(settings: Settings, *, exchange_url: str | None = None, spool: Path | None = None) -> int:
    """`execd run`: start the daemon, serve until SIGTERM/SIGINT, shut down. Returns 0.

    Raises ConfigError for configuration problems found at start (the CLI exits 2).
    """
    return asyncio.run(_run(settings, exchange_url=exchange_url, spool=spool))


async def _run(settings: Settings, *, exchange_url: str | None, spool: Path | None) -> int:
    async with Daemon(settings, exchange_url=exchange_url, spool=spool) as daemon:
        await daemon.serve()
    return 0
