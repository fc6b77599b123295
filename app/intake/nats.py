"""The NATS JetStream source (SPEC §4.2 item 5): signals from strategies on other machines.

Every message goes through `Service.accept` with ``source="nats"``. A pulled batch is split by
symbol: one symbol's messages are accepted one at a time in stream order, so its signals run in
the order they were published (a ``nak`` below excepted: the message comes back after its
delay, and the rest of its symbol's batch with it); different symbols' accepts overlap, as
concurrent HTTP requests do.

- **Stream and consumer.** Once connected: the stream ``stream`` is created when absent
  (subjects ``subject`` and ``subject.>``, file storage, a 120 s duplicate window) and never
  changed when present; a stream that does not capture ``subject`` is unusable (audited,
  retried). The durable pull consumer ``durable`` (explicit ack, filtered to the two subjects)
  is created when absent; an existing one is used as it is.
- **Ids.** The body's ``id`` wins; else the ``Nats-Msg-Id`` header; else
  ``nats-{stream}-{stream sequence}``, the same on every redelivery.
- **Acks.** ``ack`` only once the journal accepted the signal or found it a duplicate (a crash
  before the ack means a redelivery, which the journal makes a duplicate). An invalid body:
  ``term``, ``signal_rejected`` and a ``REJECTED`` report. Queue full, journal busy or failed
  (a full disk, say), or intake closed: ``nak`` with a delay (``nak_delay_s``, or the queue's
  retry-after if longer), with the rest of the batch, and a pause of that delay before the next
  pull. Messages of a batch still waiting get ``in_progress`` every third of the consumer's ack
  wait.
- **Connection.** Lost or refused: ``source_disconnected``, then a new connection after a
  backoff (`RECONNECT_S`, doubling), forever; ``source_connected`` once the stream and the
  consumer are ready. Nothing else in the daemon waits for it. URLs are audited without their
  user info (a password never reaches the log).

The connection also carries the execution reports (`ReportLink`: `publish`, `flush`,
`wait_connected`; `app.intake.reports`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from structlog.contextvars import bound_contextvars

from app.clock import Clock
from app.domain import SignalError
from app.intake.bus import QueueFull
from app.intake.service import IntakeClosed, IntakeState, Service
from app.intake.validate import decode_object
from app.journal import JournalBusy, JournalFailed
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger

__all__ = ["DUPLICATE_WINDOW_S", "MAX_BODY_BYTES", "NatsSettings", "NatsSource",
           "public_url", "still_running", "subject_covers"]

#: The stream's duplicate window when execd creates it (seconds).
DUPLICATE_WINDOW_S: Final = 120.0
#: The largest body taken, as the control API and the spool (bytes).
MAX_BODY_BYTES: Final = 65_536
#: Reconnect backoff: first and longest pause (seconds).
RECONNECT_S: Final = (0.2, 30.0)
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: What a lost or refused connection raises in nats-py (and the sockets under it).
_LINK_ERRORS: Final = (nats.errors.Error, OSError, TimeoutError, ConnectionError)

def still_running() -> None:
    """Raise ``CancelledError`` if this task was cancelled. nats-py swallows a cancellation
    that lands inside some of its awaits (``Client._send_command``: ``except
    asyncio.CancelledError: pass``), so every loop that calls it checks here: a lost
    cancellation would hang the daemon's shutdown on this task."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


#: (signal id, decoded body or None, reason): a REJECTED report to publish.
OnRejected = Callable[[str, Mapping[str, object] | None, str], None]


class _Unusable(Exception):
    """The stream or consumer cannot be used as configured (retried after the longest pause)."""


class _Stopping(Exception):
    """Intake closed for shutdown: the source ends."""


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """``[intake.nats]`` as the source uses it. Times are seconds."""

    url: str
    stream: str = "EXECD"
    subject: str = "execd.signals"
    durable: str = "execd"
    fetch_batch: int = 100
    ack_wait_s: float = 30.0
    nak_delay_s: float = 1.0
    #: How long one pull waits for messages.
    fetch_wait_s: float = 1.0
    connect_timeout_s: float = 5.0


def public_url(url: str) -> str:
    """`url` without user info (``nats://user:pw@h:4222`` → ``nats://h:4222``), per server."""
    return ",".join(re.sub(r"(?<=://)[^@/]*@", "", part) for part in url.split(","))


