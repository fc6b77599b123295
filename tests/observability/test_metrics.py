"""Prometheus metrics: the fixed series of SPEC §9, fed by audit events, gauges and probes."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
import structlog
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.clock import FakeClock
from app.domain import Leg
from app.observability.audit import AuditEvent
from app.observability.logging import configure_logging
from app.observability.metrics import (
    BucketGauge,
    GaugeSnapshot,
    LoopLagProbe,
    Metrics,
    gauges_from_status,
)
from app.resilience.limiter import BucketStats

FAMILIES = {
    "execd_signals": "counter",
    "execd_orders": "counter",
    "execd_retries": "counter",
    "execd_limiter_used": "gauge",
    "execd_limiter_limit": "gauge",
    "execd_breaker_state": "gauge",
    "execd_queue_depth": "gauge",
    "execd_stream_connected": "gauge",
    "execd_stream_events": "counter",
    "execd_unprotected_seconds": "counter",
    "execd_realized_pnl": "gauge",
    "execd_console_dropped": "counter",
    "execd_trading_state": "gauge",
    "execd_breaker_opens": "counter",
    "execd_rate_limited": "counter",
    "execd_event_loop_lag_seconds": "histogram",
    "execd_decision_latency_seconds": "histogram",
}


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed back: (name, sorted labels) → value."""
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return scrape(metrics).get((name, tuple(sorted(labels.items()))))


def test_exposition_parses_with_exactly_the_contract_families() -> None:
    """The text exposition parses and holds the nine SPEC §9 families with their types."""
    metrics = Metrics(lambda: GaugeSnapshot([BucketGauge("REQUEST_WEIGHT:1m", 10, 2400)],
                                            {"orders": 0}, 3))
    text = generate_latest(metrics.registry).decode()
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families == FAMILIES


def test_exposition_has_no_created_samples() -> None:
    """prometheus_client's *_created samples are left out of the exposition."""
    metrics = Metrics()
    metrics.tap({"event": "signal_done", "state": "DONE"})
    metrics.observe_decision(0.01)
    assert not [name for name, _ in scrape(metrics) if name.endswith("_created")]


def test_final_signal_events_count_by_state() -> None:
    """signal_done/failed/rejected/expired move execd_signals_total{state}."""
    metrics = Metrics()
    for name in ("signal_done", "signal_done", "signal_failed", "signal_rejected",
                 "signal_expired"):
        metrics.tap({"event": name, "state": name.removeprefix("signal_").upper()})
    metrics.tap({"event": "signal_received"})
    assert value(metrics, "execd_signals_total", state="DONE") == 2.0
    assert value(metrics, "execd_signals_total", state="FAILED") == 1.0
    assert value(metrics, "execd_signals_total", state="REJECTED") == 1.0
    assert value(metrics, "execd_signals_total", state="EXPIRED") == 1.0


def test_internal_failure_counts_as_failed_whatever_its_state_field() -> None:
    """The bus's signal_failed (state still RUNNING) is counted under FAILED."""
    metrics = Metrics()
    metrics.tap({"event": "signal_failed", "state": "RUNNING"})
    assert value(metrics, "execd_signals_total", state="FAILED") == 1.0
    assert value(metrics, "execd_signals_total", state="RUNNING") is None


def test_order_events_count_by_leg_and_outcome() -> None:
    """order_filled/placed/rejected/unknown_outcome move execd_orders_total{leg,outcome}."""
    metrics = Metrics()
    metrics.tap({"event": "order_filled", "leg": Leg.ENTRY, "state": "FILLED"})
    metrics.tap({"event": "order_placed", "leg": "S", "state": "NEW"})
    metrics.tap({"event": "order_rejected", "leg": "T"})
    metrics.tap({"event": "order_unknown_outcome", "leg": "E"})
    metrics.tap({"event": "order_submitted", "leg": "E"})
    metrics.tap({"event": "order_filled", "source": "stream", "executed_qty": "0.010"})
    assert value(metrics, "execd_orders_total", leg="E", outcome="filled") == 1.0
    assert value(metrics, "execd_orders_total", leg="unknown", outcome="filled") is None
    assert value(metrics, "execd_orders_total", leg="S", outcome="placed") == 1.0
    assert value(metrics, "execd_orders_total", leg="T", outcome="rejected") == 1.0
    assert value(metrics, "execd_orders_total", leg="E", outcome="unknown") == 1.0


def test_retry_attempts_count_by_operation() -> None:
    """retry_attempt moves execd_retries_total{operation}."""
    metrics = Metrics()
    metrics.tap({"event": "retry_attempt", "operation": "mark_price", "attempt": 1})
    metrics.tap({"event": "retry_attempt", "operation": "mark_price", "attempt": 2})
    assert value(metrics, "execd_retries_total", operation="mark_price") == 2.0


