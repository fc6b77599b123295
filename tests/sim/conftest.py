"""Fixtures for the simulator's tests: a fake server clock, the simulator on a loopback port,
a raw signed HTTP client independent of python-binance, and the real python-binance client."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from binance import AsyncClient

from app.sim import SimConfig, SimServer
from tests.simulator import quiet_sim_config as quiet_config

# 2026-11-23T12:00:00Z, aligned to every window length the tests use.
START = 1_795_435_200.0


class SimClock:
    """Settable epoch clock for the simulator; ``advance`` moves it forward."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    @property
    def ms(self) -> int:
        return int(self.now * 1000)


@dataclass
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def code(self) -> int | None:
        return self.body.get("code") if isinstance(self.body, dict) else None


class RawClient:
    """Signs exactly the bytes it sends, as Binance documents (query + body, HMAC-SHA256)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, clock: SimClock,
                 key: str = "sim-key", secret: str = "sim-secret") -> None:
        self.session = session
        self.base = base
        self.clock = clock
        self.key = key
        self.secret = secret

    def signature(self, payload: str) -> str:
        return hmac.new(self.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()

    async def send(self, method: str, path: str, *, query: str = "", body: str = "",
                   headers: Mapping[str, str] | None = None,
                   content_type: str = "application/x-www-form-urlencoded") -> Answer:
        url = f"{self.base}{path}" + (f"?{query}" if query else "")
        hdrs = {"X-MBX-APIKEY": self.key, **(headers or {})}
        if body:
            hdrs["Content-Type"] = content_type
        async with self.session.request(method, url, data=body.encode() if body else None,
                                        headers=hdrs) as resp:
            raw = await resp.read()
            try:
                parsed: Any = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = raw.decode(errors="replace")
            return Answer(resp.status, parsed, dict(resp.headers))

    async def signed(self, method: str, path: str, params: Mapping[str, object] | None = None,
                     *, in_body: bool | None = None, timestamp: int | None = None) -> Answer:
        """A SIGNED request: params + timestamp, signature last; GET in the query, else body."""
        items = dict(params or {})
        items.setdefault("timestamp", self.clock.ms if timestamp is None else timestamp)
        payload = urlencode({k: str(v) for k, v in items.items()})
        signed = f"{payload}&signature={self.signature(payload)}"
        use_body = method != "GET" if in_body is None else in_body
        if use_body:
            return await self.send(method, path, body=signed)
        return await self.send(method, path, query=signed)

    async def public(self, path: str, params: Mapping[str, object] | None = None) -> Answer:
        return await self.send("GET", path, query=urlencode(
            {k: str(v) for k, v in (params or {}).items()}))

    async def admin(self, method: str, path: str, body: object | None = None) -> Answer:
        async with self.session.request(
                method, f"{self.base}{path}",
                data=orjson.dumps(body) if body is not None else None,
                headers={"Content-Type": "application/json"} if body is not None else None
        ) as resp:
            return Answer(resp.status, orjson.loads(await resp.read()), dict(resp.headers))


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def sim_config() -> SimConfig:
    return quiet_config()


@pytest.fixture
async def server(sim_config: SimConfig, clock: SimClock) -> AsyncIterator[SimServer]:
    async with SimServer(sim_config, clock=clock) as srv:
        yield srv


@pytest.fixture
async def raw(server: SimServer, clock: SimClock) -> AsyncIterator[RawClient]:
    async with aiohttp.ClientSession() as session:
        yield RawClient(session, server.url, clock)


@pytest.fixture
async def binance(server: SimServer, clock: SimClock) -> AsyncIterator[AsyncClient]:
    """The real python-binance AsyncClient, pointed at the simulator as SPEC §6.2 says."""
    client = AsyncClient("sim-key", "sim-secret")
    client.FUTURES_URL = f"{server.url}/fapi"
    client.timestamp_offset = clock.ms - int(time.time() * 1000)
    try:
        yield client
    finally:
        await client.close_connection()


async def open_long(raw: RawClient, symbol: str = "BTCUSDT", qty: str = "0.010",
                    client_id: str = "t-entry") -> Answer:
    answer = await raw.signed("POST", "/fapi/v1/order", {
        "symbol": symbol, "side": "BUY", "type": "MARKET", "quantity": qty,
        "newClientOrderId": client_id, "newOrderRespType": "RESULT"})
    assert answer.status == 200, answer.body
    return answer


def dec(value: object) -> Decimal:
    return Decimal(str(value))
