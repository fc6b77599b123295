"""The journal's durability model (SPEC §5.6) end to end, as real processes: an intent row a
power cut lost never becomes a second order; a journal another process holds locked answers
503; a corrupt journal file stops ``execd run`` with one line."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiohttp
import orjson
import pytest

from app.domain import Leg, SignalState
from app.execution.client_ids import client_id
from app.journal import Journal
from app.sim import SimServer
from tests.daemon_process import DaemonProcess, daemon_env, free_port, run_cli
from tests.simulator import Admin

TOKEN = "durability-test-token"
SIGNAL = {"id": "lost-rows-1", "symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
          "stop_loss": "60000.0", "take_profit": "70000.0", "ttl_s": 600}
#: Every conditional order refused (503, certainly not placed): the entry fills, its
#: protection waits, and the daemon can be killed in between.
NO_ALGOS = {"seed": 1, "rules": [{"endpoint": "POST /fapi/v1/algoOrder",
                                  "fault": "service_unavailable", "probability": 1}]}


def _delete_intents(path: Path, signal_id: str) -> int:
    """What a power cut under ``synchronous=NORMAL`` may do: the signal stays (its accept was
    fsynced), its intent rows are gone."""
    with sqlite3.connect(path) as conn:
        deleted = conn.execute("DELETE FROM intents WHERE signal_id = ?", (signal_id,)).rowcount
    conn.close()
    return deleted


@pytest.mark.timeout(120)
async def test_lost_intent_rows_after_a_power_cut_never_make_a_second_order(
        tmp_path: Path, sim: SimServer, admin: Admin) -> None:
    """The entry fills, the daemon is killed before the protection, the signal's intent rows
    are deleted; the restarted daemon finds the entry by its client id: one entry order on
    the exchange, the signal DONE and protected."""
    journal_path = tmp_path / "data" / "journal.sqlite3"
    entry = client_id("xd", SIGNAL["id"], Leg.ENTRY)
    await admin.post("faults", NO_ALGOS)
    port = free_port()
    env = daemon_env(tmp_path, port, EXECD_API_TOKEN=TOKEN)
    daemon = await DaemonProcess(env, "--exchange-url", sim.url).start()
    try:
        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{port}/v1/signals", data=orjson.dumps(SIGNAL),
                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 202, await resp.text()
        for _ in range(200):
            if any(r["client_id"] == entry and r["status"] == "FILLED"
                   for r in await admin.orders("order")):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the entry never filled")
        code, _ = await daemon.stop(kill=True)
    finally:
        await daemon.ensure_dead()
    assert code == -9
    assert await asyncio.to_thread(_delete_intents, journal_path, SIGNAL["id"]) >= 1
    async with Journal(journal_path) as journal:
        record = await journal.get_signal(SIGNAL["id"])
        assert record is not None
        assert record.state is SignalState.RUNNING
        assert await journal.intents_for(SIGNAL["id"]) == []
    await admin.post("faults", {"seed": 1, "rules": []})

    daemon = await DaemonProcess(env, "--exchange-url", sim.url).start()
    try:
        code, err = await daemon.stop()
    finally:
        await daemon.ensure_dead()
    assert code == 0, err
    orders = await admin.orders()
    assert [r["client_id"] for r in orders].count(entry) == 1
    assert sorted((r["type"], r["status"]) for r in orders if r["kind"] == "algo") == [
        ("STOP_MARKET", "NEW"), ("TAKE_PROFIT_MARKET", "NEW")]
    async with Journal(journal_path) as journal:
        record = await journal.get_signal(SIGNAL["id"])
    assert record is not None
    assert (record.state, record.reason) == (SignalState.DONE,
                                             "entry filled: 0.010 BTCUSDT; protected")


@pytest.mark.timeout(60)
async def test_a_corrupt_journal_stops_execd_run_with_one_line(tmp_path: Path) -> None:
    """A journal file of garbage bytes: ``execd run`` exits 1 with one line on stderr naming
    the file and what to do, no traceback, and leaves the file as it was."""
    journal_path = tmp_path / "data" / "journal.sqlite3"
    journal_path.parent.mkdir(parents=True)
    garbage = b"\x13\x37 not a database " * 300
    journal_path.write_bytes(garbage)
    env = daemon_env(tmp_path, free_port(), EXECD_API_TOKEN=TOKEN, EXECD_AUDIT__CONSOLE="true")
    code, out, err = await run_cli(env, "run")
    assert code == 1, (out, err)
    assert err.splitlines() == [
        f"execd run: journal {journal_path} is not a readable SQLite database (file is not a "
        "database): move it aside and restore from backup, or start with a new journal path"]
    assert "execd ready" not in out
    assert journal_path.read_bytes() == garbage
