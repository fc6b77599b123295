"""bench/crash.py, short (SPEC §13 "crash safety"): kill -9 of the daemon process at seeded
random moments while signals are POSTed, restarts against the same journal and the same
simulator process, then a last daemon finishes everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_chaos_short import load_bench


@pytest.mark.timeout(180)
async def test_no_lost_and_no_duplicated_signal_over_kill_9_restarts(tmp_path: Path) -> None:
    """Every acknowledged signal ends terminal in the journal; one order per client id."""
    crash = load_bench("crash")
    result = await crash.crash_run(3, rate=40.0, timeout_s=60.0, workdir=tmp_path)
    assert result["rounds"] == 3
    assert result["acknowledged"] > 0
    assert result["lost"] == 0, (result["lost_missing"], result["lost_not_terminal"])
    assert result["duplicate_client_ids"] == 0, result["duplicate_examples"]
    assert result["unknown_left"] == 0
    assert result["final_exit_code"] == 0
