"""Prometheus metrics for ``/metrics`` (SPEC §9), under the fixed names of that contract.

Three ways in, so the hot path never calls into this module by hand:

- counters (``execd_signals_total``, ``execd_orders_total``, ``execd_retries_total``) move in
  `Metrics.tap`, an audit-event listener (`LogHandle.add_tap`): the audit events are the record
  of what happened, and the counters are derived from them;
- gauges (limiter buckets, breaker states, queue depth) are read at scrape time from a
  `GaugeSource` the daemon supplies, so they are never stale and cost nothing between scrapes;
- histograms: `LoopLagProbe` observes ``execd_event_loop_lag_seconds``; the decision latency
  (signal dequeued → first order on the wire) is measured by the executor's order sender and
  handed to `Metrics.observe_decision` (``OrderSender.on_decision``).

Every `Metrics` owns its own `CollectorRegistry`: no process-global registry.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = [
    "BREAKER_STATES",
    "BucketGauge",
    "GaugeSnapshot",
    "GaugeSource",
    "LoopLagProbe",
    "Metrics",
    "gauges_from_status",
]


#: ``execd_breaker_state`` values by the state names of `Daemon.status()`.
BREAKER_STATES: Final = {"closed": 0, "half_open": 1, "open": 2}

_SIGNAL_STATES: Final = {"signal_done": "DONE", "signal_failed": "FAILED",
                         "signal_rejected": "REJECTED", "signal_expired": "EXPIRED",
                         "signal_cancelled": "CANCELED"}
_TRADING_STATES: Final = {"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}
_ORDER_OUTCOMES: Final = {"order_placed": "placed", "order_filled": "filled",
                          "order_rejected": "rejected", "order_unknown_outcome": "unknown"}
# Event-loop lag: a healthy loop is well under 1 ms; above 100 ms something blocks it.
_LAG_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                       2.5, 5.0)
# Decision latency: sub-millisecond in-process work up to seconds behind a throttled limiter.
_DECISION_BUCKETS: Final = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                            0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class BucketGauge:
    """One rate-limit bucket: its weight used in the current window and its limit."""

    name: str
    used: int
    limit: int


@dataclass(frozen=True, slots=True)
class GaugeSnapshot:
    """What the gauges show at one scrape. `breakers` maps group → 0 closed, 1 half-open,
    2 open; `queue_depth` is the signals queued or running in the bus."""

    buckets: Sequence[BucketGauge] = ()
    breakers: Mapping[str, int] = field(default_factory=dict)
    queue_depth: int = 0
    #: stream name → 1 connected, 0 not (``stream.enabled = false``: no series).
    streams: Mapping[str, int] = field(default_factory=dict)
    #: user-stream events received by kind, since start (a counter read at scrape).
    stream_events: Mapping[str, int] = field(default_factory=dict)
    unprotected_seconds: float = 0.0
    #: today's (UTC) realized PnL by symbol, from fills.
    realized_pnl: Mapping[str, float] = field(default_factory=dict)
    #: audit lines the console missed because it was behind (a counter read at scrape).
    console_dropped: int = 0
    #: 0 active, 1 reducing, 2 halted (SPEC §5.10); None before the risk gate exists.
    trading_state: int | None = None


GaugeSource = Callable[[], GaugeSnapshot]


def gauges_from_status(status: Mapping[str, Any]) -> GaugeSnapshot:
    """The gauges from a `Daemon.status()` dict (``limiter``, ``breakers``, ``queue``,
    ``streams``, ``protection``, ``realized_pnl_today``, ``audit``).

    Missing or ``None`` sections read as empty; an unknown breaker state is skipped.
    """
    buckets = tuple(BucketGauge(str(b["name"]), int(b["used"]), int(b["limit"]))
                    for b in status.get("limiter") or ())
    breakers = {str(group): BREAKER_STATES[info["state"]]
                for group, info in (status.get("breakers") or {}).items()
                if info.get("state") in BREAKER_STATES}
    queue = status.get("queue") or {}
    streams_info = status.get("streams") or {}
    streams = {name: int(state == "connected") for name, state in
               ((n, (streams_info.get(n) or {}).get("state")) for n in ("user", "market"))
               if state not in (None, "off")}
    protection = status.get("protection") or {}
    pnl = {str(symbol): float(value)
           for symbol, value in (status.get("realized_pnl_today") or {}).items()}
    audit = status.get("audit") or {}
    trading = (status.get("trading_state") or {}).get("state")
    return GaugeSnapshot(buckets, breakers, int(queue.get("pending", 0)), streams,
                         dict(streams_info.get("events") or {}),
                         float(protection.get("unprotected_seconds_total", 0.0)), pnl,
                         int(audit.get("console_dropped", 0)),
                         _TRADING_STATES.get(trading) if isinstance(trading, str) else None)


class _Registry(CollectorRegistry):
    """A registry without the ``*_created`` samples prometheus_client adds to counters and
    histograms: the exposition holds the SPEC §9 series and nothing else. (The library's own
    switch, ``disable_created_metrics()``, is process-global.)"""

    def collect(self) -> Iterator[Metric]:
        for metric in super().collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


class _GaugeCollector:
    """A custom collector: calls the gauge source at each scrape (prometheus_client calls
    `collect` from the scraping thread or task; the source must be cheap and not block)."""

    def __init__(self, source: GaugeSource | None) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return list(self._families(GaugeSnapshot()))

    def collect(self) -> Iterator[Metric]:
        snapshot = self.source() if self.source is not None else GaugeSnapshot()
        yield from self._families(snapshot)

    @staticmethod
    def _families(snapshot: GaugeSnapshot) -> Iterator[Metric]:
        used = GaugeMetricFamily("execd_limiter_used",
                                 "Weight used in the current window of a rate-limit bucket",
                                 labels=["bucket"])
        limit = GaugeMetricFamily("execd_limiter_limit",
                                  "The exchange's limit of a rate-limit bucket per window",
                                  labels=["bucket"])
        for bucket in snapshot.buckets:
            used.add_metric([bucket.name], bucket.used)
            limit.add_metric([bucket.name], bucket.limit)
        breakers = GaugeMetricFamily("execd_breaker_state",
                                     "Circuit breaker state: 0 closed, 1 half-open, 2 open",
                                     labels=["group"])
        for group, state in sorted(snapshot.breakers.items()):
            breakers.add_metric([group], state)
        depth = GaugeMetricFamily("execd_queue_depth", "Signals queued or running in the bus",
                                  value=snapshot.queue_depth)
        connected = GaugeMetricFamily("execd_stream_connected",
                                      "Whether a stream is connected (1) or not (0)",
                                      labels=["stream"])
        for name, value in sorted(snapshot.streams.items()):
            connected.add_metric([name], value)
        events = CounterMetricFamily("execd_stream_events",
                                     "User-data stream events received, by kind",
                                     labels=["event"])
        for name, count in sorted(snapshot.stream_events.items()):
            events.add_metric([name], count)
        naked = CounterMetricFamily("execd_unprotected_seconds",
                                    "Seconds a position execd protects spent without its stop",
                                    value=snapshot.unprotected_seconds)
        pnl = GaugeMetricFamily("execd_realized_pnl",
                                "Realized PnL today (UTC) by symbol, from fills",
                                labels=["symbol"])
        for symbol, amount in sorted(snapshot.realized_pnl.items()):
            pnl.add_metric([symbol], amount)
        console = CounterMetricFamily("execd_console_dropped",
                                      "Audit lines the console missed because it was behind "
                                      "(the audit files have them)",
                                      value=snapshot.console_dropped)
        trading = GaugeMetricFamily("execd_trading_state",
                                    "Trading state: 0 active, 1 reducing, 2 halted")
        if snapshot.trading_state is not None:
            trading.add_metric([], snapshot.trading_state)
        yield from (used, limit, breakers, depth, connected, events, naked, pnl, console,
                    trading)


class Metrics:
    """The SPEC §9 series in a registry of their own.

    `tap` is an `EventTap` (register it with `LogHandle.add_tap`); `gauges` is read at every
    scrape and may be set later (`set_gauge_source`), once the daemon has built what it reads.
    All durations are in seconds.
    """

    def __init__(self, gauges: GaugeSource | None = None) -> None:
        self.registry: CollectorRegistry = _Registry()
        self._signals = Counter("execd_signals", "Signals that reached a final state",
                                ["state"], registry=self.registry)
        self._orders = Counter("execd_orders", "Exchange orders by leg and outcome",
                               ["leg", "outcome"], registry=self.registry)
        self._retries = Counter("execd_retries", "Retried exchange calls by operation",
                                ["operation"], registry=self.registry)
        self._breaker_opens = Counter("execd_breaker_opens", "Times a circuit breaker opened",
                                      ["group"], registry=self.registry)
        self._rate_limited = Counter("execd_rate_limited",
                                     "Requests the exchange refused for a rate limit (429/418)",
                                     ["bucket"], registry=self.registry)
        self.loop_lag = Histogram("execd_event_loop_lag_seconds",
                                  "How late the event loop woke a timer",
                                  buckets=_LAG_BUCKETS, registry=self.registry)
        self.decision_latency = Histogram(
            "execd_decision_latency_seconds",
            "From a signal leaving the queue to its first order on the wire",
            buckets=_DECISION_BUCKETS, registry=self.registry)
        self._gauges = _GaugeCollector(gauges)
        self.registry.register(self._gauges)

    def set_gauge_source(self, gauges: GaugeSource | None) -> None:
        self._gauges.source = gauges

    def tap(self, event: Mapping[str, Any]) -> None:
        """Count a final signal state, an order outcome, a retry, a breaker opening or a
        rate-limit refusal; other events pass."""
        name = event.get("event")
        if name in _SIGNAL_STATES:
            # By event name, not the ``state`` field: the bus reports an internal failure as
            # ``signal_failed`` with the journal's (non-final) state, and the label set stays
            # the four final states.
            self._signals.labels(_SIGNAL_STATES[name]).inc()
        elif name in _ORDER_OUTCOMES and event.get("source") != "stream":
            # the stream's order_filled reports the fill's figures of an order already
            # counted from its REST answer
            self._orders.labels(str(event.get("leg") or "unknown"), _ORDER_OUTCOMES[name]).inc()
        elif name == "retry_attempt":
            self._retries.labels(str(event.get("operation") or "unknown")).inc()
        elif name == "breaker_opened":
            self._breaker_opens.labels(str(event.get("group") or "unknown")).inc()
        elif name in ("rate_limit", "ip_banned"):
            buckets = event.get("buckets") or ["ip_ban" if name == "ip_banned" else "unknown"]
            for bucket in buckets if isinstance(buckets, list) else [buckets]:
                self._rate_limited.labels(str(bucket)).inc()

    def observe_decision(self, seconds: float) -> None:
        """Record one decision latency (signal dequeued → first order on the wire)."""
        self.decision_latency.observe(max(0.0, seconds))

    def __repr__(self) -> str:
        return f"Metrics(gauges={self._gauges.source!r})"


class LoopLagProbe:
    """Measures event-loop lag: sleeps `interval_s` on the loop and records how late it woke.

    Each overshoot (seconds, ≥ 0) goes to `observe` (``Metrics.loop_lag.observe``) and into the
    last `samples` kept for `statistics()`. `sleep` and `now` default to ``asyncio.sleep`` and
    ``time.perf_counter``: this probe measures the real loop, so it does not use the injected
    `Clock` (tests pass fakes).
    """

    def __init__(self, observe: Callable[[float], None], *, interval_s: float = 0.1,
                 samples: int = 600,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 now: Callable[[], float] = time.perf_counter) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self.interval_s = interval_s
        self._observe = observe
        self._samples: deque[float] = deque(maxlen=samples)
        self._sleep = sleep
        self._now = now

    async def run(self) -> None:
        """Measure until cancelled."""
        while True:
            start = self._now()
            await self._sleep(self.interval_s)
            lag = max(0.0, self._now() - start - self.interval_s)
            self._samples.append(lag)
            self._observe(lag)

    def quantile(self, q: float) -> float:
        """The `q` quantile (0..1, nearest rank) of the kept samples; 0.0 before any."""
        if not self._samples:
            return 0.0
        ordered = sorted(self._samples)
        rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return ordered[rank]

    def p50(self) -> float:
        return self.quantile(0.50)

    def p99(self) -> float:
        return self.quantile(0.99)

    def statistics(self) -> dict[str, float | int]:
        """For ``/v1/status``: sample count, last, p50, p99 and max lag in seconds."""
        return {"samples": len(self._samples),
                "last_s": self._samples[-1] if self._samples else 0.0,
                "p50_s": self.p50(), "p99_s": self.p99(),
                "max_s": max(self._samples, default=0.0)}

    def __repr__(self) -> str:
        return (f"LoopLagProbe(interval_s={self.interval_s}, samples={len(self._samples)}, "
                f"p99={self.p99():.6f})")
