"""The control API over real HTTP: statuses, bodies and auth of SPEC §11.2.

Every test talks to a `ControlApi` on a free loopback port with aiohttp's client, in front of the
real service, bus, executor and gateway against the simulator (tests/control/conftest.py).
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from typing import Any

import aiohttp
import orjson
import prometheus_client
import pytest
import structlog
from structlog.testing import capture_logs

from app import journal_sync
from app.clock import SystemClock
from app.control.http_api import ControlApi
from app.exchange.gateway import Gateway
from app.exchange.symbols import trading_rules
from app.execution.operator import Operator
from app.execution.risk import RiskGate, RiskLimits
from app.factory import ExchangeParts, ExecutionParts
from app.intake.bus import SignalBus
from app.intake.service import Service
from app.journal import Journal
from tests.simulator import Admin
from tests.test_journal_durability import read_only, write_lock

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENTRY = {"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.010"}


def status_of_daemon() -> Mapping[str, object]:
    return {"state": "ready", "queue": {"capacity": 1000, "pending": 0}}


@pytest.fixture
def registry() -> prometheus_client.CollectorRegistry:
    return prometheus_client.CollectorRegistry()


@pytest.fixture
def status() -> Callable[[], Mapping[str, object]]:
    return status_of_daemon


@pytest.fixture
async def api(service: Service, journal: Journal, gateway: Gateway,
              registry: prometheus_client.CollectorRegistry,
              status: Callable[[], Mapping[str, object]]) -> AsyncIterator[ControlApi]:
    server = ControlApi(service, journal, gateway, status, token=TOKEN, port=0,
                        log=structlog.get_logger(), registry=registry)
    await server.start()
    yield server
    await server.close()


async def call(http: aiohttp.ClientSession, method: str, url: str, *,
               headers: Mapping[str, str] | None = AUTH, body: object = None,
               data: bytes | None = None) -> tuple[int, Any, Mapping[str, str]]:
    """One request: the status, the decoded JSON body and the headers."""
    payload = orjson.dumps(body) if body is not None else data
    async with http.request(method, url, headers=headers, data=payload) as resp:
        raw = await resp.read()
        return resp.status, orjson.loads(raw), resp.headers


# ------------------------------------------------------------------ POST /v1/signals

async def test_new_signal_answers_202_with_its_view(api: ControlApi,
                                                    http: aiohttp.ClientSession) -> None:
    """A valid signal is journaled and answered 202 with its id, state ACCEPTED and no intents."""
    status, body, _ = await call(http, "POST", f"{api.url}/v1/signals",
                                 body={"id": "h-202", **ENTRY})
    assert status == 202
    assert body == {"id": "h-202", "symbol": "BTCUSDT", "type": "LONG_ENTRY",
                    "state": "ACCEPTED", "reason": None, "intents": []}


async def test_finished_signal_shows_done_with_its_intents(
        api: ControlApi, http: aiohttp.ClientSession, bus: SignalBus) -> None:
    """GET after execution shows DONE and the entry, stop-loss and take-profit intents."""
    await call(http, "POST", f"{api.url}/v1/signals",
               body={"id": "h-done", **ENTRY, "stop_loss": "60000", "take_profit": "70000"})
    assert await bus.drain(10)
    status, body, _ = await call(http, "GET", f"{api.url}/v1/signals/h-done")
    assert status == 200
    assert body["state"] == "DONE"
    assert [(i["leg"], i["state"]) for i in body["intents"]] == [
        ("E", "FILLED"), ("S", "PLACED"), ("T", "PLACED")]
    assert all(i["client_id"] and i["exchange_id"] for i in body["intents"])


async def test_duplicate_answers_200_with_the_get_body(
        api: ControlApi, http: aiohttp.ClientSession, bus: SignalBus, admin: Admin) -> None:
    """A known id answers 200 with exactly GET's body, and is not executed again."""
    await call(http, "POST", f"{api.url}/v1/signals", body={"id": "h-dup", **ENTRY})
    assert await bus.drain(10)
    status, again, _ = await call(http, "POST", f"{api.url}/v1/signals",
                                  body={"id": "h-dup", **ENTRY, "quantity": "5"})
    _, got, _ = await call(http, "GET", f"{api.url}/v1/signals/h-dup")
    assert status == 200
    assert again == got
    assert again["state"] == "DONE"
    assert len(await admin.orders("order")) == 1


