"""Request signing and timing checks, as Binance applies them to SIGNED endpoints.

``signature = hex(HMAC_SHA256(secret, totalParams))`` where ``totalParams`` is the raw query
string concatenated directly with the raw form body, minus the ``signature`` parameter itself
(which must come last). The check runs over the bytes as sent, not over decoded values.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

from app.sim import errors
from app.sim.config import Credentials

MAX_RECV_WINDOW_MS = 60_000
DEFAULT_RECV_WINDOW_MS = 5_000
_SIGNATURE_RE = re.compile(r"(?:^|&)signature=([^&]*)$")
_INT_RE = re.compile(r"[0-9]{1,19}")


def sign(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def split_signature(query: str, body: str) -> tuple[str, str | None]:
    """``(totalParams without the signature, signature or None)``."""
    for part, is_query in ((body, False), (query, True)):
        match = _SIGNATURE_RE.search(part)
        if match:
            stripped = part[: match.start()]
            return (stripped + body if is_query else query + stripped), match.group(1)
    return query + body, None


def check_api_key(headers: Mapping[str, str], credentials: Credentials) -> None:
    key = headers.get("X-MBX-APIKEY")
    if not key or len(key) > 256 or any(c.isspace() for c in key):
        raise errors.api_key_format_invalid()
    if not hmac.compare_digest(key.encode(), credentials.api_key.encode()):
        raise errors.api_key_rejected()


def check_signed(
    headers: Mapping[str, str],
    params: Mapping[str, str],
    raw_query: str,
    raw_body: str,
    credentials: Credentials,
    server_ms: int,
) -> None:
    """Raise the ApiError Binance would answer for a bad key, signature or timestamp."""
    check_api_key(headers, credentials)
    timestamp = params.get("timestamp")
    if not timestamp or not _INT_RE.fullmatch(timestamp):
        raise errors.mandatory("timestamp")
    payload, signature = split_signature(raw_query, raw_body)
    if not signature:
        raise errors.mandatory("signature")
    expected = sign(credentials.api_secret, payload)
    if not hmac.compare_digest(expected, signature.lower()):
        raise errors.invalid_signature()
    raw_window = params.get("recvWindow")
    if raw_window:
        if not _INT_RE.fullmatch(raw_window):
            raise errors.mandatory("recvWindow")
        recv_window = int(raw_window)
        if recv_window > MAX_RECV_WINDOW_MS:
            raise errors.recv_window_too_large()
    else:
        recv_window = DEFAULT_RECV_WINDOW_MS
    ts = int(timestamp)
    if ts >= server_ms + 1000:
        raise errors.timestamp_ahead()
    if server_ms - ts > recv_window:
        raise errors.timestamp_outside_window()
