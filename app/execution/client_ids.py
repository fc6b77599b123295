"""Deterministic client order ids (SPEC §5.1).

``{prefix}{digest}{leg}``: ``digest`` is the first 24 characters of the base32 SHA-256 of the
signal id (``A-Z2-7``), ``leg`` one letter. At most 8 + 24 + 1 = 33 characters of
``[A-Za-z0-9_-]`` — within Binance's 36 and free of ``.:/``, which python-binance would sign
decoded and send encoded. The same (signal, leg) always gives the same id, on every attempt and
across restarts; that is what lets an unknown outcome be looked up instead of resent.
"""

from __future__ import annotations

import base64
import hashlib
import re

from app.domain import Leg

DIGEST_LENGTH = 24
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{0,8}$")


def client_id(prefix: str, signal_id: str, leg: Leg) -> str:
    """The client order id of ``leg`` of signal ``signal_id``."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"client id prefix {prefix!r}: at most 8 of [A-Za-z0-9_-]")
    digest = base64.b32encode(hashlib.sha256(signal_id.encode()).digest()).decode()
    return f"{prefix}{digest[:DIGEST_LENGTH]}{leg.value}"
