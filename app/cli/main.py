"""The ``execd`` command line (SPEC §11.1); also ``python -m app``.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error (the message names the key).
Every command works: ``run`` and ``sim`` serve, ``signal``, ``status`` and ``monitor`` talk to the
daemon's control API, ``logs`` reads the audit files.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from app import __version__
from app.config import (
    ConfigError,
    ExchangeMode,
    Settings,
    config_dir,
    load_settings,
    sim_config_paths,
)

if TYPE_CHECKING:
    from app.cli.client import ControlClient

__all__ = ["main"]

SIGNAL_TYPES = ("LONG_ENTRY", "SHORT_ENTRY", "CLOSE_LONG", "CLOSE_SHORT")
DEFAULT_SIM_PORT = 8471

_Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``execd`` command and return its exit code (the console script exits with it)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: _Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return handler(args)


def _cmd_run(args: argparse.Namespace) -> int:
    # Imported here so that `execd --help` and the client commands stay light.
    from app import daemon
    from app.errors import ExchangeError
    from app.journal import JournalUnreadable
    from app.journal_lock import JournalLocked

    overrides = {"exchange.mode": args.mode, "api.port": args.api_port,
                 "intake.nats.url": args.nats}
    previous_umask: int | None = None
    try:
        settings = load_settings(args.config, overrides)
        # Before anything is created: the journal, its lock, the token and the audit files
        # are the owner's alone (0600, directories 0700). Given back for in-process callers.
        previous_umask = os.umask(0o077)
        return daemon.run(settings, exchange_url=args.exchange_url, spool=args.spool)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except ExchangeError as exc:
        print(f"execd run: the exchange failed at start-up: {exc.error_class} ({exc.message}); "
              f"{exc.suggested_action}", file=sys.stderr)
        return 1
    except (JournalLocked, JournalUnreadable) as exc:
        print(f"execd run: {exc}", file=sys.stderr)
        return 1
    finally:
        if previous_umask is not None:
            os.umask(previous_umask)


def _cmd_sim(args: argparse.Namespace) -> int:
    from app.sim import run_standalone

    return run_standalone(
        host=args.host,
        port=args.port,
        config_paths=sim_config_paths(args.config),
        faults_path=args.faults,
        seed=args.seed,
    )


def _cmd_signal(args: argparse.Namespace) -> int:
    from app.cli.control import send_signal

    return _with_client(args, send_signal)


def _cmd_status(args: argparse.Namespace) -> int:
    from app.cli.control import show_status

    return _with_client(args, show_status)


def _cmd_trading_state(args: argparse.Namespace) -> int:
    from app.cli.control import set_trading_state

    return _with_client(args, set_trading_state)


def _cmd_flatten(args: argparse.Namespace) -> int:
    from app.cli.control import flatten

    return _with_client(args, flatten)


def _cmd_cancel(args: argparse.Namespace) -> int:
    from app.cli.control import cancel_signal

    return _with_client(args, cancel_signal)


def _with_client(args: argparse.Namespace,
                 command: Callable[[argparse.Namespace, ControlClient, Settings], int]) -> int:
    from app.cli.client import ControlClient, DaemonUnreachable

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        return command(args, ControlClient.from_settings(settings), settings)
    except DaemonUnreachable as exc:
        print(f"execd {args.command}: {exc}", file=sys.stderr)
        return 1


def _cmd_monitor(args: argparse.Namespace) -> int:
    from app.cli.monitor import run_monitor

    return _with_client(args, run_monitor)


def _cmd_logs(args: argparse.Namespace) -> int:
    from app.cli.logs import run_logs

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    return run_logs(args, settings)


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return value.rstrip("/").removesuffix("/fapi")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="execd",
        description="Execution daemon for Binance USDⓈ-M futures, with an embedded simulator.",
        epilog=f"Configuration: {config_dir() / 'default.toml'} and docs/configuration.md.",
    )
    parser.add_argument("--version", action="version", version=f"execd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon until SIGTERM/SIGINT")
    run.add_argument("--config", type=Path, metavar="FILE", help="extra TOML config file")
    run.add_argument("--mode", choices=[m.value for m in ExchangeMode], help="exchange mode")
    run.add_argument("--exchange-url", type=_url, metavar="URL",
                     help="base URL of a running exchange or simulator (no /fapi)")
    run.add_argument("--api-port", type=int, metavar="N", help="control API port")
    run.add_argument("--spool", type=Path, metavar="FILE", help="JSONL signal spool to tail")
    run.add_argument("--nats", metavar="URL",
                     help="NATS server for signals and reports, e.g. nats://host:4222 "
                          "([intake.nats] url)")
    run.set_defaults(handler=_cmd_run)

    sim = commands.add_parser("sim", help="run the exchange simulator alone")
    sim.add_argument("--port", type=int, default=DEFAULT_SIM_PORT, metavar="N",
                     help=f"port to listen on (default {DEFAULT_SIM_PORT})")
    sim.add_argument("--host", default="127.0.0.1", metavar="H",
                     help="address to listen on (default 127.0.0.1)")
    sim.add_argument("--config", type=Path, metavar="FILE",
                     help="simulator TOML overlaid on config/sim.toml")
    sim.add_argument("--faults", type=Path, metavar="FILE", help="fault plan TOML")
    sim.add_argument("--seed", type=int, metavar="N", help="random seed (prices, faults)")
    sim.set_defaults(handler=_cmd_sim)

    sig = commands.add_parser("signal", help="submit a signal to the running daemon")
    sig.add_argument("type", choices=SIGNAL_TYPES, metavar="TYPE",
                     help=" | ".join(SIGNAL_TYPES))
    sig.add_argument("symbol", metavar="SYMBOL", help="e.g. BTCUSDT")
    sig.add_argument("--qty", metavar="Q", help="quantity (decimal)")
    sig.add_argument("--tp", metavar="P", help="take-profit trigger price")
    sig.add_argument("--sl", metavar="P", help="stop-loss trigger price")
    sig.add_argument("--leverage", type=int, metavar="N", help="leverage, 1-125")
    sig.add_argument("--id", metavar="ID", help="idempotency key (generated when absent)")
    sig.add_argument("--margin-type", choices=("ISOLATED", "CROSSED"), help="margin type")
    sig.add_argument("--ttl", type=float, metavar="S", help="seconds the signal stays valid")
    sig.add_argument("--wait", action="store_true",
                     help="wait for the final state; exit 0 only for DONE")
    sig.add_argument("--config", type=Path, metavar="FILE", help="extra TOML config file")
    sig.set_defaults(handler=_cmd_signal)

    status = commands.add_parser("status", help="one-shot status of the running daemon")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument("--config", type=Path, metavar="FILE", help="extra TOML config file")
    status.set_defaults(handler=_cmd_status)

    logs = commands.add_parser("logs", help="read or follow the audit log")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    logs.add_argument("--event", metavar="NAME", help="only this event name")
    logs.add_argument("--symbol", metavar="S", help="only this symbol")
    logs.add_argument("--signal", metavar="ID", help="only this signal id")
    logs.add_argument("--level", metavar="L", help="only this level and above")
    logs.add_argument("--since", metavar="AGE", help="only events newer than AGE, e.g. 10m")
    logs.add_argument("--json", action="store_true", help="print the raw audit lines only")
    logs.add_argument("--config", type=Path, metavar="FILE", help="extra TOML config file")
    logs.set_defaults(handler=_cmd_logs)

    monitor = commands.add_parser("monitor", help="live terminal dashboard")
    monitor.add_argument("--once", action="store_true", help="print one snapshot and exit")
    monitor.add_argument("--interval", type=float, default=1.0, metavar="S",
                         help="refresh interval in seconds (default 1)")
    monitor.add_argument("--export", type=Path, metavar="FILE",
                         help="also write the snapshot as JSON")
    monitor.add_argument("--config", type=Path, metavar="FILE", help="extra TOML config file")
    monitor.set_defaults(handler=_cmd_monitor)

    for name, doing in (("halt", "stop sending entries and closes (protection goes on)"),
                        ("reduce", "stop opening positions; closes go on"),
                        ("resume", "trade normally again (ACTIVE)")):
        state = commands.add_parser(name, help=doing)
        state.add_argument("--reason", metavar="TEXT", help="why (audited)")
        state.add_argument("--config", type=Path, metavar="FILE", help="extra TOML config file")
        state.set_defaults(handler=_cmd_trading_state)

    flat = commands.add_parser("flatten", help="cancel stops and close positions at market")
    flat.add_argument("symbols", nargs="*", metavar="SYMBOL", help="symbols to flatten")
    flat.add_argument("--all", action="store_true", help="every open position on the account")
    flat.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    flat.add_argument("--config", type=Path, metavar="FILE", help="extra TOML config file")
    flat.set_defaults(handler=_cmd_flatten)

    cancel = commands.add_parser("cancel", help="take back a signal still in the queue")
    cancel.add_argument("id", metavar="ID", help="the signal's id")
    cancel.add_argument("--config", type=Path, metavar="FILE", help="extra TOML config file")
    cancel.set_defaults(handler=_cmd_cancel)
    return parser
