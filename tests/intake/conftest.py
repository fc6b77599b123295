"""Fixtures: the real accept path (journal + bus + executor) against the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import pytest
import structlog

from app.clock import Clock, SystemClock
from app.exchange.symbols import trading_rules
from app.execution.executor import Executor
from app.factory import ExchangeParts
from app.intake.bus import SignalBus
from app.intake.service import Service
from app.intake.spool import SpoolTail
from app.journal import Journal
from tests.execution.conftest import (  # noqa: F401  (fixtures, re-exported for pytest)
    exchange,
    exec_settings,
    execution,
    executor,
    gateway,
    journal,
)

Tail = Callable[..., SpoolTail]


@pytest.fixture
def capacity() -> int:
    return 1000


@pytest.fixture
async def bus(executor: Executor, capacity: int) -> AsyncIterator[SignalBus]:  # noqa: F811
    b = SignalBus(executor.execute, capacity=capacity, max_concurrency=8,
                  log=structlog.get_logger())
    yield b
    await b.aclose()


@pytest.fixture
def service(journal: Journal, bus: SignalBus, exchange: ExchangeParts  # noqa: F811
            ) -> Service:
    s = Service(journal, bus, partial(trading_rules, exchange.symbols.get), SystemClock(),
                structlog.get_logger(), default_ttl_s=30.0)
    s.open()
    return s


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "signals.jsonl"


@pytest.fixture
async def tail(spool: Path, service: Service, journal: Journal  # noqa: F811
               ) -> AsyncIterator[Tail]:
    """Makes tails on `spool` (`tail(clock=None)`); closes their files at the end."""
    made: list[SpoolTail] = []

    def make(clock: Clock | None = None) -> SpoolTail:
        made.append(SpoolTail(spool, service, journal, clock or SystemClock(),
                              structlog.get_logger(), poll_interval_s=0.2))
        return made[-1]

    yield make
    for spooler in made:
        await spooler.aclose()
