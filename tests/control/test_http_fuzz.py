"""Fuzzing POST /v1/signals: every malformed body answers 400 with a reason, nothing reaches the
exchange, and the server stays healthy (SPEC §4.1, §11.2).

The bodies are tests/intake/malformed.py's (the spool fuzz test draws from the same). One
server serves the whole run: hypothesis runs in a worker thread and hands each batch of bodies
to the test's event loop, where they are posted concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from app.control.http_api import ControlApi
from app.exchange.gateway import Gateway
from app.intake.service import Service
from app.journal import Journal
from tests.control.test_http_api import AUTH, TOKEN, status_of_daemon
from tests.intake.malformed import malformed
from tests.simulator import Admin

BATCH = 50
EXAMPLES = 210  # 210 x 50 = 10,500 bodies

# ------------------------------------------------------------------ the test


@pytest.fixture
async def api(service: Service, journal: Journal, gateway: Gateway
              ) -> AsyncIterator[ControlApi]:
    server = ControlApi(service, journal, gateway, status_of_daemon, token=TOKEN, port=0,
                        log=structlog.get_logger())
    await server.start()
    yield server
    await server.close()


def has_a_reason(answer: dict[str, Any]) -> bool:
    if answer.get("error") == "invalid_json":
        return bool(answer.get("detail"))
    # The field is the offending key itself, which may be "" for an unknown empty key.
    return (answer.get("error") == "invalid_signal" and isinstance(answer.get("field"), str)
            and bool(answer.get("detail")))


@pytest.mark.timeout(300)
async def test_malformed_bodies_answer_400_and_send_nothing(
        api: ControlApi, http: aiohttp.ClientSession, admin: Admin, journal: Journal) -> None:
    """Over 10,000 malformed bodies each answer 400 with a reason; afterwards /healthz is 200,
    nothing was journaled and the simulator saw no order."""
    loop = asyncio.get_running_loop()
    url = f"{api.url}/v1/signals"
    posted = 0

    async def post(raw: bytes) -> tuple[int, Any]:
        async with http.post(url, data=raw, headers=AUTH) as resp:
            return resp.status, orjson.loads(await resp.read())

    async def post_all(bodies: list[bytes]) -> list[tuple[int, Any]]:
        return await asyncio.gather(*(post(raw) for raw in bodies))

    # No shrinking: a failure names its body in the assertion, and shrinking lists of 50
    # bodies through HTTP would take minutes.
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=(Phase.explicit, Phase.generate),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much, HealthCheck.large_base_example])
    @given(st.lists(malformed, min_size=BATCH, max_size=BATCH))
    def check(bodies: list[bytes]) -> None:
        nonlocal posted
        answers = asyncio.run_coroutine_threadsafe(post_all(bodies), loop).result(timeout=60)
        posted += len(bodies)
        for raw, (code, answer) in zip(bodies, answers, strict=True):
            assert code == 400, (raw[:300], code, answer)
            assert has_a_reason(answer), (raw[:300], answer)

    await asyncio.to_thread(check)

    assert posted >= 10_000
    async with http.get(f"{api.url}/healthz") as resp:
        assert resp.status == 200
    assert await admin.orders() == []
    assert sum((await journal.counts()).values()) == 0

