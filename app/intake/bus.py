"""The bounded signal queue and its per-symbol lanes (SPEC §4.3).

Accepted signals wait in one lane per symbol and run there strictly in acceptance order; lanes
of different symbols run concurrently, at most ``max_concurrency`` signals at a time. The bus
holds at most ``capacity`` signals (waiting or running): a source first *reserves* a place —
``reserve_nowait`` raises ``QueueFull`` for the HTTP API's 429, ``reserve`` waits for the
in-process API and the spool — then journals the signal, then ``push``es it (or ``release``s
the place if the journal says it is a duplicate). Reserving before journaling means a signal
that was refused with 429 was never journaled, so it never runs later by surprise.

A lane's task exists only while the lane has work. A signal whose execution raises is reported
and left to restart recovery; it never stops its lane. ``aclose`` cancels running signals: they
stay ``RUNNING`` in the journal and resume at the next start.

A signal's *turn*: from its lane taking it until its first order is handed to the exchange
(``first_order_out``, called from inside the lane) or its execution ends. `turn_taken` waits for
it, briefly: the HTTP API answers a new signal after its turn (issue 16), so that building and
writing the answer — and the client waking up to read it — does not compete with the signal's
own decision for the event loop and the CPU.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.journal import SignalRecord
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger

__all__ = ["TURN_WAIT_S", "BusSnapshot", "QueueFull", "SignalBus"]

#: How long `turn_taken` waits at most: a decision that takes longer (a REST read, a breaker
#: open) does not hold the answer to its source longer than this.
TURN_WAIT_S = 0.005

#: The signal the current lane task is executing (each lane task has a context of its own).
_RUNNING: contextvars.ContextVar[str | None] = contextvars.ContextVar("execd_running",
                                                                      default=None)


class QueueFull(Exception):
    """No place for another signal now; try again after ``retry_after`` seconds."""

    def __init__(self, capacity: int, retry_after: float) -> None:
        super().__init__(f"the signal queue is full ({capacity} signals waiting or running)")
        self.capacity = capacity
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class BusSnapshot:
    capacity: int
    pending: int
    running: int
    max_concurrency: int
    lanes: dict[str, int]


class SignalBus:
    def __init__(self, execute: Callable[[SignalRecord], Awaitable[object]], *, capacity: int,
                 max_concurrency: int, log: AuditLogger, retry_after_s: float = 1.0) -> None:
        if capacity < 1 or max_concurrency < 1:
            raise ValueError("capacity and max_concurrency must be at least 1")
        self._execute = execute
        self.capacity = capacity
        self.max_concurrency = max_concurrency
        self._log = log
        self._retry_after_s = retry_after_s
        self._slots = asyncio.Semaphore(max_concurrency)
        self._lanes: dict[str, collections.deque[SignalRecord]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reserved = 0
        self._running = 0
        self._executing: set[str] = set()
        #: Executing signals' turns (made when first asked about): done once the first order
        #: is out; the lane forgets a signal's turn when its execution ends.
        self._turns: dict[str, asyncio.Future[None]] = {}
        self._changed = asyncio.Event()   # set whenever a place frees up

    # ------------------------------------------------------------------ places
    @property
    def pending(self) -> int:
        """Signals reserved, waiting or running."""
        return self._reserved

    def reserve_nowait(self) -> None:
        if self._reserved >= self.capacity:
            raise QueueFull(self.capacity, self._retry_after_s)
        self._reserved += 1

    async def reserve(self) -> None:
        while self._reserved >= self.capacity:
            self._changed.clear()
            await self._changed.wait()
        self._reserved += 1

    def release(self) -> None:
        """Give back a place reserved for a signal that will not be pushed."""
        self._reserved -= 1
        self._notify()

    def push(self, record: SignalRecord) -> None:
        """Queue a journaled signal on its symbol's lane (its place reserved before)."""
        symbol = record.signal.symbol
        self._lanes.setdefault(symbol, collections.deque()).append(record)
        if symbol not in self._tasks:
            # A fresh context: what the accepting source bound (a spool line, a request) must
            # not stick to every later signal of the lane.
            self._tasks[symbol] = asyncio.create_task(self._lane(symbol),
                                                      name=f"execd-lane-{symbol}",
                                                      context=contextvars.Context())

    # ------------------------------------------------------------------ lanes
    async def _lane(self, symbol: str) -> None:
        lane = self._lanes[symbol]
        try:
            while lane:
                record = lane[0]
                async with self._slots:
                    self._running += 1
                    self._executing.add(record.signal.id)
                    running = _RUNNING.set(record.signal.id)
                    try:
                        await self._execute(record)
                    except Exception as error:  # report; restart recovery resumes it
                        self._log.error(AuditEvent.SIGNAL_FAILED, signal_id=record.signal.id,
                                        symbol=symbol, state=record.state.value,
                                        reason=f"internal error, resumes at restart: {error!r}")
                    finally:
                        _RUNNING.reset(running)
                        self._running -= 1
                        self._executing.discard(record.signal.id)
                        turn = self._turns.pop(record.signal.id, None)
                        if turn is not None and not turn.done():
                            turn.set_result(None)
                lane.popleft()
                self._reserved -= 1
                self._notify()
        finally:
            del self._tasks[symbol]
            if not lane:
                del self._lanes[symbol]

    def is_executing(self, signal_id: str) -> bool:
        """Whether the executor has the signal now (it may not have sent anything yet)."""
        return signal_id in self._executing

    def first_order_out(self) -> None:
        """From inside a lane: the signal it executes hands its first order to the exchange
        now; its turn is over. Elsewhere (restart recovery runs signals outside the lanes) it
        does nothing."""
        signal_id = _RUNNING.get()
        if signal_id is not None and signal_id in self._executing:
            turn = self._turn(signal_id)
            if not turn.done():
                turn.set_result(None)

    async def turn_taken(self, signal_id: str, within_s: float = TURN_WAIT_S) -> None:
        """Return once the signal has had its turn: its first order handed to the exchange or
        its execution over. At once when it is not executing now (it waits behind another of
        its symbol, or it is done); after `within_s` at most."""
        if signal_id not in self._executing:
            return
        turn = self._turn(signal_id)
        if not turn.done():   # never cancels the turn: others may wait for it
            await asyncio.wait((turn,), timeout=within_s)

    def _turn(self, signal_id: str) -> asyncio.Future[None]:
        turn = self._turns.get(signal_id)
        if turn is None:
            turn = self._turns[signal_id] = asyncio.get_running_loop().create_future()
        return turn

    def withdraw(self, signal_id: str) -> bool:
        """Take a signal out of its lane before it starts (an operator's cancel, journaled
        first); False if it is not waiting behind another one (the head of a lane runs and
        finds itself cancelled in the journal)."""
        for lane in self._lanes.values():
            for index, record in enumerate(lane):
                if index and record.signal.id == signal_id:
                    del lane[index]
                    self._reserved -= 1
                    self._notify()
                    return True
        return False

    def _notify(self) -> None:
        self._changed.set()

    # ------------------------------------------------------------------ shutdown
    async def drain(self, within_s: float) -> bool:
        """Wait until every queued signal finished, at most ``within_s``; True if it did."""
        async def idle() -> None:
            while self._reserved > 0:
                self._changed.clear()
                await self._changed.wait()
        try:
            await asyncio.wait_for(idle(), within_s)
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Cancel the lanes; signals still queued or running stay in the journal."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def snapshot(self) -> BusSnapshot:
        return BusSnapshot(capacity=self.capacity, pending=self._reserved, running=self._running,
                           max_concurrency=self.max_concurrency,
                           lanes={s: len(q) for s, q in self._lanes.items()})
