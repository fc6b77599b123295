"""A tiny strategy on another machine: publish signals to execd over NATS JetStream, print the
execution reports that come back for them (docs/nats.md).

    python docs/examples/strategy_nats.py [--nats nats://127.0.0.1:4222] [--count 3]

Start execd first (``execd run --nats nats://127.0.0.1:4222``: it creates the stream). Each
signal gets an id of its own (in the body and the ``Nats-Msg-Id`` header: a retried publish is
dropped by the stream, a redelivery is a duplicate in execd's journal). The script listens on
``execd.reports.>`` before it publishes and exits once every signal reached a final state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid

import nats

FINAL = {"DONE", "REJECTED", "FAILED", "EXPIRED", "CANCELED"}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    parser.add_argument("--subject", default="execd.signals", help="execd's intake.nats.subject")
    parser.add_argument("--reports", default="execd.reports",
                        help="execd's intake.nats.reports_subject")
    parser.add_argument("--count", type=int, default=3, help="signals to publish")
    args = parser.parse_args()

    nc = await nats.connect(args.nats)
    ids = [f"demo-{uuid.uuid4().hex[:12]}" for _ in range(args.count)]
    pending = set(ids)
    finished = asyncio.Event()

    async def on_report(msg: nats.aio.msg.Msg) -> None:
        report = json.loads(msg.data)
        if report["id"] not in ids:
            return          # another strategy's signal
        print(f"{msg.subject:<24} {report['id']} {report['state']:<9} {report['reason'] or ''}")
        if report["state"] in FINAL:
            pending.discard(report["id"])
            if not pending:
                finished.set()

    await nc.subscribe(f"{args.reports}.>", cb=on_report)
    js = nc.jetstream()
    for i, signal_id in enumerate(ids):
        signal = {"id": signal_id, "symbol": "BTCUSDT",
                  "type": "LONG_ENTRY" if i % 2 == 0 else "CLOSE_LONG",
                  "quantity": "0.002", "ttl_s": 60, "source": "strategy_nats"}
        ack = await js.publish(args.subject, json.dumps(signal).encode(),
                               headers={"Nats-Msg-Id": signal_id})
        print(f"published {signal_id} (stream {ack.stream}, seq {ack.seq})")
    try:
        await asyncio.wait_for(finished.wait(), 60)
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
