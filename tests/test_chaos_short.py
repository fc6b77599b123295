"""bench/chaos.py, short (SPEC §13 "duplicates under faults"): 300 signals over 5 symbols,
every fault kind of SPEC §10 plus an outage and small rate-limit windows, through the in-process
daemon's accept path; execd's policy only (the bench itself adds the blind-retry baseline)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import structlog

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str) -> ModuleType:
    """A bench script as a module, from its path (bench/ is not a package). Registered in
    ``sys.modules`` before it runs, as its dataclasses need. ``bench/`` goes on ``sys.path``
    (last, so it shadows nothing) for the scripts' ``lib.*`` helpers, as running
    ``python bench/X.py`` puts it there."""
    module_name = f"bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    spec = importlib.util.spec_from_file_location(module_name, BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _clean_structlog() -> Iterator[None]:
    """The daemon configures structlog globally: reset it after the test."""
    yield
    structlog.reset_defaults()


@pytest.mark.timeout(180)
async def test_no_duplicate_and_no_lost_signal_under_faults(tmp_path: Path) -> None:
    """Every signal ends terminal, every client id has one order, and no 418."""
    chaos = load_bench("chaos")
    signals = chaos.make_signals(300, chaos.SEED, prefix="chaos")
    plan = chaos.fault_plan(chaos.SEED, outage_start_s=4.0, outage_s=2.0)
    assert {r["fault"] for r in plan["rules"]} >= {
        "http_500", "disconnected_1001", "throttled_1008", "service_unavailable", "unknown_503",
        "timeout_1007", "reset_after_apply", "hang", "delayed_visibility", "latency"}
    [row] = await chaos.measure(signals, plan, ["execd"], tmp_path, timeout_s=120)
    assert row["lost"] == 0, row["lost_ids"]
    assert row["duplicate_client_ids"] == 0, row["duplicate_examples"]
    assert row["throttled_418"] == 0
    assert sum(row["states"].values()) == len(signals)
    assert row["audit"]["order_unknown_outcome"] > 0      # the faults did hit placements
