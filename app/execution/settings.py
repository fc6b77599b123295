"""The executor's settings: the ``[execution]`` config section (mapped by ``app/factory.py``)
plus knobs that are not config."""

from __future__ import annotations

from dataclasses import dataclass

from app.domain import OnUnprotected

__all__ = ["ExecutorSettings", "OnUnprotected"]


@dataclass(frozen=True, slots=True)
class ExecutorSettings:
    client_id_prefix: str = "xd"
    #: How long an unknown outcome is looked up by client id before the order is resent.
    resolve_window_s: float = 10.0
    on_unprotected: OnUnprotected = OnUnprotected.FLATTEN
    #: Sends of one intent (the first plus resends after an unknown outcome not found).
    max_send_attempts: int = 3
    #: Pause before trying again after the exchange certainly refused to take the order for
    #: now (breaker open, throttled): the signal's TTL bounds how long an entry keeps trying.
    busy_retry_s: float = 0.5
    #: Test seam: False resends blindly on an unknown outcome, as the seeds did. Never in
    #: production: it exists to prove the exactly-once test can fail.
    unknown_outcome_protocol: bool = True
