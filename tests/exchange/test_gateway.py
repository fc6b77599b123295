"""The gateway against the simulator, through the real python-binance client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TypeVar

import pytest
from structlog.testing import capture_logs

from app.domain import MarginType, OrderType, Side
from app.errors import CircuitOpen, ExchangeError, OrderRejected, UnknownOutcome
from app.exchange.endpoints import BreakerGroup
from app.exchange.gateway import Gateway
from app.factory import ExchangeParts
from app.resilience.breaker import BreakerSettings, BreakerState
from app.resilience.retry import RetrySettings
from app.sim import SimConfig, SimServer
from tests.exchange.conftest import ExchangeFactory
from tests.simulator import Admin, quiet_sim_config

T = TypeVar("T")


async def test_start_configures_limiter_from_rate_limits(exchange: ExchangeParts) -> None:
    """Buckets come from exchangeInfo rateLimits, not from constants."""
    assert {(b.name, b.limit, b.interval_s) for b in exchange.buckets} == {
        ("weight:1m", 2400, 60.0), ("orders:1m", 1200, 60.0), ("orders:10s", 300, 10.0)}


async def test_market_order_round_trip(gateway: Gateway) -> None:
    """place_order answers the filled state; get_order finds it by client id."""
    placed = await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"), "xdT1E")
    assert (placed.status, placed.executed_qty, placed.client_id) == (
        "FILLED", Decimal("0.010"), "xdT1E")
    found = await gateway.get_order("BTCUSDT", "xdT1E")
    assert found is not None
    assert found.order_id == placed.order_id
    assert await gateway.get_order("BTCUSDT", "never") is None


async def test_algo_order_round_trip(gateway: Gateway) -> None:
    """A close-position stop is placed, found by clientAlgoId, and cancelled."""
    await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"), "xdT2E")
    algo = await gateway.place_algo_order("BTCUSDT", Side.SELL, OrderType.STOP_MARKET,
                                          Decimal("60000"), "xdT2S")
    assert (algo.client_algo_id, algo.status, algo.close_position) == ("xdT2S", "NEW", True)
    assert (await gateway.get_algo_order("xdT2S")) == algo
    assert await gateway.cancel_algo_order("xdT2S") is True
    assert await gateway.cancel_algo_order("xdT2S") is False


async def test_cancel_all_counts_regular_and_algo(gateway: Gateway) -> None:
    """cancel_all_orders cancels both kinds and says how many of each."""
    await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"), "xdT3E")
    await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"), "xdT3L",
                              order_type=OrderType.LIMIT, price=Decimal("60000"))
    await gateway.place_algo_order("BTCUSDT", Side.SELL, OrderType.STOP_MARKET,
                                   Decimal("59000"), "xdT3S")
    await gateway.place_algo_order("BTCUSDT", Side.SELL, OrderType.TAKE_PROFIT_MARKET,
                                   Decimal("70000"), "xdT3T")
    counts = await gateway.cancel_all_orders("BTCUSDT")
    assert (counts.regular, counts.algo) == (1, 2)
    assert await gateway.open_algo_orders("BTCUSDT") == []


async def test_account_operations(gateway: Gateway) -> None:
    """Leverage, margin type (-4046 is success, unchanged), position and balance."""
    assert await gateway.set_leverage("ETHUSDT", 7) == 7
    assert (await gateway.set_margin_type("ETHUSDT", MarginType.ISOLATED)).changed is True
    assert (await gateway.set_margin_type("ETHUSDT", MarginType.ISOLATED)).changed is False
    assert await gateway.get_position("ETHUSDT") is None
    await gateway.place_order("ETHUSDT", Side.SELL, Decimal("0.100"), "xdT4E")
    position = await gateway.get_position("ETHUSDT")
    assert position is not None
    assert position.amount == Decimal("-0.100")
    balance = await gateway.get_account_balance()
    assert balance.asset == "USDT"
    assert balance.wallet < Decimal("10000")          # the taker fee
    assert isinstance(balance.available, Decimal)


async def test_rejection_is_classified_not_retried(gateway: Gateway, admin: Admin) -> None:
    """A -4164 rejection raises OrderRejected after one request."""
    with pytest.raises(OrderRejected) as caught:
        await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.001"), "xdT5E")
    assert caught.value.code == -4164
    state = await admin.get("state")
    assert state["order_count"]["10s"] == 1


async def test_concurrent_calls_leave_limiter_equal_to_exchange(exchange: ExchangeParts,
                                                                admin: Admin) -> None:
    """50 concurrent calls, at whatever second of the minute: the limiter's view of the
    window equals the simulator's used weight, but for what the window carried in from the
    previous one's end (charged to both windows; the simulator counted it in the previous
    one)."""
    gateway = exchange.gateway
    await asyncio.gather(*(gateway.get_position("BTCUSDT") for _ in range(25)),
                         *(gateway.mark_price("ETHUSDT") for _ in range(25)))
    state = await admin.get("state")
    weight = {s.name: s for s in exchange.limiter.statistics()}["weight:1m"]
    assert weight.used - weight.carried == state["used_weight"]["1m"]


class TestSmallWindows:
    @pytest.fixture
    def sim_config(self) -> SimConfig:
        return quiet_sim_config(request_weight=60, request_weight_interval_s=2, ban_after_429s=1)

    async def test_saturating_run_gets_no_429_and_no_418(self, gateway: Gateway,
                                                         admin: Admin) -> None:
        """Many workers saturating 60 weight / 2 s windows for ~3 windows: never throttled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0

        async def worker() -> int:
            done = 0
            while loop.time() < deadline:
                await gateway.get_position("BTCUSDT")   # weight 5
                done += 1
            return done

        done = sum(await asyncio.gather(*(worker() for _ in range(8))))
        state = await admin.get("state")
        assert state["throttled"] == {"429": 0, "418": 0}
        assert done >= 2 * 11                            # ≥ 2 windows' worth of 58 / 5


