"""The ``/_sim/`` admin API (SPEC §10): routes and shapes as the contract table fixes them, and
its exemption from metering, rate limits and faults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from app.sim import SimServer
from tests.sim.conftest import RawClient, SimClock, dec, open_long, quiet_config

ORDER_KEYS = {"kind", "symbol", "id", "client_id", "type", "side", "status", "qty",
              "executed_qty", "reduce_only", "close_position", "trigger_price", "time",
              "update_time"}
POSITION_KEYS = {"symbol", "positionAmt", "entryPrice", "unRealizedProfit", "leverage",
                 "marginType"}
STATE_KEYS = {"positions", "balance", "mark", "used_weight", "throttled", "bans", "requests"}


async def get(raw: RawClient, path: str) -> Any:
    answer = await raw.admin("GET", path)
    assert answer.status == 200, answer.body
    return answer.body


async def set_price(raw: RawClient, price: str, symbol: str = "BTCUSDT") -> None:
    answer = await raw.admin("POST", "/_sim/price", {"symbol": symbol, "price": price})
    assert answer.status == 200, answer.body


async def place_stop(raw: RawClient, trigger: str = "64000.00",
                     client_id: str = "t-stop") -> None:
    answer = await raw.signed("POST", "/fapi/v1/algoOrder", {
        "algoType": "CONDITIONAL", "symbol": "BTCUSDT", "side": "SELL", "type": "STOP_MARKET",
        "triggerPrice": trigger, "closePosition": "true", "clientAlgoId": client_id})
    assert answer.status == 200, answer.body


async def place_limit(raw: RawClient, price: str = "60000.00", client_id: str = "t-limit",
                      side: str = "BUY") -> None:
    answer = await raw.signed("POST", "/fapi/v1/order", {
        "symbol": "BTCUSDT", "side": side, "type": "LIMIT", "timeInForce": "GTC",
        "quantity": "0.005", "price": price, "newClientOrderId": client_id})
    assert answer.status == 200, answer.body


async def get_banned(raw: RawClient) -> None:
    """Spend the weight, collect the 429s and earn a 418 ban (bounded)."""
    statuses = [(await raw.public("/fapi/v1/time")).status for _ in range(9)]
    assert statuses[-1] == 418, statuses


@pytest.fixture
async def tight(clock: SimClock) -> AsyncIterator[RawClient]:
    """A client of a separate simulator that allows 5 weight per 10 s and bans after 3 429s."""
    config = quiet_config(request_weight=5, request_weight_interval_s=10, ban_after_429s=3)
    async with SimServer(config, clock=clock) as srv, aiohttp.ClientSession() as session:
        yield RawClient(session, srv.url, clock)


# ----------------------------------------------------------------- POST /_sim/price

async def test_price_sets_the_mark(raw: RawClient) -> None:
    """POST /_sim/price answers 200 and the new mark shows in /_sim/state and the ticker."""
    answer = await raw.admin("POST", "/_sim/price", {"symbol": "ETHUSDT", "price": "3100.5"})
    assert answer.status == 200
    assert (await get(raw, "/_sim/state"))["mark"]["ETHUSDT"] == "3100.50"
    ticker = await raw.public("/fapi/v1/ticker/price", {"symbol": "ETHUSDT"})
    assert ticker.body["price"] == "3100.50"


async def test_price_crossing_a_stop_triggers_it_at_once(raw: RawClient) -> None:
    """A price below a closePosition stop flattens the long and lists algo + triggered order."""
    await open_long(raw)
    await place_stop(raw, "64000.00")
    await set_price(raw, "63900.00")
    assert (await get(raw, "/_sim/state"))["positions"] == []
    rows = await get(raw, "/_sim/orders")
    assert [(r["kind"], r["client_id"]) for r in rows] == [
        ("order", "t-entry"), ("algo", "t-stop"), ("triggered", "t-stop")]
    algo, triggered = rows[1], rows[2]
    assert (algo["type"], algo["side"], algo["qty"], algo["close_position"]) == (
        "STOP_MARKET", "SELL", "0", True)
    assert algo["trigger_price"] == "64000.00"
    assert (triggered["type"], triggered["side"], triggered["status"]) == (
        "MARKET", "SELL", "FILLED")
    assert triggered["executed_qty"] == "0.010"


async def test_price_not_crossing_a_stop_leaves_it_open(raw: RawClient) -> None:
    """A price still above a SELL stop's trigger triggers nothing."""
    await open_long(raw)
    await place_stop(raw, "64000.00")
    await set_price(raw, "64000.10")
    rows = await get(raw, "/_sim/orders")
    assert [(r["kind"], r["status"]) for r in rows] == [("order", "FILLED"), ("algo", "NEW")]
    positions = (await get(raw, "/_sim/state"))["positions"]
    assert [p["positionAmt"] for p in positions] == ["0.010"]