def subject_covers(pattern: str, subject: str) -> bool:
    """Whether every subject `subject` matches (it may end in ``>``) is matched by `pattern`
    (NATS wildcards ``*`` and ``>``)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return i < len(have)
        if i >= len(have) or have[i] == ">" or token not in ("*", have[i]):
            return False
    return len(want) == len(have)


class NatsSource:
    """Feeds the messages of a JetStream pull consumer to `service` (module docstring).

    `on_rejected(id, body, reason)` is told each message refused as invalid, for its
    ``REJECTED`` report. `run()` runs until cancelled; it pulls once intake has opened and
    stops pulling when intake closes for shutdown, keeping the connection for the reports.
    """

    def __init__(self, settings: NatsSettings, service: Service, clock: Clock,
                 log: AuditLogger, *, on_rejected: OnRejected | None = None) -> None:
        self.settings = settings
        self._service = service
        self._clock = clock
        self._log = log
        self._on_rejected = on_rejected
        self._subjects = [settings.subject, f"{settings.subject}.>"]
        self._nc: Client | None = None
        self._up = asyncio.Event()
        self.state = "connecting"
        self._error: str | None = None       # the last error audited while down
        self._waiting: dict[int, Msg] = {}    # the batch's messages not yet answered, by id()
        self._batch_at = 0.0
        self._lag: int | None = None
        self._last_at: float | None = None
        self.counts = {"received": 0, "accepted": 0, "duplicates": 0, "rejected": 0, "naks": 0,
                       "connects": 0}

    def __repr__(self) -> str:
        return (f"<NatsSource {public_url(self.settings.url)} {self.settings.stream}/"
                f"{self.settings.durable} {self.state}>")

    # ------------------------------------------------------------------ the report link
    async def wait_connected(self) -> None:
        await self._up.wait()

    async def publish(self, subject: str, payload: bytes, headers: Mapping[str, str]) -> None:
        """Publish on the current connection; ``ConnectionError`` when there is none."""
        nc = self._nc
        if nc is None or not self._up.is_set():
            raise ConnectionError("not connected to NATS")
        try:
            await nc.publish(subject, payload, headers=dict(headers))
        except _LINK_ERRORS as error:
            raise ConnectionError(f"NATS publish failed: {error!r}") from None

    async def flush(self) -> None:
        """Wait until the server has everything published so far; ``ConnectionError`` if
        the connection fails first."""
        nc = self._nc
        if nc is None:
            raise ConnectionError("not connected to NATS")
        try:
            await nc.flush(timeout=int(self.settings.connect_timeout_s))
        except _LINK_ERRORS as error:
            raise ConnectionError(f"NATS flush failed: {error!r}") from None

    # ------------------------------------------------------------------ connection loop
    async def run(self) -> None:
        pause = RECONNECT_S[0]
        while True:
            still_running()
            try:
                await self._session()
            except _Unusable as unusable:
                self._down(str(unusable), RECONNECT_S[1])
                pause = RECONNECT_S[1]
            except _LINK_ERRORS as error:
                pause = RECONNECT_S[0] if self.state == "connected" else pause
                self._down(repr(error), pause)
            await self._clock.sleep(pause)
            pause = min(pause * 2, RECONNECT_S[1])

    async def _session(self) -> None:
        """One connection: set up the stream and consumer, then pull until it fails."""
        s = self.settings
        nc = await nats.connect(s.url.split(","), name="execd", allow_reconnect=False,
                                connect_timeout=max(1, int(s.connect_timeout_s)),
                                error_cb=_quiet, disconnected_cb=_quiet_cb, closed_cb=_quiet_cb)
        self._nc = nc
        keeper: asyncio.Task[None] | None = None
        try:
            js = nc.jetstream()
            created_stream = await self._ensure_stream(js)
            created_consumer, ack_wait = await self._ensure_consumer(js)
            sub = await js.pull_subscribe_bind(durable=s.durable, stream=s.stream)
            self.state, self._error = "connected", None
            self.counts["connects"] += 1
            self._up.set()
            self._log.info(AuditEvent.SOURCE_CONNECTED, source="nats",
                           url=public_url(s.url), stream=s.stream, subject=s.subject,
                           durable=s.durable, created_stream=created_stream,
                           created_consumer=created_consumer, ack_wait_s=ack_wait)
            keeper = asyncio.create_task(self._keep_alive(max(ack_wait / 3, 0.5)),
                                         name="execd-nats-progress")
            await self._service.wait_open()   # restart recovery first
            try:
                await self._pull(nc, sub)
            except _Stopping:   # pull no more; the connection stays for the last reports
                self.state = "stopped"
                await asyncio.get_running_loop().create_future()
        finally:
            self._up.clear()
            self._nc = None
            if keeper is not None:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)
            with contextlib.suppress(*_LINK_ERRORS):
                await asyncio.wait_for(nc.close(), s.connect_timeout_s)

    async def _ensure_stream(self, js: JetStreamContext) -> bool:
        s = self.settings
        try:
            info = await js.stream_info(s.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(StreamConfig(name=s.stream, subjects=self._subjects,
                                             storage=StorageType.FILE,
                                             duplicate_window=DUPLICATE_WINDOW_S))
            return True
        captured = info.config.subjects or []
        for subject in self._subjects:
            if not any(subject_covers(p, subject) for p in captured):
                raise _Unusable(f"stream {s.stream} exists but does not capture {subject} "
                                f"(its subjects: {', '.join(captured) or 'none'}): add it to "
                                "the stream, or set intake.nats.stream to another stream")
        return False

    async def _ensure_consumer(self, js: JetStreamContext) -> tuple[bool, float]:
        s = self.settings
        try:
            info = await js.consumer_info(s.stream, s.durable)
            created = False
        except nats.js.errors.NotFoundError:
            info = await js.add_consumer(s.stream, ConsumerConfig(
                durable_name=s.durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=s.ack_wait_s,
                max_deliver=-1, filter_subjects=self._subjects))
            created = True
        if info.config.ack_policy not in (None, AckPolicy.EXPLICIT):
            raise _Unusable(f"consumer {s.durable} of stream {s.stream} does not use explicit "
                            "acks: delete it, execd creates it again")
        return created, float(info.config.ack_wait or s.ack_wait_s)

    def _down(self, error: str, retry_in_s: float) -> None:
        """Audit a lost or refused connection: each loss, and each new error while down."""
        was_up = self.state == "connected"
        self.state = "down"
        if was_up or error != self._error:
            self._error = error
            self._log.warning(AuditEvent.SOURCE_DISCONNECTED, source="nats",
                              url=public_url(self.settings.url), error=error,
                              retry_in_s=retry_in_s)

    # ------------------------------------------------------------------ pulling
    async def _pull(self, nc: Client, sub: JetStreamContext.PullSubscription) -> None:
        s = self.settings
        while True:
            still_running()
            if self._service.state is IntakeState.STOPPING:
                raise _Stopping
            try:
                batch = await sub.fetch(s.fetch_batch, timeout=s.fetch_wait_s)
            except TimeoutError:   # nats-py's own, or asyncio's from its last deadline check
                if nc.is_closed or not nc.is_connected:
                    raise ConnectionError("connection to NATS lost") from None
                self._lag = 0
                continue
            self._waiting = {id(msg): msg for msg in batch}
            self._batch_at = self._clock.monotonic()
            if batch:   # its last delivery saw the fewest left (messages are handled out of order)
                self._lag = batch[-1].metadata.num_pending
            delay = await self._take(batch)
            if delay:
                await self._clock.sleep(delay)

    async def _take(self, batch: list[Msg]) -> float:
        """Answer every message of `batch`: one chain per symbol, each in stream order, the
        chains side by side (one symbol's order is what SPEC §4.3 keeps; the journal's
        commits overlap). A message nak'd takes the rest of its chain with it. Returns the
        longest nak delay (0.0 if none)."""
        chains: dict[object, list[tuple[Msg, dict[str, object] | SignalError]]] = {}
        for msg in batch:
            body = self._decode(msg)
            symbol = body.get("symbol") if isinstance(body, dict) else None
            chains.setdefault(symbol if isinstance(symbol, str) else None, []).append(
                (msg, body))
        outcomes = await asyncio.gather(*(self._chain(chain) for chain in chains.values()),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return max((o for o in outcomes if isinstance(o, float)), default=0.0)

    async def _chain(self, chain: list[tuple[Msg, dict[str, object] | SignalError]]) -> float:
        for index, (msg, body) in enumerate(chain):
            still_running()
            try:
                delay = await self._handle(msg, body)
            except _Stopping:
                await self._nak_all([m for m, _ in chain[index + 1:]], self.settings.nak_delay_s)
                raise
            finally:
                self._waiting.pop(id(msg), None)
            if delay:
                await self._nak_all([m for m, _ in chain[index + 1:]], delay)
                return delay
        return 0.0

    async def _nak_all(self, msgs: list[Msg], delay: float) -> None:
        for msg in msgs:
            self._waiting.pop(id(msg), None)
            await msg.nak(delay=delay)
        self.counts["naks"] += len(msgs)

    @staticmethod
    def _decode(msg: Msg) -> dict[str, object] | SignalError:
        if len(msg.data) > MAX_BODY_BYTES:
            return SignalError("body", f"is longer than {MAX_BODY_BYTES} bytes")
        try:
            return decode_object(msg.data)
        except SignalError as error:
            return error

    async def _handle(self, msg: Msg, body: dict[str, object] | SignalError) -> float:
        """Accept one message (`body` decoded, or why it could not be): 0.0 once acked or
        termed, else the delay it was nak'd with."""
        s = self.settings
        meta = msg.metadata
        seq = meta.sequence.stream
        self.counts["received"] += 1
        self._last_at = self._clock.monotonic()
        header = (msg.headers or {}).get("Nats-Msg-Id")
        fallback = header if header and _ID.fullmatch(header) else f"nats-{s.stream}-{seq}"
        with bound_contextvars(nats_seq=seq, nats_subject=msg.subject):
            if isinstance(body, SignalError):
                self._log.warning(AuditEvent.SIGNAL_REJECTED, source="nats", field=body.field,
                                  detail=body.detail, signal_id=fallback)
                await self._reject(msg, fallback, None, body)
                return 0.0
            data = body
            if data.get("id") is None:
                data["id"] = header if header else f"nats-{s.stream}-{seq}"
            try:
                accepted = await self._service.accept(data, source="nats")
            except SignalError as error:   # the service audited it
                given = data["id"]
                signal_id = given if isinstance(given, str) and _ID.fullmatch(given) else fallback
                await self._reject(msg, signal_id, data, error)
                return 0.0
            except QueueFull as full:
                return await self._nak(msg, max(full.retry_after, s.nak_delay_s))
            except (JournalBusy, JournalFailed):   # the service audited it
                return await self._nak(msg, s.nak_delay_s)
            except IntakeClosed as closed:
                await self._nak(msg, s.nak_delay_s)
                if closed.state is IntakeState.STOPPING:
                    raise _Stopping from None
                return s.nak_delay_s
        await msg.ack()
        self.counts["accepted" if accepted.created else "duplicates"] += 1
        return 0.0

    async def _reject(self, msg: Msg, signal_id: str, data: Mapping[str, object] | None,
                      error: SignalError) -> None:
        self.counts["rejected"] += 1
        if self._on_rejected is not None:
            self._on_rejected(signal_id, data, str(error))
        await msg.term()

    async def _nak(self, msg: Msg, delay: float) -> float:
        self.counts["naks"] += 1
        await msg.nak(delay=delay)
        return delay

    async def _keep_alive(self, every_s: float) -> None:
        """``in_progress`` for the batch's messages still waiting once it is `every_s` old
        (a slow accept must not let the ack wait run out and the message come twice)."""
        while True:
            await self._clock.sleep(every_s)
            still_running()
            waiting = list(self._waiting.values())
            if waiting and self._clock.monotonic() - self._batch_at >= every_s:
                for msg in waiting:
                    with contextlib.suppress(*_LINK_ERRORS):
                        await msg.in_progress()

    def status(self) -> dict[str, object]:
        """For ``/v1/status``: the connection's state, how far behind the stream execd is
        (``lag``: messages not yet delivered to the consumer, as of the last pull) and the
        counts since start."""
        age = None if self._last_at is None else round(self._clock.monotonic() - self._last_at, 3)
        s = self.settings
        return {"state": self.state, "url": public_url(s.url), "stream": s.stream,
                "subject": s.subject, "durable": s.durable, "lag": self._lag,
                "last_message_age_s": age, "error": self._error, **self.counts}


async def _quiet(error: Exception) -> None:
    """nats-py's error callback: the source audits what matters itself."""


async def _quiet_cb() -> None:
    """nats-py's disconnected/closed callbacks: the pull loop sees the loss itself."""
