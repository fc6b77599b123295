"""JSON → Signal (SPEC §4.1): every rule the intake checks before anything is journaled."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain import MarginType, Signal, SignalError, SignalType
from app.intake.validate import parse_signal

NOW = datetime(2026, 11, 23, 19, 0, 0, tzinfo=UTC).timestamp()
TTL = 30.0
ENTRY: dict[str, Any] = {"symbol": "BTCUSDT", "type": "LONG_ENTRY", "quantity": "0.01"}
SHORT: dict[str, Any] = {"symbol": "BTCUSDT", "type": "SHORT_ENTRY", "quantity": "0.01"}
CLOSE: dict[str, Any] = {"symbol": "BTCUSDT", "type": "CLOSE_LONG"}


def parse(body: object, now: float = NOW) -> Signal:
    return parse_signal(body, now=now, default_ttl_s=TTL, new_id=lambda: "generated-1")


def rejection(body: object) -> SignalError:
    with pytest.raises(SignalError) as caught:
        parse(body)
    return caught.value


# --- SignalError ---

def test_signal_error_message_names_field_and_rule() -> None:
    """str(error) carries both the field and the rule, and it is a ValueError."""
    error = rejection({**ENTRY, "leverage": 200})
    assert isinstance(error, ValueError)
    assert str(error) == "leverage: must be from 1 to 125"


# --- malformed bodies ---

ISO_NOW = "2026-11-23T19:00:00Z"
MALFORMED: list[tuple[str, object, str]] = [
    ("list body", [], "body"),
    ("string body", "LONG_ENTRY", "body"),
    ("null body", None, "body"),
    ("number body", 1, "body"),
    ("unknown field", {**ENTRY, "price": "1"}, "price"),
    ("received_at is not a client field", {**ENTRY, "received_at": ISO_NOW}, "received_at"),
    ("first unknown alphabetically", {**ENTRY, "zz": 1, "aa": 1}, "aa"),
    ("id not a string", {**ENTRY, "id": 123}, "id"),
    ("id empty", {**ENTRY, "id": ""}, "id"),
    ("id too long", {**ENTRY, "id": "a" * 65}, "id"),
    ("id with space", {**ENTRY, "id": "a b"}, "id"),
    ("id with slash", {**ENTRY, "id": "a/b"}, "id"),
    ("symbol missing", {"type": "LONG_ENTRY", "quantity": "1"}, "symbol"),
    ("symbol lower case", {**ENTRY, "symbol": "btcusdt"}, "symbol"),
    ("symbol not a string", {**ENTRY, "symbol": 1}, "symbol"),
    ("symbol too short", {**ENTRY, "symbol": "B"}, "symbol"),
    ("symbol with dash", {**ENTRY, "symbol": "BTC-USDT"}, "symbol"),
    ("type missing", {"symbol": "BTCUSDT", "quantity": "1"}, "type"),
    ("type unknown", {**ENTRY, "type": "LONG"}, "type"),
    ("type lower case", {**ENTRY, "type": "long_entry"}, "type"),
    ("type not a string", {**ENTRY, "type": 1}, "type"),
    ("quantity missing on entry", {"symbol": "BTCUSDT", "type": "SHORT_ENTRY"}, "quantity"),
    ("quantity null on entry", {**ENTRY, "quantity": None}, "quantity"),
    ("quantity JSON float", {**ENTRY, "quantity": 0.01}, "quantity"),
    ("quantity JSON int", {**ENTRY, "quantity": 1}, "quantity"),
    ("quantity bool", {**ENTRY, "quantity": True}, "quantity"),
    ("quantity NaN", {**ENTRY, "quantity": "NaN"}, "quantity"),
    ("quantity Infinity", {**ENTRY, "quantity": "Infinity"}, "quantity"),
    ("quantity exponent", {**ENTRY, "quantity": "1e-3"}, "quantity"),
    ("quantity negative", {**ENTRY, "quantity": "-1"}, "quantity"),
    ("quantity explicit plus", {**ENTRY, "quantity": "+1"}, "quantity"),
    ("quantity zero", {**ENTRY, "quantity": "0"}, "quantity"),
    ("quantity zero with decimals", {**ENTRY, "quantity": "0.000"}, "quantity"),
    ("quantity no leading digit", {**ENTRY, "quantity": ".5"}, "quantity"),
    ("quantity trailing point", {**ENTRY, "quantity": "1."}, "quantity"),
    ("quantity leading space", {**ENTRY, "quantity": " 1"}, "quantity"),
    ("quantity trailing newline", {**ENTRY, "quantity": "1\n"}, "quantity"),
    ("quantity thousands comma", {**ENTRY, "quantity": "1,000"}, "quantity"),
    ("quantity non-ASCII digit", {**ENTRY, "quantity": "\u0661"}, "quantity"),
    ("quantity 33 integer digits", {**ENTRY, "quantity": "1" + "0" * 32}, "quantity"),
    ("quantity 19 fraction digits", {**ENTRY, "quantity": "0." + "0" * 18 + "1"}, "quantity"),
    ("quantity zero on close", {**CLOSE, "quantity": "0"}, "quantity"),
    ("quantity float on close", {**CLOSE, "quantity": 1.5}, "quantity"),
    ("take_profit on close", {**CLOSE, "take_profit": "70000"}, "take_profit"),
    ("stop_loss on close", {**CLOSE, "stop_loss": "60000"}, "stop_loss"),
    ("take_profit not decimal", {**ENTRY, "take_profit": "abc"}, "take_profit"),
    ("take_profit zero", {**ENTRY, "take_profit": "0"}, "take_profit"),
    ("stop_loss JSON float", {**ENTRY, "stop_loss": 100.0}, "stop_loss"),
    ("long stop above take", {**ENTRY, "take_profit": "60000", "stop_loss": "70000"},
     "stop_loss"),
    ("long stop equals take", {**ENTRY, "take_profit": "60000", "stop_loss": "60000.0"},
     "stop_loss"),
    ("short stop below take", {**SHORT, "take_profit": "70000", "stop_loss": "60000"},
     "stop_loss"),
    ("leverage string", {**ENTRY, "leverage": "10"}, "leverage"),
    ("leverage float", {**ENTRY, "leverage": 10.0}, "leverage"),
    ("leverage bool", {**ENTRY, "leverage": True}, "leverage"),
    ("leverage zero", {**ENTRY, "leverage": 0}, "leverage"),
    ("leverage 126", {**ENTRY, "leverage": 126}, "leverage"),
    ("margin_type lower case", {**ENTRY, "margin_type": "isolated"}, "margin_type"),
    ("margin_type CROSS", {**ENTRY, "margin_type": "CROSS"}, "margin_type"),
    ("margin_type not a string", {**ENTRY, "margin_type": 1}, "margin_type"),
    ("expires_at and ttl_s", {**ENTRY, "expires_at": "2026-11-23T19:05:00Z", "ttl_s": 5},
     "ttl_s"),
    ("ttl_s string", {**ENTRY, "ttl_s": "30"}, "ttl_s"),
    ("ttl_s bool", {**ENTRY, "ttl_s": True}, "ttl_s"),
    ("ttl_s zero", {**ENTRY, "ttl_s": 0}, "ttl_s"),
    ("ttl_s negative", {**ENTRY, "ttl_s": -1}, "ttl_s"),
    ("ttl_s over a day", {**ENTRY, "ttl_s": 86_400.5}, "ttl_s"),
    ("ttl_s NaN", {**ENTRY, "ttl_s": float("nan")}, "ttl_s"),
    ("ttl_s infinite", {**ENTRY, "ttl_s": float("inf")}, "ttl_s"),
    ("expires_at epoch number", {**ENTRY, "expires_at": NOW + 10}, "expires_at"),
    ("expires_at naive", {**ENTRY, "expires_at": "2026-11-23T19:05:01"}, "expires_at"),
    ("expires_at not UTC", {**ENTRY, "expires_at": "2026-11-23T21:05:01+02:00"}, "expires_at"),
    ("expires_at date only", {**ENTRY, "expires_at": "2026-11-24"}, "expires_at"),
    ("expires_at month 13", {**ENTRY, "expires_at": "2026-13-23T19:05:01Z"}, "expires_at"),
    ("expires_at garbage", {**ENTRY, "expires_at": "tomorrow"}, "expires_at"),
    ("expires_at in the past", {**ENTRY, "expires_at": "2026-11-23T18:59:59Z"}, "expires_at"),
    ("expires_at equal to now", {**ENTRY, "expires_at": ISO_NOW}, "expires_at"),
    ("expires_at over a day ahead", {**ENTRY, "expires_at": "2026-11-24T19:00:00.001Z"},
     "expires_at"),
    ("source empty", {**ENTRY, "source": ""}, "source"),
    ("source too long", {**ENTRY, "source": "s" * 65}, "source"),
    ("source with newline", {**ENTRY, "source": "a\nb"}, "source"),
    ("source not a string", {**ENTRY, "source": 5}, "source"),
]


@pytest.mark.parametrize(("body", "field"), [(b, f) for _, b, f in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_malformed_body_names_the_field(body: object, field: str) -> None:
    """Each malformed body is rejected with the offending field and a stated rule."""
    error = rejection(body)
    assert error.field == field
    assert error.detail


def test_malformed_table_is_large_enough() -> None:
    """The table above covers at least 40 distinct malformed bodies."""
    assert len(MALFORMED) >= 40


def test_first_problem_wins_in_a_stable_order() -> None:
    """With several problems, the earliest field in schema order is reported."""
    error = rejection({"symbol": "bad", "type": "NOPE", "quantity": 1.0, "leverage": 0})
    assert error.field == "symbol"


def test_quantity_number_detail_says_string_not_number() -> None:
    """A JSON number quantity is refused as a type error that says why."""
    detail = rejection({**ENTRY, "quantity": 0.5}).detail
    assert detail.startswith("must be a string")
    assert "not a JSON number" in detail


def test_quantity_shape_detail_states_the_limits() -> None:
    """A malformed decimal string is refused with the plain-decimal rule and its limits."""
    detail = rejection({**ENTRY, "quantity": "1e-3"}).detail
    assert "32 before and 18 after" in detail
    assert "no sign or exponent" in detail


def test_type_detail_lists_the_allowed_types() -> None:
    """An unknown type is answered with the four allowed ones."""
    detail = rejection({**ENTRY, "type": "BUY"}).detail
    assert all(kind.value in detail for kind in SignalType)


def test_protective_price_on_close_detail() -> None:
    """take_profit/stop_loss on a close say they belong to entries."""
    assert rejection({**CLOSE, "stop_loss": "1"}).detail == "only allowed on entries"


# --- valid signals ---

def test_long_entry_with_everything() -> None:
    """A full LONG_ENTRY body becomes a Signal with exact decimals and the given expiry."""
    signal = parse({"id": "strat-1:42", "symbol": "BTCUSDT", "type": "LONG_ENTRY",
                    "quantity": "0.010", "take_profit": "70000.5", "stop_loss": "60000",
                    "leverage": 10, "margin_type": "ISOLATED",
                    "expires_at": "2026-11-23T19:05:01Z", "source": "momentum v2"})
    assert signal == Signal(
        id="strat-1:42", symbol="BTCUSDT", type=SignalType.LONG_ENTRY,
        quantity=Decimal("0.010"), take_profit=Decimal("70000.5"), stop_loss=Decimal("60000"),
        leverage=10, margin_type=MarginType.ISOLATED, expires_at=NOW + 301, source="momentum v2",
        received_at=NOW)


def test_short_entry_with_bracket() -> None:
    """A SHORT_ENTRY takes its stop-loss above its take-profit."""
    signal = parse({**SHORT, "take_profit": "60000", "stop_loss": "70000",
                    "margin_type": "CROSSED"})
    assert (signal.type, signal.stop_loss, signal.take_profit, signal.margin_type) == (
        SignalType.SHORT_ENTRY, Decimal("70000"), Decimal("60000"), MarginType.CROSSED)


def test_close_long_without_quantity_means_whole_position() -> None:
    """A close may omit quantity: None stands for the whole position."""
    signal = parse(CLOSE)
    assert (signal.type, signal.quantity) == (SignalType.CLOSE_LONG, None)


def test_close_short_with_quantity() -> None:
    """A close may give a quantity."""
    signal = parse({"symbol": "ETHUSDT", "type": "CLOSE_SHORT", "quantity": "1.5"})
    assert (signal.type, signal.quantity) == (SignalType.CLOSE_SHORT, Decimal("1.5"))


def test_entry_with_only_one_protective_price() -> None:
    """A single stop-loss (no take-profit) needs no ordering check."""
    assert parse({**ENTRY, "stop_loss": "99999"}).stop_loss == Decimal("99999")


def test_extreme_decimal_precision_is_kept() -> None:
    """32 integer and 18 fraction digits are accepted and kept exactly."""
    text = "9" * 32 + "." + "0" * 17 + "1"
    assert parse({**ENTRY, "quantity": text}).quantity == Decimal(text)


def test_null_counts_as_absent() -> None:
    """An optional field given as JSON null is the same as leaving it out."""
    assert parse({**CLOSE, "quantity": None, "leverage": None, "source": None}) == parse(CLOSE)


# --- defaults ---

def test_missing_id_is_generated() -> None:
    """Without an id, new_id() supplies one."""
    assert parse(ENTRY).id == "generated-1"


def test_given_id_does_not_call_new_id() -> None:
    """With an id, the generator is never called."""
    def fail() -> str:
        raise AssertionError("new_id called")
    signal = parse_signal({**ENTRY, "id": "abc"}, now=NOW, default_ttl_s=TTL, new_id=fail)
    assert signal.id == "abc"


def test_invalid_body_does_not_consume_an_id() -> None:
    """new_id() is only called for a body that passes validation."""
    calls: list[int] = []

    def count() -> str:
        calls.append(1)
        return "x"
    with pytest.raises(SignalError):
        parse_signal({**ENTRY, "leverage": 0}, now=NOW, default_ttl_s=TTL, new_id=count)
    assert calls == []


def test_default_ttl_sets_expiry_and_received_at() -> None:
    """Without expires_at or ttl_s the signal expires default_ttl_s after now."""
    signal = parse(ENTRY)
    assert (signal.expires_at, signal.received_at) == (NOW + TTL, NOW)


def test_optional_fields_default_to_none() -> None:
    """Leverage, margin type, source and protective prices are None when absent."""
    signal = parse(ENTRY)
    assert (signal.take_profit, signal.stop_loss, signal.leverage, signal.margin_type,
            signal.source) == (None, None, None, None, None)


# --- expiry ---

@pytest.mark.parametrize(("ttl", "expected"), [(0.5, NOW + 0.5), (30, NOW + 30),
                                               (86_400, NOW + 86_400)])
def test_ttl_s_sets_expiry(ttl: float, expected: float) -> None:
    """ttl_s, int or float, up to a day, counts from now."""
    assert parse({**ENTRY, "ttl_s": ttl}).expires_at == expected


@pytest.mark.parametrize(("text", "offset"), [
    ("2026-11-23T19:05:01Z", 301.0),
    ("2026-11-23T19:05:01+00:00", 301.0),
    ("2026-11-23T19:05:01-00:00", 301.0),
    ("2026-11-23T19:00:00.250Z", 0.25),
    ("2026-11-23T19:00:00.000001Z", 0.000001),
    ("2026-11-24T19:00:00Z", 86_400.0),
])
def test_expires_at_forms(text: str, offset: float) -> None:
    """expires_at accepts Z, ±00:00 and fractional seconds, up to exactly a day ahead."""
    assert parse({**ENTRY, "expires_at": text}).expires_at == pytest.approx(NOW + offset,
                                                                           abs=1e-6)


def test_expires_at_is_checked_against_injected_now() -> None:
    """The same body is valid before its expiry and 'already expired' after it."""
    body = {**ENTRY, "expires_at": "2026-11-23T19:05:01Z"}
    assert parse(body, now=NOW).expires_at == NOW + 301
    with pytest.raises(SignalError) as caught:
        parse(body, now=NOW + 301)
    assert (caught.value.field, caught.value.detail) == ("expires_at", "already expired")


# --- to_json feeds back ---

def test_to_json_feeds_back_into_parse_signal() -> None:
    """to_json without received_at parses back to the same signal (ms-aligned times)."""
    signal = parse({**ENTRY, "id": "a", "take_profit": "70000", "stop_loss": "60000",
                    "leverage": 5, "margin_type": "CROSSED", "source": "s",
                    "expires_at": "2026-11-23T19:00:07.125Z"})
    body = signal.to_json()
    del body["received_at"]
    assert parse(body) == signal


def test_to_json_with_received_at_is_refused_by_parse_signal() -> None:
    """received_at is server-side: a client cannot send it back."""
    assert rejection(parse(ENTRY).to_json()).field == "received_at"


# --- properties ---

FIELDS = ["id", "symbol", "type", "quantity", "take_profit", "stop_loss", "leverage",
          "margin_type", "expires_at", "ttl_s", "source"]
NEAR_VALID = st.sampled_from([
    "BTCUSDT", "LONG_ENTRY", "SHORT_ENTRY", "CLOSE_LONG", "CLOSE_SHORT", "0.01", "1", "0",
    "70000", "ISOLATED", "CROSSED", "2026-11-23T19:05:01Z", "2026-11-23T19:05:01",
    "2026-11-23T19:05:01+05:00", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "1e5", "NaN",
])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | NEAR_VALID,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), children, max_size=6),
    max_leaves=12,
)
BODIES = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=len(FIELDS))


@given(JSON | BODIES)
def test_parse_signal_only_ever_raises_signal_error(data: object) -> None:
    """For any JSON-like value, parse_signal gives a Signal or raises SignalError, nothing else."""
    try:
        result: Signal | SignalError = parse(data)
    except SignalError as error:
        result = error
    # field may be "" only when the unknown key itself is "" (the field is the key, verbatim)
    assert isinstance(result, Signal) or (isinstance(result.field, str) and result.detail)


def decimals(max_places: int = 18) -> st.SearchStrategy[str]:
    return st.decimals(min_value=Decimal("1e-18"), max_value=Decimal("1e12"), places=max_places,
                       allow_nan=False, allow_infinity=False).map(lambda d: format(d, "f"))


@st.composite
def valid_bodies(draw: st.DrawFn, whole_ms: bool = False) -> dict[str, object]:
    """Bodies parse_signal accepts at NOW (+ <1 ms); `whole_ms` keeps expiry on a millisecond."""
    kind = draw(st.sampled_from(SignalType))
    body: dict[str, object] = {
        "symbol": draw(st.from_regex(r"[A-Z0-9]{2,32}", fullmatch=True)), "type": kind.value}
    if draw(st.booleans()):
        body["id"] = draw(st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True))
    if kind.is_entry or draw(st.booleans()):
        body["quantity"] = draw(decimals())
    if kind.is_entry:
        low, high = sorted(draw(st.lists(decimals(), min_size=2, max_size=2, unique_by=Decimal)
                                .filter(lambda pair: Decimal(pair[0]) != Decimal(pair[1]))),
                           key=Decimal)
        sl, tp = (low, high) if kind is SignalType.LONG_ENTRY else (high, low)
        if draw(st.booleans()):
            body["stop_loss"] = sl
        if draw(st.booleans()):
            body["take_profit"] = tp
    if draw(st.booleans()):
        body["leverage"] = draw(st.integers(1, 125))
    if draw(st.booleans()):
        body["margin_type"] = draw(st.sampled_from(MarginType)).value
    expiry = draw(st.sampled_from(["ttl", "at", "default"]))
    if expiry == "ttl":
        body["ttl_s"] = draw(st.integers(1, 86_400) if whole_ms else
                             st.floats(min_value=1e-6, max_value=86_400) | st.integers(1, 86_400))
    elif expiry == "at":
        millis = draw(st.integers(2, 86_400_000))
        body["expires_at"] = datetime.fromtimestamp(NOW + millis / 1000, UTC).isoformat()
    if draw(st.booleans()):
        body["source"] = draw(st.text(min_size=1, max_size=64).filter(str.isprintable))
    return body


@given(valid_bodies(), st.floats(min_value=0, max_value=1))
def test_valid_signals_round_trip_through_records(body: dict[str, object], jitter: float) -> None:
    """Any valid signal survives to_record/from_record unchanged."""
    signal = parse(body, now=NOW + jitter / 1000)
    assert Signal.from_record(signal.to_record()) == signal


@given(valid_bodies(whole_ms=True))
def test_valid_signals_round_trip_through_public_json(body: dict[str, object]) -> None:
    """With millisecond-aligned times, to_json minus received_at parses back unchanged."""
    signal = parse(body)
    public = signal.to_json()
    del public["received_at"]
    assert parse(public) == signal
