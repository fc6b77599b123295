"""systemd's notification protocol (sd_notify(3)), spoken without libsystemd.

A service started with ``Type=notify`` finds ``NOTIFY_SOCKET`` in its environment: a unix
datagram socket, a path or an abstract name written ``@name``. Each datagram is one or more
``KEY=VALUE`` lines:

- ``READY=1`` once the service is up (execd: restart recovery done and intake open, when
  ``/healthz`` turns ready); systemd holds back units ordered after it until then;
- ``WATCHDOG=1``, a keep-alive: with ``WatchdogSec=`` systemd restarts the service when none
  arrives for that long. `SystemdNotifier.run` sends it from a task of the event loop, so a loop
  that is stuck stops sending it and gets restarted;
- ``STOPPING=1`` when shutdown begins;
- ``STATUS=<one line>`` shown by ``systemctl status``.

Sending never blocks and never raises: the socket is non-blocking, a datagram the receiver has
no room for is dropped (the next one says the same), and any other failure is logged once as
``notify_failed``. The daemon reads the environment through `app.config.systemd_environment`
and composes this; nothing here reads ``os.environ``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from app.clock import Clock
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger

__all__ = ["STATUS_EVERY_S", "SystemdNotifier", "unix_address"]

#: How often the status line is recomputed (and sent when it changed) without a watchdog.
STATUS_EVERY_S = 2.0
#: sun_path's size on Linux; a path needs its terminating NUL inside it, an abstract name not.
_SUN_PATH = 108


def unix_address(value: str) -> str:
    """The socket address of a ``NOTIFY_SOCKET`` value: an absolute path as it is, ``@name``
    as the abstract name ``\\0name``. Raises ValueError naming what is wrong with `value`."""
    if value.startswith("@") and len(value) > 1:
        address = "\0" + value[1:]
        limit = _SUN_PATH
    elif value.startswith("/"):
        address, limit = value, _SUN_PATH - 1
    else:
        raise ValueError(f"not an absolute socket path nor an @abstract name: {value!r}")
    if len(address.encode()) > limit:
        raise ValueError(f"longer than a unix socket address can be ({limit} bytes): {value!r}")
    return address


class SystemdNotifier:
    """Tells the service manager at `address` (from `unix_address`) how execd is doing.

    `summary` returns the one-line status (``ready: mode=sim queue=0 positions=1``); it is
    called on every tick of `run` and at `ready`/`stopping`, so it must be cheap. With
    `watchdog_s` (half of ``WATCHDOG_USEC``), `run` sends ``WATCHDOG=1`` at least that often.
    """

    def __init__(self, address: str, summary: Callable[[], str], clock: Clock,
                 log: AuditLogger, *, watchdog_s: float | None = None) -> None:
        self._address = address
        self._summary = summary
        self._clock = clock
        self._log = log
        self.watchdog_s = watchdog_s
        self._tick_s = min(watchdog_s, STATUS_EVERY_S) if watchdog_s else STATUS_EVERY_S
        self._sock: socket.socket | None = None
        self._status: str | None = None
        self._stopping = False
        self._failure_logged = False
        self.sent = 0
        self.dropped = 0
        self.failed = 0

    @property
    def _where(self) -> str:
        """The address as ``NOTIFY_SOCKET`` writes it."""
        return "@" + self._address[1:] if self._address.startswith("\0") else self._address

    def __repr__(self) -> str:
        return f"SystemdNotifier({self._where!r}, watchdog_s={self.watchdog_s})"

    def open(self) -> None:
        """Create the socket and send the first status line."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        self._sock = sock
        self.update_status()

    def close(self) -> None:
        """Close the socket; later sends are ignored."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def ready(self) -> None:
        """``READY=1``: recovery is done and intake is open."""
        self._send(self._with_status("READY=1"))

    def stopping(self) -> None:
        """``STOPPING=1``, once: shutdown has begun."""
        if not self._stopping:
            self._stopping = True
            self._send(self._with_status("STOPPING=1"))

    def update_status(self) -> None:
        """``STATUS=`` when the summary changed since it was last sent."""
        message = self._with_status()
        if message:
            self._send(message)

    async def run(self) -> None:
        """Until cancelled: every tick, ``WATCHDOG=1`` (with a watchdog) and the status line
        when it changed, in one datagram."""
        while True:
            await self._clock.sleep(self._tick_s)
            message = self._with_status("WATCHDOG=1" if self.watchdog_s else "")
            if message:
                self._send(message)

    def statistics(self) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped, "failed": self.failed}

    def _with_status(self, head: str = "") -> str:
        """`head` and, when the summary changed, its ``STATUS=`` line."""
        lines = [head] if head else []
        try:
            status = " ".join(self._summary().split())     # one line, whatever it returned
        except Exception as exc:  # a status line is never worth a crash
            status = f"status unavailable: {type(exc).__name__}"
        if status != self._status:
            self._status = status
            lines.append(f"STATUS={status}")
        return "\n".join(lines)

    def _send(self, message: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            if "STATUS=" in message:
                self._status = None         # not delivered: the next tick sends it again
            if isinstance(exc, BlockingIOError):   # the receiver's queue is full: never wait
                self.dropped += 1
                return
            self.failed += 1                # no one listening, no permission, …: log once
            if not self._failure_logged:
                self._failure_logged = True
                self._log.warning(AuditEvent.NOTIFY_FAILED, socket=self._where,
                                  sending=message.partition("=")[0],
                                  error=f"{type(exc).__name__}: {exc.strerror or exc}",
                                  note="logged once; later failures are only counted")
        else:
            self.sent += 1
