"""Deterministic client order ids (SPEC §5.1) and the one factory of new intents.

``{prefix}{digest}{leg}``: ``digest`` is the first 24 characters of the base32 SHA-256 of the
signal id (``A-Z2-7``), ``leg`` one letter. At most 8 + 24 + 1 = 33 characters of
``[A-Za-z0-9_-]`` — within Binance's 36 and free of ``.:/``, which python-binance would sign
decoded and send encoded. The same (signal, leg) always gives the same id, on every attempt and
across restarts; that is what lets an unknown outcome be looked up instead of resent.

``new_intent`` builds every intent the executor and the protector send, so each gets its id
the same way: reduce-only unless it is the entry.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from decimal import Decimal

from app.domain import Intent, IntentState, Leg, OrderType, Side

DIGEST_LENGTH = 24
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{0,8}$")


def client_id(prefix: str, signal_id: str, leg: Leg, attempt: int = 0) -> str:
    """The client order id of ``leg`` of signal ``signal_id``. ``attempt`` > 0 names a further
    order of that leg (a stop placed again by the guard, a second flattening close): a new id,
    as deterministic as the first, never the id of an order that already exists."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"client id prefix {prefix!r}: at most 8 of [A-Za-z0-9_-]")
    key = signal_id if attempt == 0 else f"{signal_id}\x00{attempt}"   # NUL: never in an id
    return f"{prefix}{_digest(key)}{leg.value}"


@functools.lru_cache(maxsize=1024)
def _digest(key: str) -> str:
    """The id's digest of ``key``: every leg of a signal, and every look at one, shares it
    (`base64.b32encode` is pure Python)."""
    return base64.b32encode(hashlib.sha256(key.encode()).digest()).decode()[:DIGEST_LENGTH]


def new_intent(prefix: str, signal_id: str, symbol: str, leg: Leg, side: Side,
               order_type: OrderType, *, quantity: Decimal | None = None,
               price: Decimal | None = None, now: float, attempt: int = 0) -> Intent:
    """A ``PENDING`` intent for ``leg`` of a signal, with its deterministic client id.
    ``quantity`` for regular orders, ``price`` (the trigger) for conditional ones; ``now`` is
    epoch seconds; ``attempt`` as for `client_id`."""
    return Intent(signal_id=signal_id, leg=leg,
                  client_id=client_id(prefix, signal_id, leg, attempt),
                  symbol=symbol, side=side, order_type=order_type, quantity=quantity,
                  price=price, reduce_only=leg is not Leg.ENTRY, state=IntentState.PENDING,
                  updated_at=now)
