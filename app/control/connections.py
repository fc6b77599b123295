"""The control API's connection limits, at the transport level (SPEC §11.2; issue 14, finding 4).

aiohttp's server bounds neither how many connections it holds nor how long a client may take
to send its request headers (its keepalive timer covers a silent new connection on recent
versions only), so any local process could open connections, send half a request line and
hold them until the daemon ran out of file descriptors. `ConnectionGuard` wraps the server's
protocol factory (`wrap`) and keeps every connection in one of three states:

- **waiting**: connected, or sent the first bytes of a later request on a kept-alive
  connection, and the request has not reached the application yet. A connection waiting longer
  than ``header_timeout_s`` is closed (``header_timeouts``).
- **busy**: a request is being handled (the control API's middleware calls `request_started`
  and `request_finished`).
- **idle**: a kept-alive connection between requests; aiohttp's keepalive timer closes it.

At most ``max_connections`` are open at once. A new connection beyond that evicts the oldest
connection that is not busy (``evicted``): a client that is really sending has just connected,
so the slowest one goes first and a flood of half-sent requests cannot lock the others out.
When every open connection is busy the new one is answered 503 at once and closed
(``refused``; a client that already sent its request may see a reset instead). Refused
connections never reach aiohttp. Eviction and refusal are also reported through ``on_full``
(the control API turns that into a throttled ``alert``). Nothing here blocks: the timers are
the loop's ``call_later``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from enum import Enum
from typing import Final

__all__ = ["ConnectionGuard"]

_REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s")
_REFUSAL_BODY: Final = (b'{"error":"too_many_connections","detail":"the control API holds '
                        b'api.max_connections connections, all busy; retry"}')


class _State(Enum):
    WAITING = "waiting"
    BUSY = "busy"
    IDLE = "idle"


class ConnectionGuard:
    """Connection cap and header timeout for one server (see the module docstring).

    ``on_full(kind)`` is called with ``"evicted"`` or ``"refused"`` each time the cap acts.
    Raises ``ValueError`` for a cap below 1 or a timeout that is not positive."""

    def __init__(self, *, max_connections: int, header_timeout_s: float,
                 on_full: Callable[[str], None] | None = None) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if not header_timeout_s > 0:
            raise ValueError(f"header_timeout_s must be positive, got {header_timeout_s}")
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self._on_full = on_full
        self._open: dict[asyncio.BaseTransport, _Guarded] = {}
        self._evictable: OrderedDict[_Guarded, None] = OrderedDict()   # oldest first
        self.refused = 0
        self.evicted = 0
        self.header_timeouts = 0

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory to give ``loop.create_server`` instead of `factory`."""
        return lambda: _Guarded(self, factory)

    def statistics(self) -> dict[str, int | float]:
        return {"open": len(self._open), "max_connections": self.max_connections,
                "header_timeout_s": self.header_timeout_s, "refused": self.refused,
                "evicted": self.evicted, "header_timeouts": self.header_timeouts}

    # ------------------------------------------------------------------ the application's side
    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self._open.get(transport) if transport is not None else None
        if conn is not None:
            conn.set_state(_State.BUSY)

    def request_finished(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self._open.get(transport) if transport is not None else None
        if conn is not None and conn.state is _State.BUSY:
            conn.set_state(_State.IDLE)

    # ------------------------------------------------------------------ the connections' side
    def _admit(self, conn: _Guarded, transport: asyncio.BaseTransport) -> bool:
        if len(self._open) >= self.max_connections:
            if not self._evictable:
                self.refused += 1
                self._report("refused")
                return False
            oldest, _ = self._evictable.popitem(last=False)
            self.evicted += 1
            oldest.close()
            self._report("evicted")
        self._open[transport] = conn
        return True

    def _forget(self, conn: _Guarded, transport: asyncio.BaseTransport) -> None:
        if self._open.get(transport) is conn:
            del self._open[transport]
        self._evictable.pop(conn, None)

    def _track(self, conn: _Guarded, state: _State) -> None:
        if state is _State.BUSY:
            self._evictable.pop(conn, None)
        elif conn not in self._evictable:
            self._evictable[conn] = None

    def _timed_out(self, conn: _Guarded) -> None:
        self.header_timeouts += 1
        conn.close()

    def _report(self, kind: str) -> None:
        if self._on_full is not None:
            self._on_full(kind)


class _Guarded(asyncio.Protocol):
    """One connection: a proxy in front of aiohttp's protocol, created only once admitted."""

    def __init__(self, guard: ConnectionGuard,
                 factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.state = _State.WAITING

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self._guard._admit(self, transport):
            self._closed = True
            transport.write(_REFUSAL % (len(_REFUSAL_BODY), _REFUSAL_BODY))
            transport.close()
            return
        self._transport = transport
        self.set_state(_State.WAITING)
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def set_state(self, state: _State) -> None:
        self.state = state
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if state is _State.WAITING and not self._closed:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._guard.header_timeout_s, self._expire)
        self._guard._track(self, state)

    def _expire(self) -> None:
        self._timer = None
        if self.state is _State.WAITING and not self._closed:
            self._guard._timed_out(self)

    def close(self) -> None:
        """Close the connection now; it stops counting against the cap at once."""
        if not self._closed and self._transport is not None:
            self._closed = True
            self._guard._forget(self, self._transport)
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self.state is _State.IDLE:   # the first bytes of the next request
            self.set_state(_State.WAITING)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._guard._forget(self, self._transport)
        if self._inner is not None:
            self._inner.connection_lost(exc)
