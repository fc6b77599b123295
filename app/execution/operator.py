"""The operator's hand on the wheel (SPEC §5.10, §11): set the trading state, flatten
positions, take back a queued signal.

- **Trading state**: `RiskGate.set_state`, journaled before it applies.
- **Flatten** works in every trading state and never waits in a signal lane. For each symbol,
  holding its protection lock (so neither the executor nor the guard acts on it meanwhile):
  execd's live stop-loss and take-profit orders are cancelled, then the position is closed
  with reduce-only MARKET orders at ``CRITICAL`` priority through the exactly-once sender. The
  close belongs to an operator signal journaled first (id ``flatten-<SYMBOL>-<ms>``, source
  ``operator``), so its client ids are deterministic and a crash mid-flatten is resumed by
  restart recovery like any close. A second flatten finds the symbol flat (the lock orders
  the two): exactly one close per position.
- **Cancel**: a signal still waiting in its lane becomes ``CANCELED`` (one journal
  transaction, then it is taken out of the lane); one the executor has is refused as
  ``RUNNING`` even before its first order turns it ``RUNNING`` in the journal. Should the
  executor take it up between the two, its first intent write finds it cancelled
  (`SignalEnded`) and nothing is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Protocol

from structlog.contextvars import bound_contextvars

from app.clock import Clock
from app.domain import (
    Signal,
    SignalError,
    SignalState,
    SignalType,
    StateChange,
    TradingState,
    format_timestamp,
)
from app.exchange.symbols import SymbolRules, UnknownSymbol
from app.execution.executor import OPERATOR_SOURCE
from app.execution.guard import AccountReads
from app.execution.ports import ExchangePort
from app.execution.protect import ALREADY_FLAT, FLATTENED, PROTECT_DEADLINE_S, Protector
from app.execution.risk import RiskGate
from app.journal import Journal, SignalRecord
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger
from app.resilience.breaker import BreakerStats, CircuitBreaker
from app.resilience.limiter import Priority

__all__ = ["OPERATOR_SOURCE", "FlattenResult", "NotCancelable", "Operator"]


class QueueView(Protocol):
    """The signal bus, as a cancel sees it."""

    def is_executing(self, signal_id: str) -> bool: ...

    def withdraw(self, signal_id: str) -> bool: ...


class NotCancelable(Exception):
    """The signal already started or ended; `record` is where it stands."""

    def __init__(self, record: SignalRecord) -> None:
        super().__init__(f"signal {record.signal.id!r} is {record.state.value}")
        self.record = record


@dataclass(frozen=True, slots=True)
class FlattenResult:
    symbol: str
    closed_qty: Decimal
    cancelled: int
    state: str           # FLATTENED, ALREADY_FLAT or FAILED

    def view(self) -> dict[str, object]:
        return {"symbol": self.symbol, "closed_qty": self.closed_qty,
                "cancelled": self.cancelled, "state": self.state}


class Operator:
    def __init__(self, risk: RiskGate, journal: Journal, exchange: ExchangePort,
                 account: AccountReads, protector: Protector,
                 rules: Callable[[str], SymbolRules], clock: Clock, log: AuditLogger, *,
                 breakers: Mapping[str, CircuitBreaker] | None = None,
                 queue: QueueView | None = None) -> None:
        self._queue = queue
        self._breakers = dict(breakers or {})
        self._rules = rules
        self._risk = risk
        self._journal = journal
        self._exchange = exchange
        self._account = account
        self._protector = protector
        self._clock = clock
        self._log = log

    # ------------------------------------------------------------------ trading state
    async def set_trading_state(self, state: TradingState, reason: str) -> StateChange:
        return await self._risk.set_state(state, reason, by="operator")

    # ------------------------------------------------------------------ breakers
    def reset_breaker(self, group: str) -> dict[str, object]:
        """Close the breaker of ``group`` (KeyError for an unknown one); its statistics."""
        breaker = self._breakers[group]
        previous = breaker.reset()
        self._log.warning(AuditEvent.BREAKER_CLOSED, group=group, previous=previous.name.lower(),
                          reason="operator", consecutive_opens=0)
        return breaker_view(breaker.statistics())

    def breaker_groups(self) -> list[str]:
        return sorted(self._breakers)

    # ------------------------------------------------------------------ cancel
    async def cancel(self, signal_id: str) -> SignalRecord:
        """``ACCEPTED`` → ``CANCELED``; a signal already cancelled is returned as it is (a
        retried cancel succeeds again). Raises ``KeyError`` (unknown id) or `NotCancelable`."""
        known = await self._journal.get_signal(signal_id)
        if known is None:
            raise KeyError(signal_id)
        if known.state is SignalState.CANCELED:
            return known
        if self._queue is not None and self._queue.is_executing(signal_id):
            # the executor has it (its journal state turns RUNNING with its first order)
            raise NotCancelable(replace(known, state=SignalState.RUNNING))
        record = await self._journal.set_signal_state(
            signal_id, SignalState.CANCELED, reason="cancelled by the operator",
            now=self._clock.time(), expect=SignalState.ACCEPTED)
        if record.state is not SignalState.CANCELED:
            raise NotCancelable(record)
        if self._queue is not None:
            self._queue.withdraw(signal_id)
        self._log.warning(AuditEvent.SIGNAL_CANCELLED, signal_id=signal_id,
                          symbol=record.signal.symbol, state=record.state.value,
                          reason=record.reason)
        return record

    # ------------------------------------------------------------------ flatten
    async def open_symbols(self) -> list[str]:
        """Every symbol with a position on the account or a live protective order of ours."""
        held = {p.symbol for p in await self._account.positions(priority=Priority.CRITICAL)}
        held.update(i.symbol for i in await self._journal.live_protective_all())
        return sorted(held)

    async def flatten(self, symbols: Iterable[str]) -> list[FlattenResult]:
        """Flatten each symbol in turn (see the module docstring); one result per symbol.
        Every symbol is checked first: one the exchange does not list raises `SignalError`
        (field ``symbols``) and nothing is done."""
        wanted = list(dict.fromkeys(symbols))
        for symbol in wanted:
            try:
                self._rules(symbol)
            except UnknownSymbol:
                raise SignalError("symbols", f"{symbol} is not a symbol of this exchange"
                                  ) from None
        return [await self._flatten_one(symbol) for symbol in wanted]

    async def _flatten_one(self, symbol: str) -> FlattenResult:
        with bound_contextvars(symbol=symbol):
            async with self._protector.holding(symbol):
                cancelled = await self._protector.cancel_protective(
                    symbol, reason="operator flatten")
                position = await self._exchange.get_position(symbol,
                                                            priority=Priority.CRITICAL)
                if position is None:
                    self._log.info(AuditEvent.POSITION_FLATTENED, by="operator", amount="0",
                                   cancelled=cancelled, note="already flat")
                    return FlattenResult(symbol, Decimal(0), cancelled, "ALREADY_FLAT")
                record = await self._operator_signal(symbol, position.amount)
                with bound_contextvars(signal_id=record.signal.id):
                    outcome = await self._protector.flatten(record.signal)
                state = {FLATTENED: "FLATTENED", ALREADY_FLAT: "ALREADY_FLAT"}.get(
                    outcome or "", "FAILED")
                closed = abs(position.amount) if outcome == FLATTENED else Decimal(0)
                final = SignalState.DONE if outcome is not None else SignalState.FAILED
                reason = (f"operator flatten: closed {closed} {symbol}" if outcome is not None
                          else f"operator flatten: {symbol} still open, see the audit log")
                await self._journal.set_signal_state(record.signal.id, final, reason=reason,
                                                     now=self._clock.time())
                level = self._log.warning if outcome is not None else self._log.critical
                level(AuditEvent.POSITION_FLATTENED, by="operator", amount=str(position.amount),
                      closed=str(closed), cancelled=cancelled, state=state,
                      signal_id=record.signal.id)
                return FlattenResult(symbol, closed, cancelled, state)

    async def _operator_signal(self, symbol: str, amount: Decimal) -> SignalRecord:
        """The journaled operator signal that owns the flatten's close orders (RUNNING)."""
        now = self._clock.time()
        millis = int(now * 1000)
        while True:                  # a flatten of the same symbol within the same ms: next
            signal = Signal(id=f"flatten-{symbol}-{millis}", symbol=symbol,
                            type=SignalType.CLOSE_LONG if amount > 0 else SignalType.CLOSE_SHORT,
                            quantity=None, take_profit=None, stop_loss=None, leverage=None,
                            margin_type=None, expires_at=now + PROTECT_DEADLINE_S,
                            source=OPERATOR_SOURCE, received_at=now)
            _, created = await self._journal.accept(signal, now=now)
            if created:
                return await self._journal.set_signal_state(signal.id, SignalState.RUNNING,
                                                            reason="operator flatten", now=now)
            millis += 1


def breaker_view(stats: BreakerStats) -> dict[str, object]:
    """A breaker's statistics as status and the reset route show them."""
    return {"state": stats.state.name.lower(), "retry_after": round(stats.retry_after, 3),
            "calls": stats.calls, "failures": stats.failures, "rejected": stats.rejected,
            "opens": stats.opens, "consecutive_opens": stats.consecutive_opens,
            "last_opened": (None if stats.last_opened is None
                            else format_timestamp(stats.last_opened))}
