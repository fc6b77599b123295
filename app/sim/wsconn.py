"""One websocket connection of the simulator's streams, as Binance runs them (SPEC §10).

Frames go out in the order they were queued (events in ``E`` order); queuing never blocks the
caller, which is the account changing state inside a request. The server pings every
``ping_interval_s``; a connection from which nothing was heard (no pong, no frame at all) for
``pong_timeout_s`` is dropped; every connection is closed at ``max_connection_s``. A client that
does not read its frames fast enough is disconnected when its queue reaches ``MAX_QUEUED``
(Binance disconnects slow consumers too) rather than letting the simulator's memory grow.
Times here are the event loop's (real seconds), not the simulator's settable clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import orjson
from aiohttp import WSMsgType, web

from app.sim.config import Streams

#: Frames a connection may have waiting before it counts as a slow consumer.
MAX_QUEUED = 10_000
#: How long a close handshake may take before the socket is simply dropped.
CLOSE_TIMEOUT_S = 2.0

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008

_ENDED = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


class StreamConnection:
    """A prepared websocket plus its send queue; ``serve()`` runs it until it closes."""

    def __init__(self, ws: web.WebSocketResponse, settings: Streams, *,
                 on_closed: Callable[[StreamConnection], None],
                 on_text: Callable[[StreamConnection, str], None]) -> None:
        self._ws = ws
        self._settings = settings
        self._on_closed = on_closed
        self._on_text = on_text
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._close: tuple[int, str] | None = None
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._opened = loop.time()
        self._heard = self._opened

    def send(self, payload: object) -> None:
        """Queue one JSON frame; never blocks. Ignored once the connection is closing."""
        if self._close is not None:
            return
        if self._queue.qsize() >= MAX_QUEUED:
            self.close(CLOSE_POLICY, "too slow: the send queue is full")
            return
        self._queue.put_nowait(orjson.dumps(payload).decode())

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close after the frames already queued; the first reason given is the one sent."""
        if self._close is None:
            self._close = (code, reason)
            self._queue.put_nowait(None)

    async def serve(self) -> None:
        """Write, read and keep the connection alive until it is closed by either side."""
        writer = asyncio.create_task(self._write(), name="sim-ws-write")
        reader = asyncio.create_task(self._read(), name="sim-ws-read")
        keeper = asyncio.create_task(self._keep(), name="sim-ws-keep")
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not writer.done():               # the client left: finish the close
                self.close(CLOSE_NORMAL, "")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(writer), CLOSE_TIMEOUT_S)
        finally:
            for task in (writer, reader, keeper):
                task.cancel()
            for task in (writer, reader, keeper):
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                    await task
            self._on_closed(self)

    async def _write(self) -> None:
        ws = self._ws
        with contextlib.suppress(ConnectionError, RuntimeError):
            while (frame := await self._queue.get()) is not None:
                await ws.send_str(frame)
        code, reason = self._close or (CLOSE_NORMAL, "")
        with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
            await asyncio.wait_for(ws.close(code=code, message=reason.encode()),
                                   CLOSE_TIMEOUT_S)

    async def _read(self) -> None:
        ws = self._ws
        while True:
            msg = await ws.receive()
            if msg.type in _ENDED:
                return
            self._heard = self._loop.time()
            if msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.TEXT:
                self._on_text(self, msg.data)

    async def _keep(self) -> None:
        """Server pings, the pong timeout and the age limit."""
        cfg = self._settings
        last_ping = self._opened
        while True:
            now = self._loop.time()
            wake = min(last_ping + cfg.ping_interval_s, self._heard + cfg.pong_timeout_s,
                       self._opened + cfg.max_connection_s)
            await asyncio.sleep(max(0.0, wake - now))
            now = self._loop.time()
            if now >= self._opened + cfg.max_connection_s:
                self.close(CLOSE_NORMAL, "connection age limit")
                return
            if now >= self._heard + cfg.pong_timeout_s:
                self.close(CLOSE_POLICY, "pong timeout")
                return
            if now >= last_ping + cfg.ping_interval_s:
                last_ping = now
                await self._ws.ping()


