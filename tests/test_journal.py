"""The journal (SPEC §4.3, §5.3, §5.6, §5.7): durable, idempotent, and never on the event loop.

Real SQLite files under tmp_path; no mocks.
"""

from __future__ import annotations

import asyncio
import os
import signal as signals
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.domain import (
    Intent,
    IntentState,
    Leg,
    MarginType,
    OrderType,
    Side,
    Signal,
    SignalState,
    SignalType,
)
from app.journal import Fill, Journal
from app.journal_schema import MIGRATIONS

NOW = 1_795_000_000.0
ROOT = Path(__file__).resolve().parents[1]


def make_signal(signal_id: str, symbol: str = "BTCUSDT", **changes: Any) -> Signal:
    signal = Signal(
        id=signal_id, symbol=symbol, type=SignalType.LONG_ENTRY, quantity=Decimal("0.010"),
        take_profit=Decimal("70000.1"), stop_loss=Decimal("60000.25"), leverage=5,
        margin_type=MarginType.ISOLATED, expires_at=NOW + 30.5, source="test",
        received_at=NOW + 0.125)
    return replace(signal, **changes)


def make_intent(signal_id: str, leg: Leg, state: IntentState = IntentState.PENDING, *,
                symbol: str = "BTCUSDT", client_id: str | None = None,
                updated_at: float = NOW) -> Intent:
    algo = leg in (Leg.STOP_LOSS, Leg.TAKE_PROFIT)
    return Intent(
        signal_id=signal_id, leg=leg, client_id=client_id or f"xd{signal_id}{leg.value}",
        symbol=symbol, side=Side.SELL if algo else Side.BUY,
        order_type=OrderType.STOP_MARKET if algo else OrderType.MARKET,
        quantity=None if algo else Decimal("0.010"),
        price=Decimal("60000.25") if algo else None, reduce_only=algo, state=state,
        updated_at=updated_at,
    )


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    async with Journal(tmp_path / "data" / "journal.sqlite3") as j:
        yield j


async def accepted(journal: Journal, *ids: str, symbol: str = "BTCUSDT") -> None:
    for signal_id in ids:
        await journal.accept(make_signal(signal_id, symbol), now=NOW)


# ---------------------------------------------------------------- schema and lifecycle

async def test_open_creates_parent_dirs_wal_and_schema_version(tmp_path: Path) -> None:
    """open() makes the directories and a WAL database at the latest schema version."""
    path = tmp_path / "a" / "b" / "journal.sqlite3"
    async with Journal(path):
        pass

    def inspect() -> tuple[str, int]:
        conn = sqlite3.connect(path)
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.close()
        return mode, version

    assert await asyncio.to_thread(inspect) == ("wal", len(MIGRATIONS))


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer schema is not opened (no silent downgrade)."""
    path = tmp_path / "journal.sqlite3"

    def stamp() -> None:
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA user_version = 99")
        conn.close()

    await asyncio.to_thread(stamp)
    with pytest.raises(RuntimeError, match="schema version 99"):
        await Journal(path).open()


async def test_unknown_synchronous_mode_is_refused(tmp_path: Path) -> None:
    """synchronous must be NORMAL, FULL or EXTRA: OFF would trade away durability."""
    with pytest.raises(ValueError, match="synchronous"):
        Journal(tmp_path / "j.sqlite3", synchronous="OFF")


async def test_closed_journal_refuses_work_and_close_is_idempotent(tmp_path: Path) -> None:
    """After close() every call raises RuntimeError; a second close() is harmless."""
    journal = Journal(tmp_path / "j.sqlite3", synchronous="full")
    await journal.open()
    await journal.close()
    await journal.close()
    assert "closed" in repr(journal)
    with pytest.raises(RuntimeError, match="not open"):
        await journal.get_signal("x")


# ---------------------------------------------------------------- signals

async def test_accept_journals_a_new_signal_as_accepted(journal: Journal) -> None:
    """A new id is stored ACCEPTED, with seq 1 and the caller's time, and reported as new."""
    record, new = await journal.accept(make_signal("s1"), now=NOW)
    assert new
    assert (record.state, record.reason, record.seq) == (SignalState.ACCEPTED, None, 1)
    assert (record.accepted_at, record.updated_at) == (NOW, NOW)
    assert await journal.get_signal("s1") == record


