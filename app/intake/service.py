"""The one accept path every source uses (SPEC §4.2, §4.3): validate, reserve a place on the bus,
journal durably, then queue.

- A known id returns its record unchanged (HTTP 200), whatever the mark or the clock did
  meanwhile, so a client retrying a POST gets the same answer: the journal's accept finds it in
  its transaction; a body refused by validation or by a full queue is looked up then.
- A malformed body raises ``SignalError`` naming the field and the rule (HTTP 400); so does a
  symbol the exchange does not list as TRADING. Nothing is journaled or queued for it.
- ``QueueFull`` (HTTP 429) is raised before anything is journaled; ``IntakeClosed`` (HTTP 503)
  while starting or stopping; ``JournalBusy`` (HTTP 503) when another process held the journal's
  write lock past its busy timeout: audited once (``journal_busy``), nothing journaled or
  queued; ``JournalFailed`` (HTTP 503) when the journal or its disk failed (full, an I/O error,
  a failed fsync): audited once (``journal_failed``, critical), not acknowledged.
- A signal is journaled (committed) before ``accept`` returns, so an acknowledgement always means
  it survives a crash.

``submit`` is the in-process API for strategies running in the daemon: it waits for a place.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from app.clock import Clock
from app.domain import Signal, SignalError
from app.intake.bus import QueueFull, SignalBus
from app.intake.validate import parse_signal
from app.journal import Journal, JournalBusy, JournalFailed, SignalRecord
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger

__all__ = ["Accepted", "IntakeClosed", "IntakeState", "Service", "audit_journal_trouble"]


def audit_journal_trouble(log: AuditLogger, error: JournalBusy | JournalFailed, *,
                          source: str, journal: Journal) -> None:
    """Audit a journal that refused `source`: ``journal_busy`` (error) for a lock held too
    long, ``journal_failed`` (critical) for the database or the disk failing."""
    busy = isinstance(error, JournalBusy)
    (log.error if busy else log.critical)(
        AuditEvent.JOURNAL_BUSY if busy else AuditEvent.JOURNAL_FAILED, source=source,
        path=str(journal.path), error=str(error))


class IntakeState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


class IntakeClosed(Exception):
    """Intake is not open (still starting, or stopping)."""

    def __init__(self, state: IntakeState) -> None:
        super().__init__(f"intake is {state.value}")
        self.state = state


@dataclass(frozen=True, slots=True)
class Accepted:
    record: SignalRecord
    created: bool


class Service:
    """The one accept path. ``check_symbol(symbol)`` raises `SignalError` (field ``symbol``)
    when the exchange does not list the symbol or it does not trade; ``mark_of(symbol)`` is
    the latest known mark (None: none recent), against which an entry's stop-loss and
    take-profit are checked (SPEC §4.1). The daemon passes both in, so intake needs nothing
    of the exchange (SPEC §3.2)."""

    def __init__(self, journal: Journal, bus: SignalBus, check_symbol: Callable[[str], object],
                 clock: Clock, log: AuditLogger, *, default_ttl_s: float,
                 new_id: Callable[[], str] | None = None,
                 mark_of: Callable[[str], Decimal | None] | None = None) -> None:
        self.journal = journal
        self.bus = bus
        self._check_symbol = check_symbol
        self._mark_of = mark_of
        self._clock = clock
        self._log = log
        self._default_ttl_s = default_ttl_s
        self._new_id = new_id or (lambda: uuid.uuid4().hex)
        self.state = IntakeState.STARTING
        self._opened = asyncio.Event()
        #: Symbols that had a signal accepted in this run (``execd status`` shows them).
        self.symbols: set[str] = set()

    def open(self) -> None:
        self.state = IntakeState.READY
        self._opened.set()

    def close(self) -> None:
        self.state = IntakeState.STOPPING

    async def wait_open(self) -> None:
        """Return once intake has opened (at once if it has, even if it closed since)."""
        await self._opened.wait()

    async def accept(self, data: object, *, source: str, wait: bool = False,
                     offset: tuple[str, int] | None = None) -> Accepted:
        """Accept a decoded JSON body from ``source`` (``http``, ``spool``, ``cli``…).

        ``wait`` waits for a place on the bus instead of raising ``QueueFull``. ``offset`` is
        stored in the same journal transaction (the spool's read position)."""
        if self.state is not IntakeState.READY:
            raise IntakeClosed(self.state)
        self._log.info(AuditEvent.SIGNAL_RECEIVED, source=source)
        try:
            return await self._accept(data, source=source, wait=wait, offset=offset)
        except (JournalBusy, JournalFailed) as refused:
            audit_journal_trouble(self._log, refused, source=source, journal=self.journal)
            raise

    async def _accept(self, data: object, *, source: str, wait: bool,
                      offset: tuple[str, int] | None) -> Accepted:
        """A valid body goes straight to the journal, whose accept finds a known id in the
        same transaction (no read before it: issue 16). A body refused here, or refused a
        place on the bus, may still be a resend of a known signal (expired since, say): that
        is a duplicate, not an error."""
        now = self._clock.time()
        try:
            signal = parse_signal(data, now=now, default_ttl_s=self._default_ttl_s,
                                  new_id=self._new_id)
            self._check_symbol(signal.symbol)
            self._check_sides(signal)
        except SignalError as error:
            if (known := await self._known(data, offset)) is not None:
                return self._duplicate(known, source)
            self._log.warning(AuditEvent.SIGNAL_REJECTED, source=source, field=error.field,
                              detail=error.detail)
            raise
        try:
            return await self._journal_and_queue(signal, source=source, wait=wait,
                                                 offset=offset)
        except QueueFull:
            if (known := await self._known(data, offset)) is not None:
                return self._duplicate(known, source)
            raise

    async def turn_taken(self, signal_id: str) -> None:
        """Return once a signal just accepted has had its turn on the bus (its first order
        handed to the exchange, or its execution over), at once if it waits behind another of
        its symbol, after `bus.TURN_WAIT_S` at most: the HTTP API answers after it (issue 16)."""
        await self.bus.turn_taken(signal_id)

    async def submit(self, signal: Signal) -> SignalRecord:
        """In-process intake: journal and queue ``signal``, waiting for a place if needed.
        A known id returns its existing record. A busy or failed journal is audited and
        raised, as for `accept`."""
        if self.state is not IntakeState.READY:
            raise IntakeClosed(self.state)
        self._check_symbol(signal.symbol)
        self._check_sides(signal)
        source = signal.source or "in-process"
        try:
            return (await self._journal_and_queue(signal, source=source, wait=True,
                                                  offset=None)).record
        except (JournalBusy, JournalFailed) as refused:
            audit_journal_trouble(self._log, refused, source=source, journal=self.journal)
            raise

    def _check_sides(self, signal: Signal) -> None:
        if self._mark_of is not None and signal.type.is_entry and (
                signal.stop_loss is not None or signal.take_profit is not None):
            mark = self._mark_of(signal.symbol)
            if mark is not None:
                signal.check_sides(mark)

    async def _known(self, data: object,
                     offset: tuple[str, int] | None) -> SignalRecord | None:
        """The journaled signal whose id `data` names, or None; known, `offset` is stored."""
        if not isinstance(data, dict):
            return None
        signal_id = data.get("id")
        if not isinstance(signal_id, str) or not 0 < len(signal_id) <= 64:
            return None
        known = await self.journal.get_signal(signal_id)
        if known is not None and offset is not None:
            await self.journal.set_offset(*offset)
        return known

    def _duplicate(self, record: SignalRecord, source: str) -> Accepted:
        self._log.info(AuditEvent.SIGNAL_DUPLICATE, signal_id=record.signal.id,
                       symbol=record.signal.symbol, source=source, state=record.state.value)
        return Accepted(record, created=False)

    async def _journal_and_queue(self, signal: Signal, *, source: str, wait: bool,
                                 offset: tuple[str, int] | None) -> Accepted:
        if wait:
            await self.bus.reserve()
        else:
            self.bus.reserve_nowait()
        pushed = False

        def queue(record: SignalRecord) -> None:
            # Committed, its fsync under way: the lane starts now; the executor's first
            # write to the exchange waits for `Journal.durable` (SPEC §5.6).
            nonlocal pushed
            self._log.info(AuditEvent.SIGNAL_ACCEPTED, signal_id=signal.id,
                           symbol=signal.symbol, source=source, type=signal.type.value,
                           seq=record.seq, expires_at=signal.expires_at)
            self.symbols.add(signal.symbol)
            self.bus.push(record)
            pushed = True

        try:
            record, created = await self.journal.accept(signal, now=self._clock.time(),
                                                        offset=offset, on_commit=queue)
        except BaseException:
            if not pushed:
                self.bus.release()
            raise
        if not created:
            self.bus.release()
            return self._duplicate(record, source)
        return Accepted(record, created=True)
