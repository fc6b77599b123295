"""Signals and execution reports over NATS JetStream (SPEC §4.2 item 5), against a real
``nats-server -js`` on a free port with a temporary store, and an in-process daemon with its
embedded simulator."""

from __future__ import annotations

import collections
import itertools
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from app.config import resolve_api_token
from app.daemon import Daemon
from app.domain import SignalState
from tests.daemon_process import DaemonProcess, daemon_env, free_port, run_cli
from tests.nats_support import (
    NatsServer,
    Reports,
    client,
    daemon_settings,
    entry,
    publish,
    running_daemon,
    until,
)
from tests.simulator import Admin
from tests.test_journal_durability import read_only

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")
TOKEN = "nats-test-token"


def per_symbol_order_holds(seen: list[tuple[str, str, dict[str, Any]]],
                           published: list[dict[str, Any]]) -> None:
    """On each symbol's subject: every (id, state) once, each signal ACCEPTED < RUNNING <
    DONE, and signals run in the order they were published (one DONE before the next
    RUNNING)."""
    by_symbol: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for subject, msg_id, body in seen:
        assert subject == f"execd.reports.{body['symbol']}"
        assert msg_id == f"{body['id']}:{body['state']}"
        by_symbol[body["symbol"]].append((body["id"], body["state"]))
    for symbol in SYMBOLS:
        reports = by_symbol[symbol]
        assert len(reports) == len(set(reports)), "a report came twice"
        order = [b["id"] for b in published if b["symbol"] == symbol]
        at = {pair: i for i, pair in enumerate(reports)}
        for signal_id in order:
            assert at[signal_id, "ACCEPTED"] < at[signal_id, "RUNNING"] < at[signal_id, "DONE"]
        for first, then in itertools.pairwise(order):
            assert at[first, "DONE"] < at[then, "RUNNING"], (first, then)


@pytest.mark.timeout(120)
async def test_signals_end_done_once_with_ordered_reports_and_again_are_duplicates(
        tmp_path: Path) -> None:
    """200 signals over 4 symbols all end DONE with one order each, their reports arrive on
    ``execd.reports.{symbol}`` in per-symbol order; the same 200 published again (same ids)
    are 200 duplicates, acked, and no new order."""
    bodies = [entry(f"n-{i:03d}", SYMBOLS[i % 4]) for i in range(200)]
    async with NatsServer(tmp_path / "nats") as server, \
            running_daemon(daemon_settings(tmp_path, server.url)) as daemon, \
            client(server.url) as nc, Reports.on(nc) as reports, \
            aiohttp.ClientSession() as http:
        await connected(daemon)
        await publish(nc, bodies)
        await reports.wait(lambda seen: sum(b["state"] == "DONE" for b in seen) >= 200)
        assert sorted(reports.states("DONE")) == sorted(b["id"] for b in bodies)
        per_symbol_order_holds(reports.seen, bodies)
        assert daemon.exchange_url is not None
        orders = await Admin(http, daemon.exchange_url).orders("order")
        assert len(orders) == 200
        assert len({o["client_id"] for o in orders}) == 200

        await publish(nc, bodies)
        await until(lambda: daemon.nats is not None
                    and daemon.nats.source.counts["duplicates"] == 200)
        assert len(await Admin(http, daemon.exchange_url).orders("order")) == 200
        assert daemon.journal is not None
        counts = await daemon.journal.counts()
        assert counts[SignalState.DONE.value] == 200
        status = daemon.status()["nats"]
        assert isinstance(status, dict)
        assert status["state"] == "connected"
        assert status["accepted"] == 200
        assert status["received"] == 400
        assert status["lag"] == 0


async def connected(daemon: Daemon) -> None:
    """Until the daemon's NATS source has its stream and consumer."""
    await until(lambda: daemon.nats is not None and daemon.nats.source.state == "connected")


