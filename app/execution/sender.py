"""Exactly once: the unknown-outcome protocol (SPEC §5.3), and what an order's answer means.

Every order goes out through ``OrderSender.send``: the intent is journaled as ``SENDING``
before the request leaves, the definite answer is journaled after it, and an unknown outcome
(timeout, reset, 5xx, -1007) is never resent blindly: the order is looked up by its client id,
with a short backoff, for at least ``resolve_window_s`` (Binance may report a just-placed order
as unknown for a few seconds). Found → adopted. Definitely not found (the exchange answered
"unknown order") by a lookup made after the window → resent with the same id, at most
``max_send_attempts`` times in all. A lookup that fails (timeout, outage, breaker open) proves
nothing: the search goes on past the window, up to the send's deadline; then the outcome stays
unknown (``UnknownOutcome``, the intent left ``SENDING`` for restart recovery) — never a resend.
An intent handed to ``send`` already ``SENDING`` (a restart) is looked up before anything else.

``send_order`` and ``send_algo`` are ``send`` for a regular (MARKET) order and for a
conditional algo order of the exchange port; ``order_outcome`` and ``algo_outcome`` map the
exchange's answer to the intent's state. Restart recovery lives in ``reconcile.py``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from app.clock import Clock
from app.domain import Intent, IntentState
from app.errors import (
    CircuitOpen,
    ExchangeError,
    InvalidRequest,
    OrderRejected,
    RateLimited,
    TransientError,
    UnknownOutcome,
)
from app.exchange.models import AlgoState, OrderState
from app.execution.ports import ExchangePort
from app.execution.settings import ExecutorSettings
from app.journal import Journal, NotDurable, SignalRecord
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger
from app.resilience.limiter import Priority

S = TypeVar("S")

#: Answers that prove the exchange did not take the order (it may be sent again).
NOT_TAKEN = (TransientError, RateLimited, CircuitOpen)

#: When the running signal was dequeued (``clock.monotonic()``), until its first order leaves:
#: the executor sets it, the sender reports the decision latency once and clears it.
#: The ``ACCEPTED`` record of a signal whose first order is still to be journaled: that
#: intent write also moves the signal to RUNNING (`Journal.put_intent(start=record)`): one
#: journal trip, not two.
STARTING: contextvars.ContextVar[SignalRecord | None] = contextvars.ContextVar(
    "execd_starting", default=None)
DECISION_STARTED: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "execd_decision_started", default=None)


def order_outcome(state: OrderState) -> tuple[IntentState, str]:
    if state.is_filled:
        return IntentState.FILLED, str(state.order_id)
    if state.is_open:
        return IntentState.PLACED, str(state.order_id)
    mapping = {"CANCELED": IntentState.CANCELLED, "EXPIRED": IntentState.EXPIRED,
               "REJECTED": IntentState.REJECTED}
    return mapping.get(state.status, IntentState.EXPIRED), str(state.order_id)


def algo_outcome(state: AlgoState) -> tuple[IntentState, str]:
    mapping = {"NEW": IntentState.PLACED, "TRIGGERING": IntentState.PLACED,
               "TRIGGERED": IntentState.FILLED, "FINISHED": IntentState.FILLED,
               "CANCELED": IntentState.CANCELLED, "EXPIRED": IntentState.EXPIRED,
               "REJECTED": IntentState.REJECTED}
    return mapping.get(state.status, IntentState.PLACED), str(state.algo_id)


@dataclass(frozen=True, slots=True)
class Placement(Generic[S]):
    """How an intent ended up on the exchange: its state there and the journaled intent."""

    state: S
    intent: Intent
    adopted: bool


class OrderEvents(Protocol):
    """News of orders by client id (the live book): `wait` returns True as soon as an event
    about ``client_id`` arrives, False after ``within_s`` seconds."""

    async def wait(self, client_id: str, within_s: float) -> bool: ...

    def settled(self, client_id: str) -> OrderState | AlgoState | None: ...

    def expect_fill(self, client_id: str, symbol: str) -> None: ...

    def answered(self, client_id: str) -> None: ...

    def forget(self, client_id: str) -> None: ...


class OrderSender:
    """Sends intents exactly once. ``on_decision`` is called with the seconds from dequeue to
    a signal's first order on the wire (the decision latency metric), ``on_sent`` before each
    order goes out (the risk gate's order count). With ``events`` (the
    live book), a lookup of an unknown outcome runs again the moment the stream reports the
    order, instead of after its backoff pause."""

    def __init__(self, exchange: ExchangePort, journal: Journal, clock: Clock, log: AuditLogger,
                 settings: ExecutorSettings, *,
                 on_decision: Callable[[float], None] | None = None,
                 on_sent: Callable[[], None] | None = None,
                 events: OrderEvents | None = None) -> None:
        self._exchange = exchange
        self._journal = journal
        self._clock = clock
        self._log = log
        self._settings = settings
        self._on_decision = on_decision
        self._on_sent = on_sent
        self._events = events

    async def send_order(self, intent: Intent, *, priority: Priority,
                         deadline: float) -> Placement[OrderState]:
        """`send` a regular order: MARKET, reduce-only unless it is an entry."""
        quantity = intent.quantity
        assert quantity is not None, "a market order intent has a quantity"
        exchange = self._exchange
        async def lookup() -> OrderState | None:
            heard = self._events.settled(intent.client_id) if self._events else None
            if isinstance(heard, OrderState):
                return heard                  # the stream saw it end: no request needed
            return await exchange.get_order(intent.symbol, intent.client_id,
                                            priority=priority)

        events = self._events
        if events is not None:      # its fill moves the position: the book knows to wait
            events.expect_fill(intent.client_id, intent.symbol)
        try:
            placement = await self.send(
                intent,
                place=lambda: exchange.place_order(
                    intent.symbol, intent.side, quantity, intent.client_id,
                    reduce_only=intent.reduce_only, priority=priority, deadline=deadline),
                lookup=lookup, describe=order_outcome, deadline=deadline)
        except (OrderRejected, InvalidRequest, TimeoutError, *NOT_TAKEN):
            if events is not None:
                events.forget(intent.client_id)          # certainly not placed
            raise
        if events is not None:
            events.answered(intent.client_id)
        return placement

    async def send_algo(self, intent: Intent, *, priority: Priority,
                        deadline: float) -> Placement[AlgoState]:
        """`send` a conditional algo order that closes the whole position at its price."""
        trigger = intent.price
        assert trigger is not None, "a conditional order intent has a trigger price"
        exchange = self._exchange
        async def lookup() -> AlgoState | None:
            heard = self._events.settled(intent.client_id) if self._events else None
            if isinstance(heard, AlgoState):
                return heard                  # the stream saw it: no request needed
            return await exchange.get_algo_order(intent.client_id, priority=priority)

        return await self.send(
            intent, place=lambda: exchange.place_algo_order(
                intent.symbol, intent.side, intent.order_type, trigger, intent.client_id,
                priority=priority, deadline=deadline),
            lookup=lookup, describe=algo_outcome, deadline=deadline)

    async def send(self, intent: Intent, place: Callable[[], Awaitable[S]],
                   lookup: Callable[[], Awaitable[S | None]],
                   describe: Callable[[S], tuple[IntentState, str]],
                   *, deadline: float) -> Placement[S]:
        """Place ``intent`` exactly once. ``describe`` maps the exchange state to the intent's
        state and exchange id. ``deadline`` (``clock.time()``) bounds when a send may start:
        an entry must not go out after its signal expired, and a protective order that the
        exchange keeps refusing must not leave a position unprotected for ever.

        Raises ``OrderRejected``/``InvalidRequest`` (journaled REJECTED), ``UnknownOutcome``
        when the order stayed unknown through every attempt (journaled SENDING: restart
        recovery resolves it), or ``TimeoutError`` when ``deadline`` passed before a send.
        """
        log = self._log.bind(client_order_id=intent.client_id, leg=intent.leg.value)
        attempts = 0
        if intent.state is IntentState.SENDING and self._settings.unknown_outcome_protocol:
            # An earlier try sent it and never learnt the outcome: look before sending again.
            found = await self._resolve(lookup, deadline, intent.client_id)
            if found is not None:
                return await self._adopt(intent, found, describe, log)
            attempts = 1
        intent = intent.with_state(IntentState.SENDING, now=self._clock.time())
        starting = STARTING.get()
        if starting is not None and starting.signal.id == intent.signal_id:
            await self._journal.put_intent(intent, start=starting)
            STARTING.set(None)
        else:
            await self._journal.put_intent(intent)
        await self._durable(intent)
        while True:
            if self._clock.time() >= deadline:
                raise TimeoutError("deadline passed before the order could be sent")
            attempts += 1
            log.info(AuditEvent.ORDER_SUBMITTED, symbol=intent.symbol, side=intent.side.value,
                     order_type=intent.order_type.value, attempt=attempts,
                     quantity=str(intent.quantity) if intent.quantity is not None else None,
                     price=str(intent.price) if intent.price is not None else None)
            started = DECISION_STARTED.get()
            if started is not None:
                DECISION_STARTED.set(None)
                if self._on_decision is not None:
                    self._on_decision(self._clock.monotonic() - started)
            if self._on_sent is not None:
                self._on_sent()
            try:
                state = await place()
            except NOT_TAKEN as error:
                # Certainly not executed: wait as the error says, then try again.
                pause = error.retry_after or self._settings.busy_retry_s
                await self._clock.sleep(max(0.0, min(pause, deadline - self._clock.time())))
                attempts -= 1
                continue
            except (OrderRejected, InvalidRequest) as error:
                if error.code == -4116 and attempts > 1:
                    found = await lookup()            # our earlier send did land after all
                    if found is not None:
                        return await self._adopt(intent, found, describe, log)
                await self._record_rejection(intent, error, log)
                raise
            except UnknownOutcome as error:
                log.warning(AuditEvent.ORDER_UNKNOWN_OUTCOME, error_class=error.error_class,
                            code=error.code, http_status=error.http_status,
                            message=error.message, attempt=attempts)
                if not self._settings.unknown_outcome_protocol:
                    if attempts >= self._settings.max_send_attempts:
                        raise
                    continue                          # the seeds' blind retry (test seam)
                found = await self._resolve(lookup, deadline, intent.client_id)
                if found is not None:
                    return await self._adopt(intent, found, describe, log)
                log.warning(AuditEvent.ORDER_RESOLVED, outcome="not_found",
                            resend=attempts < self._settings.max_send_attempts,
                            window_s=self._settings.resolve_window_s)
                if attempts >= self._settings.max_send_attempts:
                    raise
                continue
            return await self._record(intent, state, describe, log, adopted=False)

    async def _durable(self, intent: Intent) -> None:
        """Wait until the signal's accept is on the disk: its fsync ran while the signal was
        handed on, decided and its first intent journaled; nothing leaves before (SPEC §5.6;
        at once for any later order). If that fsync failed, the intent goes back to
        ``PENDING`` (never sent) and ``NotDurable`` is raised — on every try."""
        try:
            await self._journal.durable(intent.signal_id)
        except NotDurable:
            await self._journal.put_intent(intent.with_state(IntentState.PENDING,
                                                             now=self._clock.time()))
            raise

    async def _resolve(self, lookup: Callable[[], Awaitable[S | None]],
                       deadline: float, client_id: str | None = None, *,
                       window_s: float | None = None) -> S | None:
        """Look the order up until it is found (returned), or definitely not found by a lookup
        made once ``window_s`` (default ``resolve_window_s``) has passed (None: it may be sent
        again). Failed lookups prove nothing and never end the search; once ``deadline``
        (``clock.time()``) has passed too, ``UnknownOutcome`` is raised instead of guessing."""
        window = self._settings.resolve_window_s if window_s is None else window_s
        window_end = self._clock.monotonic() + window
        delay = 0.1
        failure: BaseException | None = None
        while True:
            try:
                found = await lookup()
            except (ExchangeError, TimeoutError) as error:
                failure = error                       # the lookup itself failed: try again
            else:
                if found is not None:
                    return found
                if self._clock.monotonic() >= window_end:
                    return None                       # a definite "unknown order", late enough
            past_window = self._clock.monotonic() >= window_end
            if past_window and self._clock.time() >= deadline:
                raise UnknownOutcome(f"order outcome still unknown: the lookups failed "
                                     f"({failure!r})", endpoint="lookup by client id")
            pause = delay
            if not past_window:
                pause = min(delay, max(0.0, window_end - self._clock.monotonic()) + 0.001)
            if self._events is not None and client_id is not None:
                await self._events.wait(client_id, pause)   # an event about it: look now
            else:
                await self._clock.sleep(pause)
            delay = min(delay * 2, 1.0)

    async def resolve(self, lookup: Callable[[], Awaitable[S | None]],
                      client_id: str | None = None, *,
                      window_s: float | None = None) -> S | None:
        """One lookup pass (restart recovery; a cancel answered "unknown order"): found, None
        (definitely not found) or ``UnknownOutcome`` when the exchange could not answer within
        the window. ``window_s`` = 0 takes the first definite answer (an order that was not
        just sent: one whose journal row a power cut lost); failed lookups are still retried
        for ``resolve_window_s``."""
        return await self._resolve(lookup, self._clock.time() + self._settings.resolve_window_s,
                                   client_id, window_s=window_s)

    async def _adopt(self, intent: Intent, found: S, describe: Callable[[S], tuple[IntentState,
                     str]], log: AuditLogger) -> Placement[S]:
        log.info(AuditEvent.ORDER_RESOLVED, outcome="found", adopted=True)
        return await self._record(intent, found, describe, log, adopted=True)

    async def _record(self, intent: Intent, state: S,
                      describe: Callable[[S], tuple[IntentState, str]], log: AuditLogger, *,
                      adopted: bool) -> Placement[S]:
        new_state, exchange_id = describe(state)
        intent = intent.with_state(new_state, exchange_id=exchange_id, now=self._clock.time())
        await self._journal.put_intent(intent)
        event = AuditEvent.ORDER_FILLED if new_state is IntentState.FILLED else (
            AuditEvent.ORDER_PLACED)
        log.info(event, exchange_id=exchange_id, state=new_state.value, adopted=adopted)
        return Placement(state, intent, adopted)

    async def _record_rejection(self, intent: Intent, error: ExchangeError,
                                log: AuditLogger) -> None:
        await self._journal.put_intent(intent.with_state(
            IntentState.REJECTED, error_code=error.code, error_message=error.message,
            now=self._clock.time()))
        log.warning(AuditEvent.ORDER_REJECTED, code=error.code, message=error.message,
                    error_class=error.error_class)
