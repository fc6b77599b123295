"""The listenKey's life (create, renew, keep alive, expire, delete) and the connection rules:
server pings, the pong timeout, the age limit (SPEC §10 "Streams", research §11)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import aiohttp
import pytest
from binance import AsyncClient, BinanceSocketManager

from app.sim import SimConfig
from app.sim.config import Streams
from tests.sim.conftest import RawClient, SimClock, open_long, quiet_config
from tests.sim.streams import collect, listen_key, receive, user_socket


async def test_post_returns_the_active_key_and_extends_it(raw: RawClient) -> None:
    """One key per account: a second POST answers the same key."""
    first = await listen_key(raw)
    assert len(first) == 64
    assert await listen_key(raw) == first


async def test_listen_key_needs_the_api_key_but_no_signature(raw: RawClient) -> None:
    """USER_STREAM security: a wrong API key is -2015; no timestamp or signature needed."""
    answer = await raw.send("POST", "/fapi/v1/listenKey", headers={"X-MBX-APIKEY": "nope"})
    assert (answer.status, answer.code) == (401, -2015)
    assert (await raw.send("POST", "/fapi/v1/listenKey")).status == 200


async def test_listen_key_calls_are_metered_at_weight_1(raw: RawClient) -> None:
    """Each listenKey call uses 1 of the IP's request weight, as Binance counts it."""
    answer = await raw.send("POST", "/fapi/v1/listenKey")
    assert answer.headers["x-mbx-used-weight-1m"] == "1"
    answer = await raw.send("PUT", "/fapi/v1/listenKey")
    assert answer.headers["x-mbx-used-weight-1m"] == "2"


async def test_keepalive_without_a_key_is_1125(raw: RawClient) -> None:
    """PUT with no active key: HTTP 400, -1125 "This listenKey does not exist."."""
    answer = await raw.send("PUT", "/fapi/v1/listenKey")
    assert answer.status == 400
    assert answer.body == {"code": -1125, "msg": "This listenKey does not exist."}


async def test_keepalive_extends_the_key(raw: RawClient, clock: SimClock) -> None:
    """PUT moves the expiry: an hour after a keepalive made at 50 min the key still works."""
    key = await listen_key(raw)
    clock.advance(50 * 60)
    assert (await raw.send("PUT", "/fapi/v1/listenKey")).body == {}
    clock.advance(50 * 60)
    assert (await raw.send("PUT", "/fapi/v1/listenKey")).body == {}
    assert await listen_key(raw) == key


async def test_an_expired_key_is_gone(raw: RawClient, clock: SimClock) -> None:
    """After its validity (3600 s) without a keepalive: -1125, and POST makes a new key."""
    key = await listen_key(raw)
    clock.advance(3601)
    assert (await raw.send("PUT", "/fapi/v1/listenKey")).code == -1125
    assert await listen_key(raw) != key


async def test_expiry_sends_listen_key_expired_then_closes(raw: RawClient) -> None:
    """POST /_sim/listen-key/expire: the connection gets listenKeyExpired, then is closed,
    and the key no longer connects."""
    key = await listen_key(raw)
    async with user_socket(raw, key) as ws:
        assert (await raw.admin("POST", "/_sim/listen-key/expire")).status == 200
        event = await receive(ws)
        assert set(event) == {"e", "E", "listenKey"}
        assert (event["e"], event["listenKey"]) == ("listenKeyExpired", key)
        msg = await asyncio.wait_for(ws.receive(), 2)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    async with user_socket(raw, key) as ws:
        msg = await asyncio.wait_for(ws.receive(), 2)
        assert (msg.type, ws.close_code) == (aiohttp.WSMsgType.CLOSE, 1008)


