"""The error monitor: counts over a sliding window, alerts with cooldowns, the webhook."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from app.clock import FakeClock
from app.config_schema import MonitorConfig
from app.observability.alerts import ErrorMonitor
from app.observability.audit import AuditEvent
from app.observability.logging import LogHandle, configure_logging
from tests.loopback import serving

ReadEvents = Callable[[Path], list[dict[str, Any]]]

API_ERROR = {"event": "api_error", "level": "warning", "error_class": "TransientError",
             "message": "HTTP 503"}


@pytest.fixture
def audit(tmp_path: Path, clock: FakeClock) -> Iterator[LogHandle]:
    """The real audit pipeline into tmp_path, on the fake clock."""
    with configure_logging(tmp_path, "DEBUG", False, clock) as handle:
        yield handle


def settings(**overrides: Any) -> MonitorConfig:
    values: dict[str, Any] = {"error_rate_per_min": 3.0, "window_s": 60.0, "cooldown_s": 300.0}
    return MonitorConfig(**{**values, **overrides})


def alerts(audit: LogHandle, read_events: ReadEvents) -> list[dict[str, Any]]:
    """The alert events written so far (flushes the audit log)."""
    audit.close()
    path = audit.current_file()
    events = read_events(path) if path.exists() else []
    return [e for e in events if e["event"] == "alert"]


async def feed(monitor: ErrorMonitor, *events: dict[str, Any]) -> None:
    """Tap the events, then let the alerts scheduled with call_soon go out."""
    for event in events:
        monitor.tap(event)
    await asyncio.sleep(0)


async def test_errors_below_the_rate_threshold_raise_no_alert(
    audit: LogHandle, clock: FakeClock, read_events: ReadEvents
) -> None:
    """Two errors in a minute against a threshold of 3/min: counted, no alert."""
    monitor = ErrorMonitor(settings(), clock, audit.logger)
    await feed(monitor, API_ERROR, {"event": "order_rejected", "error_class": "OrderRejected"})
    snapshot = monitor.snapshot()
    assert (snapshot["total"], snapshot["rate_per_min"]) == (2, 2.0)
    assert snapshot["counts"] == {"api_error:TransientError": 1, "order_rejected": 1}
    assert alerts(audit, read_events) == []


async def test_reaching_the_rate_threshold_raises_one_alert(
    audit: LogHandle, clock: FakeClock, read_events: ReadEvents
) -> None:
    """The third error within the window is an error_rate alert with the window's counts."""
    monitor = ErrorMonitor(settings(), clock, audit.logger)
    await feed(monitor, API_ERROR, API_ERROR, {"event": "signal_failed", "state": "FAILED"})
    (alert,) = alerts(audit, read_events)
    assert alert["level"] == "error"
    assert alert["kind"] == "error_rate"
    assert (alert["total"], alert["rate_per_min"]) == (3, 3.0)
    assert alert["counts"] == {"api_error:TransientError": 2, "signal_failed": 1}
    assert "threshold 3" in alert["detail"]


async def test_errors_leave_the_window_after_window_s(clock: FakeClock, audit: LogHandle,
                                                      read_events: ReadEvents) -> None:
    """Errors older than window_s no longer count toward the rate."""
    monitor = ErrorMonitor(settings(), clock, audit.logger)
    await feed(monitor, API_ERROR, API_ERROR)
    clock.advance(30)
    assert monitor.snapshot()["total"] == 2
    clock.advance(30)
    assert monitor.snapshot()["total"] == 0
    await feed(monitor, API_ERROR)
    assert monitor.snapshot()["counts"] == {"api_error:TransientError": 1}
    assert alerts(audit, read_events) == []


async def test_an_alert_kind_is_not_repeated_within_its_cooldown(
    audit: LogHandle, clock: FakeClock, read_events: ReadEvents
) -> None:
    """Once alerted, the same kind stays quiet for cooldown_s, then alerts again."""
    monitor = ErrorMonitor(settings(), clock, audit.logger)
    await feed(monitor, *[API_ERROR] * 3)
    clock.advance(100)
    await feed(monitor, *[API_ERROR] * 5)
    clock.advance(199)
    await feed(monitor, *[API_ERROR] * 3)
    assert monitor.snapshot()["alerts_sent"] == 1
    clock.advance(1)
    await feed(monitor, API_ERROR)
    assert [a["kind"] for a in alerts(audit, read_events)] == ["error_rate", "error_rate"]


@pytest.mark.parametrize(("event", "kind"), [
    ({"event": "breaker_opened", "level": "error", "group": "orders"}, "breaker_open"),
    ({"event": "ip_banned", "level": "critical", "retry_after": 120.0}, "ip_banned"),
    ({"event": "position_unprotected", "level": "critical", "symbol": "BTCUSDT",
      "reason": "stop-loss refused", "action": "flatten"}, "position_unprotected"),
    ({"event": "journal_failed", "level": "critical", "source": "http",
      "error": "database or disk is full"}, "journal_failed"),
])
async def test_critical_events_alert_at_once(
    audit: LogHandle, clock: FakeClock, read_events: ReadEvents, event: dict[str, Any],
    kind: str,
) -> None:
    """A breaker opening, an IP ban, an unprotected position or a failed journal alerts on its
    first event."""
    monitor = ErrorMonitor(settings(), clock, audit.logger)
    await feed(monitor, event)
    (alert,) = alerts(audit, read_events)
    assert alert["kind"] == kind
    assert alert["counts"] == {event["event"]: 1}