async def test_unknown_outcome_on_placement_is_not_resent(gateway: Gateway,
                                                          admin: Admin) -> None:
    """503 'Unknown error' after applying: UnknownOutcome raised, exactly one order exists."""
    await admin.post("faults", {"seed": 1, "rules": [
        {"endpoint": "POST /fapi/v1/order", "fault": "unknown_503", "probability": 1.0}]})
    with pytest.raises(UnknownOutcome):
        await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"), "xdT6E")
    orders = await admin.get("orders")
    assert [o["client_id"] for o in orders] == ["xdT6E"]
    found = await gateway.get_order("BTCUSDT", "xdT6E")
    assert found is not None


async def test_not_applied_placement_is_retried(make_exchange: ExchangeFactory,
                                                admin: Admin) -> None:
    """503 'Service Unavailable.' certainly did not execute: retried, one order in the end."""
    gateway = (await make_exchange(retry=RetrySettings(max_retries=8, initial_delay=0.001,
                                                       jitter=0.0))).gateway
    await admin.post("faults", {"seed": 3, "rules": [
        {"endpoint": "POST /fapi/v1/order", "fault": "service_unavailable",
         "probability": 0.6}]})
    with capture_logs() as logs:
        for i in range(6):
            await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.002"), f"xdT7E{i}")
    orders = await admin.get("orders")
    assert sorted(o["client_id"] for o in orders) == [f"xdT7E{i}" for i in range(6)]
    assert any(e["event"] == "retry_attempt" for e in logs)


async def test_reads_retry_unknown_outcomes(gateway: Gateway, admin: Admin) -> None:
    """A read that hits timeout_1007 is simply retried."""
    await admin.post("faults", {"seed": 5, "rules": [
        {"endpoint": "GET /fapi/v1/premiumIndex", "fault": "timeout_1007",
         "probability": 0.5}]})
    prices = [await gateway.mark_price("BTCUSDT") for _ in range(5)]
    assert prices == [Decimal("65000.00000000")] * 5


async def test_clock_skew_resyncs_and_retries(exchange: ExchangeParts) -> None:
    """A wrong offset earns -1021; the gateway resyncs time and the call succeeds."""
    exchange.client.timestamp_offset = -120_000
    with capture_logs() as logs:
        assert await exchange.gateway.get_position("BTCUSDT") is None
    events = [e["event"] for e in logs]
    assert "api_error" in events
    assert "time_synced" in events
    assert abs(exchange.client.timestamp_offset) < 5_000


