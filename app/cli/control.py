"""``execd signal`` and ``execd status``: the CLI commands that talk to the control API."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any

import orjson

from app.cli.client import ApiAnswer, ControlClient
from app.config import Settings

__all__ = ["send_signal", "show_status"]

TERMINAL = ("DONE", "REJECTED", "FAILED", "EXPIRED")
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
