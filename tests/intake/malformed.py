"""Malformed signal bodies for the fuzz tests (the control API's POST /v1/signals and the
spool): hypothesis strategies that each yield bytes no accept path may take.

Each body is built to be invalid on purpose: a valid signal broken by at least one mutation (a
required field dropped, a field of the wrong type or out of its range, an unknown field, a
bracket on the wrong side, ...), a JSON value that is not an object, or bytes that are not JSON.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import strategies as st

from app.sim.config import DEFAULT_SYMBOLS

MAX_BODY = 65_536

FIELDS = ("id", "symbol", "type", "quantity", "take_profit", "stop_loss", "leverage",
          "margin_type", "expires_at", "ttl_s", "source")
STRING_FIELDS = ("id", "symbol", "type", "quantity", "take_profit", "stop_loss", "margin_type",
                 "expires_at", "source")
TYPES = ("LONG_ENTRY", "SHORT_ENTRY", "CLOSE_LONG", "CLOSE_SHORT")
ENTRIES = TYPES[:2]
LISTED = tuple(spec.symbol for spec in DEFAULT_SYMBOLS)
ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
SYMBOL = re.compile(r"[A-Z0-9]{2,32}")
DECIMAL = re.compile(r"[0-9]{1,32}(?:\.[0-9]{1,18})?")
TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
                       r"(?:Z|[+-][0-9]{2}:[0-9]{2})?")

Body = dict[str, Any]

# ------------------------------------------------------------------ building blocks

# Kept cheap: hypothesis costs tens of µs a draw, and the run draws over 10,000 bodies, so the
# "anything but X" strategies are unions of the other kinds, never filters over everything.
booleans = st.booleans()
huge_ints = st.integers(min_value=-(10**40), max_value=10**40)
floats = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text(max_size=12)
junk = st.recursive(st.none() | booleans | huge_ints | floats | texts,
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=5)
arrays = st.lists(junk, max_size=3)
objects = st.dictionaries(st.text(max_size=6), junk, max_size=3)
not_a_string = booleans | huge_ints | floats | arrays | objects
not_an_int = booleans | floats | texts | arrays | objects
not_a_number = booleans | texts | arrays | objects
not_an_object = st.none() | booleans | huge_ints | floats | texts | arrays


def plain(value: Decimal) -> str:
    return format(value, "f")


def in_thousandths(low: int, high: int) -> st.SearchStrategy[Decimal]:
    return st.integers(min_value=low, max_value=high).map(lambda n: Decimal(n) / 1000)


prices = in_thousandths(10, 100_000_000)     # 0.01 .. 100,000
quantities = in_thousandths(1, 1_000_000)    # 0.001 .. 1,000
ids = st.text(alphabet=string.ascii_letters + string.digits + "._:-", min_size=1, max_size=24)


def bad_decimal_text(text: str) -> bool:
    return DECIMAL.fullmatch(text) is None or Decimal(text) == 0


bad_decimals = (st.text(max_size=40).filter(bad_decimal_text)
                | st.sampled_from(["0", "0.000", "-1", "+1", "1e5", "1E-7", "1.", ".5", " 1",
                                   "1 ", "NaN", "Infinity", "١٢", "0x10", "1_000", "1,5"])
                | st.integers(min_value=33, max_value=60).map(lambda n: "9" * n)
                | st.integers(min_value=19, max_value=40).map(lambda n: "1." + "0" * n))

# ------------------------------------------------------------------ a valid signal

optional_fields = st.fixed_dictionaries({}, optional={
    "id": ids, "leverage": st.integers(min_value=1, max_value=125),
    "margin_type": st.sampled_from(["ISOLATED", "CROSSED"]),
    "ttl_s": st.integers(min_value=1, max_value=86_400)})


@st.composite
def valid_signals(draw: st.DrawFn) -> Body:
    kind = draw(st.sampled_from(TYPES))
    body: Body = {"symbol": draw(st.sampled_from(LISTED)), "type": kind,
                  **draw(optional_fields)}
    if kind in ENTRIES or draw(st.booleans()):
        body["quantity"] = plain(draw(quantities))
    if kind in ENTRIES and draw(st.booleans()):
        low = draw(prices)
        high = low + draw(in_thousandths(10, 10_000_000))
        body["stop_loss"], body["take_profit"] = ((plain(low), plain(high))
                                                  if kind == "LONG_ENTRY"
                                                  else (plain(high), plain(low)))
    return body


# ------------------------------------------------------------------ mutations that break it
# Each takes a valid signal and returns a body that breaks at least one rule of SPEC §4.1.

Mutation = Callable[[st.DrawFn, Body], Body]


def drop_required(draw: st.DrawFn, body: Body) -> Body:
    required = ["symbol", "type"] + (["quantity"] if body.get("type") in ENTRIES else [])
    present = [name for name in required if name in body]
    if present:  # else an earlier mutation dropped symbol and type already
        del body[draw(st.sampled_from(present))]
    return body


def wrong_type(draw: st.DrawFn, body: Body) -> Body:
    name = draw(st.sampled_from((*STRING_FIELDS, "leverage", "ttl_s")))
    kind = {"leverage": not_an_int, "ttl_s": not_a_number}.get(name, not_a_string)
    body[name] = draw(kind)
    body.pop("expires_at" if name == "ttl_s" else "ttl_s", None)  # one expiry rule at a time
    return body


def bad_value(draw: st.DrawFn, body: Body) -> Body:
    name = draw(st.sampled_from(FIELDS))
    body.pop("ttl_s", None)
    if name == "id":
        body[name] = draw(st.text(max_size=80).filter(lambda t: ID.fullmatch(t) is None))
    elif name == "symbol":
        body[name] = draw(st.text(max_size=40).filter(lambda t: t not in LISTED)
                          | st.from_regex(SYMBOL, fullmatch=True).filter(
                              lambda t: t not in LISTED))
    elif name == "type":
        body[name] = draw(st.text(max_size=20).filter(lambda t: t not in TYPES))
    elif name in ("quantity", "take_profit", "stop_loss"):
        body[name] = draw(bad_decimals)
    elif name == "leverage":
        body[name] = draw(st.integers(max_value=0) | st.integers(min_value=126)
                          | st.integers(min_value=10**19, max_value=10**40))
    elif name == "margin_type":
        body[name] = draw(st.text(max_size=20).filter(lambda t: t not in ("ISOLATED",
                                                                          "CROSSED")))
    elif name == "expires_at":
        body[name] = draw(st.text(max_size=40).filter(lambda t: TIMESTAMP.fullmatch(t) is None)
                          | st.sampled_from(["2020-01-01T00:00:00Z", "2999-01-01T00:00:00Z",
                                             "2030-01-01T00:00:00+01:00",
                                             "2030-01-01T00:00:00", "2026-13-01T00:00:00Z",
                                             "2026-02-30T00:00:00Z", "1970-01-01T00:00:00Z"]))
    elif name == "ttl_s":
        body[name] = draw(st.floats(max_value=0, allow_nan=False)
                          | st.floats(min_value=86_400.001, allow_infinity=False)
                          | st.integers(max_value=0) | st.integers(min_value=86_401))
    else:  # source
        body[name] = draw(st.just("") | st.text(min_size=65, max_size=200)
                          | st.text(max_size=30).map(lambda t: t + "\n")
                          | st.sampled_from(["\x00", "tab\tbed", "\u2028"]))
    return body


def protective_on_close(draw: st.DrawFn, body: Body) -> Body:
    body["type"] = draw(st.sampled_from(TYPES[2:]))
    body[draw(st.sampled_from(["take_profit", "stop_loss"]))] = plain(draw(prices))
    return body


def wrong_bracket(draw: st.DrawFn, body: Body) -> Body:
    body["type"] = kind = draw(st.sampled_from(ENTRIES))
    body.setdefault("quantity", plain(draw(quantities)))
    low = draw(prices)
    high = low + draw(in_thousandths(0, 1_000_000))  # may be equal
    body["stop_loss"], body["take_profit"] = ((plain(high), plain(low)) if kind == "LONG_ENTRY"
                                              else (plain(low), plain(high)))
    return body


def both_expiries(draw: st.DrawFn, body: Body) -> Body:
    body["ttl_s"] = draw(st.integers(min_value=1, max_value=600))
    body["expires_at"] = "2999-01-01T00:00:00Z"
    return body


def unknown_field(draw: st.DrawFn, body: Body) -> Body:
    body[draw(st.text(max_size=30).filter(lambda k: k not in FIELDS))] = draw(junk)
    return body


def huge_string(draw: st.DrawFn, body: Body) -> Body:
    size = draw(st.integers(min_value=65, max_value=60_000))
    char = draw(st.sampled_from(["x", "é", "€", "😀"]))
    name = draw(st.sampled_from(["source", "id", "symbol", "quantity", "note"]))
    body[name] = char * max(65, size // len(char.encode()))  # > 64 characters: always too long
    return body


MUTATIONS: tuple[Mutation, ...] = (drop_required, wrong_type, bad_value, protective_on_close,
                                   wrong_bracket, both_expiries, unknown_field, huge_string)


@st.composite
def broken_signals(draw: st.DrawFn) -> Body:
    body = draw(valid_signals())
    for mutate in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
        body = mutate(draw, body)
    return body


def encode(value: object) -> bytes:
    # stdlib json: it writes integers of any size, which orjson refuses to.
    return json.dumps(value, ensure_ascii=False).encode()


# ------------------------------------------------------------------ bytes that are not JSON


@st.composite
def broken_bytes(draw: st.DrawFn) -> bytes:
    text = encode(draw(broken_signals() | valid_signals()))
    how = draw(st.sampled_from(["truncate", "bad-utf8", "trailing", "nesting", "literal",
                                "random"]))
    if how == "truncate":  # a strict prefix of an object's text is never JSON
        return text[:draw(st.integers(min_value=0, max_value=len(text) - 1))]
    if how == "bad-utf8":
        at = draw(st.integers(min_value=0, max_value=len(text)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80"]))
        return text[:at] + bad + text[at:]
    if how == "trailing":
        return text + draw(st.sampled_from([b"x", b"}", b",", b"{}", b"\x00"]))
    if how == "nesting":
        depth = draw(st.integers(min_value=1025, max_value=5000))
        return b'{"symbol": ' + b"[" * depth + b"]" * depth + b"}"
    if how == "literal":
        return draw(st.sampled_from([b'{"ttl_s": NaN}', b'{"ttl_s": Infinity}',
                                     b"{'symbol': 'BTCUSDT'}", b'{"symbol": "BTCUSDT" /* c */}',
                                     b'{"quantity": 1e999}', b"", b"   ", b"\xef\xbb\xbf{}"]))
    raw = draw(st.binary(max_size=200))
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    return raw if not isinstance(parsed, dict) else b"{" + raw  # never a valid signal


malformed = (broken_signals().map(encode) | not_an_object.map(encode) | broken_bytes()).filter(
    lambda raw: len(raw) <= MAX_BODY)
