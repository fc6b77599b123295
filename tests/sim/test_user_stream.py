"""The user-data stream, field by field against research/binance-futures-api.md §11, through a
plain websocket client (SPEC §10 "Streams")."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.sim.conftest import RawClient, dec, open_long
from tests.sim.streams import (
    Event,
    collect,
    kinds,
    listen_key,
    quiet_for,
    receive,
    user_socket,
    ws_url,
)
from tests.sim.test_algo import stop

#: ``o`` of ORDER_TRADE_UPDATE (research §11 and SPEC §10; ``n N`` only with a trade).
ORDER_FIELDS = {"s", "c", "S", "o", "f", "q", "p", "ap", "sp", "x", "X", "i", "l", "z", "L",
                "T", "t", "b", "a", "m", "R", "wt", "ot", "ps", "cp", "rp", "pP", "si", "ss",
                "V", "pm", "gtd"}
#: ``o`` of ALGO_UPDATE (``ai ap aq act`` once triggered).
ALGO_FIELDS = {"caid", "aid", "at", "o", "s", "S", "ps", "f", "q", "X", "tp", "p", "V", "wt",
               "pm", "cp", "pP", "R", "tt", "gtd", "rm"}
POSITION_FIELDS = {"s", "pa", "ep", "bep", "cr", "up", "mt", "iw", "ps"}
BALANCE_FIELDS = {"a", "wb", "cw", "bc"}


def of_kind(frames: list[Event], kind: str) -> list[Event]:
    return [f for f in frames if kinds([f])[0].startswith(kind)]


async def test_entry_reports_new_account_update_and_trade(raw: RawClient) -> None:
    """A MARKET entry: ORDER_TRADE_UPDATE NEW, ACCOUNT_UPDATE (m ORDER, B, P), then
    ORDER_TRADE_UPDATE TRADE/FILLED with ap, z, L, n, N, rp — Binance's names and values."""
    key = await listen_key(raw)
    async with user_socket(raw, key) as ws:
        placed = (await open_long(raw, qty="0.010", client_id="t-e1")).body
        frames = await collect(ws, lambda f: len(f) == 3)
    assert kinds(frames) == ["ORDER_TRADE_UPDATE:NEW/NEW", "ACCOUNT_UPDATE",
                             "ORDER_TRADE_UPDATE:TRADE/FILLED"]
    new, account, trade = frames
    for event in (new, trade):
        assert {"e", "E", "T", "o"} <= set(event)
        assert isinstance(event["E"], int)
        assert isinstance(event["T"], int)
    assert set(new["o"]) == ORDER_FIELDS
    assert set(trade["o"]) == ORDER_FIELDS | {"n", "N"}
    o = trade["o"]
    assert (o["s"], o["c"], o["S"], o["o"], o["i"]) == (
        "BTCUSDT", "t-e1", "BUY", "MARKET", placed["orderId"])
    assert (o["q"], o["l"], o["z"]) == ("0.010", "0.010", "0.010")
    assert dec(o["ap"]) == dec(placed["avgPrice"]) == dec(o["L"])
    assert (o["N"], o["R"], o["cp"], o["ps"], o["m"]) == ("USDT", False, False, "BOTH", False)
    assert dec(o["n"]) == dec("0.010") * dec(o["L"]) * dec("0.0005")
    assert dec(o["rp"]) == 0
    assert all(isinstance(o[k], str) for k in ("q", "p", "ap", "sp", "l", "z", "L", "n", "rp"))
    assert account["a"]["m"] == "ORDER"
    [balance] = account["a"]["B"]
    [position] = account["a"]["P"]
    assert set(balance) == BALANCE_FIELDS
    assert balance["a"] == "USDT"
    assert set(position) == POSITION_FIELDS
    assert (position["s"], position["pa"], position["mt"], position["ps"]) == (
        "BTCUSDT", "0.010", "cross", "BOTH")
    assert dec(position["ep"]) == dec(o["L"])


async def test_close_reports_realized_profit(raw: RawClient) -> None:
    """A reduce-only close: the TRADE carries rp (realized PnL), the position goes to 0."""
    await open_long(raw, qty="0.010")
    await raw.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": "66000.0"})
    key = await listen_key(raw)
    async with user_socket(raw, key) as ws:
        await raw.signed("POST", "/fapi/v1/order", {
            "symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.010",
            "reduceOnly": "true", "newClientOrderId": "t-close"})
        frames = await collect(ws, lambda f: len(f) == 3)
    trade = frames[2]["o"]
    assert (trade["R"], trade["X"]) == (True, "FILLED")
    assert dec(trade["rp"]) > 9                       # ~ (66000 - 65000) x 0.010
    assert frames[1]["a"]["P"][0]["pa"] == "0.000"


