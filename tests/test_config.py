"""ticker.config.load_settings: defaults, the TOML file, the environment, validation."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import orjson
import pytest

from ticker.config import Settings, load_settings
from ticker.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CONFIG_FILE = REPO / "config" / "ticker.toml"


@pytest.fixture(autouse=True)
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from an empty directory, so that no config/ticker.toml is found by default."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _one_public_key() -> str:
    """A JWK Set holding one EC P-256 public key (tests/test_cms_tokens.py checks the rest)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    return orjson.dumps({"keys": [{**jwk, "kid": "cms-1"}]}).decode()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def config_error(environ: dict[str, str], config_file: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(environ, config_file)
    return str(info.value)


# Defaults


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.host == "127.0.0.1" and settings.port == 8000
    assert settings.redis_url == "" and settings.embedded is True
    assert settings.data_dir == "./var"
    assert settings.max_body_bytes == 16 * 1024
    assert settings.idempotency_window == 24 * 3600
    assert settings.snapshot_size == 50 and settings.list_max_limit == 200
    assert settings.allowed_origins == ("*",)


def test_load_settings_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TICKER_SNAPSHOT_SIZE", "7")
    assert load_settings().snapshot_size == 7


# Environment


def test_ticker_environment_variables_override_each_kind_of_setting() -> None:
    settings = load_settings({
        "TICKER_HOST": "0.0.0.0",
        "TICKER_PORT": "9000",
        "TICKER_REDIS_TIMEOUT": "1.5",
        "TICKER_DATA_DIR": "/srv/ticker",
        "TICKER_LOG_LEVEL": "debug",
        "TICKER_ALLOWED_ORIGINS": "https://a.example, https://b.example,",
        "TICKER_RETENTION_MAX_AGE": "0",
    })
    assert settings == dataclasses.replace(
        Settings(), host="0.0.0.0", port=9000, redis_timeout=1.5, data_dir="/srv/ticker",
        log_level="debug", allowed_origins=("https://a.example", "https://b.example"),
        retention_max_age=0,
    )


def test_every_setting_has_a_ticker_environment_variable() -> None:
    strings = {"host": "0.0.0.0", "log_level": "debug", "redis_url": "redis://db:6379",
               "data_dir": "/srv/ticker", "public_url": "https://ticker.example.org",
               "reader_token_secret": "a-secret-of-at-least-32-bytes-long-xyz",
               "reader_token_public_keys": _one_public_key()}
    lists = {"allowed_origins": "https://a.example", "forwarded_allow_ips": "10.0.0.0/8"}
    for field in dataclasses.fields(Settings):
        if not field.init:
            continue  # derived at validation (the parsed public keys), not a setting
        default = getattr(Settings(), field.name)
        raw: str
        value: object
        if field.type == "str":
            raw, value = strings[field.name], strings[field.name]
        elif field.type == "int":
            raw, value = str(default + 1), default + 1
        elif field.type == "float":
            raw, value = str(default + 0.5), default + 0.5
        elif field.type == "bool":
            raw, value = ("false", False) if default else ("true", True)
        else:
            raw, value = lists[field.name], (lists[field.name],)
        settings = load_settings({f"TICKER_{field.name.upper()}": raw})
        assert getattr(settings, field.name) == value, field.name


def test_a_boolean_setting_takes_true_or_false_from_the_environment() -> None:
    assert load_settings({"TICKER_AUTO_CREATE_CHANNELS": "off"}).auto_create_channels is False
    assert load_settings({"TICKER_AUTO_CREATE_CHANNELS": "1"}).auto_create_channels is True
    with pytest.raises(ConfigError, match="must be true or false"):
        load_settings({"TICKER_AUTO_CREATE_CHANNELS": "maybe"})


def test_port_sets_the_port() -> None:
    assert load_settings({"PORT": "5000"}).port == 5000


def test_ticker_port_wins_over_port() -> None:
    assert load_settings({"PORT": "5000", "TICKER_PORT": "6000"}).port == 6000


def test_redis_url_sets_the_redis_url_and_turns_off_the_embedded_server() -> None:
    settings = load_settings({"REDIS_URL": "redis://db.internal:6379/0"})
    assert settings.redis_url == "redis://db.internal:6379/0"
    assert settings.embedded is False


def test_ticker_redis_url_wins_over_redis_url() -> None:
    settings = load_settings({"REDIS_URL": "redis://a:6379", "TICKER_REDIS_URL": "unix:///r.sock"})
    assert settings.redis_url == "unix:///r.sock"


# Bad values: a ConfigError that names the setting


@pytest.mark.parametrize(
    "environ, named",
    [
        ({"TICKER_PORT": "http"}, "TICKER_PORT"),
        ({"PORT": "eighty"}, "PORT"),
        ({"TICKER_REDIS_TIMEOUT": "soon"}, "TICKER_REDIS_TIMEOUT"),
        ({"TICKER_PORT": "70000"}, "'port'"),
        ({"PORT": "-1"}, "'port'"),
        ({"TICKER_REDIS_POOL_SIZE": "0"}, "'redis_pool_size'"),
        ({"TICKER_MAX_BODY_BYTES": "-5"}, "'max_body_bytes'"),
        ({"TICKER_RETENTION_MAX_AGE": "-1"}, "'retention_max_age'"),
        ({"TICKER_PING_TIMEOUT": "0"}, "'ping_timeout'"),
        ({"TICKER_REDIS_TIMEOUT": "nan"}, "'redis_timeout'"),
        ({"TICKER_SHUTDOWN_DRAIN": "inf"}, "'shutdown_drain'"),
        ({"TICKER_LOG_LEVEL": "loud"}, "'log_level'"),
        ({"TICKER_REDIS_URL": "http://db:6379"}, "'redis_url'"),
        ({"REDIS_URL": "db:6379"}, "'redis_url'"),
        ({"TICKER_ALLOWED_ORIGINS": "news.example.org"}, "'allowed_origins'"),
        ({"TICKER_SNAPSHOT_SIZE": "500"}, "'list_max_limit'"),
    ],
)
def test_a_bad_value_gives_a_config_error_naming_the_setting(
    environ: dict[str, str], named: str
) -> None:
    assert named in config_error(environ)


def test_workers_takes_a_number_or_auto_for_one_per_cpu(elsewhere: Path) -> None:
    from ticker.config import cpu_count

    assert Settings().workers == 1
    assert load_settings({"TICKER_WORKERS": "auto"}).workers == cpu_count() >= 1
    assert load_settings({}, write(elsewhere / "a.toml", 'workers = "auto"\n')).workers == cpu_count()
    assert load_settings({}, write(elsewhere / "n.toml", "workers = 3\n")).workers == 3
    assert "or auto" in config_error({"TICKER_WORKERS": "many"})
    assert "'workers'" in config_error({"TICKER_WORKERS": "0"})
    assert '"auto"' in config_error({}, write(elsewhere / "b.toml", 'workers = "all"\n'))


def test_with_overrides_validates_like_load_settings() -> None:
    assert Settings().with_overrides(port=9001).port == 9001
    with pytest.raises(ConfigError, match="'port'"):
        Settings().with_overrides(port=-1)


# The TOML file


def test_toml_file_sets_values_at_top_level_or_under_a_ticker_table(elsewhere: Path) -> None:
    top = write(elsewhere / "top.toml", 'port = 9100\nallowed_origins = ["https://a.example"]\n')
    settings = load_settings({}, top)
    assert settings.port == 9100 and settings.allowed_origins == ("https://a.example",)
    table = write(elsewhere / "table.toml", "[ticker]\nredis_timeout = 2\nsnapshot_size = 20\n")
    settings = load_settings({}, table)
    assert settings.redis_timeout == 2.0 and isinstance(settings.redis_timeout, float)
    assert settings.snapshot_size == 20


def test_default_config_file_is_read_from_the_working_directory(elsewhere: Path) -> None:
    (elsewhere / "config").mkdir()
    write(elsewhere / "config" / "ticker.toml", "[ticker]\nport = 9200\n")
    assert load_settings({}).port == 9200


def test_ticker_config_names_the_file(elsewhere: Path) -> None:
    path = write(elsewhere / "mine.toml", "port = 9300\n")
    assert load_settings({"TICKER_CONFIG": str(path)}).port == 9300


def test_environment_overrides_the_toml_file(elsewhere: Path) -> None:
    path = write(elsewhere / "t.toml", "[ticker]\nport = 9100\nlog_level = \"debug\"\n")
    settings = load_settings({"PORT": "9400"}, path)
    assert settings.port == 9400 and settings.log_level == "debug"


@pytest.mark.parametrize(
    "text, named",
    [
        ("[ticker]\nprot = 8000\n", "'prot'"),
        ("prot = 8000\n", "'prot'"),
        ("[ticker]\nport = 8000\n[ticker.limits]\nmax_body_bytes = 1\n", "'limits'"),
        ("port = 8000\n[ticker]\nhost = \"0.0.0.0\"\n", "'port'"),
        ("[ticker]\nhost = \"0.0.0.0\"\n[redis]\nurl = \"redis://x\"\n", "'redis'"),
    ],
)
def test_an_unknown_key_in_the_toml_file_is_refused(elsewhere: Path, text: str, named: str) -> None:
    message = config_error({}, write(elsewhere / "bad.toml", text))
    assert named in message
    assert "bad.toml" in message


@pytest.mark.parametrize(
    "text, named",
    [
        ('port = "8000"\n', "'port'"),
        ("port = 8000.0\n", "'port'"),
        ("port = true\n", "'port'"),
        ("redis_timeout = \"5\"\n", "'redis_timeout'"),
        ("redis_timeout = nan\n", "'redis_timeout'"),
        ("allowed_origins = \"*\"\n", "'allowed_origins'"),
        ("allowed_origins = [1]\n", "'allowed_origins'"),
        ("max_body_bytes = 0\n", "'max_body_bytes'"),
        ("ticker = 5\n", "ticker"),
    ],
)
def test_a_wrong_type_in_the_toml_file_names_the_setting(
    elsewhere: Path, text: str, named: str
) -> None:
    assert named in config_error({}, write(elsewhere / "bad.toml", text))


def test_invalid_toml_and_missing_files_are_config_errors(elsewhere: Path) -> None:
    assert "not valid TOML" in config_error({}, write(elsewhere / "broken.toml", "port = \n"))
    assert "does not exist" in config_error({}, elsewhere / "nowhere.toml")
    assert "does not exist" in config_error({"TICKER_CONFIG": str(elsewhere / "nowhere.toml")})


# config/ticker.toml, as shipped


def test_shipped_config_file_lists_every_setting_with_its_default() -> None:
    assert CONFIG_FILE.exists(), "config/ticker.toml documents every setting: it must exist"
    with CONFIG_FILE.open("rb") as f:
        raw = tomllib.load(f)
    table = raw.get("ticker", raw)
    names = [field.name for field in dataclasses.fields(Settings) if field.init]
    assert sorted(table) == sorted(names)
    for name in names:
        value = table[name]
        default = getattr(Settings(), name)
        expected = list(default) if isinstance(default, tuple) else default
        assert value == expected, f"{name} = {value!r} in the file, but the default is {default!r}"
    assert load_settings({}, CONFIG_FILE) == Settings()


def test_public_url_must_be_an_origin() -> None:
    assert "public_url" in config_error({"TICKER_PUBLIC_URL": "ticker.example.org"})
    assert "public_url" in config_error({"TICKER_PUBLIC_URL": "https://ticker.example.org/x?y"})
    assert load_settings({"TICKER_PUBLIC_URL": "https://t.example/"}).public_url == "https://t.example/"


def test_forwarded_allow_ips_must_be_addresses_or_networks() -> None:
    message = config_error({"TICKER_FORWARDED_ALLOW_IPS": "10.0.0.1,proxy.internal"})
    assert "'proxy.internal'" in message and "forwarded_allow_ips" in message
    settings = load_settings({"TICKER_FORWARDED_ALLOW_IPS": "10.0.0.0/8, fd00::/8, *"})
    assert settings.forwarded_allow_ips == ("10.0.0.0/8", "fd00::/8", "*")