@pytest.mark.parametrize(("body", "field", "detail"), [
    ({"symbol": "BTCUSDT", "type": "LONG_ENTRY"}, "quantity", "is required for LONG_ENTRY"),
    ({**ENTRY, "stop_loss": "71000", "take_profit": "70000"}, "stop_loss",
     "must be below take_profit 70000 for LONG_ENTRY"),
    ({**ENTRY, "symbol": "DOGEUSDT"}, "symbol", "DOGEUSDT is not a symbol of this exchange"),
    ({**ENTRY, "colour": "red"}, "colour", "unknown field"),
    ([1, 2], "body", "must be a JSON object"),
])
async def test_invalid_signal_answers_400_naming_field_and_rule(
        api: ControlApi, http: aiohttp.ClientSession, journal: Journal, body: object,
        field: str, detail: str) -> None:
    """A signal breaking a rule answers 400 with the field and the rule; nothing is journaled."""
    status, answer, _ = await call(http, "POST", f"{api.url}/v1/signals", body=body)
    assert status == 400
    assert answer == {"error": "invalid_signal", "field": field, "detail": detail}
    assert sum((await journal.counts()).values()) == 0


@pytest.mark.parametrize("raw", [b"", b"{", b'{"symbol": "BTCUSDT",}', b'"\xff\xfe"', b"NaN"])
async def test_broken_json_answers_400_invalid_json(api: ControlApi,
                                                    http: aiohttp.ClientSession,
                                                    raw: bytes) -> None:
    """Bytes that are not UTF-8 JSON answer 400 invalid_json with the decoder's reason."""
    status, body, _ = await call(http, "POST", f"{api.url}/v1/signals", data=raw)
    assert status == 400
    assert body["error"] == "invalid_json"
    assert body["detail"]


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "},
], ids=["none", "wrong-token", "no-scheme", "basic", "empty"])
async def test_missing_or_wrong_token_answers_401(api: ControlApi, http: aiohttp.ClientSession,
                                                  journal: Journal,
                                                  headers: dict[str, str]) -> None:
    """Without the right bearer token a signal is refused 401 and never journaled."""
    status, body, resp_headers = await call(http, "POST", f"{api.url}/v1/signals",
                                            headers=headers, body={"id": "h-401", **ENTRY})
    assert status == 401
    assert body["error"] == "unauthorized"
    assert resp_headers["WWW-Authenticate"] == "Bearer"
    assert await journal.get_signal("h-401") is None


async def test_every_v1_endpoint_needs_the_token(api: ControlApi,
                                                 http: aiohttp.ClientSession) -> None:
    """Status, signals, positions, balance and cancel-all all answer 401 without the token."""
    for method, path in [("GET", "/v1/status"), ("GET", "/v1/signals/x"),
                         ("GET", "/v1/positions/BTCUSDT"), ("GET", "/v1/balance"),
                         ("POST", "/v1/cancel-all/BTCUSDT")]:
        status, _, _ = await call(http, method, f"{api.url}{path}", headers={})
        assert status == 401, path


async def test_body_over_the_limit_answers_413(api: ControlApi,
                                               http: aiohttp.ClientSession) -> None:
    """A Content-Length over 64 KiB answers 413 without reading the body."""
    raw = orjson.dumps({**ENTRY, "source": "x" * 70_000})
    status, body, _ = await call(http, "POST", f"{api.url}/v1/signals", data=raw)
    assert status == 413
    assert body["error"] == "body_too_large"
    assert body["limit"] == 65536


async def test_body_at_the_limit_is_read(api: ControlApi, http: aiohttp.ClientSession) -> None:
    """A body of exactly 64 KiB is read and validated, not refused as too large."""
    raw = orjson.dumps({**ENTRY, "colour": "red"})
    raw += b" " * (65536 - len(raw))
    status, body, _ = await call(http, "POST", f"{api.url}/v1/signals", data=raw)
    assert (status, body["field"]) == (400, "colour")


async def test_chunked_body_over_the_limit_answers_413(api: ControlApi,
                                                       http: aiohttp.ClientSession) -> None:
    """A chunked body without Content-Length is cut off once it passes the limit."""
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 4096

    async with http.post(f"{api.url}/v1/signals", headers=AUTH, data=chunks()) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"] == "body_too_large"