async def test_outage_opens_trade_breaker_and_probe_closes_it(
        make_exchange: ExchangeFactory, admin: Admin) -> None:
    """During an outage the trade breaker opens; after it, probes close the breaker again."""
    exchange = await make_exchange(
        retry=RetrySettings(max_retries=0),
        breaker=BreakerSettings(failure_threshold=3, recovery_timeout=0.3,
                                success_threshold=2))
    gateway = exchange.gateway
    await admin.post("faults", {"seed": 0, "rules": [],
                                "outages": [{"start_s": 0, "duration_s": 1.0}]})
    breaker = exchange.breakers[BreakerGroup.TRADE]
    with capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(Exception, match="Service Unavailable"):
                await gateway.get_order("BTCUSDT", "x")
        assert breaker.state is BreakerState.OPEN
        with pytest.raises(CircuitOpen):
            await gateway.get_order("BTCUSDT", "x")
        await asyncio.sleep(1.1)                          # the outage ends
        assert await gateway.get_order("BTCUSDT", "x") is None
        assert await gateway.get_order("BTCUSDT", "x") is None
    assert breaker.state is BreakerState.CLOSED
    events = [e["event"] for e in logs]
    assert events.count("breaker_opened") == 1
    assert events.count("breaker_closed") == 1
    assert "breaker_half_open" in events
    assert "breaker_rejected" in events


async def test_repeated_connection_failures_reset_the_session(exchange: ExchangeParts,
                                                              admin: Admin) -> None:
    """Three dropped connections in a row replace the HTTP session (session_reset)."""
    gateway = exchange.gateway
    await admin.post("faults", {"seed": 0, "rules": [
        {"endpoint": "GET /fapi/v1/premiumIndex", "fault": "reset_after_apply",
         "probability": 1.0}]})
    before = exchange.client.session
    with capture_logs() as logs:
        with pytest.raises(UnknownOutcome):
            await gateway.mark_price("BTCUSDT")
        await admin.post("faults", {"seed": 0, "rules": []})
        assert await gateway.mark_price("BTCUSDT") == Decimal("65000.00000000")
    assert "session_reset" in [e["event"] for e in logs]
    assert exchange.client.session is not before


async def test_precision_rejection_refreshes_exchange_info(make_exchange: ExchangeFactory
                                                           ) -> None:
    """-1111 may mean stale filters: exchangeInfo is reloaded in the background (the rejected
    call does not wait for it), at most once per interval."""
    exchange = await make_exchange(exchange_info_min_refresh_s=0.0)
    gateway = exchange.gateway
    with capture_logs() as logs:
        with pytest.raises(OrderRejected):
            await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.0015"), "xdT8E")
        await exchange.symbols.join()
    assert [e.get("cause") for e in logs if e["event"] == "exchange_info_refreshed"] == [
        "precision_error"]
    slow = await make_exchange()               # default: 60 s since the load at start
    with capture_logs() as logs:
        with pytest.raises(OrderRejected):
            await slow.gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.0015"), "xdT8F")
        await slow.symbols.join()
    assert [e["event"] for e in logs].count("exchange_info_refreshed") == 0
    assert exchange.symbols.get("BTCUSDT").step_size == Decimal("0.001")


class TestSharedIp:
    @pytest.fixture
    def sim_config(self) -> SimConfig:
        return quiet_sim_config(request_weight=20, request_weight_interval_s=2, ban_after_429s=5)

    async def test_429_pauses_then_retries_after_retry_after(self, exchange: ExchangeParts,
                                                             admin: Admin, sim: SimServer
                                                             ) -> None:
        """Another process used the IP's weight: our 429 pauses the bucket, the retry works."""
        import aiohttp

        gateway = exchange.gateway
        url = f"{sim.url}/fapi/v1/time"
        window = 2.0                                      # request_weight_interval_s above
        async with aiohttp.ClientSession() as other:
            for _ in range(3):
                # The other process's burst and our call must share one window: a roll in
                # between lets the call through without the 429 this test is about. So start
                # early in a window, and check that the burst left time to spare (a loaded
                # machine).
                left = window - exchange.timesync.server_time() % window
                if left < 1.5:
                    await asyncio.sleep(left + 0.02)
                start = exchange.timesync.server_time() // window
                while True:                               # the other process on our IP
                    async with other.get(url) as resp:    # weight 1 each
                        if resp.status == 429:
                            break
                now = exchange.timesync.server_time()
                if now // window == start and now % window < window / 2:
                    break
            else:
                pytest.fail("no window exhausted early enough to call within it")
        before = (await admin.get("state"))["throttled"]["429"]
        with capture_logs() as logs:
            assert await gateway.mark_price("BTCUSDT") == Decimal("65000.00000000")
        events = [e["event"] for e in logs]
        assert "rate_limit" in events
        assert "retry_attempt" in events
        state = await admin.get("state")
        assert state["throttled"]["429"] - before == 1    # refused once, then the retry worked
        assert state["throttled"]["418"] == 0


