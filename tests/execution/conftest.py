"""Fixtures: simulator + real exchange side + journal + executor, built by the daemon's factory."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from app.clock import SystemClock
from app.domain import Signal
from app.exchange.gateway import Gateway
from app.execution.executor import Executor
from app.execution.ports import ExchangePort
from app.execution.settings import ExecutorSettings
from app.factory import ExchangeParts, ExecutionParts, build_execution, open_exchange
from app.intake.validate import parse_signal
from app.journal import Journal, SignalRecord
from app.resilience.breaker import BreakerSettings
from app.sim import SimServer
from tests.exchange.conftest import setup_for

_ids = itertools.count(1)


@pytest.fixture
async def exchange(sim: SimServer) -> AsyncIterator[ExchangeParts]:
    async with open_exchange(setup_for(sim.url, breaker=BreakerSettings(failure_threshold=1000)),
                             SystemClock(), structlog.get_logger()) as parts:
        yield parts


@pytest.fixture
def gateway(exchange: ExchangeParts) -> Gateway:
    return exchange.gateway


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite3")
    await j.open()
    yield j
    await j.close()


@pytest.fixture
def exec_settings() -> ExecutorSettings:
    return ExecutorSettings(resolve_window_s=5.0, busy_retry_s=0.05)


def execution_for(port: ExchangePort, exchange: ExchangeParts, journal: Journal,
                  settings: ExecutorSettings) -> ExecutionParts:
    """Sender, protector and executor over ``port`` (the gateway, or a wrapper that injects
    a fault), with ``exchange``'s symbol rules."""
    return build_execution(port, exchange.symbols.get, journal, SystemClock(),
                           structlog.get_logger(), settings)


@pytest.fixture
def execution(exchange: ExchangeParts, journal: Journal,
              exec_settings: ExecutorSettings) -> ExecutionParts:
    return execution_for(exchange.gateway, exchange, journal, exec_settings)


@pytest.fixture
def executor(execution: ExecutionParts) -> Executor:
    return execution.executor


def make_signal(body: dict[str, Any], *, ttl: float = 60.0) -> Signal:
    body = {"id": f"t{next(_ids)}-{int(time.time() * 1000)}", **body}
    return parse_signal(body, now=time.time(), default_ttl_s=ttl, new_id=lambda: "unused")


Submit = Callable[[dict[str, Any]], Any]


@pytest.fixture
def run(executor: Executor, journal: Journal) -> Callable[..., Any]:
    """Accept a signal body into the journal and execute it: the final SignalRecord."""

    async def go(body: dict[str, Any], *, ttl: float = 60.0) -> SignalRecord:
        signal = make_signal(body, ttl=ttl)
        record, _ = await journal.accept(signal, now=time.time())
        return await executor.execute(record)

    return go
