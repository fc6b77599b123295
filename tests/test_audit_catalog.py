"""The audit catalog, its documentation and the code agree: docs/audit-events.md lists exactly the
events of `AuditEvent`, and real flows (components against the simulator, then an in-process
daemon) emit every one of them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog

from app.clock import SystemClock
from app.config import load_settings, resolve_api_token
from app.config_schema import StreamConfig
from app.control.http_api import ControlApi
from app.daemon import Daemon
from app.domain import IntentState, SignalState
from app.errors import ExchangeError, UnknownOutcome
from app.exchange.gateway import Gateway
from app.exchange.streams import StreamSettings, UserStream
from app.exchange.symbols import trading_rules
from app.execution.book import Book
from app.execution.executor import Executor
from app.execution.settings import ExecutorSettings
from app.factory import ExchangeParts, build_execution, build_live, open_exchange
from app.intake.bus import SignalBus
from app.intake.nats import NatsSettings, NatsSource
from app.intake.reports import ReportPublisher
from app.intake.service import Service
from app.intake.spool import SpoolTail
from app.journal import Journal, JournalBusy, JournalFailed
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger, LogHandle, configure_logging
from app.observability.notify import SystemdNotifier
from app.resilience.breaker import BreakerSettings
from app.resilience.retry import RetrySettings
from app.sim import SimServer
from tests.execution.conftest import make_signal, setup_for
from tests.execution.test_recovery import entry_intent
from tests.execution.test_ttl import ENTRY, accept, outage
from tests.execution.test_unprotected import MarketMovesBeforeTheStop, executor_for
from tests.nats_support import NatsServer
from tests.simulator import Admin, quiet_sim_config
from tests.test_alerts_e2e import hammer
from tests.test_alerts_e2e import outage as daemon_outage
from tests.test_journal_durability import read_only, write_lock

DOCS = Path(__file__).resolve().parent.parent / "docs" / "audit-events.md"
CATALOG = frozenset(e.value for e in AuditEvent)
_DOC_ROW = re.compile(r"^\| `([a-z_]+)` \|", re.MULTILINE)


@pytest.fixture(autouse=True)
def _clean_structlog() -> Iterator[None]:
    """configure_logging and the daemon configure structlog globally: reset it afterwards."""
    yield
    structlog.reset_defaults()


def documented_events() -> set[str]:
    """The event names of the tables in docs/audit-events.md (rows ``| `name` | ...``)."""
    return set(_DOC_ROW.findall(DOCS.read_text(encoding="utf-8")))


def test_docs_and_catalog_list_the_same_events() -> None:
    """Every catalog event has a row in docs/audit-events.md, and every row is in the catalog."""
    documented = documented_events()
    assert sorted(CATALOG - documented) == [], "in AuditEvent but not in docs/audit-events.md"
    assert sorted(documented - CATALOG) == [], "in docs/audit-events.md but not in AuditEvent"


# ------------------------------------------------------------------ collecting events

class Collector:
    """An audit tap: the names of every event seen, and a bounded wait for one of them."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._waiters: dict[str, asyncio.Event] = {}
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()

    def tap(self, event: Mapping[str, Any]) -> None:
        name = str(event["event"])
        with self._lock:
            self.seen.add(name)
            waiter = self._waiters.get(name)
        if waiter is not None:
            self._loop.call_soon_threadsafe(waiter.set)

    async def wait_for(self, name: str) -> None:
        """Return once `name` was seen (bound it with ``asyncio.timeout``)."""
        with self._lock:
            if name in self.seen:
                return
            waiter = self._waiters.setdefault(name, asyncio.Event())
        await waiter.wait()


def fast_retry(max_retries: int = 2) -> RetrySettings:
    return RetrySettings(max_retries=max_retries, initial_delay=0.01, max_delay=0.05, jitter=0.0)


