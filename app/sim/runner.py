"""Running the simulator: in-process (``SimServer``) or standalone (``execd sim``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from aiohttp import web

from app.sim.admin import admin_routes
from app.sim.config import SimConfig, SimConfigError, load_sim_config
from app.sim.faults import FaultPlan, FaultPlanError, load_fault_plan
from app.sim.server import Simulator


class SimServer:
    """The simulator on a loopback port, as an async context manager.

    ``port=0`` picks a free port; ``url`` is then ``http://127.0.0.1:<port>`` (no ``/fapi``).
    ``clock`` (epoch seconds) drives windows, timestamps and the mark walk; tests inject one.
    """

    def __init__(self, config: SimConfig | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, faults: FaultPlan | None = None, seed: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.sim = Simulator(config or SimConfig(), clock=clock, faults=faults, seed=seed)
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.add_routes(admin_routes(self.sim))
        app.router.add_get("/private/ws", self.sim.user.handle)
        app.router.add_get("/private/stream", self.sim.user.handle_combined)
        app.router.add_get("/public/ws", self.sim.market.handle_public)
        app.router.add_get("/public/ws/{stream}", self.sim.market.handle_public)
        app.router.add_get("/public/stream", self.sim.market.handle_public)
        app.router.add_get("/market/ws", self.sim.market.handle_raw)
        app.router.add_get("/market/ws/{stream}", self.sim.market.handle_raw)
        app.router.add_get("/market/stream", self.sim.market.handle_combined)
        app.router.add_route("*", "/{tail:.*}", self.sim.handle)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        self._tasks = [asyncio.create_task(self._tick_forever(), name="sim-mark-walk"),
                       asyncio.create_task(self.sim.market.run(), name="sim-mark-streams")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._close_streams()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _close_streams(self) -> None:
        """Close every websocket and give them a moment to finish: aiohttp would otherwise
        wait for their handlers when it shuts down."""
        self.sim.drop_streams(0.0)
        for _ in range(40):
            if not any(self.sim.stream_counts().values()):
                return
            await asyncio.sleep(0.05)

    async def _tick_forever(self) -> None:
        interval = self.sim.config.market.tick_interval_s
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            self.sim.tick()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()


def run_standalone(*, host: str = "127.0.0.1", port: int = 8471,
                   config_paths: Sequence[Path] = (), faults_path: Path | None = None,
                   seed: int | None = None) -> int:
    """``execd sim``: serve until SIGINT/SIGTERM. Returns 0, or 2 for a bad config/plan."""
    try:
        config = load_sim_config(*config_paths)
        plan = load_fault_plan(faults_path) if faults_path is not None else None
    except (SimConfigError, FaultPlanError) as exc:
        print(f"sim config error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config, host, port, plan, seed))
    except OSError as exc:
        print(f"sim: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(config: SimConfig, host: str, port: int, plan: FaultPlan | None,
                 seed: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SimServer(config, host=host, port=port, faults=plan, seed=seed) as server:
        print(f"listening on {server.url}", flush=True)
        await stop.wait()
