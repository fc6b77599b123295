"""Settings: defaults, the precedence of every source, and errors that name the key."""

from __future__ import annotations

import shutil
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import (
    PROJECT_ROOT,
    ConfigError,
    ExchangeMode,
    Settings,
    SystemdEnvironment,
    api_token_path,
    config_dir,
    exposed_secret_files,
    load_settings,
    resolve_api_token,
    systemd_environment,
)

KEY, SECRET, TOKEN = "k3y-A1b2C3d4E5f6", "s3cr3t-Z9y8X7w6V5u4", "t0ken-Q1w2E3r4T5y6"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A config root holding a copy of the real default.toml and no local.toml."""
    root = tmp_path / "config"
    root.mkdir()
    shutil.copy(config_dir() / "default.toml", root / "default.toml")
    return root


def _load(
    root: Path,
    config_file: Path | None = None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """load_settings() against `root`, isolated from the real environment by default."""
    return load_settings(config_file, overrides, environ or {}, config_root=root)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_load(root: Path) -> None:
    """With no overrides at all, the loaded settings are the model defaults."""
    assert _load(root).model_dump() == Settings().model_dump()


def test_default_toml_equals_model_defaults() -> None:
    """default.toml holds every key, and its values are exactly the pydantic defaults."""
    with (config_dir() / "default.toml").open("rb") as fh:
        data = tomllib.load(fh)
    defaults = Settings().model_dump()
    assert {s: set(v) for s, v in data.items()} == {s: set(v) for s, v in defaults.items()}
    assert Settings.model_validate(data) == Settings()


def test_local_toml_overrides_default(root: Path) -> None:
    """config/local.toml beats config/default.toml."""
    _write(root / "local.toml", "[api]\nport = 9001\n")
    assert _load(root).api.port == 9001


def test_config_file_overrides_local(root: Path, tmp_path: Path) -> None:
    """--config FILE beats config/local.toml."""
    _write(root / "local.toml", "[api]\nport = 9001\n")
    extra = _write(tmp_path / "extra.toml", "[api]\nport = 9002\n")
    assert _load(root, config_file=extra).api.port == 9002


def test_environment_overrides_config_file(root: Path, tmp_path: Path) -> None:
    """EXECD_SECTION__KEY beats --config FILE."""
    extra = _write(tmp_path / "extra.toml", "[api]\nport = 9002\n")
    settings = _load(root, config_file=extra, environ={"EXECD_API__PORT": "9003"})
    assert settings.api.port == 9003


def test_overrides_beat_environment(root: Path) -> None:
    """Command-line overrides beat the environment; None means the flag was not given."""
    settings = _load(
        root,
        environ={"EXECD_API__PORT": "9003", "EXECD_JOURNAL__PATH": "/tmp/j.db"},
        overrides={"api.port": 9004, "journal.path": None},
    )
    assert (settings.api.port, settings.journal.path) == (9004, Path("/tmp/j.db"))


def test_fixed_environment_contract(root: Path) -> None:
    """EXECD_AUDIT__LOG_DIR, EXECD_JOURNAL__PATH and EXECD_API_TOKEN set their keys."""
    env = {
        "EXECD_AUDIT__LOG_DIR": "/x/audit",
        "EXECD_JOURNAL__PATH": "j.db",
        "EXECD_API_TOKEN": TOKEN,
    }
    settings = _load(root, environ=env)
    assert settings.audit.log_dir == Path("/x/audit")
    assert settings.journal.path == Path("j.db")
    assert settings.api.token is not None
    assert settings.api.token.get_secret_value() == TOKEN


def test_unknown_key_in_file_is_named(root: Path) -> None:
    """An unknown key in a file is an error naming its dotted path and the file."""
    local = _write(root / "local.toml", "[execution]\nmax_concurency = 4\n")
    with pytest.raises(ConfigError, match=r"execution\.max_concurency: unknown key") as info:
        _load(root)
    assert str(local) in str(info.value)


def test_unknown_key_in_environment_is_named(root: Path) -> None:
    """An unknown EXECD_SECTION__KEY is an error naming the key path and the variable."""
    env = {"EXECD_EXECUTION__MAX_CONCURENCY": "4"}
    with pytest.raises(ConfigError, match=r"execution\.max_concurency: unknown key") as info:
        _load(root, environ=env)
    assert "EXECD_EXECUTION__MAX_CONCURENCY" in str(info.value)


def test_unknown_section_in_environment_is_named(root: Path) -> None:
    """A variable naming no known section is an error naming the section and the variable."""
    with pytest.raises(ConfigError, match=r"nosuch: unknown section \(from EXECD_NOSUCH__KEY\)"):
        _load(root, environ={"EXECD_NOSUCH__KEY": "1"})


def test_malformed_execd_variable_is_an_error(root: Path) -> None:
    """EXECD_ variables that are not SECTION__KEY (a typo like EXECD_API_PORT) are rejected."""
    with pytest.raises(ConfigError, match="EXECD_API_PORT: unknown variable"):
        _load(root, environ={"EXECD_API_PORT": "9000"})


def test_wrong_type_in_file_is_named(root: Path) -> None:
    """A value of the wrong type names the key, the value and the file."""
    _write(root / "local.toml", '[execution]\nmax_concurrency = "eight"\n')
    with pytest.raises(ConfigError, match=r"execution\.max_concurrency: .*valid integer.*'eight'"):
        _load(root)


def test_wrong_type_in_environment_is_named(root: Path) -> None:
    """An environment value of the wrong type names the key and the variable."""
    with pytest.raises(ConfigError, match=r"api\.port: .*from EXECD_API__PORT"):
        _load(root, environ={"EXECD_API__PORT": "http"})


def test_out_of_bounds_value_is_named(root: Path) -> None:
    """Bounds are checked: a port above 65535 is an error naming api.port."""
    with pytest.raises(ConfigError, match=r"api\.port: .*65535"):
        _load(root, overrides={"api.port": 70_000})


def test_journal_synchronous_is_validated_and_defaults_to_normal(root: Path) -> None:
    """journal.synchronous: NORMAL by default, any case accepted; anything but NORMAL, FULL or
    EXTRA is an error naming the key and the allowed levels (SPEC §5.6)."""
    assert _load(root).journal.synchronous == "NORMAL"
    loaded = _load(root, environ={"EXECD_JOURNAL__SYNCHRONOUS": "full"})
    assert loaded.journal.synchronous == "FULL"
    with pytest.raises(ConfigError, match=r"journal\.synchronous: .*'NORMAL', 'FULL' or 'EXTRA'"
                                          r".*'OFF'.*from EXECD_JOURNAL__SYNCHRONOUS"):
        _load(root, environ={"EXECD_JOURNAL__SYNCHRONOUS": "off"})


def test_unknown_override_key_is_named(root: Path) -> None:
    """An override for a key that does not exist names the key and the command line."""
    with pytest.raises(ConfigError, match=r"api\.prot: unknown key \(from command line\)"):
        _load(root, overrides={"api.prot": 1})


def test_missing_config_file_is_an_error(root: Path, tmp_path: Path) -> None:
    """--config naming a missing file is a ConfigError naming the file."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        _load(root, config_file=missing)