@pytest.mark.parametrize("capacity", [1])
async def test_full_queue_answers_429_with_retry_after(
        api: ControlApi, http: aiohttp.ClientSession, bus: SignalBus, journal: Journal) -> None:
    """With the only place taken, a signal answers 429 with Retry-After and is not journaled."""
    bus.reserve_nowait()
    status, body, headers = await call(http, "POST", f"{api.url}/v1/signals",
                                       body={"id": "h-429", **ENTRY})
    bus.release()
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    assert body["error"] == "queue_full"
    assert body["retry_after"] == int(headers["Retry-After"])
    assert await journal.get_signal("h-429") is None


async def test_stopping_answers_503_and_healthz_says_so(
        api: ControlApi, http: aiohttp.ClientSession, service: Service) -> None:
    """Once intake closes, signals answer 503 "stopping" and /healthz 503 "stopping"."""
    service.close()
    status, body, _ = await call(http, "POST", f"{api.url}/v1/signals", body=ENTRY)
    assert (status, body["error"]) == (503, "stopping")
    status, body, _ = await call(http, "GET", f"{api.url}/healthz", headers={})
    assert (status, body) == (503, {"status": "stopping"})


async def test_starting_answers_503_and_healthz_says_so(
        journal: Journal, bus: SignalBus, exchange: ExchangeParts, gateway: Gateway,
        http: aiohttp.ClientSession) -> None:
    """Before intake opens (recovery running), signals and /healthz answer 503 "starting"."""
    service = Service(journal, bus, partial(trading_rules, exchange.symbols.get), SystemClock(),
                      structlog.get_logger(), default_ttl_s=30.0)
    api = ControlApi(service, journal, gateway, status_of_daemon, token=TOKEN, port=0,
                     log=structlog.get_logger())
    await api.start()
    try:
        status, body, _ = await call(http, "POST", f"{api.url}/v1/signals", body=ENTRY)
        assert (status, body["error"]) == (503, "starting")
        status, body, _ = await call(http, "GET", f"{api.url}/healthz", headers={})
        assert (status, body) == (503, {"status": "starting"})
    finally:
        await api.close()


async def test_signal_bodies_and_token_are_not_logged(api: ControlApi,
                                                      http: aiohttp.ClientSession) -> None:
    """The audit events of a POST carry neither the body's values nor the Authorization value."""
    with capture_logs() as logs:
        await call(http, "POST", f"{api.url}/v1/signals",
                   body={**ENTRY, "source": "secret-strategy-name", "colour": "x"})
    assert [e["event"] for e in logs] == ["signal_received", "signal_rejected"]
    text = repr(logs)
    assert TOKEN not in text
    assert "secret-strategy-name" not in text


# ------------------------------------------------------------------ GET /v1/signals/{id}

async def test_unknown_signal_answers_404(api: ControlApi, http: aiohttp.ClientSession) -> None:
    """An id the journal does not know answers 404 not_found."""
    status, body, _ = await call(http, "GET", f"{api.url}/v1/signals/never-seen")
    assert status == 404
    assert body["error"] == "not_found"


# ------------------------------------------------------------------ open endpoints

async def test_healthz_is_ready_without_a_token(api: ControlApi,
                                                http: aiohttp.ClientSession) -> None:
    """/healthz needs no token and answers 200 ready while intake is open."""
    status, body, _ = await call(http, "GET", f"{api.url}/healthz", headers={})
    assert (status, body) == (200, {"status": "ready"})


