"""Deterministic client order ids (SPEC §5.1), including further orders of one leg."""

from __future__ import annotations

import re

from app.domain import Leg
from app.execution.client_ids import client_id


def test_ids_are_deterministic_short_and_safe() -> None:
    first = client_id("xd", "signal-1", Leg.ENTRY)
    assert first == client_id("xd", "signal-1", Leg.ENTRY)
    assert re.fullmatch(r"xd[A-Z2-7]{24}E", first)
    assert len(first) <= 36


def test_further_attempts_of_a_leg_get_their_own_deterministic_ids() -> None:
    """A stop placed again, a second flattening close: never the id of the first order (a
    second order under one client id would be a duplicate), the same on every run."""
    ids = [client_id("xd", "signal-1", Leg.STOP_LOSS, attempt) for attempt in range(4)]
    assert len(set(ids)) == 4
    assert ids[0] == client_id("xd", "signal-1", Leg.STOP_LOSS)
    assert ids == [client_id("xd", "signal-1", Leg.STOP_LOSS, a) for a in range(4)]
    assert all(i.endswith("S") for i in ids)
    assert client_id("xd", "signal-1", Leg.CLOSE, 1) != client_id("xd", "signal-2", Leg.CLOSE, 1)