async def test_get_signal_round_trips_every_field(journal: Journal) -> None:
    """The stored signal reads back equal, decimals to the last digit, None fields included."""
    full = make_signal("full", quantity=Decimal("0.00000010"), source=None)
    bare = make_signal("bare", type=SignalType.CLOSE_SHORT, quantity=None, take_profit=None,
                       stop_loss=None, leverage=None, margin_type=None)
    for signal in (full, bare):
        await journal.accept(signal, now=NOW)
    records = [await journal.get_signal(s.id) for s in (full, bare)]
    assert [r.signal if r else None for r in records] == [full, bare]


async def test_get_signal_of_unknown_id_is_none(journal: Journal) -> None:
    """An id never accepted reads as None."""
    assert await journal.get_signal("nope") is None


async def test_duplicate_accept_returns_existing_record_unchanged(journal: Journal) -> None:
    """A known id returns the first record and False; the journal is not touched."""
    first, _ = await journal.accept(make_signal("dup"), now=NOW)
    again, new = await journal.accept(make_signal("dup", symbol="ETHUSDT"), now=NOW + 5)
    assert not new
    assert again == first
    assert (await journal.counts())["ACCEPTED"] == 1


async def test_seq_increases_in_acceptance_order(journal: Journal) -> None:
    """Each new signal gets the next sequence number; a duplicate does not consume one."""
    seqs = [(await journal.accept(make_signal(i), now=NOW))[0].seq for i in ("a", "b", "a", "c")]
    assert seqs == [1, 2, 1, 3]