async def weighed(admin: Admin, call: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """``call()``'s answer and the weight the simulator counted for it. The simulator counts in
    clock-aligned minutes: a call in the last second of one is made in the next instead."""
    left = 60 - time.time() % 60
    if left < 1.0:
        await asyncio.sleep(left + 0.05)
    before = (await admin.get("state"))["used_weight"]["1m"]
    answer = await call()
    after = (await admin.get("state"))["used_weight"]["1m"]
    return answer, after - before


async def test_account_wide_reads(gateway: Gateway, admin: Admin) -> None:
    """Without a symbol: every open position, order and algo order of the account, at the
    account-wide weights (5, 40, 40)."""
    await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"), "xdW1E")
    await gateway.place_order("ETHUSDT", Side.SELL, Decimal("0.100"), "xdW2E")
    await gateway.place_order("ETHUSDT", Side.BUY, Decimal("0.100"), "xdW2L",
                              order_type=OrderType.LIMIT, price=Decimal("3000"))
    await gateway.place_algo_order("BTCUSDT", Side.SELL, OrderType.STOP_MARKET,
                                   Decimal("60000"), "xdW1S")
    positions, weight = await weighed(admin, gateway.positions)
    assert weight == 5
    orders, weight = await weighed(admin, gateway.open_orders)
    assert weight == 40
    algos, weight = await weighed(admin, gateway.open_algo_orders)
    assert weight == 40
    assert {(p.symbol, p.amount) for p in positions} == {
        ("BTCUSDT", Decimal("0.010")), ("ETHUSDT", Decimal("-0.100"))}
    assert [o.client_id for o in orders] == ["xdW2L"]
    assert [a.client_algo_id for a in algos] == ["xdW1S"]
    assert await gateway.open_orders("BTCUSDT") == []


async def test_positions_leaves_out_flat_symbols(gateway: Gateway) -> None:
    """A symbol with only an open order (listed by positionRisk v3) is no position."""
    await gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"), "xdW3L",
                              order_type=OrderType.LIMIT, price=Decimal("60000"))
    assert await gateway.positions() == []


async def test_listen_key_calls(gateway: Gateway) -> None:
    """POST gives the account's one key (the same while it is active), PUT extends it,
    DELETE ends it, and a PUT then answers -1125 as an ExchangeError with that code."""
    key = await gateway.new_listen_key()
    assert len(key) == 64
    assert await gateway.new_listen_key() == key
    await gateway.keepalive_listen_key(key)
    await gateway.close_listen_key(key)
    with pytest.raises(ExchangeError) as raised:
        await gateway.keepalive_listen_key(key)
    assert raised.value.code == -1125
    assert key not in str(raised.value)
    assert await gateway.new_listen_key() != key


def test_the_exchange_setup_never_shows_its_keys() -> None:
    """repr/str of the exchange settings (they reach logs and tracebacks) hide the key and
    the secret (issue 14 finding 8: the old GatewaySettings printed both)."""
    from app.factory import ExchangeSetup

    setup = ExchangeSetup(base_url="http://127.0.0.1:1", api_key="KEY-abc123",
                          api_secret="SECRET-xyz789")
    for text in (repr(setup), str(setup), f"{setup!r} {setup}"):
        assert "KEY-abc123" not in text
        assert "SECRET-xyz789" not in text
