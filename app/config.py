"""Typed, frozen settings; the only module in ``app`` that reads config files or the environment.

`load_settings()` layers its sources, lowest precedence first (SPEC §12):

1. ``config/default.toml`` (every key, commented; equal to the model defaults below)
2. ``config/local.toml`` (optional, git-ignored)
3. the ``--config FILE`` given on the command line
4. environment variables ``EXECD_<SECTION>__<KEY>`` (e.g. ``EXECD_API__PORT=9000``), then the
   fixed alias ``EXECD_API_TOKEN`` for ``api.token``
5. explicit overrides from command-line flags (dotted keys, e.g. ``{"api.port": 9000}``)

The merged tree is validated once. Unknown keys, unknown ``EXECD_`` variables and wrong types are
errors: `ConfigError` names the dotted key and where its value came from. Credentials are resolved
after validation: ``BINANCE_API_KEY``/``BINANCE_API_SECRET`` win in every mode, then the files named
by ``exchange.api_key_file``/``api_secret_file``, then (``sim`` mode only) the simulator's keys.
Relative paths are kept as written and resolve against the working directory when used.

pydantic-settings contributes `BaseSettings` only: its own sources are switched off because the
layers must be injectable (tests pass ``environ``), attributed in error messages, and strict about
unknown ``EXECD_`` variables, which its environment source would silently ignore.
"""

from __future__ import annotations

import os
import secrets
import stat
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from app.config_schema import (
    ApiConfig,
    AuditConfig,
    BreakerConfig,
    ExchangeConfig,
    ExchangeMode,
    ExecutionConfig,
    IntakeConfig,
    JournalConfig,
    MonitorConfig,
    RateLimitConfig,
    RetryConfig,
    RiskConfig,
    StreamConfig,
)

