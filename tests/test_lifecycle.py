"""The daemon's lifecycle under load, as a real process against a simulator that outlives it:
SIGTERM during a burst exits 0 with every accepted signal done or resumable and every event on
disk; kill -9 during a burst, then a restart, ends every accepted signal with one order per
client id."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from app.domain import SignalState
from app.journal import Journal
from app.sim import SimServer
from tests.daemon_process import DaemonProcess, audit_events, daemon_env, free_port, run_cli
from tests.simulator import Admin, quiet_sim_config

TOKEN = "lifecycle-test-token"
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")
QTY = {"BTCUSDT": "0.002", "ETHUSDT": "0.050", "SOLUSDT": "1", "BNBUSDT": "0.20"}
BURST = 160
#: 15 ms on every request, so orders are in flight when the daemon is stopped or killed.
LATENCY = {"seed": 1, "rules": [{"endpoint": "*", "fault": "latency", "probability": 1,
                                 "latency_ms": 15}]}


@pytest.fixture
async def sim(sim: SimServer) -> SimServer:
    """The quiet simulator of tests/conftest.py, with `LATENCY`."""
    async with aiohttp.ClientSession() as session:
        await Admin(session, sim.url).post("faults", LATENCY)
    return sim


def body(i: int) -> dict[str, Any]:
    symbol = SYMBOLS[i % len(SYMBOLS)]
    if (i // len(SYMBOLS)) % 2 == 0:
        return {"id": f"burst-{i:04d}", "symbol": symbol, "type": "LONG_ENTRY",
                "quantity": QTY[symbol], "ttl_s": 600}
    return {"id": f"burst-{i:04d}", "symbol": symbol, "type": "CLOSE_LONG", "ttl_s": 600}


async def burst(api_port: int, *, interrupt: Any) -> tuple[set[str], set[str]]:
    """POST the burst, calling ``interrupt()`` halfway; (acknowledged ids, unknown ids)."""
    acked: set[str] = set()
    unknown: set[str] = set()
    url = f"http://127.0.0.1:{api_port}/v1/signals"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for i in range(BURST):
            if i == BURST // 2:
                interrupt()
            signal = body(i)
            try:
                async with session.post(url, data=orjson.dumps(signal)) as resp:
                    if resp.status in (200, 202):
                        acked.add(signal["id"])
                    else:
                        assert resp.status == 503, await resp.text()
            except aiohttp.ClientError:
                unknown.add(signal["id"])       # the answer was lost: may or may not be in
    return acked, unknown


async def journal_states(tmp_path: Path) -> dict[str, SignalState]:
    async with Journal(tmp_path / "data" / "journal.sqlite3") as journal:
        states = {}
        for i in range(BURST):
            record = await journal.get_signal(f"burst-{i:04d}")
            if record is not None:
                states[record.signal.id] = record.state
        return states


async def sim_orders(sim: SimServer) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(
            f"{sim.url}/_sim/orders") as resp:
        rows: list[dict[str, Any]] = orjson.loads(await resp.read())
        return rows


@pytest.mark.timeout(180)
async def test_sigterm_during_a_burst(tmp_path: Path, sim: SimServer) -> None:
    """Exit 0; accepted signals are DONE or resumable (and a restart finishes them); every
    event the daemon emitted is on disk, daemon_stopped last."""
    port = free_port()
    env = daemon_env(tmp_path, port, EXECD_API_TOKEN=TOKEN,
                     EXECD_EXECUTION__SHUTDOWN_TIMEOUT_S="0.3",
                     EXECD_EXECUTION__MAX_CONCURRENCY="2")
    daemon = await DaemonProcess(env, "--exchange-url", sim.url).start()
    try:
        assert daemon.proc is not None
        acked, unknown = await burst(port, interrupt=daemon.proc.terminate)
        code, err = await daemon.stop()
    finally:
        await daemon.ensure_dead()
    assert code == 0, err
    assert not unknown or all(i not in acked for i in unknown)
    states = await journal_states(tmp_path)
    assert acked <= set(states)
    resumable = {SignalState.ACCEPTED, SignalState.RUNNING}
    assert {states[i] for i in acked} <= {SignalState.DONE} | resumable
    assert any(states[i] in resumable for i in acked)     # the stop did interrupt the burst
    events = audit_events(tmp_path)
    assert events[-1]["event"] == "daemon_stopped"
    accepted_events = {e["signal_id"] for e in events if e["event"] == "signal_accepted"}
    assert accepted_events == set(states)
    done_events = {e["signal_id"] for e in events if e["event"] == "signal_done"}
    assert done_events == {i for i, s in states.items() if s is SignalState.DONE}

    # A restart resumes what the stop left and ends every signal.
    daemon = await DaemonProcess(env, "--exchange-url", sim.url).start()
    try:
        code, err = await daemon.stop()
    finally:
        await daemon.ensure_dead()
    assert code == 0, err
    assert set((await journal_states(tmp_path)).values()) == {SignalState.DONE}


@pytest.mark.timeout(180)
async def test_kill_9_during_a_burst_then_restart(tmp_path: Path, sim: SimServer) -> None:
    """kill -9 mid-burst; after a restart every accepted signal is terminal and every client
    id has exactly one order on the exchange."""
    port = free_port()
    env = daemon_env(tmp_path, port, EXECD_API_TOKEN=TOKEN)
    daemon = await DaemonProcess(env, "--exchange-url", sim.url).start()
    try:
        assert daemon.proc is not None
        acked, _ = await burst(port, interrupt=daemon.proc.kill)
        code, _ = await daemon.stop()
    finally:
        await daemon.ensure_dead()
    assert code == -9
    before = await journal_states(tmp_path)
    assert acked <= set(before)
    assert not all(state.is_terminal for state in before.values())   # killed mid-burst

    daemon = await DaemonProcess(env, "--exchange-url", sim.url).start()
    try:
        recovered = daemon.ready[0]
        assert "execd ready:" in recovered
        code, err = await daemon.stop()
    finally:
        await daemon.ensure_dead()
    assert code == 0, err
    after = await journal_states(tmp_path)
    assert set(after) == set(before)
    assert all(state.is_terminal for state in after.values())
    assert {after[i] for i in acked} == {SignalState.DONE}
    counts = collections.Counter(r["client_id"] for r in await sim_orders(sim)
                                 if r["kind"] != "triggered")
    assert counts
    assert max(counts.values()) == 1


@pytest.mark.timeout(120)
async def test_repeated_sigterm_while_stopping_still_exits_cleanly(tmp_path: Path,
                                                                   sim: SimServer) -> None:
    """SIGTERM every 10 ms until the daemon is gone (an impatient supervisor, or a test that
    signals twice): the signals that arrive while it drains and closes its journal change
    nothing, it exits 0 with daemon_stopped last."""
    port = free_port()
    env = daemon_env(tmp_path, port, EXECD_API_TOKEN=TOKEN,
                     EXECD_EXECUTION__SHUTDOWN_TIMEOUT_S="0.3")
    daemon = await DaemonProcess(env, "--exchange-url", sim.url).start()
    try:
        proc = daemon.proc
        assert proc is not None
        while proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 0.01)
        code, err = await daemon.stop()
    finally:
        await daemon.ensure_dead()
    assert code == 0, err
    assert audit_events(tmp_path)[-1]["event"] == "daemon_stopped"


@pytest.mark.timeout(120)
async def test_a_second_daemon_on_the_same_journal_is_refused(tmp_path: Path,
                                                               sim: SimServer) -> None:
    """Two daemons on one journal would execute its signals twice: the second exits 1 naming
    the first's pid, touching nothing; once the first is killed (-9: its lock file stays), a
    new one starts."""
    first_env = daemon_env(tmp_path, free_port(), EXECD_API_TOKEN=TOKEN)
    second_env = daemon_env(tmp_path, free_port(), EXECD_API_TOKEN=TOKEN)
    first = await DaemonProcess(first_env, "--exchange-url", sim.url).start()
    try:
        assert first.proc is not None
        code, out, err = await run_cli(second_env, "run", "--exchange-url", sim.url)
        assert code == 1, (out, err)
        assert f"pid {first.proc.pid}" in err
        assert "execd ready" not in out
        assert (tmp_path / "data" / "journal.sqlite3.lock").exists()
        code, _ = await first.stop(kill=True)
        assert code == -9
    finally:
        await first.ensure_dead()
    third = await DaemonProcess(second_env, "--exchange-url", sim.url).start()
    try:
        code, err = await third.stop()
    finally:
        await third.ensure_dead()
    assert code == 0, err



#: Signals pushed at a daemon whose console nobody reads: ~6 INFO lines each, ~2,400 lines,
#: more than the pipe (64 KiB, ~200 lines) and the console queue (1,000 lines) hold together.
CONSOLE_SIGNALS = 400
PIPE_BYTES = 64 * 1024


async def wait_for_done(tmp_path: Path, ids: set[str], timeout_s: float) -> tuple[set[str], int]:
    """Poll the audit files until every id in `ids` has its signal_done there or `timeout_s`
    passes: (the ids done on disk, the files' total size)."""
    done: set[str] = set()
    size = 0
    for _ in range(int(timeout_s / 0.25)):
        done = {e["signal_id"] for e in audit_events(tmp_path) if e["event"] == "signal_done"}
        size = sum(f.stat().st_size for f in (tmp_path / "audit").iterdir())
        if done >= ids:
            break
        await asyncio.sleep(0.25)
    return done, size


@pytest.mark.timeout(180)
async def test_a_console_nobody_reads_blocks_neither_the_audit_file_nor_shutdown(
        tmp_path: Path) -> None:
    """stderr (the JSON-lines console) on a pipe that is never read, so that once its 64 KiB
    fill up every console write blocks: the audit files still get every event of 400 signals,
    /v1/status and /metrics count the console lines dropped, and SIGTERM exits 0 within 15 s
    with daemon_stopped (and the drop count) on disk."""
    port = free_port()
    env = daemon_env(tmp_path, port, EXECD_API_TOKEN=TOKEN, EXECD_AUDIT__CONSOLE="auto",
                     EXECD_AUDIT__LEVEL="INFO")
    # limits that 400 signals in a few seconds stay well within (no throttling, no latency)
    limits = quiet_sim_config(request_weight=100_000, orders_short=10_000, orders_long=10_000)
    read_end, write_end = os.pipe()        # the test never reads read_end
    async with SimServer(limits) as sim:
        daemon = DaemonProcess(env, "--exchange-url", sim.url, stderr=write_end)
        try:
            try:
                await daemon.start()
            finally:
                os.close(write_end)
            proc = daemon.proc
            assert proc is not None
            ids = {body(i)["id"] for i in range(CONSOLE_SIGNALS)}
            api = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession(
                    headers={"Authorization": f"Bearer {TOKEN}"}) as session:
                for i in range(CONSOLE_SIGNALS):
                    async with session.post(f"{api}/v1/signals",
                                            data=orjson.dumps(body(i))) as resp:
                        assert resp.status == 202, await resp.text()
                done, size = await wait_for_done(tmp_path, ids, 60)
                assert done >= ids, (f"{len(done & ids)}/{CONSOLE_SIGNALS} signal_done on "
                                     f"disk; the audit files stopped at {size} bytes")
                async with session.get(f"{api}/v1/status") as resp:
                    audit = (await resp.json())["audit"]
                async with session.get(f"{api}/metrics") as resp:
                    scraped = {line.split()[0]: float(line.split()[1])
                               for line in (await resp.text()).splitlines()
                               if line and not line.startswith("#")}
            print(f"\naudit files {size} bytes; status audit {audit}")
            assert size > 4 * PIPE_BYTES           # the console was sent far more than fits
            assert audit["console_dropped"] > 0, audit
            assert (audit["write_errors"], audit["dropped"]) == (0, 0), audit
            assert scraped["execd_console_dropped_total"] >= audit["console_dropped"]
            proc.terminate()
            code = await asyncio.wait_for(proc.wait(), 15)
        finally:
            await daemon.ensure_dead()
            os.close(read_end)
    assert code == 0
    events = audit_events(tmp_path)
    assert events[-1]["event"] == "daemon_stopped"
    assert events[-1]["console_dropped"] >= audit["console_dropped"]
    assert {e["signal_id"] for e in events if e["event"] == "signal_done"} >= ids
