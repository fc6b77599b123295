"""The risk gate and the trading state (SPEC §5.10).

The gate runs in the executor before any order of an entry, after the symbol's rules and the
mark are known; a refusal is a `SignalError` on the ``risk`` field that names the rule and the
numbers (``max_order_notional: 12000.50 > 10000``), so the signal ends ``REJECTED`` before
anything is sent. Closes pass the gate except while ``HALTED``; protective orders, cancels and
operator flattens never meet it (a position execd opened keeps its stop whatever the state).

Limits (``[risk]``, 0 = off):

- ``max_order_notional``: quantity × mark of the entry;
- ``max_position_notional``: the symbol's position after the entry, × mark;
- ``max_open_positions``: non-zero positions on the account, counting the entry's symbol;
- ``max_orders_per_minute``: execd's own orders (entries, closes, protective orders, flattens)
  in the last 60 s, the entry included — a cap below the exchange's;
- ``max_leverage``: the leverage the signal asks for;
- ``max_daily_loss``: realized PnL minus USDT commissions since 00:00 UTC, from the journaled
  fills. The fill that reaches it switches the state to ``REDUCING`` with an alert.

The trading state (``ACTIVE``, ``REDUCING``, ``HALTED``) is kept by a `TradingStateStore` (the
journal), restored at start and audited on every change (``trading_state_changed`` with the
reason and who changed it). Two `AuthError`s in a row (the key refused) halt trading with an
alert: nothing signed can work until an operator fixes the key and resumes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from app.clock import Clock
from app.domain import Signal, SignalError, StateChange, TradingState
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger

__all__ = ["RiskGate", "RiskLimits", "StateChange", "TradingState", "TradingStateStore"]

#: The window of ``max_orders_per_minute``.
ORDER_WINDOW_S = 60.0
#: Consecutive key refusals that halt trading.
AUTH_FAILURES_TO_HALT = 2
#: Commission assets counted in the daily loss (USDⓈ-M margin).
_LOSS_ASSETS = frozenset({"USDT", ""})


class TradingStateStore(Protocol):
    async def load_trading_state(self) -> StateChange | None: ...
    async def save_trading_state(self, change: StateChange) -> None: ...


@dataclass(frozen=True, slots=True)
class RiskLimits:
    """The ``[risk]`` section; 0 turns a limit off."""

    max_order_notional: Decimal = Decimal(0)
    max_position_notional: Decimal = Decimal(0)
    max_open_positions: int = 0
    max_orders_per_minute: int = 0
    max_leverage: int = 0
    max_daily_loss: Decimal = Decimal(0)


def _refuse(rule: str, detail: str) -> SignalError:
    return SignalError("risk", f"{rule}: {detail}")


class RiskGate:
    """``positions`` returns the account's non-zero positions by symbol (signed amounts),
    from the live book; the composition root passes it in."""

    def __init__(self, limits: RiskLimits, store: TradingStateStore, clock: Clock,
                 log: AuditLogger, *, positions: Callable[[], Mapping[str, Decimal]]) -> None:
        self.limits = limits
        self._store = store
        self._clock = clock
        self._log = log
        self._positions = positions
        self._change = StateChange(TradingState.ACTIVE, "default", clock.time(), "default")
        self._orders: deque[float] = deque()
        self._auth_failures = 0
        self._daily_loss = Decimal(0)
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ trading state
    @property
    def state(self) -> TradingState:
        return self._change.state

    @property
    def change(self) -> StateChange:
        return self._change

    async def restore(self) -> None:
        """The journaled state (at start, before any signal runs)."""
        saved = await self._store.load_trading_state()
        if saved is not None:
            self._change = saved
        self._log.info(AuditEvent.TRADING_STATE_CHANGED, state=self.state.value,
                       previous=None, reason=self._change.reason, by="restored",
                       since=self._change.since)

    async def set_state(self, state: TradingState, reason: str, *, by: str) -> StateChange:
        """Journal, then apply and audit; setting the current state again only updates the
        reason. Raises what the journal raises (nothing changes then)."""
        change = StateChange(state, reason, self._clock.time(), by)
        await self._store.save_trading_state(change)
        previous, self._change = self._change.state, change
        self._log.warning(AuditEvent.TRADING_STATE_CHANGED, state=state.value,
                          previous=previous.value, reason=reason, by=by)
        if state is TradingState.ACTIVE:
            self._auth_failures = 0
        return change

    # ------------------------------------------------------------------ the gate
    def check_entry(self, signal: Signal, quantity: Decimal, mark: Decimal) -> None:
        """Refuse an entry that breaks the trading state or a limit; quantity is already
        rounded to the symbol's step."""
        self.check_state(entry=True)
        limits = self.limits
        notional = quantity * mark
        if limits.max_order_notional and notional > limits.max_order_notional:
            raise _refuse("max_order_notional",
                          f"{_money(notional)} > {limits.max_order_notional}")
        positions = self._positions()
        held = positions.get(signal.symbol, Decimal(0))
        after = held + quantity * signal.type.position_sign
        if limits.max_position_notional and abs(after) * mark > limits.max_position_notional:
            raise _refuse("max_position_notional",
                          f"{signal.symbol} {_money(abs(after) * mark)} > "
                          f"{limits.max_position_notional}")
        if limits.max_open_positions and not held:
            open_now = sum(1 for amount in positions.values() if amount)
            if open_now + 1 > limits.max_open_positions:
                raise _refuse("max_open_positions",
                              f"{open_now + 1} > {limits.max_open_positions}")
        if limits.max_leverage and signal.leverage and signal.leverage > limits.max_leverage:
            raise _refuse("max_leverage", f"{signal.leverage} > {limits.max_leverage}")
        if limits.max_orders_per_minute:
            sent = self._orders_in_window()
            if sent + 1 > limits.max_orders_per_minute:
                raise _refuse("max_orders_per_minute",
                              f"{sent + 1} > {limits.max_orders_per_minute}")

    def check_close(self) -> None:
        """A close runs unless trading is halted."""
        self.check_state(entry=False)

    def check_state(self, *, entry: bool) -> None:
        """The trading state alone: the executor asks first, before it reads anything."""
        state = self.state
        if state is TradingState.HALTED or (entry and state is TradingState.REDUCING):
            raise _refuse("trading state", f"{state.value} ({self._change.reason})")

    # ------------------------------------------------------------------ what it watches
    def order_sent(self) -> None:
        """One of execd's own orders left (any leg): counted for ``max_orders_per_minute``."""
        self._orders.append(self._clock.monotonic())

    def orders_last_minute(self) -> int:
        return self._orders_in_window()

    def _orders_in_window(self) -> int:
        cutoff = self._clock.monotonic() - ORDER_WINDOW_S
        while self._orders and self._orders[0] <= cutoff:
            self._orders.popleft()
        return len(self._orders)

    def auth_result(self, refused: bool) -> None:
        """A signed call's outcome (the gateway reports each): the key refused twice in a row
        halts trading at once; the journal write follows in the background."""
        if not refused:
            self._auth_failures = 0
            return
        self._auth_failures += 1
        if (self._auth_failures >= AUTH_FAILURES_TO_HALT
                and self.state is not TradingState.HALTED):
            self._switch(TradingState.HALTED,
                         f"API key refused {self._auth_failures} times in a row (check the "
                         f"key's permissions and IP whitelist)")

    def _switch(self, state: TradingState, reason: str) -> None:
        """A kill switch: applied now (safety first), journaled by a task; a journal that
        fails is logged and the state still holds until the process ends."""
        change = StateChange(state, reason, self._clock.time(), "kill switch")
        previous, self._change = self._change.state, change
        self._log.critical(AuditEvent.TRADING_STATE_CHANGED, state=state.value,
                           previous=previous.value, reason=reason, by=change.by)

        async def save() -> None:
            try:
                await self._store.save_trading_state(change)
            except Exception as error:
                self._log.error(AuditEvent.TRADING_STATE_CHANGED, state=state.value,
                                reason=reason, by=change.by,
                                error=f"not journaled: {error!r}")

        task = asyncio.get_running_loop().create_task(save())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Let a kill switch's journal write finish."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def daily_result(self, realized_pnl: Decimal, commissions: Mapping[str, Decimal], *,
                     at_start: bool = False) -> None:
        """Today's realized PnL and commissions by asset, after each journaled fill: a fill
        that adds to a loss at or past ``max_daily_loss`` switches an ACTIVE state to
        REDUCING (so after an operator's resume, the next losing fill switches it again).
        ``at_start`` only loads the figure."""
        paid = sum((v for asset, v in commissions.items() if asset in _LOSS_ASSETS),
                   Decimal(0))
        previous, self._daily_loss = self._daily_loss, paid - realized_pnl
        limit = self.limits.max_daily_loss
        if (limit and not at_start and self._daily_loss >= limit
                and self._daily_loss > previous and self.state is TradingState.ACTIVE):
            self._switch(TradingState.REDUCING,
                         f"max_daily_loss: {_money(self._daily_loss)} >= {limit}")

    @property
    def daily_loss(self) -> Decimal:
        return self._daily_loss

    def snapshot(self) -> dict[str, object]:
        """For status: the state, the limits in force and where the counters stand."""
        limits = self.limits
        return {**self._change.view(),
                "daily_loss": _money(self._daily_loss),
                "orders_last_minute": self._orders_in_window(),
                "limits": {"max_order_notional": str(limits.max_order_notional),
                           "max_position_notional": str(limits.max_position_notional),
                           "max_open_positions": limits.max_open_positions,
                           "max_orders_per_minute": limits.max_orders_per_minute,
                           "max_leverage": limits.max_leverage,
                           "max_daily_loss": str(limits.max_daily_loss)}}

    def __repr__(self) -> str:
        return f"RiskGate(state={self.state.value}, limits={self.limits})"


def _money(value: Decimal) -> str:
    """Two decimals, as an operator reads USDT."""
    return str(value.quantize(Decimal("0.01")))
