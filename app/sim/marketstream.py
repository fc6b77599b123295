"""The mark-price streams (SPEC §10, research §11): ``/market/ws[/<stream>]`` and
``/market/stream[?streams=<s1>/<s2>]`` (each frame ``{"stream": name, "data": event}``).

Streams: ``<symbol>@markPrice`` (every 3 s), ``<symbol>@markPrice@1s``, ``!markPrice@arr``
and ``!markPrice@arr@1s`` (a list of every symbol's ``markPriceUpdate``). Symbols are written
in lower case, as Binance names its streams (upper case is accepted too). Besides its interval
a stream is pushed right after ``POST /_sim/price`` moves its symbol's mark. A name in the URL
that is no mark-price stream (ccxt, for one, connects to ``/market/ws/<n>`` and subscribes
afterwards) gets no data, as on Binance. ``/public/ws`` and ``/public/stream`` (Binance's
high-frequency route) are accepted but serve nothing here: a SUBSCRIBE there is an error.

As on Binance, a connection may also change its streams by sending requests:
``{"method": "SUBSCRIBE" | "UNSUBSCRIBE", "params": [names], "id": N}`` → ``{"result": null,
"id": N}``, ``LIST_SUBSCRIPTIONS`` → ``{"result": [names], "id": N}``; a malformed request or a
stream the simulator does not serve → ``{"error": {"code": 2, "msg": ...}, "id": N}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from aiohttp import web

from app.sim.config import Streams, SymbolSpec
from app.sim.events import mark_price_update
from app.sim.wsconn import (
    CLOSE_POLICY,
    Gate,
    Hub,
    LiveRequest,
    RequestError,
    refuse,
)

#: Streams whose interval is not given push every this many seconds (Binance: 3 s).
DEFAULT_INTERVAL_S = 3
#: Most streams one combined connection may ask for (Binance allows 1024).
MAX_STREAMS = 1024


@dataclass(frozen=True, slots=True)
class Subscription:
    name: str                 # as the client wrote it: the combined payload's "stream"
    symbol: str | None        # None: every symbol (!markPrice@arr)
    interval_s: int


def parse_stream(name: str, symbols: Mapping[str, SymbolSpec]) -> Subscription | None:
    """The subscription a stream name asks for, or None if it names no mark-price stream."""
    if name in ("!markPrice@arr", "!markPrice@arr@1s"):
        return Subscription(name, None, 1 if name.endswith("@1s") else DEFAULT_INTERVAL_S)
    parts = name.split("@")
    if len(parts) not in (2, 3) or parts[1] != "markPrice":
        return None
    if len(parts) == 3 and parts[2] != "1s":
        return None
    symbol = parts[0].upper()
    if symbol not in symbols:
        return None
    return Subscription(name, symbol, 1 if len(parts) == 3 else DEFAULT_INTERVAL_S)


@dataclass(slots=True)
class _Client:
    subscriptions: list[Subscription]
    combined: bool
    serves: bool = True                 # False on /public: nothing is served there


class MarketStream(Hub[_Client]):
    """Mark-price connections. ``marks`` and ``symbols`` are the exchange's (read, never
    changed); ``clock`` is the simulator's (epoch seconds) for the events' times."""

    def __init__(self, settings: Streams, symbols: Mapping[str, SymbolSpec],
                 marks: Callable[[], Mapping[str, Decimal]], clock: Callable[[], float],
                 gate: Gate) -> None:
        super().__init__(settings)
        self._symbols = symbols
        self._marks = marks
        self._clock = clock
        self._gate = gate

    # ----------------------------------------------------------------- pushing
    def tick(self, second: int) -> None:
        """Push every stream due at this whole second of the loop's interval timer."""
        self._push(lambda sub: second % sub.interval_s == 0)

    def on_mark(self, symbol: str) -> None:
        """A mark was set by hand: push its streams (and the all-symbol ones) now."""
        self._push(lambda sub: sub.symbol is None or sub.symbol == symbol)

    def _push(self, due: Callable[[Subscription], bool]) -> None:
        """Send every subscription that is ``due``; each symbol's event (and the all-symbol
        list) is built once per push, however many connections want it."""
        marks = self._marks()
        now = self._clock()
        built: dict[str | None, object] = {}
        for connection, client in self._clients.items():
            for sub in client.subscriptions:
                if not due(sub):
                    continue
                data = built.get(sub.symbol)
                if data is None:
                    if sub.symbol is None:
                        data = [mark_price_update(spec, marks[name], now)
                                for name, spec in self._symbols.items()]
                    else:
                        data = mark_price_update(self._symbols[sub.symbol], marks[sub.symbol],
                                                 now)
                    built[sub.symbol] = data
                connection.send({"stream": sub.name, "data": data} if client.combined else data)

    async def run(self) -> None:
        """Push the due streams once a second until cancelled."""
        loop = asyncio.get_running_loop()
        second = 0
        start = loop.time()
        while True:
            second += 1
            await asyncio.sleep(max(0.0, start + second - loop.time()))
            self.tick(second)

    # ----------------------------------------------------------------- the websockets
    async def handle_raw(self, request: web.Request) -> web.StreamResponse:
        """``/market/ws[/<stream>]``: the events as they are."""
        stream = request.match_info.get("stream")
        return await self._serve(request, [stream] if stream else [], combined=False)

    async def handle_combined(self, request: web.Request) -> web.StreamResponse:
        """``/market/stream?streams=<s1>/<s2>``: each event wrapped with its stream's name."""
        names = [n for n in request.query.get("streams", "").split("/") if n]
        return await self._serve(request, names, combined=True)

    async def handle_public(self, request: web.Request) -> web.StreamResponse:
        """``/public/ws[/<stream>]``, ``/public/stream``: accepted, nothing served."""
        return await self._serve(request, [], combined=request.path.startswith("/public/stream"),
                                 serves=False)

    async def _serve(self, request: web.Request, names: list[str], *,
                     combined: bool, serves: bool = True) -> web.StreamResponse:
        refusal = self._gate.refusal()
        if refusal is not None:
            return refusal
        if len(names) > MAX_STREAMS:
            return await refuse(request, CLOSE_POLICY, f"at most {MAX_STREAMS} streams")
        parsed = (parse_stream(name, self._symbols) for name in names)
        subscriptions = [sub for sub in parsed if sub is not None]
        return await self._open(request, _Client(subscriptions, combined, serves))

    def _answer(self, client: _Client, request: LiveRequest) -> object:
        """A live request: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS."""
        method, params = request.method, request.params
        if method == "LIST_SUBSCRIPTIONS":
            return [sub.name for sub in client.subscriptions]
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            raise RequestError(f"unknown method {method!r}, expected one of SUBSCRIBE, "
                               "UNSUBSCRIBE, LIST_SUBSCRIPTIONS")
        if not client.serves:
            raise RequestError("the simulator serves no stream on /public (mark prices are on "
                               "/market)")
        if method == "UNSUBSCRIBE":
            client.subscriptions[:] = [s for s in client.subscriptions if s.name not in params]
            return None
        added = []
        for name in params:
            sub = parse_stream(name, self._symbols)
            if sub is None:
                raise RequestError(f"invalid stream name: {name}")
            added.append(sub)
        have = {s.name for s in client.subscriptions}
        fresh = [s for s in added if s.name not in have]
        if len(client.subscriptions) + len(fresh) > MAX_STREAMS:
            raise RequestError(f"at most {MAX_STREAMS} streams per connection")
        client.subscriptions.extend(fresh)
        return None
