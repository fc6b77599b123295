"""One pure mapping from what the HTTP layer raised to the taxonomy of ``app.errors``.

``classify_answer`` takes an HTTP answer (status, Binance code, message, Retry-After);
``classify_exception`` takes what python-binance or aiohttp raised. Both are pure: no I/O, no
clock (the caller passes the exchange time for bans). The table test in
``tests/exchange/test_classify.py`` covers every code SPEC §6.3 names.
"""

from __future__ import annotations

import re

import aiohttp
from binance.exceptions import BinanceAPIException, BinanceRequestException

from app.errors import (
    AuthError,
    ClockSkew,
    ExchangeError,
    InvalidRequest,
    IpBanned,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    TransientError,
    UnknownOutcome,
)

AUTH_CODES = frozenset({-2014, -2015, -1022, -1002})
NOT_FOUND_CODES = frozenset({-2013, -2011})
ORDER_REJECTED_CODES = frozenset({
    -2010, -2019, -2021, -2022, -4164, -4116, -4120, -1111, -4014, -4023, -4061,
    -2025, -2027, -4003, -4004, -4005, -4013, -4002, -4016, -4024, -4118, -4131, -5021, -5022,
    -2018, -2020,
})
INVALID_CODES = frozenset({
    -1100, -1101, -1102, -1103, -1104, -1105, -1106, -1115, -1116, -1117, -1121, -1130, -1131,
    -4015, -4028, -4044, -4046, -4047, -4048,
})
UNKNOWN_CODES = frozenset({-1006, -1007})
TRANSIENT_CODES = frozenset({-1001, -1008})
RATE_CODES = frozenset({-1003, -1015})
# 5xx answers Binance documents as certainly not executed (research §6).
NOT_APPLIED_TEXTS = ("Service Unavailable", "Request occur unknown error",
                     "Internal error; unable to process your request")
UNKNOWN_TEXTS = ("Unknown error",)
_BANNED_UNTIL = re.compile(r"banned until (\d{10,16})")

#: Rejections that may mean our exchangeInfo is stale: reload it (rate-limited).
PRECISION_CODES = frozenset({-1111, -4014, -4023})


def is_breaker_failure(exc: BaseException) -> bool:
    """Failures that say the exchange is unwell; rejections and rate limits are not."""
    return isinstance(exc, TransientError | UnknownOutcome)


def placement_may_retry(exc: BaseException) -> bool:
    """An order request may be sent again only if it certainly did not execute (§5.3.4)."""
    return isinstance(exc, TransientError | RateLimited | ClockSkew)


def classify_answer(status: int, code: int | None, message: str, *, endpoint: str = "",
                    retry_after: float | None = None, now: float | None = None
                    ) -> ExchangeError:
    """Map an HTTP error answer to its class. ``now`` is exchange time (s) for 418 bans."""

    def err(cls: type[ExchangeError], wait: float | None = None) -> ExchangeError:
        return cls(message, code=code, http_status=status, endpoint=endpoint, retry_after=wait)

    if status == 418:
        match = _BANNED_UNTIL.search(message)
        wait = retry_after
        if wait is None and match and now is not None:
            wait = max(0.0, int(match.group(1)) / 1000 - now)
        return err(IpBanned, wait)
    if status in (429, 403) or code in RATE_CODES:
        return err(RateLimited, retry_after)
    if code == -1021:
        return err(ClockSkew)
    if code in AUTH_CODES or status == 401:
        return err(AuthError)
    if code in UNKNOWN_CODES or status == 408:
        return err(UnknownOutcome)
    if code in TRANSIENT_CODES:
        return err(TransientError, retry_after)
    if status >= 500:
        if message.startswith(NOT_APPLIED_TEXTS):
            return err(TransientError, retry_after)
        # "Unknown error…" and every 5xx we cannot place: the outcome is unknown (research §6).
        return err(UnknownOutcome)
    if code in NOT_FOUND_CODES:
        return err(OrderNotFound)
    if code in ORDER_REJECTED_CODES:
        return err(OrderRejected)
    return err(InvalidRequest)


def retry_after_of(headers: object) -> float | None:
    """Seconds from a ``Retry-After`` header, if present and numeric."""
    get = getattr(headers, "get", None)
    raw = get("Retry-After") if get is not None else None
    try:
        return float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def classify_exception(exc: BaseException, *, endpoint: str = "", now: float | None = None
                       ) -> ExchangeError | None:
    """The class of an exception raised by a call, or None if it is not an exchange failure
    (a programming error, or a cancellation, which must propagate as it is)."""
    if isinstance(exc, ExchangeError):
        return exc
    if isinstance(exc, BinanceAPIException):
        headers = getattr(exc.response, "headers", None)
        message = str(exc.message or "")
        return classify_answer(int(exc.status_code), int(exc.code) if exc.code else None,
                               message, endpoint=endpoint, retry_after=retry_after_of(headers),
                               now=now)
    if isinstance(exc, BinanceRequestException):
        return UnknownOutcome(f"unreadable answer: {exc.message}", endpoint=endpoint)
    if isinstance(exc, aiohttp.ContentTypeError):
        return UnknownOutcome(f"non-JSON answer (HTTP {exc.status})", http_status=exc.status,
                              endpoint=endpoint)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransientError(f"connection failed before sending: {exc.os_error}",
                              endpoint=endpoint)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        # Raised only while getting a connection (``exchange.connect_timeout_s``, or the total
        # timeout running out first): the request was never written.
        return TransientError("no connection within the timeout (nothing sent)",
                              endpoint=endpoint)
    if isinstance(exc, TimeoutError):
        return UnknownOutcome("timed out waiting for the answer", endpoint=endpoint)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UnknownOutcome("server closed the connection before answering", endpoint=endpoint)
    if isinstance(exc, aiohttp.ClientError):
        return UnknownOutcome(f"transport error: {type(exc).__name__}: {exc}", endpoint=endpoint)
    return None
