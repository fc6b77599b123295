"""Rate limits: fixed clock-aligned windows, Binance's headers, 429 → 418 escalation."""

from __future__ import annotations

from app.sim import SimConfig
from app.sim.limits import label
from app.sim.views import rate_limits
from tests.sim.conftest import START, RawClient, SimClock, quiet_config


def test_header_labels_follow_binance_interval_letters() -> None:
    """60 s → 1m, 10 s → 10s, 120 s → 2m, 3600 s → 1h."""
    assert [label(s) for s in (60, 10, 120, 3600, 5)] == ["1m", "10s", "2m", "1h", "5s"]


def test_exchange_info_advertises_configured_limits() -> None:
    """rateLimits carries the configured limits in Binance's shape."""
    config = quiet_config(request_weight=300, request_weight_interval_s=5)
    assert rate_limits(config)[0] == {"rateLimitType": "REQUEST_WEIGHT", "interval": "SECOND",
                                      "intervalNum": 5, "limit": 300}
    assert rate_limits(SimConfig()) == [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
         "limit": 2400},
        {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
    ]


async def test_used_weight_header_counts_each_request(raw: RawClient) -> None:
    """x-mbx-used-weight-1m (and the legacy header) rise by each endpoint's weight."""
    first = await raw.public("/fapi/v1/time")                     # weight 1
    second = await raw.signed("GET", "/fapi/v2/balance")          # weight 5
    third = await raw.public("/fapi/v1/premiumIndex")             # weight 10 without symbol
    assert first.headers["x-mbx-used-weight-1m"] == "1"
    assert second.headers["x-mbx-used-weight-1m"] == "6"
    assert third.headers["x-mbx-used-weight-1m"] == "16"
    assert third.headers["x-mbx-used-weight"] == "16"


async def test_orders_carry_order_count_headers_and_no_ip_weight(raw: RawClient) -> None:
    """POST order costs 0 IP weight and 1 on the 10s and 1m order counts."""
    answer = await raw.signed("POST", "/fapi/v1/order", {
        "symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.002"})
    assert answer.status == 200
    assert answer.headers["x-mbx-used-weight-1m"] == "0"
    assert answer.headers["x-mbx-order-count-10s"] == "1"
    assert answer.headers["x-mbx-order-count-1m"] == "1"


async def test_window_resets_at_clock_aligned_boundary(raw: RawClient, clock: SimClock) -> None:
    """The count belongs to [k·W, (k+1)·W) of server time and restarts at the boundary."""
    clock.now = START + 59.9
    await raw.public("/fapi/v1/time")
    before = await raw.public("/fapi/v1/time")
    assert before.headers["x-mbx-used-weight-1m"] == "2"
    clock.now = START + 60.0
    after = await raw.public("/fapi/v1/time")
    assert after.headers["x-mbx-used-weight-1m"] == "1"


async def test_window_is_not_rolling(raw: RawClient, clock: SimClock) -> None:
    """Requests 59 s apart within one clock minute share it; a fixed window, not a sliding one."""
    clock.now = START + 0.5
    await raw.public("/fapi/v1/time")
    clock.now = START + 59.5
    answer = await raw.public("/fapi/v1/time")
    assert answer.headers["x-mbx-used-weight-1m"] == "2"
