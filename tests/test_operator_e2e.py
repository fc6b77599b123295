"""The operator's commands end to end (SPEC §5.10, §11): the daemon and the CLI as real
processes against the simulator — halt, reduce, resume, a state that survives a restart,
flatten --all sent twice, cancel of a queued signal, and bad input refused."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from app.sim import SimServer
from tests.daemon_process import DaemonProcess, audit_events, daemon_env, free_port, run_cli
from tests.simulator import Admin

TOKEN = "operator-test-token-0123456789abcdef"
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def admin(sim: SimServer) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as session:
        yield Admin(session, sim.url)


async def start(tmp_path: Path, sim: SimServer) -> tuple[DaemonProcess, dict[str, str]]:
    # a breaker opened by an outage probes again after 1 s (30 s by default)
    env = daemon_env(tmp_path, free_port(), EXECD_API_TOKEN=TOKEN,
                     EXECD_BREAKER__RECOVERY_TIMEOUT_S="1")
    return await DaemonProcess(env, "--exchange-url", sim.url).start(), env


async def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    code, out, err = await run_cli(env, *args)
    return code, out + err


async def entry(env: dict[str, str], symbol: str, qty: str, tp: str, sl: str,
                kind: str = "LONG_ENTRY") -> tuple[int, str]:
    return await cli(env, "signal", kind, symbol, "--qty", qty, "--tp", tp, "--sl", sl,
                     "--wait")


async def open_algos(admin: Admin, symbol: str | None = None) -> list[dict[str, Any]]:
    return [a for a in await admin.orders("algo")
            if a["status"] == "NEW" and symbol in (None, a["symbol"])]


async def until(check: Any, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s} s: {what}")
        await asyncio.sleep(0.05)


async def test_halt_reduce_resume_and_the_state_survives_a_restart(
        tmp_path: Path, sim: SimServer, admin: Admin) -> None:
    daemon, env = await start(tmp_path, sim)
    try:
        code, out = await entry(env, "BTCUSDT", "0.010", "70000", "60000")
        assert code == 0, out
        code, out = await cli(env, "halt", "--reason", "desk says stop")
        assert code == 0, out
        assert out.startswith("HALTED since ")
        assert "desk says stop" in out

        code, out = await entry(env, "ETHUSDT", "0.100", "3500", "3000")
        assert code == 1
        assert "REJECTED" in out
        assert "trading state: HALTED (desk says stop)" in out
        code, out = await cli(env, "signal", "CLOSE_LONG", "BTCUSDT", "--wait")
        assert code == 1
        assert "trading state: HALTED" in out
        assert await admin.position("BTCUSDT") == "0.010"

        # protection goes on while halted: a stop removed by hand is placed again
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            url = f"http://127.0.0.1:{env['EXECD_API__PORT']}/v1/cancel-all/BTCUSDT"
            async with http.post(url) as resp:
                assert resp.status == 200, await resp.text()

        async def stop_back() -> bool:
            return "STOP_MARKET" in {a["type"] for a in await open_algos(admin, "BTCUSDT")}
        await until(stop_back, 10, "the stop placed again while HALTED")

        code, out = await cli(env, "reduce")
        assert code == 0, out
        assert out.startswith("REDUCING")
        code, out = await entry(env, "ETHUSDT", "0.100", "3500", "3000")
        assert code == 1
        assert "trading state: REDUCING" in out
        code, out = await cli(env, "signal", "CLOSE_LONG", "BTCUSDT", "--wait")
        assert code == 0, out
        assert await admin.position("BTCUSDT") == "0"

        code, out = await cli(env, "resume")
        assert code == 0, out
        assert out.startswith("ACTIVE")
        code, out = await entry(env, "ETHUSDT", "0.100", "3500", "3000")
        assert code == 0, out

        code, out = await cli(env, "halt")
        assert code == 0, out
        assert (await daemon.stop())[0] == 0
        daemon, env = await start(tmp_path, sim)
        code, out = await cli(env, "status", "--json")
        assert code == 0, out
        trading = orjson.loads(out)["trading_state"]
        assert trading["state"] == "HALTED"
        assert trading["reason"] == "execd halt"
    finally:
        await daemon.ensure_dead()
    changes = [e for e in audit_events(tmp_path) if e["event"] == "trading_state_changed"]
    assert [(e["state"], e["by"]) for e in changes if e["by"] == "operator"] == [
        ("HALTED", "operator"), ("REDUCING", "operator"), ("ACTIVE", "operator"),
        ("HALTED", "operator")]
    rejected = [e for e in audit_events(tmp_path) if e["event"] == "risk_rejected"]
    assert [e["rule"] for e in rejected] == ["trading state"] * 3


async def test_flatten_all_twice_closes_each_position_once_and_leaves_no_algo_orders(
        tmp_path: Path, sim: SimServer, admin: Admin) -> None:
    daemon, env = await start(tmp_path, sim)
    try:
        for symbol, qty, tp, sl, kind in (("BTCUSDT", "0.010", "70000", "60000", "LONG_ENTRY"),
                                          ("ETHUSDT", "0.100", "3000", "3500", "SHORT_ENTRY"),
                                          ("SOLUSDT", "2", "160", "140", "LONG_ENTRY")):
            code, out = await entry(env, symbol, qty, tp, sl, kind)
            assert code == 0, out
        assert len(await open_algos(admin)) == 6
        await cli(env, "halt")                               # flatten works in every state
        first, second = await asyncio.gather(cli(env, "flatten", "--all", "--yes"),
                                             cli(env, "flatten", "--all", "--yes"))
        assert first[0] == 0, first[1]
        assert second[0] == 0, second[1]
        lines = first[1].splitlines() + second[1].splitlines()
        flattened = sorted(line.split()[0] for line in lines if "FLATTENED" in line)
        assert flattened == ["BTCUSDT", "ETHUSDT", "SOLUSDT"], lines
        for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
            assert await admin.position(symbol) == "0"
        assert await open_algos(admin) == []
        closes = Counter(o["symbol"] for o in await admin.orders("order") if o["reduce_only"])
        assert closes == {"BTCUSDT": 1, "ETHUSDT": 1, "SOLUSDT": 1}
        code, out = await cli(env, "flatten", "--all", "--yes")
        assert code == 0, out
        assert "nothing to flatten" in out
    finally:
        await daemon.ensure_dead()
    flat = [e for e in audit_events(tmp_path)
            if e["event"] == "position_flattened" and e.get("by") == "operator"]
    assert {e["symbol"] for e in flat if e.get("state") == "FLATTENED"} == {
        "BTCUSDT", "ETHUSDT", "SOLUSDT"}


async def test_cancel_takes_back_a_queued_signal_and_refuses_a_running_one(
        tmp_path: Path, sim: SimServer, admin: Admin) -> None:
    daemon, env = await start(tmp_path, sim)
    try:
        # the exchange is out: the first entry waits RUNNING, the second queues behind it
        await admin.post("faults", {"seed": 1, "outages": [{"start_s": 0, "duration_s": 6}]})
        for name in ("first", "second"):
            code, out = await cli(env, "signal", "LONG_ENTRY", "BTCUSDT", "--qty", "0.010",
                                  "--id", name, "--ttl", "60")
            assert code == 0, out

        async def running() -> bool:
            code, out = await cli(env, "status", "--json")
            return code == 0 and orjson.loads(out)["queue"]["running"] >= 1
        await until(running, 10, "the first signal running")
        code, out = await cli(env, "cancel", "first")
        assert code == 1
        assert "RUNNING" in out
        code, out = await cli(env, "cancel", "second")
        assert code == 0, out
        assert out.strip() == "CANCELED second"
        code, out = await cli(env, "cancel", "second")          # a retried cancel: the same
        assert code == 0, out
        code, out = await cli(env, "cancel", "nobody")
        assert code == 1
        assert "no signal 'nobody'" in out

        async def first_done() -> bool:
            _, out = await cli(env, "signal", "LONG_ENTRY", "BTCUSDT", "--id", "first",
                                  "--qty", "0.010")
            return "DUPLICATE (DONE)" in out
        await until(first_done, 45, "the first signal DONE after the outage")
        await asyncio.sleep(0.5)
        clients = [o["client_id"] for o in await admin.orders("order")]
        assert len(clients) == 1                 # the first entry only: the second never sent
        assert await admin.position("BTCUSDT") == "0.010"
    finally:
        await daemon.ensure_dead()


async def test_bad_operator_input_is_refused_and_changes_nothing(
        tmp_path: Path, sim: SimServer) -> None:
    daemon, env = await start(tmp_path, sim)
    base = f"http://127.0.0.1:{env['EXECD_API__PORT']}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/trading-state", json={"state": "HALTED"}) as resp:
                assert resp.status == 401
            auth = {"Authorization": f"Bearer {TOKEN}"}
            for body, field in (({"state": "PAUSED"}, "state"), ({"state": 2}, "state"),
                                ({"state": "HALTED", "reason": 7}, "reason")):
                async with http.post(f"{base}/v1/trading-state", json=body,
                                     headers=auth) as resp:
                    assert resp.status == 400
                    assert (await resp.json())["field"] == field
            for body in ({}, {"symbols": []}, {"symbols": ["btc"]}, {"all": "yes"},
                         {"all": True, "symbols": ["BTCUSDT"]}):
                async with http.post(f"{base}/v1/flatten", json=body, headers=auth) as resp:
                    assert resp.status == 400, body
            async with http.delete(f"{base}/v1/signals/nobody", headers=auth) as resp:
                assert resp.status == 404
            async with http.post(f"{base}/v1/breakers/trade/reset", headers=auth) as resp:
                assert resp.status == 200
                reset = await resp.json()
                assert (reset["group"], reset["state"]) == ("trade", "closed")
                assert {"calls", "failures", "rejected", "opens", "last_opened"} <= set(reset)
            async with http.post(f"{base}/v1/breakers/orders/reset", headers=auth) as resp:
                assert resp.status == 404
                assert "one of account, market, trade" in (await resp.json())["detail"]
            async with http.post(f"{base}/v1/breakers/trade/reset") as resp:
                assert resp.status == 401
            for path in ("/v1/positions/BTCUSDT", "/v1/balance"):     # an operator asks
                async with http.get(f"{base}{path}", headers=auth) as resp:
                    assert resp.status == 200
        code, out = await cli(env, "flatten", "DOGEUSDT", "--yes")
        assert code == 2
        assert "DOGEUSDT is not a symbol of this exchange" in out
        code, out = await cli(env, "flatten", "--yes")
        assert code == 2
        assert "name the symbols or give --all" in out
        code, out = await cli(env, "status", "--json")
        assert orjson.loads(out)["trading_state"]["state"] == "ACTIVE"
        no_token = {k: v for k, v in env.items() if k != "EXECD_API_TOKEN"}
        no_token["EXECD_JOURNAL__PATH"] = str(tmp_path / "elsewhere" / "journal.sqlite3")
        code, out = await cli(no_token, "halt")
        assert code == 1
        assert "unauthorized" in out
        code, out = await cli(env, "status", "--json")
        assert orjson.loads(out)["trading_state"]["state"] == "ACTIVE"
    finally:
        await daemon.ensure_dead()
    closed = [e for e in audit_events(tmp_path) if e["event"] == "breaker_closed"]
    assert [(e["group"], e["reason"]) for e in closed] == [("trade", "operator")]
    asked = [(e["event"], e["level"]) for e in audit_events(tmp_path)
             if e.get("by") == "operator" and e["event"].endswith("_query")]
    assert asked == [("position_query", "info"), ("balance_query", "info")]