async def test_metrics_expose_the_registry_without_a_token(
        api: ControlApi, http: aiohttp.ClientSession,
        registry: prometheus_client.CollectorRegistry) -> None:
    """/metrics needs no token and serves the registry in the Prometheus text format."""
    counter = prometheus_client.Counter("execd_signals_total", "signals", ["state"],
                                        registry=registry)
    counter.labels(state="DONE").inc(3)
    async with http.get(f"{api.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
        text = await resp.text()
    assert 'execd_signals_total{state="DONE"} 3.0' in text


# ------------------------------------------------------------------ status and account

async def test_status_serialises_the_daemons_status(api: ControlApi,
                                                    http: aiohttp.ClientSession) -> None:
    """GET /v1/status answers the status callable's mapping as JSON."""
    status, body, _ = await call(http, "GET", f"{api.url}/v1/status")
    assert (status, body) == (200, status_of_daemon())


async def test_flat_position_answers_amount_zero(api: ControlApi,
                                                 http: aiohttp.ClientSession) -> None:
    """A flat symbol answers {"symbol", "amount": "0"}."""
    status, body, _ = await call(http, "GET", f"{api.url}/v1/positions/ETHUSDT")
    assert (status, body) == (200, {"symbol": "ETHUSDT", "amount": "0"})


async def test_open_position_answers_decimals_as_strings(
        api: ControlApi, http: aiohttp.ClientSession, bus: SignalBus) -> None:
    """After a filled entry the position shows its signed amount and prices as strings."""
    await call(http, "POST", f"{api.url}/v1/signals", body={"id": "h-pos", **ENTRY})
    assert await bus.drain(10)
    status, body, _ = await call(http, "GET", f"{api.url}/v1/positions/BTCUSDT")
    assert status == 200
    assert body["amount"] == "0.010"
    assert body["side"] == "BUY"
    assert isinstance(body["entry_price"], str)
    assert isinstance(body["mark_price"], str)


async def test_balance_answers_usdt(api: ControlApi, http: aiohttp.ClientSession) -> None:
    """GET /v1/balance answers the USDT wallet and available balance as strings."""
    status, body, _ = await call(http, "GET", f"{api.url}/v1/balance")
    assert status == 200
    assert body["asset"] == "USDT"
    assert float(body["wallet"]) > 0
    assert set(body) == {"asset", "wallet", "available", "unrealized_pnl"}


async def test_cancel_all_answers_the_counts(api: ControlApi, http: aiohttp.ClientSession,
                                             bus: SignalBus, admin: Admin) -> None:
    """Cancel-all after a bracketed entry cancels its two algo orders and says so."""
    await call(http, "POST", f"{api.url}/v1/signals",
               body={"id": "h-cancel", **ENTRY, "stop_loss": "60000", "take_profit": "70000"})
    assert await bus.drain(10)
    status, body, _ = await call(http, "POST", f"{api.url}/v1/cancel-all/BTCUSDT")
    assert (status, body) == (200, {"symbol": "BTCUSDT", "regular": 0, "algo": 2})
    algos = await admin.orders("algo")
    assert {a["status"] for a in algos} == {"CANCELED"}


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/positions/btcusdt"), ("GET", "/v1/positions/ZZZZUSDT"),
    ("POST", "/v1/cancel-all/B"), ("POST", "/v1/cancel-all/ZZZZUSDT"),
])
async def test_bad_symbol_answers_400(api: ControlApi, http: aiohttp.ClientSession,
                                      method: str, path: str) -> None:
    """A malformed symbol, or one the exchange does not list, answers 400 invalid_symbol."""
    status, body, _ = await call(http, method, f"{api.url}{path}")
    assert status == 400
    assert body["error"] == "invalid_symbol"
    assert body["field"] == "symbol"


async def test_exchange_failure_answers_502_with_its_class(
        api: ControlApi, http: aiohttp.ClientSession, admin: Admin) -> None:
    """During an exchange outage an account call answers 502 naming the error class."""
    await admin.post("faults", {"outages": [{"start_s": 0, "duration_s": 600}]})
    status, body, _ = await call(http, "GET", f"{api.url}/v1/balance")
    assert status == 502
    assert body["error"] == "exchange_error"
    assert body["error_class"] == "TransientError"
    assert body["message"]


# ------------------------------------------------------------------ routing and failures

async def test_unknown_path_answers_404_json(api: ControlApi,
                                             http: aiohttp.ClientSession) -> None:
    """An unknown path answers 404 with a JSON body."""
    status, body, _ = await call(http, "GET", f"{api.url}/v2/nothing")
    assert (status, body["error"]) == (404, "not_found")


async def test_wrong_method_answers_405_json(api: ControlApi,
                                             http: aiohttp.ClientSession) -> None:
    """GET on the POST-only signals path answers 405 with Allow and a JSON body."""
    status, body, headers = await call(http, "GET", f"{api.url}/v1/signals")
    assert (status, body["error"]) == (405, "method_not_allowed")
    assert headers["Allow"] == "POST"


@pytest.fixture
def broken_status() -> Callable[[], Mapping[str, object]]:
    def status() -> Mapping[str, object]:
        raise RuntimeError("status exploded")
    return status


