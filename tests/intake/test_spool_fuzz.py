"""Fuzzing the spool: over 10,000 malformed lines are each skipped with a `signal_rejected`
audit event, the tail keeps going, nothing is journaled and nothing reaches the exchange
(SPEC §4.2; the same generators as the HTTP fuzz test)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from app.clock import SystemClock
from app.intake.service import IntakeState, Service
from app.intake.spool import SpoolTail
from app.journal import Journal
from tests.intake.malformed import malformed
from tests.intake.test_spool import append
from tests.simulator import Admin

BATCH = 100
EXAMPLES = 101  # 101 x 100 = 10,100 lines

# A spool line is one line: no line breaks inside, and not blank (blank lines are skipped
# silently, by design, not rejected).
lines = malformed.filter(lambda raw: b"\n" not in raw and raw.strip() != b"")


@pytest.mark.timeout(300)
async def test_malformed_spool_lines_are_skipped_and_audited(
        tmp_path: Path, service: Service, journal: Journal, admin: Admin) -> None:
    loop = asyncio.get_running_loop()
    spool = tmp_path / "signals.jsonl"
    reader = SpoolTail(spool, service, journal, SystemClock(), structlog.get_logger())
    written = 0

    async def feed(batch: list[bytes]) -> int:
        append(spool, b"".join(raw + b"\n" for raw in batch))
        return await reader.catch_up()

    with capture_logs() as logs:
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  phases=(Phase.explicit, Phase.generate),
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much,
                                         HealthCheck.large_base_example])
        @given(st.lists(lines, min_size=BATCH, max_size=BATCH))
        def check(batch: list[bytes]) -> None:
            nonlocal written
            handled = asyncio.run_coroutine_threadsafe(feed(batch), loop).result(timeout=60)
            written += len(batch)
            assert handled == len(batch), batch[:3]

        await asyncio.to_thread(check)

    rejected = [e for e in logs if e["event"] == "signal_rejected"]
    assert written >= 10_000
    assert len(rejected) == written
    assert all(e.get("field") is not None and e.get("detail") for e in rejected)
    assert service.state is IntakeState.READY
    assert sum((await journal.counts()).values()) == 0
    assert await admin.orders() == []
