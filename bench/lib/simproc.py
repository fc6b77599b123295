"""The simulator as a separate process for the bench scripts, its configuration and its admin API.

``async with simulator(workdir, config_text) as base_url:`` writes ``workdir/sim.toml``, starts
``python -m app sim`` on a free loopback port with it, waits for its ``listening on`` line, and
SIGTERMs it (SIGKILL after 10 s) on the way out. Its stderr goes to ``workdir/sim.stderr`` and
is quoted if it fails to start. Files are written off the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .report import ROOT

#: Limits far above any bench's load, a balance no run exhausts, frozen marks: nothing but the
#: daemon sets the pace (latency, soak).
#: The admin API refuses a body that is not declared JSON (SPEC §11.2).
JSON = {"Content-Type": "application/json"}
UNTHROTTLED = ("[limits]\nrequest_weight = 100000000\norders_short = 100000000\n"
               "orders_long = 100000000\n[account]\nbalance = \"1000000000\"\n"
               "[market]\nvolatility_per_minute = 0\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prepare(workdir: Path, config_text: str) -> tuple[Path, io.BufferedWriter]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "sim.toml"
    config.write_text(config_text, encoding="utf-8")
    return config, (workdir / "sim.stderr").open("wb")


@contextlib.asynccontextmanager
async def simulator(workdir: Path, config_text: str) -> AsyncIterator[str]:
    """A simulator process configured by ``config_text`` (TOML); yields its base URL."""
    config, errlog = await asyncio.to_thread(_prepare, workdir, config_text)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "sim", "--port", str(free_port()), "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=errlog, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        if b"listening on" not in line:
            errlog.flush()
            log = await asyncio.to_thread((workdir / "sim.stderr").read_text, errors="replace")
            raise RuntimeError(f"simulator did not start: {log[-2000:]}")
        yield line.decode().split("listening on", 1)[1].strip()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        errlog.close()


def sim_toml(limits: dict[str, int]) -> str:
    """A configuration with these ``[limits]`` and frozen marks (no volatility, no ticks)."""
    lines = ["[limits]", *(f"{k} = {v}" for k, v in limits.items()),
             "", "[market]", "volatility_per_minute = 0", "tick_interval_s = 0", ""]
    return "\n".join(lines)


class Admin:
    """The simulator's ``/_sim/`` admin API."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def get(self, path: str) -> Any:
        async with self.session.get(f"{self.base}/_sim/{path}") as resp:
            return orjson.loads(await resp.read())

    async def post(self, path: str, body: object) -> Any:
        async with self.session.post(f"{self.base}/_sim/{path}", data=orjson.dumps(body),
                                     headers=JSON) as resp:
            if resp.status != 200:
                raise RuntimeError(f"/_sim/{path}: HTTP {resp.status}: {await resp.text()}")
            return orjson.loads(await resp.read())


def duplicates(orders: list[dict[str, Any]]) -> dict[str, int]:
    """Client ids with more than one accepted order in ``/_sim/orders`` (``triggered`` rows
    excluded) → count."""
    counts = collections.Counter(r["client_id"] for r in orders if r["kind"] != "triggered")
    return {cid: n for cid, n in counts.items() if n > 1}
