"""The journal's part in SPEC §5.10: the trading state survives a restart, a cancel and the
executor's start are one conditional transaction each, and the day's result is read from the
fills."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from app.domain import Side, SignalState, StateChange, TradingState
from app.journal import Fill, Journal
from tests.test_journal import NOW, make_signal


async def test_trading_state_is_none_until_saved_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    async with Journal(path) as journal:
        assert await journal.load_trading_state() is None
        await journal.save_trading_state(StateChange(TradingState.REDUCING, "bad day", NOW,
                                                     "operator"))
        await journal.save_trading_state(StateChange(TradingState.HALTED, "key", NOW + 1,
                                                     "kill switch"))
    async with Journal(path) as journal:
        assert await journal.load_trading_state() == StateChange(
            TradingState.HALTED, "key", NOW + 1, "kill switch")


async def test_a_move_with_expect_changes_only_the_expected_state(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite3") as journal:
        await journal.accept(make_signal("a"), now=NOW)
        cancelled = await journal.set_signal_state("a", SignalState.CANCELED, reason="op",
                                                   now=NOW, expect=SignalState.ACCEPTED)
        assert cancelled.state is SignalState.CANCELED
        # the executor comes second: nothing moves, it sees CANCELED
        late = await journal.set_signal_state("a", SignalState.RUNNING, reason=None, now=NOW,
                                              expect=SignalState.ACCEPTED)
        assert late.state is SignalState.CANCELED
        await journal.accept(make_signal("b"), now=NOW)
        await journal.set_signal_state("b", SignalState.RUNNING, reason=None, now=NOW)
        refused = await journal.set_signal_state("b", SignalState.CANCELED, reason="op",
                                                 now=NOW, expect=SignalState.ACCEPTED)
        assert refused.state is SignalState.RUNNING
        assert (await journal.counts())["CANCELED"] == 1


async def test_day_result_sums_pnl_and_commissions_by_asset_since(tmp_path: Path) -> None:
    D = Decimal
    async with Journal(tmp_path / "j.sqlite3") as journal:
        for trade, (pnl, fee, asset, when) in enumerate([
                ("-10.5", "0.2", "USDT", NOW - 100),        # yesterday: not counted
                ("-20", "0.4", "USDT", NOW + 1),
                ("5", "0.01", "BNB", NOW + 2)]):
            await journal.add_fill(Fill("c1", trade, "BTCUSDT", Side.SELL, D("0.1"),
                                        D("60000"), D(fee), asset, D(pnl), when))
        pnl, paid = await journal.day_result(NOW)
        assert pnl == {"BTCUSDT": D("-15")}
        assert paid == {"USDT": D("0.4"), "BNB": D("0.01")}


async def test_the_first_intent_starts_its_signal_in_the_same_transaction(
        tmp_path: Path) -> None:
    from app.domain import Intent, IntentState, Leg, OrderType
    from app.journal import SignalEnded

    def entry(signal_id: str) -> Intent:
        return Intent(signal_id=signal_id, leg=Leg.ENTRY, client_id=f"xd{signal_id}E",
                      symbol="BTCUSDT", side=Side.BUY, order_type=OrderType.MARKET,
                      quantity=Decimal("0.01"), price=None, reduce_only=False,
                      state=IntentState.SENDING, updated_at=NOW + 1)

    async with Journal(tmp_path / "j.sqlite3") as journal:
        a, _ = await journal.accept(make_signal("a"), now=NOW)
        await journal.put_intent(entry("a"), start=a)
        started = await journal.get_signal("a")
        assert started is not None
        assert (started.state, started.updated_at) == (SignalState.RUNNING, NOW + 1)
        b, _ = await journal.accept(make_signal("b"), now=NOW)
        await journal.set_signal_state("b", SignalState.CANCELED, reason="op", now=NOW)
        with pytest.raises(SignalEnded) as ended:
            await journal.put_intent(entry("b"), start=b)
        assert ended.value.record.state is SignalState.CANCELED
        assert await journal.intents_for("b") == []            # nothing written


async def test_a_start_that_fails_writes_nothing_and_a_second_start_moves_nothing(
        tmp_path: Path) -> None:
    """The start is one statement (`journal_rows.start_intent`): an unknown signal (KeyError)
    or a client id of another signal (ValueError) leaves every row as it was; a start of a
    signal already RUNNING writes the intent and tells the listeners nothing."""
    from app.domain import Intent, IntentState, Leg, OrderType
    from app.journal import SignalRecord

    def intent(signal_id: str, client_id: str, leg: Leg = Leg.ENTRY) -> Intent:
        return Intent(signal_id=signal_id, leg=leg, client_id=client_id, symbol="BTCUSDT",
                      side=Side.BUY, order_type=OrderType.MARKET, quantity=Decimal("0.01"),
                      price=None, reduce_only=False, state=IntentState.SENDING,
                      updated_at=NOW + 1)

    heard: list[SignalRecord] = []
    async with Journal(tmp_path / "j.sqlite3") as journal:
        journal.add_listener(heard.append)
        a, _ = await journal.accept(make_signal("a"), now=NOW)
        accepted_b, _ = await journal.accept(make_signal("b"), now=NOW)
        await journal.put_intent(intent("a", "xdaE"), start=a)
        assert [(r.signal.id, r.state) for r in heard] == [
            ("a", SignalState.ACCEPTED), ("b", SignalState.ACCEPTED), ("a", SignalState.RUNNING)]
        with pytest.raises(KeyError, match="ghost"):
            await journal.put_intent(intent("ghost", "xdghostE"),
                                     start=replace(a, signal=make_signal("ghost")))
        with pytest.raises(ValueError, match="belongs to signal 'a' leg E"):
            await journal.put_intent(intent("b", "xdaE"), start=accepted_b)
        b = await journal.get_signal("b")
        assert b is not None
        assert b.state is SignalState.ACCEPTED                  # not started without its intent
        assert await journal.intents_for("b") == []
        await journal.put_intent(intent("a", "xdaS", Leg.STOP_LOSS), start=a)
        assert len(heard) == 3                                  # RUNNING already: no news
        assert [i.client_id for i in await journal.intents_for("a")] == ["xdaE", "xdaS"]
        # Given its ACCEPTED record (the executor's way), the RUNNING record the listeners
        # hear of is made from it, not read back: the same as the journal's.
        accepted, _ = await journal.accept(make_signal("c"), now=NOW)
        await journal.put_intent(intent("c", "xdcE"), start=accepted)
        assert heard[-1] == await journal.get_signal("c")
        assert (heard[-1].state, heard[-1].updated_at) == (SignalState.RUNNING, NOW + 1)
