"""Secrets never leave, checked through the real pipeline (DEVELOPERS non-negotiable 6): the
daemon as a process, a distinctive API key, secret and control-API token, errors forced on
every order path, then every file under the log directory and the console output grepped."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson
import pytest

from app.sim import SimConfig, SimServer
from app.sim.config import Credentials
from tests.daemon_process import DaemonProcess, daemon_env, free_port

API_KEY = "KeyQq7Zp3Vx9Lm2Rt5Wy8Nb4Hc6Jd1Fg0"
API_SECRET = "SecretUu1Ii2Oo3Pp4Aa5Ss6Dd7Ff8Gg9Hh0"
TOKEN = "TokenZz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1"
FINAL = ("DONE", "REJECTED", "FAILED", "EXPIRED")


@pytest.fixture
def sim_config() -> SimConfig:
    """The default market with a frozen mark (it still ticks), and this test's key and secret."""
    base = SimConfig()
    return replace(base, credentials=Credentials(API_KEY, API_SECRET),
                   market=replace(base.market, volatility_per_minute=0.0))


@pytest.mark.timeout(180)
async def test_no_key_secret_token_or_signature_in_any_log(tmp_path: Path, sim: SimServer
                                                           ) -> None:
    port = free_port()
    env = daemon_env(tmp_path, port, BINANCE_API_KEY=API_KEY, BINANCE_API_SECRET=API_SECRET,
                     EXECD_API_TOKEN=TOKEN, EXECD_AUDIT__CONSOLE="true",
                     EXECD_AUDIT__LEVEL="DEBUG", EXECD_EXECUTION__RESOLVE_WINDOW_S="1",
                     EXECD_BREAKER__RECOVERY_TIMEOUT_S="0.5")
    faults = {"seed": 3, "rules": [
        {"endpoint": endpoint, "fault": fault, "probability": 0.25}
        for endpoint in ("POST /fapi/v1/order", "POST /fapi/v1/algoOrder",
                         "GET /fapi/v3/positionRisk", "GET /fapi/v1/premiumIndex")
        for fault in ("http_500", "unknown_503", "timeout_1007", "reset_after_apply")] + [
        # Last, so that every entry that met none of the faults above still has an unknown
        # outcome: the error paths that carry request text are taken on every run.
        {"endpoint": "POST /fapi/v1/order", "fault": "unknown_503", "probability": 1.0}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sim.url}/_sim/faults", json=faults) as resp:
            assert resp.status == 200, await resp.text()
        daemon = await DaemonProcess(env, "--exchange-url", sim.url).start()
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            api = f"http://127.0.0.1:{port}"
            bodies = [{"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
                       "stop_loss": "60000.0", "take_profit": "70000.0", "ttl_s": 60},
                      {"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010",
                       "stop_loss": "66000.0"},                      # wrong side: rejected
                      {"symbol": "ETHUSDT", "type": "LONG_ENTRY", "quantity": "oops"},
                      {"symbol": "BTCUSDT", "type": "CLOSE_LONG"}] * 5
            accepted = []
            for n, body in enumerate(bodies):
                async with session.post(f"{api}/v1/signals", headers=headers,
                                        data=orjson.dumps({"id": f"r{n}", **body})) as resp:
                    assert resp.status in (200, 202, 400), await resp.text()
                    if resp.status == 202:
                        accepted.append(f"r{n}")
            async with asyncio.timeout(90):           # let every signal take its error paths
                for signal_id in accepted:
                    while True:
                        async with session.get(f"{api}/v1/signals/{signal_id}",
                                               headers=headers) as resp:
                            if (await resp.json())["state"] in FINAL:
                                break
                        await asyncio.sleep(0.1)
            async with session.post(f"{api}/v1/signals",
                                    headers={"Authorization": f"Bearer {TOKEN}x"},
                                    data=b"{}") as resp:
                assert resp.status == 401
            for path in ("/v1/balance", "/v1/positions/BTCUSDT", "/v1/status"):
                async with session.get(f"{api}{path}", headers=headers) as resp:
                    assert resp.status in (200, 502)
            async with session.post(f"{sim.url}/_sim/faults",
                                    json={"seed": 1, "rules": [],
                                          "outages": [{"start_s": 0, "duration_s": 2}]}) as r:
                assert r.status == 200
            async with session.get(f"{api}/v1/balance", headers=headers) as resp:
                assert resp.status == 502
        finally:
            code, stderr = await daemon.stop()
            await daemon.ensure_dead()
    assert code == 0, stderr
    files = [p for p in (tmp_path / "audit").rglob("*") if p.is_file()]
    assert files
    data = b"".join(p.read_bytes() for p in files).decode() + stderr + "".join(daemon.ready)
    assert "api_error" in data                       # errors were forced and logged
    assert "order_unknown_outcome" in data
    for secret in (API_KEY, API_SECRET, TOKEN):
        assert secret not in data
        assert secret.lower() not in data.lower()
    assert re.search(r"signature=[0-9a-fA-F]{8}", data) is None