async def test_algo_stop_reports_new_triggered_finished_and_its_order(raw: RawClient) -> None:
    """ALGO_UPDATE NEW → TRIGGERED (ai: the spawned order) → FINISHED (ap, aq), and the
    spawned MARKET order's ORDER_TRADE_UPDATEs in between, with the algo's client id."""
    await open_long(raw, qty="0.010")
    key = await listen_key(raw)
    async with user_socket(raw, key) as ws:
        placed = await raw.signed("POST", "/fapi/v1/algoOrder", stop("60000.00", "t-sl"))
        assert placed.status == 200, placed.body
        [new] = await collect(ws, lambda f: len(f) == 1)
        await raw.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": "59990.0"})
        frames = await collect(ws, lambda f: kinds(f)[-1:] == ["ALGO_UPDATE:FINISHED"])
    assert kinds([new]) == ["ALGO_UPDATE:NEW"]
    assert set(new["o"]) == ALGO_FIELDS
    assert (new["o"]["caid"], new["o"]["aid"], new["o"]["at"], new["o"]["o"]) == (
        "t-sl", placed.body["algoId"], "CONDITIONAL", "STOP_MARKET")
    assert (new["o"]["tp"], new["o"]["cp"], new["o"]["S"]) == ("60000.00", True, "SELL")
    assert kinds(frames) == ["ORDER_TRADE_UPDATE:NEW/NEW", "ALGO_UPDATE:TRIGGERED",
                             "ACCOUNT_UPDATE", "ORDER_TRADE_UPDATE:TRADE/FILLED",
                             "ALGO_UPDATE:FINISHED"]
    spawned, triggered, _, trade, finished = frames
    assert set(triggered["o"]) == ALGO_FIELDS | {"ai", "ap", "aq", "act"}
    assert triggered["o"]["ai"] == str(spawned["o"]["i"]) == str(trade["o"]["i"])
    assert (spawned["o"]["c"], spawned["o"]["ot"], spawned["o"]["cp"]) == (
        "t-sl", "STOP_MARKET", True)
    assert dec(finished["o"]["aq"]) == dec("0.010")
    assert dec(finished["o"]["ap"]) == dec(trade["o"]["ap"])
    assert finished["o"]["tt"] > 0
    assert [f["E"] for f in frames] == sorted(f["E"] for f in frames)


async def test_events_parameter_filters_by_type(raw: RawClient) -> None:
    """``events=ORDER_TRADE_UPDATE`` receives only order events."""
    key = await listen_key(raw)
    async with user_socket(raw, key, events="ORDER_TRADE_UPDATE") as ws:
        await open_long(raw)
        frames = await collect(ws, lambda f: len(f) == 2)
        assert await quiet_for(ws, 0.3) == []
    assert {f["e"] for f in frames} == {"ORDER_TRADE_UPDATE"}


async def test_partial_fill_reports_partially_filled_then_expired(raw: RawClient) -> None:
    """fault partial_fill: TRADE/PARTIALLY_FILLED for the filled part, then EXPIRED; REST's
    executedQty says the same."""
    await raw.admin("POST", "/_sim/faults", {"seed": 1, "rules": [
        {"endpoint": "POST /fapi/v1/order", "fault": "partial_fill", "probability": 1,
         "fill_ratio": 0.5}]})
    key = await listen_key(raw)
    async with user_socket(raw, key, events="ORDER_TRADE_UPDATE") as ws:
        answer = await open_long(raw, qty="0.010", client_id="t-part")
        frames = await collect(ws, lambda f: len(f) == 3)
    assert kinds(frames) == ["ORDER_TRADE_UPDATE:NEW/NEW",
                             "ORDER_TRADE_UPDATE:TRADE/PARTIALLY_FILLED",
                             "ORDER_TRADE_UPDATE:EXPIRED/EXPIRED"]
    assert (frames[1]["o"]["l"], frames[1]["o"]["z"]) == ("0.005", "0.005")
    assert frames[2]["o"]["z"] == "0.005"
    assert (answer.body["status"], answer.body["executedQty"]) == ("EXPIRED", "0.005")


async def test_cancel_reports_canceled(raw: RawClient) -> None:
    """Cancelling a resting LIMIT: ORDER_TRADE_UPDATE x CANCELED, X CANCELED."""
    key = await listen_key(raw)
    async with user_socket(raw, key) as ws:
        await raw.signed("POST", "/fapi/v1/order", {
            "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.010",
            "price": "60000.0", "timeInForce": "GTC", "newClientOrderId": "t-lim"})
        await raw.signed("DELETE", "/fapi/v1/order", {"symbol": "BTCUSDT",
                                                      "origClientOrderId": "t-lim"})
        frames = await collect(ws, lambda f: len(f) == 2)
    assert kinds(frames) == ["ORDER_TRADE_UPDATE:NEW/NEW",
                             "ORDER_TRADE_UPDATE:CANCELED/CANCELED"]


