"""The control API's connection limits over real sockets (issue 14, finding 4): half-sent
requests are closed after ``header_timeout_s``, at most ``max_connections`` are held (the
oldest idle one makes room; 503 when every one is busy), and real requests go on meanwhile.

Raw sockets send the half-sent requests; aiohttp's client the real ones. Waits are bounded
generously: nothing here measures speed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from app.control.http_api import ControlApi
from app.exchange.gateway import Gateway
from app.intake.service import Service
from app.journal import Journal

TOKEN = "test-token-0123456789abcdef"
HALF = b"POST /v1/signals HTTP/1.1\r\nHost: 127.0.0.1\r\n"
CLOSED_WITHIN_S = 15.0

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Factory = Callable[..., contextlib.AbstractAsyncContextManager[ControlApi]]


def status() -> Mapping[str, object]:
    return {"state": "ready"}


@pytest.fixture
def control_api(service: Service, journal: Journal, gateway: Gateway) -> Factory:
    @contextlib.asynccontextmanager
    async def make(**limits: float) -> AsyncIterator[ControlApi]:
        api = ControlApi(service, journal, gateway, status, token=TOKEN, port=0,
                         log=structlog.get_logger(), **limits)  # type: ignore[arg-type]
        await api.start()
        try:
            yield api
        finally:
            await api.close()
    return make


async def half_sent(api: ControlApi, n: int, data: bytes = HALF) -> list[Conn]:
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    conns = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(data)
        await writer.drain()
        conns.append((reader, writer))
    return conns


async def closed_by_server(conn: Conn) -> bytes:
    """What the server sent before closing (b"" for a plain close); fails if it never does."""
    reader, writer = conn
    try:
        async with asyncio.timeout(CLOSED_WITHIN_S):
            return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def healthz(api: ControlApi) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{api.url}/healthz") as resp:
        return resp.status


async def test_half_sent_headers_are_closed_after_the_timeout(control_api: Factory) -> None:
    async with control_api(header_timeout_s=0.5) as api:
        conns = await half_sent(api, 5)
        assert await healthz(api) == 200            # served meanwhile
        assert await asyncio.gather(*map(closed_by_server, conns)) == [b""] * 5
        figures = api.connections()
        assert figures["header_timeouts"] == 5
        assert figures["open"] == 0


async def test_trickled_headers_do_not_reset_the_timeout(control_api: Factory) -> None:
    """A byte every 0.1 s keeps no connection alive past ``header_timeout_s``."""
    async with control_api(header_timeout_s=0.5) as api:
        [conn] = await half_sent(api, 1, b"GET /healthz HTTP/1.1\r\n")
        _, writer = conn

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(int(CLOSED_WITHIN_S * 10)):
                    writer.write(b"X")
                    await writer.drain()
                    await asyncio.sleep(0.1)

        trickling = asyncio.create_task(trickle())
        assert await closed_by_server(conn) == b""
        trickling.cancel()
        assert api.connections()["header_timeouts"] == 1


async def test_a_half_sent_second_request_on_a_kept_alive_connection_is_closed(
        control_api: Factory) -> None:
    async with control_api(header_timeout_s=0.5) as api:
        [conn] = await half_sent(api, 1, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        reader, writer = conn
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN_S)
        assert head.startswith(b"HTTP/1.1 200")
        await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r")[0]))
        writer.write(HALF)
        assert await closed_by_server(conn) == b""
        assert api.connections()["header_timeouts"] == 1


async def test_over_the_cap_the_oldest_waiting_connection_makes_room(
        control_api: Factory) -> None:
    with capture_logs() as logs:
        async with control_api(max_connections=4, header_timeout_s=60) as api:
            await _fill_and_serve(api)
    alerts = [e for e in logs if e.get("kind") == "api_connections_full"]
    assert len(alerts) == 1                                  # throttled: one a minute
    assert alerts[0]["log_level"] == "warning"


async def _fill_and_serve(api: ControlApi) -> None:
    """Six half-sent requests under a cap of four, then a real one."""
    conns = await half_sent(api, 6)
    assert await closed_by_server(conns[0]) == b""      # the oldest two, evicted
    assert await closed_by_server(conns[1]) == b""
    assert await healthz(api) == 200                    # evicts the third
    assert await closed_by_server(conns[2]) == b""
    figures = api.connections()
    assert (figures["evicted"], figures["refused"], figures["header_timeouts"]) == (3, 0, 0)
    assert figures["open"] <= 4
    for _, writer in conns[3:]:
        writer.close()


async def test_over_the_cap_with_every_connection_busy_answers_503(
        control_api: Factory) -> None:
    busy_request = (b"POST /v1/signals HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                    b"Content-Length: 80\r\n\r\n")              # the body never comes
    async with control_api(max_connections=2, header_timeout_s=60) as api:
        busy = await half_sent(api, 2, busy_request)
        for _ in range(100):                             # until both reached the handler
            if api.connections()["open"] == 2 and await _busy(api) == 2:
                break
            await asyncio.sleep(0.05)
        [refused] = await half_sent(api, 1, b"")
        answer = await closed_by_server(refused)
        assert answer.startswith(b"HTTP/1.1 503 ")
        body = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"] == "too_many_connections"
        assert "api.max_connections" in body["detail"]
        assert api.connections()["refused"] == 1
        for _, writer in busy:
            writer.close()


async def _busy(api: ControlApi) -> int:
    """Connections handling a request: open minus those the cap could evict."""
    guard = api._guard   # the test looks at the guard's books, nothing else does
    return len(guard._open) - len(guard._evictable)


def test_limits_out_of_range_are_refused(service: Service, journal: Journal,
                                         gateway: Gateway) -> None:
    for limits, named in (({"max_connections": 0}, "max_connections"),
                          ({"header_timeout_s": 0}, "header_timeout_s")):
        with pytest.raises(ValueError, match=named):
            ControlApi(service, journal, gateway, status, token=TOKEN,
                       log=structlog.get_logger(), **limits)  # type: ignore[arg-type]
