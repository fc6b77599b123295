"""From exchangeInfo ``rateLimits`` to limiter buckets, and from headers back to buckets.

Bucket names: ``weight:<n><unit>`` for REQUEST_WEIGHT, ``orders:<n><unit>`` for ORDERS, where
``<n><unit>`` is Binance's header suffix (``1m``, ``10s``): the header
``x-mbx-used-weight-1m`` feeds bucket ``weight:1m``. Nothing is hard-coded: the limits are read
from the exchange at start (SPEC §6.2).
"""

from __future__ import annotations

from collections.abc import Iterable

from app.exchange.endpoints import Endpoint
from app.exchange.symbols import RateLimit
from app.resilience.limiter import BucketSpec

_LETTERS = {"SECOND": "s", "MINUTE": "m", "HOUR": "h", "DAY": "d"}
_KINDS = {"REQUEST_WEIGHT": "weight", "ORDERS": "orders"}
HEADER_PREFIXES = {"x-mbx-used-weight-": "weight", "x-mbx-order-count-": "orders"}


def buckets_from_rate_limits(rate_limits: Iterable[RateLimit]) -> list[BucketSpec]:
    """One bucket per REQUEST_WEIGHT / ORDERS entry; the weight buckets are paced."""
    buckets: list[BucketSpec] = []
    for entry in rate_limits:
        kind = _KINDS.get(entry.rate_limit_type)
        if kind is None:
            continue  # RAW_REQUESTS and future kinds: not ours to enforce
        label = f"{entry.interval_num}{_LETTERS[entry.interval]}"
        buckets.append(BucketSpec(f"{kind}:{label}", entry.limit, float(entry.window_s),
                                  paced=kind == "weight"))
    if not any(b.name.startswith("weight:") for b in buckets):
        raise ValueError("exchangeInfo rateLimits has no REQUEST_WEIGHT entry")
    return buckets


def successors(old: Iterable[BucketSpec], new: Iterable[BucketSpec]) -> dict[str, str]:
    """Which new bucket continues which old one whose window changed (``weight:1m`` →
    ``weight:2m``): the old buckets that are gone and the new ones that were not there are
    paired within a kind (weight, orders) in order of window length; the unpaired ones have
    no successor / predecessor. Feeds ``WeightLimiter.reconfigure``."""
    old, new = list(old), list(new)
    old_names, new_names = {b.name for b in old}, {b.name for b in new}
    pairs: dict[str, str] = {}
    for kind in _KINDS.values():
        gone = sorted((b for b in old if b.name.startswith(f"{kind}:")
                       and b.name not in new_names), key=lambda b: b.interval_s)
        came = sorted((b for b in new if b.name.startswith(f"{kind}:")
                       and b.name not in old_names), key=lambda b: b.interval_s)
        pairs.update((a.name, b.name) for a, b in zip(gone, came, strict=False))
    return pairs


def costs_for(endpoint: Endpoint, buckets: Iterable[BucketSpec], *, has_symbol: bool = True
              ) -> dict[str, int]:
    """The cost of one call of ``endpoint`` in every bucket it touches."""
    costs: dict[str, int] = {}
    for bucket in buckets:
        if bucket.name.startswith("weight:"):
            costs[bucket.name] = endpoint.weight_for(has_symbol)
        elif endpoint.orders:
            costs[bucket.name] = endpoint.orders
    return costs


def header_names(buckets: Iterable[BucketSpec]) -> dict[str, str]:
    """Response header name (lowercase) → the bucket whose count it carries."""
    prefixes = {kind: prefix for prefix, kind in HEADER_PREFIXES.items()}
    out: dict[str, str] = {}
    for bucket in buckets:
        kind, _, label = bucket.name.partition(":")
        out[f"{prefixes[kind]}{label}"] = bucket.name
    return out
