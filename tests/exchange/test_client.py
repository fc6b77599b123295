"""`BinanceClient`'s own form encoding and response parsing, against what the library did."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import payload, web
from binance.exceptions import BinanceAPIException, BinanceRequestException

from app.exchange.client import BinanceClient
from tests.loopback import serving


async def test_a_form_body_is_the_bytes_formdata_would_send() -> None:
    """A signed POST body holds the library's pairs (sorted, signature last), url-encoded as
    aiohttp's FormData encodes them, special characters included; a GET keeps its query."""
    client = BinanceClient("sim-key", "sim-secret", base_url="http://127.0.0.1:1",
                           recv_window_ms=5000, timeout_s=1.0, on_response=lambda call: None)
    try:
        data = {"symbol": "BTCUSDT", "side": "BUY", "newClientOrderId": "a b+c/d&e=f:é"}
        body = client._get_request_kwargs("post", True, data=dict(data))["data"]
        assert isinstance(body, bytes)
        pairs = parse_qsl(body.decode(), keep_blank_values=True)
        assert [key for key, _ in pairs] == [
            "newClientOrderId", "recvWindow", "side", "symbol", "timestamp", "signature"]
        assert dict(pairs)["newClientOrderId"] == data["newClientOrderId"]
        assert b"newClientOrderId=a+b%2Bc%2Fd%26e%3Df%3A%C3%A9&" in body
        form = aiohttp.FormData(pairs)()
        assert isinstance(form, payload.BytesPayload)
        assert body == form._value
        query = client._get_request_kwargs("get", True, data={"symbol": "BTCUSDT"})
        assert "data" not in query
        assert query["params"].startswith("recvWindow=5000&symbol=BTCUSDT&timestamp=")
    finally:
        await client.close_connection()


async def test_responses_parse_once_and_fail_as_the_library_fails() -> None:
    """Over loopback: JSON parses (orjson), an empty body is {}, a 200 HTML page raises
    aiohttp's ContentTypeError, a 200 that is not JSON raises BinanceRequestException, an
    error status BinanceAPIException with the exchange's code."""
    answers: list[web.Response] = []

    async def ping(request: web.Request) -> web.Response:
        return answers.pop(0)

    app = web.Application()
    app.router.add_get("/fapi/v1/ping", ping)
    async with serving(app) as port:
        client = BinanceClient("sim-key", "sim-secret", base_url=f"http://127.0.0.1:{port}",
                               recv_window_ms=5000, timeout_s=2.0,
                               on_response=lambda call: None)
        try:
            answers.append(web.json_response({"orderId": 2**62, "price": "1.5", "q": 0.25}))
            assert await client.futures_ping() == {"orderId": 2**62, "price": "1.5", "q": 0.25}
            answers.append(web.Response(body=b"", content_type="application/json"))
            assert await client.futures_ping() == {}
            answers.append(web.Response(text="<html>hi</html>", content_type="text/html"))
            with pytest.raises(aiohttp.ContentTypeError):
                await client.futures_ping()
            answers.append(web.Response(text="{not json", content_type="application/json"))
            not_json = re.escape("Invalid Response: {not json")
            with pytest.raises(BinanceRequestException, match=not_json):
                await client.futures_ping()
            answers.append(web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400))
            with pytest.raises(BinanceAPIException) as raised:
                await client.futures_ping()
            assert (raised.value.status_code, raised.value.code) == (400, -1121)
        finally:
            await client.close_connection()