async def test_each_kind_has_its_own_cooldown(
    audit: LogHandle, clock: FakeClock, read_events: ReadEvents
) -> None:
    """A breaker alert in cooldown does not silence an IP-ban alert."""
    monitor = ErrorMonitor(settings(error_rate_per_min=100.0), clock, audit.logger)
    await feed(monitor, {"event": "breaker_opened", "group": "orders"},
               {"event": "breaker_opened", "group": "account"}, {"event": "ip_banned"})
    assert [a["kind"] for a in alerts(audit, read_events)] == ["breaker_open", "ip_banned"]


async def test_breaker_opened_through_the_pipeline_alerts_once_after_it(
    audit: LogHandle, clock: FakeClock, read_events: ReadEvents
) -> None:
    """As a tap: the alert follows the breaker_opened line, and does not feed on itself."""
    monitor = ErrorMonitor(settings(cooldown_s=0.0), clock, audit.logger)
    audit.add_tap(monitor.tap)
    audit.logger.error(AuditEvent.BREAKER_OPENED, group="orders", previous="closed",
                       consecutive_opens=1)
    await asyncio.sleep(0)
    audit.close()
    events = [e["event"] for e in read_events(audit.current_file())]
    assert events == ["breaker_opened", "alert"]
    assert monitor.snapshot()["counts"] == {"breaker_opened": 1}


async def test_info_level_api_errors_and_other_events_are_not_counted(
    audit: LogHandle, clock: FakeClock
) -> None:
    """api_error below warning, alert events and ordinary events leave the counts alone."""
    monitor = ErrorMonitor(settings(), clock, audit.logger)
    await feed(monitor, {**API_ERROR, "level": "info"}, {"event": "alert", "kind": "x"},
               {"event": "order_filled", "leg": "E"})
    assert monitor.snapshot()["total"] == 0


async def test_snapshot_keeps_the_last_twenty_errors(audit: LogHandle, clock: FakeClock) -> None:
    """recent holds the last 20 errors, oldest first, with ts, event, class and message."""
    monitor = ErrorMonitor(settings(error_rate_per_min=1000.0), clock, audit.logger)
    for n in range(25):
        monitor.tap({**API_ERROR, "ts": f"t{n}", "message": f"m{n}"})
    recent = monitor.snapshot()["recent"]
    assert len(recent) == 20
    assert recent[0] == {"ts": "t5", "event": "api_error", "error_class": "TransientError",
                         "message": "m5"}
    assert recent[-1]["message"] == "m24"


# ---------------------------------------------------------------------- the webhook
@dataclass
class Hook:
    """A local webhook receiver: records each POST body; optionally never answers."""

    url: str = ""
    bodies: list[Any] = field(default_factory=list)
    received: asyncio.Event = field(default_factory=asyncio.Event)
    hang: bool = False
    status: int = 204
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(orjson.loads(await request.read()))
        self.received.set()
        if self.hang:
            await self.release.wait()
        return web.Response(status=self.status)


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    """An aiohttp server on 127.0.0.1, a free port, serving POST /hook."""
    receiver = Hook()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    async with serving(app, shutdown_timeout=1.0) as port:
        receiver.url = f"http://127.0.0.1:{port}/hook"
        yield receiver
        receiver.release.set()


async def test_an_alert_is_posted_once_to_the_webhook(
    audit: LogHandle, clock: FakeClock, hook: Hook
) -> None:
    """With webhook_url set, the receiver gets exactly one JSON POST of the alert."""
    monitor = ErrorMonitor(settings(webhook_url=hook.url), clock, audit.logger)
    await feed(monitor, {"event": "breaker_opened", "group": "orders"})
    await asyncio.wait_for(hook.received.wait(), timeout=5)
    await monitor.aclose()
    (body,) = hook.bodies
    assert body["event"] == "alert"
    assert body["kind"] == "breaker_open"
    assert body["detail"] == "breaker orders opened"
    assert body["counts"] == {"breaker_opened": 1}
    assert monitor.pending_posts == 0


async def test_a_hanging_webhook_is_cut_off_without_blocking(
    audit: LogHandle, clock: FakeClock, hook: Hook, read_events: ReadEvents
) -> None:
    """The tap returns at once; the POST gives up after webhook_timeout_s, logged as a warning."""
    hook.hang = True
    monitor = ErrorMonitor(settings(webhook_url=hook.url, webhook_timeout_s=0.2), clock,
                           audit.logger)
    await feed(monitor, {"event": "ip_banned", "retry_after": 60})
    assert monitor.pending_posts == 1
    await asyncio.wait_for(hook.received.wait(), timeout=5)
    await asyncio.wait_for(monitor.aclose(), timeout=5)
    assert monitor.pending_posts == 0
    failed = [a for a in alerts(audit, read_events) if a["level"] == "warning"]
    assert failed == [{**failed[0], "kind": "ip_banned", "delivery": "failed",
                       "error": "webhook timed out"}]


