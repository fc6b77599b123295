"""The daemon's lifecycle in-process: start-up wiring, audit events, orderly shutdown."""

from __future__ import annotations

import gc
import io
import threading
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from app.config import ConfigError, Settings, load_settings
from app.daemon import READY_PREFIX, Daemon
from app.errors import TransientError
from app.sim import SimServer
from app.sim.config import Credentials, SimConfig

API_SECRET = "Zx8Yw7Vu6Ts5Rq4Po3Nm2Lk1"


@pytest.fixture(autouse=True)
def _clean_structlog() -> Iterator[None]:
    """The daemon configures structlog globally: reset it after each test."""
    yield
    structlog.reset_defaults()


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    """The embedded simulator accepts `API_SECRET` (start-up signs a call with it)."""
    env = {"BINANCE_API_SECRET": API_SECRET}
    sim = tmp_path / "sim-credentials.toml"
    sim.write_text(f'[credentials]\napi_secret = "{API_SECRET}"\n', encoding="utf-8")
    base = {"audit.log_dir": str(tmp_path / "audit"), "audit.console": False,
            "journal.path": str(tmp_path / "data" / "journal.sqlite3"), "api.port": 0,
            "exchange.sim_config": str(sim)}
    return load_settings(overrides=base | overrides, environ=env)


def _events(tmp_path: Path) -> list[dict[str, Any]]:
    files = sorted((tmp_path / "audit").glob("audit-*.jsonl"))
    return [orjson.loads(line) for f in files for line in f.read_bytes().splitlines()]


def _event(tmp_path: Path, name: str) -> dict[str, Any]:
    return next(e for e in _events(tmp_path) if e["event"] == name)


async def test_lifecycle_is_audited_in_order(tmp_path: Path) -> None:
    """Start and stop emit daemon_started, daemon_stopping and daemon_stopped, in that order."""
    async with Daemon(_settings(tmp_path), out=io.StringIO()) as daemon:
        daemon.request_stop("test")
        await daemon.serve()
    events = [e for e in _events(tmp_path) if e["event"].startswith("daemon_")]
    assert [e["event"] for e in events] == ["daemon_started", "daemon_stopping", "daemon_stopped"]
    assert events[1]["reason"] == "test"


async def test_start_up_objects_are_frozen_while_it_runs_and_thawed_after(
        tmp_path: Path) -> None:
    """Once started, what start-up built is in the collector's permanent generation (no full
    collection scans it: app/runtime.py); once closed, it is the collector's again."""
    assert gc.get_freeze_count() == 0
    async with Daemon(_settings(tmp_path), out=io.StringIO()) as daemon:
        daemon.request_stop()
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0


async def test_start_connects_the_gateway(tmp_path: Path) -> None:
    """Before daemon_started the gateway syncs time and loads exchangeInfo and the limits."""
    async with Daemon(_settings(tmp_path), out=io.StringIO()) as daemon:
        daemon.request_stop()
        assert daemon.exchange is not None
        assert {b.name for b in daemon.exchange.buckets} == {"weight:1m", "orders:10s",
                                                              "orders:1m"}
    names = [e["event"] for e in _events(tmp_path)]
    assert names.index("time_synced") < names.index("daemon_started")
    assert names.index("exchange_info_refreshed") < names.index("daemon_started")


async def test_sim_mode_starts_the_embedded_simulator(tmp_path: Path) -> None:
    """Without an exchange URL, sim mode serves a simulator on a loopback port and says so."""
    out = io.StringIO()
    async with Daemon(_settings(tmp_path), out=out) as daemon:
        daemon.request_stop()
        await daemon.serve()
    started = _event(tmp_path, "daemon_started")
    assert started["embedded_sim"] is True
    assert started["exchange_url"].startswith("http://127.0.0.1:")
    assert out.getvalue().startswith(f"{READY_PREFIX} mode sim, exchange http://127.0.0.1:")
    assert started["log_file"] in out.getvalue()


