"""Start-up checks (SPEC §5.10), with ``execd run`` as a real process against the simulator:
a refused API key ends start-up with exit 1 and a message naming the key's permissions and IP
whitelist; an account in hedge mode exits 2 with a message."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import aiohttp

from app.sim import SimServer
from tests.daemon_process import daemon_env, free_port, run_cli


async def test_a_refused_api_key_ends_start_up_with_exit_1(tmp_path: Path,
                                                           sim: SimServer) -> None:
    env = daemon_env(tmp_path, free_port(), BINANCE_API_KEY="not-the-key",
                     BINANCE_API_SECRET="not-the-secret")
    code, out, err = await run_cli(env, "run", "--exchange-url", sim.url)
    assert code == 1, out + err
    assert "AuthError" in err
    assert "permissions" in err
    assert "IP whitelist" in err
    assert "not-the-secret" not in out + err


async def test_an_account_in_hedge_mode_is_refused_with_exit_2(tmp_path: Path,
                                                               sim: SimServer) -> None:
    query = f"dualSidePosition=true&timestamp={int(time.time() * 1000)}"
    signature = hmac.new(b"sim-secret", query.encode(), hashlib.sha256).hexdigest()
    async with aiohttp.ClientSession() as http, http.post(
            f"{sim.url}/fapi/v1/positionSide/dual?{query}&signature={signature}",
            headers={"X-MBX-APIKEY": "sim-key"}) as resp:
        assert resp.status == 200, await resp.text()
    code, out, err = await run_cli(daemon_env(tmp_path, free_port()), "run",
                                   "--exchange-url", sim.url)
    assert code == 2, out + err
    assert "hedge mode" in err
    assert "One-way" in err
