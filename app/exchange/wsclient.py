"""What the user-data and market streams share (SPEC §5.8): connect a websocket with aiohttp,
read it, and reconnect with backoff forever.

``WsLoop.run()`` repeats: wait until there is something to connect to (``_ready``), work out the
URL (``_target``: the user stream fetches a listenKey there), connect, report the connection,
read every text frame (``_on_text``) while the subclass's helper tasks (``_helpers``: keepalive,
subscriptions) and the rotation timer run beside the reader; the first of them to finish ends
the connection with an `Ended` saying why. Then it waits its backoff (``backoff_initial_s``,
doubling up to ``backoff_max_s``; back to the start after a connection that stayed up at least
``backoff_max_s``; none before a planned rotation) and starts over. It never gives up; only
cancellation ends it.

Each connection up is reported as ``StreamStatus(kind, True)`` and ``stream_connected``; each one
that ends as ``StreamStatus(kind, False, reason)`` and ``stream_disconnected`` (also every failed
attempt, with ``connected=false``). Sleeps and ages go through the injected `Clock`; the
websocket's own ping/pong (``heartbeat_s``) and the connect timeout are aiohttp's, on loop time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp

from app.clock import Clock
from app.exchange.stream_events import StreamKind, StreamStatus
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger

__all__ = ["Backoff", "Ended", "StreamSettings", "WsLoop"]


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Timings of a stream client, in seconds."""

    #: Between listenKey keepalive PUTs (Binance: a key lives 60 min after a PUT).
    keepalive_s: float = 1800.0
    #: A connection is replaced at this age, before Binance's 24 h cut.
    max_connection_s: float = 23.5 * 3600
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    #: A connection that stayed up this long was healthy: when it ends, the first attempt
    #: to reconnect is made at once and the backoff starts over (a server that accepts and
    #: drops at once still meets the backoff).
    healthy_after_s: float = 5.0
    #: aiohttp's ping interval; no pong within half of it drops the connection.
    heartbeat_s: float = 30.0
    connect_timeout_s: float = 10.0


class Backoff:
    """Delays ``initial``, ``2·initial`` … capped at ``maximum``, until ``reset()``."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial = initial
        self._maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._maximum)
        return delay

    def reset(self) -> None:
        self._next = self._initial


@dataclass(frozen=True, slots=True)
class Ended:
    """Why a connection (or an attempt at one) ended. ``renew`` is the reason the user stream
    gives its next listenKey request; ``immediate`` skips the backoff (a planned rotation)."""

    reason: str
    renew: str = "reconnect"
    immediate: bool = False


class Unreachable(Exception):
    """``_target`` could not work out where to connect (the listenKey request failed)."""


def describe(exc: BaseException) -> str:
    """A short account of a connection failure. Never ``str()`` of an aiohttp response error:
    it contains the URL, and a user-stream URL contains the listenKey."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status} {exc.message}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error}"
    return type(exc).__name__