@pytest.mark.parametrize(("body", "field"), [
    ({"symbol": "DOGEUSDT", "price": "0.1"}, "symbol"),
    ({"price": "65000"}, "symbol"),
    ({"symbol": "BTCUSDT", "price": "abc"}, "price"),
    ({"symbol": "BTCUSDT", "price": True}, "price"),
    ({"symbol": "BTCUSDT", "price": "-5"}, "price"),
    ({"symbol": "BTCUSDT"}, "price"),
])
async def test_price_rejects_bad_input(raw: RawClient, body: dict[str, Any], field: str) -> None:
    """An unknown symbol or a non-numeric price is a 400 naming the field; no mark moves."""
    before = (await get(raw, "/_sim/state"))["mark"]
    answer = await raw.admin("POST", "/_sim/price", body)
    assert answer.status == 400
    assert answer.body["error"].startswith(field)
    assert (await get(raw, "/_sim/state"))["mark"] == before


# ----------------------------------------------------------------- POST/GET /_sim/faults

async def test_faults_route_answers_the_plan_now_in_force(raw: RawClient) -> None:
    """POST /_sim/faults answers 200 with the plan, defaults filled in; GET shows the same."""
    plan = {"seed": 9, "rules": [{"endpoint": "post /fapi/v1/order", "fault": "hang",
                                  "probability": 0.25, "hang_s": 2}],
            "outages": [{"start_s": 5, "duration_s": 1}]}
    answer = await raw.admin("POST", "/_sim/faults", plan)
    assert answer.status == 200
    assert answer.body == {
        "seed": 9,
        "rules": [{"endpoint": "POST /fapi/v1/order", "fault": "hang", "probability": 0.25,
                   "latency_ms": 0.0, "hang_s": 2.0, "visibility_delay_s": 0.0}],
        "outages": [{"start_s": 5.0, "duration_s": 1.0}],
    }
    assert await get(raw, "/_sim/faults") == answer.body


