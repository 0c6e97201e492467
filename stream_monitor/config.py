"""Runtime settings: one frozen object, read by the CLI and nowhere else.

Components take typed arguments, not this object. Values come from (highest first) the environment
(``STREAM_MONITOR_*``), secret files in ``STREAM_MONITOR_SECRETS_DIR`` (one file per setting, named like
its variable, e.g. ``STREAM_MONITOR_KAFKA_SASL_PASSWORD``), a TOML file named by
``STREAM_MONITOR_CONFIG`` (default ``config/default.toml`` when it exists), and the defaults below.
Secrets are ``SecretStr``: they print as ``**********`` and are never logged or put in alerts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["DEFAULT_TOPICS", "Settings", "Topics"]


class Topics(BaseModel):
    """Kafka topic names; every one is configurable."""

    model_config = ConfigDict(frozen=True)

    serving: str = "recs.serving"
    engagement: str = "recs.engagement"
    deployments: str = "recs.deployments"
    datasets: str = "recs.datasets"
    alerts: str = "recs.alerts"
    health: str = "recs.health"
    deadletter: str = "recs.deadletter"


DEFAULT_TOPICS = Topics()


class Settings(BaseSettings):
    """Everything a stream-monitor process needs to know about its surroundings.

    >>> s = Settings(_env_file=None)
    >>> s.topics.serving, s.metrics_port
    ('recs.serving', 9464)
    """

    model_config = SettingsConfigDict(
        env_prefix="STREAM_MONITOR_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    app_id: str = "stream-monitor"
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    # redis:// or rediss:// (TLS); a password or ACL user goes in the URL (redis://user:pass@host/0).
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    redis_ssl_ca_certs: Path | None = None
    redis_prefix: str = "sm"
    topics: Topics = Field(default_factory=Topics)
    topic_partitions: int = 4
    topology: Path = Path("topologies/default.yaml")
    metrics_addr: str = "127.0.0.1"
    metrics_port: int = 9464
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    batch_max: int = 2000
    batch_within_s: float = 0.5
    # How input messages reach the engine: "batch" hands over each fetch of Faust's consumer as one list
    # (runtime/delivery.py: ~4x faster); "stream" goes through Faust's per-message streams and agents
    # (Faust's per-message path caps a worker near 12k messages/s). See docs/operations.md.
    delivery: Literal["batch", "stream"] = "batch"
    close_interval_s: float = 1.0
    # Catch-up alignment (batch delivery): while catching up, input partitions more than this much event
    # time ahead of the slowest one with a backlog are left unread until it catches up (Kafka fetches
    # by bytes, so engagement races minutes ahead of serving). Bounds what a long backlog parks in the
    # label join, at a cost in catch-up speed; 0 (the default) reads every partition as fast as it
    # comes. See docs/operations.md "Catching up".
    catch_up_lead_s: float = Field(default=0.0, ge=0)
    # How often the consumer-lag gauge is refreshed from the broker's log-end offsets.
    lag_interval_s: float = 5.0
    idle_partition_timeout_s: float = 30.0
    # Events for windows already closed: "deadletter" (with reason late_event) or "drop" (only counted).
    late_events: Literal["deadletter", "drop"] = "deadletter"
    # Events further ahead of the worker's clock than this are dead-lettered as future_event.
    max_future_s: float = 300.0
    broker_session_timeout_s: float = 10.0
    # Closed windows whose diagnosis log entry (signal values and alerts; ~5.4 KB of Redis each at 30
    # requests/s) the worker keeps for a live `diagnose` (docs/diagnose.md "Live mode"); 0 keeps none.
    window_log_limit: int = Field(default=1_440, ge=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        secrets_dir = os.environ.get("STREAM_MONITOR_SECRETS_DIR")
        if secrets_dir:
            sources.append(SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir))
        config_file = Path(os.environ.get("STREAM_MONITOR_CONFIG", "config/default.toml"))
        if config_file.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict safe to log (secrets stay masked)."""
        return self.model_dump(mode="json")
