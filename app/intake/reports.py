"""Execution reports (SPEC §4.2 item 5): every signal state change, published over NATS.

Each report goes to ``{reports_subject}.{symbol}`` with the body of ``GET /v1/signals/{id}``
(`signal_view`) plus ``"ts"`` (the change's time, epoch seconds) and the header
``Nats-Msg-Id: {id}:{state}``, so a stream that keeps reports drops a report published twice.

- **Never blocks a lane.** The journal calls `ReportPublisher.on_change` after each committed
  change; it only appends to a bounded buffer. One task (`run`) publishes from it. A repeat of
  the state last reported for a signal (``RUNNING`` again while an outcome is unknown) is not
  a change and is skipped.
- **Drops.** With the buffer full a report is dropped: counted, audited (``report_dropped``,
  once per run of drops), and the signals changed since the first one dropped are reported
  again (each in its current state: a state in between may be missed) once the buffer is
  empty.
- **Restarts.** What reached the server is known by a flush after each batch; the time of the
  last change flushed is kept in the journal (at most once a second). At start every signal
  that changed since then (less `REPLAY_MARGIN_S`, for changes committed out of time order) is
  reported again in its current state, so a ``kill -9`` loses no final report. Reports of
  signals rejected before the journal (a body that is not a signal) are not journaled and not
  replayed.
- **While NATS is away** reports wait in the buffer (it fills, then drops as above).
- **While the journal fails** (busy, a full disk: its reads for a report, its writes of the
  mark) the task waits `JOURNAL_RETRY_S` and tries again, audited (``journal_busy`` /
  ``journal_failed``, ``source="nats-reports"``) once per run of failures; a report already
  flushed is not sent again, one not yet flushed is (its ``Nats-Msg-Id`` keeps a stream from
  holding it twice). The mark written at shutdown is best effort: missed, the next start
  replays a little more.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import orjson

from app.clock import Clock
from app.domain import Intent, SignalState
from app.intake.nats import still_running
from app.intake.service import audit_journal_trouble
from app.journal import Journal, JournalBusy, JournalFailed, SignalRecord
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger

__all__ = ["JOURNAL_RETRY_S", "REPLAY_MARGIN_S", "ReportLink", "ReportPublisher",
           "report_subject", "signal_view"]

#: Changes this much older than the last one flushed are replayed too (seconds).
REPLAY_MARGIN_S: Final = 10.0
#: The least time between two writes of the flushed mark to the journal (seconds).
MARK_EVERY_S: Final = 1.0
#: At most this many reports per publish-and-flush round.
BATCH: Final = 256
#: The pause after a failed publish before the next try, connected again (seconds).
RETRY_S: Final = 0.2
#: The pause after a journal that failed (busy, a full disk) before the next try (seconds).
JOURNAL_RETRY_S: Final = 5.0
#: The ``source`` of its journal trouble in the audit log.
SOURCE: Final = "nats-reports"
#: The subject token of a report whose body named no usable symbol.
NO_SYMBOL: Final = "_"
_SYMBOL_TOKEN = re.compile(r"[A-Z0-9]{1,32}")


class ReportLink(Protocol):
    """Where reports go: the NATS source's connection (`app.intake.nats.NatsSource`)."""

    async def wait_connected(self) -> None: ...

    async def publish(self, subject: str, payload: bytes, headers: Mapping[str, str]) -> None: ...

    async def flush(self) -> None: ...


def signal_view(record: SignalRecord, intents: list[Intent]) -> dict[str, object]:
    """The body of ``GET /v1/signals/{id}`` (and of a duplicate POST, and of a report)."""
    signal = record.signal
    return {
        "id": signal.id, "symbol": signal.symbol, "type": signal.type.value,
        "state": record.state.value, "reason": record.reason,
        "intents": [{"leg": i.leg.value, "client_id": i.client_id, "state": i.state.value,
                     "exchange_id": i.exchange_id} for i in intents],
    }


def report_subject(prefix: str, symbol: object) -> str:
    """``{prefix}.{symbol}``; a symbol that cannot be a subject token becomes ``_``."""
    token = symbol if isinstance(symbol, str) and _SYMBOL_TOKEN.fullmatch(symbol) else NO_SYMBOL
    return f"{prefix}.{token}"


@dataclass(frozen=True, slots=True)
class _Report:
    record: SignalRecord | None  # a journaled change (its intents read when published)
    body: dict[str, object] | None  # or a ready body (a rejection before the journal)