async def test_unexpected_error_answers_500_and_the_server_lives_on(
        service: Service, journal: Journal, gateway: Gateway, http: aiohttp.ClientSession,
        broken_status: Callable[[], Mapping[str, object]]) -> None:
    """A handler that raises answers 500 JSON, is logged as api_request_failed, and the next request
    is served."""
    api = ControlApi(service, journal, gateway, broken_status, token=TOKEN, port=0,
                     log=structlog.get_logger())
    await api.start()
    try:
        with capture_logs() as logs:
            status, body, _ = await call(http, "GET", f"{api.url}/v1/status")
        assert (status, body["error"]) == (500, "internal_error")
        assert [(e["event"], e["error_class"], e["path"]) for e in logs] == [
            ("api_request_failed", "RuntimeError", "/v1/status")]
        status, _, _ = await call(http, "GET", f"{api.url}/healthz", headers={})
        assert status == 200
    finally:
        await api.close()


# ------------------------------------------------------------------ construction

@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_non_loopback_without_token_is_refused(service: Service, journal: Journal,
                                               gateway: Gateway, host: str) -> None:
    """Binding a non-loopback address with an empty token raises ValueError."""
    with pytest.raises(ValueError, match="without a token"):
        ControlApi(service, journal, gateway, status_of_daemon, token="", host=host,
                   log=structlog.get_logger())


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_without_token_is_allowed(service: Service, journal: Journal,
                                           gateway: Gateway, host: str) -> None:
    """On loopback an empty token is allowed (auth off), as SPEC §11.2 permits."""
    ControlApi(service, journal, gateway, status_of_daemon, token="", host=host,
               log=structlog.get_logger())


async def test_port_zero_binds_a_free_port(api: ControlApi) -> None:
    """port=0 picks a free port, and url names it."""
    assert api.url.startswith("http://127.0.0.1:")
    assert int(api.url.rsplit(":", 1)[1]) > 0


# ------------------------------------------------------------------ the host check

