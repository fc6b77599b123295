"""The user-data stream (SPEC §10, research §11): the account's listenKey and the websockets
that receive its events.

- ``POST /fapi/v1/listenKey`` → ``{"listenKey": K}``; while a key is active the same key is
  returned and extended (one key per account). ``PUT`` extends it, or answers -1125 when none
  is active. ``DELETE`` ends it and closes its connections.
- A key lives ``[streams] listen_key_validity_s``. At expiry its connections receive
  ``listenKeyExpired`` and are closed.
- ``/private/ws?listenKey=K[&events=A/B]``: the account's events, filtered by type when
  ``events`` is given. An unknown or expired key is accepted and closed at once (1008).
- ``/private/stream[?listenKey=K]`` (Binance's stream mode of the route, which its official
  connector uses): the same events wrapped as ``{"stream": K, "data": event}``; without a key in
  the URL the client sends ``{"method": "SUBSCRIBE", "params": [K], "id": N}`` (answered
  ``{"result": null, "id": N}``, or an error with code 2 for a key that is not the active one).
- Events produced while no connection is open are lost, as on Binance: the account's state
  publishes to this stream (``SimState.sink``) only while someone listens.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from app.sim import errors
from app.sim.config import Streams
from app.sim.events import listen_key_expired
from app.sim.wsconn import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    Gate,
    Hub,
    LiveRequest,
    RequestError,
    refuse,
)

LISTEN_KEY_MISSING = "This listenKey does not exist."


@dataclass(slots=True)
class _Listener:
    wanted: frozenset[str] | None      # event types asked for (None: all)
    combined: bool                     # frames wrapped as {"stream": key, "data": event}
    key: str | None                    # the key it listens to (None: not subscribed yet)


class UserStream(Hub[_Listener]):
    """The listenKey and the user-data connections. ``clock`` is the simulator's (epoch
    seconds); the key's expiry is checked against it by a timer of the event loop."""

    def __init__(self, settings: Streams, clock: Callable[[], float], gate: Gate) -> None:
        super().__init__(settings)
        self._clock = clock
        self._gate = gate
        self._key: str | None = None
        self._expires_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # ----------------------------------------------------------------- the sink
    @property
    def listening(self) -> bool:
        return bool(self._clients)

    def publish(self, event: dict[str, object]) -> None:
        """Send an account event to every connection of the key that wants its type."""
        kind = event["e"]
        key = self._key
        for connection, listener in self._clients.items():
            if listener.key is None or listener.key != key:
                continue
            if listener.wanted is None or kind in listener.wanted:
                connection.send({"stream": key, "data": event} if listener.combined else event)

    # ----------------------------------------------------------------- REST
    def create(self) -> dict[str, object]:
        """``POST /fapi/v1/listenKey``: the active key (extended), or a new one."""
        if self._active() is None:
            self._key = secrets.token_hex(32)
        self._extend()
        return {"listenKey": self._key}

    def keepalive(self) -> dict[str, object]:
        """``PUT /fapi/v1/listenKey``: extend the active key; -1125 when there is none."""
        if self._active() is None:
            raise errors.bad(-1125, LISTEN_KEY_MISSING)
        self._extend()
        return {}

    def delete(self) -> dict[str, object]:
        """``DELETE /fapi/v1/listenKey``: end the key and close its connections."""
        self._end(notify=False, reason="listenKey deleted")
        return {}

    def expire_now(self) -> None:
        """``POST /_sim/listen-key/expire``: the active key expires now."""
        self._end(notify=True, reason="listenKey expired")

    # ----------------------------------------------------------------- the websocket
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``/private/ws?listenKey=K[&events=A/B]``."""
        return await self._serve(request, combined=False)

    async def handle_combined(self, request: web.Request) -> web.StreamResponse:
        """``/private/stream[?listenKey=K][&events=A/B]``: frames wrapped with the key."""
        return await self._serve(request, combined=True)

    async def _serve(self, request: web.Request, *, combined: bool) -> web.StreamResponse:
        refusal = self._gate.refusal()
        if refusal is not None:
            return refusal
        key = request.query.get("listenKey") or None
        if (key is None and not combined) or (key is not None and key != self._active()):
            return await refuse(request, CLOSE_POLICY, "invalid or expired listenKey")
        raw = request.query.get("events", "")
        wanted = frozenset(e for e in raw.split("/") if e) or None
        return await self._open(request, _Listener(wanted, combined, key))

    def _answer(self, listener: _Listener, request: LiveRequest) -> object:
        """``SUBSCRIBE [K]`` / ``UNSUBSCRIBE [K]`` / ``LIST_SUBSCRIPTIONS`` from the client."""
        if request.method == "LIST_SUBSCRIPTIONS":
            return [] if listener.key is None else [listener.key]
        if request.method == "UNSUBSCRIBE":
            if listener.key in request.params:
                listener.key = None
            return None
        if request.method != "SUBSCRIBE":
            raise RequestError("expected SUBSCRIBE, UNSUBSCRIBE or LIST_SUBSCRIPTIONS")
        if len(request.params) != 1 or request.params[0] != self._active():
            raise RequestError("params must be [the active listenKey]")
        listener.key = request.params[0]
        return None

    # ----------------------------------------------------------------- expiry
    def _active(self) -> str | None:
        if self._key is not None and self._clock() >= self._expires_at:
            self._end(notify=True, reason="listenKey expired")
        return self._key

    def _extend(self) -> None:
        validity = self._settings.listen_key_validity_s
        self._expires_at = self._clock() + validity
        self._schedule(validity)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._key is None:
            return
        left = self._expires_at - self._clock()
        if left > 0:
            self._schedule(left)                 # extended since, or a settable test clock
        else:
            self._end(notify=True, reason="listenKey expired")

    def _end(self, *, notify: bool, reason: str) -> None:
        key = self._key
        if key is None:
            return
        self._key = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        event = listen_key_expired(key, self._clock())
        for connection, listener in list(self._clients.items()):
            if listener.key != key:
                continue
            if notify:
                connection.send({"stream": key, "data": event} if listener.combined else event)
            connection.close(CLOSE_NORMAL, reason)

