"""The protection invariant (SPEC §5.9), kept on every user-data event and reconciliation.

The guard feeds the live book with the user-data stream's events, hands each to the account's
reports (``reports.py``: fills journaled, triggers, liquidations and foreign trades reported),
and acts on them:
- each change of a symbol schedules a check of that symbol: a flat symbol whose protective
  orders are still open gets them cancelled (orphans, within a second of the event); a
  position that execd opened or added to with a stop-loss and that has no open stop gets one
  again at the last requested stop price (``protection_repaired``), or ``on_unprotected``
  applies when the mark has crossed that price. Time without a stop is measured.
The book is rebuilt by REST (`reconcile`) at start, after every stream (re)connect and every
``reconcile_interval_s``; while the user stream is down, every ``fallback_poll_s``.

A check takes the symbol's hold (``Protector.holding``): it waits while a signal of that symbol
runs, so it never acts between an entry's fill and its stop, or inside a replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from app.clock import Clock, wait_event
from app.domain import Intent, IntentState, Leg, OrderType, Signal
from app.errors import ExchangeError
from app.exchange.models import AlgoState, OrderState, Position
from app.exchange.stream_events import (
    OrderUpdate,
    StreamKind,
    StreamStatus,
    UserEvent,
)
from app.execution.book import Book
from app.execution.client_ids import new_intent
from app.execution.protect import PROTECT_DEADLINE_S, Protector, Unprotected
from app.execution.reports import AccountReports
from app.execution.sender import OrderSender, algo_outcome
from app.execution.settings import ExecutorSettings
from app.journal import Journal
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger
from app.resilience.limiter import Priority

__all__ = ["AccountReads", "Guard", "GuardSettings"]


class AccountReads(Protocol):
    """The gateway's account-wide reads the guard reconciles from."""

    async def positions(self, *, priority: Priority = Priority.LOW) -> list[Position]: ...

    async def open_orders(self, symbol: str | None = None) -> list[OrderState]: ...

    async def open_algo_orders(self, symbol: str | None = None) -> list[AlgoState]: ...

    async def get_algo_order(self, client_algo_id: str, *,
                             priority: Priority | None = None) -> AlgoState | None: ...

    async def mark_price(self, symbol: str) -> Decimal: ...

    async def get_position(self, symbol: str, *, priority: Priority | None = None
                           ) -> Position | None: ...


@dataclass(frozen=True, slots=True)
class GuardSettings:
    reconcile_interval_s: float = 60.0
    fallback_poll_s: float = 5.0
    max_mark_age_s: float = 2.0
    #: Right after the user stream drops, what happens on the account goes unseen until it
    #: is back: the positions are polled every ``catch_up_poll_s`` for ``catch_up_s``, then
    #: every ``fallback_poll_s`` (weight 5 a poll).
    catch_up_poll_s: float = 1.0
    catch_up_s: float = 30.0
    #: False: no user-data stream at all (``stream.enabled = false``): poll only.
    streaming: bool = True


