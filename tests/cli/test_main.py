"""The execd command line: arguments, exit codes, and the daemon as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import orjson
import pytest

from app.cli.main import main
from app.config import PROJECT_ROOT
from tests.daemon_process import free_port

COMMANDS = ("run", "sim", "signal", "status", "logs", "monitor")
READY_TIMEOUT_S = 30.0


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the caller's EXECD_/BINANCE_ variables out of these tests."""
    for name in list(os.environ):
        if name.startswith(("EXECD_", "BINANCE_")):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_exits_zero(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints usage and exits 0, for execd and for each command."""
    with pytest.raises(SystemExit) as info:
        main([command, "--help"] if command else ["--help"])
    assert info.value.code == 0
    assert "usage: execd" in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """execd without a command prints help to stderr and exits 2."""
    assert main([]) == 2
    assert "usage: execd" in capsys.readouterr().err


def test_bad_argument_is_a_usage_error() -> None:
    """An invalid choice (here --mode) exits 2 through argparse."""
    with pytest.raises(SystemExit) as info:
        main(["run", "--mode", "paper"])
    assert info.value.code == 2


def test_config_error_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown key in --config FILE exits 2 with the key's dotted path on stderr."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[execution]\nmax_concurency = 4\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert "config error: execution.max_concurency: unknown key" in capsys.readouterr().err


def test_environment_error_exits_2_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong-typed EXECD_ variable exits 2 naming the key and the variable."""
    monkeypatch.setenv("EXECD_API__PORT", "http")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "api.port" in err
    assert "EXECD_API__PORT" in err


def test_flag_values_are_validated_as_config(capsys: pytest.CaptureFixture[str]) -> None:
    """--api-port out of range is a config error naming api.port."""
    assert main(["run", "--api-port", "70000"]) == 2
    assert "config error: api.port" in capsys.readouterr().err


def test_testnet_without_credentials_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """run --mode testnet with no keys exits 2 and says which key to set."""
    assert main(["run", "--mode", "testnet"]) == 2
    assert "exchange.api_key_file: testnet mode needs" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["signal", "LONG_ENTRY", "BTCUSDT", "--qty", "0.01", "--wait"], ["status"],
     ["monitor", "--once"]],
)
def test_client_commands_without_a_daemon_exit_1(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """signal, status and monitor with nothing listening: exit 1 saying where and why."""
    monkeypatch.setenv("EXECD_API__PORT", str(free_port()))
    monkeypatch.setenv("EXECD_JOURNAL__PATH", str(tmp_path / "journal.sqlite3"))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no execd control API at http://127.0.0.1:" in err
    assert "is the daemon running?" in err


def test_sim_reports_a_bad_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """execd sim --config with a missing file exits 2 without serving."""
    assert main(["sim", "--config", str(tmp_path / "nope.toml"), "--port", "1"]) == 2
    assert "nope.toml" in capsys.readouterr().err


async def test_daemon_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    """python -m app run starts, prints its ready line, and on SIGTERM exits 0 with audit events."""
    sim = pytest.importorskip("app.sim")
    if not hasattr(sim, "SimServer"):
        pytest.skip("app.sim.SimServer is not available yet")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXECD_", "BINANCE_"))}
    env |= {
        "EXECD_AUDIT__LOG_DIR": str(tmp_path / "audit"),
        "EXECD_AUDIT__CONSOLE": "false",
        "EXECD_JOURNAL__PATH": str(tmp_path / "journal.sqlite3"),
        "EXECD_API__PORT": str(free_port()),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "run",
        cwd=PROJECT_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S)
        assert line.startswith(b"execd ready:"), line
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), READY_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    lines = b"".join(p.read_bytes() for p in sorted((tmp_path / "audit").glob("audit-*.jsonl")))
    events = [orjson.loads(raw)["event"] for raw in lines.splitlines()]
    assert [e for e in events if e.startswith("daemon_")] == [
        "daemon_started", "daemon_stopping", "daemon_stopped"]
    assert "time_synced" in events
