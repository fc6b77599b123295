"""A plain websocket client for the simulator's streams (aiohttp's, nothing of the daemon's):
the listenKey calls, connecting, and reading events with a bounded wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from tests.sim.conftest import RawClient

Event = dict[str, Any]


async def listen_key(raw: RawClient) -> str:
    answer = await raw.send("POST", "/fapi/v1/listenKey")
    assert answer.status == 200, answer.body
    key: str = answer.body["listenKey"]
    return key


def ws_url(raw: RawClient, path: str) -> str:
    return raw.base.replace("http://", "ws://", 1) + path


@asynccontextmanager
async def user_socket(raw: RawClient, key: str, events: str | None = None,
                      **options: Any) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    path = f"/private/ws?listenKey={key}" + (f"&events={events}" if events else "")
    async with raw.session.ws_connect(ws_url(raw, path), **options) as ws:
        yield ws


async def receive(ws: aiohttp.ClientWebSocketResponse, within: float = 3.0) -> Any:
    """The next JSON frame; fails on a close or after `within` seconds."""
    msg = await asyncio.wait_for(ws.receive(), within)
    assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    return orjson.loads(msg.data)


async def collect(ws: aiohttp.ClientWebSocketResponse, done: Callable[[list[Event]], bool],
                  within: float = 3.0) -> list[Event]:
    """Frames until `done(frames)` holds (bounded by `within` seconds)."""
    frames: list[Event] = []
    async with asyncio.timeout(within):
        while not done(frames):
            frames.append(await receive(ws, within))
    return frames


async def quiet_for(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> list[Any]:
    """Every frame that arrives within `seconds` (usually none)."""
    frames: list[Any] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    frames.append(msg.type)
                    return frames
                frames.append(orjson.loads(msg.data))
    except TimeoutError:
        return frames


def kinds(frames: list[Event]) -> list[str]:
    """Each frame's event type, with the order or algo status where there is one."""
    out = []
    for frame in frames:
        kind = frame["e"]
        if kind == "ORDER_TRADE_UPDATE":
            kind += f":{frame['o']['x']}/{frame['o']['X']}"
        elif kind == "ALGO_UPDATE":
            kind += f":{frame['o']['X']}"
        out.append(kind)
    return out
