"""One bucket's fixed-window accounting and admission arithmetic (SPEC §7.1).

A bucket (``BucketSpec``: a limit per window of ``interval_s`` seconds of *exchange* time; window
k is ``[k·W, (k+1)·W)``) admits a cost only if all of these hold, so no arrival pattern can push
the admitted cost of any window — clock-aligned or rolling — over the limit:

* **budget** ``B = limit × (1 − headroom)``: the last ``headroom`` is never used;
* **rolling cap**: own cost admitted in ``(t − W, t]`` plus the request ≤ ``B − reserve``;
* **pacing** (paced buckets): own cost admitted in the current window ≤
  ``(B − reserve) × min(1, f + pace_lead)`` at fraction ``f`` of the window, so the budget is
  spread over the window instead of spent in its first milliseconds;
* **end of window**: a request admitted in the last ``end_guard`` of a window may be counted by
  the exchange in the next one (latency, the error of our exchange time), so it is charged to
  both: the next window starts with it counted (``carried``). It is never held for that: in a
  paced bucket what one window carries into the next stays within the next window's pace lead
  (``(B − reserve) × pace_lead``), elsewhere it is within the budget anyway;
* **opening of a window**: a request admitted in the first ``straddle_s`` of a window may be
  counted by the exchange in the previous one (our exchange time may run ahead of its clock),
  so it is charged to that window too (``behind``): below ``CRITICAL`` it goes only while the
  previous window, with what it reserved for co-tenants, has room for it, else at the end of
  the opening. After a window with room to spare (an idle limiter) nothing is held;
* **priority shares**: ``CRITICAL`` ignores pacing (not the caps), ``LOW`` gets at most
  ``low_share``;
* **pause**: nothing while a 429's ``Retry-After`` lasts (``paused_until``).

``reserve`` is room kept for other processes on the same IP, visible only in the exchange's
counters (``Bucket.record``, fed by each response's header value with the request's cost and
send time). Once a window is over, ordering its responses by header value attributes every
header delta to our own requests or to someone else, which gives the foreign cost of that window
exactly (for everything counted up to our last response). The co-tenants' rate is the larger
of the last two windows' foreign cost; the reserve is what the headers have shown them using in
the window so far (``live_foreign``, raised when a header shows more than our own admitted cost
can explain), plus the rest of the window at that rate with ``foreign_margin`` on top: the
margin covers the estimate, not what has been seen. While no past window showed a co-tenant (our
first window, or one that has just appeared), the rate is its rate so far in this window, scaled
as a finished window's is. A header above our own count for a request sent within
``straddle_s`` of the window's start is not taken as foreign use: the exchange probably counted
that request in the previous window (the *straddle rule*, see ``Bucket.record``).

Everything here is arithmetic over one bucket's state at a given exchange time: no clock, no
queue, no timer (those are ``WeightLimiter``'s, in ``limiter.py``). ``ready_at`` and ``record``
run on every request and response: keep them free of extra calls.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum


class Priority(IntEnum):
    CRITICAL = 0
    NORMAL = 1
    LOW = 2


# For the per-call paths: ``EnumType`` has a ``__getattr__``, which makes every ``Priority.X``
# lookup on the class take the slow attribute path (~0.1 µs each).
_CRITICAL, _LOW = Priority.CRITICAL, Priority.LOW


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
    * ``end_guard``: last share of a window whose admissions are charged to the next window
      too (the exchange may count them there).
    * ``foreign_margin``: extra kept on top of the co-tenant estimate.
    * ``max_reserve``: most of the budget ever reserved for co-tenants.
    * ``warning_threshold``: use at which ``on_warning`` fires, once per window.
    * ``straddle_s``: the uncertainty of our estimate of exchange time: how long after a
      window's start a header above our own count is taken for the previous window's, and
      how long the opening of a window is, whose admissions are charged to the previous
      window too.
    """

    headroom: float = 0.02
    low_share: float = 0.8
    pace_lead: float = 0.1
    end_guard: float = 0.05
    foreign_margin: float = 0.1
    max_reserve: float = 0.9
    warning_threshold: float = 0.8
    straddle_s: float = 0.1


