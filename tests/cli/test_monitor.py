"""``execd monitor``: the rich dashboard of a status document, and the command around it."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from rich.console import Console

from app.cli.client import ControlClient
from app.cli.monitor import render, run_monitor
from app.config import Settings
from app.intake.bus import BusSnapshot
from app.resilience.limiter import BucketStats
from tests.loopback import serving


def bucket(name: str, used: int, limit: int) -> dict[str, Any]:
    stats = BucketStats(name=name, limit=limit, budget=limit * 9 // 10, window_start=0.0,
                        used=used, own=used, server=used, reserve=0, paused_until=0.0,
                        waiting=0, straddled=0)
    return dataclasses.asdict(stats)


STATUS: dict[str, Any] = {
    "version": "0.1.0",
    "pid": 4242,
    "state": "open",
    "uptime_s": 12.5,
    "exchange": {"mode": "sim", "base_url": "http://127.0.0.1:1234"},
    "queue": dataclasses.asdict(BusSnapshot(capacity=100, pending=3, running=2,
                                            max_concurrency=8,
                                            lanes={"BTCUSDT": 2, "ETHUSDT": 1})),
    "symbols": ["BTCUSDT", "ETHUSDT"],
    "limiter": [bucket("REQUEST_WEIGHT:1m", 600, 2400), bucket("ORDERS:10s", 290, 300)],
    "breakers": {"orders": {"state": "open", "retry_after": 4.2},
                 "account": {"state": "half_open", "retry_after": 0.0},
                 "market_data": {"state": "closed", "retry_after": 0.0}},
    "recovery": {},
    "errors": {
        "window_s": 60.0, "threshold_per_min": 10.0, "total": 7, "rate_per_min": 7.0,
        "counts": {"api_error:TransientError": 5, "order_rejected": 2},
        "rates_per_min": {"api_error:TransientError": 5.0, "order_rejected": 2.0},
        "recent": [{"ts": "2026-11-23T19:05:01.123Z", "event": "order_rejected",
                    "error_class": "OrderRejected", "message": "Margin is insufficient"}],
        "alerts_sent": 1,
        "alerts": [{"ts": "2026-11-23T19:04:00.000Z", "kind": "breaker_open",
                    "detail": "breaker orders opened"}],
    },
}
POSITIONS = [{"symbol": "BTCUSDT", "amount": "0.010", "side": "LONG", "entry_price": "65000.0",
              "mark_price": "65100.0", "unrealized_pnl": "1.00"},
             {"symbol": "ETHUSDT", "amount": "0"}]


def text_of(status: dict[str, Any]) -> str:
    console = Console(record=True, width=120)
    console.print(render(status))
    return console.export_text()


def test_limiter_bars_show_each_bucket_and_its_use() -> None:
    """Every limiter bucket is listed with used/limit."""
    text = text_of(STATUS)
    assert "REQUEST_WEIGHT:1m" in text
    assert "600/2400" in text
    assert "ORDERS:10s" in text
    assert "290/300" in text


def test_breakers_show_their_state() -> None:
    """Each breaker group appears with its state and, when open, its retry time."""
    text = text_of(STATUS)
    for group, state in (("orders", "open"), ("account", "half_open"),
                         ("market_data", "closed")):
        line = next(line for line in text.splitlines() if group in line)
        assert state in line
    assert "4.2 s" in text


def test_error_counts_rate_and_recent_errors_are_shown() -> None:
    """The monitor's counts by class, its rate and the recent errors are on the dashboard."""
    text = text_of(STATUS)
    assert "api_error:TransientError" in text
    assert "order_rejected" in text
    assert "7 errors in 60.0 s" in text
    assert "7.0 /min" in text
    assert "Margin is insufficient" in text
    assert "breaker orders opened" in text


def test_queue_and_lanes_are_shown() -> None:
    """Pending/capacity, running/concurrency and each lane's depth appear."""
    text = text_of(STATUS)
    assert "3 / 100" in text
    assert "2 / 8" in text
    assert "BTCUSDT 2" in text
    assert "ETHUSDT 1" in text


def test_positions_appear_only_when_present() -> None:
    """A status with positions gets a positions panel; one without does not."""
    assert "positions" not in text_of(STATUS)
    text = text_of({**STATUS, "positions": POSITIONS})
    assert "positions" in text
    assert "65100.0" in text
    assert next(line for line in text.splitlines() if "ETHUSDT" in line and "flat" in line)


