"""The python-binance client as the gateway uses it, with a per-response hook.

``BinanceClient`` is python-binance's ``AsyncClient`` (pinned: 1.0.37) with five changes, each
because the library has no public way to do it:

* the constructor takes the base URL (``{base}/fapi``), recvWindow and the timeouts (total and
  connect) explicitly, instead of ``create()``, which pings the *spot* API
  (research/libraries.md §1.1);
* ``_handle_response`` hands every response's status and headers to a listener before the
  library parses it. It runs inside the calling task, so a context variable set by the gateway
  says which call the response belongs to (``client.response`` is shared mutable state and is
  never read). An aiohttp ``TraceConfig`` would see the same responses, but it fires five
  signals per request and cost about 30 µs of CPU per call (bench/overhead.py);
* ``reset_session()`` replaces the aiohttp session (SPEC §7.2: after repeated connection
  failures the gateway starts over with fresh connections);
* a form body (POST, DELETE) goes to aiohttp already url-encoded. The library hands aiohttp its
  signed ``(key, value)`` list, which aiohttp turns into a ``FormData`` per request and then
  url-encodes the same way (``urlencode``, every value a string); doing it here gives the
  same bytes and spares ~0.1–0.2 ms of event-loop CPU per order on the reference machine
  (SPEC §13: decision latency; docs/benchmarks.md);
* a successful response's body is decoded once, by orjson. The library decodes it as text,
  then asks aiohttp to decode it again and parse it with ``json``. What it raises is unchanged:
  aiohttp's ``ContentTypeError`` for a body that is not declared JSON (an HTML page),
  ``BinanceRequestException`` for one that does not parse, and the library's own handling
  (``BinanceAPIException``) for every status outside 2xx.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlencode

import aiohttp
import orjson
from binance import AsyncClient
from binance.exceptions import BinanceRequestException


@dataclass(slots=True)
class CallContext:
    """One exchange call in flight: what the response hook needs to know about it."""

    endpoint: str
    costs: dict[str, int]
    sent_at: float
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


CURRENT_CALL: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "execd_current_call", default=None)

ResponseListener = Callable[[CallContext], None]


class BinanceClient(AsyncClient):  # type: ignore[misc]  # python-binance ships no types
    """``AsyncClient`` pointed at ``base_url`` with explicit timeout and recvWindow."""

    def __init__(self, api_key: str, api_secret: str, *, base_url: str, recv_window_ms: int,
                 timeout_s: float, on_response: ResponseListener,
                 connect_timeout_s: float | None = None) -> None:
        """``timeout_s``: the whole request; ``connect_timeout_s``: establishing a new
        connection (TCP and TLS), within it. python-binance passes ``requests_params`` to every
        request, where they override a session-level timeout (research/libraries.md §1.6)."""
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        super().__init__(api_key, api_secret, requests_params={"timeout": timeout})
        self._on_response = on_response
        # Instance attributes win over the class's hard-coded production URLs.
        self.FUTURES_URL = f"{base_url.rstrip('/')}/fapi"
        self.REQUEST_RECVWINDOW = recv_window_ms

    def _get_request_kwargs(self, method: str, signed: bool, force_params: bool = False,
                            **kwargs: Any) -> dict[str, Any]:
        kwargs = super()._get_request_kwargs(method, signed, force_params, **kwargs)
        data = kwargs.get("data")
        if isinstance(data, list):    # the signed (key, value) pairs of a form body
            kwargs["data"] = urlencode(data).encode()
        return kwargs

    async def _handle_response(self, response: aiohttp.ClientResponse) -> Any:
        call = CURRENT_CALL.get()
        if call is not None:
            call.status = response.status
            call.headers = response.headers  # case-insensitive, read-only
            self._on_response(call)
        if not 200 <= response.status < 300 or not await response.read():
            return await super()._handle_response(response)   # an error, or {} for no body
        try:
            return await response.json(loads=orjson.loads)
        except ValueError:
            text = await response.text(errors="replace")
            raise BinanceRequestException(f"Invalid Response: {text}") from None

    async def reset_session(self) -> None:
        this = cast(Any, self)
        old = this.session
        this.session = this._init_session()
        await old.close()
