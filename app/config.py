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
    "api_token_path",
    "config_dir",
    "load_settings",
    "resolve_api_token",
    "sim_config_paths",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "EXECD_"
TOKEN_ENV = "EXECD_API_TOKEN"
API_KEY_ENV = "BINANCE_API_KEY"
API_SECRET_ENV = "BINANCE_API_SECRET"
SIM_API_KEY = "sim-key"
SIM_API_SECRET = "sim-secret"

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
    """One layer per ``EXECD_`` variable, so an error can name the variable that caused it."""
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name == TOKEN_ENV:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"{name}: unknown variable (expected EXECD_<SECTION>__<KEY>)")
        yield name, {parts[0]: {parts[1]: env[name]}}
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


def api_token_path(settings: Settings) -> Path:
    """Where a generated control API token lives: ``api-token`` beside the journal
    (``data/api-token`` by default), so ``EXECD_JOURNAL__PATH`` moves both."""
    return settings.journal.path.parent / "api-token"


def resolve_api_token(settings: Settings, *, create: bool) -> str | None:
    """The control API token: ``api.token`` (``EXECD_API_TOKEN``) if set, else the token file;
    with ``create`` a missing file is generated (32 random bytes, mode 0600). Blocking file I/O:
    the daemon calls this in a thread."""
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
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token
