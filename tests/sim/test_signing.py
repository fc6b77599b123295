"""Security: Binance's HMAC signature over query + body, API key and the timestamp rule."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from app.sim.security import sign, split_signature
from tests.sim.conftest import RawClient, SimClock

VECTOR_SECRET = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9"
VECTOR_MESSAGE = ("symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC"
                  "&recvWindow=5000&timestamp=1591702613943")
VECTOR_SIGNATURE = "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"


def test_documented_signature_vector() -> None:
    """The simulator's HMAC reproduces Binance's documented example signature."""
    assert sign(VECTOR_SECRET, VECTOR_MESSAGE) == VECTOR_SIGNATURE


def test_signature_split_concatenates_query_and_body_without_separator() -> None:
    """totalParams is the query followed directly by the body, minus the signature."""
    payload, sig = split_signature("symbol=BTCUSDT&side=BUY", "quantity=1&signature=abc")
    assert payload == "symbol=BTCUSDT&side=BUYquantity=1"
    assert sig == "abc"


async def test_signed_request_with_valid_signature_is_accepted(raw: RawClient) -> None:
    """A correctly signed GET passes the security checks."""
    answer = await raw.signed("GET", "/fapi/v2/balance")
    assert answer.status == 200
    assert answer.body[0]["asset"] == "USDT"


async def test_signature_is_case_insensitive(raw: RawClient, clock: SimClock) -> None:
    """Binance documents the signature as not case sensitive."""
    payload = f"timestamp={clock.ms}"
    answer = await raw.send("GET", "/fapi/v2/balance",
                            query=f"{payload}&signature={raw.signature(payload).upper()}")
    assert answer.status == 200


async def test_mixed_query_and_body_signature(raw: RawClient, clock: SimClock) -> None:
    """Parameters split between query and body are signed as query + body (no '&')."""
    query = "symbol=BTCUSDT&side=BUY&type=MARKET"
    body = f"quantity=0.010&timestamp={clock.ms}"
    sig = raw.signature(query + body)
    answer = await raw.send("POST", "/fapi/v1/order", query=query,
                            body=f"{body}&signature={sig}")
    assert answer.status == 200, answer.body


async def test_wrong_signature_is_rejected(raw: RawClient, clock: SimClock) -> None:
    """A signature made with another secret answers 400 -1022."""
    raw.secret = "not-the-secret"
    answer = await raw.signed("GET", "/fapi/v2/balance")
    assert (answer.status, answer.body) == (
        400, {"code": -1022, "msg": "Signature for this request is not valid."})


async def test_signature_covers_the_bytes_sent_not_decoded_values(
        raw: RawClient, clock: SimClock) -> None:
    """Signing decoded values but sending percent-encoded ones fails, as SPEC §5.1 warns."""
    decoded = f"symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.010&newClientOrderId=a:b" \
              f"&timestamp={clock.ms}"
    sent = decoded.replace("a:b", "a%3Ab")
    answer = await raw.send("POST", "/fapi/v1/order",
                            body=f"{sent}&signature={raw.signature(decoded)}")
    assert answer.code == -1022


async def test_missing_api_key_is_format_invalid(raw: RawClient, clock: SimClock) -> None:
    """No X-MBX-APIKEY header answers 401 -2014."""
    raw.key = ""
    answer = await raw.signed("GET", "/fapi/v2/balance")
    assert (answer.status, answer.body) == (401, {"code": -2014, "msg": "API-key format invalid."})


async def test_unknown_api_key_is_rejected(raw: RawClient) -> None:
    """A well-formed but unknown key answers 401 -2015 with Binance's text."""
    raw.key = "someone-elses-key"
    answer = await raw.signed("GET", "/fapi/v2/balance")
    assert (answer.status, answer.body) == (
        401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."})


async def test_missing_timestamp_is_mandatory(raw: RawClient) -> None:
    """A signed request without timestamp answers 400 -1102 naming the parameter."""
    payload = "symbol=BTCUSDT"
    answer = await raw.send("GET", "/fapi/v2/positionRisk",
                            query=f"{payload}&signature={raw.signature(payload)}")
    assert (answer.status, answer.body) == (400, {
        "code": -1102,
        "msg": "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."})


async def test_missing_signature_is_mandatory(raw: RawClient, clock: SimClock) -> None:
    """A signed endpoint called without a signature answers 400 -1102 for 'signature'."""
    answer = await raw.send("GET", "/fapi/v2/balance", query=f"timestamp={clock.ms}")
    assert answer.status == 400
    assert answer.body["code"] == -1102
    assert "'signature'" in answer.body["msg"]


async def test_json_body_is_not_read(raw: RawClient, clock: SimClock) -> None:
    """Binance reads form bodies only: a JSON body leaves timestamp missing (-1102)."""
    answer = await raw.send("POST", "/fapi/v1/order",
                            body=f'{{"symbol":"BTCUSDT","timestamp":{clock.ms}}}',
                            content_type="application/json")
    assert answer.code == -1102


@pytest.mark.parametrize(("offset_ms", "recv_window", "accepted"), [
    (0, None, True),
    (999, None, True),           # timestamp < serverTime + 1000
    (1000, None, False),         # 1000 ms ahead
    (-5000, None, True),         # serverTime - timestamp <= recvWindow (default 5000)
    (-5001, None, False),
    (-9000, 10000, True),
    (-10001, 10000, False),
])
async def test_timestamp_rule(raw: RawClient, clock: SimClock, offset_ms: int,
                              recv_window: int | None, accepted: bool) -> None:
    """Processed only if timestamp < server + 1000 and server - timestamp <= recvWindow."""
    params: dict[str, object] = {}
    if recv_window is not None:
        params["recvWindow"] = recv_window
    answer = await raw.signed("GET", "/fapi/v2/balance", params,
                              timestamp=clock.ms + offset_ms)
    if accepted:
        assert answer.status == 200, answer.body
    else:
        assert answer.status == 400
        assert answer.body["code"] == -1021


async def test_timestamp_ahead_message(raw: RawClient, clock: SimClock) -> None:
    """A timestamp 1 s ahead gets Binance's 'ahead of the server's time' text."""
    answer = await raw.signed("GET", "/fapi/v2/balance", timestamp=clock.ms + 1500)
    assert answer.body == {
        "code": -1021,
        "msg": "Timestamp for this request was 1000ms ahead of the server's time."}


async def test_timestamp_outside_recv_window_message(raw: RawClient, clock: SimClock) -> None:
    """A stale timestamp gets Binance's 'outside of the recvWindow' text."""
    answer = await raw.signed("GET", "/fapi/v2/balance", timestamp=clock.ms - 60_000)
    assert answer.body == {
        "code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."}


async def test_public_endpoints_need_no_signature(raw: RawClient) -> None:
    """NONE-security endpoints answer without key or signature."""
    raw.key = ""
    answer = await raw.public("/fapi/v1/time")
    assert answer.status == 200
    assert isinstance(answer.body["serverTime"], int)


async def test_query_parameter_wins_over_body(raw: RawClient, clock: SimClock) -> None:
    """A name in both query and body takes the query's value (Binance's rule)."""
    query = "symbol=BTCUSDT&leverage=5"
    body = urlencode({"symbol": "NOPEUSDT", "timestamp": clock.ms})
    answer = await raw.send("POST", "/fapi/v1/leverage", query=query,
                            body=f"{body}&signature={raw.signature(query + body)}")
    assert answer.status == 200, answer.body
    assert answer.body["symbol"] == "BTCUSDT"