async def test_exchange_url_replaces_the_embedded_simulator(tmp_path: Path) -> None:
    """An explicit exchange URL is used as is; no simulator is started."""
    keys = Credentials(api_secret=API_SECRET)
    async with SimServer(replace(SimConfig(), credentials=keys)) as sim, Daemon(
        _settings(tmp_path), exchange_url=sim.url, out=io.StringIO()
    ) as daemon:
        daemon.request_stop()
    started = _event(tmp_path, "daemon_started")
    assert (started["exchange_url"], started["embedded_sim"]) == (sim.url, False)


async def test_unreachable_exchange_fails_start_up(tmp_path: Path) -> None:
    """A URL nobody answers on fails start-up with a classified error, logs closed."""
    with pytest.raises(TransientError, match="connection failed"):
        async with Daemon(_settings(tmp_path, **{"retry.max_retries": 0}),
                          exchange_url="http://127.0.0.1:9", out=io.StringIO()):
            pass
    assert not any(t.name == "execd-audit-writer" for t in threading.enumerate())


async def test_secrets_stay_out_of_the_audit_log(tmp_path: Path) -> None:
    """The configured secret never appears in the daemon's audit output."""
    async with Daemon(_settings(tmp_path), out=io.StringIO()) as daemon:
        daemon.request_stop()
    data = b"".join(p.read_bytes() for p in (tmp_path / "audit").iterdir())
    assert API_SECRET.encode() not in data


async def test_an_error_while_serving_is_audited_and_raised(tmp_path: Path) -> None:
    """An exception inside the daemon's block is logged with daemon_stopping, then re-raised."""
    with pytest.raises(RuntimeError, match="worker crashed"):
        async with Daemon(_settings(tmp_path), out=io.StringIO()):
            raise RuntimeError("worker crashed")
    stopping = _event(tmp_path, "daemon_stopping")
    assert stopping["level"] == "error"
    assert "worker crashed" in stopping["exception"]


async def test_failed_start_closes_what_was_started(tmp_path: Path) -> None:
    """A bad simulator config fails start-up with ConfigError and leaves no writer thread."""
    bad = tmp_path / "sim.toml"
    bad.write_text('[limits]\nrequest_weight = "many"\n')
    settings = _settings(tmp_path, **{"exchange.sim_config": str(bad)})
    with pytest.raises(ConfigError, match=r"exchange\.sim_config"):
        async with Daemon(settings, out=io.StringIO()):
            pass
    assert not any(t.name == "execd-audit-writer" for t in threading.enumerate())