@asynccontextmanager
async def started_exchange(sim: SimServer, log: AuditLogger,
                           **overrides: Any) -> AsyncIterator[ExchangeParts]:
    """A started exchange side against `sim`, as tests/exchange/conftest.py builds it
    (time_synced, exchange_info_refreshed)."""
    overrides.setdefault("breaker", BreakerSettings(failure_threshold=1000))
    async with open_exchange(setup_for(sim.url, **overrides), SystemClock(), log) as parts:
        yield parts


@dataclass
class World:
    """The components the daemon wires, against a quiet simulator (tests/intake/conftest.py)."""

    sim: SimServer
    admin: Admin
    exchange: ExchangeParts
    gateway: Gateway
    journal: Journal
    executor: Executor
    bus: SignalBus
    service: Service
    log: AuditLogger


@asynccontextmanager
async def world(tmp_path: Path, log: AuditLogger) -> AsyncIterator[World]:
    async with (SimServer(quiet_sim_config()) as sim, aiohttp.ClientSession() as session,
                started_exchange(sim, log) as exchange):
        gateway, rules = exchange.gateway, exchange.symbols.get
        journal = Journal(tmp_path / "components" / "journal.sqlite3")
        await journal.open()
        try:
            executor = build_execution(gateway, rules, journal, SystemClock(), log,
                                       ExecutorSettings(resolve_window_s=5.0,
                                                        busy_retry_s=0.05)).executor
            bus = SignalBus(executor.execute, capacity=100, max_concurrency=4, log=log)
            service = Service(journal, bus, partial(trading_rules, rules), SystemClock(), log,
                              default_ttl_s=30.0)
            service.open()
            try:
                yield World(sim, Admin(session, sim.url), exchange, gateway, journal, executor,
                            bus, service, log)
            finally:
                await bus.aclose()
        finally:
            await journal.close()


# ------------------------------------------------------------------ component flows

async def breaker_flow(log: AuditLogger) -> None:
    """An outage opens the trade breaker (api_error, breaker_opened), a call while open is
    refused (breaker_rejected), after it probes go through (breaker_half_open, breaker_closed);
    as in tests/exchange/test_gateway.py."""
    async with SimServer(quiet_sim_config()) as sim, aiohttp.ClientSession() as session:
        admin = Admin(session, sim.url)
        async with started_exchange(
                sim, log, retry=fast_retry(0),
                breaker=BreakerSettings(failure_threshold=3, recovery_timeout=0.3,
                                        success_threshold=2)) as exchange:
            gateway = exchange.gateway
            await admin.post("faults", outage(60.0))
            for _ in range(3):
                with pytest.raises(ExchangeError, match="Service Unavailable"):
                    await gateway.get_order("BTCUSDT", "x")
            with pytest.raises(ExchangeError):           # CircuitOpen
                await gateway.get_order("BTCUSDT", "x")
            await admin.post("faults", {"seed": 0, "rules": []})   # the outage ends
            await asyncio.sleep(0.35)                    # the breaker's recovery timeout
            assert await gateway.get_order("BTCUSDT", "x") is None
            assert await gateway.get_order("BTCUSDT", "x") is None


def notify_flow(log: AuditLogger) -> None:
    """A systemd notification to a socket nobody binds (notify_failed)."""
    with tempfile.TemporaryDirectory(prefix="execd-catalog-") as directory:
        notifier = SystemdNotifier(f"{directory}/gone", lambda: "starting", SystemClock(), log)
        notifier.open()
        notifier.close()


async def session_reset_flow(log: AuditLogger) -> None:
    """Connections dropped after applying a read: retried (retry_attempt), then the HTTP
    session is replaced (session_reset) before the next call."""
    async with SimServer(quiet_sim_config()) as sim, aiohttp.ClientSession() as session:
        admin = Admin(session, sim.url)
        async with started_exchange(sim, log) as exchange:
            gateway = exchange.gateway
            await admin.post("faults", {"seed": 0, "rules": [
                {"endpoint": "GET /fapi/v1/premiumIndex", "fault": "reset_after_apply",
                 "probability": 1.0}]})
            with pytest.raises(UnknownOutcome):
                await gateway.mark_price("BTCUSDT")
            await admin.post("faults", {"seed": 0, "rules": []})
            assert await gateway.mark_price("BTCUSDT") == Decimal("65000.00000000")


