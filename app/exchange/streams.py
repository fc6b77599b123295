"""The user-data and mark-price stream clients (SPEC §5.8, research/binance-futures-api.md §11).

Both are `WsLoop`s (``wsclient.py``): they connect with aiohttp's websocket client, deliver
typed events (``stream_events.py``) to a synchronous callback in the order they arrive, and
reconnect with backoff forever. After every ``StreamStatus(connected=True)`` the consumer must
reconcile by REST: events sent while a stream was down are never replayed.

- `UserStream`: gets the account's listenKey through the gateway (`ListenKeys`), connects to
  ``{ws_base}/private/ws?listenKey=K``, PUTs the key every ``keepalive_s``, and gets a key again
  and reconnects after ``-1125`` on a PUT, ``listenKeyExpired``, a dropped connection, or
  ``max_connection_s``. It never DELETEs the key: another process may share the account (a POST
  returns the same active key to both). The listenKey is a credential: it appears in no log,
  status, error or repr.
- `MarketStream`: ``<symbol>@markPrice@1s`` of every watched symbol on one combined connection
  ``{ws_base}/market/stream?streams=…``; ``watch()`` adds symbols (a live ``SUBSCRIBE`` request
  on an open connection). Idle until the first symbol is watched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

import aiohttp
import orjson

from app.clock import Clock
from app.errors import ExchangeError
from app.exchange.stream_events import (
    ListenKeyExpired,
    MarkUpdate,
    StreamKind,
    StreamStatus,
    UserEvent,
    parse_mark_event,
    parse_user_event,
    wire_name,
)
from app.exchange.wsclient import Ended, StreamSettings, Unreachable, WsLoop
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger

__all__ = ["ListenKeys", "MarketStream", "StreamSettings", "UserStream"]


class ListenKeys(Protocol):
    """The gateway as the user stream sees it (``Gateway`` satisfies it)."""

    async def new_listen_key(self) -> str: ...

    async def keepalive_listen_key(self, key: str) -> None: ...

    async def close_listen_key(self, key: str) -> None: ...


class UserStream(WsLoop):
    """The account's user-data stream. ``on_event`` gets every `UserEvent` (``OrderUpdate``,
    ``AlgoUpdate``, ``PositionsUpdate``, ``ListenKeyExpired``) and every `StreamStatus`,
    synchronously, in arrival order; an exception it raises ends ``run()`` with it.
    ``session``: the process's aiohttp session (None: ``run()`` opens and closes its own)."""

    def __init__(self, ws_base: str, keys: ListenKeys,
                 on_event: Callable[[UserEvent | StreamStatus], None], clock: Clock,
                 log: AuditLogger, settings: StreamSettings, *,
                 session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(StreamKind.USER, on_event, clock, log, settings, session)
        self._base = ws_base.rstrip("/")
        self._keys = keys
        self._on_event = on_event
        self._key: str | None = None
        self._renewals: dict[str, int] = {}

    def statistics(self) -> dict[str, Any]:
        """`WsLoop.statistics` plus ``key_renewals`` by why (start, reconnect, keepalive,
        expired, -1125, rotation)."""
        stats = super().statistics()
        stats["key_renewals"] = dict(self._renewals)
        return stats

    async def _target(self) -> tuple[str, str]:
        try:
            key = await self._keys.new_listen_key()
        except Exception as exc:   # breaker open, outage, a bug: back off and ask again
            raise Unreachable(f"listenKey request failed: {type(exc).__name__}: "
                              f"{getattr(exc, 'message', '') or 'see api_error'}") from exc
        self._renewed(self._pending_renew, new_key=key != self._key)
        self._key = key
        path = f"{self._base}/private/ws"
        return f"{path}?listenKey={key}", path

    def _renewed(self, why: str, *, new_key: bool) -> None:
        self._renewals[why] = self._renewals.get(why, 0) + 1
        self._log.info(AuditEvent.LISTEN_KEY_RENEWED, why=why, new_key=new_key)

    def _helpers(self, ws: aiohttp.ClientWebSocketResponse
                 ) -> list[Coroutine[Any, Any, Ended]]:
        assert self._key is not None
        return [self._keepalive(self._key)]

    async def _keepalive(self, key: str) -> Ended:
        """PUT every ``keepalive_s``; a failed PUT is tried again after ``backoff_max_s``
        (the key still has time left); -1125 (the key is gone) ends the connection."""
        settings = self._settings
        delay = settings.keepalive_s
        while True:
            await self._clock.sleep(delay)
            try:
                await self._keys.keepalive_listen_key(key)
            except Exception as exc:            # the gateway has audited it (api_error)
                if isinstance(exc, ExchangeError) and exc.code == -1125:
                    return Ended("listenKey does not exist (-1125 on keepalive)", renew="-1125")
                delay = min(settings.keepalive_s, settings.backoff_max_s)
                continue
            delay = settings.keepalive_s
            self._renewed("keepalive", new_key=False)

    def _on_text(self, text: str) -> Ended | None:
        try:
            event = parse_user_event(orjson.loads(text))
        except Exception as exc:     # ValueError by contract; anything else must not kill us
            self._malformed(exc)
            return None
        if event is None:
            return None
        self._delivered(wire_name(event))
        self._on_event(event)
        if isinstance(event, ListenKeyExpired):
            return Ended("listenKey expired", renew="expired")
        return None


def stream_name(symbol: str) -> str:
    return f"{symbol.lower()}@markPrice@1s"


class MarketStream(WsLoop):
    """Mark prices (every second) of the watched symbols. ``on_mark`` gets each `MarkUpdate`,
    ``on_status`` each `StreamStatus`, synchronously, in arrival order."""

    def __init__(self, ws_base: str, on_mark: Callable[[MarkUpdate], None],
                 on_status: Callable[[StreamStatus], None], clock: Clock, log: AuditLogger,
                 settings: StreamSettings, *,
                 session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(StreamKind.MARKET, on_status, clock, log, settings, session)
        self._base = ws_base.rstrip("/")
        self._on_mark = on_mark
        self._wanted: dict[str, None] = {}      # upper-case symbols, in the order watched
        self._subscribed: set[str] = set()      # those the live connection asked for
        self._changed = asyncio.Event()
        self._request_id = 0

    @property
    def watched(self) -> frozenset[str]:
        return frozenset(self._wanted)

    def watch(self, symbols: Iterable[str]) -> None:
        """Add symbols (any case); on an open connection they are subscribed at once."""
        for symbol in symbols:
            self._wanted.setdefault(symbol.upper(), None)
        if any(s not in self._subscribed for s in self._wanted):
            self._changed.set()

    async def _ready(self) -> None:
        while not self._wanted:
            self._changed.clear()
            await self._changed.wait()

    async def _target(self) -> tuple[str, str]:
        self._subscribed = set(self._wanted)
        path = f"{self._base}/market/stream"
        return f"{path}?streams={'/'.join(map(stream_name, self._wanted))}", path

    def _helpers(self, ws: aiohttp.ClientWebSocketResponse
                 ) -> list[Coroutine[Any, Any, Ended]]:
        return [self._subscriber(ws)]

    async def _subscriber(self, ws: aiohttp.ClientWebSocketResponse) -> Ended:
        """Send a SUBSCRIBE for the symbols watched since the connection was made."""
        while True:
            missing = [s for s in self._wanted if s not in self._subscribed]
            if not missing:
                self._changed.clear()
                await self._changed.wait()
                continue
            self._subscribed.update(missing)
            self._request_id += 1
            request = {"method": "SUBSCRIBE", "params": [stream_name(s) for s in missing],
                       "id": self._request_id}
            try:
                await ws.send_str(orjson.dumps(request).decode())
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                return Ended("SUBSCRIBE could not be sent: the connection is closing")

    def _on_text(self, text: str) -> Ended | None:
        try:
            raw = orjson.loads(text)
            if isinstance(raw, dict) and "id" in raw and ("result" in raw or "error" in raw):
                if raw.get("error") is not None:    # a SUBSCRIBE refused (an unknown symbol)
                    self._log.warning(AuditEvent.API_ERROR, operation="market_stream",
                                      error_class="SubscribeRefused",
                                      message=str(raw["error"])[:300], severity="warning")
                return None
            marks = parse_mark_event(raw)
        except Exception as exc:     # ValueError by contract; anything else must not kill us
            self._malformed(exc)
            return None
        for mark in marks:
            self._delivered("markPriceUpdate")
            self._on_mark(mark)
        return None
