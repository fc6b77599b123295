"""The simulator as a separate process for the bench scripts (not a bench itself: the Makefile
runs ``bench/[!_]*.py``).

``async with simulator(workdir, config_text) as base_url:`` writes ``workdir/sim.toml``, starts
``python -m app sim`` on a free loopback port with it, waits for its ``listening on`` line, and
SIGTERMs it (SIGKILL after 10 s) on the way out. Its stderr goes to ``workdir/sim.stderr`` and
is quoted if it fails to start. Files are written off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