def test_invalid_toml_is_an_error(root: Path) -> None:
    """A syntax error in a file is a ConfigError naming the file."""
    _write(root / "local.toml", "[api\nport = 1\n")
    with pytest.raises(ConfigError, match=r"local\.toml: invalid TOML"):
        _load(root)


def test_client_id_prefix_is_validated(root: Path) -> None:
    """client_id_prefix must be 1-8 characters of [A-Za-z0-9_-]."""
    with pytest.raises(ConfigError, match=r"execution\.client_id_prefix"):
        _load(root, overrides={"execution.client_id_prefix": "bad.prefix"})


def test_live_mode_needs_confirmation(root: Path) -> None:
    """live mode without exchange.live_confirm = true is refused, naming the key."""
    with pytest.raises(ConfigError, match=r"exchange\.live_confirm"):
        _load(root, overrides={"exchange.mode": "live"})


def test_non_loopback_api_needs_a_token(root: Path) -> None:
    """Binding the control API off loopback without a token is refused, naming api.token."""
    with pytest.raises(ConfigError, match=r"api\.token: required"):
        _load(root, environ={"EXECD_API__HOST": "0.0.0.0"})


def test_blank_optional_value_means_unset(root: Path) -> None:
    """"" for an optional key is None, so TOML and the environment can express "not set"."""
    settings = _load(root, environ={"EXECD_MONITOR__WEBHOOK_URL": ""})
    assert settings.monitor.webhook_url is None


def test_settings_are_frozen(root: Path) -> None:
    """Settings cannot be changed after loading."""
    settings = _load(root)
    with pytest.raises(ValidationError, match="frozen"):
        settings.api.port = 1


def test_sim_mode_defaults_to_simulator_credentials(root: Path, tmp_path: Path) -> None:
    """sim mode without keys uses the simulator's sim-key / sim-secret."""
    env = {"EXECD_EXCHANGE__SIM_CONFIG": str(tmp_path / "absent.toml")}
    creds = _load(root, environ=env).require_credentials()
    assert (creds.api_key.get_secret_value(), creds.api_secret.get_secret_value()) == (
        "sim-key",
        "sim-secret",
    )