__all__ = [
    "PROJECT_ROOT",
    "ConfigError",
    "Credentials",
    "ExchangeMode",
    "Settings",
    "SystemdEnvironment",
    "api_token_path",
    "config_dir",
    "exposed_secret_files",
    "load_settings",
    "resolve_api_token",
    "sim_config_paths",
    "systemd_environment",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "EXECD_"
TOKEN_ENV = "EXECD_API_TOKEN"
API_KEY_ENV = "BINANCE_API_KEY"
API_SECRET_ENV = "BINANCE_API_SECRET"
SIM_API_KEY = "sim-key"
SIM_API_SECRET = "sim-secret"
NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

_Tree = dict[str, Any]
_Path = tuple[str, ...]


def config_dir() -> Path:
    """The project's ``config/`` directory (default.toml, local.toml, sim.toml, faults/)."""
    return PROJECT_ROOT / "config"


class ConfigError(Exception):
    """The configuration is unusable; the message names the key and the source of its value."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """Exchange API credentials; `origin` says where they came from, never what they are."""

    api_key: SecretStr
    api_secret: SecretStr
    origin: str


class Settings(BaseSettings):
    """The whole configuration: one frozen, validated object built by `load_settings()`."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    exchange: ExchangeConfig = ExchangeConfig()
    execution: ExecutionConfig = ExecutionConfig()
    retry: RetryConfig = RetryConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    breaker: BreakerConfig = BreakerConfig()
    audit: AuditConfig = AuditConfig()
    api: ApiConfig = ApiConfig()
    journal: JournalConfig = JournalConfig()
    monitor: MonitorConfig = MonitorConfig()
    stream: StreamConfig = StreamConfig()
    risk: RiskConfig = RiskConfig()
    intake: IntakeConfig = IntakeConfig()

    # Not a config key: resolved by load_settings() from the environment or key files.
    _credentials: Credentials | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `Settings()` must never read the process environment behind load_settings()'s back.
        return (init_settings,)

    @property
    def credentials(self) -> Credentials | None:
        """The resolved exchange credentials, or None when none are configured."""
        return self._credentials

    def require_credentials(self) -> Credentials:
        """The credentials, or ConfigError naming what to set when there are none."""
        if self._credentials is None:
            raise ConfigError(
                f"exchange.api_key_file: {self.exchange.mode} mode needs API credentials: set "
                f"{API_KEY_ENV} and {API_SECRET_ENV}, or exchange.api_key_file and "
                "exchange.api_secret_file"
            )
        return self._credentials

    def secret_values(self) -> tuple[str, ...]:
        """Every secret string in these settings, for the log redactor to mask wherever seen."""
        values = [self.api.token.get_secret_value()] if self.api.token else []
        if self._credentials is not None:
            values += [
                self._credentials.api_key.get_secret_value(),
                self._credentials.api_secret.get_secret_value(),
            ]
        return tuple(v for v in values if v)


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    config_root: Path | None = None,
) -> Settings:
    """Build the settings from files, environment and overrides (module docstring: precedence).

    `overrides` maps dotted keys (``"exchange.mode"``) to values; None values are skipped, so the
    CLI can pass every flag. `environ` defaults to ``os.environ``; `config_root` (the directory
    holding default.toml and local.toml) defaults to `config_dir()`. Raises ConfigError.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    root = config_dir() if config_root is None else config_root
    layers: list[tuple[str, _Tree]] = []
    for path in (root / "default.toml", root / "local.toml"):
        if path.is_file():
            layers.append((str(path), _read_toml(path)))
    if config_file is not None:
        layers.append((str(config_file), _read_toml(config_file)))
    layers.extend(_env_layers(env))
    layers.extend(_override_layers(overrides or {}))

    merged: _Tree = {}
    origin: dict[_Path, str] = {}
    for source, tree in layers:
        _merge(merged, tree, (), source, origin)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
    settings._credentials = _resolve_credentials(settings.exchange, env)
    return settings


def _read_toml(path: Path) -> _Tree:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _env_layers(env: Mapping[str, str]) -> Iterator[tuple[str, _Tree]]:
    """One layer per ``EXECD_`` variable, so an error can name the variable that caused it.
    A nested section takes one ``__`` per level: ``EXECD_INTAKE__NATS__URL``."""
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name == TOKEN_ENV:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise ConfigError(f"{name}: unknown variable (expected EXECD_<SECTION>__<KEY>)")
        tree: _Tree = {parts[-1]: env[name]}
        for part in reversed(parts[:-1]):
            tree = {part: tree}
        yield name, tree
    # The fixed alias comes last so it wins over EXECD_API__TOKEN.
    if TOKEN_ENV in env:
        yield TOKEN_ENV, {"api": {"token": env[TOKEN_ENV]}}


def _override_layers(overrides: Mapping[str, object]) -> Iterator[tuple[str, _Tree]]:
    for dotted, value in overrides.items():
        if value is None:
            continue
        tree: _Tree = {}
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        yield "command line", tree


def _merge(dst: _Tree, src: _Tree, prefix: _Path, source: str, origin: dict[_Path, str]) -> None:
    """Deep-merge `src` into `dst`, recording which source set each key path."""
    for key, value in src.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, path, source, origin)
            continue
        dst[key] = value
        _record(origin, path, value, source)


def _record(origin: dict[_Path, str], path: _Path, value: object, source: str) -> None:
    origin[path] = source
    if isinstance(value, dict):
        for key, child in value.items():
            _record(origin, (*path, str(key)), child, source)


def _describe(exc: ValidationError, origin: Mapping[_Path, str]) -> str:
    """One line per problem: ``dotted.key: what is wrong (got X, from SOURCE)``."""
    lines: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join(loc) or "<root>"
        if key in lines:
            continue
        if error["type"] == "extra_forbidden":
            problem, details = "unknown section" if len(loc) == 1 else "unknown key", []
        else:
            problem = error["msg"].removeprefix("Value error, ")
            value = error.get("input")
            secret = any(word in key for word in ("token", "secret", "key_file"))
            shown = isinstance(value, str | int | float | bool) and not secret
            details = [f"got {value!r}"] if shown else []
        source = next((origin[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origin), None)
        if source is not None:
            details.append(f"from {source}")
        lines[key] = f"{key}: {problem}" + (f" ({', '.join(details)})" if details else "")
    return "; ".join(lines.values())


def _resolve_credentials(exchange: ExchangeConfig, env: Mapping[str, str]) -> Credentials | None:
    key = env.get(API_KEY_ENV) or _read_secret(exchange.api_key_file, "exchange.api_key_file")
    secret = env.get(API_SECRET_ENV) or _read_secret(
        exchange.api_secret_file, "exchange.api_secret_file"
    )
    origin = "environment or key files"
    if exchange.mode is ExchangeMode.SIM and not (key and secret):
        sim_key, sim_secret = _sim_credentials(exchange.sim_config)
        key, secret = key or sim_key, secret or sim_secret
        origin = "simulator defaults"
    if not (key and secret):
        return None
    return Credentials(SecretStr(key), SecretStr(secret), origin)


def _read_secret(path: Path | None, key: str) -> str | None:
    if path is None:
        return None
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{key}: {path} is empty")
    return value


def sim_config_paths(overlay: Path | None = None) -> list[Path]:
    """The simulator config files, in merge order: ``config/sim.toml``, then `overlay` if another.

    A partial overlay takes every missing key from ``config/sim.toml`` (SPEC §10).
    """
    base = config_dir() / "sim.toml"
    if overlay is None or overlay.absolute() == base:
        return [base]
    return [base, overlay]


def _sim_credentials(sim_config: Path) -> tuple[str, str]:
    """The keys the embedded simulator accepts: [credentials] of its config files, else defaults."""
    key, secret = SIM_API_KEY, SIM_API_SECRET
    for path in sim_config_paths(sim_config):
        if not path.is_file():
            continue
        try:
            section = _read_toml(path).get("credentials", {})
        except ConfigError as exc:
            raise ConfigError(f"exchange.sim_config: {exc}") from None
        if not isinstance(section, dict):
            raise ConfigError(f"exchange.sim_config: [credentials] in {path} is not a table")
        key = str(section.get("api_key", key))
        secret = str(section.get("api_secret", secret))
    return key, secret


@dataclass(frozen=True, slots=True)
class SystemdEnvironment:
    """What systemd passes a ``Type=notify`` service (sd_notify(3), sd_watchdog_enabled(3)):
    the socket to notify, as written (a path or ``@abstract``), and the watchdog timeout in
    microseconds when the watchdog is meant for this process (None: no watchdog)."""

    notify_socket: str
    watchdog_usec: int | None


def systemd_environment(environ: Mapping[str, str] | None = None, *,
                        pid: int | None = None) -> SystemdEnvironment | None:
    """``NOTIFY_SOCKET`` and the watchdog from the environment, or None without a socket.

    ``WATCHDOG_USEC`` counts only when ``WATCHDOG_PID`` is absent or `pid` (default: this
    process): a child that inherited a parent's watchdog must not feed it. Raises ConfigError
    naming the variable when one is set but malformed.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    socket = env.get(NOTIFY_SOCKET_ENV, "")
    if not socket:
        return None
    if not socket.startswith("/") and not (socket.startswith("@") and len(socket) > 1):
        raise ConfigError(f"{NOTIFY_SOCKET_ENV}: must be an absolute unix socket path or an "
                          f"@abstract name, got {socket!r}")
    usec = _positive_int(env, WATCHDOG_USEC_ENV, "a whole number of microseconds")
    owner = _positive_int(env, WATCHDOG_PID_ENV, "a process id")
    if owner is not None and owner != (os.getpid() if pid is None else pid):
        usec = None
    return SystemdEnvironment(socket, usec)


