"""The simulator as the integration tests run it: a quiet configuration and a client of its
``/_sim/`` admin API. The fixtures built on them (``sim_config``, ``sim``, ``admin``) are in
``tests/conftest.py``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp
import orjson

from app.sim import SimConfig


def quiet_sim_config(**limits: int) -> SimConfig:
    """The default configuration with a frozen mark (no random walk, no ticks); keyword
    arguments override ``[limits]`` entries."""
    base = SimConfig()
    return replace(base, market=replace(base.market, volatility_per_minute=0.0,
                                        tick_interval_s=0.0),
                   limits=replace(base.limits, **limits))


class Admin:
    """The simulator's /_sim/ admin API."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def get(self, path: str) -> Any:
        async with self.session.get(f"{self.base}/_sim/{path}") as resp:
            return orjson.loads(await resp.read())

    async def post(self, path: str, body: object) -> Any:
        async with self.session.post(f"{self.base}/_sim/{path}", data=orjson.dumps(body),
                                     headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200, await resp.text()
            return orjson.loads(await resp.read())

    async def orders(self, kind: str | None = None) -> list[dict[str, Any]]:
        """``/_sim/orders``, optionally only one ``kind`` (order, algo, triggered)."""
        rows: list[dict[str, Any]] = await self.get("orders")
        return [r for r in rows if kind is None or r["kind"] == kind]

    async def position(self, symbol: str) -> str:
        """The position amount of ``symbol`` as the simulator shows it ("0" when flat)."""
        state = await self.get("state")
        return next((p["positionAmt"] for p in state["positions"] if p["symbol"] == symbol),
                    "0")