def test_sim_credentials_follow_the_sim_config(root: Path, tmp_path: Path) -> None:
    """sim mode takes default keys from the [credentials] of exchange.sim_config."""
    sim = _write(tmp_path / "sim.toml", '[credentials]\napi_key = "sk"\napi_secret = "ss"\n')
    creds = _load(root, environ={"EXECD_EXCHANGE__SIM_CONFIG": str(sim)}).require_credentials()
    assert creds.api_key.get_secret_value() == "sk"


def test_binance_environment_keys_win_in_sim_mode(root: Path) -> None:
    """BINANCE_API_KEY / BINANCE_API_SECRET override the simulator defaults."""
    creds = _load(root, environ={"BINANCE_API_KEY": KEY, "BINANCE_API_SECRET": SECRET}).credentials
    assert creds is not None
    assert (creds.api_key.get_secret_value(), creds.api_secret.get_secret_value()) == (KEY, SECRET)


def test_key_files_are_read_and_environment_beats_them(root: Path, tmp_path: Path) -> None:
    """Key files supply credentials; BINANCE_API_KEY still wins over the key file."""
    key_file = _write(tmp_path / "key", "from-file-key\n")
    secret_file = _write(tmp_path / "secret", "from-file-secret\n")
    overrides = {
        "exchange.mode": "testnet",
        "exchange.api_key_file": str(key_file),
        "exchange.api_secret_file": str(secret_file),
    }
    creds = _load(root, overrides=overrides, environ={"BINANCE_API_KEY": KEY}).require_credentials()
    assert (creds.api_key.get_secret_value(), creds.api_secret.get_secret_value()) == (
        KEY,
        "from-file-secret",
    )


def test_testnet_without_credentials_names_what_to_set(root: Path) -> None:
    """testnet mode with no keys loads, but require_credentials() names the missing key."""
    settings = _load(root, overrides={"exchange.mode": "testnet"})
    assert settings.exchange.mode is ExchangeMode.TESTNET
    assert settings.credentials is None
    with pytest.raises(ConfigError, match=r"exchange\.api_key_file: testnet mode needs"):
        settings.require_credentials()


def test_secrets_never_appear_in_repr_or_str(root: Path) -> None:
    """API key, secret and token are masked in repr(), str() and JSON dumps of the settings."""
    env = {"BINANCE_API_KEY": KEY, "BINANCE_API_SECRET": SECRET, "EXECD_API_TOKEN": TOKEN}
    settings = _load(root, environ=env)
    shown = " ".join(
        [repr(settings), str(settings), repr(settings.credentials), settings.model_dump_json()]
    )
    assert not any(secret in shown for secret in (KEY, SECRET, TOKEN))
    assert set(settings.secret_values()) == {KEY, SECRET, TOKEN}


def test_wrong_type_of_secret_does_not_echo_it(root: Path) -> None:
    """An invalid secret value is reported by key, never echoed."""
    _write(root / "local.toml", "[api]\ntoken = 123456789\n")
    with pytest.raises(ConfigError, match=r"api\.token") as info:
        _load(root)
    assert "123456789" not in str(info.value)


def test_broken_sim_config_is_named(root: Path, tmp_path: Path) -> None:
    """sim mode reads its keys from exchange.sim_config; a broken file names that key."""
    sim = _write(tmp_path / "sim.toml", "[credentials\n")
    with pytest.raises(ConfigError, match=r"exchange\.sim_config: .*invalid TOML"):
        _load(root, environ={"EXECD_EXCHANGE__SIM_CONFIG": str(sim)})


