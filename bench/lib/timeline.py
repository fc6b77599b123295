"""Where a signal's end-to-end time goes (``bench/latency.py --timeline``, issue 16).

`Timeline.install(daemon)` wraps, on the daemon's own instances (app/ is unchanged), the calls a
new signal passes on its way from the POST to its first order, and stamps the first pass of
each signal with the wall clock (``time.time()``, the clock the sender's send times and the
simulator's ledger use):

========== ================================================================================
accept     `Service.accept` called: the POST has been read (the HTTP hop into the daemon)
committed  the accept's commit is back on the loop (validation, the writer thread's round trip)
intent     the first intent's write handed to the journal (the lane, the decision)
written    that write is back (the writer thread's round trip; RUNNING in the same statement)
sending    `place_order` called on the gateway (the accept's fsync if not done, audit)
exchange   the simulator accepted the order (its ledger: limiter, signing, the HTTP hop)
========== ================================================================================

`table` prints, per stage, the p50 and p90 of the time from the previous stage over the
signals stamped at every stage, and the p50 of their sum.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from typing import Any

from app.daemon import Daemon

from .latreport import percentile

__all__ = ["STAGES", "Timeline"]

STAGES = ("sent", "accept", "committed", "intent", "written", "sending", "exchange")


class Timeline:
    def __init__(self) -> None:
        #: Signal id → stage → epoch seconds (the first pass only).
        self.stamps: dict[str, dict[str, float]] = {}
        self._orders: dict[str, float] = {}          # client order id → `sending`

    def install(self, daemon: Daemon) -> None:
        service, journal = daemon.service, daemon.journal
        assert service is not None
        assert journal is not None
        assert daemon.exchange is not None
        gateway = daemon.exchange.gateway
        stamps, orders, now = self.stamps, self._orders, time.time

        def stamp(signal_id: str, stage: str, at: float) -> None:
            stamps.setdefault(signal_id, {}).setdefault(stage, at)

        accept = service.accept

        async def accepting(data: object, **kwargs: Any) -> Any:
            start = now()
            accepted = await accept(data, **kwargs)
            stamp(accepted.record.signal.id, "accept", start)
            return accepted

        journal_accept = journal.accept

        async def journaling(signal: Any, **kwargs: Any) -> Any:
            on_commit: Callable[[Any], None] | None = kwargs.get("on_commit")

            def committed(record: Any) -> None:
                stamp(record.signal.id, "committed", now())
                if on_commit is not None:
                    on_commit(record)

            kwargs["on_commit"] = committed
            return await journal_accept(signal, **kwargs)

        put_intent = journal.put_intent

        async def putting(intent: Any, **kwargs: Any) -> None:
            first = kwargs.get("start") is not None
            if first:
                stamp(intent.signal_id, "intent", now())
            await put_intent(intent, **kwargs)
            if first:
                stamp(intent.signal_id, "written", now())

        place_order = gateway.place_order

        async def placing(*args: Any, **kwargs: Any) -> Any:
            client_id = args[3] if len(args) > 3 else kwargs["client_id"]
            orders.setdefault(str(client_id), now())
            return await place_order(*args, **kwargs)

        setattr(service, "accept", accepting)       # noqa: B010  (instances, not classes)
        setattr(journal, "accept", journaling)      # noqa: B010
        setattr(journal, "put_intent", putting)     # noqa: B010
        setattr(gateway, "place_order", placing)    # noqa: B010

    def table(self, sent: Mapping[str, float], exchange: Mapping[str, float],
              signal_of: Callable[[str], str | None]) -> str:
        """`sent`: signal id → send time; `exchange`: signal id → the simulator's time of its
        first order; `signal_of`: client order id → signal id."""
        for client_id, at in self._orders.items():
            if (signal_id := signal_of(client_id)) is not None:
                self.stamps.setdefault(signal_id, {}).setdefault("sending", at)
        rows = []
        for signal_id, stages in self.stamps.items():
            if signal_id in sent and signal_id in exchange:
                full = {**stages, "sent": sent[signal_id], "exchange": exchange[signal_id]}
                if all(stage in full for stage in STAGES):
                    rows.append(full)
        lines = [f"end-to-end by stage ({len(rows)} signals stamped at every stage of "
                 f"{len(sent)}; ms from the stage before)",
                 f"{'stage':<11}{'p50':>8}{'p90':>8}"]
        for before, stage in itertools.pairwise(STAGES):
            gaps = [row[stage] - row[before] for row in rows]
            if gaps:
                lines.append(f"{stage:<11}{percentile(gaps, .5) * 1e3:>8.3f}"
                             f"{percentile(gaps, .9) * 1e3:>8.3f}")
        totals = [row["exchange"] - row["sent"] for row in rows]
        if totals:
            lines.append(f"{'(sum)':<11}{percentile(totals, .5) * 1e3:>8.3f}"
                         f"{percentile(totals, .9) * 1e3:>8.3f}")
        return "\n".join(lines)
