"""deploy/: the systemd unit and its environment file agree with each other and with the
configuration: every EXECD_ variable of the example (commented ones too) is a real key, the
unit lets execd write where the example puts its state, and stops it more slowly than execd
drains."""

from __future__ import annotations

import re

from app.config import PROJECT_ROOT, load_settings

DEPLOY = PROJECT_ROOT / "deploy"
_ASSIGNMENT = re.compile(r"^#?([A-Z][A-Z0-9_]*)=(.*)$")


def example_environment(*, commented: bool) -> dict[str, str]:
    env = {}
    for line in (DEPLOY / "execd.env.example").read_text(encoding="utf-8").splitlines():
        found = _ASSIGNMENT.match(line.strip())
        if found and (commented or not line.startswith("#")):
            env[found[1]] = found[2]
    return env


def unit() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit, all values of a repeated key."""
    keys: dict[str, list[str]] = {}
    for line in (DEPLOY / "execd.service").read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def seconds(value: str) -> float:
    found = re.fullmatch(r"(\d+)(s|min)?", value)
    assert found, value
    return float(found[1]) * (60 if found[2] == "min" else 1)


def test_the_example_environment_loads() -> None:
    """As shipped (testnet, placeholder keys) and with every commented line switched on."""
    settings = load_settings(environ=example_environment(commented=False))
    assert settings.exchange.mode.value == "testnet"
    assert settings.credentials is not None
    every = example_environment(commented=True)
    assert every["EXECD_EXCHANGE__MODE"] == "testnet"
    load_settings(environ=every)
    load_settings(environ=every | {"EXECD_EXCHANGE__MODE": "live"})   # with LIVE_CONFIRM


def test_the_unit_matches_the_environment_and_the_shutdown() -> None:
    keys = unit()
    assert keys["Type"] == ["notify"]
    assert keys["NotifyAccess"] == ["main"]
    assert seconds(keys["WatchdogSec"][0]) >= 10
    assert keys["EnvironmentFile"] == ["/etc/execd/execd.env"]
    settings = load_settings(environ=example_environment(commented=False))
    writable = keys["ReadWritePaths"][0].split()
    assert str(settings.journal.path.parent) in writable
    assert any(str(settings.audit.log_dir).startswith(path + "/") for path in writable)
    assert seconds(keys["TimeoutStopSec"][0]) >= 3 * settings.execution.shutdown_timeout_s
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert keys[hardening] == ["yes"], hardening
    assert keys["ProtectSystem"] == ["strict"]
    assert keys["UMask"] == ["0077"]
    assert keys["User"] == ["execd"]
