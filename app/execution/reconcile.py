"""Restart recovery (SPEC §5.6): settle what was in flight, then resume every open signal.

Runs once at start, before intake opens. Lookups go through the exactly-once sender's
``resolve`` (the same window and backoff as a live unknown outcome), at ``LOW`` priority so
recovery never crowds out new work the limiter might admit.

Intent writes are not fsynced (``journal.synchronous = NORMAL``, SPEC §5.6): a power cut may
lose the last of them, so a signal may come back ``RUNNING`` or even ``ACCEPTED`` with an order
on the exchange that its journal does not show. `adopt_unjournaled` closes that gap: before a
resumed signal sends anything, every leg the journal does not show sent is looked up by its
deterministic client id (SPEC §5.1) and, if found, journaled as the exchange has it.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from app.domain import Intent, IntentState, Leg, OrderType, Signal
from app.exchange.models import AlgoState, OrderState
from app.execution.client_ids import client_id, new_intent
from app.execution.sender import OrderSender, algo_outcome, order_outcome
from app.journal import Journal, SignalRecord
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger
from app.resilience.limiter import Priority


class Resumable(Protocol):
    async def execute(self, record: SignalRecord, *, settle: bool = True,
                      resumed: bool = False) -> SignalRecord: ...


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
    2. Every non-terminal signal resumes through the executor, in acceptance order (first
       `adopt_unjournaled`: a leg whose journal row was lost is adopted, never sent again): an entry
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
            final = await executor.execute(record, settle=False, resumed=True)
        except Exception as error:  # report and go on: one bad signal must not block start-up
            log.error(AuditEvent.RECONCILE_FINISHED, signal_id=record.signal.id,
                      error=repr(error), partial=True)
            finals["error"] = finals.get("error", 0) + 1
            continue
        finals[final.state.value] = finals.get(final.state.value, 0) + 1
    summary = counts | {f"signals_{k.lower()}": v for k, v in finals.items()}
    log.info(AuditEvent.RECONCILE_FINISHED, **summary)
    return summary


async def adopt_unjournaled(signal: Signal, journal: Journal, exchange: Lookups,
                            sender: OrderSender, prefix: str, log: AuditLogger, *, now: float,
                            priority: Priority = Priority.LOW) -> int:
    """Before a resumed signal sends anything: look up by its deterministic client id every
    leg the journal does not show sent (no row, or ``PENDING``) and journal each one found
    with the exchange's state (``order_reconciled outcome=adopted cause=not_journaled``).
    Returns how many were adopted.

    The legs: an entry's ``E``, then its ``S`` and ``T`` (when the signal has them) unless
    the entry is known never to have reached the exchange (not found, or ``REJECTED``); a
    close's ``C``. One definite answer is enough (``window_s=0``): a row is lost only by a
    power cut or a kernel crash (a killed process loses nothing committed), and the machine's
    restart takes far longer than Binance needs to show a placed order. Raises
    ``UnknownOutcome`` when the exchange does not answer a lookup within ``resolve_window_s``:
    then nothing of the signal may be sent."""
    rows = {i.client_id: i for i in await journal.intents_for(signal.id)}
    adopted = 0

    def unsent(leg: Leg) -> tuple[str, bool]:
        cid = client_id(prefix, signal.id, leg)
        row = rows.get(cid)
        return cid, row is None or row.state is IntentState.PENDING

    async def adopt(intent: Intent, state: IntentState, exchange_id: str) -> None:
        nonlocal adopted
        adopted += 1
        await journal.put_intent(intent.with_state(state, exchange_id=exchange_id))
        log.warning(AuditEvent.ORDER_RECONCILED, outcome="adopted", cause="not_journaled",
                    client_order_id=intent.client_id, leg=intent.leg.value, state=state.value,
                    exchange_id=exchange_id)

    async def order(leg: Leg) -> bool:
        """Adopt ``leg``'s regular order if it is on the exchange; False if it is not."""
        cid, missing = unsent(leg)
        if not missing:
            return rows[cid].state is not IntentState.REJECTED
        found = await sender.resolve(lambda: exchange.get_order(signal.symbol, cid,
                                                                priority=priority),
                                     cid, window_s=0)
        if found is None:
            return False
        await adopt(new_intent(prefix, signal.id, signal.symbol, leg, signal.type.order_side,
                               OrderType.MARKET, quantity=found.orig_qty, now=now),
                    *order_outcome(found))
        return True

    async def protective(leg: Leg, order_type: OrderType) -> None:
        """Adopt ``leg``'s conditional algo order if it is on the exchange."""
        cid, missing = unsent(leg)
        if not missing:
            return
        found = await sender.resolve(lambda: exchange.get_algo_order(cid, priority=priority),
                                     cid, window_s=0)
        if found is not None:
            await adopt(new_intent(prefix, signal.id, signal.symbol, leg,
                                   signal.type.order_side.opposite, order_type,
                                   price=found.trigger_price, now=now), *algo_outcome(found))

    if not signal.type.is_entry:
        await order(Leg.CLOSE)
    elif await order(Leg.ENTRY):        # no entry: no protective order can have followed it
        if signal.stop_loss is not None:
            await protective(Leg.STOP_LOSS, OrderType.STOP_MARKET)
        if signal.take_profit is not None:
            await protective(Leg.TAKE_PROFIT, OrderType.TAKE_PROFIT_MARKET)
    return adopted
