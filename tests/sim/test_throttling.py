"""429 and 418: throttling with small windows, ban escalation and order-count limits."""

from __future__ import annotations

import math

import pytest

from app.sim import SimConfig
from tests.sim.conftest import START, RawClient, SimClock, quiet_config

ORDER = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.002"}


@pytest.fixture
def sim_config() -> SimConfig:
    """Weight 10 per 10 s, 3 orders per 10 s, ban after 2 429s."""
    return quiet_config(request_weight=10, request_weight_interval_s=10, orders_short=3,
                        orders_short_interval_s=10, ban_after_429s=2)


async def _spend(raw: RawClient, n: int) -> None:
    for _ in range(n):
        assert (await raw.public("/fapi/v1/time")).status == 200


async def test_over_limit_answers_429_with_retry_after(raw: RawClient, clock: SimClock) -> None:
    """Past the limit: 429, -1003, Retry-After = whole seconds to the window end."""
    clock.now = START + 3.2
    await _spend(raw, 10)
    refused = await raw.public("/fapi/v1/time")
    assert refused.status == 429
    assert refused.body["code"] == -1003
    assert refused.body["msg"] == (
        "Too many requests; current limit of IP(127.0.0.1) is 10 requests per 10 seconds. "
        "Please use the websocket for live updates to avoid polling the API.")
    assert refused.headers["Retry-After"] == str(math.ceil(10 - 3.2))
    assert refused.headers["x-mbx-used-weight-10s"] == "10"


async def test_refused_request_costs_no_weight(raw: RawClient, clock: SimClock) -> None:
    """A 429 leaves the window's count where it was."""
    await _spend(raw, 9)
    assert (await raw.signed("GET", "/fapi/v2/balance")).status == 429
    state = await raw.admin("GET", "/_sim/state")
    assert state.body["used_weight"]["10s"] == 9


async def test_a_fitting_request_still_passes_after_a_refusal(raw: RawClient) -> None:
    """A weight-5 refusal does not stop a weight-1 request that fits."""
    await _spend(raw, 9)
    assert (await raw.signed("GET", "/fapi/v2/balance")).status == 429
    assert (await raw.public("/fapi/v1/time")).status == 200


async def test_new_window_admits_again(raw: RawClient, clock: SimClock) -> None:
    """At the next clock-aligned boundary the client is admitted again."""
    clock.now = START + 1.0
    await _spend(raw, 10)
    assert (await raw.public("/fapi/v1/time")).status == 429
    clock.now = START + 10.0
    answer = await raw.public("/fapi/v1/time")
    assert answer.status == 200
    assert answer.headers["x-mbx-used-weight-10s"] == "1"


async def test_client_that_keeps_going_is_banned(raw: RawClient, clock: SimClock) -> None:
    """After ban_after_429s 429s in one window the next violation is 418 'banned until <ms>'."""
    clock.now = START + 1.0
    await _spend(raw, 10)
    assert [(await raw.public("/fapi/v1/time")).status for _ in range(2)] == [429, 429]
    banned = await raw.public("/fapi/v1/time")
    until_ms = int((START + 1.0 + 120) * 1000)
    assert banned.status == 418
    assert banned.body == {"code": -1003, "msg": (
        f"Way too many requests; IP(127.0.0.1) banned until {until_ms}. Please use the "
        "websocket for live updates to avoid bans.")}
    assert banned.headers["Retry-After"] == "120"
    state = await raw.admin("GET", "/_sim/state")
    assert state.body["throttled"] == {"429": 2, "418": 1}
    assert state.body["bans"] == [{"ip": "127.0.0.1", "until_ms": until_ms,
                                   "retry_after_s": 120}]


async def test_ban_blocks_every_request_until_it_ends(raw: RawClient, clock: SimClock) -> None:
    """During a ban even a request that would fit answers 418; after it, 200."""
    clock.now = START + 1.0
    await _spend(raw, 10)
    for _ in range(3):
        await raw.public("/fapi/v1/time")
    clock.now = START + 30.0                     # new window, still banned
    answer = await raw.public("/fapi/v1/time")
    assert answer.status == 418
    assert answer.headers["Retry-After"] == str(math.ceil(121 - 30))
    clock.now = START + 121.0
    assert (await raw.public("/fapi/v1/time")).status == 200


async def test_bans_escalate_for_repeat_offenders(raw: RawClient, clock: SimClock) -> None:
    """A second ban lasts ban.factor times the first."""
    clock.now = START + 1.0
    await _spend(raw, 10)
    for _ in range(3):
        await raw.public("/fapi/v1/time")
    clock.now = START + 130.0
    await _spend(raw, 10)
    for _ in range(2):
        await raw.public("/fapi/v1/time")
    second = await raw.public("/fapi/v1/time")
    assert second.status == 418
    assert second.headers["Retry-After"] == "240"


async def test_order_count_limit_answers_1015(raw: RawClient, clock: SimClock) -> None:
    """The per-account order limit answers 429 -1015 with the order-count headers."""
    clock.now = START + 2.0
    for i in range(3):
        answer = await raw.signed("POST", "/fapi/v1/order", ORDER)
        assert answer.status == 200
        assert answer.headers["x-mbx-order-count-10s"] == str(i + 1)
    refused = await raw.signed("POST", "/fapi/v1/order", ORDER)
    assert refused.status == 429
    assert refused.body == {"code": -1015, "msg":
                            "Too many new orders; current limit is 3 orders per 10 seconds."}
    assert refused.headers["Retry-After"] == "8"
    assert refused.headers["x-mbx-order-count-10s"] == "3"
    orders = await raw.admin("GET", "/_sim/orders")
    assert len(orders.body) == 3
