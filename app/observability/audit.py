"""The audit event catalog: every event name execd emits, in one place (SPEC §8).

Emit with the logger from `app.observability.logging`: ``log.info(AuditEvent.ORDER_PLACED,
symbol=..., client_order_id=...)``. Names are stable snake_case strings; operators filter on them
(``execd logs --event order_placed``), so renaming one is a breaking change. Context such as
``signal_id``, ``symbol``, ``client_order_id`` and ``leg`` is bound with structlog contextvars,
not repeated by hand. `GROUPS` documents what each family of events is for; the fields of each
event are documented in ``docs/audit-events.md`` as the emitting code lands.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum, unique

__all__ = ["GROUPS", "AuditEvent", "EventGroup"]


@unique
class AuditEvent(StrEnum):
    """Every audit event name. The value is what appears in the ``event`` field."""

    # lifecycle
    DAEMON_STARTED = "daemon_started"
    DAEMON_STOPPING = "daemon_stopping"
    DAEMON_STOPPED = "daemon_stopped"
    SECRET_FILE_EXPOSED = "secret_file_exposed"
    NOTIFY_FAILED = "notify_failed"
    # signals
    SIGNAL_RECEIVED = "signal_received"
    SIGNAL_ACCEPTED = "signal_accepted"
    SIGNAL_REJECTED = "signal_rejected"
    SIGNAL_DUPLICATE = "signal_duplicate"
    SIGNAL_DEFERRED = "signal_deferred"
    SIGNAL_EXPIRED = "signal_expired"
    SIGNAL_DONE = "signal_done"
    SIGNAL_FAILED = "signal_failed"
    SIGNAL_CANCELLED = "signal_cancelled"
    # the spool source
    SPOOL_WAITING = "spool_waiting"
    SPOOL_TRUNCATED = "spool_truncated"
    SPOOL_ROTATED = "spool_rotated"
    SPOOL_UNREADABLE = "spool_unreadable"
    # networked sources (NATS) and the execution reports
    SOURCE_CONNECTED = "source_connected"
    SOURCE_DISCONNECTED = "source_disconnected"
    REPORT_DROPPED = "report_dropped"
    # orders
    ORDER_SUBMITTED = "order_submitted"
    ORDER_PLACED = "order_placed"
    ORDER_FILLED = "order_filled"
    ORDER_PARTIALLY_FILLED = "order_partially_filled"
    ORDER_REJECTED = "order_rejected"
    ORDER_CANCELLED = "order_cancelled"
    ORDER_UNKNOWN_OUTCOME = "order_unknown_outcome"
    ORDER_RESOLVED = "order_resolved"
    # positions and protection
    PROTECTIVE_PLACED = "protective_placed"
    POSITION_UNPROTECTED = "position_unprotected"
    POSITION_FLATTENED = "position_flattened"
    PROTECTIVE_TRIGGERED = "protective_triggered"
    POSITION_LIQUIDATED = "position_liquidated"
    POSITION_FOREIGN = "position_foreign"
    PROTECTION_REPAIRED = "protection_repaired"
    # account operations
    LEVERAGE_SET = "leverage_set"
    MARGIN_TYPE_SET = "margin_type_set"
    POSITION_QUERY = "position_query"
    BALANCE_QUERY = "balance_query"
    # exchange errors and resilience
    API_ERROR = "api_error"
    RETRY_ATTEMPT = "retry_attempt"
    RATE_LIMIT = "rate_limit"
    RATE_LIMIT_WARNING = "rate_limit_warning"
    IP_BANNED = "ip_banned"
    BREAKER_OPENED = "breaker_opened"
    BREAKER_HALF_OPEN = "breaker_half_open"
    BREAKER_CLOSED = "breaker_closed"
    BREAKER_REJECTED = "breaker_rejected"
    SESSION_RESET = "session_reset"
    # exchange housekeeping
    TIME_SYNCED = "time_synced"
    EXCHANGE_INFO_REFRESHED = "exchange_info_refreshed"
    EXCHANGE_INFO_REFRESH_FAILED = "exchange_info_refresh_failed"
    # streams
    STREAM_CONNECTED = "stream_connected"
    STREAM_DISCONNECTED = "stream_disconnected"
    LISTEN_KEY_RENEWED = "listen_key_renewed"
    # restart recovery
    RECONCILE_STARTED = "reconcile_started"
    ORDER_RECONCILED = "order_reconciled"
    RECONCILE_FINISHED = "reconcile_finished"
    # the journal
    JOURNAL_BUSY = "journal_busy"
    JOURNAL_FAILED = "journal_failed"
    # risk gate and trading state
    TRADING_STATE_CHANGED = "trading_state_changed"
    RISK_REJECTED = "risk_rejected"
    # the control API
    API_REQUEST_FAILED = "api_request_failed"
    # operator attention
    ALERT = "alert"


@dataclass(frozen=True, slots=True)
class EventGroup:
    """A family of audit events and what it tells the operator."""

    name: str
    doc: str
    events: tuple[AuditEvent, ...]


_E = AuditEvent

GROUPS: tuple[EventGroup, ...] = (
    EventGroup(
        "lifecycle",
        "The daemon process: start (mode, exchange URL, log file), stop requested, stopped; "
        "a key or token file that others can read, found at start; a notification to systemd "
        "that could not be sent.",
        (_E.DAEMON_STARTED, _E.DAEMON_STOPPING, _E.DAEMON_STOPPED, _E.SECRET_FILE_EXPOSED,
         _E.NOTIFY_FAILED),
    ),
    EventGroup(
        "signals",
        "A signal's path from intake to a final state (SPEC §4, §5.7), one event per transition.",
        (
            _E.SIGNAL_RECEIVED,
            _E.SIGNAL_ACCEPTED,
            _E.SIGNAL_REJECTED,
            _E.SIGNAL_DUPLICATE,
            _E.SIGNAL_DEFERRED,
            _E.SIGNAL_EXPIRED,
            _E.SIGNAL_DONE,
            _E.SIGNAL_FAILED,
            _E.SIGNAL_CANCELLED,
        ),
    ),
    EventGroup(
        "spool",
        "The spool file source (SPEC §4.2): waiting for the file, truncation, rotation, read "
        "errors.",
        (_E.SPOOL_WAITING, _E.SPOOL_TRUNCATED, _E.SPOOL_ROTATED, _E.SPOOL_UNREADABLE),
    ),
    EventGroup(
        "nats",
        "The NATS JetStream source and the execution reports (SPEC §4.2 item 5): connected "
        "(stream and consumer ready), disconnected or unusable (retried with backoff, "
        "forever), reports dropped from a full buffer.",
        (_E.SOURCE_CONNECTED, _E.SOURCE_DISCONNECTED, _E.REPORT_DROPPED),
    ),
    EventGroup(
        "orders",
        "Each exchange order of an intent, including unknown outcomes and how they resolved.",
        (
            _E.ORDER_SUBMITTED,
            _E.ORDER_PLACED,
            _E.ORDER_FILLED,
            _E.ORDER_PARTIALLY_FILLED,
            _E.ORDER_REJECTED,
            _E.ORDER_CANCELLED,
            _E.ORDER_UNKNOWN_OUTCOME,
            _E.ORDER_RESOLVED,
        ),
    ),
    EventGroup(
        "protection",
        "Stop-loss and take-profit orders, and positions left without them (SPEC §5.4).",
        (_E.PROTECTIVE_PLACED, _E.POSITION_UNPROTECTED, _E.POSITION_FLATTENED),
    ),
    EventGroup(
        "live_state",
        "What the user-data stream reports and the protection invariant does about it (SPEC "
        "§5.8, §5.9): a stop or take-profit that fired, a liquidation, a trade execd did not "
        "make, a missing stop placed again.",
        (_E.PROTECTIVE_TRIGGERED, _E.POSITION_LIQUIDATED, _E.POSITION_FOREIGN,
         _E.PROTECTION_REPAIRED),
    ),
    EventGroup(
        "account",
        "Account operations: leverage, margin type, position and balance queries (SPEC §5.5).",
        (_E.LEVERAGE_SET, _E.MARGIN_TYPE_SET, _E.POSITION_QUERY, _E.BALANCE_QUERY),
    ),
    EventGroup(
        "resilience",
        "Exchange errors and how the limiter, breakers and retries reacted (SPEC §6.3, §7).",
        (
            _E.API_ERROR,
            _E.RETRY_ATTEMPT,
            _E.RATE_LIMIT,
            _E.RATE_LIMIT_WARNING,
            _E.IP_BANNED,
            _E.BREAKER_OPENED,
            _E.BREAKER_HALF_OPEN,
            _E.BREAKER_CLOSED,
            _E.BREAKER_REJECTED,
            _E.SESSION_RESET,
        ),
    ),
    EventGroup(
        "housekeeping",
        "Server-time offset measurements and exchangeInfo refreshes (SPEC §6.2): at start, "
        "every 24 h in the background, after a precision rejection; a failed one keeps the "
        "rules in place and is tried again.",
        (_E.TIME_SYNCED, _E.EXCHANGE_INFO_REFRESHED, _E.EXCHANGE_INFO_REFRESH_FAILED),
    ),
    EventGroup(
        "streams",
        "The user-data and mark-price websockets: connections, drops, listenKey renewals "
        "(SPEC §5.8).",
        (_E.STREAM_CONNECTED, _E.STREAM_DISCONNECTED, _E.LISTEN_KEY_RENEWED),
    ),
    EventGroup(
        "recovery",
        "The restart reconciliation pass over journaled intents (SPEC §5.6).",
        (_E.RECONCILE_STARTED, _E.ORDER_RECONCILED, _E.RECONCILE_FINISHED),
    ),
    EventGroup(
        "journal",
        "The journal refused a write: another process held its write lock past the busy "
        "timeout, or the database or the disk failed (full, an I/O error, a failed fsync; "
        "SPEC §5.6). What was asked is refused, nothing acknowledged; ask again later.",
        (_E.JOURNAL_BUSY, _E.JOURNAL_FAILED),
    ),
    EventGroup(
        "risk",
        "The risk gate and the trading state (SPEC §5.10): a refused entry naming its rule, a "
        "state changed by an operator or a kill switch.",
        (_E.TRADING_STATE_CHANGED, _E.RISK_REJECTED),
    ),
    EventGroup(
        "control_api",
        "A control API request that failed inside execd (HTTP 500); the server keeps running.",
        (_E.API_REQUEST_FAILED,),
    ),
    EventGroup(
        "alerts",
        "Conditions that need a human: error-rate thresholds, open breakers, bans (SPEC §9).",
        (_E.ALERT,),
    ),
)
