"""The CLI commands that talk to the control API: ``execd signal``, ``status``, and the
operator's ``halt``, ``reduce``, ``resume``, ``flatten`` and ``cancel`` (SPEC §11.1)."""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
import uuid
from typing import Any

import orjson

from app.cli.client import ApiAnswer, ControlClient
from app.config import Settings

__all__ = ["cancel_signal", "flatten", "send_signal", "set_trading_state", "show_status"]

TERMINAL = ("DONE", "REJECTED", "FAILED", "EXPIRED", "CANCELED")
STATE_OF_COMMAND = {"halt": "HALTED", "reduce": "REDUCING", "resume": "ACTIVE"}
#: A flatten closes positions one after another, each through the exactly-once protocol.
FLATTEN_TIMEOUT_S = 300.0
LEG_NAMES = {"E": "entry", "S": "stop_loss", "T": "take_profit", "C": "close"}
POLL_S = 0.2


def send_signal(args: argparse.Namespace, client: ControlClient, settings: Settings) -> int:
    """POST the signal; with ``--wait`` poll it to its final state. Exit 0 only for accepted
    (or, with --wait, DONE); 2 for a signal the daemon rejected as invalid."""
    body: dict[str, Any] = {"id": args.id or f"cli-{uuid.uuid4().hex[:20]}",
                            "symbol": args.symbol, "type": args.type, "source": "cli"}
    for key, value in (("quantity", args.qty), ("take_profit", args.tp),
                       ("stop_loss", args.sl), ("leverage", args.leverage),
                       ("margin_type", args.margin_type), ("ttl_s", args.ttl)):
        if value is not None:
            body[key] = value
    answer = client.post("/v1/signals", body)
    if answer.status not in (200, 202):
        return _refused(answer, client, settings)
    view = answer.body
    word = "ACCEPTED" if answer.status == 202 else f"DUPLICATE ({view['state']})"
    print(f"{word} {view['id']}")
    if not args.wait:
        return 0
    ttl = float(args.ttl or settings.execution.default_ttl_s)
    deadline = time.monotonic() + ttl + 60.0   # a signal never outlives its TTL by much
    while view["state"] not in TERMINAL:
        if time.monotonic() > deadline:
            print(f"gave up waiting: {view['id']} is still {view['state']}", file=sys.stderr)
            return 1
        time.sleep(POLL_S)                    # the CLI's own process: blocking is fine here
        polled = client.get(f"/v1/signals/{view['id']}")
        if polled.status != 200:
            return _refused(polled, client, settings)
        view = polled.body
    _print_final(view)
    return 0 if view["state"] == "DONE" else 1


def _print_final(view: dict[str, Any]) -> None:
    print(f"{view['state']} {view['id']}: {view.get('reason') or ''}".rstrip())
    for intent in view.get("intents", []):
        leg = LEG_NAMES.get(intent["leg"], intent["leg"])
        print(f"  {leg:<12} {intent['state']:<10} client_id {intent['client_id']}  "
              f"exchange_id {intent.get('exchange_id') or '-'}")


def _refused(answer: ApiAnswer, client: ControlClient, settings: Settings) -> int:
    body = answer.body if isinstance(answer.body, dict) else {}
    if answer.status == 400:
        field, detail = body.get("field"), body.get("detail") or body.get("error")
        print(f"rejected: {field + ': ' if field else ''}{detail}", file=sys.stderr)
        return 2
    if answer.status == 401:
        print(f"unauthorized at {client.base_url}: {ControlClient.token_hint(settings)}",
              file=sys.stderr)
    elif answer.status == 429:
        print(f"the daemon's queue is full; retry after {answer.headers.get('Retry-After', '1')} s",
              file=sys.stderr)
    elif answer.status == 503 and str(body.get("error", "")).startswith("journal_"):
        print(f"the daemon could not journal it ({body['error']}): {body.get('detail', '')}; "
              f"retry after {answer.headers.get('Retry-After', '1')} s", file=sys.stderr)
    elif answer.status == 503:
        print(f"the daemon is {body.get('error', 'unavailable')}; try again shortly",
              file=sys.stderr)
    else:
        print(f"HTTP {answer.status}: {orjson.dumps(answer.body).decode()}", file=sys.stderr)
    return 1


def show_status(args: argparse.Namespace, client: ControlClient, settings: Settings) -> int:
    answer = client.get("/v1/status")
    if answer.status != 200:
        return _refused(answer, client, settings)
    status: dict[str, Any] = answer.body
    if not isinstance(status.get("positions"), list):   # a daemon without the live book
        status["positions"] = client.positions(status.get("symbols", []))
    if args.json:
        print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
        return 0
    _print_table(status)
    return 0


def _print_table(status: dict[str, Any]) -> None:
    from rich.console import Console

    from app.cli.monitor import render

    Console().print(render(status))


def set_trading_state(args: argparse.Namespace, client: ControlClient,
                      settings: Settings) -> int:
    """``execd halt|reduce|resume [--reason TEXT]``: print the new state."""
    reason = args.reason or f"execd {args.command}"
    answer = client.post("/v1/trading-state", {"state": STATE_OF_COMMAND[args.command],
                                               "reason": reason})
    if answer.status != 200:
        return _refused(answer, client, settings)
    body = answer.body
    print(f"{body['state']} since {body['since']}: {body['reason']}")
    return 0


def flatten(args: argparse.Namespace, client: ControlClient, settings: Settings) -> int:
    """``execd flatten SYMBOL…|--all [--yes]``: one line per symbol; exit 1 if one failed."""
    if bool(args.symbols) == bool(args.all):
        print("execd flatten: name the symbols or give --all (not both)", file=sys.stderr)
        return 2
    what = "every open position" if args.all else ", ".join(args.symbols)
    if not args.yes and sys.stdin.isatty():
        answer_text = input(f"Close {what} at market and cancel its stops? [y/N] ")
        if answer_text.strip().lower() not in ("y", "yes"):
            print("nothing done")
            return 1
    client.timeout_s = max(client.timeout_s, FLATTEN_TIMEOUT_S)
    answer = client.post("/v1/flatten", {"all": True} if args.all else {"symbols": args.symbols})
    if answer.status != 200:
        return _refused(answer, client, settings)
    results = answer.body["results"]
    if not results:
        print("nothing to flatten: no open positions")
    for result in results:
        print(f"{result['symbol']:<14} {result['state']:<13} closed {result['closed_qty']}  "
              f"protective orders cancelled {result['cancelled']}")
    return 1 if any(r["state"] == "FAILED" for r in results) else 0


def cancel_signal(args: argparse.Namespace, client: ControlClient, settings: Settings) -> int:
    """``execd cancel ID``: 0 when CANCELED, 1 when it already started or ended (its state
    printed) or is unknown."""
    answer = client.delete(f"/v1/signals/{urllib.parse.quote(args.id, safe='')}")
    if answer.status == 200:
        print(f"CANCELED {answer.body['id']}")
        return 0
    if answer.status == 409:
        print(f"not cancelled: {args.id} is {answer.body.get('state')} (only a signal still "
              "waiting in the queue can be cancelled)", file=sys.stderr)
        return 1
    if answer.status == 404:
        print(f"no signal {args.id!r}", file=sys.stderr)
        return 1
    return _refused(answer, client, settings)