def test_every_key_is_documented() -> None:
    """docs/configuration.md has a row for every key of every section (a nested section,
    ``[intake.nats]``, under its dotted name)."""
    doc = (PROJECT_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    sections = list(Settings().model_dump().items())
    while sections:
        section, keys = sections.pop()
        nested = [(f"{section}.{k}", v) for k, v in keys.items() if isinstance(v, dict)]
        sections += nested
        if len(nested) == len(keys):
            continue
        assert f"### `[{section}]`" in doc
        for key in keys:
            assert f"| `{key}` |" in doc, f"{section}.{key} is not documented"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_short_token_off_loopback_is_refused(root: Path) -> None:
    """Off loopback a token under 32 characters is refused, naming api.token and
    EXECD_API_TOKEN, never echoing the token."""
    env = {"EXECD_API__HOST": "0.0.0.0", "EXECD_API_TOKEN": "x" * 31}
    with pytest.raises(ConfigError, match=r"api\.token: must be at least 32 characters") as info:
        _load(root, environ=env)
    assert "EXECD_API_TOKEN" in str(info.value)
    assert "x" * 31 not in str(info.value)
    settings = _load(root, environ=env | {"EXECD_API_TOKEN": "x" * 32})
    assert settings.api.token is not None


def test_generated_token_replaces_a_symlink_without_writing_through_it(
        root: Path, tmp_path: Path) -> None:
    """A symlink where the token file goes (to an empty file elsewhere) is replaced by a
    0600 file; the file it pointed to is untouched."""
    settings = _load(root, environ={"EXECD_JOURNAL__PATH": str(tmp_path / "d" / "j.sqlite3")})
    path = api_token_path(settings)
    path.parent.mkdir()
    target = _write(tmp_path / "elsewhere", "")
    target.chmod(0o644)
    path.symlink_to(target)
    token = resolve_api_token(settings, create=True)
    assert token is not None
    assert target.read_text(encoding="utf-8") == ""
    assert not path.is_symlink()
    assert (path.read_text(encoding="utf-8"), _mode(path)) == (token + "\n", 0o600)
    assert sorted(p.name for p in path.parent.iterdir()) == ["api-token"]  # no temp file left


def test_generated_token_replaces_an_empty_loose_file(root: Path, tmp_path: Path) -> None:
    """An empty token file of mode 0644 is replaced by a generated one of mode 0600."""
    settings = _load(root, environ={"EXECD_JOURNAL__PATH": str(tmp_path / "j.sqlite3")})
    path = _write(api_token_path(settings), "")
    path.chmod(0o644)
    assert resolve_api_token(settings, create=True)
    assert _mode(path) == 0o600


def test_loose_secret_files_are_listed(root: Path, tmp_path: Path) -> None:
    """Key and token files that group or others can read are listed with their key and mode;
    0600 ones are not."""
    key = _write(tmp_path / "key", KEY)
    secret = _write(tmp_path / "secret", SECRET)
    key.chmod(0o640)
    secret.chmod(0o600)
    env = {"EXECD_JOURNAL__PATH": str(tmp_path / "j.sqlite3"),
           "EXECD_EXCHANGE__API_KEY_FILE": str(key),
           "EXECD_EXCHANGE__API_SECRET_FILE": str(secret)}
    token = _write(tmp_path / "api-token", TOKEN)
    token.chmod(0o644)
    assert exposed_secret_files(_load(root, environ=env)) == [
        ("exchange.api_key_file", key, 0o640), ("api.token", token, 0o644)]
    token.chmod(0o600)
    assert exposed_secret_files(_load(root, environ=env)) == [
        ("exchange.api_key_file", key, 0o640)]


def test_systemd_environment() -> None:
    """NOTIFY_SOCKET turns the protocol on; WATCHDOG_USEC counts only for the process named by
    WATCHDOG_PID (or when it is absent)."""
    assert systemd_environment({}) is None
    assert systemd_environment({"WATCHDOG_USEC": "30000000"}) is None     # no socket
    base = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    assert systemd_environment(base) == SystemdEnvironment("/run/systemd/notify", None)
    assert systemd_environment({"NOTIFY_SOCKET": "@abstract"}) == SystemdEnvironment(
        "@abstract", None)
    watchdog = base | {"WATCHDOG_USEC": "30000000"}
    assert systemd_environment(watchdog, pid=42) == SystemdEnvironment(
        "/run/systemd/notify", 30_000_000)
    assert systemd_environment(watchdog | {"WATCHDOG_PID": "42"}, pid=42) == SystemdEnvironment(
        "/run/systemd/notify", 30_000_000)
    assert systemd_environment(watchdog | {"WATCHDOG_PID": "41"}, pid=42) == SystemdEnvironment(
        "/run/systemd/notify", None)


@pytest.mark.parametrize(("env", "message"), [
    ({"NOTIFY_SOCKET": "run/notify"}, "NOTIFY_SOCKET: must be an absolute unix socket path"),
    ({"NOTIFY_SOCKET": "@"}, "NOTIFY_SOCKET: must be an absolute unix socket path"),
    ({"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "30s"}, "WATCHDOG_USEC: must be a whole number"),
    ({"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "0"}, "WATCHDOG_USEC: must be a whole number"),
    ({"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "-5"}, "WATCHDOG_USEC: must be a whole number"),
    ({"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "5", "WATCHDOG_PID": "me"},
     "WATCHDOG_PID: must be a process id"),
])
def test_malformed_systemd_environment_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        systemd_environment(env)