async def test_status_shows_every_position_its_protection_the_streams_and_pnl(
        tmp_path: Path) -> None:
    """/v1/status (what `execd status` and the monitor show): every non-zero position on the
    account — one execd opened, with its stop and take-profit, and one made in the web UI,
    marked foreign — the streams connected, and today's realized PnL from fills; the metrics
    carry the stream and protection series."""
    import asyncio

    import aiohttp

    from app.config import resolve_api_token

    settings = load_settings(overrides={     # the embedded simulator's own keys
        "audit.log_dir": str(tmp_path / "audit"), "audit.console": False,
        "journal.path": str(tmp_path / "data" / "journal.sqlite3"), "api.port": 0}, environ={})
    async with Daemon(settings, out=io.StringIO()) as daemon:
        serving = asyncio.create_task(daemon.serve())
        assert daemon.api is not None
        assert daemon.exchange_url is not None
        auth = {"Authorization": f"Bearer {resolve_api_token(settings, create=False)}"}
        entry = {"id": "status-entry", "symbol": "BTCUSDT", "type": "LONG_ENTRY",
                 "quantity": "0.010", "stop_loss": "60000.0", "take_profit": "70000.0"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{daemon.api.url}/v1/signals", headers=auth,
                                 data=orjson.dumps(entry)) as resp:
                assert resp.status == 202, await resp.text()
            for body in ({"symbol": "ETHUSDT", "side": "BUY", "qty": "0.100"},
                         {"symbol": "SOLUSDT", "side": "BUY", "qty": "2"},
                         {"symbol": "SOLUSDT", "side": "SELL", "qty": "1"}):
                async with http.post(f"{daemon.exchange_url}/_sim/trade", json=body) as resp:
                    assert resp.status == 200, await resp.text()
            status: dict[str, Any] = {}
            for _ in range(100):
                async with http.get(f"{daemon.api.url}/v1/status", headers=auth) as resp:
                    status = await resp.json()
                positions = {p["symbol"]: p for p in status["positions"]}
                if (set(positions) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
                        and positions["BTCUSDT"]["stop_loss"]        # placed one after the other
                        and positions["BTCUSDT"]["take_profit"] and status["realized_pnl_today"]):
                    break
                await asyncio.sleep(0.05)
            async with http.get(f"{daemon.api.url}/metrics") as resp:
                metrics = await resp.text()
        daemon.request_stop("test")
        await serving
    positions = {p["symbol"]: p for p in status["positions"]}
    assert positions["BTCUSDT"]["amount"] == "0.010"
    assert positions["BTCUSDT"]["foreign"] is False
    assert positions["BTCUSDT"]["stop_loss"] == "60000.00"
    assert positions["BTCUSDT"]["take_profit"] == "70000.00"
    assert positions["ETHUSDT"]["foreign"] is True
    assert positions["ETHUSDT"]["stop_loss"] is None
    assert status["streams"]["user"]["state"] == "connected"
    assert status["streams"]["market"]["state"] == "connected"
    pnl = {symbol: Decimal(v) for symbol, v in status["realized_pnl_today"].items()}
    assert pnl["SOLUSDT"] != 0                           # the only closing trade
    assert pnl["BTCUSDT"] == pnl["ETHUSDT"] == 0         # opening trades realize nothing
    assert status["protection"]["unprotected_seconds_total"] == 0
    assert 'execd_stream_connected{stream="user"} 1.0' in metrics
    assert "execd_unprotected_seconds_total 0.0" in metrics
    assert 'execd_realized_pnl{symbol="SOLUSDT"}' in metrics


async def test_a_failed_fsync_is_seen_by_healthz_status_and_the_status_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal's fsync fails (EIO) under a POST: 503 ``journal_failed``, and from then on
    ``/healthz`` answers 503 ``journal_failed``, ``/v1/status`` has ``journal.acknowledging``
    false, systemd's status line ends ``journal=failed``, one ``journal_failed`` alert; the
    daemon goes on serving and stops cleanly."""
    import asyncio
    import os

    import aiohttp

    from app import journal_sync
    from app.config import resolve_api_token

    real, failing = os.fsync, [OSError(5, "Input/output error")]

    def fsync(fd: int) -> None:
        if failing:
            raise failing.pop()
        real(fd)

    settings = _settings(tmp_path)
    async with Daemon(settings, out=io.StringIO()) as daemon:
        serving = asyncio.create_task(daemon.serve())
        assert daemon.api is not None
        auth = {"Authorization": f"Bearer {resolve_api_token(settings, create=False)}"}
        assert not daemon.summary().endswith("journal=failed")
        monkeypatch.setattr(journal_sync.os, "fsync", fsync)
        entry = {"id": "eio", "symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{daemon.api.url}/v1/signals", headers=auth,
                                 data=orjson.dumps(entry)) as resp:
                assert resp.status == 503
                assert (await resp.json())["error"] == "journal_failed"
            async with http.get(f"{daemon.api.url}/healthz") as resp:
                assert resp.status == 503
                assert (await resp.json())["status"] == "journal_failed"
            async with http.get(f"{daemon.api.url}/v1/status", headers=auth) as resp:
                journal = (await resp.json())["journal"]
        assert journal["acknowledging"] is False
        assert journal["broken"] == "OSError(5, 'Input/output error')"
        assert daemon.summary().endswith(" journal=failed")
        assert not serving.done()
        daemon.request_stop("test")
        await serving
    assert [e["kind"] for e in _events(tmp_path) if e["event"] == "alert"] == ["journal_failed"]
    assert _event(tmp_path, "daemon_stopped")