async def exchange_info_flow(log: AuditLogger, seen: Collector) -> None:
    """The rules expire (0.3 s here) while the exchange refuses exchangeInfo: the background
    reload fails (exchange_info_refresh_failed) and the rules in place stay."""
    async with SimServer(quiet_sim_config()) as sim, aiohttp.ClientSession() as session:
        admin = Admin(session, sim.url)
        async with started_exchange(sim, log, retry=fast_retry(0),
                                    exchange_info_ttl_s=0.3) as exchange:
            await admin.post("faults", {"seed": 0, "rules": [
                {"endpoint": "GET /fapi/v1/exchangeInfo", "fault": "service_unavailable",
                 "probability": 1.0}]})
            async with asyncio.timeout(10):
                await seen.wait_for("exchange_info_refresh_failed")
            assert "BTCUSDT" in exchange.symbols


async def throttling_flow(log: AuditLogger, seen: Collector) -> None:
    """Small weight windows (20 per 2 s): our own use passes the warning share
    (rate_limit_warning); another client on our IP exhausts a window so our call gets a 429
    (rate_limit); then it ignores the 429s until the IP is banned, and our next call meets
    the 418 (ip_banned)."""
    base = quiet_sim_config(request_weight=20, request_weight_interval_s=2, ban_after_429s=3)
    config = dataclasses.replace(base, ban=dataclasses.replace(base.ban, initial_s=3.0))
    window = 2.0
    async with (SimServer(config) as sim, aiohttp.ClientSession() as other,
                started_exchange(sim, log) as exchange):
        async with asyncio.timeout(10):
            while "rate_limit_warning" not in seen.seen:
                await exchange.gateway.mark_price("BTCUSDT")
        await rate_limited_call(exchange, sim.url, other, window, seen)
        async with started_exchange(sim, log, retry=fast_retry(0)) as fresh_side:
            fresh = fresh_side.gateway
            url = f"{sim.url}/fapi/v1/time"
            for _ in range(500):                         # the co-tenant that ignores 429s
                async with other.get(url) as resp:
                    if resp.status == 418:
                        break
            else:
                pytest.fail("the simulator never banned the IP")
            with contextlib.suppress(ExchangeError):     # IpBanned
                await fresh.mark_price("BTCUSDT")


async def rate_limited_call(exchange: ExchangeParts, base_url: str,
                            other: aiohttp.ClientSession, window: float,
                            seen: Collector) -> None:
    """Another process on our IP uses up a weight window early on; our call in that window is
    answered 429 and retried after Retry-After. The burst and our call must share one window
    (see TestSharedIp in tests/exchange/test_gateway.py), so a try that straddles is repeated."""
    url = f"{base_url}/fapi/v1/time"
    for _ in range(5):
        left = window - exchange.timesync.server_time() % window
        if left < 1.5:
            await asyncio.sleep(left + 0.02)
        for _ in range(100):                              # the other process on our IP
            async with other.get(url) as resp:
                if resp.status == 429:
                    break
        else:
            pytest.fail("the other process was never answered 429")
        assert await exchange.gateway.mark_price("BTCUSDT") == Decimal("65000.00000000")
        if "rate_limit" in seen.seen:
            return
    pytest.fail("no 429 reached the gateway in five windows")


