"""``execd run`` under a service manager, as systemd's ``Type=notify`` with ``WatchdogSec=``
sees it: a real process notifying a unix datagram socket the test binds. It says STATUS=
from the start, READY=1 only once /healthz answers ready, WATCHDOG=1 again and again from its
event loop, and STOPPING=1 on SIGTERM; then exits 0."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from app.sim import SimServer
from tests.daemon_process import DaemonProcess, audit_events, daemon_env, free_port, run_cli

TOKEN = "systemd-test-token"
WATCHDOG_USEC = 400_000         # a ping at least every 0.2 s


@dataclass
class Manager:
    """The service manager's end: every datagram, in order, with the /healthz answer seen
    when READY=1 arrived."""

    sock: socket.socket
    api_port: int
    http: aiohttp.ClientSession
    messages: list[str] = field(default_factory=list)
    health_at_ready: tuple[int, object] | None = None

    async def listen(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = (await loop.sock_recv(self.sock, 4096)).decode()
            if "READY=1" in message.splitlines():
                async with self.http.get(f"http://127.0.0.1:{self.api_port}/healthz") as resp:
                    self.health_at_ready = (resp.status, await resp.json())
            self.messages.append(message)

    async def until(self, condition: Callable[[list[str]], bool], what: str) -> None:
        for _ in range(200):
            if condition(self.messages):
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"no {what} within 10 s; received {self.messages}")


@pytest.fixture
async def notify_socket() -> AsyncIterator[tuple[str, socket.socket]]:
    """A bound datagram socket at a short path (a unix socket path fits in 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="execd-sd-") as directory, socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = f"{directory}/notify"
        sock.bind(path)
        sock.setblocking(False)
        yield path, sock


def count(messages: list[str], line: str) -> int:
    return sum(line in m.splitlines() for m in messages)


@pytest.mark.timeout(120)
async def test_sd_notify_ready_watchdog_stopping(
        tmp_path: Path, sim: SimServer, http: aiohttp.ClientSession,
        notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    port = free_port()
    env = daemon_env(tmp_path, port, EXECD_API_TOKEN=TOKEN, NOTIFY_SOCKET=path,
                     WATCHDOG_USEC=str(WATCHDOG_USEC))
    manager = Manager(sock, port, http)
    listening = asyncio.create_task(manager.listen())
    daemon = DaemonProcess(env, "--exchange-url", sim.url)
    try:
        await daemon.start()
        await manager.until(lambda m: count(m, "READY=1") == 1, "READY=1")
        ready_at = next(i for i, m in enumerate(manager.messages) if "READY=1" in m)
        await manager.until(lambda m: count(m[ready_at:], "WATCHDOG=1") >= 3,
                            "three WATCHDOG=1 after READY=1")
        code, err = await daemon.stop()
        await manager.until(lambda m: count(m, "STOPPING=1") == 1, "STOPPING=1")
    finally:
        await daemon.ensure_dead()
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
    assert code == 0, err
    messages = manager.messages
    print(f"\n{len(messages)} datagrams: {count(messages, 'WATCHDOG=1')} × WATCHDOG=1; "
          f"READY=1 was #{ready_at + 1}")
    # From the start, before anything else: where it is.
    assert messages[0].startswith("STATUS=starting: mode=sim queue=0 positions=0")
    assert all("ready:" not in m for m in messages[:ready_at])
    # READY=1 once, with the status of a ready daemon, while /healthz said ready.
    assert messages[ready_at] == "READY=1\nSTATUS=ready: mode=sim queue=0 positions=0"
    assert manager.health_at_ready == (200, {"status": "ready"})
    # STOPPING=1 once, after READY=1, with a stopping status; the pings go on while it stops.
    stopping_at = next(i for i, m in enumerate(messages) if "STOPPING=1" in m)
    assert stopping_at > ready_at
    assert messages[stopping_at].startswith("STOPPING=1\nSTATUS=stopping: mode=sim")
    assert count(messages, "READY=1") == 1
    assert not [e for e in audit_events(tmp_path) if e["event"] == "notify_failed"]


@pytest.mark.timeout(90)
async def test_a_malformed_notify_socket_is_a_config_error(tmp_path: Path) -> None:
    """NOTIFY_SOCKET that is neither a path nor @name: exit 2 naming it, nothing started."""
    env = daemon_env(tmp_path, free_port(), EXECD_API_TOKEN=TOKEN, NOTIFY_SOCKET="notify.sock")
    code, out, err = await run_cli(env, "run")
    assert code == 2, (out, err)
    assert "NOTIFY_SOCKET: must be an absolute unix socket path" in err
    assert not (tmp_path / "audit").exists()
