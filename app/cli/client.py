"""A small synchronous client of the control API for the CLI (``execd signal``, ``status``).

It runs in the CLI's own process, never on the daemon's event loop, so plain blocking
``urllib`` is the right tool. URL and token come from the same settings the daemon uses:
``api.host``/``api.port`` and ``EXECD_API_TOKEN`` or the token file beside the journal.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson

from app.config import Settings, api_token_path, resolve_api_token

__all__ = ["ApiAnswer", "ControlClient", "DaemonUnreachable"]


class DaemonUnreachable(Exception):
    """Nothing answers at the control API's address."""


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    status: int
    body: Any
    headers: dict[str, str]


class ControlClient:
    def __init__(self, base_url: str, token: str | None, *, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    @classmethod
    def from_settings(cls, settings: Settings) -> ControlClient:
        host = settings.api.host
        if host in {"0.0.0.0", "::"}:               # a wildcard bind is reached on loopback
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return cls(f"http://{host}:{settings.api.port}",
                   resolve_api_token(settings, create=False))

    @staticmethod
    def token_hint(settings: Settings) -> str:
        return f"set EXECD_API_TOKEN or check {api_token_path(settings)}"

    def get(self, path: str) -> ApiAnswer:
        return self._call("GET", path, None)

    def positions(self, symbols: list[str]) -> list[Any]:
        """``/v1/positions/{symbol}`` of each symbol; symbols whose lookup fails are left out."""
        answers = (self.get(f"/v1/positions/{symbol}") for symbol in symbols)
        return [answer.body for answer in answers if answer.status == 200]

    def post(self, path: str, body: object) -> ApiAnswer:
        return self._call("POST", path, orjson.dumps(body))

    def delete(self, path: str) -> ApiAnswer:
        return self._call("DELETE", path, None)

    def _call(self, method: str, path: str, data: bytes | None) -> ApiAnswer:
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return ApiAnswer(response.status, _decode(response.read()),
                                 dict(response.headers.items()))
        except urllib.error.HTTPError as error:
            return ApiAnswer(error.code, _decode(error.read()), dict(error.headers.items()))
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            raise DaemonUnreachable(f"no execd control API at {self.base_url} ({reason}); "
                                    "is the daemon running? (execd run / make run)") from None


def _decode(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"error": "not_json", "detail": raw[:200].decode("utf-8", "replace")}
