"""The executor: one signal in, the right orders out, every step journaled (SPEC §5.2).

``execute(record)`` is resumable: it reads the signal's journaled intents and skips what is
already done, so restart recovery (``reconcile.recover``) calls it again for every non-terminal
signal. Entries: symbol rules and the mark price are checked locally first (a rule violation is
``REJECTED`` naming the rule, before any order), leverage and margin type are set once per
symbol and cached, the MARKET entry goes out through the exactly-once sender, then the
protective orders. Closes: a reduce-only MARKET order capped at the open position, then the
symbol's protective orders are cancelled once it is flat. While the exchange certainly refuses
work (breaker open, outage, throttling) and nothing has been sent, the signal waits
(``signal_deferred``) — up to its TTL: a signal past its TTL is never executed. An entry that
already filled is still protected after its TTL; so is one that filled only in part (it ends
``DONE`` with reason ``partially filled X of Y``, SPEC §5.9).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from decimal import Decimal

from structlog.contextvars import bound_contextvars

from app.clock import Clock
from app.domain import (
    Intent,
    IntentState,
    Leg,
    MarginType,
    OrderType,
    Signal,
    SignalError,
    SignalState,
)
from app.errors import ExchangeError, OrderRejected, UnknownOutcome
from app.exchange.symbols import SymbolRuleError, SymbolRules, trading_rules
from app.execution.client_ids import new_intent
from app.execution.ports import ExchangePort
from app.execution.protect import PROTECT_DEADLINE_S, Protector, Unprotected
from app.execution.reconcile import adopt_unjournaled
from app.execution.risk import RiskGate
from app.execution.sender import DECISION_STARTED, NOT_TAKEN, STARTING, OrderSender
from app.execution.settings import ExecutorSettings, OnUnprotected
from app.journal import Journal, NotDurable, SignalEnded, SignalRecord
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger
from app.resilience.limiter import Priority

#: How an entry can end without filling whole (it may still have filled in part).
ENDED_UNFILLED = frozenset({IntentState.EXPIRED, IntentState.CANCELLED})
#: What a journal that cannot write raises (disk full, I/O error, read-only, lock timeout).
#: ``TimeoutError`` is an ``OSError`` too: a deadline that passed is caught before these.
JOURNAL_FAILURES = (sqlite3.Error, OSError)
#: Pauses between two tries to settle an unknown outcome, or to write a failing journal.
SETTLE_PAUSE_S = (0.5, 5.0)
OUTCOME_UNKNOWN = "outcome unknown"
#: The source of an operator's flatten signal (``operator.py``): no trading state stops it.
OPERATOR_SOURCE = "operator"


class Executor:
    """Runs signals; ``rules`` looks up a symbol's exchange rules. The sender and the
    protector are its collaborators, built by the composition root."""

    def __init__(self, exchange: ExchangePort, rules: Callable[[str], SymbolRules],
                 sender: OrderSender, protector: Protector, journal: Journal, clock: Clock,
                 log: AuditLogger, settings: ExecutorSettings, *,
                 marks: Callable[[str], Decimal | None] | None = None,
                 positions: Callable[[str], Decimal | None] | None = None,
                 risk: RiskGate | None = None) -> None:
        self._exchange = exchange
        self._marks = marks
        self._positions = positions
        self._risk = risk
        self._rules = rules
        self._sender = sender
        self._protector = protector
        self._journal = journal
        self._clock = clock
        self._log = log
        self.settings = settings
        self._leverage: dict[str, int] = {}
        self._margin: dict[str, MarginType] = {}

    # ------------------------------------------------------------------ one signal
    async def execute(self, record: SignalRecord, *, settle: bool = True,
                      resumed: bool = False) -> SignalRecord:
        """Run (or resume) a signal to a terminal state and return its final record.

        An order whose outcome stays unknown keeps the signal ``RUNNING`` (reason ``outcome
        unknown``) until a lookup or a stream event settles it (SPEC §5.9); with ``settle``
        False (restart recovery, which must not hold start-up) the record is returned
        ``RUNNING`` instead, for the daemon to hand to the bus.

        A ``resumed`` signal (restart recovery passes it; a ``RUNNING`` record is one) first
        has every leg its journal does not show sent looked up by client id and adopted
        (`reconcile.adopt_unjournaled`), before anything is decided or sent: a power cut that
        lost an intent row never turns into a second order. While the exchange cannot answer
        those lookups nothing is sent (``outcome unknown``, as above)."""
        if record.state.is_terminal:
            return record
        decision = DECISION_STARTED.set(self._clock.monotonic())
        try:
            return await self._execute(record, settle,
                                       resumed or record.state is SignalState.RUNNING)
        finally:
            DECISION_STARTED.reset(decision)

    async def _execute(self, record: SignalRecord, settle: bool, resumed: bool) -> SignalRecord:
        signal = record.signal
        with bound_contextvars(signal_id=signal.id, symbol=signal.symbol):
            if resumed and not await self._adopt_unjournaled(signal, settle):
                return await self._journal.set_signal_state(
                    signal.id, SignalState.RUNNING, reason=OUTCOME_UNKNOWN,
                    now=self._clock.time())
            # A new ACCEPTED signal has no intents yet; it becomes RUNNING in the same journal
            # transaction as its first order's intent (`STARTING`). A resumed one may have
            # adopted some: it is moved now, against an operator's cancel.
            fresh = record.state is SignalState.ACCEPTED and not resumed
            if record.state is SignalState.ACCEPTED and not fresh:
                started = await self._journal.set_signal_state(
                    signal.id, SignalState.RUNNING, reason=None, now=self._clock.time(),
                    expect=SignalState.ACCEPTED)
                if started.state is not SignalState.RUNNING:
                    return started
            if signal.is_expired(self._clock.time()) and not await self._started(signal):
                return await self._finish(signal, SignalState.EXPIRED, "expired before execution",
                                          AuditEvent.SIGNAL_EXPIRED)
            starting = STARTING.set(record if fresh else None)
            try:
                async with self._protector.holding(signal.symbol):
                    reason = await self._run_until_taken(signal, fresh=fresh, settle=settle)
            except SignalEnded as ended:
                return ended.record                 # cancelled before its first order
            except NotDurable as lost:              # its accept's fsync failed: not sent
                return await self._finish(signal, SignalState.FAILED, str(lost),
                                          AuditEvent.SIGNAL_FAILED)
            except UnknownOutcome:
                return await self._journal.set_signal_state(
                    signal.id, SignalState.RUNNING, reason=OUTCOME_UNKNOWN,
                    now=self._clock.time())
            except SignalError as rejected:
                if rejected.field == "risk":
                    rule, _, detail = rejected.detail.partition(": ")
                    self._log.warning(AuditEvent.RISK_REJECTED, rule=rule, detail=detail)
                return await self._finish(signal, SignalState.REJECTED, str(rejected),
                                          AuditEvent.SIGNAL_REJECTED, field=rejected.field,
                                          detail=rejected.detail)
            except TimeoutError:
                return await self._finish(signal, SignalState.EXPIRED,
                                          "expired before the order could be sent",
                                          AuditEvent.SIGNAL_EXPIRED)
            except Unprotected as naked:
                if naked.already_flat:
                    what = "already flat (an earlier stop had closed it)"
                elif naked.flattened:
                    what = "flattened"
                elif self.settings.on_unprotected is OnUnprotected.FLATTEN:
                    what = "left open: the flattening close failed"
                else:
                    what = "left open (on_unprotected=alert)"
                return await self._finish(signal, SignalState.FAILED,
                                          f"{naked.reason}; position {what}",
                                          AuditEvent.SIGNAL_FAILED)
            except ExchangeError as error:
                return await self._finish(signal, SignalState.FAILED,
                                          f"{error.error_class}: {error.message}",
                                          AuditEvent.SIGNAL_FAILED, **error.fields())
            finally:
                STARTING.reset(starting)
            return await self._finish(signal, SignalState.DONE, reason, AuditEvent.SIGNAL_DONE)

    async def _adopt_unjournaled(self, signal: Signal, settle: bool) -> bool:
        """`reconcile.adopt_unjournaled`; while the exchange cannot answer, retried after a
        pause with ``settle``, else False (nothing may be sent yet)."""
        pause = SETTLE_PAUSE_S[0]
        while True:
            try:
                await adopt_unjournaled(signal, self._journal, self._exchange, self._sender,
                                        self.settings.client_id_prefix, self._log,
                                        now=self._clock.time())
                return True
            except UnknownOutcome as unknown:
                if not settle:
                    return False
                self._log.warning(AuditEvent.SIGNAL_DEFERRED, reason=OUTCOME_UNKNOWN,
                                  message=unknown.message, retry_in_s=pause)
                await self._clock.sleep(pause)
                pause = min(pause * 2, SETTLE_PAUSE_S[1])

    async def _started(self, signal: Signal) -> bool:
        """Whether any order of the signal may have left (an intent past ``PENDING``)."""
        return any(i.state is not IntentState.PENDING
                   for i in await self._journal.intents_for(signal.id))

    async def _run_until_taken(self, signal: Signal, *, fresh: bool, settle: bool) -> str:
        """Run the signal's flow from its journaled intents. While the exchange certainly
        refuses work for now (breaker open, outage, throttled), wait and run it again: the flow
        resumes from the journal, so nothing done is done twice. Before anything was sent, up
        to the signal's TTL (past it a signal never starts: ``TimeoutError`` → ``EXPIRED``);
        once an order may have left, for up to ``PROTECT_DEADLINE_S`` more, so that a filled
        entry still gets its protection and a close still cleans up (then the error stands).

        An unknown outcome (with ``settle``) and a journal that fails after an order may have
        left do not end the signal: the flow runs again after a pause, until the order is found
        (or definitely not found) and the journal writes again; a journal failure is a critical
        ``position_unprotected`` until then (SPEC §5.9), then ``protection_repaired``."""
        finish_by: float | None = None
        pause = SETTLE_PAUSE_S[0]
        journal_failed = False
        while True:
            journaled: dict[Leg, Intent] = {}
            if not fresh:
                journaled = {i.leg: i for i in await self._journal.intents_for(signal.id)}
            fresh = False
            try:
                if signal.type.is_entry:
                    reason = await self._entry(signal, journaled)
                else:
                    reason = await self._close(signal, journaled)
                if journal_failed:
                    self._log.warning(AuditEvent.PROTECTION_REPAIRED, cause="journal failure",
                                      outcome=reason)
                return reason
            except UnknownOutcome as unknown:
                if not settle:
                    raise
                await self._journal.set_signal_state(signal.id, SignalState.RUNNING,
                                                     reason=OUTCOME_UNKNOWN,
                                                     now=self._clock.time())
                self._log.warning(AuditEvent.SIGNAL_DEFERRED, reason=OUTCOME_UNKNOWN,
                                  message=unknown.message, retry_in_s=pause)
                await self._clock.sleep(pause)
                pause = min(pause * 2, SETTLE_PAUSE_S[1])
                continue
            except TimeoutError:
                raise        # a deadline passed (an OSError, but not the journal's): EXPIRED
            except JOURNAL_FAILURES as broken:
                if not journal_failed:
                    journal_failed = True
                    try:
                        started = await self._started(signal)
                    except JOURNAL_FAILURES:
                        started = True               # cannot tell: assume the worst
                    event = AuditEvent.POSITION_UNPROTECTED if started else (
                        AuditEvent.SIGNAL_DEFERRED)
                    level = self._log.critical if started else self._log.error
                    level(event, reason=f"journal write failed: {broken!r}",
                          action="retrying until the journal works again")
                await self._clock.sleep(pause)
                pause = min(pause * 2, SETTLE_PAUSE_S[1])
                continue
            except NOT_TAKEN as busy:
                now = self._clock.time()
                if await self._started(signal):
                    if finish_by is None:
                        finish_by = max(signal.expires_at, now + PROTECT_DEADLINE_S)
                    until = finish_by
                    if now >= until:
                        raise
                elif now >= signal.expires_at:
                    raise TimeoutError("expired while the exchange refused work") from busy
                else:
                    until = signal.expires_at
                pause = min(busy.retry_after or self.settings.busy_retry_s, until - now)
                self._log.info(AuditEvent.SIGNAL_DEFERRED, error_class=busy.error_class,
                               message=busy.message, retry_in_s=round(pause, 3))
                await self._clock.sleep(pause)

    async def _finish(self, signal: Signal, state: SignalState, reason: str,
                      event: AuditEvent, **fields: object) -> SignalRecord:
        """Journal the final state, then audit it. A lane cancelled at shutdown while the
        state is being written (the journal's thread commits it anyway) still audits it,
        before the cancellation goes on: never a journaled DONE without its ``signal_done``."""
        level = self._log.info if state is SignalState.DONE else self._log.warning
        write = asyncio.ensure_future(self._journal.end_signal(
            signal.id, state, reason=reason, now=self._clock.time()))
        try:
            record, journaled = await asyncio.shield(write)
        except ValueError:     # it ended meanwhile (cancelled before its first order): as is
            ended = await self._journal.get_signal(signal.id)
            assert ended is not None
            return ended
        except asyncio.CancelledError:
            if await asyncio.wait([write]) and write.exception() is None:
                level(event, state=state.value, reason=reason, intents=None, **fields)
            raise
        intents = [{"leg": i.leg.value, "client_id": i.client_id, "state": i.state.value,
                    "exchange_id": i.exchange_id} for i in journaled]
        level(event, state=state.value, reason=reason, intents=intents, **fields)
        return record

    # ------------------------------------------------------------------ entries
    async def _entry(self, signal: Signal, journaled: dict[Leg, Intent]) -> str:
        entry = journaled.get(Leg.ENTRY)
        partial: Decimal | None = None      # what filled of an entry that did not fill whole
        if entry is None or entry.state is not IntentState.FILLED:
            if entry is not None and entry.state in ENDED_UNFILLED:
                # An earlier run journaled how it ended: never send it again; ask how much of
                # it filled (the journal keeps the state, not the quantity).
                found = await self._exchange.get_order(signal.symbol, entry.client_id,
                                                       priority=Priority.NORMAL)
                executed = found.executed_qty if found is not None else Decimal(0)
            else:
                if entry is None or entry.state is IntentState.PENDING:
                    entry = await self._new_entry(signal, entry)
                placement = await self._sender.send_order(entry, priority=Priority.NORMAL,
                                                          deadline=signal.expires_at)
                entry = placement.intent
                executed = placement.state.executed_qty
            if entry.state is not IntentState.FILLED:
                if executed <= 0:
                    raise OrderRejected(f"entry ended {entry.state.value}, not filled",
                                        endpoint="POST /fapi/v1/order")
                partial = executed          # a real position: it gets its protection (§5.9)
        journaled[Leg.ENTRY] = entry
        filled = partial if partial is not None else entry.quantity
        if filled is not None:
            await self._journal.set_filled_quantity(signal.id, filled)
        if partial is None:
            reason = f"entry filled: {entry.quantity} {signal.symbol}"
        else:
            reason = f"partially filled {partial} of {entry.quantity} {signal.symbol}"
            self._log.warning(AuditEvent.ORDER_PARTIALLY_FILLED,
                              client_order_id=entry.client_id, leg=entry.leg.value,
                              state=entry.state.value, filled_quantity=str(partial),
                              quantity=str(entry.quantity))
        if signal.stop_loss is None and signal.take_profit is None:
            return reason
        warning = await self._protector.protect(signal, journaled)
        return f"{reason}; {warning}" if warning else f"{reason}; protected"

    async def _new_entry(self, signal: Signal, journaled: Intent | None) -> Intent:
        """Check the signal against the symbol's rules and the mark; the entry intent (the
        sender journals it, as SENDING, before it leaves)."""
        if self._risk is not None:
            self._risk.check_state(entry=True)      # halted: refused before anything is read
        rules = trading_rules(self._rules, signal.symbol)
        assert signal.quantity is not None
        mark = self._marks(signal.symbol) if self._marks is not None else None
        if mark is None:
            mark = await self._exchange.mark_price(signal.symbol)
        quantity = rules.quantize_qty(signal.quantity, market=True)
        try:
            rules.check_order(quantity, mark, market=True, reduce_only=False)
        except SymbolRuleError as error:
            raise SignalError("quantity", f"{error.rule}: {error.detail}") from None
        self._check_protective(signal, rules, mark)
        if self._risk is not None:
            self._risk.check_entry(signal, quantity, mark)
        await self._ensure_account_settings(signal)
        return journaled or new_intent(
            self.settings.client_id_prefix, signal.id, signal.symbol, Leg.ENTRY,
            signal.type.order_side, OrderType.MARKET, quantity=quantity, now=self._clock.time())

    def _check_protective(self, signal: Signal, rules: SymbolRules, mark: Decimal) -> None:
        """tp/sl on the tick grid and on the right side of the mark (LONG: sl < mark < tp)."""
        for field, price in (("stop_loss", signal.stop_loss), ("take_profit", signal.take_profit)):
            if price is not None and rules.quantize_price(price) != price:
                raise SignalError(field, f"PRICE_FILTER.tickSize: {price} is not a multiple "
                                            f"of the tick {rules.tick_size}")
        signal.check_sides(mark)

    async def _ensure_account_settings(self, signal: Signal) -> None:
        """Margin type and leverage, set once per symbol and cached (-4046 is success)."""
        symbol, margin, leverage = signal.symbol, signal.margin_type, signal.leverage
        set_margin = margin is not None and self._margin.get(symbol) != margin
        set_leverage = leverage is not None and self._leverage.get(symbol) != leverage
        if set_margin or set_leverage:
            await self._journal.durable(signal.id)    # the first write to the exchange
        if set_margin:
            assert margin is not None
            await self._exchange.set_margin_type(symbol, margin)
            self._margin[symbol] = margin
        if set_leverage:
            assert leverage is not None
            self._leverage[symbol] = await self._exchange.set_leverage(symbol, leverage)

    # ------------------------------------------------------------------ closes
    async def _close(self, signal: Signal, journaled: dict[Leg, Intent]) -> str:
        close = journaled.get(Leg.CLOSE)
        wanted = "LONG" if signal.type.position_sign > 0 else "SHORT"
        if close is None or close.state is IntentState.PENDING:
            if self._risk is not None and signal.source != OPERATOR_SOURCE:
                self._risk.check_close()         # an operator's flatten runs in every state
            amount = await self._position_amount(signal.symbol)
            if not amount or (amount > 0) != (signal.type.position_sign > 0):
                note = f"no {wanted} position to close"
                self._log.info(AuditEvent.POSITION_QUERY, note=note, amount=str(amount))
                return note
            rules = trading_rules(self._rules, signal.symbol)
            size = abs(amount)
            quantity = size if signal.quantity is None else min(signal.quantity, size)
            quantity = rules.quantize_qty(quantity, market=True)
            if quantity <= 0:
                raise SignalError("quantity", f"{signal.quantity} rounds to 0 with step "
                                                 f"{rules.market_step_size}")
            close = close or new_intent(
                self.settings.client_id_prefix, signal.id, signal.symbol, Leg.CLOSE,
                signal.type.order_side, OrderType.MARKET, quantity=quantity,
                now=self._clock.time())
        if close.state is not IntentState.FILLED:
            try:
                placement = await self._sender.send_order(close, priority=Priority.CRITICAL,
                                                          deadline=signal.expires_at)
            except OrderRejected as error:
                if error.code != -2022:
                    raise
                return f"no {wanted} position to close (reduce-only rejected: already flat)"
            close = placement.intent
        if not await self._position_amount(signal.symbol):
            await self._protector.cancel_protective(signal.symbol, reason="position closed")
        return f"closed {close.quantity} {signal.symbol}"

    async def _position_amount(self, symbol: str) -> Decimal:
        """The signed position (0 when flat): from the live book when it follows the account
        (SPEC §5.8: no exchange read on the decision path), else one REST read."""
        amount = self._positions(symbol) if self._positions is not None else None
        if amount is None:
            position = await self._exchange.get_position(symbol, priority=Priority.NORMAL)
            amount = position.amount if position is not None else Decimal(0)
        return amount
