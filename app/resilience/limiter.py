"""A request-weight limiter for fixed, clock-aligned exchange windows (SPEC §7.1).

``WeightLimiter`` holds one ``Bucket`` per ``BucketSpec`` (a limit per window of ``interval_s``
seconds of *exchange* time); a request names its cost in each bucket it uses and goes only when
every one of them takes it. What a bucket takes — budget, rolling cap, pacing, the end zone
whose admissions count in the next window too, priority shares, the co-tenant reserve, the
straddle rule — is arithmetic over its window state, in ``window.py``. This module queues,
orders and wakes:

* **priority**: waiters are served strictly by priority, FIFO within one — except that a queue
  head which cannot fit before the next window of one of its buckets does not hold up later
  waiters of its own priority that fit now (*skip-ahead*, see ``_drain``); the head keeps its
  place;
* **pauses**: ``penalize`` (a 429) pauses buckets until ``Retry-After``; ``ban`` (a 418) stops
  everything until the ban ends;
* **co-tenants**: ``observe`` feeds each response's header value, with the request's cost and
  send time, to its bucket's co-tenant estimate;
* **waits**: an optional ``on_wait`` listener hears how long each admitted request waited and
  whether its buckets had room for it when it asked (off by default; for latency benchmarks).

Waiters are woken by one timer (the clock's ``sleep``) set for the earliest moment a waiter of
the highest waiting priority can be admitted; there is no polling loop. All times are seconds of
exchange time (``clock.time() + offset()``).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from app.clock import Clock
from app.resilience.window import Bucket, BucketSpec, LimiterSettings, Priority

__all__ = ["BucketSpec", "BucketStats", "LimiterSettings", "Priority", "WaitListener",
           "WarningListener", "WeightLimiter"]

# For the per-call paths: ``EnumType`` has a ``__getattr__``, which makes every ``Priority.X``
# lookup on the class take the slow attribute path (~0.1 µs each).
_CRITICAL, _NORMAL, _LOW = Priority.CRITICAL, Priority.NORMAL, Priority.LOW


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
    carried: int = 0        # own cost the window started with, from the previous one's end


WarningListener = Callable[[str, int, int], None]
#: ``(priority, waited_s, had_room)`` for every admitted request: the exchange-time seconds
#: from asking to admission (0.0 when admitted at once), and whether every bucket would have
#: taken it when it asked (it waited only behind others, or not at all) — False when its
#: buckets had no room then (budget, pace, reserve, a pause or a ban held it).
WaitListener = Callable[[Priority, float, bool], None]

# Frozen, so one shared default is safe (ruff's B008 cannot see that across modules).
_DEFAULT_SETTINGS = LimiterSettings()


@dataclass(eq=False, slots=True)
class _Waiter:
    costs: Mapping[str, int]
    priority: Priority
    future: asyncio.Future[float]      # the result: the exchange time of admission


class WeightLimiter:
    """``await limiter.acquire({"weight": 5}, Priority.NORMAL)`` before each request."""

    def __init__(self, buckets: list[BucketSpec], clock: Clock,
                 settings: LimiterSettings = _DEFAULT_SETTINGS, *,
                 offset: Callable[[], float] = lambda: 0.0,
                 on_warning: WarningListener | None = None,
                 on_wait: WaitListener | None = None) -> None:
        self._clock = clock
        self._offset = offset
        self._settings = settings
        self._on_warning = on_warning
        #: Called for every admitted request (``WaitListener``); None, the default, for
        #: nothing. May be set at any time.
        self.on_wait = on_wait
        self._buckets = {spec.name: Bucket(spec, settings) for spec in buckets}
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
        on_wait = self.on_wait
        asked = self.now()
        had_room = on_wait is not None and self._has_room(costs, priority, asked)
        waiter = _Waiter(costs, priority, asyncio.get_running_loop().create_future())
        self._queues[priority].append(waiter)
        self._drain()
        try:
            admitted = await waiter.future
            if on_wait is not None:
                on_wait(priority, self.now() - asked, had_room)
            return admitted
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
            if now_ok and bucket.ready_at(cost, priority, now) > now:
                now_ok = False
        if not now_ok:
            return None
        self._admit(costs, now)
        if self.on_wait is not None:
            self.on_wait(priority, 0.0, True)
        return now

    def observe(self, name: str, used: int, *, cost: int, sent_at: float) -> None:
        """Feed one response's counter for ``name`` (the exchange's used value, this request
        included). ``sent_at`` is the exchange time the request was admitted. A value that
        cannot be placed in the current window (the request was sent in an earlier one, or
        just after this one's start: the *straddle rule*) is set aside; see ``Bucket.record``.
        Unknown names are ignored."""
        bucket = self._buckets.get(name)
        if bucket is None:
            return
        if bucket.record(used, cost, sent_at, self._clock.time() + self._offset()):
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

    def reconfigure(self, buckets: list[BucketSpec],
                    renamed: Mapping[str, str] | None = None) -> None:
        """Replace the buckets (the exchange published new limits) without forgetting what was
        spent: a bucket of the same name, or the new name ``renamed`` gives an old one (its
        window length changed), continues from the old one (``Bucket.take_over``: same window,
        every count carries; another window, our own admissions are recounted from the log).
        A new bucket with no predecessor starts empty; an old one with no successor is dropped.

        Queued waiters keep their place; their costs move to the renamed buckets and are
        dropped for buckets that no longer exist. A waiter whose cost is now above a bucket's
        budget fails with ``ValueError``, as `acquire` would. Raises ``ValueError`` (and
        changes nothing) when a spec leaves no budget."""
        renamed = dict(renamed or {})
        predecessor = {new: old for old, new in renamed.items()}
        now = self.now()
        fresh: dict[str, Bucket] = {}
        for spec in buckets:
            bucket = Bucket(spec, self._settings)          # raises before anything changed
            old = self._buckets.get(spec.name) or self._buckets.get(
                predecessor.get(spec.name, ""))
            if old is not None:
                bucket.take_over(old, now)
            fresh[spec.name] = bucket
        self._buckets = fresh
        for queue in self._queues.values():
            for waiter in list(queue):
                waiter.costs = _moved(waiter.costs, fresh, renamed)
                too_big = [name for name, cost in waiter.costs.items()
                           if cost > fresh[name].budget]
                if too_big and not waiter.future.done():
                    name = too_big[0]
                    waiter.future.set_exception(ValueError(
                        f"cost {waiter.costs[name]} for bucket {name!r} outside "
                        f"0..{fresh[name].budget} after the limits changed"))
                if waiter.future.done():
                    queue.remove(waiter)
        self._drain()

    @property
    def banned_until(self) -> float:
        return self._banned_until

    def statistics(self) -> list[BucketStats]:
        now = self.now()
        out = []
        for bucket in self._buckets.values():
            bucket.roll(now)
            out.append(BucketStats(
                name=bucket.spec.name, limit=bucket.spec.limit, budget=bucket.budget,
                window_start=bucket.start(bucket.window), used=bucket.used(),
                own=bucket.own, server=bucket.server, reserve=bucket.reserve(),
                paused_until=max(bucket.paused_until, self._banned_until),
                waiting=sum(len(q) for q in self._queues.values()),
                straddled=bucket.straddled, carried=bucket.carried,
            ))
        return out

    def used(self, name: str) -> int:
        """The limiter's view of a bucket's count in the current window (max of own, server)."""
        bucket = self._buckets[name]
        bucket.roll(self.now())
        return bucket.used()

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
    def _admit(self, costs: Mapping[str, int], now: float) -> None:
        """Spend ``costs`` at ``now``; in a window's end zone on the next window too, in its
        opening on the previous one too (the exchange may count it there). Every caller has
        just checked them with ``Bucket.ready_at`` at this same ``now``, which rolled each
        bucket to it. Spends on the bucket's fields directly, not through a method: this runs
        on every admission."""
        buckets = self._buckets
        for name, cost in costs.items():
            bucket = buckets[name]
            bucket.own += cost
            if cost:
                bucket.log.append((now, cost))
                bucket.rolling += cost
                if now >= bucket.guard_start:
                    bucket.carry += cost
                    if now >= bucket.late_start:
                        bucket.carry_late += cost
                if now < bucket.opening_end:
                    bucket.behind += cost
            if not bucket.warned and self._on_warning is not None:
                used = bucket.own + bucket.live_foreign         # bucket.used(), inlined
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
            at = buckets[name].ready_at(cost, priority, now)
            if at > latest:
                latest = at
        return None if latest <= now else latest

    def _has_room(self, costs: Mapping[str, int], priority: Priority, now: float) -> bool:
        """True if every bucket would take ``costs`` now and no ban holds them: whatever
        holds such a request is only the queue ahead of it."""
        return self._banned_until <= now and all(
            self._buckets[name].ready_at(cost, priority, now) <= now
            for name, cost in costs.items())

    def _deferred(self, costs: Mapping[str, int], priority: Priority, now: float) -> bool:
        """True if one of the buckets cannot take ``costs`` before its next window starts
        (its budget or pacing is spent for this window, a pause or a rolling cap outlasts it)."""
        for name, cost in costs.items():
            bucket = self._buckets[name]
            next_window = bucket.start(bucket.window + 1)
            if bucket.ready_at(cost, priority, now) >= next_window:
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


def _moved(costs: Mapping[str, int], buckets: Mapping[str, Bucket],
           renamed: Mapping[str, str]) -> dict[str, int]:
    """``costs`` in the buckets that exist now: renamed ones moved, vanished ones dropped."""
    out: dict[str, int] = {}
    for name, cost in costs.items():
        target = name if name in buckets else renamed.get(name, "")
        if target in buckets:
            out[target] = max(out.get(target, 0), cost)
    return out


def _covers(costs: Mapping[str, int], other: Mapping[str, int]) -> bool:
    """True if ``costs`` needs at least ``other`` in every bucket ``other`` uses. Admission is
    monotone in cost, so at one priority and moment such a request cannot fit if ``other``
    cannot."""
    return all(name in costs and costs[name] >= cost for name, cost in other.items())