async def test_accept_is_committed_when_it_returns_and_holds_no_lock(journal: Journal) -> None:
    """The accept is one statement in autocommit: once it returns (a new id or a duplicate),
    another connection reads it and takes the write lock at once."""
    await journal.accept(make_signal("a"), now=NOW)
    await journal.accept(make_signal("a"), now=NOW)

    def other() -> list[tuple[str, int]]:
        conn = sqlite3.connect(journal.path, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")      # raises "database is locked" if still held
            conn.execute("ROLLBACK")
            return conn.execute("SELECT id, seq FROM signals").fetchall()
        finally:
            conn.close()

    assert await asyncio.to_thread(other) == [("a", 1)]


async def test_set_signal_state_records_state_reason_and_time(journal: Journal) -> None:
    """A transition stores state, reason and updated_at; acceptance time and seq stay."""
    await accepted(journal, "s1")
    await journal.set_signal_state("s1", SignalState.RUNNING, reason=None, now=NOW + 1)
    record = await journal.set_signal_state("s1", SignalState.FAILED, reason="-2019: margin",
                                            now=NOW + 2)
    assert (record.state, record.reason, record.updated_at) == (SignalState.FAILED,
                                                                "-2019: margin", NOW + 2)
    assert (record.seq, record.accepted_at) == (1, NOW)
    assert await journal.get_signal("s1") == record


async def test_end_signal_moves_it_and_lists_its_intents_in_one_trip(journal: Journal) -> None:
    """The executor's last word: the terminal state and the intents as `intents_for` gives them
    (leg order), from one call; a second end of the same state changes nothing."""
    await accepted(journal, "s1")
    for leg in (Leg.TAKE_PROFIT, Leg.ENTRY, Leg.STOP_LOSS):
        await journal.put_intent(make_intent("s1", leg, IntentState.PLACED))
    record, intents = await journal.end_signal("s1", SignalState.DONE, reason="ok", now=NOW + 1)
    assert (record.state, record.reason) == (SignalState.DONE, "ok")
    assert intents == await journal.intents_for("s1")
    assert [i.leg for i in intents] == [Leg.ENTRY, Leg.STOP_LOSS, Leg.TAKE_PROFIT]
    again, _ = await journal.end_signal("s1", SignalState.DONE, reason="later", now=NOW + 2)
    assert again == record


async def test_set_signal_state_of_unknown_id_raises_key_error(journal: Journal) -> None:
    """There is no state to change for a signal never accepted."""
    with pytest.raises(KeyError, match="ghost"):
        await journal.set_signal_state("ghost", SignalState.RUNNING, reason=None, now=NOW)


async def test_terminal_signal_cannot_move_to_another_state(journal: Journal) -> None:
    """DONE is final: moving it elsewhere raises ValueError naming both states, and nothing
    changes."""
    await accepted(journal, "s1")
    done = await journal.set_signal_state("s1", SignalState.DONE, reason="filled", now=NOW)
    with pytest.raises(ValueError, match="from DONE to RUNNING"):
        await journal.set_signal_state("s1", SignalState.RUNNING, reason=None, now=NOW + 1)
    assert await journal.get_signal("s1") == done


async def test_repeating_a_terminal_state_keeps_the_first_record(journal: Journal) -> None:
    """Setting a terminal signal to the state it has is a no-op: the first reason stands."""
    await accepted(journal, "s1")
    first = await journal.set_signal_state("s1", SignalState.EXPIRED, reason="ttl", now=NOW)
    again = await journal.set_signal_state("s1", SignalState.EXPIRED, reason="other", now=NOW + 9)
    assert again == first == await journal.get_signal("s1")


async def test_running_signal_cannot_go_back_to_accepted(journal: Journal) -> None:
    """SPEC §5.7 only moves forward: RUNNING → ACCEPTED raises ValueError."""
    await accepted(journal, "s1")
    await journal.set_signal_state("s1", SignalState.RUNNING, reason=None, now=NOW)
    with pytest.raises(ValueError, match="from RUNNING to ACCEPTED"):
        await journal.set_signal_state("s1", SignalState.ACCEPTED, reason=None, now=NOW)


async def test_non_terminal_signals_in_acceptance_order(journal: Journal) -> None:
    """Recovery sees ACCEPTED and RUNNING signals, oldest acceptance first, terminal ones not."""
    await accepted(journal, "a", "b", "c", "d")
    await journal.set_signal_state("c", SignalState.RUNNING, reason=None, now=NOW)
    await journal.set_signal_state("a", SignalState.RUNNING, reason=None, now=NOW + 1)
    await journal.set_signal_state("b", SignalState.REJECTED, reason="symbol", now=NOW)
    pending = await journal.non_terminal_signals()
    assert [(r.signal.id, r.state) for r in pending] == [
        ("a", SignalState.RUNNING), ("c", SignalState.RUNNING), ("d", SignalState.ACCEPTED)]


async def test_counts_reports_every_state(journal: Journal) -> None:
    """counts() has an entry for each signal state, zero when empty."""
    await accepted(journal, "a", "b", "c")
    await journal.set_signal_state("b", SignalState.DONE, reason=None, now=NOW)
    assert await journal.counts() == {"ACCEPTED": 2, "RUNNING": 0, "DONE": 1, "REJECTED": 0,
                                      "FAILED": 0, "EXPIRED": 0, "CANCELED": 0}


async def test_concurrent_accepts_of_one_id_store_it_once(journal: Journal) -> None:
    """20 tasks accepting the same id: one new record, 19 duplicates, all the same record."""
    results = await asyncio.gather(*(journal.accept(make_signal("same"), now=NOW + i)
                                     for i in range(20)))
    assert sorted(new for _, new in results) == [False] * 19 + [True]
    assert len({record for record, _ in results}) == 1
    assert (await journal.counts())["ACCEPTED"] == 1


# ---------------------------------------------------------------- intents

async def test_put_intent_then_get_intent_round_trips(journal: Journal) -> None:
    """An intent reads back equal: enums, exact decimals, None fields, flags, time."""
    await accepted(journal, "s1")
    entry = make_intent("s1", Leg.ENTRY)
    stop = make_intent("s1", Leg.STOP_LOSS, IntentState.REJECTED).with_state(
        IntentState.REJECTED, error_code=-2021, error_message="Order would immediately trigger.")
    for intent in (entry, stop):
        await journal.put_intent(intent)
    assert [await journal.get_intent(i.client_id) for i in (entry, stop)] == [entry, stop]
    assert await journal.get_intent("unknown") is None


async def test_decimals_are_stored_as_text(journal: Journal) -> None:
    """Quantities and prices are TEXT in the database, never REAL."""
    await accepted(journal, "s1")
    await journal.put_intent(make_intent("s1", Leg.ENTRY))
    await journal.put_intent(make_intent("s1", Leg.STOP_LOSS))

    def column_types() -> set[tuple[str, str]]:
        conn = sqlite3.connect(journal.path)
        rows = conn.execute("SELECT typeof(quantity), typeof(price) FROM intents").fetchall()
        conn.close()
        return set(rows)

    assert await asyncio.to_thread(column_types) == {("text", "null"), ("null", "text")}


async def test_put_intent_upserts_by_client_id(journal: Journal) -> None:
    """Putting the same client id again replaces its state and details, not adds a row."""
    await accepted(journal, "s1")
    sending = make_intent("s1", Leg.ENTRY, IntentState.SENDING)
    await journal.put_intent(sending)
    filled = sending.with_state(IntentState.FILLED, exchange_id="4242", now=NOW + 1)
    await journal.put_intent(filled)
    assert await journal.intents_for("s1") == [filled]


async def test_put_intent_refuses_a_client_id_of_another_signal_or_leg(journal: Journal) -> None:
    """A client id belongs to one (signal, leg) for good: a mismatch raises ValueError."""
    await accepted(journal, "s1", "s2")
    original = make_intent("s1", Leg.ENTRY, client_id="xdshared")
    await journal.put_intent(original)
    for wrong in (make_intent("s2", Leg.ENTRY, client_id="xdshared"),
                  make_intent("s1", Leg.CLOSE, client_id="xdshared")):
        with pytest.raises(ValueError, match="belongs to signal 's1' leg E"):
            await journal.put_intent(wrong)
    assert await journal.get_intent("xdshared") == original


async def test_put_intent_for_an_unknown_signal_raises_key_error(journal: Journal) -> None:
    """An intent needs its signal journaled first, or recovery could never resume it."""
    with pytest.raises(KeyError, match="ghost"):
        await journal.put_intent(make_intent("ghost", Leg.ENTRY))


async def test_intents_for_orders_by_leg_then_as_first_journaled(journal: Journal) -> None:
    """A signal's intents come back E, S, T, C, whatever the write order; two of one leg (a
    stop-loss placed again by the guard) in the order first journaled, the latest last."""
    await accepted(journal, "s1", "s2")
    written = [make_intent("s1", Leg.CLOSE), make_intent("s1", Leg.TAKE_PROFIT),
               make_intent("s1", Leg.STOP_LOSS, client_id="xds1S-b"),
               make_intent("s1", Leg.ENTRY), make_intent("s2", Leg.ENTRY),
               make_intent("s1", Leg.STOP_LOSS, client_id="xds1S-a")]
    for intent in written:
        await journal.put_intent(intent)
    order = [(i.leg, i.client_id) for i in await journal.intents_for("s1")]
    assert order == [(Leg.ENTRY, "xds1E"), (Leg.STOP_LOSS, "xds1S-b"),
                     (Leg.STOP_LOSS, "xds1S-a"), (Leg.TAKE_PROFIT, "xds1T"),
                     (Leg.CLOSE, "xds1C")]
    assert await journal.intents_for("none") == []


async def test_intents_in_states_filters_by_state(journal: Journal) -> None:
    """Only intents in the given states are returned, in the order first journaled."""
    await accepted(journal, "a", "b", "c")
    await journal.put_intent(make_intent("a", Leg.ENTRY, IntentState.SENDING))
    await journal.put_intent(make_intent("b", Leg.ENTRY, IntentState.FILLED))
    await journal.put_intent(make_intent("c", Leg.ENTRY, IntentState.PENDING))
    await journal.put_intent(make_intent("a", Leg.STOP_LOSS, IntentState.SENDING))
    found = await journal.intents_in_states([IntentState.SENDING, IntentState.PENDING])
    assert [i.client_id for i in found] == ["xdaE", "xdcE", "xdaS"]
    assert await journal.intents_in_states([]) == []


async def test_live_protective_lists_placed_stops_and_takes_of_a_symbol(journal: Journal) -> None:
    """Only S/T legs PLACED on that symbol count, oldest first; entries, other states and
    other symbols do not."""
    await accepted(journal, "old", "new")
    await accepted(journal, "eth", symbol="ETHUSDT")
    placed = IntentState.PLACED
    await journal.put_intent(make_intent("old", Leg.TAKE_PROFIT, placed))
    await journal.put_intent(make_intent("old", Leg.STOP_LOSS, placed))
    await journal.put_intent(make_intent("new", Leg.ENTRY, placed))
    await journal.put_intent(make_intent("new", Leg.STOP_LOSS, IntentState.CANCELLED))
    await journal.put_intent(make_intent("new", Leg.TAKE_PROFIT, placed))
    await journal.put_intent(make_intent("eth", Leg.STOP_LOSS, placed, symbol="ETHUSDT"))
    live = await journal.live_protective("BTCUSDT")
    assert [i.client_id for i in live] == ["xdoldT", "xdoldS", "xdnewT"]
    every = await journal.live_protective_all()
    assert [i.client_id for i in every] == ["xdoldT", "xdoldS", "xdnewT", "xdethS"]


# ---------------------------------------------------------------- offsets

async def test_offsets_are_none_until_set_then_overwritten(journal: Journal) -> None:
    """A spool offset reads None until set; a later set replaces it."""
    assert await journal.get_offset("spool") is None
    await journal.set_offset("spool", 120)
    await journal.set_offset("spool", 245)
    await journal.set_offset("other", 7)
    assert (await journal.get_offset("spool"), await journal.get_offset("other")) == (245, 7)


async def test_an_offset_keeps_the_identity_of_its_file(journal: Journal) -> None:
    """The file an offset is in is stored beside it and kept by sets that do not name one
    (a line accepted with its offset), until another is given."""
    assert await journal.get_offset_file("spool") is None
    await journal.set_offset("spool", 0, file="2049:77")
    await journal.accept(make_signal("s1"), now=NOW, offset=("spool", 80))
    await journal.set_offset("spool", 90)
    assert (await journal.get_offset("spool"), await journal.get_offset_file("spool")) == (
        90, "2049:77")
    await journal.set_offset("spool", 0, file="2049:78")
    assert await journal.get_offset_file("spool") == "2049:78"


async def test_set_offsets_stores_all_or_none(journal: Journal) -> None:
    """set_offsets() is one transaction: one bad value and none of them is stored."""
    await journal.set_offsets({"gen": (1, None), "spool": (0, "1:2")})
    with pytest.raises(ValueError, match="offset 'spool'"):
        await journal.set_offsets({"gen": (2, None), "spool": (-1, "1:3")})
    assert (await journal.get_offset("gen"), await journal.get_offset("spool"),
            await journal.get_offset_file("spool")) == (1, 0, "1:2")


async def test_negative_offset_is_refused(journal: Journal) -> None:
    """An offset is a byte position: below zero raises ValueError."""
    with pytest.raises(ValueError, match="offset"):
        await journal.set_offset("spool", -1)


async def test_accept_can_advance_an_offset_in_the_same_commit(journal: Journal) -> None:
    """accept(offset=...) stores the spool offset with the signal, also for a duplicate."""
    await journal.accept(make_signal("s1"), now=NOW, offset=("spool", 80))
    await journal.accept(make_signal("s1"), now=NOW, offset=("spool", 160))
    assert await journal.get_offset("spool") == 160


async def test_a_failed_accept_leaves_the_offset_alone(journal: Journal) -> None:
    """The offset and the signal commit together or not at all."""
    await journal.set_offset("spool", 10)
    with pytest.raises(ValueError, match="offset"):
        await journal.accept(make_signal("s1"), now=NOW, offset=("spool", -5))
    assert await journal.get_offset("spool") == 10
    assert await journal.get_signal("s1") is None


# ---------------------------------------------------------------- durability

async def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    """Signals, states, intents and offsets are all there after a restart; seq continues."""
    path = tmp_path / "journal.sqlite3"
    async with Journal(path) as journal:
        await accepted(journal, "a", "b")
        await journal.set_signal_state("a", SignalState.RUNNING, reason=None, now=NOW)
        await journal.put_intent(make_intent("a", Leg.ENTRY, IntentState.SENDING))
        await journal.set_offset("spool", 99)
        before = (await journal.non_terminal_signals(), await journal.intents_for("a"))
    async with Journal(path) as journal:
        assert (await journal.non_terminal_signals(), await journal.intents_for("a")) == before
        assert await journal.get_offset("spool") == 99
        record, new = await journal.accept(make_signal("c"), now=NOW)
        assert (new, record.seq) == (True, 3)


CRASH_SCRIPT = """
import asyncio, sys
from decimal import Decimal
from pathlib import Path
from app.domain import Intent, IntentState, Leg, OrderType, Side, Signal, SignalType
from app.journal import Journal

async def main():
    async with Journal(Path(sys.argv[1])) as journal:
        for n in range(int(sys.argv[2])):
            sid = f"crash-{n}"
            await journal.accept(Signal(
                id=sid, symbol="BTCUSDT", type=SignalType.LONG_ENTRY,
                quantity=Decimal("0.010"), take_profit=None, stop_loss=None, leverage=None,
                margin_type=None, expires_at=2e9, source=None, received_at=1e9), now=1e9)
            await journal.put_intent(Intent(
                signal_id=sid, leg=Leg.ENTRY, client_id=f"xd{n}E", symbol="BTCUSDT",
                side=Side.BUY, order_type=OrderType.MARKET, quantity=Decimal("0.010"),
                price=None, reduce_only=False, state=IntentState.SENDING, updated_at=1e9))
            await journal.set_offset("spool", n)
            print("done", n, flush=True)

asyncio.run(main())
"""


async def test_committed_work_survives_kill_9(tmp_path: Path) -> None:
    """SIGKILL mid-stream: every signal whose accept had returned is in the journal, with its
    intent, and the journal opens cleanly."""
    path, total, kill_after = tmp_path / "journal.sqlite3", 2_000, 40
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASH_SCRIPT, str(path), str(total), cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    done: list[int] = []
    while not done or done[-1] < kill_after:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert line, (await proc.stderr.read()).decode()
        done.append(int(line.split()[1]))
    os.kill(proc.pid, signals.SIGKILL)
    rest = await proc.stdout.read()  # lines printed before the kill landed count too
    await proc.stderr.read()
    assert await proc.wait() == -signals.SIGKILL
    done += [int(line.split()[1]) for line in rest.decode().splitlines() if line.strip()]
    assert done[-1] < total - 1, "the writer finished before the kill: nothing was tested"

    async with Journal(path) as journal:
        pending = await journal.non_terminal_signals()
        stored = {record.signal.id for record in pending}
        assert {f"crash-{n}" for n in done} <= stored
        assert [r.seq for r in pending] == list(range(1, len(pending) + 1))
        sending = {i.client_id for i in await journal.intents_in_states([IntentState.SENDING])}
        assert {f"xd{n}E" for n in done} <= sending
        assert (await journal.get_offset("spool") or 0) >= done[-1]


# ---------------------------------------------------------------- the event loop

@pytest.mark.timeout(20)  # a journal that blocked the loop would sit out 5 s per accept
async def test_event_loop_keeps_turning_while_accepts_run(journal: Journal) -> None:
    """500 accepts wait on a write lock held elsewhere, and a 1 ms ticker still runs: the
    database work is off the loop. The lock is released only after 50 ticks, so the accepts
    are in flight the whole time, however fast the machine."""
    locker = await asyncio.to_thread(sqlite3.connect, journal.path, isolation_level=None,
                                     check_same_thread=False)
    await asyncio.to_thread(locker.execute, "BEGIN IMMEDIATE")
    ticks, max_gap = 0, 0.0
    fifty = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks, max_gap
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            ticks, max_gap = ticks + 1, max(max_gap, now - last)
            last = now
            if ticks >= 50:
                fifty.set()

    async with asyncio.TaskGroup() as tasks:
        ticking = tasks.create_task(ticker())
        accepts = asyncio.gather(*(journal.accept(make_signal(f"s{n}"), now=NOW)
                                   for n in range(500)))
        try:
            await asyncio.wait_for(fifty.wait(), timeout=4)  # under the 5 s busy timeout
        finally:
            await asyncio.to_thread(locker.execute, "ROLLBACK")
            await asyncio.to_thread(locker.close)
        results = await accepts
        ticking.cancel()

    assert all(new for _, new in results)
    assert ticks >= 50
    assert max_gap < 1.0, f"the loop stalled for {max_gap:.3f} s"
    assert (await journal.counts())["ACCEPTED"] == 500


async def test_a_version_1_journal_is_migrated_keeping_its_signals(tmp_path: Path) -> None:
    """A journal written before fills existed opens: its signals stay, filled_quantity is
    None, and fills can be added (each trade once)."""
    path = tmp_path / "j.sqlite3"

    def old_schema() -> None:
        conn = sqlite3.connect(path)
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO signals (id, seq, symbol, state, reason, accepted_at, "
                     "updated_at, body) VALUES ('s1', 1, 'BTCUSDT', 'DONE', NULL, 1, 1, ?)",
                     (orjson.dumps(make_signal("s1").to_record()).decode(),))
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
        conn.close()

    await asyncio.to_thread(old_schema)
    async with Journal(path) as journal:
        record = await journal.get_signal("s1")
        assert record is not None
        assert record.filled_quantity is None
        await journal.set_filled_quantity("s1", Decimal("0.003"))
        record = await journal.get_signal("s1")
        assert record is not None
        assert record.filled_quantity == Decimal("0.003")
        fill = Fill("xdABCE", 7, "BTCUSDT", Side.BUY, Decimal("0.003"), Decimal("65000.1"),
                    Decimal("0.078"), "USDT", Decimal("-1.5"), 1.0)
        assert await journal.add_fill(fill)
        assert not await journal.add_fill(fill)              # a replayed event: once only
        assert await journal.fills_for("xdABCE") == [fill]
        assert (await journal.day_result(0.5))[0] == {"BTCUSDT": Decimal("-1.5")}
        assert (await journal.day_result(2.0))[0] == {}
        second = replace(fill, trade_id=8, time=2.0)
        assert await journal.add_fill_listing(second) == (True, [fill, second])
        assert await journal.add_fill_listing(second) == (False, [fill, second])
