"""What the account's events mean (SPEC §5.8): fills journaled and reported, protective
orders that fired, liquidations and trades execd did not make; today's realized PnL.

``AccountReports.on_event`` takes each user-data event (after the book applied it), emits the
audit events, journals what must be kept, and answers which symbols the guard should check.
Journal writes run as tasks of their own (the stream's callback is synchronous); a failed one
is reported and never ends the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from decimal import Decimal
from typing import Protocol

from app.clock import Clock
from app.domain import IntentState, Leg
from app.exchange.stream_events import AlgoUpdate, OrderUpdate, PositionsUpdate, UserEvent
from app.journal import Fill, Journal
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger

__all__ = ["AccountReports"]

class DayResult(Protocol):
    def __call__(self, realized_pnl: Decimal, commissions: Mapping[str, Decimal], *,
                 at_start: bool) -> None: ...


#: How many fired algo orders are remembered, so each is reported once.
FIRED_KEPT = 1000


class AccountReports:
    def __init__(self, journal: Journal, clock: Clock, log: AuditLogger, prefix: str, *,
                 on_day_result: DayResult | None = None) -> None:
        """``on_day_result`` gets today's realized PnL and commissions by asset at `load`
        (from the journal) and after each new fill (kept here since): the risk gate's daily
        loss."""
        self._journal = journal
        self._clock = clock
        self._log = log
        self._prefix = prefix
        self._tasks: set[asyncio.Task[None]] = set()
        self._fired: dict[str, None] = {}
        self._pnl: dict[str, Decimal] = {}
        self._paid: dict[str, Decimal] = {}       # today's commissions by asset
        self._pnl_day = self._day()
        self._on_day_result = on_day_result

    # ------------------------------------------------------------------ PnL
    def _day(self) -> int:
        return int(self._clock.time() // 86_400)

    async def load(self) -> None:
        """Today's realized PnL and commissions from the journaled fills (at start)."""
        self._pnl_day = self._day()
        self._pnl, self._paid = await self._journal.day_result(self._pnl_day * 86_400.0)
        if self._on_day_result is not None:
            self._on_day_result(sum(self._pnl.values(), Decimal(0)), dict(self._paid),
                                at_start=True)

    def _roll(self) -> None:
        """A new UTC day: today's sums start again."""
        if self._day() != self._pnl_day:
            self._pnl_day, self._pnl, self._paid = self._day(), {}, {}

    def realized_pnl_today(self) -> dict[str, str]:
        """Realized PnL by symbol since 00:00 UTC, from fills."""
        self._roll()
        return {symbol: str(value) for symbol, value in sorted(self._pnl.items())}

    # ------------------------------------------------------------------ events
    def on_event(self, event: UserEvent) -> set[str]:
        """Report ``event``; the symbols whose protection should be checked now."""
        if isinstance(event, OrderUpdate):
            return self._on_order(event)
        if isinstance(event, AlgoUpdate):
            return self._on_algo(event)
        if isinstance(event, PositionsUpdate):
            return {change.symbol for change in event.positions}
        return set()                            # listenKeyExpired: the stream reconnects

    def ours(self, cid: str) -> bool:
        """Whether client id `cid` is one of execd's (its prefix; not a web or auto-close id)."""
        return cid.startswith(self._prefix) and not cid.startswith(("autoclose-", "web_"))

    def _on_order(self, event: OrderUpdate) -> set[str]:
        # execd's order ended filled: reported from its journaled trades. Ended by a trade
        # (the usual MARKET fill), one journal trip adds the trade and lists them.
        mine = self.ours(event.client_id)
        report = not event.is_liquidation and mine and event.is_final and event.filled_qty > 0
        if event.is_trade:
            self._spawn(self._journal_fill(event, report=report))
        if event.is_liquidation:
            if event.is_final:
                self._log.critical(AuditEvent.POSITION_LIQUIDATED, symbol=event.symbol,
                                   client_order_id=event.client_id, side=event.side.value,
                                   quantity=str(event.filled_qty),
                                   avg_price=str(event.avg_price),
                                   realized_pnl=str(event.realized_pnl))
                return {event.symbol}
        elif not mine:
            if event.is_trade:
                self._log.warning(AuditEvent.POSITION_FOREIGN, symbol=event.symbol,
                                  client_order_id=event.client_id, side=event.side.value,
                                  quantity=str(event.last_qty), price=str(event.last_price),
                                  note="not execd's order: never touched; its stop still "
                                       "covers the whole position")
                return {event.symbol}
        elif report:
            if not event.is_trade:
                self._spawn(self._report_filled(event))
            return {event.symbol}
        return set()

    def _on_algo(self, event: AlgoUpdate) -> set[str]:
        if not self.ours(event.client_algo_id):
            return set()
        if event.fired and event.client_algo_id not in self._fired:
            self._fired[event.client_algo_id] = None      # TRIGGERED, then FINISHED: once
            while len(self._fired) > FIRED_KEPT:
                del self._fired[next(iter(self._fired))]
            leg = "stop_loss" if event.client_algo_id.endswith(Leg.STOP_LOSS.value) else (
                "take_profit")
            self._log.warning(AuditEvent.PROTECTIVE_TRIGGERED, symbol=event.symbol,
                              client_order_id=event.client_algo_id, leg=leg,
                              trigger_price=str(event.trigger_price), status=event.status)
        if event.fired:
            self._spawn(self._journal_algo_end(event))
        return {event.symbol}

    async def _journal_fill(self, event: OrderUpdate, *, report: bool = False) -> None:
        fill = Fill(event.client_id, event.trade_id, event.symbol, event.side, event.last_qty,
                    event.last_price, event.commission, event.commission_asset,
                    event.realized_pnl, event.trade_time_ms / 1000)
        fills: list[Fill] | None = None
        if report:
            added, fills = await self._journal.add_fill_listing(fill)
        else:
            added = await self._journal.add_fill(fill)
        self._roll()
        if added and int(event.trade_time_ms // 86_400_000) == self._pnl_day:
            self._pnl[event.symbol] = self._pnl.get(event.symbol, Decimal(0)) + (
                event.realized_pnl)
            asset = event.commission_asset
            self._paid[asset] = self._paid.get(asset, Decimal(0)) + event.commission
            if self._on_day_result is not None:
                self._on_day_result(sum(self._pnl.values(), Decimal(0)), dict(self._paid),
                                    at_start=False)
        if fills is not None:
            self._report_fills(event, fills)

    async def _report_filled(self, event: OrderUpdate) -> None:
        self._report_fills(event, await self._journal.fills_for(event.client_id))

    def _report_fills(self, event: OrderUpdate, fills: list[Fill]) -> None:
        self._log.info(AuditEvent.ORDER_FILLED, symbol=event.symbol, source="stream",
                       client_order_id=event.client_id, status=event.status,
                       avg_price=str(event.avg_price), executed_qty=str(event.filled_qty),
                       commission=str(sum((f.commission for f in fills), Decimal(0))),
                       commission_asset=event.commission_asset or (
                           fills[0].commission_asset if fills else ""),
                       realized_pnl=str(sum((f.realized_pnl for f in fills), Decimal(0))))

    async def _journal_algo_end(self, event: AlgoUpdate) -> None:
        """Journal a protective order of execd's that fired. One that was cancelled, expired
        or rejected stays ``PLACED`` here: execd journals its own cancels, so any other end
        is found by the check (the order is gone from the book) and repaired."""
        if not event.fired:
            return
        intent = await self._journal.get_intent(event.client_algo_id)
        if intent is not None and intent.state is IntentState.PLACED:
            await self._journal.put_intent(intent.with_state(IntentState.FILLED,
                                                             now=self._clock.time()))

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as error:  # a report must never take the guard down
                self._log.error(AuditEvent.API_ERROR, operation="stream_event",
                                error=repr(error))

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Let the journal writes in flight finish (a fill must not be lost at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
