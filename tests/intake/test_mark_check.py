"""SPEC §4.1: at intake, an entry's stop-loss and take-profit must lie on the right side of
the latest known mark (400 naming the field); nothing is journaled. Without a recent mark the
executor checks before the order, as before. A known id is answered whatever the mark."""

from __future__ import annotations

from decimal import Decimal
from functools import partial

import pytest
import structlog

from app.clock import SystemClock
from app.domain import SignalError
from app.exchange.symbols import trading_rules
from app.factory import ExchangeParts
from app.intake.bus import SignalBus
from app.intake.service import Service
from app.journal import Journal

MARKS: dict[str, Decimal] = {"BTCUSDT": Decimal("65000")}


@pytest.fixture
def service(journal: Journal, bus: SignalBus, exchange: ExchangeParts) -> Service:
    s = Service(journal, bus, partial(trading_rules, exchange.symbols.get), SystemClock(),
                structlog.get_logger(), default_ttl_s=30.0, mark_of=MARKS.get)
    s.open()
    return s


@pytest.mark.parametrize(("body", "field", "detail"), [
    ({"type": "LONG_ENTRY", "stop_loss": "65000"}, "stop_loss",
     "must be below the mark price 65000 for LONG_ENTRY"),
    ({"type": "LONG_ENTRY", "take_profit": "64000"}, "take_profit",
     "must be above the mark price 65000 for LONG_ENTRY"),
    ({"type": "SHORT_ENTRY", "stop_loss": "64999.9"}, "stop_loss",
     "must be above the mark price 65000 for SHORT_ENTRY"),
    ({"type": "SHORT_ENTRY", "take_profit": "70000"}, "take_profit",
     "must be below the mark price 65000 for SHORT_ENTRY"),
])
async def test_the_wrong_side_of_the_latest_mark_is_refused_at_intake(
        service: Service, journal: Journal, body: dict[str, str], field: str,
        detail: str) -> None:
    with pytest.raises(SignalError) as refused:
        await service.accept({"id": "wrong-side", "symbol": "BTCUSDT", "quantity": "0.01",
                              **body}, source="http")
    assert (refused.value.field, refused.value.detail) == (field, detail)
    assert await journal.get_signal("wrong-side") is None


async def test_the_right_side_or_no_recent_mark_is_accepted(service: Service) -> None:
    good = {"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.01",
            "stop_loss": "60000", "take_profit": "70000"}
    assert (await service.accept({"id": "right", **good}, source="http")).created
    # no recent mark for ETHUSDT: the executor checks it before the order
    eth = {"symbol": "ETHUSDT", "type": "LONG_ENTRY", "quantity": "0.1",
           "stop_loss": "9000", "take_profit": "9500"}
    assert (await service.accept({"id": "no-mark", **eth}, source="http")).created
    # a known id is answered whatever the mark says
    again = await service.accept({"id": "right", **good, "stop_loss": "66000"},
                                 source="http")
    assert not again.created
