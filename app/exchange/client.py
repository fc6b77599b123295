"""The python-binance client as the gateway uses it, and the per-request header hook.

``BinanceClient`` is python-binance's ``AsyncClient`` with two additions, each because the
library has no public way to do it:

* ``reset_session()`` replaces the aiohttp session (SPEC §7.2: after repeated connection
  failures the gateway starts over with fresh connections);
* the constructor takes the base URL (``{base}/fapi``) and recvWindow explicitly, instead of
  ``create()``, which pings the *spot* API (research/libraries.md §1.1).

Headers are read per request through an aiohttp ``TraceConfig``: ``on_request_end`` runs inside
the calling task, so a context variable set by the gateway tells it which call the response
belongs to. ``client.response`` is shared mutable state and is never read.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
from binance import AsyncClient


@dataclass(slots=True)
class CallContext:
    """One exchange call in flight: what the header hook needs to know about it."""

    endpoint: str
    costs: dict[str, int]
    sent_at: float
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


CURRENT_CALL: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "execd_current_call", default=None)

ResponseListener = Callable[[CallContext], None]


def header_trace(on_response: ResponseListener) -> aiohttp.TraceConfig:
    """A TraceConfig that hands every response's status and headers to ``on_response``."""

    async def on_request_end(session: aiohttp.ClientSession, ctx: SimpleNamespace,
                             params: aiohttp.TraceRequestEndParams) -> None:
        call = CURRENT_CALL.get()
        if call is None:
            return
        call.status = params.response.status
        call.headers = {k.lower(): v for k, v in params.response.headers.items()}
        on_response(call)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    return trace


class BinanceClient(AsyncClient):  # type: ignore[misc]  # python-binance ships no types
    """``AsyncClient`` pointed at ``base_url`` with explicit timeout and recvWindow."""

    def __init__(self, api_key: str, api_secret: str, *, base_url: str, recv_window_ms: int,
                 timeout_s: float, trace: aiohttp.TraceConfig) -> None:
        super().__init__(
            api_key, api_secret,
            requests_params={"timeout": timeout_s},
            session_params={"trace_configs": [trace]},
        )
        # Instance attributes win over the class's hard-coded production URLs.
        self.FUTURES_URL = f"{base_url.rstrip('/')}/fapi"
        self.REQUEST_RECVWINDOW = recv_window_ms

    async def reset_session(self) -> None:
        this = cast(Any, self)
        old = this.session
        this.session = this._init_session()
        await old.close()
