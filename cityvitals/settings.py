"""Settings: environment variables `CITYVITALS_…`, then a `.env` file, then a TOML file.

Every setting is listed in the README. `CITYVITALS_SETTINGS_FILE` names a TOML
file (default `cityvitals.toml` in the working directory, if present).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from devices.durations import parse_duration


def _seconds(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value).total_seconds()
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CITYVITALS_",
        env_file=".env",
        extra="ignore",
        validate_default=True,
    )

    database_url: str | None = None
    """PostgreSQL URL. Unset: the platform starts its own PostgreSQL under data_dir."""
    mqtt_url: str | None = None
    """mqtt://[user:password@]host[:port]. Unset: the platform starts its own Mosquitto."""
    data_dir: Path = Path(".cityvitals")
    """Where local services keep their data, and where their URLs are recorded."""
    topic_root: str = Field(default="city", pattern=r"^[A-Za-z0-9_-]+$")
    districts: Annotated[list[str], NoDecode] = []
    """Subscribe to these districts only (split work by district); empty means all."""
    profile_dirs: Annotated[list[Path], NoDecode] = []
    """Extra directories of device profiles, beside the built-in ones."""
    client_id: str = "cityvitals-ingest"
    """MQTT client id of the ingest service: its persistent session lives under it."""
    batch_size: int = Field(default=5000, ge=1)
    """Flush readings to the database when this many messages are waiting…"""
    flush_interval: float = Field(default=0.05, gt=0)
    """…or when the oldest waiting message is this many seconds old."""
    max_in_flight: int = Field(default=20000, ge=10, le=65535)
    """Messages received but not yet committed. Past this the broker holds the rest."""
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024)
    """Larger payloads are dead-lettered (first dead_letter_keep_bytes kept)."""
    dead_letter_keep_bytes: int = Field(default=64 * 1024, ge=256)
    future_tolerance: float = Field(default=300.0, ge=0)
    """Readings stamped further in the future than this are flagged clock_skew."""
    registry_refresh: float = Field(default=30.0, gt=0)
    """Seconds between reloads of the device registry by the ingest service."""
    reconnect_max_delay: float = Field(default=30.0, gt=0)
    rules_enabled: bool = True
    """Run the rule engine on the ingested readings (off: storage only)."""
    rule_dirs: Annotated[list[Path], NoDecode] = []
    """Directories of a deployment's own rule files, beside the built-in library."""
    rules_tick: float = Field(default=5.0, gt=0)
    """Seconds between evaluations of timers: `for`, silent devices, event time-outs."""
    vitals_interval: float = Field(default=60.0, gt=0)
    """Vital signs are recomputed on every alert change and at least this often."""
    timezone: str = "Asia/Shanghai"
    """Local time of the city: schedules (night noise) and diurnal indicators."""
    stats_interval: float = Field(default=5.0, gt=0)
    log_level: str = "INFO"

    # --- HTTP API and ack links (alerts/api.py, cityvitals/api_server.py) ---------------
    api_enabled: bool = False
    """Serve the HTTP API from the platform process (`cityvitals run`)."""
    api_host: str = "127.0.0.1"
    """Address the API listens on; 0.0.0.0 exposes it (put TLS in front)."""
    api_port: int = Field(default=8080, ge=0, le=65535)
    link_secret: SecretStr | None = Field(default=None, min_length=16)
    """Signs ack links; share it between processes. Unset: one is made in data_dir."""
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    """Base URL of the API as people reach it, for links in messages.
    Unset: http://api_host:api_port."""

    @property
    def api_url(self) -> str:
        """Where people reach the API: public_url, else the address it listens on."""
        if self.public_url is not None:
            return self.public_url.rstrip("/")
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"http://{host}:{self.api_port}"

    # --- end of the HTTP API block -----------------------------------------------------

    # --- notifications (branch notify): routing, outbox, channels ------------------
    # Ack links in messages use public_url and link_secret of the API block above.
    notify_enabled: bool = True
    """Route alerts to teams and deliver notifications (off: alerts are only stored)."""
    routing_file: Path | None = None
    """Routing tree and teams (YAML). Unset: the shipped alerts/routing.yaml."""
    link_ttl: float = Field(default=24 * 3600.0, gt=0)
    """How long an ack link in a message stays valid."""
    notify_poll_interval: float = Field(default=1.0, gt=0)
    """Seconds between notifier steps (new alert events, due groups, escalations)."""
    sender_poll_interval: float = Field(default=1.0, gt=0)
    """Seconds the sender waits when the outbox has nothing due."""
    notify_max_attempts: int = Field(default=8, ge=1, le=100)
    """Delivery attempts per notification before it is marked failed."""
    notify_retry_base: float = Field(default=5.0, gt=0)
    """First retry delay; doubled after each failed attempt…"""
    notify_retry_max: float = Field(default=1800.0, gt=0)
    """…up to this."""
    notify_lease: float = Field(default=300.0, gt=0)
    """A claimed notification is the sender's this long; longer than any channel time-out."""
    smtp_host: str = "localhost"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_security: Literal["none", "starttls", "ssl"] = "none"
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "cityvitals@localhost"
    smtp_timeout: float = Field(default=20.0, gt=0)

    _normalise = field_validator(
        "flush_interval",
        "future_tolerance",
        "registry_refresh",
        "reconnect_max_delay",
        "stats_interval",
        "rules_tick",
        "vitals_interval",
        "link_ttl",
        "notify_poll_interval",
        "sender_poll_interval",
        "notify_retry_base",
        "notify_retry_max",
        "notify_lease",
        "smtp_timeout",
        mode="before",
    )(_seconds)

    @field_validator(
        "routing_file",
        "public_url",
        "link_secret",
        "smtp_username",
        "smtp_password",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone, e.g. Asia/Shanghai") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"{value!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("districts", "profile_dirs", "rule_dirs", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("CITYVITALS_SETTINGS_FILE", "cityvitals.toml"))
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_file),
        )
