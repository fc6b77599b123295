"""Fixtures: the control API is served over the real accept path (tests/intake/conftest.py)."""

from tests.intake.conftest import (  # noqa: F401  (fixtures, re-exported for pytest)
    bus,
    capacity,
    exchange,
    exec_settings,
    execution,
    executor,
    gateway,
    journal,
    service,
)