def test_counters_move_through_the_real_audit_pipeline(tmp_path: Path, clock: FakeClock) -> None:
    """As a LogHandle tap, the counters see emitted events with their bound leg."""
    metrics = Metrics()
    with configure_logging(tmp_path, "INFO", False, clock) as handle:
        handle.add_tap(metrics.tap)
        with structlog.contextvars.bound_contextvars(leg=Leg.STOP_LOSS):
            handle.logger.info(AuditEvent.ORDER_PLACED, exchange_id=7, state="NEW")
        handle.logger.info(AuditEvent.SIGNAL_DONE, state="DONE", reason="ok", intents=[])
    assert value(metrics, "execd_orders_total", leg="S", outcome="placed") == 1.0
    assert value(metrics, "execd_signals_total", state="DONE") == 1.0


def test_gauges_are_read_from_the_source_at_each_scrape() -> None:
    """Limiter, breaker and queue gauges show what the source returns when scraped."""
    current = GaugeSnapshot([BucketGauge("REQUEST_WEIGHT:1m", 120, 2400)],
                            {"orders": 0, "market_data": 2}, 4)
    metrics = Metrics(lambda: current)
    assert value(metrics, "execd_limiter_used", bucket="REQUEST_WEIGHT:1m") == 120.0
    assert value(metrics, "execd_limiter_limit", bucket="REQUEST_WEIGHT:1m") == 2400.0
    assert value(metrics, "execd_breaker_state", group="market_data") == 2.0
    assert value(metrics, "execd_queue_depth") == 4.0
    current = GaugeSnapshot([], {"orders": 1}, 0)
    assert value(metrics, "execd_breaker_state", group="orders") == 1.0
    assert value(metrics, "execd_queue_depth") == 0.0


def test_gauges_from_status_reads_the_daemon_status_shape() -> None:
    """gauges_from_status maps Daemon.status()'s limiter, breakers and queue."""
    bucket = BucketStats(name="ORDERS:10s", limit=300, budget=270, window_start=0.0, used=12,
                         own=12, server=10, reserve=30, paused_until=0.0, waiting=0,
                         straddled=0)
    status = {"limiter": [dataclasses.asdict(bucket)],
              "breakers": {"orders": {"state": "half_open", "retry_after": 0.0},
                           "account": {"state": "open", "retry_after": 3.5}},
              "queue": {"capacity": 100, "pending": 5, "running": 2, "max_concurrency": 8,
                        "lanes": {"BTCUSDT": 5}}}
    assert gauges_from_status(status) == GaugeSnapshot(
        (BucketGauge("ORDERS:10s", 12, 300),), {"orders": 1, "account": 2}, 5)


def test_console_drops_are_read_from_the_status_audit_section() -> None:
    """``audit.console_dropped`` of the status is ``execd_console_dropped_total``."""
    status = {"audit": {"written": 10, "dropped": 0, "write_errors": 0, "last_error": None,
                        "console_dropped": 7}}
    metrics = Metrics(lambda: gauges_from_status(status))
    assert value(metrics, "execd_console_dropped_total") == 7.0
    assert value(Metrics(), "execd_console_dropped_total") == 0.0


def test_gauges_from_a_starting_daemon_are_empty() -> None:
    """A status without queue, limiter or breakers gives empty gauges."""
    assert gauges_from_status({"queue": None, "limiter": [], "breakers": {}}) == GaugeSnapshot()


def test_observe_decision_fills_the_histogram() -> None:
    """observe_decision records one sample in execd_decision_latency_seconds."""
    metrics = Metrics()
    metrics.observe_decision(0.0004)
    assert value(metrics, "execd_decision_latency_seconds_count") == 1.0
    assert value(metrics, "execd_decision_latency_seconds_bucket", le="0.0005") == 1.0
    assert value(metrics, "execd_decision_latency_seconds_bucket", le="0.00025") == 0.0


async def test_loop_lag_probe_records_the_overshoot() -> None:
    """Each wake-up later than interval_s is observed as the overshoot, in seconds."""
    now = [0.0]
    lags = iter([0.002, 0.0, 0.05])
    metrics = Metrics()
    woke = asyncio.Event()

    async def sleep(seconds: float) -> None:
        lag = next(lags, None)
        if lag is None:
            woke.set()
            await asyncio.Event().wait()           # park until cancelled
        now[0] += seconds + (lag or 0.0)

    probe = LoopLagProbe(metrics.loop_lag.observe, interval_s=0.1, sleep=sleep,
                         now=lambda: now[0])
    task = asyncio.create_task(probe.run())
    await asyncio.wait_for(woke.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = probe.statistics()
    assert stats["samples"] == 3
    assert stats["max_s"] == pytest.approx(0.05)
    assert probe.p99() == pytest.approx(0.05)
    assert probe.p50() == pytest.approx(0.002)
    assert value(metrics, "execd_event_loop_lag_seconds_count") == 3.0


def test_loop_lag_probe_without_samples_reports_zero() -> None:
    """Before its first wake-up the probe reports no lag."""
    probe = LoopLagProbe(lambda _: None)
    assert probe.statistics() == {"samples": 0, "last_s": 0.0, "p50_s": 0.0, "p99_s": 0.0,
                                  "max_s": 0.0}