@pytest.mark.parametrize("path", ["/_sim/faults", "/_sim/price"])
async def test_admin_rejects_a_body_that_is_not_json(raw: RawClient, path: str) -> None:
    """A POST body declared JSON that is not is a 400 with an error string, not a server
    error."""
    async with raw.session.post(f"{raw.base}{path}", data=b"seed = 7",
                                headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert isinstance(body["error"], str)


# ----------------------------------------------------------------- GET /_sim/orders

async def test_orders_rows_have_exactly_the_contract_keys(raw: RawClient) -> None:
    """Every row of an order, an algo and a triggered order has exactly the table's keys."""
    await open_long(raw)
    await place_stop(raw)
    await set_price(raw, "63000.00")
    rows = await get(raw, "/_sim/orders")
    assert {r["kind"] for r in rows} == {"order", "algo", "triggered"}
    for row in rows:
        assert set(row) == ORDER_KEYS


async def test_orders_row_values_of_a_market_order(raw: RawClient, clock: SimClock) -> None:
    """A filled MARKET order's row carries its identity, quantities, flags and times."""
    placed = await open_long(raw)
    assert await get(raw, "/_sim/orders") == [{
        "kind": "order", "symbol": "BTCUSDT", "id": placed.body["orderId"],
        "client_id": "t-entry", "type": "MARKET", "side": "BUY", "status": "FILLED",
        "qty": "0.010", "executed_qty": "0.010", "reduce_only": False,
        "close_position": False, "trigger_price": None, "time": clock.ms,
        "update_time": clock.ms,
    }]


async def test_orders_row_update_time_is_the_last_status_change(raw: RawClient,
                                                                clock: SimClock) -> None:
    """A LIMIT canceled 5 s after acceptance: time is the acceptance, update_time the cancel."""
    accepted = clock.ms
    await place_limit(raw, client_id="o-late")
    clock.advance(5)
    canceled = await raw.signed("DELETE", "/fapi/v1/order",
                                {"symbol": "BTCUSDT", "origClientOrderId": "o-late"})
    assert canceled.status == 200, canceled.body
    (row,) = await get(raw, "/_sim/orders")
    assert (row["status"], row["time"], row["update_time"]) == (
        "CANCELED", accepted, accepted + 5000)


async def test_orders_row_times_of_a_triggered_algo(raw: RawClient, clock: SimClock) -> None:
    """An algo triggered 7 s after acceptance: its update_time and its order's time are then."""
    await open_long(raw)
    accepted = clock.ms
    await place_stop(raw)
    clock.advance(7)
    await set_price(raw, "63000.00")
    rows = await get(raw, "/_sim/orders")
    times = {r["kind"]: (r["status"], r["time"], r["update_time"]) for r in rows}
    assert times["algo"] == ("FINISHED", accepted, accepted + 7000)
    assert times["triggered"] == ("FILLED", accepted + 7000, accepted + 7000)


async def test_orders_are_listed_in_acceptance_order(raw: RawClient) -> None:
    """Orders and algo orders share one list in the order they were accepted."""
    await place_limit(raw, client_id="o-1")
    await place_stop(raw, "60000.00", client_id="o-2")
    await open_long(raw, client_id="o-3")
    await place_limit(raw, "59000.00", client_id="o-4")
    rows = await get(raw, "/_sim/orders")
    assert [(r["client_id"], r["kind"], r["type"]) for r in rows] == [
        ("o-1", "order", "LIMIT"), ("o-2", "algo", "STOP_MARKET"),
        ("o-3", "order", "MARKET"), ("o-4", "order", "LIMIT")]


async def test_orders_lists_close_position_algo_with_qty_zero(raw: RawClient) -> None:
    """A closePosition algo order's requested qty is listed as "0"."""
    await place_stop(raw, "60000.00")
    (row,) = await get(raw, "/_sim/orders")
    assert (row["kind"], row["qty"], row["executed_qty"], row["status"]) == (
        "algo", "0", "0.000", "NEW")
    assert (row["close_position"], row["reduce_only"], row["trigger_price"]) == (
        True, False, "60000.00")


async def test_orders_lists_canceled_orders_and_not_rejected_ones(raw: RawClient) -> None:
    """A canceled order stays listed (CANCELED); a rejected one (-4120) never appears."""
    await place_limit(raw, client_id="o-cancel")
    canceled = await raw.signed("DELETE", "/fapi/v1/order",
                                {"symbol": "BTCUSDT", "origClientOrderId": "o-cancel"})
    assert canceled.status == 200, canceled.body
    rejected = await raw.signed("POST", "/fapi/v1/order", {
        "symbol": "BTCUSDT", "side": "SELL", "type": "STOP_MARKET", "stopPrice": "60000.00",
        "closePosition": "true"})
    assert rejected.code == -4120
    rows = await get(raw, "/_sim/orders")
    assert [(r["client_id"], r["status"]) for r in rows] == [("o-cancel", "CANCELED")]


# ----------------------------------------------------------------- GET /_sim/state

async def test_state_has_the_contract_keys(raw: RawClient) -> None:
    """A fresh state: the table's keys, no positions, initial marks, nothing throttled."""
    body = await get(raw, "/_sim/state")
    assert set(body) >= STATE_KEYS
    assert body["positions"] == []
    assert body["mark"]["BTCUSDT"] == "65000.00"
    assert set(body["mark"]) >= {"BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"}
    assert body["throttled"] == {"429": 0, "418": 0}
    assert body["bans"] == []
    assert body["requests"] == 0
    assert dec(body["balance"]["walletBalance"]) == Decimal("10000")


async def test_state_position_of_a_long(raw: RawClient) -> None:
    """A long position row: exactly the table's keys, positive positionAmt string."""
    await open_long(raw)
    (pos,) = (await get(raw, "/_sim/state"))["positions"]
    assert set(pos) == POSITION_KEYS
    assert (pos["symbol"], pos["positionAmt"]) == ("BTCUSDT", "0.010")
    assert dec(pos["entryPrice"]) > Decimal("65000")   # filled at mark + slippage
    assert dec(pos["unRealizedProfit"]) < 0
    assert (pos["leverage"], pos["marginType"]) == (20, "CROSSED")


async def test_state_position_amount_of_a_short_is_negative(raw: RawClient) -> None:
    """A short position's positionAmt is a signed decimal string."""
    answer = await raw.signed("POST", "/fapi/v1/order", {
        "symbol": "ETHUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.250"})
    assert answer.status == 200, answer.body
    (pos,) = (await get(raw, "/_sim/state"))["positions"]
    assert (pos["symbol"], pos["positionAmt"]) == ("ETHUSDT", "-0.250")


async def test_state_counts_requests_weight_and_throttling(tight: RawClient) -> None:
    """used_weight, throttled {"429", "418"}, bans and requests follow the traffic."""
    for _ in range(5):
        assert (await tight.public("/fapi/v1/time")).status == 200
    statuses = [(await tight.public("/fapi/v1/time")).status for _ in range(4)]
    assert statuses == [429, 429, 429, 418]
    body = await get(tight, "/_sim/state")
    assert body["used_weight"]["10s"] == 5
    assert body["throttled"] == {"429": 3, "418": 1}
    assert [ban["ip"] for ban in body["bans"]] == ["127.0.0.1"]
    assert body["requests"] == 9


# ----------------------------------------------------------------- POST /_sim/reset

async def test_reset_restores_the_initial_state(tight: RawClient) -> None:
    """Reset clears positions, orders, faults, weight, throttle counts, bans and marks."""
    initial_state = await get(tight, "/_sim/state")
    initial_plan = await get(tight, "/_sim/faults")
    await open_long(tight)
    await place_stop(tight)
    await set_price(tight, "64500.00", "BTCUSDT")
    await set_price(tight, "3000.00", "ETHUSDT")
    plan = {"seed": 5, "rules": [{"endpoint": "*", "fault": "latency", "probability": 1,
                                  "latency_ms": 1}]}
    assert (await tight.admin("POST", "/_sim/faults", plan)).status == 200
    await get_banned(tight)
    dirty = await get(tight, "/_sim/state")
    assert dirty != initial_state
    assert dirty["positions"] != []
    assert dirty["bans"] != []
    assert dirty["throttled"] == {"429": 3, "418": 1}
    answer = await tight.admin("POST", "/_sim/reset")
    assert answer.status == 200
    assert await get(tight, "/_sim/state") == initial_state
    assert await get(tight, "/_sim/orders") == []
    assert await get(tight, "/_sim/faults") == initial_plan
    assert (await tight.public("/fapi/v1/time")).status == 200


# ----------------------------------------------------------------- exemptions

async def test_admin_routes_are_never_metered(raw: RawClient) -> None:
    """50 admin calls leave used_weight and the request count unchanged."""
    await raw.public("/fapi/v1/time")
    before = await get(raw, "/_sim/state")
    for i in range(10):
        await get(raw, "/_sim/state")
        await get(raw, "/_sim/orders")
        await get(raw, "/_sim/faults")
        await set_price(raw, f"6500{i}.00")
        assert (await raw.admin("POST", "/_sim/faults", {})).status == 200
    after = await get(raw, "/_sim/state")
    assert after["used_weight"] == before["used_weight"]
    assert after["requests"] == before["requests"] == 1


async def test_admin_routes_are_never_rate_limited(tight: RawClient) -> None:
    """An IP banned with 418 on /fapi still gets 200 from every admin route."""
    await get_banned(tight)
    assert (await tight.public("/fapi/v1/time")).status == 418
    assert (await tight.admin("GET", "/_sim/state")).status == 200
    assert (await tight.admin("GET", "/_sim/orders")).status == 200
    assert (await tight.admin("GET", "/_sim/faults")).status == 200
    assert (await tight.admin("POST", "/_sim/faults", {})).status == 200
    price = await tight.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": "65100"})
    assert price.status == 200
    assert (await tight.admin("POST", "/_sim/reset")).status == 200


async def test_admin_routes_are_never_faulted(raw: RawClient) -> None:
    """A plan faulting "*" with probability 1 leaves every admin route answering 200."""
    plan = {"seed": 1, "rules": [{"endpoint": "*", "fault": "service_unavailable",
                                  "probability": 1}]}
    assert (await raw.admin("POST", "/_sim/faults", plan)).status == 200
    assert (await raw.public("/fapi/v1/ping")).status == 503
    assert (await raw.admin("GET", "/_sim/state")).status == 200
    assert (await raw.admin("GET", "/_sim/orders")).status == 200
    assert (await raw.admin("GET", "/_sim/faults")).status == 200
    price = await raw.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": "65100"})
    assert price.status == 200
    assert (await raw.admin("POST", "/_sim/reset")).status == 200


# ----------------------------------------------------------------- browser-originated requests
# SPEC §11.2: a web page must not drive the admin API (DNS rebinding, cross-site forms).

BTC_PRICE = b'{"symbol": "BTCUSDT", "price": "61234.5"}'


async def send(raw: RawClient, method: str, path: str, body: bytes | None = None,
               **headers: str) -> tuple[int, Any]:
    """One raw request with exactly these headers (aiohttp adds no Content-Type to bytes
    when one is given; ``skip_auto_headers`` keeps it from adding one when none is)."""
    async with raw.session.request(method, f"{raw.base}{path}", data=body,
                                   headers={k.replace("_", "-"): v for k, v in headers.items()},
                                   skip_auto_headers=["Content-Type"]) as resp:
        return resp.status, await resp.json(content_type=None)


async def btc_mark(raw: RawClient) -> str:
    mark: str = (await get(raw, "/_sim/state"))["mark"]["BTCUSDT"]
    return mark


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/_sim/price", BTC_PRICE), ("GET", "/_sim/state", None),
    ("POST", "/_sim/reset", None)])
