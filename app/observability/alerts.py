"""The error monitor (SPEC §9): error counts and rates over a sliding window, and alerts.

`ErrorMonitor.tap` is an audit-event listener (`LogHandle.add_tap`). It counts these events as
errors, by class:

- ``api_error`` at warning level or above, by its ``error_class`` (``api_error:RateLimited``);
  info-level ones are expected answers the caller handles;
- ``order_rejected``, ``order_unknown_outcome``, ``signal_failed``, ``position_unprotected``,
  ``ip_banned``, ``breaker_opened``, ``journal_failed``, each under its own name.

One exchange failure can show up as several of these (``api_error``, then ``order_rejected``,
then ``signal_failed``): the counts are of events, and the threshold is set with that in mind.

Alerts, each kind *and symbol* with its own cooldown (``cooldown_s``; the same kind for the same
symbol is not repeated within it, a second symbol's unprotected position still alerts):
``error_rate`` when the errors in the window reach ``error_rate_per_min`` per minute, and on the
event itself ``breaker_open``, ``ip_banned``, ``position_unprotected``, ``position_liquidated``,
``api_key_refused`` (an ``AuthError``), ``journal_failed`` (the journal or its disk failed) and
``kill_switch`` (the trading state set by a kill switch). An alert is an ``alert`` audit event
(level error: ``kind``, ``symbol`` when it has one, ``detail``, ``total``, ``rate_per_min``,
``counts``) and, when ``webhook_url`` is set, a JSON POST of the same in a background task cut
off after ``webhook_timeout_s``. A failed POST is an ``alert`` event at warning level with
``delivery="failed"``; nothing is raised and the caller never waits.

The tap runs inside the logging pipeline, so the alert event is emitted on the next turn of the
event loop (``call_soon``): it lands after the event that caused it, and `tap` ignores ``alert``
events, so the monitor never feeds on itself. Time comes from the injected `Clock`.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from app.clock import Clock
from app.config_schema import MonitorConfig
from app.domain import format_timestamp
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger

__all__ = ["Alert", "ErrorMonitor", "PostJson", "post_json"]

#: ``post(url, body, timeout_s) -> HTTP status``; raises on a transport failure.
PostJson = Callable[[str, bytes, float], Awaitable[int]]

_RECENT: Final = 20
_ALERTS_KEPT: Final = 20
_CLOSE_GRACE_S: Final = 0.5
_COUNTED_LEVELS: Final = frozenset({"warning", "error", "critical"})
_ALWAYS_COUNTED: Final = frozenset({
    AuditEvent.ORDER_REJECTED, AuditEvent.ORDER_UNKNOWN_OUTCOME, AuditEvent.SIGNAL_FAILED,
    AuditEvent.POSITION_UNPROTECTED, AuditEvent.IP_BANNED, AuditEvent.BREAKER_OPENED,
    AuditEvent.POSITION_LIQUIDATED, AuditEvent.JOURNAL_FAILED,
})


async def post_json(url: str, body: bytes, timeout_s: float) -> int:
    """POST `body` as JSON to `url` with aiohttp; returns the HTTP status."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (aiohttp.ClientSession(timeout=timeout) as session,
                session.post(url, data=body,
                             headers={"Content-Type": "application/json"}) as response):
        return response.status


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: what kind, why, and the window's counts when it fired."""

    kind: str
    detail: str
    ts: str
    total: int
    rate_per_min: float
    counts: dict[str, int]
    symbol: str | None = None

    def fields(self) -> dict[str, object]:
        symbol = {} if self.symbol is None else {"symbol": self.symbol}
        return {"kind": self.kind, **symbol, "detail": self.detail, "total": self.total,
                "rate_per_min": self.rate_per_min, "counts": self.counts}