async def test_web_trade_and_liquidation_are_reported(raw: RawClient) -> None:
    """/_sim/trade (client id web_…) and /_sim/liquidate (autoclose-…, at the mark) produce
    the same events as any order."""
    key = await listen_key(raw)
    async with user_socket(raw, key, events="ORDER_TRADE_UPDATE/ACCOUNT_UPDATE") as ws:
        traded = await raw.admin("POST", "/_sim/trade",
                                 {"symbol": "BTCUSDT", "side": "BUY", "qty": "0.020"})
        assert traded.status == 200, traded.body
        by_hand = await collect(ws, lambda f: len(f) == 3)
        liquidated = await raw.admin("POST", "/_sim/liquidate", {"symbol": "BTCUSDT"})
        assert liquidated.status == 200, liquidated.body
        forced = await collect(ws, lambda f: len(f) == 3)
    assert by_hand[2]["o"]["c"].startswith("web_")
    assert by_hand[1]["a"]["P"][0]["pa"] == "0.020"
    assert forced[2]["o"]["c"].startswith("autoclose-")
    assert (forced[2]["o"]["S"], forced[2]["o"]["X"]) == ("SELL", "FILLED")
    assert dec(forced[2]["o"]["L"]) == dec("65000.0")  # at the mark
    assert forced[1]["a"]["P"][0]["pa"] == "0.000"
    state = await raw.admin("GET", "/_sim/state")
    assert state.body["positions"] == []


async def test_liquidate_without_a_position_is_refused(raw: RawClient) -> None:
    """Nothing to close: 400 naming the reason; nothing is placed."""
    answer = await raw.admin("POST", "/_sim/liquidate", {"symbol": "BTCUSDT"})
    assert answer.status == 400
    assert "-2022" in answer.body["error"]
    assert (await raw.admin("GET", "/_sim/orders")).body == []


@pytest.mark.parametrize(("body", "field"), [
    ({"symbol": "BTCUSDT", "side": "BUY"}, "qty"),
    ({"symbol": "BTCUSDT", "side": "BUY", "qty": 1}, "qty"),
    ([], "body"),
])
async def test_trade_rejects_bad_input(raw: RawClient, body: object, field: str) -> None:
    """A malformed /_sim/trade body is a 400 naming the field."""
    answer = await raw.admin("POST", "/_sim/trade", body)
    assert answer.status == 400
    assert answer.body["error"].startswith(field)


async def test_events_while_disconnected_are_lost(raw: RawClient) -> None:
    """No replay: what happened while no connection was open never arrives."""
    key = await listen_key(raw)
    await open_long(raw, client_id="t-gap")
    async with user_socket(raw, key) as ws:
        assert await quiet_for(ws, 0.3) == []
        await raw.signed("POST", "/fapi/v1/order", {
            "symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.010",
            "reduceOnly": "true", "newClientOrderId": "t-after"})
        frames = await collect(ws, lambda f: len(f) == 3)
    assert {f["o"]["c"] for f in frames if f["e"] == "ORDER_TRADE_UPDATE"} == {"t-after"}


async def test_drop_closes_connections_and_blocks_new_ones(raw: RawClient) -> None:
    """/_sim/streams/drop closes every connection now (events are lost until a reconnect)
    and refuses new ones for block_s."""
    key = await listen_key(raw)
    async with user_socket(raw, key) as ws:
        dropped = await raw.admin("POST", "/_sim/streams/drop", {"block_s": 0.5})
        assert dropped.body["dropped"] == {"user": 1, "market": 0}
        msg = await asyncio.wait_for(ws.receive(), 2)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await open_long(raw, client_id="t-lost")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with user_socket(raw, key):
            pass
    assert refused.value.status == 503
    await asyncio.sleep(0.6)
    async with user_socket(raw, key) as ws:
        assert await quiet_for(ws, 0.2) == []               # t-lost's events are gone
        state = await raw.admin("GET", "/_sim/state")
        assert state.body["streams"] == {"user": 1, "market": 0}


@pytest.mark.parametrize("body", [{"block_s": -1}, {"block_s": "1"}, {"block_s": 7200}])
async def test_drop_rejects_a_bad_block(raw: RawClient, body: object) -> None:
    answer = await raw.admin("POST", "/_sim/streams/drop", body)
    assert answer.status == 400
    assert answer.body["error"].startswith("block_s")


async def test_stream_mode_wraps_events_with_the_key(raw: RawClient) -> None:
    """/private/stream?listenKey=K: each event as {"stream": K, "data": event}."""
    key = await listen_key(raw)
    async with raw.session.ws_connect(ws_url(raw, f"/private/stream?listenKey={key}")) as ws:
        await open_long(raw)
        frames = await collect(ws, lambda f: len(f) == 3)
    assert {f["stream"] for f in frames} == {key}
    assert kinds([f["data"] for f in frames])[-1] == "ORDER_TRADE_UPDATE:TRADE/FILLED"


async def test_stream_mode_subscribes_by_request(raw: RawClient) -> None:
    """/private/stream with no key, then SUBSCRIBE [K] (as Binance's official connector does):
    answered, then the events follow; a key that is not the active one is an error."""
    key = await listen_key(raw)
    async with raw.session.ws_connect(ws_url(raw, "/private/stream")) as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": ["f" * 64], "id": 1})
        assert (await receive(ws))["error"]["code"] == 2
        await ws.send_json({"method": "SUBSCRIBE", "params": [key], "id": 2})
        assert await receive(ws) == {"result": None, "id": 2}
        await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 3})
        assert await receive(ws) == {"result": [key], "id": 3}
        await open_long(raw)
        frames = await collect(ws, lambda f: len(f) == 3)
    assert frames[0]["stream"] == key
