"""`execd sim` as its own process: listening line, config overlay, fault plan, clean stop."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_execd_sim_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`python -m app sim --port N --config F --faults P --seed S` serves the simulator."""
    config = tmp_path / "small.toml"
    config.write_text("[limits]\nrequest_weight = 300\nrequest_weight_interval_s = 5\n")
    plan = tmp_path / "plan.toml"
    plan.write_text('seed = 3\n[[rules]]\nendpoint = "GET /fapi/v1/ping"\n'
                    'fault = "http_500"\nprobability = 1.0\n')
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "sim", "--port", str(port), "--config", str(config),
        "--faults", str(plan), "--seed", "3", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        assert line.decode().strip() == f"listening on http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.get("/fapi/v1/exchangeInfo") as resp:
                limits = (await resp.json())["rateLimits"]
            assert limits[0] == {"rateLimitType": "REQUEST_WEIGHT", "interval": "SECOND",
                                 "intervalNum": 5, "limit": 300}
            async with http.get("/fapi/v1/ping") as resp:
                assert resp.status == 500
            async with http.get("/fapi/v1/time") as resp:
                assert resp.status == 200
                assert int(resp.headers["x-mbx-used-weight-5s"]) >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=20)
    assert code == 0
