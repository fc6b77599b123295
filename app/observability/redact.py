"""Secret redaction for audit events: a structlog processor that runs before any renderer.

It masks, recursively through dicts, lists and tuples:

- the value of every key that names a secret (``api_key``, ``api_secret``, ``secret``,
  ``signature``, ``token``, ``authorization``, ``listenKey``, ``X-MBX-APIKEY``, ...), whatever
  its case or ``-``/``_`` spelling, and of keys ending in ``_secret``, ``_token``, ``_api_key``
  or ``_password``;
- inside every string (messages, URLs, exception text): ``signature=...``, ``api_key=...``-style
  query parameters, ``Authorization``/``X-MBX-APIKEY`` header values and ``Bearer`` tokens;
- every literal secret registered at construction (the configured key, secret and API token),
  wherever it appears, case-insensitively.

Values that are not JSON-native (exceptions, Decimals, paths, arbitrary objects) are turned into
strings first and scanned too, so the renderer never stringifies an unredacted object.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from enum import Enum
from typing import Any

from pydantic import SecretStr
from structlog.typing import EventDict, WrappedLogger

__all__ = ["MASK", "Redactor"]

MASK = "***"

# Registered literals shorter than this are ignored: masking every "abc" in the log would make it
# unreadable, and real keys are 64 characters. A tiny test secret is still caught by key name.
_MIN_LITERAL = 6
_MAX_DEPTH = 32

_SECRET_KEYS = frozenset(
    {
        "api_key",
        "apikey",
        "api_secret",
        "apisecret",
        "secret",
        "signature",
        "token",
        "authorization",
        "listenkey",
        "listen_key",
        "x_mbx_apikey",
        "password",
        "private_key",
    }
)
_SECRET_SUFFIXES = ("_secret", "_token", "_api_key", "_password")

_PATTERNS = (
    # query/form parameters: ...&signature=ab12..., apiKey=..., listenKey=..., access_token=...
    r"(?P<kv>\b\w*?(?:signature|api_?key|api_?secret|secret|token|listen_?key|password)=)"
    r"[^&\s\"',;]+",
    # header dumps: 'X-MBX-APIKEY': 'k', Authorization: Bearer t, authorization=...
    r"(?P<hdr>\b(?:authorization|x-mbx-apikey)[\"']?\s*[:=]\s*[\"']?)(?:bearer\s+)?"
    r"[^\s\"',;)}>]+",
    r"(?P<bearer>\bbearer\s+)[A-Za-z0-9._~+/=-]+",
)


# Every pattern needs one of these (or a registered literal) to match, and at least this many
# characters: texts without them are returned as they are, without running the regex (the
# common case, and most of the redactor's cost otherwise).
_TRIGGERS = ("=", ":")          # exactly two: `redact_text` tests them one by one
_MIN_MATCH = _MIN_LITERAL
# Fields execd itself writes before the redactor runs: never secret, never scanned.
_OWN_FIELDS = frozenset({"ts", "level"})


def _is_secret_key(key: object) -> bool:
    known = _SECRET_BY_KEY.get(key)
    if known is None:
        name = (key if isinstance(key, str) else str(key)).lower().replace("-", "_")
        known = name in _SECRET_KEYS or name.endswith(_SECRET_SUFFIXES)
        if len(_SECRET_BY_KEY) < 4096 and isinstance(key, str):
            _SECRET_BY_KEY[key] = known
    return known


#: `_is_secret_key`'s answers for the key names seen so far (a plain dict, the one cache:
#: cheaper on the hot path than an `lru_cache` call; bounded, keys beyond the bound are
#: still answered).
_SECRET_BY_KEY: dict[object, bool] = {}


class Redactor:
    """A structlog processor masking secrets; `secrets` are literal values to mask anywhere."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        literals = sorted({s for s in secrets if len(s) >= _MIN_LITERAL}, key=len, reverse=True)
        patterns = list(_PATTERNS)
        if literals:
            patterns.append("(?P<lit>" + "|".join(re.escape(s) for s in literals) + ")")
        self._pattern = re.compile("|".join(patterns), re.IGNORECASE)
        self._literal_count = len(literals)
        # What a text without "=" or ":" needs to hold for a pattern to match: one C search.
        self._without_triggers = re.compile(
            "|".join(["bearer", *(re.escape(s) for s in literals)]), re.IGNORECASE)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        # `redact_mapping` spelt out for the hot path: every audit event comes through here.
        redacted: EventDict = {}
        for key, value in event_dict.items():
            if key in _OWN_FIELDS or value is None:
                redacted[key] = value
            elif _is_secret_key(key):
                redacted[key] = MASK
            elif type(value) is str:
                redacted[key] = self.redact_text(value)
            else:
                redacted[key] = self.redact(value)
        return redacted

    def redact_mapping(self, mapping: Mapping[Any, Any], depth: int = 0) -> dict[Any, Any]:
        """A copy of `mapping` with secret-named keys masked and every value redacted."""
        return {
            key: MASK if value is not None and _is_secret_key(key) else self.redact(value, depth)
            for key, value in mapping.items()
        }

    def redact(self, value: object, depth: int = 0) -> Any:
        """A secret-free copy of `value` as JSON data (str, number, bool, None, list, dict)."""
        if isinstance(value, str):
            return self.redact_text(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if depth >= _MAX_DEPTH:
            return "<nested too deep>"
        if isinstance(value, Mapping):
            return self.redact_mapping(value, depth + 1)
        if isinstance(value, list | tuple | set | frozenset):
            return [self.redact(item, depth + 1) for item in value]
        if isinstance(value, SecretStr):
            return MASK
        if isinstance(value, datetime | date):
            return value.isoformat()
        if isinstance(value, Enum):
            return self.redact(value.value, depth + 1)
        if isinstance(value, bytes | bytearray):
            return self.redact_text(bytes(value).decode("utf-8", "replace"))
        return self.redact_text(str(value))

    def redact_text(self, text: str) -> str:
        """`text` with secret parameters, header values, bearer tokens and literals masked."""
        if len(text) < _MIN_MATCH:
            return text
        if (_TRIGGERS[0] not in text and _TRIGGERS[1] not in text
                and self._without_triggers.search(text) is None):
            return text
        return self._pattern.sub(_mask_match, text)

    def __repr__(self) -> str:
        return f"Redactor(literals={self._literal_count})"


def _mask_match(match: re.Match[str]) -> str:
    group = match.lastgroup
    prefix = match.group(group) if group in ("kv", "hdr", "bearer") else ""
    return prefix + MASK
