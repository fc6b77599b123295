"""Every code and HTTP case of SPEC §6.3 maps to its class and retry decision."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

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
from app.exchange.classify import classify_answer, classify_exception
from app.resilience.retry import should_retry

UNKNOWN_503 = "Unknown error, please check your request or try again later."

TABLE: list[tuple[int, int | None, str, type[ExchangeError], bool]] = [
    # status, code, message, class, retried by the retry policy
    (429, -1003, "Too many requests; current limit is 2400 requests per minute.", RateLimited,
     True),
    (429, -1015, "Too many new orders; current limit is 300 orders per 10 seconds.",
     RateLimited, True),
    (403, None, "WAF limit violated", RateLimited, True),
    (418, -1003, "Way too many requests; IP banned until 1615183669840.", IpBanned, False),
    (408, None, "timeout", UnknownOutcome, True),
    (503, -1006, "An unexpected response was received from the message bus.", UnknownOutcome,
     True),
    (408, -1007, "Timeout waiting for response from backend server.", UnknownOutcome, True),
    (503, -1000, UNKNOWN_503, UnknownOutcome, True),
    (502, 0, "<html>502 Bad Gateway</html>", UnknownOutcome, True),
    (503, -1001, "Internal error; unable to process your request. Please try again.",
     TransientError, True),
    (503, -1008, "Request throttled by system-level protection.", TransientError, True),
    (503, -1000, "Service Unavailable.", TransientError, True),
    (500, -1000, "Request occur unknown error.", TransientError, True),
    (400, -1021, "Timestamp for this request is outside of the recvWindow.", ClockSkew, True),
    (401, -2014, "API-key format invalid.", AuthError, False),
    (401, -2015, "Invalid API-key, IP, or permissions for action.", AuthError, False),
    (400, -1022, "Signature for this request is not valid.", AuthError, False),
    (401, -1002, "You are not authorized to execute this request.", AuthError, False),
    *[(400, code, "rejected", OrderRejected, False) for code in (
        -2010, -2019, -2021, -2022, -4164, -4116, -4120, -1111, -4014, -4023, -4061)],
    (400, -2013, "Order does not exist.", OrderNotFound, False),
    (400, -2011, "Unknown order sent.", OrderNotFound, False),
    *[(400, code, "invalid", InvalidRequest, False) for code in (
        -1102, -1106, -1116, -1117, -1121, -4028)],
    (400, -9999, "something new", InvalidRequest, False),
]


@pytest.mark.parametrize(("status", "code", "message", "cls", "retried"), TABLE,
                         ids=[f"{t[0]}{t[1]}" for t in TABLE])
def test_answer_table(status: int, code: int | None, message: str,
                      cls: type[ExchangeError], retried: bool) -> None:
    """The class, its fields, and whether the retry policy may retry it."""
    error = classify_answer(status, code, message, endpoint="POST /fapi/v1/order")
    assert type(error) is cls
    assert (error.http_status, error.code, error.message, error.endpoint) == (
        status, code, message, "POST /fapi/v1/order")
    assert should_retry(error) is retried


def test_retry_after_is_carried() -> None:
    """A 429's Retry-After becomes the error's retry_after."""
    error = classify_answer(429, -1003, "Too many requests", retry_after=7.0)
    assert error.retry_after == 7.0


def test_ban_end_is_parsed_from_the_message() -> None:
    """Without Retry-After, a 418's wait comes from 'banned until <ms>'."""
    error = classify_answer(418, -1003, "Way too many requests; IP(1.2.3.4) banned until "
                            "1615183669840. Please use the websocket", now=1615183609.840)
    assert error.retry_after == pytest.approx(60.0)


def test_every_class_carries_severity_and_action() -> None:
    """Each class gives the operator a severity and a suggested action."""
    for _, code, message, _cls, _ in TABLE:
        fields = classify_answer(400, code, message).fields()
        assert fields["severity"] in {"info", "warning", "error", "critical"}
        assert fields["suggested_action"]
    assert AuthError("x").severity == "critical"


class _Key:
    def __init__(self) -> None:
        self.host, self.port, self.ssl = "127.0.0.1", 1, False


@pytest.mark.parametrize(("exc", "cls"), [
    (TimeoutError(), UnknownOutcome),
    (aiohttp.ServerDisconnectedError(), UnknownOutcome),
    (aiohttp.ClientOSError(104, "Connection reset by peer"), UnknownOutcome),
    (aiohttp.ClientPayloadError("truncated"), UnknownOutcome),
    (aiohttp.ClientConnectorError(_Key(), OSError(111, "Connection refused")),  # type: ignore[arg-type]
     TransientError),
    (aiohttp.ConnectionTimeoutError("Connection timeout to host"), TransientError),
    (aiohttp.SocketTimeoutError("Timeout on reading data from socket"), UnknownOutcome),
])
def test_transport_exceptions(exc: BaseException, cls: type[ExchangeError]) -> None:
    """Timeouts and resets are unknown outcomes; refused connections and connect timeouts
    (the request was never written) certainly not sent."""
    error = classify_exception(exc, endpoint="GET /fapi/v1/time")
    assert type(error) is cls


def test_cancellation_and_bugs_are_not_classified() -> None:
    """CancelledError and programming errors pass through untouched (None)."""
    assert classify_exception(asyncio.CancelledError()) is None
    assert classify_exception(KeyError("x")) is None