def audit_events(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    files = sorted((tmp_path / "audit").glob("audit-*.jsonl"))
    return [e for f in files for line in f.read_bytes().splitlines()
            if (e := orjson.loads(line))["event"] == name]


@pytest.mark.timeout(60)
async def test_invalid_bodies_are_termed_and_reported_rejected(tmp_path: Path) -> None:
    """Not JSON, not an object, an invalid field, an unknown symbol: each is termed (never
    delivered again), audited signal_rejected and reported REJECTED on its symbol's subject
    (``_`` when it named none) with the reason."""
    bad = [b"{not json", b"[1, 2]", {"id": "bad-type", "symbol": "BTCUSDT", "type": "NOPE"},
           {"id": "bad-symbol", "symbol": "NOPEUSDT", "type": "LONG_ENTRY", "quantity": "1"}]
    async with NatsServer(tmp_path / "nats") as server, \
            running_daemon(daemon_settings(tmp_path, server.url)) as daemon, \
            client(server.url) as nc, Reports.on(nc) as reports:
        await connected(daemon)
        await publish(nc, bad)
        await reports.wait(lambda seen: len(seen) >= 4)
        by_id = {body["id"]: (subject, body) for subject, _, body in reports.seen}
        assert set(by_id) == {"nats-EXECD-1", "nats-EXECD-2", "bad-type", "bad-symbol"}
        assert by_id["nats-EXECD-1"][0] == "execd.reports._"
        assert by_id["bad-type"][0] == "execd.reports.BTCUSDT"
        assert by_id["bad-symbol"][0] == "execd.reports.NOPEUSDT"
        assert all(body["state"] == "REJECTED" for _, body in by_id.values())
        assert "type" in by_id["bad-type"][1]["reason"]
        info = await nc.jetstream().consumer_info("EXECD", "execd")
        assert info.num_ack_pending == 0
        assert info.num_redelivered == 0
        assert daemon.nats is not None
        assert daemon.nats.source.counts["rejected"] == 4
    rejected = [e for e in audit_events(tmp_path, "signal_rejected") if e["source"] == "nats"]
    assert len(rejected) == 4


@pytest.mark.timeout(60)
async def test_a_signal_without_id_keeps_its_derived_id_when_delivered_again(
        tmp_path: Path) -> None:
    """A body without id and without Nats-Msg-Id is ``nats-EXECD-{stream sequence}``; the
    same stream message delivered again (the consumer gone, made again) is that signal's
    duplicate: one signal, one order. A Nats-Msg-Id header is the id of a body without one."""
    async with NatsServer(tmp_path / "nats") as server, client(server.url) as nc:
        settings = daemon_settings(tmp_path, server.url)
        async with running_daemon(settings) as daemon, Reports.on(nc) as reports:
            await connected(daemon)
            await publish(nc, [entry(None, "BTCUSDT")])
            await publish(nc, [entry(None, "ETHUSDT")], msg_ids=["strategy-7"])
            await reports.wait(lambda seen: len(reports.states("DONE")) >= 2)
            assert sorted(reports.states("DONE")) == ["nats-EXECD-1", "strategy-7"]
        await nc.jetstream().delete_consumer("EXECD", "execd")
        async with running_daemon(settings) as daemon:
            assert daemon.nats is not None
            await until(lambda: daemon.nats is not None
                        and daemon.nats.source.counts["duplicates"] == 2)
            assert daemon.nats.source.counts["accepted"] == 0
            assert daemon.journal is not None
            assert (await daemon.journal.counts())[SignalState.DONE.value] == 2
    duplicates = {e["signal_id"] for e in audit_events(tmp_path, "signal_duplicate")}
    assert duplicates == {"nats-EXECD-1", "strategy-7"}


async def post_signal(daemon: Daemon, http: aiohttp.ClientSession, body: dict[str, Any]) -> int:
    assert daemon.api is not None
    token = resolve_api_token(daemon.settings, create=False)
    async with http.post(f"{daemon.api.url}/v1/signals", data=orjson.dumps(body),
                         headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status


@pytest.mark.timeout(90)
async def test_a_failed_journal_refuses_every_source_and_the_daemon_goes_on(
        tmp_path: Path) -> None:
    """The journal's disk turns read-only: a signal published meanwhile is not acked but
    nak'ed, and ``execd signal`` is told why, both audited ``journal_failed`` (critical; one
    alert); the source stays connected and the daemon serving; once the disk answers, the
    redelivery is accepted and ends DONE with one order."""
    async with NatsServer(tmp_path / "nats") as server, \
            running_daemon(daemon_settings(tmp_path, server.url)) as daemon, \
            client(server.url) as nc, aiohttp.ClientSession() as http:
        assert daemon.nats is not None
        assert daemon.bus is not None
        assert daemon.journal is not None
        source = daemon.nats.source
        await connected(daemon)
        async with read_only(daemon.journal):
            await publish(nc, [entry("n-failed", "BTCUSDT")])
            await until(lambda: source.counts["naks"] >= 1)
            assert source.counts["accepted"] == 0
            assert daemon.api is not None
            env = daemon_env(tmp_path, int(daemon.api.url.rsplit(":", 1)[1]),
                             EXECD_API_TOKEN=str(resolve_api_token(daemon.settings,
                                                                   create=False)))
            code, out, err = await run_cli(env, "signal", "LONG_ENTRY", "ETHUSDT", "--qty",
                                           "0.100")
            assert (code, out) == (1, ""), err
            assert err.startswith("the daemon could not journal it (journal_failed): journal ")
            assert "attempt to write a readonly database" in err
            assert err.rstrip().endswith("retry after 5 s")
        await until(lambda: source.counts["accepted"] == 1)
        assert source.state == "connected"
        assert await daemon.bus.drain(30)
        record = await daemon.journal.get_signal("n-failed")
        assert record is not None
        assert record.state is SignalState.DONE
        assert daemon.exchange_url is not None
        orders = await Admin(http, daemon.exchange_url).orders("order")
        assert [o["symbol"] for o in orders] == ["BTCUSDT"]
    failed = audit_events(tmp_path, "journal_failed")
    assert failed
    assert {(e["source"], e["level"]) for e in failed} == {("nats", "critical"),
                                                             ("http", "critical")}
    assert [e["kind"] for e in audit_events(tmp_path, "alert")] == ["journal_failed"]


async def test_nats_stopped_and_restarted_while_the_daemon_runs(tmp_path: Path) -> None:
    """NATS goes away: the source says so (status ``down``, source_disconnected), the daemon
    and its HTTP intake go on; NATS comes back: the source reconnects by itself and carries
    on with the same stream, nothing lost."""
    async with NatsServer(tmp_path / "nats") as server, \
            running_daemon(daemon_settings(tmp_path, server.url)) as daemon, \
            aiohttp.ClientSession() as http:
        assert daemon.nats is not None
        assert daemon.bus is not None
        assert daemon.journal is not None
        source = daemon.nats.source
        await connected(daemon)
        async with client(server.url) as nc:
            await publish(nc, [entry(f"before-{i}", SYMBOLS[i % 4]) for i in range(20)])
        await until(lambda: source.counts["accepted"] == 20)

        await server.stop()
        await until(lambda: source.state == "down")
        nats_status = daemon.status()["nats"]
        assert isinstance(nats_status, dict)
        assert nats_status["state"] == "down"
        assert await post_signal(daemon, http, entry("over-http", "BTCUSDT")) == 202

        await server.start()
        await connected(daemon)
        async with client(server.url) as nc:
            await publish(nc, [entry(f"after-{i}", SYMBOLS[i % 4]) for i in range(20)])
        await until(lambda: source.counts["accepted"] == 40)
        assert await daemon.bus.drain(30)
        assert (await daemon.journal.counts())[SignalState.DONE.value] == 41
    assert len(audit_events(tmp_path, "source_disconnected")) >= 1
    assert len(audit_events(tmp_path, "source_connected")) == 2


@pytest.mark.timeout(90)
async def test_reports_dropped_while_nats_is_away_are_published_again(tmp_path: Path) -> None:
    """With NATS away and a report buffer of 2, the reports of 5 signals (sent over HTTP)
    overflow: report_dropped is audited; once NATS is back every signal's final state is
    published from the journal (here into a stream that keeps the reports)."""
    async with NatsServer(tmp_path / "nats") as server:
        settings = daemon_settings(tmp_path, server.url, **{"intake.nats.report_buffer": 2})
        async with client(server.url) as nc:
            await nc.jetstream().add_stream(name="REPORTS", subjects=["execd.reports.>"])
        async with running_daemon(settings) as daemon, aiohttp.ClientSession() as http:
            assert daemon.nats is not None
            assert daemon.bus is not None
            await connected(daemon)
            await server.stop()
            await until(lambda: daemon.nats is not None and daemon.nats.source.state == "down")
            for i in range(5):
                assert await post_signal(daemon, http, entry(f"away-{i}", "BTCUSDT")) == 202
            assert await daemon.bus.drain(30)
            assert daemon.nats.reports.dropped > 0
            await server.start()
            await until(lambda: daemon.nats is not None
                        and daemon.nats.reports.statistics()["buffered"] == 0
                        and daemon.nats.reports.replayed >= 5)
        async with client(server.url) as nc:
            sub = await nc.jetstream().pull_subscribe("execd.reports.>", stream="REPORTS")
            kept = [orjson.loads(m.data) for m in await sub.fetch(100, timeout=2)]
    done = {body["id"] for body in kept if body["state"] == "DONE"}
    assert done == {f"away-{i}" for i in range(5)}
    assert audit_events(tmp_path, "report_dropped")[0]["capacity"] == 2


@pytest.mark.timeout(120)
async def test_two_daemons_for_two_accounts_take_only_their_own_subject(tmp_path: Path) -> None:
    """One NATS server, the stream EXECD made once for ``execd.signals.>``, two ``execd run
    --nats`` processes (each its own simulator, journal, subject, durable and reports
    subject): each executes exactly the signals of its own subject and reports them on its
    own reports subject."""
    async with NatsServer(tmp_path / "nats") as server, client(server.url) as nc, \
            aiohttp.ClientSession() as http:
        await nc.jetstream().add_stream(name="EXECD", subjects=["execd.signals.>"],
                                        duplicate_window=120)
        daemons = {}
        for account in ("acct1", "acct2"):
            env = daemon_env(tmp_path / account, free_port(), EXECD_API_TOKEN=TOKEN,
                             EXECD_INTAKE__NATS__SUBJECT=f"execd.signals.{account}",
                             EXECD_INTAKE__NATS__DURABLE=account,
                             EXECD_INTAKE__NATS__REPORTS_SUBJECT=f"execd.reports.{account}")
            daemons[account] = await DaemonProcess(env, "--nats", server.url).start()
        try:
            async with Reports.on(nc, "execd.reports") as reports:
                for account in ("acct1", "acct2"):
                    await publish(nc, [entry(f"{account}-{i}", SYMBOLS[i % 4])
                                       for i in range(10)],
                                  subject=f"execd.signals.{account}")
                await reports.wait(lambda seen: len(reports.states("DONE")) >= 20)
            for subject, _, body in reports.seen:
                assert subject.startswith(f"execd.reports.{body['id'].split('-')[0]}.")
            for account, other in (("acct1", "acct2"), ("acct2", "acct1")):
                api = daemons[account].env["EXECD_API__PORT"]
                auth = {"Authorization": f"Bearer {TOKEN}"}
                for signal_id, expected in ((f"{account}-3", 200), (f"{other}-3", 404)):
                    async with http.get(f"http://127.0.0.1:{api}/v1/signals/{signal_id}",
                                        headers=auth) as resp:
                        assert resp.status == expected, (account, signal_id)
        finally:
            for daemon in daemons.values():
                code, err = await daemon.stop()
                assert code == 0, err