async def test_a_request_with_an_origin_header_is_refused_with_403(
        raw: RawClient, method: str, path: str, body: bytes | None) -> None:
    before = await btc_mark(raw)
    status, problem = await send(raw, method, path, body, Origin="http://evil.example",
                                 Content_Type="application/json")
    assert status == 403
    assert "Origin" in problem["error"]
    assert await btc_mark(raw) == before                    # nothing changed


@pytest.mark.parametrize("content_type", [
    "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", None])
async def test_a_body_that_is_not_json_is_refused_with_415(
        raw: RawClient, content_type: str | None) -> None:
    before = await btc_mark(raw)
    headers = {} if content_type is None else {"Content_Type": content_type}
    status, problem = await send(raw, "POST", "/_sim/price", BTC_PRICE, **headers)
    assert status == 415
    assert "application/json" in problem["error"]
    assert await btc_mark(raw) == before


async def test_a_bodiless_form_post_is_refused_with_415(raw: RawClient) -> None:
    """A cross-site ``<form method=post>`` with no fields still names its Content-Type."""
    status, _ = await send(raw, "POST", "/_sim/reset", b"",
                           Content_Type="application/x-www-form-urlencoded")
    assert status == 415


async def test_a_bodiless_text_post_is_refused_with_415(raw: RawClient) -> None:
    status, _ = await send(raw, "POST", "/_sim/reset", None, Content_Type="text/plain")
    assert status == 415


async def test_json_and_bodiless_posts_are_served(raw: RawClient) -> None:
    status, answer = await send(raw, "POST", "/_sim/price", BTC_PRICE,
                                Content_Type="application/json; charset=utf-8")
    assert (status, answer["price"]) == (200, "61234.50")
    assert await btc_mark(raw) == "61234.50"
    assert (await send(raw, "POST", "/_sim/reset"))[0] == 200     # no body, no Content-Type
    assert (await send(raw, "POST", "/_sim/reset", None,            # aiohttp's default
                       Content_Type="application/octet-stream"))[0] == 200
    assert (await send(raw, "GET", "/_sim/state"))[0] == 200