class WsLoop:
    """The reconnecting loop; a subclass says where to connect and what a frame means."""

    def __init__(self, kind: StreamKind, on_status: Callable[[StreamStatus], None],
                 clock: Clock, log: AuditLogger, settings: StreamSettings,
                 session: aiohttp.ClientSession | None) -> None:
        self._kind = kind
        self._on_status = on_status
        self._clock = clock
        self._log = log
        self._settings = settings
        self._session = session
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._last_event: float | None = None
        #: Why the next listenKey is asked for (``listen_key_renewed``'s ``why``).
        self._pending_renew = "start"
        self._stats: dict[str, Any] = {"connects": 0, "drops": 0, "failed_attempts": 0,
                                       "malformed": 0, "events": {}}

    # ------------------------------------------------------------------ status
    @property
    def connected(self) -> bool:
        return self._ws is not None

    def last_event_age_s(self) -> float | None:
        """Seconds since the last event was delivered; None before the first."""
        if self._last_event is None:
            return None
        return self._clock.monotonic() - self._last_event

    def statistics(self) -> dict[str, Any]:
        """Counters (connects, drops, failed attempts, malformed frames, events by kind) and
        the live state; a copy."""
        stats = dict(self._stats)
        stats["events"] = dict(self._stats["events"])
        stats.update(connected=self.connected, last_event_age_s=self.last_event_age_s())
        return stats

    def __repr__(self) -> str:
        s = self._stats
        return (f"<{type(self).__name__} connected={self.connected} connects={s['connects']} "
                f"drops={s['drops']}>")

    # ------------------------------------------------------------------ for subclasses
    async def _ready(self) -> None:
        """Return once there is something to connect to."""

    async def _target(self) -> tuple[str, str]:
        """The URL to connect to and its loggable form. Raises `Unreachable`."""
        raise NotImplementedError

    def _on_text(self, text: str) -> Ended | None:
        """Handle one text frame; an `Ended` closes the connection."""
        raise NotImplementedError

    def _helpers(self, ws: aiohttp.ClientWebSocketResponse
                 ) -> list[Coroutine[Any, Any, Ended]]:
        """Tasks that run beside the reader while connected; one that returns ends it."""
        return []

    def _delivered(self, kind: str) -> None:
        """Count one event of ``kind`` delivered to the consumer."""
        self._last_event = self._clock.monotonic()
        events: dict[str, int] = self._stats["events"]
        events[kind] = events.get(kind, 0) + 1

    def _malformed(self, error: Exception) -> None:
        self._stats["malformed"] += 1
        self._log.warning(AuditEvent.API_ERROR, operation=f"{self._kind.value}_stream",
                          error_class="MalformedMessage", message=str(error)[:300],
                          severity="warning", suggested_action="none: the frame is skipped")

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        """Connect, read and reconnect until cancelled."""
        backoff = Backoff(self._settings.backoff_initial_s, self._settings.backoff_max_s)
        async with self._http() as session:
            while True:
                await self._ready()
                started = self._clock.monotonic()
                ended, was_up = await self._attempt(session)
                healthy = was_up and (self._clock.monotonic() - started
                                      >= self._settings.healthy_after_s)
                if healthy:
                    backoff.reset()
                delay = 0.0 if ended.immediate or healthy else backoff.next()
                self._stats["drops" if was_up else "failed_attempts"] += 1
                self._log.warning(AuditEvent.STREAM_DISCONNECTED, stream=self._kind.value,
                                  reason=ended.reason, retry_in_s=delay, connected=was_up)
                if was_up:
                    self._on_status(StreamStatus(self._kind, False, ended.reason))
                self._pending_renew = ended.renew
                await self._clock.sleep(delay)

    @contextlib.asynccontextmanager
    async def _http(self) -> AsyncIterator[aiohttp.ClientSession]:
        if self._session is not None:
            yield self._session
            return
        async with aiohttp.ClientSession() as session:
            yield session

    async def _attempt(self, session: aiohttp.ClientSession) -> tuple[Ended, bool]:
        """One connection from start to end: (why it ended, whether it was up)."""
        try:
            url, shown = await self._target()
        except Unreachable as exc:
            return Ended(str(exc), renew=self._pending_renew), False
        try:
            async with asyncio.timeout(self._settings.connect_timeout_s):
                ws = await session.ws_connect(url, heartbeat=self._settings.heartbeat_s,
                                              autoping=True)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Ended(f"connect failed: {describe(exc)}"), False
        async with ws:
            self._ws = ws
            self._stats["connects"] += 1
            self._log.info(AuditEvent.STREAM_CONNECTED, stream=self._kind.value, url=shown)
            try:
                self._on_status(StreamStatus(self._kind, True))
                return await self._serve(ws), True
            finally:
                self._ws = None

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> Ended:
        tasks = [asyncio.create_task(coro) for coro in
                 (self._read(ws), self._rotate(), *self._helpers(ws))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # A consumer's exception (raised in the reader) ends run() with it.
        return min(done, key=lambda t: t.exception() is None).result()

    async def _rotate(self) -> Ended:
        await self._clock.sleep(self._settings.max_connection_s)
        return Ended("connection age limit: rotating", renew="rotation", immediate=True)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> Ended:
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                ended = self._on_text(msg.data)
                if ended is not None:
                    return ended
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                extra = f": {msg.extra}" if msg.extra else ""
                return Ended(f"closed by the server ({msg.data}{extra})")
            elif msg.type is aiohttp.WSMsgType.ERROR:
                return Ended(f"connection error: {describe(msg.data)}")
            elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return Ended(f"connection closed (code {ws.close_code})")
