"""The exception taxonomy every exchange failure is mapped to (SPEC §6.3).

::

    ExecdError
    └── ExchangeError            code, http_status, message, retry_after, endpoint,
        │                        severity, suggested_action, retryable
        ├── RateLimited          HTTP 429, -1003, -1015, 403 (WAF)   retry after retry_after
        ├── IpBanned             HTTP 418                            no call until the ban ends
        ├── UnknownOutcome       timeout after send, reset, -1006, -1007, HTTP 408,
        │                        503 "Unknown error", unrecognised 5xx
        │                                                            reads: retry; orders: §5.3
        ├── TransientError       -1001, -1008, 503 "Service Unavailable.", known
        │                        not-applied 5xx, connection refused  retry with backoff
        ├── ClockSkew            -1021                               resync, retry once
        ├── AuthError            -2014, -2015, -1022, -1002          never; critical
        ├── OrderRejected        -2010, -2019, -2021, -2022, -4164, -4116, -4120, -1111,
        │   │                    -4014, -4023, -4061, …              never
        │   └── OrderNotFound    -2013, -2011                        never (a lookup's answer)
        ├── InvalidRequest       -1102, -1106, -1116, -1117, -1121, -4028, other 4xx  never
        └── CircuitOpen          our breaker refused the call        after retry_after

``retryable`` says whether the retry policy may try the same call again; order placement never
relies on it for ``UnknownOutcome`` (it looks the order up first, SPEC §5.3). This module imports
nothing from ``app``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class ExecdError(Exception):
    """Base of every error execd raises on purpose."""


class ExchangeError(ExecdError):
    """A failure of one exchange call, classified. Attributes are safe to log (no secrets)."""

    retryable: ClassVar[bool] = False
    severity: ClassVar[Severity] = Severity.ERROR
    suggested_action: ClassVar[str] = "inspect the audit log for the request and its answer"

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
        endpoint: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status
        self.retry_after = retry_after
        self.endpoint = endpoint

    @property
    def error_class(self) -> str:
        return type(self).__name__

    def fields(self) -> dict[str, object]:
        """The audit-event fields of this error (SPEC §6.3)."""
        return {
            "error_class": self.error_class,
            "code": self.code,
            "http_status": self.http_status,
            "message": self.message,
            "retry_after": self.retry_after,
            "endpoint": self.endpoint,
            "severity": str(self.severity),
            "suggested_action": self.suggested_action,
        }

    def __repr__(self) -> str:
        return (f"{self.error_class}(code={self.code}, http_status={self.http_status}, "
                f"endpoint={self.endpoint!r}, message={self.message!r})")


class RateLimited(ExchangeError):
    retryable = True
    severity = Severity.WARNING
    suggested_action = "the limiter pauses until the window ends; lower request volume if it recurs"


class IpBanned(ExchangeError):
    retryable = False
    severity = Severity.CRITICAL
    suggested_action = ("no calls until the ban ends; find what ignored the 429s (another "
                        "process on this IP?)")


class UnknownOutcome(ExchangeError):
    retryable = True
    severity = Severity.WARNING
    suggested_action = "orders are looked up by client id before any resend; nothing to do"


class TransientError(ExchangeError):
    retryable = True
    severity = Severity.WARNING
    suggested_action = "retried with backoff; check the exchange status page if it persists"


class ClockSkew(ExchangeError):
    retryable = True
    severity = Severity.WARNING
    suggested_action = "time is resynced automatically; check the host's NTP if it recurs"


class AuthError(ExchangeError):
    retryable = False
    severity = Severity.CRITICAL
    suggested_action = "check the API key, its permissions (futures trading) and IP whitelist"


class OrderRejected(ExchangeError):
    retryable = False
    severity = Severity.ERROR
    suggested_action = "the exchange refused the order as sent; see code and message"


class OrderNotFound(OrderRejected):
    severity = Severity.INFO
    suggested_action = "the order is not (or not yet) known to the exchange"


class InvalidRequest(ExchangeError):
    retryable = False
    severity = Severity.ERROR
    suggested_action = "a request execd built was malformed: report it with the audit event"


class CircuitOpen(ExchangeError):
    retryable = False
    severity = Severity.WARNING
    suggested_action = "calls to this endpoint group are paused after repeated failures"
