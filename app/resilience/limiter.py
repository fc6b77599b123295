"""A request-weight limiter for fixed, clock-aligned exchange windows (SPEC §7.1).

Each bucket (``BucketSpec``: a limit per window of ``interval_s`` seconds of *exchange* time)
admits a request only if all of these hold, so no arrival pattern can push the admitted cost of
any window — clock-aligned or rolling — over the limit:

* **budget** ``B = limit × (1 − headroom)``: the last ``headroom`` is never used;
* **rolling cap**: own cost admitted in ``(t − W, t]`` plus the request ≤ ``B − reserve``;
* **pacing** (paced buckets): own cost admitted in the current window ≤
  ``(B − reserve) × min(1, f + pace_lead)`` at fraction ``f`` of the window, and nothing new in
  its last ``end_guard`` — so the budget is spread over the window instead of spent in its
  first milliseconds, and nothing lands in the next window by latency;
* **priority**: ``CRITICAL`` ignores pacing (not the caps), ``LOW`` gets at most ``low_share``;
  waiters are served strictly by priority, FIFO within one — except that a queue head which
  cannot fit before the next window of one of its buckets does not hold up later waiters of
  its own priority that fit now (*skip-ahead*, see ``_drain``); the head keeps its place;
* **pauses**: ``penalize`` (a 429) pauses buckets until ``Retry-After``; ``ban`` (a 418) stops
  everything until the ban ends.

``reserve`` is room kept for other processes on the same IP, visible only in the exchange's
counters: ``observe`` feeds each response's header value with the request's cost and send time.
Once a window is over, ordering its responses by header value attributes every header delta to
our own requests or to someone else, which gives the foreign cost of that window exactly (for
everything counted up to our last response). The reserve is the larger of the last two windows'
foreign cost (plus ``foreign_margin``), raised live when a header shows more than our own
admitted cost can explain. A header above our own count for a request sent within
``straddle_s`` of the window's start is not taken as foreign use: the exchange probably counted
that request in the previous window (see ``observe``).

Waiters are woken by one timer (the clock's ``sleep``) set for the earliest moment a waiter of
the highest waiting priority can be admitted; there is no polling loop. All times are seconds of
exchange time (``clock.time() + offset()``).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from app.clock import Clock


class Priority(IntEnum):
    CRITICAL = 0
    NORMAL = 1
    LOW = 2


# For the per-call paths: ``EnumType`` has a ``__getattr__``, which makes every ``Priority.X``
# lookup on the class take the slow attribute path (~0.1 µs each).
_CRITICAL, _NORMAL, _LOW = Priority.CRITICAL, Priority.NORMAL, Priority.LOW


@dataclass(frozen=True, slots=True)
class BucketSpec:
    name: str
    limit: int
    interval_s: float
    paced: bool = True


@dataclass(frozen=True, slots=True)
class LimiterSettings:
    """Shares are fractions of a window's budget or length; times are seconds.

    * ``headroom``: share of each limit never used.
    * ``low_share``: most of a window's budget that ``LOW`` may use.
    * ``pace_lead``: share of the budget available ahead of the pace at any moment.
    * ``end_guard``: last share of a paced window in which nothing new is admitted.
    * ``foreign_margin``: extra kept on top of the co-tenant estimate.
    * ``max_reserve``: most of the budget ever reserved for co-tenants.
    * ``warning_threshold``: use at which ``on_warning`` fires, once per window.
    * ``straddle_s``: how long after a window's start a header above our own count is taken
      for the previous window's (the uncertainty of our estimate of exchange time).
    """

    headroom: float = 0.02
    low_share: float = 0.8
    pace_lead: float = 0.1
    end_guard: float = 0.05
    foreign_margin: float = 0.1
    max_reserve: float = 0.9
    warning_threshold: float = 0.8
    straddle_s: float = 0.1


@dataclass(frozen=True, slots=True)
class BucketStats:
    name: str
    limit: int
    budget: int
    window_start: float
    used: int
    own: int
    server: int
    reserve: int
    paused_until: float
    waiting: int
    straddled: int


WarningListener = Callable[[str, int, int], None]


@dataclass(slots=True)
class _Bucket:
    spec: BucketSpec
    budget: int
    window: int = -1
    #: ``start(window)`` and ``start(window + 1)``, kept by ``_roll`` (read on every call).
    window_start: float = 0.0
    next_start: float = 0.0
    own: int = 0
    server: int = 0
    warned: bool = False
    log: deque[tuple[float, int]] = field(default_factory=deque)
    rolling: int = 0
    paused_until: float = 0.0
    responses: list[tuple[int, int, float]] = field(default_factory=list)
    foreign_history: deque[float] = field(default_factory=lambda: deque(maxlen=2))
    live_foreign: int = 0
    straddled: int = 0                 # headers set aside by the straddle rule, ever
    #: ``any(foreign_history)`` and ``max(foreign_history, default=0.0)``, kept by ``_roll``.
    foreign_seen: bool = False
    foreign_estimate: float = 0.0

    def __post_init__(self) -> None:
        self.window_start = self.start(self.window)
        self.next_start = self.start(self.window + 1)

    def index(self, now: float) -> int:
        return math.floor(now / self.spec.interval_s)

    def start(self, window: int) -> float:
        return window * self.spec.interval_s


@dataclass(eq=False, slots=True)
class _Waiter:
    costs: Mapping[str, int]
    priority: Priority
    future: asyncio.Future[float]      # the result: the exchange time of admission


class WeightLimiter:
    """``await limiter.acquire({"weight": 5}, Priority.NORMAL)`` before each request."""

    def __init__(self, buckets: list[BucketSpec], clock: Clock,
                 settings: LimiterSettings = LimiterSettings(), *,
                 offset: Callable[[], float] = lambda: 0.0,
                 on_warning: WarningListener | None = None) -> None:
        self._clock = clock
        self._offset = offset
        self._settings = settings
        self._on_warning = on_warning
        self._buckets: dict[str, _Bucket] = {}
        for spec in buckets:
            budget = math.floor(spec.limit * (1 - settings.headroom))
            if budget <= 0:
                raise ValueError(f"bucket {spec.name}: limit {spec.limit} leaves no budget")
            self._buckets[spec.name] = _Bucket(spec, budget)
        self._queues: dict[Priority, deque[_Waiter]] = {p: deque() for p in Priority}
        self._banned_until = 0.0
        self._timer: asyncio.Task[None] | None = None
        self._timer_at = math.inf

    # ------------------------------------------------------------------ public API
    def now(self) -> float:
        return self._clock.time() + self._offset()

    async def acquire(self, costs: Mapping[str, int], priority: Priority = Priority.NORMAL
                      ) -> float:
        """Wait until ``costs`` (bucket name → cost) fit; FIFO within ``priority``, except for
        skip-ahead past a head deferred to its next window (``_drain``). Returns the exchange
        time at which the request was admitted (what ``observe`` takes as ``sent_at``).

        Raises ``KeyError`` for an unknown bucket, ``ValueError`` for a cost outside
        ``0..budget``; nothing is admitted then."""
        admitted = self.try_acquire(costs, priority)
        if admitted is not None:
            return admitted
        waiter = _Waiter(costs, priority, asyncio.get_running_loop().create_future())
        self._queues[priority].append(waiter)
        self._drain()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter in self._queues[priority]:
                self._queues[priority].remove(waiter)
                self._drain()
            elif waiter.future.done() and not waiter.future.cancelled():
                pass  # admitted just before the cancellation: its cost stays spent
            raise

    def try_acquire(self, costs: Mapping[str, int], priority: Priority = Priority.NORMAL
                    ) -> float | None:
        """Admit ``costs`` now if `acquire` would admit them without waiting: nobody waits at
        ``priority`` or above, no ban, every bucket takes them now. Returns the exchange time
        of admission, or None with nothing spent and nothing queued (then await `acquire`).

        Raises like `acquire`. For callers on a hot path: no coroutine when nobody waits."""
        buckets = self._buckets
        queues = self._queues
        now = self._clock.time() + self._offset()
        # The check ``_ready_at(costs, priority, now) is None`` spelt out, fused with the
        # validation of ``costs``.
        now_ok = not (queues[_CRITICAL] or (priority >= _NORMAL and queues[_NORMAL]) or (
            priority is _LOW and queues[_LOW])) and self._banned_until <= now
        for name, cost in costs.items():
            bucket = buckets.get(name)
            if bucket is None:
                raise KeyError(f"unknown bucket {name!r}")
            if cost < 0 or cost > bucket.budget:
                raise ValueError(f"cost {cost} for bucket {name!r} outside 0..{bucket.budget}")
            if now_ok and self._bucket_ready_at(bucket, cost, priority, now) > now:
                now_ok = False
        if not now_ok:
            return None
        self._admit(costs, now)
        return now

    def observe(self, name: str, used: int, *, cost: int, sent_at: float) -> None:
        """Feed one response's counter for ``name`` (the exchange's used value, this request
        included). ``sent_at`` is the exchange time the request was admitted.

        Values that cannot be placed in the current window are set aside:

        * the request was sent in an earlier window (by our clock): the value belongs to that
          window or to this one, we cannot tell;
        * *straddle rule*: the request was sent less than ``straddle_s`` after this window's
          start and the value exceeds everything we admitted in this window. Our exchange time
          is only known to within the time-sync error, so the exchange probably counted the
          request in the previous window, and the value is that window's total. Taken at face
          value it would be read as foreign use: the whole excess reserved now, and again in
          the next windows' co-tenant estimate. The cost of setting it aside: a co-tenant's
          burst in the first ``straddle_s`` of a window is seen only from the next response
          sent after that (the estimate of past windows still reserves room for it).
        """
        bucket = self._buckets.get(name)
        if bucket is None:
            return
        now = self._clock.time() + self._offset()
        interval = bucket.spec.interval_s
        log = bucket.log
        if math.floor(now / interval) != bucket.window or (log and log[0][0] <= now - interval):
            self._roll(bucket, now)
        if math.floor(sent_at / interval) != bucket.window:
            return
        if used > bucket.own and sent_at - bucket.window_start < self._settings.straddle_s:
            bucket.straddled += 1
            return
        if used > bucket.server:
            bucket.server = used
        bucket.responses.append((used, cost, sent_at))
        excess = used - bucket.own
        if excess > bucket.live_foreign:
            bucket.live_foreign = excess
            self._drain()

    def penalize(self, names: list[str], retry_after: float) -> None:
        """A 429: pause these buckets for ``retry_after`` seconds."""
        until = self.now() + retry_after
        for name in names:
            bucket = self._buckets.get(name)
            if bucket is not None:
                bucket.paused_until = max(bucket.paused_until, until)
        self._drain()

    def ban(self, until: float) -> None:
        """A 418: no admission at all before exchange time ``until``."""
        self._banned_until = max(self._banned_until, until)
        self._drain()

    @property
    def banned_until(self) -> float:
        return self._banned_until

    def statistics(self) -> list[BucketStats]:
        now = self.now()
        out = []
        for bucket in self._buckets.values():
            self._roll(bucket, now)
            out.append(BucketStats(
                name=bucket.spec.name, limit=bucket.spec.limit, budget=bucket.budget,
                window_start=bucket.start(bucket.window), used=self._used(bucket),
                own=bucket.own, server=bucket.server, reserve=self._reserve(bucket, now),
                paused_until=max(bucket.paused_until, self._banned_until),
                waiting=sum(len(q) for q in self._queues.values()),
                straddled=bucket.straddled,
            ))
        return out

    def used(self, name: str) -> int:
        """The limiter's view of a bucket's count in the current window (max of own, server)."""
        bucket = self._buckets[name]
        self._roll(bucket, self.now())
        return self._used(bucket)

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.name}={s.used}/{s.limit}" for s in self.statistics())
        waiting = sum(len(q) for q in self._queues.values())
        wake = "-" if math.isinf(self._timer_at) else f"{self._timer_at - self.now():.3f}s"
        return f"<WeightLimiter {parts} waiting={waiting} next_wake={wake}>"

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------------ accounting
    def _used(self, bucket: _Bucket) -> int:
        return max(bucket.own + bucket.live_foreign, bucket.server)

    def _roll(self, bucket: _Bucket, now: float) -> None:
        index = bucket.index(now)
        if index != bucket.window:
            if bucket.window >= 0:
                bucket.foreign_history.append(self._foreign_of_window(bucket))
                skipped = index - bucket.window - 1        # windows with no traffic at all
                last = bucket.foreign_history[-1]
                for n in range(max(1, skipped - 1), skipped + 1):
                    bucket.foreign_history.append(last / 2**n)
            bucket.window = index
            bucket.window_start = bucket.start(index)
            bucket.next_start = bucket.start(index + 1)
            bucket.foreign_seen = any(bucket.foreign_history)
            bucket.foreign_estimate = max(bucket.foreign_history, default=0.0)
            bucket.own = 0
            bucket.server = 0
            bucket.warned = False
            bucket.responses = []
            bucket.live_foreign = 0
        horizon = now - bucket.spec.interval_s
        while bucket.log and bucket.log[0][0] <= horizon:
            bucket.rolling -= bucket.log.popleft()[1]

    def _foreign_of_window(self, bucket: _Bucket) -> float:
        """Foreign cost of the window just over, attributed from header values, scaled to
        the whole window from where our last response was counted.

        Responses are taken in the order the exchange counted them, i.e. by header value;
        among equal values (a refused or zero-cost response beside the request that set the
        value) the costlier comes first, so our own cost is credited before the value is
        compared and a tie never shows up as foreign use."""
        if not bucket.responses:
            # Nothing seen in that window: keep half of the last estimate, so a co-tenant
            # that went quiet stops costing us room within a few windows.
            return bucket.foreign_history[-1] / 2 if bucket.foreign_history else 0.0
        own_before = 0
        foreign = 0
        last_at = bucket.start(bucket.window)
        for used, cost, sent_at in sorted(bucket.responses, key=lambda r: (r[0], -r[1])):
            own_before += cost
            foreign = max(foreign, used - own_before)
            last_at = max(last_at, sent_at)
        fraction = (last_at - bucket.start(bucket.window)) / bucket.spec.interval_s
        return min(foreign / max(fraction, 0.5), float(bucket.spec.limit))

    def _reserve(self, bucket: _Bucket, now: float, priority: Priority = Priority.NORMAL
                 ) -> int:
        """Room kept for other users of the bucket. CRITICAL calls reserve only what the
        exchange has shown them using; the reserve never exceeds ``max_reserve`` of the budget,
        so a greedy co-tenant cannot starve us completely."""
        live_foreign = bucket.live_foreign
        if not live_foreign and not bucket.foreign_seen:
            return 0
        if priority is _CRITICAL:
            return min(live_foreign, bucket.budget - 1)
        # With a co-tenant this runs on every call: the max() / min() below are spelt out
        # (each keeps the first of equal values, as the builtins do).
        estimate = bucket.foreign_estimate
        wanted = estimate * (1 + self._settings.foreign_margin)      # planned
        left = 1 - (now - bucket.window_start) / bucket.spec.interval_s
        live = live_foreign + estimate * (left if left > 0.0 else 0.0)
        if live > wanted:
            wanted = live
        if live_foreign > wanted:
            wanted = live_foreign
        cap = bucket.budget * self._settings.max_reserve
        if live_foreign > cap:
            cap = live_foreign
        return math.ceil(cap if cap < wanted else wanted)

    def _admit(self, costs: Mapping[str, int], now: float) -> None:
        """Spend ``costs`` at ``now``. Every caller has just checked them with
        ``_bucket_ready_at`` at this same ``now``, which rolled each bucket to it."""
        buckets = self._buckets
        for name, cost in costs.items():
            bucket = buckets[name]
            bucket.own += cost
            if cost:
                bucket.log.append((now, cost))
                bucket.rolling += cost
            if not bucket.warned and self._on_warning is not None:
                used = bucket.own + bucket.live_foreign         # _used(bucket), inlined
                if bucket.server > used:
                    used = bucket.server
                limit = bucket.spec.limit
                if used >= self._settings.warning_threshold * limit:
                    bucket.warned = True
                    self._on_warning(name, used, limit)

    # ------------------------------------------------------------------ admission
    def _ready_at(self, costs: Mapping[str, int], priority: Priority, now: float
                  ) -> float | None:
        """None if admissible now, else the earliest exchange time worth re-checking."""
        latest = now if self._banned_until <= now else self._banned_until
        buckets = self._buckets
        for name, cost in costs.items():
            at = self._bucket_ready_at(buckets[name], cost, priority, now)
            if at > latest:
                latest = at
        return None if latest <= now else latest

    def _bucket_ready_at(self, bucket: _Bucket, cost: int, priority: Priority,
                         now: float) -> float:
        """``now`` if ``cost`` fits in ``bucket`` now, else the earliest exchange time worth
        re-checking (a pause's end, the next window, the rolling cap's release). Rolls the
        bucket to ``now`` first.

        Runs on every call: the roll is skipped when it would change nothing, and no builtin
        ``max`` / ``min`` on the common path (the arithmetic is the same)."""
        length = bucket.spec.interval_s
        log = bucket.log
        if math.floor(now / length) != bucket.window or (log and log[0][0] <= now - length):
            self._roll(bucket, now)
        if bucket.paused_until > now:
            return bucket.paused_until
        if cost == 0:
            return now
        budget = bucket.budget
        room = budget
        if bucket.live_foreign or bucket.foreign_seen:
            room = budget - self._reserve(bucket, now, priority)
        own = bucket.own + cost
        if own > room or bucket.server + cost > budget:
            return bucket.next_start
        ready = now
        s = self._settings
        if bucket.spec.paced and priority is not _CRITICAL:
            start = bucket.window_start
            if (now - start) / length >= 1 - s.end_guard:
                return bucket.next_start
            share = s.low_share if priority is _LOW else 1.0
            needed = own / (room * share) - s.pace_lead
            if needed > 1 - s.end_guard:
                return bucket.next_start
            if needed > 0.0:
                start += needed * length
            if start > ready:
                ready = start
        elif priority is _LOW and own > room * s.low_share:
            return bucket.next_start
        if bucket.rolling + cost > room:
            excess = bucket.rolling + cost - room
            for at, spent in bucket.log:
                excess -= spent
                if excess <= 0:
                    ready = max(ready, at + length)
                    break
        return ready

    def _deferred(self, costs: Mapping[str, int], priority: Priority, now: float) -> bool:
        """True if one of the buckets cannot take ``costs`` before its next window starts
        (its budget or pacing is spent for this window, a pause or a rolling cap outlasts it)."""
        for name, cost in costs.items():
            bucket = self._buckets[name]
            next_window = bucket.start(bucket.window + 1)
            if self._bucket_ready_at(bucket, cost, priority, now) >= next_window:
                return True
        return False

    def _drain(self) -> None:
        """Admit waiters in priority order while they fit; arm the timer for the rest.

        Priorities are strict: nobody goes while a waiter of a higher priority is queued.
        Within a priority the head goes first, and normally nobody passes it. The exception
        is *skip-ahead*: when the head cannot fit before the next window of one of its buckets
        starts, waiting for it would leave the rest of this window's room unused (a weight-20
        head with 15 left would idle the queue until the roll). Then later waiters of the same
        priority that fit now are admitted, in queue order. The head keeps its place: once its
        window rolls it fits within that window, so it is no longer deferred and nobody passes
        it again — it is served first. Every waiter becomes the head in turn, so nothing
        starves (a head that can never fit, its cost above the room the co-tenant reserve
        leaves, no longer holds up the others either).
        """
        now = self.now()
        wake = math.inf
        for priority in Priority:
            queue = self._queues[priority]
            ready = self._serve_in_order(queue, priority, now)
            if ready is None:
                continue                                    # this queue is empty
            wake = ready
            if self._banned_until <= now and self._deferred(queue[0].costs, priority, now):
                wake = min(wake, self._skip_ahead(queue, priority, now))
            break
        self._arm(wake)

    def _serve_in_order(self, queue: deque[_Waiter], priority: Priority, now: float
                        ) -> float | None:
        """Admit heads while they fit. None once the queue is empty, else the blocked head's
        ready time."""
        while queue:
            head = queue[0]
            if head.future.done():
                queue.popleft()
                continue
            ready = self._ready_at(head.costs, priority, now)
            if ready is not None:
                return ready
            queue.popleft()
            self._admit(head.costs, now)
            head.future.set_result(now)
        return None

    def _skip_ahead(self, queue: deque[_Waiter], priority: Priority, now: float) -> float:
        """Admit, in queue order, the waiters behind the (deferred) head that fit now. Returns
        the earliest ready time among those left, for the timer."""
        head = queue[0]
        wake = math.inf
        kept = [head]
        for waiter in list(queue)[1:]:
            if waiter.future.done():
                continue
            if _covers(waiter.costs, head.costs):
                kept.append(waiter)        # needs at least what the head needs: cannot fit
                continue
            ready = self._ready_at(waiter.costs, priority, now)
            if ready is None:
                self._admit(waiter.costs, now)
                waiter.future.set_result(now)
            else:
                kept.append(waiter)
                wake = min(wake, ready)
        if len(kept) != len(queue):
            queue.clear()
            queue.extend(kept)
        return wake

    def _arm(self, wake: float) -> None:
        if wake == self._timer_at and self._timer is not None and not self._timer.done():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = wake
        if math.isinf(wake):
            return
        self._timer = asyncio.get_running_loop().create_task(self._sleep_then_drain(wake))

    async def _sleep_then_drain(self, wake: float) -> None:
        # A hair past the instant, so float rounding never wakes us a tick too early.
        await self._clock.sleep(max(0.0, wake - self.now()) + 1e-6)
        self._timer = None
        self._timer_at = math.inf
        self._drain()


def _covers(costs: Mapping[str, int], other: Mapping[str, int]) -> bool:
    """True if ``costs`` needs at least ``other`` in every bucket ``other`` uses. Admission is
    monotone in cost, so at one priority and moment such a request cannot fit if ``other``
    cannot."""
    return all(name in costs and costs[name] >= cost for name, cost in other.items())
