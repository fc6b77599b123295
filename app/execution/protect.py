"""Protective orders (SPEC §5.4): stop-loss first, then take-profit, both algo orders that
close the whole position; replacement; the unprotected path; orphan clean-up.

A new entry with tp/sl replaces the symbol's protective orders (SPEC §5.9). Binance may refuse a
second open closePosition order of a type and side (-4130), so each old leg is cancelled just
before its replacement is placed: the position is without a stop for one cancel round trip at
most, and a replacement is never refused. If the old stop cannot be cancelled it stays (it
still covers the whole position) and the signal says so; the position is never flattened for
it. If the new stop-loss cannot be placed (``-2021`` "would immediately trigger", a rejection,
or the exchange refusing until the deadline), the position is unprotected:
``position_unprotected`` (critical) and then, with ``on_unprotected = "flatten"``, a reduce-only
market close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import NoReturn

from app.clock import Clock
from app.domain import Intent, IntentState, Leg, OrderType, Side, Signal
from app.errors import ExchangeError, UnknownOutcome
from app.execution.client_ids import new_intent
from app.execution.ports import ExchangePort
from app.execution.sender import OrderSender, algo_outcome
from app.execution.settings import ExecutorSettings, OnUnprotected
from app.journal import Journal
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger
from app.resilience.limiter import Priority

#: How long the exchange may refuse a protective or flattening order before we give up on it.
PROTECT_DEADLINE_S = 30.0
#: Reduce-only closes one flatten may send (a close can fill only in part).
FLATTEN_TRIES = 3
#: How a flatten ended with the position flat: closed by it, or flat before it.
FLATTENED = "flattened"
ALREADY_FLAT = "already flat"


class Unprotected(Exception):
    """The stop-loss could not be placed; ``flattened`` says whether the position is closed
    now, ``already_flat`` that it was so before execd's close (an older stop fired)."""

    def __init__(self, reason: str, *, flattened: bool, already_flat: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.flattened = flattened
        self.already_flat = already_flat


class Protector:
    def __init__(self, exchange: ExchangePort, sender: OrderSender, journal: Journal,
                 clock: Clock, log: AuditLogger, settings: ExecutorSettings) -> None:
        self._exchange = exchange
        self._sender = sender
        self._journal = journal
        self._clock = clock
        self._log = log
        self._settings = settings
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @contextlib.asynccontextmanager
    async def holding(self, symbol: str) -> AsyncIterator[None]:
        """The symbol's protection to oneself: the executor holds it while it runs a signal
        (an entry is unprotected until its stop is placed; a replacement cancels before it
        places), the guard while it repairs or cleans up, so neither acts on a state the other
        is changing."""
        async with self._locks[symbol]:
            yield

    def _intent(self, signal: Signal, leg: Leg, side: Side, order_type: OrderType,
                price: Decimal) -> Intent:
        return new_intent(self._settings.client_id_prefix, signal.id, signal.symbol, leg, side,
                          order_type, price=price, now=self._clock.time())

    async def protect(self, signal: Signal, journaled: dict[Leg, Intent]) -> str | None:
        """Place the signal's stop-loss and take-profit (skipping legs already live), each
        right after cancelling the symbol's older order of that leg, then cancel what is left
        of the older ones. Returns a warning when the take-profit failed or the old stop had
        to stay; raises ``Unprotected`` when the stop-loss failed."""
        close_side = signal.type.order_side.opposite
        own = {i.client_id for i in journaled.values()}
        older = [i for i in await self._journal.live_protective(signal.symbol)
                 if i.client_id not in own]
        deadline = self._clock.time() + PROTECT_DEADLINE_S
        warnings: list[str] = []
        placed: dict[str, str] = {}
        replaced: list[str] = []
        legs = ((Leg.STOP_LOSS, OrderType.STOP_MARKET, signal.stop_loss, "stop_loss"),
                (Leg.TAKE_PROFIT, OrderType.TAKE_PROFIT_MARKET, signal.take_profit,
                 "take_profit"))
        for leg, order_type, price, name in legs:
            if price is None:
                continue
            label = name.replace("_", "-")
            intent = journaled.get(leg) or self._intent(signal, leg, close_side, order_type,
                                                        price)
            if intent.state is not IntentState.PLACED:
                kept = await self._clear(older, leg, replaced)
                if kept is not None:
                    warnings.append(f"{label} not replaced, the previous one stays: {kept}")
                    continue
                try:
                    intent = await self._place(intent, deadline)
                except UnknownOutcome as error:
                    if leg is Leg.STOP_LOSS:   # it may be on the exchange: settle, never flatten
                        self._log.critical(AuditEvent.POSITION_UNPROTECTED,
                                           reason=f"stop-loss outcome unknown: {error}",
                                           action="looking it up until the exchange answers")
                    raise
                except (ExchangeError, TimeoutError) as error:
                    if leg is Leg.STOP_LOSS:
                        await self.unprotected(signal, f"stop-loss not placed: {error}")
                    warnings.append(f"{label} not placed: {error}")
                    continue
            placed[name] = intent.client_id
        for old in older:
            if await self.retire(old, reason="replaced"):
                replaced.append(old.client_id)
        self._log.info(AuditEvent.PROTECTIVE_PLACED, replaced=replaced, **placed)
        return "; ".join(warnings) or None

    async def _clear(self, older: list[Intent], leg: Leg, replaced: list[str]) -> str | None:
        """Cancel the older orders of ``leg`` (removed from ``older``) before a replacement is
        placed: the exchange may refuse a second closePosition order of a side (-4130). None
        when done; else why the old order could not be cancelled (it stays, and ``older``
        keeps it out of further cancels so the position keeps its cover)."""
        for old in [i for i in older if i.leg is leg]:
            older.remove(old)
            try:
                retired = await self.retire(old, reason="replaced")
            except (ExchangeError, TimeoutError) as error:
                return str(error)
            if not retired:
                return f"{old.client_id} is still open after every cancel attempt"
            replaced.append(old.client_id)
        return None

    async def _place(self, intent: Intent, deadline: float) -> Intent:
        placement = await self._sender.send_algo(intent, priority=Priority.CRITICAL,
                                                 deadline=deadline)
        return placement.intent

    async def unprotected(self, signal: Signal, reason: str) -> NoReturn:
        """Report the naked position, flatten it if so configured, and raise Unprotected."""
        action = self._settings.on_unprotected
        self._log.critical(AuditEvent.POSITION_UNPROTECTED, reason=reason, action=action.value)
        if action is OnUnprotected.ALERT:
            raise Unprotected(reason, flattened=False)
        outcome = await self.flatten(signal)
        raise Unprotected(reason, flattened=outcome is not None,
                          already_flat=outcome == ALREADY_FLAT)

    async def flatten(self, signal: Signal) -> str | None:
        """Close the signal's whole position with reduce-only market orders (leg C, each with
        its own id): a close that fills only in part is followed by one for the rest, up to
        ``FLATTEN_TRIES`` closes. Returns ``FLATTENED``, ``ALREADY_FLAT`` (no close was
        needed), or None when the position is still open."""
        closes = sum(i.leg is Leg.CLOSE for i in await self._journal.intents_for(signal.id))
        for attempt in range(closes, closes + FLATTEN_TRIES):
            position = await self._exchange.get_position(signal.symbol,
                                                         priority=Priority.CRITICAL)
            if position is None:
                if attempt == closes:
                    self._log.info(AuditEvent.POSITION_FLATTENED, amount="0",
                                   note="already flat")
                await self.cancel_protective(signal.symbol, reason="flattened")
                return ALREADY_FLAT if attempt == closes else FLATTENED
            intent = new_intent(self._settings.client_id_prefix, signal.id, signal.symbol,
                                Leg.CLOSE, position.side.opposite, OrderType.MARKET,
                                quantity=abs(position.amount), now=self._clock.time(),
                                attempt=attempt)
            try:
                placement = await self._sender.send_order(
                    intent, priority=Priority.CRITICAL,
                    deadline=self._clock.time() + PROTECT_DEADLINE_S)
            except (ExchangeError, TimeoutError) as error:
                self._log.critical(AuditEvent.POSITION_UNPROTECTED,
                                   reason=f"flatten failed: {error}", action="none")
                return None
            closed = placement.state.executed_qty
            self._log.warning(AuditEvent.POSITION_FLATTENED, amount=str(position.amount),
                              closed=str(closed))
        still = await self._exchange.get_position(signal.symbol, priority=Priority.CRITICAL)
        if still is None:
            await self.cancel_protective(signal.symbol, reason="flattened")
            return FLATTENED
        self._log.critical(AuditEvent.POSITION_UNPROTECTED, action="none",
                           reason=f"flatten left {still.amount} open after {FLATTEN_TRIES} "
                                  "closes")
        return None

    async def retire(self, intent: Intent, *, reason: str) -> bool:
        """Cancel one protective order; journal it CANCELLED (or FILLED if it had fired).

        An "unknown order" answer to the cancel of an order we placed proves nothing at once:
        Binance may not show a just-placed order for a few seconds. So it is looked up as an
        unknown outcome is (the sender's ``resolve``: until found, or not found once
        ``resolve_window_s`` has passed), and a found open order is cancelled again. Returns
        False if it is still open then (the intent stays PLACED: it still protects, and the
        journal still knows it), True once it is retired."""
        exchange = self._exchange
        state = IntentState.CANCELLED
        if not await exchange.cancel_algo_order(intent.client_id):
            found = await self._sender.resolve(lambda: exchange.get_algo_order(intent.client_id))
            if found is not None:
                state = algo_outcome(found)[0]          # it fired, or ended otherwise
            if state is IntentState.PLACED:
                if not await exchange.cancel_algo_order(intent.client_id):
                    self._log.warning(AuditEvent.ORDER_CANCELLED,
                                      client_order_id=intent.client_id, leg=intent.leg.value,
                                      reason=reason, final_state=state.value,
                                      note="still open after every cancel attempt")
                    return False
                state = IntentState.CANCELLED
        await self._journal.put_intent(intent.with_state(state, now=self._clock.time()))
        self._log.info(AuditEvent.ORDER_CANCELLED, client_order_id=intent.client_id,
                       leg=intent.leg.value, reason=reason, final_state=state.value)
        return True

    async def cancel_protective(self, symbol: str, *, reason: str) -> int:
        """Retire every live protective order of ``symbol`` (the position is flat); returns
        how many were retired (one still open stays live, for the watcher's next pass)."""
        live = await self._journal.live_protective(symbol)
        retired = 0
        for intent in live:
            retired += await self.retire(intent, reason=reason)
        return retired
