"""The spool tail across rotations and replacements: the old file is read to its end, the new
one from its start, every line exactly once, and the switch is audited (SPEC §4.2 item 4)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from app.domain import SignalState
from app.intake.bus import SignalBus
from app.intake.spool import spool_name
from app.journal import Journal
from tests.intake.conftest import Tail
from tests.intake.test_spool import append, line, orders_per_client_id, size, states
from tests.simulator import Admin


def identity(path: Path) -> str:
    info = path.stat()
    return f"{info.st_dev}:{info.st_ino}"


def rename(path: Path, to: Path) -> None:
    path.rename(to)


def replace_by_rename(path: Path, data: bytes) -> None:
    """Write `data` to a new file beside `path`, then rename it onto `path`."""
    fresh = path.with_name("fresh.tmp")
    fresh.write_bytes(data)
    os.replace(fresh, path)


def rotations(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "spool_rotated"]


def accepted_ids(logs: list[dict[str, Any]]) -> list[str]:
    return [e["signal_id"] for e in logs if e["event"] == "signal_accepted"]


async def test_rotated_file_is_read_to_its_end_then_the_new_one(
        tail: Tail, spool: Path, journal: Journal, bus: SignalBus, admin: Admin) -> None:
    """logrotate-style `mv spool spool.1` + a new, longer spool: the line appended to the old
    file after the last poll is read from it, then every line of the new file; each once; the
    unterminated rest of the old file is counted as unread."""
    append(spool, line("rot-1") + line("rot-2"))
    spooler = tail()
    assert await spooler.catch_up() == 2
    old_id = identity(spool)
    cut = b'{"id": "rot-cut", "symbol": "BTC'
    append(spool, line("rot-3") + cut)  # after the last poll, before the rename
    rename(spool, spool.with_name("signals.jsonl.1"))
    new = [line("rot-4"), line("rot-5"), line(), line("rot-7")]
    append(spool, b"".join(new))
    assert size(spool) > 2 * len(line("rot-1"))  # longer: a shrink check cannot see this
    with capture_logs() as logs:
        assert await spooler.catch_up() == 5
    assert await bus.drain(30)
    ids = ["rot-1", "rot-2", "rot-3", "rot-4", "rot-5", "rot-7"]
    assert await states(journal, *ids) == [SignalState.DONE] * 6
    assert (await journal.counts())[SignalState.DONE] == 7
    assert sorted((await orders_per_client_id(admin)).values()) == [1] * 7
    assert rotations(logs) == [{
        "event": "spool_rotated", "log_level": "warning", "path": str(spool),
        "old_file": old_id, "new_file": identity(spool), "while_down": False,
        "old_found_as": None, "old_lines": 1, "unread_bytes": len(cut)}]
    assert accepted_ids(logs)[-2].endswith(f"-g1-{len(new[0]) + len(new[1])}")
    name = spool_name(spool)
    assert await journal.get_offset(name) == size(spool)
    assert await journal.get_offset_file(name) == identity(spool)
    assert await tail().catch_up() == 0  # a restart reads nothing again


async def test_old_file_is_tailed_until_a_new_one_appears(
        tail: Tail, spool: Path, journal: Journal, bus: SignalBus) -> None:
    """Moved away with no new file yet: lines a writer still appends to the old file are read;
    once the new file appears the tail moves to it (info: nothing left unread)."""
    append(spool, line("mv-1"))
    spooler = tail()
    assert await spooler.catch_up() == 1
    rotated = spool.with_name("signals.jsonl.1")
    rename(spool, rotated)
    append(rotated, line("mv-2"))
    assert await spooler.catch_up() == 1
    append(spool, line("mv-3"))
    with capture_logs() as logs:
        assert await spooler.catch_up() == 1
    assert await bus.drain(30)
    assert await states(journal, "mv-1", "mv-2", "mv-3") == [SignalState.DONE] * 3
    assert [(e["log_level"], e["old_lines"], e["unread_bytes"]) for e in rotations(logs)] == [
        ("info", 0, 0)]


async def test_rotation_while_down_is_finished_from_the_rotated_file(
        tail: Tail, spool: Path, journal: Journal, bus: SignalBus) -> None:
    """Rotated while no tail ran: at start the old file is found by its identity under its
    new name, its unread line is read, then the new file from 0."""
    append(spool, line("down-1") + line("down-2"))
    first = tail()
    assert await first.catch_up() == 2
    await first.aclose()  # the daemon stops
    old_id = identity(spool)
    append(spool, line("down-3"))
    rotated = spool.with_name("signals.jsonl.1")
    rename(spool, rotated)
    append(spool, line("down-4") + line("down-5") + line("down-6"))
    with capture_logs() as logs:
        assert await tail().catch_up() == 4
    assert await bus.drain(30)
    ids = [f"down-{n}" for n in range(1, 7)]
    assert await states(journal, *ids) == [SignalState.DONE] * 6
    assert rotations(logs) == [{
        "event": "spool_rotated", "log_level": "info", "path": str(spool),
        "old_file": old_id, "new_file": identity(spool), "while_down": True,
        "old_found_as": str(rotated.resolve()), "old_lines": 1, "unread_bytes": 0}]


async def test_replacement_by_a_longer_file_while_down_is_audited(
        tail: Tail, spool: Path, journal: Journal, bus: SignalBus) -> None:
    """Replaced by rename with a longer file while no tail ran, the old file gone: detected,
    audited as a warning (what the old file had left is unknown), the new file read whole."""
    append(spool, line("rep-1") + line("rep-2"))
    first = tail()
    assert await first.catch_up() == 2
    await first.aclose()
    old_id = identity(spool)
    replace_by_rename(spool, line("rep-3") + line("rep-4") + line() + line("rep-6"))
    with capture_logs() as logs:
        assert await tail().catch_up() == 4
    assert await bus.drain(30)
    assert await states(journal, "rep-3", "rep-4", "rep-6") == [SignalState.DONE] * 3
    assert (await journal.counts())[SignalState.DONE] == 6
    assert rotations(logs) == [{
        "event": "spool_rotated", "log_level": "warning", "path": str(spool),
        "old_file": old_id, "new_file": identity(spool), "while_down": True,
        "old_found_as": None, "old_lines": 0, "unread_bytes": None}]
