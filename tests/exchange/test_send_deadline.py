"""SPEC §13 / issue 16: an order whose deadline (its signal's TTL) passes while it waits in the
limiter is not sent — checked at the moment it would go on the wire, not only before it queued."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from app.domain import OrderType, Side
from app.factory import ExchangeParts
from tests.simulator import Admin


async def test_an_order_held_in_the_limiter_past_its_deadline_is_not_sent(
        exchange: ExchangeParts, admin: Admin) -> None:
    exchange.limiter.penalize([b.name for b in exchange.buckets], 0.4)   # a 429's pause
    with pytest.raises(TimeoutError, match="deadline passed while it waited"):
        await exchange.gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"), "xd-late",
                                           deadline=time.time() + 0.1)
    exchange.limiter.penalize([b.name for b in exchange.buckets], 0.4)
    with pytest.raises(TimeoutError):
        await exchange.gateway.place_algo_order("BTCUSDT", Side.SELL, OrderType.STOP_MARKET,
                                                Decimal("60000"), "xd-late-s",
                                                deadline=time.time() + 0.1)
    assert await admin.orders() == []
    # with time to spare it goes once the pause ends
    placed = await exchange.gateway.place_order("BTCUSDT", Side.BUY, Decimal("0.010"),
                                                "xd-in-time", deadline=time.time() + 5)
    assert placed.status == "FILLED"