class Guard:
    def __init__(self, book: Book, reports: AccountReports, exchange: AccountReads,
                 sender: OrderSender, protector: Protector, journal: Journal, clock: Clock,
                 log: AuditLogger, executor_settings: ExecutorSettings,
                 settings: GuardSettings, *,
                 watch: Callable[[Iterable[str]], None] | None = None) -> None:
        self._book = book
        self._reports = reports
        self._watch = watch
        self._exchange = exchange
        self._sender = sender
        self._protector = protector
        self._journal = journal
        self._clock = clock
        self._log = log
        self._prefix = executor_settings.client_id_prefix
        self._settings = settings
        self._checks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._naked_since: dict[str, float] = {}
        self.unprotected_seconds = 0.0
        self.user_connected = False
        self._resync = asyncio.Event()
        self._down_since: float | None = None
        self._owned: dict[str, bool] = {}
        #: symbol → the signal whose stop could not be placed again (the mark had crossed
        #: it): on_unprotected applied once, not at every later event.
        self._given_up: dict[str, str] = {}

    # ------------------------------------------------------------------ views
    def positions_view(self) -> list[dict[str, object]]:
        """Every non-zero position on the account (SPEC §11.2), each with its open stop and
        take-profit trigger prices (any client id) and whether execd opened it."""
        rows: list[dict[str, object]] = []
        for symbol, position in sorted(self._book.positions.items()):
            algos = self._book.open_algos(symbol)
            stops = [str(a.trigger_price) for a in algos if a.order_type == "STOP_MARKET"]
            takes = [str(a.trigger_price) for a in algos
                     if a.order_type == "TAKE_PROFIT_MARKET"]
            mark = self._book.mark(symbol, float("inf"))
            rows.append({"symbol": symbol, "amount": str(position.amount),
                         "entry_price": str(position.entry_price),
                         "mark": str(mark) if mark is not None else None,
                         "foreign": not self._owned.get(symbol, False),
                         "stop_loss": stops[0] if len(stops) == 1 else (stops or None),
                         "take_profit": takes[0] if len(takes) == 1 else (takes or None)})
        return rows

    # ------------------------------------------------------------------ stream input
    def on_user_event(self, event: UserEvent | StreamStatus) -> None:
        """The user stream's callback (in arrival order). A failure here is reported and the
        event skipped (the next reconciliation makes up for it): it must not end the stream."""
        try:
            self._on_user_event(event)
        except Exception as error:
            self._log.error(AuditEvent.API_ERROR, operation="user_stream_event",
                            error=repr(error))

    def _on_user_event(self, event: UserEvent | StreamStatus) -> None:
        if isinstance(event, StreamStatus):
            self.on_status(event)
            return
        self._book.apply(event)
        if (isinstance(event, OrderUpdate) and event.is_trade and not event.is_liquidation
                and self._reports.ours(event.client_id)
                and event.client_id.endswith(Leg.ENTRY.value)):
            # execd's own entry filled: its position is execd's from now on, not from the
            # symbol's next check, which waits for the executor to finish protecting it
            self._owned[event.symbol] = True
        for symbol in self._reports.on_event(event):
            self.schedule(symbol)

    def on_status(self, status: StreamStatus) -> None:
        if status.stream is not StreamKind.USER:
            return
        was = self.user_connected
        self.user_connected = status.connected
        self._book.set_streaming(status.connected)
        if status.connected:
            self._down_since = None
            self._resync.set()                  # events sent while down are never replayed
        elif was:
            self._down_since = self._clock.monotonic()
            self._resync.set()                  # recompute the poll interval now

    # ------------------------------------------------------------------ checks
    def schedule(self, symbol: str) -> None:
        """Check ``symbol`` soon (once more if a check of it is running)."""
        running = self._checks.get(symbol)
        if running is not None and not running.done():
            self._again.add(symbol)
            return
        self._checks[symbol] = asyncio.create_task(self._check_loop(symbol),
                                                   name=f"execd-guard-{symbol}")

    async def _check_loop(self, symbol: str) -> None:
        while True:
            self._again.discard(symbol)
            try:
                await self.check(symbol)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # reported; the next event or reconciliation retries
                self._log.warning(AuditEvent.API_ERROR, operation="protection_check",
                                  symbol=symbol, error=repr(error))
            if symbol not in self._again:
                return

    async def check(self, symbol: str) -> None:
        """The invariant for one symbol, against the book (SPEC §5.9)."""
        async with self._protector.holding(symbol):
            position = self._book.position(symbol)
            if position is None:
                self._clothed(symbol)
                self._given_up.pop(symbol, None)
                # Confirmed by one read before anything is cancelled: a snapshot fetched
                # before a fill must never strip a position that was just protected.
                if await self._journal.live_protective(symbol) and (
                        await self._exchange.get_position(symbol, priority=Priority.CRITICAL)
                        is None):
                    await self._protector.cancel_protective(symbol, reason="position flat")
                return
            wanted = await self._wanted_stop(symbol)
            if wanted is None:
                self._clothed(symbol)
                return
            signal, stop = wanted
            if signal.type.position_sign * position.amount <= 0:
                self._clothed(symbol)           # the other side: not the position it guards
                return
            open_algos = {a.client_id for a in self._book.open_algos(symbol)}
            if stop is not None and stop.state is IntentState.PLACED and (
                    stop.client_id in open_algos or not self.streaming):
                # without the stream the book's orders are as old as the last full
                # reconciliation: the journal's word stands until then
                self._clothed(symbol)
                return
            if stop is not None and stop.state in (IntentState.FILLED, IntentState.CANCELLED,
                                                   IntentState.SENDING):
                self._clothed(symbol)   # fired or retired by execd: that position ended;
                return                  # SENDING: its outcome is being settled
            if stop is not None and stop.state is IntentState.PLACED:
                found = await self._sender.resolve(
                    lambda: self._exchange.get_algo_order(stop.client_id,
                                                          priority=Priority.CRITICAL),
                    stop.client_id)
                state = algo_outcome(found)[0] if found is not None else IntentState.EXPIRED
                if state is IntentState.PLACED:
                    self._clothed(symbol)       # open after all: the book was behind
                    return
                await self._journal.put_intent(stop.with_state(state, now=self._clock.time()))
                if state is IntentState.FILLED:
                    return                      # it fired: the position is closing
            confirmed = await self._exchange.get_position(symbol, priority=Priority.CRITICAL)
            if confirmed is None or confirmed.amount * position.amount <= 0:
                return                          # the book was behind: the next event re-checks
            await self._repair(symbol, signal, confirmed.amount)

    async def _wanted_stop(self, symbol: str) -> tuple[Signal, Intent | None] | None:
        """The last entry of ``symbol`` that filled and asked for a stop-loss, with its latest
        stop intent (None if it has none yet); None when no stop is wanted (no such entry, or
        a close of execd's filled after it)."""
        last = await self._journal.last_filled(symbol)
        self._owned[symbol] = last is not None and last[0].leg is Leg.ENTRY
        if last is None:
            return None
        _, record, stops = last
        if record is None or record.signal.stop_loss is None:
            return None                         # a close, or an entry without a stop-loss
        return record.signal, (stops[-1] if stops else None)

    async def _repair(self, symbol: str, signal: Signal, amount: Decimal) -> None:
        assert signal.stop_loss is not None
        self._naked_since.setdefault(symbol, self._clock.monotonic())
        stop_price = signal.stop_loss
        mark = self._book.mark(symbol, self._settings.max_mark_age_s)
        if mark is None:
            mark = await self._exchange.mark_price(symbol)
        crossed = mark <= stop_price if amount > 0 else mark >= stop_price
        if crossed:
            if self._given_up.get(symbol) == signal.id:
                return                          # reported (and flattened if so set) once
            self._given_up[symbol] = signal.id
            with contextlib.suppress(Unprotected):
                await self._protector.unprotected(
                    signal, f"stop-loss missing and the mark {mark} has crossed its price "
                            f"{stop_price}")
            self._clothed(symbol)
            return
        attempt = len([i for i in await self._journal.intents_for(signal.id)
                       if i.leg is Leg.STOP_LOSS])
        intent = new_intent(self._prefix, signal.id, symbol, Leg.STOP_LOSS,
                            signal.type.order_side.opposite, OrderType.STOP_MARKET,
                            price=stop_price, now=self._clock.time(), attempt=attempt)
        try:
            placement = await self._sender.send_algo(
                intent, priority=Priority.CRITICAL,
                deadline=self._clock.time() + PROTECT_DEADLINE_S)
        except (ExchangeError, TimeoutError) as error:
            self._log.critical(AuditEvent.POSITION_UNPROTECTED, symbol=symbol,
                               reason=f"stop-loss missing, repair failed: {error}",
                               action="retrying at the next check")
            return
        naked = self._clothed(symbol)
        self._log.warning(AuditEvent.PROTECTION_REPAIRED, symbol=symbol, signal_id=signal.id,
                          client_order_id=placement.intent.client_id, leg="stop_loss",
                          stop_price=str(stop_price), naked_s=round(naked, 3))

    def _clothed(self, symbol: str) -> float:
        """The symbol has its stop (or needs none): close its naked interval, if any."""
        since = self._naked_since.pop(symbol, None)
        if since is None:
            return 0.0
        naked = self._clock.monotonic() - since
        self.unprotected_seconds += naked
        return naked

    # ------------------------------------------------------------------ reconciliation
    async def reconcile(self, *, full: bool = True, after_connect: bool = False) -> None:
        """Rebuild the book from REST (LOW priority), then check every symbol that has a
        position or live protective orders of execd's.

        ``full``: the positions, open orders and open algo orders of the whole account (85
        weight: at start and every ``reconcile_interval_s``). ``after_connect``: the
        positions and the open algo orders of each symbol where execd has protective orders
        (5 + 1 a symbol: what a drop may have hidden — a stop that fired, one cancelled by
        hand). Else the positions alone (5: the fallback poll)."""
        self._book.begin_sync()
        try:
            positions = await self._exchange.positions(priority=Priority.LOW)
            live = await self._journal.live_protective_all()
            orders = algos = None
            if full:
                orders = await self._exchange.open_orders()
                algos = await self._exchange.open_algo_orders()
            elif after_connect:
                algos = []
                for symbol in sorted({i.symbol for i in live}):
                    algos += await self._exchange.open_algo_orders(symbol)
        except BaseException:
            self._book.abandon_sync()
            raise
        self._book.sync(positions, orders, algos, only=None if full else {
            i.symbol for i in live})
        symbols = {p.symbol for p in positions}
        if self._watch is not None and symbols:
            self._watch(symbols)                # their marks, for status and repairs
        symbols |= {i.symbol for i in live}
        for symbol in sorted(symbols):
            self.schedule(symbol)

    @property
    def streaming(self) -> bool:
        """Whether the user stream is up, so the book follows the account by events."""
        return self._settings.streaming and self.user_connected

    async def run(self) -> None:
        """Reconcile fully now and every ``reconcile_interval_s``, the symbols with execd's
        protective orders after every user-stream (re)connect; while the stream is down (or
        off), poll the positions every ``fallback_poll_s`` in between (every
        ``catch_up_poll_s`` for ``catch_up_s`` after a drop)."""
        last_full = last = -float("inf")
        while True:
            now = self._clock.monotonic()
            due_full = last_full + self._settings.reconcile_interval_s
            due = due_full if self.streaming else min(due_full, last + self._poll_interval(now))
            if due > now and not self._resync.is_set():
                await wait_event(self._resync, self._clock, due - now)
                continue                        # the stream's state may have changed: recompute
            full = self._clock.monotonic() >= due_full
            after_connect = self._resync.is_set() and self.streaming
            self._resync.clear()
            last = self._clock.monotonic()
            if full:
                last_full = last
            try:
                await self.reconcile(full=full, after_connect=after_connect)
            except asyncio.CancelledError:
                raise
            except ExchangeError as error:
                self._log.warning(AuditEvent.API_ERROR, operation="reconcile",
                                  error_class=error.error_class, message=error.message)
            except Exception as error:  # a journal error: reported, the next pass retries
                self._log.error(AuditEvent.API_ERROR, operation="reconcile",
                                error_class=type(error).__name__, message=repr(error))

    def _poll_interval(self, now: float) -> float:
        """Seconds between position polls while the user stream is down (or off)."""
        down = self._down_since
        if down is not None and now - down < self._settings.catch_up_s:
            return min(self._settings.catch_up_poll_s, self._settings.fallback_poll_s)
        return self._settings.fallback_poll_s

    async def aclose(self) -> None:
        await self._reports.aclose()
        tasks = list(self._checks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def naked_seconds_now(self) -> float:
        """Time without a stop so far, including the intervals still open."""
        now = self._clock.monotonic()
        return self.unprotected_seconds + sum(now - t for t in self._naked_since.values())