@dataclass(slots=True)
class Bucket:
    """The state of one bucket: its current window's counts, the rolling log of own admissions,
    a 429 pause and the co-tenant estimate. All times are seconds of exchange time.

    Raises ``ValueError`` if ``spec.limit`` leaves no budget after ``settings.headroom``.
    The limiter spends admitted cost directly on ``own``, ``log`` and ``rolling`` (its
    ``_admit``, on the hot path) and pauses it through ``paused_until``."""

    spec: BucketSpec
    settings: LimiterSettings
    budget: int = field(init=False)
    window: int = -1
    #: ``start(window)`` and ``start(window + 1)``, kept by ``roll`` (read on every call).
    window_start: float = 0.0
    next_start: float = 0.0
    #: Where the window's end zone starts (``next_start − end_guard × W``) and where its last
    #: ``straddle_s`` starts, kept by ``roll``.
    guard_start: float = 0.0
    late_start: float = 0.0
    #: Where the window's opening ends (``window_start + straddle_s``), kept by ``roll``, and
    #: the previous window's count as the exchange may end up with it if it counts this
    #: window's opening there: that window's own count plus what it reserved for co-tenants
    #: at its end (its server count if higher), plus what this window admitted in its opening.
    opening_end: float = 0.0
    behind: int = 0
    #: Own cost in the window, ``carried`` included: what the previous window admitted in its
    #: end zone, ``carried_late`` of it in its last ``straddle_s`` (the part the exchange may
    #: well have counted in this window; the rest it counted in the previous one unless the
    #: request took longer than ``straddle_s`` to arrive). ``carry`` and ``carry_late`` are the
    #: same for this window's end zone so far, which the next window starts with.
    own: int = 0
    carried: int = 0
    carried_late: int = 0
    carry: int = 0
    carry_late: int = 0
    server: int = 0
    warned: bool = False
    log: deque[tuple[float, int]] = field(default_factory=deque)
    rolling: int = 0
    paused_until: float = 0.0
    #: The window's responses by header value: the cost of those that showed each value and
    #: the costliest of them, and the latest send time: what `foreign_of_window` needs, kept
    #: as they come. Sorting every response at the window's end stopped the event loop for
    #: ~5 ms per 9,000 responses (~20 ms under load) once a minute at 50 signals/s.
    response_cost: dict[int, int] = field(default_factory=dict)
    response_top: dict[int, int] = field(default_factory=dict)
    last_sent: float = -math.inf
    foreign_history: deque[float] = field(default_factory=lambda: deque(maxlen=2))
    live_foreign: int = 0
    live_at: float = 0.0               # the send time of the request whose header set it
    straddled: int = 0                 # headers set aside by the straddle rule, ever
    #: ``any(foreign_history)`` and ``max(foreign_history, default=0.0)``, kept by ``roll``.
    foreign_seen: bool = False
    foreign_estimate: float = 0.0

    def __post_init__(self) -> None:
        spec = self.spec
        self.budget = math.floor(spec.limit * (1 - self.settings.headroom))
        if self.budget <= 0:
            raise ValueError(f"bucket {spec.name}: limit {spec.limit} leaves no budget")
        self.window_start = self.start(self.window)
        self.next_start = self.start(self.window + 1)
        self.guard_start = self.next_start - self.settings.end_guard * spec.interval_s
        self.late_start = self.next_start - self.settings.straddle_s
        self.opening_end = self.window_start + self.settings.straddle_s

    def index(self, now: float) -> int:
        return math.floor(now / self.spec.interval_s)

    def start(self, window: int) -> float:
        return window * self.spec.interval_s

    # ------------------------------------------------------------------ a new limit
    def take_over(self, old: Bucket, now: float) -> None:
        """Continue from ``old``, the bucket this one replaces after a ``rateLimits`` change,
        at exchange time ``now``; this bucket is new (never used).

        * Same window length (a new limit): everything carries — the window's own and server
          counts (what it carried in and carries out too), the log, the rolling sum, a pause,
          the co-tenant estimate, the warning flag. Only the budget is the new limit's; a
          window already past it admits nothing more until it rolls.
        * Another window length: our own admissions are what we know for certain, so the log
          carries (trimmed to the new length) and the new window's own count is recounted from
          it (with what was admitted in the end zone before the window's start, which the
          exchange may have counted in it); what falls in the new window's end zone is carried
          out. Admissions older than the old window length are no longer in the log: if the new
          window is longer than that, they are learned from the next response's header (the
          limiter adopts ``max(own, server)``). The exchange's count and the live co-tenant
          excess belonged to the old window and start again at zero; the co-tenant estimate of
          past windows is scaled to the new length; a pause carries.
        """
        old.roll(now)
        self.paused_until = old.paused_until
        self.straddled = old.straddled
        self.log = deque(old.log)
        self.rolling = old.rolling
        if old.spec.interval_s == self.spec.interval_s:
            self.window, self.window_start, self.next_start = (
                old.window, old.window_start, old.next_start)
            self.guard_start, self.late_start = old.guard_start, old.late_start
            self.opening_end, self.behind = old.opening_end, old.behind
            self.own, self.server, self.warned = old.own, old.server, old.warned
            self.carried, self.carried_late = old.carried, old.carried_late
            self.carry, self.carry_late = old.carry, old.carry_late
            self.response_cost, self.response_top = (dict(old.response_cost),
                                                     dict(old.response_top))
            self.last_sent = old.last_sent
            self.foreign_history = deque(old.foreign_history, maxlen=2)
            self.live_foreign, self.live_at = old.live_foreign, old.live_at
            self.foreign_seen, self.foreign_estimate = old.foreign_seen, old.foreign_estimate
            return
        scale = self.spec.interval_s / old.spec.interval_s
        self.foreign_history = deque((min(f * scale, float(self.spec.limit))
                                      for f in old.foreign_history), maxlen=2)
        self.roll(now)                     # the window holding now; trims the log
        start, guard = self.window_start, self.settings.end_guard * self.spec.interval_s
        late = self.settings.straddle_s
        self.carried = sum(cost for at, cost in self.log if start - guard <= at < start)
        self.carried_late = sum(cost for at, cost in self.log if start - late <= at < start)
        self.own = self.carried + sum(cost for at, cost in self.log if at >= start)
        self.carry = sum(cost for at, cost in self.log if at >= self.guard_start)
        self.carry_late = sum(cost for at, cost in self.log if at >= self.late_start)
        self.behind = sum(cost for at, cost in self.log
                          if start - self.spec.interval_s <= at < self.opening_end)

    # ------------------------------------------------------------------ window edges
    def used(self) -> int:
        """The count in the current window as we see it: max of own (plus live foreign) and
        the exchange's."""
        return max(self.own + self.live_foreign, self.server)

    def roll(self, now: float) -> None:
        """Move to the window holding ``now`` (closing the co-tenant figure of the one that
        ended, decaying it over windows with no traffic; starting with what the one before it
        carries, and with that window's count behind it) and drop log entries older than one
        window length."""
        index = self.index(now)
        if index != self.window:
            carried = late = behind = 0
            if index == self.window + 1:
                carried, late = self.carry, self.carry_late
                behind = self.own + self.reserve()
                if self.server > behind:
                    behind = self.server
            if self.window >= 0:
                self.foreign_history.append(self.foreign_of_window())
                skipped = index - self.window - 1        # windows with no traffic at all
                last = self.foreign_history[-1]
                for n in range(max(1, skipped - 1), skipped + 1):
                    self.foreign_history.append(last / 2**n)
            self.window = index
            self.window_start = self.start(index)
            self.next_start = self.start(index + 1)
            self.guard_start = (self.next_start
                                - self.settings.end_guard * self.spec.interval_s)
            self.late_start = self.next_start - self.settings.straddle_s
            self.opening_end = self.window_start + self.settings.straddle_s
            self.behind = behind
            self.foreign_seen = any(self.foreign_history)
            self.foreign_estimate = max(self.foreign_history, default=0.0)
            self.own = carried
            self.carried, self.carried_late = carried, late
            self.carry = self.carry_late = 0
            self.server = 0
            self.warned = False
            self.response_cost, self.response_top, self.last_sent = {}, {}, -math.inf
            self.live_foreign = 0
        horizon = now - self.spec.interval_s
        while self.log and self.log[0][0] <= horizon:
            self.rolling -= self.log.popleft()[1]

    # ------------------------------------------------------------------ co-tenants
    def foreign_of_window(self) -> float:
        """Foreign cost of the window just over, attributed from header values, scaled to
        the whole window from where our last response was counted.

        Responses are taken in the order the exchange counted them, i.e. by header value;
        among equal values (a refused or zero-cost response beside the request that set the
        value) the costlier comes first, so our own cost is credited before the value is
        compared and a tie never shows up as foreign use. What the window carried in from the
        previous one's last ``straddle_s`` (``carried_late``) is credited first: the exchange
        may have counted it at this window's start."""
        cost_at, top_at = self.response_cost, self.response_top
        if not cost_at:
            # Nothing seen in that window: keep half of the last estimate, so a co-tenant
            # that went quiet stops costing us room within a few windows.
            return self.foreign_history[-1] / 2 if self.foreign_history else 0.0
        # Among the responses that showed one value the costliest comes first, so the
        # largest excess at that value is the value less the cost before it and its own.
        own_before = self.carried_late
        foreign = 0
        for used in sorted(cost_at):
            excess = used - own_before - top_at[used]
            if excess > foreign:
                foreign = excess
            own_before += cost_at[used]
        last_at = max(self.start(self.window), self.last_sent)
        fraction = (last_at - self.start(self.window)) / self.spec.interval_s
        return min(foreign / max(fraction, 0.5), float(self.spec.limit))

    def reserve(self, priority: Priority = Priority.NORMAL) -> int:
        """Room kept for other users of the bucket in the current window. CRITICAL calls
        reserve only what the exchange has shown them using; the reserve never exceeds
        ``max_reserve`` of the budget, so a greedy co-tenant cannot starve us completely.

        The reserve is what the headers have shown the co-tenants using so far in the window
        (``live_foreign``, as of the send time of the request that showed it), plus their use
        over the rest of the window at the estimated rate, plus ``foreign_margin`` of that
        projection: the margin covers the estimate's error, and what has been seen is not an
        estimate. The rate is estimated from past windows; while none showed a co-tenant,
        from this window's headers (the rate so far, over at least half a window, as
        ``foreign_of_window`` scales a finished window)."""
        live_foreign = self.live_foreign
        if not live_foreign and not self.foreign_seen:
            return 0
        if priority is _CRITICAL:
            return min(live_foreign, self.budget - 1)
        # With a co-tenant this runs on every call: the max() / min() below are spelt out
        # (each keeps the first of equal values, as the builtins do).
        seen = 0.0
        if live_foreign:
            seen = (self.live_at - self.window_start) / self.spec.interval_s
        estimate = self.foreign_estimate
        if not self.foreign_seen:
            estimate = live_foreign / (seen if seen > 0.5 else 0.5)
        wanted = live_foreign + estimate * (1 + self.settings.foreign_margin) * (1 - seen)
        cap = self.budget * self.settings.max_reserve
        if live_foreign > cap:
            cap = live_foreign
        return math.ceil(cap if cap < wanted else wanted)

    def record(self, used: int, cost: int, sent_at: float, now: float) -> bool:
        """Take one response's counter (the exchange's used value, this request included) for
        a request of ``cost`` admitted at ``sent_at``, at exchange time ``now``. True if it
        raised the live co-tenant estimate (so waiters must be re-checked).

        Our own cost in the window is taken without what it carried in from the previous
        window's end zone (``carried``) but for its last ``straddle_s`` (``carried_late``): the
        exchange counted the rest in the previous window (a request that took longer to arrive
        makes the reserve err on the safe side by its cost), so a header above our remaining
        own cost is someone else's use. The last ``straddle_s`` may have landed on either side
        (time sync): taken as ours here, so our own requests never show up as foreign use.

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
        interval = self.spec.interval_s
        log = self.log
        if math.floor(now / interval) != self.window or (log and log[0][0] <= now - interval):
            self.roll(now)
        if math.floor(sent_at / interval) != self.window:
            return False
        if used > self.own and sent_at - self.window_start < self.settings.straddle_s:
            self.straddled += 1
            return False
        if used > self.server:
            self.server = used
        cost_at, top_at = self.response_cost, self.response_top
        cost_at[used] = cost_at.get(used, 0) + cost
        if cost > top_at.get(used, -1):
            top_at[used] = cost
        if sent_at > self.last_sent:
            self.last_sent = sent_at
        excess = used - self.own + self.carried - self.carried_late
        if excess > self.live_foreign:
            self.live_foreign = excess
            self.live_at = sent_at
            return True
        return False

    # ------------------------------------------------------------------ admission
    def ready_at(self, cost: int, priority: Priority, now: float) -> float:
        """``now`` if ``cost`` fits now, else the earliest exchange time worth re-checking (a
        pause's end, the next window, the pace, the rolling cap's release). Rolls the bucket to
        ``now`` first.

        In the window's end zone a cost that fits is admitted too (and charged to the next
        window as well, by the limiter's ``_admit``): the only extra condition, in a paced
        bucket and below CRITICAL, is that the next window's pace takes what this one carries
        into it; elsewhere that follows from the window's own caps. In the window's opening
        (its first ``straddle_s``), below CRITICAL, the previous window must have room for the
        cost too (``behind``), or it waits for the opening's end.

        Runs on every call: the roll is skipped when it would change nothing, and no builtin
        ``max`` / ``min`` on the common path (the arithmetic is the same)."""
        length = self.spec.interval_s
        log = self.log
        if math.floor(now / length) != self.window or (log and log[0][0] <= now - length):
            self.roll(now)
        if self.paused_until > now:
            return self.paused_until
        if cost == 0:
            return now
        budget = self.budget
        room = budget
        if self.live_foreign or self.foreign_seen:
            room = budget - self.reserve(priority)
        own = self.own + cost
        if own > room or self.server + cost > budget:
            return self.next_start
        ready = now
        if now < self.opening_end and priority is not _CRITICAL and self.behind + cost > budget:
            ready = self.opening_end                               # the previous window's room
        s = self.settings
        if self.spec.paced and priority is not _CRITICAL:
            paced = room * (s.low_share if priority is _LOW else 1.0)
            needed = own / paced - s.pace_lead                     # pacing
            if needed > 0.0:
                at = self.window_start + needed * length
                if at > ready:
                    ready = at
            if ready >= self.guard_start and self.carry + cost > paced * s.pace_lead:
                return self.next_start                             # the next window's pace
        elif priority is _LOW and own > room * s.low_share:
            return self.next_start
        if self.rolling + cost > room:                              # rolling cap
            excess = self.rolling + cost - room
            for at, spent in log:
                excess -= spent
                if excess <= 0:
                    ready = max(ready, at + length)
                    break
        return ready
