"""Binance's rate limits as the simulator enforces them: fixed, clock-aligned windows.

REQUEST_WEIGHT is counted per IP, ORDERS per account, each in windows ``[k·W, (k+1)·W)`` of
server time. A request over a limit gets 429 (-1003 or -1015) with ``Retry-After`` = seconds to
the window's end and costs nothing; a client that collects ``ban_after_429s`` 429s in one window
and goes on is banned (418) for ``ban.initial_s``, growing by ``ban.factor`` per repeat, capped
at ``ban.max_s``. Headers are named as Binance names them: ``x-mbx-used-weight-1m``,
``x-mbx-order-count-10s``…
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.sim import errors
from app.sim.config import SimConfig
from app.sim.views import interval_of

_LETTER = {"SECOND": "s", "MINUTE": "m", "HOUR": "h", "DAY": "d"}
_WORDS = {"SECOND": "second", "MINUTE": "minute", "HOUR": "hour", "DAY": "day"}


def label(seconds: int) -> str:
    """Header suffix for a window: 60 → ``1m``, 10 → ``10s``."""
    interval, num = interval_of(seconds)
    return f"{num}{_LETTER[interval]}"


def per_words(seconds: int) -> str:
    interval, num = interval_of(seconds)
    word = _WORDS[interval]
    return word if num == 1 else f"{num} {word}s"


@dataclass(slots=True)
class Window:
    """A fixed window's count: ``start`` is the window index, ``used`` its count."""

    length: int
    limit: int
    start: int = -1
    used: int = 0

    def roll(self, now: float) -> None:
        index = math.floor(now / self.length)
        if index != self.start:
            self.start = index
            self.used = 0

    def seconds_left(self, now: float) -> float:
        return (self.start + 1) * self.length - now


@dataclass(slots=True)
class IpState:
    weight: Window
    rejections_window: int = -1
    rejections: int = 0
    banned_until: float = 0.0
    offences: int = 0


class RateLimits:
    """Per-IP weight, per-account order counts, 429/418 escalation and header values."""

    def __init__(self, config: SimConfig) -> None:
        self._config = config
        lim = config.limits
        self.weight_label = label(lim.request_weight_interval_s)
        self.reset()
        self._order_labels = (label(lim.orders_short_interval_s),
                              label(lim.orders_long_interval_s))

    def reset(self) -> None:
        lim = self._config.limits
        self.ips: dict[str, IpState] = {}
        self.orders_short = Window(lim.orders_short_interval_s, lim.orders_short)
        self.orders_long = Window(lim.orders_long_interval_s, lim.orders_long)
        self.count_429 = 0
        self.count_418 = 0

    def _ip(self, ip: str) -> IpState:
        state = self.ips.get(ip)
        if state is None:
            lim = self._config.limits
            state = self.ips[ip] = IpState(Window(lim.request_weight_interval_s,
                                                  lim.request_weight))
        return state

    def admit(self, ip: str, weight: int, orders: int, now: float) -> dict[str, str]:
        """Count a request, or raise the 429/418 ``ApiError`` it earns. Returns its headers."""
        state = self._ip(ip)
        state.weight.roll(now)
        if state.banned_until > now:
            raise self._banned(state, ip, now)
        if state.weight.used + weight > state.weight.limit:
            raise self._throttled(state, ip, now, errors.ApiError(
                429, -1003,
                f"Too many requests; current limit of IP({ip}) is {state.weight.limit} "
                f"requests per {per_words(state.weight.length)}. Please use the websocket for "
                "live updates to avoid polling the API."))
        if orders:
            for window in (self.orders_short, self.orders_long):
                window.roll(now)
                if window.used + orders > window.limit:
                    raise self._throttled(state, ip, now, errors.ApiError(
                        429, -1015,
                        f"Too many new orders; current limit is {window.limit} orders per "
                        f"{per_words(window.length)}."), window=window)
            self.orders_short.used += orders
            self.orders_long.used += orders
        state.weight.used += weight
        return self.headers(ip, now, orders=bool(orders))

    def refund(self, ip: str, weight: int, orders: int, now: float) -> None:
        """Give a request's weight and order count back (faults Binance documents as not
        counted: -1008 throttling, 503 "Service Unavailable.")."""
        state = self._ip(ip)
        state.weight.roll(now)
        state.weight.used = max(0, state.weight.used - weight)
        for window in (self.orders_short, self.orders_long):
            window.roll(now)
            window.used = max(0, window.used - orders)

    def headers(self, ip: str, now: float, *, orders: bool) -> dict[str, str]:
        state = self._ip(ip)
        state.weight.roll(now)
        used = str(state.weight.used)
        out = {f"x-mbx-used-weight-{self.weight_label}": used, "x-mbx-used-weight": used}
        if orders:
            self.orders_short.roll(now)
            self.orders_long.roll(now)
            out[f"x-mbx-order-count-{self._order_labels[0]}"] = str(self.orders_short.used)
            out[f"x-mbx-order-count-{self._order_labels[1]}"] = str(self.orders_long.used)
        return out

    def _throttled(self, state: IpState, ip: str, now: float, error: errors.ApiError,
                   window: Window | None = None) -> errors.ApiError:
        if state.rejections_window != state.weight.start:
            state.rejections_window = state.weight.start
            state.rejections = 0
        if state.rejections >= self._config.limits.ban_after_429s:
            ban = self._config.ban
            duration = min(ban.max_s, ban.initial_s * ban.factor ** state.offences)
            state.offences += 1
            state.banned_until = now + duration
            return self._banned(state, ip, now)
        state.rejections += 1
        self.count_429 += 1
        left = (window or state.weight).seconds_left(now)
        error.headers.update(self.headers(ip, now, orders=window is not None))
        error.headers["Retry-After"] = str(max(1, math.ceil(left)))
        return error

    def _banned(self, state: IpState, ip: str, now: float) -> errors.ApiError:
        self.count_418 += 1
        until_ms = int(state.banned_until * 1000)
        error = errors.ApiError(
            418, -1003,
            f"Way too many requests; IP({ip}) banned until {until_ms}. Please use the "
            "websocket for live updates to avoid bans.")
        error.headers.update(self.headers(ip, now, orders=False))
        error.headers["Retry-After"] = str(max(1, math.ceil(state.banned_until - now)))
        return error

    def bans(self, now: float) -> list[dict[str, object]]:
        return [{"ip": ip, "until_ms": int(s.banned_until * 1000),
                 "retry_after_s": math.ceil(s.banned_until - now)}
                for ip, s in self.ips.items() if s.banned_until > now]

    def used_weight(self, now: float) -> dict[str, object]:
        total = 0
        by_ip: dict[str, int] = {}
        for ip, state in self.ips.items():
            state.weight.roll(now)
            by_ip[ip] = state.weight.used
            total += state.weight.used
        return {self.weight_label: total, "by_ip": by_ip}

    def order_counts(self, now: float) -> dict[str, int]:
        self.orders_short.roll(now)
        self.orders_long.roll(now)
        return {self._order_labels[0]: self.orders_short.used,
                self._order_labels[1]: self.orders_long.used}
