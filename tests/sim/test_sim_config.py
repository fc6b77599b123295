"""The simulator's config file: defaults, partial overlays, and errors that name the key."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from app.sim import SimConfig, SimConfigError, load_sim_config

BASE = Path(__file__).resolve().parents[2] / "config" / "sim.toml"


def test_shipped_sim_toml_equals_built_in_defaults() -> None:
    """config/sim.toml and SimConfig() agree, so either can be the reference."""
    assert load_sim_config(BASE) == SimConfig()


def test_partial_overlay_takes_missing_keys_from_base(tmp_path: Path) -> None:
    """A --config file with only [limits] keeps every other key from config/sim.toml."""
    overlay = tmp_path / "small.toml"
    overlay.write_text("[limits]\nrequest_weight = 300\nrequest_weight_interval_s = 5\n")
    config = load_sim_config(BASE, overlay)
    assert (config.limits.request_weight, config.limits.request_weight_interval_s) == (300, 5)
    assert config.limits.orders_short == 300
    assert config.account.balance == Decimal("10000")
    assert [s.symbol for s in config.symbols] == [
        "BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]


@pytest.mark.parametrize(("text", "message"), [
    ("[limits]\nrequest_wieght = 1\n", "limits.request_wieght: unknown key"),
    ("[limits]\nrequest_weight = \"lots\"\n", "limits.request_weight: must be an integer"),
    ("[account]\nbalance = \"ten\"\n", "account.balance: not a decimal"),
    ("[nonsense]\nx = 1\n", "nonsense: unknown key"),
    ("[[symbols]]\nsymbol = \"ABCUSDT\"\n", "symbols[0].market_max_qty: required key missing"),
    ("[limits]\nrequest_weight = 0\n", "limits.request_weight: must be positive"),
])
def test_bad_keys_are_named(tmp_path: Path, text: str, message: str) -> None:
    """Unknown keys and wrong types raise SimConfigError naming the dotted path."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SimConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_sim_config(BASE, path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    """A --config path that does not exist is reported with the path."""
    with pytest.raises(SimConfigError, match="file not found"):
        load_sim_config(tmp_path / "nope.toml")
