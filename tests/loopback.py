"""An aiohttp application served on loopback for a test: the stand-ins for a webhook, the
control API or the exchange that the tests need besides the simulator."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web


@contextlib.asynccontextmanager
async def serving(app: web.Application, *, shutdown_timeout: float = 60.0
                  ) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 at a free port, yielded, until the block ends."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
