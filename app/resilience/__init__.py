"""Generic resilience parts: weight limiter, circuit breaker, retry policy (SPEC §7).

Nothing here knows Binance: endpoint groups, bucket names and error codes come from the
exchange layer. Modules import only ``app.clock`` and ``app.errors``.
"""
