"""Run ``execd run`` as a real process for end-to-end tests (SIGTERM, kill -9, the CLI)."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import sys
from pathlib import Path
from typing import Any

import orjson

from app.config import PROJECT_ROOT

READY_TIMEOUT_S = 30.0
#: A test run under a service manager must not pass its socket to the daemons it starts.
SYSTEMD_VARIABLES = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def daemon_env(tmp_path: Path, api_port: int, **extra: str) -> dict[str, str]:
    """A clean environment (no EXECD_, BINANCE_ or systemd variables but those in `extra`):
    audit, journal and token under ``tmp_path``, the API on `api_port`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXECD_", "BINANCE_"))
           and k not in SYSTEMD_VARIABLES}
    return env | {
        "EXECD_AUDIT__LOG_DIR": str(tmp_path / "audit"),
        "EXECD_AUDIT__CONSOLE": "false",
        "EXECD_JOURNAL__PATH": str(tmp_path / "data" / "journal.sqlite3"),
        "EXECD_API__PORT": str(api_port),
    } | extra


class DaemonProcess:
    """``python -m app run`` started with ``env``; ``ready`` holds its ready lines.

    `stderr` is where its stderr goes: a pipe read by `stop()` unless a file descriptor is
    given (a test's own pipe, say, that nobody reads). ``nofile`` sets the process's
    RLIMIT_NOFILE (soft and hard) before it starts."""

    def __init__(self, env: dict[str, str], *args: str,
                 stderr: int = asyncio.subprocess.PIPE, nofile: int | None = None) -> None:
        self.env = env
        self.args = args
        self.stderr = stderr
        self.nofile = nofile
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: list[str] = []

    async def start(self) -> DaemonProcess:
        nofile = self.nofile

        def limit() -> None:   # runs in the child, between fork and exec
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app", "run", *self.args, cwd=PROJECT_ROOT, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=self.stderr,
            preexec_fn=limit if nofile is not None else None)
        assert self.proc.stdout is not None
        first = await asyncio.wait_for(self.proc.stdout.readline(), READY_TIMEOUT_S)
        if not first.startswith(b"execd ready:"):
            _, err = await asyncio.wait_for(self.proc.communicate(), READY_TIMEOUT_S)
            raise AssertionError(f"no ready line: {first!r}\n{(err or b'').decode()}")
        self.ready.append(first.decode())
        for _ in range(2):
            self.ready.append((await self.proc.stdout.readline()).decode())
        return self

    async def stop(self, *, kill: bool = False) -> tuple[int, str]:
        """SIGTERM (or SIGKILL) and wait: (exit code, stderr, or "" when not ours to read)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
        _, err = await asyncio.wait_for(self.proc.communicate(), 60)
        assert self.proc.returncode is not None
        return self.proc.returncode, err.decode() if err is not None else ""

    async def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            # communicate, not wait: a child that flooded a pipe leaves its reader paused,
            # and wait() would never see the pipes close
            await asyncio.wait_for(self.proc.communicate(), 60)


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", *args, cwd=PROJECT_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:     # timed out (a `run` that did not exit): no orphan
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def audit_events(tmp_path: Path) -> list[dict[str, Any]]:
    files = sorted((tmp_path / "audit").glob("audit-*.jsonl"))
    return [orjson.loads(line) for f in files for line in f.read_bytes().splitlines()]
