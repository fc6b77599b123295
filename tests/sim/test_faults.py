"""Fault injection (SPEC §10): every fault kind, outages, seeded reproducibility, rule order and
plan validation, all through real HTTP against the simulator."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.sim import FaultKind, SimServer, load_fault_plan
from tests.sim.conftest import Answer, RawClient, SimClock

ORDER = "POST /fapi/v1/order"
ALGO = "POST /fapi/v1/algoOrder"
EXAMPLE_PLAN = Path(__file__).resolve().parents[2] / "config" / "faults" / "example.toml"


def rule(fault: str, endpoint: str = ORDER, probability: float = 1.0,
         **extra: float) -> dict[str, Any]:
    return {"endpoint": endpoint, "fault": fault, "probability": probability, **extra}


async def set_plan(raw: RawClient, *rules: dict[str, Any], seed: int = 0,
                   outages: list[dict[str, float]] | None = None) -> None:
    answer = await raw.admin("POST", "/_sim/faults",
                             {"seed": seed, "rules": list(rules), "outages": outages or []})
    assert answer.status == 200, answer.body


async def buy(raw: RawClient, client_id: str = "f-1", qty: str = "0.010") -> Answer:
    return await raw.signed("POST", "/fapi/v1/order", {
        "symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": qty,
        "newClientOrderId": client_id, "newOrderRespType": "RESULT"})


async def ledger(raw: RawClient) -> list[dict[str, Any]]:
    answer = await raw.admin("GET", "/_sim/orders")
    assert answer.status == 200
    rows: list[dict[str, Any]] = answer.body
    return rows


async def state(raw: RawClient) -> dict[str, Any]:
    answer = await raw.admin("GET", "/_sim/state")
    assert answer.status == 200
    body: dict[str, Any] = answer.body
    return body


async def assert_not_applied(raw: RawClient) -> None:
    assert await ledger(raw) == []
    assert (await state(raw))["positions"] == []


async def assert_applied(raw: RawClient, client_id: str = "f-1") -> None:
    rows = await ledger(raw)
    assert [(r["kind"], r["client_id"], r["status"]) for r in rows] == [
        ("order", client_id, "FILLED")]
    positions = (await state(raw))["positions"]
    assert [(p["symbol"], p["positionAmt"]) for p in positions] == [("BTCUSDT", "0.010")]


@pytest.fixture
async def impatient(server: SimServer, clock: SimClock) -> AsyncIterator[RawClient]:
    """A RawClient whose session gives up after 0.3 s."""
    timeout = aiohttp.ClientTimeout(total=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield RawClient(session, server.url, clock)


# ----------------------------------------------------------------- each fault kind

async def test_http_500_is_not_applied(raw: RawClient) -> None:
    """http_500 answers HTTP 500 and the order never reaches the book."""
    await set_plan(raw, rule("http_500"))
    answer = await buy(raw)
    assert answer.status == 500
    await assert_not_applied(raw)


async def test_disconnected_1001_is_not_applied(raw: RawClient) -> None:
    """disconnected_1001 answers 503 with code -1001 and applies nothing."""
    await set_plan(raw, rule("disconnected_1001"))
    answer = await buy(raw)
    assert (answer.status, answer.code) == (503, -1001)
    await assert_not_applied(raw)


async def test_throttled_1008_is_not_applied(raw: RawClient) -> None:
    """throttled_1008 answers 503 with code -1008 and applies nothing."""
    await set_plan(raw, rule("throttled_1008"))
    answer = await buy(raw)
    assert (answer.status, answer.code) == (503, -1008)
    await assert_not_applied(raw)


async def test_throttled_1008_costs_no_weight(raw: RawClient) -> None:
    """A -1008 answer does not count its request weight (header and /_sim/state agree)."""
    await raw.public("/fapi/v1/time")                                   # weight 1
    await set_plan(raw, rule("throttled_1008", "GET /fapi/v2/balance"))  # weight 5
    answer = await raw.signed("GET", "/fapi/v2/balance")
    assert (answer.status, answer.code) == (503, -1008)
    assert answer.headers["x-mbx-used-weight-1m"] == "1"
    assert (await state(raw))["used_weight"]["1m"] == 1


async def test_throttled_1008_costs_no_order_count(raw: RawClient) -> None:
    """A -1008 on POST order does not count against the ORDERS limits either."""
    await set_plan(raw, rule("throttled_1008"))
    answer = await buy(raw)
    assert answer.status == 503
    assert answer.headers["x-mbx-order-count-10s"] == "0"
    assert answer.headers["x-mbx-order-count-1m"] == "0"
    assert (await state(raw))["order_count"] == {"10s": 0, "1m": 0}


async def test_service_unavailable_is_not_applied(raw: RawClient) -> None:
    """service_unavailable answers 503 "Service Unavailable." and applies nothing."""
    await set_plan(raw, rule("service_unavailable"))
    answer = await buy(raw)
    assert answer.status == 503
    assert answer.body["msg"] == "Service Unavailable."
    await assert_not_applied(raw)


async def test_service_unavailable_costs_no_weight(raw: RawClient) -> None:
    """A 503 "Service Unavailable." does not count its request weight."""
    await raw.public("/fapi/v1/time")
    await set_plan(raw, rule("service_unavailable", "GET /fapi/v2/balance"))
    answer = await raw.signed("GET", "/fapi/v2/balance")
    assert answer.status == 503
    assert answer.headers["x-mbx-used-weight-1m"] == "1"
    assert (await state(raw))["used_weight"]["1m"] == 1


async def test_service_unavailable_costs_no_order_count(raw: RawClient) -> None:
    """A 503 "Service Unavailable." on POST order does not count against the ORDERS limits."""
    await set_plan(raw, rule("service_unavailable"))
    answer = await buy(raw)
    assert answer.status == 503
    assert answer.headers["x-mbx-order-count-10s"] == "0"
    assert (await state(raw))["order_count"] == {"10s": 0, "1m": 0}


async def test_unknown_503_is_applied(raw: RawClient) -> None:
    """unknown_503 answers 503 "Unknown error…" although the order was placed and filled."""
    await set_plan(raw, rule("unknown_503"))
    answer = await buy(raw)
    assert answer.status == 503
    assert answer.body["msg"].startswith("Unknown error")
    await assert_applied(raw)


async def test_timeout_1007_is_applied(raw: RawClient) -> None:
    """timeout_1007 answers 408 with code -1007 although the order was placed and filled."""
    await set_plan(raw, rule("timeout_1007"))
    answer = await buy(raw)
    assert (answer.status, answer.code) == (408, -1007)
    await assert_applied(raw)


async def test_reset_after_apply_drops_the_connection_after_applying(raw: RawClient) -> None:
    """reset_after_apply: the client sees a connection error, yet the order is in the book."""
    await set_plan(raw, rule("reset_after_apply"))
    with pytest.raises(aiohttp.ClientError):
        await buy(raw)
    await assert_applied(raw)


async def test_hang_outlasts_the_client_timeout_after_applying(
        raw: RawClient, impatient: RawClient) -> None:
    """hang holds the answer past a 0.3 s client timeout; the order is applied meanwhile."""
    await set_plan(raw, rule("hang", hang_s=2))
    with pytest.raises(TimeoutError):
        await buy(impatient)
    await assert_applied(raw)


async def test_latency_delays_a_successful_answer(raw: RawClient) -> None:
    """latency of 200 ms: the order still succeeds, no sooner than 0.2 s after sending."""
    await set_plan(raw, rule("latency", latency_ms=200))
    started = time.monotonic()
    answer = await buy(raw)
    elapsed = time.monotonic() - started
    assert answer.status == 200, answer.body
    assert elapsed >= 0.2
    await assert_applied(raw)


async def test_latency_lets_the_search_go_on(raw: RawClient) -> None:
    """A hitting latency rule does not end the search: a later http_500 rule still applies."""
    await set_plan(raw, rule("latency", latency_ms=20), rule("http_500"))
    answer = await buy(raw)
    assert answer.status == 500
    await assert_not_applied(raw)


async def test_delayed_visibility_hides_a_new_order_from_get(
        raw: RawClient, clock: SimClock) -> None:
    """delayed_visibility: POST says 200, GET order says -2013 until visibility_delay_s pass."""
    await set_plan(raw, rule("delayed_visibility", visibility_delay_s=3))
    placed = await buy(raw, "f-late")
    assert placed.status == 200, placed.body
    query = {"symbol": "BTCUSDT", "origClientOrderId": "f-late"}
    hidden = await raw.signed("GET", "/fapi/v1/order", query)
    assert (hidden.status, hidden.code) == (400, -2013)
    assert hidden.body["msg"] == "Order does not exist."
    clock.advance(2.5)
    still = await raw.signed("GET", "/fapi/v1/order", query)
    assert (still.status, still.code) == (400, -2013)
    clock.advance(0.5)
    found = await raw.signed("GET", "/fapi/v1/order", query)
    assert found.status == 200, found.body
    assert (found.body["clientOrderId"], found.body["status"]) == ("f-late", "FILLED")


async def test_delayed_visibility_hides_a_new_algo_order_from_get(
        raw: RawClient, clock: SimClock) -> None:
    """delayed_visibility on POST algoOrder: GET algoOrder says -2013 until the delay passes."""
    await set_plan(raw, rule("delayed_visibility", ALGO, visibility_delay_s=3))
    placed = await raw.signed("POST", "/fapi/v1/algoOrder", {
        "algoType": "CONDITIONAL", "symbol": "BTCUSDT", "side": "SELL", "type": "STOP_MARKET",
        "triggerPrice": "60000.00", "closePosition": "true", "clientAlgoId": "f-stop"})
    assert placed.status == 200, placed.body
    query = {"clientAlgoId": "f-stop"}
    hidden = await raw.signed("GET", "/fapi/v1/algoOrder", query)
    assert (hidden.status, hidden.code) == (400, -2013)
    assert hidden.body["msg"] == "Order does not exist."
    clock.advance(2.5)
    still = await raw.signed("GET", "/fapi/v1/algoOrder", query)
    assert (still.status, still.code) == (400, -2013)
    clock.advance(0.5)
    found = await raw.signed("GET", "/fapi/v1/algoOrder", query)
    assert found.status == 200, found.body
    assert (found.body["clientAlgoId"], found.body["algoStatus"]) == ("f-stop", "NEW")


# ----------------------------------------------------------------- outages

async def test_outage_answers_503_only_inside_its_window(raw: RawClient, clock: SimClock) -> None:
    """An outage at [10, 15) s after the plan is set: 503 "Service Unavailable." only there."""
    clock.advance(100)      # outages count from when the plan is set, not from server start
    await set_plan(raw, outages=[{"start_s": 10, "duration_s": 5}])
    set_at = clock.now
    statuses = {}
    for offset in (0.0, 9.9, 10.0, 12.0, 14.9, 15.0, 20.0):
        clock.now = set_at + offset
        answer = await raw.public("/fapi/v1/time")
        statuses[offset] = answer.status
        if answer.status == 503:
            assert answer.body["msg"] == "Service Unavailable."
    assert statuses == {0.0: 200, 9.9: 200, 10.0: 503, 12.0: 503, 14.9: 503, 15.0: 200,
                        20.0: 200}


async def test_outage_does_not_apply_orders(raw: RawClient, clock: SimClock) -> None:
    """An order sent during an outage gets 503 and is not placed."""
    await set_plan(raw, outages=[{"start_s": 10, "duration_s": 5}])
    clock.advance(11)
    answer = await buy(raw)
    assert answer.status == 503
    await assert_not_applied(raw)


async def test_outage_costs_no_weight(raw: RawClient, clock: SimClock) -> None:
    """Requests answered by an outage are not metered."""
    await set_plan(raw, outages=[{"start_s": 10, "duration_s": 5}])
    clock.advance(11)
    for _ in range(3):
        assert (await raw.signed("GET", "/fapi/v2/balance")).status == 503
    assert (await state(raw))["used_weight"]["1m"] == 0


async def test_admin_routes_answer_during_an_outage(raw: RawClient, clock: SimClock) -> None:
    """During an outage every admin route still answers 200."""
    await set_plan(raw, outages=[{"start_s": 0, "duration_s": 60}])
    assert (await raw.public("/fapi/v1/ping")).status == 503
    assert (await raw.admin("GET", "/_sim/state")).status == 200
    assert (await raw.admin("GET", "/_sim/orders")).status == 200
    assert (await raw.admin("GET", "/_sim/faults")).status == 200
    price = await raw.admin("POST", "/_sim/price", {"symbol": "BTCUSDT", "price": "64000.00"})
    assert price.status == 200
    assert (await raw.admin("POST", "/_sim/reset")).status == 200


# ----------------------------------------------------------------- reproducibility

async def _pattern(raw: RawClient, seed: int, n: int = 40, *,
                   interleave: bool = False) -> list[int]:
    """Reset, set a seeded p = 0.5 unknown_503 plan on POST order, send ``n`` orders."""
    await raw.admin("POST", "/_sim/reset")
    await set_plan(raw, rule("unknown_503", probability=0.5), seed=seed)
    statuses = []
    for i in range(n):
        if interleave:
            assert (await raw.public("/fapi/v1/time")).status == 200
        statuses.append((await buy(raw, f"r-{i}", "0.002")).status)
    return statuses


async def test_same_seed_gives_the_same_fault_pattern(raw: RawClient) -> None:
    """Seed 7, p = 0.5: 40 orders give one pattern, and the same again after a reset."""
    first = await _pattern(raw, 7)
    assert set(first) == {200, 503}
    assert await _pattern(raw, 7) == first


async def test_different_seed_gives_a_different_fault_pattern(raw: RawClient) -> None:
    """Seeds 7 and 8 give different patterns over the same 40 orders."""
    assert await _pattern(raw, 7) != await _pattern(raw, 8)


async def test_unmatched_requests_do_not_shift_the_pattern(raw: RawClient) -> None:
    """Only matching requests draw: GETs between the orders leave their pattern unchanged."""
    assert await _pattern(raw, 7, interleave=True) == await _pattern(raw, 7)


# ----------------------------------------------------------------- rule order and matching

async def test_first_hitting_rule_wins(raw: RawClient) -> None:
    """Two rules that both hit: the first in plan order decides."""
    await set_plan(raw, rule("http_500"), rule("disconnected_1001"))
    assert (await buy(raw)).status == 500


async def test_a_rule_that_misses_passes_to_the_next(raw: RawClient) -> None:
    """A probability-0 rule never hits; the next matching rule decides."""
    await set_plan(raw, rule("http_500", probability=0.0), rule("timeout_1007"))
    answer = await buy(raw)
    assert (answer.status, answer.code) == (408, -1007)


async def test_star_endpoint_matches_every_route(raw: RawClient) -> None:
    """endpoint "*" faults public, signed GET and POST routes alike."""
    await set_plan(raw, rule("http_500", "*"))
    assert (await raw.public("/fapi/v1/time")).status == 500
    assert (await raw.signed("GET", "/fapi/v2/balance")).status == 500
    assert (await buy(raw)).status == 500


async def test_rule_for_another_endpoint_never_fires(raw: RawClient) -> None:
    """A probability-1 rule on DELETE order leaves POST order (same path) untouched."""
    await set_plan(raw, rule("http_500", "DELETE /fapi/v1/order"),
                   rule("http_500", "POST /fapi/v1/algoOrder"))
    answer = await buy(raw)
    assert answer.status == 200, answer.body
    await assert_applied(raw)


# ----------------------------------------------------------------- plan validation

GOOD_RULE = rule("http_500")


@pytest.mark.parametrize(("plan", "field"), [
    ({"rules": [rule("explode")]}, "rules[0].fault"),
    ({"rules": [GOOD_RULE, rule("http_500", probability=1.5)]}, "rules[1].probability"),
    ({"rules": [{"fault": "http_500", "probability": 1}]}, "rules[0].endpoint"),
    ({"rules": [{**GOOD_RULE, "colour": "red"}]}, "rules[0].colour"),
    ({"rules": [], "colour": "red"}, "colour"),
    ({"outages": [{"start_s": 1}]}, "outages[0].duration_s"),
])
async def test_invalid_plan_is_rejected_naming_the_field(
        raw: RawClient, plan: dict[str, Any], field: str) -> None:
    """A malformed plan gets 400 with an error string that names the offending field."""
    answer = await raw.admin("POST", "/_sim/faults", plan)
    assert answer.status == 400
    assert isinstance(answer.body["error"], str)
    assert field in answer.body["error"]


async def test_rejected_plan_leaves_the_previous_one_in_force(raw: RawClient) -> None:
    """After a 400, GET /_sim/faults shows the previous plan and it keeps faulting."""
    await set_plan(raw, rule("http_500"), seed=3)
    before = (await raw.admin("GET", "/_sim/faults")).body
    rejected = await raw.admin("POST", "/_sim/faults", {"rules": [rule("explode")]})
    assert rejected.status == 400
    assert (await raw.admin("GET", "/_sim/faults")).body == before
    assert before["seed"] == 3
    assert [r["fault"] for r in before["rules"]] == ["http_500"]
    assert (await buy(raw)).status == 500


def test_example_toml_plan_parses() -> None:
    """config/faults/example.toml loads into the plan it describes."""
    plan = load_fault_plan(EXAMPLE_PLAN)
    assert plan.seed == 7
    assert [(r.endpoint, r.fault, r.probability) for r in plan.rules] == [
        (ORDER, FaultKind.UNKNOWN_503, 0.05),
        (ORDER, FaultKind.DELAYED_VISIBILITY, 0.05),
        ("*", FaultKind.LATENCY, 0.2),
    ]
    assert plan.rules[1].visibility_delay_s == 3
    assert plan.rules[2].latency_ms == 50
    assert [(o.start_s, o.duration_s) for o in plan.outages] == [(60, 5)]


async def test_unknown_outcome_can_also_hide_the_order(raw: RawClient, clock: SimClock) -> None:
    """unknown_503 with visibility_delay_s: applied, answered 503, and -2013 for a while."""
    await raw.admin("POST", "/_sim/faults", {"seed": 1, "rules": [
        {"endpoint": "POST /fapi/v1/order", "fault": "unknown_503", "probability": 1.0,
         "visibility_delay_s": 2}]})
    answer = await raw.signed("POST", "/fapi/v1/order", {
        "symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.010",
        "newClientOrderId": "hidden-1"})
    assert answer.status == 503
    query = {"symbol": "BTCUSDT", "origClientOrderId": "hidden-1"}
    assert (await raw.signed("GET", "/fapi/v1/order", query)).code == -2013
    clock.advance(2.0)
    assert (await raw.signed("GET", "/fapi/v1/order", query)).status == 200
