"""The stream clients against the simulator's websockets (real gateway, loopback): typed events,
reconnects after drops, key expiry and keepalive, marks of watched symbols, malformed frames,
and the listenKey kept out of every log line, status and repr."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
import structlog
from aiohttp import web
from structlog.testing import capture_logs

from app.clock import SystemClock
from app.domain import OrderType, Side
from app.errors import InvalidRequest
from app.exchange.gateway import Gateway
from app.exchange.stream_events import (
    AlgoUpdate,
    MarkUpdate,
    OrderUpdate,
    PositionsUpdate,
    StreamKind,
    StreamStatus,
)
from app.exchange.streams import MarketStream, StreamSettings, UserStream
from app.exchange.wsclient import WsLoop
from app.sim import SimServer
from tests.loopback import serving
from tests.simulator import Admin

FAST = StreamSettings(backoff_initial_s=0.05, backoff_max_s=0.2, heartbeat_s=5.0,
                      connect_timeout_s=2.0)
WITHIN = 3.0


def ws_base(sim: SimServer) -> str:
    return sim.url.replace("http://", "ws://", 1)


class Recorder:
    """Everything a stream delivered, in order, with a bounded wait for a condition."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def __call__(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    def of(self, cls: type[Any]) -> list[Any]:
        return [i for i in self.items if isinstance(i, cls)]

    def statuses(self) -> list[bool]:
        return [s.connected for s in self.of(StreamStatus)]

    async def until(self, done: Callable[[Recorder], bool], within: float = WITHIN) -> None:
        async with asyncio.timeout(within):
            while not done(self):
                self._changed.clear()
                await self._changed.wait()


@dataclass
class Keys:
    """The gateway as the stream sees it (`ListenKeys`), noting every key it handed out;
    ``gone`` answers that many keepalives with -1125 as the gateway would raise it."""

    gateway: Gateway
    issued: set[str] = field(default_factory=set)
    gone: int = 0
    #: "new" and "keepalive", once per call, as the calls begin.
    calls: Recorder = field(default_factory=Recorder)

    async def new_listen_key(self) -> str:
        self.calls("new")
        key = await self.gateway.new_listen_key()
        self.issued.add(key)
        return key

    async def keepalive_listen_key(self, key: str) -> None:
        self.calls("keepalive")
        if self.gone > 0:
            self.gone -= 1
            raise InvalidRequest("This listenKey does not exist.", code=-1125, http_status=400,
                                 endpoint="PUT /fapi/v1/listenKey")
        await self.gateway.keepalive_listen_key(key)

    async def close_listen_key(self, key: str) -> None:
        await self.gateway.close_listen_key(key)


