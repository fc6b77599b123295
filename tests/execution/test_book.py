"""The live book (SPEC §5.8), as a pure unit: events in arrival order, REST rebuilds that keep
what events changed during the fetch, marks with their age, waiting for a client id."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from app.clock import FakeClock
from app.domain import Side
from app.exchange.models import AlgoState, Position
from app.exchange.stream_events import (
    AlgoUpdate,
    MarkUpdate,
    OrderUpdate,
    PositionChange,
    PositionsUpdate,
)
from app.execution.book import Book

D = Decimal


def order(cid: str, status: str, *, filled: str = "0", e: int = 1) -> OrderUpdate:
    return OrderUpdate(event_time_ms=e, symbol="BTCUSDT", client_id=cid, order_id=1,
                       side=Side.BUY, order_type="LIMIT", execution_type="NEW", status=status,
                       quantity=D("1"), filled_qty=D(filled), avg_price=D(0), last_qty=D(0),
                       last_price=D(0), commission=D(0), commission_asset="",
                       realized_pnl=D(0), reduce_only=False, close_position=False,
                       trade_time_ms=e)


def algo(cid: str, status: str, symbol: str = "BTCUSDT") -> AlgoUpdate:
    return AlgoUpdate(event_time_ms=1, symbol=symbol, client_algo_id=cid, algo_id=7,
                      side=Side.SELL, order_type="STOP_MARKET", status=status,
                      trigger_price=D("60000"), close_position=True, actual_order_id=None)


def positions(*rows: tuple[str, str]) -> PositionsUpdate:
    return PositionsUpdate(1, "ORDER", tuple(PositionChange(s, D(a), D("65000"))
                                             for s, a in rows))


def rest_position(symbol: str, amount: str) -> Position:
    return Position(symbol, D(amount), D("65000"), D("65000"), D(0), 0)


def rest_algo(cid: str, symbol: str = "BTCUSDT") -> AlgoState:
    return AlgoState(symbol, 9, cid, "NEW", Side.SELL, "STOP_MARKET", D("60000"), True, None)


def test_events_open_and_close_orders_algos_and_positions() -> None:
    book = Book(FakeClock())
    book.apply(order("a", "NEW"))
    book.apply(order("a", "PARTIALLY_FILLED", filled="0.4"))
    assert book.orders["a"].filled_qty == D("0.4")
    book.apply(order("a", "FILLED", filled="1"))
    assert "a" not in book.orders
    book.apply(algo("s", "NEW"))
    assert [a.client_id for a in book.open_algos("BTCUSDT")] == ["s"]
    book.apply(algo("s", "TRIGGERED"))
    assert book.open_algos("BTCUSDT") == []
    book.apply(positions(("BTCUSDT", "0.5"), ("ETHUSDT", "-2")))
    position = book.position("ETHUSDT")
    assert position is not None
    assert position.side is Side.SELL
    book.apply(positions(("ETHUSDT", "0")))
    assert book.position("ETHUSDT") is None
    assert set(book.positions) == {"BTCUSDT"}


def test_a_rebuild_keeps_what_events_changed_during_the_fetch() -> None:
    """The snapshot was fetched before the events: the events are newer and stand."""
    book = Book(FakeClock())
    book.apply(positions(("BTCUSDT", "1")))
    book.apply(algo("old", "NEW"))
    book.begin_sync()
    book.apply(positions(("ETHUSDT", "3")))          # arrives while REST is fetched
    book.apply(algo("new", "NEW"))
    book.apply(algo("old", "CANCELED"))
    book.sync([rest_position("BTCUSDT", "2")],       # ETH not in the (older) snapshot
              [], [rest_algo("old")])                 # neither is "new"; "old" still open
    assert book.positions["BTCUSDT"].amount == D("2")
    assert book.positions["ETHUSDT"].amount == D("3")
    assert set(book.algos) == {"new"}


def test_a_rebuild_drops_what_the_exchange_no_longer_has_and_none_keeps_a_part() -> None:
    book = Book(FakeClock())
    book.apply(positions(("BTCUSDT", "1")))
    book.apply(algo("gone", "NEW"))
    book.begin_sync()
    book.sync([], None, None)                          # positions only
    assert book.positions == {}
    assert set(book.algos) == {"gone"}
    book.begin_sync()
    book.sync([], [], [])
    assert book.algos == {}


def test_marks_have_an_age() -> None:
    clock = FakeClock()
    book = Book(clock)
    assert book.mark("BTCUSDT", 2.0) is None
    book.apply_mark(MarkUpdate(1, "BTCUSDT", D("65000.5")))
    assert book.mark("BTCUSDT", 2.0) == D("65000.5")
    clock.advance(2.5)
    assert book.mark("BTCUSDT", 2.0) is None
    assert book.mark_age_s("BTCUSDT") == 2.5


async def test_wait_returns_when_an_event_about_the_client_id_arrives() -> None:
    clock = FakeClock()
    book = Book(clock)
    waiting = asyncio.create_task(book.wait("xdE", 5.0))
    await asyncio.sleep(0)
    book.apply(order("other", "NEW"))
    await asyncio.sleep(0)
    assert not waiting.done()
    book.apply(order("xdE", "FILLED", filled="1"))
    assert await waiting is True
    late = asyncio.create_task(book.wait("xdE", 5.0))
    for _ in range(3):                                # until the clock holds its sleeper
        await asyncio.sleep(0)
    clock.advance(5.0)
    assert await late is False


def test_a_rebuild_of_some_symbols_keeps_the_others_orders() -> None:
    """After a reconnect only the symbols with execd's protective orders are fetched: the
    others' algo orders stay as they were."""
    book = Book(FakeClock())
    book.apply(algo("btc-stop", "NEW"))
    book.apply(algo("eth-stop", "NEW", symbol="ETHUSDT"))
    book.begin_sync()
    book.sync([], None, [], only={"BTCUSDT"})
    assert set(book.algos) == {"eth-stop"}


