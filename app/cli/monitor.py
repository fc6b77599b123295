"""``execd monitor``: a terminal dashboard of the running daemon (SPEC §9), drawn with rich.

`render` turns one ``/v1/status`` document (plus ``positions``) into panels: breakers, limiter
bars, error rates and recent errors (``errors``, the error monitor's snapshot), queue and lanes,
positions. It only reads the mapping and tolerates missing sections, so it can be tested without
a daemon. `run_monitor` fetches the status through the control API: once (``--once``), or every
``--interval`` seconds under ``rich.live.Live`` until Ctrl-C; ``--export FILE`` also writes the
document fetched as JSON (rewritten at each refresh).

This runs in the CLI's own process, so blocking calls (``urllib``, ``time.sleep``) are fine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import orjson
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from app.cli.client import ControlClient, DaemonUnreachable
from app.config import Settings

__all__ = ["StatusUnavailable", "fetch_status", "render", "run_monitor"]

_BREAKER_STYLES: Final = {"closed": "green", "half_open": "yellow", "open": "bold red"}
_RECENT_SHOWN: Final = 10
_BAR_WIDTH: Final = 30


class StatusUnavailable(Exception):
    """The control API answered, but not with a status (auth, starting, server error)."""


# ---------------------------------------------------------------------- rendering
def render(status: Mapping[str, Any]) -> RenderableType:
    """The dashboard for one status document (the ``/v1/status`` JSON, with optional
    ``errors`` and ``positions``)."""
    top = Table.grid(expand=True, padding=(0, 1))
    top.add_column(ratio=1)
    top.add_column(ratio=1)
    top.add_row(_breakers(status.get("breakers") or {}), _queue(status.get("queue") or {}))
    parts: list[RenderableType] = [_trading(status.get("trading_state")), _header(status), top,
                                   _limiter(status.get("limiter") or []),
                                   _errors(status.get("errors"))]
    journal = status.get("journal") or {}
    if journal.get("broken"):
        parts.insert(1, Text(f" JOURNAL FAILED: {journal['broken']}: no signal is accepted; "
                             "check the disk, then restart execd ", style="bold white on red"))
    if status.get("streams") is not None:
        parts.append(_live(status))
    if status.get("positions") is not None:
        parts.append(_positions(status["positions"]))
    return Group(*parts)


def _live(status: Mapping[str, Any]) -> Text:
    """The streams' state, time without a stop, today's realized PnL."""
    streams = status.get("streams") or {}
    text = Text()
    for name in ("user", "market"):
        info = streams.get(name) or {}
        state = str(info.get("state", "?"))
        style = {"connected": "green", "down": "bold red"}.get(state, "dim")
        text.append(f"{name} stream ")
        text.append(state, style=style)
        age = info.get("last_event_age_s")
        text.append(f" (last event {age} s ago)  " if age is not None else "  ")
    naked = (status.get("protection") or {}).get("unprotected_seconds_total")
    if naked is not None:
        text.append(f"· unprotected {naked} s  ", style="bold red" if naked else "")
    pnl = status.get("realized_pnl_today") or {}
    text.append("· realized PnL today " + (", ".join(f"{s} {v}" for s, v in pnl.items())
                                           or "0"))
    return text


def _trading(trading: Mapping[str, Any] | None) -> Text:
    """The trading state first, in its colour, with why and since when (SPEC §5.10)."""
    text = Text()
    if not trading:
        return text
    state = str(trading.get("state", "?"))
    style = {"ACTIVE": "bold green", "REDUCING": "bold yellow",
             "HALTED": "bold white on red"}.get(state, "bold")
    text.append(f" {state} ", style=style)
    text.append(f"  {trading.get('reason', '')}  · since {trading.get('since', '?')}"
                f"  · by {trading.get('by', '?')}  · daily loss {trading.get('daily_loss', '?')}"
                f"  · orders last minute {trading.get('orders_last_minute', '?')}")
    return text


def _header(status: Mapping[str, Any]) -> Text:
    exchange = status.get("exchange") or {}
    text = Text()
    text.append(f"execd {status.get('version', '?')}", style="bold")
    text.append(f"  {status.get('state', '?')}", style="bold cyan")
    text.append(f"  · {exchange.get('mode', '?')} {exchange.get('base_url') or ''}"
                f"  · up {status.get('uptime_s', '?')} s  · pid {status.get('pid', '?')}")
    return text


def _breakers(breakers: Mapping[str, Mapping[str, Any]]) -> Panel:
    table = Table("group", "state", "retry after", box=None, expand=True)
    for group, info in sorted(breakers.items()):
        state = str(info.get("state", "?"))
        retry = float(info.get("retry_after") or 0.0)
        table.add_row(group, Text(state, style=_BREAKER_STYLES.get(state, "magenta")),
                      f"{retry:.1f} s" if retry > 0 else "-")
    if not breakers:
        table.add_row("-", "no breakers", "-")
    return Panel(table, title="breakers", border_style=_worst_breaker_style(breakers))


def _worst_breaker_style(breakers: Mapping[str, Mapping[str, Any]]) -> str:
    states = {info.get("state") for info in breakers.values()}
    for state in ("open", "half_open"):
        if state in states:
            return _BREAKER_STYLES[state]
    return "green"


def _queue(queue: Mapping[str, Any]) -> Panel:
    lines = Table.grid(padding=(0, 2))
    lines.add_column(style="bold")
    lines.add_column()
    lines.add_row("pending", f"{queue.get('pending', 0)} / {queue.get('capacity', '?')}")
    lines.add_row("running", f"{queue.get('running', 0)} / {queue.get('max_concurrency', '?')}")
    lanes: Mapping[str, int] = queue.get("lanes") or {}
    lines.add_row("lanes", ", ".join(f"{symbol} {n}" for symbol, n in sorted(lanes.items()))
                  or "idle")
    return Panel(lines, title="queue and lanes")


def _limiter(buckets: Sequence[Mapping[str, Any]]) -> Panel:
    table = Table("bucket", "used", "", "budget", "waiting", box=None, expand=True)
    for bucket in buckets:
        used, limit = int(bucket.get("used", 0)), int(bucket.get("limit", 0))
        share = used / limit if limit > 0 else 0.0
        colour = "green" if share < 0.7 else "yellow" if share < 0.9 else "red"
        bar = ProgressBar(total=max(limit, 1), completed=min(used, max(limit, 1)),
                          width=_BAR_WIDTH, complete_style=colour, finished_style="red")
        table.add_row(str(bucket.get("name", "?")), f"{used}/{limit}", bar,
                      str(bucket.get("budget", "-")), str(bucket.get("waiting", 0)))
    if not buckets:
        table.add_row("-", "no buckets yet", "", "", "")
    return Panel(table, title="rate limits")


def _errors(errors: Mapping[str, Any] | None) -> Panel:
    if not errors:
        return Panel(Text("no error monitor data", style="dim"), title="errors")
    rate, threshold = errors.get("rate_per_min", 0.0), errors.get("threshold_per_min")
    over = threshold is not None and rate >= threshold
    summary = Text()
    summary.append(f"{errors.get('total', 0)} errors in {errors.get('window_s', '?')} s · ")
    summary.append(f"{rate} /min", style="bold red" if over else "bold")
    summary.append(f" (alert at {threshold} /min) · alerts sent: "
                   f"{errors.get('alerts_sent', 0)}")
    counts = Table("class", "count", "per min", box=None)
    rates: Mapping[str, float] = errors.get("rates_per_min") or {}
    for name, n in (errors.get("counts") or {}).items():
        counts.add_row(name, str(n), str(rates.get(name, "-")))
    recent = Table("ts", "event", "class", "message", box=None, expand=True)
    for item in reversed(list(errors.get("recent") or [])[-_RECENT_SHOWN:]):
        recent.add_row(str(item.get("ts", "")), str(item.get("event", "")),
                       str(item.get("error_class") or ""),
                       Text(str(item.get("message") or ""), overflow="ellipsis", no_wrap=True))
    parts: list[RenderableType] = [summary, counts, Text("recent errors", style="bold"), recent]
    alerts = errors.get("alerts") or []
    if alerts:
        last = alerts[-1]
        parts.append(Text(f"last alert {last.get('ts')}: {last.get('kind')} — "
                          f"{last.get('detail')}", style="bold red"))
    return Panel(Group(*parts), title="errors", border_style="red" if over else "default")


def _positions(positions: Sequence[Mapping[str, Any]]) -> Panel:
    """Every non-zero position on the account, each with its stop and take-profit; a
    position execd did not open is marked foreign, one execd opened without a stop in red."""
    table = Table("symbol", "side", "amount", "entry", "mark", "stop", "take-profit", "owner",
                  box=None, expand=True)
    for p in positions:
        amount = str(p.get("amount", "0"))
        side = ("flat" if amount.strip("-0.") == "" else
                "SHORT" if amount.startswith("-") else "LONG")
        foreign = bool(p.get("foreign", False))
        stop = p.get("stop_loss")
        table.add_row(str(p.get("symbol", "?")), side, amount,
                      str(p.get("entry_price", "-")),
                      str(p.get("mark") or p.get("mark_price") or "-"),
                      Text(str(stop) if stop else "none",
                           style="" if stop or foreign else "bold red"),
                      str(p.get("take_profit") or "-"), "foreign" if foreign else "execd")
    if not positions:
        table.add_row("-", "no positions", "", "", "", "", "", "")
    return Panel(table, title="positions")


# ---------------------------------------------------------------------- the command
def fetch_status(client: ControlClient) -> dict[str, Any]:
    """``/v1/status``, whose ``positions`` lists every non-zero position on the account (from
    a daemon before the live book: one ``/v1/positions/{symbol}`` per known symbol). Raises
    StatusUnavailable for a non-200 status answer and DaemonUnreachable when nothing
    listens."""
    answer = client.get("/v1/status")
    if answer.status != 200:
        body = answer.body if isinstance(answer.body, dict) else {}
        raise StatusUnavailable(f"HTTP {answer.status}: "
                                f"{body.get('error') or body.get('detail') or answer.body}")
    status: dict[str, Any] = answer.body
    if not isinstance(status.get("positions"), list):   # a daemon without the live book
        status["positions"] = client.positions(status.get("symbols", []))
    return status


def run_monitor(args: argparse.Namespace, client: ControlClient, settings: Settings, *,
                console: Console | None = None,
                sleep: Callable[[float], None] = time.sleep) -> int:
    """`execd monitor`: ``args.once``, ``args.interval`` (seconds), ``args.export`` (a path or
    None). Returns 0 (also on Ctrl-C); 1 when the first status cannot be had (the message is on
    stderr). Raises DaemonUnreachable when nothing answers at first (the CLI reports it)."""
    console = Console() if console is None else console
    once: bool = getattr(args, "once", False)
    interval = float(getattr(args, "interval", None) or 1.0)
    export: Path | None = getattr(args, "export", None)
    try:
        status = fetch_status(client)
    except StatusUnavailable as exc:
        hint = f" ({ControlClient.token_hint(settings)})" if "HTTP 401" in str(exc) else ""
        print(f"execd monitor: {exc}{hint}", file=sys.stderr)
        return 1
    if export is not None:
        _export(export, status)
    if once:
        console.print(render(status))
        return 0
    try:
        with Live(render(status), console=console, auto_refresh=False,
                  screen=False) as live:
            while True:
                sleep(interval)                   # the CLI's own process: blocking is fine
                live.update(_refresh(client, export), refresh=True)
    except KeyboardInterrupt:
        return 0


def _refresh(client: ControlClient, export: Path | None) -> RenderableType:
    """The next frame; a daemon that went away or is restarting is shown, not fatal."""
    try:
        status = fetch_status(client)
    except (DaemonUnreachable, StatusUnavailable) as exc:
        return Panel(Text(str(exc), style="bold red"), title="execd unavailable, retrying")
    if export is not None:
        _export(export, status)
    return render(status)


def _export(path: Path, status: Mapping[str, Any]) -> None:
    """Write `status` as indented JSON, atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(orjson.dumps(status, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    os.replace(tmp, path)