@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/v1/status"])
async def test_a_foreign_host_is_refused_on_every_path(api: ControlApi,
                                                       http: aiohttp.ClientSession,
                                                       path: str) -> None:
    """DNS rebinding: a page at evil.example whose name now points at 127.0.0.1 sends
    Host: evil.example — refused with 421, even where no token is needed."""
    port = api.url.rsplit(":", 1)[1]
    status, body, _ = await call(http, "GET", f"{api.url}{path}",
                                 headers={**AUTH, "Host": f"evil.example:{port}"})
    assert status == 421
    assert body["error"] == "misdirected_request"
    assert "evil.example" in body["detail"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST", "[::1]", "127.0.0.2"])
async def test_loopback_hosts_are_served(api: ControlApi, http: aiohttp.ClientSession,
                                         host: str) -> None:
    port = api.url.rsplit(":", 1)[1]
    status, _, _ = await call(http, "GET", f"{api.url}/v1/status",
                              headers={**AUTH, "Host": f"{host}:{port}"})
    assert status == 200


async def test_a_locked_journal_answers_503_journal_busy_and_changes_nothing(
        api: ControlApi, http: aiohttp.ClientSession, journal: Journal, bus: SignalBus) -> None:
    """Another process holds the journal's write lock (``BEGIN IMMEDIATE`` from its own
    connection) past the busy timeout: 503 ``journal_busy`` with Retry-After, audited once
    (``journal_busy``), nothing journaled or queued; once the lock is gone the same POST is
    accepted."""
    with capture_logs() as logs, write_lock(journal.path):
        status, body, headers = await call(http, "POST", f"{api.url}/v1/signals",
                                           body={"id": "h-busy", **ENTRY})
    assert status == 503, body
    assert body["error"] == "journal_busy"
    assert body["detail"].startswith("journal busy")
    assert headers["Retry-After"] == str(body["retry_after"]) == "1"
    busy = [e for e in logs if e["event"] == "journal_busy"]
    assert len(busy) == 1
    assert (busy[0]["source"], busy[0]["log_level"]) == ("http", "error")
    assert "database is locked" in busy[0]["error"]
    assert not [e for e in logs if e["event"] == "api_request_failed"]
    assert await journal.get_signal("h-busy") is None
    assert bus.snapshot().pending == 0
    status, body, _ = await call(http, "POST", f"{api.url}/v1/signals",
                                 body={"id": "h-busy", **ENTRY})
    assert status == 202, body


async def test_a_failed_journal_answers_503_journal_failed_and_changes_nothing(
        journal: Journal, service: Service, gateway: Gateway, exchange: ExchangeParts,
        execution: ExecutionParts, bus: SignalBus, http: aiohttp.ClientSession) -> None:
    """The journal's disk turns read-only (a failed disk): a signal is refused with 503
    ``journal_failed`` and Retry-After, audited once (``journal_failed``, critical, by the
    service), nothing journaled or queued; an operator command that writes the journal gets the
    same answer (audited by the API), and the trading state is unchanged. Once the disk answers
    again both go through; the API answered throughout."""
    clock, log = SystemClock(), structlog.get_logger()
    risk = RiskGate(RiskLimits(), journal, clock, log, positions=dict)
    operator = Operator(risk, journal, gateway, gateway, execution.protector,
                        exchange.symbols.get, clock, log)
    api = ControlApi(service, journal, gateway, status_of_daemon, token=TOKEN, port=0,
                     log=log, operator=operator)
    await api.start()
    try:
        with capture_logs() as logs:
            async with read_only(journal):
                signal = await call(http, "POST", f"{api.url}/v1/signals",
                                    body={"id": "h-failed", **ENTRY})
                halt = await call(http, "POST", f"{api.url}/v1/trading-state",
                                  body={"state": "HALTED", "reason": "test"})
                health = await call(http, "GET", f"{api.url}/healthz", headers={})
        for status, body, headers in (signal, halt):
            assert status == 503, body
            assert body["error"] == "journal_failed"
            assert "attempt to write a readonly database" in body["detail"]
            assert "nothing was acknowledged" in body["detail"]
            assert headers["Retry-After"] == str(body["retry_after"]) == "5"
        assert health[0] == 200
        failed = [(e["source"], e["log_level"]) for e in logs if e["event"] == "journal_failed"]
        assert failed == [("http", "critical")] * 2
        assert not [e for e in logs if e["event"] == "api_request_failed"]
        assert await journal.get_signal("h-failed") is None
        assert bus.snapshot().pending == 0
        assert await journal.load_trading_state() is None
        status, body, _ = await call(http, "POST", f"{api.url}/v1/signals",
                                     body={"id": "h-failed", **ENTRY})
        assert status == 202, body
        status, body, _ = await call(http, "POST", f"{api.url}/v1/trading-state",
                                     body={"state": "HALTED", "reason": "test"})
        assert (status, body["state"]) == (200, "HALTED")
    finally:
        await api.close()


async def test_after_a_failed_fsync_healthz_and_every_signal_say_journal_failed(
        api: ControlApi, http: aiohttp.ClientSession, journal: Journal, bus: SignalBus,
        admin: Admin, monkeypatch: pytest.MonkeyPatch) -> None:
    """The WAL's fsync fails once: that POST answers 503 ``journal_failed``, and so does every
    later one although the disk answers again (nothing is acknowledged until a restart);
    ``/healthz`` says ``journal_failed`` (503), so a supervisor sees it. The signal whose
    accept was committed but not synced ends FAILED without an order; its id answers that."""
    real = os.fsync
    failing = [OSError(errno.EIO, "Input/output error")]

    def fsync(fd: int) -> None:
        if failing:
            raise failing.pop()
        real(fd)

    status, body, _ = await call(http, "GET", f"{api.url}/healthz", headers={})
    assert (status, body) == (200, {"status": "ready"})
    monkeypatch.setattr(journal_sync.os, "fsync", fsync)
    for signal_id, detail in (("h-eio", "the fsync that was to put this write on the disk "
                                        "failed (OSError(5, 'Input/output error'))"),
                              ("h-after", "an fsync failed (OSError(5, 'Input/output error')), "
                                          "so it acknowledges nothing more")):
        status, body, headers = await call(http, "POST", f"{api.url}/v1/signals",
                                           body={"id": signal_id, **ENTRY})
        assert (status, body["error"]) == (503, "journal_failed"), body
        assert detail in body["detail"]
        assert headers["Retry-After"] == "5"
    status, body, _ = await call(http, "GET", f"{api.url}/healthz", headers={})
    assert (status, body["status"]) == (503, "journal_failed")
    assert "no signal is accepted until execd is restarted" in body["detail"]
    assert await bus.drain(30)
    status, body, _ = await call(http, "POST", f"{api.url}/v1/signals",
                                 body={"id": "h-eio", **ENTRY})
    assert (status, body["state"]) == (200, "FAILED"), body
    assert "fsync failed" in body["reason"]
    assert await admin.orders() == []
    assert await journal.get_signal("h-after") is None
