"""The first-run experience as a user has it: the daemon and the CLI as real processes."""

from __future__ import annotations

import shlex
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_process import DaemonProcess, daemon_env, free_port, run_cli


@pytest.mark.timeout(120)
async def test_signal_wait_prints_done_and_status_shows_the_position(tmp_path: Path) -> None:
    """execd run → the suggested `execd signal ... --wait` prints DONE with the entry's and
    protective orders' ids → `execd status` shows the position → SIGTERM exits 0."""
    env = daemon_env(tmp_path, free_port())
    daemon = await DaemonProcess(env).start()
    try:
        assert "control API http://127.0.0.1:" in daemon.ready[0]
        hint = daemon.ready[1]
        assert "send a first signal:" in hint
        command = shlex.split(hint.split("send a first signal:", 1)[1])
        assert command[:4] == [".venv/bin/execd", "signal", "LONG_ENTRY", "BTCUSDT"]
        code, out, err = await run_cli(env, *command[1:])
        assert code == 0, out + err
        lines = out.splitlines()
        assert lines[0].startswith("ACCEPTED cli-")
        assert lines[1].startswith("DONE cli-")
        legs = {line.split()[0]: line for line in lines[2:]}
        assert set(legs) == {"entry", "stop_loss", "take_profit"}
        assert all("client_id xd" in line for line in legs.values())
        assert "FILLED" in legs["entry"]

        code, out, err = await run_cli(env, "status", "--json")
        assert code == 0, err
        status = orjson.loads(out)
        assert status["state"] == "ready"
        assert status["exchange"]["mode"] == "sim"
        assert [(p["symbol"], p["amount"]) for p in status["positions"]] == [
            ("BTCUSDT", "0.010")]
        code, out, _ = await run_cli(env, "status")
        assert code == 0
        assert "BTCUSDT" in out
        assert "LONG" in out

        export = tmp_path / "monitor.json"
        code, out, err = await run_cli(env, "monitor", "--once", "--export", str(export))
        assert code == 0, err
        assert "BTCUSDT" in out
        assert "weight:1m" in out
        exported = orjson.loads(export.read_bytes())
        assert exported["exchange"] == status["exchange"]
        assert [p["symbol"] for p in exported["positions"]] == ["BTCUSDT"]

        async with aiohttp.ClientSession() as session, session.get(
                daemon.ready[0].split("control API ")[1].split(",")[0] + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        signals = {s.labels["state"]: s.value for s in families["execd_signals"].samples
                   if s.name == "execd_signals_total"}
        assert signals.get("DONE", 0) >= 1
        assert families["execd_decision_latency_seconds"].samples
        assert any(s.value > 0 for s in families["execd_limiter_used"].samples)

        # the mark is known by now (the stream's): a wrong side is refused at intake (400)
        code, out, err = await run_cli(env, "signal", "LONG_ENTRY", "BTCUSDT", "--qty", "0.01",
                                       "--sl", "99999999", "--wait")
        assert code == 2, out + err
        assert err.startswith("rejected: stop_loss: must be below the mark price")
        code, out, err = await run_cli(env, "signal", "LONG_ENTRY", "BTCUSDT", "--qty", "1e3")
        assert code == 2
        assert err.startswith("rejected: quantity: must be a plain decimal string")
    finally:
        code, err = await daemon.stop()
        await daemon.ensure_dead()
    assert code == 0, err
