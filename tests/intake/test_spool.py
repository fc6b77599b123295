"""The spool tail: JSONL lines become signals exactly once, bad lines are skipped (SPEC §4.2)."""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from app.clock import FakeClock, SystemClock
from app.domain import SignalState
from app.exchange.symbols import trading_rules
from app.factory import ExchangeParts
from app.intake.bus import SignalBus
from app.intake.service import Service
from app.intake.spool import (
    CHUNK_BYTES,
    FAILED_RETRY_MAX_S,
    MAX_LINE_BYTES,
    SpoolTail,
    spool_name,
)
from app.journal import Journal
from tests.intake.conftest import Tail
from tests.simulator import Admin
from tests.test_journal_durability import read_only, write_lock


def line(signal_id: str | None = None, **fields: Any) -> bytes:
    """An entry for 0.002 BTCUSDT as one JSONL line (no id if `signal_id` is None)."""
    body: dict[str, Any] = {"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.002"}
    if signal_id is not None:
        body["id"] = signal_id
    return orjson.dumps(body | fields) + b"\n"


def size(path: Path) -> int:
    return path.stat().st_size


def replace(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as file:
        file.write(data)


async def journaled(journal: Journal, signal_id: str) -> bool:
    return await journal.get_signal(signal_id) is not None


async def states(journal: Journal, *ids: str) -> list[SignalState | None]:
    records = [await journal.get_signal(i) for i in ids]
    return [None if r is None else r.state for r in records]


async def orders_per_client_id(admin: Admin) -> collections.Counter[str]:
    return collections.Counter(row["client_id"] for row in await admin.orders("order"))


def rejected(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "signal_rejected"]


async def test_lines_become_done_signals(tail: Tail, spool: Path, journal: Journal,
                                         bus: SignalBus, admin: Admin) -> None:
    """Three lines: three DONE signals, one entry order each, offset at the end of the file."""
    append(spool, line("sp-1") + line("sp-2") + line("sp-3"))
    assert await tail().catch_up() == 3
    assert await bus.drain(30)
    assert await states(journal, "sp-1", "sp-2", "sp-3") == [SignalState.DONE] * 3
    assert sorted((await orders_per_client_id(admin)).values()) == [1, 1, 1]
    assert await journal.get_offset(spool_name(spool)) == size(spool)


async def test_bad_lines_are_audited_and_skipped(tail: Tail, spool: Path, journal: Journal,
                                                 bus: SignalBus) -> None:
    """Broken JSON, an unknown field, a wrong type, bad UTF-8, a non-object and an unknown
    symbol: one signal_rejected each, with line and offset; the lines after them still run."""
    lines = [
        line("ok-1"),
        b'{"id": "bad-json", "symbol": \n',
        line("bad-field", colour="red"),
        line("bad-type", quantity=2),
        b'{"id": "bad-utf8", "source": "\xff\xfe"}\n',
        b"[1, 2]\n",
        line("bad-symbol", symbol="NOPEUSDT"),
        b"\n",
        line("ok-2"),
    ]
    append(spool, b"".join(lines))
    starts = [sum(map(len, lines[:i])) for i in range(len(lines))]
    with capture_logs(processors=[merge_contextvars]) as logs:
        assert await tail().catch_up() == 8
    assert await bus.drain(30)
    assert await states(journal, "ok-1", "ok-2") == [SignalState.DONE] * 2
    for signal_id in ("bad-json", "bad-field", "bad-type", "bad-utf8", "bad-symbol"):
        assert await journal.get_signal(signal_id) is None
    events = rejected(logs)
    assert [(e["spool_line"], e["spool_offset"], e["field"]) for e in events] == [
        (2, starts[1], "body"), (3, starts[2], "colour"), (4, starts[3], "quantity"),
        (5, starts[4], "body"), (6, starts[5], "body"), (7, starts[6], "symbol")]
    assert {(e["source"], e["log_level"]) for e in events} == {("spool", "warning")}
    assert events[3] == {"event": "signal_rejected", "log_level": "warning", "source": "spool",
                         "field": "body", "detail": "is not UTF-8 (bad byte at 30)",
                         "spool_line": 5, "spool_offset": starts[4]}
    assert events[1]["detail"] == "unknown field"
    assert events[0]["detail"].startswith("is not valid JSON: ")
    assert events[4]["detail"] == "must be a JSON object"
    assert await journal.get_offset(spool_name(spool)) == size(spool)


async def test_restart_neither_skips_nor_repeats(tail: Tail, spool: Path, journal: Journal,
                                                 bus: SignalBus, admin: Admin) -> None:
    """A second tail on the same journal and file reads only lines appended after the first."""
    append(spool, line("rs-1") + line() + line("rs-3"))
    assert await tail().catch_up() == 3
    assert await bus.drain(30)
    second = tail()
    assert await second.catch_up() == 0
    append(spool, line("rs-4") + line())
    assert await second.catch_up() == 2
    assert await bus.drain(30)
    assert (await journal.counts())[SignalState.DONE] == 5
    per_client = await orders_per_client_id(admin)
    assert len(per_client) == 5
    assert set(per_client.values()) == {1}


async def test_rewound_line_without_id_is_one_signal(tail: Tail, spool: Path,
                                                     journal: Journal, bus: SignalBus,
                                                     admin: Admin) -> None:
    """A line without id read twice (the offset rewound) is a duplicate, not a second signal:
    its id derives from the spool and the line's offset."""
    append(spool, line() + line(None, id=None))
    spooler = tail()
    assert await spooler.catch_up() == 2
    assert await bus.drain(30)
    await journal.set_offset(spool_name(spool), 0)
    with capture_logs() as logs:
        assert await spooler.catch_up() == 2
    assert await bus.drain(30)
    assert [e["event"] for e in logs if e["event"].startswith("signal_")] == [
        "signal_received", "signal_duplicate"] * 2
    assert (await journal.counts())[SignalState.DONE] == 2
    assert sorted((await orders_per_client_id(admin)).values()) == [1, 1]
    ids = [e["signal_id"] for e in logs if e["event"] == "signal_duplicate"]
    assert [i.rsplit("-", 1)[1] for i in ids] == ["0", str(len(line()))]
    assert all(re.fullmatch(r"spool-[0-9a-f]{10}-[0-9]+", i) for i in ids)


async def test_line_id_is_kept(tail: Tail, spool: Path, journal: Journal,
                               bus: SignalBus) -> None:
    """A line's own id is used as is."""
    append(spool, line("my-own-id"))
    assert await tail().catch_up() == 1
    assert await bus.drain(30)
    assert await states(journal, "my-own-id") == [SignalState.DONE]


async def test_partial_last_line_waits_for_its_newline(tail: Tail, spool: Path,
                                                       journal: Journal, bus: SignalBus) -> None:
    """A last line without its newline is not read until the newline arrives."""
    complete, partial = line("pl-1"), line("pl-2")
    append(spool, complete + partial[:20])
    spooler = tail()
    assert await spooler.catch_up() == 1
    assert await spooler.catch_up() == 0
    assert await journal.get_offset(spool_name(spool)) == len(complete)
    append(spool, partial[20:])
    assert await spooler.catch_up() == 1
    assert await bus.drain(30)
    assert await states(journal, "pl-1", "pl-2") == [SignalState.DONE] * 2


async def test_truncated_file_is_read_again_from_zero(tail: Tail, spool: Path,
                                                      journal: Journal, bus: SignalBus) -> None:
    """A file shorter than the offset is re-read from 0; its id-less lines are new signals,
    not duplicates of the old lines at the same offsets."""
    append(spool, line() + line())
    spooler = tail()
    assert await spooler.catch_up() == 2
    replace(spool, line())
    with capture_logs() as logs:
        assert await spooler.catch_up() == 1
    assert await bus.drain(30)
    assert [e for e in logs if e["event"] == "spool_truncated"] == [{
        "event": "spool_truncated", "log_level": "warning", "path": str(spool),
        "offset": 2 * len(line()), "size": len(line())}]
    assert (await journal.counts())[SignalState.DONE] == 3
    assert await journal.get_offset(spool_name(spool)) == len(line())
    assert await tail().catch_up() == 0  # the new generation survives a restart


async def test_over_long_line_is_rejected(tail: Tail, spool: Path, journal: Journal,
                                          bus: SignalBus) -> None:
    """A line over 64 KiB is rejected unread; the next line runs."""
    long = line("too-long", source="x" * MAX_LINE_BYTES)
    append(spool, long + line("after-long"))
    with capture_logs() as logs:
        assert await tail().catch_up() == 2
    assert await bus.drain(30)
    assert rejected(logs) == [{
        "event": "signal_rejected", "log_level": "warning", "source": "spool", "field": "body",
        "detail": f"is longer than {MAX_LINE_BYTES} bytes", "spool_line": 1, "spool_offset": 0}]
    assert await states(journal, "too-long", "after-long") == [None, SignalState.DONE]


async def test_over_long_line_is_skipped_across_chunks(tail: Tail, spool: Path,
                                                       journal: Journal, bus: SignalBus) -> None:
    """A 3 MiB line still being written is rejected once and skipped to its newline, however
    many chunks and reads that takes."""
    append(spool, line("before") + b'{"junk": "' + b"y" * (3 << 20))
    spooler = tail()
    with capture_logs() as logs:
        assert await spooler.catch_up() == 1
        assert await spooler.catch_up() == 0
        append(spool, b"y" * (2 << 20))
        assert await spooler.catch_up() == 0
        append(spool, b'"}\n' + line("after"))
        assert await spooler.catch_up() == 2
    assert await bus.drain(30)
    assert [(e["spool_line"], e["field"]) for e in rejected(logs)] == [(2, "body")]
    assert await states(journal, "before", "after") == [SignalState.DONE] * 2
    assert await journal.get_offset(spool_name(spool)) == size(spool)


async def test_line_across_read_chunks_is_read_whole(tail: Tail, spool: Path,
                                                     journal: Journal, bus: SignalBus) -> None:
    """A line straddling the 1 MiB read boundary is read whole; line numbers count every line,
    blank ones included."""
    blanks = [b" " * 999 + b"\n"] * 1048 + [b" " * 540 + b"\n"]
    straddling = line("straddle")
    assert sum(map(len, blanks)) < CHUNK_BYTES < sum(map(len, blanks)) + len(straddling)
    append(spool, b"".join(blanks) + straddling + b"\n" * 3 + b"{oops\n" + line("tail"))
    with capture_logs() as logs:
        assert await tail().catch_up() == 3
    assert await bus.drain(30)
    assert await states(journal, "straddle", "tail") == [SignalState.DONE] * 2
    assert [e["spool_line"] for e in rejected(logs)] == [len(blanks) + 5]


async def test_missing_file_is_waited_for(tail: Tail, spool: Path, journal: Journal,
                                          bus: SignalBus) -> None:
    """No file yet: one spool_waiting event, no errors; lines are read once it appears."""
    spooler = tail()
    with capture_logs() as logs:
        assert await spooler.catch_up() == 0
        assert await spooler.catch_up() == 0
    assert logs == [{"event": "spool_waiting", "log_level": "info", "path": str(spool)}]
    append(spool, line("late"))
    assert await spooler.catch_up() == 1
    assert await bus.drain(30)
    assert await states(journal, "late") == [SignalState.DONE]


async def until(clock: FakeClock, condition: Callable[[], Awaitable[bool]]) -> None:
    """Advance the fake clock one poll at a time until `condition` holds (at most 10 s)."""
    async with asyncio.timeout(10):
        while not await condition():
            clock.advance(0.2)
            await asyncio.sleep(0.005)  # let the tail's file and journal threads finish


def polled(clock: FakeClock, times: int) -> Callable[[], Awaitable[bool]]:
    """A condition for `until`: true once the tail has been found parked in `clock.sleep`
    `times` times (one look per step)."""
    polls = 0

    async def condition() -> bool:
        nonlocal polls
        polls += clock.sleepers
        return polls >= times

    return condition


async def test_run_tails_until_intake_stops(tail: Tail, spool: Path, journal: Journal,
                                            service: Service, bus: SignalBus) -> None:
    """run() polls on the clock, picks up appended lines, and returns when intake closes; the
    line it could not hand over stays unread for the next start."""
    clock = FakeClock()
    task = asyncio.create_task(tail(clock).run())

    append(spool, line("run-1"))
    await until(clock, lambda: journaled(journal, "run-1"))
    service.close()
    append(spool, line("run-2"))
    await until(clock, lambda: asyncio.sleep(0, task.done()))
    assert task.result() is None
    assert not await journaled(journal, "run-2")
    assert await journal.get_offset(spool_name(spool)) == len(line("run-1"))
    assert await bus.drain(30)



async def test_run_waits_while_intake_starts(spool: Path, journal: Journal, bus: SignalBus,
                                             exchange: ExchangeParts) -> None:
    """Before intake opens, run() leaves the line unread and keeps polling; then accepts it."""
    service = Service(journal, bus, partial(trading_rules, exchange.symbols.get), SystemClock(),
                      structlog.get_logger(), default_ttl_s=30.0)
    clock = FakeClock()
    task = asyncio.create_task(SpoolTail(spool, service, journal, clock,
                                         structlog.get_logger()).run())
    append(spool, line("early"))
    await until(clock, polled(clock, 3))
    assert await journal.get_signal("early") is None
    assert not task.done()
    service.open()

    await until(clock, lambda: journaled(journal, "early"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await bus.drain(30)


async def test_unreadable_file_is_reported_once(tmp_path: Path, service: Service,
                                                journal: Journal) -> None:
    """A path that cannot be read (here a directory) is audited once and retried, not fatal."""
    clock = FakeClock()
    with capture_logs() as logs:
        task = asyncio.create_task(SpoolTail(tmp_path, service, journal, clock,
                                             structlog.get_logger()).run())
        await until(clock, polled(clock, 3))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [(e["event"], e["log_level"], e["path"]) for e in logs] == [
        ("spool_unreadable", "warning", str(tmp_path))]


async def test_a_busy_journal_is_retried_and_the_tail_goes_on(
        tail: Tail, spool: Path, journal: Journal, bus: SignalBus) -> None:
    """Another process holds the journal's write lock past the busy timeout (5 s, real time):
    nothing is stored, ``journal_busy`` is audited once per refusal (by the service for an
    accept, by the tail for its own offset write), and run() goes on; once the lock is gone
    the lines are taken, each once, and the offset is at the end of the file."""
    clock = FakeClock()
    task = asyncio.create_task(tail(clock).run())

    def busy_events(logs: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [(e["source"], e["log_level"]) for e in logs if e["event"] == "journal_busy"]

    with capture_logs() as logs:
        with write_lock(journal.path):           # an accept refused
            append(spool, line("busy-1"))
            await until(clock, lambda: asyncio.sleep(0, bool(busy_events(logs))))
        await until(clock, lambda: journaled(journal, "busy-1"))
        assert busy_events(logs) == [("spool", "error")]   # the service's, not doubled
        assert await bus.drain(30)       # its orders' journal writes are done before the next
        with write_lock(journal.path):           # the tail's own write: a rejected line's offset
            append(spool, b"{broken\n" + line("busy-2"))
            await until(clock, lambda: asyncio.sleep(0, len(busy_events(logs)) == 2))
        await until(clock, lambda: journaled(journal, "busy-2"))
    assert busy_events(logs) == [("spool", "error")] * 2
    assert not task.done()
    assert await journal.get_offset(spool_name(spool)) == size(spool)
    assert await bus.drain(30)
    assert await states(journal, "busy-1", "busy-2") == [SignalState.DONE] * 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failed_journal_is_tried_less_often_and_the_tail_goes_on(
        tail: Tail, spool: Path, journal: Journal, bus: SignalBus) -> None:
    """The journal's disk turns read-only for a minute: nothing is stored, ``journal_failed``
    (critical) is audited at each try — by the service for an accept, by the tail for its own
    offset write — and the tries come less and less often (the 0.2 s poll interval doubled each
    time, up to 30 s: 8 tries in the minute, not 300); run() goes on. Once the disk answers, the
    lines are taken, each once, and the tail polls at its interval again."""
    clock = FakeClock()
    task = asyncio.create_task(tail(clock).run())

    def failures(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in logs if e["event"] == "journal_failed"]

    assert FAILED_RETRY_MAX_S == 30.0
    with capture_logs() as logs:
        async with read_only(journal):
            append(spool, line("failed-1"))
            start = clock.monotonic()
            async with asyncio.timeout(30):
                while clock.monotonic() - start < 60:
                    clock.advance(0.2)
                    await asyncio.sleep(0.005)
            tries = len(failures(logs))
        await until(clock, lambda: journaled(journal, "failed-1"))
        assert await bus.drain(30)
        async with read_only(journal):          # the tail's own write: a rejected line's offset
            append(spool, b"{broken\n")
            await until(clock, lambda: asyncio.sleep(0, len(failures(logs)) > tries))
        back = clock.monotonic()
        append(spool, line("failed-2"))
        await until(clock, lambda: journaled(journal, "failed-2"))
    assert clock.monotonic() - back <= 1.0           # polling at its interval again
    assert 7 <= tries <= 9, tries
    assert {(e["source"], e["log_level"]) for e in failures(logs)} == {("spool", "critical")}
    assert "attempt to write a readonly database" in failures(logs)[0]["error"]
    assert not task.done()
    assert await journal.get_offset(spool_name(spool)) == size(spool)
    assert await bus.drain(30)
    assert await states(journal, "failed-1", "failed-2") == [SignalState.DONE] * 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_spool_fields_stay_with_intake(tail: Tail, spool: Path, bus: SignalBus) -> None:
    """spool_line/spool_offset mark intake events only, not the execution of later signals."""
    append(spool, line("ctx-1") + line("ctx-2"))
    with capture_logs(processors=[merge_contextvars]) as logs:
        assert await tail().catch_up() == 2
        assert await bus.drain(30)
    done = [e for e in logs if e["event"] == "signal_done"]
    assert len(done) == 2
    assert all("spool_line" not in e for e in done)
