"""``execd run`` as a process of a bench (bench/crash.py, bench/broker.py): its environment,
the process (ready line, SIGTERM, ``kill -9``) and the file its stderr is appended to."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .report import ROOT


def daemon_env(workdir: Path, port: int, token: str,
               settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without its ``EXECD_``/``BINANCE_`` variables, plus
    ``settings``, the API token and port, and audit log and journal under ``workdir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXECD_", "BINANCE_"))}
    return env | dict(settings) | {
        "EXECD_API_TOKEN": token, "EXECD_API__PORT": str(port),
        "EXECD_AUDIT__LOG_DIR": str(workdir / "audit"), "EXECD_AUDIT__CONSOLE": "false",
        "EXECD_JOURNAL__PATH": str(workdir / "data" / "journal.sqlite3"),
    }


@dataclass(slots=True)
class DaemonProc:
    proc: asyncio.subprocess.Process

    @classmethod
    async def spawn(cls, env: dict[str, str], exchange_url: str, stderr: TextIO) -> DaemonProc:
        return cls(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app", "run", "--exchange-url", exchange_url, cwd=ROOT,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr))

    async def wait_ready(self, within_s: float) -> bool:
        """True once the ready line is out; False if ``within_s`` passed first."""
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), within_s)
        except TimeoutError:
            return False
        if not line.startswith(b"execd ready:"):
            raise RuntimeError(f"daemon did not start (exit {self.proc.returncode}): {line!r}")
        return True

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()

    async def terminate(self, within_s: float = 60.0) -> int:
        """SIGTERM; the exit code (-9 if it had to be killed after ``within_s``)."""
        if self.proc.returncode is None:
            self.proc.terminate()
        try:
            return await asyncio.wait_for(self.proc.wait(), within_s)
        except TimeoutError:
            await self.kill()
            return -9


@contextlib.asynccontextmanager
async def open_log(path: Path) -> AsyncIterator[TextIO]:
    """``path`` opened for appending (in a thread), closed at the end."""
    handle = await asyncio.to_thread(path.open, "a", encoding="utf-8")
    try:
        yield handle
    finally:
        handle.close()
