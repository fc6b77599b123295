"""Alerts end to end: an injected simulator outage trips a breaker → one `alert` event and one
webhook POST to a local receiver; a second outage within the cooldown alerts nobody."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from aiohttp import web

from app.config import load_settings
from app.daemon import Daemon
from app.errors import ExchangeError
from tests.daemon_process import audit_events


@pytest.fixture(autouse=True)
def _clean_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


class Receiver:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.received = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append(orjson.loads(await request.read()))
        self.received.set()
        return web.Response(status=204)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def outage(base: str, seconds: float) -> None:
    plan = {"seed": 1, "rules": [], "outages": [{"start_s": 0, "duration_s": seconds}]}
    async with aiohttp.ClientSession() as session, session.post(
            f"{base}/_sim/faults", json=plan) as resp:
        assert resp.status == 200


async def hammer(daemon: Daemon, calls: int) -> None:
    assert daemon.exchange is not None
    for _ in range(calls):
        with contextlib.suppress(ExchangeError):
            await daemon.exchange.gateway.get_position("BTCUSDT")


@pytest.mark.timeout(60)
async def test_outage_trips_breaker_one_alert_one_post_then_cooldown(tmp_path: Path) -> None:
    async with Receiver() as receiver:
        settings = load_settings(overrides={
            "audit.log_dir": str(tmp_path / "audit"), "audit.console": False,
            "journal.path": str(tmp_path / "data" / "journal.sqlite3"), "api.port": 0,
            "breaker.failure_threshold": 3, "breaker.recovery_timeout_s": 0.5,
            "retry.max_retries": 0, "monitor.webhook_url": receiver.url,
            "monitor.cooldown_s": 300, "monitor.error_rate_per_min": 1000,
        }, environ={})
        async with Daemon(settings, out=io.StringIO()) as daemon:
            serving = asyncio.create_task(daemon.serve())
            assert daemon.exchange_url is not None
            await outage(daemon.exchange_url, 1.0)
            await hammer(daemon, 5)
            await asyncio.wait_for(receiver.received.wait(), 10)
            await asyncio.sleep(1.5)                 # the outage ends, probes close it
            await hammer(daemon, 3)
            await outage(daemon.exchange_url, 1.0)   # again, within the cooldown
            await hammer(daemon, 5)
            await asyncio.sleep(0.5)
            status = daemon.status()
            daemon.request_stop("test")
            await serving
    alerts = [e for e in audit_events(tmp_path) if e["event"] == "alert"]
    opened = [e for e in audit_events(tmp_path) if e["event"] == "breaker_opened"]
    assert len(opened) >= 2                          # it did open twice
    assert [a["kind"] for a in alerts] == ["breaker_open"]
    assert len(receiver.posts) == 1
    assert receiver.posts[0]["kind"] == "breaker_open"
    errors: Any = status["errors"]
    assert errors["alerts_sent"] == 1
