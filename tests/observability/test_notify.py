"""The sd_notify protocol over real unix datagram sockets: addresses (path and abstract), the
messages, the watchdog on the fake clock, and a receiver that is full or gone (never blocks,
never raises, logged once)."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from app.clock import FakeClock
from app.observability.notify import STATUS_EVERY_S, SystemdNotifier, unix_address


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory under /tmp: a unix socket path must fit in 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="execd-notify-") as path:
        yield Path(path)


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    return sock


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on `sock`."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


class Summary:
    def __init__(self) -> None:
        self.line = "starting: mode=sim queue=0 positions=0"
        self.broken = False

    def __call__(self) -> str:
        if self.broken:
            raise RuntimeError("boom")
        return self.line


def notifier(address: str, summary: Summary, clock: FakeClock,
             watchdog_s: float | None = None) -> SystemdNotifier:
    return SystemdNotifier(address, summary, clock, structlog.get_logger(),
                           watchdog_s=watchdog_s)


def test_unix_address_forms() -> None:
    """A path as it is, @name as the abstract name \\0name; anything else is refused with
    what is wrong."""
    assert unix_address("/run/systemd/notify") == "/run/systemd/notify"
    assert unix_address("@execd/notify") == "\0execd/notify"
    for bad in ("", "@", "relative/notify", "vsock:2:1234"):
        with pytest.raises(ValueError, match="absolute socket path nor an @abstract name"):
            unix_address(bad)
    with pytest.raises(ValueError, match="longer than a unix socket address"):
        unix_address("/" + "x" * 107)
    assert unix_address("@" + "x" * 107) == "\0" + "x" * 107     # no NUL terminator needed


def test_abstract_namespace_socket_receives_the_messages(clock: FakeClock) -> None:
    """NOTIFY_SOCKET=@name reaches a receiver bound in the abstract namespace."""
    name = f"execd-test-{os.getpid()}-{id(clock)}"
    with receiver("\0" + name) as sock:
        summary = Summary()
        sender = notifier(unix_address("@" + name), summary, clock)
        sender.open()
        summary.line = "ready: mode=sim queue=0 positions=1"
        sender.ready()
        sender.stopping()
        sender.stopping()                    # once only
        sender.close()
        sender.ready()                       # closed: ignored
        assert received(sock) == ["STATUS=starting: mode=sim queue=0 positions=0",
                                  "READY=1\nSTATUS=ready: mode=sim queue=0 positions=1",
                                  "STOPPING=1"]
        assert sender.statistics() == {"sent": 3, "dropped": 0, "failed": 0}


async def test_watchdog_pings_at_its_interval_and_status_only_when_changed(
        clock: FakeClock, sock_dir: Path) -> None:
    """WATCHDOG=1 every `watchdog_s` of the (fake) clock, a STATUS= line only when the
    summary changed; a summary that raises or spans lines still gives one line."""
    with receiver(str(sock_dir / "notify")) as sock:
        summary = Summary()
        sender = notifier(str(sock_dir / "notify"), summary, clock, watchdog_s=0.2)
        sender.open()
        task = asyncio.create_task(sender.run())
        try:
            for step in range(4):
                await asyncio.sleep(0)
                if step == 2:
                    summary.line = "ready: mode=sim\nqueue=3 positions=1"
                clock.advance(0.2)
                await asyncio.sleep(0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            sender.close()
        assert received(sock) == ["STATUS=starting: mode=sim queue=0 positions=0",
                                  "WATCHDOG=1", "WATCHDOG=1",
                                  "WATCHDOG=1\nSTATUS=ready: mode=sim queue=3 positions=1",
                                  "WATCHDOG=1"]


async def test_without_a_watchdog_only_the_status_is_refreshed(clock: FakeClock,
                                                                sock_dir: Path) -> None:
    with receiver(str(sock_dir / "notify")) as sock:
        summary = Summary()
        sender = notifier(str(sock_dir / "notify"), summary, clock)
        sender.open()
        task = asyncio.create_task(sender.run())
        await asyncio.sleep(0)
        clock.advance(STATUS_EVERY_S)            # unchanged: nothing sent
        await asyncio.sleep(0)
        summary.broken = True
        clock.advance(STATUS_EVERY_S)
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sender.close()
        assert received(sock) == ["STATUS=starting: mode=sim queue=0 positions=0",
                                  "STATUS=status unavailable: RuntimeError"]


def test_a_full_receiver_drops_and_never_blocks(clock: FakeClock, sock_dir: Path) -> None:
    """A receiver that never reads: once its queue is full, sends are dropped at once (the
    socket is non-blocking), nothing raises, nothing is logged; the status line is sent again
    when there is room."""
    with receiver(str(sock_dir / "notify")) as sock:
        summary = Summary()
        sender = notifier(str(sock_dir / "notify"), summary, clock)
        with capture_logs() as logs:
            sender.open()
            for i in range(2000):
                summary.line = f"ready: queue={i}"
                sender.update_status()
        stats = sender.statistics()
        assert stats["dropped"] > 0
        assert stats["failed"] == 0
        assert stats["sent"] + stats["dropped"] == 2001
        assert logs == []
        received(sock)                           # room again
        sender.update_status()                   # the last line was dropped: sent again
        assert received(sock) == ["STATUS=ready: queue=1999"]
        sender.close()


def test_no_receiver_is_logged_once_and_never_raises(clock: FakeClock,
                                                      sock_dir: Path) -> None:
    """Nobody bound at the address: every send fails, the daemon goes on, one warning."""
    sender = notifier(str(sock_dir / "gone"), Summary(), clock, watchdog_s=0.2)
    with capture_logs() as logs:
        sender.open()
        sender.ready()
        sender.stopping()
    sender.close()
    assert sender.statistics() == {"sent": 0, "dropped": 0, "failed": 3}
    assert [(e["event"], e["log_level"], e["sending"], e["socket"]) for e in logs] == [
        ("notify_failed", "warning", "STATUS", str(sock_dir / "gone"))]
    assert "FileNotFoundError" in logs[0]["error"]
