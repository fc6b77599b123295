"""Watch the simulator's streams by hand: prints every frame as it arrives.

    python docs/examples/watch_stream.py user   [--url http://127.0.0.1:8471] [--events A/B]
    python docs/examples/watch_stream.py market [--url ...] [--streams btcusdt@markPrice/...]

``user`` asks for a listenKey (POST /fapi/v1/listenKey with the API key, no signature), keeps it
alive every 30 minutes and prints the account's events; ``market`` prints mark prices. Ctrl-C
stops it. Against Binance itself, point ``--url`` at the REST base and ``--ws`` at the stream
host (``wss://fstream.binance.com``) and pass your own ``--key``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

import aiohttp


async def keep_alive(session: aiohttp.ClientSession, url: str, key: str) -> None:
    while True:
        await asyncio.sleep(30 * 60)
        async with session.put(f"{url}/fapi/v1/listenKey", headers={"X-MBX-APIKEY": key}):
            pass


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["user", "market"])
    parser.add_argument("--url", default="http://127.0.0.1:8471", help="REST base URL")
    parser.add_argument("--ws", default=None, help="stream base URL (default: --url as ws://)")
    parser.add_argument("--key", default="sim-key", help="API key (user stream)")
    parser.add_argument("--events", default="", help="user stream filter, e.g. ORDER_TRADE_UPDATE")
    parser.add_argument("--streams", default="btcusdt@markPrice@1s", help="market streams, a/b")
    args = parser.parse_args()
    ws_base = args.ws or args.url.replace("http", "ws", 1)
    async with aiohttp.ClientSession() as session:
        keeper = None
        if args.kind == "user":
            async with session.post(f"{args.url}/fapi/v1/listenKey",
                                    headers={"X-MBX-APIKEY": args.key}) as resp:
                listen_key = (await resp.json())["listenKey"]
            path = f"/private/ws?listenKey={listen_key}"
            if args.events:
                path += f"&events={args.events}"
            keeper = asyncio.create_task(keep_alive(session, args.url, args.key))
        else:
            path = f"/market/stream?streams={args.streams}"
        async with session.ws_connect(ws_base + path, heartbeat=60) as ws:
            print(f"connected to {ws_base}{path}", flush=True)
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    print(json.dumps(json.loads(msg.data)), flush=True)
            print(f"closed: code {ws.close_code}", flush=True)
        if keeper is not None:
            keeper.cancel()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
