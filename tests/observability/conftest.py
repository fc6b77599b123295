"""Shared fixtures: a fake clock at a known instant and a clean structlog state per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from app.clock import FakeClock

# 2026-11-23T19:05:01.123Z
START = 1_795_460_701.123


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at 2026-11-23T19:05:01.123Z."""
    return FakeClock(start_time=START)


@pytest.fixture(autouse=True)
def _clean_structlog() -> Iterator[None]:
    """structlog's configuration and contextvars are process-global: reset them after each test."""
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def _read_events(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def read_events() -> Callable[[Path], list[dict[str, Any]]]:
    """A function parsing every JSON line of an audit file."""
    return _read_events
