"""The audit event catalog holds every name SPEC §8 lists, each in exactly one group."""

from __future__ import annotations

from collections import Counter

from app.observability.audit import GROUPS, AuditEvent

# SPEC §8 "Catalog (at least)", verbatim.
SPEC_EVENTS = (
    "daemon_started", "daemon_stopping", "daemon_stopped", "signal_received", "signal_rejected",
    "signal_duplicate", "signal_expired", "signal_done", "signal_failed", "order_submitted",
    "order_placed", "order_filled", "order_rejected", "order_cancelled", "order_unknown_outcome",
    "order_resolved", "protective_placed", "position_unprotected", "position_flattened",
    "leverage_set", "margin_type_set", "position_query", "balance_query", "api_error",
    "retry_attempt", "rate_limit", "rate_limit_warning", "ip_banned", "breaker_opened",
    "breaker_half_open", "breaker_closed", "breaker_rejected", "time_synced",
    "exchange_info_refreshed", "reconcile_started", "order_reconciled", "reconcile_finished",
    "alert",
)


def test_every_spec_event_is_in_the_catalog() -> None:
    """Each event name SPEC §8 requires is an AuditEvent value."""
    assert set(SPEC_EVENTS) <= {event.value for event in AuditEvent}


def test_names_are_snake_case_and_match_members() -> None:
    """Values are the lower-case member names, so code and logs read the same."""
    assert all(event.value == event.name.lower() for event in AuditEvent)


def test_every_event_is_in_exactly_one_group() -> None:
    """GROUPS documents each event once."""
    counts = Counter(event for group in GROUPS for event in group.events)
    assert counts == Counter(set(AuditEvent))


def test_events_are_plain_strings() -> None:
    """An AuditEvent is a str that formats as its name, so it can be structlog's event."""
    event: str = AuditEvent.SESSION_RESET
    assert (event, f"{AuditEvent.ALERT}") == ("session_reset", "alert")
