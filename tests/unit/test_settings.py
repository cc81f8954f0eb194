"""Settings: CITYVITALS_ environment variables, a .env file, then a TOML settings file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from cityvitals.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CITYVITALS_ variables from the caller, and a working directory of our own."""
    for name in list(os.environ):
        if name.upper().startswith("CITYVITALS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults() -> None:
    s = Settings()
    assert s.database_url is None and s.mqtt_url is None
    assert s.topic_root == "city"
    assert s.districts == [] and s.profile_dirs == []
    assert s.batch_size == 5000
    assert s.flush_interval == 0.05
    assert s.future_tolerance == 300.0
    assert s.data_dir == Path(".cityvitals")


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYVITALS_DATABASE_URL", "postgresql://u@db:5432/city")
    monkeypatch.setenv("CITYVITALS_MQTT_URL", "mqtt://broker:1883")
    monkeypatch.setenv("CITYVITALS_TOPIC_ROOT", "shanghai")
    monkeypatch.setenv("CITYVITALS_BATCH_SIZE", "250")
    monkeypatch.setenv("CITYVITALS_MAX_PAYLOAD_BYTES", "4096")
    monkeypatch.setenv("CITYVITALS_CLIENT_ID", "ingest-east")
    monkeypatch.setenv("CITYVITALS_LOG_LEVEL", "debug")
    s = Settings()
    assert s.database_url == "postgresql://u@db:5432/city"
    assert s.mqtt_url == "mqtt://broker:1883"
    assert s.topic_root == "shanghai"
    assert s.batch_size == 250
    assert s.max_payload_bytes == 4096
    assert s.client_id == "ingest-east"
    assert s.log_level == "DEBUG"  # normalised


def test_prefix_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_SIZE", "7")
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/x")
    s = Settings()
    assert s.batch_size == 5000
    assert s.database_url is None


def test_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYVITALS_DISTRICTS", " pudong, xuhui ,,jingan ")
    monkeypatch.setenv("CITYVITALS_PROFILE_DIRS", "/etc/cv/profiles,extra")
    s = Settings()
    assert s.districts == ["pudong", "xuhui", "jingan"]
    assert s.profile_dirs == [Path("/etc/cv/profiles"), Path("extra")]


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("100ms", 0.1), ("2s", 2.0), ("1m30s", 90.0), ("1.5s", 1.5), ("1h", 3600.0), ("5", 5.0)],
)
def test_durations(monkeypatch: pytest.MonkeyPatch, raw: str, seconds: float) -> None:
    monkeypatch.setenv("CITYVITALS_FLUSH_INTERVAL", raw)
    monkeypatch.setenv("CITYVITALS_STATS_INTERVAL", raw)
    s = Settings()
    assert s.flush_interval == pytest.approx(seconds)
    assert s.stats_interval == pytest.approx(seconds)


@pytest.mark.parametrize(("raw", "seconds"), [("5", 5.0), ("0.25", 0.25)])
def test_bare_seconds_in_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, seconds: float
) -> None:
    monkeypatch.setenv("CITYVITALS_STATS_INTERVAL", raw)
    assert Settings().stats_interval == pytest.approx(seconds)


def test_bare_seconds_in_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = tmp_path / "s.toml"
    conf.write_text("stats_interval = 5\nflush_interval = 0.25\n")
    monkeypatch.setenv("CITYVITALS_SETTINGS_FILE", str(conf))
    s = Settings()
    assert (s.stats_interval, s.flush_interval) == (5.0, 0.25)


def test_every_duration_setting_takes_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYVITALS_FUTURE_TOLERANCE", "10m")
    monkeypatch.setenv("CITYVITALS_REGISTRY_REFRESH", "1m")
    monkeypatch.setenv("CITYVITALS_RECONNECT_MAX_DELAY", "45s")
    s = Settings()
    assert (s.future_tolerance, s.registry_refresh, s.reconnect_max_delay) == (600, 60, 45)


def test_toml_file_named_by_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = tmp_path / "conf" / "east.toml"
    conf.parent.mkdir()
    conf.write_text(
        'database_url = "postgresql://toml/db"\n'
        'topic_root = "east"\n'
        'districts = ["pudong", "minhang"]\n'
        'flush_interval = "250ms"\n'
        "batch_size = 100\n"
    )
    monkeypatch.setenv("CITYVITALS_SETTINGS_FILE", str(conf))
    s = Settings()
    assert s.database_url == "postgresql://toml/db"
    assert s.topic_root == "east"
    assert s.districts == ["pudong", "minhang"]
    assert s.flush_interval == pytest.approx(0.25)
    assert s.batch_size == 100


def test_environment_overrides_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = tmp_path / "s.toml"
    conf.write_text('topic_root = "east"\nbatch_size = 100\n')
    monkeypatch.setenv("CITYVITALS_SETTINGS_FILE", str(conf))
    monkeypatch.setenv("CITYVITALS_BATCH_SIZE", "42")
    s = Settings()
    assert s.batch_size == 42
    assert s.topic_root == "east"


def test_default_toml_in_working_directory(tmp_path: Path) -> None:
    (tmp_path / "cityvitals.toml").write_text('client_id = "from-cwd"\n')
    assert Settings().client_id == "from-cwd"


def test_missing_settings_file_is_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CITYVITALS_SETTINGS_FILE", str(tmp_path / "absent.toml"))
    assert Settings().topic_root == "city"


def test_dotenv_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CITYVITALS_TOPIC_ROOT=dotenv\nCITYVITALS_BATCH_SIZE=9\n")
    monkeypatch.setenv("CITYVITALS_BATCH_SIZE", "11")
    s = Settings()
    assert s.topic_root == "dotenv"
    assert s.batch_size == 11  # the real environment wins over .env


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("CITYVITALS_BATCH_SIZE", "0", "batch_size"),
        ("CITYVITALS_BATCH_SIZE", "many", "batch_size"),
        ("CITYVITALS_TOPIC_ROOT", "city/east", "topic_root"),
        ("CITYVITALS_TOPIC_ROOT", "city+", "topic_root"),
        ("CITYVITALS_MAX_IN_FLIGHT", "70000", "max_in_flight"),
        ("CITYVITALS_MAX_PAYLOAD_BYTES", "100", "max_payload_bytes"),
        ("CITYVITALS_FLUSH_INTERVAL", "0s", "flush_interval"),
        ("CITYVITALS_FLUSH_INTERVAL", "-1", "flush_interval"),
        ("CITYVITALS_STATS_INTERVAL", "5 parsecs", "stats_interval"),
    ],
)
def test_bad_value_is_a_validation_error_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    assert [e["loc"] for e in excinfo.value.errors()] == [(field,)]


def test_bad_value_in_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text('batch_size = -5\nflush_interval = "soon"\n')
    monkeypatch.setenv("CITYVITALS_SETTINGS_FILE", str(conf))
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    assert {e["loc"] for e in excinfo.value.errors()} == {("batch_size",), ("flush_interval",)}


@pytest.mark.parametrize("raw", ["inf", "1e400"])
def test_infinite_duration_is_a_validation_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("CITYVITALS_STATS_INTERVAL", raw)
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    assert [e["loc"] for e in excinfo.value.errors()] == [("stats_interval",)]


def test_bad_log_level_is_a_validation_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYVITALS_LOG_LEVEL", "loud")
    with pytest.raises(ValidationError):
        Settings()