def test_a_starting_daemon_renders() -> None:
    """A status with no queue, limiter, breakers or errors yet still renders."""
    text = text_of({"state": "starting", "queue": None, "limiter": [], "breakers": {}})
    assert "starting" in text
    assert "no error monitor data" in text


# ---------------------------------------------------------------------- the command
@pytest.fixture
async def api() -> AsyncIterator[str]:
    """A stand-in control API on 127.0.0.1 answering /v1/status and /v1/positions; the
    second and later status answers carry uptime_s 99.0."""
    answered = 0

    async def status(request: web.Request) -> web.Response:
        nonlocal answered
        if request.headers.get("Authorization") != "Bearer tok":
            return web.json_response({"error": "unauthorized"}, status=401)
        answered += 1
        return web.json_response(STATUS if answered == 1 else {**STATUS, "uptime_s": 99.0})

    async def position(request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        return web.json_response(next(p for p in POSITIONS if p["symbol"] == symbol))

    app = web.Application()
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/positions/{symbol}", position)
    async with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


def monitor_args(**values: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"once": True, "interval": 1.0, "export": None, **values})


async def test_once_prints_one_snapshot_and_exits_zero(api: str) -> None:
    """--once renders the fetched status, positions included, and returns 0."""
    console = Console(record=True, width=120)
    code = await asyncio.to_thread(run_monitor, monitor_args(), ControlClient(api, "tok"),
                                   Settings(), console=console)
    text = console.export_text()
    assert code == 0
    assert "ORDERS:10s" in text
    assert "65000.0" in text


async def test_export_writes_the_status_with_positions(api: str, tmp_path: Path) -> None:
    """--export FILE writes /v1/status's JSON plus the positions."""
    target = tmp_path / "snapshot.json"
    code = await asyncio.to_thread(run_monitor, monitor_args(export=target),
                                   ControlClient(api, "tok"), Settings(),
                                   console=Console(record=True, width=120))
    assert code == 0
    assert orjson.loads(target.read_bytes()) == {**STATUS, "positions": POSITIONS}


async def test_an_unauthorized_status_exits_one(api: str, capsys: pytest.CaptureFixture[str]
                                                ) -> None:
    """A 401 from the control API is reported on stderr with exit status 1."""
    code = await asyncio.to_thread(run_monitor, monitor_args(), ControlClient(api, "wrong"),
                                   Settings(), console=Console(record=True, width=120))
    assert code == 1
    assert "HTTP 401" in capsys.readouterr().err


async def test_interval_refreshes_until_ctrl_c_and_exits_zero(api: str) -> None:
    """Live mode sleeps --interval between fetches, redraws, and Ctrl-C returns 0."""
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt

    console = Console(record=True, width=120)
    code = await asyncio.to_thread(run_monitor, monitor_args(once=False, interval=0.5),
                                   ControlClient(api, "tok"), Settings(), console=console,
                                   sleep=sleep)
    assert code == 0
    assert naps == [0.5, 0.5]
    assert "up 99.0 s" in console.export_text()


def test_the_trading_state_comes_first_with_its_reason() -> None:
    halted = {**STATUS, "trading_state": {
        "state": "HALTED", "reason": "desk says stop", "since": "2026-12-03T06:40:00.123Z",
        "by": "operator", "daily_loss": "12.50", "orders_last_minute": 3}}
    first = text_of(halted).splitlines()[0]
    assert first.split()[0] == "HALTED"
    assert "desk says stop" in first
    assert "daily loss 12.50" in first
    console = Console(record=True, width=120, color_system="truecolor", force_terminal=True)
    console.print(render(halted))
    assert "\x1b[" in console.export_text(styles=True)     # in colour


def test_a_journal_that_acknowledges_nothing_more_is_said_second() -> None:
    """After a failed fsync (``/v1/status`` ``journal.broken``) the dashboard and ``execd
    status`` say so right under the trading state, with what to do; a journal that works is
    not mentioned."""
    journal = {"path": "data/journal.sqlite3", "synchronous": "NORMAL"}
    working = {**STATUS, "journal": {**journal, "acknowledging": True, "broken": None}}
    assert "JOURNAL" not in text_of(working)
    broken = {**STATUS, "trading_state": {"state": "ACTIVE"}, "journal": {
        **journal, "acknowledging": False, "broken": "OSError(5, 'Input/output error')"}}
    lines = text_of(broken).splitlines()
    assert lines[0].split()[0] == "ACTIVE"
    assert lines[1].strip() == ("JOURNAL FAILED: OSError(5, 'Input/output error'): no signal is "
                                "accepted; check the disk, then restart execd")
