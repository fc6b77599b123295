"""The configuration schema: one frozen, validated model per section of ``config/default.toml``.

Pure declarations: nothing here reads files or the environment (``app/config.py`` does, SPEC §3.2).
Every default equals the value in ``config/default.toml``; ``docs/configuration.md`` explains each
key. Durations are seconds (``_s``) or milliseconds (``_ms``); shares are fractions in (0, 1].
Optional values may be written as ``""`` in TOML or the environment, meaning "not set".
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
)

from app.domain import OnUnprotected

__all__ = [
    "ApiConfig",
    "AuditConfig",
    "BreakerConfig",
    "ExchangeConfig",
    "ExchangeMode",
    "ExecutionConfig",
    "IntakeConfig",
    "JournalConfig",
    "JournalSync",
    "LogLevel",
    "MonitorConfig",
    "NatsConfig",
    "OnUnprotected",
    "RateLimitConfig",
    "RetryConfig",
    "RiskConfig",
    "is_loopback",
]

_SECTION = ConfigDict(frozen=True, extra="forbid")


class ExchangeMode(StrEnum):
    SIM = "sim"
    TESTNET = "testnet"
    LIVE = "live"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


def _blank_to_none(value: object) -> object:
    return None if value == "" else value


def _url_check(scheme: str, article: str) -> Callable[[str], str]:
    """A validator of ``{scheme}://`` or ``{scheme}s://`` URLs (the trailing ``/`` dropped)."""
    def check(value: str) -> str:
        if not re.fullmatch(rf"{scheme}s?://[^\s/]+(/\S*)?", value):
            raise ValueError(f"must be {article} {scheme}:// or {scheme}s:// URL")
        return value.rstrip("/")
    return check


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _parse_console(value: object) -> object:
    """``"auto"`` (None: pretty on a TTY, JSON otherwise), or a boolean."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered == "auto":
            return None
        if lowered in {"true", "1", "yes", "on"}:
            return True
        if lowered in {"false", "0", "no", "off"}:
            return False
        raise ValueError('must be true, false or "auto"')
    return value


Url = Annotated[str, AfterValidator(_url_check("http", "an"))]
OptionalUrl = Annotated[Url | None, BeforeValidator(_blank_to_none)]
WsUrl = Annotated[str, AfterValidator(_url_check("ws", "a"))]
OptionalWsUrl = Annotated[WsUrl | None, BeforeValidator(_blank_to_none)]
OptionalPath = Annotated[Path | None, BeforeValidator(_blank_to_none)]
#: The shortest control API token accepted when the API listens off loopback (SPEC §11.2).
MIN_REMOTE_TOKEN_CHARS = 32

OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_blank_to_none)]
Share = Annotated[float, Field(gt=0, le=1)]
Seconds = Annotated[float, Field(gt=0)]


class ExchangeConfig(BaseModel):
    """Which exchange to talk to and how (SPEC §6.2)."""

    model_config = _SECTION

    mode: ExchangeMode = ExchangeMode.SIM
    sim_url: OptionalUrl = None
    testnet_url: Url = "https://demo-fapi.binance.com"
    live_url: Url = "https://fapi.binance.com"
    sim_config: Path = Path("config/sim.toml")
    recv_window_ms: int = Field(default=5000, ge=1, le=60_000)
    request_timeout_s: float = Field(default=10.0, gt=0, le=300)
    connect_timeout_s: float = Field(default=3.0, gt=0, le=300)
    live_confirm: bool = Field(default=False, validate_default=True)
    api_key_file: OptionalPath = None
    api_secret_file: OptionalPath = None

    @field_validator("live_confirm")
    @classmethod
    def _live_needs_confirmation(cls, value: bool, info: ValidationInfo) -> bool:
        if info.data.get("mode") is ExchangeMode.LIVE and not value:
            raise ValueError("live mode requires exchange.live_confirm = true")
        return value

    def base_url(self) -> str | None:
        """The configured exchange URL (no ``/fapi``) for the mode; None: start the embedded sim."""
        return {
            ExchangeMode.SIM: self.sim_url,
            ExchangeMode.TESTNET: self.testnet_url,
            ExchangeMode.LIVE: self.live_url,
        }[self.mode]


class ExecutionConfig(BaseModel):
    """How signals become orders (SPEC §4.3, §5)."""

    model_config = _SECTION

    max_concurrency: int = Field(default=8, ge=1, le=256)
    resolve_window_s: float = Field(default=10.0, gt=0, le=300)
    on_unprotected: OnUnprotected = OnUnprotected.FLATTEN
    default_ttl_s: float = Field(default=30.0, gt=0, le=86_400)
    client_id_prefix: str = Field(default="xd", pattern=r"^[A-Za-z0-9_-]{1,8}$")
    shutdown_timeout_s: float = Field(default=10.0, gt=0, le=600)
    queue_size: int = Field(default=1000, ge=1, le=1_000_000)


class StreamConfig(BaseModel):
    """The user-data and mark-price streams and the live book (SPEC §5.8)."""

    model_config = _SECTION

    enabled: bool = True
    #: Websocket base URL; None: derived from the mode (the simulator's own URL, Binance's
    #: ``wss://fstream.binancefuture.com`` on testnet, ``wss://fstream.binance.com`` live).
    ws_url: OptionalWsUrl = None
    reconcile_interval_s: float = Field(default=60.0, gt=0, le=86_400)
    fallback_poll_s: float = Field(default=5.0, gt=0, le=3600)
    max_mark_age_s: float = Field(default=2.0, gt=0, le=3600)
    keepalive_s: float = Field(default=1800.0, gt=0, le=3600)


class RiskConfig(BaseModel):
    """The risk gate (SPEC §5.10); 0 turns a limit off. Notionals are USDT."""

    model_config = _SECTION

    max_order_notional: Decimal = Field(default=Decimal(0), ge=0)
    max_position_notional: Decimal = Field(default=Decimal(0), ge=0)
    max_open_positions: int = Field(default=0, ge=0, le=10_000)
    max_orders_per_minute: int = Field(default=0, ge=0, le=100_000)
    max_leverage: int = Field(default=0, ge=0, le=125)
    max_daily_loss: Decimal = Field(default=Decimal(0), ge=0)


class RetryConfig(BaseModel):
    """Backoff for retryable calls (SPEC §7.3). Delays and jitter are seconds."""

    model_config = _SECTION

    max_retries: int = Field(default=3, ge=0, le=20)
    initial_delay: Seconds = 0.2
    backoff_factor: float = Field(default=2.0, ge=1, le=10)
    max_delay: Seconds = 5.0
    jitter: float = Field(default=0.1, ge=0, le=60)

    @field_validator("max_delay")
    @classmethod
    def _max_not_below_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("initial_delay")
        if initial is not None and value < initial:
            raise ValueError(f"must be at least retry.initial_delay ({initial})")
        return value


class RateLimitConfig(BaseModel):
    """Weight limiter shares (SPEC §7.1)."""

    model_config = _SECTION

    warning_threshold: Share = 0.8
    low_share: Share = 0.8
    headroom: float = Field(default=0.02, ge=0, lt=0.5)


class BreakerConfig(BaseModel):
    """Circuit breakers, one per endpoint group (SPEC §7.2)."""

    model_config = _SECTION

    failure_threshold: int = Field(default=5, ge=1, le=1000)
    recovery_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    half_open_max_calls: int = Field(default=1, ge=1, le=100)
    success_threshold: int = Field(default=2, ge=1, le=100)


class AuditConfig(BaseModel):
    """The audit log (SPEC §8)."""

    model_config = _SECTION

    log_dir: Path = Path("logs/audit")
    retention_days: int = Field(default=30, ge=1, le=3650)
    level: Annotated[LogLevel, BeforeValidator(_upper)] = LogLevel.INFO
    console: Annotated[bool | None, BeforeValidator(_parse_console)] = None


class ApiConfig(BaseModel):
    """The control API (SPEC §11.2)."""

    model_config = _SECTION

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8470, ge=0, le=65_535)
    token: OptionalSecret = Field(default=None, validate_default=True)
    max_body_bytes: int = Field(default=65_536, ge=1024, le=16 * 1024 * 1024)
    max_connections: int = Field(default=256, ge=1, le=16_384)
    header_timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("token")
    @classmethod
    def _token_off_loopback(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        host = info.data.get("host")
        if host is None or is_loopback(host):
            return value
        if value is None:
            raise ValueError(f"required when api.host ({host}) is not a loopback address (set "
                             "api.token or EXECD_API_TOKEN)")
        if len(value.get_secret_value()) < MIN_REMOTE_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_REMOTE_TOKEN_CHARS} characters when "
                             f"api.host ({host}) is not a loopback address (set api.token or "
                             "EXECD_API_TOKEN)")
        return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` stays on this machine (a loopback address or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only "localhost" is known to stay on this machine
        return False


class JournalSync(StrEnum):
    """SQLite's ``synchronous`` for the journal's writes (SPEC §5.6). Acknowledging commits
    (an accepted signal, a spool offset) are fsynced under every level."""

    NORMAL = "NORMAL"
    FULL = "FULL"
    EXTRA = "EXTRA"


class JournalConfig(BaseModel):
    """The durable signal store (SPEC §4.3, §5.6)."""

    model_config = _SECTION

    path: Path = Path("data/journal.sqlite3")
    synchronous: Annotated[JournalSync, BeforeValidator(_upper)] = JournalSync.NORMAL


class MonitorConfig(BaseModel):
    """Error-rate alerts (SPEC §9)."""

    model_config = _SECTION

    error_rate_per_min: float = Field(default=10.0, gt=0)
    window_s: float = Field(default=60.0, gt=0, le=86_400)
    cooldown_s: float = Field(default=300.0, ge=0, le=86_400)
    webhook_url: OptionalUrl = None
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)


def _nats_url(value: str) -> str:
    if not re.fullmatch(r"(nats|tls)://[^\s/]+/?(,(nats|tls)://[^\s/]+/?)*", value):
        raise ValueError("must be a nats:// or tls:// URL (several: comma-separated), or empty")
    return value


#: NATS names execd uses: a stream or consumer name, and a subject without wildcards.
_NATS_NAME = r"^[A-Za-z0-9_-]{1,32}$"
_NATS_SUBJECT = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"


class NatsConfig(BaseModel):
    """Signals and execution reports over NATS JetStream (SPEC §4.2 item 5). The five keys
    ``url``, ``stream``, ``subject``, ``durable``, ``reports_subject`` are a fixed contract;
    the rest tune the source."""

    model_config = _SECTION

    #: None (empty): the NATS source is off.
    url: Annotated[Annotated[str, AfterValidator(_nats_url)] | None,
                   BeforeValidator(_blank_to_none)] = None
    stream: str = Field(default="EXECD", pattern=_NATS_NAME)
    subject: str = Field(default="execd.signals", pattern=_NATS_SUBJECT, max_length=200)
    durable: str = Field(default="execd", pattern=_NATS_NAME)
    reports_subject: str = Field(default="execd.reports", pattern=_NATS_SUBJECT,
                                 max_length=200)
    #: Messages asked for per pull request.
    fetch_batch: int = Field(default=100, ge=1, le=10_000)
    #: The consumer's ack wait (a message not acked within it is delivered again), at creation.
    ack_wait_s: float = Field(default=30.0, ge=1, le=3600)
    #: The delay of a ``nak`` (queue full, intake stopping, journal busy), in seconds.
    nak_delay_s: float = Field(default=1.0, gt=0, le=600)
    #: Reports waiting to be published, at most; past it they are dropped (counted, audited)
    #: and published again from the journal once the buffer has room.
    report_buffer: int = Field(default=10_000, ge=1, le=1_000_000)


class IntakeConfig(BaseModel):
    """Signal sources configured in files (SPEC §4.2)."""

    model_config = _SECTION

    nats: NatsConfig = NatsConfig()
