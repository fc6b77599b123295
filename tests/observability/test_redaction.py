"""Secrets never reach the audit file or the console: tested through the real pipeline."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.clock import FakeClock
from app.observability.audit import AuditEvent
from app.observability.logging import configure_logging
from app.observability.redact import MASK, Redactor, _mask_match

API_KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
API_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
TOKEN = "f0c2a3e4-api-token-5b6d"


def _emit_everything(tmp_path: Path, clock: FakeClock, stream: io.StringIO) -> bytes:
    """Emit events carrying every kind of secret through the real pipeline; the file's bytes."""
    secrets = (API_KEY, API_SECRET, TOKEN)
    handle = configure_logging(
        tmp_path, "INFO", True, clock, secrets=secrets, console_stream=stream
    )
    log = handle.logger
    log.info(
        AuditEvent.API_ERROR,
        url=f"https://fapi.binance.com/fapi/v1/order?symbol=BTCUSDT&timestamp=1&signature=abc123{API_SECRET[:8]}",
        api_key=API_KEY,
        api_secret=API_SECRET,
        request={"headers": {"X-MBX-APIKEY": API_KEY, "Authorization": f"Bearer {TOKEN}"}},
        attempts=[{"listenKey": "lk-9f8e7d6c"}, {"detail": f"key was {API_KEY}"}],
        message=f"POST body: quantity=1&signature=deadbeef&apiKey={API_KEY}",
    )
    try:
        raise RuntimeError(f"HTTP 401 for key {API_KEY} secret {API_SECRET} signature=cafe01")
    except RuntimeError:
        log.exception(AuditEvent.API_ERROR, code=-2015)
    log.info(AuditEvent.ALERT, headers_dump=f"<CIMultiDict('X-MBX-APIKEY': '{API_KEY}')>")
    handle.close()
    return handle.current_file().read_bytes()


def test_no_secret_reaches_the_file(tmp_path: Path, clock: FakeClock) -> None:
    """Key, secret, token, signatures, headers and exception text are all masked on disk."""
    data = _emit_everything(tmp_path, clock, io.StringIO())
    for leaked in (API_KEY, API_SECRET, TOKEN, "abc123", "deadbeef", "cafe01", "lk-9f8e7d6c"):
        assert leaked.encode() not in data
    assert data.count(MASK.encode()) >= 10


def test_no_secret_reaches_the_console(tmp_path: Path, clock: FakeClock) -> None:
    """The pretty console copy is rendered from the redacted event."""
    stream = io.StringIO()
    _emit_everything(tmp_path, clock, stream)
    assert not any(s in stream.getvalue() for s in (API_KEY, API_SECRET, TOKEN, "abc123"))


def test_redaction_keeps_the_useful_parts(tmp_path: Path, clock: FakeClock) -> None:
    """Only secret values are masked: the rest of the URL and the error code survive."""
    data = _emit_everything(tmp_path, clock, io.StringIO())
    assert b"symbol=BTCUSDT&timestamp=1&signature=***" in data
    assert b'"code":-2015' in data


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=1&signature=0f9e&b=2", "a=1&signature=***&b=2"),
        ("Authorization: Bearer abc.def", "Authorization: ***"),
        ("{'X-MBX-APIKEY': 'k-123'}", "{'X-MBX-APIKEY': '***'}"),
        ("token=xyz listenKey=lk1", "token=*** listenKey=***"),
        ("?access_token=a1&timestamp=5", "?access_token=***&timestamp=5"),
        ("sent with bearer QWERTY123", "sent with bearer ***"),
        ("nothing to hide here: qty=0.001", "nothing to hide here: qty=0.001"),
    ],
)
def test_redact_text_table(text: str, expected: str) -> None:
    """Secret-bearing patterns in free text are masked; ordinary text is left alone."""
    assert Redactor().redact_text(text) == expected


def test_registered_literals_are_masked_case_insensitively() -> None:
    """A registered secret is masked wherever it appears, in any letter case."""
    redactor = Redactor([API_SECRET])
    assert redactor.redact_text(f"x {API_SECRET.lower()} y") == f"x {MASK} y"


def test_secret_named_keys_are_masked_recursively() -> None:
    """Keys naming secrets are masked at any depth and in any spelling."""
    event = {"outer": [{"Api-Key": "k", "inner": {"client_token": "t", "symbol": "ETHUSDT"}}]}
    assert Redactor().redact_mapping(event) == {
        "outer": [{"Api-Key": MASK, "inner": {"client_token": MASK, "symbol": "ETHUSDT"}}]
    }


def test_other_values_become_json_strings() -> None:
    """Decimals, paths and exceptions become strings, scanned like any other text."""
    redactor = Redactor([API_KEY])
    assert redactor.redact(
        [Decimal("0.001"), Path("/tmp/x"), ValueError(f"bad {API_KEY}")]
    ) == ["0.001", "/tmp/x", f"bad {MASK}"]


@given(st.text(alphabet=st.sampled_from(list("aBc=:& \"'xyzSIGNATUREsignaturebearerBEARERtoken"
                                             "Authorization-_0123456789LITERALsecret")),
               max_size=80))
@settings(max_examples=500, deadline=None)
def test_the_fast_path_never_skips_a_match(text: str) -> None:
    """Texts the pre-check lets through unscanned are exactly those the regex leaves alone."""
    redactor = Redactor(["literal-secret", "LITERALsecret"])
    assert redactor.redact_text(text) == redactor._pattern.sub(_mask_match, text)
