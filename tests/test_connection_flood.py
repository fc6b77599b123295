"""Issue 14, finding 4, as the issue measured it: a local process without the token holds
hundreds of half-sent requests against a running daemon (a real process with a low
RLIMIT_NOFILE, so exhaustion is reachable). Signals are still accepted, the half-sent
connections are closed by the server, and stderr stays quiet (before the fix: accept() failed
with EMFILE, the API stopped answering and asyncio logged a traceback per retry)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest

from app.sim import SimServer
from tests.daemon_process import DaemonProcess, audit_events, daemon_env, free_port

TOKEN = "flood-test-token"
HALF = b"POST /v1/signals HTTP/1.1\r\nHost: 127.0.0.1\r\n"
FLOOD = 400
NOFILE = 256          # the daemon's descriptor limit, soft and hard: FLOOD would exhaust it
MAX_CONNECTIONS = 64
#: Generous bounds for things that happen at once: this asserts function, not speed.
ANSWER_WITHIN_S = 10.0
CLOSED_WITHIN_S = 30.0

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_half_sent(port: int) -> Conn | None:
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HALF)
            await writer.drain()
            return reader, writer
    except (TimeoutError, OSError):
        return None


async def closed_by_server(conn: Conn) -> bool:
    reader, writer = conn
    try:
        async with asyncio.timeout(CLOSED_WITHIN_S):
            return await reader.read() == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


@pytest.mark.timeout(180)
async def test_half_sent_requests_neither_exhaust_nor_block_the_daemon(
        tmp_path: Path, sim: SimServer) -> None:
    port = free_port()
    env = daemon_env(tmp_path, port, EXECD_API_TOKEN=TOKEN,
                     EXECD_API__MAX_CONNECTIONS=str(MAX_CONNECTIONS),
                     EXECD_API__HEADER_TIMEOUT_S="1")
    daemon = await DaemonProcess(env, "--exchange-url", sim.url, nofile=NOFILE).start()
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    signal = {"id": "after-the-flood", "symbol": "BTCUSDT", "type": "LONG_ENTRY",
              "quantity": "0.002", "ttl_s": 600}
    try:
        flood = [c for c in await asyncio.gather(*(open_half_sent(port) for _ in range(FLOOD)))
                 if c is not None]
        assert len(flood) >= FLOOD // 2, f"only {len(flood)} of {FLOOD} connections opened"
        timeout = aiohttp.ClientTimeout(total=ANSWER_WITHIN_S)
        async with aiohttp.ClientSession(headers=auth, timeout=timeout) as http:
            try:
                async with http.post(f"{url}/v1/signals", data=orjson.dumps(signal)) as resp:
                    assert resp.status == 202, await resp.text()
            except (TimeoutError, aiohttp.ClientError) as error:
                pytest.fail(f"a signal during the flood got no answer: {error!r}")
            closed = await asyncio.gather(*map(closed_by_server, flood))
            assert all(closed), f"{closed.count(False)} half-sent connections still open"
            async with http.get(f"{url}/v1/status") as resp:
                figures = (await resp.json())["api"]
        print(f"\nflood {len(flood)} half-sent connections: {figures}")
        assert figures["header_timeouts"] > 0
        assert figures["evicted"] > 0
        assert figures["header_timeouts"] + figures["evicted"] >= len(flood)
        code, err = await daemon.stop()
    finally:
        await daemon.ensure_dead()
    assert code == 0, err
    assert "out of system resource" not in err, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    events = audit_events(tmp_path)
    started = next(e for e in events if e["event"] == "daemon_started")
    assert started["nofile"]["soft"] == NOFILE          # the hard limit allows no more
    assert any(e["event"] == "alert" and e.get("kind") == "api_connections_full"
               for e in events)
