"""bench/broker.py, short (SPEC §13 "broker intake"): kill -9 of the daemon while a producer
publishes to NATS JetStream, restarts on the same journal, then a last daemon finishes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_chaos_short import load_bench


@pytest.mark.timeout(180)
async def test_no_lost_duplicated_or_unreported_signal_over_kill_9_restarts(
        tmp_path: Path) -> None:
    """Every published signal ends terminal in the journal, one order per client id, a
    final report for each; both intake paths measured."""
    bench = load_bench("broker")
    result = await bench.nats_run(signals=40, rounds=2, rate=40.0, seed=7, workdir=tmp_path)
    assert result["published"] > 0
    assert result["derived_ids"] > 0
    assert result["lost"] == 0, result["lost_examples"]
    assert result["duplicate_client_ids"] == 0, result["duplicate_examples"]
    assert result["missing_final_reports"] == 0, result["missing_examples"]
    assert result["final_exit_code"] == 0
    assert result["throughput"]["nats_per_s"] > 0