class ErrorMonitor:
    """Counts errors from the audit events and raises alerts (see the module docstring).

    `post` sends the webhook (default: `post_json` over aiohttp). Call `aclose()` on the way
    down: it waits for pending webhook POSTs (each bounded by ``webhook_timeout_s``).
    """

    def __init__(self, settings: MonitorConfig, clock: Clock, log: AuditLogger, *,
                 post: PostJson | None = None) -> None:
        self.settings = settings
        self._clock = clock
        self._log = log
        self._post = post_json if post is None else post
        self._lock = threading.Lock()            # the tap may run on a worker thread
        self._window: deque[tuple[float, str]] = deque()
        self._counts: Counter[str] = Counter()
        self._recent: deque[dict[str, Any]] = deque(maxlen=_RECENT)
        self._last_alert: dict[tuple[str, str | None], float] = {}
        self._alerts: deque[Alert] = deque(maxlen=_ALERTS_KEPT)
        self._alerts_sent = 0
        self._posts: set[asyncio.Task[None]] = set()
        self._closed = False
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    # ------------------------------------------------------------------ the tap
    def tap(self, event: Mapping[str, Any]) -> None:
        """Count `event` if it is an error and schedule the alerts it triggers. Cheap; never
        raises for a well-formed event; ignores ``alert`` events."""
        name = str(event.get("event", ""))
        error_class = self._classify(name, event)
        if error_class is None:
            if name == AuditEvent.TRADING_STATE_CHANGED and event.get("by") == "kill switch":
                self._raise_now("kill_switch", None,
                                f"trading state {event.get('state', '?')}: "
                                f"{event.get('reason', '?')}")
            return
        alerts: list[Alert] = []
        with self._lock:
            now = self._clock.monotonic()
            self._window.append((now, error_class))
            self._counts[error_class] += 1
            self._expire(now)
            self._recent.append({
                "ts": event.get("ts") or format_timestamp(self._clock.time()),
                "event": name,
                "error_class": event.get("error_class") or error_class,
                "message": _message(event),
            })
            for kind, symbol, detail in self._triggers(name, event):
                if self._cooled_down((kind, symbol), now):
                    self._last_alert[kind, symbol] = now
                    alerts.append(self._alert(kind, detail, symbol))
        for alert in alerts:
            self._schedule(alert)

    def _raise_now(self, kind: str, symbol: str | None, detail: str) -> None:
        """An alert that is not an error count (a kill switch), under the same cooldown."""
        with self._lock:
            now = self._clock.monotonic()
            if not self._cooled_down((kind, symbol), now):
                return
            self._last_alert[kind, symbol] = now
            alert = self._alert(kind, detail, symbol)
        self._schedule(alert)

    @staticmethod
    def _classify(name: str, event: Mapping[str, Any]) -> str | None:
        if name == AuditEvent.API_ERROR:
            if event.get("level") not in _COUNTED_LEVELS:
                return None
            return f"api_error:{event.get('error_class') or 'unknown'}"
        return name if name in _ALWAYS_COUNTED else None

    def _triggers(self, name: str, event: Mapping[str, Any]
                  ) -> list[tuple[str, str | None, str]]:
        found: list[tuple[str, str | None, str]] = []
        symbol = event.get("symbol")
        symbol = symbol if isinstance(symbol, str) else None
        if name == AuditEvent.BREAKER_OPENED:
            found.append(("breaker_open", None, f"breaker {event.get('group', '?')} opened"))
        elif name == AuditEvent.IP_BANNED:
            found.append(("ip_banned", None, f"IP banned by the exchange for "
                                             f"{event.get('retry_after', '?')} s"))
        elif name == AuditEvent.POSITION_UNPROTECTED:
            found.append(("position_unprotected", symbol,
                          f"{symbol or '?'} position unprotected: "
                          f"{event.get('reason', '?')} (action {event.get('action', '?')})"))
        elif name == AuditEvent.POSITION_LIQUIDATED:
            found.append(("position_liquidated", symbol,
                          f"{symbol or '?'} position liquidated: {event.get('quantity', '?')} "
                          f"at {event.get('avg_price', '?')}"))
        elif name == AuditEvent.API_ERROR and event.get("error_class") == "AuthError":
            found.append(("api_key_refused", None,
                          f"the exchange refused the API key ({event.get('message', '?')}): "
                          "check its permissions (futures trading) and IP whitelist"))
        elif name == AuditEvent.JOURNAL_FAILED:
            found.append(("journal_failed", None,
                          f"the journal refused a write ({event.get('source', '?')}): "
                          f"{event.get('error', '?')}; intake refuses signals until it works"))
        rate = self._rate()
        if rate >= self.settings.error_rate_per_min:
            found.append(("error_rate", None,
                          f"{rate:g} errors/min over {self.settings.window_s:g} s "
                          f"(threshold {self.settings.error_rate_per_min:g})"))
        return found

    def _cooled_down(self, key: tuple[str, str | None], now: float) -> bool:
        last = self._last_alert.get(key)
        return last is None or now - last >= self.settings.cooldown_s

    def _alert(self, kind: str, detail: str, symbol: str | None = None) -> Alert:
        return Alert(kind, detail, format_timestamp(self._clock.time()), len(self._window),
                     self._rate(), dict(self._counts), symbol)

    def _expire(self, now: float) -> None:
        horizon = now - self.settings.window_s
        while self._window and self._window[0][0] <= horizon:
            _, error_class = self._window.popleft()
            self._counts[error_class] -= 1
            if not self._counts[error_class]:
                del self._counts[error_class]

    def _rate(self) -> float:
        return round(len(self._window) * 60.0 / self.settings.window_s, 3)

    # ------------------------------------------------------------------ sending
    def _schedule(self, alert: Alert) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._loop = loop
            loop.call_soon(self._send, alert)
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._send, alert)
        else:  # no loop at all (a synchronous caller): log now; `tap` ignores the echo
            self._send(alert)

    def _send(self, alert: Alert) -> None:
        with self._lock:
            self._alerts.append(alert)
            self._alerts_sent += 1
        self._log.error(AuditEvent.ALERT, **alert.fields())
        url = self.settings.webhook_url
        if url is None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._log.warning(AuditEvent.ALERT, kind=alert.kind, delivery="failed",
                              error="no event loop to post the webhook from")
            return
        task = loop.create_task(self._deliver(url, alert), name=f"execd-alert-{alert.kind}")
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)

    async def _deliver(self, url: str, alert: Alert) -> None:
        body = orjson.dumps({"event": AuditEvent.ALERT.value, "ts": alert.ts, "source": "execd",
                             **alert.fields()})
        timeout = self.settings.webhook_timeout_s
        try:
            async with asyncio.timeout(timeout):
                status = await self._post(url, body, timeout)
        except Exception as error:  # delivery is best effort; the audit event is the record
            # The URL is not logged: webhook URLs often carry a token, and aiohttp's errors
            # quote the URL they failed on (InvalidURL, ClientResponseError, …).
            reason = "timed out" if isinstance(error, TimeoutError) else _without_url(
                repr(error), url)
            self._log.warning(AuditEvent.ALERT, kind=alert.kind, delivery="failed",
                              error=f"webhook {reason}")
            return
        if status >= 300:
            self._log.warning(AuditEvent.ALERT, kind=alert.kind, delivery="failed",
                              error=f"webhook answered HTTP {status}")

    @property
    def pending_posts(self) -> int:
        return len(self._posts)

    async def aclose(self) -> None:
        """Stop posting; wait for pending POSTs, then cancel any still running.

        Each POST already gives up after ``webhook_timeout_s``; the wait here is that plus a
        short grace (`_CLOSE_GRACE_S`), so a timed-out POST can still log its failure and only
        a wedged one is cancelled.
        """
        await asyncio.sleep(0)          # let alerts scheduled with call_soon go out first
        self._closed = True
        posts = set(self._posts)
        if not posts:
            return
        _, late = await asyncio.wait(posts,
                                     timeout=self.settings.webhook_timeout_s + _CLOSE_GRACE_S)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    # ------------------------------------------------------------------ status
    def snapshot(self) -> dict[str, Any]:
        """For ``/v1/status`` under ``errors``: the window's counts by class, rates per
        minute, the last 20 errors (oldest first) and the alerts sent."""
        with self._lock:
            self._expire(self._clock.monotonic())
            minutes = self.settings.window_s / 60.0
            return {
                "window_s": self.settings.window_s,
                "threshold_per_min": self.settings.error_rate_per_min,
                "total": len(self._window),
                "rate_per_min": self._rate(),
                "counts": dict(sorted(self._counts.items())),
                "rates_per_min": {k: round(n / minutes, 3)
                                  for k, n in sorted(self._counts.items())},
                "recent": list(self._recent),
                "alerts_sent": self._alerts_sent,
                "alerts": [{"ts": a.ts, "kind": a.kind, "detail": a.detail}
                           for a in self._alerts],
            }

    def __repr__(self) -> str:
        return (f"ErrorMonitor(errors={len(self._window)}, rate_per_min={self._rate()}, "
                f"alerts_sent={self._alerts_sent}, pending_posts={len(self._posts)})")


def _message(event: Mapping[str, Any]) -> str:
    for key in ("message", "reason", "detail"):
        value = event.get(key)
        if value:
            return str(value)
    return ""


def _without_url(text: str, url: str) -> str:
    """``text`` with the webhook URL, and anything that looks like a URL's path or query
    after its host, replaced: only the scheme and host stay."""
    text = text.replace(url, "<webhook url>")
    return re.sub(r"(https?://[^/\s'\"?#]+)[^\s'\")]*", r"\1/…", text)