class RequestError(Exception):
    """A live request the stream cannot take; the message says why (``Invalid request: …``)."""


@dataclass(frozen=True, slots=True)
class LiveRequest:
    """``{"method": …, "params": [...], "id": N}`` as a client sends it on a stream."""

    method: str
    params: list[str]
    id: int | None


def answer_request(connection: StreamConnection, text: str,
                   respond: Callable[[LiveRequest], object]) -> None:
    """Parse a live request and send its answer: ``{"result": respond(request), "id": N}``,
    or ``{"error": {"code": 2|3, "msg": …}, "id": N}`` for a malformed request (3: not JSON),
    or when ``respond`` raises ``RequestError``. Request ids are unsigned integers, as Binance
    requires."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        connection.send({"error": {"code": 3, "msg": f"Invalid JSON: {exc}"}, "id": None})
        return
    request_id = body.get("id") if isinstance(body, dict) else None
    try:
        if not isinstance(body, dict):
            raise RequestError("must be a JSON object")
        if request_id is not None and (isinstance(request_id, bool)
                                       or not isinstance(request_id, int) or request_id < 0):
            request_id = None
            raise RequestError("request ID must be an unsigned integer")
        method, params = body.get("method"), body.get("params", [])
        if not isinstance(method, str):
            raise RequestError("method must be a string")
        if not isinstance(params, list) or not all(isinstance(x, str) for x in params):
            raise RequestError("params must be a list of strings")
        result = respond(LiveRequest(method, params, request_id))
    except RequestError as error:
        connection.send({"error": {"code": 2, "msg": f"Invalid request: {error}"},
                         "id": request_id})
        return
    connection.send({"result": result, "id": request_id})


S = TypeVar("S")


class Hub(Generic[S]):
    """The connections of one kind of stream, each with its state ``S`` (what it listens
    to). A subclass answers the live requests its clients send (``_answer``)."""

    def __init__(self, settings: Streams) -> None:
        self._settings = settings
        self._clients: dict[StreamConnection, S] = {}

    @property
    def connections(self) -> int:
        return len(self._clients)

    def close_all(self, code: int, reason: str) -> None:
        for connection in list(self._clients):
            connection.close(code, reason)

    async def _open(self, request: web.Request, state: S) -> web.WebSocketResponse:
        """Upgrade ``request``, register it with ``state``, serve it until it closes (pings
        and pongs are handled by the connection; text frames are live requests)."""
        ws = web.WebSocketResponse(autoping=False, heartbeat=None, max_msg_size=64 * 1024)
        await ws.prepare(request)
        connection = StreamConnection(ws, self._settings, on_closed=self._forget,
                                      on_text=self._request)
        self._clients[connection] = state
        await connection.serve()
        return ws

    def _forget(self, connection: StreamConnection) -> None:
        self._clients.pop(connection, None)

    def _request(self, connection: StreamConnection, text: str) -> None:
        state = self._clients.get(connection)
        if state is not None:
            answer_request(connection, text, lambda request: self._answer(state, request))

    def _answer(self, state: S, request: LiveRequest) -> object:
        raise RequestError("this stream takes no requests")


class Gate:
    """Whether new connections are accepted: ``POST /_sim/streams/drop`` blocks them for a
    while (loop time, seconds)."""

    def __init__(self) -> None:
        self._blocked_until = 0.0

    def block(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._blocked_until = max(self._blocked_until, loop.time() + seconds)

    def refusal(self) -> web.Response | None:
        """The answer to an upgrade while blocked (HTTP 503), or None when open."""
        if asyncio.get_running_loop().time() < self._blocked_until:
            return web.json_response({"code": -1000, "msg": "Streams are unavailable."},
                                     status=503)
        return None


async def refuse(request: web.Request, code: int, reason: str) -> web.WebSocketResponse:
    """Accept the upgrade, then close at once with ``code`` (Binance's answer to a bad key or
    stream name)."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.close(code=code, message=reason.encode())
    return ws