class TestShortValidity:
    @pytest.fixture
    def sim_config(self) -> SimConfig:
        return replace(quiet_config(), streams=Streams(listen_key_validity_s=0.3))

    async def test_the_key_expires_on_its_own(self, raw: RawClient, clock: SimClock) -> None:
        """At the end of its validity the connections get listenKeyExpired unasked."""
        key = await listen_key(raw)
        async with user_socket(raw, key) as ws:
            clock.advance(1)                              # the simulator's clock too
            event = await receive(ws, within=3)
            assert event["e"] == "listenKeyExpired"


async def test_delete_closes_the_stream(raw: RawClient) -> None:
    """DELETE answers {} and closes the key's connections; the key is gone (-1125)."""
    key = await listen_key(raw)
    async with user_socket(raw, key) as ws:
        assert (await raw.send("DELETE", "/fapi/v1/listenKey")).body == {}
        msg = await asyncio.wait_for(ws.receive(), 2)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert (await raw.send("PUT", "/fapi/v1/listenKey")).code == -1125


async def test_an_unknown_key_is_closed_at_once(raw: RawClient) -> None:
    """A key the simulator never issued: accepted, then closed with 1008."""
    async with user_socket(raw, "f" * 64) as ws:
        msg = await asyncio.wait_for(ws.receive(), 2)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008


class TestConnectionLimits:
    @pytest.fixture
    def sim_config(self) -> SimConfig:
        return replace(quiet_config(), streams=Streams(
            ping_interval_s=0.1, pong_timeout_s=0.5, max_connection_s=1.5))

    async def test_server_pings_and_a_silent_client_is_dropped(self, raw: RawClient) -> None:
        """The server pings every ping_interval_s; a client that never answers (no pong, no
        frame) is dropped after pong_timeout_s."""
        key = await listen_key(raw)
        async with user_socket(raw, key, autoping=False) as ws:
            msg = await asyncio.wait_for(ws.receive(), 1)
            assert msg.type is aiohttp.WSMsgType.PING
            loop = asyncio.get_running_loop()
            start = loop.time()
            while msg.type is aiohttp.WSMsgType.PING:          # pings, never answered
                msg = await asyncio.wait_for(ws.receive(), 2)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert 0.3 < loop.time() - start < 1.0

    async def test_a_client_that_answers_lives_until_the_age_limit(
            self, raw: RawClient) -> None:
        """Answering pings keeps a connection up — until max_connection_s closes it."""
        key = await listen_key(raw)
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with user_socket(raw, key, autoping=True) as ws:
            msg = await asyncio.wait_for(ws.receive(), 3)
            assert msg.type is aiohttp.WSMsgType.CLOSE
        assert 1.3 < loop.time() - start < 2.5


async def test_python_binance_futures_user_socket_receives_order_updates(
        raw: RawClient) -> None:
    """python-binance's own futures user socket, pointed at the simulator, receives the
    ORDER_TRADE_UPDATE of an order placed through its AsyncClient."""
    url = raw.base
    client = AsyncClient("sim-key", "sim-secret")
    client.FUTURES_URL = f"{url}/fapi"
    client.timestamp_offset = raw.clock.ms - int(time.time() * 1000)
    try:
        manager = BinanceSocketManager(client)
        manager.FSTREAM_URL = url.replace("http://", "ws://") + "/"
        socket = manager.futures_user_socket()
        socket.TIMEOUT = 1          # its read loop waits this long for a frame before it exits
        async with socket:
            await client.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET",
                                              quantity="0.010", newClientOrderId="t-pb")
            async with asyncio.timeout(5):
                while True:
                    event = await socket.recv()
                    if event.get("e") == "ORDER_TRADE_UPDATE" and event["o"]["x"] == "TRADE":
                        break
        assert (event["o"]["c"], event["o"]["X"]) == ("t-pb", "FILLED")
    finally:
        await client.close_connection()


async def test_open_long_helper_still_answers(raw: RawClient) -> None:
    """(guard) The REST side is unchanged by a stream being open."""
    key = await listen_key(raw)
    async with user_socket(raw, key) as ws:
        answer = await open_long(raw)
        assert answer.body["status"] == "FILLED"
        await collect(ws, lambda f: len(f) == 3)
