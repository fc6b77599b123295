"""The mark-price streams, single and combined (SPEC §10 "Streams", research §11)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from tests.sim.conftest import RawClient, SimClock
from tests.sim.streams import quiet_for, receive, ws_url

MARK_FIELDS = {"e", "E", "s", "p", "i", "P", "r", "T"}


@asynccontextmanager
async def market_socket(raw: RawClient, path: str
                        ) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with raw.session.ws_connect(ws_url(raw, path)) as ws:
        yield ws


async def set_price(raw: RawClient, symbol: str, price: str) -> None:
    answer = await raw.admin("POST", "/_sim/price", {"symbol": symbol, "price": price})
    assert answer.status == 200, answer.body


async def test_single_stream_pushes_after_a_price_change(raw: RawClient, clock: SimClock) -> None:
    """/market/ws/btcusdt@markPrice: a markPriceUpdate with Binance's fields right after
    POST /_sim/price."""
    async with market_socket(raw, "/market/ws/btcusdt@markPrice") as ws:
        await set_price(raw, "BTCUSDT", "65100.0")
        event = await receive(ws)
    assert set(event) == MARK_FIELDS
    assert (event["e"], event["s"], event["p"], event["E"]) == (
        "markPriceUpdate", "BTCUSDT", "65100.00", clock.ms)
    assert event["T"] > event["E"]
    assert event["T"] % (8 * 3600 * 1000) == 0
    assert isinstance(event["r"], str)


async def test_one_second_stream_pushes_on_its_own(raw: RawClient) -> None:
    """@markPrice@1s pushes every second without any price change."""
    async with market_socket(raw, "/market/ws/ethusdt@markPrice@1s") as ws:
        first = await receive(ws, within=2.5)
        second = await receive(ws, within=2.5)
    assert first["s"] == second["s"] == "ETHUSDT"


async def test_other_symbols_do_not_reach_a_single_stream(raw: RawClient) -> None:
    """A price change of ETHUSDT is not pushed on btcusdt@markPrice."""
    async with market_socket(raw, "/market/ws/btcusdt@markPrice") as ws:
        await set_price(raw, "ETHUSDT", "3300.0")
        frames = await quiet_for(ws, 0.3)
    assert all(f["s"] == "BTCUSDT" for f in frames if isinstance(f, dict))


async def test_combined_stream_wraps_each_event(raw: RawClient) -> None:
    """/market/stream?streams=a/b: {"stream": name, "data": event}; the array stream's data
    is a list with every symbol."""
    path = "/market/stream?streams=btcusdt@markPrice/!markPrice@arr"
    async with market_socket(raw, path) as ws:
        await set_price(raw, "BTCUSDT", "64900.0")
        frames = [await receive(ws), await receive(ws)]
    by_stream: dict[str, Any] = {f["stream"]: f["data"] for f in frames}
    assert set(by_stream) == {"btcusdt@markPrice", "!markPrice@arr"}
    assert by_stream["btcusdt@markPrice"]["p"] == "64900.00"
    everything = by_stream["!markPrice@arr"]
    assert {e["s"] for e in everything} >= {"BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT",
                                            "XRPUSDT"}
    assert all(set(e) == MARK_FIELDS for e in everything)


@pytest.mark.parametrize("path", [
    "/market/ws/0", "/market/ws/btcusdt@trade", "/market/ws/nosuch@markPrice",
    "/market/ws/btcusdt@markPrice@2s",
])
async def test_a_name_that_is_no_stream_gets_no_data(raw: RawClient, path: str) -> None:
    """As on Binance (ccxt connects to /market/ws/<n> and subscribes afterwards): the
    connection stays open, nothing is pushed for the name, and SUBSCRIBE still works."""
    async with market_socket(raw, path) as ws:
        await set_price(raw, "BTCUSDT", "65150.0")
        assert await quiet_for(ws, 0.3) == []
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@markPrice"], "id": 7})
        assert await receive(ws) == {"result": None, "id": 7}


async def test_public_route_is_accepted_but_serves_nothing(raw: RawClient) -> None:
    """/public/stream (Binance's high-frequency route): open, and a SUBSCRIBE there says the
    simulator serves nothing on it."""
    async with market_socket(raw, "/public/stream") as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker"], "id": 1})
        answer = await receive(ws)
    assert answer["error"]["code"] == 2
    assert "/public" in answer["error"]["msg"]


async def test_state_counts_market_connections(raw: RawClient) -> None:
    """GET /_sim/state shows the open market connections."""
    async with market_socket(raw, "/market/ws/!markPrice@arr"):
        await asyncio.sleep(0.05)
        state = await raw.admin("GET", "/_sim/state")
        assert state.body["streams"] == {"user": 0, "market": 1}


async def test_subscribe_on_a_bare_connection(raw: RawClient) -> None:
    """/market/ws with no stream, then SUBSCRIBE: {"result": null, "id": 1}, the stream's events
    follow; LIST_SUBSCRIPTIONS names it; UNSUBSCRIBE stops it."""
    async with market_socket(raw, "/market/ws") as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@markPrice"], "id": 1})
        assert await receive(ws) == {"result": None, "id": 1}
        await set_price(raw, "BTCUSDT", "65200.0")
        assert (await receive(ws))["p"] == "65200.00"
        await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 2})
        assert await receive(ws) == {"result": ["btcusdt@markPrice"], "id": 2}
        await ws.send_json({"method": "UNSUBSCRIBE", "params": ["btcusdt@markPrice"], "id": 3})
        assert await receive(ws) == {"result": None, "id": 3}
        await set_price(raw, "BTCUSDT", "65300.0")
        assert await quiet_for(ws, 0.3) == []


@pytest.mark.parametrize(("request_body", "detail"), [
    ({"method": "SUBSCRIBE", "params": ["btcusdt@depth"], "id": 4}, "invalid stream name"),
    ({"method": "NOPE", "id": 5}, "unknown method"),
    ({"method": "SUBSCRIBE", "params": "btcusdt@markPrice", "id": 6}, "params"),
    ({"method": "SUBSCRIBE", "params": [], "id": -1}, "request ID"),
])
async def test_bad_requests_get_an_error_naming_the_problem(
        raw: RawClient, request_body: dict[str, Any], detail: str) -> None:
    """A malformed request or a stream the simulator does not serve: an error with code 2."""
    async with market_socket(raw, "/market/stream") as ws:
        await ws.send_json(request_body)
        answer = await receive(ws)
    assert answer["error"]["code"] == 2
    assert detail in answer["error"]["msg"]
