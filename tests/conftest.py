"""Fixtures shared by the test packages: the simulator on a free loopback port (real clock)
with its admin client, and a plain HTTP client session.

``sim`` starts from ``sim_config`` (`quiet_sim_config()`); a module or class that needs other
limits or keys overrides ``sim_config``. tests/sim has its own server fixtures on a fake clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from app.sim import SimConfig, SimServer
from tests.simulator import Admin, quiet_sim_config


@pytest.fixture
def sim_config() -> SimConfig:
    return quiet_sim_config()


@pytest.fixture
async def sim(sim_config: SimConfig) -> AsyncIterator[SimServer]:
    async with SimServer(sim_config) as server:
        yield server


@pytest.fixture
async def admin(sim: SimServer) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as session:
        yield Admin(session, sim.url)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for requests to a server under test."""
    async with aiohttp.ClientSession() as session:
        yield session