def _positive_int(env: Mapping[str, str], name: str, what: str) -> int | None:
    text = env.get(name, "")
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        raise ConfigError(f"{name}: must be {what} > 0, got {text!r}")
    return int(text)


def api_token_path(settings: Settings) -> Path:
    """Where a generated control API token lives: ``api-token`` beside the journal
    (``data/api-token`` by default), so ``EXECD_JOURNAL__PATH`` moves both."""
    return settings.journal.path.parent / "api-token"


def resolve_api_token(settings: Settings, *, create: bool) -> str | None:
    """The control API token: ``api.token`` (``EXECD_API_TOKEN``) if set, else the token file;
    with ``create`` a missing or empty file is generated (32 random bytes): written to a new
    mode-0600 file in the same directory (``O_EXCL|O_NOFOLLOW``), fsynced, then renamed onto
    the token file's name, so a symlink or an existing file there (and its mode) is replaced,
    never written through. Blocking file I/O: the daemon calls this in a thread."""
    if settings.api.token is not None and settings.api.token.get_secret_value():
        return settings.api.token.get_secret_value()
    path = api_token_path(settings)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if token or not create:
        return token or None
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    _write_private(path, token + "\n")
    return token


def _write_private(path: Path, text: str) -> None:
    """Replace `path` with a new file holding `text`, mode 0600 (blocking)."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def exposed_secret_files(settings: Settings) -> list[tuple[str, Path, int]]:
    """The secret files that group or others have any access to: (the config key naming
    the file, its path, its permission bits). Looks at ``exchange.api_key_file``,
    ``exchange.api_secret_file`` and, unless ``api.token`` is set, the token file
    (`api_token_path`; key ``api.token``); missing files are skipped. Blocking ``stat`` calls."""
    candidates = [("exchange.api_key_file", settings.exchange.api_key_file),
                  ("exchange.api_secret_file", settings.exchange.api_secret_file)]
    if settings.api.token is None:
        candidates.append(("api.token", api_token_path(settings)))
    exposed = []
    for key, path in candidates:
        if path is None:
            continue
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue
        if mode & 0o077:
            exposed.append((key, path, mode))
    return exposed