@contextlib.asynccontextmanager
async def running(stream: WsLoop) -> AsyncIterator[None]:
    task = asyncio.create_task(stream.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def connected_times(n: int) -> Callable[[Recorder], bool]:
    return lambda rec: rec.statuses().count(True) >= n


def user_stream(sim: SimServer, keys: Keys, rec: Recorder,
                settings: StreamSettings = FAST) -> UserStream:
    return UserStream(ws_base(sim), keys, rec, SystemClock(), structlog.get_logger(), settings)


# ------------------------------------------------------------------ the user-data stream

async def test_order_algo_and_position_changes_arrive_typed(sim: SimServer,
                                                            gateway: Gateway) -> None:
    """An entry and its stop arrive as OrderUpdate NEW, PositionsUpdate, OrderUpdate
    TRADE/FILLED and AlgoUpdate NEW, with Decimal money, after StreamStatus(USER, True)."""
    rec = Recorder()
    stream = user_stream(sim, Keys(gateway), rec)
    async with running(stream):
        await rec.until(connected_times(1))
        assert stream.connected
        await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"), "xdS1E")
        await gateway.place_algo_order("BTCUSDT", Side.SELL, OrderType.STOP_MARKET,
                                       Decimal("60000"), "xdS1S")
        await rec.until(lambda r: bool(r.of(AlgoUpdate)))
    assert rec.items[0] == StreamStatus(StreamKind.USER, True)
    new, fill = rec.of(OrderUpdate)
    assert (new.client_id, new.execution_type, new.status) == ("xdS1E", "NEW", "NEW")
    assert (fill.execution_type, fill.status, fill.filled_qty, fill.is_trade) == (
        "TRADE", "FILLED", Decimal("0.010"), True)
    assert fill.last_price > 0
    assert fill.commission_asset == "USDT"
    [positions] = rec.of(PositionsUpdate)
    assert (positions.reason, [(p.symbol, p.amount) for p in positions.positions]) == (
        "ORDER", [("BTCUSDT", Decimal("0.010"))])
    [algo] = rec.of(AlgoUpdate)
    assert (algo.client_algo_id, algo.status, algo.trigger_price, algo.close_position) == (
        "xdS1S", "NEW", Decimal("60000.00"), True)
    stats = stream.statistics()
    assert stats["events"] == {"ORDER_TRADE_UPDATE": 2, "ACCOUNT_UPDATE": 1, "ALGO_UPDATE": 1}
    age = stream.last_event_age_s()
    assert age is not None
    assert 0 <= age < WITHIN


async def test_drop_reports_down_then_up_again(sim: SimServer, gateway: Gateway,
                                               admin: Admin) -> None:
    """/_sim/streams/drop: StreamStatus False with the reason, then True after the reconnect,
    and events flow again."""
    rec = Recorder()
    stream = user_stream(sim, Keys(gateway), rec)
    async with running(stream):
        await rec.until(connected_times(1))
        await admin.post("streams/drop", {"block_s": 0})
        await rec.until(connected_times(2))
        await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"), "xdS2E")
        await rec.until(lambda r: len(r.of(OrderUpdate)) == 2)
    assert rec.statuses() == [True, False, True]
    assert "1001" in rec.of(StreamStatus)[1].reason
    stats = stream.statistics()
    assert (stats["connects"], stats["drops"]) == (2, 1)
    assert stats["key_renewals"] == {"start": 1, "reconnect": 1}


async def test_refused_reconnects_are_retried_until_streams_return(
        sim: SimServer, gateway: Gateway, admin: Admin) -> None:
    """A drop with block_s: every attempt is refused (HTTP 503) and retried with backoff,
    never given up, until the streams come back."""
    rec = Recorder()
    stream = user_stream(sim, Keys(gateway), rec)
    async with running(stream):
        await rec.until(connected_times(1))
        await admin.post("streams/drop", {"block_s": 0.6})
        await rec.until(connected_times(2))
    assert rec.statuses() == [True, False, True]
    assert stream.statistics()["failed_attempts"] >= 2


async def test_expired_key_is_replaced(sim: SimServer, gateway: Gateway, admin: Admin) -> None:
    """/_sim/listen-key/expire: ListenKeyExpired is delivered, a new key is fetched and the
    stream reconnects with it."""
    rec = Recorder()
    keys = Keys(gateway)
    stream = user_stream(sim, keys, rec)
    with capture_logs() as logs:
        async with running(stream):
            await rec.until(connected_times(1))
            await admin.post("listen-key/expire", {})
            await rec.until(connected_times(2))
    assert [type(i).__name__ for i in rec.items] == [
        "StreamStatus", "ListenKeyExpired", "StreamStatus", "StreamStatus"]
    assert rec.of(StreamStatus)[1].reason == "listenKey expired"
    assert len(keys.issued) == 2
    renewed = [e for e in logs if e["event"] == "listen_key_renewed"]
    assert [(e["why"], e["new_key"]) for e in renewed] == [("start", True), ("expired", True)]


async def test_keepalive_extends_the_key(sim: SimServer, gateway: Gateway) -> None:
    """A PUT every keepalive_s on the same connection; the key stays the same."""
    rec = Recorder()
    keys = Keys(gateway)
    stream = user_stream(sim, keys, rec, StreamSettings(keepalive_s=0.1, backoff_initial_s=0.05))
    async with running(stream):
        await rec.until(connected_times(1))
        await keys.calls.until(lambda calls: calls.items.count("keepalive") >= 4)
    assert stream.statistics()["key_renewals"]["keepalive"] >= 3
    assert len(keys.issued) == 1
    assert rec.statuses() == [True]


async def test_key_gone_on_keepalive_gets_a_new_key(sim: SimServer, gateway: Gateway) -> None:
    """-1125 on a keepalive PUT: the connection is ended and a key is fetched again."""
    rec = Recorder()
    keys = Keys(gateway, gone=1)
    stream = user_stream(sim, keys, rec, StreamSettings(keepalive_s=0.1, backoff_initial_s=0.05))
    async with running(stream):
        await rec.until(connected_times(2))
    assert rec.statuses() == [True, False, True]
    assert "-1125" in rec.of(StreamStatus)[1].reason
    assert stream.statistics()["key_renewals"] == {"start": 1, "-1125": 1}


async def test_connection_is_rotated_at_its_age_limit(sim: SimServer, gateway: Gateway) -> None:
    """At max_connection_s the connection is replaced at once (no backoff), with the key
    asked for again."""
    rec = Recorder()
    settings = StreamSettings(max_connection_s=0.3, backoff_initial_s=10.0, backoff_max_s=10.0)
    stream = user_stream(sim, Keys(gateway), rec, settings)
    async with running(stream):
        await rec.until(connected_times(2))
    assert rec.statuses() == [True, False, True]
    assert stream.statistics()["key_renewals"] == {"start": 1, "rotation": 1}


async def test_key_fetch_failures_are_retried(sim: SimServer, gateway: Gateway,
                                              admin: Admin) -> None:
    """While the REST API is down (503 on every call) the key request fails; the stream
    backs off and connects once the outage is over."""
    await admin.post("faults", {"seed": 0, "rules": [
        {"endpoint": "POST /fapi/v1/listenKey", "fault": "service_unavailable",
         "probability": 1.0}]})
    rec = Recorder()
    keys = Keys(gateway)
    stream = user_stream(sim, keys, rec)
    async with running(stream):
        await keys.calls.until(lambda calls: len(calls.items) >= 3)
        assert stream.statistics()["failed_attempts"] >= 2
        assert rec.items == []
        await admin.post("faults", {"seed": 0, "rules": []})
        # the account breaker opened meanwhile: it lets a probe through after its recovery
        # time, which grows with each re-open (a loaded machine may take a few rounds)
        await rec.until(connected_times(1), within=15.0)


async def test_listen_key_never_leaves(sim: SimServer, gateway: Gateway, admin: Admin) -> None:
    """Through start, keepalive, a drop and an expiry: no audit event (as emitted, before
    redaction), status, statistics or repr contains a listenKey."""
    rec = Recorder()
    keys = Keys(gateway)
    stream = user_stream(sim, keys, rec, StreamSettings(keepalive_s=0.1, backoff_initial_s=0.05))
    with capture_logs() as logs:
        async with running(stream):
            await rec.until(connected_times(1))
            await admin.post("streams/drop", {"block_s": 0.2})
            await rec.until(connected_times(2))
            await admin.post("listen-key/expire", {})
            await rec.until(connected_times(3))
            text = repr(stream) + repr(stream.statistics()) + repr(rec.items)
    assert len(keys.issued) == 2
    assert {e["event"] for e in logs} >= {"stream_connected", "stream_disconnected",
                                          "listen_key_renewed"}
    text += orjson.dumps(logs, default=str).decode()
    for key in keys.issued:
        assert key not in text


# ------------------------------------------------------------------ the market stream

def market_stream(sim: SimServer, marks: Recorder, statuses: Recorder) -> MarketStream:
    return MarketStream(ws_base(sim), marks, statuses, SystemClock(), structlog.get_logger(),
                        FAST)


def mark_of(symbol: str, price: str) -> Callable[[Recorder], bool]:
    return lambda rec: MarkUpdate in map(type, rec.items) and any(
        m.symbol == symbol and m.mark == Decimal(price) for m in rec.items)


async def test_marks_of_watched_symbols(sim: SimServer, admin: Admin) -> None:
    """Idle until a symbol is watched; then its marks, a new mark right after /_sim/price;
    a symbol watched later is subscribed on the same connection."""
    marks, statuses = Recorder(), Recorder()
    stream = market_stream(sim, marks, statuses)
    async with running(stream):
        await asyncio.sleep(0.1)
        assert (stream.connected, (await admin.get("state"))["streams"]["market"]) == (False, 0)
        stream.watch(["btcusdt"])
        await statuses.until(connected_times(1))
        await admin.post("price", {"symbol": "BTCUSDT", "price": "65100.0"})
        await marks.until(mark_of("BTCUSDT", "65100.0"))
        stream.watch(["BTCUSDT", "ETHUSDT"])
        await asyncio.sleep(0.1)        # the SUBSCRIBE goes out
        await admin.post("price", {"symbol": "ETHUSDT", "price": "3100.0"})
        await marks.until(mark_of("ETHUSDT", "3100.0"))
    assert stream.watched == {"BTCUSDT", "ETHUSDT"}
    assert stream.statistics()["connects"] == 1
    assert statuses.items == [StreamStatus(StreamKind.MARKET, True)]


async def test_marks_resume_after_a_drop(sim: SimServer, admin: Admin) -> None:
    """After /_sim/streams/drop the stream reconnects with every watched symbol."""
    marks, statuses = Recorder(), Recorder()
    stream = market_stream(sim, marks, statuses)
    stream.watch(["BTCUSDT", "SOLUSDT"])
    async with running(stream):
        await statuses.until(connected_times(1))
        await admin.post("streams/drop", {"block_s": 0.1})
        await statuses.until(connected_times(2))
        await admin.post("price", {"symbol": "SOLUSDT", "price": "151.0"})
        await marks.until(mark_of("SOLUSDT", "151.0"))
    assert statuses.statuses() == [True, False, True]


# ------------------------------------------------------------------ malformed frames

@contextlib.asynccontextmanager
async def frames_server(frames: list[str]) -> AsyncIterator[str]:
    """A websocket server (not the simulator, which sends nothing malformed) that sends
    ``frames`` on every connection and then holds it open; yields its ws:// base."""
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for frame in frames:
            await ws.send_str(frame)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/private/ws", handler)
    app.router.add_get("/market/stream", handler)
    async with serving(app) as port:
        yield f"ws://127.0.0.1:{port}"


class StaticKeys:
    async def new_listen_key(self) -> str:
        return "k" * 64

    async def keepalive_listen_key(self, key: str) -> None:
        return None

    async def close_listen_key(self, key: str) -> None:
        return None


ORDER = {"e": "ORDER_TRADE_UPDATE", "E": 1, "T": 1, "o": {
    "s": "BTCUSDT", "c": "x1", "S": "BUY", "o": "MARKET", "q": "0.010", "ap": "0", "x": "NEW",
    "X": "NEW", "i": 7, "l": "0", "z": "0", "L": "0", "rp": "0", "T": 1}}


async def test_malformed_user_frames_are_skipped() -> None:
    """Not JSON, not an object, a known event with a bad field: each is audited and skipped;
    the connection stays and the next good event is delivered."""
    bad_order = {**ORDER, "o": {**ORDER["o"], "q": "lots"}}
    frames = ["{not json", "[1, 2]", orjson.dumps(bad_order).decode(),
              orjson.dumps({"e": "TRADE_LITE", "E": 1}).decode(), orjson.dumps(ORDER).decode()]
    rec = Recorder()
    with capture_logs() as logs:
        async with frames_server(frames) as base:
            stream = UserStream(base, StaticKeys(), rec, SystemClock(), structlog.get_logger(),
                                FAST)
            async with running(stream):
                await rec.until(lambda r: bool(r.of(OrderUpdate)))
    assert rec.statuses() == [True]
    assert stream.statistics()["malformed"] == 3
    errors = [e for e in logs if e["event"] == "api_error"]
    assert [(e["operation"], e["error_class"]) for e in errors] == [
        ("user_stream", "MalformedMessage")] * 3
    assert "o.q" in errors[2]["message"]


async def test_malformed_mark_frames_are_skipped() -> None:
    """A mark that is no number, or NaN, is skipped; the good one after it arrives."""
    def mark(price: str) -> str:
        return orjson.dumps({"stream": "btcusdt@markPrice@1s", "data": {
            "e": "markPriceUpdate", "E": 5, "s": "BTCUSDT", "p": price}}).decode()

    marks, statuses = Recorder(), Recorder()
    async with frames_server([mark("abc"), mark("NaN"), mark("-1"), mark("65000.5")]) as base:
        stream = MarketStream(base, marks, statuses, SystemClock(), structlog.get_logger(), FAST)
        stream.watch(["BTCUSDT"])
        async with running(stream):
            await marks.until(lambda r: bool(r.items))
    assert marks.items == [MarkUpdate(5, "BTCUSDT", Decimal("65000.5"))]
    assert stream.statistics()["malformed"] == 3