async def test_a_webhook_error_status_is_logged_not_raised(
    audit: LogHandle, clock: FakeClock, hook: Hook, read_events: ReadEvents
) -> None:
    """An HTTP 500 from the receiver is a warning-level alert event with delivery=failed."""
    hook.status = 500
    monitor = ErrorMonitor(settings(webhook_url=hook.url), clock, audit.logger)
    await feed(monitor, {"event": "position_unprotected", "symbol": "ETHUSDT"})
    await asyncio.wait_for(hook.received.wait(), timeout=5)
    await monitor.aclose()
    (failed,) = [a for a in alerts(audit, read_events) if a["level"] == "warning"]
    assert failed["error"] == "webhook answered HTTP 500"


async def test_aclose_cancels_posts_still_pending_after_the_timeout(
    audit: LogHandle, clock: FakeClock
) -> None:
    """aclose() gives pending POSTs their timeout and a grace, then cancels what is left."""
    started = asyncio.Event()

    async def stuck(url: str, body: bytes, timeout_s: float) -> int:
        started.set()
        while True:                    # ignores the first cancellation, like a wedged client
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                break
        await asyncio.Event().wait()
        return 200

    monitor = ErrorMonitor(settings(webhook_url="http://127.0.0.1:9/hook",
                                    webhook_timeout_s=0.05), clock, audit.logger, post=stuck)
    await feed(monitor, {"event": "ip_banned"})
    await asyncio.wait_for(started.wait(), timeout=5)
    await asyncio.wait_for(monitor.aclose(), timeout=5)
    assert monitor.pending_posts == 0


async def test_a_failed_webhook_never_logs_its_url(
    audit: LogHandle, clock: FakeClock, read_events: ReadEvents
) -> None:
    """aiohttp's errors quote the URL they failed on, and webhook URLs carry tokens: the
    logged reason keeps the error's kind and the host, never the path or the query."""
    url = "https://hooks.example.com/services/T0SECRETPATH/B1?token=tok-SECRET-123"

    async def refused(target: str, body: bytes, timeout_s: float) -> int:
        import aiohttp

        raise aiohttp.InvalidURL(target)

    monitor = ErrorMonitor(settings(webhook_url=url), clock, audit.logger, post=refused)
    await feed(monitor, {"event": "ip_banned", "retry_after": 60})
    await asyncio.wait_for(monitor.aclose(), timeout=5)
    (failed,) = [a for a in alerts(audit, read_events) if a["level"] == "warning"]
    assert "InvalidURL" in failed["error"]
    assert "SECRET" not in failed["error"]
    assert "token" not in failed["error"]


async def test_the_cooldown_is_per_kind_and_symbol(
    audit: LogHandle, clock: FakeClock, read_events: ReadEvents
) -> None:
    """A second symbol's unprotected position within the cooldown still alerts; the same
    symbol again does not."""
    monitor = ErrorMonitor(settings(error_rate_per_min=100.0), clock, audit.logger)
    naked = {"event": "position_unprotected", "level": "critical", "reason": "refused",
             "action": "alert"}
    await feed(monitor, {**naked, "symbol": "BTCUSDT"})
    clock.advance(60)
    await feed(monitor, {**naked, "symbol": "ETHUSDT"}, {**naked, "symbol": "BTCUSDT"})
    sent = alerts(audit, read_events)
    assert [(a["kind"], a["symbol"]) for a in sent] == [
        ("position_unprotected", "BTCUSDT"), ("position_unprotected", "ETHUSDT")]


async def test_a_refused_key_a_liquidation_and_a_kill_switch_alert(
    audit: LogHandle, clock: FakeClock, read_events: ReadEvents
) -> None:
    monitor = ErrorMonitor(settings(error_rate_per_min=100.0), clock, audit.logger)
    await feed(monitor,
               {"event": "api_error", "level": "critical", "error_class": "AuthError",
                "message": "Invalid API-key, IP, or permissions for action."},
               {"event": "position_liquidated", "level": "critical", "symbol": "BTCUSDT",
                "quantity": "0.010", "avg_price": "58000"},
               {"event": "trading_state_changed", "level": "critical", "state": "HALTED",
                "by": "kill switch", "reason": "API key refused 2 times in a row"},
               {"event": "trading_state_changed", "level": "warning", "state": "ACTIVE",
                "by": "operator", "reason": "fixed"})
    sent = {a["kind"]: a for a in alerts(audit, read_events)}
    assert set(sent) == {"api_key_refused", "position_liquidated", "kill_switch"}
    assert "IP whitelist" in sent["api_key_refused"]["detail"]
    assert sent["position_liquidated"]["symbol"] == "BTCUSDT"
    assert sent["kill_switch"]["detail"] == (
        "trading state HALTED: API key refused 2 times in a row")
