"""The domain vocabulary: enums, SignalError, Signal shapes (public JSON and journal record),
Intent state changes, the shared text forms. Parsing a client's JSON is tested in
tests/intake/test_validate.py."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from app.domain import (
    Intent,
    IntentState,
    Leg,
    OrderType,
    Side,
    Signal,
    SignalError,
    SignalState,
    SignalType,
    format_timestamp,
)

NOW = datetime(2026, 11, 23, 19, 0, 0, tzinfo=UTC).timestamp()


def make_signal(**changes: Any) -> Signal:
    """A LONG_ENTRY of 0.01 BTCUSDT received at NOW with a 30 s expiry; `changes` override."""
    fields: dict[str, Any] = dict(
        id="generated-1", symbol="BTCUSDT", type=SignalType.LONG_ENTRY, quantity=Decimal("0.01"),
        take_profit=None, stop_loss=None, leverage=None, margin_type=None, expires_at=NOW + 30,
        source=None, received_at=NOW)
    return Signal(**{**fields, **changes})


# --- enums ---

@pytest.mark.parametrize(("kind", "entry", "side", "sign"), [
    (SignalType.LONG_ENTRY, True, Side.BUY, 1),
    (SignalType.SHORT_ENTRY, True, Side.SELL, -1),
    (SignalType.CLOSE_LONG, False, Side.SELL, 1),
    (SignalType.CLOSE_SHORT, False, Side.BUY, -1),
])
def test_signal_type_properties(kind: SignalType, entry: bool, side: Side, sign: int) -> None:
    """Each signal type knows if it enters, which side it trades and which position it touches."""
    assert (kind.is_entry, kind.order_side, kind.position_sign) == (entry, side, sign)


def test_leg_values_are_the_client_id_suffixes() -> None:
    """Legs are the one-letter codes of SPEC §2."""
    assert [leg.value for leg in Leg] == ["E", "S", "T", "C"]


def test_signal_state_terminality() -> None:
    """Only ACCEPTED and RUNNING signals still have work to do (SPEC §5.7)."""
    assert {s for s in SignalState if not s.is_terminal} == {
        SignalState.ACCEPTED, SignalState.RUNNING}


def test_intent_state_terminal_and_live() -> None:
    """FILLED/REJECTED/CANCELLED/EXPIRED are final; only PLACED is live on the exchange."""
    assert {s for s in IntentState if s.is_terminal} == {
        IntentState.FILLED, IntentState.REJECTED, IntentState.CANCELLED, IntentState.EXPIRED}
    assert {s for s in IntentState if s.is_live} == {IntentState.PLACED}


# --- SignalError ---

def test_signal_error_body_is_the_spec_shape() -> None:
    """The error body is exactly the SPEC §4.1 example shape."""
    error = SignalError("stop_loss", "must be below take_profit 1 for LONG_ENTRY")
    assert error.body() == {"error": "invalid_signal", "field": "stop_loss",
                            "detail": "must be below take_profit 1 for LONG_ENTRY"}


# --- expiry ---

def test_is_expired_boundary() -> None:
    """A signal is live before expires_at and expired from that instant on."""
    signal = make_signal(expires_at=NOW + 10)
    assert not signal.is_expired(NOW + 9.999)
    assert signal.is_expired(NOW + 10)
    assert signal.is_expired(NOW + 11)


# --- shapes: json and record ---

def test_to_json_public_shape() -> None:
    """to_json omits None fields, writes decimals as strings and times as ISO with ms."""
    signal = make_signal(id="a", stop_loss=Decimal("0.0000001"), expires_at=NOW + 0.5 + 1.2346,
                         received_at=NOW + 0.5)
    assert signal.to_json() == {
        "id": "a", "symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.01",
        "stop_loss": "0.0000001", "expires_at": "2026-11-23T19:00:01.735Z",
        "received_at": "2026-11-23T19:00:00.500Z"}


def test_record_round_trip_keeps_every_field() -> None:
    """to_record/from_record restores the signal exactly, sub-millisecond times included."""
    signal = make_signal(take_profit=Decimal("70000.123"), leverage=3, source="x",
                         expires_at=NOW + 0.000321 + 0.0001234, received_at=NOW + 0.000321)
    assert Signal.from_record(signal.to_record()) == signal


def test_from_record_does_not_rerun_expiry_rules() -> None:
    """A journaled signal that expired long ago still loads."""
    record = make_signal().to_record()
    assert Signal.from_record(record).is_expired(NOW + 10**6)


@pytest.mark.parametrize(("key", "value"), [
    ("type", "BUY"), ("quantity", "abc"), ("quantity", 1.5), ("leverage", "5"),
    ("expires_at", "soon"), ("id", None), ("margin_type", "X"),
])
def test_from_record_refuses_a_corrupt_record(key: str, value: object) -> None:
    """A malformed record raises ValueError rather than building a bad signal."""
    record = {**make_signal().to_record(), key: value}
    with pytest.raises(ValueError, match=f"signal record: {key}"):
        Signal.from_record(record)


def test_signal_is_frozen() -> None:
    """Signals are immutable messages."""
    signal = make_signal()
    with pytest.raises(FrozenInstanceError):
        signal.symbol = "ETHUSDT"  # type: ignore[misc]


# --- Intent ---

def make_intent(**changes: Any) -> Intent:
    fields: dict[str, Any] = dict(
        signal_id="s1", leg=Leg.STOP_LOSS, client_id="xdABCS", symbol="BTCUSDT",
        side=Side.SELL, order_type=OrderType.STOP_MARKET, quantity=None,
        price=Decimal("60000"), reduce_only=True, state=IntentState.PENDING)
    return Intent(**{**fields, **changes})


def test_with_state_returns_a_new_object() -> None:
    """A new state is a new object; the old one is unchanged."""
    intent = make_intent()
    sent = intent.with_state(IntentState.SENDING, now=NOW)
    assert (intent.state, intent.updated_at) == (IntentState.PENDING, 0.0)
    assert (sent.state, sent.updated_at) == (IntentState.SENDING, NOW)


def test_with_state_records_exchange_answer() -> None:
    """exchange_id and error details given to with_state are stored."""
    placed = make_intent().with_state(IntentState.PLACED, exchange_id="123", now=NOW)
    rejected = placed.with_state(IntentState.REJECTED, error_code=-2021,
                                 error_message="Order would immediately trigger.")
    assert (rejected.exchange_id, rejected.error_code, rejected.error_message) == (
        "123", -2021, "Order would immediately trigger.")


def test_with_state_keeps_unspecified_fields() -> None:
    """Fields not passed, including updated_at without now, keep their values."""
    placed = make_intent().with_state(IntentState.PLACED, exchange_id="9", now=NOW)
    cancelled = placed.with_state(IntentState.CANCELLED)
    assert (cancelled.exchange_id, cancelled.updated_at) == ("9", NOW)


def test_with_state_none_clears_a_field() -> None:
    """Passing None explicitly clears a field (e.g. an error before a resend)."""
    failed = make_intent(error_code=-1001, error_message="disconnected")
    retry = failed.with_state(IntentState.PENDING, error_code=None, error_message=None)
    assert (retry.error_code, retry.error_message) == (None, None)


@pytest.mark.parametrize(("order_type", "algo"), [
    (OrderType.STOP_MARKET, True), (OrderType.TAKE_PROFIT_MARKET, True),
    (OrderType.MARKET, False), (OrderType.LIMIT, False),
])
def test_intent_is_algo(order_type: OrderType, algo: bool) -> None:
    """Only conditional order types go through the algo endpoints."""
    assert make_intent(order_type=order_type).is_algo is algo


# --- text forms ---

@pytest.mark.parametrize(("epoch", "text"), [
    (1_795_460_701.123, "2026-11-23T19:05:01.123Z"),
    (1_795_460_701.9996, "2026-11-23T19:05:02.000Z"),
    (-1.5, "1969-12-31T23:59:58.500Z"),
])
def test_format_timestamp_is_utc_iso_rounded_to_the_millisecond(epoch: float, text: str) -> None:
    """Epoch seconds print as UTC ISO-8601 with three fraction digits, rounded to nearest ms."""
    assert format_timestamp(epoch) == text


@pytest.mark.parametrize("epoch", [math.nan, math.inf, -math.inf])
def test_format_timestamp_refuses_a_non_finite_time(epoch: float) -> None:
    """NaN and infinity are not times: ValueError."""
    with pytest.raises(ValueError, match="not a finite time"):
        format_timestamp(epoch)
