"""`BinanceClient`'s own form encoding: the bytes aiohttp's FormData would have sent."""

from __future__ import annotations

from urllib.parse import parse_qsl

import aiohttp
from aiohttp import payload

from app.exchange.client import BinanceClient


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
