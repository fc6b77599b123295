"""Restart recovery (SPEC §5.6): settle what was in flight, then resume every open signal.

Runs once at start, before intake opens. Lookups go through the exactly-once sender's
``resolve`` (the same window and backoff as a live unknown outcome), at ``LOW`` priority so
recovery never crowds out new work the limiter might admit.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from app.domain import Intent, IntentState
from app.exchange.models import AlgoState, OrderState
from app.execution.sender import OrderSender, algo_outcome, order_outcome
from app.journal import Journal, SignalRecord
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger
from app.resilience.limiter import Priority


class Resumable(Protocol):
    async def execute(self, record: SignalRecord, *, settle: bool = True) -> SignalRecord: ...


class Lookups(Protocol):
    async def get_order(self, symbol: str, client_id: str, *,
                        priority: Priority | None = None) -> OrderState | None: ...

    async def get_algo_order(self, client_algo_id: str, *,
                             priority: Priority | None = None) -> AlgoState | None: ...


async def recover(journal: Journal, exchange: Lookups, sender: OrderSender, executor: Resumable,
                  log: AuditLogger) -> dict[str, int]:
    """Restart recovery (SPEC §5.6), before intake opens.

    1. Every intent left ``SENDING`` is looked up by client id: found → adopted with the
       exchange's state; not found after the resolve window → back to ``PENDING``, so the
       signal sends it (once, with the same id) when it resumes.
    2. Every non-terminal signal resumes through the executor, in acceptance order: an entry
       that filled without protection gets its protective orders; an expired signal that sent
       nothing becomes ``EXPIRED``. One whose order's outcome is still unknown (the exchange
       does not answer) stays ``RUNNING`` (``outcome unknown``): start-up goes on, and the
       daemon hands it to the bus, which settles it while running (SPEC §5.9).
    A mismatch never blocks start-up: it is reported. Returns counts for the audit event.
    """
    sending = await journal.intents_in_states([IntentState.SENDING])
    pending = await journal.non_terminal_signals()
    log.info(AuditEvent.RECONCILE_STARTED, sending=len(sending), non_terminal=len(pending))
    counts = {"adopted": 0, "not_found": 0, "lookup_failed": 0}

    async def settle(intent: Intent) -> None:
        ilog = log.bind(signal_id=intent.signal_id, symbol=intent.symbol,
                        client_order_id=intent.client_id, leg=intent.leg.value)
        try:
            if intent.is_algo:
                found_algo = await sender.resolve(lambda: exchange.get_algo_order(
                    intent.client_id, priority=Priority.LOW))
                described = algo_outcome(found_algo) if found_algo is not None else None
            else:
                found_order = await sender.resolve(lambda: exchange.get_order(
                    intent.symbol, intent.client_id, priority=Priority.LOW))
                described = order_outcome(found_order) if found_order is not None else None
        except Exception as error:  # a lookup must never stop start-up: report it
            counts["lookup_failed"] += 1
            ilog.error(AuditEvent.ORDER_RECONCILED, outcome="lookup_failed", error=repr(error))
            return
        if described is None:
            counts["not_found"] += 1
            await journal.put_intent(intent.with_state(IntentState.PENDING))
            ilog.warning(AuditEvent.ORDER_RECONCILED, outcome="not_found", action="resend")
            return
        state, exchange_id = described
        counts["adopted"] += 1
        await journal.put_intent(intent.with_state(state, exchange_id=exchange_id))
        ilog.info(AuditEvent.ORDER_RECONCILED, outcome="adopted", state=state.value,
                  exchange_id=exchange_id)

    await asyncio.gather(*(settle(intent) for intent in sending))
    finals: dict[str, int] = {}
    for record in pending:
        try:
            final = await executor.execute(record, settle=False)
        except Exception as error:  # report and go on: one bad signal must not block start-up
            log.error(AuditEvent.RECONCILE_FINISHED, signal_id=record.signal.id,
                      error=repr(error), partial=True)
            finals["error"] = finals.get("error", 0) + 1
            continue
        finals[final.state.value] = finals.get(final.state.value, 0) + 1
    summary = counts | {f"signals_{k.lower()}": v for k, v in finals.items()}
    log.info(AuditEvent.RECONCILE_FINISHED, **summary)
    return summary