def test_positions_are_followed_only_after_a_rebuild_begun_while_the_stream_was_up() -> None:
    book = Book(FakeClock())
    assert book.followed_amount("BTCUSDT") is None            # nothing known yet
    book.begin_sync()                                          # begun while the stream is down
    book.set_streaming(True)
    book.sync([rest_position("BTCUSDT", "0.5")], None, None)
    assert book.followed_amount("BTCUSDT") is None
    book.begin_sync()
    book.sync([rest_position("BTCUSDT", "0.5")], None, None)
    assert book.followed_amount("BTCUSDT") == D("0.5")
    assert book.followed_amount("ETHUSDT") == D(0)
    book.set_streaming(False)                                  # events may be lost from here
    assert book.followed_amount("BTCUSDT") is None


def test_an_order_in_flight_sends_its_symbol_to_rest_until_its_final_event() -> None:
    book = Book(FakeClock())
    book.set_streaming(True)
    book.begin_sync()
    book.sync([], None, None)
    book.expect_fill("a", "BTCUSDT")
    assert book.followed_amount("BTCUSDT") is None
    assert book.followed_amount("ETHUSDT") == D(0)
    book.answered("a")                    # REST said FILLED; the events are still to come
    assert book.followed_amount("BTCUSDT") is None
    book.apply(positions(("BTCUSDT", "1")))
    book.apply(order("a", "FILLED", filled="1"))
    assert book.followed_amount("BTCUSDT") == D("1")


def test_a_rebuild_begun_after_the_answer_retires_an_order_whose_event_was_lost() -> None:
    book = Book(FakeClock())
    book.set_streaming(True)
    book.expect_fill("a", "BTCUSDT")
    book.begin_sync()
    book.answered("a")                    # answered during this rebuild: it may miss the fill
    book.sync([], None, None)
    assert book.followed_amount("BTCUSDT") is None
    book.begin_sync()                     # begun after the answer: its snapshot has the fill
    book.sync([rest_position("BTCUSDT", "1")], None, None)
    assert book.followed_amount("BTCUSDT") == D("1")