async def stream_flow(log: AuditLogger, seen: Collector) -> None:
    """The user stream connects (listen_key_renewed, stream_connected); its key expires, so
    the connection ends (stream_disconnected) and a new key is fetched."""
    async with SimServer(quiet_sim_config()) as sim, aiohttp.ClientSession() as session:
        admin = Admin(session, sim.url)
        async with started_exchange(sim, log) as exchange:
            settings = StreamSettings(backoff_initial_s=0.05, backoff_max_s=0.2)
            stream = UserStream(sim.url.replace("http://", "ws://", 1), exchange.gateway,
                                lambda event: None, SystemClock(), log, settings)
            task = asyncio.create_task(stream.run())
            try:
                async with asyncio.timeout(5):
                    await seen.wait_for(AuditEvent.STREAM_CONNECTED)
                    await admin.post("listen-key/expire", {})
                    await seen.wait_for(AuditEvent.STREAM_DISCONNECTED)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def live_flow(tmp_path: Path, log: AuditLogger, seen: Collector) -> None:
    """The guard on the user stream: execd's stop cancelled by hand is placed again
    (protection_repaired); a web-UI trade (position_foreign); the stop fires
    (protective_triggered); a new position is liquidated (position_liquidated)."""
    async with SimServer(quiet_sim_config()) as sim, aiohttp.ClientSession() as session:
        admin = Admin(session, sim.url)
        async with started_exchange(sim, log) as exchange:
            journal = Journal(tmp_path / "live" / "journal.sqlite3")
            await journal.open()
            clock, settings = SystemClock(), ExecutorSettings(resolve_window_s=1.0)
            book = Book(clock)
            execution = build_execution(exchange.gateway, exchange.symbols.get, journal, clock,
                                        log, settings, book=book)
            live = build_live(exchange.gateway, book, execution, journal, clock, log,
                              StreamConfig(), sim.url.replace("http://", "ws://", 1), settings)
            assert live.user is not None
            tasks = [asyncio.create_task(live.guard.run()),
                     asyncio.create_task(live.user.run())]
            try:
                async with asyncio.timeout(10):
                    await seen.wait_for(AuditEvent.STREAM_CONNECTED)
                    entry = {"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
                             "stop_loss": "60000.0", "take_profit": "70000.0"}
                    done = await execution.executor.execute(await accept(journal, entry,
                                                                         ttl=20))
                    assert done.state is SignalState.DONE, done.reason
                    stop = next(a for a in await admin.orders("algo")
                                if a["type"] == "STOP_MARKET")
                    await exchange.gateway.cancel_algo_order(stop["client_id"])
                    await seen.wait_for(AuditEvent.PROTECTION_REPAIRED)
                    await admin.post("trade", {"symbol": "ETHUSDT", "side": "BUY",
                                               "qty": "0.100"})
                    await seen.wait_for(AuditEvent.POSITION_FOREIGN)
                    await admin.post("price", {"symbol": "BTCUSDT", "price": "59990.0"})
                    await seen.wait_for(AuditEvent.PROTECTIVE_TRIGGERED)
                    await admin.post("liquidate", {"symbol": "ETHUSDT"})
                    await seen.wait_for(AuditEvent.POSITION_LIQUIDATED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await live.guard.aclose()
                await journal.close()


async def execution_flows(w: World) -> None:
    """The executor: a signal past its TTL (signal_expired); an outage within the TTL
    (signal_deferred, then signal_done); an entry whose answer is lost (order_unknown_outcome,
    order_resolved, adopted); an entry filled in part (order_partially_filled); a stop-loss
    the market already passed (-2021: order_rejected, position_unprotected,
    position_flattened, signal_failed)."""
    expired = dataclasses.replace(make_signal(ENTRY), expires_at=time.time() - 1)
    record, _ = await w.journal.accept(expired, now=time.time())
    assert (await w.executor.execute(record)).state is SignalState.EXPIRED

    await w.admin.post("faults", outage(0.5))
    deferred = await w.executor.execute(await accept(w.journal, ENTRY, ttl=20))
    assert deferred.state is SignalState.DONE, deferred.reason

    await w.admin.post("faults", {"seed": 1, "rules": [
        {"endpoint": "POST /fapi/v1/order", "fault": "unknown_503", "probability": 1.0}]})
    lost = {"symbol": "ETHUSDT", "type": "LONG_ENTRY", "quantity": "0.100"}
    adopted = await w.executor.execute(await accept(w.journal, lost, ttl=20))
    await w.admin.post("faults", {"seed": 1, "rules": []})
    assert adopted.state is SignalState.DONE, adopted.reason

    await w.admin.post("faults", {"seed": 1, "rules": [
        {"endpoint": "POST /fapi/v1/order", "fault": "partial_fill", "probability": 1.0}]})
    part = await w.executor.execute(await accept(w.journal, {
        "symbol": "SOLUSDT", "type": "LONG_ENTRY", "quantity": "2"}, ttl=20))
    await w.admin.post("faults", {"seed": 1, "rules": []})
    assert part.state is SignalState.DONE, part.reason           # order_partially_filled

    settings = ExecutorSettings(resolve_window_s=5.0, busy_retry_s=0.05)
    naked = executor_for(MarketMovesBeforeTheStop(w.gateway, w.admin, "59000.0"), w.exchange,
                         w.journal, settings)
    failed = await naked.execute(await accept(w.journal, {
        "symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
        "stop_loss": "60000.0"}, ttl=20))
    assert failed.state is SignalState.FAILED, failed.reason


async def spool_flows(w: World, tmp_path: Path, seen: Collector) -> None:
    """The spool tail: a file shorter than the stored offset (spool_truncated); the path
    naming a new file (spool_rotated); a path that cannot be read, here a directory
    (spool_unreadable)."""
    spool = tmp_path / "spool" / "signals.jsonl"
    spool.parent.mkdir()
    spool.write_bytes(b"{oops\n{oops again\n")            # rejected lines: nothing executes
    tail = SpoolTail(spool, w.service, w.journal, SystemClock(), w.log)
    assert await tail.catch_up() == 2
    spool.write_bytes(b"{x\n")
    assert await tail.catch_up() == 1
    spool.rename(spool.with_name("signals.jsonl.1"))
    spool.write_bytes(b"{y\n")
    assert await tail.catch_up() == 1
    await tail.aclose()

    unreadable = SpoolTail(tmp_path / "spool", w.service, w.journal, SystemClock(), w.log,
                           poll_interval_s=0.05)
    task = asyncio.create_task(unreadable.run())
    try:
        async with asyncio.timeout(5):
            await seen.wait_for(AuditEvent.SPOOL_UNREADABLE)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def nats_flow(w: World, tmp_path: Path, seen: Collector) -> None:
    """The NATS source connects (source_connected) and loses its server
    (source_disconnected); a report publisher with room for one report drops the second
    (report_dropped)."""
    async with NatsServer(tmp_path / "nats") as server:
        source = NatsSource(NatsSettings(url=server.url), w.service, SystemClock(), w.log)
        task = asyncio.create_task(source.run())
        try:
            async with asyncio.timeout(10):
                await seen.wait_for(AuditEvent.SOURCE_CONNECTED)
                await server.stop()
                await seen.wait_for(AuditEvent.SOURCE_DISCONNECTED)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    reports = ReportPublisher(w.journal, SystemClock(), w.log, subject="execd.reports",
                              capacity=1)
    for i in range(2):
        record, _ = await w.journal.accept(make_signal({"id": f"catalog-report-{i}",
                                                        "symbol": "BTCUSDT",
                                                        "type": "CLOSE_LONG"}), now=time.time())
        reports.on_change(record)


async def api_failure_flow(w: World) -> None:
    """A control API handler that raises answers 500 (api_request_failed)."""
    def broken_status() -> Mapping[str, object]:
        raise RuntimeError("status exploded")

    api = ControlApi(w.service, w.journal, w.gateway, broken_status, token="catalog-token", port=0,
                     log=w.log)
    await api.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(
                f"{api.url}/v1/status",
                headers={"Authorization": "Bearer catalog-token"}) as resp:
            assert resp.status == 500
    finally:
        await api.close()


async def journal_busy_flow(w: World) -> None:
    """Another process holds the journal's write lock past the busy timeout: the signal is
    refused (journal_busy), nothing journaled."""
    with write_lock(w.journal.path), pytest.raises(JournalBusy):
        await w.service.accept({"id": "catalog-busy", "symbol": "BTCUSDT",
                                "type": "LONG_ENTRY", "quantity": "0.010"}, source="test")
    assert await w.journal.get_signal("catalog-busy") is None


async def journal_failed_flow(w: World) -> None:
    """The journal's disk turns read-only: the signal is refused (journal_failed, and its
    alert), nothing journaled."""
    async with read_only(w.journal):
        with pytest.raises(JournalFailed):
            await w.service.accept({"id": "catalog-failed", "symbol": "BTCUSDT",
                                    "type": "LONG_ENTRY", "quantity": "0.010"}, source="test")
    assert await w.journal.get_signal("catalog-failed") is None


async def component_flows(tmp_path: Path) -> set[str]:
    """Every component flow under one audit log of our own; the names of the events seen."""
    seen = Collector()
    handle: LogHandle = configure_logging(tmp_path / "component-audit", "DEBUG", console=False)
    handle.add_tap(seen.tap)
    log = handle.logger
    try:
        await breaker_flow(log)
        notify_flow(log)
        await session_reset_flow(log)
        await exchange_info_flow(log, seen)
        await throttling_flow(log, seen)
        await stream_flow(log, seen)
        await live_flow(tmp_path, log, seen)
        async with world(tmp_path, log) as w:
            await execution_flows(w)
            await spool_flows(w, tmp_path, seen)
            await api_failure_flow(w)
            await journal_busy_flow(w)
            await journal_failed_flow(w)
            await nats_flow(w, tmp_path, seen)
    finally:
        await handle.aclose()
    return set(seen.seen)


# ------------------------------------------------------------------ the daemon

async def prepare_journal(path: Path) -> str:
    """A journal as a crash left it: a RUNNING entry whose order was journaled SENDING but
    never left. Returns the signal id. ETHUSDT, so that the BTCUSDT entry sent later may
    still change the margin type (-4048 once a position exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    journal = Journal(path)
    await journal.open()
    try:
        now = time.time()
        signal = make_signal({"symbol": "ETHUSDT", "type": "LONG_ENTRY", "quantity": "0.100"})
        await journal.accept(signal, now=now)
        await journal.set_signal_state(signal.id, SignalState.RUNNING, reason=None, now=now)
        await journal.put_intent(entry_intent(signal.id, "ETHUSDT", "0.100",
                                              IntentState.SENDING))
    finally:
        await journal.close()
    return signal.id


def loose_token_file(path: Path) -> None:
    path.write_text("catalog-token-" + "x" * 32 + "\n", encoding="utf-8")
    path.chmod(0o644)


async def daemon_flow(tmp_path: Path) -> set[str]:
    """An in-process daemon (embedded simulator, DEBUG audit): start-up with restart recovery
    of a SENDING intent, signals over the control API (accepted with leverage, margin type and
    protection; a duplicate; a malformed one), position, balance and cancel-all through the
    API, a halt that refuses an entry, a spool file that does not exist yet, an outage that
    opens a breaker (alert) and during which a queued signal is cancelled, stop; its token file
    readable by others (secret_file_exposed). Returns the event names of its audit files."""
    root = tmp_path / "daemon"
    settings = load_settings(overrides={
        "audit.log_dir": str(root / "audit"), "audit.console": False, "audit.level": "DEBUG",
        "journal.path": str(root / "data" / "journal.sqlite3"), "api.port": 0,
        "execution.resolve_window_s": 0.3, "retry.max_retries": 0,
        "breaker.failure_threshold": 3, "breaker.recovery_timeout_s": 0.5,
        "monitor.error_rate_per_min": 1000,
    }, environ={})
    recovered = await prepare_journal(settings.journal.path)
    await asyncio.to_thread(loose_token_file, settings.journal.path.parent / "api-token")
    async with Daemon(settings, spool=root / "spool" / "signals.jsonl",
                      out=io.StringIO()) as daemon:
        serving = asyncio.create_task(daemon.serve())
        assert daemon.api is not None
        assert daemon.bus is not None
        assert daemon.monitor is not None
        assert daemon.exchange_url is not None
        token = resolve_api_token(settings, create=False)
        auth = {"Authorization": f"Bearer {token}"}
        entry = {"id": "catalog-entry", "symbol": "BTCUSDT", "type": "LONG_ENTRY",
                 "quantity": "0.010", "leverage": 5, "margin_type": "ISOLATED",
                 "stop_loss": "60000.0", "take_profit": "70000.0"}
        async with aiohttp.ClientSession(base_url=daemon.api.url, headers=auth) as api:
            for body, expected in ((entry, 202), (entry, 200),
                                   ({"symbol": "BTCUSDT", "type": "NOPE"}, 400)):
                async with api.post("/v1/signals", data=orjson.dumps(body)) as resp:
                    assert resp.status == expected, await resp.text()
            assert await daemon.bus.drain(10)
            for method, path in (("GET", "/v1/positions/BTCUSDT"), ("GET", "/v1/balance"),
                                 ("POST", "/v1/cancel-all/BTCUSDT"),
                                 ("GET", "/v1/signals/catalog-entry"),
                                 ("GET", f"/v1/signals/{recovered}")):
                async with api.request(method, path) as resp:
                    assert resp.status == 200, await resp.text()
                    if path.startswith("/v1/signals/"):
                        assert (await resp.json())["state"] == "DONE"
            # the risk gate: halted, an entry is refused naming the state
            for state in ("HALTED", "ACTIVE"):
                async with api.post("/v1/trading-state", json={"state": state}) as resp:
                    assert resp.status == 200, await resp.text()
                if state == "HALTED":
                    risky = {"id": "catalog-risk", "symbol": "ETHUSDT", "type": "LONG_ENTRY",
                             "quantity": "0.100"}
                    async with api.post("/v1/signals", json=risky) as resp:
                        assert resp.status == 202, await resp.text()
                    assert await daemon.bus.drain(10)
            await daemon_outage(daemon.exchange_url, 60.0)     # lasts until the daemon stops
            # the first waits out the outage (RUNNING), the second is cancelled in the queue
            for signal_id in ("catalog-wait", "catalog-cancel"):
                body = {"id": signal_id, "symbol": "SOLUSDT", "type": "LONG_ENTRY",
                        "quantity": "1", "ttl_s": 1}
                async with api.post("/v1/signals", json=body) as resp:
                    assert resp.status == 202, await resp.text()
            async with api.delete("/v1/signals/catalog-cancel") as resp:
                assert resp.status == 200, await resp.text()
        for _ in range(20):
            await hammer(daemon, 1)
            await asyncio.sleep(0)        # the monitor emits the alert with call_soon
            if daemon.monitor.snapshot()["alerts_sent"]:
                break
        else:
            pytest.fail("the open breaker raised no alert")
        daemon.request_stop("test")
        await serving
    files = sorted((root / "audit").glob("audit-*.jsonl"))
    return {orjson.loads(line)["event"] for f in files for line in f.read_bytes().splitlines()}


@pytest.mark.timeout(180)
async def test_flows_emit_every_catalog_event(tmp_path: Path) -> None:
    """Component flows and a daemon run together emit every event of the catalog, and only
    catalog events."""
    emitted = await component_flows(tmp_path)
    emitted |= await daemon_flow(tmp_path)
    assert sorted(CATALOG - emitted) == [], "catalog events no flow emitted"
    assert sorted(emitted - CATALOG) == [], "emitted events missing from the catalog"