class ReportPublisher:
    """Publishes reports under `subject` (``reports_subject``) from a buffer of `capacity`."""

    def __init__(self, journal: Journal, clock: Clock, log: AuditLogger, *, subject: str,
                 capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._journal = journal
        self._clock = clock
        self._log = log
        self.subject = subject
        self.capacity = capacity
        self._mark_name = f"reports:{subject}"
        self._buffer: collections.deque[_Report] = collections.deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()   # set while nothing waits to be published
        self._last: dict[str, SignalState] = {}   # non-terminal signals: state last queued
        self._gap_since: float | None = None       # earliest change dropped, not yet replayed
        self._flushed_at = 0.0                     # latest change known to be on the server
        self._marked = (0.0, -MARK_EVERY_S)        # (mark stored, when: monotonic)
        self.published = 0
        self.dropped = 0
        self.replayed = 0

    def __repr__(self) -> str:
        return (f"<ReportPublisher {self.subject}.> buffered={len(self._buffer)} "
                f"published={self.published} dropped={self.dropped}>")

    # ------------------------------------------------------------------ producers
    def on_change(self, record: SignalRecord) -> None:
        """The journal's listener: queue a report of `record`'s new state (non-blocking)."""
        signal_id, state = record.signal.id, record.state
        if self._last.get(signal_id) is state:
            return
        if state.is_terminal:
            self._last.pop(signal_id, None)
        else:
            self._last[signal_id] = state
        self._put(_Report(record, None), record.updated_at)

    def rejected(self, signal_id: str, data: Mapping[str, object] | None, reason: str) -> None:
        """Queue a ``REJECTED`` report for a message refused before the journal (not a
        signal); `data` is its decoded body, when it was a JSON object."""
        body = data or {}
        symbol, kind = body.get("symbol"), body.get("type")
        self._put(_Report(None, {"id": signal_id,
                                 "symbol": symbol if isinstance(symbol, str) else None,
                                 "type": kind if isinstance(kind, str) else None,
                                 "state": SignalState.REJECTED.value, "reason": reason,
                                 "intents": [], "ts": round(self._clock.time(), 3)}), None)

    def _put(self, report: _Report, changed_at: float | None) -> None:
        if len(self._buffer) >= self.capacity:
            self.dropped += 1
            if changed_at is not None and (self._gap_since is None
                                           or changed_at < self._gap_since):
                first = self._gap_since is None
                self._gap_since = changed_at
                if first:
                    self._log.warning(AuditEvent.REPORT_DROPPED, capacity=self.capacity,
                                      dropped_total=self.dropped,
                                      action="published again from the journal once there "
                                             "is room")
            elif changed_at is None:
                self._log.warning(AuditEvent.REPORT_DROPPED, capacity=self.capacity,
                                  dropped_total=self.dropped, action="lost (not journaled)")
            return
        self._buffer.append(report)
        self._idle.clear()
        self._ready.set()

    # ------------------------------------------------------------------ the publishing task
    async def run(self, link: ReportLink) -> None:
        """Replay what the last run may not have published, then publish until cancelled;
        a failing journal is waited out (module docstring)."""
        started, failing = False, False
        while True:
            still_running()
            try:
                if not started:
                    await self._start()
                    started, failing = True, False
                await self._round(link)
                failing = False
            except (JournalBusy, JournalFailed) as error:
                if not failing:
                    failing = True
                    audit_journal_trouble(self._log, error, source=SOURCE,
                                          journal=self._journal)
                await self._clock.sleep(JOURNAL_RETRY_S)

    async def _start(self) -> None:
        stored = await self._journal.get_offset(self._mark_name)
        if stored is None:   # the first run with reports: nothing published before
            self._flushed_at = self._clock.time()
            await self._store_mark(force=True)
        else:
            self._flushed_at = stored / 1000
            await self._replay(self._flushed_at - REPLAY_MARGIN_S)

    async def _round(self, link: ReportLink) -> None:
        """Publish one batch, or replay a gap, or wait for reports."""
        if not self._buffer:
            if self._gap_since is not None:   # from the first dropped: progress each time
                await self._replay(self._gap_since)
                return
            self._ready.clear()
            self._idle.set()
            await self._ready.wait()
            return
        await link.wait_connected()
        try:
            await self._publish_batch(link)
        except ConnectionError:   # the batch stays in the buffer, sent again
            await self._clock.sleep(RETRY_S)

    async def _publish_batch(self, link: ReportLink) -> None:
        batch = [self._buffer[i] for i in range(min(BATCH, len(self._buffer)))]
        latest = self._flushed_at
        for report in batch:
            still_running()
            subject, payload, msg_id, changed_at = await self._render(report)
            await link.publish(subject, payload, {"Nats-Msg-Id": msg_id})
            latest = max(latest, changed_at)
        await link.flush()   # raises if the connection went: the batch stays, sent again
        for _ in batch:
            self._buffer.popleft()
        self.published += len(batch)
        self._flushed_at = latest
        await self._store_mark()

    async def _render(self, report: _Report) -> tuple[str, bytes, str, float]:
        if report.record is None:
            assert report.body is not None
            body = report.body
            changed_at = 0.0
        else:
            record = report.record
            intents = ([] if record.state is SignalState.ACCEPTED
                       else await self._journal.intents_for(record.signal.id))
            body = signal_view(record, intents) | {"ts": round(record.updated_at, 3)}
            changed_at = record.updated_at
        payload = orjson.dumps(body)
        return (report_subject(self.subject, body["symbol"]), payload,
                f"{body['id']}:{body['state']}", changed_at)

    async def _replay(self, since: float) -> None:
        """Queue every signal changed since `since` in its current state."""
        records = await self._journal.signals_updated_since(since)
        self._gap_since = None    # after the read: a failed one leaves the gap to replay
        for record in records:
            self._put(_Report(record, None), record.updated_at)
        self.replayed += len(records)

    async def _store_mark(self, *, force: bool = False) -> None:
        now = self._clock.monotonic()
        mark = self._flushed_at
        if self._gap_since is not None:   # never past a change dropped and not yet replayed
            mark = min(mark, self._gap_since)
        if mark > self._marked[0] and (force or now - self._marked[1] >= MARK_EVERY_S):
            await self._journal.set_offset(self._mark_name, int(mark * 1000))
            self._marked = (mark, now)

    async def drain(self, within_s: float) -> bool:
        """Wait at most `within_s` for every buffered report to be on the server, and keep
        the mark of what was (shutdown); True if nothing is left."""
        try:
            async with asyncio.timeout(within_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        finally:
            try:
                await self._store_mark(force=True)
            except (JournalBusy, JournalFailed) as error:   # the next start replays more
                audit_journal_trouble(self._log, error, source=SOURCE, journal=self._journal)
        return True

    def statistics(self) -> dict[str, object]:
        return {"buffered": len(self._buffer), "capacity": self.capacity,
                "published": self.published, "dropped": self.dropped,
                "replayed": self.replayed}


